//! Fair consumption from many queues with one thread: a `ConsumerSet` of
//! one consumer per queue, each on its own channel, hands out their
//! deliveries in turn, so a busy queue cannot starve a quiet one. (One
//! channel's `basic_consume_many` does the same on one channel, where the
//! broker serves the queues one after another.)
//!
//! Run with a RabbitMQ at 127.0.0.1:5672: `cargo run --example many_queues`.

use std::time::Duration;

use warren::blocking::{Channel, Connection, ConsumerSet};
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{BasicProperties, FieldTable};

fn main() -> Result<(), warren::Error> {
    let connection = Connection::open("amqp://guest:guest@127.0.0.1:5672/%2f")?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let mut channels = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..4 {
        let channel = connection.open_channel()?;
        // At most 100 unacknowledged deliveries per queue: what the
        // application has not taken yet stays bounded.
        channel.basic_qos(100, false)?;
        let ok = channel.queue_declare("", exclusive, FieldTable::new())?;
        queues.push(ok.queue.to_string());
        channels.push(channel);
    }
    // A backlog of 1000 in the first queue, 10 in each of the others.
    for (index, queue) in queues.iter().enumerate() {
        let count = if index == 0 { 1000 } else { 10 };
        for n in 0..count {
            let body = format!("{queue} #{n}");
            channels[0].basic_publish(
                "",
                queue,
                PublishOptions::default(),
                BasicProperties::default(),
                body,
            )?;
        }
    }

    let pairs: Vec<(&Channel, &str)> = channels
        .iter()
        .zip(&queues)
        .map(|(channel, queue)| (channel, queue.as_str()))
        .collect();
    let set = ConsumerSet::consume(&pairs, ConsumeOptions::default(), FieldTable::new())?;
    let mut first_forty = Vec::new();
    let mut received = 0;
    while let Some((index, delivery)) = set.recv_timeout(Duration::from_secs(2))? {
        if first_forty.len() < 40 {
            first_forty.push(index);
        }
        // A delivery is acknowledged on its own consumer's channel.
        channels[index].basic_ack(delivery.delivery_tag, false)?;
        received += 1;
    }
    println!("received {received} messages; queues of the first 40: {first_forty:?}");
    connection.close()
}
