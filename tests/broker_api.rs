//! The blocking API end to end against a live RabbitMQ (`tests/support/broker.rs`
//! says where; `rabbitmq-server -detached` starts a local one). These tests
//! fail, never skip, when no broker is reachable.
//!
//! Every test opens its own connection and uses names from `unique`, so the
//! tests run in parallel; what they declare is exclusive to their connection
//! or deleted by a `Cleanup` guard, even when the test fails. Tests that
//! change broker-wide state live in `broker_alarms.rs`.

mod support;

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::broker::{
    config, connect, connect_with, eventually, rabbitmqctl, unique, uri_with, Cleanup,
};
use warren::blocking::{Channel, Connection, ConsumerSet};
use warren::options::{
    ConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeKind, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use warren::protocol::{BasicProperties, Decimal, FieldArray, FieldTable, FieldValue, ShortString};
use warren::{Confirmation, ConnectionConfig, Delivery, Error};

/// How long to wait for something that should come.
const ARRIVES: Duration = Duration::from_secs(10);
/// How long to wait before concluding that something did not come.
const QUIET: Duration = Duration::from_millis(300);

// ---- helpers ---------------------------------------------------------------

fn no_args() -> FieldTable {
    FieldTable::new()
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// A server-named queue that lives as long as the channel's connection.
fn exclusive_queue(channel: &Channel) -> String {
    let ok = channel
        .queue_declare("", exclusive(), no_args())
        .expect("declare a server-named exclusive queue");
    ok.queue.to_string()
}

fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: impl Into<Bytes>) {
    channel
        .basic_publish(
            exchange,
            routing_key,
            PublishOptions::default(),
            BasicProperties::default(),
            body,
        )
        .expect("basic.publish");
}

/// The next message of `queue` (acknowledged on fetch), or `None`.
fn get(channel: &Channel, queue: &str) -> Option<Delivery> {
    channel
        .basic_get(queue, true)
        .expect("basic.get")
        .map(|(delivery, _)| delivery)
}

fn get_body(channel: &Channel, queue: &str) -> Option<Bytes> {
    get(channel, queue).map(|d| d.body)
}

/// Ready messages in `queue` (a passive declare).
fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(queue, passive(), no_args())
        .expect("passive queue.declare")
        .message_count
}

/// Waits until `queue` holds `n` ready messages. RabbitMQ answers a passive
/// declare ahead of the deliveries still in the queue's mailbox, so a count
/// read right after a publish can be low for a moment.
#[track_caller]
fn wait_for_count(channel: &Channel, queue: &str, n: u32) {
    if eventually(ARRIVES, || {
        (message_count(channel, queue) == n).then_some(())
    })
    .is_none()
    {
        panic!(
            "expected {n} messages in {queue}, have {}",
            message_count(channel, queue)
        );
    }
}

fn consume(channel: &Channel, queue: &str) -> warren::blocking::Consumer {
    channel
        .basic_consume(queue, "", ConsumeOptions::default(), no_args())
        .expect("basic.consume")
}

fn next(consumer: &warren::blocking::Consumer) -> Delivery {
    consumer
        .recv_timeout(ARRIVES)
        .expect("consumer failed")
        .unwrap_or_else(|| panic!("no delivery within {ARRIVES:?}"))
}

fn text(body: &Bytes) -> &str {
    std::str::from_utf8(body).expect("UTF-8 body")
}

fn short(s: &str) -> ShortString {
    ShortString::try_from(s).expect("short string")
}

/// Asserts `result` is a channel exception with `code`; returns its text.
#[track_caller]
fn channel_closed<T>(result: Result<T, Error>, code: u16) -> String {
    match result {
        Err(Error::ChannelClosed {
            code: got, text, ..
        }) if got == code => text,
        Err(other) => panic!("expected a channel exception {code}, got {other:?}"),
        Ok(_) => panic!("expected a channel exception {code}, the call succeeded"),
    }
}

/// Deterministic, position-dependent bytes: a lost, repeated or reordered
/// frame shows up as a mismatch.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

#[track_caller]
fn assert_same_bytes(got: &[u8], expected: &[u8], what: &str) {
    if got != expected {
        let first = got.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, expected {}; first difference at {:?}",
            got.len(),
            expected.len(),
            first
        );
    }
}

// ---- the connection ----------------------------------------------------------

#[test]
fn amqplain_authenticates_like_plain() {
    let connection = connect_with(config().auth_mechanism(warren::AuthMechanism::AmqPlain));
    let channel = connection.open_channel().unwrap();
    exclusive_queue(&channel);
    connection.close().unwrap();
}

#[test]
fn the_server_properties_name_rabbitmq_as_the_product_and_tuning_is_negotiated() {
    let connection = connect();
    let properties = connection.server_properties();
    let product = properties
        .get("product")
        .expect("no product in server properties");
    assert_eq!(product.as_str(), Some("RabbitMQ"), "{properties:?}");
    assert!(properties
        .get("version")
        .and_then(|v| v.as_str().map(str::to_owned))
        .is_some());
    let capabilities = properties
        .get("capabilities")
        .and_then(|c| c.as_table().cloned())
        .expect("no capabilities table");
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        assert_eq!(
            capabilities.get(capability).and_then(|v| v.as_bool()),
            Some(true),
            "capability {capability}"
        );
    }
    // The client asks for 131072 / 2047 / 60 s; the broker may only lower them.
    assert!(
        (4096..=131_072).contains(&connection.frame_max()),
        "{}",
        connection.frame_max()
    );
    assert!(
        (1..=2047).contains(&connection.channel_max()),
        "{}",
        connection.channel_max()
    );
    assert!(connection.heartbeat() <= 60, "{}", connection.heartbeat());
    assert!(connection.close_reason().is_none());
    assert!(!connection.is_blocked());
    assert!(connection.try_next_event().is_none());
    connection.close().expect("connection.close");
    assert!(matches!(connection.close_reason(), Some(Error::Closed)));
}

#[test]
fn a_wrong_password_is_refused_with_an_auth_error() {
    let config = config();
    let user = config.username.clone();
    let started = Instant::now();
    let result = Connection::open_with(config.credentials(user, "certainly-not-the-password"));
    let error = match result {
        Err(e) => e,
        Ok(_) => panic!("a wrong password was accepted"),
    };
    match &error {
        Error::Auth { text } => assert!(
            text.contains("ACCESS_REFUSED") || text.to_lowercase().contains("refused"),
            "unhelpful text: {text}"
        ),
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    assert_eq!(error.reply_code(), Some(403));
    assert!(error.is_connection_error());
    let shown = error.to_string();
    assert!(shown.contains("authentication failed"), "{shown}");
    assert!(
        !shown.contains("certainly-not-the-password"),
        "the password leaked: {shown}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_missing_vhost_is_refused_with_530_not_allowed() {
    let vhost = unique("no-such-vhost");
    let result = Connection::open_with(config().vhost(vhost.clone()));
    match result {
        Err(Error::ConnectionClosed {
            code,
            text,
            class_id,
            method_id,
        }) => {
            assert_eq!(code, 530, "{text}");
            assert!(text.contains("NOT_ALLOWED"), "{text}");
            assert!(
                text.contains(&vhost) && text.contains("vhost"),
                "does not name the vhost: {text}"
            );
            // connection.open is class 10, method 40.
            assert_eq!((class_id, method_id), (10, 40));
        }
        Err(other) => panic!("expected ConnectionClosed 530, got {other:?}"),
        Ok(_) => panic!("a missing vhost was accepted"),
    }
}

#[test]
fn the_connection_name_shows_up_in_rabbitmqctl() {
    let by_config = unique("named-by-config");
    let by_uri = unique("named-by-uri");
    let first = connect_with(config().connection_name(by_config.clone()));
    let second = connect_with(
        ConnectionConfig::from_uri(&uri_with(&format!("connection_name={by_uri}"))).expect("URI"),
    );
    let listing = rabbitmqctl(&["-q", "list_connections", "client_properties"]);
    assert!(
        listing.contains(&by_config),
        "{by_config} not in:\n{listing}"
    );
    assert!(listing.contains(&by_uri), "{by_uri} not in:\n{listing}");
    first.close().unwrap();
    second.close().unwrap();
}

#[test]
fn heartbeats_keep_an_idle_connection_alive() {
    let config = ConnectionConfig::from_uri(&uri_with("heartbeat=1")).expect("URI");
    assert_eq!(config.heartbeat, 1);
    let connection = connect_with(config);
    assert_eq!(connection.heartbeat(), 1);
    let channel = connection.open_channel().unwrap();
    // Ten intervals of silence from the application: only heartbeats flow.
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        connection.close_reason().is_none(),
        "{:?}",
        connection.close_reason()
    );
    let queue = exclusive_queue(&channel);
    publish(&channel, "", &queue, "still alive");
    assert_eq!(
        get_body(&channel, &queue).as_deref(),
        Some(&b"still alive"[..])
    );
    connection.close().unwrap();
}

#[test]
fn once_close_returns_the_connection_reports_closed() {
    // Repeated: the state after close must not depend on thread timing.
    for round in 0..30 {
        let connection = connect();
        connection.close().expect("connection.close");
        let reason = connection.close_reason();
        assert!(
            matches!(reason, Some(Error::Closed)),
            "round {round}: close_reason right after close returned: {reason:?}"
        );
    }
}

#[test]
fn closing_the_connection_ends_its_channels_and_consumers() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let consumer = consume(&channel, &queue);
    connection.close().expect("connection.close");
    let reason = connection.close_reason();
    assert!(
        matches!(reason, Some(Error::Closed)),
        "close_reason after close: {reason:?}"
    );
    match channel.queue_declare("", exclusive(), no_args()) {
        Err(Error::Closed) => {}
        other => panic!(
            "a call on a channel of the closed connection gave {:?}",
            other.map(|ok| ok.queue)
        ),
    }
    match consumer.recv_timeout(ARRIVES) {
        Err(Error::Closed) => {}
        other => panic!("the consumer of the closed connection gave {other:?}"),
    }
    match connection.open_channel() {
        Err(Error::Closed) => {}
        Err(other) => panic!("open_channel on the closed connection gave {other:?}"),
        Ok(_) => panic!("opened a channel on the closed connection"),
    }
    connection.close().expect("closing twice is fine");
}

