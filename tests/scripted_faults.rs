//! Fault scenarios end to end, against a scripted fake broker
//! (`tests/support/fake_broker.rs`): each test plays a misbehaving server
//! byte by byte and checks what warren does about it, through the real
//! reactor and the public API. No RabbitMQ needed.
//!
//! The sans-IO session tests (`src/session/tests.rs`) check the same rules
//! on the state machine alone; these check that the reactor and the facades
//! carry them to the application: the typed error, the reply code on the
//! wire, promptly, without hanging.

mod support;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::encode;
use support::fake_broker::{
    deliver_bytes, describe, fail, method_payload, methods_with_id, raw_frame, same_error, within,
    FakeBroker, Peer, Step, Tune,
};
use warren::blocking::{Channel, Connection, Consumer};
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{
    BasicDeliver, BasicProperties, ChannelClose, ChannelCloseOk, ConfirmSelectOk,
    ConnectionBlocked, ConnectionClose, ConnectionCloseOk, ContentHeader, EncodedBasicProperties,
    FieldTable, Frame, Method, MethodId, QueueDeclareOk, ReplyCode, ShortString, FRAME_BODY,
    FRAME_HEADER, FRAME_METHOD,
};
use warren::{ConnectionConfig, DecodeError, DecodeErrorKind, Delivery, Error};

/// How long the client may take to notice a fault: "promptly".
const PROMPTLY: Duration = Duration::from_secs(1);
/// How long a close handshake may take when the fake broker answers
/// close-ok at once (well below the client's 5 s wait for a missing one).
const CLOSES: Duration = Duration::from_secs(2);
/// How long to wait for something that should come.
const ARRIVES: Duration = Duration::from_secs(5);
/// The consumer tag the tests ask for.
const CTAG: &str = "ctag";

// ---- helpers -----------------------------------------------------------------

fn tune(frame_max: u32) -> Tune {
    Tune {
        frame_max,
        ..Tune::default()
    }
}

fn ctag() -> ShortString {
    ShortString::from_static(CTAG)
}

#[track_caller]
fn open(broker: &FakeBroker) -> Connection {
    open_with(broker.config())
}

#[track_caller]
fn open_with(config: ConnectionConfig) -> Connection {
    Connection::open_with(config)
        .unwrap_or_else(|e| panic!("could not connect to the fake broker: {e}"))
}

/// The error opening a connection to `broker` fails with.
#[track_caller]
fn refused(broker: &FakeBroker) -> Error {
    match Connection::open_with(broker.config()) {
        Err(e) => e,
        Ok(_) => panic!("the handshake must fail"),
    }
}

fn declare(channel: &Channel, queue: &str) -> Result<QueueDeclareOk, Error> {
    channel.queue_declare(queue, QueueDeclareOptions::default(), FieldTable::new())
}

