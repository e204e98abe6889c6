//! Kinesis errors as AWS shapes them: the exception name (`__type` in the body and the
//! `x-amzn-ErrorType` header), the HTTP status and the message. The one table that maps
//! spate's wire errors to Kinesis names is [`from_wire`].

use crate::protocol::binary::{Status, WireError};

/// An error answered in the AWS JSON shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisError {
    /// The exception shape name, e.g. `ResourceNotFoundException`.
    pub kind: &'static str,
    pub status: u16,
    pub message: String,
}

impl KinesisError {
    fn new(kind: &'static str, status: u16, message: impl Into<String>) -> KinesisError {
        KinesisError {
            kind,
            status,
            message: message.into(),
        }
    }

    /// An authentication error (all answered with 400, as Kinesis does).
    pub fn new_auth(kind: &'static str, message: String) -> KinesisError {
        KinesisError::new(kind, 400, message)
    }

    pub fn validation(message: impl Into<String>) -> KinesisError {
        KinesisError::new("ValidationException", 400, message)
    }

    pub fn invalid_argument(message: impl Into<String>) -> KinesisError {
        KinesisError::new("InvalidArgumentException", 400, message)
    }

    pub fn serialization(message: impl Into<String>) -> KinesisError {
        KinesisError::new("SerializationException", 400, message)
    }

    pub fn not_found(message: impl Into<String>) -> KinesisError {
        KinesisError::new("ResourceNotFoundException", 400, message)
    }

    pub fn in_use(message: impl Into<String>) -> KinesisError {
        KinesisError::new("ResourceInUseException", 400, message)
    }

    pub fn limit_exceeded(message: impl Into<String>) -> KinesisError {
        KinesisError::new("LimitExceededException", 400, message)
    }

    pub fn throughput_exceeded(message: impl Into<String>) -> KinesisError {
        KinesisError::new("ProvisionedThroughputExceededException", 400, message)
    }

    pub fn expired_iterator(message: impl Into<String>) -> KinesisError {
        KinesisError::new("ExpiredIteratorException", 400, message)
    }

    pub fn unknown_operation(message: impl Into<String>) -> KinesisError {
        KinesisError::new("UnknownOperationException", 400, message)
    }

    pub fn internal(message: impl Into<String>) -> KinesisError {
        KinesisError::new("InternalFailureException", 500, message)
    }

    pub fn access_denied(message: impl Into<String>) -> KinesisError {
        KinesisError::new("AccessDeniedException", 403, message)
    }

    pub fn too_large(message: impl Into<String>) -> KinesisError {
        KinesisError::new("SerializationException", 413, message)
    }
}

/// Maps an error of spate's core to the Kinesis exception a client expects.
pub fn from_wire(error: WireError) -> KinesisError {
    let message = error.message;
    match error.status {
        Status::StreamNotFound | Status::ShardNotFound => KinesisError::not_found(message),
        Status::StreamExists => KinesisError::in_use(message),
        Status::InvalidArgument => KinesisError::invalid_argument(message),
        Status::LimitExceeded => KinesisError::invalid_argument(message),
        Status::Malformed => KinesisError::serialization(message),
        Status::ShuttingDown => KinesisError::internal(message),
        Status::ResourceInUse => KinesisError::in_use(message),
        Status::Throttled => KinesisError::throughput_exceeded(message),
        Status::ResourceLimit => KinesisError::limit_exceeded(message),
        Status::ShardUnavailable | Status::LeaseLost => KinesisError::internal(message),
        Status::Ok
        | Status::UnsupportedVersion
        | Status::UnknownOperation
        | Status::FrameTooLarge
        | Status::Internal
        | Status::StorageFailed => KinesisError::internal(message),
    }
}
