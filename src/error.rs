//! Errors. This module owns every error type warren returns; it never decides
//! what to do about one (the session and the facades do).
//!
//! [`Error`] is what every public operation fails with. [`DecodeError`] is
//! the codec's account of malformed bytes: what was wrong, where, and which
//! reply code the connection must be closed with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::generated::ReplyCode;

/// Why an operation failed. Cheap to clone: when a connection dies, every
/// handle on it sees the same error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (connect refused, reset, ...). The connection is
    /// gone; open a new one (after a pause, if the broker restarts).
    Io(Arc<std::io::Error>),
    /// The peer sent bytes that are not valid AMQP 0-9-1. warren closed the
    /// connection with the matching reply code; this is a broker (or
    /// network) fault worth reporting.
    Protocol(DecodeError),
    /// The peer broke the protocol's rules with well-formed frames (a frame
    /// on a channel that is not open, a reply nobody asked for...). warren
    /// closed the connection with `code`.
    ProtocolViolation {
        /// The reply code warren closed the connection with.
        code: ReplyCode,
        /// What happened.
        text: String,
    },
    /// The connection was closed by the broker (or by warren, for a fault
    /// on the broker's side) with a connection exception. Every channel on it
    /// is closed; open a new connection.
    ConnectionClosed {
        /// Reply code, e.g. 320 CONNECTION_FORCED or 530 NOT_ALLOWED.
        code: u16,
        /// The broker's explanation.
        text: String,
        /// Class of the method that caused it (0 if none).
        class_id: u16,
        /// Method that caused it (0 if none).
        method_id: u16,
    },
    /// The channel was closed by the broker with a channel exception: 403
    /// ACCESS_REFUSED, 404 NOT_FOUND, 405 RESOURCE_LOCKED, 406
    /// PRECONDITION_FAILED... The connection and its other channels go on;
    /// open a new channel to continue.
    ChannelClosed {
        /// Reply code.
        code: u16,
        /// The broker's explanation.
        text: String,
        /// Class of the method that caused it (0 if none).
        class_id: u16,
        /// Method that caused it (0 if none).
        method_id: u16,
    },
    /// The broker refused the credentials (or the mechanism). Check the user
    /// name, password and vhost permissions.
    Auth {
        /// Why, as far as the broker said.
        text: String,
    },
    /// The broker speaks another protocol version (it answered our header
    /// with its own).
    UnsupportedProtocol {
        /// The header the broker sent.
        header: [u8; 8],
    },
    /// An operation did not complete in time. The connection may still be
    /// usable; for a handshake timeout it was closed.
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// Nothing was heard from the broker for two heartbeat intervals: the
    /// peer or the network is dead. The connection was closed.
    MissedHeartbeats {
        /// The negotiated heartbeat interval.
        interval: Duration,
    },
    /// The application closed the connection (or the channel) this handle
    /// belongs to.
    Closed,
    /// All channel numbers up to the negotiated channel_max are in use.
    /// Close channels you no longer need.
    ChannelMaxReached {
        /// The negotiated limit.
        channel_max: u16,
    },
    /// An argument can't be sent as given (a name over 255 bytes, a bad URI,
    /// a delivery tag already acknowledged...). Nothing was sent.
    InvalidArgument(String),
    /// The delivery tag is not one this channel delivered and has not yet
    /// settled: acknowledged twice, never delivered, or delivered on another
    /// channel (tags are per channel). Nothing was sent, and the channel stays
    /// open (the broker would have closed it with 406).
    UnknownDeliveryTag {
        /// The channel the ack was made on.
        channel: u16,
        /// The tag.
        delivery_tag: u64,
    },
    /// The broker cancelled the consumer (its queue was deleted, or the node
    /// holding it went away). Consume again, perhaps from another queue.
    ConsumerCancelled {
        /// The consumer's tag.
        consumer_tag: String,
    },
    /// The connection was lost while this operation was outstanding, and
    /// automatic recovery is reconnecting. Its outcome is unknown: a publish
    /// awaiting its confirm may or may not have reached its queue, so
    /// publish it again if it must arrive (consumers should expect
    /// duplicates). Channels and consumers carry on once recovered.
    ConnectionLost {
        /// Why the connection was lost.
        cause: Box<Error>,
    },
}

