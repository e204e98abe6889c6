//! Step 4 of the data path: the shard log. Each shard is a folder of segment files holding
//! CRC-checked batches, with a sparse index per segment, an in-memory tail for readers at
//! the head, retention by whole segments, and recovery on open. Runs on the shard's owner
//! core; the commit step that makes appends durable is in [`crate::commit`].
//!
//! * [`batch`] — the batch byte layout (read this first), limits checks, record iteration.
//! * [`segment`] — segment file names and the recovery scan.
//! * [`index`] — the sparse index and its file.
//! * [`shard`] — [`ShardLog`]: append, read, retention, open.
//! * [`files`] — io_uring file helpers and the typed I/O error.

pub mod batch;
pub mod files;
pub mod index;
pub mod segment;
pub mod shard;

pub use batch::{RecordIn, RecordOut};
pub use shard::{
    AppendAck, AppendError, LogConfig, OpenError, ReadError, ReadOutcome, ShardLog, StartPosition,
};
