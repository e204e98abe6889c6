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
    /// The last record payload and its base64: without `--verify` every record of a fixed
    /// size is the same slice of the static payload, so it is encoded once, as a producer
    /// that repeats a record would. The clone keeps those bytes alive and unchanged, so
    /// equal address and length mean equal content.
    encoded: RefCell<(Bytes, Vec<u8>)>,
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
            encoded: RefCell::new((Bytes::new(), Vec::new())),
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
        let body = body(stream, &records, &mut self.encoded.borrow_mut());
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

fn body(stream: &str, records: &[PutEntry], encoded: &mut (Bytes, Vec<u8>)) -> Vec<u8> {
    let bytes: usize = records
        .iter()
        .map(|r| r.data.len() * 4 / 3 + r.partition_key.len() + 40)
        .sum();
    let mut out = Out::with_capacity(64 + bytes);
    out.begin_object()
        .str("StreamName", stream)
        .array("Records");
    for record in records {
        let (last, text) = encoded;
        if last.as_ptr() != record.data.as_ptr() || last.len() != record.data.len() {
            *last = record.data.clone();
            text.clear();
            base64_simd::STANDARD.encode_append(&record.data[..], text);
        }
        out.begin_object()
            .base64_text("Data", text)
            .str("PartitionKey", &key_text(&record.partition_key))
            .end_object();
    }
    out.end_array().end_object();
    out.into_bytes()
}

/// A partition key as text: borrowed when it is UTF-8, as generated keys are.
fn key_text(key: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(key) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(key),
    }
}
