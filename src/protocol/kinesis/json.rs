//! JSON in and out for the Kinesis API. In: typed accessors over a simd-json tape (one
//! flat vector of nodes per request, strings borrowed from the request buffer, no
//! allocation per object), each failing with the Kinesis error a client expects (a wrong type is a
//! `SerializationException`, a missing required member a `ValidationException`). Out: a
//! small writer, so responses are built straight into one buffer without serde.

use simd_json::prelude::*;
use simd_json::tape::{Array, Value};

use crate::catalog::sequence;
use crate::protocol::kinesis::errors::KinesisError;

/// The request document: a JSON object.
#[derive(Clone, Copy)]
pub struct Input<'a, 'v> {
    object: Value<'a, 'v>,
}

impl<'a, 'v> Input<'a, 'v> {
    /// # Errors
    /// `SerializationException` when the document is not an object.
    pub fn new(value: Value<'a, 'v>) -> Result<Input<'a, 'v>, KinesisError> {
        if value.as_object().is_none() {
            return Err(KinesisError::serialization(
                "Request body must be a JSON object",
            ));
        }
        Ok(Input { object: value })
    }

    fn member(&self, name: &str) -> Option<Value<'a, 'v>> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    /// # Errors
    /// `SerializationException` when present but not a string.
    pub fn str(&self, name: &str) -> Result<Option<&'v str>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) => value
                .into_string()
                .map(Some)
                .ok_or_else(|| type_error(name, "string")),
        }
    }

    /// Several string members in one pass over the object: what [`Input::str`] gives for
    /// each of `names`, in the same order. For the members of each of a put's records,
    /// where looking each name up on its own scans the record once per name.
    ///
    /// # Errors
    /// `SerializationException` for the first of them, in document order, that is present
    /// but not a string.
    pub fn strs<const N: usize>(
        &self,
        names: [&'static str; N],
    ) -> Result<[Option<&'v str>; N], KinesisError> {
        let mut found = [None; N];
        let mut seen = [false; N];
        let Some(object) = self.object.into_object() else {
            return Ok(found);
        };
        for (key, value) in object.iter() {
            let Some(slot) = names.iter().position(|name| *name == key) else {
                continue;
            };
            // The first occurrence of a name counts, as with a lookup by name.
            if std::mem::replace(&mut seen[slot], true) || value.is_null() {
                continue;
            }
            match value.into_string() {
                Some(text) => found[slot] = Some(text),
                None => return Err(type_error(names[slot], "string")),
            }
        }
        Ok(found)
    }

    /// # Errors
    /// `ValidationException` when missing; `SerializationException` when not a string.
    pub fn required_str(&self, name: &str) -> Result<&'v str, KinesisError> {
        self.str(name)?.ok_or_else(|| missing(name))
    }

    /// # Errors
    /// `SerializationException` when present but not an integer.
    pub fn int(&self, name: &str) -> Result<Option<i64>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) => value
                .as_i64()
                .map(Some)
                .ok_or_else(|| type_error(name, "integer")),
        }
    }

    /// # Errors
    /// `SerializationException` when present but not a boolean.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) => value
                .as_bool()
                .map(Some)
                .ok_or_else(|| type_error(name, "boolean")),
        }
    }

    /// A timestamp in epoch seconds (integer or fraction), as microseconds.
    ///
    /// # Errors
    /// `SerializationException` when present but not a number.
    pub fn timestamp_us(&self, name: &str) -> Result<Option<u64>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) => {
                let seconds = value
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
                    .ok_or_else(|| type_error(name, "timestamp"))?;
                Ok(Some((seconds * 1e6).round() as u64))
            }
        }
    }

    /// # Errors
    /// `SerializationException` when present but not an object.
    pub fn object(&self, name: &str) -> Result<Option<Input<'a, 'v>>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) if value.as_object().is_some() => Ok(Some(Input { object: value })),
            Some(_) => Err(type_error(name, "structure")),
        }
    }

    /// The members of an object member, as (key, value) pairs in document order.
    ///
    /// # Errors
    /// `SerializationException` when present but not an object.
    pub fn entries(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(&'v str, Value<'a, 'v>)>>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) => value
                .into_object()
                .map(|o| Some(o.iter().collect()))
                .ok_or_else(|| type_error(name, "map")),
        }
    }

    /// # Errors
    /// `SerializationException` when present but not a list.
    pub fn array(&self, name: &str) -> Result<Option<Array<'a, 'v>>, KinesisError> {
        match self.member(name) {
            None => Ok(None),
            Some(value) => value
                .into_array()
                .map(Some)
                .ok_or_else(|| type_error(name, "list")),
        }
    }
}

