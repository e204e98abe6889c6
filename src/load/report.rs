//! Running a whole `spate load` and reporting it: progress each second, the final summary,
//! a JSON summary and an `.hgrm` percentile distribution (the text format HdrHistogram
//! plotters read). Runs on the main thread, which starts the workers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Client, ClientError};
use crate::load::{Counters, LoadOptions, new_histogram, run_worker};
use crate::protocol::binary::Status;

/// The outcome of a load run.
pub struct LoadReport {
    pub mode: &'static str,
    pub seconds: f64,
    pub records: u64,
    pub bytes: u64,
    pub requests: u64,
    pub errors: u64,
    pub rejected_records: u64,
    pub first_error: Option<String>,
    pub histogram: Histogram<u64>,
    /// (producer, counter) of every acknowledged record, when verifying.
    pub acked: Vec<(u32, u64)>,
    /// Put → readable latency in microseconds, measured by a live tail when verifying.
    pub readable: Option<Histogram<u64>>,
}

impl LoadReport {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {:.0} records/s, {:.1} MB/s over {:.1} s ({} records in {} requests)",
            self.mode,
            self.records_per_s(),
            self.mb_per_s(),
            self.seconds,
            self.records,
            self.requests
        );
        let _ = writeln!(
            out,
            "put latency (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}  max {:.2}",
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(0.9999),
            self.histogram.max() as f64 / 1000.0
        );
        if let Some(readable) = &self.readable {
            let ms = |q: f64| readable.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "put → readable (ms, {} records seen by a live tail): p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                readable.len(),
                ms(0.5),
                ms(0.99),
                ms(0.999),
                readable.max() as f64 / 1000.0
            );
        }
        let _ = write!(
            out,
            "errors: {} failed requests, {} rejected records",
            self.errors, self.rejected_records
        );
        if let Some(error) = &self.first_error {
            let _ = write!(out, " (first: {error})");
        }
        out
    }

    /// The JSON summary.
    pub fn to_json(&self, options: &LoadOptions) -> String {
        let mut json = self.json_fields(options);
        if let Some(readable) = &self.readable {
            let ms = |q: f64| readable.value_at_quantile(q) as f64 / 1000.0;
            json.pop();
            json.push_str(&format!(
                ",\"readable_ms\":{{\"records\":{},\"p50\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3}}}}}",
                readable.len(),
                ms(0.5),
                ms(0.99),
                ms(0.999),
                readable.max() as f64 / 1000.0
            ));
        }
        json
    }

    fn json_fields(&self, options: &LoadOptions) -> String {
        format!(
            concat!(
                "{{\"mode\":\"{}\",\"protocol\":\"{:?}\",\"route\":\"{}\",\"target\":\"{}\",\"stream\":\"{}\",\"record_bytes_min\":{},",
                "\"record_bytes_max\":{},\"batch\":{},\"connections\":{},\"in_flight\":{},",
                "\"rate\":{},\"seconds\":{:.3},\"records\":{},\"bytes\":{},\"requests\":{},",
                "\"errors\":{},\"rejected_records\":{},\"records_per_s\":{:.1},\"mb_per_s\":{:.3},",
                "\"latency_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},",
                "\"p99_99\":{:.3},\"max\":{:.3}}}}}"
            ),
            self.mode,
            options.protocol,
            if options.routes_by_owner() {
                "owner"
            } else {
                "server"
            },
            options.target,
            options.stream,
            options.record_bytes_min,
            options.record_bytes_max,
            options.batch,
            options.connections,
            options.in_flight,
            options
                .rate
                .map_or("null".to_string(), |r| format!("{r:.1}")),
            self.seconds,
            self.records,
            self.bytes,
            self.requests,
            self.errors,
            self.rejected_records,
            self.records_per_s(),
            self.mb_per_s(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(0.9999),
            self.histogram.max() as f64 / 1000.0
        )
    }

    /// The percentile distribution in HdrHistogram's `.hgrm` text format, in milliseconds.
    pub fn to_hgrm(&self) -> String {
        let h = &self.histogram;
        let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / 1000.0;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:14.12} {:10} {:14.2}",
                    v.count_since_last_iteration(),
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:14.12} {:10}",
                    v.count_since_last_iteration()
                );
            }
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            h.mean() / 1000.0,
            h.stdev() / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            h.max() as f64 / 1000.0,
            h.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            h.buckets(),
            h.distinct_values()
        );
        out
    }
}

