//! warren's async facade under a current-thread tokio runtime, with warren's
//! `tokio` feature (this crate's dependency turns it on): publishes by
//! awaiting `basic_publish` in a loop (it completes once the message is
//! queued for the socket, so this pipelines); confirms through
//! `basic_publish_confirmed` calls, awaiting the oldest once 1000 are
//! outstanding; consumes from the `Stream`, and for many-queues from one
//! `ConsumerSet` of every queue's consumer (a channel each) in one task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use warren::nonblocking::{Channel, Connection, ConsumerSet};
use warren::options::{ConsumeOptions, PublishOptions};
use warren::protocol::{BasicProperties, FieldTable};

use crate::worker::{ack_now, Job, Signal};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

pub async fn run(job: &Job, signal: &mut Signal) -> Res {
    let connection = Connection::open(&job.uri).await?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => publish(&connection, job, signal).await?,
        Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => {
            consume(&connection, job, signal).await?
        }
    }
    connection.close().await?;
    Ok(())
}

async fn publish(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let channel = connection.open_channel().await?;
    let confirm = job.scenario == Scenario::PublishConfirm;
    if confirm {
        channel.confirm_select().await?;
    }
    let body = Bytes::from(job.body());
    let queue = job.queues[0].as_str();
    signal.go();
    if confirm {
        let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
        for _ in 0..job.messages {
            if window.len() == CONFIRM_WINDOW {
                let oldest: warren::nonblocking::Call<warren::Confirmation> =
                    window.pop_front().unwrap();
                if !oldest.await?.is_ack() {
                    return Err("a message was nacked".into());
                }
            }
            let call = channel
                .basic_publish_confirmed(
                    "",
                    queue,
                    PublishOptions::default(),
                    BasicProperties::default(),
                    body.clone(),
                )
                .await?;
            window.push_back(call);
        }
        for call in window {
            if !call.await?.is_ack() {
                return Err("a message was nacked".into());
            }
        }
    } else {
        for _ in 0..job.messages {
            channel
                .basic_publish(
                    "",
                    queue,
                    PublishOptions::default(),
                    BasicProperties::default(),
                    body.clone(),
                )
                .await?;
        }
    }
    signal.finish_async().await;
    Ok(())
}

async fn consume(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let mut channels = Vec::with_capacity(job.queues.len());
    for _ in &job.queues {
        let channel = connection.open_channel().await?;
        channel.basic_qos(PREFETCH, false).await?;
        channels.push(Arc::new(channel));
    }
    let counts = signal.counts();
    signal.go();
    let per_queue = job.per_queue();
    if channels.len() == 1 {
        drain(
            channels[0].clone(),
            job.queues[0].clone(),
            per_queue,
            counts,
            0,
        )
        .await?;
    } else {
        // One consumer set over every queue's consumer (the consumes sent
        // at once), drained by this task.
        let pairs: Vec<(&Channel, &str)> = channels
            .iter()
            .zip(&job.queues)
            .map(|(channel, queue)| (&**channel, queue.as_str()))
            .collect();
        let mut set = ConsumerSet::consume(&pairs, ConsumeOptions::default(), FieldTable::new())?;
        let mut received = vec![0u64; channels.len()];
        for _ in 0..per_queue * channels.len() as u64 {
            let (queue, delivery) = set.next().await.ok_or("the consumers ended early")??;
            counts[queue].fetch_add(1, Ordering::Relaxed);
            received[queue] += 1;
            // Deliveries on a channel come in tag order: a multiple ack
            // covers exactly what its channel received.
            if ack_now(received[queue], per_queue) {
                channels[queue].basic_ack(delivery.delivery_tag, true)?;
            }
        }
    }
    signal.finish_async().await;
    Ok(())
}

/// Starts a consumer on `queue` and receives `total` deliveries, acking
/// with `multiple` every 100.
async fn drain(
    channel: Arc<Channel>,
    queue: String,
    total: u64,
    counts: Arc<Vec<AtomicU64>>,
    index: usize,
) -> Res {
    let mut consumer = channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .await?;
    for received in 1..=total {
        let delivery = consumer.next().await.ok_or("the consumer ended early")??;
        counts[index].fetch_add(1, Ordering::Relaxed);
        if ack_now(received, total) {
            channel.basic_ack(delivery.delivery_tag, true)?;
        }
    }
    Ok(())
}
