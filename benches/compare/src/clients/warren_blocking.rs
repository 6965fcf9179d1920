//! warren's blocking facade: publishes with `basic_publish` in a loop;
//! confirms through `basic_publish_confirmed` handles, waiting for the
//! oldest once 1000 are outstanding; consumes with `Consumer::recv`, and for
//! many-queues with one thread draining a `ConsumerSet` of every queue's
//! consumer, each on its own channel with prefetch 1000 (as the peers).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use warren::blocking::{Channel, Connection, Consumer, ConsumerSet};
use warren::options::{ConsumeOptions, PublishOptions};
use warren::protocol::{BasicProperties, FieldTable};

use crate::worker::{ack_now, Job, Signal};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

pub fn run(job: &Job, signal: &mut Signal) -> Res {
    let connection = Connection::open(&job.uri)?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => publish(&connection, job, signal)?,
        Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => {
            consume(&connection, job, signal)?
        }
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
    // One channel per queue, as the peers do, each with prefetch 1000.
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
        // One consumer set over every queue's consumer (the consumes sent
        // at once, as the peers' tasks send theirs), drained by this thread:
        // while it is dry the thread reads the socket itself, so no other
        // thread is involved.
        let pairs: Vec<(&Channel, &str)> = channels
            .iter()
            .zip(&job.queues)
            .map(|(channel, queue)| (channel, queue.as_str()))
            .collect();
        let set = ConsumerSet::consume(&pairs, ConsumeOptions::default(), FieldTable::new())?;
        let mut received = vec![0u64; channels.len()];
        for _ in 0..per_queue * channels.len() as u64 {
            let (queue, delivery) = set.recv()?.ok_or("the consumers ended early")?;
            counts[queue].fetch_add(1, Ordering::Relaxed);
            received[queue] += 1;
            // Deliveries on a channel come in tag order: a multiple ack
            // covers exactly what its channel received.
            if ack_now(received[queue], per_queue) {
                channels[queue].basic_ack(delivery.delivery_tag, true)?;
            }
        }
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
