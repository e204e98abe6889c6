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
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;

use super::{Acks, Batch, Pick};
use crate::client::ClientError;
use crate::net::http::HyperIo;
use crate::protocol::binary::{Status, WireError};
use crate::protocol::kinesis::json::Out;

const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=SPATELOAD/20260101/us-east-1/kinesis/aws4_request, \
                             SignedHeaders=host;x-amz-date;x-amz-target, Signature=0";

/// Connections to one Kinesis endpoint, each used by one request at a time.
pub struct Pool {
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
    free: Semaphore,
    /// The Host header, spelled once.
    host: HeaderValue,
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
            free: Semaphore::new(idle.len() as u64),
            idle: RefCell::new(idle),
            host: HeaderValue::try_from(target.to_string())
                .map_err(|e| format!("a Host header for {target}: {e}"))?,
            rendered: RefCell::new(Rendered::default()),
        })
    }

    /// One PutRecords call. Refused records are reported by position, with the error the
    /// endpoint gave; shards and sequence numbers are not kept (the load only counts).
    ///
    /// # Errors
    /// The Kinesis error of a failed call, or a connection failure.
    pub async fn put_records(&self, stream: &str, batch: &Batch) -> Result<Acks, ClientError> {
        let records = batch.len();
        let body = self.rendered.borrow_mut().body(stream, batch);
        let _slot = self
            .free
            .acquire_permit(1)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut sender = self.idle.borrow_mut().pop().ok_or(ClientError::Closed)?;
        let result = self.put(&mut sender, body).await;
        if !matches!(result, Err(ClientError::Io(_))) {
            self.idle.borrow_mut().push(sender);
        }
        let (failed, kept) = result?;
        if failed == 0 {
            return Ok(Acks {
                records,
                failures: Vec::new(),
            });
        }
        let failures = refused_records(kept)?;
        if failures.len() != failed || failures.iter().any(|(i, _)| *i >= records) {
            return Err(ClientError::Protocol(format!(
                "PutRecords response with FailedRecordCount {failed} but {} refused of {records}",
                failures.len()
            )));
        }
        Ok(Acks { records, failures })
    }

    /// Sends a PutRecords body and reads the answer's FailedRecordCount, which our server
    /// and AWS put first. The rest of the body — 50 KB for 500 records — is only kept
    /// when some record failed; otherwise its frames are dropped as they come, uncopied.
    async fn put(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        body: Vec<u8>,
    ) -> Result<(usize, Vec<u8>), ClientError> {
        const PUT_RECORDS: HeaderValue = HeaderValue::from_static("Kinesis_20131202.PutRecords");
        let response = self.request(sender, PUT_RECORDS, body).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status != 200 {
            let text = collect(body).await?;
            return Err(kinesis_error(status, &text));
        }
        const FAILED: &[u8] = b"\"FailedRecordCount\":";
        let mut kept = Vec::new();
        let mut failed = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Io(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if failed.is_none_or(|failed| failed > 0) {
                kept.extend_from_slice(&data);
            }
            if failed.is_none() {
                failed = memchr::memmem::find(&kept, FAILED).and_then(|at| {
                    let rest = &kept[at + FAILED.len()..];
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    // Digits that run to the end of what came so far may go on.
                    (digits < rest.len())
                        .then(|| std::str::from_utf8(&rest[..digits]).ok()?.parse().ok())?
                });
                if failed == Some(0) {
                    kept = Vec::new();
                }
            }
        }
        let failed = failed.ok_or_else(|| {
            ClientError::Protocol("PutRecords response without FailedRecordCount".into())
        })?;
        Ok((failed, kept))
    }

    /// Makes sure `stream` exists and is ACTIVE, creating it with `shards` shards.
    ///
    /// # Errors
    /// A message when the endpoint refuses.
    pub async fn ensure_stream(&self, stream: &str, shards: u32) -> Result<(), String> {
        let mut sender = self.idle.borrow_mut().pop().ok_or("no connection")?;
        let describe = format!(r#"{{"StreamName":"{stream}"}}"#).into_bytes();
        let (status, text) = self
            .call(&mut sender, "DescribeStreamSummary", describe.clone())
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
                .call(&mut sender, "CreateStream", create)
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
                .call(&mut sender, "DescribeStreamSummary", describe.clone())
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

    /// A call of any operation, its whole answer collected.
    async fn call(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        operation: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let target = HeaderValue::try_from(format!("Kinesis_20131202.{operation}"))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = self.request(sender, target, body).await?;
        let status = response.status().as_u16();
        Ok((status, collect(response.into_body()).await?))
    }

    async fn request(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        target: HeaderValue,
        body: Vec<u8>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        const JSON: HeaderValue = HeaderValue::from_static("application/x-amz-json-1.1");
        const DATE: HeaderValue = HeaderValue::from_static("20260101T000000Z");
        const SIGNATURE: HeaderValue = HeaderValue::from_static(AUTHORIZATION);
        sender
            .ready()
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut request = hyper::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = hyper::Method::POST;
        let headers = request.headers_mut();
        headers.insert(hyper::header::HOST, self.host.clone());
        headers.insert(hyper::header::CONTENT_TYPE, JSON);
        headers.insert("x-amz-target", target);
        headers.insert("x-amz-date", DATE);
        headers.insert(hyper::header::AUTHORIZATION, SIGNATURE);
        sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }
}

async fn collect(body: Incoming) -> Result<Vec<u8>, ClientError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| ClientError::Io(e.to_string()))?
        .to_bytes()
        .to_vec())
}

