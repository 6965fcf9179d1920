//! The blocking API: every call waits for its answer on the calling thread.
//!
//! Each type wraps its [`crate::nonblocking`] counterpart and waits on its
//! future (`blocking/wait.rs`); no protocol logic lives here. While it
//! waits, the calling thread drives the connection's I/O itself if no other
//! thread does (leader/follower: a consumer whose buffer ran dry reads the
//! socket, so its deliveries wake it directly), and otherwise parks until
//! the driving thread hands it its result. The connection's reactor thread
//! drives whenever no caller does.
//!
//! [`Connection`], [`Channel`], [`Consumer`] and [`ConsumerSet`] are
//! `Send + Sync`: share them
//! across threads by reference or in an `Arc`. Calls on one channel are
//! answered in the order they were made; calls on different channels run
//! in parallel.
//!
//! ```no_run
//! use warren::blocking::Connection;
//! use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
//! use warren::protocol::{BasicProperties, FieldTable};
//!
//! let connection = Connection::open("amqp://guest:guest@localhost:5672/%2f")?;
//! let channel = connection.open_channel()?;
//! channel.queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new())?;
//! channel.basic_publish("", "hello", PublishOptions::default(), BasicProperties::default(), "hi")?;
//! let consumer = channel.basic_consume("hello", "", ConsumeOptions::default(), FieldTable::new())?;
//! for delivery in consumer.into_iter().take(1) {
//!     let delivery = delivery?;
//!     println!("{:?}", delivery.body);
//!     channel.basic_ack(delivery.delivery_tag, false)?;
//! }
//! connection.close()?;
//! # Ok::<(), warren::Error>(())
//! ```

mod wait;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use self::wait::block_on;
use crate::error::Error;
use crate::nonblocking;
pub use crate::nonblocking::ConnectionEvent;
use crate::options::*;
use crate::protocol::{BasicProperties, FieldTable, QueueDeclareOk};
use crate::reactor::handle::Shared;
use crate::session::{Confirmation, Delivery, ReturnedMessage};
use crate::uri::ConnectionConfig;

/// What a blocking call that outlived `operation_timeout` reports.
const OPERATION: &str = "blocking call (operation_timeout)";

/// Waits for `future` with no time limit, driving `connection` meanwhile
/// when given.
fn wait<T>(
    future: impl Future<Output = Result<T, Error>>,
    connection: Option<&Shared>,
) -> Result<T, Error> {
    block_on(future, None, "", connection)
}

/// An open AMQP connection: one TCP socket, one reactor thread, any number
/// of channels. Closed on [`Connection::close`] or when dropped.
pub struct Connection {
    inner: nonblocking::Connection,
    /// `ConnectionConfig::operation_timeout`, for every blocking call.
    timeout: Option<Duration>,
}

impl Connection {
    /// Connects to the broker at `uri` (`amqp://user:pass@host:port/vhost?heartbeat=..`).
    pub fn open(uri: &str) -> Result<Connection, Error> {
        Self::open_with(ConnectionConfig::from_uri(uri)?)
    }

    /// Connects with explicit settings.
    pub fn open_with(config: ConnectionConfig) -> Result<Connection, Error> {
        let timeout = config.operation_timeout;
        let inner = wait(nonblocking::Connection::open_with(config), None)?;
        Ok(Connection { inner, timeout })
    }

    /// Opens a channel on the lowest free channel number.
    pub fn open_channel(&self) -> Result<Channel, Error> {
        let inner = block_on(
            self.inner.open_channel(),
            self.timeout,
            OPERATION,
            Some(self.inner.shared()),
        )?;
        Ok(Channel {
            inner,
            timeout: self.timeout,
        })
    }

    /// Closes the connection: sends connection.close, waits for close-ok (at
    /// most 5 s), then stops the reactor thread.
    pub fn close(&self) -> Result<(), Error> {
        let result = wait(self.inner.close(), Some(self.inner.shared()));
        self.inner.join();
        result
    }

    /// The next connection event (blocked / unblocked, recovery), if one came.
    pub fn try_next_event(&self) -> Option<ConnectionEvent> {
        self.inner.try_next_event()
    }

