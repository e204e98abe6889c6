//! The binary protocol: length-prefixed frames carrying requests, responses and
//! subscription events. Owns the byte layout and its encode/decode, shared by the server
//! and the Rust client; does not route, append or read. Runs on whichever core holds the
//! connection.
//!
//! # Frame (version 1), all integers little-endian
//!
//! ```text
//! byte   0     1     2     3     4     5     6     7
//!   0  | length (bytes after this field)| ver | kind| status    |
//!   8  | request_id                                           |
//!  16  | body ...
//! ```
//!
//! * `length` counts from byte 4 to the end of the body: at least 12, at most the server's
//!   frame limit (8 MiB by default). A frame over the limit is answered with
//!   `FrameTooLarge` and the connection is closed, since its bytes cannot be trusted to
//!   resynchronise.
//! * `ver` is [`VERSION`]; another version gets `UnsupportedVersion` and a close.
//! * `kind` is the operation for a request ([`Op`]), `0x80 | op` for its response, and
//!   [`KIND_EVENT`] for records pushed on a subscription.
//! * `status` is zero in requests and events; in a response, [`Status`].
//! * `request_id` is chosen by the client and echoed in the response and in every event of
//!   a subscription, so many requests can be in flight on one connection and answered in
//!   any order.
//!
//! # Bodies
//!
//! Strings are `u16` length + UTF-8; byte strings are `u32` length + bytes; a position is
//! `u8` type (0 trim horizon, 1 latest, 2 at sequence, 3 after sequence, 4 at timestamp)
//! followed by a `u64` (sequence number, or unix microseconds; zero otherwise).
//!
//! ```text
//! PutRecords  0x01  stream str | count u16 | count × (flags u8 | [hash key u128 BE if
//!                   flags bit 0] | partition key str | data bytes)
//!   response        count u16 | count × (status u16 | status 0: shard u32, sequence u64 |
//!                   else: message str)                      (request order)
//! GetRecords  0x02  stream str | shard u32 | position | limit u32 | bytes_max u32 |
//!                   wait_ms u32 (0: answer at once; else wait up to that long for records)
//!   response        records body (below)
//! Create      0x03  stream str | shard count u32                → empty
//! Delete      0x04  stream str                                   → empty
//! List        0x05  (empty)                                      → count u32 | names str
//! Describe    0x06  stream str  → name str | status str | retention hours u32 |
//!                   created us u64 | count u32 | count × (shard u32 | owner core u16 |
//!                   hash start u128 BE | hash end u128 BE | trim horizon u64 | tip u64 |
//!                   parent u32 | adjacent parent u32 (u32::MAX: none) | closed u8 (0, 1) |
//!                   end sequence u64 (one past the last record; 0 while open))
//!                   — open and closed shards, in index order
//! Subscribe   0x07  stream str | shard u32 | position   → empty response, then events
//!                   (kind 0xC0, records body) as records become durable, until the
//!                   connection closes
//! Reshard     0x08  stream str | kind u8 (0 split, 1 merge, 2 scale, 3 move,
//!                   4 rebalance) | a u32 | b u32 | hash key u128 BE        → empty
//!                   split: shard a at hash key; merge: shards a and b; scale: to a
//!                   uniform shards (UNIFORM_SCALING); move: shard a to core b;
//!                   rebalance: even out open shards of every stream over the cores
//! Heartbeat   0x09  stream str | app str | worker str | lease timeout ms u32 |
//!                   count u16 | count × shard u32 (the shards the worker runs)
//!   response        count u16 | count × lease (the leases the worker owns now)
//! Checkpoint  0x0A  stream str | app str | worker str | shard u32 | counter u64 |
//!                   checkpoint                                    → empty, or LeaseLost
//! ListLeases  0x0B  stream str | app str (empty: every application)
//!   response        count u32 | count × (app str | shard u32 | owner str (empty: none) |
//!                   counter u64 | checkpoint)
//! Attach      0x0C  core u16    → core u16 | cores u16 (the core serving the connection
//!                   now, and how many the server runs)
//!                   as a connection's first request, moves the connection to that
//!                   core, so a client that sends each shard's records to its owner core
//!                   (Describe names it) saves the server a cross-core hand-over per
//!                   request. Requests sent behind it are served there, after its answer.
//!                   A core out of range is `InvalidArgument`, a full one
//!                   `LimitExceeded`; the connection then stays where it is. As a later
//!                   request, `InvalidArgument`.
//! lease             shard u32 | counter u64 | checkpoint | end sequence u64 (u64::MAX: open)
//! checkpoint        kind u8 (0 none, 1 after sequence, 2 shard end) | sequence u64
//! records body      next sequence u64 | millis behind latest u64 | count u32 |
//!                   count × (sequence u64 | arrival us u64 | partition key str | data bytes)
//! error response    message str (any op, status ≠ 0)
//! ```
//!
//! A body that does not decode gets an error response (`Malformed`) and the connection
//! stays open: its frame boundary was sound.
//!
//! Version history: 1 — first version. 2 — Reshard; Describe lists closed shards with
//! their lineage and end; Heartbeat, Checkpoint and ListLeases for consumer applications;
//! later Attach (servers before it answer `UnknownOperation`, and the connection stays
//! open where it is).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::catalog::Reshard;
use crate::limits::{BATCH_RECORDS_MAX, PARTITION_KEY_BYTES_MAX};
use crate::log::{RecordOut, StartPosition};

pub const VERSION: u8 = 2;
/// Bytes of the frame header, length field included.
pub const HEADER_BYTES: usize = 16;
/// The smallest value of the length field: the header after it.
pub const LENGTH_MIN: usize = HEADER_BYTES - 4;
/// Frame kind of a subscription event.
pub const KIND_EVENT: u8 = 0xC0;
/// Bit set in the kind of a response.
pub const KIND_RESPONSE: u8 = 0x80;

