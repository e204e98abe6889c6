//! One core of the server: the shards it owns, its committer, its copy of the catalog, and
//! its end of the core-to-core mesh. Owns the handling of work that arrives for its shards
//! (appends, reads, tips) and of catalog snapshots. Runs on its own pinned executor;
//! nothing here crosses threads except [`CoreMessage`] values on bounded glommio channels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::join_all;
use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::catalog::{Catalog, StreamMeta};
use crate::commit::Committer;
use crate::config::Config;
use crate::limits::READ_WAIT_US_MAX;
use crate::log::batch::Encoded;
use crate::log::{AppendError, LogConfig, ShardLog, StartPosition};
use crate::metrics::{CoreMetrics, Op as Measured, Recorder};
use crate::protocol::binary::{RecordsBody, Response, Status, WireError};
use crate::protocol::kinesis::iterator::IteratorKey;
use crate::server::controller::{ControlRequest, Controller};
use crate::server::quota::ShardUsage;

/// Deepest JSON nesting a Kinesis request may have; Kinesis bodies nest three levels.
pub const JSON_DEPTH_MAX: usize = 32;

/// How soon a core looks at messages from other cores while busy.
pub const MESH_LATENCY: Duration = Duration::from_micros(200);

/// A message between cores. Requests carry an id the reply echoes.
pub enum CoreMessage {
    Request {
        id: u64,
        from: usize,
        body: CoreRequest,
    },
    Reply {
        id: u64,
        body: CoreReply,
    },
}

/// Work one core asks of another.
pub enum CoreRequest {
    /// Append sub-batches to shards the target owns, one per shard.
    Append {
        stream_id: u64,
        batches: Vec<(u32, Encoded)>,
    },
    /// Read from a shard the target owns, waiting up to `wait_us` for records.
    Read {
        stream_id: u64,
        shard: u32,
        position: StartPosition,
        limit: u32,
        bytes_max: u32,
        wait_us: u64,
        /// For a SubscribeToShard subscription: (consumer ARN, generation). The read is
        /// refused when a newer subscription for the same consumer and shard took over.
        subscription: Option<(String, u64)>,
    },
    /// Registers a SubscribeToShard subscription for (consumer ARN, shard) on the shard's
    /// owner; answers its generation, or ResourceInUse while another one is young.
    Subscribe {
        stream_id: u64,
        shard: u32,
        consumer: String,
    },
    /// A subscription ended; forget it unless a newer one took over.
    Unsubscribe {
        stream_id: u64,
        shard: u32,
        consumer: String,
        generation: u64,
    },
    /// The sequence number a start position stands for, on a shard the target owns.
    Resolve {
        stream_id: u64,
        shard: u32,
        position: StartPosition,
    },
    /// Trim horizon and tip of shards the target owns.
    Tips { stream_id: u64, shards: Vec<u32> },
    /// Close shards the target owns to appends and report where each ends, once all they
    /// hold is durable (the first half of a split, merge or move). With `release`, the
    /// target also lets go of them, for another core to open.
    Fence {
        stream_id: u64,
        shards: Vec<u32>,
        release: bool,
    },
    /// Open fenced shards to appends again (a reshard that could not finish).
    Unfence { stream_id: u64, shards: Vec<u32> },
    /// Shards of the target whose writes stayed above the on-demand threshold for the
    /// configured window; their heat is reset as they are reported.
    HotShards,
    /// The target's measurements.
    Metrics,
    /// A catalog change, for the controller (core 0).
    Control(ControlRequest),
    /// A consumer application's lease request (heartbeat, checkpoint, list), for the
    /// controller.
    Lease(crate::protocol::binary::Request),
    /// A new catalog, from the controller: open shards newly owned, close deleted ones.
    Snapshot {
        catalog: Catalog,
        deleted: Vec<StreamMeta>,
    },
    /// Serve a connection another core accepted (see [`Core::place_connection`]), or
    /// one that asked to move here with the binary protocol's Attach (`attached`: the
    /// request to answer first and the bytes read behind it). The socket closes if the
    /// message is dropped undelivered.
    Adopt {
        socket: OwnedFd,
        port: Port,
        attached: Option<crate::net::Attached>,
    },
}

/// Which listener a connection came in on, so the core that serves it speaks its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Binary,
    Http,
}

