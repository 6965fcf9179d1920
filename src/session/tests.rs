//! The session against a scripted broker: no socket, a virtual clock, every
//! byte the client writes decoded and checked.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::*;
use crate::uri::ConnectionConfig;

type TestSession = Session<u32, &'static str>;
type TestEvent = Event<u32, &'static str>;

/// A channel number, given as such or as a handle's [`ChannelRef`].
trait Number {
    fn number(self) -> u16;
}

impl Number for u16 {
    fn number(self) -> u16 {
        self
    }
}

impl Number for ChannelRef {
    fn number(self) -> u16 {
        self.id
    }
}

/// A client session and the broker's view of it.
struct Broker {
    session: TestSession,
    now: Instant,
    /// Decodes what the client wrote.
    decoder: FrameDecoder,
    header_seen: bool,
}

impl Broker {
    fn new(config: ConnectionConfig) -> Self {
        let now = Instant::now();
        Broker {
            session: Session::new(config, now),
            now,
            decoder: FrameDecoder::with_frame_max(u32::MAX),
            header_seen: false,
        }
    }

    /// Everything the client has written since the last call, as frames.
    fn client_frames(&mut self) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        if let Some(bytes) = self.session.poll_transmit() {
            buf.extend_from_slice(bytes);
            let n = bytes.len();
            self.session.transmitted(n);
        }
        if !self.header_seen && buf.len() >= 8 {
            assert_eq!(&buf[..8], &PROTOCOL_HEADER);
            let _ = buf.split_to(8);
            self.header_seen = true;
        }
        let mut frames = Vec::new();
        while let Decoded::Frame(f) = self
            .decoder
            .decode(&mut buf)
            .expect("client wrote valid frames")
        {
            frames.push(f);
        }
        assert!(buf.is_empty(), "client wrote a partial frame");
        frames
    }

    fn client_methods(&mut self) -> Vec<(u16, Method)> {
        self.client_frames()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Method { channel, method } => Some((channel, method)),
                _ => None,
            })
            .collect()
    }

    fn send(&mut self, frames: &[Frame]) {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut buf);
        }
        self.session.handle_bytes(&mut buf, self.now);
    }

    fn send_method(&mut self, channel: impl Number, method: impl Into<Method>) {
        self.send(&[Frame::Method {
            channel: channel.number(),
            method: method.into(),
        }]);
    }

    fn events(&mut self) -> Vec<TestEvent> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    fn command(&mut self, command: Command<u32, &'static str>) {
        self.session.handle_command(command, self.now);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.session.handle_timeout(self.now);
    }

    fn start(&mut self) {
        self.send_method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::new(),
                mechanisms: LongString::from("PLAIN AMQPLAIN"),
                locales: LongString::from("en_US"),
            },
        );
    }

    /// Runs the handshake with the given tune values; returns the tune-ok.
    fn handshake_with(
        &mut self,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> ConnectionTuneOk {
        self.start();
        let sent = self.client_methods();
        assert!(
            matches!(sent.as_slice(), [(0, Method::ConnectionStartOk(_))]),
            "{sent:?}"
        );
        self.send_method(
            0,
            ConnectionTune {
                channel_max,
                frame_max,
                heartbeat,
            },
        );
        let sent = self.client_methods();
        let tune_ok = match sent.as_slice() {
            [(0, Method::ConnectionTuneOk(t)), (0, Method::ConnectionOpen(_))] => t.clone(),
            other => panic!("expected tune-ok and open, got {other:?}"),
        };
        self.send_method(0, ConnectionOpenOk);
        let events = self.events();
        assert!(
            matches!(events.as_slice(), [Event::Connected { .. }]),
            "{events:?}"
        );
        tune_ok
    }

    fn open(config: ConnectionConfig) -> Self {
        let mut b = Broker::new(config);
        b.handshake_with(2047, 131_072, 60);
        b
    }

    /// Opens channel `id` (the next free one) with reply id `reply`.
    fn open_channel(&mut self, reply: u32) -> ChannelRef {
        self.command(Command::OpenChannel { reply });
        let sent = self.client_methods();
        let [(id, Method::ChannelOpen(_))] = sent.as_slice() else {
            panic!("expected channel.open, got {sent:?}");
        };
        let id = *id;
        self.send_method(id, ChannelOpenOk);
        let events = self.events();
        assert!(
            matches!(events.as_slice(), [Event::Done { reply: r, result: Ok(Reply::ChannelOpened(c)) }] if *r == reply && c.id == id),
            "{events:?}"
        );
        match events.into_iter().next() {
            Some(Event::Done {
                result: Ok(Reply::ChannelOpened(c)),
                ..
            }) => c,
            _ => unreachable!("checked above"),
        }
    }

    /// The connection.close the client sent, if any.
    fn sent_close(&mut self) -> Option<ConnectionClose> {
        self.client_methods()
            .into_iter()
            .find_map(|(_, m)| match m {
                Method::ConnectionClose(c) => Some(c),
                _ => None,
            })
    }
}

