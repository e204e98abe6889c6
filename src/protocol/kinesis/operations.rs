//! The Kinesis operations spate serves, each reading its members from the request
//! document and writing the AWS response shape. Validation happens here, before anything is
//! appended, with the exception names and messages AWS uses.

use std::rc::Rc;

use simd_json::prelude::*;

use crate::catalog::{self, StreamMeta, parse_shard_id, sequence, shard_id};
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, PARTITION_KEY_CHARS_MAX, RECORD_DATA_BYTES_MAX, SHARDS_MAX,
    STREAM_NAME_BYTES_MAX,
};
use crate::log::StartPosition;
use crate::protocol::binary::{RecordsBody, Status};
use crate::protocol::kinesis::errors::{KinesisError, from_wire};
use crate::protocol::kinesis::iterator::{IteratorError, IteratorState};
use crate::protocol::kinesis::json::{Input, Out, Speller};
use crate::route;
use crate::server::controller::ControlRequest;
use crate::server::core::{Core, CoreReply, CoreRequest};
use crate::server::requests::call_owner;

/// Every operation in the Kinesis model (2013-12-02), for a clear answer to those spate
/// does not serve yet.
const MODEL_OPERATIONS: [&str; 39] = [
    "AddTagsToStream",
    "CreateStream",
    "DecreaseStreamRetentionPeriod",
    "DeleteResourcePolicy",
    "DeleteStream",
    "DeregisterStreamConsumer",
    "DescribeAccountSettings",
    "DescribeLimits",
    "DescribeStream",
    "DescribeStreamConsumer",
    "DescribeStreamSummary",
    "DisableEnhancedMonitoring",
    "EnableEnhancedMonitoring",
    "GetRecords",
    "GetResourcePolicy",
    "GetShardIterator",
    "IncreaseStreamRetentionPeriod",
    "ListShards",
    "ListStreamConsumers",
    "ListStreams",
    "ListTagsForResource",
    "ListTagsForStream",
    "MergeShards",
    "PutRecord",
    "PutRecords",
    "PutResourcePolicy",
    "RegisterStreamConsumer",
    "RemoveTagsFromStream",
    "SplitShard",
    "StartStreamEncryption",
    "StopStreamEncryption",
    "SubscribeToShard",
    "TagResource",
    "UntagResource",
    "UpdateAccountSettings",
    "UpdateMaxRecordSize",
    "UpdateShardCount",
    "UpdateStreamMode",
    "UpdateStreamWarmThroughput",
];

/// Runs one operation and returns its JSON body.
pub async fn dispatch(
    core: &Rc<Core>,
    operation: &str,
    input: &Input<'_, '_>,
) -> Result<Vec<u8>, KinesisError> {
    match operation {
        "PutRecord" => put_record(core, input).await,
        "PutRecords" => put_records(core, input).await,
        "GetShardIterator" => get_shard_iterator(core, input).await,
        "GetRecords" => get_records(core, input).await,
        "CreateStream" => create_stream(core, input).await,
        "DeleteStream" => delete_stream(core, input).await,
        "DescribeStream" => describe_stream(core, input).await,
        "DescribeStreamSummary" => describe_stream_summary(core, input).await,
        "ListStreams" => list_streams(core, input),
        "ListShards" => list_shards(core, input).await,
        "DescribeLimits" => describe_limits(core),
        "IncreaseStreamRetentionPeriod" => retention(core, input, true).await,
        "DecreaseStreamRetentionPeriod" => retention(core, input, false).await,
        "AddTagsToStream" => add_tags(core, input).await,
        "RemoveTagsFromStream" => remove_tags(core, input).await,
        "ListTagsForStream" => list_tags(core, input),
        "SplitShard" => split_shard(core, input).await,
        "MergeShards" => merge_shards(core, input).await,
        "UpdateShardCount" => update_shard_count(core, input).await,
        "UpdateStreamMode" => update_stream_mode(core, input).await,
        "RegisterStreamConsumer" => super::consumers::register(core, input).await,
        "DeregisterStreamConsumer" => super::consumers::deregister(core, input).await,
        "DescribeStreamConsumer" => super::consumers::describe(core, input),
        "ListStreamConsumers" => super::consumers::list(core, input),
        known if MODEL_OPERATIONS.contains(&known) => Err(KinesisError::unknown_operation(
            format!("spate does not implement {known} yet"),
        )),
        _ => Err(KinesisError::unknown_operation(format!(
            "Unknown operation {operation}"
        ))),
    }
}

// ---- streams, names and ARNs ----

pub(super) fn stream_arn(core: &Core, name: &str) -> String {
    format!(
        "arn:aws:kinesis:{}:{}:stream/{name}",
        core.config.region, core.config.account_id
    )
}

pub(super) fn validate_name(name: &str, path: &str) -> Result<(), KinesisError> {
    if name.is_empty() || name.len() > STREAM_NAME_BYTES_MAX {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{name}' at '{path}' failed to satisfy constraint: \
             Member must have length between 1 and {STREAM_NAME_BYTES_MAX}"
        )));
    }
    if catalog::validate_stream_name(name).is_err() {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{name}' at '{path}' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        )));
    }
    Ok(())
}

