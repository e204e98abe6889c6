//! The client-side commands of the CLI: `streams`, `put` and `tail`, each one connection
//! through [`crate::client`] on one executor. Output is plain lines a person can read and
//! a script can split on tabs.

use std::cell::Cell;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

use crate::catalog::{Reshard, parse_shard_id, sequence, shard_id};
use crate::client::Client;
use crate::limits::BATCH_RECORDS_MAX;
use crate::log::StartPosition;
use crate::protocol::binary::PutEntry;

pub enum StreamsArgs {
    Create {
        server: String,
        name: String,
        shards: u32,
    },
    List {
        server: String,
    },
    Describe {
        server: String,
        name: String,
    },
    Delete {
        server: String,
        name: String,
    },
    Split {
        server: String,
        name: String,
        shard: String,
        at: Option<u128>,
    },
    Reshard {
        server: String,
        name: String,
        change: ReshardArgs,
    },
}

/// A reshard as typed at the terminal.
pub enum ReshardArgs {
    Merge(String, String),
    Scale(u32),
    Move(String, u16),
    Rebalance,
}

/// Reads `shardId-000000000003` or `3`.
fn shard_arg(text: &str) -> Result<u32, String> {
    parse_shard_id(text)
        .or_else(|| text.parse().ok())
        .ok_or_else(|| format!("`{text}` is not a shard id (shardId-000000000003, or 3)"))
}

pub struct PutArgs {
    pub server: String,
    pub stream: String,
    pub file: Option<PathBuf>,
    pub key: String,
    pub delimiter: String,
    pub batch: usize,
}

pub struct TailArgs {
    pub server: String,
    pub stream: String,
    pub shard: Option<String>,
    pub from: String,
    pub count: Option<u64>,
}

fn address(server: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    server
        .to_socket_addrs()
        .map_err(|e| format!("server address `{server}`: {e}"))?
        .next()
        .ok_or_else(|| format!("server address `{server}` resolves to nothing"))
}

fn on_executor<F, Fut>(make: F) -> Result<(), String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    crate::runtime::run_on_executor("cli", make).map_err(|e| e.to_string())?
}

/// `spate streams ...`.
///
/// # Errors
/// A message for the person at the terminal.
pub fn streams(args: StreamsArgs) -> Result<(), String> {
    on_executor(move || async move {
        match args {
            StreamsArgs::Create {
                server,
                name,
                shards,
            } => {
                let client = connect(&server).await?;
                client
                    .create_stream(&name, shards)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("created stream {name} with {shards} shard(s)");
            }
            StreamsArgs::List { server } => {
                let client = connect(&server).await?;
                for name in client.list_streams().await.map_err(|e| e.to_string())? {
                    println!("{name}");
                }
            }
            StreamsArgs::Describe { server, name } => {
                let client = connect(&server).await?;
                let stream = client
                    .describe_stream(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                let open = stream.shards.iter().filter(|s| s.end_seq.is_none()).count();
                println!(
                    "stream {}: {}, {open} open shard(s), {} closed, retention {} h",
                    stream.name,
                    stream.status,
                    stream.shards.len() - open,
                    stream.retention_hours
                );
                println!("shard\tcore\trecords\tstate\tparents\thash range");
                for shard in &stream.shards {
                    let parents: Vec<String> = shard
                        .parent
                        .iter()
                        .chain(&shard.adjacent_parent)
                        .map(|p| shard_id(*p))
                        .collect();
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}..={}",
                        shard_id(shard.index),
                        shard.owner_core,
                        shard.tip_seq - shard.trim_seq.min(shard.tip_seq),
                        if shard.end_seq.is_some() {
                            "closed"
                        } else {
                            "open"
                        },
                        if parents.is_empty() {
                            "-".to_string()
                        } else {
                            parents.join(",")
                        },
                        shard.hash_start,
                        shard.hash_end
                    );
                }
            }
            StreamsArgs::Split {
                server,
                name,
                shard,
                at,
            } => {
                let client = connect(&server).await?;
                let index = shard_arg(&shard)?;
                let key = match at {
                    Some(key) => key,
                    None => {
                        let stream = client
                            .describe_stream(&name)
                            .await
                            .map_err(|e| e.to_string())?;
                        let meta = stream
                            .shards
                            .iter()
                            .find(|s| s.index == index)
                            .ok_or_else(|| format!("stream {name} has no shard {shard}"))?;
                        meta.hash_start + (meta.hash_end - meta.hash_start) / 2 + 1
                    }
                };
                let change = Reshard::Split {
                    shard: index,
                    new_starting_hash: key,
                };
                client
                    .reshard(&name, change)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("split {} of {name} at hash key {key}", shard_id(index));
            }
            StreamsArgs::Reshard {
                server,
                name,
                change,
            } => {
                let client = connect(&server).await?;
                let (change, done) = match change {
                    ReshardArgs::Merge(a, b) => {
                        let (a, b) = (shard_arg(&a)?, shard_arg(&b)?);
                        let said = format!("merged {} and {} of {name}", shard_id(a), shard_id(b));
                        (
                            Reshard::Merge {
                                shard: a,
                                adjacent: b,
                            },
                            said,
                        )
                    }
                    ReshardArgs::Scale(target) => (
                        Reshard::Scale { target },
                        format!("scaled {name} to {target} shard(s)"),
                    ),
                    ReshardArgs::Move(shard, core) => {
                        let index = shard_arg(&shard)?;
                        let said = format!("moved {} of {name} to core {core}", shard_id(index));
                        (Reshard::Move { shard: index, core }, said)
                    }
                    ReshardArgs::Rebalance => (
                        Reshard::Rebalance,
                        "open shards are now spread evenly over the cores".to_string(),
                    ),
                };
                client
                    .reshard(&name, change)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{done}");
            }
            StreamsArgs::Delete { server, name } => {
                let client = connect(&server).await?;
                client
                    .delete_stream(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("deleted stream {name}");
            }
        }
        Ok(())
    })
}