/// The connection's Closed event (it comes before the failures it causes).
fn closed_event(events: &[TestEvent]) -> Option<&TestEvent> {
    events.iter().find(|e| matches!(e, Event::Closed(_)))
}

fn config() -> ConnectionConfig {
    ConnectionConfig::default()
}

fn declare(name: &'static str) -> Method {
    Method::QueueDeclare(QueueDeclare {
        queue: ShortString::from_static(name),
        ..QueueDeclare::default()
    })
}

fn declare_ok(name: &'static str) -> QueueDeclareOk {
    QueueDeclareOk {
        queue: ShortString::from_static(name),
        message_count: 0,
        consumer_count: 0,
    }
}

fn done(events: &[TestEvent]) -> Vec<(u32, Result<Reply, crate::Error>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Done { reply, result } => Some((*reply, result.clone())),
            _ => None,
        })
        .collect()
}

/// The confirms among the events, which must all have succeeded.
fn confirms(events: &[TestEvent]) -> Vec<(u32, Confirmation)> {
    done(events)
        .into_iter()
        .map(|(reply, result)| match result {
            Ok(Reply::Confirmed(c)) => (reply, c),
            other => panic!("{reply}: {other:?}"),
        })
        .collect()
}

fn publish(
    channel: ChannelRef,
    body: &'static [u8],
    confirm: Option<u32>,
) -> Command<u32, &'static str> {
    Command::Publish {
        channel,
        method: BasicPublish {
            routing_key: ShortString::from_static("q"),
            ..BasicPublish::default()
        },
        properties: Default::default(),
        body: Bytes::from_static(body),
        confirm,
    }
}

// ---- handshake --------------------------------------------------------

#[test]
fn the_handshake_sends_credentials_capabilities_and_the_vhost() {
    let mut b = Broker::new(ConnectionConfig {
        connection_name: Some("orders-service".into()),
        vhost: "prod".into(),
        ..config()
    });
    b.start();
    let sent = b.client_methods();
    let [(0, Method::ConnectionStartOk(start_ok))] = sent.as_slice() else {
        panic!("{sent:?}")
    };
    assert_eq!(start_ok.mechanism, "PLAIN");
    assert_eq!(start_ok.response.as_bytes(), b"\0guest\0guest");
    let props = &start_ok.client_properties;
    assert_eq!(props.get("product").unwrap().as_str(), Some("warren"));
    assert_eq!(
        props.get("connection_name").unwrap().as_str(),
        Some("orders-service")
    );
    let caps = props.get("capabilities").unwrap();
    let caps = caps.as_table().unwrap();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(caps.get(cap).and_then(|v| v.as_bool()), Some(true), "{cap}");
    }
    b.send_method(
        0,
        ConnectionTune {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        },
    );
    let sent = b.client_methods();
    let [_, (0, Method::ConnectionOpen(open))] = sent.as_slice() else {
        panic!("{sent:?}")
    };
    assert_eq!(open.virtual_host, "prod");
}

#[test]
fn tune_takes_the_lower_nonzero_value_and_zero_means_the_other_sides() {
    let cases = [
        // (client, server) -> expected, for channel_max, frame_max, heartbeat
        ((2047, 131_072, 60), (0, 0, 0), (2047, 131_072, 60)),
        ((2047, 131_072, 60), (100, 8192, 10), (100, 8192, 10)),
        ((10, 4096, 600), (2047, 131_072, 60), (10, 4096, 60)),
        ((0, 0, 0), (2047, 131_072, 60), (2047, 131_072, 60)),
        ((0, 0, 0), (0, 0, 0), (65535, 1 << 20, 0)),
    ];
    for ((cc, cf, ch), (sc, sf, sh), (ec, ef, eh)) in cases {
        let mut b = Broker::new(ConnectionConfig {
            channel_max: cc,
            frame_max: cf,
            heartbeat: ch,
            ..config()
        });
        let t = b.handshake_with(sc, sf, sh);
        assert_eq!(
            (t.channel_max, t.frame_max, t.heartbeat),
            (ec, ef, eh),
            "client {cc},{cf},{ch} server {sc},{sf},{sh}"
        );
    }
}

#[test]
fn a_tuned_frame_max_below_4096_is_refused() {
    let mut b = Broker::new(config());
    b.start();
    b.client_methods();
    b.send_method(
        0,
        ConnectionTune {
            channel_max: 0,
            frame_max: 1024,
            heartbeat: 0,
        },
    );
    let close = b.sent_close().expect("connection.close");
    assert_eq!(close.reply_code, 503);
}

