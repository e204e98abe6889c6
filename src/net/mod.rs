//! Step 1 of the data path: sockets. Each core accepts on its own SO_REUSEPORT listener,
//! places each connection on the core with the fewest (see [`Core::place_connection`]) or,
//! when a binary connection's first request is an Attach, moves it to the core it names,
//! and runs the connections placed on it: reading frames into one buffer per connection
//! (record payloads are slices of it from here to the log), serving up to the in-flight
//! limit of requests concurrently, and writing responses in the order they finish. A
//! malformed frame closes only its own connection. Runs on the core serving the connection.

pub mod http;

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;

use crate::limits::{READ_BYTES_MAX, READ_RECORDS_MAX};
use crate::log::StartPosition;
use crate::protocol::binary::{
    self, FrameHeader, HEADER_BYTES, KIND_RESPONSE, Op, PutRequest, RecordsBody, Request, Response,
    Status, WireError,
};
use crate::server::core::{Core, CoreReply, CoreRequest, Port};
use crate::server::requests;

/// How long a subscription waits for records before checking that its connection lives.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(500);
/// Bytes read from a socket at a time.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A non-blocking recv(2) from socket `fd` into `spare`, which may be uninitialised: the
/// kernel only writes it. Lets a read land straight in the buffer that keeps the bytes
/// (glommio reads only into initialised memory, which costs a copy or a zeroing), and is
/// what glommio's own read tries first. `None` when no byte is waiting (or the call was
/// interrupted): the caller then reads through glommio, which arms a readiness poll and
/// registers the waker. On `Some(Ok(n))` the first `n` bytes of `spare` are initialised.
pub(crate) fn recv_nonblocking(
    fd: std::os::fd::RawFd,
    spare: &mut [std::mem::MaybeUninit<u8>],
) -> Option<std::io::Result<usize>> {
    if spare.is_empty() {
        return None;
    }
    // SAFETY: recv writes at most `spare.len()` bytes into memory borrowed exclusively for
    // the call; the caller keeps `fd` open for it.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    nonblocking_result(n)
}

/// A non-blocking sendmsg(2) of `bufs` in one call: how many bytes the kernel took, or
/// `None` when the socket's send buffer is full (or the call was interrupted), for the
/// caller to wait through glommio. Lets hyper write a response's head and body without
/// first copying them into one buffer (glommio has no vectored write of its own).
pub(crate) fn send_vectored_nonblocking(
    fd: std::os::fd::RawFd,
    bufs: &[std::io::IoSlice<'_>],
) -> Option<std::io::Result<usize>> {
    /// At most this many slices per call, well under any IOV_MAX.
    const SLICES_MAX: usize = 64;
    let count = bufs.len().min(SLICES_MAX);
    // SAFETY: an all-zero msghdr is a valid empty message; every field set below points
    // into `bufs`, which outlives the call. IoSlice is ABI-compatible with iovec.
    let n = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = bufs.as_ptr().cast_mut().cast();
        message.msg_iovlen = count as _;
        libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    nonblocking_result(n)
}

/// What a non-blocking socket call returned: its byte count, `None` when it would have
/// blocked or was interrupted, or the error.
fn nonblocking_result(n: isize) -> Option<std::io::Result<usize>> {
    match usize::try_from(n) {
        Ok(n) => Some(Ok(n)),
        Err(_) => {
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
                _ => Some(Err(error)),
            }
        }
    }
}