fn consume(channel: &Channel) -> Consumer {
    channel
        .basic_consume(
            "q",
            CTAG,
            ConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .expect("basic.consume")
}

/// The delivery the fake broker's `deliver_bytes` describes.
fn expected_delivery(delivery_tag: u64, body: &[u8]) -> Delivery {
    Delivery {
        delivery_tag,
        redelivered: false,
        exchange: ShortString::empty(),
        routing_key: ShortString::from_static("key"),
        consumer_tag: ctag(),
        properties: EncodedBasicProperties::default(),
        body: Bytes::copy_from_slice(body),
    }
}

/// The error the connection closed with, waiting at most `limit` for it.
#[track_caller]
fn close_reason(connection: &Connection, limit: Duration) -> Error {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = connection.close_reason() {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "the connection is still open {limit:?} later (its close handshake did not finish)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The decode error inside `error`, or a panic saying what it was instead.
#[track_caller]
fn decode_error(error: &Error) -> &DecodeError {
    match error {
        Error::Protocol(e) => e,
        other => panic!("expected Error::Protocol, got {other:?}"),
    }
}

/// The reply code of a protocol violation, or a panic.
#[track_caller]
fn violation_code(error: &Error) -> ReplyCode {
    match error {
        Error::ProtocolViolation { code, .. } => *code,
        other => panic!("expected Error::ProtocolViolation, got {other:?}"),
    }
}

/// A content header's payload: class, weight, body size, property flags and
/// the property bytes as given (anything may follow them).
fn header_payload(class_id: u16, body_size: u64, flags: u16, rest: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class_id.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&body_size.to_be_bytes());
    payload.extend_from_slice(&flags.to_be_bytes());
    payload.extend_from_slice(rest);
    payload
}

/// The frame of a basic.deliver (no content) on channel 1.
fn deliver_method(delivery_tag: u64) -> Vec<u8> {
    encode(&Frame::Method {
        channel: 1,
        method: Method::BasicDeliver(BasicDeliver {
            consumer_tag: ctag(),
            delivery_tag,
            redelivered: false,
            exchange: ShortString::empty(),
            routing_key: ShortString::from_static("key"),
        }),
    })
}

/// A fake broker that opens channel 1, waits for the client's queue.declare,
/// sends `bytes`, and expects the client to close the connection with
/// `code` (then answers close-ok and waits for the socket to close).
fn broker_sending_after_declare(tune: Tune, bytes: Vec<u8>, code: u16) -> FakeBroker {
    FakeBroker::start(move |peer| {
        peer.handshake(tune)?;
        peer.serve_channel_open(1)?;
        peer.expect_method(1, MethodId::QUEUE_DECLARE)?;
        peer.send_raw(&bytes)?;
        peer.expect_close(code)?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    })
}

/// Opens a connection and channel 1, has the fake broker answer the
/// channel's queue.declare with `bytes`, checks the connection is closed
/// with `code` on the wire, and returns the error the declare failed with
/// (the same the connection reports).
#[track_caller]
fn declare_meets(tune: Tune, bytes: Vec<u8>, code: u16) -> Error {
    let broker = broker_sending_after_declare(tune, bytes, code);
    let connection = open(&broker);
    let channel = connection.open_channel().expect("open channel 1");
    let started = Instant::now();
    let error = declare(&channel, "q").expect_err("the declare must fail");
    assert!(
        started.elapsed() < ARRIVES,
        "the declare took {:?} to fail",
        started.elapsed()
    );
    // The fake broker answers close-ok at once: the connection is closed
    // promptly, not when the client gives up waiting for close-ok.
    let reason = close_reason(&connection, CLOSES);
    assert!(
        same_error(&error, &reason),
        "the declare failed with {error:?} but the connection with {reason:?}"
    );
    broker.finish();
    error
}

/// Like [`declare_meets`], for content: channel 1 has a consumer (tag
/// `ctag`) when the fake broker sends `bytes`. Returns the error the
/// consumer ended with.
#[track_caller]
fn consumer_meets(bytes: Vec<u8>, code: u16) -> Error {
    let broker = FakeBroker::start(move |peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        peer.serve_consume(1)?;
        peer.send_raw(&bytes)?;
        peer.expect_close(code)?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    let connection = open(&broker);
    let channel = connection.open_channel().expect("open channel 1");
    let consumer = consume(&channel);
    let error = match consumer.recv_timeout(ARRIVES) {
        Err(e) => e,
        Ok(other) => panic!("the consumer got {other:?}, expected an error"),
    };
    let reason = close_reason(&connection, CLOSES);
    assert!(
        same_error(&error, &reason),
        "the consumer ended with {error:?} but the connection with {reason:?}"
    );
    broker.finish();
    error
}

/// Peak virtual memory of this process in bytes (Linux), to check that no
/// untrusted length was allocated.
fn peak_virtual_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPeak:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// ---- 1. frame_max ----------------------------------------------------------------

#[test]
fn a_frame_over_the_negotiated_frame_max_is_refused_from_its_header_with_501() {
    // Only the 7-byte header of a 5000-byte method frame is sent: warren
    // must refuse it without waiting for (or buffering) the payload.
    let header = [FRAME_METHOD, 0, 1, 0, 0, 0x13, 0x88];
    let error = declare_meets(tune(4096), header.to_vec(), 501);
    assert_eq!(
        decode_error(&error).kind,
        DecodeErrorKind::FrameTooLarge {
            frame_size: 5008,
            frame_max: 4096
        }
    );
    assert_eq!(error.reply_code(), Some(501));
}

#[test]
fn a_frame_over_4096_before_tune_is_refused_with_501() {
    // After start-ok, a frame header announcing 5000 bytes where tune
    // should be: the pre-tune limit is 4096, whatever frame_max will be.
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.send_start()?;
        peer.expect_start_ok()?;
        peer.send_raw(&[FRAME_METHOD, 0, 0, 0, 0, 0x13, 0x88])?;
        peer.expect_close(501)?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    let started = Instant::now();
    let error = refused(&broker);
    // The fake broker answers close-ok at once.
    assert!(
        started.elapsed() < CLOSES,
        "the failed handshake took {:?} to end",
        started.elapsed()
    );
    assert_eq!(
        decode_error(&error).kind,
        DecodeErrorKind::FrameTooLarge {
            frame_size: 5008,
            frame_max: 4096
        }
    );
    broker.finish();
}

// ---- 2. frames at the limit, and a limit below the minimum ----------------------

#[test]
fn a_frame_exactly_at_frame_max_is_accepted_and_the_client_keeps_to_it() {
    let body_at_limit = vec![7u8; 4096 - 8];
    let body = body_at_limit.clone();
    let broker = FakeBroker::start(move |peer| {
        let handshake = peer.handshake(tune(4096))?;
        if handshake.tune_ok.frame_max != 4096 {
            return fail(format!("tune-ok frame_max {}", handshake.tune_ok.frame_max));
        }
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        let bytes = deliver_bytes(1, &tag, 1, &body, 4096);
        // The body frame is exactly 4096 bytes on the wire.
        let body_frame_at = bytes.len() - 4096;
        if bytes[body_frame_at] != FRAME_BODY {
            return fail("the body frame is not where expected");
        }
        peer.send_raw(&bytes)?;
        // The client's own frames stay within 4096 (the peer's decoder
        // refuses larger ones): a 10 000-byte publish comes in 3 body frames.
        peer.expect_method(1, MethodId::BASIC_PUBLISH)?;
        let mut sizes = Vec::new();
        let mut received = 0;
        while received < 10_000 {
            match peer.next_non_heartbeat()? {
                Frame::Header { header, .. } if header.body_size == 10_000 => {}
                Frame::Body { payload, .. } => {
                    received += payload.len();
                    sizes.push(payload.len() + 8);
                }
                other => return fail(format!("unexpected {}", describe(&other))),
            }
        }
        if sizes != [4096, 4096, 10_000 - 2 * 4088 + 8] {
            return fail(format!("body frames of {sizes:?} bytes"));
        }
        peer.serve_close()?;
        Ok(())
    });
    let connection = open(&broker);
    assert_eq!(connection.frame_max(), 4096);
    let channel = connection.open_channel().unwrap();
    let consumer = consume(&channel);
    let delivery = consumer
        .recv_timeout(ARRIVES)
        .expect("the delivery")
        .expect("a delivery within the limit");
    assert_eq!(delivery, expected_delivery(1, &body_at_limit));
    channel
        .basic_publish(
            "",
            "q",
            PublishOptions::default(),
            BasicProperties::default(),
            vec![1u8; 10_000],
        )
        .unwrap();
    connection.close().unwrap();
    broker.finish();
}

#[test]
fn a_tuned_frame_max_below_4096_is_refused() {
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.send_start()?;
        peer.expect_start_ok()?;
        peer.send_tune(tune(2048))?;
        peer.expect_close(ReplyCode::CommandInvalid.code())?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    let error = refused(&broker);
    assert_eq!(violation_code(&error), ReplyCode::CommandInvalid, "{error}");
    broker.finish();
}

// ---- 3. framing faults ------------------------------------------------------------

#[test]
fn a_frame_end_octet_other_than_0xce_is_fatal_with_501() {
    let mut frame = raw_frame(FRAME_METHOD, 1, &method_payload(QueueDeclareOk::default()));
    *frame.last_mut().unwrap() = 0x00;
    let error = declare_meets(Tune::default(), frame, 501);
    assert_eq!(
        decode_error(&error).kind,
        DecodeErrorKind::BadFrameEnd { found: 0 }
    );
}

#[test]
fn an_unknown_frame_type_is_fatal_with_501() {
    let error = declare_meets(Tune::default(), raw_frame(9, 1, &[]), 501);
    assert_eq!(
        decode_error(&error).kind,
        DecodeErrorKind::UnknownFrameType { frame_type: 9 }
    );
}

// ---- 4. frames on the wrong channel -----------------------------------------------

#[test]
fn a_heartbeat_on_a_channel_other_than_0_closes_the_connection_with_503() {
    let error = declare_meets(Tune::default(), raw_frame(8, 1, &[]), 503);
    assert_eq!(violation_code(&error), ReplyCode::CommandInvalid, "{error}");
}

#[test]
fn a_connection_method_on_a_channel_other_than_0_closes_the_connection_with_503() {
    let blocked = encode(&Frame::Method {
        channel: 1,
        method: Method::ConnectionBlocked(ConnectionBlocked {
            reason: ShortString::from_static("low on memory"),
        }),
    });
    let error = declare_meets(Tune::default(), blocked, 503);
    assert_eq!(violation_code(&error), ReplyCode::CommandInvalid, "{error}");
}

#[test]
fn content_on_channel_0_closes_the_connection_with_504() {
    let header = encode(&Frame::Header {
        channel: 0,
        header: ContentHeader {
            class_id: 60,
            body_size: 0,
            properties: EncodedBasicProperties::default(),
        },
    });
    let body = raw_frame(FRAME_BODY, 0, b"stray");
    for (what, bytes) in [("a content header", header), ("a body frame", body)] {
        let error = declare_meets(Tune::default(), bytes, 504);
        assert_eq!(
            violation_code(&error),
            ReplyCode::ChannelError,
            "{what} on channel 0: {error}"
        );
    }
}

// ---- 5. content sequence faults -----------------------------------------------------

#[test]
fn a_content_header_of_another_class_than_its_method_closes_the_connection_with_501() {
    // AMQP 0-9-1 §4.2.6.1: the content header's class-id must match the
    // method frame's; an invalid one is a connection exception 501 FRAME_ERROR.
    let mut bytes = deliver_method(1);
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(50, 0, 0, &[])));
    let error = consumer_meets(bytes, 501);
    assert_eq!(error.reply_code(), Some(501), "{error:?}");
}

#[test]
fn a_body_frame_without_its_content_header_closes_the_connection_with_505() {
    let mut after_deliver = deliver_method(1);
    after_deliver.extend(raw_frame(FRAME_BODY, 1, b"body"));
    let alone = raw_frame(FRAME_BODY, 1, b"body");
    for (what, bytes) in [
        ("after basic.deliver", after_deliver),
        ("without a method", alone),
    ] {
        let error = consumer_meets(bytes, 505);
        assert_eq!(
            violation_code(&error),
            ReplyCode::UnexpectedFrame,
            "a body {what}: {error}"
        );
    }
}

#[test]
fn a_content_header_without_a_method_closes_the_connection_with_505() {
    let bytes = raw_frame(FRAME_HEADER, 1, &header_payload(60, 4, 0, &[]));
    let error = consumer_meets(bytes, 505);
    assert_eq!(
        violation_code(&error),
        ReplyCode::UnexpectedFrame,
        "{error}"
    );
}

#[test]
fn a_method_in_the_middle_of_content_closes_the_connection_with_505() {
    let mut bytes = deliver_method(1);
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(60, 10, 0, &[])));
    bytes.extend(raw_frame(FRAME_BODY, 1, b"half"));
    bytes.extend(deliver_method(2));
    let error = consumer_meets(bytes, 505);
    assert_eq!(
        violation_code(&error),
        ReplyCode::UnexpectedFrame,
        "{error}"
    );
}

