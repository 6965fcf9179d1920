//! lapin under a current-thread tokio runtime (lapin adds its own I/O
//! thread). Publishes are pipelined the way lapin's users get its best:
//! `basic_publish` futures (which resolve once lapin's I/O loop has written
//! the frames) run concurrently through `buffer_unordered(1000)`; with
//! confirms each future also awaits its `PublisherConfirm`, so at most 1000
//! confirms are outstanding. Consumers read the `Consumer` stream; the
//! multiple-acks are spawned as tasks (in order, on the same thread) so
//! the consumer does not wait for each ack to be written; many-queues runs
//! one task per queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::worker::{ack_now, Job, Signal};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

pub async fn run(job: &Job, signal: &mut Signal) -> Res {
    let connection = Connection::connect(&job.uri, ConnectionProperties::default()).await?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => publish(&connection, job, signal).await?,
        Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => {
            consume(&connection, job, signal).await?
        }
    }
    connection
        .close(200, "bye".into())
        .await
        .map_err(|e| format!("connection.close: {e}"))?;
    Ok(())
}

async fn publish(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let channel = connection.create_channel().await?;
    let confirm = job.scenario == Scenario::PublishConfirm;
    if confirm {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let body = job.body();
    let queue = ShortString::from(job.queues[0].as_str());
    signal.go();
    let (channel, body) = (&channel, body.as_slice());
    let mut publishes = futures::stream::iter(0..job.messages)
        .map(|_| {
            let queue = queue.clone();
            async move {
                let confirmation = channel
                    .basic_publish(
                        ShortString::from(""),
                        queue,
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default(),
                    )
                    .await?
                    .await?;
                if confirm && !confirmation.is_ack() {
                    return Err::<(), crate::BoxError>("a message was nacked".into());
                }
                Ok(())
            }
        })
        .buffer_unordered(CONFIRM_WINDOW);
    while let Some(result) = publishes.next().await {
        result?;
    }
    drop(publishes);
    signal.finish_async().await;
    close(channel).await
}

async fn consume(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let mut channels = Vec::with_capacity(job.queues.len());
    for _ in &job.queues {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        channels.push(channel);
    }
    let counts = signal.counts();
    signal.go();
    let per_queue = job.per_queue();
    // Each queue's task starts its consumer and drains it.
    let tasks: Vec<_> = channels
        .iter()
        .zip(&job.queues)
        .enumerate()
        .map(|(i, (channel, queue))| {
            tokio::spawn(drain(
                channel.clone(),
                ShortString::from(queue.as_str()),
                per_queue,
                counts.clone(),
                i,
            ))
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    signal.finish_async().await;
    for channel in &channels {
        close(channel).await?;
    }
    Ok(())
}

/// Closes a channel and waits for close-ok. (Dropping the last handle of a
/// lapin channel starts closing it in the background, and a
/// `Connection::close` that comes while one is closing fails with "invalid
/// channel state: Closing", so channels are closed first, explicitly.)
async fn close(channel: &Channel) -> Res {
    channel
        .close(200, "bye".into())
        .await
        .map_err(|e| format!("channel.close: {e}").into())
}

/// Starts a consumer on `queue` and receives `total` deliveries, acking
/// with `multiple` every 100.
async fn drain(
    channel: Channel,
    queue: ShortString,
    total: u64,
    counts: Arc<Vec<AtomicU64>>,
    index: usize,
) -> Res {
    let mut consumer = channel
        .basic_consume(
            queue,
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acks = Vec::new();
    for received in 1..=total {
        let delivery = consumer.next().await.ok_or("the consumer ended early")??;
        counts[index].fetch_add(1, Ordering::Relaxed);
        if ack_now(received, total) {
            let (channel, tag) = (channel.clone(), delivery.delivery_tag);
            acks.push(tokio::spawn(async move {
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
            }));
        }
    }
    for ack in acks {
        ack.await??;
    }
    Ok(())
}
