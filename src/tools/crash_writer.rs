//! The crash writer: appends batches to one shard log as fast as it can and prints a line
//! `ack <first_seq> <count>` for every batch the log acknowledged (durable), flushing each
//! line. The SIGKILL test kills it mid-stream, reopens the log, and checks that every
//! acknowledged record is there, byte for byte. Runs on one executor.

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use futures::future::join_all;

use crate::commit::{CommitConfig, Committer};
use crate::log::{LogConfig, RecordIn, ShardLog};
use crate::tools::{crash_key, crash_payload, now_us};

/// Options of `spate crash-writer`.
#[derive(Clone, Debug)]
pub struct CrashWriterOptions {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// Appends in flight at once (they share commits).
    pub in_flight: usize,
}

/// Runs until killed (or until an append fails, which it reports and returns).
///
/// # Errors
/// A message naming what failed: opening the log or an append.
pub async fn run(options: CrashWriterOptions) -> Result<(), String> {
    let committer = Committer::start(CommitConfig::default());
    let config = LogConfig {
        segment_bytes: options.segment_bytes,
        ..LogConfig::default()
    };
    let log = ShardLog::open(&options.dir, config, committer)
        .await
        .map_err(|e| e.to_string())?;
    let mut next = log.next_seq();
    let stdout = std::io::stdout();
    println!("ready {next}");
    loop {
        let batches: Vec<Vec<RecordIn>> = (0..options.in_flight)
            .map(|i| {
                let count = 1 + (next + i as u64) % 7;
                let batch: Vec<RecordIn> = (next..next + count)
                    .map(|seq| RecordIn {
                        partition_key: Bytes::from(crash_key(seq)),
                        data: Bytes::from(crash_payload(seq)),
                        arrival_us: now_us(),
                    })
                    .collect();
                next += count;
                batch
            })
            .collect();
        let acks = join_all(batches.iter().map(|b| log.append(b))).await;
        let mut out = stdout.lock();
        for (ack, batch) in acks.into_iter().zip(&batches) {
            let ack = ack.map_err(|e| e.to_string())?;
            let expected = batch.first().map(|r| crash_key_seq(r, ack.first_seq));
            if expected != Some(true) {
                return Err(format!("unexpected first sequence {}", ack.first_seq));
            }
            writeln!(out, "ack {} {}", ack.first_seq, ack.records).map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
    }
}

/// Whether `record` carries the contents the checker expects at `seq`.
fn crash_key_seq(record: &RecordIn, seq: u64) -> bool {
    record.data.as_ref() == crash_payload(seq).as_slice()
        && record.partition_key.as_ref() == crash_key(seq).as_bytes()
}
