//! Serving one decoded request on the core that holds its connection: puts go through
//! [`crate::route`], reads and tips to the shard's owner core, catalog changes to the
//! controller. Subscriptions stream and live in [`crate::net`].

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::future::join_all;

use crate::catalog::StreamMeta;
use crate::limits::{READ_BYTES_MAX, READ_RECORDS_MAX, RESHARD_WAIT_US_MAX};
use crate::log::StartPosition;
use crate::protocol::binary::{
    PutRequest, RecordsBody, Request, Response, ShardDescription, Status, StreamDescription,
    WireError,
};
use crate::route;
use crate::server::controller::ControlRequest;
use crate::server::core::{Core, CoreReply, CoreRequest};

/// Serves a PutRecords request, decoded by [`PutRequest::decode`].
///
/// # Errors
/// [`WireError`] with the status the client sees.
pub async fn put(core: &Rc<Core>, put: &PutRequest) -> Result<Response, WireError> {
    let arrival_us = crate::tools::now_us();
    let records = put.records();
    let results = route::put_records(core, &put.stream, &records, arrival_us).await?;
    Ok(Response::Put(results))
}

/// Serves a request (anything but a subscription).
///
/// # Errors
/// [`WireError`] with the status the client sees.
pub async fn handle(core: &Rc<Core>, request: Request) -> Result<Response, WireError> {
    match request {
        Request::PutRecords { stream, records } => {
            let records: Vec<route::PutRef<'_>> = records.iter().map(Into::into).collect();
            let results =
                route::put_records(core, &stream, &records, crate::tools::now_us()).await?;
            Ok(Response::Put(results))
        }
        Request::GetRecords {
            stream,
            shard,
            position,
            limit,
            bytes_max,
            wait_ms,
        } => {
            let read = read(
                core,
                &stream,
                shard,
                position,
                limit,
                bytes_max,
                u64::from(wait_ms) * 1000,
            );
            Ok(Response::Records(read.await?))
        }
        Request::CreateStream {
            stream,
            shard_count,
        } => {
            control(
                core,
                ControlRequest::CreateStream {
                    name: stream,
                    shard_count,
                    tags: Vec::new(),
                    on_demand: false,
                },
            )
            .await
        }
        Request::DeleteStream { stream } => {
            control(core, ControlRequest::DeleteStream { name: stream }).await
        }
        Request::ListStreams => Ok(Response::Streams(
            core.snapshot().streams.keys().cloned().collect(),
        )),
        Request::DescribeStream { stream } => describe(core, &stream).await,
        lease @ (Request::Heartbeat { .. }
        | Request::Checkpoint { .. }
        | Request::ListLeases { .. }) => match core.call(0, CoreRequest::Lease(lease)).await {
            CoreReply::Control(result) => result,
            _ => Err(WireError::new(
                Status::Internal,
                "unexpected reply from the controller",
            )),
        },
        Request::Reshard { stream, change } => {
            control(
                core,
                ControlRequest::Reshard {
                    name: stream,
                    change,
                },
            )
            .await
        }
        Request::Subscribe { .. } => Err(WireError::new(
            Status::Internal,
            "subscriptions are served by the connection",
        )),
        Request::Attach { .. } => Err(WireError::new(
            Status::InvalidArgument,
            "Attach must be a connection's first request",
        )),
    }
}

/// Reads from a shard on its owner core.
///
/// # Errors
/// Unknown stream or shard, or the owner's read error.
pub async fn read(
    core: &Rc<Core>,
    stream_name: &str,
    shard: u32,
    position: StartPosition,
    limit: u32,
    bytes_max: u32,
    wait_us: u64,
) -> Result<RecordsBody, WireError> {
    let (stream_id, _) = locate(core, stream_name, shard)?;
    let request = || CoreRequest::Read {
        stream_id,
        shard,
        position,
        limit: limit.clamp(1, READ_RECORDS_MAX as u32),
        bytes_max: bytes_max.clamp(1, READ_BYTES_MAX as u32),
        wait_us,
        subscription: None,
    };
    match call_owner(core, stream_id, shard, request).await {
        CoreReply::Read(result) => result,
        CoreReply::Control(Err(error)) => Err(error),
        _ => Err(WireError::new(
            Status::Internal,
            "unexpected reply to a read",
        )),
    }
}

