//! The async API: the same operations as [`crate::blocking`], as futures and
//! a `Stream` of deliveries.
//!
//! It needs no runtime: the connection's reactor thread does the I/O and
//! wakes tasks through their `Waker`s, so it works under tokio (either
//! flavour), smol, async-std or `futures::executor::block_on` alike.
//!
//! Operations are sent when called and their [`Call`] is awaited for the
//! answer, so calls made without awaiting pipeline. Dropping a `Call`, or a
//! [`Consumer`], mid-way never corrupts the channel: the answer is
//! discarded, and a dropped consumer is cancelled with its unhanded
//! deliveries requeued.
//!
//! [`Connection`], [`Channel`], [`Consumer`] and [`ConsumerSet`] are `Send + Sync`.
//!
//! ```no_run
//! # async fn example() -> Result<(), warren::Error> {
//! use warren::nonblocking::Connection;
//! use warren::options::{PublishOptions, QueueDeclareOptions};
//! use warren::protocol::{BasicProperties, FieldTable};
//!
//! let connection = Connection::open("amqp://guest:guest@localhost:5672/%2f").await?;
//! let channel = connection.open_channel().await?;
//! channel.queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new()).await?;
//! channel
//!     .basic_publish("", "hello", PublishOptions::default(), BasicProperties::default(), "hi")
//!     .await?;
//! connection.close().await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::Bytes;
use futures_core::Stream;

use crate::error::Error;
use crate::options::*;
use crate::protocol::{
    BasicAck, BasicCancel, BasicConsume, BasicNack, BasicProperties, BasicReject, FieldTable,
    Method, QueueDeclareOk, ShortString,
};
use crate::reactor::handle::{
    lock, ChannelShared, Completion, ConsumerQueue, ReadyMembers, Received, Shared,
};
pub use crate::reactor::handle::{Call, ConnectionEvent};
use crate::reactor::{self, HandshakeInfo};
use crate::session::requests::{self, Request};
use crate::session::{
    ChannelRef, Command, Confirmation, Delivery, PublishProperties, Reply, ReturnedMessage,
};
use crate::uri::ConnectionConfig;

/// An open AMQP connection: one TCP socket, one reactor thread, any number
/// of channels. Close it with [`Connection::close`]; dropping it closes it
/// too, without waiting.
pub struct Connection {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    info: HandshakeInfo,
}

impl Connection {
    /// The connection's shared state (for the blocking facade, whose
    /// waiting threads may drive the connection).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Connects to the broker at `uri` (`amqp://user:pass@host:port/vhost?heartbeat=..`).
    pub async fn open(uri: &str) -> Result<Connection, Error> {
        Self::open_with(ConnectionConfig::from_uri(uri)?).await
    }

    /// Connects with explicit settings.
    pub async fn open_with(config: ConnectionConfig) -> Result<Connection, Error> {
        for (value, what) in [(&config.vhost, "vhost"), (&config.locale, "locale")] {
            requests::short(value, what)?;
        }
        let starting = reactor::start(config)?;
        let handshake = Call::plain(starting.handshake, |_| Ok(())).await;
        if let Err(e) = handshake {
            let _ = starting.thread.join();
            return Err(e);
        }
        let info = lock(&starting.shared.info).take().ok_or_else(|| {
            Error::InvalidArgument("handshake finished without its results".into())
        })?;
        Ok(Connection {
            shared: starting.shared,
            thread: Mutex::new(Some(starting.thread)),
            info,
        })
    }

    /// Opens a channel on the lowest free channel number.
    pub async fn open_channel(&self) -> Result<Channel, Error> {
        let completion = Completion::new();
        self.shared.submit(Command::OpenChannel {
            reply: completion.clone(),
        })?;
        let id = Call::plain(completion, |reply| match reply {
            Reply::ChannelOpened(id) => Ok(id),
            other => Err(Error::InvalidArgument(format!(
                "unexpected reply to channel.open: {other:?}"
            ))),
        })
        .driven_by(&self.shared)
        .await?;
        Ok(Channel {
            channel: id,
            state: self.shared.channel(id.id),
            shared: self.shared.clone(),
            closed: AtomicBool::new(false),
        })
    }

