//! Automatic recovery in the session: what is recorded, what a lost
//! connection leaves for the next session, and the replay, step by step.

use super::*;
use crate::session::recovery::Topology;
use crate::uri::RecoveryConfig;

fn recovering_config() -> ConnectionConfig {
    ConnectionConfig::default().recovery(RecoveryConfig::default())
}

fn short(s: &str) -> ShortString {
    ShortString::try_from(s).expect("short")
}

impl Broker {
    /// A session resuming `topology`, before its handshake.
    fn resuming(topology: Topology<&'static str>) -> Self {
        let now = Instant::now();
        Broker {
            session: Session::resume(recovering_config(), now, topology),
            now,
            decoder: FrameDecoder::with_frame_max(u32::MAX),
            header_seen: false,
        }
    }

    /// A session resuming `topology`, with its handshake done.
    fn resumed(topology: Topology<&'static str>) -> Self {
        let mut b = Broker::resuming(topology);
        b.handshake_with(2047, 131_072, 60);
        b
    }

    /// An application RPC answered with `answer`.
    fn rpc_answered(&mut self, ch: ChannelRef, method: Method, answer: impl Into<Method>) {
        self.command(Command::Rpc {
            channel: ch,
            method,
            reply: 99,
        });
        self.client_methods();
        self.send_method(ch, answer);
        let events = self.events();
        assert!(
            matches!(done(&events).as_slice(), [(99, Ok(_))]),
            "{events:?}"
        );
    }

    /// Expects exactly one method from the client (checks its name and
    /// channel), answers it, and returns it.
    fn step(&mut self, channel: u16, name: &str, answer: impl Into<Method>) -> Method {
        let sent = self.client_methods();
        let [(on, method)] = sent.as_slice() else {
            panic!("expected one {name}, got {sent:?}");
        };
        assert_eq!((*on, method.name()), (channel, name), "{sent:?}");
        let method = method.clone();
        self.send_method(channel, answer);
        method
    }

    /// Loses the connection (end of file) and returns what recovery keeps.
    fn lose(&mut self) -> (Vec<TestEvent>, Topology<&'static str>) {
        self.session.handle_eof(None, self.now);
        let events = self.events();
        let topology = self
            .session
            .take_recovery()
            .expect("a lost connection with recovery on is recoverable");
        (events, topology)
    }
}

fn exchange(name: &'static str) -> Method {
    Method::ExchangeDeclare(ExchangeDeclare {
        exchange: ShortString::from_static(name),
        kind: ShortString::from_static("topic"),
        ..ExchangeDeclare::default()
    })
}

fn queue_bind(queue: &str, exchange: &str, key: &str) -> Method {
    Method::QueueBind(QueueBind {
        queue: short(queue),
        exchange: short(exchange),
        routing_key: short(key),
        ..QueueBind::default()
    })
}

fn deliver_to(channel: u16, consumer_tag: &'static str, tag: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_message(
        channel,
        &Method::BasicDeliver(BasicDeliver {
            consumer_tag: ShortString::from_static(consumer_tag),
            delivery_tag: tag,
            ..BasicDeliver::default()
        }),
        &BasicProperties::default(),
        b"x",
        131_072,
        &mut buf,
    );
    buf
}

fn delivered_tags(events: &[TestEvent]) -> Vec<(&'static str, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Delivery { consumer, delivery } => Some((*consumer, delivery.delivery_tag)),
            _ => None,
        })
        .collect()
}