#[test]
fn a_missing_mechanism_fails_with_an_auth_error() {
    let mut b = Broker::new(ConnectionConfig {
        auth_mechanism: crate::uri::AuthMechanism::External,
        ..config()
    });
    b.start();
    let events = b.events();
    assert!(
        matches!(
            events.as_slice(),
            [Event::Closed(crate::Error::Auth { .. })]
        ),
        "{events:?}"
    );
    assert!(b.session.is_closed());
}

#[test]
fn refused_credentials_are_an_auth_error_whether_closed_or_hung_up() {
    // With authentication_failure_close, RabbitMQ sends connection.close 403.
    let mut b = Broker::new(config());
    b.start();
    b.client_methods();
    b.send_method(
        0,
        ConnectionClose {
            reply_code: 403,
            reply_text: ShortString::from_static("ACCESS_REFUSED - Login was refused"),
            class_id: 0,
            method_id: 0,
        },
    );
    assert!(matches!(
        b.client_methods().as_slice(),
        [(0, Method::ConnectionCloseOk(_))]
    ));
    let events = b.events();
    assert!(
        matches!(&events[..], [Event::Closed(crate::Error::Auth { text })] if text.contains("Login was refused")),
        "{events:?}"
    );

    // Without it, the broker just hangs up after start-ok.
    let mut b = Broker::new(config());
    b.start();
    b.client_methods();
    b.session.handle_eof(None, b.now);
    assert!(matches!(
        b.events().as_slice(),
        [Event::Closed(crate::Error::Auth { .. })]
    ));
}

#[test]
fn a_protocol_header_from_the_broker_means_an_unsupported_version() {
    let mut b = Broker::new(config());
    let mut buf = BytesMut::from(&b"AMQP\x00\x00\x0a\x00"[..]);
    b.session.handle_bytes(&mut buf, b.now);
    assert!(matches!(
        b.events().as_slice(),
        [Event::Closed(crate::Error::UnsupportedProtocol { .. })]
    ));
}

#[test]
fn the_handshake_times_out() {
    let mut b = Broker::new(ConnectionConfig {
        connection_timeout: Duration::from_secs(5),
        ..config()
    });
    assert_eq!(
        b.session.poll_timeout(),
        Some(b.now + Duration::from_secs(5))
    );
    b.advance(Duration::from_secs(5));
    assert!(matches!(
        b.events().as_slice(),
        [Event::Closed(crate::Error::Timeout { .. })]
    ));
}

// ---- heartbeats -------------------------------------------------------

#[test]
fn heartbeats_go_out_after_half_an_idle_interval_and_silence_kills_the_connection() {
    let mut b = Broker::new(config());
    b.handshake_with(2047, 131_072, 10);
    b.client_frames();
    b.advance(Duration::from_secs(4));
    assert!(b.client_frames().is_empty(), "too early");
    b.advance(Duration::from_secs(1));
    assert_eq!(b.client_frames(), vec![Frame::Heartbeat { channel: 0 }]);
    // The broker's heartbeats keep it alive...
    b.now += Duration::from_secs(15);
    b.send(&[Frame::Heartbeat { channel: 0 }]);
    b.advance(Duration::from_secs(0));
    assert!(!b.session.is_closed());
    // ...and two intervals of silence end it.
    b.advance(Duration::from_secs(19));
    assert!(!b.session.is_closed());
    b.advance(Duration::from_secs(1));
    assert!(b.session.is_closed());
    let events = b.events();
    assert!(
        matches!(closed_event(&events), Some(Event::Closed(crate::Error::MissedHeartbeats { interval })) if *interval == Duration::from_secs(10))
    );
}

#[test]
fn no_heartbeats_when_disabled() {
    let mut b = Broker::new(ConnectionConfig {
        heartbeat: 0,
        ..config()
    });
    b.handshake_with(2047, 131_072, 0);
    assert_eq!(b.session.poll_timeout(), None);
}

// ---- channels and RPCs ------------------------------------------------