fn type_error(name: &str, expected: &str) -> KinesisError {
    KinesisError::serialization(format!("Member {name} must be a {expected}"))
}

pub(super) fn missing(name: &str) -> KinesisError {
    let path = lower_camel(name);
    KinesisError::validation(format!(
        "1 validation error detected: Value null at '{path}' failed to satisfy constraint: Member must not be null"
    ))
}

/// `StreamName` → `streamName`, as AWS names members in validation messages.
pub fn lower_camel(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A JSON writer into one growing buffer.
#[derive(Default)]
pub struct Out {
    buffer: Vec<u8>,
    /// Whether the next member or element needs a comma before it, per nesting level.
    first: Vec<bool>,
}

impl Out {
    pub fn with_capacity(capacity: usize) -> Out {
        Out {
            buffer: Vec::with_capacity(capacity),
            first: Vec::new(),
        }
    }

    /// A writer that appends to `buffer`, whatever it already holds.
    pub fn appending(buffer: Vec<u8>) -> Out {
        Out {
            buffer,
            first: Vec::new(),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buffer
    }

    fn separator(&mut self) {
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.buffer.push(b',');
            }
            *first = false;
        }
    }

    /// Member names are our own constants (the `'static` bound keeps them so): plain ASCII
    /// with nothing to escape, so they are copied as they are, without the escape scan.
    fn key(&mut self, key: &'static str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.separator();
        self.buffer.reserve(key.len() + 3);
        self.buffer.push(b'"');
        self.buffer.extend_from_slice(key.as_bytes());
        self.buffer.extend_from_slice(b"\":");
    }

    pub fn begin_object(&mut self) -> &mut Out {
        self.separator();
        self.buffer.push(b'{');
        self.first.push(true);
        self
    }

    pub fn object(&mut self, key: &'static str) -> &mut Out {
        self.key(key);
        self.buffer.push(b'{');
        self.first.push(true);
        self
    }

    pub fn end_object(&mut self) -> &mut Out {
        self.first.pop();
        self.buffer.push(b'}');
        self
    }

    pub fn array(&mut self, key: &'static str) -> &mut Out {
        self.key(key);
        self.buffer.push(b'[');
        self.first.push(true);
        self
    }

    pub fn end_array(&mut self) -> &mut Out {
        self.first.pop();
        self.buffer.push(b']');
        self
    }

    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Out {
        self.key(key);
        self.string_raw(value);
        self
    }

    /// A string element of an array.
    pub fn item_str(&mut self, value: &str) -> &mut Out {
        self.separator();
        self.string_raw(value);
        self
    }

    pub fn int(&mut self, key: &'static str, value: i64) -> &mut Out {
        self.key(key);
        self.buffer
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Out {
        self.key(key);
        self.buffer
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A timestamp as epoch seconds with a millisecond fraction, never in exponent form
    /// (the Java SDK cannot parse `1.7E9`).
    pub fn timestamp(&mut self, key: &'static str, micros: u64) -> &mut Out {
        self.key(key);
        let millis = micros / 1000;
        let fraction = (millis % 1000) as usize;
        self.buffer
            .extend_from_slice(itoa::Buffer::new().format(millis / 1000).as_bytes());
        let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
        self.buffer.push(b'.');
        self.buffer.extend(digits.map(|d| b'0' + d as u8));
        self
    }

    /// Base64 of `data` as a string member.
    pub fn base64(&mut self, key: &'static str, data: &[u8]) -> &mut Out {
        self.key(key);
        self.buffer.push(b'"');
        base64_simd::STANDARD.encode_append(data, &mut self.buffer);
        self.buffer.push(b'"');
        self
    }

    fn string_raw(&mut self, value: &str) {
        self.buffer.reserve(value.len() + 2);
        self.buffer.push(b'"');
        let bytes = value.as_bytes();
        // Copy runs that need no escape in one go; escape the rest byte by byte.
        let mut run = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            let escape: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            self.buffer.extend_from_slice(&bytes[run..at]);
            run = at + 1;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let code = [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]];
                self.buffer.extend_from_slice(b"\\u00");
                self.buffer.extend_from_slice(&code);
            } else {
                self.buffer.extend_from_slice(escape);
            }
        }
        self.buffer.extend_from_slice(&bytes[run..]);
        self.buffer.push(b'"');
    }

    /// A string member whose value needs no escaping: ASCII digits and ids we spelled
    /// ourselves, such as [`Speller`]'s.
    pub fn plain_str(&mut self, key: &'static str, value: &[u8]) -> &mut Out {
        debug_assert!(
            value
                .iter()
                .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
        );
        self.key(key);
        self.buffer.reserve(value.len() + 2);
        self.buffer.push(b'"');
        self.buffer.extend_from_slice(value);
        self.buffer.push(b'"');
        self
    }

    /// An array element that is already a complete JSON value, copied as it is: the
    /// caller vouches for it, as for [`Speller::entry`]'s entries.
    pub fn raw_item(&mut self, value: &[u8]) -> &mut Out {
        self.separator();
        self.buffer.extend_from_slice(value);
        self
    }
}