/// A SubscribeToShard subscription's identity: (stream id, shard, consumer ARN).
type SubscriptionKey = (u64, u32, String);

/// What became of one sub-batch of an append.
pub struct SubBatchOutcome {
    /// Sequence number of the first appended record; the first `appended` records got
    /// consecutive ones.
    pub first_seq: u64,
    pub appended: u32,
    /// Why the records after the appended ones were not appended.
    pub error: Option<WireError>,
    /// Those records, in order, when they should be routed again: the shard was closing
    /// or moving, so the next catalog sends them elsewhere.
    pub returned: Option<Encoded>,
}

impl SubBatchOutcome {
    fn failed(error: WireError, records: Option<Encoded>) -> SubBatchOutcome {
        let returned = records.filter(|_| error.status == Status::ShardUnavailable);
        SubBatchOutcome {
            first_seq: 0,
            appended: 0,
            error: Some(error),
            returned,
        }
    }
}

/// The answer to a [`CoreRequest`].
pub enum CoreReply {
    Appended(Vec<SubBatchOutcome>),
    Read(Result<RecordsBody, WireError>),
    Tips(Vec<(u32, u64, u64)>),
    Resolved(Result<u64, WireError>),
    Metrics(Box<CoreMetrics>),
    Control(Result<Response, WireError>),
    Applied(Result<(), String>),
    /// Where each fenced shard ends: (shard, one past its last sequence number).
    Fenced(Result<Vec<(u32, u64)>, WireError>),
    /// (stream id, shard) of hot shards.
    Hot(Vec<(u64, u32)>),
    /// A subscription's generation.
    Subscribed(Result<u64, WireError>),
}

/// A core of the server.
pub struct Core {
    pub id: usize,
    pub cores: usize,
    pub config: Config,
    pub committer: Rc<Committer>,
    senders: Senders<CoreMessage>,
    shards: RefCell<HashMap<(u64, u32), Rc<ShardLog>>>,
    snapshot: RefCell<Rc<Catalog>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<CoreReply>>>,
    next_id: Cell<u64>,
    /// Present on core 0 only.
    pub controller: Option<Controller>,
    /// Open connections of every core (placed on it and not yet closed), shared by all of
    /// them, for placing new ones.
    loads: Arc<[AtomicUsize]>,
    /// Set when the server stops; connections and accept loops watch it.
    pub stopping: Rc<Cell<bool>>,
    /// Seals and opens Kinesis shard iterators.
    pub iterator_key: IteratorKey,
    /// simd-json's scratch buffers, reused by every Kinesis request on this core.
    json_buffers: RefCell<simd_json::Buffers>,
    /// Tapes of finished requests, kept for their allocation (a PutRecords of 500 records
    /// makes a tape of about 3,500 nodes). Never more than one per request in flight.
    json_tapes: RefCell<Vec<simd_json::tape::Tape<'static>>>,
    request_number: Cell<u64>,
    /// This core's latency histograms and counters.
    pub metrics: Recorder,
    /// Callers waiting for the first catalog (a core serves nothing before it has one).
    ready: RefCell<Option<Vec<oneshot::Sender<()>>>>,
    /// Callers waiting for the next catalog (a put or read whose shard is closing or
    /// moving).
    catalog_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Serialises the adoption of catalogs.
    snapshot_turn: glommio::sync::Semaphore,
    /// Quota buckets and write heat of the shards this core owns.
    usage: RefCell<HashMap<(u64, u32), ShardUsage>>,
    /// Live SubscribeToShard subscriptions of shards this core owns: (stream id, shard,
    /// consumer ARN) → (started, unix µs; generation).
    subscriptions: RefCell<HashMap<SubscriptionKey, (u64, u64)>>,
    next_generation: Cell<u64>,
}