    /// Waits up to `timeout` for the next connection event; `Ok(None)` once
    /// the connection is closed and every event was taken, and
    /// [`Error::Timeout`] if none came in time.
    pub fn next_event_timeout(&self, timeout: Duration) -> Result<Option<ConnectionEvent>, Error> {
        let next = async { Ok(self.inner.next_event().await) };
        block_on(
            next,
            Some(timeout),
            "waiting for a connection event",
            Some(self.inner.shared()),
        )
    }

    /// Whether the broker has blocked publishing (a resource alarm).
    pub fn is_blocked(&self) -> bool {
        self.inner.is_blocked()
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<Error> {
        self.inner.close_reason()
    }

    /// Sends connection.update-secret (a fresh token for OAuth 2 users).
    pub fn update_secret(&self, new_secret: &str, reason: &str) -> Result<(), Error> {
        block_on(
            self.inner.update_secret(new_secret, reason),
            self.timeout,
            OPERATION,
            Some(self.inner.shared()),
        )
    }

    /// The broker's connection.start properties (product, version, capabilities...).
    pub fn server_properties(&self) -> &FieldTable {
        self.inner.server_properties()
    }

    /// The negotiated channel_max.
    pub fn channel_max(&self) -> u16 {
        self.inner.channel_max()
    }

    /// The negotiated frame_max.
    pub fn frame_max(&self) -> u32 {
        self.inner.frame_max()
    }

    /// The negotiated heartbeat interval in seconds (0: none).
    pub fn heartbeat(&self) -> u16 {
        self.inner.heartbeat()
    }
}

impl Drop for Connection {
    /// Closes the connection and waits for the reactor thread to end.
    fn drop(&mut self) {
        if self.inner.close_reason().is_none() {
            let _ = self.close();
        }
        self.inner.join();
    }
}

/// A channel: where exchanges, queues, publishes and consumers live.
/// Closed on [`Channel::close`] or when dropped.
pub struct Channel {
    inner: nonblocking::Channel,
    timeout: Option<Duration>,
}

/// Waits for one publish's confirm (see [`Channel::basic_publish_confirmed`]).
#[must_use = "a confirm handle does nothing unless waited on"]
pub struct PublishConfirm {
    /// `None` once the confirm has been taken.
    call: Option<nonblocking::Call<Confirmation>>,
    timeout: Option<Duration>,
    /// The connection, which the waiting thread may drive.
    shared: Arc<Shared>,
}

impl PublishConfirm {
    /// Blocks until the broker confirms the message (at most the
    /// connection's `operation_timeout`, if it has one).
    pub fn wait(mut self) -> Result<Confirmation, Error> {
        self.wait_for(self.timeout)
    }

    /// Blocks at most `timeout` for the confirm. On `Error::Timeout` the
    /// handle can be waited on again.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Confirmation, Error> {
        self.wait_for(Some(timeout))
    }

    /// The confirm if it has come, without waiting.
    pub fn try_wait(&mut self) -> Option<Result<Confirmation, Error>> {
        match self.wait_for(Some(Duration::ZERO)) {
            Err(Error::Timeout { .. }) => None,
            other => Some(other),
        }
    }

    fn wait_for(&mut self, timeout: Option<Duration>) -> Result<Confirmation, Error> {
        let Some(call) = self.call.as_mut() else {
            return Err(Error::InvalidArgument(
                "this confirm was already taken".into(),
            ));
        };
        let result = block_on(call, timeout, "publisher confirm", Some(&self.shared));
        if !matches!(result, Err(Error::Timeout { .. })) {
            self.call = None;
        }
        result
    }
}

impl Channel {
    /// Waits for `future`, at most the connection's `operation_timeout`.
    fn wait<T>(&self, future: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        block_on(future, self.timeout, OPERATION, Some(self.inner.shared()))
    }

    /// The channel number.
    pub fn id(&self) -> u16 {
        self.inner.id()
    }

    /// Declares an exchange (exchange.declare).
    pub fn exchange_declare(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.wait(
            self.inner
                .exchange_declare(exchange, kind, options, arguments),
        )
    }

    /// Deletes an exchange (exchange.delete).
    pub fn exchange_delete(
        &self,
        exchange: &str,
        options: ExchangeDeleteOptions,
    ) -> Result<(), Error> {
        self.wait(self.inner.exchange_delete(exchange, options))
    }

