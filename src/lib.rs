//! spate: a stream ingestion server with the data model of Kinesis Data Streams, run
//! thread-per-core on io_uring.
//!
//! A record's way from socket to disk, one module per step:
//!
//! ```text
//! client ──TCP──▶ net        per-core listener, connection loop           src/net/
//!   ▶ protocol    binary frames / Kinesis JSON (HTTP via hyper)           src/protocol/
//!   ▶ route       partition key → hash key → shard → owner core           src/route/
//!   ▶ hand over   one message per owner core over the mesh                src/server/core.rs
//!   ▶ log         owner core encodes the batch, assigns sequence numbers  src/log/
//!   ▶ commit      group commit: one write + fdatasync per touched file    src/commit/
//!   ▶ ack         appends resolve once their bytes are durable            src/commit/
//! ```
//!
//! * [`limits`] — every hard bound, with its reason.
//! * [`catalog`] — streams, shards, hash ranges, lineage; reshard planning.
//! * [`server`] — cores, the controller (catalog changes, resharding, consumer leases),
//!   quotas.
//! * [`log`] — the shard log: batches, segments, indexes, reads, retention, recovery.
//! * [`commit`] — the per-core group committer.
//! * [`client`], [`load`] — the Rust client (producer, consumer library) and the load
//!   generator.
//! * [`metrics`] — per-core HdrHistograms and counters, Prometheus text for `/metrics`.
//! * [`runtime`] — starting glommio executors within the machine's memlock limit.
//! * [`tools`] — the CLI commands, the log benchmark and the crash writer.

pub mod catalog;
pub mod client;
pub mod commit;
pub mod config;
pub mod limits;
pub mod load;
pub mod log;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod route;
pub mod runtime;
pub mod server;
pub mod tools;