/// A connection with a channel in confirm mode with a prefetch, an
/// exchange-to-exchange binding, a server-named queue bound to an exchange
/// and a consumer on it that got 3 deliveries.
fn recorded_connection() -> (Broker, ChannelRef) {
    let mut b = Broker::open(recovering_config());
    let ch = b.open_channel(1);
    b.rpc_answered(
        ch,
        Method::BasicQos(BasicQos {
            prefetch_count: 10,
            ..BasicQos::default()
        }),
        BasicQosOk,
    );
    b.rpc_answered(
        ch,
        Method::ConfirmSelect(ConfirmSelect { nowait: false }),
        ConfirmSelectOk,
    );
    b.rpc_answered(ch, exchange("ex"), ExchangeDeclareOk);
    b.rpc_answered(ch, exchange("ex2"), ExchangeDeclareOk);
    b.rpc_answered(ch, declare(""), declare_ok("amq.gen-1"));
    b.rpc_answered(ch, queue_bind("amq.gen-1", "ex", "rk"), QueueBindOk);
    let e2e = Method::ExchangeBind(ExchangeBind {
        destination: short("ex2"),
        source: short("ex"),
        routing_key: short("#"),
        ..ExchangeBind::default()
    });
    b.rpc_answered(ch, e2e, ExchangeBindOk);
    b.command(Command::Consume {
        channel: ch,
        method: BasicConsume {
            queue: short("amq.gen-1"),
            ..BasicConsume::default()
        },
        consumer: "c1",
        reply: 20,
    });
    b.step(
        1,
        "basic.consume",
        BasicConsumeOk {
            consumer_tag: short("ctag-1"),
        },
    );
    b.events();
    for tag in 1..=3 {
        b.session
            .handle_bytes(&mut deliver_to(1, "ctag-1", tag), b.now);
    }
    assert_eq!(
        delivered_tags(&b.events()),
        [("c1", 1), ("c1", 2), ("c1", 3)]
    );
    (b, ch)
}

/// [`recorded_connection`], lost, and a new session resuming it (its
/// handshake done, the replay's first step sent).
fn recovered_connection() -> (Broker, ChannelRef) {
    let (mut b, ch) = recorded_connection();
    let (_, topology) = b.lose();
    (Broker::resumed(topology), ch)
}

