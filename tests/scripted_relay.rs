//! Fault scenarios on real traffic: warren talks to the live RabbitMQ
//! (`tests/support/broker.rs` says where) through a fault-injecting relay
//! (`tests/support/relay.rs`) that cuts, stalls, throttles or resets the
//! link on the test's command, or the broker itself closes the connection.
//!
//! Each test has a relay of its own, so the tests run in parallel; nothing
//! here changes broker-wide state. Like the other broker tests, these fail,
//! never skip, when no broker is reachable.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::broker::{config, connect_with, eventually, rabbitmqctl, unique};
use support::decode_all;
use support::fake_broker::{describe, same_error, within};
use support::relay::{Direction, Relay};
use warren::blocking::{Channel, Connection};
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable, Frame, Method, PROTOCOL_HEADER};
use warren::Error;

/// How long the client may take to notice a fault: "promptly".
const PROMPTLY: Duration = Duration::from_secs(1);
/// How long to wait for something that should come.
const ARRIVES: Duration = Duration::from_secs(10);

fn relay() -> Relay {
    let broker = config();
    Relay::start((broker.host.as_str(), broker.port))
}

/// A connection to the broker through `relay`.
fn connect_through(relay: &Relay) -> Connection {
    connect_with(relay.config(config()))
}

fn exclusive_queue(channel: &Channel) -> String {
    channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .expect("declare a server-named queue")
        .queue
        .to_string()
}

fn publish(channel: &Channel, queue: &str, body: impl Into<Bytes>) -> Result<(), Error> {
    channel.basic_publish(
        "",
        queue,
        PublishOptions::default(),
        BasicProperties::default(),
        body,
    )
}

// ---- the relay itself --------------------------------------------------------------

#[test]
fn a_throttled_link_delivers_every_message_intact_and_in_order() {
    const RATE: u64 = 256 * 1024;
    let relay = relay();
    let connection = connect_through(&relay);
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let consumer = channel
        .basic_consume(
            &queue,
            "",
            ConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .unwrap();
    relay.throttle(Direction::Both, Some(RATE));
    let body = |n: usize| Bytes::from(vec![(n % 251) as u8; 2048 + n]);
    let started = Instant::now();
    for n in 0..64 {
        publish(&channel, &queue, body(n)).unwrap();
    }
    for n in 0..64 {
        let delivery = consumer
            .recv_timeout(ARRIVES)
            .unwrap()
            .unwrap_or_else(|| panic!("message {n} never came"));
        assert_eq!(delivery.body, body(n), "message {n}");
    }
    // About 150 KiB each way at 256 KiB/s.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the throttle let {} KiB through in {:?}",
        (64 * 2048 + 64 * 63 / 2) / 1024,
        started.elapsed()
    );
    relay.throttle(Direction::Both, None);
    connection.close().unwrap();
}

// ---- 9. the link dies with work pending -------------------------------------------------

/// Channel 1 consumes, channel 2 has a publish awaiting its confirm, channel
/// 3 a queue.declare awaiting its answer (the relay holds the broker's
/// answers back); then `fault` kills the link. Everything pending must
/// fail promptly with the same error, which is returned.
fn everything_pending_when_the_link_dies(fault: fn(&Relay)) -> Error {
    let relay = relay();
    relay.record();
    let connection = connect_through(&relay);
    let consuming = connection.open_channel().unwrap();
    let queue = exclusive_queue(&consuming);
    let consumer = consuming
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .unwrap();
    let confirming = connection.open_channel().unwrap();
    confirming.confirm_select().unwrap();
    let declaring = connection.open_channel().unwrap();

    relay.stall(Direction::ToClient);
    let mut confirm = confirming
        .basic_publish_confirmed(
            "",
            &queue,
            PublishOptions::default(),
            BasicProperties::default(),
            "held back",
        )
        .unwrap();
    let (declared, declare_result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = declared.send(declaring.queue_declare(
            &unique("never-answered"),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        ));
    });
    // Wait for the declare to pass the relay (it cannot be answered).
    let declares = || {
        let sent = relay.bytes_from_client(0);
        let (frames, _) = decode_all(&sent[PROTOCOL_HEADER.len()..], 1 << 20);
        frames
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Frame::Method {
                        channel: 3,
                        method: Method::QueueDeclare(_)
                    }
                )
            })
            .count()
    };
    eventually(ARRIVES, || (declares() == 1).then_some(()))
        .expect("the declare never reached the relay");

    let started = Instant::now();
    fault(&relay);
    let rpc = declare_result
        .recv_timeout(PROMPTLY)
        .expect("the pending declare did not fail within 1 s")
        .expect_err("the declare must fail");
    let confirm = confirm
        .wait_timeout(PROMPTLY)
        .expect_err("the confirm must fail");
    let consumed = consumer
        .recv_timeout(PROMPTLY)
        .expect_err("the consumer must end with an error");
    assert!(
        started.elapsed() < PROMPTLY,
        "the pending work took {:?} to fail",
        started.elapsed()
    );
    let reason = connection.close_reason().expect("the connection is closed");
    for (what, error) in [
        ("rpc", &rpc),
        ("confirm", &confirm),
        ("consumer", &consumed),
    ] {
        assert!(
            same_error(error, &reason),
            "the {what} failed with {error:?}, the connection with {reason:?}"
        );
    }
    reason
}

