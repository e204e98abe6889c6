//! SubscribeToShard: enhanced fan-out as the real service serves it. The response is an
//! AWS event stream ([`super::eventstream`]): an `initial-response` event at once, then a
//! `SubscribeToShardEvent` whenever records become durable (and a heartbeat every few
//! seconds when none do), each with the records, the `ContinuationSequenceNumber` to
//! subscribe again from and `MillisBehindLatest`; when the shard is closed and read to its
//! end, a last event with `ChildShards`; after the subscription's lifetime (5 minutes) the
//! stream ends and the client subscribes again from its continuation point.
//!
//! With `[quota] enabled`, each subscription is held to the read rate per consumer and shard
//! (Kinesis: 2 MiB/s), waiting rather than failing when it is ahead.
//!
//! The subscription runs as a task on the core holding the connection. Each step is one
//! read on the shard's owner core, which waits there (without polling) until records past
//! the position are durable and serves them from its in-memory tail when the subscriber is
//! at the head. Events go through a bounded queue to the HTTP body: a slow subscriber
//! fills its queue and its task stops reading until the client catches up, then goes on
//! from the log; producers and other subscribers never wait for it.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use futures::channel::mpsc;
use hyper::body::Frame;

use crate::catalog::{parse_shard_id, sequence};
use crate::limits::{READ_RECORDS_MAX, SUBSCRIPTION_EVENTS_QUEUED_MAX};
use crate::log::StartPosition;
use crate::protocol::binary::RecordsBody;
use crate::protocol::kinesis::consumers::{find_consumer, parse_consumer_arn};
use crate::protocol::kinesis::errors::{KinesisError, from_wire};
use crate::protocol::kinesis::eventstream;
use crate::protocol::kinesis::json::{Input, Out};
use crate::protocol::kinesis::operations::{
    not_found, records_capacity, shard_ended, shard_not_found, write_child_shards, write_records,
};
use crate::server::core::{Core, CoreReply, CoreRequest};
use crate::server::requests::call_owner;

/// The frames of an event-stream body.
pub type Events = mpsc::Receiver<Result<Frame<Bytes>, Infallible>>;

/// Longest a subscription waits on the owner for records before it sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(3);

/// Bytes of record data in one event, at most.
const EVENT_BYTES_MAX: u32 = 1024 * 1024;

/// A subscription, checked and registered, ready to stream.
struct Subscription {
    stream_id: u64,
    shard: u32,
    consumer: String,
    generation: u64,
    seq: u64,
    /// With quotas on, bytes this consumer may still be sent from this shard this second
    /// (Kinesis: 2 MiB/s per consumer per shard), and when it was last refilled.
    budget: Option<(f64, Instant)>,
}

