//! Blocking callers that drive their connection's I/O themselves
//! (leader/follower, `src/reactor/lead.rs`), against a live RabbitMQ:
//! whoever waits, every waiter gets its result; whatever a caller left
//! queued goes out after it stops calling; an idle caller's wait costs the
//! reactor thread nothing.
//!
//! The tests take turns (`ONE_AT_A_TIME`): one counts the wake-ups of its
//! connection's reactor thread by name, so no other connection may live
//! in the process meanwhile.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::broker::{connect, eventually, unique, Cleanup};
use warren::blocking::{Channel, Connection, Consumer};
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable};

/// How long to wait for something that should come.
const ARRIVES: Duration = Duration::from_secs(10);

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn publish(channel: &Channel, queue: &str, body: impl Into<bytes::Bytes>) {
    channel
        .basic_publish(
            "",
            queue,
            PublishOptions::default(),
            BasicProperties::default(),
            body,
        )
        .unwrap();
}

/// Declares `names` (default options) on `channel`.
fn declare(channel: &Channel, names: &[&String]) {
    for queue in names {
        channel
            .queue_declare(queue, QueueDeclareOptions::default(), FieldTable::new())
            .unwrap();
    }
}

/// `count` fresh queues named after `prefix`, deleted by `cleanup`.
fn queues(
    connection: &Connection,
    cleanup: &mut Cleanup,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let names: Vec<String> = (0..count)
        .map(|i| cleanup.queue(unique(&format!("{prefix}.{i}"))))
        .collect();
    declare(
        &connection.open_channel().unwrap(),
        &names.iter().collect::<Vec<_>>(),
    );
    names
}

/// A consumer of `queue` on a channel of its own with `prefetch`.
fn consume_alone(connection: &Connection, queue: &str, prefetch: u16) -> (Channel, Consumer) {
    let channel = connection.open_channel().unwrap();
    channel.basic_qos(prefetch, false).unwrap();
    let consumer = channel
        .basic_consume(queue, "", ConsumeOptions::default(), FieldTable::new())
        .unwrap();
    (channel, consumer)
}

/// The queue's state, without declaring it.
fn passive_declare(channel: &Channel, queue: &str) -> warren::protocol::QueueDeclareOk {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, options, FieldTable::new())
        .unwrap()
}

