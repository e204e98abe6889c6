//! The batch: the unit the log writes, checksums and recovers. Owns the byte layout of a
//! batch and its records; does not know about files, segments or commits. A put's records
//! are encoded on the core that read the put ([`Encoded`]); the header and checksum are
//! filled in on the shard's owner core, which also decodes on read and recovery.
//!
//! # Byte layout (version 1), all integers little-endian
//!
//! ```text
//! byte   0     1     2     3     4     5     6     7
//!   0  | magic "SPTB" (0x42545053)| ver | flg | zero      |
//!   8  | crc32c                   | length, whole batch   |
//!  16  | first_seq                                        |
//!  24  | record_count             | zero                  |
//!  32  | arrival_first_us (unix microseconds)             |
//!  40  | arrival_last_us  (unix microseconds)             |
//!  48  | commit_id (per shard, increases by one a commit) |
//!  56  | records ...
//! ```
//!
//! Each record, back to back after the header, no padding:
//!
//! ```text
//!   0  | data_len u32             | key_len u16 | zero u16|
//!   8  | arrival_delta_us u32 (since arrival_first_us)    |
//!  12  | partition key (key_len bytes, UTF-8) | data (data_len bytes)
//! ```
//!
//! * `crc32c` (Castagnoli) covers bytes `0..8` and `12..length`: everything but itself, so
//!   a flipped bit anywhere in a batch, header included, is caught.
//! * `ver` is [`VERSION`]. `flg` bit 0 is [`FLAG_COMMIT_FIRST`]: this batch is the first
//!   one the shard wrote in its commit. Other flag bits and every `zero` field must be
//!   zero; a reader rejects anything else rather than guess at a newer format.
//! * Record `i` has sequence number `first_seq + i`.
//!
//! # What a crash can leave, and how recovery tells it apart
//!
//! We assume that `fdatasync` is a barrier (what it covers survives power loss) and that a
//! write in flight may tear at sector granularity, in any order. The committer writes one
//! commit's batches for a shard as one contiguous region and starts the next commit only
//! after the previous one's `fdatasync` returned; only the last commit's region can be
//! damaged by a crash, and none of its batches were acknowledged. O_DIRECT writes whole
//! blocks, so the file usually ends in zero padding after the last batch.
//!
//! Recovery reads batch after batch. A header of zeros is the clean end of the log. A batch
//! that fails its checks at position `p` is a torn tail when nothing after it proves that
//! an acknowledged commit lies past `p`; it is cut off. It is corruption in the middle when
//! a valid batch after `p` carries a commit id more than one above the last good batch
//! before `p`, or one above it with [`FLAG_COMMIT_FIRST`] set (then the damaged bytes belong
//! to a commit that was synced before a later one was written). See
//! [`crate::log::segment`] for the scan itself.
//!
//! # Version history
//!
//! * 1 — first version.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::limits::{
    BATCH_BYTES_MAX, BATCH_ENCODED_BYTES_MAX, BATCH_RECORDS_MAX, PARTITION_KEY_BYTES_MAX,
    PARTITION_KEY_CHARS_MAX, PARTITION_KEY_CHARS_MIN, RECORD_DATA_BYTES_MAX,
};

/// `"SPTB"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SPTB");
/// The only format version this build reads and writes.
pub const VERSION: u8 = 1;
/// Flag bit: the first batch a shard wrote in its commit.
pub const FLAG_COMMIT_FIRST: u8 = 0b0000_0001;
const FLAGS_KNOWN: u8 = FLAG_COMMIT_FIRST;

// Header field offsets, each derived from the one before it.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 4;
const OFF_FLAGS: usize = OFF_VERSION + 1;
const OFF_ZERO_A: usize = OFF_FLAGS + 1;
const OFF_CRC: usize = OFF_ZERO_A + 2;
const OFF_LENGTH: usize = OFF_CRC + 4;
const OFF_FIRST_SEQ: usize = OFF_LENGTH + 4;
const OFF_RECORD_COUNT: usize = OFF_FIRST_SEQ + 8;
const OFF_ZERO_B: usize = OFF_RECORD_COUNT + 4;
const OFF_ARRIVAL_FIRST: usize = OFF_ZERO_B + 4;
const OFF_ARRIVAL_LAST: usize = OFF_ARRIVAL_FIRST + 8;
const OFF_COMMIT_ID: usize = OFF_ARRIVAL_LAST + 8;
/// Bytes in a batch header.
pub const HEADER_BYTES: usize = OFF_COMMIT_ID + 8;
const _: () = assert!(HEADER_BYTES == 56);

