//! The blocking API: every call waits for its answer on the calling thread,
//! while the connection's reactor thread does the I/O.
//!
//! [`Connection`], [`Channel`] and [`Consumer`] are `Send + Sync`: share them
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
//! let queue = channel.queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new())?;
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::options::*;
use crate::protocol::{BasicProperties, FieldTable, Method, QueueDeclareOk, ShortString};
pub use crate::reactor::handle::ConnectionEvent;
use crate::reactor::handle::{lock, ChannelShared, Completion, ConsumerQueue, Received, Shared};
use crate::reactor::{self, Started};
use crate::session::requests::{self, Request};
use crate::session::{Command, Confirmation, Delivery, Reply, ReturnedMessage};
use crate::uri::ConnectionConfig;

/// An open AMQP connection: one TCP socket, one reactor thread, any number
/// of channels. Closed on [`Connection::close`] or when dropped.
pub struct Connection {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    server_properties: FieldTable,
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
}

impl Connection {
    /// Connects to the broker at `uri` (`amqp://user:pass@host:port/vhost?heartbeat=..`).
    pub fn open(uri: &str) -> Result<Connection, Error> {
        Self::open_with(ConnectionConfig::from_uri(uri)?)
    }

    /// Connects with explicit settings.
    pub fn open_with(config: ConnectionConfig) -> Result<Connection, Error> {
        for (value, what) in [(&config.vhost, "vhost"), (&config.locale, "locale")] {
            requests::short(value, what)?;
        }
        let Started {
            shared,
            thread,
            server_properties,
            channel_max,
            frame_max,
            heartbeat,
        } = reactor::start(config)?;
        Ok(Connection {
            shared,
            thread: Mutex::new(Some(thread)),
            server_properties,
            channel_max,
            frame_max,
            heartbeat,
        })
    }

    /// Opens a channel on the lowest free channel number.
    pub fn open_channel(&self) -> Result<Channel, Error> {
        match self
            .shared
            .call(|reply| Command::OpenChannel { reply }, None, "channel.open")?
        {
            Reply::ChannelOpened(id) => Ok(Channel {
                id,
                state: self.shared.channel(id),
                shared: self.shared.clone(),
                closed: AtomicBool::new(false),
            }),
            other => Err(Error::InvalidArgument(format!(
                "unexpected reply to channel.open: {other:?}"
            ))),
        }
    }

    /// Closes the connection: sends connection.close, waits for close-ok (at
    /// most 5 s), then stops the reactor thread.
    pub fn close(&self) -> Result<(), Error> {
        let result = self.shared.call(
            |reply| Command::Close {
                code: 200,
                text: ShortString::from_static("goodbye"),
                reply,
            },
            Some(Duration::from_secs(10)),
            "connection.close",
        );
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        match result {
            Ok(_) | Err(Error::Closed) => Ok(()),
            Err(e) => match self.shared.check() {
                // Closed since, for another reason: report it.
                Err(Error::Closed) | Ok(()) => Err(e),
                Err(other) => Err(other),
            },
        }
    }

    /// The next connection.blocked / unblocked notice, if one came.
    pub fn try_next_event(&self) -> Option<ConnectionEvent> {
        lock(&self.shared.events).pop_front()
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
    pub fn update_secret(&self, new_secret: &str, reason: &str) -> Result<(), Error> {
        let request = requests::update_secret(new_secret, reason)?;
        let sent = request.method.clone();
        let reply = self.shared.call(
            |reply| Command::Rpc {
                channel: 0,
                method: request.method,
                reply,
            },
            None,
            "connection.update-secret",
        )?;
        (request.parse)(reply, &sent)
    }

    /// The broker's connection.start properties (product, version, capabilities...).
    pub fn server_properties(&self) -> &FieldTable {
        &self.server_properties
    }

    /// The negotiated channel_max.
    pub fn channel_max(&self) -> u16 {
        self.channel_max
    }

    /// The negotiated frame_max.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// The negotiated heartbeat interval in seconds (0: none).
    pub fn heartbeat(&self) -> u16 {
        self.heartbeat
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if lock(&self.thread).is_some() {
            let _ = self.close();
        }
    }
}

/// A channel: where exchanges, queues, publishes and consumers live.
/// Closed on [`Channel::close`] or when dropped.
pub struct Channel {
    id: u16,
    shared: Arc<Shared>,
    state: Arc<ChannelShared>,
    closed: AtomicBool,
}

/// Waits for one publish's confirm (see [`Channel::basic_publish_confirmed`]).
#[must_use = "a confirm handle does nothing unless waited on"]
pub struct PublishConfirm {
    completion: Arc<Completion>,
}

impl PublishConfirm {
    /// Blocks until the broker confirms the message.
    pub fn wait(self) -> Result<Confirmation, Error> {
        requests::confirmation(self.completion.wait(None, "publisher confirm")?)
    }

