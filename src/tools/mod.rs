//! Tools that drive the shard log directly, without a server: the log benchmark and the
//! crash writer the SIGKILL test runs as a child process. Each runs on one glommio
//! executor.

pub mod cli;
pub mod consumers;
pub mod crash_writer;
pub mod log_bench;
pub mod stats;

/// The payload of record `seq` in the crash writer and its checker: contents and length
/// both follow from the sequence number, so a checker can regenerate every record.
pub fn crash_payload(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(7919) % 1500) as usize;
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The partition key of record `seq` in the crash writer.
pub fn crash_key(seq: u64) -> String {
    format!("key-{}", seq % 16)
}

/// Wall-clock time in unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