/// Spells the sequence numbers and shard ids of a response. Most of a response's records
/// follow an earlier record of the same shard, so each shard's last sequence number string
/// is kept and the next is derived from it by decimal addition, usually of 1 to its last
/// digit, in place of formatting a 128-bit number (which took about 3 % of the server's CPU
/// on PutRecords). A response over more shards than it keeps just formats the rest.
///
/// The digits live inside a whole PutRecords result entry kept per shard, so a put's
/// response copies one ready entry per record instead of writing it member by member
/// (which, with the spelling, took about 7 % of the server's CPU on PutRecords).
#[derive(Default)]
pub struct Speller {
    shards: Vec<Spelled>,
}

struct Spelled {
    shard: u32,
    seq: u64,
    /// `{"SequenceNumber":"<digits>","ShardId":"<shard id>"}`; the digits at [`DIGITS_AT`].
    entry: Vec<u8>,
}

const ENTRY_HEAD: &[u8] = br#"{"SequenceNumber":""#;
const ENTRY_MIDDLE: &[u8] = br#"","ShardId":""#;
const ENTRY_TAIL: &[u8] = br#""}"#;
/// Where a [`Spelled`] entry's digits start.
const DIGITS_AT: usize = ENTRY_HEAD.len();

/// Shards a [`Speller`] keeps; a put rarely touches more, and the search is linear.
const SPELLER_SHARDS: usize = 32;

impl Speller {
    /// The Kinesis sequence number string of `seq` in shard `shard`.
    pub fn sequence(&mut self, shard: u32, seq: u64) -> &[u8] {
        let entry = self.entry(shard, seq);
        &entry[DIGITS_AT..DIGITS_AT + sequence::DIGITS]
    }

    /// The PutRecords result entry of a record appended as `seq` in shard `shard`:
    /// `{"SequenceNumber":"...","ShardId":"shardId-..."}`, ready for [`Out::raw_item`].
    pub fn entry(&mut self, shard: u32, seq: u64) -> &[u8] {
        let slot = self.slot(shard, seq);
        let spelled = &mut self.shards[slot];
        if spelled.seq != seq {
            let digits = &mut spelled.entry[DIGITS_AT..DIGITS_AT + sequence::DIGITS];
            let added = seq > spelled.seq && add_decimal(digits, seq - spelled.seq);
            if !added {
                digits.copy_from_slice(&sequence::digits(shard, seq));
            }
            spelled.seq = seq;
        }
        &spelled.entry
    }

    fn slot(&mut self, shard: u32, seq: u64) -> usize {
        if let Some(slot) = self.shards.iter().position(|s| s.shard == shard) {
            return slot;
        }
        let id = crate::catalog::shard_id(shard);
        let mut entry = Vec::with_capacity(
            ENTRY_HEAD.len() + sequence::DIGITS + ENTRY_MIDDLE.len() + id.len() + ENTRY_TAIL.len(),
        );
        entry.extend_from_slice(ENTRY_HEAD);
        entry.extend_from_slice(&sequence::digits(shard, seq));
        entry.extend_from_slice(ENTRY_MIDDLE);
        entry.extend_from_slice(id.as_bytes());
        entry.extend_from_slice(ENTRY_TAIL);
        let spelled = Spelled { shard, seq, entry };
        if self.shards.len() < SPELLER_SHARDS {
            self.shards.push(spelled);
            self.shards.len() - 1
        } else {
            // Full: the shard kept longest makes room.
            self.shards.rotate_left(1);
            let last = self.shards.len() - 1;
            self.shards[last] = spelled;
            last
        }
    }
}

