//! The controller: the one place the catalog changes. Lives on core 0; other cores send it
//! catalog changes over the mesh. A change is applied to a copy, persisted atomically, then
//! sent to every core as a snapshot, and answered once every core has adopted it (so a
//! stream is writable on every core when its create returns). Changes run one at a time.

use std::cell::RefCell;
use std::rc::Rc;

use futures::future::join_all;
use glommio::sync::Semaphore;

use std::collections::BTreeMap;

use crate::catalog::{
    Catalog, CatalogError, ConsumerMeta, ConsumerStatus, Reshard, ReshardStep, ShardMeta,
    StreamMeta, StreamStatus,
};
use crate::limits::{
    CONSUMERS_CREATING_MAX, SCALINGS_PER_DAY_MAX, SHARDS_MAX, STREAM_CONSUMERS_MAX,
    STREAM_SHARDS_MAX,
};
use crate::protocol::binary::{Request, Response, Status, WireError};
use crate::server::core::{Core, CoreReply, CoreRequest};

/// A catalog change.
pub enum ControlRequest {
    CreateStream {
        name: String,
        shard_count: u32,
        tags: Vec<(String, String)>,
        on_demand: bool,
    },
    /// UpdateStreamMode: ON_DEMAND streams split their hot shards by themselves.
    SetMode {
        name: String,
        on_demand: bool,
    },
    DeleteStream {
        name: String,
    },
    SetRetention {
        name: String,
        hours: u32,
    },
    AddTags {
        name: String,
        tags: Vec<(String, String)>,
    },
    RemoveTags {
        name: String,
        keys: Vec<String>,
    },
    /// Ends a CREATING period: the stream becomes ACTIVE.
    FinishCreate {
        name: String,
    },
    /// Ends a DELETING period: the stream and its files go.
    FinishDelete {
        name: String,
    },
    /// Splits, merges, rescales or moves shards. The stream is UPDATING until it is done.
    Reshard {
        name: String,
        change: Reshard,
    },
    /// Carries out a stream's pending reshard (after its UPDATING period, or after a
    /// restart that interrupted it).
    FinishReshard {
        name: String,
    },
    /// Forgets closed shards whose data is past retention and deletes their files.
    ExpireClosed,
    /// RegisterStreamConsumer.
    RegisterConsumer {
        name: String,
        consumer: String,
    },
    /// DeregisterStreamConsumer.
    DeregisterConsumer {
        name: String,
        consumer: String,
    },
    /// Ends a consumer's CREATING (ACTIVE) or DELETING (gone) period.
    FinishConsumer {
        name: String,
        consumer: String,
    },
}

pub struct Controller {
    catalog: RefCell<Catalog>,
    /// Leases and checkpoints of consumer applications.
    pub leases: crate::server::leases::Leases,
    /// Serialises changes across their awaits (persist, broadcast).
    turn: Semaphore,
}

impl Controller {
    pub fn new(catalog: Catalog, leases: crate::server::leases::Leases) -> Controller {
        Controller {
            catalog: RefCell::new(catalog),
            leases,
            turn: Semaphore::new(1),
        }
    }

    /// Sends the current catalog to every core; at start-up, this opens every shard.
    ///
    /// # Errors
    /// The first core's failure to adopt it (a shard that would not open).
    pub async fn publish(&self, core: &Rc<Core>, deleted: Vec<StreamMeta>) -> Result<(), String> {
        let all: Vec<usize> = (0..core.cores).collect();
        self.publish_to(core, &all, deleted).await
    }

    /// Sends the current catalog to `first` and, once they have adopted it, to every other
    /// core. A reshard names the cores that open new shards first, so no core routes a
    /// record to a shard whose owner has not opened it yet.
    async fn publish_first(&self, core: &Rc<Core>, first: &[usize]) -> Result<(), String> {
        let rest: Vec<usize> = (0..core.cores).filter(|c| !first.contains(c)).collect();
        self.publish_to(core, first, Vec::new()).await?;
        self.publish_to(core, &rest, Vec::new()).await
    }