#[test]
fn a_body_longer_than_its_header_declared_closes_the_connection_with_501() {
    let mut bytes = deliver_method(1);
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(60, 3, 0, &[])));
    bytes.extend(raw_frame(FRAME_BODY, 1, b"12345"));
    let error = consumer_meets(bytes, 501);
    assert_eq!(violation_code(&error), ReplyCode::FrameError, "{error}");
}

// ---- 6. padding after the properties -------------------------------------------------

#[test]
fn a_content_header_with_padding_after_its_properties_is_consumed_exactly() {
    let mut bytes = deliver_method(1);
    // content-type "text/plain", then 5 bytes of padding inside the frame.
    let mut properties = vec![10];
    properties.extend_from_slice(b"text/plain");
    properties.extend_from_slice(&[0, 0, 0, 0, 0]);
    bytes.extend(raw_frame(
        FRAME_HEADER,
        1,
        &header_payload(60, 5, 0x8000, &properties),
    ));
    bytes.extend(raw_frame(FRAME_BODY, 1, b"hello"));
    bytes.extend(deliver_bytes(1, &ctag(), 2, b"after", 131_072));
    let broker = FakeBroker::start(move |peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        peer.serve_consume(1)?;
        peer.send_raw(&bytes)?;
        peer.serve_close()?;
        Ok(())
    });
    let connection = open(&broker);
    let channel = connection.open_channel().unwrap();
    let consumer = consume(&channel);
    let first = consumer.recv_timeout(ARRIVES).unwrap().expect("delivery 1");
    let mut expected = expected_delivery(1, b"hello");
    expected.properties = BasicProperties::default()
        .with_content_type(ShortString::from_static("text/plain"))
        .into();
    assert_eq!(first, expected, "the padding is not kept");
    let second = consumer.recv_timeout(ARRIVES).unwrap().expect("delivery 2");
    assert_eq!(second, expected_delivery(2, b"after"));
    assert!(connection.close_reason().is_none());
    connection.close().unwrap();
    broker.finish();
}

