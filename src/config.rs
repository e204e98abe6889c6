//! Server configuration: embedded defaults, `config/spate.toml`-style files, and command-line
//! overrides. Owns parsing of sizes ("4 MiB") and durations ("2 ms") and the checks that
//! name the key and the problem. Runs on the main thread before any executor starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::commit::CommitConfig;
use crate::limits;
use crate::log::LogConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// The whole server configuration, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub binary_listen: SocketAddr,
    /// The Kinesis HTTP API listener (HTTP/1.1 and HTTP/2 on one port).
    pub http_listen: SocketAddr,
    /// Region and account that stream ARNs name.
    pub region: String,
    pub account_id: String,
    /// Cores to run on; 0 = every online core.
    pub cores: usize,
    pub log: LogConfig,
    pub commit: CommitConfig,
    pub net: NetConfig,
    /// Access keys whose SigV4 signatures the Kinesis API verifies; empty = accept any
    /// well-formed signature.
    pub auth_keys: Vec<AccessKey>,
    pub kinesis: KinesisConfig,
    pub quota: QuotaConfig,
}

/// Per-shard throughput quotas, as Kinesis enforces them. Off by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Whether puts and reads past these rates are refused with
    /// ProvisionedThroughputExceededException.
    pub enabled: bool,
    /// Bytes of data and partition keys a shard takes in per second (Kinesis: 1 MiB).
    pub write_bytes_per_s: u64,
    /// Records a shard takes in per second (Kinesis: 1,000).
    pub write_records_per_s: u64,
    /// Bytes a shard returns to readers per second (Kinesis: 2 MiB).
    pub read_bytes_per_s: u64,
    /// GetRecords calls per shard per second, shared by every reader (Kinesis: 5).
    pub read_calls_per_s: u64,
    /// Whether ON_DEMAND streams split a shard by themselves when its writes stay above
    /// `on_demand_split_percent` of the write quota for `on_demand_window_s` seconds.
    pub on_demand_split_percent: u64,
    pub on_demand_window_s: u64,
}

impl Default for QuotaConfig {
    fn default() -> QuotaConfig {
        QuotaConfig {
            enabled: false,
            write_bytes_per_s: 1024 * 1024,
            write_records_per_s: 1000,
            read_bytes_per_s: 2 * 1024 * 1024,
            read_calls_per_s: 5,
            on_demand_split_percent: 80,
            on_demand_window_s: 10,
        }
    }
}

/// Behaviour of the Kinesis API that tests and emulations tune.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisConfig {
    /// How long a shard iterator stays valid, in milliseconds (Kinesis: 5 minutes).
    pub iterator_ttl_ms: u64,
    /// How long a stream stays CREATING or DELETING before it is ACTIVE or gone, in
    /// milliseconds. 0 (the default) makes both immediate.
    pub stream_transition_ms: u64,
    /// How long a SubscribeToShard subscription lives, in milliseconds (Kinesis: 5
    /// minutes).
    pub subscription_lifetime_ms: u64,
}

impl Default for KinesisConfig {
    fn default() -> KinesisConfig {
        KinesisConfig {
            iterator_ttl_ms: limits::ITERATOR_TTL_MS,
            stream_transition_ms: 0,
            subscription_lifetime_ms: limits::SUBSCRIPTION_LIFETIME_MS,
        }
    }
}

/// One access key the Kinesis API accepts when signatures are verified.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key: String,
    pub secret: String,
}

/// Bounds on connections and what each may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Connections each core accepts at once; more are closed at accept.
    pub connections_per_core_max: usize,
    /// Largest binary frame accepted, in bytes.
    pub frame_bytes_max: usize,
    /// Requests one connection may have in flight; reading pauses beyond it.
    pub requests_in_flight_max: usize,
    /// Messages queued on each core-to-core channel; senders wait when it is full.
    pub core_channel_messages: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./data"),
            binary_listen: SocketAddr::from(([127, 0, 0, 1], 4568)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 4567)),
            region: "us-east-1".to_string(),
            account_id: "000000000000".to_string(),
            cores: 0,
            log: LogConfig::default(),
            commit: CommitConfig::default(),
            net: NetConfig::default(),
            auth_keys: Vec::new(),
            kinesis: KinesisConfig::default(),
            quota: QuotaConfig::default(),
        }
    }
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            connections_per_core_max: limits::CONNECTIONS_PER_CORE_MAX_DEFAULT,
            frame_bytes_max: limits::FRAME_BYTES_MAX,
            requests_in_flight_max: limits::REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            core_channel_messages: limits::CORE_CHANNEL_MESSAGES_DEFAULT,
        }
    }
}

