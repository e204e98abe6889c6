//! Segment files: naming, and the scan that checks a segment's batches on open and decides
//! what a damaged one means. Owns no file handles (the shard log does); the scan is a pure
//! function over the segment's bytes so recovery can be tested byte by byte. Runs on the
//! shard's owner core during open.
//!
//! A shard's folder holds `<first_seq>.log` segment files (20 decimal digits, so names sort
//! in sequence order) and, for sealed segments, `<first_seq>.idx` index files.
//!
//! The scan walks batch after batch from the start:
//! * a header-sized run of zeros is the clean end (O_DIRECT pads the last block);
//! * in a sealed segment every batch was synced before the next segment was created, so
//!   any damage is corruption, reported with the file position;
//! * in the last segment a damaged batch at `p` is a torn tail, cut off, unless a valid
//!   batch after `p` proves `p` lies in a commit that was synced: the valid batches after
//!   `p` carry two different commit ids, or one id with the commit-first flag, or an id more
//!   than one above the last good batch before `p`. The reasoning is in [`crate::log::batch`].

use thiserror::Error;

use crate::log::batch::{self, BatchHeader, DecodeError, MAGIC};
use crate::log::index::SparseIndex;

/// File name of the segment whose first record has `first_seq`.
pub fn log_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// File name of the index of the segment whose first record has `first_seq`.
pub fn index_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.idx")
}

/// The first sequence number encoded in a segment file name, if it is one.
pub fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether the segment being scanned is sealed (strict) or the last one (may be torn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    Sealed,
    Last,
}

/// A damaged tail that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Where the first damaged batch starts; the segment is truncated here.
    pub position: u64,
    /// Bytes after `position` that were not zero padding.
    pub dropped_bytes: u64,
    pub reason: BadBatch,
}

/// Why the batch at a position could not be accepted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BadBatch {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("batch starts at sequence {found}, expected {expected}")]
    SequenceMismatch { expected: u64, found: u64 },
}

/// What a scan found.
#[derive(Clone, Debug)]
pub struct Scan {
    /// Bytes of valid batches from the start of the segment.
    pub valid_bytes: u64,
    pub index: SparseIndex,
    /// One past the last valid record.
    pub next_seq: u64,
    /// Arrival of the newest valid record (0 when there is none).
    pub arrival_last_us: u64,
    /// Commit id of the last valid batch.
    pub last_commit_id: Option<u64>,
    pub batches: u64,
    /// Set when the scan cut a torn tail off a last segment.
    pub torn: Option<TornTail>,
}

/// A segment that cannot be recovered without losing acknowledged records.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("corrupt batch at byte {position} (acknowledged data follows): {reason}")]
pub struct Corruption {
    pub position: u64,
    pub reason: BadBatch,
}

/// Checks every batch of a segment and finds where its valid data ends.
///
/// # Errors
/// [`Corruption`] when a batch is damaged and the damage cannot be a torn tail.
pub fn scan(
    bytes: &[u8],
    first_seq: u64,
    mode: ScanMode,
    interval: u32,
) -> Result<Scan, Corruption> {
    let mut out = Scan {
        valid_bytes: 0,
        index: SparseIndex::new(interval),
        next_seq: first_seq,
        arrival_last_us: 0,
        last_commit_id: None,
        batches: 0,
        torn: None,
    };
    let mut position = 0usize;
    while position < bytes.len() {
        let rest = &bytes[position..];
        if batch::is_zero_header(rest) {
            break;
        }
        match check_batch(rest, out.next_seq) {
            Ok(header) => {
                out.index
                    .observe(position as u32, header.first_seq, header.arrival_first_us);
                out.next_seq = header.next_seq();
                out.arrival_last_us = header.arrival_last_us;
                out.last_commit_id = Some(header.commit_id);
                out.batches += 1;
                position += header.length as usize;
                out.valid_bytes = position as u64;
            }
            Err(reason) => {
                let corruption = Corruption {
                    position: position as u64,
                    reason: reason.clone(),
                };
                if mode == ScanMode::Sealed || !is_torn_tail(bytes, position, out.last_commit_id) {
                    return Err(corruption);
                }
                out.torn = Some(TornTail {
                    position: position as u64,
                    dropped_bytes: non_zero_span(rest),
                    reason,
                });
                break;
            }
        }
    }
    Ok(out)
}

fn check_batch(bytes: &[u8], expected_seq: u64) -> Result<BatchHeader, BadBatch> {
    let header = batch::verify(bytes)?;
    if header.first_seq != expected_seq {
        return Err(BadBatch::SequenceMismatch {
            expected: expected_seq,
            found: header.first_seq,
        });
    }
    Ok(header)
}

/// Decides whether damage at `bad` in the last segment can be the unsynced region of the
/// last commit, given the commit id of the last good batch before it.
fn is_torn_tail(bytes: &[u8], bad: usize, previous_commit: Option<u64>) -> bool {
    let mut later_commit: Option<u64> = None;
    for header in valid_batches_after(bytes, bad + 1) {
        match later_commit {
            Some(id) if id != header.commit_id => return false,
            _ => later_commit = Some(header.commit_id),
        }
        if header.is_commit_first() {
            return false;
        }
    }
    match (later_commit, previous_commit) {
        (None, _) | (Some(_), None) => true,
        (Some(later), Some(previous)) => later == previous || later == previous.wrapping_add(1),
    }
}

/// Every batch after `from` that verifies, found by searching for the magic and then
/// following lengths. Used only on the rare path of a damaged last segment.
fn valid_batches_after(bytes: &[u8], from: usize) -> impl Iterator<Item = BatchHeader> + '_ {
    let magic = MAGIC.to_le_bytes();
    let mut position = from;
    std::iter::from_fn(move || {
        while position < bytes.len() {
            let rest = &bytes[position..];
            let Some(offset) = rest.windows(magic.len()).position(|w| w == magic) else {
                position = bytes.len();
                return None;
            };
            position += offset;
            match batch::verify(&bytes[position..]) {
                Ok(header) => {
                    position += header.length as usize;
                    return Some(header);
                }
                Err(_) => position += 1,
            }
        }
        None
    })
}

fn non_zero_span(rest: &[u8]) -> u64 {
    rest.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}
