//! `spate load`: the load generator. Drives the binary protocol from worker threads pinned
//! with core_affinity, each a glommio executor with its share of the connections. Open loop
//! at a target rate — every request has an intended send time, and its latency is measured
//! from that time, so a stalled server is charged for every request it delayed
//! (coordinated omission corrected) — or closed loop at the maximum rate, said as such.
//! Latencies go into HdrHistograms, merged at the end; progress prints every second.
//! Server errors are counted and shown, never retried.

pub mod kinesis;
pub mod nats;
pub mod plan;
pub mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::client::{Client, ClientError};
use crate::protocol::binary::{PutEntry, Status};

/// Which protocol the load speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadProtocol {
    /// spate's binary protocol, pipelined on each connection.
    Binary,
    /// Kinesis PutRecords over HTTP/1.1 keep-alive, one request at a time per connection
    /// (each in-flight slot gets a connection of its own).
    Kinesis,
    /// NATS JetStream publishes, one per record, each acknowledged (a peer to compare
    /// with; see [`nats`]).
    Nats,
}

/// Which server core a binary-protocol load sends each record to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the core that owns the record's shard, as a Kafka producer sends to each
    /// partition's leader: every load connection is one connection per owner core (each
    /// attached to its core), and each request's records are split by the owner of their
    /// key's shard, found from the stream's description when the load starts. A request's
    /// latency is until all its parts are acknowledged.
    Owner,
    /// Whichever core the server placed the connection on, which hands records of shards
    /// it does not own over to their cores.
    Server,
}

/// What `spate load` was asked to do.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub protocol: LoadProtocol,
    pub target: std::net::SocketAddr,
    pub stream: String,
    /// Shards of the stream when it has to be created.
    pub shards: u32,
    pub record_bytes_min: usize,
    pub record_bytes_max: usize,
    pub keys: usize,
    pub zipf: Option<f64>,
    pub batch: usize,
    pub connections: usize,
    pub in_flight: usize,
    /// Records per second over all connections; `None` = as fast as acknowledgements come.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub workers: usize,
    /// Stamp each record with its producer and a counter, remember what was acknowledged,
    /// and read the stream back at the end (see [`verify`]).
    pub verify: bool,
    /// Binary protocol only: see [`Route`].
    pub route: Route,
}

impl LoadOptions {
    /// Whether each record goes to its shard's owner core: [`Route::Owner`] with the binary
    /// protocol (the others have no such choice).
    pub fn routes_by_owner(&self) -> bool {
        self.protocol == LoadProtocol::Binary && self.route == Route::Owner
    }

    /// Worker threads that run: as asked, but at least one and no more than connections.
    pub fn worker_threads(&self) -> usize {
        self.workers.clamp(1, self.connections.max(1))
    }
}

/// Counters shared by the workers and the progress printer.
#[derive(Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub throttled: AtomicU64,
    pub rejected_records: AtomicU64,
    /// Set while measuring (after the warm-up).
    pub measuring: AtomicBool,
    pub stop: AtomicBool,
}

