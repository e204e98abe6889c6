//! Partition-key hashing for whole puts: MD5 (RFC 1321) of up to sixteen keys at once in
//! AVX2 lanes. A put carries up to 500 keys, and hashing them one by one was the largest
//! single cost of the put path (about an eighth of the server's CPU time); MD5 is serial
//! within one message but independent across messages, so eight short keys take about the
//! time of one, and two groups of eight whose steps interleave fill the gaps that one
//! group's chain of dependent steps leaves. Keys that do not fit one block (over 55 bytes),
//! machines without AVX2 and the last one or two keys of a put go through the scalar MD5
//! of the md-5 crate. Both give exactly [`super::hash_key`]; a test compares them on many
//! keys.

/// The hash keys of `keys`, in order: MD5 of each, as a big-endian 128-bit integer.
pub fn hash_keys<K: AsRef<[u8]>>(keys: &[K], out: &mut Vec<u128>) {
    out.reserve(keys.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        for chunk in keys.chunks(16) {
            let mut lanes: [&[u8]; 16] = [&[]; 16];
            let mut single_block = true;
            for (lane, key) in lanes.iter_mut().zip(chunk) {
                *lane = key.as_ref();
                single_block &= lane.len() <= SINGLE_BLOCK_BYTES_MAX;
            }
            let lanes = &lanes[..chunk.len()];
            if !single_block || chunk.len() < VECTOR_KEYS_MIN {
                out.extend(lanes.iter().map(|key| super::hash_key(key)));
            } else if let Ok(sixteen) = <&[&[u8]; 16]>::try_from(lanes) {
                // SAFETY: AVX2 is present (checked above); the function reads only `lanes`.
                out.extend(unsafe { x86::md5x16(sixteen) });
            } else {
                // A short chunk (the end of a put): unused lanes hash empty keys, dropped.
                let mut eight: [&[u8]; 8] = [&[]; 8];
                let mut rest = lanes;
                while !rest.is_empty() {
                    let take = rest.len().min(8);
                    eight[..take].copy_from_slice(&rest[..take]);
                    eight[take..].fill(&[]);
                    // SAFETY: AVX2 is present (checked above); reads only `eight`.
                    out.extend(unsafe { x86::md5x8(&eight) }.into_iter().take(take));
                    rest = &rest[take..];
                }
            }
        }
        return;
    }
    out.extend(keys.iter().map(|k| super::hash_key(k.as_ref())));
}

/// Fewer keys than this are hashed one by one: a vector pass costs about three scalar ones.
const VECTOR_KEYS_MIN: usize = 3;

/// The longest message that fits one 64-byte MD5 block with its padding and length.
const SINGLE_BLOCK_BYTES_MAX: usize = 55;

/// Per-step additive constants, floor(|sin(i + 1)| * 2^32) (RFC 1321, 3.4).
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// Left-rotation amounts of each step, per round (RFC 1321, 3.4).
const SHIFTS: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// The initial state A, B, C, D (RFC 1321, 3.3).
const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// The message word step `i` (0..64) reads.
const fn word_index(i: usize) -> usize {
    match i / 16 {
        0 => i,
        1 => (5 * i + 1) % 16,
        2 => (3 * i + 5) % 16,
        _ => (7 * i) % 16,
    }
}

/// The single padded blocks of eight messages of at most 55 bytes each, transposed:
/// `columns[j][lane]` is word `j` (little-endian) of that lane's block. Written word by
/// word straight into place: the message's whole words, the partial one with the 0x80
/// that ends it, and the bit length; the rest stays zero.
fn padded_columns(messages: &[&[u8]; 8]) -> [[u32; 8]; 16] {
    let mut columns = [[0u32; 8]; 16];
    for (lane, message) in messages.iter().enumerate() {
        let mut words = message.chunks_exact(4);
        let mut j = 0;
        for word in &mut words {
            columns[j][lane] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            j += 1;
        }
        let rest = words.remainder();
        let mut last = [0u8; 4];
        last[..rest.len()].copy_from_slice(rest);
        last[rest.len()] = 0x80;
        columns[j][lane] = u32::from_le_bytes(last);
        let bits = (message.len() as u64) * 8;
        columns[14][lane] = bits as u32;
        columns[15][lane] = (bits >> 32) as u32;
    }
    columns
}

