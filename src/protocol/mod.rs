//! Step 2 of the data path: decoding requests and encoding responses. `binary` is spate's
//! own framed protocol; the Kinesis JSON API will sit beside it.

pub mod binary;
pub mod kinesis;
