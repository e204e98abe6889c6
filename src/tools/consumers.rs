//! `spate consumers`: run a worker of a consumer application, and show applications,
//! lease owners, checkpoints and lag per shard. The worker's record processor writes each
//! record it processes as a line (shard, sequence number, partition key, data, when) and
//! checkpoints after every batch: a working example of the consumer library, and what the
//! failover tests drive.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::catalog::shard_id;
use crate::client::consumer::{Checkpointer, RecordProcessor, Worker, WorkerConfig};
use crate::log::{RecordOut, StartPosition};
use crate::protocol::binary::{Checkpoint, Request, Response};
use crate::tools::cli::connect;

pub struct RunArgs {
    pub server: String,
    pub stream: String,
    pub app: String,
    pub worker: String,
    pub lease_timeout_ms: u64,
    pub from_latest: bool,
    pub output: Option<PathBuf>,
}

/// Where processed records are written: a file (flushed after each batch) or stdout.
type Sink = Rc<RefCell<Box<dyn Write>>>;

struct LineWriter {
    sink: Sink,
    shard: u32,
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace(['\t', '\n', '\r'], " ")
}

impl RecordProcessor for LineWriter {
    async fn initialize(&mut self, shard: u32, start: StartPosition) {
        tracing::info!(shard = %shard_id(shard), ?start, "processing shard");
        self.shard = shard;
    }

    async fn process_records(&mut self, records: &[RecordOut], checkpointer: &Checkpointer) {
        let now = crate::tools::now_us();
        {
            let mut sink = self.sink.borrow_mut();
            for record in records {
                let _ = writeln!(
                    sink,
                    "{}\t{}\t{}\t{}\t{now}",
                    shard_id(self.shard),
                    record.seq,
                    clean(&record.partition_key),
                    clean(&record.data)
                );
            }
            // Processed means written out before the checkpoint says so.
            let _ = sink.flush();
        }
        if let Err(error) = checkpointer.checkpoint().await {
            tracing::warn!(shard = %shard_id(self.shard), %error, "checkpoint failed");
        }
    }

    async fn lease_lost(&mut self) {
        tracing::info!(shard = %shard_id(self.shard), "lease lost");
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) {
        match checkpointer.checkpoint().await {
            Ok(()) => tracing::info!(shard = %shard_id(self.shard), "shard ended and checkpointed"),
            Err(error) => {
                tracing::warn!(shard = %shard_id(self.shard), %error, "end checkpoint failed")
            }
        }
    }

    async fn shutdown_requested(&mut self, checkpointer: &Checkpointer) {
        let _ = checkpointer.checkpoint().await;
    }
}

/// `spate consumers run`: one worker until SIGINT or SIGTERM.
///
/// # Errors
/// A message for the person at the terminal.
pub fn run(args: RunArgs) -> Result<(), String> {
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stopping.clone())
            .map_err(|e| format!("installing the signal handler: {e}"))?;
    }
    crate::runtime::run_on_executor("consumer", move || async move {
        let client = Rc::new(connect(&args.server).await?);
        let sink: Sink = match &args.output {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("opening {}: {e}", path.display()))?;
                Rc::new(RefCell::new(Box::new(std::io::BufWriter::new(file))))
            }
            None => Rc::new(RefCell::new(Box::new(std::io::stdout()))),
        };
        let mut config = WorkerConfig::new(&args.stream, &args.app, &args.worker);
        config.lease_timeout = Duration::from_millis(args.lease_timeout_ms.max(1));
        if args.from_latest {
            config.initial_position = StartPosition::Latest;
        }
        let worker = Worker::new(client, config);
        let stop = Rc::new(Cell::new(false));
        let flag = stop.clone();
        glommio::spawn_local(async move {
            while !stopping.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            flag.set(true);
        })
        .detach();
        eprintln!(
            "consumers: worker {} of application {} on stream {}",
            args.worker, args.app, args.stream
        );
        let make = |shard| LineWriter {
            sink: sink.clone(),
            shard,
        };
        worker.run(make, stop).await.map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())?
}

/// `spate consumers list|describe STREAM`: the applications on a stream, with lease
/// owners, checkpoints and lag per shard (`detail`), or one line per application.
///
/// # Errors
/// A message for the person at the terminal.
pub fn show(server: String, stream: String, app: String, detail: bool) -> Result<(), String> {
    crate::runtime::run_on_executor("consumers", move || async move {
        let client = connect(&server).await?;
        let request = Request::ListLeases {
            stream: stream.clone(),
            app,
        };
        let rows = match client.call(&request).await.map_err(|e| e.to_string())? {
            Response::LeaseRows(rows) => rows,
            other => return Err(format!("unexpected response {other:?}")),
        };
        let description = client
            .describe_stream(&stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        for row in &rows {
            let Some(shard) = description.shards.iter().find(|s| s.index == row.shard) else {
                continue;
            };
            let next = match row.checkpoint {
                Checkpoint::None => shard.trim_seq,
                Checkpoint::After(seq) => seq + 1,
                Checkpoint::ShardEnd => shard.tip_seq,
            };
            let behind = shard.tip_seq.saturating_sub(next);
            let millis = if behind > 0 {
                client
                    .get_records(&stream, row.shard, StartPosition::AtSequence(next), 1)
                    .await
                    .map(|b| b.millis_behind)
                    .unwrap_or(0)
            } else {
                0
            };
            lines.push((row.clone(), behind, millis));
        }
        if detail {
            println!("application\tshard\towner\tcheckpoint\trecords behind\tms behind");
            for (row, behind, millis) in &lines {
                let checkpoint = match row.checkpoint {
                    Checkpoint::None => "-".to_string(),
                    Checkpoint::After(seq) => seq.to_string(),
                    Checkpoint::ShardEnd => "SHARD_END".to_string(),
                };
                let owner = if row.owner.is_empty() {
                    "-"
                } else {
                    &row.owner
                };
                println!(
                    "{}\t{}\t{owner}\t{checkpoint}\t{behind}\t{millis}",
                    row.app,
                    shard_id(row.shard)
                );
            }
        } else {
            println!("application\tshards\tworkers\trecords behind\tms behind (max)");
            let mut apps: Vec<&str> = lines.iter().map(|(r, _, _)| r.app.as_str()).collect();
            apps.dedup();
            for app in apps {
                let mine: Vec<_> = lines.iter().filter(|(r, _, _)| r.app == app).collect();
                let mut workers: Vec<&str> = mine
                    .iter()
                    .map(|(r, _, _)| r.owner.as_str())
                    .filter(|o| !o.is_empty())
                    .collect();
                workers.sort_unstable();
                workers.dedup();
                let behind: u64 = mine.iter().map(|(_, b, _)| b).sum();
                let millis = mine.iter().map(|(_, _, m)| *m).max().unwrap_or(0);
                println!(
                    "{app}\t{}\t{}\t{behind}\t{millis}",
                    mine.len(),
                    workers.len()
                );
            }
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?
}