/// The file format: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    binary_listen: Option<String>,
    http_listen: Option<String>,
    region: Option<String>,
    account_id: Option<String>,
    cores: Option<usize>,
    log: Option<FileLog>,
    commit: Option<FileCommit>,
    net: Option<FileNet>,
    auth: Option<FileAuth>,
    kinesis: Option<FileKinesis>,
    quota: Option<FileQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuota {
    enabled: Option<bool>,
    write_bytes_per_second: Option<String>,
    write_records_per_second: Option<u64>,
    read_bytes_per_second: Option<String>,
    read_calls_per_second: Option<u64>,
    on_demand_split_percent: Option<u64>,
    on_demand_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKinesis {
    iterator_ttl: Option<String>,
    stream_transition: Option<String>,
    subscription_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    keys: Option<Vec<AccessKey>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    segment_size: Option<String>,
    index_interval: Option<String>,
    tail_cache: Option<String>,
    retention_hours: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCommit {
    window: Option<String>,
    size: Option<String>,
    pending_max: Option<String>,
    ack_before_sync: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNet {
    connections_per_core_max: Option<usize>,
    frame_max: Option<String>,
    requests_in_flight_max: Option<usize>,
    core_channel_messages: Option<usize>,
}

impl Config {
    /// Reads a config file over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, or the key and what is wrong with it.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and what is wrong with it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut config = Config::default();
        if let Some(dir) = file.data_dir {
            config.data_dir = dir;
        }
        if let Some(listen) = file.binary_listen {
            config.binary_listen = parse_addr("binary_listen", &listen)?;
        }
        if let Some(listen) = file.http_listen {
            config.http_listen = parse_addr("http_listen", &listen)?;
        }
        if let Some(region) = file.region {
            config.region = region;
        }
        if let Some(account) = file.account_id {
            config.account_id = account;
        }
        if let Some(cores) = file.cores {
            config.cores = cores;
        }
        let log = file.log.unwrap_or_default();
        if let Some(v) = log.segment_size {
            config.log.segment_bytes = parse_size("log.segment_size", &v)?;
        }
        if let Some(v) = log.index_interval {
            let bytes = parse_size("log.index_interval", &v)?;
            config.log.index_interval_bytes = u32::try_from(bytes)
                .map_err(|_| invalid("log.index_interval", "must be below 4 GiB"))?;
        }
        if let Some(v) = log.tail_cache {
            config.log.tail_cache_bytes =
                to_usize("log.tail_cache", parse_size("log.tail_cache", &v)?)?;
        }
        if let Some(v) = log.retention_hours {
            config.log.retention_hours = v;
        }
        let commit = file.commit.unwrap_or_default();
        if let Some(v) = commit.window {
            config.commit.window_us = parse_duration_us("commit.window", &v)?;
        }
        if let Some(v) = commit.size {
            config.commit.commit_bytes = to_usize("commit.size", parse_size("commit.size", &v)?)?;
        }
        if let Some(v) = commit.pending_max {
            let bytes = parse_size("commit.pending_max", &v)?;
            config.commit.pending_bytes_max = to_usize("commit.pending_max", bytes)?;
        }
        if let Some(v) = commit.ack_before_sync {
            config.commit.ack_before_sync = v;
        }
        let net = file.net.unwrap_or_default();
        if let Some(v) = net.connections_per_core_max {
            config.net.connections_per_core_max = v;
        }
        if let Some(v) = net.frame_max {
            config.net.frame_bytes_max =
                to_usize("net.frame_max", parse_size("net.frame_max", &v)?)?;
        }
        if let Some(v) = net.requests_in_flight_max {
            config.net.requests_in_flight_max = v;
        }
        if let Some(v) = net.core_channel_messages {
            config.net.core_channel_messages = v;
        }
        let kinesis = file.kinesis.unwrap_or_default();
        if let Some(v) = kinesis.iterator_ttl {
            config.kinesis.iterator_ttl_ms = parse_duration_us("kinesis.iterator_ttl", &v)? / 1000;
        }
        if let Some(v) = kinesis.stream_transition {
            config.kinesis.stream_transition_ms =
                parse_duration_us("kinesis.stream_transition", &v)? / 1000;
        }
        if let Some(v) = kinesis.subscription_lifetime {
            config.kinesis.subscription_lifetime_ms =
                parse_duration_us("kinesis.subscription_lifetime", &v)? / 1000;
        }
        let quota = file.quota.unwrap_or_default();
        if let Some(v) = quota.enabled {
            config.quota.enabled = v;
        }
        if let Some(v) = quota.write_bytes_per_second {
            config.quota.write_bytes_per_s = parse_size("quota.write_bytes_per_second", &v)?;
        }
        if let Some(v) = quota.write_records_per_second {
            config.quota.write_records_per_s = v;
        }
        if let Some(v) = quota.read_bytes_per_second {
            config.quota.read_bytes_per_s = parse_size("quota.read_bytes_per_second", &v)?;
        }
        if let Some(v) = quota.read_calls_per_second {
            config.quota.read_calls_per_s = v;
        }
        if let Some(v) = quota.on_demand_split_percent {
            config.quota.on_demand_split_percent = v;
        }
        if let Some(v) = quota.on_demand_window {
            config.quota.on_demand_window_s =
                parse_duration_us("quota.on_demand_window", &v)? / 1_000_000;
        }
        if let Some(keys) = file.auth.and_then(|a| a.keys) {
            config.auth_keys = keys;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value against its limits.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "account_id",
                "must be 12 digits, as in an AWS account id",
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("region", "must look like us-east-1"));
        }
        let segment = limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX;
        if !segment.contains(&self.log.segment_bytes) {
            return Err(invalid(
                "log.segment_size",
                format!(
                    "{} bytes is outside {} bytes ..= {} bytes",
                    self.log.segment_bytes,
                    segment.start(),
                    segment.end()
                ),
            ));
        }
        if self.log.index_interval_bytes == 0 {
            return Err(invalid("log.index_interval", "must be above 0"));
        }
        let retention = limits::RETENTION_HOURS_MIN..=limits::RETENTION_HOURS_MAX;
        if !retention.contains(&self.log.retention_hours) {
            return Err(invalid(
                "log.retention_hours",
                format!(
                    "{} is outside {}..={} hours",
                    self.log.retention_hours,
                    retention.start(),
                    retention.end()
                ),
            ));
        }
        if self.commit.window_us > 1_000_000 {
            return Err(invalid("commit.window", "must be at most 1 s"));
        }
        if self.commit.commit_bytes == 0 {
            return Err(invalid("commit.size", "must be above 0"));
        }
        if self.commit.pending_bytes_max < limits::BATCH_ENCODED_BYTES_MAX {
            return Err(invalid(
                "commit.pending_max",
                format!(
                    "must hold at least one maximal batch ({} bytes)",
                    limits::BATCH_ENCODED_BYTES_MAX
                ),
            ));
        }
        if self.net.frame_bytes_max < limits::FRAME_BYTES_MIN {
            return Err(invalid(
                "net.frame_max",
                format!(
                    "must be at least {} bytes, to carry a maximal put batch",
                    limits::FRAME_BYTES_MIN
                ),
            ));
        }
        if self.net.requests_in_flight_max == 0 || self.net.connections_per_core_max == 0 {
            return Err(invalid(
                "net",
                "connection and in-flight limits must be above 0",
            ));
        }
        if self
            .auth_keys
            .iter()
            .any(|k| k.access_key.is_empty() || k.secret.is_empty())
        {
            return Err(invalid(
                "auth.keys",
                "every key needs a non-empty access_key and secret",
            ));
        }
        if self.kinesis.iterator_ttl_ms == 0 {
            return Err(invalid("kinesis.iterator_ttl", "must be above 0"));
        }
        if self.kinesis.stream_transition_ms > 600_000 {
            return Err(invalid(
                "kinesis.stream_transition",
                "must be at most 600 s",
            ));
        }
        if self.kinesis.subscription_lifetime_ms == 0 {
            return Err(invalid("kinesis.subscription_lifetime", "must be above 0"));
        }
        let quota = &self.quota;
        if quota.write_bytes_per_s == 0
            || quota.write_records_per_s == 0
            || quota.read_bytes_per_s == 0
            || quota.read_calls_per_s == 0
        {
            return Err(invalid("quota", "every rate must be above 0"));
        }
        if !(1..=100).contains(&quota.on_demand_split_percent) {
            return Err(invalid("quota.on_demand_split_percent", "must be 1 to 100"));
        }
        if quota.on_demand_window_s == 0 {
            return Err(invalid("quota.on_demand_window", "must be at least 1 s"));
        }
        if self.net.core_channel_messages == 0 {
            return Err(invalid("net.core_channel_messages", "must be above 0"));
        }
        Ok(())
    }
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

fn to_usize(key: &'static str, value: u64) -> Result<usize, ConfigError> {
    usize::try_from(value).map_err(|_| invalid(key, "too large for this machine"))
}

/// Parses a socket address such as `127.0.0.1:4568`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key`.
pub fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}` is not an address like 127.0.0.1:4568"),
        )
    })
}

/// Parses a size such as `256 MiB`, `64KiB`, `4096` (bytes) or `1 GB`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key`.
pub fn parse_size(key: &'static str, text: &str) -> Result<u64, ConfigError> {
    let (number, unit) = split_unit(text);
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(invalid(
                key,
                format!("unknown size unit in `{text}` (use B, KiB, MiB, GiB)"),
            ));
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| invalid(key, format!("`{text}` is not a size like `256 MiB`")))?;
    value
        .checked_mul(scale)
        .ok_or_else(|| invalid(key, format!("`{text}` is too large")))
}

