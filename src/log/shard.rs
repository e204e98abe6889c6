//! The shard log: one shard's ordered, retained records in a folder of segment files.
//! Owns sequence numbering, the pending (appended, not yet durable) batches, the segment
//! files and their indexes, the in-memory tail, reads, retention and recovery on open.
//! Does not decide when to commit: the core's [`Committer`] does: it calls
//! [`ShardLog::write_pending`], syncs the round, then calls [`ShardLog::finish_commit`].
//! Runs only on the shard's owner core; nothing here is `Send`.
//!
//! Positions: `next_seq` is the next sequence number to assign; `durable_next_seq` is one
//! past the last record whose bytes were made durable. Readers never see a record at or
//! after `durable_next_seq`, and appends are acknowledged only once it has passed them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use glommio::io::DmaFile;
use thiserror::Error;

use crate::commit::{CommitError, Committer};
use crate::limits::{
    INDEX_INTERVAL_BYTES_DEFAULT, READ_BYTES_MAX, READ_RECORDS_MAX, RETENTION_HOURS_DEFAULT,
    SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, TAIL_CACHE_BYTES_DEFAULT,
};
use crate::log::batch::{
    self, BatchHeader, BatchPosition, FLAG_COMMIT_FIRST, LimitError, RecordIn, RecordOut, Records,
};
use crate::log::files::{self, IoError, align_down, align_up, io_err};
use crate::log::index::{SegmentSummary, SparseIndex};
use crate::log::segment::{self, Corruption, ScanMode};

/// How a shard log lays out and keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment file when the active one would grow past this, in bytes.
    pub segment_bytes: u64,
    /// Spacing of sparse index entries, in bytes of segment.
    pub index_interval_bytes: u32,
    /// Budget of the in-memory tail that serves readers near the head, in bytes. The
    /// core can lower it for each shard ([`Committer::set_tail_share_bytes`]) so that all
    /// its shards together stay within one budget.
    pub tail_cache_bytes: usize,
    /// Records older than this are deleted, a whole segment at a time, in hours.
    pub retention_hours: u32,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            tail_cache_bytes: TAIL_CACHE_BYTES_DEFAULT,
            retention_hours: RETENTION_HOURS_DEFAULT,
        }
    }
}

/// Where a reader starts in a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Just after the newest durable record.
    Latest,
    AtSequence(u64),
    AfterSequence(u64),
    /// The first record that arrived at or after this time, unix microseconds.
    AtTimestamp(u64),
}

/// What an append was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    /// Sequence number of the batch's first record; record `i` has `first_seq + i`.
    pub first_seq: u64,
    pub records: u32,
}

/// Records read from a shard and where to continue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    pub records: Vec<RecordOut>,
    /// Sequence number to read from next time.
    pub next_seq: u64,
    /// One past the newest durable record when the read was served.
    pub tip_seq: u64,
    /// Arrival time of the newest durable record, unix microseconds (0 when empty).
    pub tip_arrival_us: u64,
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: {corruption}")]
    Corruption {
        path: PathBuf,
        corruption: Corruption,
    },
    #[error("{path}: segment starts at sequence {found}, but the one before ends at {expected}")]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("invalid log config: {0}")]
    Config(String),
}

#[derive(Clone, Debug, Error)]
pub enum AppendError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("shard log {path} stopped accepting appends after a failed commit: {reason}")]
    Failed { path: PathBuf, reason: Rc<str> },
    #[error("shard log {path} is closed to appends (split, merged or moving)")]
    Closed { path: PathBuf },
}

#[derive(Clone, Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: damaged batch at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: batch::DecodeError,
    },
}

/// A background seal's task, awaitable by every caller that must wait for it.
type Sealing = futures::future::Shared<glommio::task::JoinHandle<()>>;

/// One shard's log. Create with [`ShardLog::open`]; share as `Rc` on the owner core.
pub struct ShardLog {
    dir: PathBuf,
    /// The device (st_dev) holding `dir`: the committer syncs once per device.
    device: u64,
    config: LogConfig,
    committer: Rc<Committer>,
    /// Whether this shard is on the committer's list for the next commit.
    pub(crate) queued: Cell<bool>,
    /// Readers waiting for records past the durable tip (long polls, subscriptions).
    watchers: RefCell<Vec<oneshot::Sender<()>>>,
    /// The stream's retention, which can change while the log is open.
    retention_hours: Cell<u32>,
    state: RefCell<State>,
    /// The newest background seal (see [`ShardLog::roll`]); each waits for the one before,
    /// so awaiting this one waits for them all. Shared, so any number of callers can.
    sealing: RefCell<Option<Sealing>>,
}

struct State {
    sealed: VecDeque<Sealed>,
    active: Active,
    next_seq: u64,
    durable_next_seq: u64,
    /// Newest arrival time assigned to an appended record (durable or not).
    arrival_floor_us: u64,
    durable_arrival_us: u64,
    /// The commit id that batches appended now will carry.
    open_commit_id: u64,
    pending: Vec<Pending>,
    pending_bytes: usize,
    waiters: VecDeque<Waiter>,
    tail: TailCache,
    /// Set while a commit for this shard is writing; retention waits for it.
    in_commit: bool,
    failed: Option<Rc<str>>,
    /// Set by [`ShardLog::fence`]: appends are refused from then on.
    fenced: bool,
}

struct Sealed {
    first_seq: u64,
    summary: SegmentSummary,
    index: SparseIndex,
    file: Option<Rc<DmaFile>>,
}

struct Active {
    first_seq: u64,
    file: Rc<DmaFile>,
    /// Bytes of durable batches in the file.
    bytes: u64,
    /// The durable bytes of the last, partial block, rewritten in front of the next write.
    block_tail: Vec<u8>,
    /// Bytes the file system has allocated (fallocate) for the file; the file reads as
    /// zeros from `bytes` to here. Writes inside it do not extend the file, which ext4
    /// and xfs serialise and journal on every sync.
    allocated: u64,
    index: SparseIndex,
    arrival_last_us: u64,
}

struct Pending {
    bytes: Bytes,
    first_seq: u64,
    next_seq: u64,
    arrival_first_us: u64,
    arrival_last_us: u64,
}

/// What an append writes: records to encode here, or a batch encoded by the core that
/// read the put.
enum Source<'a> {
    Records(&'a [RecordIn], batch::BatchShape),
    Encoded(batch::Encoded),
}

