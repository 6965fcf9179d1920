//! # warren
//!
//! An AMQP 0-9-1 client library for RabbitMQ and any 0-9-1 broker.
//!
//! - [`blocking`]: a synchronous client; [`nonblocking`]: the same as futures
//!   and a `Stream` of deliveries, on any executor. See the README for a
//!   quick start.
//! - [`protocol`]: the frame codec, generated from the spec XML, with a
//!   zero-copy incremental parser over [`bytes::Bytes`]. Usable on its own,
//!   as below.
//!
//! Under both APIs, a sans-IO session core holds every protocol rule and one
//! `mio` event loop per connection does the I/O: its own thread drives it
//! while nobody else does, and a caller about to wait for a result drives it
//! instead.
//!
//! ## Features
//!
//! - `tokio` (off by default): under a tokio runtime with its I/O driver
//!   (`enable_io` or `enable_all`), an async task awaiting a result drives
//!   the connection itself and tokio's reactor watches it, so input wakes
//!   the executor's thread directly instead of going through the
//!   connection's thread first: about one thread wake-up per batch of input
//!   instead of two. Under any other executor, or a runtime without I/O,
//!   nothing changes.
//! - `arbitrary` (off by default): `arbitrary::Arbitrary` for the protocol
//!   types, for fuzzing.
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
// The properties of a message to publish (`BasicProperties`: 14 optional
// fields held inline) make the commands that carry one large; boxing them
// would cost an allocation per publish. (Received messages keep theirs
// encoded, in 40 bytes.)
#![allow(clippy::large_enum_variant)]

pub mod blocking;
pub mod error;
#[cfg(all(fuzzing, feature = "arbitrary"))]
pub mod fuzzing;
pub mod nonblocking;
pub mod options;
pub mod protocol;
mod reactor;
mod session;
pub mod uri;

/// The README's examples run as doc-tests (they need the broker at
/// 127.0.0.1:5672, like the other integration tests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{DecodeError, DecodeErrorKind, Error, Result};
pub use session::{Confirmation, Delivery, RecoveryReport, ReturnedMessage};
pub use uri::{AuthMechanism, ConnectionConfig, RecoveryConfig};

/// The handles are meant to be shared across threads and tasks.
#[cfg(test)]
mod thread_safety {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn every_handle_is_send_and_sync() {
        send_sync::<crate::blocking::Connection>();
        send_sync::<crate::blocking::Channel>();
        send_sync::<crate::blocking::Consumer>();
        send_sync::<crate::blocking::ConsumerSet>();
        send_sync::<crate::blocking::PublishConfirm>();
        send_sync::<crate::nonblocking::Connection>();
        send_sync::<crate::nonblocking::Channel>();
        send_sync::<crate::nonblocking::Consumer>();
        send_sync::<crate::nonblocking::ConsumerSet>();
        send_sync::<crate::nonblocking::Call<crate::Confirmation>>();
        send_sync::<crate::Error>();
    }
}