/// Accepts connections on `listener` until the core stops, within the core's connection
/// limit, and has each served on the core [`Core::place_connection`] picks: here, on a
/// task of its own, or handed to a lighter core. Shared by the binary and HTTP ports.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener, port: Port) {
    let listener = Rc::new(listener);
    // glommio accepts through io_uring, and dropping an accept the kernel has already
    // completed loses that connection: the client stays connected to a socket nobody
    // reads. So one accept stays in flight across the stop checks and is replaced only
    // once it has completed; it is dropped only when the server stops.
    let next_accept = |listener: &Rc<TcpListener>| {
        let listener = listener.clone();
        Box::pin(async move { listener.accept().await })
    };
    let mut accept = next_accept(&listener);
    while !core.stopping.get() {
        let accepting = async { Some((&mut accept).await) };
        let tick = async {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            None
        };
        let Some(accepted) = futures_lite::future::or(accepting, tick).await else {
            continue;
        };
        accept = next_accept(&listener);
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(core = core.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if core.connections() >= core.config.net.connections_per_core_max {
            tracing::warn!(
                core = core.id,
                "connection limit reached; closing a new connection"
            );
            drop(stream);
            continue;
        }
        tracing::debug!(core = core.id, peer = ?stream.peer_addr().ok(), "accepted a connection");
        let target = core.place_connection();
        if target == core.id {
            serve_here(core.clone(), stream, port, None);
        } else {
            hand_over(&core, stream, port, target);
        }
    }
}

/// A binary connection an Attach moved to another core: the request to answer there, and
/// the bytes read after it on the core it left, to serve next.
#[derive(Debug)]
pub struct Attached {
    pub request_id: u64,
    pub buffered: BytesMut,
}

/// Serves a connection on this core, on a task of its own, counted until it ends.
/// `attached`: set when an Attach moved the connection here.
fn serve_here(core: Rc<Core>, stream: TcpStream, port: Port, attached: Option<Attached>) {
    glommio::spawn_local(async move {
        let stopping = core.stopping.clone();
        match port {
            Port::Binary => serve_binary(core.clone(), stream, stopping, attached).await,
            Port::Http => http::serve(core.clone(), stream, stopping).await,
        }
        core.connection_closed();
    })
    .detach();
}

/// Serves a connection another core accepted and placed here, or that asked to move
/// here (`attached`).
pub fn adopt(core: Rc<Core>, socket: OwnedFd, port: Port, attached: Option<Attached>) {
    // SAFETY: the descriptor is a connected TCP socket whose only owner was `socket`.
    let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    serve_here(core, stream, port, attached);
}

