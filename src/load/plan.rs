//! `spate plan`: capacity planning. `ramp` offers open-loop load at rising rates until the
//! p99 latency crosses a target, errors appear, or the server falls behind the offered
//! rate, and reports the highest sustainable rate; `size` turns a workload (records/s,
//! record size, retention) into cores, shards and disk, from such a measurement. Runs on
//! the main thread; each ramp step is a whole `spate load` run.

use std::fmt::Write as _;

use crate::load::LoadOptions;
use crate::load::report;

/// One step of a ramp.
#[derive(Clone, Debug)]
pub struct Step {
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// The outcome of a ramp.
#[derive(Clone, Debug)]
pub struct Ramp {
    pub steps: Vec<Step>,
    /// The highest step that met the target, if any.
    pub sustainable: Option<Step>,
    pub stopped_because: String,
}

/// Ramps the offered rate from `start_per_s` by `factor` per step.
///
/// # Errors
/// When a load step cannot run (server unreachable).
pub fn ramp(
    base: &LoadOptions,
    start_per_s: f64,
    factor: f64,
    p99_target_ms: f64,
    steps_max: usize,
) -> Result<Ramp, String> {
    let mut steps = Vec::new();
    let mut sustainable = None;
    let mut rate = start_per_s;
    let mut stopped_because = format!("reached {steps_max} steps");
    for _ in 0..steps_max {
        let options = LoadOptions {
            rate: Some(rate),
            ..base.clone()
        };
        eprintln!("plan: offering {rate:.0} records/s");
        let result = report::run(options)?;
        if report::interrupted() {
            // The step was cut short, so it says nothing about this rate.
            stopped_because = format!("interrupted during the step at {rate:.0} records/s");
            break;
        }
        let step = Step {
            offered_per_s: rate,
            achieved_per_s: result.records_per_s(),
            p99_ms: result.histogram.value_at_quantile(0.99) as f64 / 1000.0,
            errors: result.errors + result.rejected_records,
        };
        eprintln!(
            "plan: offered {:.0}/s, achieved {:.0}/s, p99 {:.2} ms, errors {}",
            step.offered_per_s, step.achieved_per_s, step.p99_ms, step.errors
        );
        steps.push(step.clone());
        if step.errors > 0 {
            stopped_because = format!("errors appeared at {rate:.0} records/s");
            break;
        }
        if step.p99_ms > p99_target_ms {
            stopped_because = format!(
                "p99 {:.2} ms crossed the {p99_target_ms} ms target at {rate:.0} records/s",
                step.p99_ms
            );
            break;
        }
        if step.achieved_per_s < 0.9 * step.offered_per_s {
            stopped_because = format!(
                "the server completed only {:.0} of {rate:.0} records/s offered",
                step.achieved_per_s
            );
            break;
        }
        sustainable = Some(step);
        rate *= factor;
    }
    Ok(Ramp {
        steps,
        sustainable,
        stopped_because,
    })
}

/// A workload to size for.
#[derive(Clone, Debug)]
pub struct Workload {
    pub records_per_s: f64,
    pub record_bytes: f64,
    pub retention_hours: f64,
}

/// What was measured on this machine, the basis of a sizing.
#[derive(Clone, Debug)]
pub struct Basis {
    pub records_per_s: f64,
    pub record_bytes: f64,
    pub cores: usize,
    pub source: String,
}

/// Bytes a record takes on disk beyond its payload: the 12-byte record header, a typical
/// 16-byte partition key, and its share of a batch header in batches of hundreds.
const RECORD_OVERHEAD_BYTES: f64 = 12.0 + 16.0 + 1.0;
/// Capacity kept in reserve: plan for 70 % utilisation.
const HEADROOM: f64 = 1.0 / 0.7;
/// Extra disk for the active segment and the one being deleted, per shard-core.
const SEGMENT_SLACK: f64 = 1.1;

/// Sizes `workload` from `basis`, as text a person can check step by step.
pub fn size(workload: &Workload, basis: &Basis) -> String {
    let mut out = String::new();
    let per_core = basis.records_per_s / basis.cores.max(1) as f64;
    // Throughput per core falls roughly with bytes per record beyond the measured size.
    let scale = ((basis.record_bytes + RECORD_OVERHEAD_BYTES)
        / (workload.record_bytes + RECORD_OVERHEAD_BYTES))
        .min(1.0);
    let per_core_here = per_core * scale;
    let cores = (workload.records_per_s * HEADROOM / per_core_here)
        .ceil()
        .max(1.0);
    let bytes_per_s = workload.records_per_s * (workload.record_bytes + RECORD_OVERHEAD_BYTES);
    let disk = bytes_per_s * workload.retention_hours * 3600.0 * SEGMENT_SLACK;
    let mib_per_s = workload.records_per_s * workload.record_bytes / (1024.0 * 1024.0);
    let kinesis_shards = (workload.records_per_s / 1000.0)
        .max(mib_per_s)
        .ceil()
        .max(1.0);
    let _ = writeln!(
        out,
        "workload: {:.0} records/s of {:.0} B, retained {:.0} h",
        workload.records_per_s, workload.record_bytes, workload.retention_hours
    );
    let _ = writeln!(
        out,
        "basis: {:.0} records/s of {:.0} B on {} core(s), {:.0} per core ({})",
        basis.records_per_s, basis.record_bytes, basis.cores, per_core, basis.source
    );
    let _ = writeln!(
        out,
        "cores: {cores:.0} (= {:.0} records/s / {per_core_here:.0} per core at this record size, for 70 % utilisation)",
        workload.records_per_s
    );
    let _ = writeln!(
        out,
        "shards: at least {cores:.0} so every core owns one; {kinesis_shards:.0} to keep Kinesis's per-shard quotas (1,000 records/s, 1 MiB/s)"
    );
    let _ = writeln!(
        out,
        "disk: {:.1} GiB for the retention (+10 % for open segments), written at {:.1} MB/s",
        disk / (1024.0 * 1024.0 * 1024.0),
        bytes_per_s / 1e6
    );
    out
}

/// The ramp as text: every step and the verdict.
pub fn ramp_text(ramp: &Ramp, record_bytes: f64) -> String {
    let mut out = String::from("offered/s    achieved/s   p99 ms   errors\n");
    for step in &ramp.steps {
        let _ = writeln!(
            out,
            "{:>10.0} {:>13.0} {:>8.2} {:>8}",
            step.offered_per_s, step.achieved_per_s, step.p99_ms, step.errors
        );
    }
    let _ = writeln!(out, "stopped: {}", ramp.stopped_because);
    match &ramp.sustainable {
        Some(step) => {
            let _ = writeln!(
                out,
                "maximum sustainable: {:.0} records/s, {:.1} MB/s (p99 {:.2} ms)",
                step.achieved_per_s,
                step.achieved_per_s * record_bytes / 1e6,
                step.p99_ms
            );
        }
        None => {
            let _ = writeln!(out, "no step met the target: start lower (--start-rate)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_scales_from_the_measured_rate() {
        let basis = Basis {
            records_per_s: 2_000_000.0,
            record_bytes: 100.0,
            cores: 2,
            source: "test".into(),
        };
        let workload = Workload {
            records_per_s: 1_000_000.0,
            record_bytes: 100.0,
            retention_hours: 24.0,
        };
        let text = size(&workload, &basis);
        // 1 M/s at 1 M per core needs 2 cores for 70 % utilisation.
        assert!(text.contains("cores: 2 "), "{text}");
        assert!(text.contains("1000 to keep Kinesis"), "{text}");
        // 1 M/s x 129 B x 86,400 s x 1.1 = 1.226e13 B = 11,418 GiB.
        assert!(text.contains("disk: 11418."), "{text}");
    }
}