#[test]
fn channel_numbers_count_up_from_one_and_are_reused_after_close_ok() {
    let mut b = Broker::open(config());
    let first = b.open_channel(1);
    assert_eq!(first.id, 1);
    assert_eq!(b.open_channel(2).id, 2);
    b.command(Command::CloseChannel {
        channel: first,
        code: 200,
        text: ShortString::empty(),
        reply: 3,
    });
    assert!(matches!(
        b.client_methods().as_slice(),
        [(1, Method::ChannelClose(_))]
    ));
    b.send_method(1, ChannelCloseOk);
    assert!(matches!(
        done(&b.events()).as_slice(),
        [(3, Ok(Reply::Sent))]
    ));
    let reused = b.open_channel(4);
    assert_eq!(reused.id, 1);
    assert_eq!(b.open_channel(5).id, 3);
    // The first handle never reaches the channel that reuses its number.
    b.command(Command::Rpc {
        channel: first,
        method: declare("stale"),
        reply: 6,
    });
    assert!(b.client_methods().is_empty());
    assert!(matches!(
        done(&b.events()).as_slice(),
        [(6, Err(crate::Error::Closed))]
    ));
}

#[test]
fn channel_max_limits_the_number_of_channels() {
    let mut b = Broker::new(config());
    b.handshake_with(2, 131_072, 0);
    b.open_channel(1);
    b.open_channel(2);
    b.command(Command::OpenChannel { reply: 3 });
    assert!(matches!(
        done(&b.events()).as_slice(),
        [(3, Err(crate::Error::ChannelMaxReached { channel_max: 2 }))]
    ));
}

#[test]
fn one_rpc_is_in_flight_per_channel_and_the_rest_wait_in_order() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    b.command(Command::Rpc {
        channel: ch,
        method: declare("a"),
        reply: 10,
    });
    b.command(Command::Rpc {
        channel: ch,
        method: declare("b"),
        reply: 11,
    });
    b.command(publish(ch, b"x", None));
    let sent = b.client_methods();
    assert_eq!(sent.len(), 1, "only the first declare goes out: {sent:?}");
    b.send_method(ch, declare_ok("a"));
    let sent = b.client_methods();
    assert!(
        matches!(&sent[..], [(_, Method::QueueDeclare(d))] if d.queue == "b"),
        "{sent:?}"
    );
    assert!(matches!(
        done(&b.events()).as_slice(),
        [(10, Ok(Reply::Method(m)))] if matches!(**m, Method::QueueDeclareOk(_))
    ));
    b.send_method(ch, declare_ok("b"));
    // The publish waited behind the second declare.
    let frames = b.client_frames();
    assert!(matches!(
        &frames[0],
        Frame::Method {
            method: Method::BasicPublish(_),
            ..
        }
    ));
    assert_eq!(frames.len(), 3);
}

#[test]
fn a_no_wait_method_completes_once_written() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    let method = Method::QueueDeclare(QueueDeclare {
        queue: ShortString::from_static("q"),
        no_wait: true,
        ..QueueDeclare::default()
    });
    b.command(Command::Rpc {
        channel: ch,
        method,
        reply: 7,
    });
    assert_eq!(b.client_methods().len(), 1);
    assert!(matches!(
        done(&b.events()).as_slice(),
        [(7, Ok(Reply::Sent))]
    ));
}

#[test]
fn an_answer_nobody_asked_for_closes_the_connection_with_503() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    b.send_method(ch, declare_ok("x"));
    assert_eq!(b.sent_close().unwrap().reply_code, 503);
}

// ---- content ----------------------------------------------------------

fn deliver_frames(channel: impl Number, tag: u64, body: &[u8], frame_max: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_message(
        channel.number(),
        &Method::BasicDeliver(BasicDeliver {
            consumer_tag: ShortString::from_static("ctag"),
            delivery_tag: tag,
            ..BasicDeliver::default()
        }),
        &BasicProperties::default().with_delivery_mode(2),
        body,
        frame_max,
        &mut buf,
    );
    buf
}

fn consume(b: &mut Broker, ch: ChannelRef) {
    b.command(Command::Consume {
        channel: ch,
        method: BasicConsume {
            queue: ShortString::from_static("q"),
            ..BasicConsume::default()
        },
        consumer: "consumer",
        reply: 20,
    });
    b.client_methods();
    b.send_method(
        ch,
        BasicConsumeOk {
            consumer_tag: ShortString::from_static("ctag"),
        },
    );
    assert!(matches!(done(&b.events()).as_slice(), [(20, Ok(_))]));
}

