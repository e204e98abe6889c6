//! Registered consumers (enhanced fan-out) on the Kinesis API: RegisterStreamConsumer,
//! DeregisterStreamConsumer, DescribeStreamConsumer and ListStreamConsumers, and the
//! consumer ARNs SubscribeToShard names them by. The catalog keeps them (per stream, by
//! name); the controller changes them. Runs on the core holding the connection.

use std::rc::Rc;

use crate::catalog::{self, ConsumerMeta, StreamMeta};
use crate::limits::STREAM_CONSUMERS_MAX;
use crate::protocol::kinesis::errors::KinesisError;
use crate::protocol::kinesis::json::{Input, Out};
use crate::protocol::kinesis::operations::{
    control, decode_token, encode_token, find_stream, limit, not_found, require_stream_arn,
    stream_arn, stream_name,
};
use crate::server::controller::ControlRequest;
use crate::server::core::Core;

/// `<stream ARN>/consumer/<name>:<creation epoch seconds>`, as Kinesis names consumers.
pub fn consumer_arn(core: &Core, stream: &str, consumer: &ConsumerMeta) -> String {
    format!(
        "{}/consumer/{}:{}",
        stream_arn(core, stream),
        consumer.name,
        consumer.created_s()
    )
}

/// Splits a consumer ARN into (stream, consumer, creation seconds).
pub fn parse_consumer_arn(arn: &str) -> Result<(&str, &str, u64), KinesisError> {
    let invalid = || {
        KinesisError::validation(format!(
            "1 validation error detected: Value '{arn}' at 'consumerARN' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: \
             ^(arn):aws.*:kinesis:.*:\\d{{12}}:.*stream\\/[a-zA-Z0-9_.-]+\\/consumer\\/[a-zA-Z0-9_.-]+:[0-9]+"
        ))
    };
    let rest = arn
        .strip_prefix("arn:aws")
        .and_then(|r| r.split_once(":kinesis:"))
        .and_then(|(_, r)| r.split_once(":stream/"))
        .map(|(_, r)| r)
        .ok_or_else(invalid)?;
    let (stream, rest) = rest.split_once("/consumer/").ok_or_else(invalid)?;
    let (consumer, seconds) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let seconds: u64 = seconds.parse().map_err(|_| invalid())?;
    if catalog::validate_stream_name(stream).is_err() || validate_consumer_name(consumer).is_err() {
        return Err(invalid());
    }
    Ok((stream, consumer, seconds))
}

fn validate_consumer_name(name: &str) -> Result<(), KinesisError> {
    // Consumer names follow the same pattern and length as stream names.
    catalog::validate_stream_name(name).map_err(|_| {
        KinesisError::validation(format!(
            "1 validation error detected: Value '{name}' at 'consumerName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and have length between 1 and 128"
        ))
    })
}

pub fn consumer_not_found(core: &Core, stream: &str, consumer: &str) -> KinesisError {
    KinesisError::not_found(format!(
        "Consumer {consumer} under stream {stream} under account {} not found.",
        core.config.account_id
    ))
}

/// The stream and consumer a request names: `ConsumerARN`, or `StreamARN` and
/// `ConsumerName`.
fn named(input: &Input<'_, '_>) -> Result<(String, String, Option<u64>), KinesisError> {
    if let Some(arn) = input.str("ConsumerARN")? {
        let (stream, consumer, seconds) = parse_consumer_arn(arn)?;
        return Ok((stream.to_string(), consumer.to_string(), Some(seconds)));
    }
    let stream = stream_name(input)?.to_string();
    let consumer = input.required_str("ConsumerName")?;
    validate_consumer_name(consumer)?;
    Ok((stream, consumer.to_string(), None))
}