/// Checks a SubscribeToShard request, registers the subscription with the shard's owner
/// and starts streaming; returns the body's frames.
///
/// # Errors
/// The AWS errors of the call itself: ValidationException, ResourceNotFoundException
/// (stream, consumer or shard), ResourceInUseException (consumer not ACTIVE, or another
/// subscription younger than 5 s), InvalidArgumentException (start position).
pub async fn start(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Events, KinesisError> {
    let arn = input.required_str("ConsumerARN")?;
    let (stream_name, consumer_name, seconds) = parse_consumer_arn(arn)?;
    let shard_text = input.required_str("ShardId")?;
    let start = input.object("StartingPosition")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'startingPosition' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let snapshot = core.snapshot();
    let stream = snapshot
        .stream(stream_name)
        .ok_or_else(|| not_found(core, stream_name))?;
    let consumer = find_consumer(core, stream, consumer_name, Some(seconds))?;
    if consumer.status != crate::catalog::ConsumerStatus::Active {
        return Err(KinesisError::in_use(format!(
            "Consumer {arn} is not ACTIVE, instead in state {}",
            consumer.status.as_str()
        )));
    }
    let shard = parse_shard_id(shard_text)
        .and_then(|index| stream.shard(index))
        .ok_or_else(|| shard_not_found(core, stream_name, shard_text))?;
    let position = start_position(&start, shard.index)?;
    let (stream_id, index) = (stream.id, shard.index);
    let register = || CoreRequest::Subscribe {
        stream_id,
        shard: index,
        consumer: arn.to_string(),
    };
    let generation = match call_owner(core, stream_id, index, register).await {
        CoreReply::Subscribed(result) => result.map_err(from_wire)?,
        CoreReply::Control(Err(error)) => return Err(from_wire(error)),
        _ => return Err(KinesisError::internal("Unexpected reply to a subscription")),
    };
    let resolve = || CoreRequest::Resolve {
        stream_id,
        shard: index,
        position,
    };
    let seq = match call_owner(core, stream_id, index, resolve).await {
        CoreReply::Resolved(result) => result.map_err(from_wire)?,
        CoreReply::Control(Err(error)) => return Err(from_wire(error)),
        _ => {
            return Err(KinesisError::internal(
                "Unexpected reply to a position lookup",
            ));
        }
    };
    let (sender, events) = mpsc::channel(SUBSCRIPTION_EVENTS_QUEUED_MAX);
    let quota = &core.config.quota;
    let subscription = Subscription {
        stream_id,
        shard: index,
        consumer: arn.to_string(),
        generation,
        seq,
        budget: quota
            .enabled
            .then(|| (quota.read_bytes_per_s as f64, Instant::now())),
    };
    glommio::spawn_local(run(core.clone(), subscription, sender)).detach();
    Ok(events)
}

/// The StartingPosition member, as a log position; a sequence number must be this shard's.
fn start_position(start: &Input<'_, '_>, shard: u32) -> Result<StartPosition, KinesisError> {
    let kind = start.required_str("Type")?;
    let seq = match start.str("SequenceNumber")? {
        Some(text) => {
            let (owner, seq) = sequence::parse(text).ok_or_else(|| {
                KinesisError::invalid_argument(format!("Invalid SequenceNumber {text}"))
            })?;
            if owner != shard {
                return Err(KinesisError::invalid_argument(format!(
                    "Invalid StartingSequenceNumber. It encodes {}, while it was used in a call to a shard with {}",
                    crate::catalog::shard_id(owner),
                    crate::catalog::shard_id(shard)
                )));
            }
            Some(seq)
        }
        None => None,
    };
    let needs = |what: &str| {
        KinesisError::invalid_argument(format!("StartingPosition of Type {kind} needs {what}"))
    };
    Ok(match kind {
        "TRIM_HORIZON" => StartPosition::TrimHorizon,
        "LATEST" => StartPosition::Latest,
        "AT_SEQUENCE_NUMBER" => {
            StartPosition::AtSequence(seq.ok_or_else(|| needs("a SequenceNumber"))?)
        }
        "AFTER_SEQUENCE_NUMBER" => {
            StartPosition::AfterSequence(seq.ok_or_else(|| needs("a SequenceNumber"))?)
        }
        "AT_TIMESTAMP" => StartPosition::AtTimestamp(
            start
                .timestamp_us("Timestamp")?
                .ok_or_else(|| needs("a Timestamp"))?,
        ),
        other => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'startingPosition.type' failed to satisfy constraint: \
                 Member must satisfy enum value set: [AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, AT_TIMESTAMP]"
            )));
        }
    })
}

type Sender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

async fn send(sender: &mut Sender, bytes: Bytes) -> bool {
    sender.send(Ok(Frame::data(bytes))).await.is_ok()
}