// Record header field offsets.
const REC_OFF_DATA_LEN: usize = 0;
const REC_OFF_KEY_LEN: usize = REC_OFF_DATA_LEN + 4;
const REC_OFF_ZERO: usize = REC_OFF_KEY_LEN + 2;
const REC_OFF_ARRIVAL_DELTA: usize = REC_OFF_ZERO + 2;
/// Bytes in a record header.
pub const RECORD_HEADER_BYTES: usize = REC_OFF_ARRIVAL_DELTA + 4;
const _: () = assert!(RECORD_HEADER_BYTES == 12);
const _: () = assert!(PARTITION_KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(BATCH_ENCODED_BYTES_MAX <= u32::MAX as usize);

/// One record handed to the log for appending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordIn {
    /// UTF-8 partition key, 1..=256 characters.
    pub partition_key: Bytes,
    /// Opaque payload, at most [`RECORD_DATA_BYTES_MAX`] bytes.
    pub data: Bytes,
    /// Server arrival time, unix microseconds.
    pub arrival_us: u64,
}

/// One record read back from the log. `partition_key` and `data` are slices of the batch
/// buffer they were read from; no copy is made per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOut {
    pub seq: u64,
    pub arrival_us: u64,
    pub partition_key: Bytes,
    pub data: Bytes,
}

/// A put that breaks a limit. Checked before anything is encoded or appended.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LimitError {
    #[error("batch is empty; a put needs at least one record")]
    EmptyBatch,
    #[error("batch has {count} records; at most {max} are allowed")]
    TooManyRecords { count: usize, max: usize },
    #[error("batch carries {bytes} bytes of keys and data; at most {max} are allowed")]
    BatchTooLarge { bytes: usize, max: usize },
    #[error("record {index} has {bytes} bytes of data; at most {max} are allowed")]
    RecordTooLarge {
        index: usize,
        bytes: usize,
        max: usize,
    },
    #[error("record {index} has a partition key of {chars} characters; 1..=256 are allowed")]
    KeyLength { index: usize, chars: usize },
    #[error("record {index} has a partition key that is not valid UTF-8")]
    KeyNotUtf8 { index: usize },
    #[error(
        "record {index} arrived {delta_us} us after the batch's first record; at most {max} us"
    )]
    ArrivalSpread {
        index: usize,
        delta_us: u64,
        max: u64,
    },
}

/// What is wrong with bytes that should hold a batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated batch: {needed} bytes needed, {present} present")]
    Truncated { needed: usize, present: usize },
    #[error("bad batch magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported batch version {found}; this build reads version {VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("unknown batch flags {found:#04x}")]
    UnknownFlags { found: u8 },
    #[error("reserved batch field at byte {offset} is not zero")]
    ReservedNotZero { offset: usize },
    #[error("batch length {length} is outside {HEADER_BYTES}..={BATCH_ENCODED_BYTES_MAX}")]
    BadLength { length: u32 },
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch record count {count} is outside 1..={BATCH_RECORDS_MAX}")]
    BadRecordCount { count: u32 },
    #[error("record {index} overruns its batch")]
    RecordOverrun { index: u32 },
    #[error("record {index} has a reserved field that is not zero")]
    RecordReservedNotZero { index: u32 },
    #[error("batch records end at byte {end}, but the batch is {length} bytes")]
    TrailingBytes { end: usize, length: usize },
    #[error("batch arrival range is inverted: first {first_us} > last {last_us}")]
    ArrivalInverted { first_us: u64, last_us: u64 },
}

/// Sizes of a batch that passed [`validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub records: usize,
    pub encoded_bytes: usize,
}

/// Checks every limit of a put batch. Call before anything is appended.
///
/// # Errors
/// The first limit the batch breaks, naming the record.
pub fn validate(records: &[RecordIn]) -> Result<BatchShape, LimitError> {
    let shape = validate_put(records.iter().map(|r| (&r.partition_key[..], r.data.len())))?;
    let first = records.iter().map(|r| r.arrival_us).min().unwrap_or(0);
    for (index, record) in records.iter().enumerate() {
        let delta_us = record.arrival_us - first;
        if delta_us > u64::from(u32::MAX) {
            return Err(LimitError::ArrivalSpread {
                index,
                delta_us,
                max: u64::from(u32::MAX),
            });
        }
    }
    Ok(shape)
}

