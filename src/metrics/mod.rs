//! Measurements: an HdrHistogram per core per operation (put, get, commit, cross-core
//! hand-over) and counters per core, recorded without allocation on the put path; merged
//! across cores on demand and rendered as Prometheus text for `GET /metrics`. Owns the
//! metric names (`spate_<what>_<unit>[_total]`). Each core records into its own copy; the
//! core answering `/metrics` gathers the others' copies over the mesh.

use std::cell::RefCell;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Operations with a latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A put request, from its bytes read to its response written (either protocol).
    Put = 0,
    /// A read request (GetRecords or the binary get).
    Get = 1,
    /// One commit round: the writes and fdatasyncs of every touched shard.
    Commit = 2,
    /// A request handed to another core and answered (mesh round trip).
    Handover = 3,
    /// The sync a commit round ends with (fdatasync, or syncfs over several files): the
    /// part of a commit the disk decides.
    Sync = 4,
}

const OPS: [(Op, &str); 5] = [
    (Op::Put, "put"),
    (Op::Get, "get"),
    (Op::Commit, "commit"),
    (Op::Handover, "handover"),
    (Op::Sync, "sync"),
];

/// Counters kept per core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    pub requests: u64,
    pub errors: u64,
    pub throttles: u64,
    pub fsyncs: u64,
    pub commits: u64,
    pub committed_batches: u64,
    /// Open client connections (a gauge, filled in when a snapshot is taken).
    pub connections: u64,
}

/// One core's measurements; also the unit sent between cores and merged.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    pub core: usize,
    pub histograms: [Histogram<u64>; 5],
    pub counters: Counters,
    /// Counters of each shard the core owns, filled in when a snapshot is taken.
    pub shards: Vec<ShardCounters>,
}

/// One shard's counters, kept by its owner core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    pub stream: String,
    pub shard: u32,
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    /// Records or reads refused by the shard's quota.
    pub throttled: u64,
}

/// A latency histogram in microseconds: 1 us .. 1 hour at 3 significant digits. Used by
/// the server, the committer and the load generator alike.
pub fn histogram() -> Histogram<u64> {
    // Constant bounds the crate accepts: a failure would be our bug, not input.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

impl CoreMetrics {
    pub fn new(core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            histograms: std::array::from_fn(|_| histogram()),
            counters: Counters::default(),
            shards: Vec::new(),
        }
    }
}

/// The recorder a core keeps; interior mutability, one thread.
pub struct Recorder {
    metrics: RefCell<CoreMetrics>,
}

impl Recorder {
    pub fn new(core: usize) -> Recorder {
        Recorder {
            metrics: RefCell::new(CoreMetrics::new(core)),
        }
    }

    /// Records one latency, in microseconds; no allocation.
    pub fn latency(&self, op: Op, micros: u64) {
        let mut metrics = self.metrics.borrow_mut();
        let _ = metrics.histograms[op as usize].record(micros.max(1));
    }

    /// Changes counters.
    pub fn count(&self, change: impl FnOnce(&mut Counters)) {
        change(&mut self.metrics.borrow_mut().counters);
    }

    /// A copy of this core's measurements.
    pub fn snapshot(&self) -> CoreMetrics {
        self.metrics.borrow().clone()
    }
}

/// A counter's metric name, help text, and how to read it.
type CounterColumn = (&'static str, &'static str, fn(&Counters) -> u64);

/// The same for a shard's counters.
type ShardColumn = (&'static str, &'static str, fn(&ShardCounters) -> u64);

