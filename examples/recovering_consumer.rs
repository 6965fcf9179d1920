//! A consumer that survives broker restarts and network faults: automatic
//! recovery reconnects, reopens the channel, restores its prefetch and the
//! server-named queue (under a new name) with its binding, and restarts the
//! consumer; the application only watches the connection's events.
//!
//! Run with a RabbitMQ at 127.0.0.1:5672: `cargo run --example
//! recovering_consumer`, then from another terminal
//! `rabbitmqctl close_all_connections "test"` (or restart the broker) and
//! watch it recover. It stops after 60 seconds.

use std::time::{Duration, Instant};

use warren::blocking::{Connection, ConnectionEvent};
use warren::options::{ConsumeOptions, QueueDeclareOptions};
use warren::protocol::FieldTable;
use warren::{ConnectionConfig, Error, RecoveryConfig};

fn main() -> Result<(), Error> {
    let config = ConnectionConfig::from_uri("amqp://guest:guest@127.0.0.1:5672/%2f")?
        .recovery(RecoveryConfig::default());
    let connection = Connection::open_with(config)?;
    let channel = connection.open_channel()?;
    channel.basic_qos(10, false)?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("", exclusive, FieldTable::new())?
        .queue;
    channel.queue_bind(
        queue.as_str().unwrap_or_default(),
        "amq.topic",
        "#",
        FieldTable::new(),
    )?;
    let consumer = channel.basic_consume(
        queue.as_str().unwrap_or_default(),
        "",
        ConsumeOptions::default(),
        FieldTable::new(),
    )?;
    println!("consuming everything published to amq.topic");

    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        while let Some(event) = connection.try_next_event() {
            match event {
                ConnectionEvent::RecoveryStarted { cause } => println!("lost: {cause}"),
                ConnectionEvent::Recovered(report) => println!("recovered: {report:?}"),
                ConnectionEvent::RecoveryFailed { error } => return Err(error),
                other => println!("{other:?}"),
            }
        }
        if let Some(delivery) = consumer.recv_timeout(Duration::from_millis(500))? {
            println!("{:?}", delivery.body);
            match channel.basic_ack(delivery.delivery_tag, false) {
                // Delivered before a recovery: the broker has requeued it
                // and will deliver it again.
                Ok(()) | Err(Error::UnknownDeliveryTag { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    connection.close()
}