#[test]
fn deliveries_are_assembled_and_a_single_frame_body_is_not_copied() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    consume(&mut b, ch);
    let mut wire = deliver_frames(ch, 1, b"hello", 131_072);
    wire.extend_from_slice(&deliver_frames(ch, 2, &[9u8; 300_000], 131_072));
    let wire = wire.freeze();
    let mut buf = BytesMut::from(&wire[..]);
    let buf_start = buf.as_ptr() as usize;
    b.session.handle_bytes(&mut buf, b.now);
    let events = b.events();
    let deliveries: Vec<&Delivery> = events
        .iter()
        .filter_map(|e| match e {
            Event::Delivery {
                consumer: "consumer",
                delivery,
            } => Some(delivery),
            _ => None,
        })
        .collect();
    assert_eq!(deliveries.len(), 2, "{events:?}");
    assert_eq!(&deliveries[0].body[..], b"hello");
    let body_at = deliveries[0].body.as_ptr() as usize;
    assert!(
        body_at >= buf_start && body_at < buf_start + wire.len(),
        "body is a view of the read buffer"
    );
    assert_eq!(deliveries[0].properties.delivery_mode(), Some(2));
    let raw = deliveries[0].properties.raw().as_ptr() as usize;
    assert!(
        raw >= buf_start && raw < buf_start + wire.len(),
        "properties are a view of the read buffer"
    );
    assert_eq!(deliveries[1].body.len(), 300_000);
    assert_eq!(deliveries[1].delivery_tag, 2);
}

#[test]
fn a_method_in_the_middle_of_content_closes_the_connection_with_505() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    consume(&mut b, ch);
    let mut wire = deliver_frames(ch, 1, b"hello", 131_072);
    wire.truncate(wire.len() - 13); // drop the body frame
    b.session.handle_bytes(&mut wire, b.now);
    b.send_method(
        ch,
        BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    );
    assert_eq!(b.sent_close().unwrap().reply_code, 505);
}

#[test]
fn framing_faults_close_the_connection_with_the_spec_code() {
    let cases: Vec<(Vec<Frame>, u16)> = vec![
        (vec![Frame::Heartbeat { channel: 1 }], 503),
        (
            vec![Frame::Body {
                channel: 0,
                payload: Bytes::from_static(b"x"),
            }],
            504,
        ),
        (
            vec![Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"x"),
            }],
            505,
        ),
        (
            vec![Frame::Method {
                channel: 9,
                method: Method::BasicAck(BasicAck::default()),
            }],
            504,
        ),
        (
            vec![Frame::Method {
                channel: 1,
                method: Method::ConnectionOpenOk(ConnectionOpenOk),
            }],
            503,
        ),
    ];
    for (frames, code) in cases {
        let mut b = Broker::open(config());
        b.open_channel(1);
        b.send(&frames);
        assert_eq!(
            b.sent_close().map(|c| c.reply_code),
            Some(code),
            "{frames:?}"
        );
        let events = b.events();
        assert!(
            events.is_empty(),
            "nothing closed yet: waiting for close-ok: {events:?}"
        );
        b.send_method(0, ConnectionCloseOk);
        assert!(matches!(
            closed_event(&b.events()),
            Some(Event::Closed(crate::Error::ProtocolViolation { .. }))
        ));
    }
}

#[test]
fn a_malformed_frame_closes_the_connection_with_its_reply_code() {
    let mut b = Broker::open(config());
    let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 0, 0, 4, 0, 60, 0, 99, 0xce][..]);
    b.session.handle_bytes(&mut buf, b.now);
    assert_eq!(b.sent_close().unwrap().reply_code, 540);
    b.send_method(0, ConnectionCloseOk);
    assert!(matches!(
        closed_event(&b.events()),
        Some(Event::Closed(crate::Error::Protocol(_)))
    ));
}

#[test]
fn a_frame_over_frame_max_is_refused_with_501() {
    let mut b = Broker::new(config());
    b.handshake_with(2047, 4096, 0);
    b.open_channel(1);
    // A 5000-byte body frame header, nothing more.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x13, 0x88][..]);
    b.session.handle_bytes(&mut buf, b.now);
    assert_eq!(b.sent_close().unwrap().reply_code, 501);
}

// ---- confirms and returns ---------------------------------------------

fn confirm_mode(b: &mut Broker, ch: ChannelRef) {
    b.command(Command::Rpc {
        channel: ch,
        method: Method::ConfirmSelect(ConfirmSelect { nowait: false }),
        reply: 30,
    });
    b.client_methods();
    b.send_method(ch, ConfirmSelectOk);
    assert!(matches!(done(&b.events()).as_slice(), [(30, Ok(_))]));
}

#[test]
fn confirms_complete_single_and_multiple_acks_and_nacks() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    confirm_mode(&mut b, ch);
    for reply in 101..=105 {
        b.command(publish(ch, b"m", Some(reply)));
    }
    b.command(Command::WaitForConfirms {
        channel: ch,
        reply: 200,
    });
    b.client_frames();
    b.send_method(
        ch,
        BasicAck {
            delivery_tag: 2,
            multiple: true,
        },
    );
    assert_eq!(
        confirms(&b.events()),
        vec![(101, Confirmation::Ack), (102, Confirmation::Ack)]
    );
    b.send_method(
        ch,
        BasicNack {
            delivery_tag: 4,
            multiple: false,
            requeue: false,
        },
    );
    assert_eq!(confirms(&b.events()), vec![(104, Confirmation::Nack)]);
    b.send_method(
        ch,
        BasicAck {
            delivery_tag: 5,
            multiple: true,
        },
    );
    assert_eq!(
        confirms(&b.events()),
        vec![
            (103, Confirmation::Ack),
            (105, Confirmation::Ack),
            (200, Confirmation::Nack)
        ]
    );
    // Nothing outstanding: waiting completes at once.
    b.command(Command::WaitForConfirms {
        channel: ch,
        reply: 201,
    });
    assert_eq!(confirms(&b.events()), vec![(201, Confirmation::Ack)]);
}

