//! warren's blocking facade: publishes with `basic_publish` in a loop;
//! confirms through `basic_publish_confirmed` handles, waiting for the
//! oldest once 1000 are outstanding; consumes with `Consumer::recv`, and for
//! many-queues with one thread per queue (the facade has no select over
//! consumers).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use warren::blocking::{Channel, Connection, Consumer};
use warren::options::{ConsumeOptions, PublishOptions};
use warren::protocol::{BasicProperties, FieldTable};

use crate::worker::{ack_now, Job, Signal};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

pub fn run(job: &Job, signal: &mut Signal) -> Res {
    let connection = Connection::open(&job.uri)?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => publish(&connection, job, signal)?,
        Scenario::Consume | Scenario::ManyQueues => consume(&connection, job, signal)?,
    }
    connection.close()?;
    Ok(())
}

fn publish(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let channel = connection.open_channel()?;
    let confirm = job.scenario == Scenario::PublishConfirm;
    if confirm {
        channel.confirm_select()?;
    }
    let body = Bytes::from(job.body());
    let queue = job.queues[0].as_str();
    signal.go();
    if confirm {
        let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
        for _ in 0..job.messages {
            if window.len() == CONFIRM_WINDOW {
                let oldest: warren::blocking::PublishConfirm = window.pop_front().unwrap();
                if !oldest.wait()?.is_ack() {
                    return Err("a message was nacked".into());
                }
            }
            window.push_back(channel.basic_publish_confirmed(
                "",
                queue,
                PublishOptions::default(),
                BasicProperties::default(),
                body.clone(),
            )?);
        }
        for handle in window {
            if !handle.wait()?.is_ack() {
                return Err("a message was nacked".into());
            }
        }
    } else {
        for _ in 0..job.messages {
            channel.basic_publish(
                "",
                queue,
                PublishOptions::default(),
                BasicProperties::default(),
                body.clone(),
            )?;
        }
    }
    signal.finish();
    Ok(())
}

fn consume(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let mut channels = Vec::with_capacity(job.queues.len());
    for _ in &job.queues {
        let channel = connection.open_channel()?;
        channel.basic_qos(PREFETCH, false)?;
        channels.push(channel);
    }
    let counts = signal.counts();
    signal.go();
    let per_queue = job.per_queue();
    if channels.len() == 1 {
        let consumer = start(&channels[0], &job.queues[0])?;
        drain(&channels[0], &consumer, per_queue, &counts[0])?;
    } else {
        // Each queue's thread starts its consumer and drains it.
        std::thread::scope(|scope| -> Res {
            let threads: Vec<_> = channels
                .iter()
                .zip(&job.queues)
                .zip(counts.iter())
                .map(|((channel, queue), count)| {
                    scope.spawn(move || {
                        let consumer = start(channel, queue)?;
                        drain(channel, &consumer, per_queue, count)
                    })
                })
                .collect();
            for thread in threads {
                thread.join().map_err(|_| "a consumer thread panicked")??;
            }
            Ok(())
        })?;
    }
    signal.finish();
    Ok(())
}

fn start(channel: &Channel, queue: &str) -> Res<Consumer> {
    Ok(channel.basic_consume(queue, "", ConsumeOptions::default(), FieldTable::new())?)
}

/// Receives `total` deliveries, acking with `multiple` every 100.
fn drain(
    channel: &Channel,
    consumer: &Consumer,
    total: u64,
    count: &std::sync::atomic::AtomicU64,
) -> Res {
    for received in 1..=total {
        let delivery = consumer.recv()?.ok_or("the consumer ended early")?;
        count.fetch_add(1, Ordering::Relaxed);
        if ack_now(received, total) {
            channel.basic_ack(delivery.delivery_tag, true)?;
        }
    }
    Ok(())
}
