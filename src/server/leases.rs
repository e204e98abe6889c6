//! The lease coordinator of consumer applications (the KCL model, kept by spate itself):
//! for each (stream, application) one lease per shard, with its owner, a counter bumped
//! every time it changes hands, and the application's checkpoint in that shard. Lives on
//! the controller (core 0); other cores forward lease requests to it.
//!
//! Unlike the KCL, where workers race for leases in a shared table, assignment is done
//! here, as a Kafka group coordinator does: each heartbeat refreshes its worker and
//! rebalances the group at once (free leases to the least-loaded workers, one lease at a
//! time revoked from the busiest when counts differ by more than one), so a group evens
//! out in one heartbeat interval instead of many lease-taking rounds. Safety rules:
//!
//! * A revoked lease goes to its next owner only after the old owner's heartbeat says it
//!   has stopped that shard, or once the old owner has expired. Workers stop every
//!   processor by themselves when they have not heartbeated for the lease timeout,
//!   timed from before their last heartbeat was sent, so an expired worker has stopped
//!   before the coordinator frees its leases.
//! * A checkpoint names the lease counter it was made under; one from an owner that lost
//!   the lease is refused (`LeaseLost`).
//! * A shard is leased only once every parent still in the catalog is checkpointed at its
//!   end, so records of a partition key are processed in order across a reshard.
//!
//! Checkpoints are durable before they are acknowledged: written with the lease counters to
//! `leases.json` (write temp, fsync, rename); concurrent checkpoints share one write.
//! Owners and heartbeats are not persisted: after a restart every lease is free and the
//! workers' next heartbeats share them out again.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::catalog::StreamMeta;
use crate::log::files;
use crate::protocol::binary::{Checkpoint, LeaseInfo, LeaseRow, Status, WireError};

/// The file the checkpoints are kept in, inside the data folder.
pub const LEASES_FILE: &str = "leases.json";

/// Longest lease timeout a worker may ask for (our own bound).
pub const LEASE_TIMEOUT_MS_MAX: u32 = 600_000;

/// One application's leases as kept: shard → (counter, checkpoint).
type StoredShards = BTreeMap<u32, (u64, Checkpoint)>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// stream id → application → shard → (counter, checkpoint).
    groups: BTreeMap<u64, BTreeMap<String, StoredShards>>,
}

#[derive(Debug, Default)]
struct Group {
    workers: HashMap<String, Worker>,
    leases: BTreeMap<u32, Lease>,
}

#[derive(Debug)]
struct Worker {
    last_seen_us: u64,
    timeout_us: u64,
}

#[derive(Debug, Default)]
struct Lease {
    owner: Option<String>,
    /// Set while the owner is asked to give the lease up.
    revoking: bool,
    /// Whether the owner has been told it owns the lease.
    announced: bool,
    counter: u64,
    checkpoint: Checkpoint,
}

/// The coordinator; one on the controller.
pub struct Leases {
    groups: RefCell<BTreeMap<(u64, String), Group>>,
    /// Bumped by every checkpoint; `written` is the version last made durable.
    version: Cell<u64>,
    written: Cell<u64>,
    turn: glommio::sync::Semaphore,
}

impl Leases {
    /// Loads the checkpoints kept in `data_dir` (none when the file is missing).
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or parsed.
    pub async fn load(data_dir: &Path) -> Result<Leases, String> {
        let path = data_dir.join(LEASES_FILE);
        let stored: Stored = if path.exists() {
            let bytes = files::read_whole(&path).await.map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            Stored::default()
        };
        let mut groups = BTreeMap::new();
        for (stream_id, apps) in stored.groups {
            for (app, shards) in apps {
                let mut group = Group::default();
                for (shard, (counter, checkpoint)) in shards {
                    let lease = Lease {
                        counter,
                        checkpoint,
                        ..Lease::default()
                    };
                    group.leases.insert(shard, lease);
                }
                groups.insert((stream_id, app), group);
            }
        }
        Ok(Leases::with_groups(groups))
    }

    fn with_groups(groups: BTreeMap<(u64, String), Group>) -> Leases {
        Leases {
            groups: RefCell::new(groups),
            version: Cell::new(0),
            written: Cell::new(0),
            turn: glommio::sync::Semaphore::new(1),
        }
    }

