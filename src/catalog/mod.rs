//! The catalog: streams, their shards, hash ranges and owner cores. Owned and changed only
//! by the controller (core 0), persisted atomically (write temp, fsync, rename, fsync dir),
//! and copied to every core as an immutable snapshot stamped with an epoch. Does not touch
//! shard data. Control plane only: the put path reads a snapshot, never this module's
//! mutation code.

pub mod md5x8;
pub mod sequence;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::{SHARDS_MAX, STREAM_NAME_BYTES_MAX, STREAM_SHARDS_MAX};
use crate::log::files::{self, IoError};

/// The file the catalog is kept in, inside the data folder.
pub const CATALOG_FILE: &str = "catalog.json";

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("stream {0} already exists")]
    StreamExists(String),
    #[error("stream {0} not found")]
    StreamNotFound(String),
    #[error("invalid stream name `{0}`: 1 to 128 characters, letters, digits, `_`, `.` and `-`")]
    InvalidName(String),
    #[error("shard count {count} is outside 1..={max}")]
    InvalidShardCount { count: u32, max: u32 },
    #[error("the server holds {open} shards; {requested} more would pass the limit of {max}")]
    ShardLimit { open: u32, requested: u32, max: u32 },
    #[error("stream {stream} has no shard {shard}")]
    ShardNotFound { stream: String, shard: String },
    #[error(
        "shard {0} has already been merged or split, and thus is not eligible for merging or splitting"
    )]
    ShardClosed(String),
    #[error(
        "NewStartingHashKey {key} used in SplitShard() on shard {shard} is not both greater than one \
         plus the shard's StartingHashKey {start} and less than the shard's EndingHashKey {end}"
    )]
    InvalidSplit {
        shard: String,
        key: u128,
        start: u128,
        end: u128,
    },
    #[error(
        "shards {shard} and {adjacent} are not an adjacent pair of shards eligible for merging"
    )]
    NotAdjacent { shard: String, adjacent: String },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("catalog file {path} is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
}

/// Lifecycle state of a stream, as Kinesis names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    #[serde(rename = "CREATING")]
    Creating,
    #[serde(rename = "ACTIVE")]
    Active,
    #[serde(rename = "UPDATING")]
    Updating,
    #[serde(rename = "DELETING")]
    Deleting,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
            StreamStatus::Deleting => "DELETING",
        }
    }
}

/// One shard of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// The number in `shardId-000000000000`; never reused within a stream.
    pub index: u32,
    #[serde(with = "u128_text")]
    pub hash_start: u128,
    #[serde(with = "u128_text")]
    pub hash_end: u128,
    /// The core that owns the shard's files and memory.
    pub owner_core: u16,
    /// The shard this one was split from, or the first of the two merged into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// The second shard merged into this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjacent_parent: Option<u32>,
    /// When the shard was made, unix microseconds (0 for shards of catalogs written before
    /// resharding existed: they date from their stream).
    #[serde(default)]
    pub created_us: u64,
    /// Set once a split or merge closed the shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<ShardEnd>,
}

/// Where a closed shard ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEnd {
    /// One past the last sequence number the shard holds; nothing is appended after it.
    pub end_seq: u64,
    /// When it closed, unix microseconds; its data ages out from here.
    pub closed_us: u64,
}

impl ShardMeta {
    /// The Kinesis shard id, `shardId-` and 12 digits.
    pub fn shard_id(&self) -> String {
        shard_id(self.index)
    }

    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    fn new(index: u32, (hash_start, hash_end): (u128, u128), owner_core: u16, now_us: u64) -> Self {
        ShardMeta {
            index,
            hash_start,
            hash_end,
            owner_core,
            parent: None,
            adjacent_parent: None,
            created_us: now_us,
            closed: None,
        }
    }
}