#[test]
fn a_lost_connection_fails_calls_in_flight_but_keeps_channels_and_consumers() {
    let (mut b, ch) = recorded_connection();
    b.command(publish(ch, b"unconfirmed", Some(50)));
    b.command(Command::WaitForConfirms {
        channel: ch,
        reply: 51,
    });
    let (events, _) = b.lose();
    assert!(matches!(events.first(), Some(Event::Lost)), "{events:?}");
    let failed = done(&events);
    assert_eq!(failed.len(), 2, "{events:?}");
    for (_, result) in failed {
        assert!(
            matches!(&result, Err(crate::Error::ConnectionLost { cause }) if matches!(**cause, crate::Error::Io(_))),
            "{result:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ConsumerEnded { .. } | Event::Closed(_))),
        "consumers stay with recovery: {events:?}"
    );
    assert!(b.session.is_closed());
}

#[test]
fn the_replay_rebuilds_channels_modes_topology_and_consumers_in_order() {
    let (mut b, _) = recovered_connection();

    // The application's channel, with the same number, and its modes.
    b.step(1, "channel.open", ChannelOpenOk);
    let qos = b.step(1, "basic.qos", BasicQosOk);
    assert!(matches!(qos, Method::BasicQos(q) if q.prefetch_count == 10 && !q.global));
    b.step(1, "confirm.select", ConfirmSelectOk);
    // Entities on a channel of the replay's own.
    b.step(2, "channel.open", ChannelOpenOk);
    let first = b.step(2, "exchange.declare", ExchangeDeclareOk);
    assert!(matches!(first, Method::ExchangeDeclare(e) if e.exchange == "ex"));
    b.step(2, "exchange.declare", ExchangeDeclareOk);
    let queue = b.step(2, "queue.declare", declare_ok("amq.gen-2"));
    assert!(
        matches!(&queue, Method::QueueDeclare(q) if q.queue.is_empty()),
        "a server-named queue is declared without its old name: {queue:?}"
    );
    let bind = b.step(2, "queue.bind", QueueBindOk);
    assert_eq!(bind, queue_bind("amq.gen-2", "ex", "rk"));
    let e2e = b.step(2, "exchange.bind", ExchangeBindOk);
    assert!(matches!(e2e, Method::ExchangeBind(e) if e.destination == "ex2" && e.source == "ex"));
    b.step(2, "channel.close", ChannelCloseOk);
    let consume = b.step(
        1,
        "basic.consume",
        BasicConsumeOk {
            consumer_tag: short("ctag-1"),
        },
    );
    assert!(
        matches!(&consume, Method::BasicConsume(c) if c.queue == "amq.gen-2" && c.consumer_tag == "ctag-1"),
        "{consume:?}"
    );
    let events = b.events();
    let [Event::RecoveryDone(report)] = events.as_slice() else {
        panic!("expected the report alone, got {events:?}");
    };
    assert_eq!(
        report.renamed_queues,
        [("amq.gen-1".to_string(), "amq.gen-2".to_string())]
    );
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(b.client_methods().is_empty());
}

/// Replays `topology` answering every step with success.
fn replay_all(b: &mut Broker) -> Vec<(u16, Method)> {
    let mut sent = Vec::new();
    for _ in 0..100 {
        let methods = b.client_methods();
        let Some((channel, method)) = methods.first().cloned() else {
            break;
        };
        assert_eq!(methods.len(), 1, "one step at a time: {methods:?}");
        let answer: Method = match &method {
            Method::ChannelOpen(_) => ChannelOpenOk.into(),
            Method::BasicQos(_) => BasicQosOk.into(),
            Method::ConfirmSelect(_) => ConfirmSelectOk.into(),
            Method::TxSelect(_) => TxSelectOk.into(),
            Method::ExchangeDeclare(_) => ExchangeDeclareOk.into(),
            Method::QueueDeclare(q) if q.queue.is_empty() => declare_ok("amq.gen-new").into(),
            Method::QueueDeclare(q) => QueueDeclareOk {
                queue: q.queue.clone(),
                ..QueueDeclareOk::default()
            }
            .into(),
            Method::QueueBind(_) => QueueBindOk.into(),
            Method::ExchangeBind(_) => ExchangeBindOk.into(),
            Method::ChannelClose(_) => ChannelCloseOk.into(),
            Method::BasicConsume(c) => BasicConsumeOk {
                consumer_tag: c.consumer_tag.clone(),
            }
            .into(),
            other => panic!("unexpected replay step {other:?}"),
        };
        b.send_method(channel, answer);
        sent.push((channel, method));
    }
    sent
}

#[test]
fn delivery_tags_continue_after_recovery_and_acks_from_before_never_reach_the_broker() {
    let (mut b, ch) = recovered_connection();
    replay_all(&mut b);
    assert!(matches!(b.events().as_slice(), [Event::RecoveryDone(_)]));

    b.session
        .handle_bytes(&mut deliver_to(1, "ctag-1", 1), b.now);
    assert_eq!(
        delivered_tags(&b.events()),
        [("c1", 4)],
        "the broker's tag 1 continues after the 3 delivered before"
    );
    let ack = |tag, multiple| Command::Send {
        channel: ch,
        method: Method::BasicAck(BasicAck {
            delivery_tag: tag,
            multiple,
        }),
    };
    b.command(ack(2, false));
    b.command(ack(3, true));
    assert!(
        b.client_methods().is_empty(),
        "acks of tags from before recovery are dropped"
    );
    b.command(ack(4, false));
    assert_eq!(
        b.client_methods(),
        [(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: 1,
                multiple: false
            })
        )]
    );
    b.command(ack(0, true));
    assert!(matches!(
        b.client_methods().as_slice(),
        [(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: 0,
                multiple: true
            })
        )]
    ));
}

#[test]
fn handles_from_before_the_loss_reach_their_reopened_channels_and_new_channels_get_new_serials() {
    let (mut b, ch) = recovered_connection();
    replay_all(&mut b);
    b.events();
    b.command(publish(ch, b"after", Some(60)));
    let sent = b.client_methods();
    assert!(
        matches!(sent.as_slice(), [(1, Method::BasicPublish(_))]),
        "{sent:?}"
    );
    b.send_method(
        1,
        BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    );
    assert!(matches!(
        confirms(&b.events()).as_slice(),
        [(60, Confirmation::Ack)]
    ));
    let fresh = b.open_channel(2);
    assert_eq!(fresh.id, 2, "the replay's own channel was closed");
    assert!(fresh.serial > ch.serial);
}

