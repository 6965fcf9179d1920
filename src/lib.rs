//! # warren
//!
//! An AMQP 0-9-1 client library for RabbitMQ and any 0-9-1 broker.
//!
//! Today warren is its protocol layer: the frame codec, generated from the
//! spec XML, with a zero-copy incremental parser over [`bytes::Bytes`]. The
//! session core, the I/O reactor and the blocking and async client APIs build
//! on it.
//!
//! ```
//! use bytes::BytesMut;
//! use warren::protocol::{BasicAck, Decoded, Frame, FrameDecoder, Method};
//!
//! // Encode a basic.ack on channel 1...
//! let frame = Frame::Method {
//!     channel: 1,
//!     method: Method::BasicAck(BasicAck { delivery_tag: 42, multiple: false }),
//! };
//! let mut wire = BytesMut::new();
//! frame.encode(&mut wire);
//!
//! // ...and decode it back, as the read loop does with bytes off a socket.
//! let mut decoder = FrameDecoder::new();
//! match decoder.decode(&mut wire)? {
//!     Decoded::Frame(decoded) => assert_eq!(decoded, frame),
//!     Decoded::Incomplete { needed } => unreachable!("{needed} bytes short"),
//! }
//! # Ok::<(), warren::DecodeError>(())
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]
// Message properties (14 optional fields held inline) make every enum that
// carries a message large; boxing them would cost an allocation per message,
// which the delivery path avoids.
#![allow(clippy::large_enum_variant)]

pub mod blocking;
pub mod error;
pub mod nonblocking;
pub mod options;
pub mod protocol;
mod reactor;
mod session;
pub mod uri;

pub use error::{DecodeError, DecodeErrorKind, Error, Result};
pub use session::{Confirmation, Delivery, ReturnedMessage};
pub use uri::{AuthMechanism, ConnectionConfig};
