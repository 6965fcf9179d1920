//! The connection state machine: handshake (start, secure, tune, open),
//! heartbeats, the channel table, connection-level methods and the close
//! handshake. Frames for channels go to their [`Channel`].
//!
//! Once closed, a session stays closed with the same error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::auth;
use super::channel::{Channel, Fault, Output, Waiter};
use super::recovery::{self, Replay, Step, Topology};
use super::{ChannelRef, Command, Event, Reply};
use crate::error::Error;
use crate::protocol::{
    ConnectionClose, ConnectionCloseOk, ConnectionOpen, ConnectionSecureOk, ConnectionStartOk,
    ConnectionTuneOk, Decoded, FieldTable, Frame, FrameDecoder, LongString, Method, ReplyCode,
    ShortString, FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use crate::uri::ConnectionConfig;

/// How long an orderly close waits for the broker's close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// frame_max used when both sides say "no limit": memory stays bounded.
const UNLIMITED_FRAME_MAX: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitStart,
    /// start-ok sent: secure or tune comes next.
    AwaitTune,
    AwaitOpenOk,
    Open,
    /// connection.close sent; waiting for close-ok until the deadline.
    Closing,
    Closed,
}

/// The values agreed in connection.tune / tune-ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuning {
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) heartbeat: u16,
}

/// Negotiates one limit: zero means "no limit" from either side, so the
/// other side's value wins; otherwise the lower one.
fn negotiate<T: Ord + Default + Copy>(client: T, server: T) -> T {
    if client == T::default() {
        server
    } else if server == T::default() {
        client
    } else {
        client.min(server)
    }
}

/// One AMQP connection's protocol state. See the module docs of
/// [`crate::session`] for how a driver calls it.
pub(crate) struct Session<R, C> {
    config: ConnectionConfig,
    state: State,
    now: Instant,
    decoder: FrameDecoder,
    out: Output<R, C>,
    channels: Vec<Option<Box<Channel<R, C>>>>,
    tuning: Option<Tuning>,
    last_received: Instant,
    last_sent: Instant,
    handshake_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    /// The application's close request, answered on close-ok.
    close_reply: Option<R>,
    /// An update-secret waiting for its answer.
    connection_rpc: Option<R>,
    /// Serial of the last channel opened (see [`ChannelRef`]).
    next_serial: u64,
    error: Option<Error>,
    /// connection.start's server-properties, handed over when open.
    server_properties: FieldTable,
    /// The input broke framing: the rest of the stream is discarded.
    unreadable: bool,
    /// A recovered connection's topology, replayed once the handshake is done.
    resume: Option<Topology<C>>,
    /// The replay in progress, and the step waiting for its answer.
    replay: Option<Replay<C>>,
    replay_step: Option<ReplayStep<C>>,
    /// The connection was lost and can be recovered: what to rebuild.
    lost: Option<Topology<C>>,
    /// The handshake finished once (only an opened connection recovers).
    opened: bool,
}

/// A replay step on the wire: what it was, to report or follow up its answer.
struct ReplayStep<C> {
    method: Method,
    consumer: Option<C>,
    /// A server-named queue's old name.
    renames: Option<ShortString>,
}

impl<R, C: Clone> Session<R, C> {
    /// A session about to connect: the protocol header is queued to send.
    pub(crate) fn new(config: ConnectionConfig, now: Instant) -> Self {
        let mut out = Output {
            bytes: BytesMut::with_capacity(64 * 1024),
            events: VecDeque::new(),
            frame_max: FRAME_MIN_SIZE,
            topology: config.recovery.is_some().then(Topology::default),
            replayed: VecDeque::new(),
        };
        out.bytes.extend_from_slice(&PROTOCOL_HEADER);
        Session {
            handshake_deadline: Some(now + config.connection_timeout),
            config,
            state: State::AwaitStart,
            now,
            decoder: FrameDecoder::new(),
            out,
            channels: Vec::new(),
            tuning: None,
            last_received: now,
            last_sent: now,
            close_deadline: None,
            close_reply: None,
            connection_rpc: None,
            next_serial: 0,
            error: None,
            server_properties: FieldTable::new(),
            unreadable: false,
            resume: None,
            replay: None,
            replay_step: None,
            lost: None,
            opened: false,
        }
    }