    /// Routes messages from `source` to `destination` exchange (exchange.bind,
    /// a RabbitMQ extension).
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.wait(
            self.inner
                .exchange_bind(destination, source, key, arguments),
        )
    }

    /// Removes an exchange-to-exchange binding (exchange.unbind).
    pub fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.wait(
            self.inner
                .exchange_unbind(destination, source, key, arguments),
        )
    }

    /// Declares a queue (queue.declare); an empty name asks the broker to
    /// name it, and the answer carries the name.
    pub fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<QueueDeclareOk, Error> {
        self.wait(self.inner.queue_declare(queue, options, arguments))
    }

    /// Binds a queue to an exchange (queue.bind).
    pub fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.wait(self.inner.queue_bind(queue, exchange, key, arguments))
    }

    /// Removes a queue binding (queue.unbind).
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.wait(self.inner.queue_unbind(queue, exchange, key, arguments))
    }

    /// Removes every ready message from a queue; returns how many (queue.purge).
    pub fn queue_purge(&self, queue: &str) -> Result<u32, Error> {
        self.wait(self.inner.queue_purge(queue))
    }

    /// Deletes a queue; returns how many messages it held (queue.delete).
    pub fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32, Error> {
        self.wait(self.inner.queue_delete(queue, options))
    }

    /// Limits unacknowledged deliveries: per consumer, or shared by the
    /// channel when `global` (RabbitMQ's reading of basic.qos).
    pub fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<(), Error> {
        self.wait(self.inner.basic_qos(prefetch_count, global))
    }

    /// Publishes a message (basic.publish). Returns once the message is
    /// queued for the socket; waits first while the write buffer is past its
    /// high-water mark or the broker has blocked the connection.
    pub fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: BasicProperties,
        body: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.wait(
            self.inner
                .basic_publish(exchange, routing_key, options, properties, body),
        )
    }

    /// Like [`Channel::basic_publish`], but gives up with `Error::Timeout`
    /// if the broker keeps the connection blocked (or the socket full) past
    /// `timeout`; nothing is sent then.
    pub fn basic_publish_timeout(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: BasicProperties,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let future = self
            .inner
            .basic_publish(exchange, routing_key, options, properties, body);
        block_on(
            future,
            Some(timeout),
            "basic.publish",
            Some(self.inner.shared()),
        )
    }

    /// Publishes a message on a channel in confirm mode and returns a handle
    /// that waits for its confirm.
    pub fn basic_publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: BasicProperties,
        body: impl Into<Bytes>,
    ) -> Result<PublishConfirm, Error> {
        let call = self.wait(self.inner.basic_publish_confirmed(
            exchange,
            routing_key,
            options,
            properties,
            body,
        ))?;
        Ok(PublishConfirm {
            call: Some(call),
            timeout: self.timeout,
            shared: self.inner.shared().clone(),
        })
    }

    /// Starts a consumer on `queue` (basic.consume); an empty `consumer_tag`
    /// lets the broker choose one.
    pub fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer, Error> {
        let inner = self.wait(
            self.inner
                .basic_consume(queue, consumer_tag, options, arguments),
        )?;
        Ok(Consumer { inner })
    }

    /// Consumes from several queues into one [`Consumer`], which one thread
    /// can drain: see [`nonblocking::Channel::basic_consume_many`].
    pub fn basic_consume_many(
        &self,
        queues: &[&str],
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer, Error> {
        let inner = self.inner.basic_consume_many(queues, options, arguments)?;
        Ok(Consumer { inner })
    }

    /// Cancels a consumer by tag (basic.cancel).
    pub fn basic_cancel(&self, consumer_tag: &str) -> Result<(), Error> {
        self.wait(self.inner.basic_cancel(consumer_tag))
    }

    /// Fetches one message, or `None` when the queue is empty (basic.get).
    /// Returns the message and the count left in the queue.
    pub fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<(Delivery, u32)>, Error> {
        self.wait(self.inner.basic_get(queue, no_ack))
    }

    /// Acknowledges a delivery, or with `multiple` every one up to it.
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        self.inner.basic_ack(delivery_tag, multiple)
    }

    /// Opt-in: acks made in delivery order go out coalesced, one
    /// `multiple` ack per reactor turn for a run of them, instead of one
    /// frame each. What the application sees is unchanged.
    pub fn set_ack_coalescing(&self, enabled: bool) {
        self.inner.set_ack_coalescing(enabled)
    }

    /// Rejects one delivery or, with `multiple`, every one up to it
    /// (basic.nack), requeueing them or not.
    pub fn basic_nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), Error> {
        self.inner.basic_nack(delivery_tag, multiple, requeue)
    }

    /// Rejects one delivery (basic.reject).
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.inner.basic_reject(delivery_tag, requeue)
    }

    /// Redelivers every unacknowledged message of the channel (basic.recover).
    pub fn basic_recover(&self, requeue: bool) -> Result<(), Error> {
        self.wait(self.inner.basic_recover(requeue))
    }

    /// Puts the channel in confirm mode (confirm.select, a RabbitMQ extension).
    pub fn confirm_select(&self) -> Result<(), Error> {
        self.wait(self.inner.confirm_select())
    }

    /// Waits until every message published so far on the channel is
    /// confirmed. `Ok(true)` if all were acked, `Ok(false)` if any was nacked.
    pub fn wait_for_confirms(&self) -> Result<bool, Error> {
        self.wait(self.inner.wait_for_confirms())
    }

    /// The next mandatory message the broker returned, if any.
    pub fn try_next_return(&self) -> Option<ReturnedMessage> {
        self.inner.try_next_return()
    }

    /// Puts the channel in transaction mode (tx.select).
    pub fn tx_select(&self) -> Result<(), Error> {
        self.wait(self.inner.tx_select())
    }

    /// Commits the current transaction (tx.commit).
    pub fn tx_commit(&self) -> Result<(), Error> {
        self.wait(self.inner.tx_commit())
    }

    /// Abandons the current transaction (tx.rollback).
    pub fn tx_rollback(&self) -> Result<(), Error> {
        self.wait(self.inner.tx_rollback())
    }

    /// Asks the broker to pause (`false`) or resume deliveries (channel.flow).
    /// RabbitMQ refuses `false` with 540 NOT_IMPLEMENTED; use basic_qos.
    pub fn channel_flow(&self, active: bool) -> Result<bool, Error> {
        self.wait(self.inner.channel_flow(active))
    }

    /// Whether the broker paused publishing on this channel (channel.flow).
    pub fn is_flow_paused(&self) -> bool {
        self.inner.is_flow_paused()
    }

    /// Why the channel closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<Error> {
        self.inner.close_reason()
    }

    /// Closes the channel (channel.close) and waits for close-ok.
    pub fn close(&self) -> Result<(), Error> {
        self.wait(self.inner.close())
    }
}

