//! The sans-IO protocol core: the connection and channel state machines.
//!
//! This module owns every protocol rule above framing: the handshake, tune
//! negotiation, heartbeats, channel lifecycles, RPC ordering, content
//! assembly, consumers, publisher confirms and the close handshakes. It never
//! touches a socket, a thread or a clock: the driver (the reactor, or a test)
//! hands it bytes, commands and the current time, and takes back bytes to
//! write, events and the next deadline.
//!
//! The driver calls, in each turn of its loop:
//! 1. [`Session::handle_bytes`] with what it read (frames are decoded in
//!    place, the incomplete tail stays in the buffer);
//! 2. [`Session::handle_command`] for each user command;
//! 3. [`Session::handle_timeout`] when [`Session::poll_timeout`] has passed;
//! 4. [`Session::poll_event`] until `None`, delivering each event;
//! 5. [`Session::poll_transmit`] to write, then [`Session::transmitted`]
//!    with the count the socket took.
//!
//! `R` is the driver's reply handle (moved in with a command, handed back in
//! the event that completes it) and `C` its consumer handle (cloned into
//! each delivery event), so the core never knows how the facades wait.

mod auth;
mod channel;
mod connection;
mod content;
pub(crate) mod recovery;
pub(crate) mod requests;
pub(crate) mod tags;

#[cfg(test)]
mod tests;

pub(crate) use connection::Session;
pub(crate) use content::PublishProperties;
pub use content::{Delivery, ReturnedMessage};
pub use recovery::RecoveryReport;

use bytes::Bytes;

use crate::error::Error;
use crate::protocol::{BasicConsume, BasicPublish, Method, ShortString};

/// A channel as a handle knows it: its number and which opening of that
/// number it is, so a handle to a closed channel never reaches a later
/// channel that reuses the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelRef {
    pub(crate) id: u16,
    pub(crate) serial: u64,
}

/// Something the application asks of the connection.
#[derive(Debug)]
pub(crate) enum Command<R, C> {
    /// Opens a channel on the lowest free number. Completes with
    /// [`Reply::ChannelOpened`].
    OpenChannel { reply: R },
    /// Sends a synchronous method and completes with the broker's answer
    /// ([`Reply::Method`], or [`Reply::Get`] for basic.get). Methods with
    /// `no-wait` set complete with [`Reply::Sent`] once written.
    Rpc {
        channel: ChannelRef,
        method: Method,
        reply: R,
    },
    /// basic.consume; deliveries then go to `consumer`. Completes with
    /// [`Reply::Method`] carrying consume-ok (and its tag).
    Consume {
        channel: ChannelRef,
        method: BasicConsume,
        consumer: C,
        reply: R,
    },
    /// basic.publish with its content. In confirm mode `confirm`, if any,
    /// completes with [`Reply::Confirmed`].
    Publish {
        channel: ChannelRef,
        method: BasicPublish,
        /// Encoded on the application's thread: a small value to move.
        properties: PublishProperties,
        body: Bytes,
        confirm: Option<R>,
    },
    /// An asynchronous method: basic.ack, basic.nack, basic.reject,
    /// basic.recover-async. Nothing completes.
    Send { channel: ChannelRef, method: Method },
    /// Completes with [`Reply::Confirmed`] once every publish made so far on
    /// the channel is confirmed (`Ack` only if none was nacked).
    WaitForConfirms { channel: ChannelRef, reply: R },
    /// channel.close; completes with [`Reply::Sent`] on close-ok.
    CloseChannel {
        channel: ChannelRef,
        code: u16,
        text: ShortString,
        reply: R,
    },
    /// A synchronous method on channel 0 (connection.update-secret).
    ConnectionRpc { method: Method, reply: R },
    /// connection.close; completes with [`Reply::Sent`] on close-ok.
    Close {
        code: u16,
        text: ShortString,
        reply: R,
    },
}

/// The successful outcome of a command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// The channel is open.
    ChannelOpened(ChannelRef),
    /// The broker's answer to a synchronous method. Boxed: the largest
    /// method is 144 bytes, and every reply (a publisher confirm on the hot
    /// path, say) would be moved at that size.
    Method(Box<Method>),
    /// basic.get's answer: a message with the count left in the queue, or
    /// nothing (basic.get-empty). Boxed: every other reply is smaller.
    Get(Option<Box<(Delivery, u32)>>),
    /// The command is done (written, or acknowledged by close-ok).
    Sent,
    /// A publisher confirm.
    Confirmed(Confirmation),
}

/// The broker's verdict on a published message (in confirm mode).
#[derive(Debug, Clone, PartialEq)]
pub enum Confirmation {
    /// The broker took responsibility for the message.
    Ack,
    /// The broker could not take it (an internal error); publish again.
    Nack,
    /// The message was mandatory and unroutable: it came back, then was acked.
    Returned(Box<ReturnedMessage>),
}

impl Confirmation {
    /// Whether the broker acked the message (even if it was returned).
    pub fn is_ack(&self) -> bool {
        !matches!(self, Confirmation::Nack)
    }
}

/// Something the facades must hear about.
#[derive(Debug)]
pub(crate) enum Event<R, C> {
    /// The handshake finished; the connection is open.
    Connected {
        server_properties: crate::protocol::FieldTable,
    },
    /// A command finished.
    Done {
        reply: R,
        result: Result<Reply, Error>,
    },
    /// A message for a consumer.
    Delivery { consumer: C, delivery: Delivery },
    /// A consumer will get no more deliveries: cancelled by the application
    /// (`Ok`), by the broker, or because its channel or connection closed.
    ConsumerEnded {
        consumer: C,
        reason: Result<(), Error>,
    },
    /// A mandatory message came back (delivered also, when confirms are on,
    /// inside its [`Confirmation::Returned`]).
    Returned {
        channel: u16,
        message: ReturnedMessage,
    },
    /// basic.recover-ok: every delivery tag handed out on the channel before
    /// it is void (the messages come again with new tags, after it).
    Recovered { channel: u16 },
    /// The broker closed a channel (or it failed): all its work is ended.
    ChannelClosed { channel: u16, error: Error },
    /// The broker stopped (or resumed) reading publishes: connection.blocked
    /// (with its reason) and connection.unblocked.
    Blocked(Option<String>),
    /// connection.unblocked.
    Unblocked,
    /// channel.flow from the broker: publishing on the channel is paused
    /// (`false`) or resumed (`true`).
    Flow { channel: u16, active: bool },
    /// The connection is closed; nothing more will happen.
    Closed(Error),
    /// The connection was lost and recovery is on: the session is closed,
    /// [`Session::take_recovery`] holds what to rebuild on a new one, and
    /// [`Session::error`] why it was lost.
    Lost,
    /// A resumed session finished replaying the topology; application
    /// commands can flow again.
    RecoveryDone(RecoveryReport),
}
