//! The AWS event-stream framing (`application/vnd.amazon.eventstream`) that
//! SubscribeToShard answers in. Owns encoding one message; what goes in the payloads is in
//! [`super::subscribe`]. Any core.
//!
//! # Message, all integers big-endian
//!
//! ```text
//! byte   0     1     2     3     4     5     6     7
//!   0  | total length          | headers length        |
//!   8  | prelude CRC32         | headers ...           |
//!      | payload ...                                   |
//!      | message CRC32         |
//! ```
//!
//! * `total length` counts the whole message, both CRCs included; `headers length` the
//!   header block alone.
//! * Both checksums are CRC32 (IEEE 802.3, as zlib), not the CRC32C of the shard log: the
//!   prelude CRC covers bytes 0..8, the message CRC everything before it.
//! * A header is `name length u8 | name | type u8 | value`; spate writes only strings
//!   (type 7: `value length u16 | UTF-8`).
//!
//! An event carries `:message-type` = `event`, `:event-type` (`initial-response`, then
//! `SubscribeToShardEvent`) and `:content-type`; an error inside the stream carries
//! `:message-type` = `exception` and `:exception-type` = the AWS error name.

use bytes::{BufMut, Bytes, BytesMut};

/// Header value type of a string.
const TYPE_STRING: u8 = 7;
/// Bytes of the prelude (two lengths and the prelude CRC).
const PRELUDE_BYTES: usize = 12;
/// Bytes of the trailing message CRC.
const TRAILER_BYTES: usize = 4;

/// Encodes one message with string headers.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let headers_len: usize = headers
        .iter()
        .map(|(name, value)| 1 + name.len() + 1 + 2 + value.len())
        .sum();
    let total = PRELUDE_BYTES + headers_len + payload.len() + TRAILER_BYTES;
    let mut out = BytesMut::with_capacity(total);
    out.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
    out.put_u32(u32::try_from(headers_len).unwrap_or(u32::MAX));
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.put_u32(prelude_crc);
    for (name, value) in headers {
        // Header names and values are ours (fixed strings and AWS shape names): short.
        out.put_u8(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.put_slice(name.as_bytes());
        out.put_u8(TYPE_STRING);
        out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        out.put_slice(value.as_bytes());
    }
    out.put_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.put_u32(message_crc);
    out.freeze()
}

/// An event of `event_type` with a JSON payload.
pub fn event(event_type: &str, payload: &[u8]) -> Bytes {
    message(
        &[
            (":message-type", "event"),
            (":event-type", event_type),
            (":content-type", "application/json"),
        ],
        payload,
    )
}

/// An error delivered inside the stream.
pub fn exception(kind: &str, message_text: &str) -> Bytes {
    let mut out = super::json::Out::with_capacity(32 + message_text.len());
    out.begin_object().str("message", message_text).end_object();
    message(
        &[
            (":message-type", "exception"),
            (":exception-type", kind),
            (":content-type", "application/json"),
        ],
        &out.into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_lengths_and_both_checksums() {
        let payload = br#"{"a":1}"#;
        let bytes = message(&[(":message-type", "event")], payload);
        let total = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let headers = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        assert_eq!(total, bytes.len());
        assert_eq!(headers, 1 + 13 + 1 + 2 + 5);
        let prelude_crc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        assert_eq!(prelude_crc, crc32fast::hash(&bytes[..8]));
        let tail = bytes.len() - 4;
        let message_crc = u32::from_be_bytes([
            bytes[tail],
            bytes[tail + 1],
            bytes[tail + 2],
            bytes[tail + 3],
        ]);
        assert_eq!(message_crc, crc32fast::hash(&bytes[..tail]));
        assert_eq!(&bytes[tail - payload.len()..tail], payload);
        // The IEEE CRC32 of "123456789" is the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }
}
