//! One channel's state machine: its RPC queue (one synchronous method in
//! flight, later ones waiting in call order), content assembly, consumers,
//! publisher confirms and the close handshake.
//!
//! It never writes to the connection directly: it appends frames to the
//! shared [`Output`] and pushes events there, and returns a [`Fault`] when
//! the peer broke a rule that closes the whole connection.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{Bytes, BytesMut};

use super::content::{Assembled, Assembly, ContentMethod, PublishProperties, ReturnedMessage};
use super::recovery::Topology;
use super::{Confirmation, Event, Reply};
use crate::error::Error;
use crate::protocol::{
    encode_message, BasicCancelOk, BasicPublish, ChannelCloseOk, ChannelFlowOk, Frame, Method,
    ReplyCode, ShortString,
};

/// Where a channel writes: the connection's outgoing bytes and event queue,
/// and (with recovery on) the topology record.
pub(super) struct Output<R, C> {
    pub(super) bytes: BytesMut,
    pub(super) events: VecDeque<Event<R, C>>,
    pub(super) frame_max: u32,
    /// What recovery would rebuild; `None` when recovery is off.
    pub(super) topology: Option<Topology<C>>,
    /// Answers to the replay's own RPCs: (channel, result).
    pub(super) replayed: VecDeque<(u16, Result<Reply, Error>)>,
}

impl<R, C> Output<R, C> {
    pub(super) fn frame(&mut self, channel: u16, method: Method) {
        Frame::Method { channel, method }.encode(&mut self.bytes);
    }

    pub(super) fn done(&mut self, reply: R, result: Result<Reply, Error>) {
        self.events.push_back(Event::Done { reply, result });
    }

    /// Completes an RPC: the application's call, or a replay step.
    fn answer(&mut self, channel: u16, waiter: Waiter<R>, result: Result<Reply, Error>) {
        match waiter {
            Waiter::App(reply) => self.done(reply, result),
            Waiter::Replay => self.replayed.push_back((channel, result)),
        }
    }
}

/// Who waits for an RPC's answer.
pub(super) enum Waiter<R> {
    /// The application, through its reply handle.
    App(R),
    /// The recovery replay (see [`super::recovery`]).
    Replay,
}

/// A rule broken by the peer that closes the connection with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fault {
    pub(super) code: ReplyCode,
    pub(super) text: String,
}

