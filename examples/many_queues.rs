//! Fair consumption from many queues with one thread: one consumer over
//! every queue (`basic_consume_many`), with a small per-consumer prefetch so
//! the broker serves the queues in turn and a busy queue cannot starve a
//! quiet one.
//!
//! Run with a RabbitMQ at 127.0.0.1:5672: `cargo run --example many_queues`.

use std::collections::HashMap;
use std::time::Duration;

use warren::blocking::Connection;
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable};

fn main() -> Result<(), warren::Error> {
    let connection = Connection::open("amqp://guest:guest@127.0.0.1:5672/%2f")?;
    let channel = connection.open_channel()?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let mut queues = Vec::new();
    for _ in 0..4 {
        let ok = channel.queue_declare("", exclusive, FieldTable::new())?;
        queues.push(ok.queue.to_string());
    }
    // A backlog of 1000 in the first queue, 10 in each of the others.
    for (index, queue) in queues.iter().enumerate() {
        let count = if index == 0 { 1000 } else { 10 };
        for n in 0..count {
            let body = format!("{queue} #{n}");
            channel.basic_publish(
                "",
                queue,
                PublishOptions::default(),
                BasicProperties::default(),
                body,
            )?;
        }
    }

    // At most 2 unacknowledged deliveries per queue: the broker sends from
    // each queue in turn.
    channel.basic_qos(2, false)?;
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    let consumer =
        channel.basic_consume_many(&names, ConsumeOptions::default(), FieldTable::new())?;
    let queue_of: HashMap<String, usize> = consumer
        .tags()
        .enumerate()
        .map(|(index, tag)| (tag.to_owned(), index))
        .collect();

    let mut first_forty = Vec::new();
    let mut received = 0;
    while let Some(delivery) = consumer.recv_timeout(Duration::from_secs(2))? {
        let tag = delivery.consumer_tag.as_str().unwrap_or_default();
        if first_forty.len() < 40 {
            first_forty.push(queue_of[tag]);
        }
        channel.basic_ack(delivery.delivery_tag, false)?;
        received += 1;
    }
    println!("received {received} messages; queues of the first 40: {first_forty:?}");
    connection.close()
}