/// Renders a shard index as a Kinesis shard id.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses `shardId-000000000007` (or any digits after the dash, as kinesalite accepts).
pub fn parse_shard_id(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("shardId-")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Unique over the server's life, so a stream deleted and created again under the same
    /// name never meets the old one's files.
    pub id: u64,
    pub name: String,
    pub status: StreamStatus,
    pub created_us: u64,
    pub retention_hours: u32,
    /// Open shards in hash-key order; they cover 0..=2^128-1 without gaps or overlaps.
    pub shards: Vec<ShardMeta>,
    /// Shards closed by splits and merges, in index order, kept (and readable) until their
    /// data is past retention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed: Vec<ShardMeta>,
    /// The index the next new shard gets; indexes are never reused.
    #[serde(default)]
    pub next_shard_index: u32,
    /// Tags, by key.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Whether the stream is ON_DEMAND: it splits its busy shards by itself.
    #[serde(default)]
    pub on_demand: bool,
    /// A reshard accepted but not yet carried out (the stream is UPDATING meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Reshard>,
    /// When UpdateShardCount was accepted, unix microseconds, for the daily quota.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scalings_us: Vec<u64>,
    /// Registered (enhanced fan-out) consumers, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, ConsumerMeta>,
}

/// A registered consumer of a stream (RegisterStreamConsumer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMeta {
    pub name: String,
    /// When it was registered, unix microseconds; its ARN carries the seconds.
    pub created_us: u64,
    pub status: ConsumerStatus,
}

impl ConsumerMeta {
    /// The seconds in the consumer's ARN.
    pub fn created_s(&self) -> u64 {
        self.created_us / 1_000_000
    }
}

/// Lifecycle of a consumer, as Kinesis names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsumerStatus {
    #[serde(rename = "CREATING")]
    Creating,
    #[serde(rename = "ACTIVE")]
    Active,
    #[serde(rename = "DELETING")]
    Deleting,
}

impl ConsumerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerStatus::Creating => "CREATING",
            ConsumerStatus::Active => "ACTIVE",
            ConsumerStatus::Deleting => "DELETING",
        }
    }
}

/// A change of a stream's shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reshard {
    /// SplitShard: `shard` closes; two children split its range at `new_starting_hash`.
    Split {
        shard: u32,
        #[serde(with = "u128_text")]
        new_starting_hash: u128,
    },
    /// MergeShards: both close; one child covers both ranges.
    Merge { shard: u32, adjacent: u32 },
    /// UpdateShardCount with UNIFORM_SCALING: splits and merges until `target` open shards
    /// of equal ranges remain.
    Scale { target: u32 },
    /// Moves a shard to another core; its data stays where it is.
    Move { shard: u32, core: u16 },
    /// Moves open shards of every stream from the busiest cores to the least busy until
    /// their counts differ by at most one.
    Rebalance,
}

/// One step of a reshard: parents that close and the children that replace them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReshardStep {
    /// One parent for a split, two for a merge (the first is `ParentShardId`).
    pub parents: Vec<u32>,
    /// Hash ranges of the children, in hash order.
    pub children: Vec<(u128, u128)>,
}

