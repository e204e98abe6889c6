//! The HTTP listener of each core: HTTP/1.1 with keep-alive and HTTP/2 (including
//! cleartext prior-knowledge h2c) on the same port, served by hyper over glommio sockets.
//! Owns the socket adapter between glommio and hyper, the per-connection limits and the
//! idle timeout; the Kinesis API behind it is in [`crate::protocol::kinesis`]. Runs on the
//! core that accepted the connection.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::server::conn::auto;

use super::READ_CHUNK_BYTES;
use crate::protocol::kinesis;
use crate::server::core::Core;

/// A connection with no bytes in either direction for this long is closed, so idle and
/// stalled clients cannot hold connections (and their memory) for ever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one HTTP connection (for [`crate::net::accept_loop`]).
pub async fn serve(core: Rc<Core>, stream: TcpStream, _stopping: Rc<Cell<bool>>) {
    let _ = stream.set_nodelay(true);
    let last_activity = Rc::new(Cell::new(Instant::now()));
    let io = HyperIo {
        stream,
        last_activity: last_activity.clone(),
    };
    let service_core = core.clone();
    let service = hyper::service::service_fn(move |request| {
        let core = service_core.clone();
        async move { Ok::<_, std::convert::Infallible>(kinesis::handle(&core, request).await) }
    });
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(crate::limits::HTTP_HEAD_BYTES_MAX);
    builder
        .http2()
        .max_concurrent_streams(crate::limits::HTTP2_STREAMS_MAX)
        .max_frame_size(16 * 1024)
        .max_header_list_size(crate::limits::HTTP_HEAD_BYTES_MAX as u32);
    let connection = builder.serve_connection(io, service);
    let idle = async {
        loop {
            glommio::timer::sleep(IDLE_TIMEOUT / 4).await;
            if last_activity.get().elapsed() >= IDLE_TIMEOUT {
                return;
            }
        }
    };
    let served = async {
        if let Err(error) = connection.await {
            tracing::debug!(core = core.id, %error, "http connection ended with an error");
        }
    };
    futures_lite::future::or(served, idle).await;
}

/// Spawns hyper's HTTP/2 stream tasks on the current glommio executor.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        glommio::spawn_local(future).detach();
    }
}

/// glommio's socket, seen through hyper's I/O traits. Notes the time of every transfer
/// for the idle timeout. Also used by the load generator's HTTP client.
pub struct HyperIo {
    stream: TcpStream,
    last_activity: Rc<Cell<Instant>>,
}

impl HyperIo {
    pub fn new(stream: TcpStream) -> HyperIo {
        HyperIo {
            stream,
            last_activity: Rc::new(Cell::new(Instant::now())),
        }
    }
}

impl Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // hyper hands over uninitialised spare capacity, and glommio reads only into
        // initialised bytes. So first a non-blocking recv(2) straight into hyper's buffer
        // (the kernel writes the bytes, nothing reads the uninitialised ones): no copy, and
        // what glommio's own read would do first anyway (it tries recv before arming a
        // readiness poll, and this stream keeps no buffer of its own). Only when nothing is
        // waiting does glommio read, to arm the poll and register the waker: into this
        // thread's scratch buffer, zeroed once (zeroing hyper's buffer before each read
        // cost 5 % of the server's CPU), whose bytes are then copied over.
        match recv_into(&self.stream, &mut buf) {
            Some(Ok(n)) => {
                if n > 0 {
                    self.last_activity.set(Instant::now());
                }
                return Poll::Ready(Ok(()));
            }
            Some(Err(error)) => return Poll::Ready(Err(error)),
            None => {}
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let limit = buf.remaining().min(scratch.len());
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..limit]) {
                Poll::Ready(Ok(n)) => {
                    if n > 0 {
                        self.last_activity.set(Instant::now());
                    }
                    buf.put_slice(&scratch[..n.min(limit)]);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

/// [`super::recv_nonblocking`] into `buf`'s spare room, advancing it past what came.
fn recv_into(stream: &TcpStream, buf: &mut ReadBufCursor<'_>) -> Option<std::io::Result<usize>> {
    use std::os::fd::AsRawFd;
    // SAFETY: the slice is only handed to the kernel to write into; no byte of it that was
    // initialised is uninitialised by that.
    let spare = unsafe { buf.as_mut() };
    let read = super::recv_nonblocking(stream.as_raw_fd(), spare)?;
    if let Ok(n) = read {
        // SAFETY: the kernel initialised the first `n` bytes of the spare room.
        unsafe { buf.advance(n) };
    }
    Some(read)
}

thread_local! {
    /// Each thread's landing buffer for socket reads (see [`HyperIo`]'s `poll_read`):
    /// filled and emptied within one call, so every connection on the thread shares it.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK_BYTES]);
}

impl Write for HyperIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result
            && *n > 0
        {
            self.last_activity.set(Instant::now());
        }
        result
    }

    /// Without this hyper copies every body into its own buffer before writing (its
    /// "flatten" strategy): for a 50 KB PutRecords response on the server, and for a
    /// 100 KB request in the load generator, where it was 6 % of the CPU.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        use std::os::fd::AsRawFd;
        match super::send_vectored_nonblocking(self.stream.as_raw_fd(), bufs) {
            Some(Ok(n)) => {
                if n > 0 {
                    self.last_activity.set(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Some(Err(error)) => Poll::Ready(Err(error)),
            // The send buffer is full: glommio's write of the first slice waits for room
            // (arming the poll and the waker) and sends what fits of it.
            None => match bufs.iter().find(|b| !b.is_empty()) {
                Some(first) => self.poll_write(cx, first),
                None => Poll::Ready(Ok(0)),
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}