impl Core {
    pub fn new(
        id: usize,
        cores: usize,
        config: Config,
        senders: Senders<CoreMessage>,
        controller: Option<Controller>,
        iterator_key: [u8; 32],
        loads: Arc<[AtomicUsize]>,
    ) -> Rc<Core> {
        let committer = Committer::start(config.commit.clone());
        let iterator_ttl_ms = config.kinesis.iterator_ttl_ms;
        Rc::new(Core {
            id,
            cores,
            config,
            committer,
            senders,
            shards: RefCell::new(HashMap::new()),
            snapshot: RefCell::new(Rc::new(Catalog::default())),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            controller,
            loads,
            stopping: Rc::new(Cell::new(false)),
            ready: RefCell::new(Some(Vec::new())),
            catalog_waiters: RefCell::new(Vec::new()),
            snapshot_turn: glommio::sync::Semaphore::new(1),
            usage: RefCell::new(HashMap::new()),
            subscriptions: RefCell::new(HashMap::new()),
            next_generation: Cell::new(1),
            iterator_key: IteratorKey::new(iterator_key, iterator_ttl_ms),
            json_buffers: RefCell::new(simd_json::Buffers::with_max_depth(4096, JSON_DEPTH_MAX)),
            json_tapes: RefCell::new(Vec::new()),
            request_number: Cell::new(0),
            metrics: Recorder::new(id),
        })
    }

    /// Chooses the core that serves a connection this core just accepted, and counts it
    /// there: the core with the fewest open connections when that is fewer than this
    /// core's, else this one. The kernel spreads connections over the cores' listeners by
    /// a hash of their addresses, which leaves a few connections (a producer's pool, a
    /// benchmark's four) unevenly spread as often as not: 3 + 1 or 4 + 0 on two cores,
    /// where one core then parses every request. Placing by count keeps them within one
    /// of each other, as Seastar's connection distribution does.
    pub fn place_connection(&self) -> usize {
        let mine = self.loads[self.id].load(Ordering::Relaxed);
        let lightest = (0..self.loads.len())
            .min_by_key(|&core| (self.loads[core].load(Ordering::Relaxed), core != self.id))
            .unwrap_or(self.id);
        let target = if self.loads[lightest].load(Ordering::Relaxed) < mine {
            lightest
        } else {
            self.id
        };
        self.loads[target].fetch_add(1, Ordering::Relaxed);
        target
    }

    /// Counts a connection that asked to be served on core `target`, if that core is
    /// under its connection limit; false if it is at it.
    pub fn place_on(&self, target: usize) -> bool {
        let limit = self.config.net.connections_per_core_max;
        self.loads.get(target).is_some_and(|load| {
            load.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
        })
    }