    /// Closes the connection: sends connection.close and waits for close-ok
    /// (at most 5 s).
    pub async fn close(&self) -> Result<(), Error> {
        let completion = Completion::new();
        let sent = self.shared.submit(Command::Close {
            code: 200,
            text: ShortString::from_static("goodbye"),
            reply: completion.clone(),
        });
        let result = match sent {
            Ok(()) => {
                Call::plain(completion, |_| Ok(()))
                    .driven_by(&self.shared)
                    .await
            }
            // Already closed (by the broker, or a fault): nothing to do;
            // close_reason() tells why.
            Err(_) => Ok(()),
        };
        // The reactor thread ends right after close-ok: reap it if it has.
        let mut thread = lock(&self.thread);
        if thread.as_ref().is_some_and(JoinHandle::is_finished) {
            let _ = thread.take().map(JoinHandle::join);
        }
        drop(thread);
        match result {
            Ok(()) | Err(Error::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The next connection event (blocked / unblocked, recovery), if one came.
    pub fn try_next_event(&self) -> Option<ConnectionEvent> {
        self.shared.try_next_event()
    }

    /// Waits for the next connection event; `None` once the connection is
    /// closed and every event was taken.
    pub async fn next_event(&self) -> Option<ConnectionEvent> {
        std::future::poll_fn(|cx| self.shared.poll_event(cx)).await
    }

    /// Whether the broker has blocked publishing (a resource alarm).
    pub fn is_blocked(&self) -> bool {
        self.shared.blocked.load(Ordering::Acquire)
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.check().err()
    }

    /// Sends connection.update-secret (a fresh token for OAuth 2 users).
    pub fn update_secret(&self, new_secret: &str, reason: &str) -> Call<()> {
        match requests::update_secret(new_secret, reason) {
            Ok(request) => {
                let completion = Completion::new();
                let sent = request.method.clone();
                match self.shared.submit(Command::ConnectionRpc {
                    method: request.method,
                    reply: completion.clone(),
                }) {
                    Ok(()) => Call::rpc(completion, sent, request.parse).driven_by(&self.shared),
                    Err(e) => Call::failed(e),
                }
            }
            Err(e) => Call::failed(e),
        }
    }

    /// The broker's connection.start properties (product, version, capabilities...).
    pub fn server_properties(&self) -> &FieldTable {
        &self.info.server_properties
    }

    /// The negotiated channel_max.
    pub fn channel_max(&self) -> u16 {
        self.info.channel_max
    }

    /// The negotiated frame_max.
    pub fn frame_max(&self) -> u32 {
        self.info.frame_max
    }

    /// The negotiated heartbeat interval in seconds (0: none).
    pub fn heartbeat(&self) -> u16 {
        self.info.heartbeat
    }

    /// Waits for the reactor thread to end (after a close).
    pub(crate) fn join(&self) {
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Connection {
    /// Starts an orderly close without waiting for it.
    fn drop(&mut self) {
        if self.shared.check().is_ok() {
            let _ = self.shared.submit(Command::Close {
                code: 200,
                text: ShortString::from_static("goodbye"),
                reply: Completion::new(),
            });
        }
    }
}

/// Sends a synchronous method on `channel`; the returned call reads its answer.
fn rpc<T>(shared: &Arc<Shared>, channel: ChannelRef, request: Request<T>) -> Call<T> {
    let completion = Completion::new();
    let sent = request.method.clone();
    match shared.submit(Command::Rpc {
        channel,
        method: request.method,
        reply: completion.clone(),
    }) {
        Ok(()) => Call::rpc(completion, sent, request.parse).driven_by(shared),
        Err(e) => Call::failed(e),
    }
}

/// A channel: where exchanges, queues, publishes and consumers live. Close
/// it with [`Channel::close`]; dropping it closes it too, without waiting.
pub struct Channel {
    channel: ChannelRef,
    shared: Arc<Shared>,
    state: Arc<ChannelShared>,
    closed: AtomicBool,
}

impl Channel {
    /// The connection's shared state (for the blocking facade, whose
    /// waiting threads may drive the connection).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The channel number.
    pub fn id(&self) -> u16 {
        self.channel.id
    }

    /// Whether the channel is usable: not closed by the broker, the
    /// connection, or this handle.
    fn check(&self) -> Result<(), Error> {
        self.check_open()?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Whether neither the broker nor the connection closed the channel.
    fn check_open(&self) -> Result<(), Error> {
        self.state.check()?;
        self.shared.check()
    }

    fn call<T>(&self, request: Result<Request<T>, Error>) -> Call<T> {
        match request.and_then(|r| self.check().map(|()| r)) {
            Ok(request) => rpc(&self.shared, self.channel, request),
            Err(e) => Call::failed(e),
        }
    }

    fn send(&self, method: Method) -> Result<(), Error> {
        self.check()?;
        self.shared.submit(Command::Send {
            channel: self.channel,
            method,
        })
    }

    /// Declares an exchange (exchange.declare).
    pub fn exchange_declare(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Call<()> {
        let request = requests::exchange_declare(exchange, &kind, options, arguments);
        self.call(request)
    }

    /// Deletes an exchange (exchange.delete).
    pub fn exchange_delete(&self, exchange: &str, options: ExchangeDeleteOptions) -> Call<()> {
        self.call(requests::exchange_delete(exchange, options))
    }

    /// Routes messages from `source` to `destination` exchange (exchange.bind,
    /// a RabbitMQ extension).
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Call<()> {
        let request = requests::exchange_bind(destination, source, routing_key, arguments);
        self.call(request)
    }

    /// Removes an exchange-to-exchange binding (exchange.unbind).
    pub fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Call<()> {
        let request = requests::exchange_unbind(destination, source, routing_key, arguments);
        self.call(request)
    }

    /// Declares a queue (queue.declare); an empty name asks the broker to
    /// name it, and the answer carries the name.
    pub fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Call<QueueDeclareOk> {
        self.call(requests::queue_declare(queue, options, arguments))
    }

    /// Binds a queue to an exchange (queue.bind).
    pub fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Call<()> {
        let request = requests::queue_bind(queue, exchange, routing_key, arguments);
        self.call(request)
    }

    /// Removes a queue binding (queue.unbind).
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Call<()> {
        let request = requests::queue_unbind(queue, exchange, routing_key, arguments);
        self.call(request)
    }

    /// Removes every ready message from a queue; answers how many (queue.purge).
    pub fn queue_purge(&self, queue: &str) -> Call<u32> {
        self.call(requests::queue_purge(queue))
    }

    /// Deletes a queue; answers how many messages it held (queue.delete).
    pub fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Call<u32> {
        self.call(requests::queue_delete(queue, options))
    }

    /// Limits unacknowledged deliveries: per consumer, or shared by the
    /// channel when `global` (RabbitMQ's reading of basic.qos).
    pub fn basic_qos(&self, prefetch_count: u16, global: bool) -> Call<()> {
        self.call(Ok(requests::basic_qos(prefetch_count, 0, global)))
    }

    /// Publishes a message (basic.publish). Completes once the message is
    /// queued for the socket; waits first while the write buffer is past its
    /// high-water mark or the broker has blocked the connection.
    ///
    /// The arguments are checked and the properties encoded when this is
    /// called, so the future holds only the encoded message.
    pub fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: BasicProperties,
        body: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), Error>> + '_ {
        let message = prepare_message(exchange, routing_key, options, &properties, body.into());
        async move {
            let (method, properties, body) = message?;
            self.wait_for_room().await?;
            self.submit_publish(method, properties, body, None)
        }
    }

    /// Publishes a message on a channel in confirm mode; the returned call
    /// completes with the broker's confirm. Arguments are handled as in
    /// [`Channel::basic_publish`].
    pub fn basic_publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: BasicProperties,
        body: impl Into<Bytes>,
    ) -> impl Future<Output = Result<Call<Confirmation>, Error>> + '_ {
        let message = prepare_message(exchange, routing_key, options, &properties, body.into());
        async move {
            let (method, properties, body) = message?;
            self.wait_for_room().await?;
            let completion = Completion::new();
            self.submit_publish(method, properties, body, Some(completion.clone()))?;
            Ok(Call::plain(completion, requests::confirmation).driven_by(&self.shared))
        }
    }

    /// Ready when there is room to publish (see [`Channel::basic_publish`]).
    pub(crate) async fn wait_for_room(&self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.shared.poll_driving(cx, |cx| self.shared.poll_room(cx)))
            .await
    }

    /// Queues a publish without waiting for room.
    pub(crate) fn submit_publish(
        &self,
        method: crate::protocol::BasicPublish,
        properties: PublishProperties,
        body: Bytes,
        confirm: Option<Arc<Completion>>,
    ) -> Result<(), Error> {
        self.check()?;
        self.shared.submit(Command::Publish {
            channel: self.channel,
            method,
            properties,
            body,
            confirm,
        })
    }

    /// Starts a consumer on `queue` (basic.consume); an empty `consumer_tag`
    /// lets the broker choose one.
    pub async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer, Error> {
        let (method, parse) = requests::basic_consume(queue, consumer_tag, options, arguments)?;
        self.check()?;
        let buffer = ConsumerQueue::new(self.channel, self.state.clone(), !options.no_ack);
        let completion = Completion::new();
        let sent = Method::BasicConsume(method.clone());
        self.shared.submit(Command::Consume {
            channel: self.channel,
            method,
            consumer: buffer.clone(),
            reply: completion.clone(),
        })?;
        let tag = Call::rpc(completion, sent, parse)
            .driven_by(&self.shared)
            .await?;
        Ok(self.consumer(vec![tag], buffer))
    }

    /// Consumes from several queues into one [`Consumer`] that one task or
    /// thread drains: one basic.consume per queue, with tags warren chooses
    /// ([`Consumer::tags`] lists them in queue order; each delivery carries
    /// its own). Deliveries come in the order the broker sends them, which
    /// is delivery-tag order, so a `multiple` ack covers exactly what was
    /// received. The broker serves a channel's consumers in turn, each up to
    /// its prefetch: for fair consumption from many queues, give them a
    /// small per-consumer prefetch (`basic_qos(n, false)`).
    ///
    /// Returns once the consumes are sent, so deliveries can be taken while
    /// the rest start. A consume the broker refuses (a missing queue, 404)
    /// closes the channel, and the consumer then yields that error. The
    /// consumer ends when any of its consumes ends; cancelling or dropping
    /// it cancels them all.
    pub fn basic_consume_many(
        &self,
        queues: &[&str],
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer, Error> {
        if queues.is_empty() {
            return Err(Error::InvalidArgument(
                "basic_consume_many needs at least one queue".into(),
            ));
        }
        if options.no_wait {
            return Err(Error::InvalidArgument(
                "basic_consume_many waits for no reply already; no_wait is not for it".into(),
            ));
        }
        let group = next_consume_group();
        let mut consumes = Vec::with_capacity(queues.len());
        for (index, queue) in queues.iter().enumerate() {
            let (method, _) = requests::basic_consume(
                queue,
                &chosen_tag(group, index),
                options,
                arguments.clone(),
            )?;
            consumes.push(method);
        }
        self.check()?;
        let tags: Vec<ShortString> = consumes.iter().map(|c| c.consumer_tag.clone()).collect();
        let buffer = ConsumerQueue::new(self.channel, self.state.clone(), !options.no_ack);
        for method in consumes {
            self.send_consume(method, &buffer)?;
        }
        Ok(self.consumer(tags, buffer))
    }

    /// Starts a consumer on `queue` with the tag `tag` without waiting for
    /// consume-ok (for [`ConsumerSet::consume`]).
    fn consume_unawaited(
        &self,
        queue: &str,
        tag: &str,
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<Consumer, Error> {
        let (method, _) = requests::basic_consume(queue, tag, options, arguments)?;
        self.check()?;
        let buffer = ConsumerQueue::new(self.channel, self.state.clone(), !options.no_ack);
        let tags = vec![method.consumer_tag.clone()];
        self.send_consume(method, &buffer)?;
        Ok(self.consumer(tags, buffer))
    }

    /// The handle of a consumer on this channel with `tags`, reading `buffer`.
    fn consumer(&self, tags: Vec<ShortString>, buffer: Arc<ConsumerQueue>) -> Consumer {
        Consumer {
            tags,
            channel: self.channel,
            shared: self.shared.clone(),
            buffer,
            done: AtomicBool::new(false),
        }
    }

    /// Sends a basic.consume for `buffer` whose answer nobody awaits: a
    /// refusal closes the channel, which ends the consumer with the
    /// broker's reason.
    fn send_consume(&self, method: BasicConsume, buffer: &Arc<ConsumerQueue>) -> Result<(), Error> {
        self.shared.submit(Command::Consume {
            channel: self.channel,
            method,
            consumer: buffer.clone(),
            reply: Completion::new(),
        })
    }

    /// Cancels a consumer by tag (basic.cancel).
    pub fn basic_cancel(&self, consumer_tag: &str) -> Call<()> {
        self.call(requests::basic_cancel(consumer_tag))
    }

    /// Fetches one message, or `None` when the queue is empty (basic.get).
    /// Answers the message and the count left in the queue.
    pub async fn basic_get(
        &self,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<(Delivery, u32)>, Error> {
        let message = self.call(requests::basic_get(queue, no_ack)).await?;
        if let (Some((delivery, _)), false) = (&message, no_ack) {
            lock(&self.state.unsettled).delivered(delivery.delivery_tag);
        }
        Ok(message)
    }

    /// Acknowledges a delivery, or with `multiple` every one up to it.
    /// A tag this channel did not deliver, or already settled, is refused
    /// with [`Error::UnknownDeliveryTag`] and nothing is sent.
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        self.check()?;
        let lowest = self.state.settle(self.channel.id, delivery_tag, multiple)?;
        // Acking the lowest unsettled tag alone or with everything below it
        // is the same: as `multiple`, a run of such acks can leave as one.
        let multiple = multiple || (lowest && self.state.coalesce_acks.load(Ordering::Relaxed));
        self.send(Method::BasicAck(BasicAck {
            delivery_tag,
            multiple,
        }))
    }

    /// Opt-in: acks made in delivery order go out coalesced, one
    /// `multiple` ack per reactor turn for a run of them, instead of one
    /// frame each. What the application sees is unchanged; the broker gets
    /// fewer frames. Out-of-order acks still go out one by one.
    pub fn set_ack_coalescing(&self, enabled: bool) {
        self.state.coalesce_acks.store(enabled, Ordering::Relaxed);
    }

    /// Rejects one delivery or, with `multiple`, every one up to it
    /// (basic.nack), requeueing them or not.
    pub fn basic_nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), Error> {
        let nack = BasicNack {
            delivery_tag,
            multiple,
            requeue,
        };
        self.settle(delivery_tag, multiple, Method::BasicNack(nack))
    }

    /// Rejects one delivery (basic.reject).
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.settle(
            delivery_tag,
            false,
            Method::BasicReject(BasicReject {
                delivery_tag,
                requeue,
            }),
        )
    }

    /// Checks and settles a tag locally, then sends `method`.
    fn settle(&self, delivery_tag: u64, multiple: bool, method: Method) -> Result<(), Error> {
        self.check()?;
        self.state.settle(self.channel.id, delivery_tag, multiple)?;
        self.send(method)
    }

    /// Redelivers every unacknowledged message of the channel (basic.recover).
    /// Their old delivery tags are void from then on.
    pub fn basic_recover(&self, requeue: bool) -> Call<()> {
        self.call(Ok(requests::basic_recover(requeue)))
    }

    /// Puts the channel in confirm mode (confirm.select, a RabbitMQ extension).
    pub fn confirm_select(&self) -> Call<()> {
        self.call(Ok(requests::confirm_select()))
    }

    /// Completes when every message published so far on the channel is
    /// confirmed: `true` if all were acked, `false` if any was nacked.
    pub fn wait_for_confirms(&self) -> Call<bool> {
        if let Err(e) = self.check() {
            return Call::failed(e);
        }
        let completion = Completion::new();
        match self.shared.submit(Command::WaitForConfirms {
            channel: self.channel,
            reply: completion.clone(),
        }) {
            Ok(()) => Call::plain(completion, |r| {
                requests::confirmation(r).map(|c| c.is_ack())
            })
            .driven_by(&self.shared),
            Err(e) => Call::failed(e),
        }
    }

    /// The next mandatory message the broker returned, if any.
    pub fn try_next_return(&self) -> Option<ReturnedMessage> {
        lock(&self.state.returns).pop_front()
    }

    /// Puts the channel in transaction mode (tx.select).
    pub fn tx_select(&self) -> Call<()> {
        self.call(Ok(requests::tx_select()))
    }

    /// Commits the current transaction (tx.commit).
    pub fn tx_commit(&self) -> Call<()> {
        self.call(Ok(requests::tx_commit()))
    }

    /// Abandons the current transaction (tx.rollback).
    pub fn tx_rollback(&self) -> Call<()> {
        self.call(Ok(requests::tx_rollback()))
    }

    /// Asks the broker to pause (`false`) or resume deliveries (channel.flow).
    /// RabbitMQ refuses `false` with 540 NOT_IMPLEMENTED; use basic_qos.
    pub fn channel_flow(&self, active: bool) -> Call<bool> {
        self.call(Ok(requests::channel_flow(active)))
    }

    /// Whether the broker paused publishing on this channel (channel.flow).
    pub fn is_flow_paused(&self) -> bool {
        self.state.flow_paused.load(Ordering::Acquire)
    }

    /// Why the channel closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<Error> {
        self.check().err()
    }

    /// Closes the channel (channel.close); completes on close-ok.
    pub fn close(&self) -> Call<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Call::plain(done_now(), |_| Ok(()));
        }
        if let Err(e) = self.check_open() {
            return Call::failed(e);
        }
        let completion = Completion::new();
        match self.shared.submit(Command::CloseChannel {
            channel: self.channel,
            code: 200,
            text: ShortString::from_static("goodbye"),
            reply: completion.clone(),
        }) {
            Ok(()) => Call::plain(completion, |_| Ok(())).driven_by(&self.shared),
            Err(e) => Call::failed(e),
        }
    }
}

