//! The load generator's NATS JetStream publisher, for comparing spate with a JetStream
//! server (`nats-server -js`) on the nearest equivalent durable workload: every record is
//! one JetStream publish to the stream's subject, acknowledged by the server's PubAck. A
//! put of N records publishes them back to back on one connection and waits for all N
//! acknowledgements, so `--batch` and `--in-flight` set how many publishes are in flight,
//! as `nats bench --js` does with its publish batch. Speaks the NATS text protocol by
//! hand (CONNECT, SUB, PUB, MSG/HMSG, PING/PONG): Debian ships the server but no load
//! tool or client we could drive it with. Runs on a load worker's executor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use crate::client::ClientError;
use crate::protocol::binary::{PutEntry, PutResult, Status, WireError};

/// Longest control line we accept from the server.
const LINE_BYTES_MAX: usize = 64 * 1024;

type Ack = oneshot::Sender<Result<(), String>>;

/// One connection to a NATS server.
pub struct Connection {
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    turn: Semaphore,
    pending: RefCell<HashMap<u64, Ack>>,
    next: Cell<u64>,
    inbox: String,
}

impl Connection {
    /// Connects, says CONNECT and subscribes to this connection's reply inbox.
    ///
    /// # Errors
    /// A message when the connection or the handshake fails.
    pub async fn connect(target: SocketAddr, id: u64) -> Result<Rc<Connection>, String> {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connecting to {target}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.split();
        let inbox = format!("_INBOX.spate{id}");
        let connection = Rc::new(Connection {
            writer: RefCell::new(Some(writer)),
            turn: Semaphore::new(1),
            pending: RefCell::new(HashMap::new()),
            next: Cell::new(0),
            inbox,
        });
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\
             \"name\":\"spate-load\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}}\r\n\
             SUB {}.* 1\r\nPING\r\n",
            connection.inbox
        );
        connection.write(hello.as_bytes()).await?;
        let reading = connection.clone();
        glommio::spawn_local(async move {
            if let Err(error) = reading.read_loop(reader).await {
                tracing::debug!(%error, "nats connection ended");
            }
            for (_, ack) in reading.pending.borrow_mut().drain() {
                let _ = ack.send(Err("the connection closed".into()));
            }
        })
        .detach();
        Ok(connection)
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), String> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        let mut writer = self
            .writer
            .borrow_mut()
            .take()
            .ok_or("the connection closed")?;
        let result = writer.write_all(bytes).await;
        *self.writer.borrow_mut() = Some(writer);
        result.map_err(|e| format!("writing to nats: {e}"))
    }

    /// Sends one request on `subject`; an error reply comes back as `Err` with its text.
    async fn request(&self, subject: &str, payload: &[u8]) -> Result<(), String> {
        let (n, rx) = self.expect();
        let mut frame =
            format!("PUB {subject} {}.{n} {}\r\n", self.inbox, payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.write(&frame).await?;
        rx.await.map_err(|_| "the connection closed".to_string())?
    }

    fn expect(&self) -> (u64, oneshot::Receiver<Result<(), String>>) {
        let n = self.next.get();
        self.next.set(n + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(n, tx);
        (n, rx)
    }

    /// Creates a file-storage JetStream stream named `stream` on subject `stream` (an
    /// existing one is kept).
    ///
    /// # Errors
    /// A message when the server refuses it for another reason.
    pub async fn ensure_stream(&self, stream: &str) -> Result<(), String> {
        let config = format!(
            "{{\"name\":\"{stream}\",\"subjects\":[\"{stream}\"],\"storage\":\"file\",\
             \"retention\":\"limits\",\"num_replicas\":1}}"
        );
        match self
            .request(
                &format!("$JS.API.STREAM.CREATE.{stream}"),
                config.as_bytes(),
            )
            .await
        {
            Ok(_) => Ok(()),
            // 10058: a stream of that name exists already.
            Err(error) if error.contains("10058") || error.contains("already in use") => Ok(()),
            Err(error) => Err(format!("creating JetStream stream {stream}: {error}")),
        }
    }

    /// Publishes every record to `stream` and waits for each PubAck.
    ///
    /// # Errors
    /// A connection failure; per-record refusals are in the results.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutEntry>,
    ) -> Result<Vec<PutResult>, ClientError> {
        let mut frame = Vec::with_capacity(records.len() * (64 + stream.len()));
        let mut acks = Vec::with_capacity(records.len());
        for record in &records {
            let (n, rx) = self.expect();
            frame.extend_from_slice(
                format!("PUB {stream} {}.{n} {}\r\n", self.inbox, record.data.len()).as_bytes(),
            );
            frame.extend_from_slice(&record.data);
            frame.extend_from_slice(b"\r\n");
            acks.push(rx);
        }
        self.write(&frame).await.map_err(ClientError::Io)?;
        let mut results = Vec::with_capacity(acks.len());
        for ack in acks {
            results.push(match ack.await {
                Ok(Ok(())) => Ok((0, 0)),
                Ok(Err(error)) => Err(WireError::new(Status::Internal, error)),
                Err(_) => return Err(ClientError::Closed),
            });
        }
        Ok(results)
    }

    async fn read_loop(&self, mut reader: ReadHalf<TcpStream>) -> Result<(), String> {
        let mut buffer = BytesMut::with_capacity(256 * 1024);
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            while let Some(consumed) = self.parse(&buffer).await? {
                buffer.advance(consumed);
            }
            if buffer.len() > LINE_BYTES_MAX + 8 * 1024 * 1024 {
                return Err("a message from the server is too large".into());
            }
            let n = reader
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading from nats: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Handles the first whole message in `buffer`; returns the bytes it took, or `None`
    /// when more are needed.
    async fn parse(&self, buffer: &[u8]) -> Result<Option<usize>, String> {
        let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") else {
            if buffer.len() > LINE_BYTES_MAX {
                return Err("a control line from the server is too long".into());
            }
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&buffer[..end]).map_err(|_| "a control line is not UTF-8")?;
        let mut words = line.split_ascii_whitespace();
        let verb = words.next().unwrap_or_default();
        let after_line = end + 2;
        match verb {
            "MSG" | "HMSG" => {
                let args: Vec<&str> = words.collect();
                // MSG subject sid [reply] size; HMSG subject sid [reply] header-size size.
                let size: usize = args
                    .last()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad {verb} line: {line}"))?;
                let total = after_line + size + 2;
                if buffer.len() < total {
                    return Ok(None);
                }
                let payload = String::from_utf8_lossy(&buffer[after_line..after_line + size]);
                let subject = args.first().copied().unwrap_or_default();
                self.on_reply(subject, verb == "HMSG", &payload);
                Ok(Some(total))
            }
            "PING" => {
                self.write(b"PONG\r\n").await?;
                Ok(Some(after_line))
            }
            "-ERR" => Err(format!("nats server error: {line}")),
            _ => Ok(Some(after_line)),
        }
    }

    fn on_reply(&self, subject: &str, headers: bool, payload: &str) {
        let Some(n) = subject
            .rsplit('.')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        let Some(ack) = self.pending.borrow_mut().remove(&n) else {
            return;
        };
        let outcome = if headers && payload.starts_with("NATS/1.0 503") {
            Err("no JetStream stream answers on this subject (503)".to_string())
        } else if payload.contains("\"error\"") {
            Err(payload.trim().to_string())
        } else {
            Ok(())
        };
        let _ = ack.send(outcome);
    }
}
