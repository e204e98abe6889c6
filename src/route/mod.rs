//! Step 3 of the data path: routing. A put's records are hashed (MD5 of the partition key,
//! or the explicit hash key) to the shard whose range holds the key, encoded into one
//! sub-batch per shard in the log's batch layout, and handed to each shard's owner core: a
//! direct call on this core, one message per owner core otherwise. Results come back in request order. Runs on the
//! core that holds the connection.

use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;

use crate::catalog::{self, Catalog, StreamStatus};
use crate::limits::RESHARD_WAIT_US_MAX;
use crate::log::batch::{self, Encoded};
pub use crate::protocol::binary::PutRef;
use crate::protocol::binary::{PutResult, Status, WireError};
use crate::server::core::{Core, CoreReply, CoreRequest, SubBatchOutcome};

/// A record waiting to be routed: its place in the put, partition key and data.
type Todo<'a> = (usize, &'a [u8], &'a [u8]);

/// Records a shard handed back (it was closing or moving), with their places in the put.
type Returned = Vec<(Vec<usize>, Encoded)>;

/// Routes and appends a put; every limit is checked before anything is appended.
///
/// Each shard's records are encoded here, on the core that read the put, into one buffer
/// in the log's batch layout ([`Encoded`]); the owner core fills in the header. So the
/// records are copied once, and cross cores as one buffer per shard.
///
/// When a shard is closing (split, merge) or moving to another core, its owner hands the
/// records back; they are routed again with the next catalog, which sends them to the
/// shard's children or its new owner, so a put that arrives during a reshard is neither
/// lost nor appended to a closed shard.
///
/// # Errors
/// [`WireError`] for the request as a whole: unknown stream, or a limit broken (nothing is
/// appended then). Per-record failures (a shard's commit failed, a quota) are in the
/// results.
pub async fn put_records(
    core: &Rc<Core>,
    stream_name: &str,
    records: &[PutRef<'_>],
    arrival_us: u64,
) -> Result<Vec<PutResult>, WireError> {
    batch::validate_put(records.iter().map(|r| (r.partition_key, r.data.len())))
        .map_err(|e| WireError::new(Status::LimitExceeded, e.to_string()))?;
    let count = records.len();
    let mut hashes = Vec::with_capacity(count);
    // Every key is hashed in eight-key lanes; an explicit hash key then replaces its
    // record's MD5 (rare, and cheaper than splitting the lanes around it).
    let keys: Vec<&[u8]> = records.iter().map(|r| r.partition_key).collect();
    catalog::md5x8::hash_keys(&keys, &mut hashes);
    drop(keys);
    for (record, hash) in records.iter().zip(&mut hashes) {
        if let Some(explicit) = record.explicit_hash_key {
            *hash = explicit;
        }
    }
    let mut results: Vec<Option<PutResult>> = vec![None; count];
    let deadline = std::time::Instant::now() + Duration::from_micros(RESHARD_WAIT_US_MAX);
    let todo: Vec<Todo<'_>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.partition_key, r.data))
        .collect();
    let route = Route {
        core,
        stream_name,
        hashes: &hashes,
        arrival_us,
    };
    let mut snapshot = core.snapshot();
    let mut returned = route.append_once(&snapshot, &todo, &mut results).await?;
    drop(todo);
    while !returned.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !core.wait_for_catalog_after(snapshot.epoch, left).await {
            for (indices, _) in returned {
                for index in indices {
                    results[index] = Some(Err(WireError::new(
                        Status::ShardUnavailable,
                        "the record's shard was closing or moving and the reshard did not finish in time",
                    )));
                }
            }
            break;
        }
        let parts = std::mem::take(&mut returned);
        let todo: Vec<Todo<'_>> = parts
            .iter()
            .flat_map(|(indices, batch)| {
                indices
                    .iter()
                    .zip(batch.records())
                    .map(|(&i, (key, data))| (i, key, data))
            })
            .collect();
        snapshot = core.snapshot();
        returned = route.append_once(&snapshot, &todo, &mut results).await?;
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(WireError::new(Status::Internal, "missing append result")))
        })
        .collect())
}

/// What every round of routing one put shares.
struct Route<'a> {
    core: &'a Rc<Core>,
    stream_name: &'a str,
    /// Each record's hash key, by its place in the put.
    hashes: &'a [u128],
    arrival_us: u64,
}

/// One shard's part of a round.
struct Part {
    shard: u32,
    owner_core: u16,
    records: usize,
    payload: usize,
    /// Where its outcome comes back: (owner core's slot, sub-batch slot).
    place: (usize, usize),
}