pub(crate) async fn connect(server: &str) -> Result<Client, String> {
    let addr = address(server)?;
    Client::connect(addr)
        .await
        .map_err(|e| format!("{e} (is `spate serve` running there?)"))
}

enum KeySource {
    Random,
    Counter,
    Field(usize),
}

fn key_source(text: &str) -> Result<KeySource, String> {
    match text {
        "random" => Ok(KeySource::Random),
        "counter" => Ok(KeySource::Counter),
        _ => {
            let field = text
                .strip_prefix("field:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    format!("--key `{text}`: use random, counter or field:N (N from 1)")
                })?;
            Ok(KeySource::Field(field))
        }
    }
}

/// `spate put`: one record per input line; prints each record's shard and sequence number.
///
/// # Errors
/// A message for the person at the terminal; records already put stay put.
pub fn put(args: PutArgs) -> Result<(), String> {
    let keys = key_source(&args.key)?;
    if args.batch == 0 || args.batch > BATCH_RECORDS_MAX {
        return Err(format!("--batch must be 1..={BATCH_RECORDS_MAX}"));
    }
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    on_executor(move || async move {
        let client = connect(&args.server).await?;
        let mut counter = 0u64;
        let mut random = crate::tools::now_us() | 1;
        let mut batch = Vec::with_capacity(args.batch);
        let mut put = 0u64;
        let mut failed = 0u64;
        let mut lines = input.lines();
        loop {
            let line = lines
                .next()
                .transpose()
                .map_err(|e| format!("reading input: {e}"))?;
            if let Some(line) = &line {
                let key = match keys {
                    KeySource::Random => {
                        random ^= random << 13;
                        random ^= random >> 7;
                        random ^= random << 17;
                        format!("{random:016x}")
                    }
                    KeySource::Counter => {
                        counter += 1;
                        counter.to_string()
                    }
                    KeySource::Field(n) => line
                        .split(args.delimiter.as_str())
                        .nth(n - 1)
                        .map(str::to_string)
                        .ok_or_else(|| format!("line has no field {n}: {line}"))?,
                };
                batch.push(PutEntry {
                    partition_key: Bytes::from(key),
                    data: Bytes::from(line.clone()),
                    explicit_hash_key: None,
                });
            }
            if batch.len() == args.batch || (line.is_none() && !batch.is_empty()) {
                let records = std::mem::take(&mut batch);
                let results = client
                    .put_records(&args.stream, records)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut out = std::io::stdout().lock();
                for result in results {
                    match result {
                        Ok((shard, seq)) => {
                            put += 1;
                            let _ = writeln!(
                                out,
                                "{}\t{}",
                                shard_id(shard),
                                sequence::render(shard, seq)
                            );
                        }
                        Err(error) => {
                            failed += 1;
                            eprintln!("record failed: {error}");
                        }
                    }
                }
            }
            if line.is_none() {
                break;
            }
        }
        eprintln!("put {put} record(s) into {}, {failed} failed", args.stream);
        if failed > 0 {
            return Err(format!("{failed} record(s) failed"));
        }
        Ok(())
    })
}