    /// A session that reconnects a lost connection: once the handshake is
    /// done it replays `topology` (channels, their modes, exchanges, queues,
    /// bindings, consumers), then reports [`Event::RecoveryDone`]. Commands
    /// must wait until then.
    pub(crate) fn resume(config: ConnectionConfig, now: Instant, topology: Topology<C>) -> Self {
        let mut session = Session::new(config, now);
        session.out.topology = None;
        session.next_serial = topology.next_serial;
        session.resume = Some(topology);
        session
    }

    // ---- inputs -------------------------------------------------------

    /// Takes bytes read from the socket: every complete frame in `buf` is
    /// handled and removed; an incomplete tail stays for the next read.
    pub(crate) fn handle_bytes(&mut self, buf: &mut BytesMut, now: Instant) {
        self.now = now;
        self.last_received = now;
        while self.state != State::Closed && !self.unreadable {
            match self.decoder.decode(buf) {
                Ok(Decoded::Frame(frame)) => {
                    if let Err(fault) = self.handle_frame(frame) {
                        self.fault(fault.code, fault.text, None);
                    }
                    self.drive_replay();
                }
                Ok(Decoded::Incomplete { .. }) => return,
                Err(err) => {
                    // After a framing error (the frame was not consumed),
                    // nothing can be framed again: from here on, input is
                    // discarded, not buffered. A malformed payload in a
                    // well-framed frame was consumed: close-ok can still come.
                    if err.kind.is_framing() {
                        self.unreadable = true;
                        buf.clear();
                    }
                    if let crate::DecodeErrorKind::ProtocolHeader { header } = err.kind {
                        return self.closed(Error::UnsupportedProtocol { header });
                    }
                    let code = err.reply_code();
                    let text = err.to_string();
                    return self.fault(code, text, Some(Error::Protocol(err)));
                }
            }
        }
        buf.clear();
    }