/// A new descriptor for the socket `fd`, which glommio's stream does not give up: the
/// duplicate travels to another core and the original is closed here, which leaves the
/// connection open.
fn duplicate(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller keeps open for the call.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `duplicate` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// Sends a just-accepted connection to core `target`, which serves it. If the duplicate
/// descriptor cannot be made the connection is served here after all.
fn hand_over(core: &Rc<Core>, stream: TcpStream, port: Port, target: usize) {
    match duplicate(stream.as_raw_fd()) {
        Ok(socket) => {
            drop(stream);
            send_to_core(core, socket, port, target, None);
        }
        Err(error) => {
            tracing::warn!(core = core.id, %error, "could not hand a connection over; serving it here");
            core.placement_failed(target);
            core.place_here();
            serve_here(core.clone(), stream, port, None);
        }
    }
}

/// Has core `target`, where the connection is already counted, serve `socket`; if the
/// target has stopped, the connection is closed.
fn send_to_core(
    core: &Rc<Core>,
    socket: OwnedFd,
    port: Port,
    target: usize,
    attached: Option<Attached>,
) {
    let core = core.clone();
    glommio::spawn_local(async move {
        let request = CoreRequest::Adopt {
            socket,
            port,
            attached,
        };
        if !matches!(core.call(target, request).await, CoreReply::Applied(Ok(()))) {
            tracing::debug!(
                core = core.id,
                target,
                "a handed-over connection was closed: its core stopped"
            );
            core.placement_failed(target);
        }
    })
    .detach();
}

/// Serves one binary-protocol connection, logging why it ended.
pub async fn serve_binary(
    core: Rc<Core>,
    stream: TcpStream,
    stopping: Rc<Cell<bool>>,
    attached: Option<Attached>,
) {
    if let Err(reason) = serve_connection(&core, stream, stopping, attached).await {
        tracing::debug!(core = core.id, %reason, "connection closed");
    }
}

/// What to do with a connection's first frame when it is an Attach.
enum Attaching {
    /// Move the connection to this core and answer request `id` there.
    Move { target: usize, id: u64 },
    /// Answer here with this frame.
    Answer(Bytes),
}

/// Decides a connection's first frame, an Attach (see the protocol's table).
fn attach(core: &Core, header: &FrameHeader, frame: Bytes) -> Attaching {
    let id = header.request_id;
    let answer = |result: Result<Response, WireError>| {
        let mut out = BytesMut::new();
        match result {
            Ok(response) => response.encode(Op::Attach, id, &mut out),
            Err(error) => binary::encode_error(Op::Attach as u8, id, &error, &mut out),
        }
        Attaching::Answer(out.freeze())
    };
    let cores = core.cores;
    let target = match Request::decode(header.kind, frame.slice(HEADER_BYTES..)) {
        Ok(Request::Attach { core }) => usize::from(core),
        Ok(other) => {
            let message = format!("{:?} decoded from an Attach frame", other.op());
            return answer(Err(WireError::new(Status::Internal, message)));
        }
        Err(error) => {
            return answer(Err(WireError::new(error.status(), error.to_string())));
        }
    };
    if target >= cores {
        let message = format!(
            "no core {target}: the server runs {cores} (0 to {})",
            cores - 1
        );
        return answer(Err(WireError::new(Status::InvalidArgument, message)));
    }
    if target == core.id {
        let attached = Response::Attached {
            core: target as u16,
            cores: cores as u16,
        };
        return answer(Ok(attached));
    }
    if !core.place_on(target) {
        let message = format!(
            "core {target} is at its connection limit; served on core {}",
            core.id
        );
        return answer(Err(WireError::new(Status::LimitExceeded, message)));
    }
    Attaching::Move { target, id }
}

/// Serves one connection until the peer closes it, it sends a frame that cannot be
/// trusted, the server stops, or an Attach moves it to another core. `attached`: set
/// when an Attach moved it here; answered first, then its buffered bytes served.
async fn serve_connection(
    core: &Rc<Core>,
    stream: TcpStream,
    stopping: Rc<Cell<bool>>,
    attached: Option<Attached>,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // Stays open while either half lives, that is for the whole function.
    let fd = stream.as_raw_fd();
    let (mut reader, writer) = stream.split();
    let in_flight = core.config.net.requests_in_flight_max;
    let (out, frames) = local_channel::new_bounded::<Bytes>(in_flight + 1);
    let out = Rc::new(out);
    let closed = Rc::new(Cell::new(false));
    // The writer starts with the first frame, unless that is an Attach that moves the
    // connection, halves and all, to another core.
    let mut unstarted = Some((writer, frames));
    let mut writer_task = None;
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    if let Some(attached) = attached {
        writer_task = unstarted
            .take()
            .map(|(writer, frames)| spawn_writer(writer, frames, closed.clone()));
        let answer = Response::Attached {
            core: core.id as u16,
            cores: core.cores as u16,
        };
        let mut frame = BytesMut::new();
        answer.encode(Op::Attach, attached.request_id, &mut frame);
        let _ = out.send(frame.freeze()).await;
        buffer.extend_from_slice(&attached.buffered);
    }
    let permits = Rc::new(Semaphore::new(in_flight as u64));
    let frame_max = core.config.net.frame_bytes_max;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let result = loop {
        if stopping.get() || closed.get() {
            break Ok(());
        }
        // Frames already buffered are served before reading more.
        let next = next_frame(&mut buffer, frame_max);
        if !matches!(next, Ok(None))
            && let Some((writer, frames)) = unstarted.take()
        {
            if let Ok(Some((header, frame))) = &next
                && header.kind == Op::Attach as u8
            {
                match attach(core, header, frame.clone()) {
                    Attaching::Move { target, id } => match duplicate(fd) {
                        Ok(socket) => {
                            drop((reader, writer));
                            // Requests the client sent behind the Attach go with it.
                            let attached = Attached {
                                request_id: id,
                                buffered: std::mem::take(&mut buffer),
                            };
                            send_to_core(core, socket, Port::Binary, target, Some(attached));
                            return Ok(());
                        }
                        Err(error) => {
                            core.placement_failed(target);
                            writer_task = Some(spawn_writer(writer, frames, closed.clone()));
                            let message = format!("could not move the connection: {error}");
                            let error = WireError::new(Status::Internal, message);
                            send_error(&out, Op::Attach as u8, id, error).await;
                            continue;
                        }
                    },
                    Attaching::Answer(frame) => {
                        writer_task = Some(spawn_writer(writer, frames, closed.clone()));
                        let _ = out.send(frame).await;
                        continue;
                    }
                }
            }
            writer_task = Some(spawn_writer(writer, frames, closed.clone()));
        }
        match next {
            Ok(Some((header, frame))) => {
                let permit = permits
                    .clone()
                    .acquire_static_permit(1)
                    .await
                    .map_err(|e| e.to_string())?;
                let core = core.clone();
                let out = out.clone();
                let closed = closed.clone();
                glommio::spawn_local(async move {
                    serve_frame(&core, header, frame, &out, &closed).await;
                    drop(permit);
                })
                .detach();
                continue;
            }
            Ok(None) => {}
            Err((request_id, error)) => {
                let mut frame = BytesMut::new();
                binary::encode_error(0, request_id, &error, &mut frame);
                let _ = out.send(frame.freeze()).await;
                break Err(error.to_string());
            }
        }
        // Straight into the frame buffer when bytes are waiting; through glommio (and a
        // copy) only to wait for them.
        if buffer.capacity() - buffer.len() < READ_CHUNK_BYTES / 4 {
            buffer.reserve(READ_CHUNK_BYTES);
        }
        let read = match recv_nonblocking(fd, buffer.spare_capacity_mut()) {
            Some(Ok(read)) => {
                // SAFETY: recv initialised `read` bytes of the spare capacity.
                unsafe { buffer.set_len(buffer.len() + read) };
                read
            }
            Some(Err(error)) => break Err(error.to_string()),
            None => {
                let read = reader.read(&mut chunk).await.map_err(|e| e.to_string())?;
                buffer.extend_from_slice(&chunk[..read]);
                read
            }
        };
        if read == 0 {
            break Ok(());
        }
    };
    closed.set(true);
    drop(out);
    // Let requests in flight finish and their responses go out before closing.
    let _ = permits.acquire(in_flight as u64).await;
    if let Some(writer_task) = writer_task {
        let _ = writer_task.await;
    }
    result
}

/// Writes a connection's response frames in the order they come until the channel closes
/// or a write fails, then marks the connection `closed` and closes its write side.
fn spawn_writer(
    mut writer: futures::io::WriteHalf<TcpStream>,
    frames: local_channel::LocalReceiver<Bytes>,
    closed: Rc<Cell<bool>>,
) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        while let Some(frame) = frames.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        closed.set(true);
        let _ = writer.close().await;
    })
}