#[test]
fn a_confirm_for_a_tag_never_published_is_a_fault() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    confirm_mode(&mut b, ch);
    b.send_method(
        ch,
        BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    );
    assert_eq!(b.sent_close().unwrap().reply_code, 406);
}

#[test]
fn a_mandatory_return_comes_with_the_confirm_that_follows_it() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    confirm_mode(&mut b, ch);
    let mut lost = publish(ch, b"lost", Some(1));
    if let Command::Publish { method, .. } = &mut lost {
        method.mandatory = true;
    }
    b.command(lost);
    b.client_frames();
    let mut wire = BytesMut::new();
    encode_message(
        ch.id,
        &Method::BasicReturn(BasicReturn {
            reply_code: 312,
            reply_text: ShortString::from_static("NO_ROUTE"),
            exchange: ShortString::empty(),
            routing_key: ShortString::from_static("q"),
        }),
        &BasicProperties::default(),
        b"lost",
        131_072,
        &mut wire,
    );
    b.session.handle_bytes(&mut wire, b.now);
    b.send_method(
        ch,
        BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    );
    let events = b.events();
    assert!(matches!(&events[0], Event::Returned { message, .. } if message.reply_code == 312));
    match done(&events).as_slice() {
        [(1, Ok(Reply::Confirmed(Confirmation::Returned(m))))] => assert_eq!(&m.body[..], b"lost"),
        other => panic!("{other:?}"),
    }
}

// ---- errors and closing -----------------------------------------------

#[test]
fn a_channel_exception_closes_only_that_channel() {
    let mut b = Broker::open(config());
    let one = b.open_channel(1);
    let two = b.open_channel(2);
    consume(&mut b, one);
    b.command(Command::Rpc {
        channel: one,
        method: declare("missing"),
        reply: 40,
    });
    b.command(Command::Rpc {
        channel: one,
        method: declare("next"),
        reply: 41,
    });
    b.client_methods();
    b.send_method(
        one,
        ChannelClose {
            reply_code: 404,
            reply_text: ShortString::from_static("NOT_FOUND - no queue 'missing'"),
            class_id: 50,
            method_id: 10,
        },
    );
    assert!(matches!(
        b.client_methods().as_slice(),
        [(1, Method::ChannelCloseOk(_))]
    ));
    let events = b.events();
    let failed = done(&events);
    assert_eq!(failed.len(), 2);
    for (_, result) in failed {
        assert!(matches!(
            result,
            Err(crate::Error::ChannelClosed { code: 404, .. })
        ));
    }
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ConsumerEnded {
            reason: Err(crate::Error::ChannelClosed { .. }),
            ..
        }
    )));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ChannelClosed { channel: 1, .. })));
    // The other channel still works.
    b.command(Command::Rpc {
        channel: two,
        method: declare("ok"),
        reply: 42,
    });
    assert_eq!(b.client_methods().len(), 1);
    b.send_method(two, declare_ok("ok"));
    assert!(matches!(done(&b.events()).as_slice(), [(42, Ok(_))]));
}

#[test]
fn a_connection_exception_fails_everything_with_the_same_error() {
    let mut b = Broker::open(config());
    let one = b.open_channel(1);
    let two = b.open_channel(2);
    confirm_mode(&mut b, two);
    b.command(Command::Rpc {
        channel: one,
        method: declare("a"),
        reply: 50,
    });
    b.command(publish(two, b"x", Some(51)));
    b.client_frames();
    b.send_method(
        0,
        ConnectionClose {
            reply_code: 320,
            reply_text: ShortString::from_static("CONNECTION_FORCED - broker shutdown"),
            class_id: 0,
            method_id: 0,
        },
    );
    assert!(matches!(
        b.client_methods().as_slice(),
        [(0, Method::ConnectionCloseOk(_))]
    ));
    let events = b.events();
    let failed = done(&events);
    assert_eq!(failed.len(), 2);
    for (_, result) in failed {
        assert!(matches!(
            result,
            Err(crate::Error::ConnectionClosed { code: 320, .. })
        ));
    }
    assert!(matches!(
        closed_event(&events),
        Some(Event::Closed(crate::Error::ConnectionClosed {
            code: 320,
            ..
        }))
    ));
    // Sticky: later commands get the same error.
    b.command(Command::OpenChannel { reply: 52 });
    assert!(matches!(
        done(&b.events()).as_slice(),
        [(52, Err(crate::Error::ConnectionClosed { code: 320, .. }))]
    ));
}