// ---- 7. untrusted lengths and tags -----------------------------------------------------

#[test]
fn lengths_past_the_frame_end_and_unknown_field_tags_are_typed_errors_that_allocate_nothing() {
    const HUGE: u32 = 0xFFFF_FFF0;
    let headers_flag = 0x2000;
    let table = |entries: &[u8]| {
        let mut t = (entries.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(entries);
        t
    };
    // A table whose length runs 4 GiB past its 16-byte frame.
    let huge_table = HUGE.to_be_bytes().to_vec();
    // A table holding a long string of 4 GiB.
    let mut long_string = vec![1, b'k', b'S'];
    long_string.extend_from_slice(&HUGE.to_be_bytes());
    // A table holding an array of 4 GiB.
    let mut array = vec![1, b'k', b'A'];
    array.extend_from_slice(&HUGE.to_be_bytes());
    // A table holding a value of type 'Z', which does not exist.
    let unknown_tag = vec![1, b'k', b'Z', 0, 0, 0, 0];
    let cases: [(&str, Vec<u8>, DecodeErrorKind); 4] = [
        (
            "a table length",
            huge_table,
            DecodeErrorKind::LengthOverrun {
                declared: u64::from(HUGE),
                available: 0,
            },
        ),
        (
            "a long-string length in a table",
            table(&long_string),
            DecodeErrorKind::LengthOverrun {
                declared: u64::from(HUGE),
                available: 0,
            },
        ),
        (
            "an array length in a table",
            table(&array),
            DecodeErrorKind::LengthOverrun {
                declared: u64::from(HUGE),
                available: 0,
            },
        ),
        (
            "an unknown field type",
            table(&unknown_tag),
            DecodeErrorKind::UnknownFieldType { tag: b'Z' },
        ),
    ];
    let peak_before = peak_virtual_memory();
    for (what, properties, kind) in cases {
        let mut bytes = deliver_method(1);
        bytes.extend(raw_frame(
            FRAME_HEADER,
            1,
            &header_payload(60, 1, headers_flag, &properties),
        ));
        let error = consumer_meets(bytes, 502);
        assert_eq!(decode_error(&error).kind, kind, "{what}");
        assert_eq!(error.reply_code(), Some(502), "{what}");
    }

    // The same before the handshake is done: connection.start's
    // server-properties announcing 4 GiB in a small frame.
    let mut start = vec![0, 10, 0, 10, 0, 9];
    start.extend_from_slice(&HUGE.to_be_bytes());
    start.extend_from_slice(&[0; 8]);
    let broker = FakeBroker::start(move |peer| {
        peer.expect_protocol_header()?;
        peer.send_raw(&raw_frame(FRAME_METHOD, 0, &start))?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    let error = refused(&broker);
    assert!(
        matches!(
            decode_error(&error).kind,
            DecodeErrorKind::LengthOverrun { declared, .. } if declared == u64::from(HUGE)
        ),
        "{error:?}"
    );
    broker.finish();

    if let (Some(before), Some(after)) = (peak_before, peak_virtual_memory()) {
        assert!(
            after.saturating_sub(before) < 1 << 30,
            "peak virtual memory grew by {} MiB: an untrusted length was allocated",
            (after - before) >> 20
        );
    }
}

// ---- 8. the same stream, however it is cut ----------------------------------------------

#[test]
fn a_delivery_split_at_every_byte_offset_arrives_intact() {
    let body = b"split me anywhere".to_vec();
    let length = deliver_bytes(1, &ctag(), 1, &body, 131_072).len();
    let script_body = body.clone();
    let broker = FakeBroker::start(move |peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        // Delivery k is cut in two at byte k...
        for cut in 1..length {
            let bytes = deliver_bytes(1, &tag, cut as u64, &script_body, 131_072);
            peer.send_in_pieces(&bytes, &[cut], Duration::from_millis(1))?;
        }
        // ...and the last one is sent one byte at a time.
        let bytes = deliver_bytes(1, &tag, length as u64, &script_body, 131_072);
        let every: Vec<usize> = (1..bytes.len()).collect();
        peer.send_in_pieces(&bytes, &every, Duration::from_millis(1))?;
        peer.serve_close()?;
        Ok(())
    });
    let connection = open(&broker);
    let channel = connection.open_channel().unwrap();
    let consumer = consume(&channel);
    for tag in 1..=length as u64 {
        let delivery = consumer
            .recv_timeout(ARRIVES)
            .unwrap_or_else(|e| panic!("delivery {tag}: {e}"))
            .unwrap_or_else(|| panic!("delivery {tag} never came"));
        assert_eq!(delivery, expected_delivery(tag, &body), "split at {tag}");
    }
    connection.close().unwrap();
    broker.finish();
}

#[test]
fn many_frames_coalesced_into_one_write_give_the_same_deliveries() {
    const COUNT: u64 = 2000;
    let body = |tag: u64| format!("message {tag}").into_bytes();
    let broker = FakeBroker::start(move |peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        let mut all = Vec::new();
        for n in 1..=COUNT {
            all.extend(deliver_bytes(1, &tag, n, &body(n), 131_072));
        }
        peer.send_raw(&all)?;
        peer.serve_close()?;
        Ok(())
    });
    let connection = open(&broker);
    let channel = connection.open_channel().unwrap();
    let consumer = consume(&channel);
    for tag in 1..=COUNT {
        let delivery = consumer
            .recv_timeout(ARRIVES)
            .unwrap_or_else(|e| panic!("delivery {tag}: {e}"))
            .unwrap_or_else(|| panic!("delivery {tag} never came"));
        assert_eq!(delivery, expected_delivery(tag, &body(tag)));
    }
    connection.close().unwrap();
    broker.finish();
}

// ---- 9. the stream ends mid-frame ------------------------------------------------------

/// Channel 1 consumes, channel 2 has a publish awaiting its confirm, channel
/// 3 a queue.declare awaiting its answer; then the fake broker sends half a
/// frame and cuts the stream (`cut` does both). Every one of them must fail
/// promptly with the same error, which is returned.
fn everything_pending_when_the_stream_ends(cut: fn(&mut Peer, &[u8]) -> Step) -> Error {
    let broker = FakeBroker::start(move |peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        peer.serve_consume(1)?;
        peer.serve_channel_open(2)?;
        peer.expect_method(2, MethodId::CONFIRM_SELECT)?;
        peer.send_method(2, ConfirmSelectOk)?;
        peer.serve_channel_open(3)?;
        peer.expect_method(2, MethodId::BASIC_PUBLISH)?;
        peer.next_non_heartbeat()?; // its content header
        peer.next_non_heartbeat()?; // its body
        peer.expect_method(3, MethodId::QUEUE_DECLARE)?;
        let deliver = deliver_bytes(1, &ctag(), 1, b"never whole", 131_072);
        cut(peer, &deliver[..deliver.len() / 2])?;
        Ok(())
    });
    let connection = open(&broker);
    let consuming = connection.open_channel().unwrap();
    let consumer = consume(&consuming);
    let confirming = connection.open_channel().unwrap();
    confirming.confirm_select().unwrap();
    let declaring = connection.open_channel().unwrap();
    let mut confirm = confirming
        .basic_publish_confirmed(
            "",
            "q",
            PublishOptions::default(),
            BasicProperties::default(),
            "unconfirmed",
        )
        .unwrap();
    let started = Instant::now();
    let rpc = within(
        PROMPTLY * 2,
        "a queue.declare pending when the stream ended",
        move || declare(&declaring, "q"),
    );
    let rpc = rpc.expect_err("the declare must fail");
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
    let reason = close_reason(&connection, ARRIVES);
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
    broker.finish();
    reason
}

