//! Step 3 of the data path: routing. A put's records are hashed (MD5 of the partition key,
//! or the explicit hash key) to the shard whose range holds the key, grouped into one
//! sub-batch per shard, and handed to each shard's owner core: a direct call on this core,
//! one message per owner core otherwise. Results come back in request order. Runs on the
//! core that holds the connection.

use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;

use crate::catalog::{self, Catalog, StreamStatus};
use crate::limits::RESHARD_WAIT_US_MAX;
use crate::log::RecordIn;
use crate::log::batch::{self, Valid};
use crate::protocol::binary::{PutEntry, PutResult, Status, WireError};
use crate::server::core::{Core, CoreReply, CoreRequest, SubBatchOutcome};

/// Routes and appends a put; every limit is checked before anything is appended.
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
    entries: Vec<PutEntry>,
    arrival_us: u64,
) -> Result<Vec<PutResult>, WireError> {
    let count = entries.len();
    let mut hashes = Vec::with_capacity(count);
    // Every key is hashed in eight-key lanes; an explicit hash key then replaces its
    // record's MD5 (rare, and cheaper than splitting the lanes around it).
    let keys: Vec<&[u8]> = entries.iter().map(|e| &e.partition_key[..]).collect();
    catalog::md5x8::hash_keys(&keys, &mut hashes);
    drop(keys);
    let mut records = Vec::with_capacity(count);
    for (entry, hash) in entries.into_iter().zip(&mut hashes) {
        if let Some(explicit) = entry.explicit_hash_key {
            *hash = explicit;
        }
        records.push(RecordIn {
            partition_key: entry.partition_key,
            data: entry.data,
            arrival_us,
        });
    }
    let limit = |e: batch::LimitError| WireError::new(Status::LimitExceeded, e.to_string());
    let mut todo = Valid::check(records).map_err(limit)?;
    let mut indices: Vec<usize> = (0..count).collect();
    let mut results: Vec<Option<PutResult>> = vec![None; count];
    let deadline = std::time::Instant::now() + Duration::from_micros(RESHARD_WAIT_US_MAX);
    loop {
        let snapshot = core.snapshot();
        let returned = append_once(
            core,
            &snapshot,
            stream_name,
            (indices, todo),
            &hashes,
            &mut results,
        )
        .await?;
        if returned.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !core.wait_for_catalog_after(snapshot.epoch, left).await {
            for (index, _) in returned {
                results[index] = Some(Err(WireError::new(
                    Status::ShardUnavailable,
                    "the record's shard was closing or moving and the reshard did not finish in time",
                )));
            }
            break;
        }
        // Part of the batch checked above, so within every limit; checked again all the
        // same, as the rare path it is.
        let (next, records): (Vec<usize>, Vec<RecordIn>) = returned.into_iter().unzip();
        indices = next;
        todo = Valid::check(records).map_err(limit)?;
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(WireError::new(Status::Internal, "missing append result")))
        })
        .collect())
}