/// The deliveries of one consumer, in order. Iterating blocks for the next
/// one; the iterator ends when the consumer is cancelled, and yields one
/// `Err` first if it ended for another reason (its channel or connection
/// closed, or the broker cancelled it). Dropping it cancels the consumer and
/// requeues what it buffered.
pub struct Consumer {
    inner: nonblocking::Consumer,
}

impl Consumer {
    /// The consumer tag (the first one, for a consumer of several queues).
    pub fn tag(&self) -> &str {
        self.inner.tag()
    }

    /// Every consumer tag, in the order the queues were given.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.inner.tags()
    }

    /// The next delivery, waiting as long as it takes. `Ok(None)` once the
    /// consumer has ended normally.
    pub fn recv(&self) -> Result<Option<Delivery>, Error> {
        wait(self.inner.recv(), Some(self.inner.shared()))
    }

    /// The next delivery, waiting at most `timeout`. `Ok(None)` on timeout
    /// or once the consumer has ended normally.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        let connection = Some(&**self.inner.shared());
        match block_on(self.inner.recv(), Some(timeout), "recv", connection) {
            Err(Error::Timeout {
                operation: "recv", ..
            }) => Ok(None),
            other => other,
        }
    }

    /// Cancels the consumer (basic.cancel) and waits for cancel-ok. Messages
    /// already buffered can still be received afterwards.
    pub fn cancel(&self) -> Result<(), Error> {
        wait(self.inner.cancel(), Some(self.inner.shared()))
    }

    /// Whether the consumer has ended and everything it buffered was taken:
    /// tells a timeout of [`Consumer::recv_timeout`] from the end.
    pub fn has_ended(&self) -> bool {
        self.inner.has_ended()
    }
}

impl Iterator for Consumer {
    type Item = Result<Delivery, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.recv().transpose()
    }
}