/// What one worker measured.
pub struct WorkerResult {
    /// (producer, counter) of every acknowledged record, when verifying.
    pub acked: Vec<(u32, u64)>,
    pub histogram: Histogram<u64>,
    pub records: u64,
    pub bytes: u64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl WorkerResult {
    fn empty() -> WorkerResult {
        WorkerResult {
            acked: Vec::new(),
            histogram: new_histogram(),
            records: 0,
            bytes: 0,
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }
}

/// The payload every record is cut from: `len` bytes of a fixed pattern.
///
/// Static memory, so the thousands of slices a second of it that records hold cost no
/// reference counting (perf had `Bytes` clones and drops at a quarter of the load
/// generator's CPU, on the machine it shares with the server). Kept for the process and
/// grown by doubling, so all the runs of a `spate plan` leak less than twice the largest.
fn static_payload(len: usize) -> Bytes {
    static PAYLOAD: std::sync::Mutex<&'static [u8]> = std::sync::Mutex::new(&[]);
    let mut payload = PAYLOAD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if payload.len() < len {
        let grown = len.max(payload.len() * 2);
        let bytes: Vec<u8> = (0..grown).map(|i| (i * 31 + 7) as u8).collect();
        *payload = Box::leak(bytes.into_boxed_slice());
    }
    Bytes::from_static(&payload[..len])
}

/// Partition keys `key-0` .. `key-{count - 1}`, sliced from static memory for the same
/// reason as [`static_payload`], and kept and grown the same way.
fn static_keys(count: usize) -> Vec<Bytes> {
    struct Arena {
        text: &'static [u8],
        ends: Vec<usize>,
    }
    static KEYS: std::sync::Mutex<Arena> = std::sync::Mutex::new(Arena {
        text: &[],
        ends: Vec::new(),
    });
    let mut arena = KEYS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if arena.ends.len() < count {
        let grown = count.max(arena.ends.len() * 2);
        let mut text = Vec::new();
        let mut ends = Vec::with_capacity(grown);
        for k in 0..grown {
            text.extend_from_slice(format!("key-{k}").as_bytes());
            ends.push(text.len());
        }
        arena.text = Box::leak(text.into_boxed_slice());
        arena.ends = ends;
    }
    let text = arena.text;
    (0..count)
        .map(|k| {
            let start = if k == 0 { 0 } else { arena.ends[k - 1] };
            Bytes::from_static(&text[start..arena.ends[k]])
        })
        .collect()
}

/// The owner core of each of the load's `count` keys (those [`KeyChooser::new`] draws
/// from), by the MD5 of each.
pub fn key_owners(
    description: &crate::protocol::binary::StreamDescription,
    count: usize,
) -> Arc<[u16]> {
    let owners = crate::client::OwnerMap::new(description);
    let keys = static_keys(count.max(1));
    let mut hashes = Vec::with_capacity(keys.len());
    crate::catalog::md5x8::hash_keys(&keys, &mut hashes);
    hashes
        .iter()
        .map(|&hash| u16::try_from(owners.core_of(hash)).unwrap_or(0))
        .collect()
}

/// A source of partition keys: uniform, or Zipf-distributed over `keys` keys.
pub struct KeyChooser {
    keys: std::rc::Rc<[Bytes]>,
    cdf: Option<Vec<f64>>,
    state: u64,
}

impl KeyChooser {
    pub fn new(count: usize, zipf: Option<f64>, seed: u64) -> KeyChooser {
        let keys = static_keys(count.max(1));
        let cdf = zipf.map(|s| {
            let weights: Vec<f64> = (1..=count.max(1))
                .map(|r| 1.0 / (r as f64).powf(s))
                .collect();
            let total: f64 = weights.iter().sum();
            let mut acc = 0.0;
            weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect()
        });
        KeyChooser {
            keys: keys.into(),
            cdf,
            state: seed | 1,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    pub fn key(&mut self) -> Bytes {
        let index = self.index();
        self.keys[index].clone()
    }

    /// The index of the next key in [`KeyChooser::keys`].
    pub fn index(&mut self) -> usize {
        let r = self.next_u64();
        match &self.cdf {
            // Lemire's multiply-shift: uniform over the keys without a division.
            None => ((u128::from(r) * self.keys.len() as u128) >> 64) as usize,
            Some(cdf) => {
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|&c| c < u).min(self.keys.len() - 1)
            }
        }
    }

    /// The keys it chooses from.
    pub fn keys(&self) -> &std::rc::Rc<[Bytes]> {
        &self.keys
    }

    /// A record size in `min..=max`.
    pub fn size(&mut self, min: usize, max: usize) -> usize {
        if max <= min {
            min
        } else {
            min + (self.next_u64() % (max - min + 1) as u64) as usize
        }
    }
}

/// An open-loop connection's schedule: its k-th request is due `(k + phase) * interval`
/// after the start. Connections take phases spread evenly over one interval, so together
/// they offer the rate asked for as a steady stream; with one phase for all, every
/// connection sent at the same instant, and the server saw bursts of one request per
/// connection at a quarter of the rate (4 connections) instead of the rate itself.
#[derive(Clone, Copy, Debug)]
struct Pace {
    interval: Duration,
    phase: f64,
}

/// The place among all the load's connections of worker `worker`'s `c`-th: worker w
/// holds connections w, w + workers, w + 2 workers, ... (the workers' counts differ by at
/// most one, larger first, as `report::run` splits them).
fn connection_index(worker: usize, c: usize, workers: usize) -> usize {
    worker + c * workers
}

/// Runs one worker: `connections` connections on this thread's executor.
/// `owners`: the owner core of each of the load's keys, when it routes by owner.
pub async fn run_worker(
    options: LoadOptions,
    worker: usize,
    connections: usize,
    owners: Option<Arc<[u16]>>,
    counters: Arc<Counters>,
    start: Instant,
) -> Result<WorkerResult, String> {
    // Stamped records are at least STAMP_BYTES long, whatever the sizes asked for.
    let payload = static_payload(options.record_bytes_max.max(STAMP_BYTES));
    let mut tasks = Vec::new();
    let workers = options.worker_threads();
    for c in 0..connections {
        let index = connection_index(worker, c, workers);
        let pace = options.rate.map(|rate| {
            let per_connection = rate / options.connections.max(1) as f64 / options.batch as f64;
            Pace {
                interval: Duration::from_secs_f64(1.0 / per_connection.max(1e-9)),
                phase: index as f64 / options.connections.max(1) as f64,
            }
        });
        let sender = match options.protocol {
            LoadProtocol::Binary => {
                let clients = match &owners {
                    Some(owners) => {
                        let cores = owners.iter().map(|&core| usize::from(core));
                        crate::client::connect_per_core(options.target, cores)
                            .await
                            .map_err(|e| format!("connecting to each owner core: {e}"))?
                    }
                    None => vec![Some(std::rc::Rc::new(
                        Client::connect(options.target)
                            .await
                            .map_err(|e| e.to_string())?,
                    ))],
                };
                Sender::Binary {
                    clients: clients.into(),
                    owners: owners.clone(),
                }
            }
            LoadProtocol::Kinesis => Sender::Kinesis(std::rc::Rc::new(
                kinesis::Pool::connect(options.target, options.in_flight).await?,
            )),
            LoadProtocol::Nats => Sender::Nats(
                nats::Connection::connect(options.target, ((worker as u64) << 32) | c as u64)
                    .await?,
            ),
        };
        let options = options.clone();
        let counters = counters.clone();
        let payload = payload.clone();
        let seed = ((worker as u64) << 32) | c as u64;
        tasks.push(glommio::spawn_local(async move {
            drive_connection(sender, options, pace, counters, payload, seed, start).await
        }));
    }
    let mut merged = WorkerResult::empty();
    for task in tasks {
        let result = task.await;
        let _ = merged.histogram.add(&result.histogram);
        merged.acked.extend(result.acked);
        merged.records += result.records;
        merged.bytes += result.bytes;
        merged.requests += result.requests;
        merged.errors += result.errors;
        merged.first_error = merged.first_error.or(result.first_error);
    }
    Ok(merged)
}

/// Where a connection's puts go.
#[derive(Clone)]
enum Sender {
    /// One connection, or one per server core (`None` for cores that own none of the
    /// stream's open shards) with the core of each key (see [`Route::Owner`]).
    Binary {
        clients: std::rc::Rc<[Option<std::rc::Rc<Client>>]>,
        owners: Option<Arc<[u16]>>,
    },
    Kinesis(std::rc::Rc<kinesis::Pool>),
    Nats(std::rc::Rc<nats::Connection>),
}

impl Sender {
    /// The picks of one request, in parts that each go to one connection: the core of each
    /// pick's key when routing by owner (a key's picks keep their order), else one part.
    fn split(&self, picks: Vec<Pick>) -> Vec<(usize, Vec<Pick>)> {
        let Sender::Binary {
            clients,
            owners: Some(owners),
        } = self
        else {
            return vec![(0, picks)];
        };
        let mut parts: Vec<Vec<Pick>> = vec![Vec::new(); clients.len()];
        for pick in picks {
            let core = owners.get(pick.key as usize).map_or(0, |&c| usize::from(c));
            if let Some(part) = parts.get_mut(core) {
                part.push(pick);
            }
        }
        parts
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .collect()
    }

    /// Puts `batch` through connection `part` (from [`Sender::split`]).
    async fn put(&self, part: usize, stream: &str, batch: Batch) -> Result<Acks, ClientError> {
        match self {
            Sender::Binary { clients, .. } => match clients.get(part) {
                Some(Some(client)) => client
                    .put_records(stream, batch.into_entries())
                    .await
                    .map(Acks::from_results),
                _ => Err(ClientError::Protocol(format!(
                    "no connection to server core {part}"
                ))),
            },
            Sender::Kinesis(pool) => pool.put_records(stream, &batch).await,
            Sender::Nats(connection) => connection
                .put_records(stream, batch.into_entries())
                .await
                .map(Acks::from_results),
        }
    }
}

/// One record of a [`Batch::Picked`]: its key's index and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub key: u32,
    pub size: u32,
}

/// The records of one put request.
pub enum Batch {
    /// Records cut from the static payload, each named by its key and size alone, so a
    /// client that spells records from a cache (the Kinesis one) touches no `Bytes` for
    /// them: the load generator shares the machine with the server it measures.
    Picked {
        keys: std::rc::Rc<[Bytes]>,
        payload: Bytes,
        picks: Vec<Pick>,
    },
    /// Records with payloads of their own (a verifying load stamps each one).
    Entries(Vec<PutEntry>),
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Picked { picks, .. } => picks.len(),
            Batch::Entries(entries) => entries.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_entries(self) -> Vec<PutEntry> {
        match self {
            Batch::Picked {
                keys,
                payload,
                picks,
            } => picks
                .iter()
                .map(|pick| PutEntry {
                    partition_key: keys[pick.key as usize].clone(),
                    data: payload.slice(..pick.size as usize),
                    explicit_hash_key: None,
                })
                .collect(),
            Batch::Entries(entries) => entries,
        }
    }
}

/// What a put request's answer said about its records.
#[derive(Debug, Default)]
pub struct Acks {
    /// Records in the request.
    pub records: usize,
    /// The records refused, by position in the request, with the reason.
    pub failures: Vec<(usize, crate::protocol::binary::WireError)>,
}

impl Acks {
    fn from_results(results: Vec<crate::protocol::binary::PutResult>) -> Acks {
        Acks {
            records: results.len(),
            failures: results
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| r.err().map(|e| (i, e)))
                .collect(),
        }
    }
}

/// Bytes at the front of a verified record: producer (u32), counter (u64) and the time it
/// was sent (u64, unix microseconds), all little-endian.
pub const STAMP_BYTES: usize = 20;

/// What reading the stream back found.
#[derive(Debug, Default)]
pub struct Verification {
    pub stored: u64,
    pub acknowledged: u64,
    pub missing: u64,
    pub duplicated: u64,
    /// Records whose counter is below an earlier one of the same producer and key.
    pub reordered: u64,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.reordered == 0
    }
}