#[test]
fn an_immediate_publish_is_refused_by_rabbitmq_with_540() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .basic_publish(
            "",
            &queue,
            PublishOptions {
                immediate: true,
                ..Default::default()
            },
            BasicProperties::default(),
            "now or never",
        )
        .unwrap();
    let closed = eventually(ARRIVES, || connection.close_reason()).expect("connection stayed open");
    match closed {
        Error::ConnectionClosed { code: 540, .. } => {}
        other => panic!("expected ConnectionClosed 540, got {other:?}"),
    }
}

// ---- channels ---------------------------------------------------------------

#[test]
fn a_passive_declare_of_a_missing_queue_closes_only_that_channel() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let doomed = connection.open_channel().unwrap();
    let bystander = connection.open_channel().unwrap();
    let queue = exclusive_queue(&bystander);
    let consumer = consume(&bystander, &queue);

    let missing = unique("missing");
    let error = doomed
        .queue_declare(&missing, passive(), no_args())
        .unwrap_err();
    match &error {
        Error::ChannelClosed {
            code,
            text,
            class_id,
            method_id,
        } => {
            assert_eq!(*code, 404);
            assert!(
                text.contains("NOT_FOUND") && text.contains(&missing),
                "{text}"
            );
            assert_eq!((*class_id, *method_id), (50, 10), "queue.declare");
        }
        other => panic!("expected ChannelClosed 404, got {other:?}"),
    }
    assert!(!error.is_connection_error());

    // The channel stays closed with the same error...
    channel_closed(doomed.queue_declare("", exclusive(), no_args()), 404);
    channel_closed(
        doomed.basic_publish(
            "",
            &queue,
            PublishOptions::default(),
            BasicProperties::default(),
            "x",
        ),
        404,
    );
    channel_closed(doomed.basic_get(&queue, true), 404);
    channel_closed(doomed.basic_ack(1, false), 404);
    assert!(matches!(
        doomed.close_reason(),
        Some(Error::ChannelClosed { code: 404, .. })
    ));

    // ...while the connection and its other channels carry on.
    assert!(connection.close_reason().is_none());
    publish(&bystander, "", &queue, "unaffected");
    assert_eq!(text(&next(&consumer).body), "unaffected");
    let fresh = connection.open_channel().unwrap();
    let other = cleanup.queue(unique("after-404"));
    fresh
        .queue_declare(&other, QueueDeclareOptions::default(), no_args())
        .unwrap();
    fresh
        .queue_delete(&other, QueueDeleteOptions::default())
        .unwrap();
    connection.close().unwrap();
}

#[test]
fn every_call_after_a_channel_exception_reports_that_exception() {
    // The call that caused the exception returns; the very next call on the
    // channel, made at once, must see the same error (never "not open", and
    // never another channel's answer).
    let connection = connect();
    for round in 0..200 {
        let channel = connection.open_channel().unwrap();
        let missing = unique("missing");
        channel_closed(channel.queue_declare(&missing, passive(), no_args()), 404);
        match channel.queue_declare("", exclusive(), no_args()) {
            Err(Error::ChannelClosed { code: 404, .. }) => {}
            other => panic!("round {round}: the call after a 404 gave {other:?}"),
        }
    }
    assert!(connection.close_reason().is_none());
    connection.close().unwrap();
}

#[test]
fn a_closed_channel_reports_closed_and_refuses_further_calls() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.close().expect("channel.close");
    channel.close().expect("closing twice is fine");
    match channel.queue_declare("", exclusive(), no_args()) {
        Err(Error::Closed) => {}
        other => panic!(
            "queue.declare on a closed channel gave {:?}",
            other.map(|ok| ok.queue)
        ),
    }
    match channel.basic_publish(
        "",
        &queue,
        PublishOptions::default(),
        BasicProperties::default(),
        "x",
    ) {
        Err(Error::Closed) => {}
        other => panic!("basic.publish on a closed channel gave {other:?}"),
    }
    match channel.basic_ack(1, false) {
        Err(Error::Closed) => {}
        other => panic!("basic.ack on a closed channel gave {other:?}"),
    }
    assert!(
        matches!(channel.close_reason(), Some(Error::Closed)),
        "close_reason of a closed channel: {:?}",
        channel.close_reason()
    );
    assert!(connection.close_reason().is_none());
    connection.close().unwrap();
}

#[test]
fn a_closed_channel_handle_never_reaches_the_channel_that_reuses_its_number() {
    let connection = connect();
    let old = connection.open_channel().unwrap();
    let id = old.id();
    old.close().expect("channel.close");

    // The number is free again, and the next channel takes it.
    let new = connection.open_channel().unwrap();
    assert_eq!(new.id(), id, "the lowest free number is reused");
    let queue = exclusive_queue(&new);

    // Each check goes through the new channel, which the broker serves in
    // order after whatever reached it through the old handle.
    let mut leaks = Vec::new();
    let through_old = unique("through-old-handle");
    let declared = old.queue_declare(&through_old, exclusive(), no_args());
    // A synchronous call on the new channel, answered after anything the old
    // handle sent on that number; then look from a third channel (a passive
    // declare of a missing queue closes the channel it is made on).
    let _ = new.basic_qos(0, false);
    let probe = connection.open_channel().unwrap();
    if probe
        .queue_declare(&through_old, passive(), no_args())
        .is_ok()
    {
        leaks.push(format!(
            "queue.declare created {through_old} (it answered {:?})",
            declared.map(|ok| ok.queue)
        ));
    }
    let published = old.basic_publish(
        "",
        &queue,
        PublishOptions::default(),
        BasicProperties::default(),
        "stray",
    );
    if get(&new, &queue).is_some() {
        leaks.push(format!(
            "basic.publish delivered a message (it answered {published:?})"
        ));
    }
    let missing = old.queue_declare(&unique("missing"), passive(), no_args());
    let _ = new.basic_qos(0, false);
    if let Some(reason) = new.close_reason() {
        leaks.push(format!(
            "a failing passive declare ({:?}) closed the new channel: {reason}",
            missing.map(|ok| ok.queue)
        ));
    }
    assert!(
        leaks.is_empty(),
        "calls through the closed handle of channel {id} reached the channel now using that number:\n  {}",
        leaks.join("\n  ")
    );
    connection.close().unwrap();
}

#[test]
fn two_thousand_channels_open_work_and_close_on_one_connection() {
    let connection = connect();
    assert!(
        connection.channel_max() >= 2000,
        "channel_max {}",
        connection.channel_max()
    );
    let channels: Vec<Channel> = (0..2000)
        .map(|i| {
            connection
                .open_channel()
                .unwrap_or_else(|e| panic!("channel #{i}: {e}"))
        })
        .collect();
    let ids: HashSet<u16> = channels.iter().map(Channel::id).collect();
    assert_eq!(ids.len(), 2000, "channel numbers repeat");
    assert!(ids
        .iter()
        .all(|&id| id >= 1 && id <= connection.channel_max()));

    let queue = exclusive_queue(&channels[0]);
    for (i, channel) in channels.iter().enumerate().step_by(100) {
        publish(channel, "", &queue, format!("from channel #{i}"));
    }
    // Each channel's publish is ordered only on its own channel: wait for all.
    let last = &channels[1999];
    wait_for_count(last, &queue, 20);
    let mut bodies: Vec<String> = (0..20)
        .map(|_| text(&get_body(last, &queue).expect("a message")).to_owned())
        .collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..2000)
        .step_by(100)
        .map(|i| format!("from channel #{i}"))
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);

    for (i, channel) in channels.iter().enumerate().skip(1) {
        channel
            .close()
            .unwrap_or_else(|e| panic!("closing channel #{i}: {e}"));
    }
    // The exclusive queue is the first channel's; close it last.
    channels[0].close().unwrap();
    let again = connection.open_channel().unwrap();
    assert_eq!(again.id(), 1, "every number is free again");
    exclusive_queue(&again);
    connection.close().unwrap();
}

#[test]
fn opening_more_channels_than_channel_max_gives_channel_max_reached() {
    let connection = connect_with(config().channel_max(10));
    assert_eq!(connection.channel_max(), 10);
    let channels: Vec<Channel> = (0..10)
        .map(|_| connection.open_channel().unwrap())
        .collect();
    match connection.open_channel() {
        Err(Error::ChannelMaxReached { channel_max: 10 }) => {}
        Err(other) => panic!("expected ChannelMaxReached, got {other:?}"),
        Ok(channel) => panic!("opened channel {} past channel_max 10", channel.id()),
    }
    channels[3].close().unwrap();
    assert_eq!(connection.open_channel().unwrap().id(), channels[3].id());
    connection.close().unwrap();
}

#[test]
fn channel_flow_active_is_acknowledged() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    assert!(channel.channel_flow(true).expect("channel.flow"));
    assert!(!channel.is_flow_paused());
    connection.close().unwrap();
}

// ---- exchanges ---------------------------------------------------------------