#[test]
fn eof_mid_frame_fails_every_pending_rpc_confirm_and_consumer_promptly_with_the_same_error() {
    // The half frame and the FIN arrive together, in one segment.
    let error = everything_pending_when_the_stream_ends(|peer, half_a_frame| {
        peer.send_raw_then_shutdown(half_a_frame)
    });
    match &error {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn a_reset_mid_frame_fails_every_pending_rpc_confirm_and_consumer_promptly_with_the_same_error() {
    let error = everything_pending_when_the_stream_ends(|peer, half_a_frame| {
        peer.send_raw(half_a_frame)?;
        peer.reset()
    });
    match &error {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

// ---- 10 and 11. heartbeats ----------------------------------------------------------------

#[test]
fn a_half_open_peer_is_detected_after_two_heartbeat_intervals() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune {
            heartbeat: 1,
            ..Tune::default()
        })?;
        peer.serve_channel_open(1)?;
        // Keeps the socket open but never reads or sends again.
        peer.stall_until_released();
        Ok(())
    });
    let connection = Arc::new(open(&broker));
    assert_eq!(connection.heartbeat(), 1);
    let channel = connection.open_channel().unwrap();
    let last_heard = Instant::now();
    let rpc = within(
        Duration::from_secs(5),
        "a declare on a dead link",
        move || declare(&channel, "q"),
    );
    let detected = last_heard.elapsed();
    let interval = Duration::from_secs(1);
    match rpc {
        Err(Error::MissedHeartbeats { interval: i }) if i == interval => {}
        other => panic!("expected MissedHeartbeats, got {other:?}"),
    }
    assert!(
        detected >= Duration::from_millis(1800) && detected <= Duration::from_millis(3000),
        "detected after {detected:?}, expected about two intervals of {interval:?}"
    );
    assert!(matches!(
        close_reason(&connection, ARRIVES),
        Error::MissedHeartbeats { .. }
    ));
    broker.finish();
}

#[test]
fn heartbeat_negotiation_takes_the_other_sides_value_when_one_is_0_and_otherwise_the_lower() {
    // (client asks, broker proposes, agreed)
    for (client, server, agreed) in [(0, 5, 5), (7, 0, 7), (10, 3, 3), (2, 9, 2), (0, 0, 0)] {
        let broker = FakeBroker::start(move |peer| {
            let handshake = peer.handshake(Tune {
                heartbeat: server,
                ..Tune::default()
            })?;
            if handshake.tune_ok.heartbeat != agreed {
                return fail(format!(
                    "client {client}, broker {server}: tune-ok says {}, expected {agreed}",
                    handshake.tune_ok.heartbeat
                ));
            }
            peer.serve_close()?;
            Ok(())
        });
        let connection = open_with(broker.config().heartbeat(client));
        assert_eq!(
            connection.heartbeat(),
            agreed,
            "client {client}, broker {server}"
        );
        connection.close().unwrap();
        broker.finish();
    }
}

