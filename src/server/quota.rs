//! Per-shard usage on the shard's owner core: the Kinesis throughput quotas (writes of
//! 1 MiB or 1,000 records a second, reads of 2 MiB and 5 calls a second, by default), and
//! how hot each shard has run, which ON_DEMAND streams split on. Quotas are token
//! buckets holding one second of their rate, so a shard may burst to its per-second
//! budget and no further; a read larger than what is left puts the read bucket in debt,
//! and reads are refused until it is paid off (Kinesis throttles the seconds after a
//! large GetRecords the same way). Runs on the owner core only.

use crate::config::QuotaConfig;

/// A token bucket: `rate` tokens a second, at most one second's worth held.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    level: f64,
    at_us: u64,
}

impl Bucket {
    fn new(rate: u64, now_us: u64) -> Bucket {
        Bucket {
            rate: rate as f64,
            level: rate as f64,
            at_us: now_us,
        }
    }

    fn refill(&mut self, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        self.level = (self.level + elapsed * self.rate).min(self.rate);
        self.at_us = now_us;
    }
}

/// One shard's usage.
#[derive(Clone, Debug)]
pub struct ShardUsage {
    write_bytes: Bucket,
    write_records: Bucket,
    read_bytes: Bucket,
    read_calls: Bucket,
    /// The second (unix) writes are being counted for, and the bytes written in it.
    second: u64,
    second_bytes: u64,
    /// Consecutive whole seconds with writes above the on-demand threshold.
    pub hot_seconds: u64,
    /// The shard's counters for /metrics.
    pub counters: crate::metrics::ShardCounters,
}

impl ShardUsage {
    pub fn new(config: &QuotaConfig, now_us: u64) -> ShardUsage {
        ShardUsage {
            write_bytes: Bucket::new(config.write_bytes_per_s, now_us),
            write_records: Bucket::new(config.write_records_per_s, now_us),
            read_bytes: Bucket::new(config.read_bytes_per_s, now_us),
            read_calls: Bucket::new(config.read_calls_per_s, now_us),
            second: now_us / 1_000_000,
            second_bytes: 0,
            hot_seconds: 0,
            counters: crate::metrics::ShardCounters::default(),
        }
    }

    /// How many records, from the first, fit the write quota now, given each record's
    /// size (partition key and data, as Kinesis counts it); takes their cost.
    pub fn admit_writes(&mut self, sizes: impl Iterator<Item = usize>, now_us: u64) -> usize {
        self.write_bytes.refill(now_us);
        self.write_records.refill(now_us);
        let mut admitted = 0;
        for size in sizes {
            let bytes = size as f64;
            if self.write_records.level < 1.0 || self.write_bytes.level < bytes {
                break;
            }
            self.write_records.level -= 1.0;
            self.write_bytes.level -= bytes;
            admitted += 1;
        }
        admitted
    }

    /// Whether a read may run now; takes one call.
    pub fn admit_read(&mut self, now_us: u64) -> bool {
        self.read_calls.refill(now_us);
        self.read_bytes.refill(now_us);
        if self.read_calls.level < 1.0 || self.read_bytes.level <= 0.0 {
            return false;
        }
        self.read_calls.level -= 1.0;
        true
    }

    /// Charges what a read returned (may leave the read bucket in debt).
    pub fn charge_read(&mut self, bytes: usize) {
        self.read_bytes.level -= bytes as f64;
    }

    /// Counts written bytes towards the on-demand heat: a second whose writes passed
    /// `threshold_bytes` makes the shard one second hotter, any other second cools it.
    pub fn note_written(&mut self, bytes: u64, threshold_bytes: u64, now_us: u64) {
        let second = now_us / 1_000_000;
        if second != self.second {
            let was_hot = self.second_bytes >= threshold_bytes && second == self.second + 1;
            self.hot_seconds = if was_hot { self.hot_seconds + 1 } else { 0 };
            self.second = second;
            self.second_bytes = 0;
        }
        self.second_bytes += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pass_up_to_one_second_of_quota_and_refill_with_time() {
        let config = QuotaConfig::default();
        let mut usage = ShardUsage::new(&config, 0);
        let small = || std::iter::repeat_n(10, 1500);
        assert_eq!(
            usage.admit_writes(small(), 0),
            1000,
            "1,000 records a second"
        );
        assert_eq!(usage.admit_writes(small(), 0), 0);
        assert_eq!(
            usage.admit_writes(small(), 500_000),
            500,
            "half a second refills half"
        );
        let mut usage = ShardUsage::new(&config, 0);
        let big = std::iter::repeat_n(512 * 1024, 3);
        assert_eq!(
            usage.admit_writes(big, 0),
            2,
            "1 MiB a second, keys included"
        );
    }

    #[test]
    fn reads_are_limited_by_calls_and_a_large_read_throttles_the_next_ones() {
        let config = QuotaConfig::default();
        let mut usage = ShardUsage::new(&config, 0);
        assert!((0..5).all(|_| usage.admit_read(0)));
        assert!(!usage.admit_read(0), "5 calls a second");
        let mut usage = ShardUsage::new(&config, 0);
        assert!(usage.admit_read(0));
        usage.charge_read(10 * 1024 * 1024);
        assert!(!usage.admit_read(1_000_000), "in debt after 10 MiB");
        assert!(usage.admit_read(5_000_000), "paid off after 4 more seconds");
    }

    #[test]
    fn shards_heat_up_after_busy_seconds_and_cool_after_a_quiet_one() {
        let mut usage = ShardUsage::new(&QuotaConfig::default(), 0);
        for second in 0..5 {
            usage.note_written(2000, 1000, second * 1_000_000);
        }
        assert_eq!(usage.hot_seconds, 4);
        usage.note_written(10, 1000, 5_000_000);
        usage.note_written(10, 1000, 6_000_000);
        assert_eq!(usage.hot_seconds, 0);
    }
}