/// The stream a request names by `StreamName` or `StreamARN`.
pub(super) fn stream_name<'a>(input: &Input<'a, '_>) -> Result<&'a str, KinesisError> {
    if let Some(name) = input.str("StreamName")? {
        validate_name(name, "streamName")?;
        return Ok(name);
    }
    if let Some(arn) = input.str("StreamARN")? {
        let name = arn
            .strip_prefix("arn:aws")
            .and_then(|rest| rest.split_once(":kinesis:"))
            .and_then(|(_, rest)| rest.split_once(":stream/"))
            .map(|(_, name)| name)
            .filter(|name| catalog::validate_stream_name(name).is_ok())
            .ok_or_else(|| {
                KinesisError::validation(format!(
                    "1 validation error detected: Value '{arn}' at 'streamARN' failed to satisfy \
                     constraint: Member must satisfy regular expression pattern: \
                     arn:aws.*:kinesis:.*:\\d{{12}}:stream/\\S+"
                ))
            })?;
        return Ok(name);
    }
    Err(KinesisError::invalid_argument(
        "Either StreamName or StreamARN must be provided",
    ))
}

/// Operations whose model makes `StreamARN` required (a name alone will not do).
pub(super) fn require_stream_arn(input: &Input<'_, '_>) -> Result<(), KinesisError> {
    match input.str("StreamARN")? {
        Some(_) => Ok(()),
        None => Err(KinesisError::validation(
            "1 validation error detected: Value null at 'streamARN' failed to satisfy constraint: Member must not be null",
        )),
    }
}

pub(super) fn not_found(core: &Core, name: &str) -> KinesisError {
    KinesisError::not_found(format!(
        "Stream {name} under account {} not found.",
        core.config.account_id
    ))
}

pub(super) fn find_stream(core: &Core, name: &str) -> Result<Rc<catalog::Catalog>, KinesisError> {
    let snapshot = core.snapshot();
    if snapshot.stream(name).is_none() {
        return Err(not_found(core, name));
    }
    Ok(snapshot)
}

// ---- control plane ----

async fn create_stream(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = input.required_str("StreamName")?;
    validate_name(name, "streamName")?;
    let on_demand = match input.object("StreamModeDetails")? {
        Some(mode) => match mode.required_str("StreamMode")? {
            "ON_DEMAND" => true,
            "PROVISIONED" => false,
            other => {
                return Err(KinesisError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'streamModeDetails.streamMode' \
                     failed to satisfy constraint: Member must satisfy enum value set: [ON_DEMAND, PROVISIONED]"
                )));
            }
        },
        None => false,
    };
    let shard_count = match (input.int("ShardCount")?, on_demand) {
        (Some(count), _) => count,
        // On-demand streams start with 4 shards' worth of capacity.
        (None, true) => 4,
        (None, false) => {
            return Err(KinesisError::invalid_argument(
                "ShardCount is required for a PROVISIONED stream",
            ));
        }
    };
    if shard_count < 1 {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{shard_count}' at 'shardCount' failed to satisfy \
             constraint: Member must have value greater than or equal to 1"
        )));
    }
    if core.snapshot().stream(name).is_some() {
        return Err(KinesisError::in_use(format!(
            "Stream {name} under account {} already exists.",
            core.config.account_id
        )));
    }
    let shard_count = u32::try_from(shard_count).unwrap_or(u32::MAX);
    if shard_count > SHARDS_MAX {
        return Err(KinesisError::limit_exceeded(format!(
            "This request would exceed the shard limit for the account {}. Current limit: {SHARDS_MAX}",
            core.config.account_id
        )));
    }
    let tags = match input.entries("Tags")? {
        Some(entries) => parse_tags(&entries)?,
        None => Vec::new(),
    };
    control(
        core,
        ControlRequest::CreateStream {
            name: name.to_string(),
            shard_count,
            tags,
            on_demand,
        },
    )
    .await?;
    Ok(Vec::new())
}

async fn delete_stream(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let snapshot = find_stream(core, name)?;
    let consumers = snapshot.stream(name).map_or(0, |s| s.consumers.len());
    if consumers > 0 && input.bool("EnforceConsumerDeletion")? != Some(true) {
        return Err(KinesisError::in_use(format!(
            "Stream {name} under account {} has {consumers} registered consumer(s); deregister \
             them or set EnforceConsumerDeletion",
            core.config.account_id
        )));
    }
    control(
        core,
        ControlRequest::DeleteStream {
            name: name.to_string(),
        },
    )
    .await?;
    Ok(Vec::new())
}

pub(super) async fn control(core: &Rc<Core>, request: ControlRequest) -> Result<(), KinesisError> {
    match core.call(0, CoreRequest::Control(request)).await {
        CoreReply::Control(Ok(_)) => Ok(()),
        CoreReply::Control(Err(error)) => Err(from_wire(error)),
        _ => Err(KinesisError::internal(
            "Unexpected reply from the controller",
        )),
    }
}

fn write_shard(out: &mut Out, shard: &catalog::ShardMeta, trim: u64) {
    out.begin_object().str("ShardId", &shard_id(shard.index));
    if let Some(parent) = shard.parent {
        out.str("ParentShardId", &shard_id(parent));
    }
    if let Some(adjacent) = shard.adjacent_parent {
        out.str("AdjacentParentShardId", &shard_id(adjacent));
    }
    out.object("HashKeyRange")
        .str("StartingHashKey", &shard.hash_start.to_string())
        .str("EndingHashKey", &shard.hash_end.to_string())
        .end_object()
        .object("SequenceNumberRange")
        .str(
            "StartingSequenceNumber",
            &sequence::render(shard.index, trim),
        );
    if let Some(end) = shard.closed {
        // The last sequence number the shard holds (its start, when it holds none).
        let last = end.end_seq.saturating_sub(1).max(trim.min(end.end_seq));
        out.str("EndingSequenceNumber", &sequence::render(shard.index, last));
    }
    out.end_object().end_object();
}

fn stream_mode(stream: &StreamMeta) -> &'static str {
    if stream.on_demand {
        "ON_DEMAND"
    } else {
        "PROVISIONED"
    }
}