#[test]
fn a_refused_step_is_reported_and_forgotten_and_the_replay_goes_on() {
    let (mut b, _) = recovered_connection();
    b.step(1, "channel.open", ChannelOpenOk);
    b.step(1, "basic.qos", BasicQosOk);
    b.step(1, "confirm.select", ConfirmSelectOk);
    b.step(2, "channel.open", ChannelOpenOk);
    // Someone redeclared "ex" with other settings: 406 closes the channel.
    b.step(
        2,
        "exchange.declare",
        ChannelClose {
            reply_code: 406,
            reply_text: short("PRECONDITION_FAILED - inequivalent arg 'type'"),
            class_id: 40,
            method_id: 10,
        },
    );
    // The channel is answered close-ok and reopened for the next step.
    let sent = b.client_methods();
    assert!(
        matches!(
            sent.as_slice(),
            [(2, Method::ChannelCloseOk(_)), (2, Method::ChannelOpen(_))]
        ),
        "{sent:?}"
    );
    b.send_method(2, ChannelOpenOk);
    let next = b.client_methods();
    assert!(
        matches!(&next[..], [(2, Method::ExchangeDeclare(e))] if e.exchange == "ex2"),
        "{next:?}"
    );
    b.send_method(2, ExchangeDeclareOk);
    let rest = replay_all(&mut b);
    assert!(rest
        .iter()
        .any(|(_, m)| matches!(m, Method::BasicConsume(_))));
    let events = b.events();
    let Some(Event::RecoveryDone(report)) = events.last() else {
        panic!("{events:?}");
    };
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].0, "exchange.declare ex");
    assert_eq!(report.failures[0].1.reply_code(), Some(406));

    // Lost again: the refused exchange is no longer replayed.
    let (_, topology) = b.lose();
    let mut b = Broker::resumed(topology);
    let replayed = replay_all(&mut b);
    let exchanges: Vec<_> = replayed
        .iter()
        .filter_map(|(_, m)| match m {
            Method::ExchangeDeclare(e) => Some(e.exchange.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(exchanges, ["ex2"]);
}

#[test]
fn a_loss_during_the_replay_keeps_everything_for_the_next_attempt() {
    let (mut b, _) = recovered_connection();
    b.step(1, "channel.open", ChannelOpenOk);
    b.step(1, "basic.qos", BasicQosOk);
    let (events, topology) = b.lose();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ConsumerEnded { .. })),
        "{events:?}"
    );
    let mut b = Broker::resumed(topology);
    let replayed = replay_all(&mut b);
    let names: Vec<&str> = replayed.iter().map(|(_, m)| m.name()).collect();
    assert_eq!(
        names,
        [
            "channel.open",
            "basic.qos",
            "confirm.select",
            "channel.open",
            "exchange.declare",
            "exchange.declare",
            "queue.declare",
            "queue.bind",
            "exchange.bind",
            "channel.close",
            "basic.consume"
        ]
    );
    // A failed handshake of a resumed session is a loss too.
    let (_, topology) = b.lose();
    let mut b = Broker::resuming(topology);
    b.session.handle_eof(None, b.now);
    assert!(b.session.take_recovery().is_some());
}

#[test]
fn what_the_application_removed_or_closed_is_not_replayed_even_unanswered() {
    let mut b = Broker::open(recovering_config());
    let ch = b.open_channel(1);
    let other = b.open_channel(2);
    b.rpc_answered(ch, declare("kept"), declare_ok("kept"));
    b.rpc_answered(ch, declare("deleted"), declare_ok("deleted"));
    b.rpc_answered(ch, queue_bind("deleted", "amq.topic", "k"), QueueBindOk);
    b.rpc_answered(ch, queue_bind("kept", "amq.topic", "a"), QueueBindOk);
    b.rpc_answered(ch, queue_bind("kept", "amq.topic", "b"), QueueBindOk);
    consume(&mut b, ch);
    // Sent, and lost before their answers.
    for method in [
        Method::QueueDelete(QueueDelete {
            queue: short("deleted"),
            ..QueueDelete::default()
        }),
        Method::QueueUnbind(QueueUnbind {
            queue: short("kept"),
            exchange: short("amq.topic"),
            routing_key: short("b"),
            ..QueueUnbind::default()
        }),
        Method::BasicCancel(BasicCancel {
            consumer_tag: short("ctag"),
            no_wait: false,
        }),
    ] {
        b.command(Command::Rpc {
            channel: ch,
            method,
            reply: 70,
        });
    }
    b.command(Command::CloseChannel {
        channel: other,
        code: 200,
        text: short("bye"),
        reply: 71,
    });
    b.client_methods();
    let (events, topology) = b.lose();
    assert!(
        done(&events)
            .iter()
            .any(|(reply, result)| *reply == 71 && result.is_ok()),
        "a close in progress counts as done: {events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::ConsumerEnded {
                consumer: "consumer",
                reason: Ok(())
            }
        )),
        "a consumer being cancelled ends as cancelled: {events:?}"
    );
    let mut b = Broker::resumed(topology);
    let replayed: Vec<Method> = replay_all(&mut b).into_iter().map(|(_, m)| m).collect();
    let opened = replayed
        .iter()
        .filter(|m| matches!(m, Method::ChannelOpen(_)))
        .count();
    assert_eq!(opened, 2, "channel 1 and the replay's own: {replayed:?}");
    assert!(replayed.contains(&declare("kept")));
    assert!(!replayed.contains(&declare("deleted")));
    assert!(replayed.contains(&queue_bind("kept", "amq.topic", "a")));
    assert!(!replayed.contains(&queue_bind("kept", "amq.topic", "b")));
    assert!(!replayed.contains(&queue_bind("deleted", "amq.topic", "k")));
    assert!(!replayed
        .iter()
        .any(|m| matches!(m, Method::BasicConsume(_))));
}