/// Streams events until the lifetime ends, the shard ends, the client goes or a newer
/// subscription takes over; then tells the owner it ended.
async fn run(core: Rc<Core>, mut subscription: Subscription, mut sender: Sender) {
    let lifetime = Duration::from_millis(core.config.kinesis.subscription_lifetime_ms);
    let started = Instant::now();
    if send(&mut sender, eventstream::event("initial-response", b"{}")).await {
        loop {
            let left = lifetime.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match step(&core, &mut subscription, left.min(HEARTBEAT)).await {
                Ok(Some((event, ended))) => {
                    if !send(&mut sender, event).await || ended {
                        break;
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    let _ = send(
                        &mut sender,
                        eventstream::exception(error.kind, &error.message),
                    )
                    .await;
                    break;
                }
            }
        }
    }
    let (stream_id, shard, generation) = (
        subscription.stream_id,
        subscription.shard,
        subscription.generation,
    );
    let consumer = subscription.consumer;
    let end = || CoreRequest::Unsubscribe {
        stream_id,
        shard,
        consumer: consumer.clone(),
        generation,
    };
    call_owner(&core, stream_id, shard, end).await;
}

/// One read on the owner: the next event (and whether it is the last), or none when
/// there is nothing to say yet.
async fn step(
    core: &Rc<Core>,
    subscription: &mut Subscription,
    wait: Duration,
) -> Result<Option<(Bytes, bool)>, KinesisError> {
    let (stream_id, shard, seq) = (subscription.stream_id, subscription.shard, subscription.seq);
    let lease = (subscription.consumer.clone(), subscription.generation);
    let bytes_max = match subscription.budget.as_mut() {
        None => EVENT_BYTES_MAX,
        Some((left, at)) => {
            // Refill one second's worth at most, then wait until some is there.
            let rate = core.config.quota.read_bytes_per_s as f64;
            *left = (*left + at.elapsed().as_secs_f64() * rate).min(rate);
            *at = Instant::now();
            if *left < 1.0 {
                let wait =
                    Duration::from_secs_f64((1.0 - *left) / rate).max(Duration::from_millis(1));
                glommio::timer::sleep(wait).await;
                return Ok(None);
            }
            (*left as u32).clamp(1, EVENT_BYTES_MAX)
        }
    };
    let read = || CoreRequest::Read {
        stream_id,
        shard,
        position: StartPosition::AtSequence(seq),
        limit: READ_RECORDS_MAX as u32,
        bytes_max,
        wait_us: u64::try_from(wait.as_micros()).unwrap_or(u64::MAX),
        subscription: Some(lease.clone()),
    };
    let body: RecordsBody = match call_owner(core, stream_id, shard, read).await {
        CoreReply::Read(result) => result.map_err(from_wire)?,
        CoreReply::Control(Err(error)) => return Err(from_wire(error)),
        _ => return Err(KinesisError::internal("Unexpected reply to a read")),
    };
    subscription.seq = body.next_seq.max(seq);
    if let Some((left, _)) = subscription.budget.as_mut() {
        let sent: usize = body
            .records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum();
        *left -= sent as f64;
    }
    let snapshot = core.snapshot();
    let stream = snapshot
        .streams
        .values()
        .find(|s| s.id == stream_id)
        .ok_or_else(|| KinesisError::not_found("The stream of this subscription was deleted"))?;
    let meta = stream
        .shard(shard)
        .ok_or_else(|| KinesisError::not_found("The shard of this subscription is gone"))?;
    let ended = shard_ended(meta, subscription.seq);
    // The continuation is the last sequence number delivered (clients subscribe again
    // AFTER it); before the first record of an empty shard there is none to give, so no
    // heartbeat goes out then.
    let Some(last) = subscription.seq.checked_sub(1) else {
        return Ok(None);
    };
    let mut out = Out::with_capacity(records_capacity(&body.records));
    out.begin_object();
    write_records(&mut out, shard, &body.records);
    out.str("ContinuationSequenceNumber", &sequence::render(shard, last))
        .int(
            "MillisBehindLatest",
            if ended { 0 } else { body.millis_behind as i64 },
        );
    if ended {
        write_child_shards(&mut out, stream, shard);
    }
    out.end_object();
    Ok(Some((
        eventstream::event("SubscribeToShardEvent", &out.into_bytes()),
        ended,
    )))
}