#[test]
fn only_one_connection_close_is_sent_and_a_close_while_closing_gets_close_ok() {
    let mut b = Broker::open(config());
    b.command(Command::Close {
        code: 200,
        text: ShortString::from_static("bye"),
        reply: 60,
    });
    b.command(Command::Close {
        code: 200,
        text: ShortString::from_static("bye"),
        reply: 61,
    });
    let sent = b.client_methods();
    assert_eq!(
        sent.iter()
            .filter(|(_, m)| matches!(m, Method::ConnectionClose(_)))
            .count(),
        1
    );
    // A fault while closing sends nothing more.
    b.send(&[Frame::Heartbeat { channel: 3 }]);
    assert!(b.client_methods().is_empty());
    // The broker closes at the same time: answer with close-ok.
    b.send_method(
        0,
        ConnectionClose {
            reply_code: 320,
            reply_text: ShortString::empty(),
            class_id: 0,
            method_id: 0,
        },
    );
    assert!(matches!(
        b.client_methods().as_slice(),
        [(0, Method::ConnectionCloseOk(_))]
    ));
    let events = b.events();
    assert!(done(&events).iter().all(|(_, r)| r.is_ok()), "{events:?}");
    assert!(matches!(
        closed_event(&events),
        Some(Event::Closed(crate::Error::Closed))
    ));
}

#[test]
fn an_orderly_close_gives_up_waiting_for_close_ok_after_a_timeout() {
    let mut b = Broker::open(config());
    b.command(Command::Close {
        code: 200,
        text: ShortString::empty(),
        reply: 70,
    });
    b.advance(Duration::from_secs(5));
    assert!(b.session.is_closed());
}

#[test]
fn a_channel_close_ends_the_consumers_of_unanswered_consumes() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    // Two consumes, neither answered yet: one on the wire, one queued
    // behind it.
    for (queue, consumer, reply) in [("missing", "first", 50), ("q", "second", 51)] {
        b.command(Command::Consume {
            channel: ch,
            method: BasicConsume {
                queue: ShortString::from_static(queue),
                ..BasicConsume::default()
            },
            consumer,
            reply,
        });
    }
    b.client_methods();
    b.send_method(
        ch,
        ChannelClose {
            reply_code: 404,
            reply_text: ShortString::from_static("NOT_FOUND - no queue 'missing'"),
            class_id: 60,
            method_id: 20,
        },
    );
    let events = b.events();
    assert_eq!(done(&events).len(), 2);
    let ended: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::ConsumerEnded {
                consumer,
                reason: Err(crate::Error::ChannelClosed { code: 404, .. }),
            } => Some(*consumer),
            _ => None,
        })
        .collect();
    assert_eq!(ended, ["first", "second"]);
}

#[test]
fn eof_fails_every_pending_operation_promptly() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    consume(&mut b, ch);
    b.command(Command::Rpc {
        channel: ch,
        method: declare("a"),
        reply: 80,
    });
    b.session.handle_eof(None, b.now);
    let events = b.events();
    assert!(matches!(
        done(&events).as_slice(),
        [(80, Err(crate::Error::Io(_)))]
    ));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ConsumerEnded {
            reason: Err(crate::Error::Io(_)),
            ..
        }
    )));
    assert!(matches!(
        closed_event(&events),
        Some(Event::Closed(crate::Error::Io(_)))
    ));
}

#[test]
fn blocked_and_unblocked_are_events() {
    let mut b = Broker::open(config());
    b.send_method(
        0,
        ConnectionBlocked {
            reason: ShortString::from_static("low on memory"),
        },
    );
    b.send_method(0, ConnectionUnblocked);
    let events = b.events();
    assert!(
        matches!(&events[..], [Event::Blocked(Some(r)), Event::Unblocked] if r == "low on memory")
    );
}

#[test]
fn a_broker_cancel_ends_the_consumer_with_a_reason() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    consume(&mut b, ch);
    b.send_method(
        ch,
        BasicCancel {
            consumer_tag: ShortString::from_static("ctag"),
            no_wait: true,
        },
    );
    let events = b.events();
    assert!(
        matches!(&events[..], [Event::ConsumerEnded { reason: Err(crate::Error::ConsumerCancelled { consumer_tag }), .. }] if consumer_tag == "ctag")
    );
    assert!(
        b.client_methods().is_empty(),
        "no cancel-ok for a no-wait cancel"
    );
}