fn write_stream_common(out: &mut Out, core: &Core, stream: &StreamMeta) {
    out.str("StreamName", &stream.name)
        .str("StreamARN", &stream_arn(core, &stream.name))
        .str("StreamStatus", stream.status.as_str())
        .object("StreamModeDetails")
        .str("StreamMode", stream_mode(stream))
        .end_object()
        .int("RetentionPeriodHours", i64::from(stream.retention_hours))
        .timestamp("StreamCreationTimestamp", stream.created_us)
        .array("EnhancedMonitoring")
        .begin_object()
        .array("ShardLevelMetrics")
        .end_array()
        .end_object()
        .end_array()
        .str("EncryptionType", "NONE");
}

pub(super) fn limit(
    input: &Input<'_, '_>,
    name: &str,
    max: i64,
    default: i64,
) -> Result<usize, KinesisError> {
    match input.int(name)? {
        None => Ok(default as usize),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{n}' at '{}' failed to satisfy constraint: \
             Member must have value between 1 and {max}",
            super::json::lower_camel(name)
        ))),
    }
}

async fn describe_stream(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let snapshot = find_stream(core, name)?;
    let Some(stream) = snapshot.stream(name) else {
        return Err(not_found(core, name));
    };
    // Limit is 1..=10000 in the model, but the service returns at most 100 shards a call.
    let page = limit(input, "Limit", 10_000, 100)?.min(100);
    let after = match input.str("ExclusiveStartShardId")? {
        Some(id) => parse_shard_id(id).map(i64::from).unwrap_or(-1),
        None => -1,
    };
    let tips = crate::server::requests::tips(core, stream).await;
    let listed: Vec<&catalog::ShardMeta> = stream
        .all_shards()
        .into_iter()
        .filter(|s| i64::from(s.index) > after)
        .collect();
    let mut out = Out::with_capacity(256 + 256 * page.min(listed.len()));
    out.begin_object().object("StreamDescription");
    write_stream_common(&mut out, core, stream);
    out.array("Shards");
    for shard in listed.iter().take(page) {
        let trim = tips.get(&shard.index).map_or(0, |t| t.0);
        write_shard(&mut out, shard, trim);
    }
    out.end_array()
        .bool("HasMoreShards", listed.len() > page)
        .end_object()
        .end_object();
    Ok(out.into_bytes())
}

async fn describe_stream_summary(
    core: &Rc<Core>,
    input: &Input<'_, '_>,
) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let snapshot = find_stream(core, name)?;
    let Some(stream) = snapshot.stream(name) else {
        return Err(not_found(core, name));
    };
    let mut out = Out::with_capacity(512);
    out.begin_object().object("StreamDescriptionSummary");
    write_stream_common(&mut out, core, stream);
    out.int("OpenShardCount", stream.shards.len() as i64)
        .int("ConsumerCount", stream.consumers.len() as i64)
        .end_object()
        .end_object();
    Ok(out.into_bytes())
}

fn list_streams(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let page = limit(input, "Limit", 10_000, 100)?.min(100);
    let token = input.str("NextToken")?;
    let after = match (token, input.str("ExclusiveStartStreamName")?) {
        (Some(token), _) => Some(decode_token(token)?),
        (None, Some(name)) => Some(name.to_string()),
        (None, None) => None,
    };
    let snapshot = core.snapshot();
    let streams: Vec<&StreamMeta> = snapshot
        .streams
        .values()
        .filter(|s| after.as_deref().is_none_or(|a| s.name.as_str() > a))
        .collect();
    let shown = &streams[..page.min(streams.len())];
    let more = streams.len() > shown.len();
    let mut out = Out::with_capacity(128 + 200 * shown.len());
    out.begin_object().array("StreamNames");
    for stream in shown {
        out.item_str(&stream.name);
    }
    out.end_array().bool("HasMoreStreams", more);
    if let (true, Some(last)) = (more, shown.last()) {
        out.str("NextToken", &encode_token(&last.name));
    }
    out.array("StreamSummaries");
    for stream in shown {
        out.begin_object()
            .str("StreamName", &stream.name)
            .str("StreamARN", &stream_arn(core, &stream.name))
            .str("StreamStatus", stream.status.as_str())
            .object("StreamModeDetails")
            .str("StreamMode", stream_mode(stream))
            .end_object()
            .timestamp("StreamCreationTimestamp", stream.created_us)
            .end_object();
    }
    out.end_array().end_object();
    Ok(out.into_bytes())
}

pub(super) fn encode_token(text: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(text)
}

pub(super) fn decode_token(token: &str) -> Result<String, KinesisError> {
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(token)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(|| KinesisError::invalid_argument(format!("Invalid NextToken: {token}")))
}

async fn list_shards(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let page = limit(input, "MaxResults", 10_000, 1000)?;
    let (name, mut after) = match input.str("NextToken")? {
        Some(token) => {
            if input.str("StreamName")?.is_some() || input.str("ExclusiveStartShardId")?.is_some() {
                return Err(KinesisError::invalid_argument(
                    "NextToken cannot be combined with StreamName or ExclusiveStartShardId",
                ));
            }
            let text = decode_token(token)?;
            let (name, index) = text
                .rsplit_once('/')
                .and_then(|(n, i)| Some((n.to_string(), i.parse::<i64>().ok()?)))
                .ok_or_else(|| {
                    KinesisError::invalid_argument(format!("Invalid NextToken: {token}"))
                })?;
            (name, index)
        }
        None => {
            let name = stream_name(input)?.to_string();
            let after = input
                .str("ExclusiveStartShardId")?
                .and_then(parse_shard_id)
                .map_or(-1, i64::from);
            (name, after)
        }
    };
    let filter = match input.object("ShardFilter")? {
        Some(filter) => Some(shard_filter(&filter)?),
        None => None,
    };
    if let Some(ShardFilter::AfterShardId(index)) = filter {
        after = after.max(i64::from(index));
    }
    let snapshot = find_stream(core, &name)?;
    let Some(stream) = snapshot.stream(&name) else {
        return Err(not_found(core, &name));
    };
    let tips = crate::server::requests::tips(core, stream).await;
    let listed: Vec<&catalog::ShardMeta> = stream
        .all_shards()
        .into_iter()
        .filter(|s| i64::from(s.index) > after)
        .filter(|s| filter.is_none_or(|f| f.admits(stream, s)))
        .collect();
    let shown = &listed[..page.min(listed.len())];
    let mut out = Out::with_capacity(128 + 256 * shown.len());
    out.begin_object().array("Shards");
    for shard in shown {
        write_shard(&mut out, shard, tips.get(&shard.index).map_or(0, |t| t.0));
    }
    out.end_array();
    if let (true, Some(last)) = (listed.len() > shown.len(), shown.last()) {
        out.str(
            "NextToken",
            &encode_token(&format!("{name}/{}", last.index)),
        );
    }
    out.end_object();
    Ok(out.into_bytes())
}