fn start_position(text: &str) -> Result<(StartPosition, Option<u32>), String> {
    let bad = || {
        format!("--from `{text}`: use trim-horizon, latest, at:SEQ, after:SEQ or timestamp:UNIX_MS")
    };
    Ok(match text {
        "trim-horizon" => (StartPosition::TrimHorizon, None),
        "latest" => (StartPosition::Latest, None),
        _ => {
            let (kind, value) = text.split_once(':').ok_or_else(bad)?;
            match kind {
                "at" | "after" => {
                    let (shard, seq) = sequence::parse(value).ok_or_else(bad)?;
                    let position = if kind == "at" {
                        StartPosition::AtSequence(seq)
                    } else {
                        StartPosition::AfterSequence(seq)
                    };
                    (position, Some(shard))
                }
                "timestamp" => {
                    let ms: u64 = value.parse().map_err(|_| bad())?;
                    (StartPosition::AtTimestamp(ms.saturating_mul(1000)), None)
                }
                _ => return Err(bad()),
            }
        }
    })
}

/// `spate tail`: follows one shard or every shard of a stream and prints
/// `shard <tab> sequence number <tab> partition key <tab> data` per record.
///
/// # Errors
/// A message for the person at the terminal.
pub fn tail(args: TailArgs) -> Result<(), String> {
    let (position, seq_shard) = start_position(&args.from)?;
    let only = match &args.shard {
        Some(text) => Some(
            parse_shard_id(text)
                .or_else(|| text.parse().ok())
                .ok_or_else(|| format!("--shard `{text}`: a number or shardId-000000000000"))?,
        ),
        None => seq_shard,
    };
    if let (Some(shard), Some(from_seq)) = (only, seq_shard)
        && shard != from_seq
    {
        return Err(format!(
            "the sequence number in --from belongs to {}, not {}",
            shard_id(from_seq),
            shard_id(shard)
        ));
    }
    on_executor(move || async move {
        let client = Rc::new(connect(&args.server).await?);
        let stream = client
            .describe_stream(&args.stream)
            .await
            .map_err(|e| e.to_string())?;
        let shards: Vec<u32> = match only {
            Some(shard) => vec![shard],
            None => stream.shards.iter().map(|s| s.index).collect(),
        };
        let printed = Rc::new(Cell::new(0u64));
        let mut tasks = Vec::new();
        for shard in shards {
            let subscription = client
                .subscribe(&args.stream, shard, position)
                .await
                .map_err(|e| e.to_string())?;
            let printed = printed.clone();
            let count = args.count;
            tasks.push(glommio::spawn_local(async move {
                while let Some(event) = subscription.next().await {
                    let body = event.map_err(|e| e.to_string())?;
                    let mut out = std::io::stdout().lock();
                    for record in body.records {
                        if count.is_some_and(|c| printed.get() >= c) {
                            return Ok(());
                        }
                        let _ = writeln!(
                            out,
                            "{}\t{}\t{}\t{}",
                            shard_id(shard),
                            sequence::render(shard, record.seq),
                            String::from_utf8_lossy(&record.partition_key),
                            String::from_utf8_lossy(&record.data)
                        );
                        printed.set(printed.get() + 1);
                    }
                    let _ = out.flush();
                    if count.is_some_and(|c| printed.get() >= c) {
                        return Ok(());
                    }
                }
                Err::<(), String>("the server closed the connection".into())
            }));
        }
        // With a count, the first shard to reach it ends the tail; otherwise run until a
        // subscription fails (or the user interrupts).
        let mut first = futures::future::select_all(tasks);
        loop {
            let (result, _, rest) = first.await;
            result?;
            if args.count.is_some() || rest.is_empty() {
                return Ok(());
            }
            first = futures::future::select_all(rest);
        }
    })
}