/// Request operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    PutRecords = 0x01,
    GetRecords = 0x02,
    CreateStream = 0x03,
    DeleteStream = 0x04,
    ListStreams = 0x05,
    DescribeStream = 0x06,
    Subscribe = 0x07,
    Reshard = 0x08,
    Heartbeat = 0x09,
    Checkpoint = 0x0A,
    ListLeases = 0x0B,
    Attach = 0x0C,
}

impl Op {
    pub fn from_u8(kind: u8) -> Option<Op> {
        Some(match kind {
            0x01 => Op::PutRecords,
            0x02 => Op::GetRecords,
            0x03 => Op::CreateStream,
            0x04 => Op::DeleteStream,
            0x05 => Op::ListStreams,
            0x06 => Op::DescribeStream,
            0x07 => Op::Subscribe,
            0x08 => Op::Reshard,
            0x09 => Op::Heartbeat,
            0x0A => Op::Checkpoint,
            0x0B => Op::ListLeases,
            0x0C => Op::Attach,
            _ => return None,
        })
    }
}

/// Response status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Ok = 0,
    Malformed = 1,
    UnsupportedVersion = 2,
    UnknownOperation = 3,
    FrameTooLarge = 4,
    StreamNotFound = 5,
    StreamExists = 6,
    InvalidArgument = 7,
    LimitExceeded = 8,
    ShardNotFound = 9,
    Internal = 10,
    StorageFailed = 11,
    ShuttingDown = 12,
    /// The stream is not ACTIVE (a reshard is under way, or it is being created or
    /// deleted) and the change asked for needs it to be.
    ResourceInUse = 13,
    /// A per-shard write or read quota is used up for this second.
    Throttled = 14,
    /// The shard is closing or moving to another core; the next catalog says where its
    /// records go. The server retries these itself; a client sees one only when a
    /// reshard did not finish in time.
    ShardUnavailable = 15,
    /// A quota on the shape of streams (shard count, scalings a day) would be passed.
    ResourceLimit = 16,
    /// A consumer worker does not hold the lease it checkpointed under (it expired, or
    /// went to another worker).
    LeaseLost = 17,
}

impl Status {
    pub fn from_u16(code: u16) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::Malformed,
            2 => Status::UnsupportedVersion,
            3 => Status::UnknownOperation,
            4 => Status::FrameTooLarge,
            5 => Status::StreamNotFound,
            6 => Status::StreamExists,
            7 => Status::InvalidArgument,
            8 => Status::LimitExceeded,
            9 => Status::ShardNotFound,
            11 => Status::StorageFailed,
            12 => Status::ShuttingDown,
            13 => Status::ResourceInUse,
            14 => Status::Throttled,
            15 => Status::ShardUnavailable,
            16 => Status::ResourceLimit,
            17 => Status::LeaseLost,
            _ => Status::Internal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::Malformed => "Malformed",
            Status::UnsupportedVersion => "UnsupportedVersion",
            Status::UnknownOperation => "UnknownOperation",
            Status::FrameTooLarge => "FrameTooLarge",
            Status::StreamNotFound => "StreamNotFound",
            Status::StreamExists => "StreamExists",
            Status::InvalidArgument => "InvalidArgument",
            Status::LimitExceeded => "LimitExceeded",
            Status::ShardNotFound => "ShardNotFound",
            Status::Internal => "Internal",
            Status::StorageFailed => "StorageFailed",
            Status::ShuttingDown => "ShuttingDown",
            Status::ResourceInUse => "ResourceInUse",
            Status::Throttled => "Throttled",
            Status::ShardUnavailable => "ShardUnavailable",
            Status::ResourceLimit => "ResourceLimit",
            Status::LeaseLost => "LeaseLost",
        }
    }
}

/// An error as it travels on the wire: a status and a message for a person.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{}: {message}", status.name())]
pub struct WireError {
    pub status: Status,
    pub message: String,
}

impl WireError {
    pub fn new(status: Status, message: impl Into<String>) -> WireError {
        WireError {
            status,
            message: message.into(),
        }
    }
}

/// A frame header that cannot be accepted: answered, then the connection is closed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {length} is below the header's {LENGTH_MIN} bytes")]
    TooShort { length: usize },
    #[error("frame of {length} bytes exceeds the limit of {max}")]
    TooLarge { length: usize, max: usize },
    #[error("protocol version {found} is not supported; this server speaks {VERSION}")]
    Version { found: u8 },
}