    async fn publish_to(
        &self,
        core: &Rc<Core>,
        targets: &[usize],
        deleted: Vec<StreamMeta>,
    ) -> Result<(), String> {
        let catalog = self.catalog.borrow().clone();
        let calls = targets.iter().map(|&target| {
            let request = CoreRequest::Snapshot {
                catalog: catalog.clone(),
                deleted: deleted.clone(),
            };
            core.call(target, request)
        });
        for reply in join_all(calls).await {
            tracing::debug!("a core adopted the catalog");
            match reply {
                CoreReply::Applied(Ok(())) => {}
                CoreReply::Applied(Err(message)) => return Err(message),
                _ => return Err("a core did not acknowledge the catalog".into()),
            }
        }
        Ok(())
    }

    /// Applies one change.
    ///
    /// # Errors
    /// [`WireError`] with the status a client can act on.
    pub async fn handle(
        &self,
        core: &Rc<Core>,
        request: ControlRequest,
    ) -> Result<Response, WireError> {
        // The semaphore is never closed, so acquiring cannot fail.
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|e| WireError::new(Status::Internal, e.to_string()))?;
        let data_dir = core.data_dir();
        let transition_ms = core.config.kinesis.stream_transition_ms;
        let request = match request {
            ControlRequest::Reshard { name, change } => {
                return self.accept_reshard(core, &name, change).await;
            }
            ControlRequest::FinishReshard { name } => {
                return self.finish_reshard(core, &name).await;
            }
            ControlRequest::ExpireClosed => return self.expire_closed(core).await,
            other => other,
        };
        let mut next = self.catalog.borrow().clone();
        let deleted = match request {
            ControlRequest::CreateStream {
                name,
                shard_count,
                tags,
                on_demand,
            } => {
                let retention = core.config.log.retention_hours;
                next.create_stream(&name, shard_count, core.cores, retention, now_us())
                    .map_err(catalog_error)?;
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                stream.tags.extend(tags);
                stream.on_demand = on_demand;
                if transition_ms > 0 {
                    stream.status = StreamStatus::Creating;
                    later(core, transition_ms, ControlRequest::FinishCreate { name });
                }
                Vec::new()
            }
            ControlRequest::DeleteStream { name } if transition_ms > 0 => {
                next.stream_mut(&name).map_err(catalog_error)?.status = StreamStatus::Deleting;
                later(core, transition_ms, ControlRequest::FinishDelete { name });
                Vec::new()
            }
            ControlRequest::DeleteStream { name } | ControlRequest::FinishDelete { name } => {
                vec![next.delete_stream(&name).map_err(catalog_error)?]
            }
            ControlRequest::FinishCreate { name } => {
                next.stream_mut(&name).map_err(catalog_error)?.status = StreamStatus::Active;
                Vec::new()
            }
            ControlRequest::SetRetention { name, hours } => {
                next.stream_mut(&name)
                    .map_err(catalog_error)?
                    .retention_hours = hours;
                Vec::new()
            }
            ControlRequest::AddTags { name, tags } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                stream.tags.extend(tags);
                if stream.tags.len() > crate::limits::STREAM_TAGS_MAX {
                    return Err(WireError::new(
                        Status::LimitExceeded,
                        format!(
                            "a stream cannot have more than {} tags",
                            crate::limits::STREAM_TAGS_MAX
                        ),
                    ));
                }
                Vec::new()
            }
            ControlRequest::RemoveTags { name, keys } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                for key in keys {
                    stream.tags.remove(&key);
                }
                Vec::new()
            }
            ControlRequest::RegisterConsumer { name, consumer } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                if stream.consumers.contains_key(&consumer) {
                    return Err(WireError::new(
                        Status::ResourceInUse,
                        format!(
                            "Consumer {consumer} under stream {name} under account {} already exists.",
                            core.config.account_id
                        ),
                    ));
                }
                let creating = stream
                    .consumers
                    .values()
                    .filter(|c| c.status == ConsumerStatus::Creating)
                    .count();
                if creating >= CONSUMERS_CREATING_MAX {
                    return Err(WireError::new(
                        Status::ResourceLimit,
                        format!(
                            "Stream {name} already has {CONSUMERS_CREATING_MAX} consumers in CREATING, the most at once"
                        ),
                    ));
                }
                if stream.consumers.len() >= STREAM_CONSUMERS_MAX {
                    return Err(WireError::new(
                        Status::ResourceLimit,
                        format!(
                            "Stream {name} already has {STREAM_CONSUMERS_MAX} registered consumers, the most it may have"
                        ),
                    ));
                }
                let status = if transition_ms > 0 {
                    later(
                        core,
                        transition_ms,
                        ControlRequest::FinishConsumer {
                            name: name.clone(),
                            consumer: consumer.clone(),
                        },
                    );
                    ConsumerStatus::Creating
                } else {
                    ConsumerStatus::Active
                };
                let meta = ConsumerMeta {
                    name: consumer.clone(),
                    created_us: now_us(),
                    status,
                };
                stream.consumers.insert(consumer, meta);
                Vec::new()
            }
            ControlRequest::DeregisterConsumer { name, consumer } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                let Some(meta) = stream.consumers.get_mut(&consumer) else {
                    return Err(consumer_not_found(&name, &consumer));
                };
                if transition_ms > 0 {
                    meta.status = ConsumerStatus::Deleting;
                    later(
                        core,
                        transition_ms,
                        ControlRequest::FinishConsumer {
                            name: name.clone(),
                            consumer,
                        },
                    );
                } else {
                    stream.consumers.remove(&consumer);
                }
                Vec::new()
            }
            ControlRequest::FinishConsumer { name, consumer } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                match stream.consumers.get(&consumer).map(|c| c.status) {
                    Some(ConsumerStatus::Deleting) => {
                        stream.consumers.remove(&consumer);
                    }
                    Some(_) => {
                        if let Some(meta) = stream.consumers.get_mut(&consumer) {
                            meta.status = ConsumerStatus::Active;
                        }
                    }
                    None => {}
                }
                Vec::new()
            }
            ControlRequest::SetMode { name, on_demand } => {
                next.stream_mut(&name).map_err(catalog_error)?.on_demand = on_demand;
                Vec::new()
            }
            ControlRequest::Reshard { .. }
            | ControlRequest::FinishReshard { .. }
            | ControlRequest::ExpireClosed => Vec::new(),
        };
        next.persist(&data_dir).await.map_err(catalog_error)?;
        tracing::debug!(epoch = next.epoch, "catalog persisted; publishing it");
        *self.catalog.borrow_mut() = next;
        self.publish(core, deleted.clone())
            .await
            .map_err(|m| WireError::new(Status::StorageFailed, m))?;
        for stream in deleted {
            let dir = stream.dir(&data_dir);
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), %error, "could not remove a deleted stream's files");
            }
        }
        Ok(Response::Empty)
    }
}