/// Starts one consumer per `(channel, queue)` pair with warren's tags,
/// sending the consumes without awaiting them (see [`ConsumerSet::consume`]).
pub(crate) fn consume_each(
    queues: &[(&Channel, &str)],
    options: ConsumeOptions,
    arguments: FieldTable,
) -> Result<Vec<Consumer>, Error> {
    if options.no_wait {
        return Err(Error::InvalidArgument(
            "ConsumerSet::consume waits for no reply already; no_wait is not for it".into(),
        ));
    }
    let group = next_consume_group();
    queues
        .iter()
        .enumerate()
        .map(|(index, (channel, queue))| {
            channel.consume_unawaited(queue, &chosen_tag(group, index), options, arguments.clone())
        })
        .collect()
}

/// A number no other group of warren-chosen consumer tags in this process
/// has.
fn next_consume_group() -> u64 {
    static GROUPS: AtomicU64 = AtomicU64::new(0);
    GROUPS.fetch_add(1, Ordering::Relaxed)
}

/// The consumer tag warren chooses for the `index`th consume of `group`.
fn chosen_tag(group: u64, index: usize) -> String {
    format!("warren.many.{}.{group}.{index}", std::process::id())
}

/// A publish checked and encoded on the caller's thread: its method, its
/// encoded properties and its body.
fn prepare_message(
    exchange: &str,
    routing_key: &str,
    options: PublishOptions,
    properties: &BasicProperties,
    body: Bytes,
) -> Result<(crate::protocol::BasicPublish, PublishProperties, Bytes), Error> {
    let method = requests::basic_publish(exchange, routing_key, options)?;
    Ok((method, PublishProperties::new(properties), body))
}