impl Route<'_> {
    /// Routes `todo` with one catalog and appends it, filling `results`; returns the
    /// records handed back by shards that were closing or moving.
    async fn append_once(
        &self,
        snapshot: &Catalog,
        todo: &[Todo<'_>],
        results: &mut [Option<PutResult>],
    ) -> Result<Returned, WireError> {
        // Records go only to a stream that is ACTIVE (or UPDATING), as in Kinesis.
        let stream = snapshot
            .stream(self.stream_name)
            .filter(|s| matches!(s.status, StreamStatus::Active | StreamStatus::Updating))
            .ok_or_else(|| stream_not_found(self.stream_name))?;
        // Each record's part, numbered in order of first appearance.
        let mut part_at_position = vec![u32::MAX; stream.shards.len()];
        let mut parts: Vec<Part> = Vec::new();
        let mut part_of = Vec::with_capacity(todo.len());
        for &(index, key, data) in todo {
            let hash = self.hashes.get(index).copied().unwrap_or(0);
            let position = stream.shard_position_for_hash(hash).ok_or_else(|| {
                WireError::new(Status::Internal, format!("no shard holds hash key {hash}"))
            })?;
            let slot = &mut part_at_position[position];
            if *slot == u32::MAX {
                *slot = parts.len() as u32;
                let shard = &stream.shards[position];
                parts.push(Part {
                    shard: shard.index,
                    owner_core: shard.owner_core,
                    records: 0,
                    payload: 0,
                    place: (0, 0),
                });
            }
            let part = &mut parts[*slot as usize];
            part.records += 1;
            part.payload += key.len() + data.len();
            part_of.push(*slot as usize);
        }
        let mut batches: Vec<Encoded> = parts
            .iter()
            .map(|p| Encoded::with_capacity(p.records, p.payload, self.arrival_us))
            .collect();
        for (&(_, key, data), &part) in todo.iter().zip(&part_of) {
            batches[part].push(key, data);
        }
        // One request per owner core, carrying that core's sub-batches.
        let mut cores: Vec<u16> = Vec::new();
        let mut per_core: Vec<Vec<(u32, Encoded)>> = Vec::new();
        for (part, batch) in parts.iter_mut().zip(batches) {
            let core_slot = match cores.iter().position(|&c| c == part.owner_core) {
                Some(slot) => slot,
                None => {
                    cores.push(part.owner_core);
                    per_core.push(Vec::new());
                    cores.len() - 1
                }
            };
            part.place = (core_slot, per_core[core_slot].len());
            per_core[core_slot].push((part.shard, batch));
        }
        let calls = cores.iter().zip(per_core).map(|(&target, batches)| {
            let request = CoreRequest::Append {
                stream_id: stream.id,
                batches,
            };
            self.core.call(usize::from(target), request)
        });
        let mut outcomes: Vec<Vec<SubBatchOutcome>> = Vec::with_capacity(cores.len());
        for reply in join_all(calls).await {
            match reply {
                CoreReply::Appended(per_shard) => outcomes.push(per_shard),
                CoreReply::Control(Err(error)) => return Err(error),
                _ => {
                    return Err(WireError::new(
                        Status::Internal,
                        "unexpected reply to an append",
                    ));
                }
            }
        }
        // Each record's sequence number is its sub-batch's first plus its place in it;
        // records past the appended prefix failed, or come back to be routed again.
        let mut taken = vec![0usize; parts.len()];
        let mut returned: Vec<Vec<usize>> = vec![Vec::new(); parts.len()];
        for (&(index, _, _), &slot) in todo.iter().zip(&part_of) {
            let part = &parts[slot];
            let place = taken[slot];
            taken[slot] += 1;
            let (core_slot, batch_slot) = part.place;
            let outcome = outcomes.get(core_slot).and_then(|o| o.get(batch_slot));
            let result = match outcome {
                Some(o) if place < o.appended as usize => {
                    Ok((part.shard, o.first_seq + place as u64))
                }
                Some(SubBatchOutcome {
                    appended,
                    returned: Some(batch),
                    ..
                }) if place - (*appended as usize) < batch.len() => {
                    returned[slot].push(index);
                    continue;
                }
                Some(o) => Err(o
                    .error
                    .clone()
                    .unwrap_or_else(|| WireError::new(Status::Internal, "record not appended"))),
                None => Err(WireError::new(Status::Internal, "missing append result")),
            };
            if let Some(slot) = results.get_mut(index) {
                *slot = Some(result);
            }
        }
        Ok(parts
            .iter()
            .zip(returned)
            .filter(|(_, indices)| !indices.is_empty())
            .filter_map(|(part, indices)| {
                let (core_slot, batch_slot) = part.place;
                let batch = outcomes
                    .get_mut(core_slot)?
                    .get_mut(batch_slot)?
                    .returned
                    .take()?;
                Some((indices, batch))
            })
            .collect())
    }
}

pub fn stream_not_found(name: &str) -> WireError {
    WireError::new(Status::StreamNotFound, format!("stream {name} not found"))
}
