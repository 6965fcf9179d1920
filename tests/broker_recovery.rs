//! Automatic recovery against a live RabbitMQ: a link cut by the relay, and
//! a broker restart (`rabbitmqctl stop_app` / `start_app`) in the middle of
//! a confirmed publish stream and a consume stream.
//!
//! The restart stops the broker for everyone, so these tests live in their
//! own test binary and run one at a time (`SERIAL`); a guard starts the
//! broker again (and waits for its port) even when a test fails.

mod support;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::broker::{config, connect, connect_with, eventually, rabbitmqctl, unique, Cleanup};
use support::relay::Relay;
use warren::blocking::{Channel, Connection, ConnectionEvent};
use warren::options::{ConsumeOptions, ExchangeKind, PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable};
use warren::{Confirmation, ConnectionConfig, Error, RecoveryConfig, RecoveryReport};

/// The restart test stops the broker: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a recovery may take here (the broker restarts in a few seconds).
const RECOVERY: Duration = Duration::from_secs(60);

/// Quick retries, so the tests do not wait on the default backoff.
fn quick_recovery() -> RecoveryConfig {
    RecoveryConfig {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        max_attempts: None,
    }
}

fn recovering(config: ConnectionConfig) -> ConnectionConfig {
    config.recovery(quick_recovery())
}

/// Waits for the connection to report recovery started, then recovered.
#[track_caller]
fn await_recovery(connection: &Connection) -> RecoveryReport {
    let deadline = Instant::now() + RECOVERY;
    let mut started = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.next_event_timeout(left) {
            Ok(Some(ConnectionEvent::RecoveryStarted { .. })) => started = true,
            Ok(Some(ConnectionEvent::Recovered(report))) => {
                assert!(started, "Recovered came without RecoveryStarted");
                return report;
            }
            Ok(Some(ConnectionEvent::RecoveryFailed { error })) => {
                panic!("recovery gave up: {error}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "the connection closed instead of recovering: {:?}",
                connection.close_reason()
            ),
            Err(e) => panic!("no recovery within {RECOVERY:?}: {e}"),
        }
    }
}

fn publish(channel: &Channel, exchange: &str, key: &str, body: &str) {
    channel
        .basic_publish(
            exchange,
            key,
            PublishOptions::default(),
            BasicProperties::default(),
            body.to_owned(),
        )
        .expect("publish");
}