/// Reads every shard of `stream` through the binary protocol and checks the records a
/// verifying load acknowledged: each is there exactly once, and per producer and partition
/// key the counters rise in sequence-number order.
///
/// # Errors
/// When the stream cannot be read.
pub async fn verify(
    target: std::net::SocketAddr,
    stream: &str,
    acked: &[(u32, u64)],
) -> Result<Verification, String> {
    use std::collections::{HashMap, HashSet};
    let client = Client::connect(target).await.map_err(|e| e.to_string())?;
    let description = client
        .describe_stream(stream)
        .await
        .map_err(|e| e.to_string())?;
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut last: HashMap<(u32, Bytes), u64> = HashMap::new();
    let mut out = Verification {
        acknowledged: acked.len() as u64,
        ..Verification::default()
    };
    for shard in &description.shards {
        let mut position = crate::log::StartPosition::TrimHorizon;
        loop {
            let body = client
                .get_records(stream, shard.index, position, 10_000)
                .await
                .map_err(|e| e.to_string())?;
            if body.records.is_empty() {
                break;
            }
            for record in &body.records {
                let Some(stamp) = record.data.get(..STAMP_BYTES) else {
                    continue;
                };
                let producer = u32::from_le_bytes([stamp[0], stamp[1], stamp[2], stamp[3]]);
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&stamp[4..12]);
                let counter = u64::from_le_bytes(raw);
                out.stored += 1;
                if !seen.insert((producer, counter)) {
                    out.duplicated += 1;
                }
                let key = (producer, record.partition_key.clone());
                if let Some(previous) = last.insert(key, counter)
                    && previous > counter
                {
                    out.reordered += 1;
                }
            }
            position = crate::log::StartPosition::AtSequence(body.next_seq);
        }
    }
    out.missing = acked.iter().filter(|a| !seen.contains(a)).count() as u64;
    Ok(out)
}