#[test]
fn heartbeats_keep_flowing_while_the_application_is_slow_to_consume() {
    const WINDOW: Duration = Duration::from_millis(3200);
    let (observed, observation) = mpsc::channel::<Vec<Instant>>();
    let broker = FakeBroker::start(move |peer| {
        peer.handshake(Tune {
            heartbeat: 1,
            ..Tune::default()
        })?;
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        for n in 1..=50 {
            peer.deliver(1, &tag, n, b"nobody reads me yet")?;
        }
        // Our own heartbeats every 400 ms, while watching the client's.
        let start = Instant::now();
        let mut beats = Vec::new();
        let mut next_beat = start;
        while start.elapsed() < WINDOW {
            if Instant::now() >= next_beat {
                peer.heartbeat()?;
                next_beat += Duration::from_millis(400);
            }
            let wait = next_beat.saturating_duration_since(Instant::now());
            match peer.next_frame_within(wait.max(Duration::from_millis(1)))? {
                Some(Frame::Heartbeat { channel: 0 }) => beats.push(Instant::now()),
                Some(other) => return fail(format!("unexpected {}", describe(&other))),
                None => {}
            }
        }
        let _ = observed.send(beats);
        peer.serve_close()?;
        Ok(())
    });
    let connection = open_with(broker.config().heartbeat(1));
    let channel = connection.open_channel().unwrap();
    let consumer = consume(&channel);
    // The application does not read while the broker watches.
    let beats = observation
        .recv_timeout(WINDOW + ARRIVES)
        .expect("the fake broker's observations");
    assert!(
        beats.len() >= 4,
        "only {} heartbeats from the client in {WINDOW:?}",
        beats.len()
    );
    let widest = beats
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest <= Duration::from_millis(1000),
        "{widest:?} between two client heartbeats with a 1 s interval"
    );
    assert!(connection.close_reason().is_none(), "the connection died");
    for tag in 1..=50 {
        let delivery = consumer.recv_timeout(ARRIVES).unwrap().expect("buffered");
        assert_eq!(delivery.delivery_tag, tag);
    }
    connection.close().unwrap();
    broker.finish();
}

// ---- 13. a stalled write path ---------------------------------------------------------------

#[test]
fn a_publish_with_a_timeout_times_out_when_the_broker_stops_reading_and_close_still_returns() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        // Never reads again: the client's writes back up.
        peer.stall_until_released();
        Ok(())
    });
    let connection = Arc::new(open(&broker));
    let channel = connection.open_channel().unwrap();
    let body = Bytes::from(vec![0u8; 1 << 20]);
    let mut published = 0;
    let timed_out = loop {
        match channel.basic_publish_timeout(
            "",
            "q",
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
            "256 MiB published into a stalled socket: no back-pressure"
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
    let started = Instant::now();
    let _ = within(
        Duration::from_secs(10),
        "close() on a stalled socket",
        move || closing.close(),
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(channel);
    broker.finish();
}

// ---- 15. soft channel errors ---------------------------------------------------------------

#[test]
fn a_soft_channel_error_fails_only_that_channels_pending_operations() {
    use futures::executor::block_on;
    use warren::nonblocking;

    const CODES: [u16; 4] = [403, 404, 405, 406];
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        for code in CODES {
            peer.serve_channel_open(1)?;
            peer.serve_channel_open(2)?;
            // One RPC is on the wire per channel; channel 1's other two wait
            // in the client.
            peer.expect_method(1, MethodId::QUEUE_DECLARE)?;
            peer.expect_method(2, MethodId::QUEUE_DECLARE)?;
            peer.send_method(
                1,
                ChannelClose {
                    reply_code: code,
                    reply_text: ShortString::try_from(format!("soft error {code}")).unwrap(),
                    class_id: 50,
                    method_id: 10,
                },
            )?;
            peer.expect_method(1, MethodId::CHANNEL_CLOSE_OK)?;
            peer.send_method(
                2,
                QueueDeclareOk {
                    queue: ShortString::from_static("q2"),
                    ..Default::default()
                },
            )?;
            peer.expect_method(2, MethodId::CHANNEL_CLOSE)?;
            peer.send_method(2, ChannelCloseOk)?;
        }
        peer.serve_close()?;
        Ok(())
    });
    let connection = block_on(nonblocking::Connection::open_with(broker.config()))
        .expect("connect to the fake broker");
    for code in CODES {
        let one = block_on(connection.open_channel()).unwrap();
        let two = block_on(connection.open_channel()).unwrap();
        assert_eq!((one.id(), two.id()), (1, 2));
        let declare = |channel: &nonblocking::Channel, name: &str| {
            channel.queue_declare(name, QueueDeclareOptions::default(), FieldTable::new())
        };
        let on_one = [declare(&one, "a"), declare(&one, "b"), declare(&one, "c")];
        let on_two = declare(&two, "q2");
        for (n, call) in on_one.into_iter().enumerate() {
            let result = within(ARRIVES, "a call on the closed channel", move || {
                block_on(call)
            });
            match result {
                Err(Error::ChannelClosed { code: c, .. }) if c == code => {}
                other => panic!("call {n} on channel 1 gave {other:?}, expected {code}"),
            }
        }
        let ok = within(ARRIVES, "the call on the other channel", move || {
            block_on(on_two)
        })
        .unwrap_or_else(|e| panic!("channel 2's declare failed after {code} on channel 1: {e}"));
        assert_eq!(ok.queue.as_str(), Some("q2"));
        assert!(matches!(
            one.close_reason(),
            Some(Error::ChannelClosed { code: c, .. }) if c == code
        ));
        assert!(two.close_reason().is_none());
        block_on(two.close()).unwrap();
        drop(one);
    }
    block_on(connection.close()).unwrap();
    broker.finish();
}

