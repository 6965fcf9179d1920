//! Entry points for the stateful fuzz targets (built only under
//! `cfg(fuzzing)`, with the `arbitrary` feature): the sans-IO session fed
//! arbitrary server bytes, or an arbitrary sequence of user operations and
//! server frames. Each checks the invariants every input must keep: no
//! panic, bounded buffers, typed errors, and a closed session stays closed.

use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Result as ArbitraryResult, Unstructured};
use bytes::{Bytes, BytesMut};

use crate::protocol::*;
use crate::session::{ChannelRef, Command, Event, Reply, Session};
use crate::uri::ConnectionConfig;

type FuzzSession = Session<u32, u32>;

/// No input may make the session hold more than this much output: what it
/// writes is bounded by what it is asked, and this harness asks little.
const MAX_OUTPUT: usize = 64 << 20;

fn fuzz_config() -> ConnectionConfig {
    ConnectionConfig {
        heartbeat: 10,
        ..ConnectionConfig::default()
    }
}

fn handshake(now: Instant) -> FuzzSession {
    complete_handshake(Session::new(fuzz_config(), now), now)
}

/// Plays the broker's side of a handshake to `session`.
fn complete_handshake(mut session: FuzzSession, now: Instant) -> FuzzSession {
    let mut script = BytesMut::new();
    for method in [
        Method::ConnectionStart(ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::new(),
            mechanisms: LongString::from("PLAIN"),
            locales: LongString::from("en_US"),
        }),
        Method::ConnectionTune(ConnectionTune {
            channel_max: 8,
            frame_max: 4096,
            heartbeat: 10,
        }),
        Method::ConnectionOpenOk(ConnectionOpenOk),
    ] {
        Frame::Method { channel: 0, method }.encode(&mut script);
    }
    session.handle_bytes(&mut script, now);
    drain(&mut session);
    session
}

/// Takes everything the session produced, checking the invariants.
fn drain(session: &mut FuzzSession) {
    assert!(session.pending_output() <= MAX_OUTPUT, "unbounded output");
    while let Some(bytes) = session.poll_transmit() {
        let n = bytes.len();
        session.transmitted(n);
    }
    let mut closed = 0;
    while let Some(event) = session.poll_event() {
        match event {
            Event::Closed(_) => closed += 1,
            Event::Delivery { delivery, .. } => check_properties(&delivery.properties),
            _ => {}
        }
    }
    assert!(closed <= 1, "Closed reported {closed} times");
    if session.is_closed() {
        assert!(session.error().is_some(), "closed without an error");
    }
}

/// Received properties, checked when their frame was parsed, must read the
/// same through each getter (which skips the properties before its own) as
/// through the full decode, and re-encode into the same bytes.
pub fn check_properties(encoded: &EncodedBasicProperties) {
    let all = encoded.to_properties();
    assert_eq!(encoded.content_type(), all.content_type);
    assert_eq!(encoded.content_encoding(), all.content_encoding);
    assert_eq!(encoded.headers(), all.headers);
    assert_eq!(encoded.delivery_mode(), all.delivery_mode);
    assert_eq!(encoded.priority(), all.priority);
    assert_eq!(encoded.correlation_id(), all.correlation_id);
    assert_eq!(encoded.reply_to(), all.reply_to);
    assert_eq!(encoded.expiration(), all.expiration);
    assert_eq!(encoded.message_id(), all.message_id);
    assert_eq!(encoded.timestamp(), all.timestamp);
    assert_eq!(encoded.kind(), all.kind);
    assert_eq!(encoded.user_id(), all.user_id);
    assert_eq!(encoded.app_id(), all.app_id);
    assert_eq!(encoded.reserved(), all.reserved);
    assert_eq!(encoded.flags(), all.flags());
    assert_eq!(encoded.encoded_len(), all.encoded_len());
    assert_eq!(&EncodedBasicProperties::from(&all), encoded);
}

/// Arbitrary server bytes, cut into chunks the input chooses, after a
/// valid handshake.
pub fn session_bytes(data: &[u8]) {
    let mut now = Instant::now();
    let mut session = handshake(now);
    let mut u = Unstructured::new(data);
    let mut buf = BytesMut::new();
    while !u.is_empty() {
        let Ok(len) = u.int_in_range(1..=512usize) else {
            break;
        };
        let Ok(chunk) = u.bytes(len.min(u.len())) else {
            break;
        };
        buf.extend_from_slice(chunk);
        let was_closed = session.is_closed();
        session.handle_bytes(&mut buf, now);
        assert!(
            buf.len() <= 4096,
            "more than one frame_max buffered: {}",
            buf.len()
        );
        if was_closed {
            assert!(session.is_closed(), "a closed session reopened");
        }
        now += Duration::from_millis(u64::from(u.arbitrary::<u8>().unwrap_or(0)));
        session.handle_timeout(now);
        drain(&mut session);
    }
}