/// Follows every shard of `stream` from its tip through subscriptions while a verifying
/// load runs, and measures put → readable latency: from the send time stamped in each
/// record to the moment a subscriber received it (one clock: load and server share the
/// machine). Stops once `stop` is set and nothing arrived for a second. Returns the
/// latencies in microseconds.
///
/// # Errors
/// When the server cannot be reached or the stream described.
pub async fn tail_latency(
    target: std::net::SocketAddr,
    stream: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<Histogram<u64>, String> {
    use std::sync::atomic::Ordering;
    let client = std::rc::Rc::new(Client::connect(target).await.map_err(|e| e.to_string())?);
    let description = client
        .describe_stream(&stream)
        .await
        .map_err(|e| e.to_string())?;
    let histogram = std::rc::Rc::new(std::cell::RefCell::new(new_histogram()));
    let mut tasks = Vec::new();
    for shard in description.shards.iter().filter(|s| s.end_seq.is_none()) {
        let subscription = client
            .subscribe(&stream, shard.index, crate::log::StartPosition::Latest)
            .await
            .map_err(|e| e.to_string())?;
        let histogram = histogram.clone();
        let stop = stop.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut quiet_since = Instant::now();
            loop {
                let next = async { Some(subscription.next().await) };
                let pause = async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    None
                };
                match futures_lite::future::or(next, pause).await {
                    Some(Some(Ok(body))) => {
                        let now = crate::tools::now_us();
                        let mut histogram = histogram.borrow_mut();
                        for record in &body.records {
                            let Some(sent) = record.data.get(12..20) else {
                                continue;
                            };
                            let mut raw = [0u8; 8];
                            raw.copy_from_slice(sent);
                            let latency = now.saturating_sub(u64::from_le_bytes(raw)).max(1);
                            let _ = histogram.record(latency);
                        }
                        quiet_since = Instant::now();
                    }
                    Some(_) => return,
                    None => {
                        if stop.load(Ordering::Relaxed)
                            && quiet_since.elapsed() > Duration::from_secs(1)
                        {
                            return;
                        }
                    }
                }
            }
        }));
    }
    let _ = ready.send(());
    for task in tasks {
        task.await;
    }
    let out = histogram.borrow().clone();
    Ok(out)
}