impl FrameError {
    pub fn status(&self) -> Status {
        match self {
            FrameError::TooShort { .. } => Status::Malformed,
            FrameError::TooLarge { .. } => Status::FrameTooLarge,
            FrameError::Version { .. } => Status::UnsupportedVersion,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whole frame, length field included.
    pub frame_bytes: usize,
    pub kind: u8,
    pub status: u16,
    pub request_id: u64,
}

impl FrameHeader {
    /// Decodes the header at the start of `bytes` (at least [`HEADER_BYTES`] long).
    ///
    /// # Errors
    /// [`FrameError`] for a length outside the limits or another version.
    pub fn decode(bytes: &[u8; HEADER_BYTES], frame_max: usize) -> Result<FrameHeader, FrameError> {
        let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if length < LENGTH_MIN {
            return Err(FrameError::TooShort { length });
        }
        if length + 4 > frame_max {
            return Err(FrameError::TooLarge {
                length: length + 4,
                max: frame_max,
            });
        }
        if bytes[4] != VERSION {
            return Err(FrameError::Version { found: bytes[4] });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        Ok(FrameHeader {
            frame_bytes: length + 4,
            kind: bytes[5],
            status: u16::from_le_bytes([bytes[6], bytes[7]]),
            request_id: u64::from_le_bytes(id),
        })
    }
}

/// A body that does not decode.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body truncated reading {field}: {needed} bytes needed, {present} present")]
    Truncated {
        field: &'static str,
        needed: usize,
        present: usize,
    },
    #[error("{field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("unknown position type {found}")]
    PositionType { found: u8 },
    #[error("{count} records in one put; at most {BATCH_RECORDS_MAX}")]
    TooManyRecords { count: usize },
    #[error("unknown record flags {found:#04x}")]
    RecordFlags { found: u8 },
    #[error("{extra} unexpected bytes after the body")]
    Trailing { extra: usize },
    #[error("unknown operation {kind:#04x}")]
    UnknownOp { kind: u8 },
    #[error("{field} {found} is out of range")]
    Value { field: &'static str, found: u64 },
}

impl BodyError {
    pub fn status(&self) -> Status {
        match self {
            BodyError::TooManyRecords { .. } => Status::LimitExceeded,
            BodyError::UnknownOp { .. } => Status::UnknownOperation,
            _ => Status::Malformed,
        }
    }
}

/// One record of a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutEntry {
    pub partition_key: Bytes,
    pub data: Bytes,
    pub explicit_hash_key: Option<u128>,
}

/// One record of a put, borrowed from the request that carried it.
#[derive(Clone, Copy, Debug)]
pub struct PutRef<'a> {
    pub partition_key: &'a [u8],
    pub data: &'a [u8],
    pub explicit_hash_key: Option<u128>,
}

impl<'a> From<&'a PutEntry> for PutRef<'a> {
    fn from(entry: &'a PutEntry) -> PutRef<'a> {
        PutRef {
            partition_key: &entry.partition_key,
            data: &entry.data,
            explicit_hash_key: entry.explicit_hash_key,
        }
    }
}

/// A PutRecords request as the server decodes it: the body, and where each record's key
/// and data lie in it. Nothing is sliced per record, so decoding touches no reference
/// count (the two slices per record of [`Request::decode`], and dropping them, took about
/// 9 % of the server's CPU under binary puts).
#[derive(Debug)]
pub struct PutRequest {
    pub stream: String,
    body: Bytes,
    spans: Vec<PutSpan>,
}

#[derive(Debug)]
struct PutSpan {
    key: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
    explicit_hash_key: Option<u128>,
}

impl PutRequest {
    /// Decodes the body of a PutRecords frame.
    ///
    /// # Errors
    /// [`BodyError`] naming the field, as [`Request::decode`].
    pub fn decode(body: Bytes) -> Result<PutRequest, BodyError> {
        let mut r = Reader::new(body);
        let put = PutRequest::read(&mut r)?;
        r.finish()?;
        Ok(put)
    }

    fn read(r: &mut Reader) -> Result<PutRequest, BodyError> {
        let stream = r.str("stream")?;
        let count = usize::from(r.u16("record count")?);
        if count > BATCH_RECORDS_MAX {
            return Err(BodyError::TooManyRecords { count });
        }
        let mut spans = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = r.u8("record flags")?;
            if flags & !1 != 0 {
                return Err(BodyError::RecordFlags { found: flags });
            }
            let explicit_hash_key = if flags & 1 != 0 {
                Some(r.u128("explicit hash key")?)
            } else {
                None
            };
            let key_len = usize::from(r.u16("partition key length")?);
            let key = r.span("partition key", key_len.min(PARTITION_KEY_BYTES_MAX + 1))?;
            if key_len > PARTITION_KEY_BYTES_MAX {
                // Leave the limit check (a typed LimitExceeded) to validation, but do not
                // read past a key we will reject anyway.
                r.skip("partition key", key_len - key.len())?;
            }
            let data_len = r.u32("data length")? as usize;
            let data = r.span("data", data_len)?;
            spans.push(PutSpan {
                key,
                data,
                explicit_hash_key,
            });
        }
        Ok(PutRequest {
            stream,
            body: r.body.clone(),
            spans,
        })
    }

    /// The records, in order, as slices of the body.
    pub fn records(&self) -> Vec<PutRef<'_>> {
        self.spans
            .iter()
            .map(|span| PutRef {
                partition_key: &self.body[span.key.clone()],
                data: &self.body[span.data.clone()],
                explicit_hash_key: span.explicit_hash_key,
            })
            .collect()
    }
}

/// A decoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    PutRecords {
        stream: String,
        records: Vec<PutEntry>,
    },
    GetRecords {
        stream: String,
        shard: u32,
        position: StartPosition,
        limit: u32,
        bytes_max: u32,
        wait_ms: u32,
    },
    CreateStream {
        stream: String,
        shard_count: u32,
    },
    DeleteStream {
        stream: String,
    },
    ListStreams,
    DescribeStream {
        stream: String,
    },
    Subscribe {
        stream: String,
        shard: u32,
        position: StartPosition,
    },
    Reshard {
        stream: String,
        change: Reshard,
    },
    Heartbeat {
        stream: String,
        app: String,
        worker: String,
        timeout_ms: u32,
        held: Vec<u32>,
    },
    Checkpoint {
        stream: String,
        app: String,
        worker: String,
        shard: u32,
        counter: u64,
        checkpoint: Checkpoint,
    },
    ListLeases {
        stream: String,
        app: String,
    },
    /// Move the connection to this core (see the module's table).
    Attach {
        core: u16,
    },
}

