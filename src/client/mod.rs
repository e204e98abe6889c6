//! The Rust client for the binary protocol, used by the CLI, the tests and the load
//! generator. One connection carries many requests at once (pipelining): each call gets a
//! request id, a writer task sends frames in order, and a reader task hands each response
//! to its caller and each subscription event to its subscription. Runs inside a glommio
//! executor, on one thread.

pub mod consumer;
pub mod producer;

pub use producer::Producer;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use thiserror::Error;

use crate::catalog::Reshard;
use crate::limits::FRAME_BYTES_MAX;
use crate::log::StartPosition;
use crate::protocol::binary::{
    self, FrameHeader, HEADER_BYTES, KIND_EVENT, KIND_RESPONSE, Op, PutEntry, PutResult,
    RecordsBody, Request, Response, StreamDescription, WireError,
};

#[derive(Clone, Debug, Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(String),
    #[error("server: {0}")]
    Server(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the connection closed")]
    Closed,
}

type Waiter = oneshot::Sender<Result<(FrameHeader, Bytes), ClientError>>;

/// Events queued per subscription before the reader waits for the subscriber.
const SUBSCRIPTION_QUEUE: usize = 64;

#[derive(Default)]
struct Pending {
    calls: HashMap<u64, Waiter>,
    subscriptions: HashMap<u64, Rc<LocalSender<Result<RecordsBody, ClientError>>>>,
}

/// Which server core owns each hash key of a stream: its open shards' hash ranges, by
/// start, with each one's owner core (from a description). What a client needs to send
/// each record straight to its owner core (see [`Client::connect_to_core`]).
#[derive(Clone, Debug)]
pub struct OwnerMap {
    starts: Vec<u128>,
    cores: Vec<usize>,
}

impl OwnerMap {
    pub fn new(description: &StreamDescription) -> OwnerMap {
        let mut open: Vec<(u128, usize)> = description
            .shards
            .iter()
            .filter(|s| s.end_seq.is_none())
            .map(|s| (s.hash_start, usize::from(s.owner_core)))
            .collect();
        open.sort_unstable();
        OwnerMap {
            starts: open.iter().map(|&(start, _)| start).collect(),
            cores: open.iter().map(|&(_, core)| core).collect(),
        }
    }

    /// The core of the open shard whose range holds `hash` (the open shards' ranges
    /// cover every hash key; core 0 for a map of none).
    pub fn core_of(&self, hash: u128) -> usize {
        let after = self.starts.partition_point(|&start| start <= hash);
        self.cores
            .get(after.saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }

    /// The cores that own open shards, in hash order, repeated as often as they own one.
    pub fn cores(&self) -> impl Iterator<Item = usize> + '_ {
        self.cores.iter().copied()
    }
}

/// One connection to `addr` per core in `cores` (repeats are fine), each attached to its
/// core, indexed by core: `None` for a core below the largest that is not in `cores`.
///
/// # Errors
/// A connection failing, or the server refusing to serve one on its core.
pub async fn connect_per_core(
    addr: SocketAddr,
    cores: impl Iterator<Item = usize>,
) -> Result<Vec<Option<Rc<Client>>>, ClientError> {
    let mut clients: Vec<Option<Rc<Client>>> = Vec::new();
    for core in cores {
        if clients.len() <= core {
            clients.resize_with(core + 1, || None);
        }
        if clients[core].is_none() {
            let wanted = u16::try_from(core)
                .map_err(|_| ClientError::Protocol(format!("no server core {core}")))?;
            clients[core] = Some(Rc::new(Client::connect_to_core(addr, wanted).await?));
        }
    }
    Ok(clients)
}

/// A connection to a spate server.
pub struct Client {
    out: LocalSender<Bytes>,
    pending: Rc<RefCell<Pending>>,
    next_id: Cell<u64>,
}

impl Client {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the connection fails.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Io(format!("connecting to {addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let (reader, mut writer) = stream.split();
        let (out, frames) = local_channel::new_bounded::<Bytes>(1024);
        glommio::spawn_local(async move {
            while let Some(frame) = frames.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = writer.close().await;
        })
        .detach();
        let pending = Rc::new(RefCell::new(Pending::default()));
        let reader_pending = pending.clone();
        glommio::spawn_local(async move {
            let error = read_loop(reader, &reader_pending).await;
            let mut pending = reader_pending.borrow_mut();
            for (_, waiter) in pending.calls.drain() {
                let _ = waiter.send(Err(error.clone()));
            }
            for (_, subscription) in pending.subscriptions.drain() {
                let _ = subscription.try_send(Err(error.clone()));
            }
        })
        .detach();
        Ok(Client {
            out,
            pending,
            next_id: Cell::new(1),
        })
    }

    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Sends a request and waits for its response.
    ///
    /// # Errors
    /// The server's error, or a connection or protocol failure.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.start(request).await?.await
    }

