//! The consumer library (the KCL model, native): an application implements
//! [`RecordProcessor`]; a [`Worker`] of that application takes leases on the stream's
//! shards from the server's lease coordinator, runs one processor per leased shard, hands
//! it records with a [`Checkpointer`], and stops it when the lease goes elsewhere. Many
//! workers (threads or processes) of one application share the shards between them; the
//! server keeps the leases and checkpoints durably (see `server::leases`).
//!
//! Guarantees, as with the KCL: every record is processed at least once (a record after
//! the last checkpoint is processed again by the next owner); a shard's children start
//! only after it was checkpointed at its end, so a partition key's records are processed
//! in order across a reshard; a worker that cannot reach the coordinator for the lease
//! timeout stops its processors before the coordinator gives their shards away.
//!
//! Runs on one glommio executor: one connection, one task per leased shard.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::client::{Client, ClientError};
use crate::log::{RecordOut, StartPosition};
use crate::protocol::binary::{Checkpoint, LeaseInfo, Request, Response, Status};

#[derive(Clone, Debug, Error)]
pub enum ConsumerError {
    #[error("the lease of shard {shard} was lost; another worker may process it now")]
    LeaseLost { shard: u32 },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What one worker of an application is and how it behaves.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub stream: String,
    /// The application (consumer group): workers with the same name share the shards.
    pub app: String,
    /// This worker's name, unique within the application.
    pub worker: String,
    /// A worker not heard from for this long loses its leases (KCL: failover time).
    pub lease_timeout: Duration,
    /// Where a shard with no checkpoint yet is read from.
    pub initial_position: StartPosition,
    /// Records per read, at most.
    pub batch_records: u32,
    /// How long a read waits for records at the head of a shard.
    pub poll_wait: Duration,
}

impl WorkerConfig {
    pub fn new(stream: &str, app: &str, worker: &str) -> WorkerConfig {
        WorkerConfig {
            stream: stream.to_string(),
            app: app.to_string(),
            worker: worker.to_string(),
            lease_timeout: Duration::from_secs(10),
            initial_position: StartPosition::TrimHorizon,
            batch_records: 1000,
            poll_wait: Duration::from_millis(500),
        }
    }
}

/// An application's per-shard logic, as in the KCL's `ShardRecordProcessor`.
#[allow(async_fn_in_trait)]
pub trait RecordProcessor {
    /// The worker took the lease of `shard`; records start at `start`.
    async fn initialize(&mut self, shard: u32, start: StartPosition);
    /// Records in shard order. Checkpoint when they are handled (or later, for several
    /// batches at once); what is not checkpointed is processed again after a failover.
    async fn process_records(&mut self, records: &[RecordOut], checkpointer: &Checkpointer);
    /// The lease went to another worker (or expired); stop without checkpointing.
    async fn lease_lost(&mut self);
    /// Every record of the closed shard was handed out. Checkpoint (which records the
    /// shard's end) so its children can start.
    async fn shard_ended(&mut self, checkpointer: &Checkpointer);
    /// The worker is shutting down; checkpoint what was processed.
    async fn shutdown_requested(&mut self, checkpointer: &Checkpointer);
}

/// Records a processor's progress in one shard, under its lease.
pub struct Checkpointer {
    client: Rc<Client>,
    config: Rc<WorkerConfig>,
    shard: u32,
    counter: u64,
    /// The last record handed to the processor.
    last_seq: Cell<Option<u64>>,
    ended: Cell<bool>,
    lost: Cell<bool>,
}

impl Checkpointer {
    /// The shard this checkpointer writes for.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Checkpoints at the last record handed to the processor (at the shard's end, once
    /// it ended). Resolves once the checkpoint is durable on the server.
    ///
    /// # Errors
    /// [`ConsumerError::LeaseLost`] when the lease is no longer this worker's; connection
    /// errors.
    pub async fn checkpoint(&self) -> Result<(), ConsumerError> {
        let checkpoint = if self.ended.get() {
            Checkpoint::ShardEnd
        } else {
            match self.last_seq.get() {
                Some(seq) => Checkpoint::After(seq),
                None => return Ok(()),
            }
        };
        self.write(checkpoint).await
    }