/// Where a consumer application is in a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Checkpoint {
    /// Nothing processed yet: start from the application's initial position.
    #[default]
    None,
    /// Every record up to and including this sequence number is processed.
    After(u64),
    /// The shard is closed and every record in it processed; its children may start.
    ShardEnd,
}

/// A lease a worker owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub shard: u32,
    /// Bumped each time the lease changes hands; checkpoints name it.
    pub counter: u64,
    pub checkpoint: Checkpoint,
    /// One past the last record of a closed shard.
    pub end_seq: Option<u64>,
}

/// A lease as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub app: String,
    pub shard: u32,
    /// Empty when no worker owns it.
    pub owner: String,
    pub counter: u64,
    pub checkpoint: Checkpoint,
}

impl Request {
    pub fn op(&self) -> Op {
        match self {
            Request::PutRecords { .. } => Op::PutRecords,
            Request::GetRecords { .. } => Op::GetRecords,
            Request::CreateStream { .. } => Op::CreateStream,
            Request::DeleteStream { .. } => Op::DeleteStream,
            Request::ListStreams => Op::ListStreams,
            Request::DescribeStream { .. } => Op::DescribeStream,
            Request::Subscribe { .. } => Op::Subscribe,
            Request::Reshard { .. } => Op::Reshard,
            Request::Heartbeat { .. } => Op::Heartbeat,
            Request::Checkpoint { .. } => Op::Checkpoint,
            Request::ListLeases { .. } => Op::ListLeases,
            Request::Attach { .. } => Op::Attach,
        }
    }

    /// Decodes the body of a request frame of `kind`. Record payloads are slices of `body`.
    ///
    /// # Errors
    /// [`BodyError`] naming the field.
    pub fn decode(kind: u8, body: Bytes) -> Result<Request, BodyError> {
        let op = Op::from_u8(kind).ok_or(BodyError::UnknownOp { kind })?;
        let mut r = Reader::new(body);
        let request = match op {
            Op::PutRecords => {
                let put = PutRequest::read(&mut r)?;
                let records = put
                    .spans
                    .iter()
                    .map(|span| PutEntry {
                        partition_key: put.body.slice(span.key.clone()),
                        data: put.body.slice(span.data.clone()),
                        explicit_hash_key: span.explicit_hash_key,
                    })
                    .collect();
                Request::PutRecords {
                    stream: put.stream,
                    records,
                }
            }
            Op::GetRecords => Request::GetRecords {
                stream: r.str("stream")?,
                shard: r.u32("shard")?,
                position: r.position()?,
                limit: r.u32("limit")?,
                bytes_max: r.u32("bytes max")?,
                wait_ms: r.u32("wait ms")?,
            },
            Op::CreateStream => Request::CreateStream {
                stream: r.str("stream")?,
                shard_count: r.u32("shard count")?,
            },
            Op::DeleteStream => Request::DeleteStream {
                stream: r.str("stream")?,
            },
            Op::ListStreams => Request::ListStreams,
            Op::DescribeStream => Request::DescribeStream {
                stream: r.str("stream")?,
            },
            Op::Subscribe => Request::Subscribe {
                stream: r.str("stream")?,
                shard: r.u32("shard")?,
                position: r.position()?,
            },
            Op::Reshard => {
                let stream = r.str("stream")?;
                let kind = r.u8("reshard kind")?;
                let a = r.u32("shard a")?;
                let b = r.u32("shard b")?;
                let key = r.u128("hash key")?;
                let change = match kind {
                    0 => Reshard::Split {
                        shard: a,
                        new_starting_hash: key,
                    },
                    1 => Reshard::Merge {
                        shard: a,
                        adjacent: b,
                    },
                    2 => Reshard::Scale { target: a },
                    4 => Reshard::Rebalance,
                    3 => Reshard::Move {
                        shard: a,
                        core: u16::try_from(b).map_err(|_| BodyError::Value {
                            field: "core",
                            found: u64::from(b),
                        })?,
                    },
                    other => {
                        return Err(BodyError::Value {
                            field: "reshard kind",
                            found: u64::from(other),
                        });
                    }
                };
                Request::Reshard { stream, change }
            }
            Op::Heartbeat => {
                let stream = r.str("stream")?;
                let app = r.str("application")?;
                let worker = r.str("worker")?;
                let timeout_ms = r.u32("lease timeout")?;
                let count = usize::from(r.u16("held count")?);
                let mut held = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    held.push(r.u32("held shard")?);
                }
                Request::Heartbeat {
                    stream,
                    app,
                    worker,
                    timeout_ms,
                    held,
                }
            }
            Op::Checkpoint => Request::Checkpoint {
                stream: r.str("stream")?,
                app: r.str("application")?,
                worker: r.str("worker")?,
                shard: r.u32("shard")?,
                counter: r.u64("counter")?,
                checkpoint: r.checkpoint()?,
            },
            Op::ListLeases => Request::ListLeases {
                stream: r.str("stream")?,
                app: r.str("application")?,
            },
            Op::Attach => Request::Attach {
                core: r.u16("core")?,
            },
        };
        r.finish()?;
        Ok(request)
    }

    /// Encodes the request as a whole frame.
    pub fn encode(&self, request_id: u64, out: &mut BytesMut) {
        let start = begin_frame(out, self.op() as u8, 0, request_id);
        match self {
            Request::PutRecords { stream, records } => {
                put_str(out, stream);
                out.put_u16_le(records.len() as u16);
                for record in records {
                    match record.explicit_hash_key {
                        Some(hash) => {
                            out.put_u8(1);
                            out.put_u128(hash);
                        }
                        None => out.put_u8(0),
                    }
                    out.put_u16_le(record.partition_key.len() as u16);
                    out.put_slice(&record.partition_key);
                    out.put_u32_le(record.data.len() as u32);
                    out.put_slice(&record.data);
                }
            }
            Request::GetRecords {
                stream,
                shard,
                position,
                limit,
                bytes_max,
                wait_ms,
            } => {
                put_str(out, stream);
                out.put_u32_le(*shard);
                put_position(out, *position);
                out.put_u32_le(*limit);
                out.put_u32_le(*bytes_max);
                out.put_u32_le(*wait_ms);
            }
            Request::CreateStream {
                stream,
                shard_count,
            } => {
                put_str(out, stream);
                out.put_u32_le(*shard_count);
            }
            Request::DeleteStream { stream } | Request::DescribeStream { stream } => {
                put_str(out, stream);
            }
            Request::ListStreams => {}
            Request::Subscribe {
                stream,
                shard,
                position,
            } => {
                put_str(out, stream);
                out.put_u32_le(*shard);
                put_position(out, *position);
            }
            Request::Reshard { stream, change } => {
                put_str(out, stream);
                let (kind, a, b, key) = match *change {
                    Reshard::Split {
                        shard,
                        new_starting_hash,
                    } => (0u8, shard, 0u32, new_starting_hash),
                    Reshard::Merge { shard, adjacent } => (1, shard, adjacent, 0),
                    Reshard::Scale { target } => (2, target, 0, 0),
                    Reshard::Move { shard, core } => (3, shard, u32::from(core), 0),
                    Reshard::Rebalance => (4, 0, 0, 0),
                };
                out.put_u8(kind);
                out.put_u32_le(a);
                out.put_u32_le(b);
                out.put_u128(key);
            }
            Request::Heartbeat {
                stream,
                app,
                worker,
                timeout_ms,
                held,
            } => {
                put_str(out, stream);
                put_str(out, app);
                put_str(out, worker);
                out.put_u32_le(*timeout_ms);
                out.put_u16_le(u16::try_from(held.len()).unwrap_or(u16::MAX));
                for shard in held.iter().take(usize::from(u16::MAX)) {
                    out.put_u32_le(*shard);
                }
            }
            Request::Checkpoint {
                stream,
                app,
                worker,
                shard,
                counter,
                checkpoint,
            } => {
                put_str(out, stream);
                put_str(out, app);
                put_str(out, worker);
                out.put_u32_le(*shard);
                out.put_u64_le(*counter);
                put_checkpoint(out, *checkpoint);
            }
            Request::ListLeases { stream, app } => {
                put_str(out, stream);
                put_str(out, app);
            }
            Request::Attach { core } => out.put_u16_le(*core),
        }
        end_frame(out, start);
    }
}