impl Controller {
    /// Checks a reshard, marks the stream UPDATING with the change pending (persisted, so
    /// a restart finishes it), then carries it out at once or after the configured
    /// transition.
    async fn accept_reshard(
        &self,
        core: &Rc<Core>,
        name: &str,
        change: Reshard,
    ) -> Result<Response, WireError> {
        if change == Reshard::Rebalance {
            return self.rebalance(core).await;
        }
        let mut next = self.catalog.borrow().clone();
        let open_total: u32 = next.shards_per_core(core.cores).iter().sum();
        let stream = next.stream_mut(name).map_err(catalog_error)?;
        if stream.status != StreamStatus::Active {
            return Err(WireError::new(
                Status::ResourceInUse,
                format!(
                    "Stream {name} under account {} not ACTIVE, instead in state {}",
                    core.config.account_id,
                    stream.status.as_str()
                ),
            ));
        }
        check_reshard(stream, &change, open_total, core.cores, now_us())?;
        if let Reshard::Move { .. } = change {
            // A move is not a change Kinesis shows; it runs at once and leaves the stream
            // ACTIVE.
            drop(next);
            return self.run_reshard(core, name, change).await;
        }
        if let Reshard::Scale { .. } = change {
            stream.scalings_us.push(now_us());
        }
        stream.status = StreamStatus::Updating;
        stream.pending = Some(change);
        self.commit(core, next, &[]).await?;
        let transition_ms = core.config.kinesis.stream_transition_ms;
        if transition_ms > 0 {
            later(
                core,
                transition_ms,
                ControlRequest::FinishReshard {
                    name: name.to_string(),
                },
            );
            return Ok(Response::Empty);
        }
        self.finish_reshard(core, name).await
    }

    /// Carries out the stream's pending reshard and makes it ACTIVE again.
    async fn finish_reshard(&self, core: &Rc<Core>, name: &str) -> Result<Response, WireError> {
        let pending = self
            .catalog
            .borrow()
            .stream(name)
            .and_then(|s| s.pending.clone());
        let result = match pending {
            Some(change) => self.run_reshard(core, name, change).await,
            None => Ok(Response::Empty),
        };
        let mut next = self.catalog.borrow().clone();
        if let Ok(stream) = next.stream_mut(name) {
            stream.status = StreamStatus::Active;
            stream.pending = None;
            self.commit(core, next, &[]).await?;
        }
        result
    }