impl Error {
    /// The AMQP reply code behind the error, when there is one.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            Error::ConnectionClosed { code, .. } | Error::ChannelClosed { code, .. } => Some(*code),
            Error::Protocol(e) => Some(e.reply_code().code()),
            Error::ProtocolViolation { code, .. } => Some(code.code()),
            Error::Auth { .. } => Some(ReplyCode::AccessRefused.code()),
            _ => None,
        }
    }

    /// Whether the connection this error came from is gone (as opposed to
    /// one channel, or one call).
    pub fn is_connection_error(&self) -> bool {
        !matches!(
            self,
            Error::ChannelClosed { .. }
                | Error::Timeout { .. }
                | Error::ChannelMaxReached { .. }
                | Error::InvalidArgument(_)
                | Error::UnknownDeliveryTag { .. }
                | Error::ConsumerCancelled { .. }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |code: u16| ReplyCode::from_code(code).map_or("UNKNOWN", ReplyCode::name);
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(e) => write!(f, "malformed input from the broker: {e} (at byte {})", e.offset),
            Error::ProtocolViolation { code, text } => {
                write!(f, "protocol violation by the broker ({} {}): {text}", code.code(), code.name())
            }
            Error::ConnectionClosed { code, text, class_id, method_id } => write!(
                f,
                "connection closed: {code} {}: {text} (class {class_id}, method {method_id})",
                name(*code)
            ),
            Error::ChannelClosed { code, text, class_id, method_id } => write!(
                f,
                "channel closed: {code} {}: {text} (class {class_id}, method {method_id})",
                name(*code)
            ),
            Error::Auth { text } => write!(f, "authentication failed: {text}"),
            Error::UnsupportedProtocol { header } => write!(
                f,
                "the broker does not speak AMQP 0-9-1; it offered {}-{}-{}",
                header[5], header[6], header[7]
            ),
            Error::Timeout { operation, after } => write!(f, "{operation} timed out after {after:?}"),
            Error::MissedHeartbeats { interval } => write!(
                f,
                "no heartbeat from the broker for two intervals of {interval:?}: connection considered dead"
            ),
            Error::Closed => f.write_str("closed by the application"),
            Error::ChannelMaxReached { channel_max } => {
                write!(f, "all {channel_max} channel numbers are in use")
            }
            Error::InvalidArgument(text) => write!(f, "invalid argument: {text}"),
            Error::UnknownDeliveryTag { channel, delivery_tag } => write!(
                f,
                "delivery tag {delivery_tag} is not outstanding on channel {channel}: \
                 acknowledged already, never delivered, or delivered on another channel"
            ),
            Error::ConsumerCancelled { consumer_tag } => {
                write!(f, "consumer {consumer_tag} was cancelled by the broker")
            }
            Error::ConnectionLost { cause } => write!(
                f,
                "connection lost with the operation outstanding (outcome unknown; recovery is \
                 reconnecting): {cause}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(&**e),
            Error::Protocol(e) => Some(e),
            Error::ConnectionLost { cause } => Some(&**cause),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Protocol(e)
    }
}

impl From<crate::protocol::ShortStringTooLong> for Error {
    fn from(e: crate::protocol::ShortStringTooLong) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// `Result` with warren's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
            // Spec 4.2.6.1: a content header's class must match its method's.
            UnknownContentClass { .. } => ReplyCode::FrameError,
            UnknownMethod { .. } => ReplyCode::NotImplemented,
            InvalidPropertyFlags { .. }
            | Truncated
            | LengthOverrun { .. }
            | UnknownFieldType { .. }
            | NestingTooDeep { .. }
            | TrailingBytes { .. } => ReplyCode::SyntaxError,
        }
    }
}

impl DecodeErrorKind {
    /// Whether the error is in the framing itself (the frame could not be
    /// delimited, so nothing after it can be read), as opposed to a
    /// malformed payload in a frame that was consumed whole.
    pub fn is_framing(&self) -> bool {
        use DecodeErrorKind::*;
        matches!(
            self,
            FrameTooLarge { .. }
                | BadFrameEnd { .. }
                | UnknownFrameType { .. }
                | HeartbeatWithPayload { .. }
                | ProtocolHeader { .. }
        )
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