/// Renders every core's measurements as Prometheus text: counters labelled by core, and
/// latency summaries (quantiles, sum and count) by operation, merged over cores and per core.
pub fn render(cores: &[CoreMetrics]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let counters: [CounterColumn; 10] = [
        ("spate_records_in_total", "Records appended", |c| {
            c.records_in
        }),
        (
            "spate_bytes_in_total",
            "Payload and key bytes appended",
            |c| c.bytes_in,
        ),
        ("spate_records_out_total", "Records read", |c| c.records_out),
        ("spate_bytes_out_total", "Payload bytes read", |c| {
            c.bytes_out
        }),
        ("spate_requests_total", "Requests served", |c| c.requests),
        (
            "spate_errors_total",
            "Requests answered with an error",
            |c| c.errors,
        ),
        (
            "spate_throttles_total",
            "Requests refused by a quota",
            |c| c.throttles,
        ),
        (
            "spate_fsyncs_total",
            "Sync calls: fdatasync, or one syncfs for a commit round over several files",
            |c| c.fsyncs,
        ),
        ("spate_commits_total", "Group-commit rounds", |c| c.commits),
        (
            "spate_commit_batches_total",
            "Batches written by group commits",
            |c| c.committed_batches,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
        for core in cores {
            let _ = writeln!(
                out,
                "{name}{{core=\"{}\"}} {}",
                core.core,
                get(&core.counters)
            );
        }
    }
    let name = "spate_connections";
    let _ = writeln!(
        out,
        "# HELP {name} Open client connections, both ports.\n# TYPE {name} gauge"
    );
    for core in cores {
        let _ = writeln!(
            out,
            "{name}{{core=\"{}\"}} {}",
            core.core, core.counters.connections
        );
    }
    let shard_columns: [ShardColumn; 5] = [
        (
            "spate_shard_records_in_total",
            "Records appended to a shard",
            |s| s.records_in,
        ),
        (
            "spate_shard_bytes_in_total",
            "Payload and key bytes appended to a shard",
            |s| s.bytes_in,
        ),
        (
            "spate_shard_records_out_total",
            "Records read from a shard",
            |s| s.records_out,
        ),
        (
            "spate_shard_bytes_out_total",
            "Payload bytes read from a shard",
            |s| s.bytes_out,
        ),
        (
            "spate_shard_throttles_total",
            "Records and reads a shard's quota refused",
            |s| s.throttled,
        ),
    ];
    if cores.iter().any(|c| !c.shards.is_empty()) {
        for (name, help, get) in shard_columns {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            for core in cores {
                for shard in &core.shards {
                    let _ = writeln!(
                        out,
                        "{name}{{stream=\"{}\",shard=\"shardId-{:012}\",core=\"{}\"}} {}",
                        shard.stream,
                        shard.shard,
                        core.core,
                        get(shard)
                    );
                }
            }
        }
    }
    let name = "spate_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency by operation: put and get from request read to response written, commit per round, handover per cross-core call, sync per commit round's fdatasync or syncfs.\n# TYPE {name} summary"
    );
    for (op, label) in OPS {
        let mut merged = histogram();
        for core in cores {
            let _ = merged.add(&core.histograms[op as usize]);
        }
        summary(
            &mut out,
            name,
            &format!("op=\"{label}\",core=\"all\""),
            &merged,
        );
        for core in cores {
            let labels = format!("op=\"{label}\",core=\"{}\"", core.core);
            summary(&mut out, name, &labels, &core.histograms[op as usize]);
        }
    }
    out
}

fn summary(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
        let seconds = h.value_at_quantile(q) as f64 / 1e6;
        let _ = writeln!(out, "{name}{{{labels},quantile=\"{q}\"}} {seconds:.6}");
    }
    let sum = h.mean() * h.len() as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum:.6}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_measurements_render_as_prometheus_text() {
        let recorder = Recorder::new(1);
        for us in [100, 200, 300, 400, 10_000] {
            recorder.latency(Op::Put, us);
        }
        recorder.count(|c| {
            c.records_in += 500;
            c.fsyncs += 2;
        });
        let text = render(&[CoreMetrics::new(0), recorder.snapshot()]);
        assert!(
            text.contains("spate_records_in_total{core=\"1\"} 500"),
            "{text}"
        );
        assert!(text.contains("spate_fsyncs_total{core=\"0\"} 0"), "{text}");
        assert!(
            text.contains("spate_latency_seconds_count{op=\"put\",core=\"all\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("spate_latency_seconds{op=\"put\",core=\"1\",quantile=\"1\"} 0.010"),
            "{text}"
        );
        assert!(text.contains("# TYPE spate_latency_seconds summary"));
    }
}