    /// Runs the rounds of a reshard: in each, the parents' owners fence them and report
    /// where they end, then one catalog change closes the parents and opens the children.
    async fn run_reshard(
        &self,
        core: &Rc<Core>,
        name: &str,
        change: Reshard,
    ) -> Result<Response, WireError> {
        if let Reshard::Move {
            shard,
            core: target,
        } = change
        {
            return self.move_shard(core, name, shard, target).await;
        }
        // Bounded: each scaling round splits or merges at least one shard, and a scaling
        // needs at most a split per target boundary and a merge per shard.
        for _round in 0..(4 * STREAM_SHARDS_MAX) {
            let current = self.catalog.borrow().clone();
            let Some(stream) = current.stream(name) else {
                return Err(catalog_error(CatalogError::StreamNotFound(name.into())));
            };
            let steps = match &change {
                Reshard::Split {
                    shard,
                    new_starting_hash,
                } => match stream.check_split(*shard, *new_starting_hash) {
                    Ok(step) => vec![step],
                    // Done before a restart interrupted the rest.
                    Err(CatalogError::ShardClosed(_)) => Vec::new(),
                    Err(error) => return Err(catalog_error(error)),
                },
                Reshard::Merge { shard, adjacent } => match stream.check_merge(*shard, *adjacent) {
                    Ok(step) => vec![step],
                    Err(CatalogError::ShardClosed(_)) => Vec::new(),
                    Err(error) => return Err(catalog_error(error)),
                },
                Reshard::Scale { target } => stream.next_scaling_round(*target),
                Reshard::Move { .. } | Reshard::Rebalance => Vec::new(),
            };
            if steps.is_empty() {
                return Ok(Response::Empty);
            }
            self.run_round(core, stream, &steps).await?;
            if !matches!(change, Reshard::Scale { .. }) {
                return Ok(Response::Empty);
            }
        }
        Err(WireError::new(
            Status::Internal,
            format!("resharding {name} did not converge"),
        ))
    }

    async fn run_round(
        &self,
        core: &Rc<Core>,
        stream: &StreamMeta,
        steps: &[ReshardStep],
    ) -> Result<(), WireError> {
        let parents: Vec<u32> = steps.iter().flat_map(|s| s.parents.clone()).collect();
        let ends = fence(core, stream, &parents, false).await?;
        let mut next = self.catalog.borrow().clone();
        let mut load = next.shards_per_core(core.cores);
        let target = next.stream_mut(&stream.name).map_err(catalog_error)?;
        let made = match target.apply_steps(steps, &ends, &mut load, now_us()) {
            Ok(made) => made,
            Err(error) => {
                unfence(core, stream, &parents).await;
                return Err(catalog_error(error));
            }
        };
        let mut owners: Vec<usize> = target
            .shards
            .iter()
            .filter(|s| made.contains(&s.index))
            .map(|s| usize::from(s.owner_core))
            .collect();
        owners.sort_unstable();
        owners.dedup();
        tracing::info!(
            stream = %stream.name,
            closed = ?parents,
            opened = ?made,
            "reshard round"
        );
        self.commit(core, next, &owners).await
    }

    /// Moves a shard to another core: its owner fences it, waits for what it holds to be
    /// durable and lets it go; the new owner opens it from its files.
    async fn move_shard(
        &self,
        core: &Rc<Core>,
        name: &str,
        shard: u32,
        target: u16,
    ) -> Result<Response, WireError> {
        let current = self.catalog.borrow().clone();
        let stream = current
            .stream(name)
            .ok_or_else(|| catalog_error(CatalogError::StreamNotFound(name.into())))?;
        let meta = stream.shard(shard).ok_or_else(|| {
            catalog_error(CatalogError::ShardNotFound {
                stream: name.into(),
                shard: crate::catalog::shard_id(shard),
            })
        })?;
        if meta.owner_core == target {
            return Ok(Response::Empty);
        }
        fence(core, stream, &[shard], true).await?;
        let mut next = current.clone();
        let stream = next.stream_mut(name).map_err(catalog_error)?;
        for meta in stream.shards.iter_mut().chain(stream.closed.iter_mut()) {
            if meta.index == shard {
                meta.owner_core = target;
            }
        }
        tracing::info!(stream = %name, shard, core = target, "moved shard");
        self.commit(core, next, &[usize::from(target)]).await?;
        Ok(Response::Empty)
    }