/// A ListShards ShardFilter.
#[derive(Clone, Copy)]
enum ShardFilter {
    /// Shards after this one.
    AfterShardId(u32),
    /// Shards open at the trim horizon: those whose parents are gone or that never had any.
    AtTrimHorizon,
    /// Every shard from the trim horizon on.
    FromTrimHorizon,
    /// Open shards.
    AtLatest,
    /// Shards open at this time, unix microseconds.
    AtTimestamp(u64),
    /// Shards open at this time or opened since.
    FromTimestamp(u64),
}

impl ShardFilter {
    fn admits(self, stream: &StreamMeta, shard: &catalog::ShardMeta) -> bool {
        let created = if shard.created_us == 0 {
            stream.created_us
        } else {
            shard.created_us
        };
        let closed = shard.closed.map(|end| end.closed_us);
        match self {
            ShardFilter::AfterShardId(_) | ShardFilter::FromTrimHorizon => true,
            ShardFilter::AtTrimHorizon => shard
                .parent
                .iter()
                .chain(&shard.adjacent_parent)
                .all(|p| stream.shard(*p).is_none()),
            ShardFilter::AtLatest => shard.is_open(),
            ShardFilter::AtTimestamp(at) => created <= at && closed.is_none_or(|c| c > at),
            ShardFilter::FromTimestamp(at) => closed.is_none_or(|c| c > at),
        }
    }
}

fn shard_filter(filter: &Input<'_, '_>) -> Result<ShardFilter, KinesisError> {
    let timestamp = || {
        filter.timestamp_us("Timestamp")?.ok_or_else(|| {
            KinesisError::invalid_argument("ShardFilter of this Type requires a Timestamp")
        })
    };
    Ok(match filter.required_str("Type")? {
        "AFTER_SHARD_ID" => {
            let id = filter.str("ShardId")?.ok_or_else(|| {
                KinesisError::invalid_argument("ShardFilter AFTER_SHARD_ID requires a ShardId")
            })?;
            let index = parse_shard_id(id)
                .ok_or_else(|| KinesisError::invalid_argument(format!("Invalid ShardId {id}")))?;
            ShardFilter::AfterShardId(index)
        }
        "AT_TRIM_HORIZON" => ShardFilter::AtTrimHorizon,
        "FROM_TRIM_HORIZON" => ShardFilter::FromTrimHorizon,
        "AT_LATEST" => ShardFilter::AtLatest,
        "AT_TIMESTAMP" => ShardFilter::AtTimestamp(timestamp()?),
        "FROM_TIMESTAMP" => ShardFilter::FromTimestamp(timestamp()?),
        other => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'shardFilter.type' failed to satisfy constraint: \
                 Member must satisfy enum value set: [AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, AT_TIMESTAMP, FROM_TIMESTAMP]"
            )));
        }
    })
}

// ---- resharding ----

/// A hash key as Kinesis writes it: decimal, no leading zeros, at most 2^128 - 1.
fn decimal_hash_key(text: &str) -> Option<u128> {
    let valid = !text.is_empty()
        && text.len() <= 39
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    valid.then(|| text.parse::<u128>().ok()).flatten()
}

/// Checks the hash key text of SplitShard.
fn parse_new_starting_hash(text: &str) -> Result<u128, KinesisError> {
    decimal_hash_key(text).ok_or_else(|| {
        KinesisError::validation(format!(
            "1 validation error detected: Value '{text}' at 'newStartingHashKey' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: 0|([1-9]\\d{{0,38}})"
        ))
    })
}

fn shard_arg(
    core: &Core,
    stream: &StreamMeta,
    input: &Input<'_, '_>,
    member: &str,
) -> Result<u32, KinesisError> {
    let text = input.required_str(member)?;
    parse_shard_id(text)
        .filter(|&index| stream.shard(index).is_some())
        .ok_or_else(|| shard_not_found(core, &stream.name, text))
}

/// Sends a reshard to the controller, with the AWS messages for what it rejects.
async fn reshard(
    core: &Rc<Core>,
    name: &str,
    change: catalog::Reshard,
) -> Result<(), KinesisError> {
    control(
        core,
        ControlRequest::Reshard {
            name: name.to_string(),
            change,
        },
    )
    .await
    .map_err(|error| match error.kind {
        "InvalidArgumentException" if error.message.contains("already been merged or split") => {
            KinesisError::invalid_argument(format!(
                "{} in stream {name} under account {}",
                error.message, core.config.account_id
            ))
        }
        _ => error,
    })
}

