//! warren's `tokio` feature against the real broker: under a tokio runtime
//! with its I/O driver, the task awaiting a result drives the connection
//! and tokio watches its poll, so the connection's reactor thread sleeps
//! through the traffic; without the feature's runtime (or under one without
//! I/O) the reactor thread wakes for every batch, as the second test shows.
//! The reactor thread is told apart by its name and its context switches
//! read from `/proc`, so these tests run one at a time, in their own binary.
//! They also count how often the task is polled: a drive does not wake the
//! task it drives for, which is about to look for its result anyway.
#![cfg(all(target_os = "linux", feature = "tokio"))]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

mod support;

use futures::StreamExt;
use support::nonblocking::exclusive_queue;
use warren::nonblocking::Connection;
use warren::options::*;
use warren::protocol::{BasicProperties, FieldTable};

/// Publishes awaited one by one, then consumed one by one: each is a round
/// trip, so each is at least one batch of input for the connection.
const ROUND_TRIPS: u64 = 2000;

/// The tests find the reactor thread as the one that appears when they
/// connect: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// This process's threads named `warren-reactor`.
fn reactor_threads() -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "warren-reactor" {
            found.insert(task.file_name().to_string_lossy().parse().unwrap());
        }
    }
    found
}

/// Context switches of thread `tid` so far (voluntary and not).
fn switches(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .map(|l| l.split(':').nth(1).unwrap().trim().parse::<u64>().unwrap())
        .sum()
}

/// Connects, returning the connection and its reactor thread.
async fn connect() -> (Connection, u32) {
    let before = reactor_threads();
    let connection = support::nonblocking::connect().await;
    let new: Vec<u32> = reactor_threads().difference(&before).copied().collect();
    assert_eq!(new.len(), 1, "one new reactor thread: {new:?}");
    (connection, new[0])
}

/// Polls of the round trips' task (see [`Counted`]).
static POLLS: AtomicU64 = AtomicU64::new(0);

/// A future that counts its polls in [`POLLS`].
struct Counted<F>(Pin<Box<F>>);

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        POLLS.fetch_add(1, Ordering::Relaxed);
        self.0.as_mut().poll(cx)
    }
}

/// What the round trips cost: the reactor thread's context switches, and
/// how often their task was polled.
struct Cost {
    reactor_switches: u64,
    polls: u64,
}

/// `ROUND_TRIPS` confirmed publishes, each awaited, then as many
/// deliveries, each acked before the next, in a task whose polls are
/// counted.
fn round_trips() -> Counted<impl Future<Output = Cost>> {
    Counted(Box::pin(round_trips_uncounted()))
}

async fn round_trips_uncounted() -> Cost {
    let (connection, reactor) = connect().await;
    let channel = connection.open_channel().await.unwrap();
    channel.confirm_select().await.unwrap();
    channel.basic_qos(1, false).await.unwrap();
    let queue = exclusive_queue(&channel).await;
    let start = switches(reactor);
    let polls_before = POLLS.load(Ordering::Relaxed);
    for i in 0..ROUND_TRIPS {
        let confirm = channel
            .basic_publish_confirmed(
                "",
                &queue,
                PublishOptions::default(),
                BasicProperties::default(),
                i.to_string(),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
    let mut consumer = channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    for i in 0..ROUND_TRIPS {
        let delivery = consumer.next().await.unwrap().unwrap();
        assert_eq!(&delivery.body[..], i.to_string().as_bytes());
        channel.basic_ack(delivery.delivery_tag, false).unwrap();
    }
    let cost = Cost {
        reactor_switches: switches(reactor) - start,
        polls: POLLS.load(Ordering::Relaxed) - polls_before,
    };
    connection.close().await.unwrap();
    cost
}

#[test]
fn under_tokio_the_awaiting_task_drives_and_the_reactor_thread_sleeps() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for runtime in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ] {
        let cost = runtime.block_on(round_trips());
        // It only looks in every few milliseconds whether the tasks still
        // drive (about 200 times here); woken per batch, it would be
        // 10,000 times.
        assert!(
            cost.reactor_switches < ROUND_TRIPS / 2,
            "the reactor thread woke {} times in {} round trips",
            cost.reactor_switches,
            2 * ROUND_TRIPS
        );
        // One poll per round trip, when its answer comes in; a drive that
        // woke its own task would make it two.
        assert!(
            cost.polls < 2 * ROUND_TRIPS * 5 / 4,
            "the task was polled {} times in {} round trips",
            cost.polls,
            2 * ROUND_TRIPS
        );
    }
}

#[test]
fn outside_tokio_the_reactor_thread_wakes_for_each_batch() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let woken = futures::executor::block_on(round_trips()).reactor_switches;
    assert!(
        woken >= ROUND_TRIPS,
        "the reactor thread woke only {woken} times in {} round trips",
        2 * ROUND_TRIPS
    );
}