pub fn new_histogram() -> Histogram<u64> {
    crate::metrics::histogram()
}

/// The records of `batch` with payloads of their own: each starts with the producer id, its
/// counter (from `counter` on) and the time, for a verifying load to check. They are
/// written into one buffer per request and sliced from it.
fn stamp(batch: Batch, producer: u32, counter: &mut u64) -> Batch {
    let entries = batch.into_entries();
    let mut stamped = bytes::BytesMut::with_capacity(entries.iter().map(|e| e.data.len()).sum());
    for entry in &entries {
        stamped.extend_from_slice(&producer.to_le_bytes());
        stamped.extend_from_slice(&counter.to_le_bytes());
        stamped.extend_from_slice(&crate::tools::now_us().to_le_bytes());
        stamped.extend_from_slice(&entry.data[..entry.data.len() - STAMP_BYTES]);
        *counter += 1;
    }
    let stamped = stamped.freeze();
    let mut at = 0;
    Batch::Entries(
        entries
            .into_iter()
            .map(|entry| {
                let size = entry.data.len();
                at += size;
                PutEntry {
                    data: stamped.slice(at - size..at),
                    ..entry
                }
            })
            .collect(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn drive_connection(
    sender: Sender,
    options: LoadOptions,
    pace: Option<Pace>,
    counters: Arc<Counters>,
    payload: Bytes,
    seed: u64,
    start: Instant,
) -> WorkerResult {
    let producer = seed as u32 ^ (seed >> 32) as u32;
    let mut counter = 0u64;
    let shared = std::rc::Rc::new(std::cell::RefCell::new(WorkerResult::empty()));
    let slots = std::rc::Rc::new(glommio::sync::Semaphore::new(options.in_flight as u64));
    let mut chooser = KeyChooser::new(options.keys, options.zipf, seed);
    let stream: std::rc::Rc<str> = options.stream.as_str().into();
    let end = start + options.warmup + options.duration;
    let mut k: u64 = 0;
    loop {
        let now = Instant::now();
        let intended = match pace {
            Some(pace) => start + pace.interval.mul_f64(k as f64 + pace.phase),
            None => now,
        };
        if intended >= end || counters.stop.load(Ordering::Relaxed) {
            break;
        }
        if intended > now {
            glommio::timer::sleep(intended - now).await;
        }
        k += 1;
        let Ok(permit) = slots.clone().acquire_static_permit(1).await else {
            break;
        };
        // Closed loop: the clock starts when a slot frees, not at a schedule.
        let intended = if pace.is_some() {
            intended
        } else {
            Instant::now()
        };
        let mut bytes = 0u64;
        let mut picks = Vec::with_capacity(options.batch);
        for _ in 0..options.batch {
            let mut size = chooser.size(options.record_bytes_min, options.record_bytes_max);
            if options.verify {
                size = size.max(STAMP_BYTES);
            }
            bytes += size as u64;
            picks.push(Pick {
                key: chooser.index() as u32,
                size: size as u32,
            });
        }
        let mut parts = Vec::new();
        for (part, picks) in sender.split(picks) {
            let first_counter = counter;
            let batch = Batch::Picked {
                keys: chooser.keys().clone(),
                payload: payload.clone(),
                picks,
            };
            let batch = if options.verify {
                stamp(batch, producer, &mut counter)
            } else {
                batch
            };
            parts.push((part, first_counter, batch));
        }
        let verify = options.verify;
        let sender = sender.clone();
        let shared = shared.clone();
        let counters = counters.clone();
        let stream = stream.clone();
        glommio::spawn_local(async move {
            let puts = parts.into_iter().map(|(part, first_counter, batch)| {
                let (sender, stream) = (&sender, &stream);
                async move { (first_counter, sender.put(part, stream, batch).await) }
            });
            let results = futures::future::join_all(puts).await;
            // A request's latency runs until its last part is answered.
            let latency_us = u64::try_from(intended.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            let measuring = counters.measuring.load(Ordering::Relaxed);
            let mut shared = shared.borrow_mut();
            let (mut ok, mut failed, mut errors) = (0u64, 0u64, 0u64);
            for (first_counter, result) in results {
                match result {
                    Ok(acks) => {
                        if verify {
                            let mut failures = acks.failures.iter().map(|(i, _)| *i).peekable();
                            for i in 0..acks.records {
                                if failures.next_if_eq(&i).is_none() {
                                    shared.acked.push((producer, first_counter + i as u64));
                                }
                            }
                        }
                        failed += acks.failures.len() as u64;
                        ok += (acks.records - acks.failures.len()) as u64;
                        if shared.first_error.is_none()
                            && let Some((_, error)) = acks.failures.into_iter().next()
                        {
                            shared.first_error = Some(error.to_string());
                        }
                    }
                    Err(error) => {
                        errors += 1;
                        if matches!(&error, ClientError::Server(e) if e.status == Status::LimitExceeded)
                        {
                            counters.throttled.fetch_add(1, Ordering::Relaxed);
                        }
                        if shared.first_error.is_none() {
                            shared.first_error = Some(error.to_string());
                        }
                    }
                }
            }
            shared.errors += errors;
            counters.errors.fetch_add(errors, Ordering::Relaxed);
            if measuring {
                shared.records += ok;
                counters.records.fetch_add(ok, Ordering::Relaxed);
                counters
                    .rejected_records
                    .fetch_add(failed, Ordering::Relaxed);
                // A request and its latency count when every part was answered (its
                // records accepted or refused one by one).
                if errors == 0 {
                    let _ = shared.histogram.record(latency_us);
                    shared.bytes += bytes;
                    shared.requests += 1;
                    counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        })
        .detach();
    }
    // Wait for the requests still in flight.
    let _ = slots.acquire(options.in_flight as u64).await;
    std::mem::replace(&mut *shared.borrow_mut(), WorkerResult::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However the connections are split over workers, each takes its own place among all
    /// of them, so their open-loop phases spread evenly over one interval.
    #[test]
    fn connections_take_every_place_once_whatever_the_split() {
        for connections in 1..=9 {
            for workers in 1..=connections {
                let mut places = Vec::new();
                for worker in 0..workers {
                    let held = connections / workers + usize::from(worker < connections % workers);
                    places.extend((0..held).map(|c| connection_index(worker, c, workers)));
                }
                places.sort_unstable();
                assert_eq!(
                    places,
                    (0..connections).collect::<Vec<_>>(),
                    "{connections} over {workers}"
                );
            }
        }
    }
}
