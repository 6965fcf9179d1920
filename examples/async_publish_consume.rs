//! Publish with confirms and consume with acknowledgements from async code,
//! here under tokio (warren itself needs no runtime: any executor works).
//! With warren's `tokio` feature, the tasks awaiting results drive the
//! connection and tokio watches it, which saves a thread wake-up per batch.
//!
//! Run with a RabbitMQ at 127.0.0.1:5672: `cargo run --example async_publish_consume`
//! (add `--features tokio` for the above).

use futures::StreamExt;
use warren::nonblocking::Connection;
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), warren::Error> {
    let connection = Connection::open("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    let channel = connection.open_channel().await?;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .await?
        .queue
        .to_string();

    // Publish ten messages; each publish returns a confirm to await.
    channel.confirm_select().await?;
    let mut confirms = Vec::new();
    for i in 0..10 {
        let body = format!("message {i}");
        let properties = BasicProperties::default();
        confirms.push(
            channel
                .basic_publish_confirmed("", &queue, PublishOptions::default(), properties, body)
                .await?,
        );
    }
    for confirm in confirms {
        assert!(confirm.await?.is_ack());
    }

    // Consume them: the consumer is a Stream of deliveries.
    channel.basic_qos(10, false).await?;
    let consumer = channel
        .basic_consume(&queue, "", ConsumeOptions::default(), FieldTable::new())
        .await?;
    let mut deliveries = consumer.take(10);
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        println!("{}", String::from_utf8_lossy(&delivery.body));
        channel.basic_ack(delivery.delivery_tag, false)?;
    }
    connection.close().await
}