/// Checks every limit of a put whose records share one arrival time, given each record's
/// partition key and data length. Call before anything is appended.
///
/// # Errors
/// The first limit the put breaks, naming the record.
pub fn validate_put<'a>(
    records: impl ExactSizeIterator<Item = (&'a [u8], usize)>,
) -> Result<BatchShape, LimitError> {
    let count = records.len();
    if count == 0 {
        return Err(LimitError::EmptyBatch);
    }
    if count > BATCH_RECORDS_MAX {
        return Err(LimitError::TooManyRecords {
            count,
            max: BATCH_RECORDS_MAX,
        });
    }
    let mut payload = 0usize;
    for (index, (key, data_len)) in records.enumerate() {
        validate_key(index, key)?;
        if data_len > RECORD_DATA_BYTES_MAX {
            return Err(LimitError::RecordTooLarge {
                index,
                bytes: data_len,
                max: RECORD_DATA_BYTES_MAX,
            });
        }
        payload += data_len + key.len();
    }
    if payload > BATCH_BYTES_MAX {
        return Err(LimitError::BatchTooLarge {
            bytes: payload,
            max: BATCH_BYTES_MAX,
        });
    }
    Ok(BatchShape {
        records: count,
        encoded_bytes: HEADER_BYTES + count * RECORD_HEADER_BYTES + payload,
    })
}

/// One shard's part of a put, encoded by the core that read the put: the space for a
/// batch header, then each record in the batch layout. The shard's owner core only fills
/// in the header (sequence number, commit, arrival range) and the checksum
/// ([`Encoded::into_batch`]), so a put's records cross cores as one buffer per shard
/// rather than as two reference-counted slices per record, and are copied once between
/// the request and the log.
///
/// All records of a put share its arrival time, so every record's arrival delta is zero.
/// Records come from a put that passed [`validate_put`]; every limit is per record or
/// bounded by the whole put, so any part of them, in order, is within the limits too.
#[derive(Debug)]
pub struct Encoded {
    buf: BytesMut,
    records: u32,
    payload: usize,
    arrival_us: u64,
}

impl Encoded {
    /// An empty part with room for `records` records of `payload` bytes of keys and data.
    pub fn with_capacity(records: usize, payload: usize, arrival_us: u64) -> Encoded {
        let mut buf =
            BytesMut::with_capacity(HEADER_BYTES + records * RECORD_HEADER_BYTES + payload);
        buf.put_bytes(0, HEADER_BYTES);
        Encoded {
            buf,
            records: 0,
            payload: 0,
            arrival_us,
        }
    }

    /// Appends one record. The caller has checked its limits ([`validate_put`]).
    pub fn push(&mut self, partition_key: &[u8], data: &[u8]) {
        debug_assert!(partition_key.len() <= PARTITION_KEY_BYTES_MAX);
        debug_assert!(data.len() <= RECORD_DATA_BYTES_MAX);
        let mut head = [0u8; RECORD_HEADER_BYTES];
        head[REC_OFF_DATA_LEN..REC_OFF_DATA_LEN + 4]
            .copy_from_slice(&(data.len() as u32).to_le_bytes());
        head[REC_OFF_KEY_LEN..REC_OFF_KEY_LEN + 2]
            .copy_from_slice(&(partition_key.len() as u16).to_le_bytes());
        self.buf.put_slice(&head);
        self.buf.put_slice(partition_key);
        self.buf.put_slice(data);
        self.records += 1;
        self.payload += partition_key.len() + data.len();
    }

    pub fn len(&self) -> usize {
        self.records as usize
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes of keys and data (what quotas and metrics count).
    pub fn payload_bytes(&self) -> usize {
        self.payload
    }

    /// Bytes of the whole batch, header included.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn arrival_us(&self) -> u64 {
        self.arrival_us
    }