// ---- 16. close races -------------------------------------------------------------------------

fn count(frames: &[Frame], id: MethodId) -> usize {
    methods_with_id(frames, id).len()
}

#[test]
fn a_close_from_the_broker_while_the_client_closes_is_answered_with_close_ok() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        peer.expect_connection_close()?;
        // The broker's own close crosses the client's.
        peer.send_method(
            0,
            ConnectionClose {
                reply_code: 320,
                reply_text: ShortString::from_static("CONNECTION_FORCED - shutdown"),
                class_id: 0,
                method_id: 0,
            },
        )?;
        peer.expect_method(0, MethodId::CONNECTION_CLOSE_OK)?;
        peer.send_method(0, ConnectionCloseOk)?;
        let rest = peer.read_until_closed(ARRIVES)?;
        if count(&rest, MethodId::CONNECTION_CLOSE) > 0 {
            return fail("the client sent a second connection.close");
        }
        Ok(())
    });
    let connection = open(&broker);
    let started = Instant::now();
    connection.close().expect("close");
    assert!(started.elapsed() < ARRIVES);
    broker.finish();
}

#[test]
fn only_one_connection_close_is_sent_however_often_the_application_closes() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        peer.expect_connection_close()?;
        // Time for the application's other close() calls to arrive while
        // the first one waits for close-ok.
        let mut meanwhile = Vec::new();
        while let Some(frame) = peer.next_frame_within(Duration::from_millis(300))? {
            meanwhile.push(frame);
        }
        peer.send_method(0, ConnectionCloseOk)?;
        meanwhile.extend(peer.read_until_closed(ARRIVES)?);
        if count(&meanwhile, MethodId::CONNECTION_CLOSE) > 0 {
            return fail(format!(
                "the client sent another connection.close: {}",
                meanwhile
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    });
    let connection = Arc::new(open(&broker));
    let closers: Vec<_> = (0..3)
        .map(|_| {
            let connection = connection.clone();
            std::thread::spawn(move || connection.close())
        })
        .collect();
    for closer in closers {
        closer.join().unwrap().expect("every close() succeeds");
    }
    drop(connection);
    broker.finish();
}

#[test]
fn when_the_broker_closes_as_the_client_closes_each_side_sends_one_close_and_one_close_ok() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        peer.send_method(
            0,
            ConnectionClose {
                reply_code: 320,
                reply_text: ShortString::from_static("CONNECTION_FORCED - going away"),
                class_id: 0,
                method_id: 0,
            },
        )?;
        let mut frames = Vec::new();
        loop {
            let frame = peer.next_non_heartbeat()?;
            let is_close_ok = matches!(
                &frame,
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_)
                }
            );
            if matches!(
                &frame,
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_)
                }
            ) {
                // The client's close crossed ours: answer it.
                peer.send_method(0, ConnectionCloseOk)?;
            }
            frames.push(frame);
            if is_close_ok {
                break;
            }
        }
        frames.extend(peer.read_until_closed(ARRIVES)?);
        let closes = count(&frames, MethodId::CONNECTION_CLOSE);
        let close_oks = count(&frames, MethodId::CONNECTION_CLOSE_OK);
        if closes > 1 || close_oks != 1 {
            return fail(format!(
                "{closes} close and {close_oks} close-ok from the client"
            ));
        }
        Ok(())
    });
    let connection = open(&broker);
    // Ok if the close went out first; the broker's reason if its close was
    // handled first.
    match connection.close() {
        Ok(()) | Err(Error::ConnectionClosed { code: 320, .. }) => {}
        Err(other) => panic!("close() gave {other:?}"),
    }
    broker.finish();
}

// ---- 17. acknowledgements the broker would refuse -----------------------------------------------

#[test]
fn a_double_or_unknown_ack_is_refused_locally_and_never_reaches_the_wire() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        peer.deliver(1, &tag, 1, b"one")?;
        peer.deliver(1, &tag, 2, b"two")?;
        peer.serve_channel_open(2)?;
        let frames = peer.serve_close()?;
        let acks: Vec<(u16, u64)> = methods_with_id(&frames, MethodId::BASIC_ACK)
            .into_iter()
            .map(|(channel, method)| match method {
                Method::BasicAck(ack) => (channel, ack.delivery_tag),
                _ => unreachable!(),
            })
            .collect();
        if acks != [(1, 1), (1, 2)] {
            return fail(format!(
                "acks on the wire: {acks:?}, expected [(1, 1), (1, 2)]"
            ));
        }
        for id in [MethodId::BASIC_NACK, MethodId::BASIC_REJECT] {
            if count(&frames, id) > 0 {
                return fail(format!("{} on the wire", id.name().unwrap_or("?")));
            }
        }
        Ok(())
    });
    let connection = open(&broker);
    let channel = connection.open_channel().unwrap();
    let consumer = channel
        .basic_consume("q", CTAG, ConsumeOptions::default(), FieldTable::new())
        .unwrap();
    let one = consumer.recv_timeout(ARRIVES).unwrap().expect("delivery 1");
    let two = consumer.recv_timeout(ARRIVES).unwrap().expect("delivery 2");
    let other = connection.open_channel().unwrap();
    let unknown = |result: Result<(), Error>, channel: u16, tag: u64| match result {
        Err(Error::UnknownDeliveryTag {
            channel: c,
            delivery_tag: t,
        }) if c == channel && t == tag => {}
        other => panic!("expected UnknownDeliveryTag {{ {channel}, {tag} }}, got {other:?}"),
    };
    unknown(other.basic_ack(two.delivery_tag, false), 2, 2);
    channel.basic_ack(one.delivery_tag, false).unwrap();
    unknown(channel.basic_ack(one.delivery_tag, false), 1, 1);
    unknown(channel.basic_nack(one.delivery_tag, false, true), 1, 1);
    unknown(channel.basic_reject(one.delivery_tag, true), 1, 1);
    unknown(channel.basic_ack(99, false), 1, 99);
    channel.basic_ack(two.delivery_tag, false).unwrap();
    assert!(channel.close_reason().is_none(), "the channel stays open");
    connection.close().unwrap();
    broker.finish();
}

