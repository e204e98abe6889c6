//! Group commit: the core's committer decides when pending appends are written and made
//! durable, and does it for every shard with pending data at once, then syncs once for the
//! whole round (fdatasync when the round wrote one file, syncfs when it wrote several), so
//! one sync is shared by every append in the commit window, however many shards it spans.
//! Owns the commit window, the bound on bytes awaiting commit (backpressure) and the
//! commit counters. Does not know the
//! byte layout (the shard log writes its own files). One committer per core, on that core.
//!
//! The window: a commit starts at once when the core has not started one for a whole
//! window (so a lone append on an idle core never waits it out); otherwise it starts when
//! the window since the last commit's start has passed, or as soon as `commit_bytes` are
//! pending, whichever comes first. Appends that arrive while a commit is writing wait for
//! the next one. The default window is zero: rounds run back to back while appends keep
//! coming, each carrying what arrived during the one before, so a round's size follows the
//! load and no append waits for a timer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::join_all;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use thiserror::Error;

use crate::limits::{
    BATCH_ENCODED_BYTES_MAX, COMMIT_BYTES_DEFAULT, COMMIT_WINDOW_US_DEFAULT,
    PENDING_BYTES_MAX_DEFAULT,
};
use crate::log::files::IoError;
use crate::log::shard::{ShardLog, SyncTarget, Written};

/// When and how a core commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitConfig {
    /// Longest an append waits for company before its commit starts, in microseconds.
    pub window_us: u64,
    /// A commit starts at once when this many bytes are pending on the core.
    pub commit_bytes: usize,
    /// Appends wait while this many bytes are appended but not yet durable on the core.
    pub pending_bytes_max: usize,
    /// Acknowledge appends once written, before fdatasync. A crash of the machine (not just
    /// the process) can then lose acknowledged records. For benchmarks only; off by default.
    pub ack_before_sync: bool,
}

impl Default for CommitConfig {
    fn default() -> CommitConfig {
        CommitConfig {
            window_us: COMMIT_WINDOW_US_DEFAULT,
            commit_bytes: COMMIT_BYTES_DEFAULT,
            pending_bytes_max: PENDING_BYTES_MAX_DEFAULT,
            ack_before_sync: false,
        }
    }
}

/// A commit that failed. The appends it carried are not acknowledged.
#[derive(Clone, Debug, Error)]
pub enum CommitError {
    #[error("commit failed: {0}")]
    Io(#[from] IoError),
}

/// Counters of one core's commits since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commit rounds run.
    pub commits: u64,
    /// Batches written, over all rounds.
    pub batches: u64,
    /// Bytes written (batches only, not block padding).
    pub bytes: u64,
    /// Sync calls issued: fdatasync, or one syncfs for a round that wrote several files.
    pub fsyncs: u64,
    /// Commits that failed.
    pub failures: u64,
}

impl CommitStats {
    /// Mean number of batches per commit round: how much group commit shares one sync.
    pub fn mean_batches_per_commit(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.batches as f64 / self.commits as f64
        }
    }
}

/// The group committer of one core.
pub struct Committer {
    config: CommitConfig,
    queue: RefCell<Vec<Rc<ShardLog>>>,
    queued_bytes: Cell<usize>,
    work: Signal,
    full: Signal,
    /// Bytes a core may have appended but not durable; appends take, commits give back.
    budget: Semaphore,
    last_start: Cell<Option<Instant>>,
    stats: Cell<CommitStats>,
    closing: Cell<bool>,
    task: RefCell<Option<JoinHandle<()>>>,
    /// Duration of each commit round, in microseconds.
    round_latency: RefCell<hdrhistogram::Histogram<u64>>,
    /// Duration of each round's sync, in microseconds.
    sync_latency: RefCell<hdrhistogram::Histogram<u64>>,
    /// Each shard's share of the core's in-memory tail budget, in bytes.
    tail_share_bytes: Cell<usize>,
}