/// Adds `delta` to a decimal number spelled in ASCII digits, in place. `false` when the
/// sum does not fit (the digits are then garbage and must be spelled afresh).
fn add_decimal(digits: &mut [u8], delta: u64) -> bool {
    let mut carry = delta;
    for digit in digits.iter_mut().rev() {
        if carry == 0 {
            return true;
        }
        let sum = u64::from(digit.wrapping_sub(b'0')) + carry % 10;
        carry /= 10;
        if sum >= 10 {
            *digit = b'0' + (sum - 10) as u8;
            carry += 1;
        } else {
            *digit = b'0' + sum as u8;
        }
    }
    carry == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_speller_spells_what_sequence_render_does() {
        let mut speller = Speller::default();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let mut seqs = [0u64; 40];
        seqs[1] = 9_999_999 - 3;
        seqs[2] = u64::MAX - 600;
        for _ in 0..20_000 {
            // Mostly small steps in one of a few shards, sometimes big jumps, steps back,
            // and more shards than the speller keeps.
            let shard = if next(10) == 0 { next(40) } else { next(3) } as usize;
            let step = match next(20) {
                0 => next(1 << 40),
                1 => 0,
                _ => 1 + next(3),
            };
            seqs[shard] = if next(50) == 0 {
                seqs[shard] / 2
            } else {
                seqs[shard].saturating_add(step)
            };
            let (shard, seq) = (shard as u32 * 1000, seqs[shard]);
            let spelled = speller.sequence(shard, seq).to_vec();
            assert_eq!(
                spelled,
                sequence::render(shard, seq).into_bytes(),
                "{shard} {seq}"
            );
            let entry = String::from_utf8(speller.entry(shard, seq).to_vec()).expect("ascii");
            assert_eq!(
                entry,
                format!(
                    r#"{{"SequenceNumber":"{}","ShardId":"shardId-{shard:012}"}}"#,
                    sequence::render(shard, seq)
                )
            );
        }
    }

    #[test]
    fn decimal_addition_carries_and_reports_overflow() {
        let mut digits = *b"0999";
        assert!(add_decimal(&mut digits, 1));
        assert_eq!(&digits, b"1000");
        assert!(add_decimal(&mut digits, 8_999));
        assert_eq!(&digits, b"9999");
        assert!(!add_decimal(&mut digits, 1));
    }

    #[test]
    fn the_writer_makes_json_that_parses_back() {
        let mut out = Out::default();
        out.begin_object()
            .str("Name", "a\"b\\c\n\u{1}")
            .int("Count", -3)
            .bool("More", false)
            .timestamp("At", 1_700_000_000_123_456)
            .base64("Data", b"hello")
            .array("List")
            .item_str("x")
            .item_str("y")
            .end_array()
            .object("Inner")
            .end_object()
            .end_object();
        let mut bytes = out.into_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.contains("\"At\":1700000000.123"), "{text}");
        let tape = simd_json::to_tape(&mut bytes).expect("valid JSON");
        let input = Input::new(tape.as_value()).expect("object");
        assert_eq!(input.str("Name").ok().flatten(), Some("a\"b\\c\n\u{1}"));
        assert_eq!(input.str("Data").ok().flatten(), Some("aGVsbG8="));
        assert_eq!(input.int("Count").ok().flatten(), Some(-3));
    }

    #[test]
    fn several_members_in_one_pass_read_as_lookups_by_name_do() {
        let documents: [&[u8]; 6] = [
            br#"{"A":"1","B":"2","C":"3"}"#,
            br#"{"C":"3","A":"1"}"#,
            br#"{"A":null,"B":"2","Other":5}"#,
            br#"{"A":"first","A":"second","B":null,"B":"late"}"#,
            br#"{"B":7}"#,
            br#"{}"#,
        ];
        for document in documents {
            let mut bytes = document.to_vec();
            let tape = simd_json::to_tape(&mut bytes).expect("valid JSON");
            let input = Input::new(tape.as_value()).expect("object");
            let by_name: Result<Vec<Option<&str>>, _> =
                ["A", "B", "C"].iter().map(|name| input.str(name)).collect();
            let one_pass = input.strs(["A", "B", "C"]);
            match (by_name, one_pass) {
                (Ok(expected), Ok(found)) => assert_eq!(found.to_vec(), expected),
                (Err(expected), Err(found)) => assert_eq!(found.message, expected.message),
                (expected, found) => panic!("{document:?}: {expected:?} against {found:?}"),
            }
        }
    }
}