#[test]
fn a_cut_link_fails_every_pending_rpc_confirm_and_consumer_promptly_with_the_same_error() {
    match everything_pending_when_the_link_dies(Relay::cut) {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn a_reset_link_fails_every_pending_rpc_confirm_and_consumer_promptly_with_the_same_error() {
    match everything_pending_when_the_link_dies(Relay::reset) {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

// ---- 10. a link that goes silent -------------------------------------------------------

#[test]
fn a_link_that_goes_silent_both_ways_is_detected_after_two_heartbeat_intervals() {
    let relay = relay();
    let connection = connect_with(relay.config(config().heartbeat(1)));
    assert_eq!(connection.heartbeat(), 1);
    let channel = connection.open_channel().unwrap();
    relay.stall(Direction::Both);
    let stalled = Instant::now();
    let result = within(
        Duration::from_secs(5),
        "a declare on a silent link",
        move || channel.queue_declare("", QueueDeclareOptions::default(), FieldTable::new()),
    );
    let detected = stalled.elapsed();
    match result {
        Err(Error::MissedHeartbeats { interval }) => {
            assert_eq!(interval, Duration::from_secs(1))
        }
        other => panic!("expected MissedHeartbeats, got {other:?}"),
    }
    // Silence counts from the last frame heard: channel.open-ok, just
    // before the stall.
    assert!(
        detected >= Duration::from_millis(1800) && detected <= Duration::from_millis(3000),
        "detected {detected:?} after the link went silent"
    );
}

// ---- 12. the broker closes the connection ------------------------------------------------

#[test]
fn a_connection_closed_by_the_broker_is_answered_with_close_ok_and_its_reason_surfaces() {
    let relay = relay();
    relay.record();
    let name = unique("closed-through-relay");
    let connection = connect_with(relay.config(config().connection_name(name.clone())));
    let channel = connection.open_channel().unwrap();
    let listing = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]);
    let pid = listing
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} not in:\n{listing}"))
        .to_owned();
    let reason = "closed by scripted_relay";
    rabbitmqctl(&["close_connection", &pid, reason]);

    let error = eventually(ARRIVES, || connection.close_reason())
        .expect("the connection is still open after close_connection");
    match &error {
        Error::ConnectionClosed {
            code: 320, text, ..
        } if text.contains(reason) => {}
        other => panic!("expected ConnectionClosed 320 with the reason, got {other:?}"),
    }
    match channel.basic_qos(1, false) {
        Err(e) if same_error(&e, &error) => {}
        other => panic!("a call on its channel gave {other:?}"),
    }

    // What the client sent, as the relay saw it: close-ok last, no close.
    let frames = eventually(ARRIVES, || {
        let sent = relay.bytes_from_client(0);
        let (frames, _) = decode_all(&sent[PROTOCOL_HEADER.len()..], 1 << 20);
        let last = frames.last()?;
        matches!(
            last,
            Frame::Method {
                channel: 0,
                method: Method::ConnectionCloseOk(_)
            }
        )
        .then_some(frames)
    })
    .unwrap_or_else(|| {
        let sent = relay.bytes_from_client(0);
        let (frames, _) = decode_all(&sent[PROTOCOL_HEADER.len()..], 1 << 20);
        panic!(
            "the client did not end with close-ok; it sent {}",
            frames.iter().map(describe).collect::<Vec<_>>().join(", ")
        )
    });
    let closes = frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                Frame::Method {
                    method: Method::ConnectionClose(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(closes, 0, "the client sent connection.close of its own");
}

// ---- 13. a stalled write path ------------------------------------------------------------

#[test]
fn a_publish_with_a_timeout_times_out_when_the_link_stalls_and_close_still_returns() {
    let relay = relay();
    let connection = Arc::new(connect_through(&relay));
    let channel = connection.open_channel().unwrap();
    relay.stall(Direction::ToBroker);
    let body = Bytes::from(vec![0u8; 1 << 20]);
    let mut published = 0;
    let timed_out = loop {
        match channel.basic_publish_timeout(
            "",
            "nowhere",
            PublishOptions::default(),
            BasicProperties::default(),
            body.clone(),
            Duration::from_millis(500),
        ) {
            Ok(()) => published += 1,
            Err(e) => break e,
        }
        assert!(
            published < 256,
            "256 MiB published into a stalled link: no back-pressure"
        );
    };
    assert!(
        matches!(
            timed_out,
            Error::Timeout {
                operation: "basic.publish",
                ..
            }
        ),
        "{timed_out:?}"
    );
    assert!(
        published >= 2,
        "timed out after {published} MiB, before the 2 MiB high-water mark"
    );
    let closing = connection.clone();
    let _ = within(
        Duration::from_secs(10),
        "close() on a stalled link",
        move || closing.close(),
    );
    drop(channel);
}
