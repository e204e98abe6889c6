//! Every hard bound in spate, named, with its unit and the reason for its value.
//!
//! A limit is checked before anything is buffered or appended, so a request that breaks one
//! changes nothing. Relationships between limits are stated as compile-time checks at the
//! bottom of this file.

/// Largest record payload (the Kinesis `Data` blob after base64 decoding), in bytes.
/// Source: the Kinesis default record size quota of 1 MiB.
pub const RECORD_DATA_BYTES_MAX: usize = 1024 * 1024;

/// Fewest Unicode characters in a partition key. Source: Kinesis (`PartitionKey` 1..256).
pub const PARTITION_KEY_CHARS_MIN: usize = 1;

/// Most Unicode characters in a partition key. Source: Kinesis (`PartitionKey` 1..256).
pub const PARTITION_KEY_CHARS_MAX: usize = 256;

/// Most bytes a partition key can take in UTF-8: 256 characters of at most 4 bytes each.
pub const PARTITION_KEY_BYTES_MAX: usize = PARTITION_KEY_CHARS_MAX * 4;

/// Most records in one put batch. Source: Kinesis `PutRecords` (500 records per call);
/// the binary protocol keeps the same bound so both front ends share one append path.
pub const BATCH_RECORDS_MAX: usize = 500;

/// Most bytes of payload plus partition keys in one put batch. Source: Kinesis
/// `PutRecords` (5 MiB per call, keys included).
pub const BATCH_BYTES_MAX: usize = 5 * 1024 * 1024;

/// Smallest segment size, in bytes (one block). A batch larger than the segment size is
/// written alone into a segment of its own, so small sizes are legal; tests use them to
/// roll segments every few batches.
pub const SEGMENT_BYTES_MIN: u64 = 4096;

/// Default segment size, in bytes. Source: our own; large enough that rolling is rare,
/// small enough that retention frees space in useful steps.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Largest segment size, in bytes: batch positions inside a segment are stored as `u32`,
/// and a segment can exceed its size by at most one batch.
pub const SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// Default retention, in hours. Source: Kinesis (24 h by default).
pub const RETENTION_HOURS_DEFAULT: u32 = 24;

/// Shortest retention, in hours. Source: Kinesis (24..8760).
pub const RETENTION_HOURS_MIN: u32 = 24;

/// Longest retention, in hours (one year). Source: Kinesis (24..8760).
pub const RETENTION_HOURS_MAX: u32 = 8760;

/// Default group-commit window, in microseconds: the longest an append waits for company
/// before its commit starts, when the core committed recently. Source: our own. Zero: a
/// commit starts as soon as the one before it ends, and the appends that arrived while it
/// ran share the next one (natural batching, as in PostgreSQL with commit_delay 0). A
/// window of 1,000 us added up to a window to each put's latency when a round took less
/// (0.36 ms here on a fast disk: put p50 1.5-2.0 ms with it, 1.0 ms without) and bought
/// no throughput in A/B runs (bench/RESULTS.md, 2026-12-02).
pub const COMMIT_WINDOW_US_DEFAULT: u64 = 0;

/// Default group-commit size trigger, in bytes: a commit starts at once when this much is
/// pending on the core. Source: our own; a large sequential write without long stalls.
pub const COMMIT_BYTES_DEFAULT: usize = 1024 * 1024;

/// Default bound on bytes appended but not yet durable on one core. Appends beyond it wait
/// (backpressure) instead of queueing without bound. Source: our own.
pub const PENDING_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

/// Default spacing of sparse index entries, in bytes of segment: one entry at least every
/// this many bytes. Source: our own; a read starts at most this far before its target.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 64 * 1024;

/// Default budget for the in-memory tail that serves readers near the head, in bytes: per
/// shard log, and in the server per core (shared evenly by the core's shards, so a core's
/// tails never hold more whatever its shard count). Source: our own; a few hundred
/// milliseconds of a busy core.
pub const TAIL_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Most records one read returns. Source: Kinesis `GetRecords` (`Limit` 1..10000).
pub const READ_RECORDS_MAX: usize = 10_000;

/// Most bytes one read returns. Source: Kinesis `GetRecords` (10 MiB per call).
pub const READ_BYTES_MAX: usize = 10 * 1024 * 1024;

/// Largest encoded batch the log ever writes: header, per-record headers and payload.
pub const BATCH_ENCODED_BYTES_MAX: usize = crate::log::batch::HEADER_BYTES
    + BATCH_RECORDS_MAX * crate::log::batch::RECORD_HEADER_BYTES
    + BATCH_BYTES_MAX;