#[test]
fn exchanges_are_declared_bound_to_each_other_unbound_and_deleted() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let source = cleanup.exchange(unique("source"));
    let destination = cleanup.exchange(unique("destination"));
    let defaults = ExchangeDeclareOptions::default();
    channel
        .exchange_declare(&source, ExchangeKind::Topic, defaults, no_args())
        .unwrap();
    // no_wait: nothing comes back, but the exchange exists for the next call.
    channel
        .exchange_declare(
            &destination,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                no_wait: true,
                ..defaults
            },
            no_args(),
        )
        .unwrap();
    for (name, kind) in [
        (&source, ExchangeKind::Topic),
        (&destination, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(
                name,
                kind,
                ExchangeDeclareOptions {
                    passive: true,
                    ..defaults
                },
                no_args(),
            )
            .unwrap_or_else(|e| panic!("passive declare of {name}: {e}"));
    }

    let queue = exclusive_queue(&channel);
    channel
        .queue_bind(&queue, &destination, "", no_args())
        .unwrap();
    channel
        .exchange_bind(&destination, &source, "orders.*", no_args())
        .unwrap();
    publish(
        &channel,
        &source,
        "invoices.new",
        "not matched by the binding",
    );
    publish(&channel, &source, "orders.new", "through two exchanges");
    let delivery = get(&channel, &queue).expect("routed from source to destination to queue");
    assert_eq!(text(&delivery.body), "through two exchanges");
    assert_eq!(delivery.exchange, source.as_str());
    assert_eq!(delivery.routing_key, "orders.new");
    assert!(
        get(&channel, &queue).is_none(),
        "the unmatched key was routed"
    );

    // if_unused refuses to delete an exchange with bindings: 406.
    let refused = connection.open_channel().unwrap();
    channel_closed(
        refused.exchange_delete(
            &destination,
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
        406,
    );

    channel
        .exchange_unbind(&destination, &source, "orders.*", no_args())
        .unwrap();
    publish(&channel, &source, "orders.new", "after unbind");
    assert!(
        get(&channel, &queue).is_none(),
        "routed after exchange.unbind"
    );

    channel
        .exchange_delete(&destination, ExchangeDeleteOptions::default())
        .unwrap();
    channel
        .exchange_delete(
            &source,
            ExchangeDeleteOptions {
                no_wait: true,
                ..Default::default()
            },
        )
        .unwrap();
    // A synchronous call on the same channel: the no-wait delete is done.
    channel.basic_qos(0, false).unwrap();
    let probe = connection.open_channel().unwrap();
    let reason = channel_closed(
        probe.exchange_declare(
            &source,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..defaults
            },
            no_args(),
        ),
        404,
    );
    assert!(reason.contains(&source), "{reason}");
    // A redeclare with another type is refused: 406.
    let other = cleanup.exchange(unique("typed"));
    channel
        .exchange_declare(&other, ExchangeKind::Direct, defaults, no_args())
        .unwrap();
    let mismatch = connection.open_channel().unwrap();
    channel_closed(
        mismatch.exchange_declare(&other, ExchangeKind::Headers, defaults, no_args()),
        406,
    );
    channel
        .exchange_delete(&other, ExchangeDeleteOptions::default())
        .unwrap();
    connection.close().unwrap();
}

#[test]
fn publishing_to_an_internal_exchange_is_refused_with_403() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let internal = cleanup.exchange(unique("internal"));
    channel
        .exchange_declare(
            &internal,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    let publisher = connection.open_channel().unwrap();
    publish(&publisher, &internal, "", "not allowed");
    // The refusal is asynchronous: the next synchronous call sees it.
    channel_closed(publisher.basic_qos(1, false), 403);
    channel
        .exchange_delete(&internal, ExchangeDeleteOptions::default())
        .unwrap();
    connection.close().unwrap();
}

// ---- queues ------------------------------------------------------------------

#[test]
fn a_server_named_queue_gets_its_name_from_the_broker() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let ok = channel.queue_declare("", exclusive(), no_args()).unwrap();
    let name = ok.queue.to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
    publish(&channel, "", &name, "hello");
    wait_for_count(&channel, &name, 1);
    let again = channel.queue_declare(&name, passive(), no_args()).unwrap();
    assert_eq!(again.queue, name.as_str());
    let _consumer = consume(&channel, &name);
    assert_eq!(
        channel
            .queue_declare(&name, passive(), no_args())
            .unwrap()
            .consumer_count,
        1
    );
    // A server-named queue needs declare-ok, so no_wait is refused up front.
    assert!(matches!(
        channel.queue_declare(
            "",
            QueueDeclareOptions {
                no_wait: true,
                ..Default::default()
            },
            no_args()
        ),
        Err(Error::InvalidArgument(_))
    ));
    connection.close().unwrap();
}

#[test]
fn queue_declare_honours_durable_passive_and_no_wait() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let durable = cleanup.queue(unique("durable"));
    let ok = channel
        .queue_declare(
            &durable,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    assert_eq!(ok.queue, durable.as_str());
    // Redeclaring with the same settings is fine; with others it is a 406.
    channel
        .queue_declare(
            &durable,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    let mismatch = connection.open_channel().unwrap();
    let reason = channel_closed(
        mismatch.queue_declare(&durable, QueueDeclareOptions::default(), no_args()),
        406,
    );
    assert!(reason.contains("durable"), "{reason}");
    let listing = rabbitmqctl(&["-q", "list_queues", "name", "durable"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&durable) && l.trim_end().ends_with("true")),
        "{durable} not durable in:\n{listing}"
    );

    let quiet = cleanup.queue(unique("no-wait"));
    let ok = channel
        .queue_declare(
            &quiet,
            QueueDeclareOptions {
                no_wait: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    assert_eq!(
        ok.queue,
        quiet.as_str(),
        "a no-wait declare echoes the name"
    );
    assert_eq!(
        message_count(&channel, &quiet),
        0,
        "the no-wait declare created the queue"
    );

    assert_eq!(
        channel
            .queue_delete(&durable, QueueDeleteOptions::default())
            .unwrap(),
        0
    );
    assert_eq!(
        channel
            .queue_delete(
                &quiet,
                QueueDeleteOptions {
                    no_wait: true,
                    ..Default::default()
                }
            )
            .unwrap(),
        0
    );
    let probe = connection.open_channel().unwrap();
    channel_closed(probe.queue_declare(&quiet, passive(), no_args()), 404);
    connection.close().unwrap();
}

#[test]
fn an_exclusive_queue_used_from_another_connection_is_refused_with_405() {
    let owner = connect();
    let owner_channel = owner.open_channel().unwrap();
    let queue = unique("exclusive");
    owner_channel
        .queue_declare(&queue, exclusive(), no_args())
        .unwrap();
    publish(&owner_channel, "", &queue, "mine");

    let intruder = connect();
    let reason = channel_closed(
        intruder
            .open_channel()
            .unwrap()
            .queue_declare(&queue, passive(), no_args()),
        405,
    );
    assert!(
        reason.contains("RESOURCE_LOCKED") && reason.contains(&queue),
        "{reason}"
    );
    channel_closed(
        intruder.open_channel().unwrap().basic_get(&queue, true),
        405,
    );
    channel_closed(
        intruder.open_channel().unwrap().basic_consume(
            &queue,
            "",
            ConsumeOptions::default(),
            no_args(),
        ),
        405,
    );
    channel_closed(
        intruder
            .open_channel()
            .unwrap()
            .queue_delete(&queue, QueueDeleteOptions::default()),
        405,
    );
    assert!(intruder.close_reason().is_none());

    // The owner still has it, with its message.
    assert_eq!(
        get_body(&owner_channel, &queue).as_deref(),
        Some(&b"mine"[..])
    );
    owner.close().unwrap();
    // Closing the owner deleted it.
    let gone = eventually(ARRIVES, || {
        match intruder
            .open_channel()
            .unwrap()
            .queue_declare(&queue, passive(), no_args())
        {
            Err(Error::ChannelClosed { code: 404, .. }) => Some(()),
            _ => None,
        }
    });
    assert!(gone.is_some(), "{queue} outlived its exclusive owner");
    intruder.close().unwrap();
}

#[test]
fn an_auto_delete_queue_goes_away_with_its_last_consumer() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = cleanup.queue(unique("auto-delete"));
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    let consumer = consume(&channel, &queue);
    assert_eq!(
        message_count(&channel, &queue),
        0,
        "the queue exists while consumed"
    );
    consumer.cancel().unwrap();
    let gone = eventually(ARRIVES, || {
        let probe = connection.open_channel().unwrap();
        match probe.queue_declare(&queue, passive(), no_args()) {
            Err(Error::ChannelClosed { code: 404, .. }) => Some(()),
            _ => None,
        }
    });
    assert!(gone.is_some(), "{queue} outlived its last consumer");
    connection.close().unwrap();
}

#[test]
fn queue_arguments_x_max_length_and_x_message_ttl_are_applied() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    // Named: a redeclare (below) may not use a server-generated name.
    let bounded = unique("bounded");
    channel
        .queue_declare(
            &bounded,
            exclusive(),
            FieldTable::new().with("x-max-length", 2i32).unwrap(),
        )
        .unwrap();
    for i in 0..5 {
        publish(&channel, "", &bounded, format!("m{i}"));
    }
    wait_for_count(&channel, &bounded, 2);
    // The default overflow drops from the head: the newest two are left.
    assert_eq!(get_body(&channel, &bounded).as_deref(), Some(&b"m3"[..]));
    assert_eq!(get_body(&channel, &bounded).as_deref(), Some(&b"m4"[..]));

    let expiring = channel
        .queue_declare(
            "",
            exclusive(),
            FieldTable::new().with("x-message-ttl", 50i32).unwrap(),
        )
        .unwrap()
        .queue
        .to_string();
    publish(&channel, "", &expiring, "short-lived");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        get(&channel, &expiring).is_none(),
        "the message outlived its TTL"
    );

    // The arguments are part of the queue's identity: a different one is a 406.
    let mismatch = connection.open_channel().unwrap();
    let reason = channel_closed(
        mismatch.queue_declare(
            &bounded,
            exclusive(),
            FieldTable::new().with("x-max-length", 3i32).unwrap(),
        ),
        406,
    );
    assert!(reason.contains("x-max-length"), "{reason}");
    connection.close().unwrap();
}