    /// Checkpoints after the record with sequence number `seq` of this shard.
    ///
    /// # Errors
    /// As [`Checkpointer::checkpoint`].
    pub async fn checkpoint_at(&self, seq: u64) -> Result<(), ConsumerError> {
        self.write(Checkpoint::After(seq)).await
    }

    async fn write(&self, checkpoint: Checkpoint) -> Result<(), ConsumerError> {
        let request = Request::Checkpoint {
            stream: self.config.stream.clone(),
            app: self.config.app.clone(),
            worker: self.config.worker.clone(),
            shard: self.shard,
            counter: self.counter,
            checkpoint,
        };
        match self.client.call(&request).await {
            Ok(_) => Ok(()),
            Err(ClientError::Server(error)) if error.status == Status::LeaseLost => {
                self.lost.set(true);
                Err(ConsumerError::LeaseLost { shard: self.shard })
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// The state a running shard shares with the worker loop.
struct Running {
    /// Set when the lease is gone: the processor stops without checkpointing.
    revoked: Cell<bool>,
    /// Set when the worker shuts down: the processor checkpoints and stops.
    stopping: Cell<bool>,
    /// One past the last record of the shard once it is closed.
    end_seq: Cell<Option<u64>>,
}

/// One worker of an application.
pub struct Worker {
    client: Rc<Client>,
    config: Rc<WorkerConfig>,
    running: RefCell<HashMap<u32, Rc<Running>>>,
}

impl Worker {
    pub fn new(client: Rc<Client>, config: WorkerConfig) -> Rc<Worker> {
        Rc::new(Worker {
            client,
            config: Rc::new(config),
            running: RefCell::new(HashMap::new()),
        })
    }

    /// The shards this worker runs processors for now.
    pub fn shards(&self) -> Vec<u32> {
        let mut shards: Vec<u32> = self.running.borrow().keys().copied().collect();
        shards.sort_unstable();
        shards
    }

    /// Runs until `stop` is set: heartbeats every third of the lease timeout, starts a
    /// processor (from `make`) for each lease granted, stops those whose lease went away;
    /// at the end asks every processor to shut down and waits for them.
    ///
    /// # Errors
    /// A connection failure that outlasted the lease timeout (every processor was
    /// stopped by then).
    pub async fn run<P, F>(
        self: &Rc<Self>,
        mut make: F,
        stop: Rc<Cell<bool>>,
    ) -> Result<(), ConsumerError>
    where
        P: RecordProcessor + 'static,
        F: FnMut(u32) -> P,
    {
        let interval = self.config.lease_timeout / 3;
        let mut last_ok = Instant::now();
        let mut failure = None;
        while !stop.get() {
            let sent = Instant::now();
            match self.heartbeat().await {
                Ok(leases) => {
                    last_ok = sent;
                    self.adopt(leases, &mut make);
                }
                Err(error) => {
                    if last_ok.elapsed() >= self.config.lease_timeout {
                        // The coordinator may have given our shards away: stop them all.
                        self.revoke_all();
                        failure = Some(error);
                        break;
                    }
                }
            }
            let until = sent + interval;
            while Instant::now() < until && !stop.get() {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
        for running in self.running.borrow().values() {
            running.stopping.set(true);
        }
        while !self.running.borrow().is_empty() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn heartbeat(&self) -> Result<Vec<LeaseInfo>, ConsumerError> {
        let request = Request::Heartbeat {
            stream: self.config.stream.clone(),
            app: self.config.app.clone(),
            worker: self.config.worker.clone(),
            timeout_ms: u32::try_from(self.config.lease_timeout.as_millis()).unwrap_or(u32::MAX),
            held: self.shards(),
        };
        match self.client.call(&request).await? {
            Response::Leases(leases) => Ok(leases),
            other => Err(ClientError::Protocol(format!("unexpected response {other:?}")).into()),
        }
    }

    fn revoke_all(&self) {
        for running in self.running.borrow().values() {
            running.revoked.set(true);
        }
    }

    /// Starts processors for new leases, stops those no longer granted.
    fn adopt<P, F>(self: &Rc<Self>, leases: Vec<LeaseInfo>, make: &mut F)
    where
        P: RecordProcessor + 'static,
        F: FnMut(u32) -> P,
    {
        for (shard, running) in self.running.borrow().iter() {
            if !leases.iter().any(|l| l.shard == *shard) {
                running.revoked.set(true);
            }
        }
        for lease in leases {
            if let Some(running) = self.running.borrow().get(&lease.shard) {
                running.end_seq.set(lease.end_seq);
                continue;
            }
            if lease.checkpoint == Checkpoint::ShardEnd {
                continue;
            }
            let running = Rc::new(Running {
                revoked: Cell::new(false),
                stopping: Cell::new(false),
                end_seq: Cell::new(lease.end_seq),
            });
            self.running
                .borrow_mut()
                .insert(lease.shard, running.clone());
            let worker = self.clone();
            let processor = make(lease.shard);
            glommio::spawn_local(async move {
                let shard = lease.shard;
                if let Err(error) = worker.process(lease, processor, &running).await {
                    tracing::warn!(shard, %error, "shard processor stopped");
                }
                worker.running.borrow_mut().remove(&shard);
            })
            .detach();
        }
    }

    /// Reads one shard and feeds its processor until the lease goes, the worker stops or
    /// the shard ends.
    async fn process<P: RecordProcessor>(
        &self,
        lease: LeaseInfo,
        mut processor: P,
        running: &Running,
    ) -> Result<(), ConsumerError> {
        let start = match lease.checkpoint {
            Checkpoint::After(seq) => StartPosition::AfterSequence(seq),
            Checkpoint::None => self.config.initial_position,
            Checkpoint::ShardEnd => return Ok(()),
        };
        let checkpointer = Checkpointer {
            client: self.client.clone(),
            config: self.config.clone(),
            shard: lease.shard,
            counter: lease.counter,
            last_seq: Cell::new(None),
            ended: Cell::new(false),
            lost: Cell::new(false),
        };
        processor.initialize(lease.shard, start).await;
        let mut position = start;
        let mut next_seq = None;
        loop {
            if running.revoked.get() || checkpointer.lost.get() {
                processor.lease_lost().await;
                return Ok(());
            }
            if running.stopping.get() {
                processor.shutdown_requested(&checkpointer).await;
                return Ok(());
            }
            if let (Some(end), Some(next)) = (running.end_seq.get(), next_seq)
                && next >= end
            {
                checkpointer.ended.set(true);
                processor.shard_ended(&checkpointer).await;
                return Ok(());
            }
            let wait_ms = u32::try_from(self.config.poll_wait.as_millis()).unwrap_or(u32::MAX);
            let request = Request::GetRecords {
                stream: self.config.stream.clone(),
                shard: lease.shard,
                position,
                limit: self.config.batch_records,
                bytes_max: crate::limits::READ_BYTES_MAX as u32,
                wait_ms,
            };
            let body = match self.client.call(&request).await? {
                Response::Records(body) => body,
                other => {
                    return Err(
                        ClientError::Protocol(format!("unexpected response {other:?}")).into(),
                    );
                }
            };
            if let Some(last) = body.records.last() {
                checkpointer.last_seq.set(Some(last.seq));
                if !running.revoked.get() {
                    processor
                        .process_records(&body.records, &checkpointer)
                        .await;
                }
            }
            next_seq = Some(body.next_seq);
            position = StartPosition::AtSequence(body.next_seq);
        }
    }
}