struct Waiter {
    next_seq: u64,
    done: oneshot::Sender<Result<(), CommitError>>,
}

#[derive(Default)]
struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes: usize,
}

struct CachedBatch {
    first_seq: u64,
    next_seq: u64,
    arrival_last_us: u64,
    bytes: Bytes,
}

/// One shard's part of a commit round, written but not yet synced.
pub(crate) struct Written {
    /// Bytes taken off the pending list, whose reservation the committer gives back.
    pub taken_bytes: usize,
    batches: Vec<Pending>,
    outcome: Result<SyncTarget, IoError>,
}

impl Written {
    /// The file the round's sync must cover; `None` when the write already failed.
    pub(crate) fn sync_target(&self) -> Option<&SyncTarget> {
        self.outcome.as_ref().ok()
    }
}

/// A file with written but unsynced bytes, and the device it lives on.
pub(crate) struct SyncTarget {
    pub file: Rc<DmaFile>,
    pub path: PathBuf,
    pub device: u64,
    /// fdatasyncs already issued for this shard in the round (before segment rolls).
    fsyncs: u64,
}

/// What one shard's part of a commit did, for the committer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCommit {
    pub batches: u64,
    pub bytes: u64,
    pub fsyncs: u64,
}

/// A segment found on disk, resolved to what a read needs.
struct SegmentRef {
    file: Rc<DmaFile>,
    path: PathBuf,
    start: u64,
    end: u64,
}