    /// Counts a connection on this core that [`Core::place_connection`] had placed
    /// elsewhere.
    pub fn place_here(&self) {
        self.loads[self.id].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts off a connection this core served (placed with [`Core::place_connection`]).
    pub fn connection_closed(&self) {
        self.loads[self.id].fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections placed on this core and still open.
    pub fn connections(&self) -> usize {
        self.loads[self.id].load(Ordering::Relaxed)
    }

    /// Gives back a placement that did not happen (the connection was closed instead).
    pub fn placement_failed(&self, target: usize) {
        if let Some(load) = self.loads.get(target) {
            load.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Runs `parse` with this core's simd-json buffers. The parse is synchronous, so one
    /// set of buffers serves every request on the core.
    pub fn json_buffers<T>(&self, parse: impl FnOnce(&mut simd_json::Buffers) -> T) -> T {
        parse(&mut self.json_buffers.borrow_mut())
    }

    /// An empty simd-json tape, with the allocation of an earlier request's when one is
    /// free.
    pub fn json_tape<'a>(&self) -> simd_json::tape::Tape<'a> {
        match self.json_tapes.borrow_mut().pop() {
            Some(tape) => tape.reset(),
            None => simd_json::tape::Tape(Vec::new()),
        }
    }

    /// Keeps `tape`'s allocation for a later request.
    pub fn return_json_tape(&self, tape: simd_json::tape::Tape<'_>) {
        /// Tapes kept at most: enough for the requests a core has in flight at once.
        const KEPT: usize = 64;
        let mut tapes = self.json_tapes.borrow_mut();
        if tapes.len() < KEPT {
            tapes.push(tape.reset());
        }
    }

    /// A number for the next request id on this core.
    pub fn next_request_number(&self) -> u64 {
        let n = self.request_number.get();
        self.request_number.set(n + 1);
        n
    }

    /// Resolves once this core has adopted its first catalog and opened its shards.
    pub async fn wait_ready(&self) {
        let waiter = match self.ready.borrow_mut().as_mut() {
            None => return,
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                rx
            }
        };
        let _ = waiter.await;
    }

    /// This core's current copy of the catalog.
    pub fn snapshot(&self) -> Rc<Catalog> {
        self.snapshot.borrow().clone()
    }

    /// Waits until this core holds a catalog newer than `epoch`, or `timeout` passes.
    /// Returns whether it does.
    pub async fn wait_for_catalog_after(&self, epoch: u64, timeout: Duration) -> bool {
        if self.snapshot.borrow().epoch > epoch {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.catalog_waiters.borrow_mut();
            waiters.retain(|w| !w.is_canceled());
            waiters.push(tx);
        }
        let woken = async {
            let _ = rx.await;
        };
        futures_lite::future::or(woken, glommio::timer::sleep(timeout)).await;
        self.snapshot.borrow().epoch > epoch
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Starts one task per peer that receives its messages.
    ///
    /// They run in a task queue that declares latency matters, so a message from another
    /// core is picked up within [`MESH_LATENCY`] even while this core's connections keep
    /// its default queue busy, instead of waiting out a whole scheduling slice.
    pub fn listen_to_peers(self: &Rc<Self>, mut receivers: Receivers<CoreMessage>) {
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::Matters(MESH_LATENCY),
            "mesh",
        );
        for (_peer, receiver) in receivers.streams() {
            let core = self.clone();
            let task = async move {
                while let Some(message) = receiver.recv().await {
                    core.on_message(message);
                }
            };
            match glommio::spawn_local_into(task, queue) {
                Ok(task) => {
                    task.detach();
                }
                Err(error) => tracing::error!(%error, "cannot start the mesh receiver"),
            };
        }
    }

    fn on_message(self: &Rc<Self>, message: CoreMessage) {
        match message {
            CoreMessage::Reply { id, body } => {
                if let Some(waiter) = self.pending.borrow_mut().remove(&id) {
                    let _ = waiter.send(body);
                }
            }
            CoreMessage::Request { id, from, body } => {
                let core = self.clone();
                glommio::spawn_local(async move {
                    let reply = core.handle(body).await;
                    let message = CoreMessage::Reply { id, body: reply };
                    if core.senders.send_to(from, message).await.is_err() {
                        tracing::warn!(
                            core = core.id,
                            to = from,
                            "reply to a stopped core dropped"
                        );
                    }
                })
                .detach();
            }
        }
    }

    /// Sends `request` to core `target` (or handles it here) and waits for the reply.
    pub async fn call(self: &Rc<Self>, target: usize, request: CoreRequest) -> CoreReply {
        if target == self.id {
            return self.handle(request).await;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let message = CoreMessage::Request {
            id,
            from: self.id,
            body: request,
        };
        let sent = std::time::Instant::now();
        if self.senders.send_to(target, message).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return stopped_reply();
        }
        let reply = rx.await.unwrap_or_else(|_| stopped_reply());
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.latency(Measured::Handover, micros);
        reply
    }

    async fn handle(self: &Rc<Self>, request: CoreRequest) -> CoreReply {
        match request {
            CoreRequest::Append { stream_id, batches } => {
                CoreReply::Appended(self.append_local(stream_id, batches).await)
            }
            CoreRequest::Read {
                stream_id,
                shard,
                position,
                limit,
                bytes_max,
                wait_us,
                subscription,
            } => {
                // Fan-out reads have their own rate (per consumer, in the subscription);
                // the shard's GetRecords quota is for polling readers.
                let polled = subscription.is_none();
                if let Some((consumer, generation)) = subscription {
                    let key = (stream_id, shard, consumer);
                    let current = self.subscriptions.borrow().get(&key).map(|e| e.1);
                    if current != Some(generation) {
                        return CoreReply::Read(Err(WireError::new(
                            Status::ResourceInUse,
                            "a newer subscription for this consumer and shard took over",
                        )));
                    }
                }
                let read = self
                    .read_local(
                        stream_id, shard, position, limit, bytes_max, wait_us, polled,
                    )
                    .await;
                CoreReply::Read(read)
            }
            CoreRequest::Subscribe {
                stream_id,
                shard,
                consumer,
            } => CoreReply::Subscribed(self.subscribe(stream_id, shard, consumer)),
            CoreRequest::Unsubscribe {
                stream_id,
                shard,
                consumer,
                generation,
            } => {
                let key = (stream_id, shard, consumer);
                let mut subscriptions = self.subscriptions.borrow_mut();
                if subscriptions.get(&key).is_some_and(|e| e.1 == generation) {
                    subscriptions.remove(&key);
                }
                CoreReply::Subscribed(Ok(generation))
            }
            CoreRequest::Resolve {
                stream_id,
                shard,
                position,
            } => {
                let log = self.shards.borrow().get(&(stream_id, shard)).cloned();
                let resolved = match log {
                    Some(log) => log.resolve(position).await.map_err(read_error),
                    None => Err(not_owned(shard)),
                };
                CoreReply::Resolved(resolved)
            }
            CoreRequest::Metrics => CoreReply::Metrics(Box::new(self.metrics_snapshot())),
            CoreRequest::Tips { stream_id, shards } => {
                let owned = self.shards.borrow();
                let tips = shards
                    .into_iter()
                    .filter_map(|index| {
                        let log = owned.get(&(stream_id, index))?;
                        Some((index, log.trim_horizon(), log.durable_next_seq()))
                    })
                    .collect();
                CoreReply::Tips(tips)
            }
            CoreRequest::Lease(request) => match &self.controller {
                Some(controller) => CoreReply::Control(controller.lease(self, request).await),
                None => CoreReply::Control(Err(WireError::new(
                    Status::Internal,
                    "lease request sent to a core that is not the controller",
                ))),
            },
            CoreRequest::Control(control) => match &self.controller {
                Some(controller) => CoreReply::Control(controller.handle(self, control).await),
                None => CoreReply::Control(Err(WireError::new(
                    Status::Internal,
                    "catalog change sent to a core that is not the controller",
                ))),
            },
            CoreRequest::Snapshot { catalog, deleted } => {
                CoreReply::Applied(self.apply_snapshot(catalog, deleted).await)
            }
            CoreRequest::Adopt {
                socket,
                port,
                attached,
            } => {
                crate::net::adopt(self.clone(), socket, port, attached);
                CoreReply::Applied(Ok(()))
            }
            CoreRequest::Fence {
                stream_id,
                shards,
                release,
            } => CoreReply::Fenced(self.fence(stream_id, &shards, release).await),
            CoreRequest::Unfence { stream_id, shards } => {
                for shard in shards {
                    if let Some(log) = self.shards.borrow().get(&(stream_id, shard)) {
                        log.set_fenced(false);
                    }
                }
                CoreReply::Fenced(Ok(Vec::new()))
            }
            CoreRequest::HotShards => {
                let window = self.config.quota.on_demand_window_s;
                let mut hot = Vec::new();
                for (key, usage) in self.usage.borrow_mut().iter_mut() {
                    if usage.hot_seconds >= window {
                        usage.hot_seconds = 0;
                        hot.push(*key);
                    }
                }
                CoreReply::Hot(hot)
            }
        }
    }

    fn subscribe(&self, stream_id: u64, shard: u32, consumer: String) -> Result<u64, WireError> {
        if !self.shards.borrow().contains_key(&(stream_id, shard)) {
            return Err(not_owned(shard));
        }
        let now = crate::tools::now_us();
        let key = (stream_id, shard, consumer);
        let mut subscriptions = self.subscriptions.borrow_mut();
        if let Some((started, _)) = subscriptions.get(&key)
            && now.saturating_sub(*started) < crate::limits::SUBSCRIPTION_TAKEOVER_MS * 1000
        {
            return Err(WireError::new(
                Status::ResourceInUse,
                format!(
                    "Another active subscription exists for consumer {} on shard {}",
                    key.2,
                    crate::catalog::shard_id(shard)
                ),
            ));
        }
        let generation = self.next_generation.get();
        self.next_generation.set(generation + 1);
        subscriptions.insert(key, (now, generation));
        Ok(generation)
    }

    /// Counts refusals by a shard's quota, for the core and the shard.
    fn count_throttled(&self, stream_id: u64, shard: u32, count: u64) {
        self.metrics.count(|c| c.throttles += count);
        let now = crate::tools::now_us();
        let quota = &self.config.quota;
        self.usage
            .borrow_mut()
            .entry((stream_id, shard))
            .or_insert_with(|| ShardUsage::new(quota, now))
            .counters
            .throttled += count;
    }

    /// The message Kinesis gives for a throttled shard.
    fn throttled(&self, stream_id: u64, shard: u32) -> WireError {
        let snapshot = self.snapshot();
        let name = snapshot
            .streams
            .values()
            .find(|s| s.id == stream_id)
            .map_or("?", |s| s.name.as_str());
        WireError::new(
            Status::Throttled,
            format!(
                "Rate exceeded for shard {} in stream {name} under account {}.",
                crate::catalog::shard_id(shard),
                self.config.account_id
            ),
        )
    }

    /// Fences shards (see [`CoreRequest::Fence`]); on a failure, the ones fenced so far
    /// are opened again.
    async fn fence(
        &self,
        stream_id: u64,
        shards: &[u32],
        release: bool,
    ) -> Result<Vec<(u32, u64)>, WireError> {
        let mut ends = Vec::with_capacity(shards.len());
        let mut logs = Vec::with_capacity(shards.len());
        for &shard in shards {
            let log = self.shards.borrow().get(&(stream_id, shard)).cloned();
            let fenced = match log {
                Some(log) => log
                    .fence()
                    .await
                    .map(|end| (log, end))
                    .map_err(append_error),
                None => Err(not_owned(shard)),
            };
            match fenced {
                Ok((log, end)) => {
                    ends.push((shard, end));
                    logs.push(log);
                }
                Err(error) => {
                    for log in &logs {
                        log.set_fenced(false);
                    }
                    return Err(error);
                }
            }
        }
        if release {
            for &shard in shards {
                let log = self.shards.borrow_mut().remove(&(stream_id, shard));
                if let Some(log) = log {
                    log.close().await;
                }
            }
        }
        Ok(ends)
    }

    /// Appends each sub-batch to its shard; the sub-batches run concurrently and share the
    /// core's next commit.
    async fn append_local(
        &self,
        stream_id: u64,
        batches: Vec<(u32, Encoded)>,
    ) -> Vec<SubBatchOutcome> {
        let quota = &self.config.quota;
        let now = crate::tools::now_us();
        let heat_bytes = quota.write_bytes_per_s * quota.on_demand_split_percent / 100;
        let appends = batches.into_iter().map(|(shard, mut batch)| {
            let log = self.shards.borrow().get(&(stream_id, shard)).cloned();
            async move {
                let Some(log) = log else {
                    return SubBatchOutcome::failed(not_owned(shard), Some(batch));
                };
                // What the shard's write quota admits of the sub-batch, from the front.
                let offered = batch.len();
                if quota.enabled {
                    let take = self
                        .usage
                        .borrow_mut()
                        .entry((stream_id, shard))
                        .or_insert_with(|| ShardUsage::new(quota, now))
                        .admit_writes(batch.record_sizes(), now);
                    batch.truncate(take);
                }
                let throttled = (batch.len() < offered).then(|| {
                    self.count_throttled(stream_id, shard, (offered - batch.len()) as u64);
                    self.throttled(stream_id, shard)
                });
                let outcome = |first_seq, appended| SubBatchOutcome {
                    first_seq,
                    appended,
                    error: throttled.clone(),
                    returned: None,
                };
                if batch.is_empty() {
                    return outcome(0, 0);
                }
                let (records, bytes) = (batch.len() as u64, batch.payload_bytes() as u64);
                let ack = match log.append_encoded(batch).await {
                    Ok(ack) => ack,
                    Err((error, batch)) => {
                        return SubBatchOutcome::failed(append_error(error), batch);
                    }
                };
                self.metrics.count(|c| {
                    c.records_in += records;
                    c.bytes_in += bytes;
                });
                let mut usage = self.usage.borrow_mut();
                let usage = usage
                    .entry((stream_id, shard))
                    .or_insert_with(|| ShardUsage::new(quota, now));
                usage.note_written(bytes, heat_bytes, now);
                usage.counters.records_in += records;
                usage.counters.bytes_in += bytes;
                outcome(ack.first_seq, ack.records)
            }
        });
        join_all(appends).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_local(
        &self,
        stream_id: u64,
        shard: u32,
        position: StartPosition,
        limit: u32,
        bytes_max: u32,
        wait_us: u64,
        polled: bool,
    ) -> Result<RecordsBody, WireError> {
        let log = self
            .shards
            .borrow()
            .get(&(stream_id, shard))
            .cloned()
            .ok_or_else(|| not_owned(shard))?;
        let quota = &self.config.quota;
        if quota.enabled && polled {
            let now = crate::tools::now_us();
            let admitted = self
                .usage
                .borrow_mut()
                .entry((stream_id, shard))
                .or_insert_with(|| ShardUsage::new(quota, now))
                .admit_read(now);
            if !admitted {
                self.count_throttled(stream_id, shard, 1);
                return Err(self.throttled(stream_id, shard));
            }
        }
        let from = log.resolve(position).await.map_err(read_error)?;
        let wait = Duration::from_micros(wait_us.min(READ_WAIT_US_MAX));
        if !wait.is_zero() {
            log.wait_for_records(from, wait).await;
        }
        let out = log
            .read(from, limit as usize, bytes_max as usize)
            .await
            .map_err(read_error)?;
        let bytes: usize = out.records.iter().map(|r| r.data.len()).sum();
        {
            let now = crate::tools::now_us();
            let mut usage = self.usage.borrow_mut();
            let usage = usage
                .entry((stream_id, shard))
                .or_insert_with(|| ShardUsage::new(quota, now));
            if quota.enabled && polled {
                usage.charge_read(bytes);
            }
            usage.counters.records_out += out.records.len() as u64;
            usage.counters.bytes_out += bytes as u64;
        }
        self.metrics.count(|c| {
            c.records_out += out.records.len() as u64;
            c.bytes_out += bytes as u64;
        });
        let millis_behind = match out.records.last() {
            Some(last) if out.next_seq < out.tip_seq => {
                out.tip_arrival_us.saturating_sub(last.arrival_us) / 1000
            }
            _ => 0,
        };
        Ok(RecordsBody {
            next_seq: out.next_seq,
            millis_behind,
            records: out.records,
        })
    }

    /// Adopts a new catalog: opens the shards this core now owns, closes those of deleted
    /// streams.
    async fn apply_snapshot(
        &self,
        catalog: Catalog,
        deleted: Vec<StreamMeta>,
    ) -> Result<(), String> {
        // One catalog at a time: two adoptions interleaved at their awaits could both open
        // a new shard's log, and two logs appending to one folder would overwrite each
        // other's records.
        let _turn = self
            .snapshot_turn
            .acquire_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        if catalog.epoch < self.snapshot.borrow().epoch {
            // An older catalog overtaken by a newer one: nothing to do.
            return Ok(());
        }
        tracing::debug!(core = self.id, epoch = catalog.epoch, "adopting a catalog");
        for stream in &deleted {
            for shard in &stream.shards {
                let log = self.shards.borrow_mut().remove(&(stream.id, shard.index));
                if let Some(log) = log {
                    log.close().await;
                }
            }
        }
        // Shards this core no longer owns (moved away, or closed and past retention) are
        // let go; the controller removes the files of expired ones.
        let stale: Vec<(u64, u32)> = self
            .shards
            .borrow()
            .keys()
            .filter(|(stream_id, index)| {
                let owner = catalog
                    .streams
                    .values()
                    .find(|s| s.id == *stream_id)
                    .and_then(|s| s.shard(*index))
                    .map(|s| usize::from(s.owner_core));
                owner != Some(self.id)
            })
            .copied()
            .collect();
        for key in stale {
            self.usage.borrow_mut().remove(&key);
            let log = self.shards.borrow_mut().remove(&key);
            if let Some(log) = log {
                log.close().await;
            }
        }
        let data_dir = self.data_dir();
        for stream in catalog.streams.values() {
            for shard in stream
                .shards
                .iter()
                .chain(&stream.closed)
                .filter(|s| usize::from(s.owner_core) == self.id)
            {
                let key = (stream.id, shard.index);
                if let Some(log) = self.shards.borrow().get(&key) {
                    log.set_retention_hours(stream.retention_hours);
                    if !shard.is_open() {
                        log.set_fenced(true);
                    }
                    continue;
                }
                let config = LogConfig {
                    retention_hours: stream.retention_hours,
                    ..self.config.log.clone()
                };
                let dir = stream.shard_dir(&data_dir, shard.index);
                tracing::debug!(core = self.id, dir = %dir.display(), "opening a shard");
                let log = ShardLog::open(&dir, config, self.committer.clone())
                    .await
                    .map_err(|e| format!("opening {}: {e}", dir.display()))?;
                tracing::debug!(core = self.id, dir = %dir.display(), "opened a shard");
                log.set_fenced(!shard.is_open());
                self.shards.borrow_mut().insert(key, log);
            }
        }
        // The core's tail budget is shared evenly by its shards, so the tails of all of
        // them together never pass it (with many shards, each keeps less in memory and
        // more reads go to disk).
        let shards = self.shards.borrow().len().max(1);
        let share = self.config.log.tail_cache_bytes / shards;
        self.committer.set_tail_share_bytes(share);
        *self.snapshot.borrow_mut() = Rc::new(catalog);
        if let Some(waiters) = self.ready.borrow_mut().take() {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        for waiter in self.catalog_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
        Ok(())
    }

    /// Runs retention on every owned shard.
    pub async fn enforce_retention(&self, now_us: u64) {
        let logs: Vec<Rc<ShardLog>> = self.shards.borrow().values().cloned().collect();
        for log in logs {
            if let Err(error) = log.enforce_retention(now_us).await {
                tracing::error!(shard = %log.dir().display(), %error, "retention failed");
            }
        }
    }

    /// Commits what is pending and closes every shard's files.
    pub async fn shut_down(&self) {
        self.committer.shutdown().await;
        let logs: Vec<Rc<ShardLog>> = self.shards.borrow_mut().drain().map(|(_, l)| l).collect();
        for log in logs {
            log.close().await;
        }
    }

    /// This core's measurements, with its committer's.
    pub fn metrics_snapshot(&self) -> CoreMetrics {
        let mut snapshot = self.metrics.snapshot();
        let catalog = self.snapshot();
        for ((stream_id, shard), usage) in self.usage.borrow().iter() {
            let Some(stream) = catalog.streams.values().find(|s| s.id == *stream_id) else {
                continue;
            };
            snapshot.shards.push(crate::metrics::ShardCounters {
                stream: stream.name.clone(),
                shard: *shard,
                ..usage.counters.clone()
            });
        }
        snapshot
            .shards
            .sort_by(|a, b| (&a.stream, a.shard).cmp(&(&b.stream, b.shard)));
        let _ = snapshot.histograms[Measured::Commit as usize].add(self.committer.round_latency());
        let _ = snapshot.histograms[Measured::Sync as usize].add(self.committer.sync_latency());
        let stats = self.committer.stats();
        snapshot.counters.fsyncs = stats.fsyncs;
        snapshot.counters.commits = stats.commits;
        snapshot.counters.committed_batches = stats.batches;
        snapshot.counters.connections = self.connections() as u64;
        snapshot
    }

    /// Measurements of every core, gathered over the mesh.
    pub async fn all_metrics(self: &Rc<Self>) -> Vec<CoreMetrics> {
        let calls = (0..self.cores).map(|target| self.call(target, CoreRequest::Metrics));
        join_all(calls)
            .await
            .into_iter()
            .filter_map(|reply| match reply {
                CoreReply::Metrics(metrics) => Some(*metrics),
                _ => None,
            })
            .collect()
    }

    /// Number of shards this core owns.
    pub fn shard_count(&self) -> usize {
        self.shards.borrow().len()
    }
}

fn stopped_reply() -> CoreReply {
    CoreReply::Control(Err(WireError::new(
        Status::ShuttingDown,
        "the core that owns this work is stopping",
    )))
}

fn not_owned(shard: u32) -> WireError {
    WireError::new(
        Status::ShardUnavailable,
        format!(
            "shard {} is not open on its owner core",
            crate::catalog::shard_id(shard)
        ),
    )
}

/// Maps a log append error to the wire: one table, at the protocol edge.
pub fn append_error(error: AppendError) -> WireError {
    match error {
        AppendError::Limit(limit) => WireError::new(Status::LimitExceeded, limit.to_string()),
        AppendError::Closed { .. } => WireError::new(Status::ShardUnavailable, error.to_string()),
        AppendError::Commit(_) | AppendError::Failed { .. } => {
            WireError::new(Status::StorageFailed, error.to_string())
        }
    }
}

fn read_error(error: crate::log::ReadError) -> WireError {
    WireError::new(Status::StorageFailed, error.to_string())
}