/// Finds a consumer by name, and by creation time when an ARN gave one (an ARN of a
/// consumer deregistered and registered again names the old one, which is gone).
pub fn find_consumer<'a>(
    core: &Core,
    stream: &'a StreamMeta,
    consumer: &str,
    seconds: Option<u64>,
) -> Result<&'a ConsumerMeta, KinesisError> {
    stream
        .consumers
        .get(consumer)
        .filter(|c| seconds.is_none_or(|s| s == c.created_s()))
        .ok_or_else(|| consumer_not_found(core, &stream.name, consumer))
}

fn write_consumer(out: &mut Out, core: &Core, stream: &str, consumer: &ConsumerMeta) {
    out.str("ConsumerName", &consumer.name)
        .str("ConsumerARN", &consumer_arn(core, stream, consumer))
        .str("ConsumerStatus", consumer.status.as_str())
        .timestamp("ConsumerCreationTimestamp", consumer.created_us);
}

pub async fn register(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    require_stream_arn(input)?;
    let name = stream_name(input)?;
    let consumer = input.required_str("ConsumerName")?;
    validate_consumer_name(consumer)?;
    find_stream(core, name)?;
    control(
        core,
        ControlRequest::RegisterConsumer {
            name: name.to_string(),
            consumer: consumer.to_string(),
        },
    )
    .await
    .map_err(|error| match error.kind {
        "LimitExceededException" if !error.message.contains("CREATING") => {
            KinesisError::limit_exceeded(format!(
                "Stream {name} under account {} has reached the limit of {STREAM_CONSUMERS_MAX} registered consumers",
                core.config.account_id
            ))
        }
        _ => error,
    })?;
    let snapshot = core.snapshot();
    let stream = snapshot.stream(name).ok_or_else(|| not_found(core, name))?;
    let meta = find_consumer(core, stream, consumer, None)?;
    let mut out = Out::with_capacity(256);
    out.begin_object().object("Consumer");
    write_consumer(&mut out, core, name, meta);
    out.end_object().end_object();
    Ok(out.into_bytes())
}

pub async fn deregister(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let (name, consumer, seconds) = named(input)?;
    let snapshot = find_stream(core, &name)?;
    let stream = snapshot
        .stream(&name)
        .ok_or_else(|| not_found(core, &name))?;
    find_consumer(core, stream, &consumer, seconds)?;
    control(core, ControlRequest::DeregisterConsumer { name, consumer }).await?;
    Ok(Vec::new())
}

pub fn describe(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    let (name, consumer, seconds) = named(input)?;
    let snapshot = find_stream(core, &name)?;
    let stream = snapshot
        .stream(&name)
        .ok_or_else(|| not_found(core, &name))?;
    let meta = find_consumer(core, stream, &consumer, seconds)?;
    let mut out = Out::with_capacity(384);
    out.begin_object().object("ConsumerDescription");
    write_consumer(&mut out, core, &name, meta);
    out.str("StreamARN", &stream_arn(core, &name))
        .end_object()
        .end_object();
    Ok(out.into_bytes())
}

pub fn list(core: &Rc<Core>, input: &Input<'_, '_>) -> Result<Vec<u8>, KinesisError> {
    require_stream_arn(input)?;
    let name = stream_name(input)?;
    let page = limit(input, "MaxResults", 10_000, 100)?;
    let after = input.str("NextToken")?.map(decode_token).transpose()?;
    let snapshot = find_stream(core, name)?;
    let stream = snapshot.stream(name).ok_or_else(|| not_found(core, name))?;
    let listed: Vec<&ConsumerMeta> = stream
        .consumers
        .values()
        .filter(|c| after.as_deref().is_none_or(|a| c.name.as_str() > a))
        .collect();
    let shown = &listed[..page.min(listed.len())];
    let mut out = Out::with_capacity(64 + 256 * shown.len());
    out.begin_object().array("Consumers");
    for consumer in shown {
        out.begin_object();
        write_consumer(&mut out, core, name, consumer);
        out.end_object();
    }
    out.end_array();
    if let (true, Some(last)) = (listed.len() > shown.len(), shown.last()) {
        out.str("NextToken", &encode_token(&last.name));
    }
    out.end_object();
    Ok(out.into_bytes())
}