async fn split_shard(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let key = parse_new_starting_hash(input.required_str("NewStartingHashKey")?)?;
    let snapshot = find_stream(core, name)?;
    let Some(stream) = snapshot.stream(name) else {
        return Err(not_found(core, name));
    };
    let shard = shard_arg(core, stream, input, "ShardToSplit")?;
    let change = catalog::Reshard::Split {
        shard,
        new_starting_hash: key,
    };
    reshard(core, name, change).await?;
    Ok(Vec::new())
}

async fn merge_shards(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let snapshot = find_stream(core, name)?;
    let Some(stream) = snapshot.stream(name) else {
        return Err(not_found(core, name));
    };
    let shard = shard_arg(core, stream, input, "ShardToMerge")?;
    let adjacent = shard_arg(core, stream, input, "AdjacentShardToMerge")?;
    reshard(core, name, catalog::Reshard::Merge { shard, adjacent }).await?;
    Ok(Vec::new())
}

async fn update_shard_count(
    core: &Rc<Core>,
    input: &Input<'_, '_>,
) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let target = input.int("TargetShardCount")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'targetShardCount' failed to satisfy constraint: Member must not be null",
        )
    })?;
    if target < 1 {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{target}' at 'targetShardCount' failed to satisfy \
             constraint: Member must have value greater than or equal to 1"
        )));
    }
    match input.required_str("ScalingType")? {
        "UNIFORM_SCALING" => {}
        other => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'scalingType' failed to satisfy constraint: \
                 Member must satisfy enum value set: [UNIFORM_SCALING]"
            )));
        }
    }
    let snapshot = find_stream(core, name)?;
    let current = snapshot.stream(name).map_or(0, |s| s.shards.len());
    let target = u32::try_from(target).unwrap_or(u32::MAX);
    reshard(core, name, catalog::Reshard::Scale { target }).await?;
    let mut out = Out::with_capacity(256);
    out.begin_object()
        .str("StreamName", name)
        .str("StreamARN", &stream_arn(core, name))
        .int("CurrentShardCount", current as i64)
        .int("TargetShardCount", i64::from(target))
        .end_object();
    Ok(out.into_bytes())
}

async fn update_stream_mode(
    core: &Rc<Core>,
    input: &Input<'_, '_>,
) -> Result<Vec<u8>, KinesisError> {
    require_stream_arn(input)?;
    let name = stream_name(input)?;
    let mode = input.object("StreamModeDetails")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'streamModeDetails' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let on_demand = match mode.required_str("StreamMode")? {
        "ON_DEMAND" => true,
        "PROVISIONED" => false,
        other => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'streamModeDetails.streamMode' \
                 failed to satisfy constraint: Member must satisfy enum value set: [ON_DEMAND, PROVISIONED]"
            )));
        }
    };
    find_stream(core, name)?;
    control(
        core,
        ControlRequest::SetMode {
            name: name.to_string(),
            on_demand,
        },
    )
    .await?;
    Ok(Vec::new())
}

fn describe_limits(core: &Rc<Core>) -> Result<Vec<u8>, KinesisError> {
    let open: usize = core
        .snapshot()
        .streams
        .values()
        .map(|s| s.shards.len())
        .sum();
    let mut out = Out::default();
    out.begin_object()
        .int("ShardLimit", i64::from(SHARDS_MAX))
        .int("OpenShardCount", open as i64)
        .int(
            "OnDemandStreamCount",
            core.snapshot()
                .streams
                .values()
                .filter(|s| s.on_demand)
                .count() as i64,
        )
        .int("OnDemandStreamCountLimit", 50)
        .end_object();
    Ok(out.into_bytes())
}

// ---- retention and tags ----

async fn retention(
    core: &Rc<Core>,
    input: &Input<'_, '_>,
    increase: bool,
) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let hours = input.int("RetentionPeriodHours")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'retentionPeriodHours' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let snapshot = find_stream(core, name)?;
    let current = snapshot
        .stream(name)
        .map_or(24, |s| i64::from(s.retention_hours));
    let (min, max) = (
        i64::from(crate::limits::RETENTION_HOURS_MIN),
        i64::from(crate::limits::RETENTION_HOURS_MAX),
    );
    if hours < min {
        return Err(KinesisError::invalid_argument(format!(
            "Minimum allowed retention period is {min} hours. Requested retention period ({hours} hours) is too short."
        )));
    }
    if hours > max {
        return Err(KinesisError::invalid_argument(format!(
            "Maximum allowed retention period is {max} hours. Requested retention period ({hours} hours) is too long."
        )));
    }
    if increase && hours < current {
        return Err(KinesisError::invalid_argument(format!(
            "Requested retention period ({hours} hours) for stream {name} can not be shorter than existing \
             retention period ({current} hours). Use DecreaseRetentionPeriod API."
        )));
    }
    if !increase && hours > current {
        return Err(KinesisError::invalid_argument(format!(
            "Requested retention period ({hours} hours) for stream {name} can not be longer than existing \
             retention period ({current} hours). Use IncreaseRetentionPeriod API."
        )));
    }
    let hours = u32::try_from(hours).unwrap_or(crate::limits::RETENTION_HOURS_MAX);
    control(
        core,
        ControlRequest::SetRetention {
            name: name.to_string(),
            hours,
        },
    )
    .await?;
    Ok(Vec::new())
}

