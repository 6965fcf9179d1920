//! The blocking and async facades side by side on the same workloads against
//! the local RabbitMQ: throughput and client CPU per message.
//!
//! `cargo bench --bench facades` (needs the broker at 127.0.0.1:5672, or
//! `WARREN_TEST_URI`). Runs alternate between the facades; medians of 5.
//! Client CPU is this process's user + system time (getrusage), so it
//! excludes the broker.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use warren::options::*;
use warren::protocol::{BasicProperties, FieldTable};

const MESSAGES: usize = 200_000;
const BODY: usize = 16;
const RUNS: usize = 5;

fn uri() -> String {
    std::env::var("WARREN_TEST_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// User + system CPU time of this process (all its threads) so far, to the
/// microsecond.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn measure(run: impl FnOnce()) -> Sample {
    let (cpu, wall) = (cpu_time(), Instant::now());
    run();
    Sample {
        wall: wall.elapsed(),
        cpu: cpu_time() - cpu,
    }
}

fn queue_options() -> QueueDeclareOptions {
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

mod blocking_runs {
    use super::*;
    use warren::blocking::Connection;

    /// Publishes MESSAGES to a fresh queue; timed until the queue holds them all.
    pub(super) fn publish() -> Sample {
        let connection = Connection::open(&uri()).unwrap();
        let channel = connection.open_channel().unwrap();
        let queue = channel
            .queue_declare("", queue_options(), FieldTable::new())
            .unwrap()
            .queue
            .to_string();
        let body = Bytes::from(vec![7u8; BODY]);
        let sample = measure(|| {
            for _ in 0..MESSAGES {
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
            while (channel
                .queue_declare(&queue, passive(), FieldTable::new())
                .unwrap()
                .message_count as usize)
                < MESSAGES
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        connection.close().unwrap();
        sample
    }

    /// Consumes MESSAGES from a pre-filled queue: prefetch 1000, ack multiple every 100.
    pub(super) fn consume(queue: &str, connection: &Connection) -> Sample {
        let channel = connection.open_channel().unwrap();
        channel.basic_qos(1000, false).unwrap();
        let consumer = channel
            .basic_consume(queue, "", ConsumeOptions::default(), FieldTable::new())
            .unwrap();
        let sample = measure(|| {
            for (i, delivery) in (&mut consumer.into_iter()).take(MESSAGES).enumerate() {
                let delivery = delivery.unwrap();
                if (i + 1) % 100 == 0 {
                    channel.basic_ack(delivery.delivery_tag, true).unwrap();
                }
            }
        });
        channel.close().unwrap();
        sample
    }
}

mod async_runs {
    use super::*;
    use warren::nonblocking::Connection;

    pub(super) fn publish() -> Sample {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let connection = Connection::open(&uri()).await.unwrap();
            let channel = connection.open_channel().await.unwrap();
            let queue = channel
                .queue_declare("", queue_options(), FieldTable::new())
                .await
                .unwrap()
                .queue
                .to_string();
            let body = Bytes::from(vec![7u8; BODY]);
            let (cpu, wall) = (cpu_time(), Instant::now());
            for _ in 0..MESSAGES {
                channel
                    .basic_publish(
                        "",
                        &queue,
                        PublishOptions::default(),
                        BasicProperties::default(),
                        body.clone(),
                    )
                    .await
                    .unwrap();
            }
            while (channel
                .queue_declare(&queue, passive(), FieldTable::new())
                .await
                .unwrap()
                .message_count as usize)
                < MESSAGES
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let sample = Sample {
                wall: wall.elapsed(),
                cpu: cpu_time() - cpu,
            };
            connection.close().await.unwrap();
            sample
        })
    }

    pub(super) fn consume(queue: &str) -> Sample {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let connection = Connection::open(&uri()).await.unwrap();
            let channel = connection.open_channel().await.unwrap();
            channel.basic_qos(1000, false).await.unwrap();
            let mut consumer = channel
                .basic_consume(queue, "", ConsumeOptions::default(), FieldTable::new())
                .await
                .unwrap();
            let (cpu, wall) = (cpu_time(), Instant::now());
            for i in 0..MESSAGES {
                let delivery = consumer.next().await.unwrap().unwrap();
                if (i + 1) % 100 == 0 {
                    channel.basic_ack(delivery.delivery_tag, true).unwrap();
                }
            }
            let sample = Sample {
                wall: wall.elapsed(),
                cpu: cpu_time() - cpu,
            };
            connection.close().await.unwrap();
            sample
        })
    }
}

/// Fills a durable-less queue with MESSAGES, outside any timing.
fn prefilled_queue(connection: &warren::blocking::Connection) -> String {
    let channel = connection.open_channel().unwrap();
    let queue = channel
        .queue_declare("", QueueDeclareOptions::default(), FieldTable::new())
        .unwrap()
        .queue
        .to_string();
    let body = Bytes::from(vec![7u8; BODY]);
    channel.confirm_select().unwrap();
    for _ in 0..MESSAGES {
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
    assert!(channel.wait_for_confirms().unwrap());
    queue
}

fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by_key(|s| s.wall);
    samples.swap_remove(samples.len() / 2)
}

fn report(name: &str, sample: &Sample) -> (f64, f64) {
    let rate = MESSAGES as f64 / sample.wall.as_secs_f64();
    let cpu_us = sample.cpu.as_secs_f64() * 1e6 / MESSAGES as f64;
    println!("{name:<28} {rate:>12.0} msgs/s {cpu_us:>10.2} µs CPU/msg");
    (rate, cpu_us)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run
    // the full measurement only for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("{MESSAGES} messages of {BODY} B, median of {RUNS} runs, facades alternating\n");
    let (mut bp, mut ap, mut bc, mut ac) = (vec![], vec![], vec![], vec![]);
    let filler = warren::blocking::Connection::open(&uri()).expect("RabbitMQ at 127.0.0.1:5672");
    for _ in 0..RUNS {
        bp.push(blocking_runs::publish());
        ap.push(async_runs::publish());
        let queue = prefilled_queue(&filler);
        bc.push(blocking_runs::consume(&queue, &filler));
        let queue_async = prefilled_queue(&filler);
        ac.push(async_runs::consume(&queue_async));
        let channel = filler.open_channel().unwrap();
        for q in [queue, queue_async] {
            channel
                .queue_delete(&q, QueueDeleteOptions::default())
                .unwrap();
        }
    }
    let (bp_rate, bp_cpu) = report("publish, blocking", &median(bp));
    let (ap_rate, ap_cpu) = report("publish, async (tokio)", &median(ap));
    let (bc_rate, bc_cpu) = report("consume, blocking", &median(bc));
    let (ac_rate, ac_cpu) = report("consume, async (tokio)", &median(ac));
    println!(
        "\nasync / blocking: publish {:.2}x msgs/s, {:.2}x CPU; consume {:.2}x msgs/s, {:.2}x CPU",
        ap_rate / bp_rate,
        ap_cpu / bp_cpu,
        ac_rate / bc_rate,
        ac_cpu / bc_cpu
    );
    filler.close().unwrap();
}