#[test]
fn every_split_of_the_input_gives_the_same_events() {
    // The handshake and a delivery, cut at every byte.
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
            channel_max: 10,
            frame_max: 4096,
            heartbeat: 0,
        }),
        Method::ConnectionOpenOk(ConnectionOpenOk),
    ] {
        Frame::Method { channel: 0, method }.encode(&mut script);
    }
    let script = script.freeze();
    // A real driver keeps one buffer; emulate it.
    for split in 0..script.len() {
        let mut b = Broker::new(config());
        let mut buf = BytesMut::new();
        for part in [&script[..split], &script[split..]] {
            buf.extend_from_slice(part);
            b.session.handle_bytes(&mut buf, b.now);
        }
        assert!(buf.is_empty());
        assert!(
            matches!(b.events().as_slice(), [Event::Connected { .. }]),
            "split at {split}"
        );
    }
}

#[test]
fn recover_ok_voids_the_tags_before_the_reply_completes() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    b.command(Command::Rpc {
        channel: ch,
        method: Method::BasicRecover(BasicRecover { requeue: true }),
        reply: 90,
    });
    b.client_methods();
    b.send_method(ch, BasicRecoverOk);
    let events = b.events();
    assert!(
        matches!(
            &events[..],
            [
                Event::Recovered { channel: 1 },
                Event::Done {
                    reply: 90,
                    result: Ok(_)
                }
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn a_secure_challenge_is_answered_with_the_mechanisms_response() {
    let mut b = Broker::new(config());
    b.start();
    b.client_methods();
    b.send_method(
        0,
        ConnectionSecure {
            challenge: LongString::from(""),
        },
    );
    let sent = b.client_methods();
    match sent.as_slice() {
        [(0, Method::ConnectionSecureOk(ok))] => {
            assert_eq!(ok.response.as_bytes(), b"\0guest\0guest")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn after_a_malformed_frame_further_input_is_discarded_not_buffered() {
    let mut b = Broker::open(config());
    let mut buf = BytesMut::from(&[0x09u8, 0, 0][..]);
    b.session.handle_bytes(&mut buf, b.now);
    assert_eq!(b.sent_close().unwrap().reply_code, 501);
    for _ in 0..100 {
        buf.extend_from_slice(&[0xab; 1000]);
        b.session.handle_bytes(&mut buf, b.now);
        assert!(buf.is_empty());
    }
}

#[test]
fn a_channel_close_crossing_ours_reports_the_brokers_reason_and_keeps_the_number_until_close_ok() {
    let mut b = Broker::open(config());
    let ch = b.open_channel(1);
    b.command(Command::CloseChannel {
        channel: ch,
        code: 200,
        text: ShortString::empty(),
        reply: 2,
    });
    b.client_methods();
    b.send_method(
        ch,
        ChannelClose {
            reply_code: 404,
            reply_text: ShortString::from_static("NOT_FOUND - no exchange 'x'"),
            class_id: 60,
            method_id: 40,
        },
    );
    assert!(matches!(
        b.client_methods().as_slice(),
        [(1, Method::ChannelCloseOk(_))]
    ));
    let events = b.events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ChannelClosed { channel: 1, .. })));
    assert!(matches!(
        done(&events).as_slice(),
        [(2, Err(crate::Error::ChannelClosed { code: 404, .. }))]
    ));
    // Not free yet: a new channel takes another number...
    assert_eq!(b.open_channel(3).id, 2);
    // ...and the broker's close-ok for our close is no protocol violation.
    b.send_method(ch, ChannelCloseOk);
    assert!(b.sent_close().is_none());
    assert_eq!(b.open_channel(4).id, 1, "free again after close-ok");
}

// ---- automatic recovery -----------------------------------------------

mod recovery;

#[test]
fn consumer_tags_that_differ_in_any_byte_hash_apart() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hasher = BuildHasherDefault::<super::channel::TagHasher>::default();
    let tags = [
        "amq.ctag-AAAAAAAAAAAAAAAAAAAAAA",
        "amq.ctag-AAAAAAAAAAAAAAAAAAAAAB",
        "bmq.ctag-AAAAAAAAAAAAAAAAAAAAAA",
        "amq.ctag-AAAAAAAAAAAAAAAAAAAAA",
        "",
        "a",
        "a\0",
    ];
    let hashes: std::collections::HashSet<u64> = tags
        .iter()
        .map(|t| hasher.hash_one(ShortString::try_from(*t).unwrap()))
        .collect();
    assert_eq!(hashes.len(), tags.len());
}