    /// Each record's partition key and data, in order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut at = HEADER_BYTES;
        (0..self.records).map(move |_| {
            let (key, data, end) = self.spans_at(at);
            at = end;
            (&self.buf[key..data], &self.buf[data..end])
        })
    }

    /// Where the record starting at `at` keeps its key and data, and where it ends. `at`
    /// is a record boundary this part wrote, so the lengths are its own.
    fn spans_at(&self, at: usize) -> (usize, usize, usize) {
        let data_len = read_u32(&self.buf, at + REC_OFF_DATA_LEN) as usize;
        let key_len = usize::from(read_u16(&self.buf, at + REC_OFF_KEY_LEN));
        let key = at + RECORD_HEADER_BYTES;
        (key, key + key_len, key + key_len + data_len)
    }

    /// Each record's size as quotas count it: partition key and data.
    pub fn record_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.records().map(|(key, data)| key.len() + data.len())
    }

    /// Keeps the first `n` records (all of them when there are fewer).
    pub fn truncate(&mut self, n: usize) {
        let mut end = HEADER_BYTES;
        let mut payload = 0;
        let keep = n.min(self.len());
        for _ in 0..keep {
            let (key, _, next) = self.spans_at(end);
            payload += next - key;
            end = next;
        }
        self.buf.truncate(end);
        self.records = keep as u32;
        self.payload = payload;
    }

    /// The finished batch at `position`: the header filled in and the checksum computed.
    /// Returns it with its arrival range (the put's arrival time, raised to
    /// `arrival_floor_us` so the shard's arrival times never go back).
    pub fn into_batch(self, position: BatchPosition, arrival_floor_us: u64) -> (Bytes, u64, u64) {
        debug_assert!(self.records > 0);
        debug_assert_eq!(position.flags & !FLAGS_KNOWN, 0);
        let arrival_us = self.arrival_us.max(arrival_floor_us);
        let mut buf = self.buf;
        let length = buf.len() as u32;
        let mut header = &mut buf[..HEADER_BYTES];
        header.put_u32_le(MAGIC);
        header.put_u8(VERSION);
        header.put_u8(position.flags);
        header.put_u16_le(0);
        header.put_u32_le(0); // crc, filled in below
        header.put_u32_le(length);
        header.put_u64_le(position.first_seq);
        header.put_u32_le(self.records);
        header.put_u32_le(0);
        header.put_u64_le(arrival_us);
        header.put_u64_le(arrival_us);
        header.put_u64_le(position.commit_id);
        let crc = checksum(&buf);
        buf[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        (buf.freeze(), arrival_us, arrival_us)
    }
}

/// Checks a partition key: 1..=256 Unicode characters of valid UTF-8.
///
/// # Errors
/// [`LimitError::KeyNotUtf8`] or [`LimitError::KeyLength`], naming record `index`.
pub fn validate_key(index: usize, key: &[u8]) -> Result<(), LimitError> {
    if key.len() > PARTITION_KEY_BYTES_MAX {
        return Err(LimitError::KeyLength {
            index,
            chars: key.len(),
        });
    }
    // Keys are nearly always ASCII, where a byte is a character: one cheap pass.
    let chars = if key.is_ascii() {
        key.len()
    } else {
        let text = std::str::from_utf8(key).map_err(|_| LimitError::KeyNotUtf8 { index })?;
        text.chars().count()
    };
    if !(PARTITION_KEY_CHARS_MIN..=PARTITION_KEY_CHARS_MAX).contains(&chars) {
        return Err(LimitError::KeyLength { index, chars });
    }
    Ok(())
}

