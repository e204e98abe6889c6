//! Step 3 of the data path: routing. A put's records are hashed (MD5 of the partition key,
//! or the explicit hash key) to the shard whose range holds the key, grouped into one
//! sub-batch per shard, and handed to each shard's owner core: a direct call on this core,
//! one message per owner core otherwise. Results come back in request order. Runs on the
//! core that holds the connection.

use std::rc::Rc;

use futures::future::join_all;

use crate::catalog::{self, StreamStatus};
use crate::log::{RecordIn, batch};
use crate::protocol::binary::{PutEntry, PutResult, Status, WireError};
use crate::server::core::{Core, CoreReply, CoreRequest};

/// Routes and appends a put; every limit is checked before anything is appended.
///
/// # Errors
/// [`WireError`] for the request as a whole: unknown stream, or a limit broken (nothing is
/// appended then). Per-record failures (a shard's commit failed) are in the results.
pub async fn put_records(
    core: &Rc<Core>,
    stream_name: &str,
    entries: Vec<PutEntry>,
    arrival_us: u64,
) -> Result<Vec<PutResult>, WireError> {
    let snapshot = core.snapshot();
    // Records go only to a stream that is ACTIVE (or UPDATING), as in Kinesis.
    let stream = snapshot
        .stream(stream_name)
        .filter(|s| matches!(s.status, StreamStatus::Active | StreamStatus::Updating))
        .ok_or_else(|| stream_not_found(stream_name))?;
    let count = entries.len();
    let mut records = Vec::with_capacity(count);
    let mut placement = Vec::with_capacity(count);
    for entry in entries {
        let hash = match entry.explicit_hash_key {
            Some(hash) => hash,
            None => catalog::hash_key(&entry.partition_key),
        };
        let shard = stream.shard_for_hash(hash).ok_or_else(|| {
            WireError::new(Status::Internal, format!("no shard holds hash key {hash}"))
        })?;
        placement.push((shard.owner_core, shard.index));
        records.push(RecordIn {
            partition_key: entry.partition_key,
            data: entry.data,
            arrival_us,
        });
    }
    batch::validate(&records).map_err(|e| WireError::new(Status::LimitExceeded, e.to_string()))?;
    let plan = plan(&placement);
    let mut sub_batches: Vec<Vec<(u32, Vec<RecordIn>)>> = plan
        .shards
        .iter()
        .map(|shards| shards.iter().map(|&s| (s, Vec::new())).collect())
        .collect();
    for (record, &(core_slot, batch_slot)) in records.into_iter().zip(&plan.slots) {
        sub_batches[core_slot][batch_slot].1.push(record);
    }
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
    let mut acks = Vec::with_capacity(plan.cores.len());
    for reply in join_all(calls).await {
        match reply {
            CoreReply::Appended(per_shard) => acks.push(per_shard),
            CoreReply::Control(Err(error)) => return Err(error),
            _ => {
                return Err(WireError::new(
                    Status::Internal,
                    "unexpected reply to an append",
                ));
            }
        }
    }
    // Each record's sequence number is its sub-batch's first plus its place in it.
    let mut taken: Vec<Vec<u64>> = acks.iter().map(|a| vec![0; a.len()]).collect();
    let mut results: Vec<PutResult> = Vec::with_capacity(count);
    for &(core_slot, batch_slot) in &plan.slots {
        let shard = plan.shards[core_slot][batch_slot];
        let place = &mut taken[core_slot][batch_slot];
        let result = match acks.get(core_slot).and_then(|a| a.get(batch_slot)) {
            Some(Ok(ack)) => Ok((shard, ack.first_seq + *place)),
            Some(Err(error)) => Err(error.clone()),
            None => Err(WireError::new(Status::Internal, "missing append result")),
        };
        *place += 1;
        results.push(result);
    }
    Ok(results)
}

/// Where each record of a put goes: owner cores, the shards per core, and for each record
/// (in request order) its core slot and sub-batch slot.
struct Plan {
    cores: Vec<u16>,
    shards: Vec<Vec<u32>>,
    slots: Vec<(usize, usize)>,
}

fn plan(placement: &[(u16, u32)]) -> Plan {
    let mut cores: Vec<u16> = Vec::new();
    let mut shards: Vec<Vec<u32>> = Vec::new();
    let mut slots = Vec::with_capacity(placement.len());
    for &(owner, shard) in placement {
        let core_slot = match cores.iter().position(|&c| c == owner) {
            Some(slot) => slot,
            None => {
                cores.push(owner);
                shards.push(Vec::new());
                cores.len() - 1
            }
        };
        let batch_slot = match shards[core_slot].iter().position(|&s| s == shard) {
            Some(slot) => slot,
            None => {
                shards[core_slot].push(shard);
                shards[core_slot].len() - 1
            }
        };
        slots.push((core_slot, batch_slot));
    }
    Plan {
        cores,
        shards,
        slots,
    }
}

pub fn stream_not_found(name: &str) -> WireError {
    WireError::new(Status::StreamNotFound, format!("stream {name} not found"))
}