#[test]
fn a_queue_receives_what_its_bindings_route_until_unbound() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let exchange = cleanup.exchange(unique("direct"));
    channel
        .exchange_declare(
            &exchange,
            ExchangeKind::Direct,
            Default::default(),
            no_args(),
        )
        .unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .queue_bind(&queue, &exchange, "red", no_args())
        .unwrap();
    publish(&channel, &exchange, "blue", "blue");
    publish(&channel, &exchange, "red", "red");
    assert_eq!(get_body(&channel, &queue).as_deref(), Some(&b"red"[..]));
    assert!(get(&channel, &queue).is_none());
    channel
        .queue_unbind(&queue, &exchange, "red", no_args())
        .unwrap();
    publish(&channel, &exchange, "red", "after unbind");
    assert!(get(&channel, &queue).is_none(), "routed after queue.unbind");

    // Binding arguments: a headers exchange matches on them.
    let headers = cleanup.exchange(unique("headers"));
    channel
        .exchange_declare(
            &headers,
            ExchangeKind::Headers,
            Default::default(),
            no_args(),
        )
        .unwrap();
    let binding = FieldTable::new()
        .with("x-match", "all")
        .unwrap()
        .with("colour", "green")
        .unwrap();
    channel
        .queue_bind(&queue, &headers, "", binding.clone())
        .unwrap();
    for (colour, body) in [("green", "green"), ("red", "red")] {
        let properties = BasicProperties {
            headers: Some(FieldTable::new().with("colour", colour).unwrap()),
            ..Default::default()
        };
        channel
            .basic_publish(&headers, "", PublishOptions::default(), properties, body)
            .unwrap();
    }
    assert_eq!(get_body(&channel, &queue).as_deref(), Some(&b"green"[..]));
    assert!(get(&channel, &queue).is_none());
    channel.queue_unbind(&queue, &headers, "", binding).unwrap();
    channel
        .exchange_delete(&exchange, ExchangeDeleteOptions::default())
        .unwrap();
    channel
        .exchange_delete(&headers, ExchangeDeleteOptions::default())
        .unwrap();
    connection.close().unwrap();
}

#[test]
fn purging_a_queue_returns_how_many_messages_it_removed() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    for i in 0..3 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    assert_eq!(channel.queue_purge(&queue).unwrap(), 3);
    assert!(get(&channel, &queue).is_none());
    assert_eq!(channel.queue_purge(&queue).unwrap(), 0);
    connection.close().unwrap();
}

#[test]
fn deleting_a_queue_returns_how_many_messages_it_held() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = cleanup.queue(unique("deleted"));
    channel
        .queue_declare(&queue, QueueDeclareOptions::default(), no_args())
        .unwrap();
    for i in 0..4 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    assert_eq!(
        channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .unwrap(),
        4
    );
    channel_closed(channel.queue_declare(&queue, passive(), no_args()), 404);
    connection.close().unwrap();
}

#[test]
fn deleting_a_non_empty_queue_with_if_empty_closes_the_channel_with_406() {
    let connection = connect();
    let owner = connection.open_channel().unwrap();
    let queue = exclusive_queue(&owner);
    publish(&owner, "", &queue, "still here");
    wait_for_count(&owner, &queue, 1);
    let deleter = connection.open_channel().unwrap();
    let reason = channel_closed(
        deleter.queue_delete(
            &queue,
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
        406,
    );
    assert!(reason.contains("PRECONDITION_FAILED"), "{reason}");
    assert_eq!(
        message_count(&owner, &queue),
        1,
        "the queue was deleted anyway"
    );

    // if_unused likewise refuses while the queue has a consumer.
    let _consumer = consume(&owner, &queue);
    let deleter = connection.open_channel().unwrap();
    channel_closed(
        deleter.queue_delete(
            &queue,
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
        406,
    );
    assert!(connection.close_reason().is_none());
    connection.close().unwrap();
}

// ---- publishing --------------------------------------------------------------

#[test]
fn published_properties_arrive_identical() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let mut array = FieldArray::default();
    array.push(1i32);
    array.push("two");
    array.push(true);
    let headers = FieldTable::new()
        .with("text", "naïve ☃")
        .unwrap()
        .with("flag", true)
        .unwrap()
        .with("i8", -8i8)
        .unwrap()
        .with("i16", -1600i16)
        .unwrap()
        .with("i32", -320_000i32)
        .unwrap()
        .with("i64", -6_400_000_000i64)
        .unwrap()
        .with("f32", 1.5f32)
        .unwrap()
        .with("f64", -2.25f64)
        .unwrap()
        .with(
            "decimal",
            Decimal {
                scale: 2,
                value: 12345,
            },
        )
        .unwrap()
        .with("timestamp", FieldValue::Timestamp(1_700_000_000))
        .unwrap()
        .with(
            "bytes",
            FieldValue::ByteArray(Bytes::from_static(b"\x00\x01\xfe\xff")),
        )
        .unwrap()
        .with("void", FieldValue::Void)
        .unwrap()
        .with("array", array)
        .unwrap()
        .with("nested", FieldTable::new().with("inner", 42i32).unwrap())
        .unwrap();
    let properties = BasicProperties {
        content_type: Some(short("application/json")),
        content_encoding: Some(short("identity")),
        headers: Some(headers),
        delivery_mode: Some(2),
        priority: Some(7),
        correlation_id: Some(short("correlation-1")),
        reply_to: Some(short("amq.rabbitmq.reply-to.example")),
        expiration: Some(short("600000")),
        message_id: Some(short("message-1")),
        timestamp: Some(1_700_000_123),
        kind: Some(short("order.created")),
        user_id: Some(short(&config().username)),
        app_id: Some(short("warren-tests")),
        reserved: None,
    };
    for _ in 0..2 {
        channel
            .basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                properties.clone(),
                r#"{"id":1}"#,
            )
            .unwrap();
    }
    let consumer = consume(&channel, &queue);
    let delivery = next(&consumer);
    assert_eq!(
        delivery.properties.to_properties(),
        properties,
        "through basic.deliver"
    );
    assert_eq!(delivery.properties.priority(), Some(7));
    assert_eq!(delivery.properties.kind().unwrap(), "order.created");
    assert_eq!(text(&delivery.body), r#"{"id":1}"#);
    channel.basic_ack(delivery.delivery_tag, false).unwrap();
    consumer.cancel().unwrap();
    // The second one was buffered for the consumer, then requeued on cancel
    // or still in the queue: fetch it with basic.get.
    let fetched = eventually(ARRIVES, || {
        consumer
            .recv_timeout(Duration::ZERO)
            .ok()
            .flatten()
            .or_else(|| get(&channel, &queue))
    })
    .expect("the second message");
    assert_eq!(
        fetched.properties.to_properties(),
        properties,
        "through basic.get-ok or deliver"
    );
    connection.close().unwrap();
}

#[test]
fn a_mandatory_publish_that_no_queue_takes_comes_back() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let nowhere = unique("unroutable");
    let properties = BasicProperties {
        message_id: Some(short("lost-1")),
        ..Default::default()
    };
    channel
        .basic_publish(
            "",
            &nowhere,
            PublishOptions {
                mandatory: true,
                ..Default::default()
            },
            properties.clone(),
            "lost",
        )
        .unwrap();
    // Not mandatory: dropped silently.
    publish(&channel, "", &nowhere, "dropped");
    // The return comes before the answer to any later call on the channel.
    channel.basic_qos(0, false).unwrap();
    let returned = channel
        .try_next_return()
        .expect("the mandatory message came back");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text, "NO_ROUTE");
    assert_eq!(returned.exchange, "");
    assert_eq!(returned.routing_key, nowhere.as_str());
    assert_eq!(returned.properties.to_properties(), properties);
    assert_eq!(returned.properties.message_id().unwrap(), "lost-1");
    assert_eq!(text(&returned.body), "lost");
    assert!(
        channel.try_next_return().is_none(),
        "the non-mandatory message came back"
    );

    // Mandatory and routable: nothing comes back.
    let queue = exclusive_queue(&channel);
    channel
        .basic_publish(
            "",
            &queue,
            PublishOptions {
                mandatory: true,
                ..Default::default()
            },
            BasicProperties::default(),
            "kept",
        )
        .unwrap();
    channel.basic_qos(0, false).unwrap();
    assert!(channel.try_next_return().is_none());
    assert_eq!(get_body(&channel, &queue).as_deref(), Some(&b"kept"[..]));
    connection.close().unwrap();
}

#[test]
fn a_mandatory_unroutable_publish_in_confirm_mode_is_confirmed_as_returned() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    channel.confirm_select().unwrap();
    let nowhere = unique("unroutable");
    let confirmation = channel
        .basic_publish_confirmed(
            "",
            &nowhere,
            PublishOptions {
                mandatory: true,
                ..Default::default()
            },
            BasicProperties::default(),
            "lost",
        )
        .unwrap()
        .wait()
        .unwrap();
    match confirmation {
        Confirmation::Returned(message) => {
            assert_eq!(message.reply_code, 312);
            assert_eq!(message.routing_key, nowhere.as_str());
            assert_eq!(text(&message.body), "lost");
        }
        other => panic!("expected Confirmation::Returned, got {other:?}"),
    }
    let returned = channel
        .try_next_return()
        .expect("try_next_return also has it");
    assert_eq!((returned.reply_code, text(&returned.body)), (312, "lost"));

    // Unroutable without mandatory: acked; routable and mandatory: acked.
    let confirm = |key: &str, mandatory: bool| {
        channel
            .basic_publish_confirmed(
                "",
                key,
                PublishOptions {
                    mandatory,
                    ..Default::default()
                },
                BasicProperties::default(),
                "x",
            )
            .unwrap()
            .wait_timeout(ARRIVES)
            .unwrap()
    };
    assert_eq!(confirm(&nowhere, false), Confirmation::Ack);
    let queue = exclusive_queue(&channel);
    assert_eq!(confirm(&queue, true), Confirmation::Ack);
    assert!(channel.try_next_return().is_none());
    assert!(channel.wait_for_confirms().unwrap());
    connection.close().unwrap();
}

