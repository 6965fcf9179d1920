//! Helpers for the async facade's tests against a live RabbitMQ
//! (`tests/broker_async.rs`, `tests/broker_tokio.rs`).

use warren::nonblocking::{Channel, Connection};
use warren::options::QueueDeclareOptions;
use warren::protocol::FieldTable;

use super::broker::uri;

/// Connects to [`uri`], failing with how to start the broker if it is down.
pub async fn connect() -> Connection {
    match Connection::open(&uri()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "RabbitMQ is not reachable at {} ({e}): start it with `rabbitmq-server -detached`",
            uri()
        ),
    }
}

/// Declares a queue only this connection uses, named by the broker.
pub async fn exclusive_queue(channel: &Channel) -> String {
    let options = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let ok = channel
        .queue_declare("", options, FieldTable::new())
        .await
        .unwrap();
    ok.queue.to_string()
}