fn parse_tags(
    entries: &[(&str, simd_json::tape::Value<'_, '_>)],
) -> Result<Vec<(String, String)>, KinesisError> {
    if entries.is_empty() || entries.len() > 200 {
        return Err(KinesisError::validation(
            "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must have length between 1 and 200",
        ));
    }
    entries
        .iter()
        .map(|(key, value)| {
            let value = value
                .as_str()
                .ok_or_else(|| KinesisError::serialization(format!("Tag {key} must have a string value")))?;
            if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
                return Err(KinesisError::validation(format!(
                    "1 validation error detected: Value '{key}' at 'tags' failed to satisfy constraint: \
                     tag keys must have length 1..128 and values 0..256"
                )));
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

async fn add_tags(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let entries = input.entries("Tags")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'tags' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let tags = parse_tags(&entries)?;
    find_stream(core, name)?;
    control(core, ControlRequest::AddTags { name: name.to_string(), tags })
        .await
        .map_err(|error| {
            if error.kind == "InvalidArgumentException" {
                KinesisError::invalid_argument(format!(
                    "Failed to add tags to stream {name} under account {} because a given stream cannot have more than {} tags associated with it.",
                    core.config.account_id,
                    crate::limits::STREAM_TAGS_MAX
                ))
            } else {
                error
            }
        })?;
    Ok(Vec::new())
}

async fn remove_tags(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let keys = input.array("TagKeys")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null",
        )
    })?;
    if keys.is_empty() || keys.len() > 50 {
        return Err(KinesisError::validation(
            "1 validation error detected: Value at 'tagKeys' failed to satisfy constraint: Member must have length between 1 and 50",
        ));
    }
    let keys = keys
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| KinesisError::serialization("TagKeys must be strings"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    find_stream(core, name)?;
    control(
        core,
        ControlRequest::RemoveTags {
            name: name.to_string(),
            keys,
        },
    )
    .await?;
    Ok(Vec::new())
}

fn list_tags(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let page = limit(input, "Limit", 50, 50)?;
    let after = input.str("ExclusiveStartTagKey")?;
    let snapshot = find_stream(core, name)?;
    let Some(stream) = snapshot.stream(name) else {
        return Err(not_found(core, name));
    };
    let tags: Vec<(&String, &String)> = stream
        .tags
        .iter()
        .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
        .collect();
    let mut out = Out::with_capacity(64 + 64 * tags.len());
    out.begin_object().array("Tags");
    for (key, value) in tags.iter().take(page) {
        out.begin_object()
            .str("Key", key)
            .str("Value", value)
            .end_object();
    }
    out.end_array()
        .bool("HasMoreTags", tags.len() > page)
        .end_object();
    Ok(out.into_bytes())
}

// ---- data plane ----

/// One record of a put, checked, before its payload is decoded.
struct Checked<'a> {
    key: &'a str,
    data: &'a str,
    hash: Option<u128>,
}

fn parse_hash_key(text: &str) -> Result<u128, KinesisError> {
    decimal_hash_key(text).ok_or_else(|| {
        KinesisError::invalid_argument(format!(
            "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {text}"
        ))
    })
}

/// Checks put records and decodes their payloads into one buffer.
/// Every limit is checked before anything is appended.
fn decode_records<'a>(
    records: &[&Input<'a, '_>],
    path: &dyn Fn(usize, &str) -> String,
) -> Result<Decoded<'a>, KinesisError> {
    let mut checked = Vec::with_capacity(records.len());
    let mut total = 0usize;
    let mut data_total = 0usize;
    for (i, record) in records.iter().enumerate() {
        let [key, data, hash] = record.strs(["PartitionKey", "Data", "ExplicitHashKey"])?;
        let key = key.ok_or_else(|| super::json::missing("PartitionKey"))?;
        let chars = if key.is_ascii() {
            key.len()
        } else {
            key.chars().count()
        };
        if chars == 0 || chars > PARTITION_KEY_CHARS_MAX {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{key}' at '{}' failed to satisfy constraint: \
                 Member must have length {}",
                path(i, "partitionKey"),
                if chars == 0 {
                    "greater than or equal to 1".to_string()
                } else {
                    format!("less than or equal to {PARTITION_KEY_CHARS_MAX}")
                }
            )));
        }
        let data = data.ok_or_else(|| super::json::missing("Data"))?;
        let size = base64_simd::STANDARD
            .decoded_length(data.as_bytes())
            .map_err(|_| {
                KinesisError::serialization(format!("Invalid base64 in {}", path(i, "data")))
            })?;
        if size > RECORD_DATA_BYTES_MAX {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value at '{}' failed to satisfy constraint: \
                 Member must have length less than or equal to {RECORD_DATA_BYTES_MAX}",
                path(i, "data")
            )));
        }
        let hash = hash.map(parse_hash_key).transpose()?;
        total += size + key.len();
        data_total += size;
        checked.push(Checked { key, data, hash });
    }
    if total > BATCH_BYTES_MAX {
        return Err(KinesisError::invalid_argument(format!(
            "Records size of {total} bytes exceeds the limit of {BATCH_BYTES_MAX} bytes (5 MiB)"
        )));
    }
    // Every payload is decoded into one buffer, allocated once at its final size; routing
    // then copies each record once more, into its shard's batch.
    let mut buffer: Vec<u8> = Vec::with_capacity(data_total);
    let mut ends = Vec::with_capacity(checked.len());
    for (i, record) in checked.iter().enumerate() {
        base64_simd::STANDARD
            .decode_append(record.data.as_bytes(), &mut buffer)
            .map_err(|_| {
                KinesisError::serialization(format!("Invalid base64 in {}", path(i, "data")))
            })?;
        ends.push(buffer.len());
    }
    Ok(Decoded {
        checked,
        buffer,
        ends,
    })
}

/// Put records checked and decoded: keys borrowed from the request, payloads in one
/// buffer (record `i`'s ends at `ends[i]`).
struct Decoded<'a> {
    checked: Vec<Checked<'a>>,
    buffer: Vec<u8>,
    ends: Vec<usize>,
}