impl StreamMeta {
    /// The folder holding this stream's shard logs.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("streams")
            .join(format!("{}.{}", self.name, self.id))
    }

    /// The folder holding one shard's log.
    pub fn shard_dir(&self, data_dir: &Path, index: u32) -> PathBuf {
        self.dir(data_dir).join(shard_id(index))
    }

    /// The shard whose hash range holds `hash_key`.
    pub fn shard_for_hash(&self, hash_key: u128) -> Option<&ShardMeta> {
        self.shards.get(self.shard_position_for_hash(hash_key)?)
    }

    /// Where in `shards` the shard whose hash range holds `hash_key` is.
    pub fn shard_position_for_hash(&self, hash_key: u128) -> Option<usize> {
        let after = self.shards.partition_point(|s| s.hash_start <= hash_key);
        let position = after.checked_sub(1)?;
        (hash_key <= self.shards.get(position)?.hash_end).then_some(position)
    }

    /// A shard, open or closed.
    pub fn shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards
            .iter()
            .chain(&self.closed)
            .find(|s| s.index == index)
    }

    /// An open shard.
    pub fn open_shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.index == index)
    }

    /// Every shard, open and closed, in index order (the order Kinesis lists them in).
    pub fn all_shards(&self) -> Vec<&ShardMeta> {
        let mut all: Vec<&ShardMeta> = self.shards.iter().chain(&self.closed).collect();
        all.sort_by_key(|s| s.index);
        all
    }

    /// The shards split or merged from `index`.
    pub fn children_of(&self, index: u32) -> Vec<&ShardMeta> {
        self.all_shards()
            .into_iter()
            .filter(|s| s.parent == Some(index) || s.adjacent_parent == Some(index))
            .collect()
    }

    fn fresh_index(&mut self) -> u32 {
        // Catalogs written before resharding existed have no counter: their shards are
        // numbered 0..n.
        let floor = self
            .shards
            .iter()
            .chain(&self.closed)
            .map(|s| s.index + 1)
            .max()
            .unwrap_or(0);
        let index = self.next_shard_index.max(floor);
        self.next_shard_index = index + 1;
        index
    }

    /// Checks a split: the shard is open and the key falls strictly inside its range, so
    /// both children get at least two hash keys (as Kinesis requires).
    ///
    /// # Errors
    /// [`CatalogError::ShardNotFound`], [`CatalogError::ShardClosed`],
    /// [`CatalogError::InvalidSplit`].
    pub fn check_split(&self, shard: u32, key: u128) -> Result<ReshardStep, CatalogError> {
        let meta = self.open_meta(shard)?;
        let inside = key > meta.hash_start.saturating_add(1) && key < meta.hash_end;
        if !inside {
            return Err(CatalogError::InvalidSplit {
                shard: shard_id(shard),
                key,
                start: meta.hash_start,
                end: meta.hash_end,
            });
        }
        Ok(ReshardStep {
            parents: vec![shard],
            children: vec![(meta.hash_start, key - 1), (key, meta.hash_end)],
        })
    }

    /// Checks a merge: both shards are open and their ranges meet, in either order.
    ///
    /// # Errors
    /// [`CatalogError::ShardNotFound`], [`CatalogError::ShardClosed`],
    /// [`CatalogError::NotAdjacent`].
    pub fn check_merge(&self, shard: u32, adjacent: u32) -> Result<ReshardStep, CatalogError> {
        let a = self.open_meta(shard)?;
        let b = self.open_meta(adjacent)?;
        let range = if a.hash_end.checked_add(1) == Some(b.hash_start) {
            (a.hash_start, b.hash_end)
        } else if b.hash_end.checked_add(1) == Some(a.hash_start) {
            (b.hash_start, a.hash_end)
        } else {
            return Err(CatalogError::NotAdjacent {
                shard: shard_id(shard),
                adjacent: shard_id(adjacent),
            });
        };
        Ok(ReshardStep {
            parents: vec![shard, adjacent],
            children: vec![range],
        })
    }

    fn open_meta(&self, shard: u32) -> Result<&ShardMeta, CatalogError> {
        match self.shard(shard) {
            None => Err(CatalogError::ShardNotFound {
                stream: self.name.clone(),
                shard: shard_id(shard),
            }),
            Some(meta) if !meta.is_open() => Err(CatalogError::ShardClosed(shard_id(shard))),
            Some(meta) => Ok(meta),
        }
    }

    /// The next round of steps that brings the open shards towards `target` uniform
    /// ranges (UpdateShardCount), or none when they are there. First every shard that a
    /// target boundary cuts is split at the first such boundary; once no boundary cuts a
    /// shard, the shards inside each target range are merged pairwise. Every step is an
    /// ordinary split or merge, so the lineage stays exact: a child never has more than
    /// two parents, and each parent's range lies inside its children's.
    pub fn next_scaling_round(&self, target: u32) -> Vec<ReshardStep> {
        let ranges = hash_ranges(target);
        let mut splits = Vec::new();
        for shard in &self.shards {
            let cut = ranges
                .iter()
                .map(|r| r.0)
                .find(|&b| b > shard.hash_start && b <= shard.hash_end);
            if let Some(boundary) = cut {
                splits.push(ReshardStep {
                    parents: vec![shard.index],
                    children: vec![(shard.hash_start, boundary - 1), (boundary, shard.hash_end)],
                });
            }
        }
        if !splits.is_empty() {
            return splits;
        }
        let mut merges = Vec::new();
        for &(start, end) in &ranges {
            let inside: Vec<&ShardMeta> = self
                .shards
                .iter()
                .filter(|s| s.hash_start >= start && s.hash_end <= end)
                .collect();
            for pair in inside.chunks_exact(2) {
                merges.push(ReshardStep {
                    parents: vec![pair[0].index, pair[1].index],
                    children: vec![(pair[0].hash_start, pair[1].hash_end)],
                });
            }
        }
        merges
    }

    /// Carries out steps: parents close at the given ends, children open on the least
    /// loaded cores. Returns the new children's indexes.
    ///
    /// # Errors
    /// [`CatalogError::ShardClosed`] or [`CatalogError::ShardNotFound`] when a parent is
    /// not open (nothing changes then).
    pub fn apply_steps(
        &mut self,
        steps: &[ReshardStep],
        ends: &BTreeMap<u32, u64>,
        load: &mut [u32],
        now_us: u64,
    ) -> Result<Vec<u32>, CatalogError> {
        for step in steps {
            for &parent in &step.parents {
                self.open_meta(parent)?;
            }
        }
        let mut made = Vec::new();
        for step in steps {
            for &parent in &step.parents {
                let Some(at) = self.shards.iter().position(|s| s.index == parent) else {
                    continue;
                };
                let mut meta = self.shards.remove(at);
                if let Some(slot) = load.get_mut(usize::from(meta.owner_core)) {
                    *slot = slot.saturating_sub(1);
                }
                meta.closed = Some(ShardEnd {
                    end_seq: ends.get(&parent).copied().unwrap_or(0),
                    closed_us: now_us,
                });
                self.closed.push(meta);
            }
            for &range in &step.children {
                let index = self.fresh_index();
                let core = least_loaded(load);
                if let Some(slot) = load.get_mut(core) {
                    *slot += 1;
                }
                let mut meta = ShardMeta::new(index, range, core as u16, now_us);
                meta.parent = step.parents.first().copied();
                meta.adjacent_parent = step.parents.get(1).copied();
                self.shards.push(meta);
                made.push(index);
            }
        }
        self.shards.sort_by_key(|s| s.hash_start);
        self.closed.sort_by_key(|s| s.index);
        Ok(made)
    }

    /// Forgets closed shards whose newest data is past retention; returns them so their
    /// owners can delete their files.
    pub fn expire_closed(&mut self, now_us: u64) -> Vec<ShardMeta> {
        let retention_us = u64::from(self.retention_hours) * 3_600_000_000;
        let (gone, kept): (Vec<ShardMeta>, Vec<ShardMeta>) =
            std::mem::take(&mut self.closed).into_iter().partition(|s| {
                s.closed
                    .is_some_and(|end| end.closed_us.saturating_add(retention_us) < now_us)
            });
        self.closed = kept;
        gone
    }
}