    /// A worker's heartbeat: refreshes it, takes back what it no longer holds, rebalances
    /// the group and answers the leases the worker owns now.
    ///
    /// # Errors
    /// `InvalidArgument` for a lease timeout of 0 or above the bound.
    pub fn heartbeat(
        &self,
        stream: &StreamMeta,
        app: &str,
        worker: &str,
        timeout_ms: u32,
        held: &[u32],
        now_us: u64,
    ) -> Result<Vec<LeaseInfo>, WireError> {
        if timeout_ms == 0 || timeout_ms > LEASE_TIMEOUT_MS_MAX {
            return Err(WireError::new(
                Status::InvalidArgument,
                format!("lease timeout {timeout_ms} ms is outside 1..={LEASE_TIMEOUT_MS_MAX}"),
            ));
        }
        let mut groups = self.groups.borrow_mut();
        let group = groups.entry((stream.id, app.to_string())).or_default();
        group.workers.insert(
            worker.to_string(),
            Worker {
                last_seen_us: now_us,
                timeout_us: u64::from(timeout_ms) * 1000,
            },
        );
        expire_workers(group, now_us);
        release_unheld(group, worker, held);
        sync_shards(group, stream);
        rebalance(group, stream);
        let mut answer = Vec::new();
        for (&shard, lease) in group.leases.iter_mut() {
            if lease.owner.as_deref() == Some(worker) && !lease.revoking {
                lease.announced = true;
                answer.push(LeaseInfo {
                    shard,
                    counter: lease.counter,
                    checkpoint: lease.checkpoint,
                    end_seq: stream
                        .shard(shard)
                        .and_then(|s| s.closed)
                        .map(|end| end.end_seq),
                });
            }
        }
        Ok(answer)
    }

    /// Records a checkpoint made under lease `counter`, durably.
    ///
    /// # Errors
    /// `LeaseLost` when the worker does not hold the lease under that counter; storage
    /// errors from writing the file.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        data_dir: &Path,
        stream_id: u64,
        app: &str,
        worker: &str,
        shard: u32,
        counter: u64,
        checkpoint: Checkpoint,
    ) -> Result<(), WireError> {
        {
            let mut groups = self.groups.borrow_mut();
            let lease = groups
                .get_mut(&(stream_id, app.to_string()))
                .and_then(|g| g.leases.get_mut(&shard))
                .filter(|l| l.owner.as_deref() == Some(worker) && l.counter == counter)
                .ok_or_else(|| {
                    WireError::new(
                        Status::LeaseLost,
                        format!(
                            "worker {worker} of application {app} does not hold the lease of {} \
                             under counter {counter}",
                            crate::catalog::shard_id(shard)
                        ),
                    )
                })?;
            lease.checkpoint = checkpoint;
        }
        self.version.set(self.version.get() + 1);
        self.persist(data_dir, self.version.get()).await
    }

    /// Writes the checkpoints if `version` is not durable yet; one write covers every
    /// change made before it started.
    async fn persist(&self, data_dir: &Path, version: u64) -> Result<(), WireError> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|e| WireError::new(Status::Internal, e.to_string()))?;
        if self.written.get() >= version {
            return Ok(());
        }
        let covered = self.version.get();
        let stored = self.stored();
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| WireError::new(Status::Internal, e.to_string()))?;
        files::write_atomic(&data_dir.join(LEASES_FILE), &bytes)
            .await
            .map_err(|e| WireError::new(Status::StorageFailed, e.to_string()))?;
        self.written.set(covered);
        Ok(())
    }

    fn stored(&self) -> Stored {
        let mut stored = Stored::default();
        for ((stream_id, app), group) in self.groups.borrow().iter() {
            let shards = group
                .leases
                .iter()
                .map(|(&shard, l)| (shard, (l.counter, l.checkpoint)))
                .collect();
            stored
                .groups
                .entry(*stream_id)
                .or_default()
                .insert(app.clone(), shards);
        }
        stored
    }

    /// Every lease of `stream` (of one application, or of all when `app` is empty).
    pub fn list(&self, stream: &StreamMeta, app: &str) -> Vec<LeaseRow> {
        let groups = self.groups.borrow();
        groups
            .iter()
            .filter(|((id, name), _)| *id == stream.id && (app.is_empty() || name == app))
            .flat_map(|((_, name), group)| {
                group.leases.iter().map(move |(&shard, l)| LeaseRow {
                    app: name.clone(),
                    shard,
                    owner: l.owner.clone().unwrap_or_default(),
                    counter: l.counter,
                    checkpoint: l.checkpoint,
                })
            })
            .collect()
    }
}

/// Leases `worker` owns but says it no longer runs become free: one it was asked to give
/// up, or one it was told it owns and has stopped (finished, or failed).
fn release_unheld(group: &mut Group, worker: &str, held: &[u32]) {
    for (shard, lease) in group.leases.iter_mut() {
        let told = lease.revoking || lease.announced;
        if lease.owner.as_deref() == Some(worker) && told && !held.contains(shard) {
            lease.owner = None;
            lease.revoking = false;
            lease.announced = false;
        }
    }
}