/// One step of [`channel_ops`].
#[derive(Debug, Arbitrary)]
enum Op {
    OpenChannel,
    Rpc {
        channel: u8,
        method: Method,
    },
    Consume {
        channel: u8,
        method: BasicConsume,
    },
    Publish {
        channel: u8,
        mandatory: bool,
        body: Vec<u8>,
        confirm: bool,
    },
    Send {
        channel: u8,
        method: Method,
    },
    WaitForConfirms {
        channel: u8,
    },
    CloseChannel {
        channel: u8,
    },
    Close,
    ServerMethod {
        channel: u8,
        method: Method,
    },
    ServerContent {
        channel: u8,
        method: Method,
        properties: BasicProperties,
        body: Vec<u8>,
    },
    ServerRaw(Vec<u8>),
    Wait {
        millis: u16,
    },
    /// The socket ends: with recovery on, a new session resumes.
    Lose,
}

/// An arbitrary sequence of user operations and server frames.
pub fn channel_ops(data: &[u8]) {
    let _ = run_ops(&mut Unstructured::new(data));
}

fn run_ops(u: &mut Unstructured<'_>) -> ArbitraryResult<()> {
    let mut now = Instant::now();
    let recovery = bool::arbitrary(u)?;
    let config = ConnectionConfig {
        recovery: recovery.then(crate::uri::RecoveryConfig::default),
        ..fuzz_config()
    };
    let mut session = complete_handshake(Session::new(config.clone(), now), now);
    let mut opened: Vec<ChannelRef> = Vec::new();
    let mut next_reply = 0u32;
    let mut reply = || {
        next_reply += 1;
        next_reply
    };
    let pick = |opened: &[ChannelRef], i: u8| {
        opened
            .get(usize::from(i) % opened.len().max(1))
            .copied()
            .unwrap_or(ChannelRef { id: 1, serial: 1 })
    };
    while !u.is_empty() {
        if let Some(topology) = session.take_recovery() {
            assert!(recovery, "recovered without recovery on");
            let resumed = Session::resume(config.clone(), now, topology);
            session = complete_handshake(resumed, now);
        }
        let op = Op::arbitrary(u)?;
        let was_closed = session.is_closed();
        let command = match op {
            Op::OpenChannel => Some(Command::OpenChannel { reply: reply() }),
            Op::Rpc { channel, method } => Some(Command::Rpc {
                channel: pick(&opened, channel),
                method,
                reply: reply(),
            }),
            Op::Consume { channel, method } => Some(Command::Consume {
                channel: pick(&opened, channel),
                method,
                consumer: reply(),
                reply: reply(),
            }),
            Op::Publish {
                channel,
                mandatory,
                body,
                confirm,
            } => Some(Command::Publish {
                channel: pick(&opened, channel),
                method: BasicPublish {
                    mandatory,
                    ..BasicPublish::default()
                },
                properties: Default::default(),
                body: Bytes::from(body),
                confirm: confirm.then(&mut reply),
            }),
            Op::Send { channel, method } => Some(Command::Send {
                channel: pick(&opened, channel),
                method,
            }),
            Op::WaitForConfirms { channel } => Some(Command::WaitForConfirms {
                channel: pick(&opened, channel),
                reply: reply(),
            }),
            Op::CloseChannel { channel } => Some(Command::CloseChannel {
                channel: pick(&opened, channel),
                code: 200,
                text: ShortString::empty(),
                reply: reply(),
            }),
            Op::Close => Some(Command::Close {
                code: 200,
                text: ShortString::empty(),
                reply: reply(),
            }),
            Op::ServerMethod { channel, method } => {
                let mut wire = BytesMut::new();
                Frame::Method {
                    channel: u16::from(channel % 10),
                    method,
                }
                .encode(&mut wire);
                session.handle_bytes(&mut wire, now);
                None
            }
            Op::ServerContent {
                channel,
                method,
                properties,
                body,
            } => {
                let mut wire = BytesMut::new();
                encode_message(
                    u16::from(channel % 10),
                    &method,
                    &properties,
                    &body,
                    4096,
                    &mut wire,
                );
                session.handle_bytes(&mut wire, now);
                None
            }
            Op::ServerRaw(bytes) => {
                let mut wire = BytesMut::from(&bytes[..]);
                session.handle_bytes(&mut wire, now);
                None
            }
            Op::Wait { millis } => {
                now += Duration::from_millis(u64::from(millis));
                session.handle_timeout(now);
                None
            }
            Op::Lose => {
                session.handle_eof(None, now);
                None
            }
        };
        if let Some(command) = command {
            session.handle_command(command, now);
        }
        if was_closed {
            assert!(session.is_closed(), "a closed session reopened");
        }
        // Learn which channels opened, then check the invariants.
        assert!(session.pending_output() <= MAX_OUTPUT, "unbounded output");
        while let Some(bytes) = session.poll_transmit() {
            let n = bytes.len();
            session.transmitted(n);
        }
        let mut recoveries = 0;
        while let Some(event) = session.poll_event() {
            match event {
                Event::Done {
                    result: Ok(Reply::ChannelOpened(channel)),
                    ..
                } => opened.push(channel),
                Event::RecoveryDone(_) => recoveries += 1,
                _ => {}
            }
        }
        assert!(
            recoveries <= 1,
            "one replay reported done {recoveries} times"
        );
        if session.is_closed() {
            assert!(session.error().is_some(), "closed without an error");
        }
    }
    Ok(())
}
