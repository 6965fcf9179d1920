//! Errors. This module owns every error type warren returns; it never decides
//! what to do about one (the session and the facades do).
//!
//! Today it holds the codec's [`DecodeError`]: what the parser found wrong in
//! bytes that came off the wire, where, and which AMQP reply code a peer that
//! received them must close the connection with.

use std::fmt;

use crate::protocol::generated::ReplyCode;

/// Bytes from the peer that do not form valid AMQP 0-9-1.
///
/// Raised by the frame decoder and the field-table parser. It names the
/// stream offset where the problem starts (counted from the first byte the
/// decoder was given), what was being parsed and why it failed. A connection
/// that receives one must be closed with [`DecodeError::reply_code`]: nothing
/// after a malformed frame can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset in the byte stream at which the offending item starts.
    pub offset: u64,
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// What was being parsed, such as `"basic.deliver exchange"` or `"frame header"`.
    pub context: &'static str,
}

/// The reason a [`DecodeError`] was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The frame header announces a frame larger than the negotiated
    /// `frame_max` (which counts the 8 bytes of header and frame-end). Raised
    /// from the header, before the payload is buffered.
    FrameTooLarge {
        /// Total frame size the header announces, header and frame-end included.
        frame_size: u64,
        /// The limit in force.
        frame_max: u32,
    },
    /// The octet after the payload is not the frame-end octet 0xCE.
    BadFrameEnd {
        /// The octet found instead.
        found: u8,
    },
    /// The frame type octet is not method (1), header (2), body (3) or heartbeat (8).
    UnknownFrameType {
        /// The frame type found.
        frame_type: u8,
    },
    /// A heartbeat frame carried a payload.
    HeartbeatWithPayload {
        /// Payload size announced.
        size: u32,
    },
    /// A method frame names a class and method the protocol does not define.
    UnknownMethod {
        /// Class id found.
        class_id: u16,
        /// Method id found.
        method_id: u16,
    },
    /// A content header names a class that carries no content.
    UnknownContentClass {
        /// Class id found.
        class_id: u16,
    },
    /// The content header's property flags set a bit no property is defined for.
    InvalidPropertyFlags {
        /// The flags word found.
        flags: u16,
    },
    /// A field runs past the end of the frame (or of the table or array holding it).
    Truncated,
    /// A length prefix announces more bytes than its frame, table or array holds.
    LengthOverrun {
        /// Length the prefix announces.
        declared: u64,
        /// Bytes actually left.
        available: usize,
    },
    /// A field table or array holds a value whose type tag is not defined.
    UnknownFieldType {
        /// The tag octet found.
        tag: u8,
    },
    /// Tables and arrays nest deeper than [`crate::protocol::MAX_NESTING`].
    NestingTooDeep {
        /// The limit.
        limit: usize,
    },
    /// A method frame holds bytes after its last argument.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The peer sent a protocol header instead of a frame: it does not speak
    /// AMQP 0-9-1 and names the version it wants.
    ProtocolHeader {
        /// The eight bytes received (`AMQP` then four version octets).
        header: [u8; 8],
    },
}

impl DecodeError {
    /// The reply code to close the connection with, as the spec assigns them:
    /// 501 FRAME_ERROR for framing faults, 502 SYNTAX_ERROR for malformed
    /// fields, 540 NOT_IMPLEMENTED for methods and classes we do not know.
    pub fn reply_code(&self) -> ReplyCode {
        use DecodeErrorKind::*;
        match self.kind {
            FrameTooLarge { .. }
            | BadFrameEnd { .. }
            | UnknownFrameType { .. }
            | HeartbeatWithPayload { .. }
            | ProtocolHeader { .. } => ReplyCode::FrameError,
            UnknownMethod { .. } | UnknownContentClass { .. } => ReplyCode::NotImplemented,
            InvalidPropertyFlags { .. }
            | Truncated
            | LengthOverrun { .. }
            | UnknownFieldType { .. }
            | NestingTooDeep { .. }
            | TrailingBytes { .. } => ReplyCode::SyntaxError,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.kind)
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        match self {
            FrameTooLarge {
                frame_size,
                frame_max,
            } => write!(
                f,
                "frame of {frame_size} bytes exceeds the negotiated frame_max of {frame_max}"
            ),
            BadFrameEnd { found } => write!(f, "frame-end octet is {found:#04x}, expected 0xce"),
            UnknownFrameType { frame_type } => write!(f, "unknown frame type {frame_type}"),
            HeartbeatWithPayload { size } => {
                write!(f, "heartbeat frame carries a {size}-byte payload")
            }
            UnknownMethod {
                class_id,
                method_id,
            } => write!(f, "unknown method {class_id}.{method_id}"),
            UnknownContentClass { class_id } => {
                write!(f, "class {class_id} does not carry content")
            }
            InvalidPropertyFlags { flags } => {
                write!(f, "property flags {flags:#06x} set undefined bits")
            }
            Truncated => f.write_str("field runs past the end of its frame"),
            LengthOverrun {
                declared,
                available,
            } => write!(
                f,
                "length {declared} runs past the end of its container ({available} bytes left)"
            ),
            UnknownFieldType { tag } => {
                if tag.is_ascii_graphic() {
                    write!(f, "unknown field type tag '{}'", *tag as char)
                } else {
                    write!(f, "unknown field type tag {tag:#04x}")
                }
            }
            NestingTooDeep { limit } => {
                write!(f, "tables and arrays nest deeper than {limit} levels")
            }
            TrailingBytes { count } => write!(f, "{count} bytes after the last argument"),
            ProtocolHeader { header } => write!(
                f,
                "peer sent a protocol header for AMQP {}-{}-{} instead of a frame",
                header[5], header[6], header[7]
            ),
        }
    }
}

impl std::error::Error for DecodeError {}