#[test]
fn publisher_confirms_ack_publishes_one_by_one_and_all_at_once() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);

    // Outside confirm mode there is nothing to wait for.
    assert!(matches!(
        channel.wait_for_confirms(),
        Err(Error::InvalidArgument(_))
    ));
    let mut unconfirmed = channel
        .basic_publish_confirmed(
            "",
            &queue,
            PublishOptions::default(),
            BasicProperties::default(),
            "no confirm mode",
        )
        .unwrap();
    assert!(matches!(
        unconfirmed.wait_timeout(ARRIVES),
        Err(Error::InvalidArgument(_))
    ));

    channel.confirm_select().unwrap();
    channel.confirm_select().expect("selecting twice is fine");
    assert!(channel.wait_for_confirms().unwrap(), "nothing outstanding");
    let confirm = channel
        .basic_publish_confirmed(
            "",
            &queue,
            PublishOptions::default(),
            BasicProperties::default(),
            "one",
        )
        .unwrap();
    assert_eq!(confirm.wait().unwrap(), Confirmation::Ack);
    publish(&channel, "", &queue, "two");
    publish(&channel, "", &queue, "three");
    assert!(channel.wait_for_confirms().unwrap());
    assert_eq!(message_count(&channel, &queue), 4);
    connection.close().unwrap();
}

#[test]
fn confirms_arrive_for_100k_pipelined_publishes() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.confirm_select().unwrap();
    let started = Instant::now();
    let body = Bytes::from_static(b"0123456789abcdef");
    for _ in 0..100_000 {
        channel
            .basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                BasicProperties::default(),
                body.clone(),
            )
            .unwrap();
    }
    assert!(channel.wait_for_confirms().unwrap(), "a publish was nacked");
    let elapsed = started.elapsed();
    assert_eq!(message_count(&channel, &queue), 100_000);
    eprintln!("100k publishes confirmed in {elapsed:?}");
    assert_eq!(channel.queue_purge(&queue).unwrap(), 100_000);
    connection.close().unwrap();
}

#[test]
fn confirm_handles_for_10k_publishes_all_resolve_to_ack() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.confirm_select().unwrap();
    let handles: Vec<_> = (0..10_000u32)
        .map(|i| {
            channel
                .basic_publish_confirmed(
                    "",
                    &queue,
                    PublishOptions::default(),
                    BasicProperties::default(),
                    i.to_be_bytes().to_vec(),
                )
                .unwrap()
        })
        .collect();
    for (i, mut handle) in handles.into_iter().enumerate() {
        assert_eq!(
            handle.wait_timeout(ARRIVES).unwrap(),
            Confirmation::Ack,
            "publish #{i}"
        );
    }
    assert!(channel.wait_for_confirms().unwrap());
    assert_eq!(message_count(&channel, &queue), 10_000);
    connection.close().unwrap();
}

#[test]
fn bodies_from_empty_to_16_mib_arrive_intact() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let frame_max = connection.frame_max() as usize;
    // A body frame carries at most frame_max - 8 bytes: the first size below
    // fits in one frame, the next one is the smallest that splits.
    let sizes = [
        0,
        1,
        frame_max - 8,
        frame_max - 7,
        3 * (frame_max - 8),
        1 << 20,
        16 << 20,
    ];
    let bodies: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i as u64 + 1))
        .collect();
    for body in &bodies {
        publish(&channel, "", &queue, body.clone());
    }
    let consumer = consume(&channel, &queue);
    for (size, body) in sizes.iter().zip(&bodies) {
        let delivery = next(&consumer);
        assert_same_bytes(
            &delivery.body,
            body,
            &format!("a {size}-byte body through basic.deliver"),
        );
        channel.basic_ack(delivery.delivery_tag, false).unwrap();
    }
    consumer.cancel().unwrap();
    // And through basic.get-ok.
    for (size, body) in sizes.iter().zip(&bodies) {
        publish(&channel, "", &queue, body.clone());
        let fetched = get_body(&channel, &queue).unwrap_or_else(|| panic!("the {size}-byte body"));
        assert_same_bytes(
            &fetched,
            body,
            &format!("a {size}-byte body through basic.get"),
        );
    }
    connection.close().unwrap();
}

#[test]
fn a_rolled_back_publish_never_arrives_and_a_committed_one_does() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let observer = connection.open_channel().unwrap();
    let queue = exclusive_queue(&observer);
    channel.tx_select().unwrap();
    publish(&channel, "", &queue, "rolled back");
    channel.tx_rollback().unwrap();
    publish(&channel, "", &queue, "committed");
    assert!(
        get(&observer, &queue).is_none(),
        "visible before the commit"
    );
    channel.tx_commit().unwrap();
    assert_eq!(
        get_body(&observer, &queue).as_deref(),
        Some(&b"committed"[..])
    );
    assert!(
        get(&observer, &queue).is_none(),
        "the rolled-back publish arrived"
    );

    // Acks are transactional too: a rolled-back ack leaves the message unacked.
    publish(&channel, "", &queue, "ack me");
    channel.tx_commit().unwrap();
    let (delivery, _) = channel
        .basic_get(&queue, false)
        .unwrap()
        .expect("a message");
    channel.basic_ack(delivery.delivery_tag, false).unwrap();
    channel.tx_rollback().unwrap();
    channel.close().unwrap();
    // Closing the channel requeues what it left unacked (asynchronously).
    let back = eventually(ARRIVES, || get_body(&observer, &queue));
    assert_eq!(
        back.as_deref(),
        Some(&b"ack me"[..]),
        "the ack was not rolled back"
    );
    connection.close().unwrap();
}

// ---- consuming ---------------------------------------------------------------

#[test]
fn a_consumer_receives_deliveries_in_order_through_recv_timeout_and_the_iterator() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    for i in 0..10 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    let tag = unique("tag");
    let mut consumer = channel
        .basic_consume(&queue, &tag, ConsumeOptions::default(), no_args())
        .unwrap();
    assert_eq!(consumer.tag(), tag);
    let mut tags = Vec::new();
    for i in 0..5 {
        let d = next(&consumer);
        assert_eq!(text(&d.body), i.to_string());
        assert_eq!(d.consumer_tag, tag.as_str());
        assert_eq!(d.routing_key, queue.as_str());
        assert_eq!(d.exchange, "");
        assert!(!d.redelivered);
        tags.push(d.delivery_tag);
    }
    for (i, d) in (&mut consumer).take(5).enumerate() {
        let d = d.expect("delivery");
        assert_eq!(text(&d.body), (i + 5).to_string());
        tags.push(d.delivery_tag);
    }
    assert!(
        tags.windows(2).all(|w| w[0] < w[1]),
        "tags not increasing: {tags:?}"
    );
    channel.basic_ack(*tags.last().unwrap(), true).unwrap();
    assert!(
        consumer.recv_timeout(QUIET).unwrap().is_none(),
        "an 11th delivery"
    );

    // A tag chosen by the broker.
    let other = consume(&channel, &queue);
    assert!(other.tag().starts_with("amq.ctag-"), "{}", other.tag());
    // An exclusive consumer keeps others out (403), on their channel only.
    let queue2 = exclusive_queue(&channel);
    let _sole = channel
        .basic_consume(
            &queue2,
            "",
            ConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    let refused = connection.open_channel().unwrap();
    channel_closed(
        refused.basic_consume(&queue2, "", ConsumeOptions::default(), no_args()),
        403,
    );
    connection.close().unwrap();
}

#[test]
fn an_auto_ack_consumer_empties_the_queue_without_acks() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    for i in 0..3 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    let consumer = channel
        .basic_consume(
            &queue,
            "",
            ConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    for i in 0..3 {
        assert_eq!(text(&next(&consumer).body), i.to_string());
    }
    consumer.cancel().unwrap();
    channel.close().unwrap();
    let channel = connection.open_channel().unwrap();
    assert_eq!(
        message_count(&channel, &queue),
        0,
        "auto-acked messages came back"
    );
    connection.close().unwrap();
}

#[test]
fn a_no_wait_consume_with_a_tag_delivers() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let tag = unique("no-wait");
    let consumer = channel
        .basic_consume(
            &queue,
            &tag,
            ConsumeOptions {
                no_wait: true,
                ..Default::default()
            },
            no_args(),
        )
        .unwrap();
    assert_eq!(consumer.tag(), tag);
    publish(&channel, "", &queue, "quiet");
    assert_eq!(text(&next(&consumer).body), "quiet");
    // Without a tag the broker's reply would be needed: refused up front.
    assert!(matches!(
        channel.basic_consume(
            &queue,
            "",
            ConsumeOptions {
                no_wait: true,
                ..Default::default()
            },
            no_args()
        ),
        Err(Error::InvalidArgument(_))
    ));
    connection.close().unwrap();
}

#[test]
fn basic_get_returns_a_message_with_the_count_left_then_none() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    assert!(channel.basic_get(&queue, false).unwrap().is_none());
    publish(&channel, "", &queue, "first");
    publish(&channel, "", &queue, "second");
    let (first, left) = channel.basic_get(&queue, false).unwrap().expect("first");
    assert_eq!((text(&first.body), left), ("first", 1));
    assert_eq!(first.consumer_tag, "");
    assert!(!first.redelivered);
    let (second, left) = channel.basic_get(&queue, true).unwrap().expect("second");
    assert_eq!((text(&second.body), left), ("second", 0));
    assert!(channel.basic_get(&queue, false).unwrap().is_none());
    // The first was not acked: rejecting it with requeue brings it back.
    channel.basic_reject(first.delivery_tag, true).unwrap();
    let (again, _) = channel.basic_get(&queue, true).unwrap().expect("requeued");
    assert_eq!(text(&again.body), "first");
    assert!(again.redelivered);
    connection.close().unwrap();
}