/// The outcome of one record of a put.
pub type PutResult = Result<(u32, u64), WireError>;

/// Records read from a shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsBody {
    pub next_seq: u64,
    pub millis_behind: u64,
    pub records: Vec<RecordOut>,
}

/// One shard as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardDescription {
    pub index: u32,
    pub owner_core: u16,
    pub hash_start: u128,
    pub hash_end: u128,
    pub trim_seq: u64,
    pub tip_seq: u64,
    pub parent: Option<u32>,
    pub adjacent_parent: Option<u32>,
    /// One past the last sequence number of a closed shard; `None` while open.
    pub end_seq: Option<u64>,
}

/// A stream as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDescription {
    pub name: String,
    pub status: String,
    pub retention_hours: u32,
    pub created_us: u64,
    pub shards: Vec<ShardDescription>,
}

/// A successful response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Put(Vec<PutResult>),
    Records(RecordsBody),
    Empty,
    Streams(Vec<String>),
    Stream(StreamDescription),
    Leases(Vec<LeaseInfo>),
    LeaseRows(Vec<LeaseRow>),
    /// The core now serving the connection, and the server's core count.
    Attached {
        core: u16,
        cores: u16,
    },
}

impl Response {
    /// Encodes a success response to `op` as a whole frame.
    pub fn encode(&self, op: Op, request_id: u64, out: &mut BytesMut) {
        let start = begin_frame(out, KIND_RESPONSE | op as u8, 0, request_id);
        self.encode_body(out);
        end_frame(out, start);
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Response::Put(results) => {
                // Room for every record succeeding (status, shard, sequence): one allocation.
                out.reserve(2 + results.len() * 14);
                out.put_u16_le(results.len() as u16);
                for result in results {
                    match result {
                        Ok((shard, seq)) => {
                            out.put_u16_le(Status::Ok as u16);
                            out.put_u32_le(*shard);
                            out.put_u64_le(*seq);
                        }
                        Err(error) => {
                            out.put_u16_le(error.status as u16);
                            put_str(out, &error.message);
                        }
                    }
                }
            }
            Response::Records(body) => encode_records(body, out),
            Response::Empty => {}
            Response::Attached { core, cores } => {
                out.put_u16_le(*core);
                out.put_u16_le(*cores);
            }
            Response::Streams(names) => {
                out.put_u32_le(names.len() as u32);
                for name in names {
                    put_str(out, name);
                }
            }
            Response::Leases(leases) => {
                out.put_u16_le(u16::try_from(leases.len()).unwrap_or(u16::MAX));
                for lease in leases.iter().take(usize::from(u16::MAX)) {
                    out.put_u32_le(lease.shard);
                    out.put_u64_le(lease.counter);
                    put_checkpoint(out, lease.checkpoint);
                    out.put_u64_le(lease.end_seq.unwrap_or(u64::MAX));
                }
            }
            Response::LeaseRows(rows) => {
                out.put_u32_le(rows.len() as u32);
                for row in rows {
                    put_str(out, &row.app);
                    out.put_u32_le(row.shard);
                    put_str(out, &row.owner);
                    out.put_u64_le(row.counter);
                    put_checkpoint(out, row.checkpoint);
                }
            }
            Response::Stream(stream) => {
                put_str(out, &stream.name);
                put_str(out, &stream.status);
                out.put_u32_le(stream.retention_hours);
                out.put_u64_le(stream.created_us);
                out.put_u32_le(stream.shards.len() as u32);
                for shard in &stream.shards {
                    out.put_u32_le(shard.index);
                    out.put_u16_le(shard.owner_core);
                    out.put_u128(shard.hash_start);
                    out.put_u128(shard.hash_end);
                    out.put_u64_le(shard.trim_seq);
                    out.put_u64_le(shard.tip_seq);
                    out.put_u32_le(shard.parent.unwrap_or(u32::MAX));
                    out.put_u32_le(shard.adjacent_parent.unwrap_or(u32::MAX));
                    out.put_u8(u8::from(shard.end_seq.is_some()));
                    out.put_u64_le(shard.end_seq.unwrap_or(0));
                }
            }
        }
    }

    /// Decodes a success response body to `op`.
    ///
    /// # Errors
    /// [`BodyError`] naming the field.
    pub fn decode(op: Op, body: Bytes) -> Result<Response, BodyError> {
        let mut r = Reader::new(body);
        let response = match op {
            Op::PutRecords => {
                let count = usize::from(r.u16("record count")?);
                let mut results = Vec::with_capacity(count.min(BATCH_RECORDS_MAX));
                for _ in 0..count {
                    let status = r.u16("status")?;
                    if status == Status::Ok as u16 {
                        results.push(Ok((r.u32("shard")?, r.u64("sequence")?)));
                    } else {
                        let message = r.str("message")?;
                        results.push(Err(WireError::new(Status::from_u16(status), message)));
                    }
                }
                Response::Put(results)
            }
            Op::GetRecords => Response::Records(decode_records(&mut r)?),
            Op::Attach => Response::Attached {
                core: r.u16("core")?,
                cores: r.u16("cores")?,
            },
            Op::CreateStream | Op::DeleteStream | Op::Subscribe | Op::Reshard | Op::Checkpoint => {
                Response::Empty
            }
            Op::Heartbeat => {
                let count = usize::from(r.u16("lease count")?);
                let mut leases = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    leases.push(LeaseInfo {
                        shard: r.u32("shard")?,
                        counter: r.u64("counter")?,
                        checkpoint: r.checkpoint()?,
                        end_seq: Some(r.u64("end sequence")?).filter(|&e| e != u64::MAX),
                    });
                }
                Response::Leases(leases)
            }
            Op::ListLeases => {
                let count = r.u32("lease count")? as usize;
                let mut rows = Vec::with_capacity(count.min(10_000));
                for _ in 0..count {
                    rows.push(LeaseRow {
                        app: r.str("application")?,
                        shard: r.u32("shard")?,
                        owner: r.str("owner")?,
                        counter: r.u64("counter")?,
                        checkpoint: r.checkpoint()?,
                    });
                }
                Response::LeaseRows(rows)
            }
            Op::ListStreams => {
                let count = r.u32("stream count")? as usize;
                let mut names = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    names.push(r.str("stream")?);
                }
                Response::Streams(names)
            }
            Op::DescribeStream => {
                let name = r.str("stream")?;
                let status = r.str("status")?;
                let retention_hours = r.u32("retention")?;
                let created_us = r.u64("created")?;
                let count = r.u32("shard count")? as usize;
                let mut shards = Vec::with_capacity(count.min(10_000));
                for _ in 0..count {
                    shards.push(ShardDescription {
                        index: r.u32("shard")?,
                        owner_core: r.u16("owner core")?,
                        hash_start: r.u128("hash start")?,
                        hash_end: r.u128("hash end")?,
                        trim_seq: r.u64("trim horizon")?,
                        tip_seq: r.u64("tip")?,
                        parent: Some(r.u32("parent")?).filter(|&p| p != u32::MAX),
                        adjacent_parent: Some(r.u32("adjacent parent")?).filter(|&p| p != u32::MAX),
                        end_seq: {
                            let closed = r.u8("closed")? != 0;
                            let end = r.u64("end sequence")?;
                            closed.then_some(end)
                        },
                    });
                }
                Response::Stream(StreamDescription {
                    name,
                    status,
                    retention_hours,
                    created_us,
                    shards,
                })
            }
        };
        r.finish()?;
        Ok(response)
    }
}

