//! warren's blocking facade: publishes with `basic_publish` in a loop;
//! confirms through `basic_publish_confirmed` handles, waiting for the
//! oldest once 1000 are outstanding; consumes with `Consumer::recv`, and for
//! many-queues with one thread draining one `basic_consume_many` consumer of
//! every queue, on one channel (each queue's consumer with prefetch 1000, as
//! the peers' one channel per queue).

use std::collections::{HashMap, VecDeque};
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
    let channel = connection.open_channel()?;
    channel.basic_qos(PREFETCH, false)?;
    let counts = signal.counts();
    signal.go();
    let per_queue = job.per_queue();
    if job.queues.len() == 1 {
        let consumer = start(&channel, &job.queues[0])?;
        drain(&channel, &consumer, per_queue, &counts[0])?;
    } else {
        // One basic_consume_many consumer of every queue, on this channel,
        // drained by this thread: while its buffer is dry the thread reads
        // the socket itself, so no other thread is involved.
        let queues: Vec<&str> = job.queues.iter().map(String::as_str).collect();
        let consumer =
            channel.basic_consume_many(&queues, ConsumeOptions::default(), FieldTable::new())?;
        let queue_of: HashMap<String, usize> = consumer
            .tags()
            .enumerate()
            .map(|(queue, tag)| (tag.to_owned(), queue))
            .collect();
        let total = per_queue * queues.len() as u64;
        for received in 1..=total {
            let delivery = consumer.recv()?.ok_or("the consumer ended early")?;
            let tag = delivery.consumer_tag.as_str().unwrap_or_default();
            let queue = *queue_of.get(tag).ok_or("a delivery for an unknown tag")?;
            counts[queue].fetch_add(1, Ordering::Relaxed);
            // Deliveries on a channel come in tag order: a multiple ack
            // covers exactly what was received.
            if ack_now(received, total) {
                channel.basic_ack(delivery.delivery_tag, true)?;
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