/// Workers not heard from within their timeout are gone; their leases are free.
fn expire_workers(group: &mut Group, now_us: u64) {
    let gone: Vec<String> = group
        .workers
        .iter()
        .filter(|(_, w)| w.last_seen_us.saturating_add(w.timeout_us) < now_us)
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        group.workers.remove(&name);
        for lease in group.leases.values_mut() {
            if lease.owner.as_deref() == Some(name.as_str()) {
                lease.owner = None;
                lease.revoking = false;
                lease.announced = false;
            }
        }
    }
}

/// Adds a lease for every shard of the stream; forgets those of shards gone from it.
fn sync_shards(group: &mut Group, stream: &StreamMeta) {
    for shard in stream.all_shards() {
        group.leases.entry(shard.index).or_default();
    }
    group
        .leases
        .retain(|shard, _| stream.shard(*shard).is_some());
}

/// Whether a shard may be leased: not finished, and every parent still listed finished.
fn eligible(group: &Group, stream: &StreamMeta, shard: u32) -> bool {
    let finished = |index: u32| {
        group
            .leases
            .get(&index)
            .is_some_and(|l| l.checkpoint == Checkpoint::ShardEnd)
    };
    let Some(meta) = stream.shard(shard) else {
        return false;
    };
    !finished(shard)
        && meta
            .parent
            .iter()
            .chain(&meta.adjacent_parent)
            .all(|p| stream.shard(*p).is_none() || finished(*p))
}

/// Gives free eligible leases to the least-loaded workers, then asks every worker above
/// its fair share to give up the excess at once, so a group evens out within about two
/// heartbeats whatever its size (the KCL moves one lease per worker per lease-taking
/// round).
fn rebalance(group: &mut Group, stream: &StreamMeta) {
    if group.workers.is_empty() {
        return;
    }
    let shards: Vec<u32> = group.leases.keys().copied().collect();
    let open: Vec<u32> = shards
        .into_iter()
        .filter(|&s| eligible(group, stream, s))
        .collect();
    // Leases being given up no longer count for their owner.
    let mut load: BTreeMap<String, usize> = group.workers.keys().map(|w| (w.clone(), 0)).collect();
    for &shard in &open {
        if let Some(lease) = group.leases.get(&shard)
            && !lease.revoking
            && let Some(owner) = &lease.owner
            && let Some(count) = load.get_mut(owner)
        {
            *count += 1;
        }
    }
    for &shard in &open {
        let Some(lease) = group.leases.get_mut(&shard) else {
            continue;
        };
        if lease.owner.is_some() {
            continue;
        }
        let Some((worker, count)) = load
            .iter_mut()
            .min_by_key(|(name, c)| (**c, (*name).clone()))
        else {
            break;
        };
        lease.owner = Some(worker.clone());
        lease.counter += 1;
        lease.announced = false;
        *count += 1;
    }
    // Fair shares: the busiest workers keep the remainder.
    let workers = load.len();
    let (base, extra) = (open.len() / workers, open.len() % workers);
    let mut ranked: Vec<(String, usize)> = load.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (rank, (worker, count)) in ranked.iter().enumerate() {
        let share = base + usize::from(rank < extra);
        let mut excess = count.saturating_sub(share);
        for &shard in &open {
            if excess == 0 {
                break;
            }
            if let Some(lease) = group.leases.get_mut(&shard)
                && lease.owner.as_deref() == Some(worker.as_str())
                && !lease.revoking
            {
                lease.revoking = true;
                excess -= 1;
            }
        }
    }
}