/// Parses a duration such as `1 ms`, `500us`, `2 s`, in microseconds.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key`.
pub fn parse_duration_us(key: &'static str, text: &str) -> Result<u64, ConfigError> {
    let (number, unit) = split_unit(text);
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "min" => 60_000_000,
        _ => {
            return Err(invalid(
                key,
                format!("`{text}` needs a unit: us, ms, s or min"),
            ));
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| invalid(key, format!("`{text}` is not a duration like `1 ms`")))?;
    value
        .checked_mul(scale)
        .ok_or_else(|| invalid(key, format!("`{text}` is too large")))
}

fn split_unit(text: &str) -> (&str, &str) {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    (text[..split].trim(), text[split..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses_to_the_embedded_defaults() {
        let text = include_str!("../config/spate.toml");
        assert_eq!(Config::from_toml(text).expect("config"), Config::default());
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let error = Config::from_toml("[log]\nsegment_size = \"12 parsecs\"").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("log.segment_size") && message.contains("unit"),
            "{message}"
        );
        let error = Config::from_toml("[log]\nretention_hours = 2").unwrap_err();
        assert!(error.to_string().contains("log.retention_hours"), "{error}");
        let error = Config::from_toml("colour = \"blue\"").unwrap_err();
        assert!(error.to_string().contains("colour"), "{error}");
        let error = Config::from_toml("binary_listen = \"nowhere\"").unwrap_err();
        assert!(error.to_string().contains("binary_listen"), "{error}");
    }

    #[test]
    fn sizes_and_durations_read_their_units() {
        assert_eq!(parse_size("k", "256 MiB").ok(), Some(256 << 20));
        assert_eq!(parse_size("k", "4096").ok(), Some(4096));
        assert_eq!(parse_size("k", "1GB").ok(), Some(1_000_000_000));
        assert_eq!(parse_duration_us("k", "2 ms").ok(), Some(2_000));
        assert_eq!(parse_duration_us("k", "500us").ok(), Some(500));
        assert!(parse_duration_us("k", "5").is_err());
    }
}