/// Runs a load: makes sure the stream exists, starts the workers, prints progress each
/// second to stderr, and returns the merged report.
///
/// # Errors
/// When the server cannot be reached or the stream cannot be created.
pub fn run(options: LoadOptions) -> Result<LoadReport, String> {
    let description = ensure_stream(&options)?;
    let owners = match description {
        Some(description) if options.routes_by_owner() => {
            let owners = crate::load::key_owners(&description, options.keys);
            let mut cores: Vec<u16> = owners.to_vec();
            cores.sort_unstable();
            cores.dedup();
            eprintln!(
                "load: each connection sends each shard's records to its owner core (cores {cores:?})"
            );
            Some(owners)
        }
        _ => None,
    };
    // A verifying load also follows the stream live, for put → readable latency.
    let tail_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = if options.verify {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (target, stream, stop) = (options.target, options.stream.clone(), tail_stop.clone());
        let handle = std::thread::spawn(move || {
            crate::runtime::run_on_executor("load-tail", move || {
                crate::load::tail_latency(target, stream, stop, ready_tx)
            })
            .map_err(|e| e.to_string())?
        });
        // Subscribed before the first put, so every record is seen.
        let _ = ready.recv_timeout(std::time::Duration::from_secs(10));
        Some(handle)
    } else {
        None
    };
    let counters = Arc::new(Counters::default());
    counters
        .measuring
        .store(options.warmup.is_zero(), Ordering::Relaxed);
    let workers = options.worker_threads();
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let start = Instant::now();
    let mut handles = Vec::new();
    for worker in 0..workers {
        let connections =
            options.connections / workers + usize::from(worker < options.connections % workers);
        let options = options.clone();
        let counters = counters.clone();
        let owners = owners.clone();
        // Workers take cores from the last one down, away from the server's first cores.
        let cpu = cpus
            .len()
            .checked_sub(1 + worker % cpus.len().max(1))
            .and_then(|i| cpus.get(i))
            .copied();
        let builder = crate::runtime::executor_builder(&format!("load-{worker}"), cpu, workers + 2);
        let handle = builder
            .spawn(move || async move {
                let tick = crate::runtime::spawn_wake_tick(None);
                let result =
                    run_worker(options, worker, connections, owners, counters, start).await;
                tick.set(true);
                result
            })
            .map_err(|e| format!("starting load worker: {e}"))?;
        handles.push(handle);
    }
    progress(&options, &counters, start, interrupt_flag());
    let measured_from = start + options.warmup;
    let mut report = LoadReport {
        mode: if options.rate.is_some() {
            "open loop at a target rate (latency from intended send time)"
        } else {
            "closed loop at maximum rate (latency from actual send time)"
        },
        seconds: 0.0,
        records: 0,
        bytes: 0,
        requests: 0,
        errors: 0,
        rejected_records: counters.rejected_records.load(Ordering::Relaxed),
        first_error: None,
        histogram: new_histogram(),
        acked: Vec::new(),
        readable: None,
    };
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| "a load worker panicked".to_string())??;
        let _ = report.histogram.add(&result.histogram);
        report.acked.extend(result.acked);
        report.records += result.records;
        report.bytes += result.bytes;
        report.requests += result.requests;
        report.errors += result.errors;
        report.first_error = report.first_error.take().or(result.first_error);
    }
    // From the end of the warm-up to the last response (the drain of requests in flight).
    report.seconds = measured_from.elapsed().as_secs_f64().max(0.001);
    report.rejected_records = counters.rejected_records.load(Ordering::Relaxed);
    if let Some(tail) = tail {
        tail_stop.store(true, Ordering::Relaxed);
        let readable = tail
            .join()
            .map_err(|_| "the load's tail reader panicked".to_string())??;
        report.readable = Some(readable);
    }
    Ok(report)
}