/// Routes `todo` (each record with its index in the request) with one catalog and appends
/// it, filling `results`; returns the records handed back by shards that were closing or
/// moving.
async fn append_once(
    core: &Rc<Core>,
    snapshot: &Catalog,
    stream_name: &str,
    (indices, todo): (Vec<usize>, Valid),
    hashes: &[u128],
    results: &mut [Option<PutResult>],
) -> Result<Vec<(usize, RecordIn)>, WireError> {
    // Records go only to a stream that is ACTIVE (or UPDATING), as in Kinesis.
    let stream = snapshot
        .stream(stream_name)
        .filter(|s| matches!(s.status, StreamStatus::Active | StreamStatus::Updating))
        .ok_or_else(|| stream_not_found(stream_name))?;
    let mut placement = Vec::with_capacity(todo.len());
    for index in &indices {
        let hash = hashes.get(*index).copied().unwrap_or(0);
        let shard = stream.shard_for_hash(hash).ok_or_else(|| {
            WireError::new(Status::Internal, format!("no shard holds hash key {hash}"))
        })?;
        placement.push((shard.owner_core, shard.index));
    }
    let plan = plan(&placement);
    // Sub-batches numbered core by core: core slot c's batch slot b is part first[c] + b.
    let mut first = Vec::with_capacity(plan.cores.len());
    let mut sizes = Vec::new();
    for counts in &plan.counts {
        first.push(sizes.len());
        sizes.extend_from_slice(counts);
    }
    let part_of: Vec<usize> = plan.slots.iter().map(|&(c, b)| first[c] + b).collect();
    let mut parts = todo.split(&sizes, &part_of).into_iter();
    let sub_batches: Vec<Vec<(u32, Valid)>> = plan
        .shards
        .iter()
        .map(|shards| {
            let parts = &mut parts;
            shards
                .iter()
                .map(|&shard| (shard, parts.next().unwrap_or_default()))
                .collect()
        })
        .collect();
    let calls = plan
        .cores
        .iter()
        .zip(sub_batches)
        .map(|(&target, batches)| {
            let request = CoreRequest::Append {
                stream_id: stream.id,
                batches,
            };
            core.call(usize::from(target), request)
        });
    let mut outcomes: Vec<Vec<SubBatchOutcome>> = Vec::with_capacity(plan.cores.len());
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
    // Each record's sequence number is its sub-batch's first plus its place in it; records
    // past the appended prefix failed, or come back to be routed again.
    let mut taken: Vec<Vec<usize>> = outcomes.iter().map(|a| vec![0; a.len()]).collect();
    let mut returned = Vec::new();
    for (&(core_slot, batch_slot), &index) in plan.slots.iter().zip(&indices) {
        let shard = plan.shards[core_slot][batch_slot];
        let place = &mut taken[core_slot][batch_slot];
        let outcome = outcomes
            .get_mut(core_slot)
            .and_then(|a| a.get_mut(batch_slot));
        let result = match outcome {
            Some(o) if *place < o.appended as usize => Ok((shard, o.first_seq + *place as u64)),
            Some(o) if !o.returned.is_empty() => {
                // Handed back in order; take them from the front.
                if let Some(record) = o.returned.pop_front() {
                    returned.push((index, record));
                }
                *place += 1;
                continue;
            }
            Some(o) => Err(o
                .error
                .clone()
                .unwrap_or_else(|| WireError::new(Status::Internal, "record not appended"))),
            None => Err(WireError::new(Status::Internal, "missing append result")),
        };
        *place += 1;
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(result);
        }
    }
    Ok(returned)
}

/// Where each record of a put goes: owner cores, the shards per core, and for each record
/// (in request order) its core slot and sub-batch slot; `counts` mirrors `shards` with
/// each sub-batch's record count, so every sub-batch is allocated once.
struct Plan {
    cores: Vec<u16>,
    shards: Vec<Vec<u32>>,
    counts: Vec<Vec<usize>>,
    slots: Vec<(usize, usize)>,
}

fn plan(placement: &[(u16, u32)]) -> Plan {
    let mut cores: Vec<u16> = Vec::new();
    let mut shards: Vec<Vec<u32>> = Vec::new();
    let mut counts: Vec<Vec<usize>> = Vec::new();
    let mut slots = Vec::with_capacity(placement.len());
    for &(owner, shard) in placement {
        let core_slot = match cores.iter().position(|&c| c == owner) {
            Some(slot) => slot,
            None => {
                cores.push(owner);
                shards.push(Vec::new());
                counts.push(Vec::new());
                cores.len() - 1
            }
        };
        let batch_slot = match shards[core_slot].iter().position(|&s| s == shard) {
            Some(slot) => slot,
            None => {
                shards[core_slot].push(shard);
                counts[core_slot].push(0);
                shards[core_slot].len() - 1
            }
        };
        counts[core_slot][batch_slot] += 1;
        slots.push((core_slot, batch_slot));
    }
    Plan {
        cores,
        shards,
        counts,
        slots,
    }
}

pub fn stream_not_found(name: &str) -> WireError {
    WireError::new(Status::StreamNotFound, format!("stream {name} not found"))
}