/// A completion that is already complete.
fn done_now() -> Arc<Completion> {
    let c = Completion::new();
    c.complete(Ok(Reply::Sent));
    c
}

impl Drop for Channel {
    /// Starts closing the channel without waiting.
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) && self.check_open().is_ok() {
            let _ = self.shared.submit(Command::CloseChannel {
                channel: self.channel,
                code: 200,
                text: ShortString::from_static("goodbye"),
                reply: Completion::new(),
            });
        }
    }
}

/// The deliveries of one consumer, as a `Stream`. It ends when the consumer
/// is cancelled, and yields one `Err` first if it ended for another reason
/// (its channel or connection closed, or the broker cancelled it).
///
/// Its buffer holds what the broker sent and the application has not taken
/// yet, bounded by the channel's prefetch (basic_qos) for acknowledged
/// consumers. Dropping it cancels the consumer and requeues that buffer.
pub struct Consumer {
    /// One tag per basic.consume (more than one for basic_consume_many).
    tags: Vec<ShortString>,
    channel: ChannelRef,
    shared: Arc<Shared>,
    buffer: Arc<ConsumerQueue>,
    done: AtomicBool,
}

impl Consumer {
    /// The connection's shared state (for the blocking facade, whose
    /// waiting threads may drive the connection).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The consumer tag (the first one, for a consumer of several queues).
    pub fn tag(&self) -> &str {
        self.tags[0].as_str().unwrap_or_default()
    }