#[test]
fn acks_nacks_and_rejects_settle_single_and_multiple_deliveries() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    for i in 0..8 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    let consumer = consume(&channel, &queue);
    let tags: Vec<u64> = (0..8).map(|_| next(&consumer).delivery_tag).collect();
    channel.basic_ack(tags[0], false).unwrap();
    channel.basic_ack(tags[2], true).unwrap(); // 1 and 2
    channel.basic_nack(tags[3], false, false).unwrap();
    channel.basic_reject(tags[4], false).unwrap();
    channel.basic_nack(tags[6], true, false).unwrap(); // 5 and 6
                                                       // 7 stays unacked: closing the channel requeues it, and only it.
    consumer.cancel().unwrap();
    channel.close().unwrap();
    let observer = connection.open_channel().unwrap();
    // The requeue on close is asynchronous: wait for it.
    let last =
        eventually(ARRIVES, || get(&observer, &queue)).expect("the unacked message came back");
    assert_eq!(text(&last.body), "7");
    assert!(last.redelivered);
    assert!(
        get(&observer, &queue).is_none(),
        "settled messages came back"
    );
    // Acknowledging an unknown tag is caught locally, with a typed error,
    // before the broker would close the channel with 406: it stays open.
    assert!(matches!(
        observer.basic_ack(999, false),
        Err(Error::UnknownDeliveryTag {
            delivery_tag: 999,
            ..
        })
    ));
    observer.basic_qos(1, false).unwrap();
    connection.close().unwrap();
}

#[test]
fn coalesced_in_order_acks_settle_every_delivery_and_an_out_of_order_one_stays_exact() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    channel.set_ack_coalescing(true);
    let queue = exclusive_queue(&channel);
    for i in 0..1000 {
        publish(&channel, "", &queue, i.to_string());
    }
    channel.basic_qos(1000, false).unwrap();
    let consumer = consume(&channel, &queue);
    let deliveries: Vec<Delivery> = (0..1000).map(|_| next(&consumer)).collect();
    // Leave #500 out, ack the rest one by one in order (those after it are
    // out of order, so they must not be turned into `multiple`).
    for d in deliveries.iter().filter(|d| text(&d.body) != "500") {
        channel.basic_ack(d.delivery_tag, false).unwrap();
    }
    consumer.cancel().unwrap();
    channel.close().unwrap();
    // Only #500 was left unacknowledged: it alone comes back.
    let observer = connection.open_channel().unwrap();
    let back =
        eventually(ARRIVES, || get(&observer, &queue)).expect("the unacked message came back");
    assert_eq!(text(&back.body), "500");
    assert!(get(&observer, &queue).is_none());
    connection.close().unwrap();
}

#[test]
fn acking_twice_or_on_another_channel_is_refused_locally_and_nothing_is_sent() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let other = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    publish(&channel, "", &queue, "once");
    publish(&channel, "", &queue, "twice");
    let consumer = consume(&channel, &queue);
    let first = next(&consumer);
    let second = next(&consumer);
    channel.basic_ack(first.delivery_tag, false).unwrap();
    for (on, tag) in [
        (&channel, first.delivery_tag),
        (&other, second.delivery_tag),
    ] {
        match on.basic_ack(tag, false) {
            Err(Error::UnknownDeliveryTag { delivery_tag, .. }) => assert_eq!(delivery_tag, tag),
            other => panic!("acking tag {tag} again or elsewhere gave {other:?}"),
        }
    }
    // Both channels are still open and the second tag can still be settled.
    channel
        .basic_nack(second.delivery_tag, false, false)
        .unwrap();
    other.basic_qos(1, false).unwrap();
    channel.basic_qos(1, false).unwrap();
    assert!(channel.close_reason().is_none() && other.close_reason().is_none());
    connection.close().unwrap();
}

#[test]
fn a_nack_or_reject_with_requeue_brings_the_message_back_redelivered() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.basic_qos(1, false).unwrap();
    publish(&channel, "", &queue, "a");
    publish(&channel, "", &queue, "b");
    let consumer = consume(&channel, &queue);

    let a = next(&consumer);
    assert_eq!((text(&a.body), a.redelivered), ("a", false));
    channel.basic_reject(a.delivery_tag, true).unwrap();
    let a = next(&consumer);
    assert_eq!(
        (text(&a.body), a.redelivered),
        ("a", true),
        "after reject(requeue)"
    );
    channel.basic_nack(a.delivery_tag, false, true).unwrap();
    let a = next(&consumer);
    assert_eq!(
        (text(&a.body), a.redelivered),
        ("a", true),
        "after nack(requeue)"
    );
    channel.basic_ack(a.delivery_tag, false).unwrap();
    let b = next(&consumer);
    assert_eq!((text(&b.body), b.redelivered), ("b", false));
    channel.basic_ack(b.delivery_tag, false).unwrap();
    consumer.cancel().unwrap();

    // nack(multiple, requeue) brings back every one up to the tag.
    let channel = connection.open_channel().unwrap();
    for body in ["c", "d", "e"] {
        publish(&channel, "", &queue, body);
    }
    let consumer = consume(&channel, &queue);
    let got: Vec<Delivery> = (0..3).map(|_| next(&consumer)).collect();
    channel.basic_nack(got[1].delivery_tag, true, true).unwrap(); // c and d
    let mut again: Vec<(String, bool)> = (0..2)
        .map(|_| {
            let d = next(&consumer);
            (text(&d.body).to_owned(), d.redelivered)
        })
        .collect();
    again.sort();
    assert_eq!(again, [("c".to_owned(), true), ("d".to_owned(), true)]);
    assert!(
        consumer.recv_timeout(QUIET).unwrap().is_none(),
        "e came back too"
    );
    connection.close().unwrap();
}

#[test]
fn basic_qos_limits_unacknowledged_deliveries_per_consumer() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.basic_qos(2, false).unwrap();
    for i in 0..5 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    let consumer = consume(&channel, &queue);
    let first = next(&consumer);
    let _second = next(&consumer);
    assert!(
        consumer.recv_timeout(QUIET).unwrap().is_none(),
        "a third delivery past prefetch 2"
    );
    channel.basic_ack(first.delivery_tag, false).unwrap();
    assert_eq!(text(&next(&consumer).body), "2");
    assert!(
        consumer.recv_timeout(QUIET).unwrap().is_none(),
        "past prefetch 2 after one ack"
    );
    connection.close().unwrap();
}

#[test]
fn a_global_basic_qos_is_shared_by_the_channels_consumers() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queues = [exclusive_queue(&channel), exclusive_queue(&channel)];
    for queue in &queues {
        for i in 0..5 {
            publish(&channel, "", queue, format!("{i}"));
        }
    }
    channel.basic_qos(3, true).unwrap();
    let consumers: Vec<_> = queues.iter().map(|q| consume(&channel, q)).collect();
    std::thread::sleep(QUIET);
    let mut delivered = 0;
    for consumer in &consumers {
        while consumer.recv_timeout(QUIET).unwrap().is_some() {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 3, "a global prefetch of 3 across both consumers");
    connection.close().unwrap();
}

#[test]
fn cancelling_a_consumer_ends_its_iterator() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);

    let mut by_channel = consume(&channel, &queue);
    channel.basic_cancel(by_channel.tag()).unwrap();
    assert!(
        by_channel.next().is_none(),
        "Channel::basic_cancel ends the iterator"
    );

    let mut by_itself = consume(&channel, &queue);
    by_itself.cancel().unwrap();
    assert!(
        by_itself.next().is_none(),
        "Consumer::cancel ends the iterator"
    );
    assert!(matches!(by_itself.recv(), Ok(None)));
    assert!(matches!(by_itself.recv_timeout(QUIET), Ok(None)));

    // With nobody consuming, a message stays in the queue.
    publish(&channel, "", &queue, "unclaimed");
    assert_eq!(
        get_body(&channel, &queue).as_deref(),
        Some(&b"unclaimed"[..])
    );
    connection.close().unwrap();
}

#[test]
fn a_consumer_whose_queue_is_deleted_ends_with_consumer_cancelled() {
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = cleanup.queue(unique("deleted-under-consumer"));
    channel
        .queue_declare(&queue, QueueDeclareOptions::default(), no_args())
        .unwrap();
    let mut consumer = consume(&channel, &queue);
    let tag = consumer.tag().to_owned();
    let other = connection.open_channel().unwrap();
    other
        .queue_delete(&queue, QueueDeleteOptions::default())
        .unwrap();

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let first = consumer.next();
        let second = consumer.next();
        let _ = tx.send((first, second));
    });
    let (first, second) = rx
        .recv_timeout(ARRIVES)
        .expect("the consumer iterator did not end");
    match first {
        Some(Err(Error::ConsumerCancelled { consumer_tag })) => assert_eq!(consumer_tag, tag),
        other => panic!("expected Some(Err(ConsumerCancelled)), got {other:?}"),
    }
    assert!(
        second.is_none(),
        "the iterator goes on after the cancel: {second:?}"
    );
    // Only the consumer ended: its channel still works.
    assert!(channel.close_reason().is_none());
    exclusive_queue(&channel);
    connection.close().unwrap();
}

#[test]
fn basic_recover_redelivers_unacknowledged_messages() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    publish(&channel, "", &queue, "x");
    publish(&channel, "", &queue, "y");
    let consumer = consume(&channel, &queue);
    let first: Vec<Delivery> = (0..2).map(|_| next(&consumer)).collect();
    assert!(first.iter().all(|d| !d.redelivered));
    channel.basic_recover(true).unwrap();
    let mut again: Vec<(String, bool)> = (0..2)
        .map(|_| {
            let d = next(&consumer);
            channel.basic_ack(d.delivery_tag, false).unwrap();
            (text(&d.body).to_owned(), d.redelivered)
        })
        .collect();
    again.sort();
    assert_eq!(again, [("x".to_owned(), true), ("y".to_owned(), true)]);
    connection.close().unwrap();
}