#[test]
fn a_cut_link_is_recovered_with_channel_modes_topology_and_consumers_restored() {
    let _serial = serial();
    let mut cleanup = Cleanup::new();
    let relay = Relay::start(support::broker::address_for_relay());
    let connection = connect_with(recovering(relay.config(config())));
    let channel = connection.open_channel().expect("channel");
    channel.basic_qos(5, false).expect("qos");
    channel.confirm_select().expect("confirm mode");
    let source = cleanup.exchange(unique("recovery-source"));
    let destination = cleanup.exchange(unique("recovery-destination"));
    for name in [&source, &destination] {
        channel
            .exchange_declare(
                name,
                ExchangeKind::Topic,
                Default::default(),
                FieldTable::new(),
            )
            .expect("declare exchange");
    }
    channel
        .exchange_bind(&destination, &source, "#", FieldTable::new())
        .expect("exchange to exchange binding");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("", exclusive, FieldTable::new())
        .expect("server-named queue")
        .queue
        .to_string();
    channel
        .queue_bind(&queue, &destination, "orders.*", FieldTable::new())
        .expect("bind");
    let consumer = channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .expect("consume");

    // Another connection, straight to the broker, publishes into the source.
    let publisher_connection = connect();
    let publisher = publisher_connection.open_channel().expect("channel");
    publish(&publisher, &source, "orders.before", "before");
    let before = consumer
        .recv_timeout(Duration::from_secs(10))
        .expect("recv")
        .expect("the message published before the cut");
    assert_eq!(&before.body[..], b"before");

    relay.cut();
    let report = await_recovery(&connection);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let [(old, new)] = report.renamed_queues.as_slice() else {
        panic!("the server-named queue is renamed: {report:?}");
    };
    assert_eq!(old, &queue);
    assert_ne!(new, &queue);
    assert_eq!(relay.connections(), 2, "one reconnection through the relay");

    // The tag from before the cut is refused locally, not sent.
    assert!(matches!(
        channel.basic_ack(before.delivery_tag, false),
        Err(Error::UnknownDeliveryTag { .. })
    ));
    // Exchanges, the exchange-to-exchange binding, the renamed queue's
    // binding and the consumer are back: a message to the source arrives.
    for n in 0..10 {
        publish(&publisher, &source, "orders.after", &format!("after {n}"));
    }
    let mut received = Vec::new();
    while let Some(d) = consumer
        .recv_timeout(Duration::from_secs(2))
        .expect("recv after recovery")
    {
        received.push(d);
    }
    // The prefetch of 5 is back too: no more than 5 unacked arrive.
    assert_eq!(received.len(), 5, "prefetch 5 restored");
    assert!(received[0].delivery_tag > before.delivery_tag);
    assert_eq!(&received[0].body[..], b"after 0");
    channel
        .basic_ack(received[4].delivery_tag, true)
        .expect("ack after recovery");
    let rest: Vec<_> = (0..5)
        .map(|_| {
            consumer
                .recv_timeout(Duration::from_secs(10))
                .expect("recv")
                .expect("the rest after the ack")
        })
        .collect();
    assert_eq!(&rest[4].body[..], b"after 9");
    channel
        .basic_ack(rest[4].delivery_tag, true)
        .expect("ack the rest");
    // Confirm mode is back.
    let confirm = channel
        .basic_publish_confirmed(
            &source,
            "elsewhere",
            PublishOptions::default(),
            BasicProperties::default(),
            "confirmed",
        )
        .expect("publish")
        .wait()
        .expect("confirm after recovery");
    assert_eq!(confirm, Confirmation::Ack);
    connection.close().expect("close");
}

#[test]
fn recovery_gives_up_after_its_attempts_and_everything_fails_with_the_cause() {
    let _serial = serial();
    let mut cleanup = Cleanup::new();
    let relay = Relay::start(support::broker::address_for_relay());
    let config = relay.config(config()).recovery(RecoveryConfig {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
        max_attempts: Some(3),
    });
    let connection = connect_with(config);
    let channel = connection.open_channel().expect("channel");
    let queue = cleanup.queue(unique("recovery-give-up"));
    channel
        .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
        .expect("declare");
    let consumer = channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .expect("consume");
    drop(relay); // cuts the link and stops listening: reconnecting fails
    let started = Instant::now();
    let mut events = Vec::new();
    while let Ok(Some(event)) = connection.next_event_timeout(Duration::from_secs(20)) {
        events.push(event);
    }
    assert!(
        matches!(
            events.as_slice(),
            [
                ConnectionEvent::RecoveryStarted { .. },
                ConnectionEvent::RecoveryFailed {
                    error: Error::Io(_)
                }
            ]
        ),
        "{events:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(connection.close_reason().is_some());
    assert!(matches!(
        consumer.recv_timeout(Duration::from_secs(5)),
        Err(Error::Io(_))
    ));
    assert!(channel
        .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
        .is_err());
}

#[test]
fn closing_while_recovery_waits_to_reconnect_returns_promptly() {
    let _serial = serial();
    let relay = Relay::start(support::broker::address_for_relay());
    let config = relay.config(config()).recovery(RecoveryConfig {
        initial_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(30),
        max_attempts: None,
    });
    let connection = connect_with(config);
    let channel = connection.open_channel().expect("channel");
    relay.cut();
    assert!(matches!(
        connection.next_event_timeout(Duration::from_secs(10)),
        Ok(Some(ConnectionEvent::RecoveryStarted { .. }))
    ));
    // Commands made meanwhile wait in the queue; the close must not wait
    // behind them for the end of the 30 s delay (the reactor is asleep in
    // it by now).
    thread::sleep(Duration::from_millis(300));
    publish(&channel, "", "anywhere", "queued while recovering");
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    connection.close().expect("close during recovery");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(connection.close_reason(), Some(Error::Closed)));
    assert!(channel.basic_qos(1, false).is_err());
}