/// The hash key (MD5 digest read as a big-endian integer) from a final MD5 state.
fn digest_value(state: [u32; 4]) -> u128 {
    // The digest is A, B, C, D each in little-endian byte order.
    state.iter().fold(0u128, |acc, word| {
        (acc << 32) | u128::from(word.swap_bytes())
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{INIT, K, SHIFTS, digest_value, padded_columns, word_index};

    /// MD5 of eight messages of at most 55 bytes each, one per AVX2 lane.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn md5x8(messages: &[&[u8]; 8]) -> [u128; 8] {
        let [state] = rounds([transpose(messages)]);
        digests(state)
    }

    /// MD5 of sixteen messages of at most 55 bytes each: two groups of eight lanes whose
    /// steps interleave. One group's 64 steps are a chain, each waiting on the last, so the
    /// vector units idle between them; a second, independent chain fills those gaps.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn md5x16(messages: &[&[u8]; 16]) -> [u128; 16] {
        let groups = [0, 8].map(|base| transpose(&std::array::from_fn(|i| messages[base + i])));
        let [first, second] = rounds(groups);
        let (first, second) = (digests(first), digests(second));
        std::array::from_fn(|i| if i < 8 { first[i] } else { second[i - 8] })
    }

    /// The padded single blocks of eight messages, transposed: vector j holds word j of
    /// every lane.
    #[target_feature(enable = "avx2")]
    fn transpose(messages: &[&[u8]; 8]) -> [__m256i; 16] {
        let columns = padded_columns(messages);
        std::array::from_fn(|j| {
            // SAFETY: reads 32 bytes from a local [u32; 8]; unaligned loads are allowed.
            unsafe { _mm256_loadu_si256(columns[j].as_ptr().cast()) }
        })
    }

    /// The 64 MD5 steps over `G` independent groups of eight lanes, step by step across
    /// the groups; returns each group's A, B, C, D before the final addition.
    #[target_feature(enable = "avx2")]
    fn rounds<const G: usize>(m: [[__m256i; 16]; G]) -> [[__m256i; 4]; G] {
        let ones = _mm256_set1_epi32(-1);
        let mut state = [INIT.map(|v| _mm256_set1_epi32(v as i32)); G];
        for i in 0..64 {
            let constant = _mm256_set1_epi32(K[i] as i32);
            let shift = SHIFTS[i / 16][i % 4];
            let left = _mm_cvtsi32_si128(shift as i32);
            let right = _mm_cvtsi32_si128(32 - shift as i32);
            for (group, words) in state.iter_mut().zip(&m) {
                let [a, b, c, d] = *group;
                let f = match i / 16 {
                    0 => _mm256_or_si256(_mm256_and_si256(b, c), _mm256_andnot_si256(b, d)),
                    1 => _mm256_or_si256(_mm256_and_si256(d, b), _mm256_andnot_si256(d, c)),
                    2 => _mm256_xor_si256(_mm256_xor_si256(b, c), d),
                    _ => _mm256_xor_si256(c, _mm256_or_si256(b, _mm256_xor_si256(d, ones))),
                };
                let sum = _mm256_add_epi32(
                    _mm256_add_epi32(a, f),
                    _mm256_add_epi32(constant, words[word_index(i)]),
                );
                let rotated =
                    _mm256_or_si256(_mm256_sll_epi32(sum, left), _mm256_srl_epi32(sum, right));
                *group = [d, _mm256_add_epi32(b, rotated), b, c];
            }
        }
        state
    }

    /// Hash keys from one group's final vectors.
    #[target_feature(enable = "avx2")]
    fn digests(state: [__m256i; 4]) -> [u128; 8] {
        let finals = state.map(|v| {
            let mut lanes = [0u32; 8];
            // SAFETY: writes 32 bytes into a local [u32; 8]; unaligned stores are allowed.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
            lanes
        });
        std::array::from_fn(|lane| {
            let state: [u32; 4] =
                std::array::from_fn(|word| INIT[word].wrapping_add(finals[word][lane]));
            digest_value(state)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(keys: &[Vec<u8>]) -> Vec<u128> {
        keys.iter().map(|k| crate::catalog::hash_key(k)).collect()
    }

    #[test]
    fn eight_lane_md5_matches_the_scalar_md5_for_every_length_and_mix() {
        // Every length from 0 to 70 (so single-block lanes, the 55/56 boundary and
        // multi-block keys mixed into one chunk), in counts that leave remainders.
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut keys = Vec::new();
        for round in 0..6 {
            for len in 0..=70usize {
                let key: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> (8 * (round % 8))) as u8
                    })
                    .collect();
                keys.push(key);
            }
        }
        for count in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 18, 24, 31, 63, keys.len()] {
            let mut hashed = Vec::new();
            hash_keys(&keys[..count], &mut hashed);
            assert_eq!(hashed, scalar(&keys[..count]), "first {count} keys");
        }
        // Only short keys, so every chunk takes a vector path.
        let short: Vec<Vec<u8>> = (0..803).map(|i| format!("key-{i}").into_bytes()).collect();
        let mut hashed = Vec::new();
        hash_keys(&short, &mut hashed);
        assert_eq!(hashed, scalar(&short));
    }

    #[test]
    fn known_digests() {
        // RFC 1321, A.5: MD5("") and MD5("abc").
        let mut hashed = Vec::new();
        let keys: [&[u8]; 9] = [b"", b"abc", b"a", b"b", b"c", b"d", b"e", b"f", b"g"];
        hash_keys(&keys, &mut hashed);
        assert_eq!(hashed[0], 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(hashed[1], 0x900150983cd24fb0d6963f7d28e17f72);
    }
}