    /// Blocks at most `timeout` for the confirm.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Confirmation, Error> {
        requests::confirmation(self.completion.wait(Some(timeout), "publisher confirm")?)
    }
}

impl Channel {
    /// The channel number.
    pub fn id(&self) -> u16 {
        self.id
    }

    fn check(&self) -> Result<(), Error> {
        self.state.check()?;
        self.shared.check()
    }

    fn call<T>(&self, request: Request<T>, operation: &'static str) -> Result<T, Error> {
        self.check()?;
        let sent = request.method.clone();
        let reply = self.shared.call(
            |reply| Command::Rpc {
                channel: self.id,
                method: request.method,
                reply,
            },
            None,
            operation,
        )?;
        (request.parse)(reply, &sent)
    }

    fn send(&self, method: Method) -> Result<(), Error> {
        self.check()?;
        self.shared.submit(Command::Send {
            channel: self.id,
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
    ) -> Result<(), Error> {
        self.call(
            requests::exchange_declare(exchange, &kind, options, arguments)?,
            "exchange.declare",
        )
    }

    /// Deletes an exchange (exchange.delete).
    pub fn exchange_delete(
        &self,
        exchange: &str,
        options: ExchangeDeleteOptions,
    ) -> Result<(), Error> {
        self.call(
            requests::exchange_delete(exchange, options)?,
            "exchange.delete",
        )
    }

    /// Routes messages from `source` to `destination` exchange (exchange.bind, a RabbitMQ extension).
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            requests::exchange_bind(destination, source, routing_key, false, arguments)?,
            "exchange.bind",
        )
    }

