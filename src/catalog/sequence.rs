//! Kinesis-style sequence numbers: the decimal strings clients see. Owns the mapping from a
//! (shard index, log sequence number) pair to one 128-bit number and back. Any core.
//!
//! ```text
//! bit 127..121  120  119..96   95..64          63..0
//!     zero      1    zero      shard index     log sequence number within the shard
//! ```
//!
//! The fixed bit 120 keeps every string 37 digits long, so they sort as text too; numbers
//! increase with the log sequence within a shard, as clients (KCL compares them as big
//! integers) expect, and a number names its shard, so one used with another shard is
//! caught.

const TAG: u128 = 1 << 120;
const SHARD_SHIFT: u32 = 64;

/// Renders a shard's log sequence number as a Kinesis sequence number string.
pub fn render(shard_index: u32, seq: u64) -> String {
    value(shard_index, seq).to_string()
}

/// Digits in every sequence number string: bit 120 is always set and no higher bit is.
pub const DIGITS: usize = 37;

/// A sequence number string as its [`DIGITS`] ASCII digits.
pub fn digits(shard_index: u32, seq: u64) -> [u8; DIGITS] {
    let mut out = [b'0'; DIGITS];
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(value(shard_index, seq)).as_bytes();
    // Always exactly DIGITS long (see above); right-aligned all the same.
    let start = DIGITS.saturating_sub(text.len());
    let skip = text.len().saturating_sub(DIGITS);
    out[start..].copy_from_slice(&text[skip..]);
    out
}

/// The integer a Kinesis sequence number string spells in decimal.
pub fn value(shard_index: u32, seq: u64) -> u128 {
    TAG | (u128::from(shard_index) << SHARD_SHIFT) | u128::from(seq)
}

/// Parses a sequence number string into (shard index, log sequence number); `None` when
/// it is not one of ours.
pub fn parse(text: &str) -> Option<(u32, u64)> {
    if text.is_empty() || text.len() > 39 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u128 = text.parse().ok()?;
    if value & !((1 << 121) - 1) != 0 || value & TAG == 0 {
        return None;
    }
    let rest = value & !TAG;
    let shard = u32::try_from(rest >> SHARD_SHIFT).ok()?;
    let seq = u64::try_from(rest & u128::from(u64::MAX)).ok()?;
    Some((shard, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_round_trip_and_increase_within_a_shard() {
        for (shard, seq) in [(0, 0), (0, 1), (7, 123_456), (u32::MAX, u64::MAX)] {
            assert_eq!(parse(&render(shard, seq)), Some((shard, seq)));
        }
        let a: u128 = render(3, 9).parse().expect("number");
        let b: u128 = render(3, 10).parse().expect("number");
        assert!(a < b);
        assert_eq!(render(0, 0).len(), render(0, 1 << 40).len());
        for (shard, seq) in [(0, 0), (u32::MAX, u64::MAX)] {
            assert_eq!(digits(shard, seq).as_slice(), render(shard, seq).as_bytes());
        }
        assert_eq!(parse("12"), None);
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(""), None);
    }
}