/// Every stream on the server, with the epoch of the last change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub epoch: u64,
    pub next_stream_id: u64,
    pub streams: BTreeMap<String, StreamMeta>,
}

impl Catalog {
    /// Loads the catalog from `data_dir`, or an empty one when there is none yet.
    ///
    /// # Errors
    /// I/O errors, and [`CatalogError::Damaged`] when the file does not parse.
    pub async fn load(data_dir: &Path) -> Result<Catalog, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        if !path.exists() {
            return Ok(Catalog::default());
        }
        let bytes = files::read_whole(&path).await?;
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::Damaged {
            path,
            message: e.to_string(),
        })
    }

    /// Writes the catalog atomically.
    ///
    /// # Errors
    /// I/O errors naming the step.
    pub async fn persist(&self, data_dir: &Path) -> Result<(), CatalogError> {
        files::ensure_dir(data_dir).await?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| CatalogError::Damaged {
            path: data_dir.join(CATALOG_FILE),
            message: e.to_string(),
        })?;
        files::write_atomic(&data_dir.join(CATALOG_FILE), &bytes).await?;
        Ok(())
    }

    pub fn stream(&self, name: &str) -> Option<&StreamMeta> {
        self.streams.get(name)
    }

    /// Shards per core, over every stream.
    pub fn shards_per_core(&self, cores: usize) -> Vec<u32> {
        let mut load = vec![0u32; cores.max(1)];
        for shard in self.streams.values().flat_map(|s| &s.shards) {
            if let Some(slot) = load.get_mut(usize::from(shard.owner_core)) {
                *slot += 1;
            }
        }
        load
    }

    /// The next move that evens out open shards over `cores`: (stream, shard, to core),
    /// from the core with the most to the one with the fewest, while they differ by more
    /// than one.
    pub fn next_rebalance_move(&self, cores: usize) -> Option<(String, u32, u16)> {
        let load = self.shards_per_core(cores);
        let busiest = load
            .iter()
            .enumerate()
            .max_by_key(|(core, count)| (**count, std::cmp::Reverse(*core)))?
            .0;
        let idlest = least_loaded(&load);
        if load[busiest] <= load[idlest] + 1 {
            return None;
        }
        self.streams.values().find_map(|stream| {
            stream
                .shards
                .iter()
                .find(|s| usize::from(s.owner_core) == busiest)
                .map(|s| (stream.name.clone(), s.index, idlest as u16))
        })
    }

    /// Adds a stream of `shard_count` shards, each placed on the least-loaded core.
    ///
    /// # Errors
    /// Invalid name or count, a duplicate, or the server's shard limit.
    pub fn create_stream(
        &mut self,
        name: &str,
        shard_count: u32,
        cores: usize,
        retention_hours: u32,
        now_us: u64,
    ) -> Result<&StreamMeta, CatalogError> {
        validate_stream_name(name)?;
        if !(1..=STREAM_SHARDS_MAX).contains(&shard_count) {
            return Err(CatalogError::InvalidShardCount {
                count: shard_count,
                max: STREAM_SHARDS_MAX,
            });
        }
        if self.streams.contains_key(name) {
            return Err(CatalogError::StreamExists(name.to_string()));
        }
        let mut load = self.shards_per_core(cores);
        let open: u32 = load.iter().sum();
        if open + shard_count > SHARDS_MAX {
            return Err(CatalogError::ShardLimit {
                open,
                requested: shard_count,
                max: SHARDS_MAX,
            });
        }
        let shards = hash_ranges(shard_count)
            .into_iter()
            .enumerate()
            .map(|(index, range)| {
                let core = least_loaded(&load);
                load[core] += 1;
                ShardMeta::new(index as u32, range, core as u16, now_us)
            })
            .collect();
        let stream = StreamMeta {
            id: self.next_stream_id,
            name: name.to_string(),
            status: StreamStatus::Active,
            created_us: now_us,
            retention_hours,
            shards,
            closed: Vec::new(),
            next_shard_index: shard_count,
            tags: BTreeMap::new(),
            on_demand: false,
            pending: None,
            scalings_us: Vec::new(),
            consumers: BTreeMap::new(),
        };
        self.next_stream_id += 1;
        self.epoch += 1;
        Ok(self.streams.entry(name.to_string()).or_insert(stream))
    }

    /// The stream named `name`, to change.
    ///
    /// # Errors
    /// [`CatalogError::StreamNotFound`].
    pub fn stream_mut(&mut self, name: &str) -> Result<&mut StreamMeta, CatalogError> {
        self.epoch += 1;
        self.streams
            .get_mut(name)
            .ok_or_else(|| CatalogError::StreamNotFound(name.to_string()))
    }

    /// Removes a stream and returns it, so its owners can delete its files.
    ///
    /// # Errors
    /// [`CatalogError::StreamNotFound`].
    pub fn delete_stream(&mut self, name: &str) -> Result<StreamMeta, CatalogError> {
        let stream = self
            .streams
            .remove(name)
            .ok_or_else(|| CatalogError::StreamNotFound(name.to_string()))?;
        self.epoch += 1;
        Ok(stream)
    }
}

