//! connection.blocked / unblocked against a live RabbitMQ: these tests raise
//! a broker-wide memory alarm (`rabbitmqctl set_vm_memory_high_watermark`),
//! so they live in their own test binary and run one at a time (`SERIAL`).
//! Every alarm is cleared by a guard, even when a test fails, which puts
//! the watermark back to RabbitMQ's default of 0.4.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::broker::{connect, eventually, rabbitmqctl};
use warren::blocking::{Channel, ConnectionEvent};
use warren::options::{PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable};
use warren::Error;

/// The tests of this file change broker-wide state: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// RabbitMQ's default memory high watermark.
const DEFAULT_WATERMARK: &str = "0.4";

/// How long the broker may take to raise or clear an alarm and tell us.
const NOTICE: Duration = Duration::from_secs(15);

/// A memory alarm, raised for as long as this lives (or until `clear`).
struct MemoryAlarm {
    raised: bool,
}

impl MemoryAlarm {
    /// A watermark far below what the broker uses: the alarm goes off at once.
    fn raise() -> MemoryAlarm {
        let alarm = MemoryAlarm { raised: true };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        alarm
    }

    /// Puts the default watermark back.
    fn clear(&mut self) {
        if self.raised {
            self.raised = false;
            rabbitmqctl(&["set_vm_memory_high_watermark", DEFAULT_WATERMARK]);
        }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if self.raised {
            self.raised = false;
            // No panic while unwinding: report and carry on.
            let restored = std::process::Command::new("rabbitmqctl")
                .args(["set_vm_memory_high_watermark", DEFAULT_WATERMARK])
                .output();
            if !matches!(&restored, Ok(output) if output.status.success()) {
                eprintln!(
                    "COULD NOT RESTORE the memory watermark ({restored:?}): run \
                     `rabbitmqctl set_vm_memory_high_watermark {DEFAULT_WATERMARK}`"
                );
            }
        }
    }
}

fn publish(channel: &Channel, queue: &str, body: &'static str) -> Result<(), Error> {
    channel.basic_publish(
        "",
        queue,
        PublishOptions::default(),
        BasicProperties::default(),
        body,
    )
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
        .expect("queue.declare")
        .queue
        .to_string()
}

/// Publishes once under the alarm, then waits for connection.blocked.
fn publish_until_blocked(
    connection: &warren::blocking::Connection,
    channel: &Channel,
    queue: &str,
) {
    publish(
        channel,
        queue,
        "the publish that gets the connection blocked",
    )
    .expect("the first publish under an alarm is not held: the client does not know yet");
    match eventually(NOTICE, || connection.try_next_event()) {
        Some(ConnectionEvent::Blocked { reason }) => {
            assert!(reason.contains("memory"), "blocked for {reason:?}")
        }
        Some(other) => panic!("expected Blocked first, got {other:?}"),
        None => panic!("no connection.blocked within {NOTICE:?} of a publish under a memory alarm"),
    }
    assert!(connection.is_blocked());
}

#[test]
fn a_memory_alarm_holds_publishers_until_it_clears() {
    let _serial = serial();
    let connection = Arc::new(connect());
    let channel = Arc::new(connection.open_channel().unwrap());
    let queue = exclusive_queue(&channel);
    assert!(!connection.is_blocked());
    assert!(connection.try_next_event().is_none());

    let mut alarm = MemoryAlarm::raise();
    publish_until_blocked(&connection, &channel, &queue);

    // A publish now waits for the broker to unblock. (A plain thread, not a
    // scoped one: if this test fails, nothing joins a publisher still held.)
    let (done_tx, done_rx) = mpsc::channel();
    let publisher = {
        let channel = channel.clone();
        let queue = queue.clone();
        thread::spawn(move || {
            let result = publish(&channel, &queue, "held while blocked");
            let _ = done_tx.send((Instant::now(), result));
        })
    };
    if let Ok((_, result)) = done_rx.recv_timeout(Duration::from_secs(2)) {
        panic!("basic_publish returned while the connection was blocked: {result:?}");
    }

    let cleared_at = Instant::now();
    alarm.clear();
    let (returned_at, result) = done_rx
        .recv_timeout(NOTICE)
        .expect("the held publish did not return after the alarm cleared");
    result.expect("the held publish failed");
    assert!(returned_at >= cleared_at);
    publisher.join().unwrap();
    match eventually(NOTICE, || connection.try_next_event()) {
        Some(ConnectionEvent::Unblocked) => {}
        other => panic!("expected Unblocked, got {other:?}"),
    }
    assert!(!connection.is_blocked());
    assert!(connection.try_next_event().is_none());

    // Both publishes arrived.
    let count = eventually(NOTICE, || {
        let n = channel
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::new(),
            )
            .expect("passive declare")
            .message_count;
        (n == 2).then_some(n)
    });
    assert_eq!(count, Some(2), "the messages published around the block");
    connection.close().unwrap();
}

#[test]
fn closing_a_blocked_connection_does_not_hang_and_releases_held_publishers() {
    let _serial = serial();
    let connection = Arc::new(connect());
    let channel = Arc::new(connection.open_channel().unwrap());
    let queue = exclusive_queue(&channel);
    let _alarm = MemoryAlarm::raise();
    publish_until_blocked(&connection, &channel, &queue);

    let (held_tx, held_rx) = mpsc::channel();
    {
        let channel = channel.clone();
        let queue = queue.clone();
        thread::spawn(move || {
            let _ = held_tx.send(publish(&channel, &queue, "held, then abandoned"));
        });
    }
    if let Ok(result) = held_rx.recv_timeout(Duration::from_secs(1)) {
        panic!("basic_publish returned while the connection was blocked: {result:?}");
    }

    // The broker reads nothing from a blocked connection, close included:
    // close must give up on close-ok rather than hang.
    let (closed_tx, closed_rx) = mpsc::channel();
    {
        let connection = connection.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let result = connection.close();
            let _ = closed_tx.send((started.elapsed(), result));
        });
    }
    let limit = Duration::from_secs(15);
    let (took, result) = closed_rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("Connection::close hung for more than {limit:?} while blocked"));
    eprintln!("close while blocked took {took:?}: {result:?}");
    assert!(
        matches!(result, Ok(()) | Err(Error::Timeout { .. })),
        "close while blocked: {result:?}"
    );
    assert!(
        connection.close_reason().is_some(),
        "still open after close"
    );

    let held = held_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the held publisher was not released by the close");
    assert!(
        held.is_err(),
        "a publish held by the block succeeded on a closed connection"
    );
    assert!(publish(&channel, &queue, "after close").is_err());
}