/// Splits the next whole frame off `buffer`; `Ok(None)` when more bytes are needed.
/// A header that cannot be trusted is an error carrying the request id to answer.
fn next_frame(
    buffer: &mut BytesMut,
    frame_max: usize,
) -> Result<Option<(FrameHeader, Bytes)>, (u64, WireError)> {
    let Some(head) = buffer.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let mut raw = [0u8; HEADER_BYTES];
    raw.copy_from_slice(head);
    let header = FrameHeader::decode(&raw, frame_max).map_err(|error| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[8..16]);
        (
            u64::from_le_bytes(id),
            WireError::new(error.status(), error.to_string()),
        )
    })?;
    if buffer.len() < header.frame_bytes {
        buffer.reserve(header.frame_bytes - buffer.len());
        return Ok(None);
    }
    let frame = buffer.split_to(header.frame_bytes).freeze();
    Ok(Some((header, frame)))
}

async fn serve_frame(
    core: &Rc<Core>,
    header: FrameHeader,
    frame: Bytes,
    out: &Rc<LocalSender<Bytes>>,
    closed: &Rc<Cell<bool>>,
) {
    let started = std::time::Instant::now();
    let id = header.request_id;
    let body = frame.slice(HEADER_BYTES..);
    let decode_failed = |error: binary::BodyError| {
        let error = WireError::new(error.status(), error.to_string());
        send_error(out, header.kind & !KIND_RESPONSE, id, error)
    };
    // Puts, the bulk of the traffic, are decoded without slicing each record.
    let (op, result) = if header.kind == Op::PutRecords as u8 {
        let put = match PutRequest::decode(body) {
            Ok(put) => put,
            Err(error) => return decode_failed(error).await,
        };
        (Op::PutRecords, requests::put(core, &put).await)
    } else {
        let request = match Request::decode(header.kind, body) {
            Ok(request) => request,
            Err(error) => return decode_failed(error).await,
        };
        let op = request.op();
        if let Request::Subscribe {
            stream,
            shard,
            position,
        } = request
        {
            subscribe(core, id, &stream, shard, position, out, closed).await;
            return;
        }
        (op, requests::handle(core, request).await)
    };
    let mut frame = BytesMut::new();
    let failed = match result {
        Ok(response) => {
            response.encode(op, id, &mut frame);
            false
        }
        Err(error) => {
            binary::encode_error(op as u8, id, &error, &mut frame);
            true
        }
    };
    let _ = out.send(frame.freeze()).await;
    record(core, op, started, failed);
}