fn least_loaded(load: &[u32]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|(core, count)| (**count, *core))
        .map_or(0, |(core, _)| core)
}

/// Checks a stream name: 1..=128 of `[a-zA-Z0-9_.-]`.
///
/// # Errors
/// [`CatalogError::InvalidName`].
pub fn validate_stream_name(name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= STREAM_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::InvalidName(name.to_string()))
    }
}

/// Hash ranges of `n` shards exactly as Kinesis makes them at CreateStream: step =
/// floor(2^128 / n); shard i covers i·step ..= (i+1)·step − 1; the last ends at 2^128 − 1.
pub fn hash_ranges(n: u32) -> Vec<(u128, u128)> {
    let n = u128::from(n.max(1));
    if n == 1 {
        return vec![(0, u128::MAX)];
    }
    // floor(2^128 / n) without 2^128: floor((2^128 - 1) / n), plus one when n divides 2^128.
    let step = u128::MAX / n + u128::from(u128::MAX % n == n - 1);
    (0..n)
        .map(|i| {
            let start = i * step;
            let end = if i == n - 1 {
                u128::MAX
            } else {
                (i + 1) * step - 1
            };
            (start, end)
        })
        .collect()
}

/// The hash key of a partition key: MD5 of its UTF-8 bytes, read big-endian.
pub fn hash_key(partition_key: &[u8]) -> u128 {
    use md5::{Digest, Md5};
    let digest = Md5::digest(partition_key);
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&digest);
    u128::from_be_bytes(raw)
}