impl Committer {
    /// Creates the committer and starts its task on the current glommio executor.
    ///
    /// # Panics
    /// When `pending_bytes_max` is below one maximal batch (no append could ever proceed);
    /// the server's config validation rejects that before it gets here.
    pub fn start(config: CommitConfig) -> Rc<Committer> {
        assert!(config.pending_bytes_max >= BATCH_ENCODED_BYTES_MAX);
        let committer = Rc::new(Committer {
            budget: Semaphore::new(config.pending_bytes_max as u64),
            config,
            queue: RefCell::new(Vec::new()),
            queued_bytes: Cell::new(0),
            work: Signal::default(),
            full: Signal::default(),
            last_start: Cell::new(None),
            stats: Cell::new(CommitStats::default()),
            closing: Cell::new(false),
            task: RefCell::new(None),
            tail_share_bytes: Cell::new(usize::MAX),
            round_latency: RefCell::new(crate::metrics::histogram()),
            sync_latency: RefCell::new(crate::metrics::histogram()),
        });
        let runner = committer.clone();
        // The committer runs in a task queue of its own that declares latency matters: the
        // scheduler then switches to it within the commit window (100 us at the least, so
        // with the default window of 0) even while append tasks keep the default queue
        // busy, so encoding and disk writes overlap instead of taking turns.
        let latency = Duration::from_micros(committer.config.window_us.max(100));
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::Matters(latency),
            "commit",
        );
        let future = async move { runner.run().await };
        let task = match glommio::spawn_local_into(future, queue) {
            Ok(task) => task,
            // Only fails when the queue does not exist; it was created just above.
            Err(error) => {
                tracing::warn!(%error, "commit task queue unavailable; using the default queue");
                let runner = committer.clone();
                glommio::spawn_local(async move { runner.run().await })
            }
        }
        .detach();
        *committer.task.borrow_mut() = Some(task);
        committer
    }

    pub fn config(&self) -> &CommitConfig {
        &self.config
    }

    pub fn stats(&self) -> CommitStats {
        self.stats.get()
    }

    /// Sets each shard's share of the core's tail budget (the core's budget divided by its
    /// shards), so memory stays bounded however many shards the core owns.
    pub fn set_tail_share_bytes(&self, bytes: usize) {
        self.tail_share_bytes.set(bytes);
    }

    /// Each shard's share of the core's tail budget, in bytes.
    pub fn tail_share_bytes(&self) -> usize {
        self.tail_share_bytes.get()
    }

    /// A copy of the commit-round latency histogram (microseconds).
    pub fn round_latency(&self) -> hdrhistogram::Histogram<u64> {
        self.round_latency.borrow().clone()
    }

    /// A copy of the histogram of each round's sync alone (microseconds).
    pub fn sync_latency(&self) -> hdrhistogram::Histogram<u64> {
        self.sync_latency.borrow().clone()
    }

    /// Waits until `bytes` more may be pending on this core (backpressure).
    pub(crate) async fn reserve(&self, bytes: usize) {
        // The semaphore is never closed while shards exist, so acquire cannot fail.
        let _ = self.budget.acquire(bytes as u64).await;
    }

    /// Gives back a reservation that was not used.
    pub(crate) fn release(&self, bytes: usize) {
        self.budget.signal(bytes as u64);
    }

    /// Puts `shard` on the list for the next commit, with `bytes` more pending.
    pub(crate) fn enqueue(&self, shard: &Rc<ShardLog>, bytes: usize) {
        if !shard.queued.replace(true) {
            self.queue.borrow_mut().push(shard.clone());
        }
        let queued = self.queued_bytes.get() + bytes;
        self.queued_bytes.set(queued);
        self.work.raise();
        if queued >= self.config.commit_bytes {
            self.full.raise();
        }
    }

    /// Commits everything pending, then stops the committer's task.
    pub async fn shutdown(&self) {
        self.closing.set(true);
        self.work.raise();
        let task = self.task.borrow_mut().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn run(self: Rc<Self>) {
        loop {
            self.work.wait().await;
            if self.queue.borrow().is_empty() {
                if self.closing.get() {
                    return;
                }
                continue;
            }
            if !self.closing.get() {
                self.wait_for_window().await;
            }
            self.commit_round().await;
            // More may have queued while we wrote; look again without waiting for a signal.
            if !self.queue.borrow().is_empty() || self.closing.get() {
                self.work.raise();
            }
        }
    }

    async fn wait_for_window(&self) {
        let window = Duration::from_micros(self.config.window_us);
        let Some(last) = self.last_start.get() else {
            return;
        };
        let since = last.elapsed();
        if since >= window || self.queued_bytes.get() >= self.config.commit_bytes {
            return;
        }
        self.full.clear();
        let timer = glommio::timer::sleep(window - since);
        futures_lite::future::or(timer, self.full.wait()).await;
    }

    async fn commit_round(&self) {
        let shards = std::mem::take(&mut *self.queue.borrow_mut());
        for shard in &shards {
            shard.queued.set(false);
        }
        self.queued_bytes.set(0);
        let started = Instant::now();
        self.last_start.set(Some(started));
        let written = join_all(shards.iter().map(|shard| shard.write_pending())).await;
        let synced = if self.config.ack_before_sync {
            SyncOutcome::default()
        } else {
            let sync_started = Instant::now();
            let synced =
                sync_round(written.iter().flatten().filter_map(Written::sync_target)).await;
            let _ = self
                .sync_latency
                .borrow_mut()
                .record(micros_since(sync_started).max(1));
            synced
        };
        let mut stats = self.stats.get();
        stats.commits += 1;
        stats.fsyncs += synced.syncs;
        for (shard, written) in shards.iter().zip(written) {
            let Some(written) = written else { continue };
            let taken_bytes = written.taken_bytes;
            match shard.finish_commit(written, synced.result.clone()) {
                Ok(done) => {
                    stats.batches += done.batches;
                    stats.bytes += done.bytes;
                    stats.fsyncs += done.fsyncs;
                }
                Err(_) => stats.failures += 1,
            }
            // Whether written or failed, these bytes no longer wait on this core.
            self.budget.signal(taken_bytes as u64);
        }
        self.stats.set(stats);
        let _ = self
            .round_latency
            .borrow_mut()
            .record(micros_since(started).max(1));
    }
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What a round's sync did: how many sync calls it issued, and whether all succeeded.
struct SyncOutcome {
    syncs: u64,
    result: Result<(), IoError>,
}

impl Default for SyncOutcome {
    fn default() -> SyncOutcome {
        SyncOutcome {
            syncs: 0,
            result: Ok(()),
        }
    }
}

/// Makes every written file of a round durable with one sync per device: fdatasync when
/// the round wrote one file there, syncfs when it wrote several. A round over a thousand
/// shards then costs one journal commit and one cache flush, not a thousand fdatasyncs
/// queued behind io_uring's few blocking workers. syncfs also writes back whatever else
/// is dirty on that file system (other programs' buffered writes), which costs time but
/// never correctness; the server's own files are O_DIRECT or already synced.
async fn sync_round<'a>(targets: impl Iterator<Item = &'a SyncTarget>) -> SyncOutcome {
    let mut devices: Vec<(u64, &SyncTarget, usize)> = Vec::new();
    for target in targets {
        match devices
            .iter_mut()
            .find(|(device, ..)| *device == target.device)
        {
            Some((_, _, files)) => *files += 1,
            None => devices.push((target.device, target, 1)),
        }
    }
    let syncs = devices.len() as u64;
    let results = join_all(devices.into_iter().map(|(_, target, files)| async move {
        if files == 1 {
            let file = &target.file;
            file.fdatasync()
                .await
                .map_err(|e| IoError::new("fdatasync", &target.path, e))
        } else {
            syncfs(target).await
        }
    }))
    .await;
    let result = results.into_iter().collect::<Result<Vec<()>, IoError>>();
    SyncOutcome {
        syncs,
        result: result.map(|_| ()),
    }
}

/// syncfs(2) on the file system holding `target`, on glommio's blocking-syscall thread
/// (io_uring has no syncfs), so the core goes on serving while it runs; that thread is
/// free to run on another CPU (see [`crate::runtime::executor_builder`]).
async fn syncfs(target: &SyncTarget) -> Result<(), IoError> {
    use std::os::fd::AsRawFd;
    // The descriptor stays open: `target` (and its Rc<DmaFile>) outlives the await.
    let fd = target.file.as_raw_fd();
    let result = glommio::executor()
        .spawn_blocking(move || {
            // SAFETY: syncfs only reads the descriptor, which is open for the whole call.
            if unsafe { libc::syncfs(fd) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await;
    result.map_err(|e| IoError::new("syncfs", &target.path, e))
}

/// A level-triggered wake-up for one waiting task on the same core.
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn clear(&self) {
        self.raised.set(false);
    }

    /// Resolves once raised, and lowers the signal.
    async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }
}