/// Starts the RabbitMQ application again when dropped (even if the test
/// failed half-way), and waits until its port answers.
struct RestartGuard {
    stopped: bool,
}

impl RestartGuard {
    fn stop_app() -> RestartGuard {
        let guard = RestartGuard { stopped: true };
        rabbitmqctl(&["stop_app"]);
        guard
    }

    fn start_app(&mut self) {
        if !self.stopped {
            return;
        }
        self.stopped = false;
        rabbitmqctl(&["start_app"]);
        let address = support::broker::address_for_relay();
        let up = eventually(Duration::from_secs(60), || {
            TcpStream::connect(&address).ok()
        });
        assert!(up.is_some(), "RabbitMQ did not come back after start_app");
    }
}

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if self.stopped {
            self.stopped = false;
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .status();
            let address = support::broker::address_for_relay();
            eventually(Duration::from_secs(60), || {
                TcpStream::connect(&address).ok()
            });
        }
    }
}

/// What happened to each published message.
#[derive(Debug, Default)]
struct Outcomes {
    acked: BTreeSet<u32>,
    nacked: BTreeSet<u32>,
    lost: BTreeSet<u32>,
    other: Vec<(u32, String)>,
}

#[test]
fn a_broker_restart_loses_no_confirmed_message_and_reports_every_unconfirmed_one() {
    let _serial = serial();
    let mut cleanup = Cleanup::new();
    let queue = cleanup.queue(unique("recovery-restart"));
    const MESSAGES: u32 = 4_000;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };

    let consuming = connect_with(recovering(config()));
    let consume_channel = consuming.open_channel().expect("channel");
    consume_channel
        .queue_declare(&queue, durable, FieldTable::new())
        .expect("declare");
    consume_channel.basic_qos(200, false).expect("qos");
    let consumer = consume_channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .expect("consume");
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let consumer_thread = {
        let (received, done) = (received.clone(), done.clone());
        thread::spawn(move || {
            let mut stale_acks = 0u32;
            while !done.load(Ordering::Acquire) {
                match consumer.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(d)) => {
                        let id: u32 = std::str::from_utf8(&d.body)
                            .expect("utf-8 body")
                            .parse()
                            .expect("numbered body");
                        received.lock().unwrap().insert(id);
                        match consume_channel.basic_ack(d.delivery_tag, false) {
                            Ok(()) => {}
                            // Delivered before the restart: the broker requeued it.
                            Err(Error::UnknownDeliveryTag { .. }) => stale_acks += 1,
                            // Acked while the connection was down: requeued too.
                            Err(_) => {}
                        }
                    }
                    Ok(None) => {}
                    Err(e) => panic!("the consumer ended: {e}"),
                }
            }
            stale_acks
        })
    };

    let publishing = connect_with(recovering(config()));
    let publish_channel = publishing.open_channel().expect("channel");
    publish_channel.confirm_select().expect("confirm mode");
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let halfway = Arc::new(AtomicBool::new(false));
    let publisher_thread = {
        let (outcomes, halfway) = (outcomes.clone(), halfway.clone());
        let queue = queue.clone();
        thread::spawn(move || {
            let persistent = BasicProperties::default().with_delivery_mode(2);
            let mut window = std::collections::VecDeque::new();
            let settle = |(id, confirm): (u32, warren::blocking::PublishConfirm)| {
                let mut o = outcomes.lock().unwrap();
                match confirm.wait() {
                    Ok(Confirmation::Ack) => o.acked.insert(id),
                    Ok(Confirmation::Nack) => o.nacked.insert(id),
                    Ok(other) => {
                        o.other.push((id, format!("{other:?}")));
                        true
                    }
                    Err(Error::ConnectionLost { .. }) => o.lost.insert(id),
                    Err(e) => {
                        o.other.push((id, e.to_string()));
                        true
                    }
                };
            };
            for id in 0..MESSAGES {
                if id == MESSAGES / 4 {
                    halfway.store(true, Ordering::Release);
                }
                let confirm = publish_channel
                    .basic_publish_confirmed(
                        "",
                        &queue,
                        PublishOptions::default(),
                        persistent.clone(),
                        id.to_string(),
                    )
                    .expect("publishes wait through the restart, they do not fail");
                window.push_back((id, confirm));
                if window.len() >= 100 {
                    settle(window.pop_front().expect("not empty"));
                }
                thread::sleep(Duration::from_micros(500));
            }
            window.into_iter().for_each(settle);
            publish_channel
        })
    };

    assert!(eventually(Duration::from_secs(60), || halfway
        .load(Ordering::Acquire)
        .then_some(()))
    .is_some());
    let mut restart = RestartGuard::stop_app();
    thread::sleep(Duration::from_secs(1));
    restart.start_app();
    let publisher_report = await_recovery(&publishing);
    let consumer_report = await_recovery(&consuming);
    assert!(publisher_report.failures.is_empty(), "{publisher_report:?}");
    assert!(consumer_report.failures.is_empty(), "{consumer_report:?}");

    let _publish_channel = publisher_thread.join().expect("publisher");
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert!(outcomes.other.is_empty(), "{:?}", outcomes.other);
    let accounted = outcomes.acked.len() + outcomes.nacked.len() + outcomes.lost.len();
    assert_eq!(
        accounted, MESSAGES as usize,
        "every publish is confirmed or reported lost"
    );
    let missing = eventually(Duration::from_secs(60), || {
        let received = received.lock().unwrap();
        let missing: Vec<u32> = outcomes
            .acked
            .iter()
            .filter(|id| !received.contains(id))
            .copied()
            .collect();
        missing.is_empty().then_some(())
    });
    done.store(true, Ordering::Release);
    let stale_acks = consumer_thread.join().expect("consumer");
    let received = received.lock().unwrap();
    assert!(
        missing.is_some(),
        "confirmed but never received: {:?}",
        outcomes
            .acked
            .iter()
            .filter(|id| !received.contains(id))
            .take(20)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "restart: {} acked, {} nacked, {} reported lost, {} received, {} stale acks refused",
        outcomes.acked.len(),
        outcomes.nacked.len(),
        outcomes.lost.len(),
        received.len(),
        stale_acks
    );
}

