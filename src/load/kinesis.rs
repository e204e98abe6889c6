//! The load generator's Kinesis client: PutRecords over HTTP/1.1 keep-alive through hyper,
//! a pool of connections with one request in flight on each (HTTP/1.1 does not pipeline).
//! Requests carry a well-formed SigV4 header that is not a real signature, so the target
//! must not verify keys. Runs on a load worker's executor.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::Bytes;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;

use crate::client::ClientError;
use crate::net::http::HyperIo;
use crate::protocol::binary::{PutEntry, PutResult, Status, WireError};
use crate::protocol::kinesis::json::Out;

const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=SPATELOAD/20260101/us-east-1/kinesis/aws4_request, \
                             SignedHeaders=host;x-amz-date;x-amz-target, Signature=0";

/// Connections to one Kinesis endpoint, each used by one request at a time.
pub struct Pool {
    target: SocketAddr,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
    free: Semaphore,
    /// Records already spelled as JSON (see [`Rendered`]).
    rendered: RefCell<Rendered>,
}

impl Pool {
    /// Opens `size` connections to `target`.
    ///
    /// # Errors
    /// A message when a connection or its HTTP handshake fails.
    pub async fn connect(target: SocketAddr, size: usize) -> Result<Pool, String> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            let stream = TcpStream::connect(target)
                .await
                .map_err(|e| format!("connecting to {target}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(HyperIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {target}: {e}"))?;
            glommio::spawn_local(async move {
                let _ = connection.await;
            })
            .detach();
            idle.push(sender);
        }
        Ok(Pool {
            target,
            free: Semaphore::new(idle.len() as u64),
            idle: RefCell::new(idle),
            rendered: RefCell::new(Rendered::default()),
        })
    }

    /// One PutRecords call. The per-record results carry no shard or sequence number (the
    /// load only counts them); failed records are reported as errors.
    ///
    /// # Errors
    /// The Kinesis error of a failed call, or a connection failure.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutEntry>,
    ) -> Result<Vec<PutResult>, ClientError> {
        let count = records.len();
        let body = self.rendered.borrow_mut().body(stream, &records);
        let _slot = self
            .free
            .acquire_permit(1)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut sender = self.idle.borrow_mut().pop().ok_or(ClientError::Closed)?;
        let result = self.send(&mut sender, "PutRecords", body).await;
        if result.is_ok() {
            self.idle.borrow_mut().push(sender);
        }
        let (status, body) = result?;
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            let kind = text
                .split("\"__type\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("HTTP error")
                .to_string();
            let code = if kind == "ProvisionedThroughputExceededException" {
                Status::LimitExceeded
            } else {
                Status::Internal
            };
            return Err(ClientError::Server(WireError::new(
                code,
                format!("{status} {kind}"),
            )));
        }
        // A byte search, not a parse: the load only needs the count, and a PutRecords
        // response of 500 entries is 50 KB that a lossy UTF-8 pass would copy.
        const FAILED: &[u8] = b"\"FailedRecordCount\":";
        let failed = memchr::memmem::find(&body, FAILED)
            .map(|at| &body[at + FAILED.len()..])
            .map(|rest| {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                &rest[..digits]
            })
            .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
            .ok_or_else(|| {
                ClientError::Protocol("PutRecords response without FailedRecordCount".into())
            })?;
        Ok((0..count)
            .map(|i| {
                if i < failed {
                    Err(WireError::new(Status::Internal, "record failed"))
                } else {
                    Ok((0, 0))
                }
            })
            .collect())
    }

    /// Makes sure `stream` exists and is ACTIVE, creating it with `shards` shards.
    ///
    /// # Errors
    /// A message when the endpoint refuses.
    pub async fn ensure_stream(&self, stream: &str, shards: u32) -> Result<(), String> {
        let mut sender = self.idle.borrow_mut().pop().ok_or("no connection")?;
        let describe = format!(r#"{{"StreamName":"{stream}"}}"#).into_bytes();
        let (status, text) = self
            .send(&mut sender, "DescribeStreamSummary", describe.clone())
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&text);
        if status != 200 {
            if !text.contains("ResourceNotFoundException") {
                return Err(format!("DescribeStreamSummary: {status} {text}"));
            }
            let create =
                format!(r#"{{"StreamName":"{stream}","ShardCount":{shards}}}"#).into_bytes();
            let (status, text) = self
                .send(&mut sender, "CreateStream", create)
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&text);
            if status != 200 {
                return Err(format!("CreateStream: {status} {text}"));
            }
            eprintln!("load: created stream {stream} with {shards} shard(s)");
        }
        for _ in 0..600 {
            let (_, text) = self
                .send(&mut sender, "DescribeStreamSummary", describe.clone())
                .await
                .map_err(|e| e.to_string())?;
            if memchr::memmem::find(&text, b"\"StreamStatus\":\"ACTIVE\"").is_some() {
                self.idle.borrow_mut().push(sender);
                return Ok(());
            }
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(format!("stream {stream} did not become ACTIVE within 60 s"))
    }

    async fn send(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        operation: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        sender
            .ready()
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let request = hyper::Request::post("/")
            .header(hyper::header::HOST, self.target.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/x-amz-json-1.1")
            .header("x-amz-target", format!("Kinesis_20131202.{operation}"))
            .header("x-amz-date", "20260101T000000Z")
            .header(hyper::header::AUTHORIZATION, AUTHORIZATION)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// Slots of [`Rendered`]: a power of two, well above the default 1,000 keys.
const RENDERED_SLOTS: usize = 4096;

/// The JSON of records a load sends again and again. Without `--verify` every record of a
/// fixed size carries the same slice of the static payload, and keys come from a fixed
/// set, so each (payload, key) pair is spelled `{"Data":"<base64>","PartitionKey":"<key>"}`
/// once and copied afterwards, as wrk copies its one body: the load generator shares the
/// machine with the server, and every nanosecond it spends is one the server does not get.
/// A slot keeps clones of its payload and key, so the same address and length mean the
/// same bytes. Verifying loads stamp each payload afresh; their records are spelled each
/// time and never kept.
#[derive(Default)]
struct Rendered {
    slots: Vec<Option<(Bytes, Bytes, Vec<u8>)>>,
    /// The payload of the record before, to tell repeated payloads from stamped ones.
    last_data: Bytes,
}

impl Rendered {
    fn body(&mut self, stream: &str, records: &[PutEntry]) -> Vec<u8> {
        if self.slots.is_empty() {
            self.slots.resize_with(RENDERED_SLOTS, || None);
        }
        let bytes: usize = records
            .iter()
            .map(|r| r.data.len() * 4 / 3 + r.partition_key.len() + 40)
            .sum();
        let mut out = Out::with_capacity(64 + bytes);
        out.begin_object()
            .str("StreamName", stream)
            .array("Records");
        for record in records {
            let repeated = same(&self.last_data, &record.data);
            if !repeated {
                self.last_data = record.data.clone();
            }
            let (data, key) = (&record.data, &record.partition_key);
            let hash = (data.as_ptr() as usize ^ data.len()).wrapping_mul(31)
                ^ (key.as_ptr() as usize ^ key.len()).wrapping_mul(0x9e37_79b9);
            let slot = &mut self.slots[(hash ^ (hash >> 16)) % RENDERED_SLOTS];
            match slot {
                Some((d, k, json)) if same(d, data) && same(k, key) => {
                    out.raw_item(json);
                }
                _ => {
                    let json = record_json(record);
                    out.raw_item(&json);
                    if repeated {
                        *slot = Some((data.clone(), key.clone(), json));
                    }
                }
            }
        }
        out.end_array().end_object();
        out.into_bytes()
    }
}

/// Whether `a` and `b` are the same bytes in memory (not merely equal ones).
fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// One record of a PutRecords body.
fn record_json(record: &PutEntry) -> Vec<u8> {
    let mut out = Out::with_capacity(record.data.len() * 4 / 3 + record.partition_key.len() + 40);
    out.begin_object()
        .base64("Data", &record.data)
        .str(
            "PartitionKey",
            &String::from_utf8_lossy(&record.partition_key),
        )
        .end_object();
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spelled from the cache or afresh, every record of a body carries its own key and
    /// payload, in order.
    #[test]
    fn rendered_bodies_carry_each_records_key_and_payload() {
        let payload = Bytes::from_static(&[7u8; 300]);
        let keys: Vec<Bytes> = (0..5000)
            .map(|k| Bytes::from(format!("key-{k}\"\\")))
            .collect();
        let mut rendered = Rendered::default();
        for round in 0..3usize {
            let records: Vec<PutEntry> = (0..500)
                .map(|i| PutEntry {
                    partition_key: keys[(i * 7 + round * 3) % keys.len()].clone(),
                    data: if i % 50 == 49 {
                        Bytes::from(vec![i as u8; 20])
                    } else {
                        payload.slice(..100 + round)
                    },
                    explicit_hash_key: None,
                })
                .collect();
            let body = rendered.body("s", &records);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let sent = json["Records"].as_array().unwrap();
            assert_eq!(sent.len(), records.len());
            for (record, sent) in records.iter().zip(sent) {
                let key = sent["PartitionKey"].as_str().unwrap();
                assert_eq!(key.as_bytes(), &record.partition_key[..]);
                let data = base64_simd::STANDARD
                    .decode_to_vec(sent["Data"].as_str().unwrap())
                    .unwrap();
                assert_eq!(data, &record.data[..]);
            }
        }
    }
}