    /// Removes an exchange-to-exchange binding (exchange.unbind).
    pub fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            requests::exchange_unbind(destination, source, routing_key, false, arguments)?,
            "exchange.unbind",
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
        self.call(
            requests::queue_declare(queue, options, arguments)?,
            "queue.declare",
        )
    }

    /// Binds a queue to an exchange (queue.bind).
    pub fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            requests::queue_bind(queue, exchange, routing_key, false, arguments)?,
            "queue.bind",
        )
    }

    /// Removes a queue binding (queue.unbind).
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        self.call(
            requests::queue_unbind(queue, exchange, routing_key, arguments)?,
            "queue.unbind",
        )
    }

    /// Removes every ready message from a queue; returns how many (queue.purge).
    pub fn queue_purge(&self, queue: &str) -> Result<u32, Error> {
        self.call(requests::queue_purge(queue, false)?, "queue.purge")
    }

    /// Deletes a queue; returns how many messages it held (queue.delete).
    pub fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32, Error> {
        self.call(requests::queue_delete(queue, options)?, "queue.delete")
    }

    /// Limits unacknowledged deliveries: per consumer, or shared by the
    /// channel when `global` (RabbitMQ's reading of basic.qos).
    pub fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<(), Error> {
        self.call(requests::basic_qos(prefetch_count, 0, global), "basic.qos")
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
        self.publish(
            exchange,
            routing_key,
            options,
            properties,
            body.into(),
            None,
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
        let completion = Completion::new();
        self.publish(
            exchange,
            routing_key,
            options,
            properties,
            body.into(),
            Some(completion.clone()),
        )?;
        Ok(PublishConfirm { completion })
    }

    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: BasicProperties,
        body: Bytes,
        confirm: Option<Arc<Completion>>,
    ) -> Result<(), Error> {
        let method = requests::basic_publish(exchange, routing_key, options)?;
        self.check()?;
        self.shared.wait_for_room(None)?;
        self.shared.submit(Command::Publish {
            channel: self.id,
            method,
            properties,
            body,
            confirm,
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
        let (method, parse) = requests::basic_consume(queue, consumer_tag, options, arguments)?;
        self.check()?;
        let queue = ConsumerQueue::new();
        let sent = Method::BasicConsume(method.clone());
        let reply = self.shared.call(
            |reply| Command::Consume {
                channel: self.id,
                method,
                consumer: queue.clone(),
                reply,
            },
            None,
            "basic.consume",
        )?;
        let tag = parse(reply, &sent)?;
        Ok(Consumer {
            tag,
            channel: self.id,
            shared: self.shared.clone(),
            queue,
            no_ack: options.no_ack,
            done: AtomicBool::new(false),
        })
    }

    /// Cancels a consumer by tag (basic.cancel).
    pub fn basic_cancel(&self, consumer_tag: &str) -> Result<(), Error> {
        self.call(requests::basic_cancel(consumer_tag)?, "basic.cancel")
    }

    /// Fetches one message, or `None` when the queue is empty (basic.get).
    /// Returns the message and the count left in the queue.
    pub fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<(Delivery, u32)>, Error> {
        self.call(requests::basic_get(queue, no_ack)?, "basic.get")
    }

    /// Acknowledges a delivery, or with `multiple` every one up to it.
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        self.send(Method::BasicAck(crate::protocol::BasicAck {
            delivery_tag,
            multiple,
        }))
    }

    /// Rejects one delivery or, with `multiple`, every one up to it
    /// (basic.nack), requeueing them or not.
    pub fn basic_nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), Error> {
        self.send(Method::BasicNack(crate::protocol::BasicNack {
            delivery_tag,
            multiple,
            requeue,
        }))
    }

    /// Rejects one delivery (basic.reject).
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.send(Method::BasicReject(crate::protocol::BasicReject {
            delivery_tag,
            requeue,
        }))
    }

    /// Redelivers every unacknowledged message of the channel (basic.recover).
    pub fn basic_recover(&self, requeue: bool) -> Result<(), Error> {
        self.call(requests::basic_recover(requeue), "basic.recover")
    }

    /// Puts the channel in confirm mode (confirm.select, a RabbitMQ extension).
    pub fn confirm_select(&self) -> Result<(), Error> {
        self.call(requests::confirm_select(), "confirm.select")
    }

    /// Waits until every message published so far on the channel is
    /// confirmed. `Ok(true)` if all were acked, `Ok(false)` if any was nacked.
    pub fn wait_for_confirms(&self) -> Result<bool, Error> {
        self.check()?;
        let reply = self.shared.call(
            |reply| Command::WaitForConfirms {
                channel: self.id,
                reply,
            },
            None,
            "wait_for_confirms",
        )?;
        Ok(requests::confirmation(reply)?.is_ack())
    }

    /// The next mandatory message the broker returned, if any.
    pub fn try_next_return(&self) -> Option<ReturnedMessage> {
        lock(&self.state.returns).pop_front()
    }

    /// Starts a transaction mode on the channel (tx.select).
    pub fn tx_select(&self) -> Result<(), Error> {
        self.call(requests::tx_select(), "tx.select")
    }

    /// Commits the current transaction (tx.commit).
    pub fn tx_commit(&self) -> Result<(), Error> {
        self.call(requests::tx_commit(), "tx.commit")
    }

    /// Abandons the current transaction (tx.rollback).
    pub fn tx_rollback(&self) -> Result<(), Error> {
        self.call(requests::tx_rollback(), "tx.rollback")
    }

    /// Asks the broker to pause (`false`) or resume deliveries (channel.flow).
    /// RabbitMQ refuses `false` with 540 NOT_IMPLEMENTED; use basic_qos.
    pub fn channel_flow(&self, active: bool) -> Result<bool, Error> {
        self.call(requests::channel_flow(active), "channel.flow")
    }

    /// Whether the broker paused publishing on this channel (channel.flow).
    pub fn is_flow_paused(&self) -> bool {
        self.state.flow_paused.load(Ordering::Acquire)
    }

    /// Why the channel closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<Error> {
        self.check().err()
    }

    /// Closes the channel (channel.close) and waits for close-ok.
    pub fn close(&self) -> Result<(), Error> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.check()?;
        self.shared
            .call(
                |reply| Command::CloseChannel {
                    channel: self.id,
                    code: 200,
                    text: ShortString::from_static("goodbye"),
                    reply,
                },
                None,
                "channel.close",
            )
            .map(drop)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) && self.check().is_ok() {
            let _ = self.shared.submit(Command::CloseChannel {
                channel: self.id,
                code: 200,
                text: ShortString::from_static("goodbye"),
                reply: Completion::new(),
            });
        }
    }
}

