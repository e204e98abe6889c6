//! The shard-log benchmark: durable appends on one core, with many appends in flight so
//! group commit can share syncs, then reads from the in-memory tail and from disk. Prints a
//! human summary and one JSON line. Runs on one executor; `bench/log.sh` drives it.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::commit::{CommitConfig, Committer};
use crate::log::{LogConfig, RecordIn, ShardLog};
use crate::tools::now_us;

/// Options of `spate log-bench`.
#[derive(Clone, Debug)]
pub struct LogBenchOptions {
    pub dir: PathBuf,
    pub record_bytes: usize,
    pub batch_records: usize,
    pub seconds: u64,
    pub in_flight: usize,
    pub ack_before_sync: bool,
    pub segment_bytes: u64,
    pub shards: usize,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct LogBenchReport {
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub payload_mb_per_s: f64,
    pub disk_mb_per_s: f64,
    pub fsyncs_per_s: f64,
    pub mean_batches_per_commit: f64,
    pub append_p50_us: u64,
    pub append_p99_us: u64,
    pub append_max_us: u64,
    pub tail_read_records_per_s: f64,
    pub disk_read_records_per_s: f64,
    pub disk_read_mb_per_s: f64,
}

impl LogBenchReport {
    pub fn to_json(&self, options: &LogBenchOptions) -> String {
        format!(
            concat!(
                "{{\"record_bytes\":{},\"batch_records\":{},\"in_flight\":{},\"shards\":{},",
                "\"ack_before_sync\":{},\"records\":{},\"seconds\":{:.3},",
                "\"records_per_s\":{:.0},\"payload_mb_per_s\":{:.1},\"disk_mb_per_s\":{:.1},",
                "\"fsyncs_per_s\":{:.1},\"mean_batches_per_commit\":{:.2},",
                "\"append_p50_us\":{},\"append_p99_us\":{},\"append_max_us\":{},",
                "\"tail_read_records_per_s\":{:.0},\"disk_read_records_per_s\":{:.0},",
                "\"disk_read_mb_per_s\":{:.1}}}"
            ),
            options.record_bytes,
            options.batch_records,
            options.in_flight,
            options.shards,
            options.ack_before_sync,
            self.records,
            self.seconds,
            self.records_per_s,
            self.payload_mb_per_s,
            self.disk_mb_per_s,
            self.fsyncs_per_s,
            self.mean_batches_per_commit,
            self.append_p50_us,
            self.append_p99_us,
            self.append_max_us,
            self.tail_read_records_per_s,
            self.disk_read_records_per_s,
            self.disk_read_mb_per_s,
        )
    }
}

/// Runs the benchmark.
///
/// # Errors
/// A message naming what failed.
pub async fn run(options: LogBenchOptions) -> Result<LogBenchReport, String> {
    let committer = Committer::start(CommitConfig {
        ack_before_sync: options.ack_before_sync,
        ..CommitConfig::default()
    });
    let config = LogConfig {
        segment_bytes: options.segment_bytes,
        ..LogConfig::default()
    };
    let mut logs = Vec::new();
    for shard in 0..options.shards.max(1) {
        let dir = options.dir.join(format!("shard-{shard}"));
        let log = ShardLog::open(&dir, config.clone(), committer.clone())
            .await
            .map_err(|e| e.to_string())?;
        logs.push(log);
    }
    let payload = Bytes::from(vec![0x5au8; options.record_bytes]);
    let keys: Vec<Bytes> = (0..64).map(|k| Bytes::from(format!("key-{k}"))).collect();
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let appended = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..options.in_flight.max(1) {
        let log = logs[worker % logs.len()].clone();
        let payload = payload.clone();
        let keys = keys.clone();
        let histogram = histogram.clone();
        let appended = appended.clone();
        let batch_records = options.batch_records;
        tasks.push(glommio::spawn_local(async move {
            let mut batch: Vec<RecordIn> = Vec::with_capacity(batch_records);
            while Instant::now() < deadline {
                batch.clear();
                let arrival_us = now_us();
                for i in 0..batch_records {
                    batch.push(RecordIn {
                        partition_key: keys[i % keys.len()].clone(),
                        data: payload.clone(),
                        arrival_us,
                    });
                }
                let sent = Instant::now();
                log.append(&batch).await.map_err(|e| e.to_string())?;
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = histogram.borrow_mut().record(us.max(1));
                appended.set(appended.get() + batch_records as u64);
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = committer.stats();
    let records = appended.get();
    let (p50, p99, max) = {
        let histogram = histogram.borrow();
        (
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max(),
        )
    };
    let (tail_rate, _) = read_rate(&logs[0], true).await?;
    let (disk_rate, disk_mb) = read_rate(&logs[0], false).await?;
    committer.shutdown().await;
    for log in &logs {
        log.close().await;
    }
    Ok(LogBenchReport {
        records,
        seconds,
        records_per_s: records as f64 / seconds,
        payload_mb_per_s: (records as f64 * options.record_bytes as f64) / seconds / 1e6,
        disk_mb_per_s: stats.bytes as f64 / seconds / 1e6,
        fsyncs_per_s: stats.fsyncs as f64 / seconds,
        mean_batches_per_commit: stats.mean_batches_per_commit(),
        append_p50_us: p50,
        append_p99_us: p99,
        append_max_us: max,
        tail_read_records_per_s: tail_rate,
        disk_read_records_per_s: disk_rate,
        disk_read_mb_per_s: disk_mb,
    })
}

/// Reads for about two seconds, from the in-memory tail (the newest records, over and
/// over) or from disk (sequentially from the oldest record). Returns records/s and MB/s.
async fn read_rate(log: &Rc<ShardLog>, tail: bool) -> Result<(f64, f64), String> {
    let tip = log.durable_next_seq();
    let trim = log.trim_horizon();
    if tip == trim {
        return Ok((0.0, 0.0));
    }
    let started = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut seq = trim;
    while started.elapsed() < Duration::from_secs(2) {
        if tail || seq >= tip {
            seq = if tail {
                tip.saturating_sub(1000).max(trim)
            } else {
                trim
            };
        }
        let out = log
            .read(seq, 1000, 4 << 20)
            .await
            .map_err(|e| e.to_string())?;
        records += out.records.len() as u64;
        bytes += out.records.iter().map(|r| r.data.len() as u64).sum::<u64>();
        seq = out.next_seq;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((records as f64 / seconds, bytes as f64 / seconds / 1e6))
}
