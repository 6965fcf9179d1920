//! Options of the channel operations, shared by the blocking and async APIs.
//!
//! Each struct holds the flags of one AMQP method; `Default` gives the
//! spec's defaults (all off), so callers set only what they need:
//! `QueueDeclareOptions { durable: true, ..Default::default() }`.

/// Flags of exchange.declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists (404 if not); create nothing.
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Delete when the last binding from it is removed.
    pub auto_delete: bool,
    /// Not publishable by clients: reachable only through exchange bindings.
    pub internal: bool,
    /// Do not wait for declare-ok (errors still close the channel).
    pub no_wait: bool,
}

/// Flags of exchange.delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeleteOptions {
    /// Delete only if the exchange has no bindings (406 otherwise).
    pub if_unused: bool,
    /// Do not wait for delete-ok.
    pub no_wait: bool,
}

/// Flags of queue.declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists (404 if not); create nothing.
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Used only by this connection, and deleted when it closes.
    pub exclusive: bool,
    /// Delete when its last consumer is cancelled.
    pub auto_delete: bool,
    /// Do not wait for declare-ok (the queue must then be named).
    pub no_wait: bool,
}

/// Flags of queue.delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Delete only if the queue has no consumers.
    pub if_unused: bool,
    /// Delete only if the queue is empty.
    pub if_empty: bool,
    /// Do not wait for delete-ok.
    pub no_wait: bool,
}

/// Flags of basic.consume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Do not receive messages published on this connection.
    pub no_local: bool,
    /// The broker considers messages acknowledged once sent ("auto-ack").
    /// Nothing then bounds the consumer's buffer: prefer acknowledgements
    /// with a prefetch (basic_qos) for anything that may be slow.
    pub no_ack: bool,
    /// Be the queue's only consumer.
    pub exclusive: bool,
    /// Do not wait for consume-ok (the consumer tag must then be given).
    pub no_wait: bool,
}

/// Flags of basic.publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message (basic.return) if no queue receives it.
    pub mandatory: bool,
    /// Return the message if no consumer can take it now. RabbitMQ does not
    /// support it and closes the connection with 540 NOT_IMPLEMENTED.
    pub immediate: bool,
}

/// The built-in exchange types, plus any a plugin adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern (`*` one word, `#` zero or more).
    Topic,
    /// Routes by header values.
    Headers,
    /// Another type, such as `x-consistent-hash`.
    Custom(String),
}

impl ExchangeKind {
    /// The type's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Custom(name) => name,
        }
    }
}