// ---- 18. handshake faults -----------------------------------------------------------------------

#[test]
fn a_server_answering_with_another_protocol_header_is_an_unsupported_protocol() {
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.send_raw(b"AMQP\x00\x00\x0a\x00")?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    match Connection::open_with(broker.config()) {
        Err(Error::UnsupportedProtocol { header }) => assert_eq!(&header, b"AMQP\x00\x00\x0a\x00"),
        Err(other) => panic!("expected UnsupportedProtocol, got {other:?}"),
        Ok(_) => panic!("connected to a server of another protocol version"),
    }
    broker.finish();
}

#[test]
fn a_protocol_header_that_arrives_in_pieces_is_still_an_unsupported_protocol() {
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.send_in_pieces(b"AMQP\x00\x00\x0a\x00", &[1, 4], Duration::from_millis(50))?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    match Connection::open_with(broker.config()) {
        Err(Error::UnsupportedProtocol { header }) => assert_eq!(&header, b"AMQP\x00\x00\x0a\x00"),
        Err(other) => panic!("expected UnsupportedProtocol, got {other:?}"),
        Ok(_) => panic!("connected to a server of another protocol version"),
    }
    broker.finish();
}

#[test]
fn refused_credentials_are_an_auth_error() {
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.send_start()?;
        peer.expect_start_ok()?;
        peer.send_method(
            0,
            ConnectionClose {
                reply_code: 403,
                reply_text: ShortString::from_static(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
                ),
                class_id: 0,
                method_id: 0,
            },
        )?;
        peer.expect_method(0, MethodId::CONNECTION_CLOSE_OK)?;
        peer.read_until_closed(ARRIVES)?;
        Ok(())
    });
    match Connection::open_with(broker.config().credentials("guest", "wrong")) {
        Err(Error::Auth { text }) => assert!(text.contains("Login was refused"), "{text}"),
        Err(other) => panic!("expected Error::Auth, got {other:?}"),
        Ok(_) => panic!("connected with refused credentials"),
    }
    broker.finish();
}

#[test]
fn a_broker_hanging_up_after_start_ok_is_an_auth_error() {
    // Brokers without authentication_failure_close just close the socket.
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.send_start()?;
        peer.expect_start_ok()?;
        peer.close()?;
        Ok(())
    });
    match Connection::open_with(broker.config()) {
        Err(Error::Auth { .. }) => {}
        Err(other) => panic!("expected Error::Auth, got {other:?}"),
        Ok(_) => panic!("connected to a broker that hung up"),
    }
    broker.finish();
}

#[test]
fn a_server_that_never_sends_start_times_the_handshake_out() {
    let broker = FakeBroker::start(|peer| {
        peer.expect_protocol_header()?;
        peer.stall_until_released();
        Ok(())
    });
    let limit = Duration::from_secs(1);
    let config = broker.config().connection_timeout(limit);
    let started = Instant::now();
    let result = within(
        Duration::from_secs(5),
        "a handshake with no start",
        move || Connection::open_with(config).map(drop),
    );
    let took = started.elapsed();
    match result {
        Err(Error::Timeout { after, .. }) => assert_eq!(after, limit),
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    assert!(
        took >= limit && took < limit * 2,
        "the handshake gave up after {took:?}, the limit is {limit:?}"
    );
    broker.finish();
}

#[test]
fn opening_more_channels_than_channel_max_fails_with_channel_max_reached() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune {
            channel_max: 2,
            ..Tune::default()
        })?;
        peer.serve_channel_open(1)?;
        peer.serve_channel_open(2)?;
        let rest = peer.serve_close()?;
        if count(&rest, MethodId::CHANNEL_OPEN) > 0 {
            return fail("the client sent channel.open beyond channel_max");
        }
        Ok(())
    });
    let connection = open(&broker);
    assert_eq!(connection.channel_max(), 2);
    let _one = connection.open_channel().unwrap();
    let _two = connection.open_channel().unwrap();
    match connection.open_channel() {
        Err(Error::ChannelMaxReached { channel_max: 2 }) => {}
        Err(other) => panic!("expected ChannelMaxReached, got {other:?}"),
        Ok(channel) => panic!("opened channel {} beyond channel_max 2", channel.id()),
    }
    connection.close().unwrap();
    broker.finish();
}

// ---- 13. RPCs honour a timeout -------------------------------------------------------------

#[test]
fn a_blocking_rpc_the_broker_never_answers_fails_after_the_operation_timeout() {
    let broker = FakeBroker::start(|peer| {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        // Reads the declare, never answers it.
        peer.stall_until_released();
        Ok(())
    });
    let connection = open_with(
        broker
            .config()
            .operation_timeout(Duration::from_millis(300)),
    );
    let channel = connection.open_channel().unwrap();
    let started = Instant::now();
    let declared = channel.queue_declare("q", QueueDeclareOptions::default(), FieldTable::new());
    let waited = started.elapsed();
    assert!(
        matches!(declared, Err(Error::Timeout { .. })),
        "{declared:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );
    drop(channel);
    drop(connection);
    broker.finish();
}