impl Decoded<'_> {
    fn records(&self) -> Vec<route::PutRef<'_>> {
        let mut start = 0;
        self.checked
            .iter()
            .zip(&self.ends)
            .map(|(record, &end)| {
                let data = &self.buffer[start..end];
                start = end;
                route::PutRef {
                    partition_key: record.key.as_bytes(),
                    data,
                    explicit_hash_key: record.hash,
                }
            })
            .collect()
    }
}

async fn put(
    core: &Rc<Core>,
    name: &str,
    decoded: &Decoded<'_>,
) -> Result<Vec<crate::protocol::binary::PutResult>, KinesisError> {
    find_stream(core, name)?;
    route::put_records(core, name, &decoded.records(), crate::tools::now_us())
        .await
        .map_err(|error| match error.status {
            Status::StreamNotFound => not_found(core, name),
            _ => from_wire(error),
        })
}

async fn put_record(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let decoded = decode_records(&[input], &|_, member| super::json::lower_camel(member))?;
    let mut results = put(core, name, &decoded).await?;
    let (shard, seq) = results
        .pop()
        .ok_or_else(|| KinesisError::internal("No result for the record"))?
        .map_err(from_wire)?;
    let mut out = Out::with_capacity(128);
    out.begin_object()
        .str("ShardId", &shard_id(shard))
        .plain_str("SequenceNumber", &sequence::digits(shard, seq))
        .str("EncryptionType", "NONE")
        .end_object();
    Ok(out.into_bytes())
}

async fn put_records(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let records = input.array("Records")?.ok_or_else(|| {
        KinesisError::validation(
            "1 validation error detected: Value null at 'records' failed to satisfy constraint: Member must not be null",
        )
    })?;
    if records.is_empty() || records.len() > BATCH_RECORDS_MAX {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '[...]' at 'records' failed to satisfy constraint: \
             Member must have length {}",
            if records.is_empty() {
                "greater than or equal to 1".to_string()
            } else {
                format!("less than or equal to {BATCH_RECORDS_MAX}")
            }
        )));
    }
    let inputs: Vec<Input<'_, '_>> = records.iter().map(Input::new).collect::<Result<_, _>>()?;
    let refs: Vec<&Input<'_, '_>> = inputs.iter().collect();
    let path = |i: usize, member: &str| format!("records.{}.member.{member}", i + 1);
    let decoded = decode_records(&refs, &path)?;
    let count = decoded.checked.len();
    let results = put(core, name, &decoded).await?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let mut out = Out::with_capacity(64 + 110 * count);
    out.begin_object()
        .int("FailedRecordCount", failed as i64)
        .array("Records");
    let mut speller = Speller::default();
    for result in results {
        match result {
            Ok((shard, seq)) => {
                out.raw_item(speller.entry(shard, seq));
            }
            Err(error) if error.status == Status::Throttled => {
                out.begin_object()
                    .str("ErrorCode", "ProvisionedThroughputExceededException")
                    .str("ErrorMessage", &error.message)
                    .end_object();
            }
            Err(_) => {
                out.begin_object()
                    .str("ErrorCode", "InternalFailure")
                    .str("ErrorMessage", "Internal service failure.")
                    .end_object();
            }
        }
    }
    out.end_array().str("EncryptionType", "NONE").end_object();
    Ok(out.into_bytes())
}

/// Whether a reader at `next_seq` has read all of a closed shard.
pub(super) fn shard_ended(shard: &catalog::ShardMeta, next_seq: u64) -> bool {
    shard.closed.is_some_and(|end| next_seq >= end.end_seq)
}

/// Room for a JSON document carrying `records` (base64 grows data by a third).
pub(super) fn records_capacity(records: &[crate::log::RecordOut]) -> usize {
    256 + records
        .iter()
        .map(|r| r.data.len() * 4 / 3 + 200)
        .sum::<usize>()
}

/// `"Records": [...]` as GetRecords and SubscribeToShard events carry them.
pub(super) fn write_records(out: &mut Out, shard: u32, records: &[crate::log::RecordOut]) {
    out.array("Records");
    let mut speller = Speller::default();
    for record in records {
        out.begin_object()
            .plain_str("SequenceNumber", speller.sequence(shard, record.seq))
            .timestamp("ApproximateArrivalTimestamp", record.arrival_us)
            .base64("Data", &record.data)
            .str(
                "PartitionKey",
                &String::from_utf8_lossy(&record.partition_key),
            )
            .end_object();
    }
    out.end_array();
}

/// `"ChildShards": [...]`: the shards that took over a closed shard's hash range.
pub(super) fn write_child_shards(out: &mut Out, stream: &StreamMeta, shard: u32) {
    out.array("ChildShards");
    for child in stream.children_of(shard) {
        out.begin_object()
            .str("ShardId", &shard_id(child.index))
            .array("ParentShards");
        for parent in child.parent.iter().chain(&child.adjacent_parent) {
            out.item_str(&shard_id(*parent));
        }
        out.end_array()
            .object("HashKeyRange")
            .str("StartingHashKey", &child.hash_start.to_string())
            .str("EndingHashKey", &child.hash_end.to_string())
            .end_object()
            .end_object();
    }
    out.end_array();
}

pub(super) fn shard_not_found(core: &Core, stream: &str, shard: &str) -> KinesisError {
    KinesisError::not_found(format!(
        "Shard {shard} in stream {stream} under account {} does not exist",
        core.config.account_id
    ))
}