mod u128_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ranges_match_kinesis() {
        let two = hash_ranges(2);
        assert_eq!(two[0], (0, 170141183460469231731687303715884105727));
        assert_eq!(two[1], (170141183460469231731687303715884105728, u128::MAX));
        assert_eq!(hash_ranges(3)[0].1, 113427455640312821154458202477256070484);
        for n in [1, 2, 3, 5, 7, 64, 1000] {
            let ranges = hash_ranges(n);
            assert_eq!(ranges.first().map(|r| r.0), Some(0));
            assert_eq!(ranges.last().map(|r| r.1), Some(u128::MAX));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "n = {n}");
            }
        }
    }

    #[test]
    fn partition_keys_hash_with_md5_big_endian() {
        assert_eq!(hash_key(b"a"), 16955237001963240173058271559858726497);
    }

    #[test]
    fn shards_spread_evenly_over_cores_and_names_are_checked() {
        let mut catalog = Catalog::default();
        catalog.create_stream("a", 5, 2, 24, 0).expect("create");
        catalog.create_stream("b", 3, 2, 24, 0).expect("create");
        assert_eq!(catalog.shards_per_core(2), vec![4, 4]);
        assert!(matches!(
            catalog.create_stream("a", 1, 2, 24, 0),
            Err(CatalogError::StreamExists(_))
        ));
        assert!(matches!(
            catalog.create_stream("bad name", 1, 2, 24, 0),
            Err(CatalogError::InvalidName(_))
        ));
        assert!(matches!(
            catalog.create_stream("c", 0, 2, 24, 0),
            Err(CatalogError::InvalidShardCount { .. })
        ));
        let stream = catalog.stream("a").expect("stream");
        assert_eq!(stream.shard_for_hash(0).map(|s| s.index), Some(0));
        assert_eq!(stream.shard_for_hash(u128::MAX).map(|s| s.index), Some(4));
        assert_eq!(parse_shard_id("shardId-000000000004"), Some(4));
        assert_eq!(shard_id(4), "shardId-000000000004");
    }

    /// Applies the rounds of a scaling to `stream` as the controller would.
    fn scale(stream: &mut StreamMeta, target: u32) -> usize {
        let mut rounds = 0;
        loop {
            let steps = stream.next_scaling_round(target);
            if steps.is_empty() {
                return rounds;
            }
            let mut load = vec![0u32; 2];
            stream
                .apply_steps(&steps, &BTreeMap::new(), &mut load, 1)
                .expect("apply");
            rounds += 1;
            assert!(rounds < 20, "scaling to {target} does not converge");
        }
    }

    fn assert_covers(stream: &StreamMeta) {
        assert_eq!(stream.shards.first().map(|s| s.hash_start), Some(0));
        assert_eq!(stream.shards.last().map(|s| s.hash_end), Some(u128::MAX));
        for pair in stream.shards.windows(2) {
            assert_eq!(pair[0].hash_end + 1, pair[1].hash_start);
        }
    }

    #[test]
    fn splits_and_merges_keep_the_hash_space_covered_with_exact_lineage() {
        let mut catalog = Catalog::default();
        catalog.create_stream("s", 2, 2, 24, 0).expect("create");
        let stream = catalog.stream_mut("s").expect("stream");
        let middle = stream.shards[0].hash_end / 2;
        let step = stream.check_split(0, middle).expect("split");
        assert!(stream.check_split(0, 0).is_err());
        assert!(stream.check_split(0, 1).is_err());
        let ends = BTreeMap::from([(0, 42)]);
        let made = stream
            .apply_steps(&[step], &ends, &mut [1, 1], 5)
            .expect("apply");
        assert_eq!(made, vec![2, 3]);
        assert_covers(stream);
        assert_eq!(
            stream.shard(0).and_then(|s| s.closed).map(|e| e.end_seq),
            Some(42)
        );
        assert!(matches!(
            stream.check_split(0, middle),
            Err(CatalogError::ShardClosed(_))
        ));
        assert_eq!(stream.shard_for_hash(0).map(|s| s.index), Some(2));
        assert_eq!(stream.children_of(0).len(), 2);
        // 2 and 1 are not adjacent; 3 and 1 are, in either order.
        assert!(matches!(
            stream.check_merge(2, 1),
            Err(CatalogError::NotAdjacent { .. })
        ));
        let step = stream.check_merge(1, 3).expect("merge");
        stream
            .apply_steps(&[step], &BTreeMap::new(), &mut [1, 2], 6)
            .expect("apply");
        assert_covers(stream);
        let child = stream.shard(4).expect("child");
        assert_eq!((child.parent, child.adjacent_parent), (Some(1), Some(3)));
        assert_eq!(stream.shards.len(), 2);
        assert_eq!(stream.all_shards().len(), 5);
    }

    #[test]
    fn uniform_scaling_reaches_equal_ranges_through_splits_and_merges() {
        let mut catalog = Catalog::default();
        catalog.create_stream("s", 1, 2, 24, 0).expect("create");
        let stream = catalog.stream_mut("s").expect("stream");
        for target in [2, 4, 3, 2, 1, 2, 3, 5, 10, 7] {
            scale(stream, target);
            assert_covers(stream);
            let ranges: Vec<(u128, u128)> = stream
                .shards
                .iter()
                .map(|s| (s.hash_start, s.hash_end))
                .collect();
            assert_eq!(ranges, hash_ranges(target), "target {target}");
            for shard in &stream.shards {
                for parent in shard.parent.iter().chain(&shard.adjacent_parent) {
                    let parent = stream.shard(*parent).expect("parent kept");
                    assert!(!parent.is_open());
                    assert!(
                        parent.hash_start >= shard.hash_start && parent.hash_end <= shard.hash_end
                            || shard.hash_start >= parent.hash_start
                                && shard.hash_end <= parent.hash_end
                    );
                }
            }
        }
        let indexes: Vec<u32> = stream.all_shards().iter().map(|s| s.index).collect();
        let mut unique = indexes.clone();
        unique.dedup();
        assert_eq!(indexes, unique, "shard indexes are never reused");
        let gone = stream.expire_closed(u64::MAX);
        assert!(!gone.is_empty());
        assert!(stream.closed.is_empty());
        assert_eq!(scale(stream, 7), 0);
    }
}