    /// Sends a request and returns at once with a future of its response: requests
    /// started one after another go out in that order, however their answers are awaited.
    ///
    /// # Errors
    /// The connection closed before the request could be sent; the future yields the
    /// server's error, or a connection or protocol failure.
    pub async fn start(
        &self,
        request: &Request,
    ) -> Result<impl Future<Output = Result<Response, ClientError>> + use<>, ClientError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().calls.insert(id, tx);
        let mut frame = BytesMut::new();
        request.encode(id, &mut frame);
        self.send(frame.freeze(), id).await?;
        let op = request.op();
        Ok(async move {
            let (header, body) = rx.await.map_err(|_| ClientError::Closed)??;
            decode_response(op, header, body)
        })
    }

    async fn send(&self, frame: Bytes, id: u64) -> Result<(), ClientError> {
        if self.out.send(frame).await.is_err() {
            self.pending.borrow_mut().calls.remove(&id);
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Puts records into a stream; one result per record, in order.
    ///
    /// # Errors
    /// Request-level failures (unknown stream, a limit broken: nothing was appended).
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutEntry>,
    ) -> Result<Vec<PutResult>, ClientError> {
        let request = Request::PutRecords {
            stream: stream.to_string(),
            records,
        };
        match self.call(&request).await? {
            Response::Put(results) => Ok(results),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads records from one shard.
    ///
    /// # Errors
    /// Unknown stream or shard, or a failed read.
    pub async fn get_records(
        &self,
        stream: &str,
        shard: u32,
        position: StartPosition,
        limit: u32,
    ) -> Result<RecordsBody, ClientError> {
        let request = Request::GetRecords {
            stream: stream.to_string(),
            shard,
            position,
            limit,
            bytes_max: crate::limits::READ_BYTES_MAX as u32,
            wait_ms: 0,
        };
        match self.call(&request).await? {
            Response::Records(body) => Ok(body),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a stream of `shard_count` shards.
    ///
    /// # Errors
    /// The server's error (exists, bad name, limit).
    pub async fn create_stream(&self, stream: &str, shard_count: u32) -> Result<(), ClientError> {
        let request = Request::CreateStream {
            stream: stream.to_string(),
            shard_count,
        };
        self.call(&request).await.map(|_| ())
    }

    /// Deletes a stream and its records.
    ///
    /// # Errors
    /// The server's error.
    pub async fn delete_stream(&self, stream: &str) -> Result<(), ClientError> {
        let request = Request::DeleteStream {
            stream: stream.to_string(),
        };
        self.call(&request).await.map(|_| ())
    }

    /// Splits, merges, rescales or moves shards; resolves once the change is done (or,
    /// when the server keeps streams UPDATING for a while, once it is accepted).
    ///
    /// # Errors
    /// The server's error (unknown shard, invalid split or merge, stream not ACTIVE, a
    /// quota).
    pub async fn reshard(&self, stream: &str, change: Reshard) -> Result<(), ClientError> {
        let request = Request::Reshard {
            stream: stream.to_string(),
            change,
        };
        self.call(&request).await.map(|_| ())
    }

    /// Names of every stream.
    ///
    /// # Errors
    /// A connection failure.
    pub async fn list_streams(&self) -> Result<Vec<String>, ClientError> {
        match self.call(&Request::ListStreams).await? {
            Response::Streams(names) => Ok(names),
            other => Err(unexpected(&other)),
        }
    }

    /// Connects to `addr` and moves the connection to server core `core` (the
    /// protocol's Attach), so puts for shards that core owns take no cross-core hand-over.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the connection fails; the server's error when it cannot
    /// serve the connection on that core (no such core, or it is full).
    pub async fn connect_to_core(addr: SocketAddr, core: u16) -> Result<Client, ClientError> {
        let client = Client::connect(addr).await?;
        match client.call(&Request::Attach { core }).await? {
            Response::Attached { core: served, .. } if served == core => Ok(client),
            other => Err(unexpected(&other)),
        }
    }

    /// A stream's shards, owners and positions.
    ///
    /// # Errors
    /// The server's error.
    pub async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, ClientError> {
        let request = Request::DescribeStream {
            stream: stream.to_string(),
        };
        match self.call(&request).await? {
            Response::Stream(description) => Ok(description),
            other => Err(unexpected(&other)),
        }
    }

    /// Subscribes to a shard from `position`: the server pushes records as they become
    /// durable.
    ///
    /// # Errors
    /// The server's error (unknown stream or shard).
    pub async fn subscribe(
        &self,
        stream: &str,
        shard: u32,
        position: StartPosition,
    ) -> Result<Subscription, ClientError> {
        let request = Request::Subscribe {
            stream: stream.to_string(),
            shard,
            position,
        };
        let id = self.next_id();
        let (events_tx, events) = local_channel::new_bounded(SUBSCRIPTION_QUEUE);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.borrow_mut();
            pending.calls.insert(id, tx);
            pending.subscriptions.insert(id, Rc::new(events_tx));
        }
        let mut frame = BytesMut::new();
        request.encode(id, &mut frame);
        self.send(frame.freeze(), id).await?;
        let answer = rx.await.map_err(|_| ClientError::Closed).and_then(|r| r);
        let result = answer.and_then(|(header, body)| decode_response(Op::Subscribe, header, body));
        if let Err(error) = result {
            self.pending.borrow_mut().subscriptions.remove(&id);
            return Err(error);
        }
        Ok(Subscription { events })
    }
}

/// Records pushed by the server for one subscription.
pub struct Subscription {
    events: LocalReceiver<Result<RecordsBody, ClientError>>,
}

impl Subscription {
    /// The next batch of records; `None` once the connection has closed.
    pub async fn next(&self) -> Option<Result<RecordsBody, ClientError>> {
        self.events.recv().await
    }
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}

fn decode_response(op: Op, header: FrameHeader, body: Bytes) -> Result<Response, ClientError> {
    if header.status != 0 {
        let error = binary::decode_error(header.status, body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        return Err(ClientError::Server(error));
    }
    if header.kind != KIND_RESPONSE | op as u8 {
        return Err(ClientError::Protocol(format!(
            "response kind {:#04x} to a {op:?} request",
            header.kind
        )));
    }
    Response::decode(op, body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Reads frames until the connection fails; returns why it stopped.
async fn read_loop(mut reader: ReadHalf<TcpStream>, pending: &Rc<RefCell<Pending>>) -> ClientError {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buffer.len() >= HEADER_BYTES {
            let mut raw = [0u8; HEADER_BYTES];
            raw.copy_from_slice(&buffer[..HEADER_BYTES]);
            let header = match FrameHeader::decode(&raw, FRAME_BYTES_MAX * 2) {
                Ok(header) => header,
                Err(error) => return ClientError::Protocol(error.to_string()),
            };
            if buffer.len() < header.frame_bytes {
                buffer.reserve(header.frame_bytes - buffer.len());
                break;
            }
            let frame = buffer.split_to(header.frame_bytes).freeze();
            dispatch(pending, header, frame.slice(HEADER_BYTES..)).await;
        }
        match reader.read(&mut chunk).await {
            Ok(0) => return ClientError::Closed,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) => return ClientError::Io(error.to_string()),
        }
    }
}

async fn dispatch(pending: &Rc<RefCell<Pending>>, header: FrameHeader, body: Bytes) {
    if header.kind == KIND_EVENT {
        let subscription = pending
            .borrow()
            .subscriptions
            .get(&header.request_id)
            .cloned();
        if let Some(subscription) = subscription {
            let event =
                binary::decode_event(body).map_err(|e| ClientError::Protocol(e.to_string()));
            // Waits when the subscriber is behind: the server then waits on this socket.
            let _ = subscription.send(event).await;
        }
        return;
    }
    let waiter = pending.borrow_mut().calls.remove(&header.request_id);
    if let Some(waiter) = waiter {
        let _ = waiter.send(Ok((header, body)));
    } else if header.status != 0 {
        // An error answering no request of ours (a frame the server could not read).
        if let Ok(error) = binary::decode_error(header.status, body) {
            tracing::warn!(%error, "server reported an error on the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::binary::ShardDescription;

    fn shard(index: u32, (start, end): (u128, u128), core: u16, closed: bool) -> ShardDescription {
        ShardDescription {
            index,
            owner_core: core,
            hash_start: start,
            hash_end: end,
            trim_seq: 0,
            tip_seq: 0,
            parent: None,
            adjacent_parent: None,
            end_seq: closed.then_some(0),
        }
    }

    #[test]
    fn the_owner_map_names_the_core_of_the_open_shard_holding_a_hash() {
        let ranges = crate::catalog::hash_ranges(4);
        // Listed out of hash order, with a closed parent spanning everything on core 7.
        let mut shards = vec![shard(9, (0, u128::MAX), 7, true)];
        for (i, &range) in ranges.iter().enumerate().rev() {
            shards.push(shard(i as u32, range, [0, 1, 1, 0][i], false));
        }
        let map = OwnerMap::new(&StreamDescription {
            name: "s".into(),
            status: "ACTIVE".into(),
            retention_hours: 24,
            created_us: 0,
            shards,
        });
        for (i, &(start, end)) in ranges.iter().enumerate() {
            let core = [0, 1, 1, 0][i];
            for hash in [start, start + (end - start) / 2, end] {
                assert_eq!(map.core_of(hash), core, "shard {i}, hash {hash}");
            }
        }
        assert_eq!(map.cores().collect::<Vec<_>>(), vec![0, 1, 1, 0]);
    }
}