impl ShardLog {
    /// Opens (or creates) the shard log in `dir`, recovering it: sealed segments are loaded
    /// from their index files (or rescanned), the last segment is checked batch by batch
    /// and a torn tail is cut off and logged.
    ///
    /// # Errors
    /// [`OpenError::Corruption`] naming the file and position when acknowledged data is
    /// damaged; [`OpenError::Gap`] when segments do not follow each other; I/O errors.
    pub async fn open(
        dir: &Path,
        config: LogConfig,
        committer: Rc<Committer>,
    ) -> Result<Rc<ShardLog>, OpenError> {
        check_config(&config)?;
        files::ensure_dir(dir).await?;
        let firsts = list_segments(dir)?;
        let mut sealed = VecDeque::new();
        let mut expected: Option<u64> = None;
        let (last_first, sealed_firsts) = match firsts.split_last() {
            Some((last, rest)) => (*last, rest),
            None => (0, &[][..]),
        };
        for &first_seq in sealed_firsts {
            check_gap(dir, expected, first_seq)?;
            let segment = load_sealed(dir, first_seq, &config).await?;
            expected = Some(segment.summary.next_seq);
            sealed.push_back(segment);
        }
        check_gap(dir, expected, last_first)?;
        let (active, scan) = recover_last(dir, last_first, firsts.is_empty(), &config).await?;
        let arrival = scan
            .arrival_last_us
            .max(sealed.back().map_or(0, |s| s.summary.arrival_last_us));
        let state = State {
            sealed,
            next_seq: scan.next_seq,
            durable_next_seq: scan.next_seq,
            arrival_floor_us: arrival,
            durable_arrival_us: arrival,
            open_commit_id: scan.last_commit_id.map_or(0, |id| id.wrapping_add(1)),
            active,
            pending: Vec::new(),
            pending_bytes: 0,
            waiters: VecDeque::new(),
            tail: TailCache::default(),
            in_commit: false,
            failed: None,
            fenced: false,
        };
        let retention_hours = config.retention_hours;
        let device = std::fs::metadata(dir).map_err(io_err("stat", dir))?.dev();
        Ok(Rc::new(ShardLog {
            dir: dir.to_path_buf(),
            device,
            config,
            committer,
            queued: Cell::new(false),
            watchers: RefCell::new(Vec::new()),
            retention_hours: Cell::new(retention_hours),
            state: RefCell::new(state),
            sealing: RefCell::new(None),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a batch and resolves once every record in it is durable.
    ///
    /// Limits are checked first; a batch that breaks one changes nothing. Records get
    /// consecutive sequence numbers. Waits (backpressure) while the core has too many
    /// bytes pending commit.
    ///
    /// # Errors
    /// [`AppendError::Limit`] before anything is appended; [`AppendError::Commit`] when the
    /// commit carrying the batch failed (the batch may or may not be on disk, and the shard
    /// stops accepting appends); [`AppendError::Failed`] after such a failure.
    pub async fn append(self: &Rc<Self>, records: &[RecordIn]) -> Result<AppendAck, AppendError> {
        let shape = batch::validate(records)?;
        self.append_shaped(records, shape).await
    }

    /// Appends one shard's part of a put, encoded by the core that read it (see
    /// [`batch::Encoded`]); its limits were checked there. Otherwise as
    /// [`ShardLog::append`].
    ///
    /// # Errors
    /// As [`ShardLog::append`]. When the batch was refused before it was written (the
    /// shard is closed or failed) its records come back with the error, so a closing
    /// shard's records can be routed again.
    pub async fn append_encoded(
        self: &Rc<Self>,
        batch: batch::Encoded,
    ) -> Result<AppendAck, (AppendError, Option<batch::Encoded>)> {
        if batch.is_empty() {
            return Err((AppendError::Limit(batch::LimitError::EmptyBatch), None));
        }
        self.append_source(Source::Encoded(batch)).await
    }

    async fn append_shaped(
        self: &Rc<Self>,
        records: &[RecordIn],
        shape: batch::BatchShape,
    ) -> Result<AppendAck, AppendError> {
        self.append_source(Source::Records(records, shape))
            .await
            .map_err(|(error, _)| error)
    }

    async fn append_source(
        self: &Rc<Self>,
        source: Source<'_>,
    ) -> Result<AppendAck, (AppendError, Option<batch::Encoded>)> {
        let (encoded_bytes, records) = match &source {
            Source::Records(_, shape) => (shape.encoded_bytes, shape.records),
            Source::Encoded(batch) => (batch.encoded_bytes(), batch.len()),
        };
        let refused = |error: AppendError, source: Source<'_>| match source {
            Source::Encoded(batch) => (error, Some(batch)),
            Source::Records(..) => (error, None),
        };
        if let Err(error) = self.check_healthy() {
            return Err(refused(error, source));
        }
        self.committer.reserve(encoded_bytes).await;
        let (ack, done) = {
            let mut state = self.state.borrow_mut();
            if let Some(reason) = state.failed.clone() {
                drop(state);
                self.committer.release(encoded_bytes);
                let error = AppendError::Failed {
                    path: self.dir.clone(),
                    reason,
                };
                return Err(refused(error, source));
            }
            // Checked again after the wait for room: a fence may have come meanwhile.
            if state.fenced {
                drop(state);
                self.committer.release(encoded_bytes);
                let error = AppendError::Closed {
                    path: self.dir.clone(),
                };
                return Err(refused(error, source));
            }
            let first_seq = state.next_seq;
            let flags = if state.pending.is_empty() {
                FLAG_COMMIT_FIRST
            } else {
                0
            };
            let position = BatchPosition {
                first_seq,
                commit_id: state.open_commit_id,
                flags,
            };
            let floor = state.arrival_floor_us;
            let (bytes, arrival_first_us, arrival_last_us) = match source {
                Source::Records(records, shape) => {
                    let mut out = BytesMut::with_capacity(shape.encoded_bytes);
                    let (first, last) = batch::encode(&mut out, &shape, records, position, floor);
                    (out.freeze(), first, last)
                }
                Source::Encoded(batch) => batch.into_batch(position, floor),
            };
            let next_seq = first_seq + records as u64;
            state.next_seq = next_seq;
            state.arrival_floor_us = arrival_last_us;
            state.pending_bytes += encoded_bytes;
            state.pending.push(Pending {
                bytes,
                first_seq,
                next_seq,
                arrival_first_us,
                arrival_last_us,
            });
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(Waiter { next_seq, done: tx });
            let ack = AppendAck {
                first_seq,
                records: records as u32,
            };
            (ack, rx)
        };
        self.committer.enqueue(self, encoded_bytes);
        match done.await {
            Ok(Ok(())) => Ok(ack),
            Ok(Err(error)) => Err((AppendError::Commit(error), None)),
            // The sender is dropped only if the shard log itself is dropped mid-commit.
            Err(_) => Err((
                AppendError::Failed {
                    path: self.dir.clone(),
                    reason: "shard log closed before the commit finished".into(),
                },
                None,
            )),
        }
    }

    fn check_healthy(&self) -> Result<(), AppendError> {
        let state = self.state.borrow();
        if let Some(reason) = state.failed.clone() {
            return Err(AppendError::Failed {
                path: self.dir.clone(),
                reason,
            });
        }
        if state.fenced {
            return Err(AppendError::Closed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Stops appends, waits until every record appended before is durable, and returns one
    /// past the last sequence number: where a closing shard ends. Appends that come after
    /// get [`AppendError::Closed`]. Reads go on as before.
    ///
    /// # Errors
    /// [`AppendError::Failed`] when a commit failed, so the end is not known to be durable.
    pub async fn fence(&self) -> Result<u64, AppendError> {
        self.state.borrow_mut().fenced = true;
        loop {
            let (durable, next, failed) = {
                let state = self.state.borrow();
                (state.durable_next_seq, state.next_seq, state.failed.clone())
            };
            if let Some(reason) = failed {
                return Err(AppendError::Failed {
                    path: self.dir.clone(),
                    reason,
                });
            }
            if durable >= next {
                return Ok(next);
            }
            self.wait_for_records(durable, std::time::Duration::from_millis(10))
                .await;
        }
    }

    /// Marks the log closed to appends without waiting: for a shard the catalog already
    /// records as closed, when it is opened again.
    pub fn set_fenced(&self, fenced: bool) {
        self.state.borrow_mut().fenced = fenced;
    }

    /// Whether appends are refused.
    pub fn is_fenced(&self) -> bool {
        self.state.borrow().fenced
    }

    /// Writes every pending batch to its segment (rolling segments as needed), without the
    /// final sync: the committer syncs every shard of the round at once (one sync per core,
    /// see [`crate::commit`]) and then calls [`ShardLog::finish_commit`]. A run that fills a
    /// segment is synced before the roll, so only the newest file can hold unsynced bytes.
    /// Called only by the committer, one commit at a time. `None` when nothing is pending.
    pub(crate) async fn write_pending(&self) -> Option<Written> {
        let (batches, taken_bytes) = {
            let mut state = self.state.borrow_mut();
            if state.pending.is_empty() {
                return None;
            }
            state.in_commit = true;
            state.open_commit_id = state.open_commit_id.wrapping_add(1);
            let taken_bytes = std::mem::take(&mut state.pending_bytes);
            (std::mem::take(&mut state.pending), taken_bytes)
        };
        let outcome = self.write_batches(&batches).await;
        Some(Written {
            taken_bytes,
            batches,
            outcome,
        })
    }

    /// Completes a commit after the round's sync: `synced` is its outcome (`Ok` too when
    /// the committer acknowledges before sync). On success the batches become durable and
    /// readable and the appends they cover are released.
    ///
    /// # Errors
    /// The I/O error of the write or the sync. The shard is then marked failed, and every
    /// waiting append gets the error: after a failed fdatasync the state of the file is
    /// unknown, so nothing more is acknowledged.
    pub(crate) fn finish_commit(
        &self,
        written: Written,
        synced: Result<(), IoError>,
    ) -> Result<ShardCommit, CommitError> {
        let Written {
            batches, outcome, ..
        } = written;
        let result = outcome.and_then(|target| synced.map(|()| target.fsyncs));
        let mut state = self.state.borrow_mut();
        state.in_commit = false;
        match result {
            Ok(fsyncs) => {
                let mut written = ShardCommit {
                    batches: batches.len() as u64,
                    bytes: 0,
                    fsyncs,
                };
                for pending in batches {
                    written.bytes += pending.bytes.len() as u64;
                    state.durable_next_seq = pending.next_seq;
                    state.durable_arrival_us = pending.arrival_last_us;
                    let budget = self
                        .config
                        .tail_cache_bytes
                        .min(self.committer.tail_share_bytes());
                    state.tail.push(pending, budget);
                }
                let durable = state.durable_next_seq;
                for watcher in self.watchers.borrow_mut().drain(..) {
                    let _ = watcher.send(());
                }
                while let Some(waiter) = state.waiters.front() {
                    if waiter.next_seq > durable {
                        break;
                    }
                    if let Some(waiter) = state.waiters.pop_front() {
                        let _ = waiter.done.send(Ok(()));
                    }
                }
                Ok(written)
            }
            Err(error) => {
                tracing::error!(shard = %self.dir.display(), %error, "commit failed; shard stops accepting appends");
                let error = CommitError::Io(error);
                state.failed = Some(error.to_string().into());
                for waiter in state.waiters.drain(..) {
                    let _ = waiter.done.send(Err(error.clone()));
                }
                Err(error)
            }
        }
    }

    /// Writes `batches` in runs, one run per segment, rolling between runs; every run but
    /// the last is fdatasync'd before its roll. Returns the file of the last run, which
    /// the round's sync must cover.
    async fn write_batches(&self, batches: &[Pending]) -> Result<SyncTarget, IoError> {
        let mut fsyncs = 0;
        let mut start = 0;
        loop {
            let (file, bytes, tail) = {
                let state = self.state.borrow();
                let active = &state.active;
                (active.file.clone(), active.bytes, active.block_tail.clone())
            };
            let mut end = start;
            let mut run_bytes = 0u64;
            while let Some(next) = batches.get(end) {
                let len = next.bytes.len() as u64;
                let fits = bytes + run_bytes + len <= self.config.segment_bytes;
                if !fits && bytes + run_bytes > 0 {
                    break;
                }
                run_bytes += len;
                end += 1;
            }
            let path = self.active_path();
            if end > start {
                let run = &batches[start..end];
                self.preallocate(&file, &path, bytes + run_bytes).await?;
                let new_tail = write_run(&file, &path, bytes, &tail, run).await?;
                self.apply_run(run, bytes, new_tail);
            }
            let Some(next) = batches.get(end) else {
                return Ok(SyncTarget {
                    file,
                    path,
                    device: self.device,
                    fsyncs,
                });
            };
            // The full segment is durable before the next one exists: recovery may then
            // trust every segment but the last to be whole.
            if end > start {
                file.fdatasync().await.map_err(io_err("fdatasync", &path))?;
                fsyncs += 1;
            }
            self.roll(next.first_seq).await?;
            start = end;
        }
    }

    /// Grows the active file's allocation ahead of the writes, doubling each time (from
    /// [`ALLOCATION_STEP_MIN_BYTES`] to [`ALLOCATION_STEP_MAX_BYTES`]), so an idle shard
    /// holds little disk and a busy one rarely allocates.
    async fn preallocate(&self, file: &DmaFile, path: &Path, needed: u64) -> Result<(), IoError> {
        let allocated = self.state.borrow().active.allocated;
        if needed <= allocated {
            return Ok(());
        }
        let step = allocated.clamp(ALLOCATION_STEP_MIN_BYTES, ALLOCATION_STEP_MAX_BYTES);
        let target = align_up(
            needed
                .max(allocated + step)
                .min(needed.max(self.config.segment_bytes)),
        );
        file.pre_allocate(target, false)
            .await
            .map_err(io_err("fallocate", path))?;
        self.state.borrow_mut().active.allocated = target;
        Ok(())
    }

    fn apply_run(&self, run: &[Pending], start_bytes: u64, block_tail: Vec<u8>) {
        let mut state = self.state.borrow_mut();
        let active = &mut state.active;
        let mut position = start_bytes;
        for pending in run {
            active
                .index
                .observe(position as u32, pending.first_seq, pending.arrival_first_us);
            position += pending.bytes.len() as u64;
            active.arrival_last_us = pending.arrival_last_us;
        }
        active.bytes = position;
        active.block_tail = block_tail;
    }

    fn active_path(&self) -> PathBuf {
        let first_seq = self.state.borrow().active.first_seq;
        self.dir.join(segment::log_file_name(first_seq))
    }

    /// Seals the active segment and starts a new one whose first record is `first_seq`.
    /// The new file is created and its directory entry synced before this returns; the old
    /// segment's tidying ([`ShardLog::seal`]) runs in the background, off the commit.
    async fn roll(&self, first_seq: u64) -> Result<(), IoError> {
        let new_path = self.dir.join(segment::log_file_name(first_seq));
        let new_file = Rc::new(files::create_rw(&new_path).await?);
        files::sync_dir(&self.dir).await?;
        let old = {
            let mut state = self.state.borrow_mut();
            let fresh = Active::empty(first_seq, new_file, self.config.index_interval_bytes);
            std::mem::replace(&mut state.active, fresh)
        };
        let summary = SegmentSummary {
            bytes: old.bytes as u32,
            next_seq: first_seq,
            arrival_last_us: old.arrival_last_us,
        };
        self.seal(&old, &summary);
        self.state.borrow_mut().sealed.push_back(Sealed {
            first_seq: old.first_seq,
            summary,
            index: old.index,
            file: Some(old.file),
        });
        Ok(())
    }

    /// Trims a sealed segment's block padding and writes its index file, in a background
    /// task: both are only tidiness (recovery reads past zero padding and rebuilds a missing
    /// index), so they need not hold up the commit that rolled, and failures are logged,
    /// not returned. Retention and [`ShardLog::close`] wait for it ([`ShardLog::sealed`]).
    fn seal(&self, old: &Active, summary: &SegmentSummary) {
        let log_path = self.dir.join(segment::log_file_name(old.first_seq));
        let idx_path = self.dir.join(segment::index_file_name(old.first_seq));
        let index = old.index.encode(summary);
        let file = old.file.clone();
        let bytes = old.bytes;
        let before = self.sealing.borrow().clone();
        let task = glommio::spawn_local(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            if let Err(error) = files::truncate(&file, &log_path, bytes) {
                tracing::warn!(path = %log_path.display(), %error, "could not trim sealed segment");
            }
            if let Err(error) = files::write_atomic(&idx_path, &index).await {
                tracing::warn!(%error, "could not write segment index; it will be rebuilt on open");
            }
        })
        .detach();
        let task = futures::FutureExt::shared(task);
        *self.sealing.borrow_mut() = Some(task);
    }

    /// Waits until every segment sealed so far is trimmed and has its index file.
    async fn sealed(&self) {
        let task = self.sealing.borrow().clone();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Resolves a start position to the sequence number a read should begin at.
    ///
    /// # Errors
    /// I/O or corruption errors from the segment reads an `AtTimestamp` lookup needs.
    pub async fn resolve(&self, position: StartPosition) -> Result<u64, ReadError> {
        let (trim, tip, tip_arrival) = {
            let state = self.state.borrow();
            (
                state.trim_horizon(),
                state.durable_next_seq,
                state.durable_arrival_us,
            )
        };
        let seq = match position {
            StartPosition::TrimHorizon => trim,
            StartPosition::Latest => tip,
            StartPosition::AtSequence(seq) => seq,
            StartPosition::AfterSequence(seq) => seq.saturating_add(1),
            StartPosition::AtTimestamp(at_us) if at_us > tip_arrival => tip,
            StartPosition::AtTimestamp(at_us) => self.seq_for_arrival(at_us, tip).await?,
        };
        Ok(seq.clamp(trim, tip.max(trim)))
    }

    /// The first sequence number whose record arrived at or after `at_us`.
    async fn seq_for_arrival(&self, at_us: u64, tip: u64) -> Result<u64, ReadError> {
        let located = {
            let state = self.state.borrow();
            if let Some(seq) = state.tail.seq_for_arrival(at_us) {
                return Ok(seq);
            }
            state.segment_for_arrival(at_us)
        };
        let Some((first_seq, position)) = located else {
            return Ok(tip);
        };
        let segment = self.segment_ref(first_seq).await?;
        let mut offset = segment.start.max(u64::from(position));
        while offset < segment.end {
            let batches = read_batches(&segment, offset, READ_BYTES_MAX).await?;
            if batches.is_empty() {
                break;
            }
            for (header, bytes) in &batches {
                offset += u64::from(header.length);
                if header.arrival_last_us < at_us {
                    continue;
                }
                for span in Records::new(*header, bytes).flatten() {
                    if span.arrival_us >= at_us {
                        return Ok(span.seq);
                    }
                }
            }
        }
        Ok(tip)
    }

    /// Reads records from `from_seq` on, at most `max_records` and about `max_bytes` of keys
    /// and data (at least one record when any is there). Reads near the head come from
    /// memory; older ones from the segment files.
    ///
    /// # Errors
    /// I/O errors, and [`ReadError::Corrupt`] when a batch read from disk fails its check.
    pub async fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadOutcome, ReadError> {
        let max_records = max_records.clamp(1, READ_RECORDS_MAX);
        let max_bytes = max_bytes.clamp(1, READ_BYTES_MAX);
        let mut out = ReadOutcome::default();
        let mut budget = ReadBudget {
            records: max_records,
            bytes: max_bytes,
        };
        let mut seq = {
            let state = self.state.borrow();
            out.tip_seq = state.durable_next_seq;
            out.tip_arrival_us = state.durable_arrival_us;
            // A position past the tip reads from the tip: nothing is skipped when the
            // records before it arrive.
            from_seq.clamp(state.trim_horizon(), out.tip_seq.max(state.trim_horizon()))
        };
        while seq < out.tip_seq && budget.has_room() {
            let from_memory = {
                let state = self.state.borrow();
                state
                    .tail
                    .read(seq, out.tip_seq, &mut budget, &mut out.records)
            };
            let next = match from_memory {
                Some(next) => next,
                None => {
                    self.read_disk(seq, out.tip_seq, &mut budget, &mut out.records)
                        .await?
                }
            };
            if next == seq {
                break;
            }
            seq = next;
        }
        out.next_seq = seq;
        Ok(out)
    }

    async fn read_disk(
        &self,
        seq: u64,
        tip: u64,
        budget: &mut ReadBudget,
        records: &mut Vec<RecordOut>,
    ) -> Result<u64, ReadError> {
        let hit = {
            let state = self.state.borrow();
            match state.segment_for_seq(seq) {
                Some(found) => found,
                None => return Ok(seq),
            }
        };
        let segment = self.segment_ref(hit.first_seq).await?;
        let mut offset = segment.start.max(u64::from(hit.position));
        // Read what the budget will take, judged by the segment's mean record size, plus
        // the stretch between the index entry and the target: not the whole byte budget
        // when a small record count is asked for.
        let by_records = (budget.records as u64).saturating_mul(hit.record_bytes_mean);
        let wanted =
            by_records.min(budget.bytes as u64) + u64::from(self.config.index_interval_bytes);
        let want = usize::try_from(wanted)
            .unwrap_or(READ_BYTES_MAX)
            .min(READ_BYTES_MAX);
        let mut next = seq;
        // Batches between the index entry and the target can fill a read; go on until a
        // record is taken or the segment ends.
        while next == seq && offset < segment.end {
            let batches = read_batches(&segment, offset, want).await?;
            if batches.is_empty() {
                break;
            }
            for (header, bytes) in &batches {
                offset += u64::from(header.length);
                if header.next_seq() <= next {
                    continue;
                }
                next = take_records(*header, bytes, next, tip, budget, records);
                if !budget.has_room() {
                    break;
                }
            }
        }
        Ok(next)
    }

    /// The file and readable byte range of the segment whose first record is `first_seq`,
    /// opening a sealed segment's file on first use.
    async fn segment_ref(&self, first_seq: u64) -> Result<SegmentRef, ReadError> {
        let path = self.dir.join(segment::log_file_name(first_seq));
        let known = {
            let state = self.state.borrow();
            if state.active.first_seq == first_seq {
                Some((Some(state.active.file.clone()), state.active.bytes))
            } else {
                state
                    .sealed
                    .iter()
                    .find(|s| s.first_seq == first_seq)
                    .map(|s| (s.file.clone(), u64::from(s.summary.bytes)))
            }
        };
        let Some((file, end)) = known else {
            // Retention removed it between lookup and open; nothing there to read.
            return Err(ReadError::Io(IoError::new(
                "find segment",
                &path,
                "deleted",
            )));
        };
        let file = match file {
            Some(file) => file,
            None => {
                let opened = Rc::new(DmaFile::open(&path).await.map_err(io_err("open", &path))?);
                let mut state = self.state.borrow_mut();
                if let Some(sealed) = state.sealed.iter_mut().find(|s| s.first_seq == first_seq) {
                    sealed.file = Some(opened.clone());
                }
                opened
            }
        };
        Ok(SegmentRef {
            file,
            path,
            start: 0,
            end,
        })
    }

    /// Deletes whole segments whose newest record arrived before `now_us` minus the
    /// retention. The active segment is replaced by an empty one first when it is expired
    /// too. Returns the number of segments deleted.
    ///
    /// # Errors
    /// I/O errors from deleting files or starting the replacement segment.
    pub async fn enforce_retention(&self, now_us: u64) -> Result<usize, IoError> {
        let retention_us = u64::from(self.retention_hours.get()) * 3_600_000_000;
        let cutoff = now_us.saturating_sub(retention_us);
        let roll_active = {
            let state = self.state.borrow();
            let active = &state.active;
            let idle = state.pending.is_empty() && !state.in_commit;
            idle && active.bytes > 0 && active.arrival_last_us < cutoff
        };
        if roll_active {
            let next_seq = self.state.borrow().next_seq;
            self.roll(next_seq).await?;
        }
        // No seal may write an index file for a segment deleted here.
        self.sealed().await;
        let mut deleted = 0;
        loop {
            let expired = {
                let mut state = self.state.borrow_mut();
                let is_expired = state
                    .sealed
                    .front()
                    .is_some_and(|s| s.summary.arrival_last_us < cutoff);
                if is_expired {
                    state.sealed.pop_front()
                } else {
                    None
                }
            };
            let Some(segment) = expired else { break };
            let log_path = self.dir.join(segment::log_file_name(segment.first_seq));
            let idx_path = self.dir.join(segment::index_file_name(segment.first_seq));
            std::fs::remove_file(&log_path).map_err(io_err("remove", &log_path))?;
            if let Err(error) = std::fs::remove_file(&idx_path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                return Err(IoError::new("remove", &idx_path, error));
            }
            deleted += 1;
        }
        if deleted > 0 {
            files::sync_dir(&self.dir).await?;
            let mut state = self.state.borrow_mut();
            let trim = state.trim_horizon();
            state.tail.trim_before(trim);
            tracing::info!(shard = %self.dir.display(), deleted, trim_horizon = trim, "retention deleted segments");
        }
        Ok(deleted)
    }

    /// Waits until a record at or after `seq` is durable, or `timeout` passes. Returns
    /// whether one is.
    pub async fn wait_for_records(&self, seq: u64, timeout: std::time::Duration) -> bool {
        if self.durable_next_seq() > seq {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut watchers = self.watchers.borrow_mut();
            // Readers that timed out dropped their receivers; forget them.
            watchers.retain(|w| !w.is_canceled());
            watchers.push(tx);
        }
        let woken = async {
            let _ = rx.await;
        };
        let expired = async {
            glommio::timer::sleep(timeout).await;
        };
        futures_lite::future::or(woken, expired).await;
        self.durable_next_seq() > seq
    }

    /// Arrival time of the newest durable record, unix microseconds (0 when empty).
    pub fn tip_arrival_us(&self) -> u64 {
        self.state.borrow().durable_arrival_us
    }

    /// Changes the retention applied from the next retention pass on.
    pub fn set_retention_hours(&self, hours: u32) {
        self.retention_hours.set(hours);
    }

    /// The oldest retained sequence number.
    pub fn trim_horizon(&self) -> u64 {
        self.state.borrow().trim_horizon()
    }

    /// One past the newest durable record.
    pub fn durable_next_seq(&self) -> u64 {
        self.state.borrow().durable_next_seq
    }

    /// One past the newest appended record, durable or not.
    pub fn next_seq(&self) -> u64 {
        self.state.borrow().next_seq
    }

    /// Number of segment files, sealed and active.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().sealed.len() + 1
    }

    /// Heap memory this shard holds (tail cache, indexes, buffers), in bytes.
    pub fn memory_bytes(&self) -> usize {
        let state = self.state.borrow();
        let indexes: usize = state.sealed.iter().map(|s| s.index.heap_bytes()).sum();
        state.tail.bytes
            + indexes
            + state.active.index.heap_bytes()
            + state.active.block_tail.capacity()
            + state.pending_bytes
    }

    /// Closes the shard's files. Call after the committer has flushed.
    pub async fn close(&self) {
        self.sealed().await;
        let files: Vec<Rc<DmaFile>> = {
            let mut state = self.state.borrow_mut();
            let mut files: Vec<Rc<DmaFile>> = state
                .sealed
                .iter_mut()
                .filter_map(|s| s.file.take())
                .collect();
            files.push(state.active.file.clone());
            files
        };
        for file in files {
            if let Err(error) = file.close_rc().await {
                tracing::warn!(shard = %self.dir.display(), %error, "closing segment file");
            }
        }
    }
}

struct ReadBudget {
    records: usize,
    bytes: usize,
}

impl ReadBudget {
    fn has_room(&self) -> bool {
        self.records > 0 && self.bytes > 0
    }
}

/// Moves records `>= from` and `< tip` of one batch into `out` within the budget; returns
/// the sequence number to continue from.
fn take_records(
    header: BatchHeader,
    bytes: &Bytes,
    from: u64,
    tip: u64,
    budget: &mut ReadBudget,
    out: &mut Vec<RecordOut>,
) -> u64 {
    let mut next = from;
    for span in Records::new(header, bytes).flatten() {
        if span.seq < from {
            continue;
        }
        if span.seq >= tip || !budget.has_room() {
            break;
        }
        let size = (span.key.1 - span.key.0) + (span.data.1 - span.data.0);
        if size > budget.bytes && !out.is_empty() {
            budget.bytes = 0;
            break;
        }
        out.push(span.to_record(bytes));
        budget.records -= 1;
        budget.bytes = budget.bytes.saturating_sub(size);
        next = span.seq + 1;
    }
    next
}

/// Reads whole batches from `segment` starting at byte `offset`, about `want` bytes (more
/// when the first batch is larger). Each batch is verified.
async fn read_batches(
    segment: &SegmentRef,
    offset: u64,
    want: usize,
) -> Result<Vec<(BatchHeader, Bytes)>, ReadError> {
    let available = segment.end.saturating_sub(offset);
    let mut size = (want as u64).min(available) as usize;
    let mut out = Vec::new();
    if size == 0 {
        return Ok(out);
    }
    let chunk = loop {
        let read = segment
            .file
            .read_at(offset, size)
            .await
            .map_err(io_err("read", &segment.path))?;
        let chunk = Bytes::copy_from_slice(&read);
        // A first batch larger than the chunk: read again, exactly as long as it is.
        match batch::BatchHeader::decode(&chunk) {
            Ok(header) if header.length as usize > chunk.len() => {
                let needed = u64::from(header.length).min(available) as usize;
                if needed <= size {
                    break chunk;
                }
                size = needed;
            }
            _ => break chunk,
        }
    };
    let mut position = 0usize;
    while position < chunk.len() {
        let rest = &chunk[position..];
        if rest.len() < batch::HEADER_BYTES && !out.is_empty() {
            break;
        }
        let header = match batch::verify(rest) {
            Ok(header) => header,
            Err(batch::DecodeError::Truncated { .. }) if !out.is_empty() => break,
            Err(reason) => {
                return Err(ReadError::Corrupt {
                    path: segment.path.clone(),
                    position: offset + position as u64,
                    reason,
                });
            }
        };
        let end = position + header.length as usize;
        out.push((header, chunk.slice(position..end)));
        position = end;
    }
    Ok(out)
}

/// Smallest step by which an active segment's allocation grows.
const ALLOCATION_STEP_MIN_BYTES: u64 = 1024 * 1024;
/// Largest step by which an active segment's allocation grows.
const ALLOCATION_STEP_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes per write request when a commit writes a long run: large enough for sequential
/// bandwidth, small enough that several are in flight at once and the device works on them
/// in parallel (as `fio --iodepth` would).
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(files::BLOCK_BYTES as usize));

/// Writes one run of batches to a segment at its durable end, rewriting the partial last
/// block in front of them (O_DIRECT writes whole blocks), in chunks issued together.
/// Returns the new partial block.
async fn write_run(
    file: &DmaFile,
    path: &Path,
    bytes: u64,
    block_tail: &[u8],
    run: &[Pending],
) -> Result<Vec<u8>, IoError> {
    debug_assert_eq!(align_down(bytes) + block_tail.len() as u64, bytes);
    let run_bytes: usize = run.iter().map(|p| p.bytes.len()).sum();
    let total = block_tail.len() + run_bytes;
    let padded = align_up(total as u64) as usize;
    let mut sources = std::iter::once(block_tail)
        .chain(run.iter().map(|p| p.bytes.as_ref()))
        .filter(|s| !s.is_empty());
    let mut source: &[u8] = sources.next().unwrap_or(&[]);
    let mut new_tail = Vec::new();
    let mut writes = Vec::new();
    let mut offset = 0usize;
    while offset < padded {
        let length = (padded - offset).min(WRITE_CHUNK_BYTES);
        let mut buffer = file.alloc_dma_buffer(length);
        let target = buffer.as_bytes_mut();
        let mut at = 0;
        while at < length && !source.is_empty() {
            let n = source.len().min(length - at);
            target[at..at + n].copy_from_slice(&source[..n]);
            at += n;
            source = &source[n..];
            if source.is_empty() {
                source = sources.next().unwrap_or(&[]);
            }
        }
        target[at..].fill(0);
        if offset + length >= total {
            let tail_start = align_down(total as u64) as usize - offset;
            new_tail = target[tail_start..total - offset].to_vec();
        }
        let position = align_down(bytes) + offset as u64;
        writes.push(async move {
            let written = file
                .write_at(buffer, position)
                .await
                .map_err(io_err("write", path))?;
            if written == length {
                Ok(())
            } else {
                let message = format!("short write at {position}: {written} of {length} bytes");
                Err(IoError::new("write", path, message))
            }
        });
        offset += length;
    }
    for result in futures::future::join_all(writes).await {
        result?;
    }
    Ok(new_tail)
}

impl State {
    fn trim_horizon(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.first_seq, |s| s.first_seq)
    }

    /// The segment holding `seq` and the index position to start reading it from.
    fn segment_for_seq(&self, seq: u64) -> Option<SegmentHit> {
        if seq >= self.active.first_seq {
            let active = &self.active;
            return Some(SegmentHit {
                first_seq: active.first_seq,
                position: active.index.position_for_seq(seq),
                record_bytes_mean: mean(active.bytes, self.durable_next_seq - active.first_seq),
            });
        }
        let after = self.sealed.partition_point(|s| s.first_seq <= seq);
        let sealed = self.sealed.get(after.checked_sub(1)?)?;
        let records = sealed.summary.next_seq - sealed.first_seq;
        Some(SegmentHit {
            first_seq: sealed.first_seq,
            position: sealed.index.position_for_seq(seq),
            record_bytes_mean: mean(u64::from(sealed.summary.bytes), records),
        })
    }

    /// The first segment with a record that arrived at or after `at_us`, and the index
    /// position to start reading it from.
    fn segment_for_arrival(&self, at_us: u64) -> Option<(u64, u32)> {
        for sealed in &self.sealed {
            if sealed.summary.arrival_last_us >= at_us {
                return Some((sealed.first_seq, sealed.index.position_for_arrival(at_us)));
            }
        }
        let active = &self.active;
        (active.bytes > 0 && active.arrival_last_us >= at_us)
            .then(|| (active.first_seq, active.index.position_for_arrival(at_us)))
    }
}

/// Where a read finds a sequence number on disk.
struct SegmentHit {
    first_seq: u64,
    /// Byte position of the index entry at or before the sequence number.
    position: u32,
    /// Mean bytes a record takes in this segment, headers included.
    record_bytes_mean: u64,
}

fn mean(bytes: u64, records: u64) -> u64 {
    bytes.checked_div(records).unwrap_or(0).max(1)
}

impl Active {
    fn empty(first_seq: u64, file: Rc<DmaFile>, interval: u32) -> Active {
        Active {
            first_seq,
            file,
            bytes: 0,
            block_tail: Vec::new(),
            allocated: 0,
            index: SparseIndex::new(interval),
            arrival_last_us: 0,
        }
    }
}

impl TailCache {
    fn push(&mut self, pending: Pending, budget: usize) {
        self.bytes += pending.bytes.len();
        self.batches.push_back(CachedBatch {
            first_seq: pending.first_seq,
            next_seq: pending.next_seq,
            arrival_last_us: pending.arrival_last_us,
            bytes: pending.bytes,
        });
        while self.bytes > budget {
            match self.batches.pop_front() {
                Some(evicted) => self.bytes -= evicted.bytes.len(),
                None => break,
            }
        }
    }

    fn trim_before(&mut self, seq: u64) {
        while self.batches.front().is_some_and(|b| b.next_seq <= seq) {
            if let Some(evicted) = self.batches.pop_front() {
                self.bytes -= evicted.bytes.len();
            }
        }
    }

    /// Serves a read from memory when the cache holds `seq`; returns where to continue.
    fn read(
        &self,
        seq: u64,
        tip: u64,
        budget: &mut ReadBudget,
        out: &mut Vec<RecordOut>,
    ) -> Option<u64> {
        let front = self.batches.front()?;
        if seq < front.first_seq {
            return None;
        }
        let start = self.batches.partition_point(|b| b.next_seq <= seq);
        let mut next = seq;
        for cached in self.batches.range(start..) {
            if !budget.has_room() || next >= tip {
                break;
            }
            // Our own encoded batch: the header decodes (checked when it was written).
            let Ok(header) = BatchHeader::decode(&cached.bytes) else {
                break;
            };
            next = take_records(header, &cached.bytes, next, tip, budget, out);
        }
        Some(next)
    }

    /// The first cached record that arrived at or after `at_us`, when the cache can tell
    /// (its oldest batch started before `at_us`).
    fn seq_for_arrival(&self, at_us: u64) -> Option<u64> {
        let front = self.batches.front()?;
        let header = BatchHeader::decode(&front.bytes).ok()?;
        if header.arrival_first_us >= at_us {
            return None;
        }
        let start = self.batches.partition_point(|b| b.arrival_last_us < at_us);
        let cached = self.batches.get(start)?;
        let header = BatchHeader::decode(&cached.bytes).ok()?;
        Records::new(header, &cached.bytes)
            .flatten()
            .find(|span| span.arrival_us >= at_us)
            .map(|span| span.seq)
    }
}

fn check_config(config: &LogConfig) -> Result<(), OpenError> {
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&config.segment_bytes) {
        return Err(OpenError::Config(format!(
            "segment_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
            config.segment_bytes
        )));
    }
    if config.index_interval_bytes == 0 {
        return Err(OpenError::Config(
            "index_interval_bytes must be above 0".into(),
        ));
    }
    let retention = crate::limits::RETENTION_HOURS_MIN..=crate::limits::RETENTION_HOURS_MAX;
    if !retention.contains(&config.retention_hours) {
        return Err(OpenError::Config(format!(
            "retention_hours {} is outside {}..={}",
            config.retention_hours,
            retention.start(),
            retention.end()
        )));
    }
    Ok(())
}

fn check_gap(dir: &Path, expected: Option<u64>, found: u64) -> Result<(), OpenError> {
    match expected {
        Some(expected) if expected != found => Err(OpenError::Gap {
            path: dir.join(segment::log_file_name(found)),
            expected,
            found,
        }),
        _ => Ok(()),
    }
}

/// First sequence numbers of the segment files in `dir`, sorted. Leftover temporary files
/// from an interrupted atomic write are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>, IoError> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_seq) = segment::parse_log_file_name(name) {
            firsts.push(first_seq);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Loads a sealed segment from its index file, or rebuilds the index by scanning it.
async fn load_sealed(dir: &Path, first_seq: u64, config: &LogConfig) -> Result<Sealed, OpenError> {
    let log_path = dir.join(segment::log_file_name(first_seq));
    let idx_path = dir.join(segment::index_file_name(first_seq));
    let file_bytes = std::fs::metadata(&log_path)
        .map_err(io_err("stat", &log_path))?
        .len();
    if let Ok(raw) = files::read_whole(&idx_path).await
        && let Some((index, summary)) = SparseIndex::decode(&raw, config.index_interval_bytes)
        && u64::from(summary.bytes) <= file_bytes
        && summary.next_seq > first_seq
    {
        return Ok(Sealed {
            first_seq,
            summary,
            index,
            file: None,
        });
    }
    tracing::info!(path = %log_path.display(), "segment index missing or damaged; rebuilding");
    let bytes = files::read_whole(&log_path).await?;
    let scan = segment::scan(
        &bytes,
        first_seq,
        ScanMode::Sealed,
        config.index_interval_bytes,
    )
    .map_err(|corruption| OpenError::Corruption {
        path: log_path.clone(),
        corruption,
    })?;
    let summary = SegmentSummary {
        bytes: scan.valid_bytes as u32,
        next_seq: scan.next_seq,
        arrival_last_us: scan.arrival_last_us,
    };
    if let Err(error) = files::write_atomic(&idx_path, &scan.index.encode(&summary)).await {
        tracing::warn!(%error, "could not write rebuilt segment index");
    }
    Ok(Sealed {
        first_seq,
        summary,
        index: scan.index,
        file: None,
    })
}

/// Opens the last segment (creating the first one in an empty log), checks every batch,
/// and cuts a torn tail off.
async fn recover_last(
    dir: &Path,
    first_seq: u64,
    create: bool,
    config: &LogConfig,
) -> Result<(Active, segment::Scan), OpenError> {
    let path = dir.join(segment::log_file_name(first_seq));
    let file = if create {
        let file = files::create_rw(&path).await?;
        files::sync_dir(dir).await?;
        file
    } else {
        files::open_rw(&path).await?
    };
    tracing::debug!(path = %path.display(), "recovery: reading the last segment");
    let bytes = files::read_whole_file(&file, &path).await?;
    tracing::debug!(path = %path.display(), bytes = bytes.len(), "recovery: read");
    let scan = segment::scan(
        &bytes,
        first_seq,
        ScanMode::Last,
        config.index_interval_bytes,
    )
    .map_err(|corruption| OpenError::Corruption {
        path: path.clone(),
        corruption,
    })?;
    if let Some(torn) = &scan.torn {
        tracing::warn!(
            path = %path.display(),
            position = torn.position,
            dropped_bytes = torn.dropped_bytes,
            reason = %torn.reason,
            "cut a torn tail off the last segment (unacknowledged writes of an interrupted commit)"
        );
    }
    if bytes.len() as u64 != scan.valid_bytes {
        files::truncate(&file, &path, scan.valid_bytes)?;
        tracing::debug!(path = %path.display(), "recovery: truncated; syncing");
        file.fdatasync().await.map_err(io_err("fdatasync", &path))?;
        tracing::debug!(path = %path.display(), "recovery: synced");
    }
    let valid = scan.valid_bytes as usize;
    let block_start = align_down(scan.valid_bytes) as usize;
    let active = Active {
        first_seq,
        file: Rc::new(file),
        bytes: scan.valid_bytes,
        block_tail: bytes[block_start..valid].to_vec(),
        allocated: scan.valid_bytes,
        index: scan.index.clone(),
        arrival_last_us: scan.arrival_last_us,
    };
    Ok((active, scan))
}