    /// Every consumer tag, in the order the queues were given.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| t.as_str().unwrap_or_default())
    }

    /// Whether the consumer has ended and everything it buffered was taken.
    pub fn has_ended(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The next delivery; `Ok(None)` once the consumer has ended normally.
    pub async fn recv(&self) -> Result<Option<Delivery>, Error> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next delivery.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Delivery>, Error>> {
        if self.done.load(Ordering::Acquire) {
            return Poll::Ready(Ok(None));
        }
        let buffer = &self.buffer;
        let polled = self.shared.poll_driving(cx, |cx| buffer.poll_recv(cx));
        polled.map(|received| match received {
            Received::Delivery(d) => Ok(Some(d)),
            Received::Ended(reason) => {
                self.done.store(true, Ordering::Release);
                reason.map(|()| None)
            }
        })
    }

    /// Cancels the consumer (basic.cancel, for each of its tags); completes
    /// on the last cancel-ok. Messages already buffered can still be
    /// received afterwards.
    pub fn cancel(&self) -> Call<()> {
        // A channel answers in order: the last cancel-ok comes after the others.
        let mut last = None;
        for tag in &self.tags {
            let request = requests::basic_cancel(tag.as_str().unwrap_or_default());
            last = Some(match request {
                Ok(request) => rpc(&self.shared, self.channel, request),
                Err(e) => Call::failed(e),
            });
        }
        last.expect("a consumer has at least one tag")
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_recv(cx).map(Result::transpose)
    }
}