/// The deliveries of one consumer, in order. Iterating blocks for the next
/// one; the iterator ends when the consumer is cancelled, and yields one
/// `Err` first if it ended for another reason (its channel or connection
/// closed, or the broker cancelled it).
pub struct Consumer {
    tag: ShortString,
    channel: u16,
    shared: Arc<Shared>,
    queue: Arc<ConsumerQueue>,
    no_ack: bool,
    done: AtomicBool,
}

impl Consumer {
    /// The consumer tag.
    pub fn tag(&self) -> &str {
        self.tag.as_str().unwrap_or_default()
    }

    /// The next delivery, waiting at most `timeout`. `Ok(None)` on timeout
    /// or once the consumer has ended normally.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        self.receive(Some(timeout))
    }

    /// The next delivery, waiting as long as it takes. `Ok(None)` once the
    /// consumer has ended normally.
    pub fn recv(&self) -> Result<Option<Delivery>, Error> {
        self.receive(None)
    }

    fn receive(&self, timeout: Option<Duration>) -> Result<Option<Delivery>, Error> {
        if self.done.load(Ordering::Acquire) {
            return Ok(None);
        }
        match self.queue.recv(timeout) {
            Received::Delivery(d) => Ok(Some(d)),
            Received::TimedOut => Ok(None),
            Received::Ended(reason) => {
                self.done.store(true, Ordering::Release);
                reason.map(|()| None)
            }
        }
    }

    /// Cancels the consumer (basic.cancel) and waits for cancel-ok. Messages
    /// already buffered can still be received afterwards.
    pub fn cancel(&self) -> Result<(), Error> {
        let request = requests::basic_cancel(self.tag.as_str().unwrap_or_default())?;
        let sent = request.method.clone();
        let reply = self.shared.call(
            |reply| Command::Rpc {
                channel: self.channel,
                method: request.method,
                reply,
            },
            None,
            "basic.cancel",
        )?;
        (request.parse)(reply, &sent)
    }
}

impl Iterator for Consumer {
    type Item = Result<Delivery, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receive(None).transpose()
    }
}

impl Drop for Consumer {
    /// Cancels the consumer and requeues what it buffered but never handed
    /// out (acknowledged consumers only: auto-ack messages are gone).
    fn drop(&mut self) {
        if self.done.load(Ordering::Acquire) || self.shared.check().is_err() {
            return;
        }
        let _ = self.shared.submit(Command::Rpc {
            channel: self.channel,
            method: Method::BasicCancel(crate::protocol::BasicCancel {
                consumer_tag: self.tag.clone(),
                no_wait: false,
            }),
            reply: Completion::new(),
        });
        if !self.no_ack {
            for d in self.queue.drain() {
                let _ = self.shared.submit(Command::Send {
                    channel: self.channel,
                    method: Method::BasicReject(crate::protocol::BasicReject {
                        delivery_tag: d.delivery_tag,
                        requeue: true,
                    }),
                });
            }
        }
    }
}