/// Creates the stream when missing; for the binary protocol, its description.
fn ensure_stream(
    options: &LoadOptions,
) -> Result<Option<crate::protocol::binary::StreamDescription>, String> {
    let target = options.target;
    let stream = options.stream.clone();
    let shards = options.shards;
    if options.protocol == crate::load::LoadProtocol::Nats {
        return crate::runtime::run_on_executor("load-setup", move || async move {
            let connection = crate::load::nats::Connection::connect(target, u64::MAX).await?;
            connection.ensure_stream(&stream).await
        })
        .map_err(|e| e.to_string())?
        .map(|()| None);
    }
    if options.protocol == crate::load::LoadProtocol::Kinesis {
        return crate::runtime::run_on_executor("load-setup", move || async move {
            let pool = crate::load::kinesis::Pool::connect(target, 1).await?;
            pool.ensure_stream(&stream, shards).await
        })
        .map_err(|e| e.to_string())?
        .map(|()| None);
    }
    crate::runtime::run_on_executor("load-setup", move || async move {
        let client = Client::connect(target).await.map_err(|e| e.to_string())?;
        match client.describe_stream(&stream).await {
            Ok(description) => {
                eprintln!(
                    "load: stream {stream} has {} shard(s)",
                    description.shards.len()
                );
                Ok(Some(description))
            }
            Err(ClientError::Server(e)) if e.status == Status::StreamNotFound => {
                client
                    .create_stream(&stream, shards)
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("load: created stream {stream} with {shards} shard(s)");
                let description = client
                    .describe_stream(&stream)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(description))
            }
            Err(error) => Err(error.to_string()),
        }
    })
    .map_err(|e| e.to_string())?
}

/// Set by the first Ctrl-C (or SIGTERM): the run stops early and still reports what it
/// measured, as wrk does. A second one ends the process at once. The handlers are
/// installed once per process, so a plan's many runs share them.
fn interrupt_flag() -> &'static AtomicBool {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registration fails only for signals that cannot be caught; these two can.
            let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone());
            let _ = signal_hook::flag::register(signal, flag.clone());
        }
        flag
    })
}

/// Whether a run of this process was stopped early by Ctrl-C or SIGTERM.
pub fn interrupted() -> bool {
    interrupt_flag().load(Ordering::Relaxed)
}

fn progress(options: &LoadOptions, counters: &Counters, start: Instant, interrupted: &AtomicBool) {
    let warmup_end = start + options.warmup;
    let end = warmup_end + options.duration;
    let mut last = (0u64, 0u64, Instant::now());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = Instant::now();
        if now >= warmup_end && !counters.measuring.swap(true, Ordering::Relaxed) {
            eprintln!("load: warm-up done; measuring");
        }
        let records = counters.records.load(Ordering::Relaxed);
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let seconds = now.duration_since(last.2).as_secs_f64();
        if now > warmup_end {
            eprintln!(
                "load: {:>5.0} s  {:>10.0} records/s  {:>8.1} MB/s  errors {}  rejected {}",
                now.duration_since(warmup_end).as_secs_f64(),
                (records - last.0) as f64 / seconds,
                (bytes - last.1) as f64 / seconds / 1e6,
                counters.errors.load(Ordering::Relaxed),
                counters.rejected_records.load(Ordering::Relaxed)
            );
        }
        last = (records, bytes, now);
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("load: interrupted; stopping early and reporting what ran");
            counters.stop.store(true, Ordering::Relaxed);
            return;
        }
        if now >= end {
            counters.stop.store(true, Ordering::Relaxed);
            return;
        }
    }
}