/// The error of a call answered with `status` and the Kinesis error body `text`.
fn kinesis_error(status: u16, text: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(text);
    let kind = text
        .split("\"__type\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("HTTP error");
    ClientError::Server(WireError::new(status_of(kind), format!("{status} {kind}")))
}

fn status_of(kind: &str) -> Status {
    if kind == "ProvisionedThroughputExceededException" {
        Status::LimitExceeded
    } else {
        Status::Internal
    }
}

/// The records a PutRecords answer refused: the entries with an ErrorCode, by position.
fn refused_records(mut body: Vec<u8>) -> Result<Vec<(usize, WireError)>, ClientError> {
    use simd_json::prelude::*;
    let bad = |what: &str| ClientError::Protocol(format!("PutRecords response: {what}"));
    let value = simd_json::to_borrowed_value(&mut body).map_err(|e| bad(&e.to_string()))?;
    let entries = value
        .get("Records")
        .and_then(|records| records.as_array())
        .ok_or_else(|| bad("no Records array"))?;
    Ok(entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let code = entry.get("ErrorCode")?.as_str()?;
            let message = entry
                .get("ErrorMessage")
                .and_then(|m| m.as_str())
                .unwrap_or("");
            Some((
                i,
                WireError::new(status_of(code), format!("{code}: {message}")),
            ))
        })
        .collect())
}

/// Slots of [`Rendered`]: a power of two, well above the default 1,000 keys.
const RENDERED_SLOTS: usize = 4096;

/// Bytes of spelled records [`Rendered`] keeps before it starts over: loads with a range
/// of record sizes spell new (key, size) pairs for ever.
const RENDERED_ARENA_MAX: usize = 8 << 20;

/// The JSON of records a load sends again and again. Without `--verify` every record is a
/// slice of the static payload of one of a fixed set of sizes, under one of a fixed set of
/// keys, so each (key, size) pair is spelled `{"Data":"<base64>","PartitionKey":"<key>"}`
/// once and copied afterwards, as wrk copies its one body: the load generator shares the
/// machine with the server, and every nanosecond it spends is one the server does not get.
/// The spellings lie end to end in one arena, so that copying one is a single load from a
/// compact block rather than a pointer chase (perf had the copies missing the cache, on a
/// core whose cache the server's thread shares). Verifying loads stamp each payload afresh;
/// their records are spelled each time.
#[derive(Default)]
struct Rendered {
    /// Per slot, the pick spelled there and its place in `arena`.
    slots: Vec<Option<(Pick, std::ops::Range<usize>)>>,
    arena: Vec<u8>,
    /// The keys and payload the slots were spelled from.
    source: Option<(std::rc::Rc<[Bytes]>, Bytes)>,
}

impl Rendered {
    fn body(&mut self, stream: &str, batch: &Batch) -> Vec<u8> {
        let estimate = match batch {
            Batch::Picked { picks, .. } => picks
                .iter()
                .map(|p| p.size as usize * 4 / 3 + 48)
                .sum::<usize>(),
            Batch::Entries(entries) => entries
                .iter()
                .map(|r| r.data.len() * 4 / 3 + r.partition_key.len() + 40)
                .sum(),
        };
        let mut out = Out::with_capacity(64 + stream.len() + estimate);
        out.begin_object()
            .str("StreamName", stream)
            .array("Records");
        match batch {
            Batch::Picked {
                keys,
                payload,
                picks,
            } => {
                let same_source = self.source.as_ref().is_some_and(|(k, p)| {
                    std::rc::Rc::ptr_eq(k, keys)
                        && p.as_ptr() == payload.as_ptr()
                        && p.len() == payload.len()
                });
                if !same_source || self.arena.len() > RENDERED_ARENA_MAX {
                    self.slots.clear();
                    self.slots.resize_with(RENDERED_SLOTS, || None);
                    self.arena.clear();
                    self.source = Some((keys.clone(), payload.clone()));
                }
                for pick in picks {
                    // Injective over keys for one size, so a fixed-size load never evicts.
                    let index = (pick.key as usize)
                        .wrapping_add((pick.size as usize).wrapping_mul(0x9e37_79b9))
                        % RENDERED_SLOTS;
                    let slot = &mut self.slots[index];
                    let range = match slot {
                        Some((cached, range)) if cached == pick => range.clone(),
                        _ => {
                            let start = self.arena.len();
                            let mut spelled = Out::appending(std::mem::take(&mut self.arena));
                            record_json(
                                &mut spelled,
                                &payload[..pick.size as usize],
                                &keys[pick.key as usize],
                            );
                            self.arena = spelled.into_bytes();
                            *slot = Some((*pick, start..self.arena.len()));
                            start..self.arena.len()
                        }
                    };
                    out.raw_item(&self.arena[range]);
                }
            }
            Batch::Entries(entries) => {
                for entry in entries {
                    record_json(&mut out, &entry.data, &entry.partition_key);
                }
            }
        }
        out.end_array().end_object();
        out.into_bytes()
    }
}