impl Drop for Consumer {
    /// Cancels the consumer and requeues what it buffered but never handed
    /// out (acknowledged consumers only: auto-ack messages are gone).
    fn drop(&mut self) {
        if self.done.load(Ordering::Acquire) || self.shared.check().is_err() {
            return;
        }
        for tag in &self.tags {
            let _ = self.shared.submit(Command::Rpc {
                channel: self.channel,
                method: Method::BasicCancel(BasicCancel {
                    consumer_tag: tag.clone(),
                    no_wait: false,
                }),
                reply: Completion::new(),
            });
        }
        let unhanded = self.buffer.abandon();
        if self.buffer.acknowledged {
            for delivery in unhanded {
                let _ =
                    lock(&self.buffer.channel_state.unsettled).settle(delivery.delivery_tag, false);
                let _ = self.shared.submit(Command::Send {
                    channel: self.channel,
                    method: Method::BasicReject(BasicReject {
                        delivery_tag: delivery.delivery_tag,
                        requeue: true,
                    }),
                });
            }
        }
    }
}

/// Several consumers drained as one, fairly: each takes its turn to hand
/// out one delivery, in the order they came to hold one, so a queue with a
/// backlog cannot starve a quiet one. Deliveries come with the index of the
/// consumer they came from, which tells the channel to acknowledge them on.
///
/// The consumers may be on different channels (one channel per queue lets
/// the broker serve the queues in parallel) and connections. Take
/// deliveries through the set; its members are there for their tags,
/// `cancel` and `has_ended`. Dropping the set drops (so cancels) them.
///
/// As a `Stream` it yields `(index, delivery)`. It ends once every member
/// has ended; a member that ended with an error yields that error once.
pub struct ConsumerSet {
    members: Vec<Consumer>,
    rotation: Rotation,
}

