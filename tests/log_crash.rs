//! The SIGKILL test with a real process: `spate crash-writer` appends to a shard log and
//! prints every acknowledgement; we kill it with SIGKILL mid-stream, reopen the log, and
//! check that every acknowledged record is there, byte for byte. Three rounds on the same
//! folder, so recovery also runs on logs that were recovered before.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{close, open, run, temp_dir};
use spate::log::LogConfig;
use spate::tools::{crash_key, crash_payload};

/// Starts the writer, waits for `acks` acknowledgements, kills it, and returns the highest
/// acknowledged sequence number + 1 and how many acknowledgements were read.
fn write_and_kill(dir: &std::path::Path, acks: usize) -> (u64, usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["crash-writer", "--dir"])
        .arg(dir)
        .args(["--segment-bytes", "262144"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start crash-writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked_next = 0u64;
    let mut seen = 0usize;
    let started = Instant::now();
    while seen < acks {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            other => panic!("crash-writer stopped early: {other:?}"),
        };
        if let Some(rest) = line.strip_prefix("ack ") {
            let mut parts = rest.split(' ').map(|p| p.parse::<u64>().expect("number"));
            let (first, count) = (parts.next().expect("first"), parts.next().expect("count"));
            acked_next = acked_next.max(first + count);
            seen += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "crash-writer too slow"
        );
    }
    child.kill().expect("SIGKILL");
    // Acknowledgements already in the pipe were made before the kill: they count too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ack ") {
            let mut parts = rest.split(' ').map(|p| p.parse::<u64>().expect("number"));
            let (first, count) = (parts.next().expect("first"), parts.next().expect("count"));
            acked_next = acked_next.max(first + count);
            seen += 1;
        }
    }
    let _ = child.wait();
    (acked_next, seen)
}

#[test]
fn records_acknowledged_before_sigkill_survive_byte_for_byte() {
    let dir = temp_dir();
    let mut previous = 0u64;
    for round in 0..3 {
        let (acked_next, seen) = write_and_kill(dir.path(), 400 + round * 200);
        assert!(
            acked_next > previous,
            "round {round}: the writer made progress"
        );
        let path = dir.path().to_path_buf();
        let durable = run(move || async move {
            let config = LogConfig {
                segment_bytes: 262_144,
                ..LogConfig::default()
            };
            let (committer, log) = open(&path, config).await;
            let durable = log.next_seq();
            assert!(
                durable >= acked_next,
                "acknowledged up to {acked_next}, but only {durable} survived"
            );
            let mut seq = 0;
            while seq < acked_next {
                let out = log.read(seq, 10_000, 8 << 20).await.expect("read");
                assert!(!out.records.is_empty(), "nothing at {seq}");
                for record in &out.records {
                    if record.seq >= acked_next {
                        break;
                    }
                    assert_eq!(record.seq, seq);
                    assert_eq!(
                        record.data.as_ref(),
                        crash_payload(seq).as_slice(),
                        "data {seq}"
                    );
                    assert_eq!(record.partition_key.as_ref(), crash_key(seq).as_bytes());
                    seq += 1;
                }
            }
            let segments = log.segment_count();
            close(committer, log).await;
            eprintln!(
                "round {round}: {seen} acks, {acked_next} records acknowledged, {durable} recovered, {segments} segments"
            );
            durable
        });
        previous = durable;
    }
}
