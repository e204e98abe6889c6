//! Shard iterators: opaque, tamper-evident and expiring. An iterator carries the stream's
//! unique id, the shard, the next sequence number and the time it was issued, sealed with
//! an HMAC-SHA256 under a key kept in the data folder (so iterators survive a restart).
//! Any edit or forgery fails the MAC; an iterator older than 5 minutes is expired.
//!
//! ```text
//! byte  0       8          12            20            28                  44
//!       | stream id u64 | shard u32 | sequence u64 | issued ms u64 | MAC (16 bytes) |
//! ```
//! all little-endian, then URL-safe base64 without padding (60 characters).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const BODY_BYTES: usize = 28;
const MAC_BYTES: usize = 16;

/// What an iterator points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IteratorState {
    pub stream_id: u64,
    pub shard: u32,
    pub seq: u64,
    pub issued_ms: u64,
}

/// Why an iterator was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IteratorError {
    /// Not ours, edited or forged.
    Invalid,
    /// Valid but older than the time-to-live.
    Expired { issued_ms: u64, now_ms: u64 },
}

/// Seals and opens iterators with one key.
pub struct IteratorKey {
    key: [u8; 32],
    ttl_ms: u64,
}

impl IteratorKey {
    /// A key whose iterators live `ttl_ms` milliseconds.
    pub fn new(key: [u8; 32], ttl_ms: u64) -> IteratorKey {
        IteratorKey { key, ttl_ms }
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC accepts a 32-byte key");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    pub fn seal(&self, state: IteratorState) -> String {
        let mut raw = [0u8; BODY_BYTES + MAC_BYTES];
        raw[0..8].copy_from_slice(&state.stream_id.to_le_bytes());
        raw[8..12].copy_from_slice(&state.shard.to_le_bytes());
        raw[12..20].copy_from_slice(&state.seq.to_le_bytes());
        raw[20..28].copy_from_slice(&state.issued_ms.to_le_bytes());
        let mac = self.mac(&raw[..BODY_BYTES]);
        raw[BODY_BYTES..].copy_from_slice(&mac);
        base64_simd::URL_SAFE_NO_PAD.encode_to_string(raw)
    }

    /// Opens an iterator issued at most the time-to-live before `now_ms`.
    ///
    /// # Errors
    /// [`IteratorError`].
    pub fn open(&self, text: &str, now_ms: u64) -> Result<IteratorState, IteratorError> {
        let raw = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(text.as_bytes())
            .map_err(|_| IteratorError::Invalid)?;
        if raw.len() != BODY_BYTES + MAC_BYTES {
            return Err(IteratorError::Invalid);
        }
        let (body, mac) = raw.split_at(BODY_BYTES);
        let expected = self.mac(body);
        // Constant-time comparison, so a forger learns nothing from timing.
        let differs = expected
            .iter()
            .zip(mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 {
            return Err(IteratorError::Invalid);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let mut shard = [0u8; 4];
        shard.copy_from_slice(&body[8..12]);
        let state = IteratorState {
            stream_id: u64_at(0),
            shard: u32::from_le_bytes(shard),
            seq: u64_at(12),
            issued_ms: u64_at(20),
        };
        if now_ms.saturating_sub(state.issued_ms) > self.ttl_ms {
            return Err(IteratorError::Expired {
                issued_ms: state.issued_ms,
                now_ms,
            });
        }
        Ok(state)
    }
}

/// Loads the iterator key from `data_dir`, creating it from the system's random source on
/// first use.
///
/// # Errors
/// A message naming the file when it cannot be read or written.
pub fn load_or_create_key(data_dir: &std::path::Path) -> Result<[u8; 32], String> {
    let path = data_dir.join("iterator.key");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    let mut random =
        std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    std::io::Read::read_exact(&mut random, &mut key).map_err(|e| format!("/dev/urandom: {e}"))?;
    let temp = data_dir.join("iterator.key.tmp");
    std::fs::write(&temp, key).map_err(|e| format!("{}: {e}", temp.display()))?;
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("{}: {e}", temp.display()))?;
    std::fs::rename(&temp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ITERATOR_TTL_MS;

    #[test]
    fn iterators_round_trip_and_reject_edits_forgeries_and_age() {
        let key = IteratorKey::new([7; 32], ITERATOR_TTL_MS);
        let state = IteratorState {
            stream_id: 3,
            shard: 9,
            seq: 12345,
            issued_ms: 1_000_000,
        };
        let text = key.seal(state);
        assert!(text.len() <= 512);
        assert_eq!(key.open(&text, 1_000_000 + 1000), Ok(state));
        let mut edited = text.clone().into_bytes();
        edited[5] = if edited[5] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).expect("ascii");
        assert_eq!(key.open(&edited, 1_000_000), Err(IteratorError::Invalid));
        let other = IteratorKey::new([8; 32], ITERATOR_TTL_MS);
        assert_eq!(other.open(&text, 1_000_000), Err(IteratorError::Invalid));
        assert_eq!(key.open("not an iterator", 0), Err(IteratorError::Invalid));
        assert!(matches!(
            key.open(&text, 1_000_000 + ITERATOR_TTL_MS + 1),
            Err(IteratorError::Expired { .. })
        ));
    }
}