/// One record of a PutRecords body, written by `out`.
fn record_json(out: &mut Out, data: &[u8], key: &[u8]) {
    out.begin_object()
        .base64("Data", data)
        .str("PartitionKey", &String::from_utf8_lossy(key))
        .end_object();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::binary::PutEntry;

    fn sent_records(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["StreamName"], "s");
        json["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sent| {
                let key = sent["PartitionKey"].as_str().unwrap().as_bytes().to_vec();
                let data = base64_simd::STANDARD
                    .decode_to_vec(sent["Data"].as_str().unwrap())
                    .unwrap();
                (key, data)
            })
            .collect()
    }

    /// Spelled from the cache or afresh, from picks or from entries, every record of a body
    /// carries its own key and payload, in order — also after the cache starts over for new
    /// keys, and for sizes that collide in its slots.
    #[test]
    fn rendered_bodies_carry_each_records_key_and_payload() {
        let payload = Bytes::from_static(&[7u8; 300]);
        let mut rendered = Rendered::default();
        for generation in 0..2 {
            let keys: std::rc::Rc<[Bytes]> = (0..5000)
                .map(|k| Bytes::from(format!("key-{generation}-{k}\"\\")))
                .collect();
            for round in 0..4usize {
                let picks: Vec<Pick> = (0..500)
                    .map(|i| Pick {
                        key: ((i * 7 + round * 3) % keys.len()) as u32,
                        size: (100 + (i + round) % 200) as u32,
                    })
                    .collect();
                let batch = Batch::Picked {
                    keys: keys.clone(),
                    payload: payload.clone(),
                    picks: picks.clone(),
                };
                let sent = sent_records(&rendered.body("s", &batch));
                assert_eq!(sent.len(), picks.len());
                for (pick, (key, data)) in picks.iter().zip(sent) {
                    assert_eq!(key, &keys[pick.key as usize][..]);
                    assert_eq!(data, &payload[..pick.size as usize]);
                }
            }
        }
        let entries: Vec<PutEntry> = (0..50)
            .map(|i| PutEntry {
                partition_key: Bytes::from(format!("k{i}")),
                data: Bytes::from(vec![i as u8; 20 + i]),
                explicit_hash_key: None,
            })
            .collect();
        let sent = sent_records(&rendered.body("s", &Batch::Entries(entries.clone())));
        assert_eq!(sent.len(), entries.len());
        for (entry, (key, data)) in entries.iter().zip(sent) {
            assert_eq!(key, &entry.partition_key[..]);
            assert_eq!(data, &entry.data[..]);
        }
        let empty = rendered.body("s", &Batch::Entries(Vec::new()));
        assert!(sent_records(&empty).is_empty());
    }

    /// The refused records of a PutRecords answer are found by position, with their codes.
    #[test]
    fn refused_records_are_found_by_position() {
        let body = br#"{"FailedRecordCount":2,"Records":[{"SequenceNumber":"1","ShardId":"shardId-000000000000"},{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"slow down"},{"SequenceNumber":"2","ShardId":"shardId-000000000000"},{"ErrorCode":"InternalFailure","ErrorMessage":"oops"}]}"#;
        let refused = refused_records(body.to_vec()).unwrap();
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[0].0, 1);
        assert_eq!(refused[0].1.status, Status::LimitExceeded);
        assert!(refused[0].1.to_string().contains("slow down"));
        assert_eq!(refused[1].0, 3);
        assert_eq!(refused[1].1.status, Status::Internal);
        assert!(refused_records(b"{\"Records\":7}".to_vec()).is_err());
        assert!(refused_records(b"not json".to_vec()).is_err());
    }
}
