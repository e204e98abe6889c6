//! The glommio behaviour spate relies on for a server that runs for days: a task that waits
//! on one I/O source or channel for a long time, and is polled again and again meanwhile
//! (the accept loops race each accept against a 100 ms stop-check tick), must not pile up
//! references to itself. Each waker clone holds one, the count is an i16, and glommio
//! panics the executor when it overflows: with unpatched glommio 0.9.0 a server died after
//! 27 minutes without a connection on one of its ports (two polls per tick). Also that a
//! directory opens by a relative path (`spate log-bench --dir x` failed with EBADF).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::run;
use futures_lite::future;

/// More polls than a task's reference count can hold.
const POLLS: usize = 40_000;

/// Polls `pending` once per round, `POLLS` rounds, each round ended by a yield, then returns
/// it still unfinished.
async fn poll_many<F: std::future::Future + Unpin>(mut pending: F) -> F {
    for _ in 0..POLLS {
        let polled = async {
            (&mut pending).await;
            panic!("the future finished before anything was sent to it");
        };
        future::or(polled, future::yield_now()).await;
    }
    pending
}

#[test]
fn an_accept_polled_many_times_still_accepts() {
    run(|| async {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let accept = Box::pin(listener.accept());
        let accept = poll_many(accept).await;
        let client = std::thread::spawn(move || std::net::TcpStream::connect(addr));
        let accepted = glommio::timer::timeout(Duration::from_secs(10), async { Ok(accept.await) })
            .await
            .expect("the accept completes");
        assert!(accepted.is_ok(), "accept failed: {accepted:?}");
        assert!(client.join().expect("client thread").is_ok());
    });
}

#[test]
fn a_channel_receive_polled_many_times_still_receives() {
    let (sender, receiver) = glommio::channels::shared_channel::new_bounded::<u64>(4);
    let polled = Arc::new(AtomicBool::new(false));
    let go = polled.clone();
    let producer = std::thread::spawn(move || {
        run(|| async move {
            let sender = sender.connect().await;
            // Nothing is sent until the receiver has been polled POLLS times.
            while !go.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            sender.send(7).await.is_ok()
        })
    });
    let received = run(|| async move {
        let receiver = receiver.connect().await;
        let waiting = Box::pin(receiver.recv());
        let waiting = poll_many(waiting).await;
        polled.store(true, Ordering::Release);
        glommio::timer::timeout(Duration::from_secs(10), async { Ok(waiting.await) })
            .await
            .expect("the message arrives")
    });
    assert_eq!(received, Some(7));
    assert!(producer.join().expect("producer thread"));
}

#[test]
fn a_directory_opens_and_syncs_by_a_relative_path() {
    let dir = tempfile::Builder::new()
        .prefix("relative-dir-")
        .tempdir_in(".")
        .expect("temp dir");
    let name = dir.path().file_name().expect("a name").to_os_string();
    let relative = std::path::PathBuf::from(name);
    assert!(relative.is_relative());
    run(move || async move {
        spate::log::files::sync_dir(&relative)
            .await
            .expect("sync a directory named by a relative path");
    });
}