#[test]
fn one_channel_publishes_while_others_consume_on_other_threads() {
    const MESSAGES: u32 = 5_000;
    const CONSUMERS: usize = 4;
    let mut cleanup = Cleanup::new();
    let connection = connect();
    let setup = connection.open_channel().unwrap();
    let fanout = cleanup.exchange(unique("fanout"));
    setup
        .exchange_declare(&fanout, ExchangeKind::Fanout, Default::default(), no_args())
        .unwrap();
    let queues: Vec<String> = (0..CONSUMERS)
        .map(|_| {
            let q = exclusive_queue(&setup);
            setup.queue_bind(&q, &fanout, "", no_args()).unwrap();
            q
        })
        .collect();
    let connection = &connection;
    let fanout = &fanout;
    std::thread::scope(|scope| {
        let consumers: Vec<_> = queues
            .iter()
            .map(|queue| {
                scope.spawn(move || {
                    let channel = connection.open_channel().unwrap();
                    channel.basic_qos(200, false).unwrap();
                    let consumer = consume(&channel, queue);
                    for expected in 0..MESSAGES {
                        let d = next(&consumer);
                        let got = u32::from_be_bytes(d.body[..].try_into().expect("4-byte body"));
                        assert_eq!(got, expected, "out of order on {queue}");
                        if expected % 50 == 49 {
                            channel.basic_ack(d.delivery_tag, true).unwrap();
                        }
                    }
                    MESSAGES
                })
            })
            .collect();
        let publisher = scope.spawn(move || {
            let channel = connection.open_channel().unwrap();
            channel.confirm_select().unwrap();
            for i in 0..MESSAGES {
                channel
                    .basic_publish(
                        fanout,
                        "",
                        PublishOptions::default(),
                        BasicProperties::default(),
                        i.to_be_bytes().to_vec(),
                    )
                    .unwrap();
            }
            assert!(channel.wait_for_confirms().unwrap());
        });
        publisher.join().expect("publisher thread");
        for consumer in consumers {
            assert_eq!(consumer.join().expect("consumer thread"), MESSAGES);
        }
    });
    setup
        .exchange_delete(fanout, ExchangeDeleteOptions::default())
        .unwrap();
    connection.close().unwrap();
}

// ---- more edges ----------------------------------------------------------------

#[test]
fn a_connection_closed_by_the_broker_reports_320_to_every_handle() {
    let name = unique("closed-by-broker");
    let connection = connect_with(config().connection_name(name.clone()));
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let consumer = consume(&channel, &queue);
    let listing = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]);
    let pid = listing
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} not in:\n{listing}"))
        .to_owned();
    rabbitmqctl(&["close_connection", &pid, "closed by the test"]);

    let is_forced = |e: &Error| matches!(e, Error::ConnectionClosed { code: 320, text, .. } if text.contains("closed by the test"));
    match consumer.recv_timeout(ARRIVES) {
        Err(e) if is_forced(&e) => {}
        other => panic!("the consumer saw {other:?}, expected ConnectionClosed 320"),
    }
    let reason = connection.close_reason().expect("the connection is closed");
    assert!(is_forced(&reason), "{reason:?}");
    assert!(reason.is_connection_error());
    match channel.basic_qos(1, false) {
        Err(e) if is_forced(&e) => {}
        other => panic!("a call on its channel gave {other:?}"),
    }
    match connection.open_channel() {
        Err(e) if is_forced(&e) => {}
        Err(e) => panic!("open_channel gave {e:?}"),
        Ok(_) => panic!("opened a channel on a closed connection"),
    }
}

#[test]
fn a_channel_exception_ends_that_channels_consumers_with_the_error() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let mut consumer = consume(&channel, &queue);
    channel_closed(
        channel.queue_declare(&unique("missing"), passive(), no_args()),
        404,
    );
    match consumer.next() {
        Some(Err(Error::ChannelClosed { code: 404, .. })) => {}
        other => panic!("expected Some(Err(ChannelClosed 404)), got {other:?}"),
    }
    assert!(
        consumer.next().is_none(),
        "the iterator goes on after its channel closed"
    );
    connection.close().unwrap();
}

#[test]
fn dropping_a_consumer_requeues_what_it_buffered_but_never_handed_out() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    for i in 0..1000 {
        publish(&channel, "", &queue, format!("{i}"));
    }
    let consumer = consume(&channel, &queue);
    let first = next(&consumer);
    channel.basic_ack(first.delivery_tag, false).unwrap();
    drop(consumer);
    // Without closing the channel, every message but the acked one is ready
    // again: none is left unacked in a dropped buffer.
    let observer = connection.open_channel().unwrap();
    let all_back = eventually(ARRIVES, || {
        (message_count(&observer, &queue) == 999).then_some(())
    });
    assert!(
        all_back.is_some(),
        "{} of 999 messages are ready again; the rest stay unacknowledged on the channel",
        message_count(&observer, &queue)
    );
    connection.close().unwrap();
}

#[test]
fn calls_from_many_threads_on_one_channel_each_get_their_own_answer() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queues: Vec<String> = (0..8).map(|_| exclusive_queue(&channel)).collect();
    std::thread::scope(|scope| {
        for (i, queue) in queues.iter().enumerate() {
            let channel = &channel;
            scope.spawn(move || {
                for round in 0..200 {
                    if round % 10 == i % 10 {
                        publish(channel, "", queue, "x");
                    }
                    let ok = channel.queue_declare(queue, passive(), no_args()).unwrap();
                    assert_eq!(
                        ok.queue,
                        queue.as_str(),
                        "thread {i} got another call's answer"
                    );
                }
            });
        }
    });
    connection.close().unwrap();
}

#[test]
fn a_small_frame_max_splits_bodies_that_still_arrive_intact() {
    let connection = connect_with(config().frame_max(4096));
    assert_eq!(connection.frame_max(), 4096);
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let sizes = [4088, 4089, 100_000, 1 << 20];
    let bodies: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i as u64 + 100))
        .collect();
    for body in &bodies {
        publish(&channel, "", &queue, body.clone());
    }
    let consumer = consume(&channel, &queue);
    for (size, body) in sizes.iter().zip(&bodies) {
        assert_same_bytes(
            &next(&consumer).body,
            body,
            &format!("a {size}-byte body with frame_max 4096"),
        );
    }
    connection.close().unwrap();
}

#[test]
fn a_full_reject_publish_queue_nacks_and_wait_for_confirms_reports_false() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let arguments = FieldTable::new()
        .with("x-max-length", 1i32)
        .unwrap()
        .with("x-overflow", "reject-publish")
        .unwrap();
    let queue = channel
        .queue_declare("", exclusive(), arguments)
        .unwrap()
        .queue
        .to_string();
    channel.confirm_select().unwrap();
    let send = |body: &'static str| {
        channel
            .basic_publish_confirmed(
                "",
                &queue,
                PublishOptions::default(),
                BasicProperties::default(),
                body,
            )
            .unwrap()
    };
    assert_eq!(
        send("fits").wait_timeout(ARRIVES).unwrap(),
        Confirmation::Ack
    );
    assert_eq!(
        send("overflows").wait_timeout(ARRIVES).unwrap(),
        Confirmation::Nack
    );
    publish(&channel, "", &queue, "overflows too");
    assert!(
        !channel.wait_for_confirms().unwrap(),
        "a nacked publish was reported as acked"
    );
    // Room again: acked, and wait_for_confirms only looks at what is new.
    assert_eq!(get_body(&channel, &queue).as_deref(), Some(&b"fits"[..]));
    assert_eq!(
        send("fits again").wait_timeout(ARRIVES).unwrap(),
        Confirmation::Ack
    );
    assert!(channel.wait_for_confirms().unwrap());
    connection.close().unwrap();
}