    /// Moves shards one at a time until open shards are even over the cores.
    async fn rebalance(&self, core: &Rc<Core>) -> Result<Response, WireError> {
        // Each move narrows the gap between two cores, so this ends; the bound is a guard.
        for _ in 0..SHARDS_MAX {
            let next = self.catalog.borrow().next_rebalance_move(core.cores);
            let Some((name, shard, target)) = next else {
                break;
            };
            self.move_shard(core, &name, shard, target).await?;
        }
        Ok(Response::Empty)
    }

    async fn expire_closed(&self, core: &Rc<Core>) -> Result<Response, WireError> {
        let mut next = self.catalog.borrow().clone();
        let now = now_us();
        let mut gone: Vec<(StreamMeta, ShardMeta)> = Vec::new();
        for stream in next.streams.values_mut() {
            for shard in stream.expire_closed(now) {
                gone.push((stream.clone(), shard));
            }
        }
        if gone.is_empty() {
            return Ok(Response::Empty);
        }
        next.epoch += 1;
        self.commit(core, next, &[]).await?;
        for (stream, shard) in gone {
            let dir = stream.shard_dir(&core.data_dir(), shard.index);
            tracing::info!(dir = %dir.display(), "closed shard past retention: removing it");
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), %error, "could not remove an expired shard");
            }
        }
        Ok(Response::Empty)
    }

    /// Persists `next`, makes it current and sends it to every core, `first` first.
    async fn commit(
        &self,
        core: &Rc<Core>,
        next: Catalog,
        first: &[usize],
    ) -> Result<(), WireError> {
        next.persist(&core.data_dir())
            .await
            .map_err(catalog_error)?;
        *self.catalog.borrow_mut() = next;
        self.publish_first(core, first)
            .await
            .map_err(|m| WireError::new(Status::StorageFailed, m))
    }

    /// Splits, at the middle of its range, each shard of an ON_DEMAND stream that a core
    /// reports hot (writes above the threshold for the whole window), as the real service
    /// adds capacity by itself.
    pub async fn split_hot_shards(&self, core: &Rc<Core>) {
        let calls = (0..core.cores).map(|target| core.call(target, CoreRequest::HotShards));
        let mut hot = Vec::new();
        for reply in join_all(calls).await {
            if let CoreReply::Hot(list) = reply {
                hot.extend(list);
            }
        }
        for (stream_id, shard) in hot {
            let split = {
                let catalog = self.catalog.borrow();
                catalog
                    .streams
                    .values()
                    .find(|s| s.id == stream_id && s.on_demand && s.status == StreamStatus::Active)
                    .and_then(|s| s.open_shard(shard).map(|m| (s.name.clone(), m.clone())))
            };
            let Some((name, meta)) = split else { continue };
            let key = meta.hash_start + (meta.hash_end - meta.hash_start) / 2 + 1;
            let change = Reshard::Split {
                shard,
                new_starting_hash: key,
            };
            tracing::info!(stream = %name, shard, "on-demand: splitting a hot shard");
            let request = CoreRequest::Control(ControlRequest::Reshard { name, change });
            if let CoreReply::Control(Err(error)) = core.call(0, request).await {
                tracing::warn!(%error, "on-demand split failed");
            }
        }
    }

    /// Serves a consumer application's lease request.
    ///
    /// # Errors
    /// Unknown stream, `LeaseLost`, storage failures.
    pub async fn lease(&self, core: &Rc<Core>, request: Request) -> Result<Response, WireError> {
        let catalog = self.catalog.borrow().clone();
        let find = |name: &str| {
            catalog
                .stream(name)
                .cloned()
                .ok_or_else(|| catalog_error(CatalogError::StreamNotFound(name.to_string())))
        };
        match request {
            Request::Heartbeat {
                stream,
                app,
                worker,
                timeout_ms,
                held,
            } => {
                let stream = find(&stream)?;
                let leases =
                    self.leases
                        .heartbeat(&stream, &app, &worker, timeout_ms, &held, now_us())?;
                Ok(Response::Leases(leases))
            }
            Request::Checkpoint {
                stream,
                app,
                worker,
                shard,
                counter,
                checkpoint,
            } => {
                let stream = find(&stream)?;
                self.leases
                    .checkpoint(
                        &core.data_dir(),
                        stream.id,
                        &app,
                        &worker,
                        shard,
                        counter,
                        checkpoint,
                    )
                    .await?;
                Ok(Response::Empty)
            }
            Request::ListLeases { stream, app } => {
                let stream = find(&stream)?;
                Ok(Response::LeaseRows(self.leases.list(&stream, &app)))
            }
            _ => Err(WireError::new(Status::Internal, "not a lease request")),
        }
    }

    /// Schedules the reshards a restart interrupted.
    pub fn resume(&self, core: &Rc<Core>) {
        let pending: Vec<String> = self
            .catalog
            .borrow()
            .streams
            .values()
            .filter(|s| s.pending.is_some())
            .map(|s| s.name.clone())
            .collect();
        for name in pending {
            tracing::info!(stream = %name, "finishing a reshard a restart interrupted");
            later(core, 0, ControlRequest::FinishReshard { name });
        }
    }
}