impl Fault {
    pub(super) fn new(code: ReplyCode, text: impl Into<String>) -> Self {
        Fault {
            code,
            text: text.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// channel.open sent, open-ok not yet received.
    Opening,
    Open,
    /// channel.close sent; only close-ok (or the broker's close) counts now.
    Closing,
}

/// Work waiting its turn on the channel, in call order.
enum Queued<R, C> {
    Rpc {
        method: Method,
        reply: Waiter<R>,
        consumer: Option<C>,
    },
    Publish {
        method: BasicPublish,
        properties: PublishProperties,
        body: Bytes,
        confirm: Option<R>,
    },
    Send(Method),
}

/// An RPC on the wire, waiting for its answer.
struct InFlight<R, C> {
    method: Method,
    reply: Waiter<R>,
    consumer: Option<C>,
}

/// One publish awaiting its confirm.
struct ConfirmSlot<R> {
    confirmed: bool,
    reply: Option<R>,
    /// Exchange and routing key of a mandatory publish, to match its return.
    route: Option<(ShortString, ShortString)>,
}

/// Publisher-confirm bookkeeping: slots indexed by `tag - base`, so an ack,
/// single or `multiple`, costs O(1) per message confirmed.
struct Confirms<R> {
    /// Tag of `slots[0]`.
    base: u64,
    slots: VecDeque<ConfirmSlot<R>>,
    /// wait_for_confirms calls: (last tag they wait for, saw a nack, reply).
    waiters: Vec<(u64, bool, R)>,
    /// basic.returns waiting for the acks that follow them, oldest first.
    returned: VecDeque<ReturnedMessage>,
}

impl<R> Confirms<R> {
    fn new() -> Self {
        Confirms {
            base: 1,
            slots: VecDeque::new(),
            waiters: Vec::new(),
            returned: VecDeque::new(),
        }
    }

    fn next_tag(&self) -> u64 {
        self.base + self.slots.len() as u64
    }
}

pub(super) struct Channel<R, C> {
    pub(super) id: u16,
    /// Which opening of the number this is (see [`super::ChannelRef`]).
    pub(super) serial: u64,
    pub(super) state: State,
    in_flight: Option<InFlight<R, C>>,
    queue: VecDeque<Queued<R, C>>,
    /// Consumers by tag, looked up for every delivery: hashed with a cheap
    /// hash (the tags are the broker's or the application's, and a channel
    /// holds few consumers, so flooding is no concern).
    consumers: HashMap<ShortString, C, BuildHasherDefault<TagHasher>>,
    content: Option<Assembly>,
    /// basic.get waiting for its content.
    get_reply: Option<R>,
    confirms: Option<Confirms<R>>,
    /// close requested by the application (or the replay): its reply.
    close_reply: Option<Waiter<R>>,
    /// Added to the broker's delivery tags (and taken off acks): the last
    /// tag handed out before a recovery, so tags never repeat on a channel
    /// and acks of tags from before it are recognised and dropped.
    tag_offset: u64,
    /// The highest delivery tag handed out (offset included).
    pub(super) last_delivery_tag: u64,
}

impl<R, C: Clone> Channel<R, C> {
    /// A channel whose channel.open is being sent with `reply` waiting.
    /// `tag_offset` is the last delivery tag of the channel this one
    /// replaces in a recovery (0 otherwise).
    pub(super) fn opening(
        id: u16,
        serial: u64,
        reply: Waiter<R>,
        tag_offset: u64,
        out: &mut Output<R, C>,
    ) -> Self {
        let method = Method::ChannelOpen(Default::default());
        out.frame(id, method.clone());
        Channel {
            id,
            serial,
            state: State::Opening,
            in_flight: Some(InFlight {
                method,
                reply,
                consumer: None,
            }),
            queue: VecDeque::new(),
            consumers: HashMap::default(),
            content: None,
            get_reply: None,
            confirms: None,
            close_reply: None,
            tag_offset,
            last_delivery_tag: tag_offset,
        }
    }

    fn usable(&self) -> Result<(), Error> {
        match self.state {
            State::Closing => Err(Error::Closed),
            _ => Ok(()),
        }
    }

    /// Queues or sends a synchronous method.
    pub(super) fn rpc(
        &mut self,
        method: Method,
        reply: Waiter<R>,
        consumer: Option<C>,
        out: &mut Output<R, C>,
    ) {
        if let Err(e) = self.usable() {
            return out.answer(self.id, reply, Err(e));
        }
        if let Some(topology) = &mut out.topology {
            // What the application removes is never replayed, even if the
            // connection is lost before the removal is sent or answered.
            topology.requested(self.id, &method);
        }
        self.queue.push_back(Queued::Rpc {
            method,
            reply,
            consumer,
        });
        self.pump(out);
    }

    /// Sends a publish now, or queues it behind unsent RPCs to keep call order.
    pub(super) fn publish(
        &mut self,
        method: BasicPublish,
        properties: PublishProperties,
        body: Bytes,
        confirm: Option<R>,
        out: &mut Output<R, C>,
    ) {
        if let Err(e) = self.usable() {
            if let Some(reply) = confirm {
                out.done(reply, Err(e));
            }
            return;
        }
        if self.queue.is_empty() {
            self.send_publish(method, &properties, &body, confirm, out);
        } else {
            self.queue.push_back(Queued::Publish {
                method,
                properties,
                body,
                confirm,
            });
        }
    }

    /// Sends an asynchronous method (ack, nack, reject...), in call order.
    pub(super) fn send(&mut self, mut method: Method, out: &mut Output<R, C>) {
        if self.usable().is_err() {
            return;
        }
        if self.tag_offset > 0 && !self.to_broker_tag(&mut method) {
            return; // a tag from before recovery: the broker requeued it already
        }
        if self.queue.is_empty() {
            out.frame(self.id, method);
        } else {
            self.queue.push_back(Queued::Send(method));
        }
    }

    /// A delivery tag from the broker in the application's numbering
    /// (shifted past the tags handed out before a recovery).
    fn our_tag(&mut self, broker_tag: u64) -> Result<u64, Fault> {
        let tag = broker_tag.checked_add(self.tag_offset).ok_or_else(|| {
            Fault::new(
                ReplyCode::SyntaxError,
                format!(
                    "delivery tag {broker_tag} on channel {} is past the largest tag",
                    self.id
                ),
            )
        })?;
        self.last_delivery_tag = self.last_delivery_tag.max(tag);
        Ok(tag)
    }

    /// Turns an ack's tag into the broker's numbering; `false` when it is
    /// from before the last recovery (so it must not be sent).
    fn to_broker_tag(&self, method: &mut Method) -> bool {
        let (tag, multiple) = match method {
            Method::BasicAck(m) => (&mut m.delivery_tag, m.multiple),
            Method::BasicNack(m) => (&mut m.delivery_tag, m.multiple),
            Method::BasicReject(m) => (&mut m.delivery_tag, false),
            _ => return true,
        };
        if multiple && *tag == 0 {
            return true; // everything outstanding
        }
        if *tag <= self.tag_offset {
            return false;
        }
        *tag -= self.tag_offset;
        true
    }

    fn send_publish(
        &mut self,
        method: BasicPublish,
        properties: &PublishProperties,
        body: &[u8],
        confirm: Option<R>,
        out: &mut Output<R, C>,
    ) {
        let route = (method.mandatory && self.confirms.is_some())
            .then(|| (method.exchange.clone(), method.routing_key.clone()));
        let method = Method::BasicPublish(method);
        encode_message(
            self.id,
            &method,
            properties,
            body,
            out.frame_max,
            &mut out.bytes,
        );
        match &mut self.confirms {
            Some(confirms) => confirms.slots.push_back(ConfirmSlot {
                confirmed: false,
                reply: confirm,
                route,
            }),
            None => {
                if let Some(reply) = confirm {
                    // Not in confirm mode: there will be no confirm to wait for.
                    out.done(reply, Ok(Reply::Sent));
                }
            }
        }
    }

    /// How many publishes on this channel await their confirm.
    pub(super) fn confirms_outstanding(&self) -> usize {
        self.confirms.as_ref().map_or(0, |c| c.slots.len())
    }

    /// Sends queued work until an RPC is on the wire waiting for its answer.
    fn pump(&mut self, out: &mut Output<R, C>) {
        while self.in_flight.is_none() {
            let Some(next) = self.queue.pop_front() else {
                return;
            };
            match next {
                Queued::Rpc {
                    method,
                    reply,
                    consumer,
                } => {
                    out.frame(self.id, method.clone());
                    if let (Some(topology), true) = (&mut out.topology, no_wait(&method)) {
                        topology.succeeded(self.id, &method, None, consumer.as_ref());
                    }
                    if no_wait(&method) {
                        if let (Method::BasicConsume(consume), Some(consumer)) = (&method, consumer)
                        {
                            self.consumers
                                .insert(consume.consumer_tag.clone(), consumer);
                        }
                        if let Method::ConfirmSelect(_) = method {
                            self.confirms.get_or_insert_with(Confirms::new);
                        }
                        if let Method::BasicCancel(cancel) = &method {
                            if let Some(consumer) = self.consumers.remove(&cancel.consumer_tag) {
                                out.events.push_back(Event::ConsumerEnded {
                                    consumer,
                                    reason: Ok(()),
                                });
                            }
                        }
                        out.answer(self.id, reply, Ok(Reply::Sent));
                    } else {
                        self.in_flight = Some(InFlight {
                            method,
                            reply,
                            consumer,
                        });
                    }
                }
                Queued::Publish {
                    method,
                    properties,
                    body,
                    confirm,
                } => self.send_publish(method, &properties, &body, confirm, out),
                Queued::Send(method) => out.frame(self.id, method),
            }
        }
    }

    /// Starts the close handshake at the application's request.
    pub(super) fn close(
        &mut self,
        code: u16,
        text: ShortString,
        reply: Waiter<R>,
        out: &mut Output<R, C>,
    ) {
        if self.state == State::Closing {
            return out.answer(self.id, reply, Err(Error::Closed));
        }
        if let Some(topology) = &mut out.topology {
            topology.channel_closed(self.id);
        }
        out.frame(
            self.id,
            Method::ChannelClose(crate::protocol::ChannelClose {
                reply_code: code,
                reply_text: text,
                class_id: 0,
                method_id: 0,
            }),
        );
        self.state = State::Closing;
        self.close_reply = Some(reply);
        self.fail_all(&Error::Closed, out);
    }

    /// Registers a wait_for_confirms call.
    pub(super) fn wait_for_confirms(&mut self, reply: R, out: &mut Output<R, C>) {
        match &mut self.confirms {
            None => out.done(
                reply,
                Err(Error::InvalidArgument(
                    "wait_for_confirms needs confirm mode (confirm_select) on the channel".into(),
                )),
            ),
            Some(c) if c.slots.is_empty() => {
                out.done(reply, Ok(Reply::Confirmed(Confirmation::Ack)))
            }
            Some(c) => {
                let last = c.next_tag() - 1;
                c.waiters.push((last, false, reply));
            }
        }
    }

    /// Handles a frame for this channel. `Ok(true)` when the channel is now
    /// gone (closed by either side).
    pub(super) fn handle_frame(
        &mut self,
        frame: Frame,
        out: &mut Output<R, C>,
    ) -> Result<bool, Fault> {
        match frame {
            Frame::Method { method, .. } => self.handle_method(method, out),
            Frame::Header { header, .. } => {
                if self.state == State::Closing {
                    return Ok(false);
                }
                let Some(assembly) = &mut self.content else {
                    return Err(Fault::new(
                        ReplyCode::UnexpectedFrame,
                        "content header without a method",
                    ));
                };
                assembly
                    .header(header.class_id, header.body_size, header.properties)
                    .map_err(|e| Fault::new(e.code, e.text))?;
                self.finish_content(out);
                Ok(false)
            }
            Frame::Body { payload, .. } => {
                if self.state == State::Closing {
                    return Ok(false);
                }
                let Some(assembly) = &mut self.content else {
                    return Err(Fault::new(
                        ReplyCode::UnexpectedFrame,
                        "body frame without a method",
                    ));
                };
                assembly
                    .body(payload)
                    .map_err(|e| Fault::new(e.code, e.text))?;
                self.finish_content(out);
                Ok(false)
            }
            Frame::Heartbeat { .. } => Err(Fault::new(
                ReplyCode::CommandInvalid,
                format!("heartbeat on channel {}", self.id),
            )),
        }
    }

    fn finish_content(&mut self, out: &mut Output<R, C>) {
        if !self.content.as_ref().is_some_and(Assembly::is_complete) {
            return;
        }
        match self.content.take().expect("checked above").finish() {
            Assembled::Deliver(delivery) => {
                if let Some(consumer) = self.consumers.get(&delivery.consumer_tag) {
                    out.events.push_back(Event::Delivery {
                        consumer: consumer.clone(),
                        delivery,
                    });
                }
                // A delivery for a consumer already cancelled is dropped: the
                // broker requeues it when the channel closes, unless no-ack.
            }
            Assembled::Return(message) => {
                if let Some(confirms) = &mut self.confirms {
                    // At most one return per outstanding publish.
                    if confirms.returned.len() >= confirms.slots.len() {
                        confirms.returned.pop_front();
                    }
                    confirms.returned.push_back(message.clone());
                }
                out.events.push_back(Event::Returned {
                    channel: self.id,
                    message,
                });
            }
            Assembled::GetOk {
                delivery,
                message_count,
            } => {
                if let Some(reply) = self.get_reply.take() {
                    let got = Box::new((delivery, message_count));
                    out.done(reply, Ok(Reply::Get(Some(got))));
                }
                self.pump(out);
            }
        }
    }

    fn handle_method(&mut self, method: Method, out: &mut Output<R, C>) -> Result<bool, Fault> {
        if self.content.is_some() {
            return Err(Fault::new(
                ReplyCode::UnexpectedFrame,
                format!("{} in the middle of a message's content", method.name()),
            ));
        }
        if self.state == State::Closing {
            // After channel.close only close and close-ok count (spec 2.3.7).
            return match method {
                Method::ChannelCloseOk(_) => {
                    if let Some(reply) = self.close_reply.take() {
                        out.answer(self.id, reply, Ok(Reply::Sent));
                    }
                    Ok(true)
                }
                Method::ChannelClose(m) => {
                    // The broker closed the channel as we did (often for an
                    // error our close crossed): answer, report its reason,
                    // and keep the number until its close-ok for ours comes.
                    let error = self.closed_by_broker(&m, out);
                    if let Some(reply) = self.close_reply.take() {
                        out.answer(self.id, reply, Err(error));
                    }
                    Ok(false)
                }
                _ => Ok(false),
            };
        }
        match method {
            Method::BasicDeliver(mut m) => {
                m.delivery_tag = self.our_tag(m.delivery_tag)?;
                self.content = Some(Assembly::new(ContentMethod::Deliver(m)));
                Ok(false)
            }
            Method::BasicReturn(m) => {
                self.content = Some(Assembly::new(ContentMethod::Return(m)));
                Ok(false)
            }
            Method::BasicAck(m) => self.confirmed(m.delivery_tag, m.multiple, false, out),
            Method::BasicNack(m) => self.confirmed(m.delivery_tag, m.multiple, true, out),
            Method::BasicCancel(m) => {
                if let Some(topology) = &mut out.topology {
                    topology.consumer_gone(self.id, &m.consumer_tag);
                }
                if let Some(consumer) = self.consumers.remove(&m.consumer_tag) {
                    out.events.push_back(Event::ConsumerEnded {
                        consumer,
                        reason: Err(Error::ConsumerCancelled {
                            consumer_tag: m.consumer_tag.to_string(),
                        }),
                    });
                }
                if !m.no_wait {
                    out.frame(
                        self.id,
                        Method::BasicCancelOk(BasicCancelOk {
                            consumer_tag: m.consumer_tag,
                        }),
                    );
                }
                Ok(false)
            }
            Method::ChannelFlow(m) => {
                out.frame(
                    self.id,
                    Method::ChannelFlowOk(ChannelFlowOk { active: m.active }),
                );
                out.events.push_back(Event::Flow {
                    channel: self.id,
                    active: m.active,
                });
                Ok(false)
            }
            Method::ChannelClose(m) => {
                let error = self.closed_by_broker(&m, out);
                self.fail_all(&error, out);
                Ok(true)
            }
            reply => self.answer(reply, out),
        }
    }

    /// The broker's channel.close: answers close-ok and tells the handles,
    /// before any call they wait on fails, so their next call sees the same
    /// error. Returns that error.
    fn closed_by_broker(
        &self,
        close: &crate::protocol::ChannelClose,
        out: &mut Output<R, C>,
    ) -> Error {
        out.frame(self.id, Method::ChannelCloseOk(ChannelCloseOk));
        if let Some(topology) = &mut out.topology {
            topology.channel_closed(self.id);
        }
        let error = Error::ChannelClosed {
            code: close.reply_code,
            text: close.reply_text.to_string(),
            class_id: close.class_id,
            method_id: close.method_id,
        };
        out.events.push_back(Event::ChannelClosed {
            channel: self.id,
            error: error.clone(),
        });
        error
    }

    /// A method that should answer the RPC in flight.
    fn answer(&mut self, reply: Method, out: &mut Output<R, C>) -> Result<bool, Fault> {
        let expected = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.method.responses().contains(&reply.id()));
        if !expected {
            return Err(Fault::new(
                ReplyCode::CommandInvalid,
                format!("unexpected {} on channel {}", reply.name(), self.id),
            ));
        }
        let InFlight {
            method,
            reply: handle,
            consumer,
        } = self.in_flight.take().expect("checked above");
        if let Some(topology) = &mut out.topology {
            match &reply {
                Method::ChannelOpenOk(_) if self.serial != 0 => {
                    topology.channel_opened(self.id, self.serial, self.tag_offset)
                }
                _ => topology.succeeded(self.id, &method, Some(&reply), consumer.as_ref()),
            }
        }
        let id = self.id;
        match reply {
            Method::ChannelOpenOk(_) => {
                self.state = State::Open;
                let opened = super::ChannelRef {
                    id,
                    serial: self.serial,
                };
                out.answer(id, handle, Ok(Reply::ChannelOpened(opened)));
            }
            Method::BasicGetOk(mut m) => {
                m.delivery_tag = match self.our_tag(m.delivery_tag) {
                    Ok(tag) => tag,
                    Err(fault) => {
                        let error = Error::ProtocolViolation {
                            code: fault.code,
                            text: fault.text.clone(),
                        };
                        out.answer(id, handle, Err(error));
                        return Err(fault);
                    }
                };
                // The RPC completes when the content is in.
                self.content = Some(Assembly::new(ContentMethod::GetOk(m)));
                self.get_reply = match handle {
                    Waiter::App(reply) => Some(reply),
                    Waiter::Replay => None,
                };
                return Ok(false);
            }
            Method::BasicGetEmpty(_) => out.answer(id, handle, Ok(Reply::Get(None))),
            reply => {
                // What the reply changes here, before its waiter sees it.
                match &reply {
                    Method::BasicRecoverOk(_) => {
                        out.events.push_back(Event::Recovered { channel: id });
                    }
                    Method::ConfirmSelectOk(_) => {
                        self.confirms.get_or_insert_with(Confirms::new);
                    }
                    Method::BasicConsumeOk(ok) => {
                        if let (Some(consumer), Method::BasicConsume(_)) = (consumer, &method) {
                            self.consumers.insert(ok.consumer_tag.clone(), consumer);
                        }
                    }
                    Method::BasicCancelOk(ok) => {
                        if let Some(consumer) = self.consumers.remove(&ok.consumer_tag) {
                            out.events.push_back(Event::ConsumerEnded {
                                consumer,
                                reason: Ok(()),
                            });
                        }
                    }
                    _ => {}
                }
                out.answer(id, handle, Ok(Reply::Method(Box::new(reply))));
            }
        }
        self.pump(out);
        Ok(false)
    }

    /// basic.ack / basic.nack from the broker, in confirm mode.
    fn confirmed(
        &mut self,
        tag: u64,
        multiple: bool,
        nack: bool,
        out: &mut Output<R, C>,
    ) -> Result<bool, Fault> {
        let Some(c) = &mut self.confirms else {
            return Err(Fault::new(
                ReplyCode::CommandInvalid,
                format!(
                    "basic.{} on channel {}, which is not in confirm mode",
                    if nack { "nack" } else { "ack" },
                    self.id
                ),
            ));
        };
        if tag >= c.next_tag() || (tag == 0 && !multiple) {
            return Err(Fault::new(
                ReplyCode::PreconditionFailed,
                format!(
                    "confirm for unknown delivery tag {tag} on channel {}",
                    self.id
                ),
            ));
        }
        let first = if multiple { c.base } else { tag.max(c.base) };
        // Tags below `base` were confirmed already: a repeat is ignored.
        for t in first..=tag {
            let Some(slot) = c.slots.get_mut((t - c.base) as usize) else {
                break;
            };
            if slot.confirmed {
                continue;
            }
            slot.confirmed = true;
            // Returns arrive in publish order, each before the ack that
            // covers its message: the oldest pending return belongs to the
            // first mandatory publish it matches.
            let returned = match (&slot.route, c.returned.front()) {
                (Some(route), Some(r)) if r.exchange == route.0 && r.routing_key == route.1 => {
                    c.returned.pop_front()
                }
                _ => None,
            };
            if let Some(reply) = slot.reply.take() {
                let outcome = match (nack, returned) {
                    (true, _) => Confirmation::Nack,
                    (false, Some(message)) => Confirmation::Returned(Box::new(message)),
                    (false, None) => Confirmation::Ack,
                };
                out.done(reply, Ok(Reply::Confirmed(outcome)));
            }
        }
        while c.slots.front().is_some_and(|s| s.confirmed) {
            c.slots.pop_front();
            c.base += 1;
        }
        if nack {
            for waiter in c.waiters.iter_mut().filter(|w| w.0 >= first) {
                waiter.1 = true;
            }
        }
        let base = c.base;
        let mut i = 0;
        while i < c.waiters.len() {
            if c.waiters[i].0 < base {
                let (_, nacked, reply) = c.waiters.swap_remove(i);
                let outcome = if nacked {
                    Confirmation::Nack
                } else {
                    Confirmation::Ack
                };
                out.done(reply, Ok(Reply::Confirmed(outcome)));
            } else {
                i += 1;
            }
        }
        Ok(false)
    }

    /// Ends every piece of work on the channel with `error`.
    pub(super) fn fail_all(&mut self, error: &Error, out: &mut Output<R, C>) {
        self.fail_work(error, out);
        for (_, consumer) in self.consumers.drain() {
            out.events.push_back(Event::ConsumerEnded {
                consumer,
                reason: Err(error.clone()),
            });
        }
    }

    /// Fails every call waiting on the channel (RPCs, gets, confirms) with
    /// `error`; started consumers are left alone. A consumer whose consume
    /// was not answered yet ends with `error`: nobody may await its call
    /// (`basic_consume_many`), so its end is the only news its reader gets.
    fn fail_work(&mut self, error: &Error, out: &mut Output<R, C>) {
        let id = self.id;
        let fail_rpc = |reply, consumer: Option<C>, out: &mut Output<R, C>| {
            out.answer(id, reply, Err(error.clone()));
            if let Some(consumer) = consumer {
                out.events.push_back(Event::ConsumerEnded {
                    consumer,
                    reason: Err(error.clone()),
                });
            }
        };
        if let Some(f) = self.in_flight.take() {
            fail_rpc(f.reply, f.consumer, out);
        }
        if let Some(reply) = self.get_reply.take() {
            out.done(reply, Err(error.clone()));
        }
        self.content = None;
        for queued in self.queue.drain(..) {
            match queued {
                Queued::Rpc {
                    reply, consumer, ..
                } => fail_rpc(reply, consumer, out),
                Queued::Publish {
                    confirm: Some(reply),
                    ..
                } => out.done(reply, Err(error.clone())),
                Queued::Publish { .. } | Queued::Send(_) => {}
            }
        }
        if let Some(c) = &mut self.confirms {
            for slot in c.slots.drain(..) {
                if let Some(reply) = slot.reply {
                    out.done(reply, Err(error.clone()));
                }
            }
            for (_, _, reply) in c.waiters.drain(..) {
                out.done(reply, Err(error.clone()));
            }
        }
    }

    /// Ends everything, including a pending close, when the connection dies.
    pub(super) fn connection_lost(&mut self, error: &Error, out: &mut Output<R, C>) {
        self.fail_all(error, out);
        if let Some(reply) = self.close_reply.take() {
            out.answer(self.id, reply, Err(error.clone()));
        }
    }

    /// The connection died and recovery will reopen the channel: calls in
    /// progress fail with `error` (their outcome is unknown), consumers stay
    /// with recovery, and a close in progress counts as done.
    /// A consumer `topology` no longer holds was being cancelled: it ends
    /// as cancelled.
    pub(super) fn connection_recovering(
        &mut self,
        error: &Error,
        topology: &Topology<C>,
        out: &mut Output<R, C>,
    ) {
        self.fail_work(error, out);
        for (tag, consumer) in self.consumers.drain() {
            if !topology.has_consumer(self.id, &tag) {
                out.events.push_back(Event::ConsumerEnded {
                    consumer,
                    reason: Ok(()),
                });
            }
        }
        if let Some(reply) = self.close_reply.take() {
            out.answer(self.id, reply, Ok(Reply::Sent));
        }
    }
}

/// Whether a synchronous method was sent with no-wait, so no answer comes.
fn no_wait(method: &Method) -> bool {
    match method {
        Method::ExchangeDeclare(m) => m.no_wait,
        Method::ExchangeDelete(m) => m.no_wait,
        Method::ExchangeBind(m) => m.no_wait,
        Method::ExchangeUnbind(m) => m.no_wait,
        Method::QueueDeclare(m) => m.no_wait,
        Method::QueueBind(m) => m.no_wait,
        Method::QueuePurge(m) => m.no_wait,
        Method::QueueDelete(m) => m.no_wait,
        Method::BasicConsume(m) => m.no_wait,
        Method::BasicCancel(m) => m.no_wait,
        Method::ConfirmSelect(m) => m.nowait,
        other => !other.is_synchronous(),
    }
}

/// A consumer tag's hash, eight bytes at a time (FxHash's multiply and
/// rotate): a handful of instructions for a 31-byte server-named tag,
/// where SipHash's setup, or a byte-at-a-time hash, costs hundreds on every
/// delivery.
#[derive(Default)]
pub(super) struct TagHasher(u64);

impl TagHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(last));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}