impl ConsumerSet {
    /// Starts one consumer per `(channel, queue)` pair and drains them as
    /// one, member `i` consuming `queues[i]`; tags are warren's, as in
    /// [`Channel::basic_consume_many`]. The consumes are sent at once, not
    /// awaited one by one: a refused one (a missing queue, 404) closes its
    /// channel, and the set yields that error. Give each channel its
    /// prefetch (`basic_qos`) first.
    pub fn consume(
        queues: &[(&Channel, &str)],
        options: ConsumeOptions,
        arguments: FieldTable,
    ) -> Result<ConsumerSet, Error> {
        consume_each(queues, options, arguments).map(ConsumerSet::new)
    }

    /// Drains `consumers` as one; their indexes here are their places in
    /// the `Vec`.
    pub fn new(consumers: Vec<Consumer>) -> ConsumerSet {
        let rotation = Rotation::new(consumers.iter());
        ConsumerSet {
            members: consumers,
            rotation,
        }
    }

    /// The next delivery and the index of its consumer; `Ok(None)` once
    /// every member has ended.
    pub async fn recv(&self) -> Result<Option<(usize, Delivery)>, Error> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next delivery and the index of its consumer.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(usize, Delivery)>, Error>> {
        self.rotation.poll_recv(cx, |index| &self.members[index])
    }

