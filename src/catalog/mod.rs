//! The catalog: streams, their shards, hash ranges and owner cores. Owned and changed only
//! by the controller (core 0), persisted atomically (write temp, fsync, rename, fsync dir),
//! and copied to every core as an immutable snapshot stamped with an epoch. Does not touch
//! shard data. Control plane only: the put path reads a snapshot, never this module's
//! mutation code.

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
}

impl ShardMeta {
    /// The Kinesis shard id, `shardId-` and 12 digits.
    pub fn shard_id(&self) -> String {
        shard_id(self.index)
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
    /// Shards in hash-key order; they cover 0..=2^128-1 without gaps or overlaps.
    pub shards: Vec<ShardMeta>,
    /// Tags, by key.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
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
        let after = self.shards.partition_point(|s| s.hash_start <= hash_key);
        let shard = self.shards.get(after.checked_sub(1)?)?;
        (hash_key <= shard.hash_end).then_some(shard)
    }

    pub fn shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.index == index)
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
            .map(|(index, (hash_start, hash_end))| {
                let core = least_loaded(&load);
                load[core] += 1;
                ShardMeta {
                    index: index as u32,
                    hash_start,
                    hash_end,
                    owner_core: core as u16,
                }
            })
            .collect();
        let stream = StreamMeta {
            id: self.next_stream_id,
            name: name.to_string(),
            status: StreamStatus::Active,
            created_us: now_us,
            retention_hours,
            shards,
            tags: BTreeMap::new(),
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
}