/// Checks a reshard against the stream and the quotas, before anything changes.
fn check_reshard(
    stream: &mut StreamMeta,
    change: &Reshard,
    open_total: u32,
    cores: usize,
    now_us: u64,
) -> Result<(), WireError> {
    let open = stream.shards.len() as u32;
    let limit = |message: String| WireError::new(Status::ResourceLimit, message);
    match *change {
        Reshard::Split {
            shard,
            new_starting_hash,
        } => {
            stream
                .check_split(shard, new_starting_hash)
                .map_err(catalog_error)?;
            if open_total + 1 > SHARDS_MAX || open + 1 > STREAM_SHARDS_MAX {
                return Err(limit(format!(
                    "splitting would pass the shard limit ({SHARDS_MAX} on the server, {STREAM_SHARDS_MAX} a stream)"
                )));
            }
        }
        Reshard::Merge { shard, adjacent } => {
            stream.check_merge(shard, adjacent).map_err(catalog_error)?;
        }
        Reshard::Scale { target } => {
            if target == 0 || target > STREAM_SHARDS_MAX {
                return Err(WireError::new(
                    Status::InvalidArgument,
                    format!("TargetShardCount {target} is outside 1..={STREAM_SHARDS_MAX}"),
                ));
            }
            if target > open.saturating_mul(2) || target.saturating_mul(2) < open {
                return Err(limit(format!(
                    "UpdateShardCount can scale stream {} from {open} open shards to between \
                     {} and {} shards, not {target}",
                    stream.name,
                    open.div_ceil(2),
                    open.saturating_mul(2)
                )));
            }
            if open_total - open + target > SHARDS_MAX {
                return Err(limit(format!(
                    "scaling to {target} shards would pass the server's shard limit of {SHARDS_MAX}"
                )));
            }
            let day_ago = now_us.saturating_sub(24 * 3_600_000_000);
            stream.scalings_us.retain(|&at| at > day_ago);
            if stream.scalings_us.len() >= SCALINGS_PER_DAY_MAX {
                return Err(limit(format!(
                    "stream {} was rescaled {SCALINGS_PER_DAY_MAX} times in the last 24 hours, \
                     the most UpdateShardCount allows",
                    stream.name
                )));
            }
        }
        Reshard::Rebalance => {}
        Reshard::Move { shard, core } => {
            if usize::from(core) >= cores {
                return Err(WireError::new(
                    Status::InvalidArgument,
                    format!("core {core} does not exist: the server runs {cores} cores"),
                ));
            }
            if stream.shard(shard).is_none() {
                return Err(catalog_error(CatalogError::ShardNotFound {
                    stream: stream.name.clone(),
                    shard: crate::catalog::shard_id(shard),
                }));
            }
        }
    }
    Ok(())
}

/// Fences `shards` on their owner cores; returns where each ends. When any owner fails,
/// the ones fenced are opened again.
async fn fence(
    core: &Rc<Core>,
    stream: &StreamMeta,
    shards: &[u32],
    release: bool,
) -> Result<BTreeMap<u32, u64>, WireError> {
    let by_core = by_owner(stream, shards);
    let calls = by_core.iter().map(|(&owner, list)| {
        core.call(
            usize::from(owner),
            CoreRequest::Fence {
                stream_id: stream.id,
                shards: list.clone(),
                release,
            },
        )
    });
    let mut ends = BTreeMap::new();
    let mut failure = None;
    for reply in join_all(calls).await {
        match reply {
            CoreReply::Fenced(Ok(list)) => ends.extend(list),
            CoreReply::Fenced(Err(error)) | CoreReply::Control(Err(error)) => {
                failure = Some(error);
            }
            _ => {
                failure = Some(WireError::new(
                    Status::Internal,
                    "unexpected reply to a fence",
                ))
            }
        }
    }
    if let Some(error) = failure {
        if !release {
            let fenced: Vec<u32> = ends.keys().copied().collect();
            unfence(core, stream, &fenced).await;
        }
        return Err(error);
    }
    Ok(ends)
}