async fn get_shard_iterator(
    core: &Rc<Core>,
    input: &Input<'_, '_>,
) -> Result<Vec<u8>, KinesisError> {
    let name = stream_name(input)?;
    let shard_text = input.required_str("ShardId")?;
    let kind = input.required_str("ShardIteratorType")?;
    let snapshot = find_stream(core, name)?;
    let Some(stream) = snapshot.stream(name) else {
        return Err(not_found(core, name));
    };
    let shard = parse_shard_id(shard_text)
        .and_then(|index| stream.shard(index))
        .ok_or_else(|| shard_not_found(core, name, shard_text))?;
    let sequence_arg = input.str("StartingSequenceNumber")?;
    let position_error = || {
        KinesisError::invalid_argument(
            "Must either specify (1) AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER and StartingSequenceNumber \
             or (2) TRIM_HORIZON or LATEST and no StartingSequenceNumber or (3) AT_TIMESTAMP and Timestamp.",
        )
    };
    let position = match (kind, sequence_arg) {
        ("TRIM_HORIZON", None) => StartPosition::TrimHorizon,
        ("LATEST", None) => StartPosition::Latest,
        ("AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER", Some(text)) => {
            let (encoded_shard, seq) = sequence::parse(text).ok_or_else(|| {
                KinesisError::invalid_argument(format!(
                    "StartingSequenceNumber {text} used in GetShardIterator on shard {} in stream {name} \
                     under account {} is invalid.",
                    shard_id(shard.index),
                    core.config.account_id
                ))
            })?;
            if encoded_shard != shard.index {
                return Err(KinesisError::invalid_argument(format!(
                    "Invalid StartingSequenceNumber. It encodes {}, while it was used in a call to a shard with {}",
                    shard_id(encoded_shard),
                    shard_id(shard.index)
                )));
            }
            if kind == "AT_SEQUENCE_NUMBER" {
                StartPosition::AtSequence(seq)
            } else {
                StartPosition::AfterSequence(seq)
            }
        }
        ("AT_TIMESTAMP", None) => {
            let at = input
                .timestamp_us("Timestamp")?
                .ok_or_else(position_error)?;
            if at > crate::tools::now_us() + 1_000_000 {
                return Err(KinesisError::invalid_argument(
                    "The timestamp must not be in the future",
                ));
            }
            StartPosition::AtTimestamp(at)
        }
        (
            "TRIM_HORIZON"
            | "LATEST"
            | "AT_TIMESTAMP"
            | "AT_SEQUENCE_NUMBER"
            | "AFTER_SEQUENCE_NUMBER",
            _,
        ) => {
            return Err(position_error());
        }
        (other, _) => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'shardIteratorType' failed to satisfy constraint: \
                 Member must satisfy enum value set: [AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, AT_TIMESTAMP]"
            )));
        }
    };
    let request = || CoreRequest::Resolve {
        stream_id: stream.id,
        shard: shard.index,
        position,
    };
    let seq = match call_owner(core, stream.id, shard.index, request).await {
        CoreReply::Resolved(result) => result.map_err(from_wire)?,
        CoreReply::Control(Err(error)) => return Err(from_wire(error)),
        _ => {
            return Err(KinesisError::internal(
                "Unexpected reply to a position lookup",
            ));
        }
    };
    let iterator = core.iterator_key.seal(IteratorState {
        stream_id: stream.id,
        shard: shard.index,
        seq,
        issued_ms: crate::tools::now_us() / 1000,
    });
    let mut out = Out::with_capacity(128);
    out.begin_object()
        .str("ShardIterator", &iterator)
        .end_object();
    Ok(out.into_bytes())
}

async fn get_records(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let text = input.required_str("ShardIterator")?;
    let count = limit(input, "Limit", 10_000, 10_000)?;
    let now_ms = crate::tools::now_us() / 1000;
    let state = core.iterator_key.open(text, now_ms).map_err(|error| match error {
        IteratorError::Invalid => KinesisError::invalid_argument("Invalid ShardIterator."),
        IteratorError::Expired { issued_ms, now_ms } => KinesisError::expired_iterator(format!(
            "Iterator expired. The iterator was created at time {issued_ms} while right now it is {now_ms} \
             which is further in the future than the tolerated delay of {} milliseconds.",
            core.iterator_key.ttl_ms()
        )),
    })?;
    let snapshot = core.snapshot();
    let stream = snapshot
        .streams
        .values()
        .find(|s| s.id == state.stream_id)
        .ok_or_else(|| KinesisError::not_found("The stream of this iterator no longer exists"))?;
    let shard = stream
        .shard(state.shard)
        .ok_or_else(|| shard_not_found(core, &stream.name, &shard_id(state.shard)))?;
    let request = || CoreRequest::Read {
        stream_id: stream.id,
        shard: shard.index,
        position: StartPosition::AtSequence(state.seq),
        limit: count as u32,
        bytes_max: crate::limits::READ_BYTES_MAX as u32,
        wait_us: 0,
        subscription: None,
    };
    let body: RecordsBody = match call_owner(core, stream.id, shard.index, request).await {
        CoreReply::Read(result) => result.map_err(from_wire)?,
        CoreReply::Control(Err(error)) => return Err(from_wire(error)),
        _ => return Err(KinesisError::internal("Unexpected reply to a read")),
    };
    let next = core.iterator_key.seal(IteratorState {
        seq: body.next_seq.max(state.seq),
        issued_ms: now_ms,
        ..state
    });
    let mut out = Out::with_capacity(records_capacity(&body.records));
    out.begin_object();
    write_records(&mut out, shard.index, &body.records);
    // A reader that has drained a closed shard gets no next iterator, and the shards
    // that took over its hash range, as the signal to move on to them.
    if shard_ended(shard, body.next_seq.max(state.seq)) {
        out.int("MillisBehindLatest", 0);
        write_child_shards(&mut out, stream, shard.index);
    } else {
        out.str("NextShardIterator", &next)
            .int("MillisBehindLatest", body.millis_behind as i64);
    }
    out.end_object();
    Ok(out.into_bytes())
}