/// Encodes an error response frame.
pub fn encode_error(kind: u8, request_id: u64, error: &WireError, out: &mut BytesMut) {
    let start = begin_frame(out, KIND_RESPONSE | kind, error.status as u16, request_id);
    put_str(out, &error.message);
    end_frame(out, start);
}

/// Decodes an error response body.
///
/// # Errors
/// [`BodyError`] when the message does not decode.
pub fn decode_error(status: u16, body: Bytes) -> Result<WireError, BodyError> {
    let mut r = Reader::new(body);
    let message = r.str("message")?;
    Ok(WireError::new(Status::from_u16(status), message))
}

/// Encodes a subscription event frame.
pub fn encode_event(request_id: u64, body: &RecordsBody, out: &mut BytesMut) {
    let start = begin_frame(out, KIND_EVENT, 0, request_id);
    encode_records(body, out);
    end_frame(out, start);
}

/// Decodes a subscription event body.
///
/// # Errors
/// [`BodyError`] naming the field.
pub fn decode_event(body: Bytes) -> Result<RecordsBody, BodyError> {
    let mut r = Reader::new(body);
    let records = decode_records(&mut r)?;
    r.finish()?;
    Ok(records)
}

fn encode_records(body: &RecordsBody, out: &mut BytesMut) {
    out.put_u64_le(body.next_seq);
    out.put_u64_le(body.millis_behind);
    out.put_u32_le(body.records.len() as u32);
    for record in &body.records {
        out.put_u64_le(record.seq);
        out.put_u64_le(record.arrival_us);
        out.put_u16_le(record.partition_key.len() as u16);
        out.put_slice(&record.partition_key);
        out.put_u32_le(record.data.len() as u32);
        out.put_slice(&record.data);
    }
}

