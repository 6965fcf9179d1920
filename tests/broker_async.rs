//! The async facade against the real broker, under tokio (multi-thread and
//! current-thread), smol and `futures::executor`: the same scenarios run on
//! each, plus cancellation and concurrency tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use futures::StreamExt;
use support::nonblocking::{connect, exclusive_queue};
use warren::nonblocking::{Channel, ConsumerSet};
use warren::options::*;
use warren::protocol::{BasicProperties, FieldTable, ShortString};
use warren::{Confirmation, Error};

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "warren-async.{prefix}.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn publish(channel: &Channel, queue: &str, body: &'static str) {
    channel
        .basic_publish(
            "",
            queue,
            PublishOptions::default(),
            BasicProperties::default(),
            body,
        )
        .await
        .unwrap();
}

// ---- scenarios shared by every executor --------------------------------

async fn publish_consume_ack() {
    let connection = connect().await;
    let channel = connection.open_channel().await.unwrap();
    let queue = exclusive_queue(&channel).await;
    channel.basic_qos(10, false).await.unwrap();
    let properties =
        BasicProperties::default().with_content_type(ShortString::from_static("text/plain"));
    for body in ["one", "two", "three"] {
        channel
            .basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                properties.clone(),
                body,
            )
            .await
            .unwrap();
    }
    let mut consumer = channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let delivery = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(delivery.properties.content_type().unwrap(), "text/plain");
        bodies.push(String::from_utf8(delivery.body.to_vec()).unwrap());
        channel.basic_ack(delivery.delivery_tag, false).unwrap();
    }
    assert_eq!(bodies, ["one", "two", "three"]);
    consumer.cancel().await.unwrap();
    assert!(
        consumer.next().await.is_none(),
        "a cancelled consumer's stream ends"
    );
    connection.close().await.unwrap();
}

async fn confirms_and_returns() {
    let connection = connect().await;
    let channel = connection.open_channel().await.unwrap();
    let queue = exclusive_queue(&channel).await;
    channel.confirm_select().await.unwrap();
    let mandatory = PublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let routed = channel
        .basic_publish_confirmed("", &queue, mandatory, BasicProperties::default(), "kept")
        .await
        .unwrap();
    let lost = channel
        .basic_publish_confirmed(
            "",
            &unique("nowhere"),
            mandatory,
            BasicProperties::default(),
            "lost",
        )
        .await
        .unwrap();
    assert_eq!(routed.await.unwrap(), Confirmation::Ack);
    match lost.await.unwrap() {
        Confirmation::Returned(message) => {
            assert_eq!(message.reply_code, 312);
            assert_eq!(&message.body[..], b"lost");
        }
        other => panic!("an unroutable mandatory publish gave {other:?}"),
    }
    for _ in 0..100 {
        publish(&channel, &queue, "more").await;
    }
    assert!(channel.wait_for_confirms().await.unwrap());
    connection.close().await.unwrap();
}

async fn a_channel_error_closes_only_its_channel() {
    let connection = connect().await;
    let doomed = connection.open_channel().await.unwrap();
    let other = connection.open_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match doomed
        .queue_declare(&unique("missing"), passive, FieldTable::new())
        .await
    {
        Err(Error::ChannelClosed { code: 404, .. }) => {}
        other => panic!("a passive declare of a missing queue gave {other:?}"),
    }
    assert!(matches!(
        doomed.basic_qos(1, false).await,
        Err(Error::ChannelClosed { code: 404, .. })
    ));
    let queue = exclusive_queue(&other).await;
    publish(&other, &queue, "fine").await;
    let got = other.basic_get(&queue, true).await.unwrap();
    assert_eq!(&got.expect("a message").0.body[..], b"fine");
    connection.close().await.unwrap();
}

async fn get_and_transactions() {
    let connection = connect().await;
    let channel = connection.open_channel().await.unwrap();
    let queue = exclusive_queue(&channel).await;
    assert!(channel.basic_get(&queue, true).await.unwrap().is_none());
    channel.tx_select().await.unwrap();
    publish(&channel, &queue, "rolled back").await;
    channel.tx_rollback().await.unwrap();
    publish(&channel, &queue, "committed").await;
    channel.tx_commit().await.unwrap();
    let (delivery, left) = channel
        .basic_get(&queue, true)
        .await
        .unwrap()
        .expect("one message");
    assert_eq!(&delivery.body[..], b"committed");
    assert_eq!(left, 0);
    connection.close().await.unwrap();
}

/// A consumer set streams deliveries of consumers on three channels, each
/// with its member's index; dropping it cancels them all.
async fn a_consumer_set_streams_from_several_channels() {
    let connection = connect().await;
    let mut channels = Vec::new();
    let mut queues = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let channel = connection.open_channel().await.unwrap();
        channel.basic_qos(10, false).await.unwrap();
        let queue = exclusive_queue(&channel).await;
        consumers.push(
            channel
                .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
                .await
                .unwrap(),
        );
        channels.push(channel);
        queues.push(queue);
    }
    let mut set = ConsumerSet::new(consumers);
    for (channel, queue) in channels.iter().zip(&queues) {
        for body in ["one", "two", "three"] {
            publish(channel, queue, body).await;
        }
    }
    let mut per_member = [0; 3];
    for _ in 0..9 {
        let (index, delivery) = set.next().await.expect("a delivery").unwrap();
        per_member[index] += 1;
        channels[index]
            .basic_ack(delivery.delivery_tag, false)
            .unwrap();
    }
    assert_eq!(per_member, [3, 3, 3]);
    drop(set);
    // Dropped, so cancelled: a message published now stays in its queue.
    publish(&channels[1], &queues[1], "after").await;
    let (left, _) = channels[1]
        .basic_get(&queues[1], true)
        .await
        .unwrap()
        .expect("the message stayed in the queue");
    assert_eq!(&left.body[..], b"after");
    connection.close().await.unwrap();
}