/// Consumers, RPC callers and a confirming publisher on eight threads share
/// one connection: whichever of them drives, the others' results reach them.
#[test]
fn many_threads_waiting_on_one_connection_each_get_their_results() {
    let _turn = one_at_a_time();
    const QUEUES: usize = 3;
    const PER_QUEUE: u64 = 3_000;
    let connection = connect();
    let mut cleanup = Cleanup::new();
    let queues = queues(&connection, &mut cleanup, "leading.many", QUEUES);
    let received = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for queue in &queues {
            let (connection, received) = (&connection, &received);
            scope.spawn(move || {
                let (channel, consumer) = consume_alone(connection, queue, 50);
                for n in 1..=PER_QUEUE {
                    let delivery = consumer
                        .recv_timeout(ARRIVES)
                        .unwrap()
                        .unwrap_or_else(|| panic!("delivery {n} of {queue} did not come"));
                    channel.basic_ack(delivery.delivery_tag, false).unwrap();
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for caller in 0..4 {
            let (connection, queues) = (&connection, &queues);
            scope.spawn(move || {
                let channel = connection.open_channel().unwrap();
                for _ in 0..200 {
                    passive_declare(&channel, &queues[caller % QUEUES]);
                }
            });
        }
        let (connection, queues) = (&connection, &queues);
        scope.spawn(move || {
            let channel = connection.open_channel().unwrap();
            channel.confirm_select().unwrap();
            let mut confirms = std::collections::VecDeque::new();
            for n in 0..PER_QUEUE as usize * QUEUES {
                if confirms.len() == 100 {
                    let oldest: warren::blocking::PublishConfirm = confirms.pop_front().unwrap();
                    assert!(oldest.wait().unwrap().is_ack());
                }
                let confirm = channel
                    .basic_publish_confirmed(
                        "",
                        &queues[n % QUEUES],
                        PublishOptions::default(),
                        BasicProperties::default(),
                        &b"shared"[..],
                    )
                    .unwrap();
                confirms.push_back(confirm);
            }
            for confirm in confirms {
                assert!(confirm.wait().unwrap().is_ack());
            }
        });
    });
    assert_eq!(received.load(Ordering::Relaxed), PER_QUEUE * QUEUES as u64);
    connection.close().unwrap();
}

/// Consumers whose waits time out every millisecond hand the lead back
/// and forth thousands of times while a publisher on the same connection
/// feeds them in bursts: each gets every message once, in order, and
/// nobody hangs.
#[test]
fn callers_timing_out_every_millisecond_lose_and_repeat_nothing() {
    let _turn = one_at_a_time();
    const QUEUES: usize = 3;
    const PER_QUEUE: u64 = 2_000;
    let connection = connect();
    let mut cleanup = Cleanup::new();
    let queues = queues(&connection, &mut cleanup, "leading.timeouts", QUEUES);
    let timeouts = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for queue in &queues {
            let (connection, timeouts) = (&connection, &timeouts);
            scope.spawn(move || {
                let (channel, consumer) = consume_alone(connection, queue, 20);
                let started = Instant::now();
                let mut next = 0u64;
                while next < PER_QUEUE {
                    match consumer.recv_timeout(Duration::from_millis(1)).unwrap() {
                        Some(delivery) => {
                            assert_eq!(
                                delivery.body,
                                next.to_string().as_bytes(),
                                "{queue}: message {next} out of order, lost or repeated"
                            );
                            channel.basic_ack(delivery.delivery_tag, false).unwrap();
                            next += 1;
                        }
                        None => {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                            assert!(
                                started.elapsed() < Duration::from_secs(60),
                                "{queue}: stuck at message {next}"
                            );
                        }
                    }
                }
            });
        }
        let (connection, queues) = (&connection, &queues);
        scope.spawn(move || {
            let channel = connection.open_channel().unwrap();
            for n in 0..PER_QUEUE {
                for queue in queues {
                    publish(&channel, queue, n.to_string());
                }
                if n % 200 == 199 {
                    // A pause, so the consumers run dry and time out.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
    });
    eprintln!(
        "{} waits timed out while {} messages arrived",
        timeouts.load(Ordering::Relaxed),
        PER_QUEUE * QUEUES as u64
    );
    connection.close().unwrap();
}

/// A thread that drove the connection for its consumer, then published
/// and stopped calling: the publish still goes out (the reactor thread
/// takes the lead back), and a second consumer on the connection still
/// gets its deliveries.
#[test]
fn what_a_caller_queued_before_it_stopped_calling_still_goes_out() {
    let _turn = one_at_a_time();
    let connection = Arc::new(connect());
    let mut cleanup = Cleanup::new();
    let inbox = cleanup.queue(unique("leading.inbox"));
    let outbox = cleanup.queue(unique("leading.outbox"));
    let other = cleanup.queue(unique("leading.other"));
    let channel = connection.open_channel().unwrap();
    declare(&channel, &[&inbox, &outbox, &other]);
    let consumer = channel
        .basic_consume(&inbox, "", ConsumeOptions::default(), FieldTable::new())
        .unwrap();
    let (ready, go) = std::sync::mpsc::channel();
    let worker = {
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            // recv waits, so this thread drives the connection until the
            // delivery is in; then it publishes, acks and goes quiet.
            let delivery = consumer.recv_timeout(ARRIVES).unwrap().expect("a request");
            publish(&channel, &outbox, "reply");
            channel.basic_ack(delivery.delivery_tag, false).unwrap();
            ready.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(2));
            drop(consumer);
            channel
        })
    };
    let observer = connect();
    let probe = observer.open_channel().unwrap();
    // Let the worker start waiting (and lead) before the request comes.
    std::thread::sleep(Duration::from_millis(100));
    publish(&probe, &inbox, "request");
    go.recv_timeout(ARRIVES)
        .expect("the worker got its request");
    let sent = Instant::now();
    let reply = eventually(Duration::from_secs(1), || {
        probe.basic_get(&outbox, true).unwrap().map(|(d, _)| d)
    });
    assert!(
        reply.is_some(),
        "the reply published by a caller that then stopped calling did not reach the \
         broker within {:?}",
        sent.elapsed()
    );
    // Another consumer on the same connection, fed while the worker sleeps.
    let second = connection.open_channel().unwrap();
    let consumer = second
        .basic_consume(&other, "", ConsumeOptions::default(), FieldTable::new())
        .unwrap();
    for _ in 0..3 {
        publish(&probe, &other, "more");
    }
    for n in 1..=3 {
        let delivery = consumer.recv_timeout(ARRIVES).unwrap();
        assert!(delivery.is_some(), "delivery {n} did not come");
    }
    // The request was acked: nothing is left in the inbox.
    let inbox_state = eventually(Duration::from_secs(2), || {
        let ok = passive_declare(&probe, &inbox);
        (ok.message_count == 0).then_some(ok)
    });
    assert!(inbox_state.is_some(), "the ack did not reach the broker");
    worker.join().unwrap();
    observer.close().unwrap();
}

/// The voluntary context switches of this process's thread named `name`.
#[cfg(target_os = "linux")]
fn voluntary_switches(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// A consumer waiting on an empty queue drives its connection; the reactor
/// thread sleeps until it lets go instead of checking every millisecond.
#[cfg(target_os = "linux")]
#[test]
fn an_idle_blocking_consumer_leaves_the_reactor_thread_asleep() {
    let _turn = one_at_a_time();
    let connection = connect();
    let channel = connection.open_channel().unwrap();
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .unwrap()
        .queue;
    let consumer = channel
        .basic_consume(
            queue.as_str().unwrap(),
            "",
            ConsumeOptions::default(),
            FieldTable::new(),
        )
        .unwrap();
    // Settle: the first interval or two after the lead changes hands.
    assert!(consumer
        .recv_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    let before = voluntary_switches("warren-reactor");
    let waited = Instant::now();
    assert!(consumer
        .recv_timeout(Duration::from_millis(1500))
        .unwrap()
        .is_none());
    let wakeups = voluntary_switches("warren-reactor") - before;
    // Checking every millisecond would be about 1,500.
    assert!(
        wakeups < 100,
        "the reactor thread woke {wakeups} times in {:?} while a consumer waited",
        waited.elapsed()
    );
    connection.close().unwrap();
}
