//! amqprs under a current-thread tokio runtime (its reader, writer, channel
//! and consumer tasks run there). Publishes await `basic_publish` in a loop
//! (it completes once the frames are handed to the writer task); amqprs
//! has no per-publish confirm future, so confirms are counted by a
//! `ChannelCallback` (`publish_ack` / `publish_nack`) and the publisher
//! waits whenever 1000 are outstanding. Consumers read
//! `basic_consume_rx`'s receiver and await `basic_ack`; many-queues runs one
//! task per queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use tokio::sync::Notify;

use crate::worker::{ack_now, Confirms, Job, Signal, UriParts};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

pub async fn run(job: &Job, signal: &mut Signal) -> Res {
    let uri = UriParts::parse(&job.uri)?;
    let arguments = OpenConnectionArguments::new(&uri.host, uri.port, &uri.user, &uri.password)
        .virtual_host(&uri.vhost)
        .finish();
    let connection = Connection::open(&arguments).await?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => publish(&connection, job, signal).await?,
        Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => {
            consume(&connection, job, signal).await?
        }
    }
    connection.close().await?;
    Ok(())
}

/// Confirms as the channel callback sees them.
#[derive(Default)]
struct Confirmed {
    confirms: Mutex<Confirms>,
    upto: AtomicU64,
    changed: Notify,
}

impl Confirmed {
    fn confirm(&self, tag: u64, multiple: bool, ack: bool) {
        let mut confirms = self.confirms.lock().unwrap();
        confirms.confirm(tag, multiple, ack);
        self.upto.store(confirms.upto(), Ordering::Release);
        drop(confirms);
        self.changed.notify_one();
    }

    /// Waits until at least `tag` is confirmed.
    async fn wait_for(&self, tag: u64) -> Res {
        while self.upto.load(Ordering::Acquire) < tag {
            self.changed.notified().await;
        }
        if self.confirms.lock().unwrap().nacked {
            return Err("a message was nacked".into());
        }
        Ok(())
    }
}

struct Callback(Arc<Confirmed>);

#[async_trait::async_trait]
impl ChannelCallback for Callback {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        eprintln!("amqprs: the broker closed the channel: {close}");
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, _: bool) -> Result<bool, amqprs::error::Error> {
        Ok(true)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.0.confirm(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.0.confirm(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

async fn publish(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let channel = connection.open_channel(None).await?;
    let confirm = job.scenario == Scenario::PublishConfirm;
    let confirmed = Arc::new(Confirmed::default());
    if confirm {
        channel
            .register_callback(Callback(confirmed.clone()))
            .await?;
        channel
            .confirm_select(ConfirmSelectArguments::new(false))
            .await?;
    }
    let body = job.body();
    let arguments = BasicPublishArguments::new("", &job.queues[0]);
    signal.go();
    for tag in 1..=job.messages {
        if confirm && tag > CONFIRM_WINDOW as u64 {
            confirmed.wait_for(tag - CONFIRM_WINDOW as u64).await?;
        }
        channel
            .basic_publish(BasicProperties::default(), body.clone(), arguments.clone())
            .await?;
    }
    if confirm {
        confirmed.wait_for(job.messages).await?;
    }
    signal.finish_async().await;
    channel.close().await?;
    Ok(())
}

async fn consume(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let mut channels = Vec::with_capacity(job.queues.len());
    for _ in &job.queues {
        let channel = connection.open_channel(None).await?;
        channel
            .basic_qos(BasicQosArguments::new(0, PREFETCH, false))
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
                queue.clone(),
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
    for channel in channels {
        channel.close().await?;
    }
    Ok(())
}

/// Starts a consumer on `queue` and receives `total` deliveries, acking
/// with `multiple` every 100.
async fn drain(
    channel: Channel,
    queue: String,
    total: u64,
    counts: Arc<Vec<AtomicU64>>,
    index: usize,
) -> Res {
    let (_tag, mut receiver) = channel
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "")
                .manual_ack(true)
                .finish(),
        )
        .await?;
    for received in 1..=total {
        let message = receiver.recv().await.ok_or("the consumer ended early")?;
        let deliver = message.deliver.ok_or("a message without basic.deliver")?;
        counts[index].fetch_add(1, Ordering::Relaxed);
        if ack_now(received, total) {
            channel
                .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), true))
                .await?;
        }
    }
    Ok(())
}