    /// The socket reached end of file (or failed): the connection is gone.
    pub(crate) fn handle_eof(&mut self, error: Option<std::io::Error>, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        if self.state == State::Closing && error.is_none() {
            // We asked to close; the broker hung up instead of answering.
            let e = self.error.clone().unwrap_or(Error::Closed);
            return self.closed(e);
        }
        let error = match (self.state, error) {
            (State::AwaitTune, None) => Error::Auth {
                text:
                    "the broker closed the connection after start-ok: it refused the credentials \
                       (or the mechanism)"
                        .into(),
            },
            (_, Some(e)) => Error::from(e),
            (_, None) => Error::from(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the broker closed the socket",
            )),
        };
        self.closed(error);
    }

    /// Takes a command from the application.
    pub(crate) fn handle_command(&mut self, command: Command<R, C>, now: Instant) {
        self.now = now;
        if let Some(error) = self.unusable() {
            return self.refuse(command, error);
        }
        match command {
            Command::OpenChannel { reply } => self.open_channel(reply),
            Command::ConnectionRpc { method, reply } => {
                if !matches!(method, Method::ConnectionUpdateSecret(_))
                    || self.connection_rpc.is_some()
                {
                    return self.out.done(
                        reply,
                        Err(Error::InvalidArgument(format!(
                            "{} cannot be sent on channel 0 now",
                            method.name()
                        ))),
                    );
                }
                self.send_method(0, method);
                self.connection_rpc = Some(reply);
            }
            Command::Rpc {
                channel,
                method,
                reply,
            } => match channel_in(&mut self.channels, channel) {
                Some(ch) => ch.rpc(method, Waiter::App(reply), None, &mut self.out),
                None => self.out.done(reply, Err(no_channel(channel))),
            },
            Command::Consume {
                channel,
                method,
                consumer,
                reply,
            } => match channel_in(&mut self.channels, channel) {
                Some(ch) => ch.rpc(
                    Method::BasicConsume(method),
                    Waiter::App(reply),
                    Some(consumer),
                    &mut self.out,
                ),
                None => self.out.done(reply, Err(no_channel(channel))),
            },
            Command::Publish {
                channel,
                method,
                properties,
                body,
                confirm,
            } => match channel_in(&mut self.channels, channel) {
                Some(ch) => ch.publish(method, properties, body, confirm, &mut self.out),
                None => {
                    if let Some(reply) = confirm {
                        self.out.done(reply, Err(no_channel(channel)));
                    }
                }
            },
            Command::Send { channel, method } => {
                if let Some(ch) = channel_in(&mut self.channels, channel) {
                    ch.send(method, &mut self.out);
                }
            }
            Command::WaitForConfirms { channel, reply } => {
                match channel_in(&mut self.channels, channel) {
                    Some(ch) => ch.wait_for_confirms(reply, &mut self.out),
                    None => self.out.done(reply, Err(no_channel(channel))),
                }
            }
            Command::CloseChannel {
                channel,
                code,
                text,
                reply,
            } => match channel_in(&mut self.channels, channel) {
                Some(ch) => ch.close(code, text, Waiter::App(reply), &mut self.out),
                None => self.out.done(reply, Ok(Reply::Sent)),
            },
            Command::Close { code, text, reply } => {
                self.close_reply = Some(reply);
                self.start_close(code, text.to_string(), Error::Closed);
            }
        }
        self.note_sent();
    }

    /// Advances time: sends a heartbeat when one is due, declares the peer
    /// dead after two silent intervals, and enforces the handshake and
    /// close timeouts.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        if let Some(deadline) = self.close_deadline {
            if now >= deadline {
                let e = self.error.clone().unwrap_or(Error::Closed);
                return self.closed(e);
            }
        }
        if let Some(deadline) = self.handshake_deadline {
            if now >= deadline {
                return self.closed(Error::Timeout {
                    operation: "connection handshake",
                    after: self.config.connection_timeout,
                });
            }
        }
        if let Some(interval) = self.heartbeat() {
            if now >= self.last_received + 2 * interval {
                return self.closed(Error::MissedHeartbeats { interval });
            }
            if now >= self.last_sent + interval / 2 && self.out.bytes.is_empty() {
                Frame::Heartbeat { channel: 0 }.encode(&mut self.out.bytes);
                self.last_sent = now;
            }
        }
    }

    // ---- outputs ------------------------------------------------------

    /// Bytes waiting to be written, if any.
    pub(crate) fn poll_transmit(&self) -> Option<&[u8]> {
        (!self.out.bytes.is_empty()).then_some(&self.out.bytes[..])
    }

    /// The socket took `n` bytes of [`Session::poll_transmit`]'s slice.
    pub(crate) fn transmitted(&mut self, n: usize) {
        self.out.bytes.advance(n);
        // After a framing error the broker's close-ok could never be read:
        // the connection ends once our close is out.
        if self.unreadable && self.state == State::Closing && self.out.bytes.is_empty() {
            let e = self.error.clone().unwrap_or(Error::Closed);
            self.closed(e);
        }
    }

    /// Bytes waiting to be written: the driver holds publishers past a
    /// high-water mark.
    pub(crate) fn pending_output(&self) -> usize {
        self.out.bytes.len()
    }

    /// The next event for the facades.
    pub(crate) fn poll_event(&mut self) -> Option<Event<R, C>> {
        self.out.events.pop_front()
    }

    /// The next event, if there is one and `wanted` takes it (a driver
    /// gathering a run of deliveries for one consumer).
    pub(crate) fn poll_event_if(
        &mut self,
        wanted: impl FnOnce(&Event<R, C>) -> bool,
    ) -> Option<Event<R, C>> {
        if self.out.events.front().is_some_and(wanted) {
            self.out.events.pop_front()
        } else {
            None
        }
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut next = self
            .close_deadline
            .into_iter()
            .chain(self.handshake_deadline)
            .min();
        if let Some(interval) = self.heartbeat() {
            let beat = self.last_sent + interval / 2;
            let dead = self.last_received + 2 * interval;
            next = Some(next.map_or(beat.min(dead), |n| n.min(beat).min(dead)));
        }
        next
    }

    /// Whether at least `n` publishes await their confirm, over all
    /// channels.
    pub(crate) fn confirms_outstanding_at_least(&self, n: usize) -> bool {
        let mut outstanding = 0;
        for channel in self.channels.iter().flatten() {
            outstanding += channel.confirms_outstanding();
            if outstanding >= n {
                return true;
            }
        }
        false
    }

    /// Whether the connection is closed for good (flush, then drop the socket).
    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The tuned limits, once tune is done.
    pub(crate) fn tuning(&self) -> Option<Tuning> {
        self.tuning
    }

    /// The error the connection closed with, once closed.
    pub(crate) fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    // ---- internals ----------------------------------------------------

    fn heartbeat(&self) -> Option<Duration> {
        match self.tuning {
            Some(t)
                if t.heartbeat > 0 && matches!(self.state, State::AwaitOpenOk | State::Open) =>
            {
                Some(Duration::from_secs(u64::from(t.heartbeat)))
            }
            _ => None,
        }
    }

    fn note_sent(&mut self) {
        if !self.out.bytes.is_empty() {
            self.last_sent = self.now;
        }
    }

    fn send_method(&mut self, channel: u16, method: Method) {
        self.out.frame(channel, method);
        self.last_sent = self.now;
    }

    fn unusable(&self) -> Option<Error> {
        match self.state {
            State::Open => None,
            State::Closing | State::Closed => Some(self.error.clone().unwrap_or(Error::Closed)),
            _ => Some(Error::InvalidArgument(
                "the connection is not open yet".into(),
            )),
        }
    }

    /// Fails a command that cannot run.
    fn refuse(&mut self, command: Command<R, C>, error: Error) {
        match command {
            Command::OpenChannel { reply }
            | Command::Rpc { reply, .. }
            | Command::ConnectionRpc { reply, .. }
            | Command::WaitForConfirms { reply, .. }
            | Command::CloseChannel { reply, .. } => self.out.done(reply, Err(error)),
            Command::Close { reply, .. } => {
                // Closing a closed connection is not an error.
                let result = if self.state == State::Closed || self.state == State::Closing {
                    Ok(Reply::Sent)
                } else {
                    Err(error)
                };
                self.out.done(reply, result)
            }
            Command::Consume {
                reply, consumer, ..
            } => {
                self.out.events.push_back(Event::ConsumerEnded {
                    consumer,
                    reason: Err(error.clone()),
                });
                self.out.done(reply, Err(error));
            }
            Command::Publish { confirm, .. } => {
                if let Some(reply) = confirm {
                    self.out.done(reply, Err(error));
                }
            }
            Command::Send { .. } => {}
        }
    }

    fn open_channel(&mut self, reply: R) {
        let channel_max = self.tuning.map_or(0, |t| t.channel_max);
        let free = (1..=channel_max).find(|&id| {
            self.channels
                .get(usize::from(id))
                .is_none_or(Option::is_none)
        });
        let Some(id) = free else {
            return self
                .out
                .done(reply, Err(Error::ChannelMaxReached { channel_max }));
        };
        let index = usize::from(id);
        if self.channels.len() <= index {
            self.channels.resize_with(index + 1, || None);
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        let channel = Channel::opening(id, serial, Waiter::App(reply), 0, &mut self.out);
        self.channels[index] = Some(Box::new(channel));
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), Fault> {
        let channel = frame.channel();
        if channel == 0 {
            return match frame {
                Frame::Method { method, .. } => self.handle_connection_method(method),
                Frame::Heartbeat { .. } => Ok(()),
                _ => Err(Fault::new(
                    ReplyCode::ChannelError,
                    "content frame on channel 0",
                )),
            };
        }
        if self.state == State::Closing {
            return Ok(()); // after connection.close, only close and close-ok count
        }
        if let Frame::Method { method, .. } = &frame {
            if method.class_id() == crate::protocol::CLASS_CONNECTION {
                return Err(Fault::new(
                    ReplyCode::CommandInvalid,
                    format!("{} on channel {channel}", method.name()),
                ));
            }
        }
        let Some(ch) = self
            .channels
            .get_mut(usize::from(channel))
            .and_then(Option::as_deref_mut)
        else {
            return Err(Fault::new(
                ReplyCode::ChannelError,
                format!("frame on channel {channel}, which is not open"),
            ));
        };
        if ch.handle_frame(frame, &mut self.out)? {
            self.channels[usize::from(channel)] = None;
        }
        self.note_sent();
        Ok(())
    }

    fn handle_connection_method(&mut self, method: Method) -> Result<(), Fault> {
        if self.state == State::Closing {
            match method {
                Method::ConnectionCloseOk(_) => {
                    let e = self.error.clone().unwrap_or(Error::Closed);
                    self.closed(e);
                }
                Method::ConnectionClose(_) => {
                    self.send_method(0, Method::ConnectionCloseOk(ConnectionCloseOk));
                    let e = self.error.clone().unwrap_or(Error::Closed);
                    self.closed(e);
                }
                _ => {}
            }
            return Ok(());
        }
        match (self.state, method) {
            (_, Method::ConnectionClose(m)) => {
                self.send_method(0, Method::ConnectionCloseOk(ConnectionCloseOk));
                let error = if m.reply_code == ReplyCode::AccessRefused.code()
                    && self.state != State::Open
                {
                    Error::Auth {
                        text: m.reply_text.to_string(),
                    }
                } else {
                    Error::ConnectionClosed {
                        code: m.reply_code,
                        text: m.reply_text.to_string(),
                        class_id: m.class_id,
                        method_id: m.method_id,
                    }
                };
                self.closed(error);
                Ok(())
            }
            (State::AwaitStart, Method::ConnectionStart(m)) => {
                if (m.version_major, m.version_minor) != (0, 9) {
                    return Err(Fault::new(
                        ReplyCode::CommandInvalid,
                        format!(
                            "the broker offers AMQP {}-{}",
                            m.version_major, m.version_minor
                        ),
                    ));
                }
                let mechanism = self.config.auth_mechanism;
                if !auth::server_offers(&m.mechanisms, mechanism) {
                    self.closed(Error::Auth {
                        text: format!(
                            "the broker does not offer the {} mechanism (it offers {})",
                            mechanism.name(),
                            m.mechanisms
                        ),
                    });
                    return Ok(());
                }
                self.server_properties = m.server_properties;
                let response =
                    auth::initial_response(mechanism, &self.config.username, &self.config.password);
                let start_ok = ConnectionStartOk {
                    client_properties: self.client_properties(),
                    mechanism: ShortString::from_static(mechanism.name()),
                    response,
                    locale: short(&self.config.locale),
                };
                self.send_method(0, Method::ConnectionStartOk(start_ok));
                self.state = State::AwaitTune;
                Ok(())
            }
            (State::AwaitTune, Method::ConnectionSecure(_)) => {
                // PLAIN, AMQPLAIN and EXTERNAL have no challenge: answer with
                // the same response.
                let response = auth::initial_response(
                    self.config.auth_mechanism,
                    &self.config.username,
                    &self.config.password,
                );
                self.send_method(
                    0,
                    Method::ConnectionSecureOk(ConnectionSecureOk { response }),
                );
                Ok(())
            }
            (State::AwaitTune, Method::ConnectionTune(m)) => {
                let frame_max = match negotiate(self.config.frame_max, m.frame_max) {
                    0 => UNLIMITED_FRAME_MAX,
                    n => n,
                };
                if frame_max < FRAME_MIN_SIZE {
                    return Err(Fault::new(
                        ReplyCode::CommandInvalid,
                        format!("the broker tuned frame_max to {frame_max}, below the minimum of {FRAME_MIN_SIZE}"),
                    ));
                }
                let channel_max = match negotiate(self.config.channel_max, m.channel_max) {
                    0 => u16::MAX,
                    n => n,
                };
                let heartbeat = negotiate(self.config.heartbeat, m.heartbeat);
                let tuning = Tuning {
                    channel_max,
                    frame_max,
                    heartbeat,
                };
                self.tuning = Some(tuning);
                self.decoder.set_frame_max(frame_max);
                self.out.frame_max = frame_max;
                self.send_method(
                    0,
                    Method::ConnectionTuneOk(ConnectionTuneOk {
                        channel_max,
                        frame_max,
                        heartbeat,
                    }),
                );
                self.send_method(
                    0,
                    Method::ConnectionOpen(ConnectionOpen {
                        virtual_host: short(&self.config.vhost),
                    }),
                );
                self.state = State::AwaitOpenOk;
                Ok(())
            }
            (State::AwaitOpenOk, Method::ConnectionOpenOk(_)) => {
                self.state = State::Open;
                self.opened = true;
                self.handshake_deadline = None;
                self.out.events.push_back(Event::Connected {
                    server_properties: std::mem::take(&mut self.server_properties),
                });
                if let Some(topology) = self.resume.take() {
                    self.replay = Some(Replay::plan(&topology));
                    self.out.topology = Some(topology);
                    self.next_replay_step();
                }
                Ok(())
            }
            (State::Open, Method::ConnectionBlocked(m)) => {
                self.out
                    .events
                    .push_back(Event::Blocked(Some(m.reason.to_string())));
                Ok(())
            }
            (State::Open, Method::ConnectionUnblocked(_)) => {
                self.out.events.push_back(Event::Unblocked);
                Ok(())
            }
            (State::Open, Method::ConnectionUpdateSecretOk(m)) => {
                match self.connection_rpc.take() {
                    Some(reply) => {
                        self.out.done(
                            reply,
                            Ok(Reply::Method(Box::new(Method::ConnectionUpdateSecretOk(m)))),
                        );
                        Ok(())
                    }
                    None => Err(Fault::new(
                        ReplyCode::CommandInvalid,
                        "unexpected connection.update-secret-ok",
                    )),
                }
            }
            (_, method) => Err(Fault::new(
                ReplyCode::CommandInvalid,
                format!("unexpected {} on channel 0", method.name()),
            )),
        }
    }

    fn client_properties(&self) -> FieldTable {
        let mut capabilities = FieldTable::new();
        for capability in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities
                .insert(ShortString::from_static(capability), true)
                .expect("short literal");
        }
        let mut props = FieldTable::new();
        let text = |s: &str| LongString::from(s);
        let entries = [
            ("product", text("warren")),
            ("version", text(env!("CARGO_PKG_VERSION"))),
            ("platform", text("Rust")),
            ("information", text("AMQP 0-9-1 client for Rust")),
        ];
        for (key, value) in entries {
            props
                .insert(ShortString::from_static(key), value)
                .expect("short literal");
        }
        if let Some(name) = &self.config.connection_name {
            props
                .insert(ShortString::from_static("connection_name"), text(name))
                .expect("short literal");
        }
        props
            .insert(ShortString::from_static("capabilities"), capabilities)
            .expect("short literal");
        props
    }

    /// A protocol rule was broken: close the connection with `code`.
    fn fault(&mut self, code: ReplyCode, text: String, error: Option<Error>) {
        let error = error.unwrap_or_else(|| Error::ProtocolViolation {
            code,
            text: text.clone(),
        });
        if self.state == State::Closing || self.state == State::Closed {
            return;
        }
        self.start_close(code.code(), text, error);
    }

    /// Sends connection.close (once) and fails all work with `error`.
    fn start_close(&mut self, code: u16, text: String, error: Error) {
        match self.state {
            State::Closing | State::Closed => return,
            State::AwaitStart => return self.closed(error),
            _ => {}
        }
        let mut text = text;
        if text.len() > 255 {
            let mut cut = 255;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.send_method(
            0,
            Method::ConnectionClose(ConnectionClose {
                reply_code: code,
                reply_text: ShortString::try_from(text).unwrap_or_default(),
                class_id: 0,
                method_id: 0,
            }),
        );
        self.state = State::Closing;
        self.close_deadline = Some(self.now + CLOSE_TIMEOUT);
        self.handshake_deadline = None;
        self.fail_everything(&error);
        self.error = Some(error);
    }

    /// The connection is over: everything pending fails with `error`.
    fn closed(&mut self, error: Error) {
        if self.state == State::Closed {
            return;
        }
        let error = self.error.clone().unwrap_or(error);
        let recoverable = (self.opened || self.resume.is_some())
            && self.state != State::Closing
            && !matches!(error, Error::Closed);
        if recoverable {
            // Lost, not closed by either side on purpose: recover if asked to.
            if let Some(topology) = self.out.topology.take().or_else(|| self.resume.take()) {
                return self.lost(error, topology);
            }
        }
        self.state = State::Closed;
        self.close_deadline = None;
        self.handshake_deadline = None;
        self.error = Some(error.clone());
        // Handles learn the connection is closed before any call they wait
        // on completes, so what they see next is consistent.
        self.out.events.push_back(Event::Closed(error.clone()));
        self.fail_everything(&error);
        // Consumers recovery held but had not restarted yet end too.
        let recorded = self.out.topology.take().or_else(|| self.resume.take());
        for consumer in recorded.into_iter().flat_map(Topology::into_consumers) {
            self.out.events.push_back(Event::ConsumerEnded {
                consumer,
                reason: Err(error.clone()),
            });
        }
        if let Some(reply) = self.close_reply.take() {
            let result = if matches!(error, Error::Closed) {
                Ok(Reply::Sent)
            } else {
                Err(error)
            };
            self.out.done(reply, result);
        }
    }

    /// The connection was lost and recovery will rebuild it: calls in
    /// progress fail with [`Error::ConnectionLost`] (their outcome is
    /// unknown), while channels and consumers are kept in `topology` for
    /// the next session to reopen.
    fn lost(&mut self, error: Error, mut topology: Topology<C>) {
        self.state = State::Closed;
        self.close_deadline = None;
        self.handshake_deadline = None;
        self.error = Some(error.clone());
        self.out.events.push_back(Event::Lost);
        let lost = Error::ConnectionLost {
            cause: Box::new(error),
        };
        if let Some(reply) = self.connection_rpc.take() {
            self.out.done(reply, Err(lost.clone()));
        }
        for slot in &mut self.channels {
            if let Some(mut ch) = slot.take() {
                topology.set_last_delivery_tag(ch.id, ch.last_delivery_tag);
                ch.connection_recovering(&lost, &topology, &mut self.out);
            }
        }
        topology.next_serial = topology.next_serial.max(self.next_serial);
        self.replay = None;
        self.replay_step = None;
        self.out.replayed.clear();
        self.lost = Some(topology);
    }

    /// Hands each replay answer to the replay, which sends the next step.
    fn drive_replay(&mut self) {
        while let Some((channel, result)) = self.out.replayed.pop_front() {
            self.replay_answered(channel, result);
        }
    }

    fn replay_answered(&mut self, channel: u16, result: Result<Reply, Error>) {
        let (Some(replay), Some(step)) = (&mut self.replay, self.replay_step.take()) else {
            return;
        };
        let topology = self.out.topology.get_or_insert_with(Topology::default);
        match result {
            Ok(Reply::Method(method)) => {
                if let (Method::QueueDeclareOk(ok), Some(old)) = (&*method, &step.renames) {
                    replay.renamed(old, &ok.queue, topology);
                }
            }
            Ok(_) => {}
            Err(error) => {
                if channel == replay.own_channel && matches!(step.method, Method::ChannelClose(_)) {
                    // Closing our own channel failed: nothing is lost.
                } else {
                    recovery::forget(topology, channel, &step.method);
                    if let Some(consumer) = step.consumer {
                        self.out.events.push_back(Event::ConsumerEnded {
                            consumer,
                            reason: Err(error.clone()),
                        });
                    }
                    replay.failed(recovery::describe(&step.method), error);
                }
            }
        }
        self.next_replay_step();
    }

    /// Sends the next replay step, or reports the replay done.
    fn next_replay_step(&mut self) {
        loop {
            let Some(replay) = &mut self.replay else {
                return;
            };
            let Some(step) = replay.next_step() else {
                let report = std::mem::take(&mut replay.report);
                self.replay = None;
                self.out.events.push_back(Event::RecoveryDone(report));
                return;
            };
            let own_channel = replay.own_channel;
            match step {
                Step::Open {
                    channel,
                    serial,
                    last_delivery_tag,
                } => {
                    let index = usize::from(channel);
                    if self.channels.len() <= index {
                        self.channels.resize_with(index + 1, || None);
                    }
                    let opening = Channel::opening(
                        channel,
                        serial,
                        Waiter::Replay,
                        last_delivery_tag,
                        &mut self.out,
                    );
                    self.channels[index] = Some(Box::new(opening));
                    self.replay_step = Some(ReplayStep {
                        method: recovery::channel_open(),
                        consumer: None,
                        renames: None,
                    });
                }
                Step::Rpc {
                    channel,
                    method,
                    consumer,
                    renames,
                } => {
                    let open = self
                        .channels
                        .get_mut(usize::from(channel))
                        .and_then(Option::as_deref_mut);
                    let Some(ch) = open else {
                        let step = Step::Rpc {
                            channel,
                            method,
                            consumer,
                            renames,
                        };
                        self.replay_on_missing_channel(step, own_channel);
                        continue;
                    };
                    ch.rpc(
                        method.clone(),
                        Waiter::Replay,
                        consumer.clone(),
                        &mut self.out,
                    );
                    self.replay_step = Some(ReplayStep {
                        method,
                        consumer,
                        renames,
                    });
                }
                Step::Close { channel } => {
                    let open = self
                        .channels
                        .get_mut(usize::from(channel))
                        .and_then(Option::as_deref_mut);
                    let Some(ch) = open else { continue };
                    ch.close(
                        200,
                        ShortString::from_static("recovered"),
                        Waiter::Replay,
                        &mut self.out,
                    );
                    self.replay_step = Some(ReplayStep {
                        method: Method::ChannelClose(Default::default()),
                        consumer: None,
                        renames: None,
                    });
                }
            }
            self.note_sent();
            // An answer may already be in (a step refused at once).
            if self.out.replayed.is_empty() {
                return;
            }
            let (channel, result) = self.out.replayed.pop_front().expect("checked above");
            return self.replay_answered(channel, result);
        }
    }

    /// A step for a channel that is gone: the replay's own channel is
    /// reopened for it; a step on an application channel that failed is
    /// dropped (its consumer ends).
    fn replay_on_missing_channel(&mut self, step: Step<C>, own_channel: u16) {
        let Some(replay) = &mut self.replay else {
            return;
        };
        let Step::Rpc {
            channel,
            method,
            consumer,
            ..
        } = &step
        else {
            return;
        };
        if *channel == own_channel {
            replay.push_front(step);
            replay.push_front(Step::Open {
                channel: own_channel,
                serial: 0,
                last_delivery_tag: 0,
            });
            return;
        }
        let error = Error::ChannelClosed {
            code: 0,
            text: format!("channel {channel} could not be reopened by recovery"),
            class_id: 0,
            method_id: 0,
        };
        if let Some(topology) = &mut self.out.topology {
            recovery::forget(topology, *channel, method);
        }
        if let Some(consumer) = consumer {
            self.out.events.push_back(Event::ConsumerEnded {
                consumer: consumer.clone(),
                reason: Err(error.clone()),
            });
        }
        replay.failed(recovery::describe(method), error);
    }

    /// Whether the connection is open (handshake done, not closing).
    pub(crate) fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Ends the session at once, without a close handshake or recovery
    /// (the application closed the connection while a recovery was still
    /// connecting).
    pub(crate) fn abort(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closing;
            self.closed(Error::Closed);
        }
    }

    /// The topology to rebuild, once the connection was lost with recovery on.
    pub(crate) fn take_recovery(&mut self) -> Option<Topology<C>> {
        self.lost.take()
    }

    fn fail_everything(&mut self, error: &Error) {
        if let Some(reply) = self.connection_rpc.take() {
            self.out.done(reply, Err(error.clone()));
        }
        for slot in &mut self.channels {
            if let Some(mut ch) = slot.take() {
                ch.connection_lost(error, &mut self.out);
            }
        }
    }
}

/// The channel a handle refers to, if it is still open.
fn channel_in<R, C>(
    channels: &mut [Option<Box<Channel<R, C>>>],
    r: ChannelRef,
) -> Option<&mut Channel<R, C>> {
    channels
        .get_mut(usize::from(r.id))?
        .as_deref_mut()
        .filter(|ch| ch.serial == r.serial)
}

/// The error for a handle whose channel is gone (closed by the application
/// or the broker; the handle's own state says which).
fn no_channel(_channel: ChannelRef) -> Error {
    Error::Closed
}

/// A configuration string as a short string, cut to 255 bytes.
fn short(s: &str) -> ShortString {
    let mut end = s.len().min(ShortString::MAX_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_from(&s[..end]).unwrap_or_default()
}