#[test]
fn only_a_lost_connection_with_recovery_on_recovers() {
    // Recovery off.
    let mut b = Broker::open(config());
    b.session.handle_eof(None, b.now);
    assert!(b.session.take_recovery().is_none());
    // Closed by the application.
    let mut b = Broker::open(recovering_config());
    b.command(Command::Close {
        code: 200,
        text: short("bye"),
        reply: 1,
    });
    b.client_methods();
    b.send_method(0, ConnectionCloseOk);
    assert!(b.session.is_closed());
    assert!(b.session.take_recovery().is_none());
    // A first connection that never opened.
    let mut b = Broker::new(recovering_config());
    b.start();
    b.session.handle_eof(None, b.now);
    assert!(b.session.take_recovery().is_none());
    // Closed by warren for a protocol fault.
    let mut b = Broker::open(recovering_config());
    b.send_method(5, BasicQosOk);
    b.send_method(0, ConnectionCloseOk);
    assert!(b.session.is_closed());
    assert!(b.session.take_recovery().is_none());
    // Closed by the broker (e.g. 320 on shutdown), or missed heartbeats: recovers.
    let mut b = Broker::open(recovering_config());
    b.send_method(
        0,
        ConnectionClose {
            reply_code: 320,
            reply_text: short("CONNECTION_FORCED - broker forced connection closure"),
            class_id: 0,
            method_id: 0,
        },
    );
    assert!(b.session.take_recovery().is_some());
    let mut b = Broker::open(recovering_config());
    b.advance(Duration::from_secs(121));
    assert!(b.session.take_recovery().is_some());
}

#[test]
fn an_auto_delete_queue_goes_with_its_last_consumer() {
    let mut b = Broker::open(recovering_config());
    let ch = b.open_channel(1);
    b.rpc_answered(
        ch,
        Method::QueueDeclare(QueueDeclare {
            queue: short("q"),
            auto_delete: true,
            ..QueueDeclare::default()
        }),
        declare_ok("q"),
    );
    consume(&mut b, ch);
    b.send_method(
        ch,
        BasicCancel {
            consumer_tag: short("ctag"),
            no_wait: true,
        },
    );
    b.events();
    let (_, topology) = b.lose();
    let mut b = Broker::resumed(topology);
    let replayed = replay_all(&mut b);
    let names: Vec<&str> = replayed.iter().map(|(_, m)| m.name()).collect();
    assert_eq!(names, ["channel.open"], "no queue, no consumer");
}

#[test]
fn a_delivery_tag_that_overflows_past_the_recovery_offset_is_a_fault_not_a_panic() {
    let (mut b, _) = recovered_connection();
    replay_all(&mut b);
    b.events();
    b.session
        .handle_bytes(&mut deliver_to(1, "ctag-1", u64::MAX), b.now);
    let close = b.sent_close().expect("the connection is closed");
    assert_eq!(close.reply_code, 502);
}