/// Encodes a validated batch onto `out` and returns the arrival range it wrote.
///
/// `shape` must come from [`validate`] of the same records; the caller has checked the
/// limits, so every length fits its field. Arrival times are made non-decreasing: each
/// record's is raised to the largest seen so far, starting from `arrival_floor_us` (the
/// shard's newest), so time lookups can binary-search.
pub fn encode(
    out: &mut BytesMut,
    shape: &BatchShape,
    records: &[RecordIn],
    position: BatchPosition,
    arrival_floor_us: u64,
) -> (u64, u64) {
    debug_assert_eq!(shape.records, records.len());
    debug_assert_eq!(position.flags & !FLAGS_KNOWN, 0);
    let first_us = records
        .first()
        .map_or(arrival_floor_us, |r| r.arrival_us.max(arrival_floor_us));
    let start = out.len();
    out.reserve(shape.encoded_bytes);
    out.put_u32_le(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(position.flags);
    out.put_u16_le(0);
    out.put_u32_le(0); // crc, filled in below
    out.put_u32_le(shape.encoded_bytes as u32);
    out.put_u64_le(position.first_seq);
    out.put_u32_le(shape.records as u32);
    out.put_u32_le(0);
    out.put_u64_le(first_us);
    out.put_u64_le(0); // arrival_last_us, filled in below
    out.put_u64_le(position.commit_id);
    let mut last_us = first_us;
    for record in records {
        last_us = last_us.max(record.arrival_us);
        out.put_u32_le(record.data.len() as u32);
        out.put_u16_le(record.partition_key.len() as u16);
        out.put_u16_le(0);
        out.put_u32_le((last_us - first_us) as u32);
        out.put_slice(&record.partition_key);
        out.put_slice(&record.data);
    }
    let batch = &mut out[start..];
    debug_assert_eq!(batch.len(), shape.encoded_bytes);
    batch[OFF_ARRIVAL_LAST..OFF_ARRIVAL_LAST + 8].copy_from_slice(&last_us.to_le_bytes());
    let crc = checksum(batch);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    (first_us, last_us)
}

/// Where a batch goes: its first sequence number, the shard's commit it belongs to, and
/// its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPosition {
    pub first_seq: u64,
    pub commit_id: u64,
    pub flags: u8,
}

fn checksum(batch: &[u8]) -> u32 {
    let head = crc32c::crc32c(&batch[..OFF_CRC]);
    crc32c::crc32c_append(head, &batch[OFF_LENGTH..])
}

/// The fixed header of a batch, decoded and range-checked (but not checksummed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub flags: u8,
    pub crc: u32,
    pub length: u32,
    pub first_seq: u64,
    pub record_count: u32,
    pub arrival_first_us: u64,
    pub arrival_last_us: u64,
    pub commit_id: u64,
}

impl BatchHeader {
    /// One past the last sequence number in the batch.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.record_count)
    }

    /// Whether this is the first batch its shard wrote in its commit.
    pub fn is_commit_first(&self) -> bool {
        self.flags & FLAG_COMMIT_FIRST != 0
    }

    /// Decodes the header at the start of `bytes`.
    ///
    /// # Errors
    /// [`DecodeError`] naming the first field that is out of range.
    pub fn decode(bytes: &[u8]) -> Result<BatchHeader, DecodeError> {
        let header = bytes.get(..HEADER_BYTES).ok_or(DecodeError::Truncated {
            needed: HEADER_BYTES,
            present: bytes.len(),
        })?;
        let magic = read_u32(header, OFF_MAGIC);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        let version = header[OFF_VERSION];
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let flags = header[OFF_FLAGS];
        if flags & !FLAGS_KNOWN != 0 {
            return Err(DecodeError::UnknownFlags { found: flags });
        }
        if read_u16(header, OFF_ZERO_A) != 0 {
            return Err(DecodeError::ReservedNotZero { offset: OFF_ZERO_A });
        }
        if read_u32(header, OFF_ZERO_B) != 0 {
            return Err(DecodeError::ReservedNotZero { offset: OFF_ZERO_B });
        }
        let length = read_u32(header, OFF_LENGTH);
        let length_ok = (HEADER_BYTES..=BATCH_ENCODED_BYTES_MAX).contains(&(length as usize));
        if !length_ok {
            return Err(DecodeError::BadLength { length });
        }
        let record_count = read_u32(header, OFF_RECORD_COUNT);
        if record_count == 0 || record_count as usize > BATCH_RECORDS_MAX {
            return Err(DecodeError::BadRecordCount {
                count: record_count,
            });
        }
        let arrival_first_us = read_u64(header, OFF_ARRIVAL_FIRST);
        let arrival_last_us = read_u64(header, OFF_ARRIVAL_LAST);
        if arrival_first_us > arrival_last_us {
            return Err(DecodeError::ArrivalInverted {
                first_us: arrival_first_us,
                last_us: arrival_last_us,
            });
        }
        Ok(BatchHeader {
            flags,
            crc: read_u32(header, OFF_CRC),
            length,
            first_seq: read_u64(header, OFF_FIRST_SEQ),
            record_count,
            arrival_first_us,
            arrival_last_us,
            commit_id: read_u64(header, OFF_COMMIT_ID),
        })
    }
}

