//! Helpers shared by the integration tests: running on a glommio executor, a seeded random
//! generator that prints its seed, and deterministic record contents.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use spate::commit::{CommitConfig, Committer};
use spate::log::{LogConfig, RecordIn, ShardLog};

/// Runs a test body on its own glommio executor thread.
pub fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    spate::runtime::run_on_executor("test", make).expect("test executor")
}

/// xorshift64*: small, fast, and replayable from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeds from `SPATE_SEED` when set, else from the clock; prints the seed either way so
    /// a failure can be replayed with `SPATE_SEED=<seed>`.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("SPATE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (replay with SPATE_SEED={seed})");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The payload of record `seq` in tests that check contents by regenerating them.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn record(key: &str, data: Vec<u8>, arrival_us: u64) -> RecordIn {
    RecordIn {
        partition_key: Bytes::copy_from_slice(key.as_bytes()),
        data: Bytes::from(data),
        arrival_us,
    }
}

/// A log config with tiny segments and tail cache, so rolls and disk reads happen often.
pub fn tiny_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 1024,
        tail_cache_bytes: 8 * 1024,
        ..LogConfig::default()
    }
}

/// Opens a shard log with its own committer.
pub async fn open(dir: &Path, config: LogConfig) -> (Rc<Committer>, Rc<ShardLog>) {
    let committer = Committer::start(CommitConfig::default());
    let log = ShardLog::open(dir, config, committer.clone())
        .await
        .expect("open shard log");
    (committer, log)
}

/// Flushes and closes a shard log and its committer.
pub async fn close(committer: Rc<Committer>, log: Rc<ShardLog>) {
    committer.shutdown().await;
    log.close().await;
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A temporary directory on the build's disk. /tmp may be tmpfs, where O_DIRECT reads
/// fail, and the log must be tested on a real filesystem.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory")
}

/// A real `spate serve` process on a free loopback port with its own data folder.
pub struct Server {
    pub addr: std::net::SocketAddr,
    /// The Kinesis API endpoint URL, http://127.0.0.1:PORT.
    pub endpoint: String,
    pub data_dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Server {
    /// Starts a server on `data_dir` with two cores and waits until it serves.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--cores",
                "2",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            // Warnings (a stalled core, a stalled open) reach the test output, so a failure
            // in CI comes with the server's account of it; SPATE_TEST_LOG=info (or debug)
            // shows more of what the servers do while a test runs.
            .env(
                "RUST_LOG",
                std::env::var("SPATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start spate serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server output");
        let addr = line
            .split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("server did not start: {line:?}"));
        let endpoint = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("server did not start: {line:?}"))
            .to_string();
        Server {
            addr,
            endpoint,
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
        }
    }

    /// The server's /metrics text, over a connection of its own.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(self.endpoint.trim_start_matches("http://"))
            .expect("connect to the HTTP port");
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: spate\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        socket.read_to_string(&mut text).expect("read");
        text
    }

    /// Cross-core hand-overs the server has timed so far (every core-to-core call), from
    /// /metrics.
    pub fn handovers(&self) -> f64 {
        let text = self.metrics();
        spate::tools::stats::parse(&text)
            .into_iter()
            .find(|(k, _)| k == "spate_latency_seconds_count{op=\"handover\",core=\"all\"}")
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no handover count in {text}"))
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait");
            assert!(status.success(), "server exited with {status}");
        }
    }

    /// Kills the server with SIGKILL.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn entry(key: &str, data: Vec<u8>) -> spate::protocol::binary::PutEntry {
    spate::protocol::binary::PutEntry {
        partition_key: Bytes::copy_from_slice(key.as_bytes()),
        data: Bytes::from(data),
        explicit_hash_key: None,
    }
}