/// Several consumers drained by one thread, fairly: each takes its turn to
/// hand out one delivery, so a queue with a backlog cannot starve a quiet
/// one. Deliveries come with the index of the consumer they came from,
/// which tells the channel to acknowledge them on. See
/// [`nonblocking::ConsumerSet`].
///
/// The consumers may be on different channels: one channel per queue lets
/// the broker serve the queues in parallel, where one channel's consumers
/// ([`Channel::basic_consume_many`]) are served one after another. When
/// they are all on one connection, a waiting `recv` drives that
/// connection's I/O as [`Consumer::recv`] does.
///
/// ```no_run
/// use warren::blocking::{Connection, ConsumerSet};
/// use warren::options::ConsumeOptions;
/// use warren::protocol::FieldTable;
///
/// let connection = Connection::open("amqp://guest:guest@localhost:5672/%2f")?;
/// let mut channels = Vec::new();
/// let mut consumers = Vec::new();
/// for queue in ["orders", "refunds", "audits"] {
///     let channel = connection.open_channel()?;
///     channel.basic_qos(100, false)?;
///     consumers.push(channel.basic_consume(queue, "", ConsumeOptions::default(), FieldTable::new())?);
///     channels.push(channel);
/// }
/// let set = ConsumerSet::new(consumers);
/// while let Some((index, delivery)) = set.recv()? {
///     println!("{:?} from queue {index}", delivery.body);
///     channels[index].basic_ack(delivery.delivery_tag, false)?;
/// }
/// # Ok::<(), warren::Error>(())
/// ```
pub struct ConsumerSet {
    members: Vec<Consumer>,
    rotation: nonblocking::Rotation,
    /// The members' connection, when they share one: a waiting `recv`
    /// drives it.
    connection: Option<Arc<Shared>>,
}

impl ConsumerSet {
    /// Starts one consumer per `(channel, queue)` pair and drains them as
    /// one, member `i` consuming `queues[i]`: the consumes are sent at once,
    /// not waited for one by one. See [`nonblocking::ConsumerSet::consume`].
    pub fn consume(
        queues: &[(&Channel, &str)],
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<ConsumerSet, Error> {
        let inner: Vec<(&nonblocking::Channel, &str)> = queues
            .iter()
            .map(|(channel, queue)| (&channel.inner, *queue))
            .collect();
        let consumers = nonblocking::consume_each(&inner, options, arguments)?;
        Ok(ConsumerSet::new(
            consumers
                .into_iter()
                .map(|inner| Consumer { inner })
                .collect(),
        ))
    }

    /// Drains `consumers` as one; their indexes here are their places in
    /// the `Vec`.
    pub fn new(consumers: Vec<Consumer>) -> ConsumerSet {
        let rotation = nonblocking::Rotation::new(consumers.iter().map(|c| &c.inner));
        let mut shared = consumers.iter().map(|c| c.inner.shared());
        let first = shared.next().cloned();
        let connection = first.filter(|first| shared.all(|other| Arc::ptr_eq(first, other)));
        ConsumerSet {
            members: consumers,
            rotation,
            connection,
        }
    }

    /// The next delivery and the index of its consumer, waiting as long as
    /// it takes. `Ok(None)` once every member has ended; a member that ended
    /// with an error returns that error once.
    pub fn recv(&self) -> Result<Option<(usize, Delivery)>, Error> {
        wait(self.next_delivery(), self.connection.as_deref())
    }

    /// The next delivery and the index of its consumer, waiting at most
    /// `timeout`. `Ok(None)` on timeout or once every member has ended.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<(usize, Delivery)>, Error> {
        match block_on(
            self.next_delivery(),
            Some(timeout),
            "recv",
            self.connection.as_deref(),
        ) {
            Err(Error::Timeout {
                operation: "recv", ..
            }) => Ok(None),
            other => other,
        }
    }

    fn next_delivery(&self) -> impl Future<Output = Result<Option<(usize, Delivery)>, Error>> + '_ {
        std::future::poll_fn(|cx| {
            self.rotation
                .poll_recv(cx, |index| &self.members[index].inner)
        })
    }

    /// The members, in the order given.
    pub fn consumers(&self) -> &[Consumer] {
        &self.members
    }

    /// Whether every member has ended: tells a timeout of
    /// [`ConsumerSet::recv_timeout`] from the end.
    pub fn has_ended(&self) -> bool {
        self.rotation.has_ended()
    }
}

impl Iterator for ConsumerSet {
    type Item = Result<(usize, Delivery), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.recv().transpose()
    }
}
