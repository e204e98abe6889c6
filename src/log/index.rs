//! The sparse per-segment index: sequence number → byte position, and arrival time →
//! sequence number. Owns the in-memory entries and the `.idx` file format; does not read
//! segments (recovery rebuilds an index from a scan). Runs on the shard's owner core.
//!
//! An entry is added for the first batch of a segment and then for the first batch that
//! starts at least `interval` bytes after the previous entry, so a lookup lands at most one
//! interval (plus one batch) before its target. Arrival times are non-decreasing within a
//! shard (the log clamps them on append), so both lookups are binary searches.
//!
//! # `.idx` file layout (version 1), little-endian
//!
//! ```text
//! byte   0     1     2     3     4     5     6     7
//!   0  | magic "SPTI"             | ver | zero            |
//!   8  | entry_count              | segment_bytes         |
//!  16  | next_seq (one past the segment's last record)    |
//!  24  | arrival_last_us                                  |
//!  32  | entries: seq u64 | position u32 | zero u32 | arrival_first_us u64   (24 bytes each)
//!  ..  | crc32c over every byte before it                 |
//! ```
//!
//! The file is written once, when a segment is sealed, and is only a cache: a missing,
//! short or damaged file, or one that disagrees with its segment's length, is ignored and
//! the index is rebuilt from the segment.
//!
//! Version history: 1 — first version.

use bytes::{BufMut, BytesMut};

const MAGIC: u32 = u32::from_le_bytes(*b"SPTI");
const VERSION: u8 = 1;
const HEAD_BYTES: usize = 32;
const ENTRY_BYTES: usize = 24;
const CRC_BYTES: usize = 4;

/// One index entry: the batch starting at `position` holds `seq` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub position: u32,
    pub arrival_first_us: u64,
}

/// The sparse index of one segment, with the summary a sealed segment needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
    interval: u32,
}

impl SparseIndex {
    pub fn new(interval: u32) -> SparseIndex {
        SparseIndex {
            entries: Vec::new(),
            interval,
        }
    }

    /// Notes a batch written at `position`; adds an entry when it is due.
    pub fn observe(&mut self, position: u32, first_seq: u64, arrival_first_us: u64) {
        let due = match self.entries.last() {
            None => true,
            Some(last) => position.saturating_sub(last.position) >= self.interval,
        };
        if due {
            self.entries.push(IndexEntry {
                seq: first_seq,
                position,
                arrival_first_us,
            });
        }
    }

    /// Position to start reading at to find `seq`: the last entry at or before it.
    pub fn position_for_seq(&self, seq: u64) -> u32 {
        let after = self.entries.partition_point(|e| e.seq <= seq);
        after
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.position)
    }

    /// Position to start reading at to find the first record that arrived at or after
    /// `arrival_us`: the last entry whose batch starts strictly before that time.
    pub fn position_for_arrival(&self, arrival_us: u64) -> u32 {
        let after = self
            .entries
            .partition_point(|e| e.arrival_first_us < arrival_us);
        after
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.position)
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Memory held by the entries, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<IndexEntry>()
    }

    /// Encodes the index and the segment summary as an `.idx` file.
    pub fn encode(&self, summary: &SegmentSummary) -> Vec<u8> {
        let mut out =
            BytesMut::with_capacity(HEAD_BYTES + self.entries.len() * ENTRY_BYTES + CRC_BYTES);
        out.put_u32_le(MAGIC);
        out.put_u8(VERSION);
        out.put_bytes(0, 3);
        out.put_u32_le(self.entries.len() as u32);
        out.put_u32_le(summary.bytes);
        out.put_u64_le(summary.next_seq);
        out.put_u64_le(summary.arrival_last_us);
        for entry in &self.entries {
            out.put_u64_le(entry.seq);
            out.put_u32_le(entry.position);
            out.put_u32_le(0);
            out.put_u64_le(entry.arrival_first_us);
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
        out.to_vec()
    }

    /// Decodes an `.idx` file; `None` when it is damaged in any way, so the caller rebuilds.
    pub fn decode(bytes: &[u8], interval: u32) -> Option<(SparseIndex, SegmentSummary)> {
        let body_len = bytes.len().checked_sub(CRC_BYTES)?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let head = body.get(..HEAD_BYTES)?;
        if u32_at(head, 0)? != MAGIC || head.get(4) != Some(&VERSION) {
            return None;
        }
        let count = u32_at(head, 8)? as usize;
        let summary = SegmentSummary {
            bytes: u32_at(head, 12)?,
            next_seq: u64_at(head, 16)?,
            arrival_last_us: u64_at(head, 24)?,
        };
        if body.len() != HEAD_BYTES + count.checked_mul(ENTRY_BYTES)? {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for raw in body[HEAD_BYTES..].chunks_exact(ENTRY_BYTES) {
            entries.push(IndexEntry {
                seq: u64_at(raw, 0)?,
                position: u32_at(raw, 8)?,
                arrival_first_us: u64_at(raw, 16)?,
            });
        }
        let sorted = entries
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].position < w[1].position);
        let inside = entries
            .last()
            .is_none_or(|e| e.position < summary.bytes && e.seq < summary.next_seq);
        if !sorted || !inside {
            return None;
        }
        Some((SparseIndex { entries, interval }, summary))
    }
}

/// What a sealed segment must know about itself without reading its batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Length of the segment's batches, in bytes (the file may hold zero padding beyond).
    pub bytes: u32,
    /// One past the last sequence number in the segment.
    pub next_seq: u64,
    /// Arrival time of the segment's newest record, unix microseconds.
    pub arrival_last_us: u64,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}
