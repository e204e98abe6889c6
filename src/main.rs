//! The `spate` command line. Parses arguments and calls into the library; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spate::limits::SEGMENT_BYTES_DEFAULT;
use spate::tools::{crash_writer, log_bench};

/// spate — a stream ingestion server with the data model of Kinesis Data Streams.
#[derive(Parser)]
#[command(name = "spate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark the shard log on one core: durable appends, then tail and disk reads.
    ///
    /// Appends fixed-size records in batches with many appends in flight, so group
    /// commit shares each fdatasync, and prints throughput, fsyncs/s, the mean group-commit
    /// size and append latency, then a JSON line for scripts.
    LogBench {
        /// Folder for the benchmark's shard logs (emptied first). Use the disk you measure.
        #[arg(long, default_value = "./bench-data")]
        dir: PathBuf,
        /// Payload bytes per record.
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        /// Records per append (at most 500).
        #[arg(long, default_value_t = 500)]
        batch_records: usize,
        /// How long to append, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Appends in flight at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Shards (logs) on the core; appends are spread over them.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Acknowledge before fdatasync: measures the write path alone. Can lose
        /// acknowledged records on power loss; never use for real data.
        #[arg(long)]
        ack_before_sync: bool,
    },
    /// (testing) Append to a shard log forever, printing each durable acknowledgement.
    #[command(hide = true)]
    CrashWriter {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1024 * 1024)]
        segment_bytes: u64,
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    spate::runtime::tune_allocator();
    let result = match cli.command {
        Command::LogBench {
            dir,
            record_bytes,
            batch_records,
            seconds,
            in_flight,
            shards,
            ack_before_sync,
        } => {
            let options = log_bench::LogBenchOptions {
                dir,
                record_bytes,
                batch_records,
                seconds,
                in_flight,
                ack_before_sync,
                segment_bytes: SEGMENT_BYTES_DEFAULT,
                shards,
            };
            run_log_bench(options)
        }
        Command::CrashWriter {
            dir,
            segment_bytes,
            in_flight,
        } => {
            let options = crash_writer::CrashWriterOptions {
                dir,
                segment_bytes,
                in_flight,
            };
            spate::runtime::run_on_executor("crash-writer", move || crash_writer::run(options))
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_log_bench(options: log_bench::LogBenchOptions) -> Result<(), String> {
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .map_err(|e| format!("emptying {}: {e}", options.dir.display()))?;
    }
    eprintln!(
        "log-bench: {} B records, {} per append, {} in flight, {} shard(s), {} s, {}",
        options.record_bytes,
        options.batch_records,
        options.in_flight,
        options.shards,
        options.seconds,
        if options.ack_before_sync {
            "ack BEFORE sync (not durable)"
        } else {
            "durable (ack after fdatasync)"
        }
    );
    let run_options = options.clone();
    let report = spate::runtime::run_on_executor("log-bench", move || log_bench::run(run_options))
        .map_err(|e| e.to_string())??;
    eprintln!(
        "appends: {:.0} records/s, {:.1} MB/s payload, {:.1} MB/s to disk, {:.0} fsyncs/s, \
         {:.2} batches per commit; append latency p50 {} us, p99 {} us, max {} us",
        report.records_per_s,
        report.payload_mb_per_s,
        report.disk_mb_per_s,
        report.fsyncs_per_s,
        report.mean_batches_per_commit,
        report.append_p50_us,
        report.append_p99_us,
        report.append_max_us
    );
    eprintln!(
        "reads: {:.0} records/s from the in-memory tail; {:.0} records/s ({:.1} MB/s) from disk",
        report.tail_read_records_per_s, report.disk_read_records_per_s, report.disk_read_mb_per_s
    );
    println!("{}", report.to_json(&options));
    let _ = std::fs::remove_dir_all(&options.dir);
    Ok(())
}