/// Counts a served request and records its latency, from its frame read to its response
/// handed to the writer.
fn record(core: &Core, op: Op, started: std::time::Instant, failed: bool) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match op {
        Op::PutRecords => core.metrics.latency(crate::metrics::Op::Put, micros),
        Op::GetRecords => core.metrics.latency(crate::metrics::Op::Get, micros),
        _ => {}
    }
    core.metrics.count(|c| {
        c.requests += 1;
        c.errors += u64::from(failed);
    });
}

async fn send_error(out: &Rc<LocalSender<Bytes>>, kind: u8, id: u64, error: WireError) {
    let mut frame = BytesMut::new();
    binary::encode_error(kind, id, &error, &mut frame);
    let _ = out.send(frame.freeze()).await;
}

/// Streams a shard's records as they become durable, starting at `position`, until the
/// connection closes. Each event is one read; a reader at the head waits on the shard.
async fn subscribe(
    core: &Rc<Core>,
    id: u64,
    stream: &str,
    shard: u32,
    position: StartPosition,
    out: &Rc<LocalSender<Bytes>>,
    closed: &Rc<Cell<bool>>,
) {
    // The first read resolves the position (and checks the stream and shard exist).
    let wait_us = SUBSCRIBE_POLL.as_micros() as u64;
    let first = requests::read(
        core,
        stream,
        shard,
        position,
        READ_RECORDS_MAX as u32,
        READ_BYTES_MAX as u32,
        0,
    )
    .await;
    let mut body = match first {
        Ok(body) => body,
        Err(error) => return send_error(out, Op::Subscribe as u8, id, error).await,
    };
    let mut frame = BytesMut::new();
    Response::Empty.encode(Op::Subscribe, id, &mut frame);
    if out.send(frame.freeze()).await.is_err() {
        return;
    }
    loop {
        if !body.records.is_empty() {
            let mut frame =
                BytesMut::with_capacity(binary::records_body_bytes(&body.records) + HEADER_BYTES);
            binary::encode_event(id, &body, &mut frame);
            if out.send(frame.freeze()).await.is_err() {
                return;
            }
        }
        if closed.get() {
            return;
        }
        let next = StartPosition::AtSequence(body.next_seq);
        let read = requests::read(
            core,
            stream,
            shard,
            next,
            READ_RECORDS_MAX as u32,
            READ_BYTES_MAX as u32,
            wait_us,
        );
        body = match read.await {
            Ok(body) => body,
            Err(error) if error.status == Status::StreamNotFound => {
                return send_error(out, Op::Subscribe as u8, id, error).await;
            }
            Err(error) => {
                tracing::warn!(%error, "subscription read failed; retrying");
                glommio::timer::sleep(SUBSCRIBE_POLL).await;
                RecordsBody {
                    next_seq: body.next_seq,
                    ..RecordsBody::default()
                }
            }
        };
    }
}