/// Whether `bytes` starts with a header-sized run of zeros: the clean end of a segment that
/// O_DIRECT padded to a whole block.
pub fn is_zero_header(bytes: &[u8]) -> bool {
    let probe = &bytes[..bytes.len().min(HEADER_BYTES)];
    probe.iter().all(|&b| b == 0)
}

/// Decodes and verifies the batch at the start of `bytes`: header, length, checksum and
/// every record's bounds. Returns the header; the batch occupies `..header.length`.
///
/// # Errors
/// [`DecodeError`] for the first problem found.
pub fn verify(bytes: &[u8]) -> Result<BatchHeader, DecodeError> {
    let header = BatchHeader::decode(bytes)?;
    let length = header.length as usize;
    let batch = bytes.get(..length).ok_or(DecodeError::Truncated {
        needed: length,
        present: bytes.len(),
    })?;
    let computed = checksum(batch);
    if computed != header.crc {
        return Err(DecodeError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let mut records = Records::new(header, batch);
    for next in records.by_ref() {
        next?;
    }
    if records.position != length {
        return Err(DecodeError::TrailingBytes {
            end: records.position,
            length,
        });
    }
    Ok(header)
}

/// Iterates over the records of one verified batch, yielding slices of `batch`.
pub struct Records<'a> {
    header: BatchHeader,
    batch: &'a [u8],
    index: u32,
    position: usize,
}

impl<'a> Records<'a> {
    /// `batch` holds exactly one batch whose header is `header`.
    pub fn new(header: BatchHeader, batch: &'a [u8]) -> Records<'a> {
        Records {
            header,
            batch,
            index: 0,
            position: HEADER_BYTES,
        }
    }
}

/// One record's place inside its batch buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSpan {
    pub seq: u64,
    pub arrival_us: u64,
    pub key: (usize, usize),
    pub data: (usize, usize),
}

impl RecordSpan {
    /// Materialises the record as slices of `batch`, the `Bytes` the span was decoded from.
    pub fn to_record(&self, batch: &Bytes) -> RecordOut {
        RecordOut {
            seq: self.seq,
            arrival_us: self.arrival_us,
            partition_key: batch.slice(self.key.0..self.key.1),
            data: batch.slice(self.data.0..self.data.1),
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<RecordSpan, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.header.record_count {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let overrun = DecodeError::RecordOverrun { index };
        let Some(head) = self
            .batch
            .get(self.position..self.position + RECORD_HEADER_BYTES)
        else {
            self.index = self.header.record_count;
            return Some(Err(overrun));
        };
        let data_len = read_u32(head, REC_OFF_DATA_LEN) as usize;
        let key_len = read_u16(head, REC_OFF_KEY_LEN) as usize;
        if read_u16(head, REC_OFF_ZERO) != 0 {
            self.index = self.header.record_count;
            return Some(Err(DecodeError::RecordReservedNotZero { index }));
        }
        let delta = u64::from(read_u32(head, REC_OFF_ARRIVAL_DELTA));
        let key_start = self.position + RECORD_HEADER_BYTES;
        let data_start = key_start + key_len;
        let end = data_start + data_len;
        if end > self.batch.len() {
            self.index = self.header.record_count;
            return Some(Err(overrun));
        }
        self.position = end;
        Some(Ok(RecordSpan {
            seq: self.header.first_seq + u64::from(index),
            arrival_us: self.header.arrival_first_us.saturating_add(delta),
            key: (key_start, data_start),
            data: (data_start, end),
        }))
    }
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(raw)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Byte ranges of the header fields, for tests that flip a bit in each one.
pub const HEADER_FIELDS: [(&str, usize, usize); 12] = [
    ("magic", OFF_MAGIC, 4),
    ("version", OFF_VERSION, 1),
    ("flags", OFF_FLAGS, 1),
    ("zero_a", OFF_ZERO_A, 2),
    ("crc", OFF_CRC, 4),
    ("length", OFF_LENGTH, 4),
    ("first_seq", OFF_FIRST_SEQ, 8),
    ("record_count", OFF_RECORD_COUNT, 4),
    ("zero_b", OFF_ZERO_B, 4),
    ("arrival_first_us", OFF_ARRIVAL_FIRST, 8),
    ("arrival_last_us", OFF_ARRIVAL_LAST, 8),
    ("commit_id", OFF_COMMIT_ID, 8),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(key: &str, data: &[u8], arrival_us: u64) -> RecordIn {
        RecordIn {
            partition_key: Bytes::copy_from_slice(key.as_bytes()),
            data: Bytes::copy_from_slice(data),
            arrival_us,
        }
    }

    fn encoded(records: &[RecordIn], first_seq: u64) -> Bytes {
        let shape = validate(records).expect("valid batch");
        let mut out = BytesMut::new();
        let position = BatchPosition {
            first_seq,
            commit_id: 7,
            flags: FLAG_COMMIT_FIRST,
        };
        encode(&mut out, &shape, records, position, 0);
        out.freeze()
    }

    fn sample() -> Bytes {
        encoded(
            &[
                record("alpha", b"one", 1_000),
                record("β-key", b"", 1_500),
                record("c", &[0u8; 300], 1_200),
            ],
            42,
        )
    }

    fn arb_record() -> impl Strategy<Value = RecordIn> {
        (
            "[a-zA-Z0-9ß😀]{1,40}",
            proptest::collection::vec(any::<u8>(), 0..600),
            0u64..1_000_000,
        )
            .prop_map(|(key, data, arrival)| record(&key, &data, 1_700_000_000_000_000 + arrival))
    }

    proptest! {
        #[test]
        fn a_part_encoded_away_from_its_shard_is_the_batch_encode_writes(
            records in proptest::collection::vec(arb_record(), 1..60),
            parts in 1usize..6,
            take in 1usize..70,
            first_seq in 0u64..u64::MAX / 2,
            floor in 0u64..1_700_000_000_500_000,
        ) {
            // One put: every record arrives at the first one's time.
            let arrival = records[0].arrival_us;
            let records: Vec<RecordIn> = records
                .into_iter()
                .map(|r| RecordIn { arrival_us: arrival, ..r })
                .collect();
            let refs = records.iter().map(|r| (&r.partition_key[..], r.data.len()));
            prop_assert_eq!(validate_put(refs), validate(&records));
            let part_of: Vec<usize> = (0..records.len()).map(|i| (i * 7 + i / 3) % parts).collect();
            for p in 0..parts {
                let expected: Vec<RecordIn> = records
                    .iter()
                    .zip(&part_of)
                    .filter(|(_, q)| **q == p)
                    .map(|(r, _)| r.clone())
                    .collect();
                let payload = expected.iter().map(|r| r.partition_key.len() + r.data.len()).sum();
                let mut part = Encoded::with_capacity(expected.len(), payload, arrival);
                for r in &expected {
                    part.push(&r.partition_key, &r.data);
                }
                prop_assert_eq!(part.len(), expected.len());
                prop_assert_eq!(part.payload_bytes(), payload);
                let read: Vec<(Vec<u8>, Vec<u8>)> =
                    part.records().map(|(k, d)| (k.to_vec(), d.to_vec())).collect();
                let want: Vec<(Vec<u8>, Vec<u8>)> =
                    expected.iter().map(|r| (r.partition_key.to_vec(), r.data.to_vec())).collect();
                prop_assert_eq!(read, want);
                part.truncate(take);
                let n = take.min(expected.len());
                prop_assert_eq!(part.len(), n);
                if n == 0 {
                    continue;
                }
                let prefix = &expected[..n];
                let shape = validate(prefix).unwrap();
                prop_assert_eq!(part.encoded_bytes(), shape.encoded_bytes);
                prop_assert_eq!(
                    part.payload_bytes(),
                    prefix.iter().map(|r| r.partition_key.len() + r.data.len()).sum::<usize>()
                );
                let position = BatchPosition { first_seq, commit_id: 9, flags: FLAG_COMMIT_FIRST };
                let mut out = BytesMut::new();
                let range = encode(&mut out, &shape, prefix, position, floor);
                let (bytes, first_us, last_us) = part.into_batch(position, floor);
                prop_assert_eq!((first_us, last_us), range);
                prop_assert_eq!(&bytes[..], &out[..]);
                prop_assert!(verify(&bytes).is_ok());
            }
        }
    }

    proptest! {
        #[test]
        fn encoded_batches_decode_to_the_same_records(
            records in proptest::collection::vec(arb_record(), 1..40),
            first_seq in 0u64..u64::MAX / 2,
            floor in 0u64..1_700_000_000_500_000,
        ) {
            let shape = validate(&records).unwrap();
            let mut out = BytesMut::new();
            let position = BatchPosition { first_seq, commit_id: 3, flags: 0 };
            let (first_us, last_us) = encode(&mut out, &shape, &records, position, floor);
            let bytes = out.freeze();
            prop_assert_eq!(bytes.len(), shape.encoded_bytes);
            let header = verify(&bytes).unwrap();
            prop_assert_eq!(header.first_seq, first_seq);
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!((header.arrival_first_us, header.arrival_last_us), (first_us, last_us));
            let mut running = floor;
            for (i, span) in Records::new(header, &bytes).enumerate() {
                let out = span.unwrap().to_record(&bytes);
                running = running.max(records[i].arrival_us);
                prop_assert_eq!(out.seq, first_seq + i as u64);
                prop_assert_eq!(&out.partition_key, &records[i].partition_key);
                prop_assert_eq!(&out.data, &records[i].data);
                prop_assert_eq!(out.arrival_us, running);
            }
        }
    }

    #[test]
    fn truncation_at_every_byte_is_a_typed_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            match verify(&bytes[..len]) {
                Err(DecodeError::Truncated { needed, present }) => {
                    assert_eq!(present, len);
                    assert!(needed > len);
                }
                other => panic!("truncated to {len}: expected Truncated, got {other:?}"),
            }
        }
        assert!(verify(&bytes).is_ok());
    }

    #[test]
    fn a_flipped_bit_in_every_header_field_is_a_typed_error() {
        let bytes = sample();
        for (field, offset, width) in HEADER_FIELDS {
            for bit in 0..width * 8 {
                let mut damaged = bytes.to_vec();
                damaged[offset + bit / 8] ^= 1 << (bit % 8);
                let result = verify(&damaged);
                assert!(
                    result.is_err(),
                    "flip of bit {bit} in {field} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_records_fails_the_checksum() {
        let bytes = sample();
        for at in HEADER_BYTES..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x10;
            assert!(
                matches!(verify(&damaged), Err(DecodeError::CrcMismatch { .. })),
                "flip at byte {at}"
            );
        }
    }

    #[test]
    fn limits_are_checked_before_encoding() {
        assert_eq!(validate(&[]), Err(LimitError::EmptyBatch));
        let big = vec![0u8; RECORD_DATA_BYTES_MAX + 1];
        assert!(matches!(
            validate(&[record("k", &big, 0)]),
            Err(LimitError::RecordTooLarge { index: 0, .. })
        ));
        assert!(matches!(
            validate(&[record("k", b"x", 0), record("", b"x", 0)]),
            Err(LimitError::KeyLength { index: 1, chars: 0 })
        ));
        let long_key = "é".repeat(PARTITION_KEY_CHARS_MAX + 1);
        assert!(matches!(
            validate(&[record(&long_key, b"x", 0)]),
            Err(LimitError::KeyLength { chars: 257, .. })
        ));
        let widest_key = "😀".repeat(PARTITION_KEY_CHARS_MAX);
        assert!(validate(&[record(&widest_key, b"x", 0)]).is_ok());
        let bad_utf8 = RecordIn {
            partition_key: Bytes::from_static(&[0xff, 0xfe]),
            data: Bytes::new(),
            arrival_us: 0,
        };
        assert_eq!(
            validate(&[bad_utf8]),
            Err(LimitError::KeyNotUtf8 { index: 0 })
        );
        let many: Vec<RecordIn> = (0..=BATCH_RECORDS_MAX)
            .map(|_| record("k", b"", 0))
            .collect();
        assert!(matches!(
            validate(&many),
            Err(LimitError::TooManyRecords { .. })
        ));
        let chunk = vec![0u8; RECORD_DATA_BYTES_MAX];
        let heavy: Vec<RecordIn> = (0..6).map(|_| record("k", &chunk, 0)).collect();
        assert!(matches!(
            validate(&heavy),
            Err(LimitError::BatchTooLarge { .. })
        ));
        let spread = [
            record("k", b"", 0),
            record("k", b"", u64::from(u32::MAX) + 1),
        ];
        assert!(matches!(
            validate(&spread),
            Err(LimitError::ArrivalSpread { index: 1, .. })
        ));
    }

    #[test]
    fn zero_padding_is_recognised_as_the_end() {
        assert!(is_zero_header(&[0u8; 4096]));
        assert!(is_zero_header(&[0u8; 10]));
        assert!(!is_zero_header(&sample()));
    }
}