/// Sends a request to the core that owns a shard, by the current catalog. When the shard
/// is moving between cores, waits for the catalog that names its new owner and asks again.
pub async fn call_owner(
    core: &Rc<Core>,
    stream_id: u64,
    shard: u32,
    request: impl Fn() -> CoreRequest,
) -> CoreReply {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_micros(RESHARD_WAIT_US_MAX);
    loop {
        let snapshot = core.snapshot();
        let owner = snapshot
            .streams
            .values()
            .find(|s| s.id == stream_id)
            .and_then(|s| s.shard(shard))
            .map(|s| usize::from(s.owner_core));
        let Some(owner) = owner else {
            return CoreReply::Control(Err(WireError::new(
                Status::ShardNotFound,
                format!("no shard {}", crate::catalog::shard_id(shard)),
            )));
        };
        let reply = core.call(owner, request()).await;
        let unavailable = match &reply {
            CoreReply::Read(Err(e)) | CoreReply::Resolved(Err(e)) | CoreReply::Control(Err(e)) => {
                e.status == Status::ShardUnavailable
            }
            _ => false,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !unavailable || !core.wait_for_catalog_after(snapshot.epoch, left).await {
            return reply;
        }
    }
}

/// The stream id and owner core of a shard.
///
/// # Errors
/// `StreamNotFound` or `ShardNotFound`.
pub fn locate(core: &Core, stream_name: &str, shard: u32) -> Result<(u64, usize), WireError> {
    let snapshot = core.snapshot();
    let stream = snapshot
        .stream(stream_name)
        .ok_or_else(|| route::stream_not_found(stream_name))?;
    let meta = stream.shard(shard).ok_or_else(|| {
        WireError::new(
            Status::ShardNotFound,
            format!(
                "stream {stream_name} has no shard {}",
                crate::catalog::shard_id(shard)
            ),
        )
    })?;
    Ok((stream.id, usize::from(meta.owner_core)))
}

async fn control(core: &Rc<Core>, request: ControlRequest) -> Result<Response, WireError> {
    match core.call(0, CoreRequest::Control(request)).await {
        CoreReply::Control(result) => result,
        _ => Err(WireError::new(
            Status::Internal,
            "unexpected reply from the controller",
        )),
    }
}

/// The trim horizon and tip of every shard of `stream`, asked of each owner core once.
pub async fn tips(core: &Rc<Core>, stream: &StreamMeta) -> BTreeMap<u32, (u64, u64)> {
    let mut by_core: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for shard in stream.shards.iter().chain(&stream.closed) {
        by_core
            .entry(shard.owner_core)
            .or_default()
            .push(shard.index);
    }
    let calls = by_core.into_iter().map(|(owner, shards)| {
        core.call(
            usize::from(owner),
            CoreRequest::Tips {
                stream_id: stream.id,
                shards,
            },
        )
    });
    let mut tips = BTreeMap::new();
    for reply in join_all(calls).await {
        if let CoreReply::Tips(list) = reply {
            for (index, trim, tip) in list {
                tips.insert(index, (trim, tip));
            }
        }
    }
    tips
}

async fn describe(core: &Rc<Core>, stream_name: &str) -> Result<Response, WireError> {
    let snapshot = core.snapshot();
    let stream: &StreamMeta = snapshot
        .stream(stream_name)
        .ok_or_else(|| route::stream_not_found(stream_name))?;
    let tips = tips(core, stream).await;
    let shards = stream
        .all_shards()
        .into_iter()
        .map(|s| {
            let (trim_seq, tip_seq) = tips.get(&s.index).copied().unwrap_or((0, 0));
            ShardDescription {
                index: s.index,
                owner_core: s.owner_core,
                hash_start: s.hash_start,
                hash_end: s.hash_end,
                trim_seq,
                tip_seq,
                parent: s.parent,
                adjacent_parent: s.adjacent_parent,
                end_seq: s.closed.map(|end| end.end_seq),
            }
        })
        .collect();
    Ok(Response::Stream(StreamDescription {
        name: stream.name.clone(),
        status: stream.status.as_str().to_string(),
        retention_hours: stream.retention_hours,
        created_us: stream.created_us,
        shards,
    }))
}