#[test]
fn every_unroutable_mandatory_publish_in_a_pipelined_confirm_batch_resolves_to_returned() {
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = exclusive_queue(&channel);
    let nowhere = unique("unroutable");
    channel.confirm_select().unwrap();
    let mandatory = PublishOptions {
        mandatory: true,
        ..Default::default()
    };
    // Alternate routable and unroutable publishes, all in flight at once, so
    // the broker's acks cover several of them (multiple=true).
    let handles: Vec<(bool, _)> = (0..2000u32)
        .map(|i| {
            let routable = i % 2 == 0;
            let key = if routable {
                queue.as_str()
            } else {
                nowhere.as_str()
            };
            let handle = channel
                .basic_publish_confirmed(
                    "",
                    key,
                    mandatory,
                    BasicProperties::default(),
                    i.to_be_bytes().to_vec(),
                )
                .unwrap();
            (routable, handle)
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, (routable, mut handle)) in handles.into_iter().enumerate() {
        let outcome = handle.wait_timeout(ARRIVES).unwrap();
        let expected_returned = !routable;
        let returned =
            matches!(&outcome, Confirmation::Returned(m) if m.body[..] == (i as u32).to_be_bytes());
        if returned != expected_returned || outcome == Confirmation::Nack {
            wrong.push(format!(
                "#{i} ({}): {outcome:?}",
                if routable { "routable" } else { "unroutable" }
            ));
        }
    }
    let mut returns = 0;
    while channel.try_next_return().is_some() {
        returns += 1;
    }
    assert!(
        wrong.is_empty() && returns == 1000,
        "{} of 2000 confirms wrong (first: {:?}); try_next_return gave {returns} of 1000",
        wrong.len(),
        wrong.first()
    );
    connection.close().unwrap();
}

#[test]
fn update_secret_is_answered_and_the_connection_stays_usable() {
    let connection = connect();
    let password = config().password;
    let result = connection.update_secret(&password, "rotation test");
    result.expect("connection.update-secret with the same password");
    let channel = connection.open_channel().unwrap();
    exclusive_queue(&channel);
    assert!(connection.close_reason().is_none());
    connection.close().unwrap();
}

#[test]
fn one_consumer_drains_many_queues_and_a_busy_queue_does_not_starve_a_quiet_one() {
    let connection = connect();
    let channel = connection.open_channel().expect("channel");
    let queues: Vec<String> = (0..3).map(|_| exclusive_queue(&channel)).collect();
    for n in 0..40 {
        publish(&channel, "", &queues[0], format!("busy {n}"));
    }
    for n in 0..4 {
        publish(&channel, "", &queues[1], format!("quiet {n}"));
    }
    channel.basic_qos(5, false).expect("qos per consumer");
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    let consumer = channel
        .basic_consume_many(&names, ConsumeOptions::default(), no_args())
        .expect("consume from all three");
    let tags: Vec<String> = consumer.tags().map(str::to_owned).collect();
    assert_eq!(tags.len(), 3);
    assert_eq!(tags.iter().collect::<HashSet<_>>().len(), 3, "{tags:?}");
    let mut order = Vec::new();
    while order.len() < 44 {
        let delivery = consumer
            .recv_timeout(ARRIVES)
            .expect("recv")
            .expect("all 44 messages arrive");
        let from = tags
            .iter()
            .position(|t| delivery.consumer_tag == t.as_str())
            .expect("a delivery for one of the consumer's tags");
        order.push(from);
        channel
            .basic_ack(delivery.delivery_tag, false)
            .expect("ack");
    }
    assert_eq!(order.iter().filter(|&&q| q == 0).count(), 40);
    assert_eq!(order.iter().filter(|&&q| q == 1).count(), 4);
    let quiet_done = order
        .iter()
        .rposition(|&q| q == 1)
        .expect("quiet ones came");
    assert!(
        quiet_done < 10,
        "the quiet queue's 4 messages come in turn with the busy queue's: {order:?}"
    );
    consumer.cancel().expect("cancel every tag");
    assert!(matches!(consumer.recv_timeout(ARRIVES), Ok(None)));
    // All three were cancelled: a new message stays in its queue.
    publish(&channel, "", &queues[2], "after");
    std::thread::sleep(QUIET);
    assert!(get(&channel, &queues[2]).is_some());
}

#[test]
fn a_consumer_of_many_queues_yields_the_error_when_one_queue_is_missing() {
    let connection = connect();
    let channel = connection.open_channel().expect("channel");
    let present = exclusive_queue(&channel);
    let missing = unique("missing");
    let consumer = channel
        .basic_consume_many(&[&present, &missing], ConsumeOptions::default(), no_args())
        .expect("the consumes are sent");
    match consumer.recv_timeout(ARRIVES) {
        Err(Error::ChannelClosed { code: 404, .. }) => {}
        other => panic!("expected 404 from the missing queue, got {other:?}"),
    }
}

/// Opens `count` channels on `connection`, each with an exclusive queue
/// and per-consumer prefetch `prefetch`.
fn channels_with_queues(
    connection: &Connection,
    count: usize,
    prefetch: u16,
) -> (Vec<Channel>, Vec<String>) {
    let mut channels = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..count {
        let channel = connection.open_channel().expect("channel");
        channel.basic_qos(prefetch, false).expect("qos");
        queues.push(exclusive_queue(&channel));
        channels.push(channel);
    }
    (channels, queues)
}

#[test]
fn a_consumer_set_hands_out_its_members_deliveries_in_turn_across_channels() {
    let connection = connect();
    // A prefetch past every backlog: the broker sends everything at once,
    // so the interleaving below is the set's doing.
    let (channels, queues) = channels_with_queues(&connection, 3, 100);
    for n in 0..40 {
        publish(&channels[0], "", &queues[0], format!("busy {n}"));
    }
    for n in 0..4 {
        publish(&channels[1], "", &queues[1], format!("quiet {n}"));
    }
    let consumers = channels
        .iter()
        .zip(&queues)
        .map(|(channel, queue)| consume(channel, queue))
        .collect();
    let set = ConsumerSet::new(consumers);
    // Let both backlogs arrive before taking any.
    std::thread::sleep(QUIET);
    let mut order = Vec::new();
    let mut next_busy = 0;
    while order.len() < 44 {
        let (index, delivery) = set
            .recv_timeout(ARRIVES)
            .expect("recv")
            .expect("all 44 messages arrive");
        if index == 0 {
            // Each member's own order is kept.
            assert_eq!(delivery.body, format!("busy {next_busy}").as_bytes());
            next_busy += 1;
        }
        order.push(index);
        channels[index]
            .basic_ack(delivery.delivery_tag, false)
            .expect("ack on the delivery's own channel");
    }
    assert_eq!(order.iter().filter(|&&q| q == 0).count(), 40);
    assert_eq!(
        order[..8],
        [0, 1, 0, 1, 0, 1, 0, 1],
        "the quiet queue's 4 messages alternate with the busy queue's: {order:?}"
    );
    // Nothing more for now: a timeout, not the end.
    assert!(matches!(set.recv_timeout(QUIET), Ok(None)));
    assert!(!set.has_ended());

    // A message that arrives while the set waits wakes it, with its index.
    let publisher = connection.open_channel().expect("channel");
    let late_queue = queues[2].clone();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        publish(&publisher, "", &late_queue, "late");
    });
    let (index, delivery) = set
        .recv_timeout(ARRIVES)
        .expect("recv")
        .expect("the late one wakes the set");
    sender.join().unwrap();
    assert_eq!((index, &delivery.body[..]), (2, &b"late"[..]));
    channels[2]
        .basic_ack(delivery.delivery_tag, false)
        .expect("ack");

    for consumer in set.consumers() {
        consumer.cancel().expect("cancel");
    }
    assert!(matches!(set.recv_timeout(ARRIVES), Ok(None)));
    assert!(set.has_ended());
}

#[test]
fn a_consumer_set_reports_a_members_end_once_and_goes_on_with_the_others() {
    let connection = connect();
    let (channels, queues) = channels_with_queues(&connection, 2, 10);
    let consumers = vec![
        consume(&channels[0], &queues[0]),
        consume(&channels[1], &queues[1]),
    ];
    let set = ConsumerSet::new(consumers);
    // Deleting the first queue makes the broker cancel its consumer.
    channels[0]
        .queue_delete(&queues[0], QueueDeleteOptions::default())
        .expect("delete the first queue");
    match set.recv_timeout(ARRIVES) {
        Err(Error::ConsumerCancelled { .. }) => {}
        other => panic!("expected the broker's cancel of member 0, got {other:?}"),
    }
    assert!(set.consumers()[0].has_ended());
    assert!(!set.has_ended());
    publish(&channels[1], "", &queues[1], "still here");
    let (index, delivery) = set
        .recv_timeout(ARRIVES)
        .expect("recv")
        .expect("a delivery");
    assert_eq!((index, &delivery.body[..]), (1, &b"still here"[..]));
    set.consumers()[1].cancel().expect("cancel");
    assert!(matches!(set.recv_timeout(ARRIVES), Ok(None)));
    assert!(set.has_ended());
}

#[test]
fn a_consumer_set_drains_members_on_different_connections() {
    let first = connect();
    let second = connect();
    let (first_channels, first_queues) = channels_with_queues(&first, 1, 10);
    let (second_channels, second_queues) = channels_with_queues(&second, 1, 10);
    let set = ConsumerSet::new(vec![
        consume(&first_channels[0], &first_queues[0]),
        consume(&second_channels[0], &second_queues[0]),
    ]);
    let mut seen = HashSet::new();
    for round in 0..3 {
        publish(
            &second_channels[0],
            "",
            &second_queues[0],
            format!("b{round}"),
        );
        publish(
            &first_channels[0],
            "",
            &first_queues[0],
            format!("a{round}"),
        );
        for _ in 0..2 {
            let (index, delivery) = set.recv_timeout(ARRIVES).expect("recv").expect("comes");
            let channel = [&first_channels[0], &second_channels[0]][index];
            channel
                .basic_ack(delivery.delivery_tag, false)
                .expect("ack");
            seen.insert(String::from_utf8(delivery.body.to_vec()).unwrap());
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
}

#[test]
fn a_consumer_set_starts_its_consumers_at_once_and_a_missing_queue_fails_only_its_member() {
    let connection = connect();
    let (mut channels, mut queues) = channels_with_queues(&connection, 2, 10);
    let doomed = connection.open_channel().expect("channel");
    channels.insert(1, doomed);
    queues.insert(1, unique("missing"));
    let pairs: Vec<(&Channel, &str)> = channels
        .iter()
        .zip(&queues)
        .map(|(channel, queue)| (channel, queue.as_str()))
        .collect();
    let set = ConsumerSet::consume(&pairs, ConsumeOptions::default(), no_args())
        .expect("the consumes are sent");
    let tags: Vec<&str> = set.consumers().iter().map(|c| c.tag()).collect();
    assert_eq!(tags.iter().collect::<HashSet<_>>().len(), 3, "{tags:?}");
    match set.recv_timeout(ARRIVES) {
        Err(Error::ChannelClosed { code: 404, .. }) => {}
        other => panic!("expected 404 from the missing queue, got {other:?}"),
    }
    assert!(set.consumers()[1].has_ended());
    for (index, channel) in [(0, &channels[0]), (2, &channels[2])] {
        publish(channel, "", &queues[index], format!("to {index}"));
        let (from, delivery) = set.recv_timeout(ARRIVES).expect("recv").expect("comes");
        assert_eq!(from, index);
        assert_eq!(delivery.consumer_tag.as_str(), Some(tags[index]));
        channel
            .basic_ack(delivery.delivery_tag, false)
            .expect("ack");
    }
    let no_wait = ConsumeOptions {
        no_wait: true,
        ..Default::default()
    };
    assert!(matches!(
        ConsumerSet::consume(&pairs[..1], no_wait, no_args()),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn an_empty_consumer_set_has_ended_at_once() {
    let set = ConsumerSet::new(Vec::new());
    assert!(set.has_ended());
    assert!(matches!(set.recv(), Ok(None)));
}