/// `shards` grouped by their owner core.
fn by_owner(stream: &StreamMeta, shards: &[u32]) -> BTreeMap<u16, Vec<u32>> {
    let mut by_core: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for &index in shards {
        if let Some(meta) = stream.shard(index) {
            by_core.entry(meta.owner_core).or_default().push(index);
        }
    }
    by_core
}

async fn unfence(core: &Rc<Core>, stream: &StreamMeta, shards: &[u32]) {
    let by_core = by_owner(stream, shards);
    let calls = by_core.into_iter().map(|(owner, list)| {
        core.call(
            usize::from(owner),
            CoreRequest::Unfence {
                stream_id: stream.id,
                shards: list,
            },
        )
    });
    join_all(calls).await;
}

/// Sends `request` to the controller after `delay_ms` (the end of a CREATING or DELETING
/// period).
fn later(core: &Rc<Core>, delay_ms: u64, request: ControlRequest) {
    let core = core.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(std::time::Duration::from_millis(delay_ms)).await;
        if let CoreReply::Control(Err(error)) = core.call(0, CoreRequest::Control(request)).await {
            tracing::warn!(%error, "ending a stream transition failed");
        }
    })
    .detach();
}

/// Settles transitions a restart interrupted: CREATING streams become ACTIVE, DELETING
/// ones are removed. Returns whether anything changed.
pub fn settle_transitions(catalog: &mut Catalog) -> bool {
    let deleting: Vec<String> = catalog
        .streams
        .values()
        .filter(|s| s.status == StreamStatus::Deleting)
        .map(|s| s.name.clone())
        .collect();
    let mut changed = !deleting.is_empty();
    for name in deleting {
        let _ = catalog.delete_stream(&name);
    }
    for stream in catalog.streams.values_mut() {
        // A stream UPDATING with a reshard pending stays so: the controller finishes it.
        let settled = match stream.status {
            StreamStatus::Creating => true,
            StreamStatus::Updating => stream.pending.is_none(),
            StreamStatus::Active | StreamStatus::Deleting => false,
        };
        if settled {
            stream.status = StreamStatus::Active;
            changed = true;
        }
    }
    changed
}

/// Removes stream folders the catalog no longer knows (a delete interrupted by a crash).
pub fn remove_orphans(catalog: &Catalog, data_dir: &std::path::Path) {
    let streams = data_dir.join("streams");
    let Ok(entries) = std::fs::read_dir(&streams) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = catalog
            .streams
            .values()
            .any(|s| format!("{}.{}", s.name, s.id) == name);
        if !known {
            tracing::info!(folder = %entry.path().display(), "removing files of a deleted stream");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn consumer_not_found(stream: &str, consumer: &str) -> WireError {
    WireError::new(
        Status::StreamNotFound,
        format!("Consumer {consumer} under stream {stream} not found."),
    )
}

/// Maps catalog errors to the wire.
pub fn catalog_error(error: CatalogError) -> WireError {
    let status = match &error {
        CatalogError::StreamExists(_) => Status::StreamExists,
        CatalogError::StreamNotFound(_) => Status::StreamNotFound,
        CatalogError::InvalidName(_) | CatalogError::InvalidShardCount { .. } => {
            Status::InvalidArgument
        }
        CatalogError::ShardLimit { .. } => Status::ResourceLimit,
        CatalogError::ShardNotFound { .. } => Status::ShardNotFound,
        CatalogError::ShardClosed(_)
        | CatalogError::InvalidSplit { .. }
        | CatalogError::NotAdjacent { .. } => Status::InvalidArgument,
        CatalogError::Io(_) | CatalogError::Damaged { .. } => Status::StorageFailed,
    };
    WireError::new(status, error.to_string())
}

fn now_us() -> u64 {
    crate::tools::now_us()
}