fn decode_records(r: &mut Reader) -> Result<RecordsBody, BodyError> {
    let next_seq = r.u64("next sequence")?;
    let millis_behind = r.u64("millis behind")?;
    let count = r.u32("record count")? as usize;
    let mut records = Vec::with_capacity(count.min(10_000));
    for _ in 0..count {
        let seq = r.u64("sequence")?;
        let arrival_us = r.u64("arrival")?;
        let key_len = usize::from(r.u16("partition key length")?);
        let partition_key = r.take("partition key", key_len)?;
        let data_len = r.u32("data length")? as usize;
        let data = r.take("data", data_len)?;
        records.push(RecordOut {
            seq,
            arrival_us,
            partition_key,
            data,
        });
    }
    Ok(RecordsBody {
        next_seq,
        millis_behind,
        records,
    })
}

/// Bytes a records body of these records will take, to size buffers.
pub fn records_body_bytes(records: &[RecordOut]) -> usize {
    20 + records
        .iter()
        .map(|r| 22 + r.partition_key.len() + r.data.len())
        .sum::<usize>()
}

fn begin_frame(out: &mut BytesMut, kind: u8, status: u16, request_id: u64) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u16_le(status);
    out.put_u64_le(request_id);
    start
}

fn end_frame(out: &mut BytesMut, start: usize) {
    let length = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

fn put_str(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16_le(len as u16);
    out.put_slice(&bytes[..len]);
}

fn put_checkpoint(out: &mut BytesMut, checkpoint: Checkpoint) {
    let (kind, seq) = match checkpoint {
        Checkpoint::None => (0u8, 0u64),
        Checkpoint::After(seq) => (1, seq),
        Checkpoint::ShardEnd => (2, 0),
    };
    out.put_u8(kind);
    out.put_u64_le(seq);
}

fn put_position(out: &mut BytesMut, position: StartPosition) {
    let (kind, value) = match position {
        StartPosition::TrimHorizon => (0, 0),
        StartPosition::Latest => (1, 0),
        StartPosition::AtSequence(seq) => (2, seq),
        StartPosition::AfterSequence(seq) => (3, seq),
        StartPosition::AtTimestamp(us) => (4, us),
    };
    out.put_u8(kind);
    out.put_u64_le(value);
}

/// A cursor over a body; every read is bounds-checked and names its field.
struct Reader {
    body: Bytes,
    at: usize,
}

impl Reader {
    fn new(body: Bytes) -> Reader {
        Reader { body, at: 0 }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<Bytes, BodyError> {
        let span = self.span(field, n)?;
        Ok(self.body.slice(span))
    }

    /// Steps over `n` bytes and returns where they lie in the body.
    fn span(&mut self, field: &'static str, n: usize) -> Result<std::ops::Range<usize>, BodyError> {
        let start = self.at;
        self.skip(field, n)?;
        Ok(start..start + n)
    }

    /// Steps over `n` bytes without slicing them: no reference count touched.
    fn skip(&mut self, field: &'static str, n: usize) -> Result<(), BodyError> {
        let present = self.body.len() - self.at;
        if n > present {
            return Err(BodyError::Truncated {
                field,
                needed: n,
                present,
            });
        }
        self.at += n;
        Ok(())
    }

    /// Copies out a fixed-width field. Reads the body in place: slicing a `Bytes` for each
    /// integer cost an atomic increment and decrement apiece, three times a record.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BodyError> {
        let start = self.at;
        self.skip(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.body[start..start + N]);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn u128(&mut self, field: &'static str) -> Result<u128, BodyError> {
        Ok(u128::from_be_bytes(self.array(field)?))
    }

    fn str(&mut self, field: &'static str) -> Result<String, BodyError> {
        let len = usize::from(self.u16(field)?);
        let start = self.at;
        self.skip(field, len)?;
        String::from_utf8(self.body[start..start + len].to_vec())
            .map_err(|_| BodyError::NotUtf8 { field })
    }

    fn checkpoint(&mut self) -> Result<Checkpoint, BodyError> {
        let kind = self.u8("checkpoint kind")?;
        let seq = self.u64("checkpoint sequence")?;
        match kind {
            0 => Ok(Checkpoint::None),
            1 => Ok(Checkpoint::After(seq)),
            2 => Ok(Checkpoint::ShardEnd),
            other => Err(BodyError::Value {
                field: "checkpoint kind",
                found: u64::from(other),
            }),
        }
    }

    fn position(&mut self) -> Result<StartPosition, BodyError> {
        let kind = self.u8("position type")?;
        let value = self.u64("position value")?;
        Ok(match kind {
            0 => StartPosition::TrimHorizon,
            1 => StartPosition::Latest,
            2 => StartPosition::AtSequence(value),
            3 => StartPosition::AfterSequence(value),
            4 => StartPosition::AtTimestamp(value),
            found => return Err(BodyError::PositionType { found }),
        })
    }

    fn finish(&self) -> Result<(), BodyError> {
        match self.body.len() - self.at {
            0 => Ok(()),
            extra => Err(BodyError::Trailing { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(frame: &BytesMut) -> (FrameHeader, Bytes) {
        let mut head = [0u8; HEADER_BYTES];
        head.copy_from_slice(&frame[..HEADER_BYTES]);
        let header = FrameHeader::decode(&head, 1 << 20).expect("header");
        assert_eq!(header.frame_bytes, frame.len());
        (header, Bytes::copy_from_slice(&frame[HEADER_BYTES..]))
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::PutRecords {
                stream: "s".into(),
                records: vec![
                    PutEntry {
                        partition_key: Bytes::from_static(b"k"),
                        data: Bytes::from_static(b"data"),
                        explicit_hash_key: None,
                    },
                    PutEntry {
                        partition_key: Bytes::from_static("ключ".as_bytes()),
                        data: Bytes::new(),
                        explicit_hash_key: Some(u128::MAX - 5),
                    },
                ],
            },
            Request::GetRecords {
                stream: "s".into(),
                shard: 3,
                position: StartPosition::AfterSequence(9),
                limit: 10,
                bytes_max: 1000,
                wait_ms: 0,
            },
            Request::CreateStream {
                stream: "s".into(),
                shard_count: 4,
            },
            Request::DeleteStream { stream: "s".into() },
            Request::ListStreams,
            Request::DescribeStream { stream: "s".into() },
            Request::Reshard {
                stream: "s".into(),
                change: Reshard::Split {
                    shard: 3,
                    new_starting_hash: u128::MAX / 3,
                },
            },
            Request::Reshard {
                stream: "s".into(),
                change: Reshard::Move { shard: 1, core: 1 },
            },
            Request::Heartbeat {
                stream: "s".into(),
                app: "a".into(),
                worker: "w".into(),
                timeout_ms: 3000,
                held: vec![1, 5],
            },
            Request::Checkpoint {
                stream: "s".into(),
                app: "a".into(),
                worker: "w".into(),
                shard: 5,
                counter: 3,
                checkpoint: Checkpoint::After(77),
            },
            Request::Attach { core: 1 },
            Request::ListLeases {
                stream: "s".into(),
                app: String::new(),
            },
            Request::Subscribe {
                stream: "s".into(),
                shard: 0,
                position: StartPosition::AtTimestamp(5),
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        for request in requests() {
            let mut out = BytesMut::new();
            request.encode(77, &mut out);
            let (header, body) = body_of(&out);
            assert_eq!(header.request_id, 77);
            assert_eq!(Request::decode(header.kind, body).as_ref(), Ok(&request));
        }
    }

    #[test]
    fn truncated_bodies_are_typed_errors() {
        for request in requests() {
            let mut out = BytesMut::new();
            request.encode(1, &mut out);
            let (header, body) = body_of(&out);
            for cut in 0..body.len() {
                let result = Request::decode(header.kind, body.slice(..cut));
                assert!(
                    matches!(result, Err(BodyError::Truncated { .. })),
                    "{request:?} cut at {cut}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let mut head = [0u8; HEADER_BYTES];
        head[4] = VERSION;
        head[..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&head, 1 << 20),
            Err(FrameError::TooShort { .. })
        ));
        head[..4].copy_from_slice(&(2u32 << 20).to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&head, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        head[..4].copy_from_slice(&12u32.to_le_bytes());
        head[4] = 9;
        assert!(matches!(
            FrameHeader::decode(&head, 1 << 20),
            Err(FrameError::Version { found: 9 })
        ));
        assert!(matches!(
            Request::decode(0x55, Bytes::new()),
            Err(BodyError::UnknownOp { kind: 0x55 })
        ));
    }

    #[test]
    fn responses_round_trip() {
        let responses = [
            (
                Op::PutRecords,
                Response::Put(vec![
                    Ok((1, 2)),
                    Err(WireError::new(Status::LimitExceeded, "too big")),
                ]),
            ),
            (
                Op::GetRecords,
                Response::Records(RecordsBody {
                    next_seq: 5,
                    millis_behind: 3,
                    records: vec![RecordOut {
                        seq: 4,
                        arrival_us: 8,
                        partition_key: Bytes::from_static(b"k"),
                        data: Bytes::from_static(b"v"),
                    }],
                }),
            ),
            (
                Op::ListStreams,
                Response::Streams(vec!["a".into(), "b".into()]),
            ),
            (
                Op::DescribeStream,
                Response::Stream(StreamDescription {
                    name: "a".into(),
                    status: "ACTIVE".into(),
                    retention_hours: 24,
                    created_us: 1,
                    shards: vec![
                        ShardDescription {
                            index: 0,
                            owner_core: 1,
                            hash_start: 0,
                            hash_end: u128::MAX,
                            trim_seq: 0,
                            tip_seq: 10,
                            parent: None,
                            adjacent_parent: None,
                            end_seq: Some(10),
                        },
                        ShardDescription {
                            index: 3,
                            owner_core: 0,
                            hash_start: 0,
                            hash_end: u128::MAX,
                            trim_seq: 0,
                            tip_seq: 0,
                            parent: Some(1),
                            adjacent_parent: Some(2),
                            end_seq: None,
                        },
                    ],
                }),
            ),
            (Op::CreateStream, Response::Empty),
            (Op::Attach, Response::Attached { core: 1, cores: 2 }),
        ];
        for (op, response) in responses {
            let mut out = BytesMut::new();
            response.encode(op, 5, &mut out);
            let (header, body) = body_of(&out);
            assert_eq!(header.kind, KIND_RESPONSE | op as u8);
            assert_eq!(Response::decode(op, body), Ok(response));
        }
    }
}
