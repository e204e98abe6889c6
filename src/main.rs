//! The `spate` command line. Parses arguments and calls into the library; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spate::limits::SEGMENT_BYTES_DEFAULT;
use spate::tools::{cli, crash_writer, log_bench};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// spate — a stream ingestion server with the data model of Kinesis Data Streams.
#[derive(Parser)]
#[command(name = "spate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: data in ./data, binary protocol on 127.0.0.1:4568, Kinesis API on
    /// http://127.0.0.1:4567, every core.
    ///
    /// Runs on embedded defaults with no file at all; `--config` reads a file like
    /// config/spate.toml (every key documented there), and the flags below override both.
    /// Stops cleanly on Ctrl-C or SIGTERM.
    Serve {
        /// A TOML config file (see config/spate.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder for streams and the catalog.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address of the binary protocol listener, e.g. 127.0.0.1:4568 (port 0: any).
        #[arg(long)]
        listen: Option<String>,
        /// Address of the Kinesis HTTP API listener, e.g. 127.0.0.1:4567 (port 0: any).
        #[arg(long)]
        http_listen: Option<String>,
        /// Cores to run on (0: every online core).
        #[arg(long)]
        cores: Option<usize>,
    },
    /// Create, list, describe or delete streams.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Run a worker of a consumer application, or show applications, leases and lag.
    #[command(subcommand)]
    Consumers(ConsumersCommand),
    /// Put records read from stdin (or a file), one record per line.
    Put {
        /// The stream to put into.
        stream: String,
        /// Read lines from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Partition key of each record: `random`, `counter`, or `field:N` (the N-th
        /// field of the line, from 1, split by --delimiter).
        #[arg(long, default_value = "random")]
        key: String,
        /// Field delimiter for `--key field:N`.
        #[arg(long, default_value = ",")]
        delimiter: String,
        /// Records per put request (at most 500).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print records of one shard or a whole stream, following new ones as they arrive.
    Tail {
        /// The stream to read.
        stream: String,
        /// Only this shard (its number, or shardId-000000000000); default every shard.
        #[arg(long)]
        shard: Option<String>,
        /// Where to start: `trim-horizon`, `latest`, `at:SEQ`, `after:SEQ` or
        /// `timestamp:UNIX_MS`. SEQ is a sequence number as `put` prints it.
        #[arg(long, default_value = "latest")]
        from: String,
        /// Stop after this many records (default: follow until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
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
    /// Generate load: put records as fast as possible or at a target rate, and report
    /// throughput and latency percentiles (HdrHistogram).
    ///
    /// With --rate the load is open loop: each request has an intended send time and its
    /// latency counts from then, so server stalls are not hidden (coordinated omission
    /// corrected); the connections' send times are spread evenly, so the server sees a
    /// steady rate, not bursts. Without it, the load is closed loop at the maximum rate.
    /// Writes a JSON summary and an .hgrm percentile distribution.
    Load {
        /// `binary` (spate's protocol, --server), `kinesis` (PutRecords over HTTP to
        /// --server, which is then the Kinesis API address, e.g. 127.0.0.1:4567) or `nats`
        /// (one acknowledged JetStream publish per record to a NATS server, for peer
        /// comparisons; the stream is a file-storage JetStream stream).
        #[arg(long, default_value = "binary")]
        protocol: String,
        /// The stream to put into; created with --shards when missing.
        #[arg(long, default_value = "load")]
        stream: String,
        /// Shards of the stream when it is created.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// Payload bytes per record: N, or MIN..MAX for a uniform range.
        #[arg(long, default_value = "100")]
        record_bytes: String,
        /// Distinct partition keys.
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// Draw keys from a Zipf distribution with this exponent (e.g. 1.0) instead of
        /// uniformly.
        #[arg(long)]
        zipf: Option<f64>,
        /// Records per put request (1..=500).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Connections, spread over the worker threads.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        /// Target records per second over all connections (open loop); omit for maximum.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds of load before measuring starts.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Worker threads, each pinned to a core (taken from the last core down).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Stamp every record, then read the stream back and fail on any acknowledged
        /// record missing or duplicated, or out of order per partition key (binary protocol).
        #[arg(long)]
        verify: bool,
        /// Binary protocol: `owner` sends each record straight to the server core that
        /// owns its shard, as a Kafka producer sends to each partition's leader (each
        /// connection is then one connection per owner core, and a request's records are
        /// split between them; its latency runs until every part is answered); `server`
        /// sends whole requests to whichever core the server placed the connection on,
        /// which hands records over to their shards' cores.
        #[arg(long, default_value = "owner")]
        route: String,
        /// Where to write the JSON summary.
        #[arg(long, default_value = "load-summary.json")]
        json: PathBuf,
        /// Where to write the percentile distribution.
        #[arg(long, default_value = "load-latency.hgrm")]
        hgrm: PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Capacity planning: find the highest sustainable rate, or size a workload.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// A live view of a running server, refreshed each second: records/s, MB/s,
    /// fsyncs/s, and latency percentiles per operation and per core.
    Stats {
        /// The server's Kinesis API (HTTP) address, where /metrics is served.
        #[arg(long, default_value = "127.0.0.1:4567")]
        http: String,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
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

#[derive(Subcommand)]
enum PlanCommand {
    /// Offer open-loop load at rising rates until p99 crosses --p99-ms, errors appear or
    /// the server falls behind; report the highest sustainable records/s and MB/s.
    Ramp {
        /// Latency target for the 99th percentile of puts, in milliseconds.
        #[arg(long, default_value_t = 10.0)]
        p99_ms: f64,
        /// First offered rate, records/s.
        #[arg(long, default_value_t = 100_000.0)]
        start_rate: f64,
        /// Each step offers this many times the previous rate.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Most steps.
        #[arg(long, default_value_t = 12)]
        steps: usize,
        /// Seconds measured per step (after one second of warm-up).
        #[arg(long, default_value_t = 5)]
        step_seconds: u64,
        /// Payload bytes per record.
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        /// Records per put.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// The stream to put into (created when missing).
        #[arg(long, default_value = "plan")]
        stream: String,
        /// Shards of the stream when it is created.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// Connections and requests in flight on each.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Size a workload: the cores, shards and disk it needs, from a measured rate.
    Size {
        /// Records per second to carry.
        #[arg(long)]
        records_per_s: f64,
        /// Payload bytes per record.
        #[arg(long)]
        record_bytes: f64,
        /// Hours records are kept.
        #[arg(long, default_value_t = 24.0)]
        retention_hours: f64,
        /// Measured maximum records/s on this machine (from `spate plan ramp` or
        /// `spate load`), the basis of the sizing.
        #[arg(long)]
        measured_records_per_s: f64,
        /// Record size of that measurement.
        #[arg(long, default_value_t = 100.0)]
        measured_record_bytes: f64,
        /// Cores the measured server ran on.
        #[arg(long, default_value_t = 2)]
        measured_cores: usize,
    },
}

#[derive(Subcommand)]
enum StreamsCommand {
    /// Create a stream with N shards.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List every stream.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a stream's shards: hash ranges, owner cores, oldest and next sequence numbers.
    Describe {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a stream and every record in it.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Split a shard in two (Kinesis SplitShard): it closes, and two children share its
    /// hash range. Producers and readers keep running.
    Split {
        name: String,
        /// The shard to split, as `shardId-000000000003` or `3`.
        shard: String,
        /// The first hash key of the second child (default: the middle of the range).
        #[arg(long)]
        at: Option<u128>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Merge two shards with adjacent hash ranges into one (Kinesis MergeShards).
    Merge {
        name: String,
        shard: String,
        adjacent: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Split and merge until the stream has N shards of equal ranges (Kinesis
    /// UpdateShardCount, UNIFORM_SCALING: N between half and double the open shards).
    Scale {
        name: String,
        shards: u32,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Move a shard to another core; its records stay where they are on disk.
    Move {
        name: String,
        shard: String,
        core: u16,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Even out the open shards of every stream over the server's cores, moving one shard
    /// at a time without losing or reordering a record.
    Rebalance {
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand)]
enum ConsumersCommand {
    /// Run one worker of an application: it takes leases on the stream's shards (shared
    /// with the application's other workers), writes every record it processes as a line
    /// (shard, sequence number, partition key, data, unix µs) and checkpoints after each
    /// batch. Stops cleanly, checkpointing, on SIGINT or SIGTERM.
    Run {
        stream: String,
        /// The application (consumer group); workers with the same name share the shards.
        #[arg(long)]
        app: String,
        /// This worker's name, unique in the application (default: host and process id).
        #[arg(long)]
        worker: Option<String>,
        /// A worker not heard from for this long loses its leases, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        lease_timeout_ms: u64,
        /// Start shards with no checkpoint at the newest record instead of the oldest.
        #[arg(long)]
        latest: bool,
        /// Append processed records to this file instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The applications consuming a stream: shards, workers and lag.
    List {
        stream: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Per shard: application, lease owner, checkpoint, records and milliseconds behind.
    Describe {
        stream: String,
        /// Only this application.
        #[arg(long, default_value = "")]
        app: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(clap::Args, Clone)]
struct ServerArg {
    /// The server's binary protocol address.
    #[arg(long, env = "SPATE_SERVER", default_value = "127.0.0.1:4568")]
    server: String,
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
    spate::runtime::tune_memory();
    let result = match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
            http_listen,
            cores,
        } => serve(config, data_dir, listen, http_listen, cores),
        Command::Streams(command) => cli::streams(command_args(command)),
        Command::Consumers(command) => consumers(command),
        Command::Put {
            stream,
            file,
            key,
            delimiter,
            batch,
            server,
        } => cli::put(cli::PutArgs {
            server: server.server,
            stream,
            file,
            key,
            delimiter,
            batch,
        }),
        Command::Tail {
            stream,
            shard,
            from,
            count,
            server,
        } => cli::tail(cli::TailArgs {
            server: server.server,
            stream,
            shard,
            from,
            count,
        }),
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
        Command::Load {
            protocol,
            stream,
            shards,
            record_bytes,
            keys,
            zipf,
            batch,
            connections,
            in_flight,
            rate,
            duration,
            warmup,
            workers,
            verify,
            route,
            json,
            hgrm,
            server,
        } => (|| {
            let (min, max) = parse_record_bytes(&record_bytes)?;
            if batch == 0 || batch > spate::limits::BATCH_RECORDS_MAX {
                return Err(format!(
                    "--batch must be 1..={}",
                    spate::limits::BATCH_RECORDS_MAX
                ));
            }
            let target =
                spate::config::parse_addr("--server", &server.server).map_err(|e| e.to_string())?;
            let protocol = match protocol.as_str() {
                "binary" => spate::load::LoadProtocol::Binary,
                "kinesis" => spate::load::LoadProtocol::Kinesis,
                "nats" => spate::load::LoadProtocol::Nats,
                other => {
                    return Err(format!("--protocol `{other}`: use binary, kinesis or nats"));
                }
            };
            let route = match route.as_str() {
                "owner" => spate::load::Route::Owner,
                "server" => spate::load::Route::Server,
                other => return Err(format!("--route `{other}`: use owner or server")),
            };
            let options = spate::load::LoadOptions {
                protocol,
                target,
                stream,
                shards,
                record_bytes_min: min,
                record_bytes_max: max,
                keys,
                zipf,
                batch,
                connections: connections.max(1),
                in_flight: in_flight.max(1),
                rate,
                duration: std::time::Duration::from_secs(duration),
                warmup: std::time::Duration::from_secs(warmup),
                workers,
                verify,
                route,
            };
            if verify && protocol != spate::load::LoadProtocol::Binary {
                return Err("--verify reads the stream back through the binary protocol; use --protocol binary".into());
            }
            let report = spate::load::report::run(options.clone())?;
            println!("{}", report.summary());
            if verify {
                let acked = report.acked.clone();
                let stream = options.stream.clone();
                let check = spate::runtime::run_on_executor("verify", move || async move {
                    spate::load::verify(target, &stream, &acked).await
                })
                .map_err(|e| e.to_string())??;
                println!(
                    "verify: {} acknowledged, {} stored; missing {}, duplicated {}, reordered {}",
                    check.acknowledged,
                    check.stored,
                    check.missing,
                    check.duplicated,
                    check.reordered
                );
                if !check.passed() {
                    return Err("verification FAILED: see the counts above".into());
                }
            }
            std::fs::write(&json, report.to_json(&options) + "\n")
                .map_err(|e| format!("{}: {e}", json.display()))?;
            std::fs::write(&hgrm, report.to_hgrm())
                .map_err(|e| format!("{}: {e}", hgrm.display()))?;
            eprintln!("load: wrote {} and {}", json.display(), hgrm.display());
            Ok(())
        })(),
        Command::Plan(command) => plan(command),
        Command::Stats { http, count } => spate::config::parse_addr("--http", &http)
            .map_err(|e| e.to_string())
            .and_then(|target| {
                let options = spate::tools::stats::StatsOptions { target, count };
                spate::runtime::run_on_executor("stats", move || spate::tools::stats::run(options))
                    .map_err(|e| e.to_string())?
            }),
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

fn plan(command: PlanCommand) -> Result<(), String> {
    match command {
        PlanCommand::Ramp {
            p99_ms,
            start_rate,
            factor,
            steps,
            step_seconds,
            record_bytes,
            batch,
            stream,
            shards,
            connections,
            in_flight,
            server,
        } => {
            if factor <= 1.0 || start_rate <= 0.0 {
                return Err("--factor must be above 1 and --start-rate above 0".into());
            }
            let target =
                spate::config::parse_addr("--server", &server.server).map_err(|e| e.to_string())?;
            let base = spate::load::LoadOptions {
                protocol: spate::load::LoadProtocol::Binary,
                target,
                stream,
                shards,
                record_bytes_min: record_bytes,
                record_bytes_max: record_bytes,
                keys: 1000,
                zipf: None,
                batch: batch.clamp(1, spate::limits::BATCH_RECORDS_MAX),
                connections: connections.max(1),
                in_flight: in_flight.max(1),
                rate: None,
                duration: std::time::Duration::from_secs(step_seconds.max(1)),
                warmup: std::time::Duration::from_secs(1),
                workers: 1,
                verify: false,
                route: spate::load::Route::Owner,
            };
            let ramp = spate::load::plan::ramp(&base, start_rate, factor, p99_ms, steps)?;
            print!(
                "{}",
                spate::load::plan::ramp_text(&ramp, record_bytes as f64)
            );
            Ok(())
        }
        PlanCommand::Size {
            records_per_s,
            record_bytes,
            retention_hours,
            measured_records_per_s,
            measured_record_bytes,
            measured_cores,
        } => {
            let workload = spate::load::plan::Workload {
                records_per_s,
                record_bytes,
                retention_hours,
            };
            let basis = spate::load::plan::Basis {
                records_per_s: measured_records_per_s,
                record_bytes: measured_record_bytes,
                cores: measured_cores,
                source: "given with --measured-records-per-s".into(),
            };
            print!("{}", spate::load::plan::size(&workload, &basis));
            Ok(())
        }
    }
}

fn parse_record_bytes(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--record-bytes `{text}`: use N or MIN..MAX (at most 1 MiB)");
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (
            min.parse().map_err(|_| bad())?,
            max.parse().map_err(|_| bad())?,
        ),
        None => {
            let n = text.parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if min > max || max > spate::limits::RECORD_DATA_BYTES_MAX {
        return Err(bad());
    }
    Ok((min, max))
}

fn consumers(command: ConsumersCommand) -> Result<(), String> {
    use spate::tools::consumers;
    match command {
        ConsumersCommand::Run {
            stream,
            app,
            worker,
            lease_timeout_ms,
            latest,
            output,
            server,
        } => consumers::run(consumers::RunArgs {
            server: server.server,
            stream,
            app,
            worker: worker.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "worker".into());
                format!("{host}-{}", std::process::id())
            }),
            lease_timeout_ms,
            from_latest: latest,
            output,
        }),
        ConsumersCommand::List { stream, server } => {
            consumers::show(server.server, stream, String::new(), false)
        }
        ConsumersCommand::Describe {
            stream,
            app,
            server,
        } => consumers::show(server.server, stream, app, true),
    }
}

fn command_args(command: StreamsCommand) -> cli::StreamsArgs {
    match command {
        StreamsCommand::Create {
            name,
            shards,
            server,
        } => cli::StreamsArgs::Create {
            server: server.server,
            name,
            shards,
        },
        StreamsCommand::List { server } => cli::StreamsArgs::List {
            server: server.server,
        },
        StreamsCommand::Describe { name, server } => cli::StreamsArgs::Describe {
            server: server.server,
            name,
        },
        StreamsCommand::Delete { name, server } => cli::StreamsArgs::Delete {
            server: server.server,
            name,
        },
        StreamsCommand::Split {
            name,
            shard,
            at,
            server,
        } => cli::StreamsArgs::Split {
            server: server.server,
            name,
            shard,
            at,
        },
        StreamsCommand::Merge {
            name,
            shard,
            adjacent,
            server,
        } => cli::StreamsArgs::Reshard {
            server: server.server,
            name,
            change: cli::ReshardArgs::Merge(shard, adjacent),
        },
        StreamsCommand::Scale {
            name,
            shards,
            server,
        } => cli::StreamsArgs::Reshard {
            server: server.server,
            name,
            change: cli::ReshardArgs::Scale(shards),
        },
        StreamsCommand::Move {
            name,
            shard,
            core,
            server,
        } => cli::StreamsArgs::Reshard {
            server: server.server,
            name,
            change: cli::ReshardArgs::Move(shard, core),
        },
        StreamsCommand::Rebalance { server } => cli::StreamsArgs::Reshard {
            server: server.server,
            name: String::new(),
            change: cli::ReshardArgs::Rebalance,
        },
    }
}

fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    http_listen: Option<String>,
    cores: Option<usize>,
) -> Result<(), String> {
    let mut config = match config {
        Some(path) => spate::config::Config::from_file(&path).map_err(|e| e.to_string())?,
        None => spate::config::Config::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = listen {
        config.binary_listen =
            spate::config::parse_addr("--listen", &listen).map_err(|e| e.to_string())?;
    }
    if let Some(listen) = http_listen {
        config.http_listen =
            spate::config::parse_addr("--http-listen", &listen).map_err(|e| e.to_string())?;
    }
    if let Some(cores) = cores {
        config.cores = cores;
    }
    config.validate().map_err(|e| e.to_string())?;
    abort_on_panic();
    spate::server::serve(config).map_err(|e| e.to_string())
}

/// Makes a panic on any thread end the server. glommio catches panics in wakers and keeps
/// the executor going with its task in an unknown state; a server half alive that way holds
/// its ports and answers nothing. Ending the process lets a supervisor restart it, and
/// recovery rebuilds every shard from its log, which holds everything acknowledged.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("spate: a server thread panicked; stopping the server (restart it to recover)");
        std::process::abort();
    }));
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