/// Prometheus text for every consumer application: records behind per shard
/// (`spate_consumer_lag_records`) and records checkpointed in all (a counter whose rate is
/// the application's throughput, `spate_consumer_checkpointed_records_total`). Asks the
/// controller for the leases and each owner core for its shards' tips.
pub async fn render_metrics(core: &std::rc::Rc<crate::server::core::Core>) -> String {
    use crate::server::core::{CoreReply, CoreRequest};
    use std::fmt::Write as _;
    let snapshot = core.snapshot();
    let mut lag = String::new();
    let mut done: BTreeMap<(String, String), u64> = BTreeMap::new();
    for stream in snapshot.streams.values() {
        let request = CoreRequest::Lease(crate::protocol::binary::Request::ListLeases {
            stream: stream.name.clone(),
            app: String::new(),
        });
        let rows = match core.call(0, request).await {
            CoreReply::Control(Ok(crate::protocol::binary::Response::LeaseRows(rows))) => rows,
            _ => continue,
        };
        if rows.is_empty() {
            continue;
        }
        let tips = crate::server::requests::tips(core, stream).await;
        for row in rows {
            let (trim, tip) = tips.get(&row.shard).copied().unwrap_or((0, 0));
            let next = match row.checkpoint {
                Checkpoint::None => trim,
                Checkpoint::After(seq) => seq + 1,
                Checkpoint::ShardEnd => tip,
            };
            let _ = writeln!(
                lag,
                "spate_consumer_lag_records{{stream=\"{}\",application=\"{}\",shard=\"{}\"}} {}",
                stream.name,
                row.app,
                crate::catalog::shard_id(row.shard),
                tip.saturating_sub(next)
            );
            *done.entry((stream.name.clone(), row.app)).or_default() += next.min(tip);
        }
    }
    if done.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# HELP spate_consumer_lag_records Records after an application's checkpoint in a shard.\n\
         # TYPE spate_consumer_lag_records gauge\n",
    );
    out.push_str(&lag);
    out.push_str(
        "# HELP spate_consumer_checkpointed_records_total Records an application has checkpointed, over its shards.\n\
         # TYPE spate_consumer_checkpointed_records_total counter\n",
    );
    for ((stream, app), records) in done {
        let _ = writeln!(
            out,
            "spate_consumer_checkpointed_records_total{{stream=\"{stream}\",application=\"{app}\"}} {records}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn stream(shards: u32) -> StreamMeta {
        let mut catalog = Catalog::default();
        catalog
            .create_stream("s", shards, 2, 24, 0)
            .expect("create");
        catalog.stream("s").expect("stream").clone()
    }

    fn owned(
        leases: &Leases,
        stream: &StreamMeta,
        worker: &str,
        held: &[u32],
        now: u64,
    ) -> Vec<u32> {
        leases
            .heartbeat(stream, "app", worker, 1000, held, now)
            .expect("heartbeat")
            .iter()
            .map(|l| l.shard)
            .collect()
    }

    #[test]
    fn leases_spread_over_workers_and_move_when_one_expires() {
        let s = stream(8);
        let leases = Leases::with_groups(BTreeMap::new());
        let a = owned(&leases, &s, "a", &[], 0);
        assert_eq!(a.len(), 8, "a lone worker takes every shard");
        // b joins: a is asked to give leases up, one per heartbeat, until even.
        let mut held_a = a.clone();
        let mut held_b = Vec::new();
        for step in 1..20 {
            held_b = owned(&leases, &s, "b", &held_b, step * 10);
            held_a = owned(&leases, &s, "a", &held_a, step * 10 + 5);
        }
        assert_eq!((held_a.len(), held_b.len()), (4, 4));
        assert!(held_a.iter().all(|s| !held_b.contains(s)));
        // a stops heartbeating; after its timeout b gets everything.
        let all = owned(&leases, &s, "b", &held_b, 1_100_000);
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn children_wait_for_their_parents_end_and_stale_checkpoints_are_refused() {
        let mut catalog = Catalog::default();
        catalog.create_stream("s", 1, 2, 24, 0).expect("create");
        let stream_mut = catalog.stream_mut("s").expect("stream");
        let step = stream_mut.check_split(0, 1 << 127).expect("split");
        stream_mut
            .apply_steps(&[step], &BTreeMap::from([(0, 5)]), &mut [1, 0], 1)
            .expect("apply");
        let s = catalog.stream("s").expect("stream").clone();
        let dir = tempfile::tempdir().expect("dir");
        crate::runtime::run_on_executor("leases", move || async move {
            let leases = Leases::with_groups(BTreeMap::new());
            let first = leases.heartbeat(&s, "app", "w", 1000, &[], 0).expect("hb");
            assert_eq!(first.iter().map(|l| l.shard).collect::<Vec<_>>(), vec![0]);
            assert_eq!(first[0].end_seq, Some(5));
            let counter = first[0].counter;
            let stale = leases
                .checkpoint(
                    dir.path(),
                    s.id,
                    "app",
                    "w",
                    0,
                    counter + 1,
                    Checkpoint::ShardEnd,
                )
                .await;
            assert_eq!(stale.map_err(|e| e.status), Err(Status::LeaseLost));
            leases
                .checkpoint(
                    dir.path(),
                    s.id,
                    "app",
                    "w",
                    0,
                    counter,
                    Checkpoint::ShardEnd,
                )
                .await
                .expect("checkpoint");
            let next = leases.heartbeat(&s, "app", "w", 1000, &[], 10).expect("hb");
            let mut shards: Vec<u32> = next.iter().map(|l| l.shard).collect();
            shards.sort_unstable();
            assert_eq!(shards, vec![1, 2], "children start once the parent ended");
            let reloaded = Leases::load(dir.path()).await.expect("load");
            let rows = reloaded.list(&s, "app");
            assert_eq!(rows.len(), 3, "the file holds every lease of the group");
            assert_eq!(rows[0].checkpoint, Checkpoint::ShardEnd);
        })
        .expect("executor");
    }
}