const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_ENCODED_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(RECORD_DATA_BYTES_MAX + PARTITION_KEY_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(BATCH_ENCODED_BYTES_MAX <= PENDING_BYTES_MAX_DEFAULT);
const _: () = assert!(BATCH_ENCODED_BYTES_MAX <= READ_BYTES_MAX);

/// Largest binary protocol frame by default, in bytes: a maximal put batch (5 MiB of keys
/// and data plus per-record framing) fits with room to spare. Source: our own.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Smallest frame limit a config may set: one maximal put batch with its framing
/// (stream name, 8 bytes and an optional 16-byte hash key per record).
pub const FRAME_BYTES_MIN: usize =
    16 + 2 + 128 + 2 + BATCH_BYTES_MAX + BATCH_RECORDS_MAX * (1 + 16 + 2 + 4);

/// Default bound on requests one connection may have in flight. Source: our own; deep
/// enough for pipelined producers, small enough that a connection holds little memory.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 128;

/// Default bound on connections per core. Source: our own.
pub const CONNECTIONS_PER_CORE_MAX_DEFAULT: usize = 10_000;

/// Default capacity of each core-to-core channel, in messages. Source: our own.
pub const CORE_CHANNEL_MESSAGES_DEFAULT: usize = 1024;

/// Most shards in one stream. Source: Kinesis (10,000 shards per UpdateShardCount target).
pub const STREAM_SHARDS_MAX: u32 = 10_000;

/// Most shards on the server. Source: the Kinesis default account shard limit (20,000).
pub const SHARDS_MAX: u32 = 20_000;

/// Stream name length bounds. Source: Kinesis (`StreamName` 1..128, `[a-zA-Z0-9_.-]+`).
pub const STREAM_NAME_BYTES_MAX: usize = 128;

/// Longest a read waits for new records before answering empty, in microseconds (the
/// subscribe long-poll). Source: our own.
pub const READ_WAIT_US_MAX: u64 = 5_000_000;

const _: () = assert!(FRAME_BYTES_MIN <= FRAME_BYTES_MAX);

/// Largest HTTP request head (request line and headers), in bytes. Source: our own; AWS
/// SDK requests carry a few hundred bytes of headers, a SigV4 header about 250.
pub const HTTP_HEAD_BYTES_MAX: usize = 64 * 1024;

/// Largest HTTP request body, in bytes: a maximal PutRecords (5 MiB of data, base64 grows
/// it by 4/3) with its JSON framing fits. Source: our own; kinesalite allows 7 MiB.
pub const HTTP_BODY_BYTES_MAX: usize = 10 * 1024 * 1024;

/// Concurrent HTTP/2 streams per connection. Source: our own, as for binary in-flight.
pub const HTTP2_STREAMS_MAX: u32 = 128;

/// How long a shard iterator stays valid, in milliseconds. Source: Kinesis (5 minutes).
pub const ITERATOR_TTL_MS: u64 = 300_000;

const _: () = assert!(BATCH_BYTES_MAX / 3 * 4 + 1024 * 1024 <= HTTP_BODY_BYTES_MAX);

/// Most tags on one stream. Source: Kinesis (50 tags per stream).
pub const STREAM_TAGS_MAX: usize = 50;

/// UpdateShardCount calls per stream in a rolling 24 hours (Kinesis quota).
pub const SCALINGS_PER_DAY_MAX: usize = 10;

/// How long a put or read waits for the next catalog when its shard is closing or moving
/// to another core, before it fails (our own bound; a reshard takes milliseconds).
pub const RESHARD_WAIT_US_MAX: u64 = 5_000_000;

/// Registered (enhanced fan-out) consumers per stream (Kinesis quota).
pub const STREAM_CONSUMERS_MAX: usize = 20;

/// Consumers of one stream in CREATING at once (Kinesis quota).
pub const CONSUMERS_CREATING_MAX: usize = 5;

/// How long a SubscribeToShard subscription lives before the client must subscribe again
/// from its continuation point (Kinesis: 5 minutes).
pub const SUBSCRIPTION_LIFETIME_MS: u64 = 300_000;

/// How long a new subscription for the same consumer and shard is refused while another
/// is active (Kinesis: 5 s); after it, the new one takes over.
pub const SUBSCRIPTION_TAKEOVER_MS: u64 = 5_000;

/// Events a subscription may have queued for a slow client before it stops reading the
/// shard and waits (our own bound: a slow subscriber holds at most this many batches).
pub const SUBSCRIPTION_EVENTS_QUEUED_MAX: usize = 4;