    /// The members, in the order given.
    pub fn consumers(&self) -> &[Consumer] {
        &self.members
    }

    /// Whether every member has ended.
    pub fn has_ended(&self) -> bool {
        self.rotation.has_ended()
    }
}

impl Stream for ConsumerSet {
    type Item = Result<(usize, Delivery), Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_recv(cx).map(Result::transpose)
    }
}

/// The turn-taking behind both facades' consumer sets: which member goes
/// next, and which have ended.
pub(crate) struct Rotation {
    ready: Arc<ReadyMembers>,
    /// Per member: its end was seen (and reported).
    retired: Box<[AtomicBool]>,
    /// Members not retired yet.
    live: AtomicUsize,
    /// The members' connections, each once: driven while the set waits
    /// (feature `tokio`, see `Shared::drive_async`).
    #[cfg(all(unix, feature = "tokio"))]
    connections: Vec<Arc<Shared>>,
}

impl Rotation {
    /// Makes `members` (indexed in order) take turns.
    pub(crate) fn new<'a>(members: impl ExactSizeIterator<Item = &'a Consumer>) -> Rotation {
        let ready = Arc::new(ReadyMembers::default());
        let retired: Box<[AtomicBool]> =
            (0..members.len()).map(|_| AtomicBool::new(false)).collect();
        let mut live = 0;
        #[cfg(all(unix, feature = "tokio"))]
        let mut connections: Vec<Arc<Shared>> = Vec::new();
        for (index, member) in members.enumerate() {
            #[cfg(all(unix, feature = "tokio"))]
            if !connections.iter().any(|c| Arc::ptr_eq(c, &member.shared)) {
                connections.push(member.shared.clone());
            }
            if member.done.load(Ordering::Acquire) {
                retired[index].store(true, Ordering::Relaxed);
            } else {
                member.buffer.join(&ready, index);
                live += 1;
            }
        }
        Rotation {
            ready,
            retired,
            live: AtomicUsize::new(live),
            #[cfg(all(unix, feature = "tokio"))]
            connections,
        }
    }

    /// Whether every member has ended.
    pub(crate) fn has_ended(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    /// The next delivery from the member whose turn it is; `member(i)` is
    /// member `i`.
    pub(crate) fn poll_recv<'a>(
        &self,
        cx: &mut Context<'_>,
        member: impl Fn(usize) -> &'a Consumer,
    ) -> Poll<Result<Option<(usize, Delivery)>, Error>> {
        // As `Shared::poll_driving`, over every member's connection: a
        // first look with a waker that does nothing, so the drives do not
        // wake this task for what it is about to look at again.
        #[cfg(all(unix, feature = "tokio"))]
        {
            let quiet = &mut Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(value) = self.poll_members(quiet, &member) {
                return Poll::Ready(value);
            }
            for connection in &self.connections {
                if let Some(watch) = connection.runtime_watch() {
                    connection.drive_async(watch, cx);
                }
            }
        }
        self.poll_members(cx, &member)
    }

    fn poll_members<'a>(
        &self,
        cx: &mut Context<'_>,
        member: &impl Fn(usize) -> &'a Consumer,
    ) -> Poll<Result<Option<(usize, Delivery)>, Error>> {
        loop {
            if self.has_ended() {
                return Poll::Ready(Ok(None));
            }
            let Some(index) = self.ready.pop(cx) else {
                return Poll::Pending;
            };
            if self.retired[index].load(Ordering::Acquire) {
                continue;
            }
            let consumer = member(index);
            match consumer.buffer.try_recv_member() {
                Some(Received::Delivery(delivery)) => {
                    // Last in line again: the others go first.
                    self.ready.push(index);
                    return Poll::Ready(Ok(Some((index, delivery))));
                }
                // Retired once, by whichever receiver saw the end first.
                Some(Received::Ended(reason))
                    if !self.retired[index].swap(true, Ordering::AcqRel) =>
                {
                    consumer.done.store(true, Ordering::Release);
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    reason?;
                }
                // Nothing yet: it is listed again when something comes.
                Some(Received::Ended(_)) | None => {}
            }
        }
    }
}