#[test]
fn the_async_facade_recovers_a_cut_link_and_its_stream_goes_on() {
    use futures::StreamExt;
    use warren::nonblocking;

    let _serial = serial();
    let mut cleanup = Cleanup::new();
    let queue = cleanup.queue(unique("recovery-async"));
    let relay = Relay::start(support::broker::address_for_relay());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connection = nonblocking::Connection::open_with(recovering(relay.config(config())))
            .await
            .expect("connect through the relay");
        let channel = connection.open_channel().await.expect("channel");
        channel
            .queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new())
            .await
            .expect("declare");
        let mut consumer = channel
            .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
            .await
            .expect("consume");
        relay.cut();
        let started = connection.next_event().await;
        assert!(
            matches!(
                started,
                Some(nonblocking::ConnectionEvent::RecoveryStarted { .. })
            ),
            "{started:?}"
        );
        // Made while recovering: it waits for the replay, then goes out at once.
        channel
            .basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                BasicProperties::default(),
                "after the cut",
            )
            .await
            .expect("a publish during recovery is queued");
        let recovered = connection.next_event().await;
        assert!(
            matches!(recovered, Some(nonblocking::ConnectionEvent::Recovered(_))),
            "{recovered:?}"
        );
        // Well within the 30 s a stalled reactor would wait for its next heartbeat.
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("a delivery after recovery")
            .expect("the stream goes on")
            .expect("no error");
        assert_eq!(&delivery.body[..], b"after the cut");
        channel
            .basic_ack(delivery.delivery_tag, false)
            .expect("ack");
        connection.close().await.expect("close");
    });
}

#[test]
fn a_first_connect_that_fails_is_returned_at_once_not_retried() {
    let _serial = serial();
    // A port nothing listens on: a relay started and dropped leaves one.
    let port = Relay::start(support::broker::address_for_relay())
        .addr()
        .port();
    let config = config()
        .host("127.0.0.1")
        .port(port)
        .recovery(quick_recovery());
    let started = Instant::now();
    match Connection::open_with(config) {
        Err(Error::Io(_)) => {}
        Err(other) => panic!("expected the connect error, got {other}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