async fn all_scenarios() {
    publish_consume_ack().await;
    a_consumer_set_streams_from_several_channels().await;
    confirms_and_returns().await;
    a_channel_error_closes_only_its_channel().await;
    get_and_transactions().await;
}

// With warren's `tokio` feature on (the workspace's build turns it on), a
// runtime with its I/O driver watches the connection and the awaiting tasks
// drive it; one without falls back to the reactor thread.

#[test]
fn the_scenarios_pass_under_tokio_multi_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(all_scenarios());
}

#[test]
fn the_scenarios_pass_under_tokio_current_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(all_scenarios());
}

#[test]
fn the_scenarios_pass_under_a_tokio_runtime_without_io() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        publish_consume_ack().await;
        a_channel_error_closes_only_its_channel().await;
    });
}

#[test]
fn the_scenarios_pass_under_smol() {
    smol::block_on(async {
        confirms_and_returns().await;
        a_consumer_set_streams_from_several_channels().await;
        get_and_transactions().await;
    });
}

#[test]
fn the_scenarios_pass_under_futures_executor() {
    futures::executor::block_on(async {
        publish_consume_ack().await;
        confirms_and_returns().await;
    });
}

// ---- cancellation -----------------------------------------------------

#[test]
fn a_dropped_consume_stream_cancels_its_consumer_and_requeues_what_it_held() {
    futures::executor::block_on(async {
        let connection = connect().await;
        let channel = connection.open_channel().await.unwrap();
        let queue = exclusive_queue(&channel).await;
        for _ in 0..20 {
            publish(&channel, &queue, "m").await;
        }
        channel.basic_qos(20, false).await.unwrap();
        let mut consumer = channel
            .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
            .await
            .unwrap();
        // Take one, acknowledge it, and let the rest sit in the buffer.
        let first = consumer.next().await.unwrap().unwrap();
        channel.basic_ack(first.delivery_tag, false).unwrap();
        let tag = consumer.tag().to_string();
        drop(consumer);
        // The consumer is gone: cancelling it again is a no-op for the broker,
        // and the 19 unacknowledged messages are back in the queue.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let ok = channel
                .queue_declare(&queue, passive, FieldTable::new())
                .await
                .unwrap();
            if ok.message_count == 19 && ok.consumer_count == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after dropping consumer {tag}: {} ready, {} consumers",
                ok.message_count,
                ok.consumer_count
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let (redelivered, _) = channel.basic_get(&queue, true).await.unwrap().unwrap();
        assert!(redelivered.redelivered);
        connection.close().await.unwrap();
    });
}

#[test]
fn a_dropped_rpc_future_leaves_the_channel_usable() {
    futures::executor::block_on(async {
        let connection = connect().await;
        let channel = connection.open_channel().await.unwrap();
        let queue = unique("dropped-declare");
        // Made and dropped without being awaited: the declare still happens.
        drop(channel.queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::new()));
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let ok = channel
            .queue_declare(&queue, passive, FieldTable::new())
            .await
            .unwrap();
        assert_eq!(ok.queue, queue.as_str());
        // A future dropped after a poll is just as harmless.
        let mut pending = Box::pin(channel.queue_purge(&queue));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = std::future::Future::poll(pending.as_mut(), &mut cx);
        drop(pending);
        assert_eq!(
            channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await
                .unwrap(),
            0
        );
        connection.close().await.unwrap();
    });
}

// ---- concurrency ------------------------------------------------------

#[test]
fn ten_thousand_tasks_publish_with_confirms_on_a_hundred_channels() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = Arc::new(connect().await);
        let setup = connection.open_channel().await.unwrap();
        let queue = exclusive_queue(&setup).await;
        let mut channels = Vec::new();
        for _ in 0..100 {
            let channel = connection.open_channel().await.unwrap();
            channel.confirm_select().await.unwrap();
            channels.push(Arc::new(channel));
        }
        let mut tasks = Vec::new();
        for i in 0..10_000usize {
            let channel = channels[i % channels.len()].clone();
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let confirm = channel
                    .basic_publish_confirmed(
                        "",
                        &queue,
                        PublishOptions::default(),
                        BasicProperties::default(),
                        "x",
                    )
                    .await?;
                confirm.await
            }));
        }
        let mut acks = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Confirmation::Ack) => acks += 1,
                other => panic!("a publish ended with {other:?}"),
            }
        }
        assert_eq!(acks, 10_000);
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let ok = setup
            .queue_declare(&queue, passive, FieldTable::new())
            .await
            .unwrap();
        assert_eq!(ok.message_count, 10_000);
        connection.close().await.unwrap();
    });
}
