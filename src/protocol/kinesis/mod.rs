//! The Kinesis Data Streams API (JSON 1.1) on the HTTP port, so AWS SDKs, the AWS CLI and
//! boto3 work with only an endpoint URL changed. Owns reading the request (target header,
//! content type, bounded body, simd-json parse), dispatching to the operation, and the AWS
//! response and error shapes (`__type`, `message`, `x-amzn-ErrorType`,
//! `x-amzn-RequestId`). Also answers `GET /health`. Runs on the core holding the
//! connection.
//!
//! CBOR (`application/x-amz-cbor-1.1`, the Java SDKs' default) is refused with a clear
//! error naming the switch that makes those SDKs send JSON.

pub mod auth;
pub mod consumers;
pub mod errors;
pub mod eventstream;
pub mod iterator;
pub mod json;
mod operations;
mod subscribe;

use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::limits::HTTP_BODY_BYTES_MAX;
use crate::protocol::kinesis::errors::KinesisError;
use crate::server::core::Core;

const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// A response body: a whole JSON document, or the event stream of a SubscribeToShard.
pub type Body = Either<Full<Bytes>, StreamBody<subscribe::Events>>;

/// What an operation answers.
enum Reply {
    Json(Vec<u8>),
    Events(subscribe::Events),
}

fn whole(bytes: Bytes) -> Body {
    Either::Left(Full::new(bytes))
}

/// Serves one HTTP request.
pub async fn handle(core: &Rc<Core>, request: Request<Incoming>) -> Response<Body> {
    let request_id = request_id(core);
    if request.method() == Method::GET && request.uri().path() == "/health" {
        return plain(StatusCode::OK, "ok\n", &request_id);
    }
    if request.method() == Method::GET && request.uri().path() == "/metrics" {
        let mut text = crate::metrics::render(&core.all_metrics().await);
        text.push_str(&crate::server::leases::render_metrics(core).await);
        let mut response = Response::new(whole(Bytes::from(text)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return response;
    }
    let started = std::time::Instant::now();
    let measured = match request.headers().get("x-amz-target").map(|v| v.as_bytes()) {
        Some(b"Kinesis_20131202.PutRecords" | b"Kinesis_20131202.PutRecord") => {
            Some(crate::metrics::Op::Put)
        }
        Some(b"Kinesis_20131202.GetRecords") => Some(crate::metrics::Op::Get),
        _ => None,
    };
    if measured.is_none() {
        tracing::debug!(core = core.id, target = ?request.headers().get("x-amz-target"), "kinesis request");
    }
    let result = serve(core, request).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if measured.is_none() {
        tracing::debug!(
            core = core.id,
            micros,
            ok = result.is_ok(),
            "kinesis request answered"
        );
    }
    if let Some(op) = measured {
        core.metrics.latency(op, micros);
    }
    core.metrics.count(|c| {
        c.requests += 1;
        c.errors += u64::from(result.is_err());
    });
    let body = match result {
        Ok(Reply::Json(body)) => body,
        Ok(Reply::Events(events)) => {
            let mut response = Response::new(Either::Right(StreamBody::new(events)));
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.amazon.eventstream"),
            );
            headers.insert("x-amzn-RequestId", header_value(&request_id));
            return response;
        }
        Err(error) => {
            let mut response = error_response(&error, &request_id);
            if error.status >= 500 {
                tracing::error!(kind = error.kind, message = %error.message, "kinesis request failed");
            }
            response
                .headers_mut()
                .insert("x-amzn-RequestId", header_value(&request_id));
            return response;
        }
    };
    let mut response = Response::new(whole(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    headers.insert("x-amzn-RequestId", header_value(&request_id));
    response
}

async fn serve(core: &Rc<Core>, request: Request<Incoming>) -> Result<Reply, KinesisError> {
    if request.method() != Method::POST {
        return Err(KinesisError::access_denied(
            "Kinesis API requests are POST / with an X-Amz-Target header",
        ));
    }
    let headers = request.headers();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/x-amz-cbor") {
        return Err(KinesisError::serialization(
            "spate speaks the Kinesis JSON protocol only; make the Java SDK send JSON with \
             AWS_CBOR_DISABLE=1 (SDK v1) or aws.cborEnabled=false / AWS_CBOR_ENABLED=false (SDK v2)",
        ));
    }
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .map(str::to_string)
        .ok_or_else(|| KinesisError::unknown_operation("Missing or unknown X-Amz-Target"))?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > HTTP_BODY_BYTES_MAX as u64) {
        return Err(KinesisError::too_large(format!(
            "Request body of {} bytes exceeds the limit of {HTTP_BODY_BYTES_MAX}",
            declared.unwrap_or_default()
        )));
    }
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, HTTP_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                KinesisError::too_large(format!("Request body exceeds {HTTP_BODY_BYTES_MAX} bytes"))
            } else {
                KinesisError::serialization(format!("Could not read the request body: {e}"))
            }
        })?
        .aggregate();
    // simd-json parses in place, so the body's chunks are copied, once, into one mutable
    // buffer, with the padding its SIMD stage reads past the end: it then parses that
    // buffer instead of copying it into a padded one of its own.
    let len = body.remaining();
    let mut document = Vec::with_capacity(len + simd_json::INPUT_PADDING);
    document.put(body);
    document.resize(len + simd_json::INPUT_PADDING, b' ');
    let now_s = i64::try_from(crate::tools::now_us() / 1_000_000).unwrap_or(i64::MAX);
    auth::check(&parts, &document[..len], &core.config.auth_keys, now_s)?;
    if len == 0 {
        return Err(KinesisError::serialization(
            "Request body is empty; send {} at least",
        ));
    }
    let mut tape = core.json_tape();
    core.json_buffers(|buffers| {
        simd_json::fill_tape_padded(&mut document, len, buffers, &mut tape)
    })
    .map_err(|e| KinesisError::serialization(format!("Request body is not valid JSON: {e}")))?;
    let input = json::Input::new(tape.as_value())?;
    let reply = if operation == "SubscribeToShard" {
        subscribe::start(core, &input).await.map(Reply::Events)
    } else {
        operations::dispatch(core, &operation, &input)
            .await
            .map(Reply::Json)
    };
    core.return_json_tape(tape);
    reply
}

fn error_response(error: &KinesisError, request_id: &str) -> Response<Body> {
    let mut out = json::Out::with_capacity(64 + error.message.len());
    // SerializationException spells its message member with a capital M, as AWS does.
    let message_key = if error.kind == "SerializationException" {
        "Message"
    } else {
        "message"
    };
    out.begin_object()
        .str("__type", error.kind)
        .str(message_key, &error.message)
        .end_object();
    let mut response = Response::new(whole(Bytes::from(out.into_bytes())));
    *response.status_mut() =
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    headers.insert("x-amzn-ErrorType", HeaderValue::from_static(error.kind));
    headers.insert("x-amzn-RequestId", header_value(request_id));
    response
}

fn plain(status: StatusCode, text: &'static str, request_id: &str) -> Response<Body> {
    let mut response = Response::new(whole(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-amzn-RequestId", header_value(request_id));
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A request id in the UUID layout: the core, a per-core counter and the time.
fn request_id(core: &Core) -> String {
    let n = core.next_request_number();
    let now = crate::tools::now_us();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (now >> 16) as u32,
        (now & 0xffff) as u16,
        core.id & 0xfff,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}
