//! The AMQP 0-9-1 codec: frames, field values, and the methods and
//! properties generated from the spec. Pure functions over bytes; this module
//! holds no connection state and does no I/O.
//!
//! Decoding is zero-copy and incremental: [`FrameDecoder`] cuts complete
//! frames out of a [`bytes::BytesMut`] read buffer, and every string, table
//! and body in a decoded [`Frame`] is a view of that buffer.

pub mod dump;
pub mod frame;
pub mod generated;
pub mod value;

#[cfg(test)]
mod tests;

pub use dump::dump;
pub use frame::{
    encode_message, ContentHeader, Decoded, EncodeProperties, Frame, FrameDecoder,
    FRAME_HEADER_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
pub use generated::*;
pub use value::{
    ArrayIter, Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString,
    ShortStringTooLong, TableIter, MAX_NESTING,
};
