//! What automatic recovery remembers and how it replays it: the channels the
//! application opened (with their qos, confirm and tx modes), the exchanges,
//! queues and bindings it declared, and its consumers, kept up to date from
//! the broker's answers; and the ordered steps that rebuild them on a new
//! connection. It never touches I/O: the session records into it and drives
//! the replay.
//!
//! Declarations are recorded when the broker confirms them (declare-ok,
//! bind-ok, consume-ok...); deletions, unbinds, cancels and channel closes
//! when the application asks for them, so what it removed is never brought
//! back even if the connection died before the removal went out.

use std::collections::{BTreeMap, VecDeque};

use crate::error::Error;
use crate::protocol::{
    BasicConsume, BasicQos, ChannelOpen, ConfirmSelect, ExchangeBind, ExchangeDeclare, Method,
    QueueBind, QueueDeclare, ShortString, TxSelect,
};

/// A channel the application opened, and its settings.
#[derive(Debug, Clone, Default)]
struct ChannelRecord {
    /// The handle's serial, kept so its handles reach the reopened channel.
    serial: u64,
    /// Per-consumer prefetch (basic.qos with global = false).
    qos: Option<BasicQos>,
    /// Channel-wide prefetch (basic.qos with global = true).
    global_qos: Option<BasicQos>,
    confirm: bool,
    tx: bool,
    /// The highest delivery tag handed out on the channel (across
    /// recoveries), so tags after recovery continue above it.
    last_delivery_tag: u64,
}

/// A queue the application declared.
#[derive(Debug, Clone)]
struct QueueRecord {
    declare: QueueDeclare,
    /// Declared with an empty name: the broker names it again on replay.
    server_named: bool,
}

/// A consumer the application started.
#[derive(Debug, Clone)]
struct ConsumerRecord<C> {
    channel: u16,
    /// The basic.consume, with the tag the broker confirmed.
    consume: BasicConsume,
    consumer: C,
}

/// The topology of one connection, as recovery will rebuild it.
#[derive(Debug, Clone)]
pub(crate) struct Topology<C> {
    channels: BTreeMap<u16, ChannelRecord>,
    /// In declaration order, one per name.
    exchanges: Vec<ExchangeDeclare>,
    queues: Vec<QueueRecord>,
    queue_bindings: Vec<QueueBind>,
    exchange_bindings: Vec<ExchangeBind>,
    consumers: Vec<ConsumerRecord<C>>,
    /// The serial the next channel opened gets (serials never repeat, so a
    /// stale handle never reaches a reused number).
    pub(crate) next_serial: u64,
}

impl<C> Default for Topology<C> {
    fn default() -> Self {
        Topology {
            channels: BTreeMap::new(),
            exchanges: Vec::new(),
            queues: Vec::new(),
            queue_bindings: Vec::new(),
            exchange_bindings: Vec::new(),
            consumers: Vec::new(),
            next_serial: 0,
        }
    }
}

impl<C: Clone> Topology<C> {
    /// A channel was opened (or reopened by recovery).
    pub(crate) fn channel_opened(&mut self, id: u16, serial: u64, last_delivery_tag: u64) {
        let record = self.channels.entry(id).or_default();
        record.serial = serial;
        record.last_delivery_tag = record.last_delivery_tag.max(last_delivery_tag);
    }

    /// A channel is closing or closed: it and its consumers are not replayed.
    pub(crate) fn channel_closed(&mut self, id: u16) {
        if self.channels.remove(&id).is_some() {
            let tags: Vec<ShortString> = self
                .consumers
                .iter()
                .filter(|c| c.channel == id)
                .map(|c| c.consume.consumer_tag.clone())
                .collect();
            for tag in tags {
                self.consumer_gone(id, &tag);
            }
        }
    }

    /// Whether the consumer `tag` on `channel` is one recovery restarts.
    pub(crate) fn has_consumer(&self, channel: u16, tag: &ShortString) -> bool {
        self.consumers
            .iter()
            .any(|c| c.channel == channel && &c.consume.consumer_tag == tag)
    }

    /// Notes the last delivery tag a channel handed out before the loss.
    pub(crate) fn set_last_delivery_tag(&mut self, id: u16, tag: u64) {
        if let Some(record) = self.channels.get_mut(&id) {
            record.last_delivery_tag = record.last_delivery_tag.max(tag);
        }
    }

    /// The application asked for `method` on `channel`: removals count
    /// from here.
    pub(crate) fn requested(&mut self, channel: u16, method: &Method) {
        match method {
            Method::ExchangeDelete(m) => {
                let name = &m.exchange;
                self.exchanges.retain(|e| &e.exchange != name);
                self.exchange_bindings
                    .retain(|b| &b.destination != name && &b.source != name);
                self.queue_bindings.retain(|b| &b.exchange != name);
            }
            Method::ExchangeUnbind(m) => self.exchange_unbound(&m.destination, &m.source, |b| {
                b.routing_key == m.routing_key && b.arguments == m.arguments
            }),
            Method::QueueDelete(m) => self.queue_deleted(&m.queue),
            Method::QueueUnbind(m) => self.queue_unbound(&m.queue, &m.exchange, |b| {
                b.routing_key == m.routing_key && b.arguments == m.arguments
            }),
            Method::BasicCancel(m) => self.consumer_gone(channel, &m.consumer_tag),
            _ => {}
        }
    }

    /// The broker confirmed `sent` on `channel` with `answer` (`None` for a
    /// method sent with no-wait). `consumer` is basic.consume's consumer.
    pub(crate) fn succeeded(
        &mut self,
        channel: u16,
        sent: &Method,
        answer: Option<&Method>,
        consumer: Option<&C>,
    ) {
        match sent {
            Method::ExchangeDeclare(m) if !m.passive => {
                let declare = ExchangeDeclare {
                    no_wait: false,
                    ..m.clone()
                };
                match self.exchanges.iter_mut().find(|e| e.exchange == m.exchange) {
                    Some(existing) => *existing = declare,
                    None => self.exchanges.push(declare),
                }
            }
            Method::ExchangeBind(m) => {
                let bind = ExchangeBind {
                    no_wait: false,
                    ..m.clone()
                };
                if !self.exchange_bindings.contains(&bind) {
                    self.exchange_bindings.push(bind);
                }
            }
            Method::QueueDeclare(m) if !m.passive => {
                let name = match answer {
                    Some(Method::QueueDeclareOk(ok)) => ok.queue.clone(),
                    _ if !m.queue.is_empty() => m.queue.clone(),
                    _ => return, // a server-named queue declared with no-wait: name unknown
                };
                let record = QueueRecord {
                    declare: QueueDeclare {
                        queue: name.clone(),
                        no_wait: false,
                        ..m.clone()
                    },
                    server_named: m.queue.is_empty()
                        || self
                            .queues
                            .iter()
                            .any(|q| q.declare.queue == name && q.server_named),
                };
                match self.queues.iter_mut().find(|q| q.declare.queue == name) {
                    Some(existing) => *existing = record,
                    None => self.queues.push(record),
                }
            }
            Method::QueueBind(m) => {
                let bind = QueueBind {
                    no_wait: false,
                    ..m.clone()
                };
                if !self.queue_bindings.contains(&bind) {
                    self.queue_bindings.push(bind);
                }
            }
            Method::BasicQos(m) => {
                if let Some(record) = self.channels.get_mut(&channel) {
                    let slot = if m.global {
                        &mut record.global_qos
                    } else {
                        &mut record.qos
                    };
                    *slot = Some(m.clone());
                }
            }
            Method::ConfirmSelect(_) => {
                if let Some(record) = self.channels.get_mut(&channel) {
                    record.confirm = true;
                }
            }
            Method::TxSelect(_) => {
                if let Some(record) = self.channels.get_mut(&channel) {
                    record.tx = true;
                }
            }
            Method::BasicConsume(m) => {
                let (Some(consumer), true) = (consumer, self.channels.contains_key(&channel))
                else {
                    return;
                };
                let tag = match answer {
                    Some(Method::BasicConsumeOk(ok)) => ok.consumer_tag.clone(),
                    _ => m.consumer_tag.clone(),
                };
                self.consumers
                    .retain(|c| !(c.channel == channel && c.consume.consumer_tag == tag));
                self.consumers.push(ConsumerRecord {
                    channel,
                    consume: BasicConsume {
                        consumer_tag: tag,
                        no_wait: false,
                        ..m.clone()
                    },
                    consumer: consumer.clone(),
                });
            }
            _ => {}
        }
    }

    /// A consumer ended (cancelled by either side): it is not replayed, and
    /// an auto-delete queue it was the last recorded consumer of is gone too.
    pub(crate) fn consumer_gone(&mut self, channel: u16, tag: &ShortString) {
        let Some(index) = self
            .consumers
            .iter()
            .position(|c| c.channel == channel && &c.consume.consumer_tag == tag)
        else {
            return;
        };
        let queue = self.consumers.remove(index).consume.queue;
        let auto_delete = self
            .queues
            .iter()
            .any(|q| q.declare.queue == queue && q.declare.auto_delete);
        if auto_delete && !self.consumers.iter().any(|c| c.consume.queue == queue) {
            self.queue_deleted(&queue);
        }
    }

    /// Forgets the bindings of `queue` to `exchange` that `matches`.
    fn queue_unbound(
        &mut self,
        queue: &ShortString,
        exchange: &ShortString,
        matches: impl Fn(&QueueBind) -> bool,
    ) {
        self.queue_bindings
            .retain(|b| !(&b.queue == queue && &b.exchange == exchange && matches(b)));
    }

    /// Forgets the bindings of `destination` to `source` that `matches`.
    fn exchange_unbound(
        &mut self,
        destination: &ShortString,
        source: &ShortString,
        matches: impl Fn(&ExchangeBind) -> bool,
    ) {
        self.exchange_bindings
            .retain(|b| !(&b.destination == destination && &b.source == source && matches(b)));
    }

    fn queue_deleted(&mut self, name: &ShortString) {
        self.queues.retain(|q| &q.declare.queue != name);
        self.queue_bindings.retain(|b| &b.queue != name);
    }

    /// A server-named queue came back with a new name: bindings and
    /// consumers follow it.
    fn rename_queue(&mut self, old: &ShortString, new: &ShortString) {
        if old == new {
            return;
        }
        self.queues.retain(|q| &q.declare.queue != old);
        for binding in &mut self.queue_bindings {
            if &binding.queue == old {
                binding.queue = new.clone();
            }
        }
        for consumer in &mut self.consumers {
            if &consumer.consume.queue == old {
                consumer.consume.queue = new.clone();
            }
        }
    }

    /// The consumers recovery holds (to end them if it gives up).
    pub(crate) fn into_consumers(self) -> impl Iterator<Item = C> {
        self.consumers.into_iter().map(|c| c.consumer)
    }

    /// The lowest channel number the application does not hold, for the
    /// replay's own channel.
    fn free_channel(&self) -> u16 {
        (1..=u16::MAX)
            .find(|id| !self.channels.contains_key(id))
            .unwrap_or(u16::MAX)
    }
}

/// One step of a replay: a method on a channel, whose answer the replay
/// waits for before the next step goes out.
#[derive(Debug)]
pub(crate) enum Step<C> {
    /// Reopens a channel with the number (and serial) its handles know.
    Open {
        channel: u16,
        serial: u64,
        last_delivery_tag: u64,
    },
    /// A synchronous method on a channel.
    Rpc {
        channel: u16,
        method: Method,
        /// For basic.consume: where its deliveries go.
        consumer: Option<C>,
        /// For a server-named queue: the name it had before.
        renames: Option<ShortString>,
    },
    /// Closes the replay's own channel.
    Close { channel: u16 },
}

/// A replay in progress: the steps left, and what happened so far.
#[derive(Debug)]
pub(crate) struct Replay<C> {
    steps: VecDeque<Step<C>>,
    /// The channel topology steps run on (not one of the application's, so
    /// a failed declare closes none of them).
    pub(crate) own_channel: u16,
    pub(crate) report: RecoveryReport,
}

impl<C: Clone> Replay<C> {
    /// The steps that rebuild `topology`, in the order the broker needs
    /// them: channels and their modes, exchanges, queues, bindings, then
    /// consumers.
    pub(crate) fn plan(topology: &Topology<C>) -> Self {
        let mut steps = VecDeque::new();
        let rpc = |channel: u16, method: Method| Step::Rpc {
            channel,
            method,
            consumer: None,
            renames: None,
        };
        for (&id, record) in &topology.channels {
            steps.push_back(Step::Open {
                channel: id,
                serial: record.serial,
                last_delivery_tag: record.last_delivery_tag,
            });
            for qos in [&record.qos, &record.global_qos].into_iter().flatten() {
                steps.push_back(rpc(id, Method::BasicQos(qos.clone())));
            }
            if record.confirm {
                steps.push_back(rpc(
                    id,
                    Method::ConfirmSelect(ConfirmSelect { nowait: false }),
                ));
            }
            if record.tx {
                steps.push_back(rpc(id, Method::TxSelect(TxSelect)));
            }
        }
        let own = topology.free_channel();
        let has_entities = !(topology.exchanges.is_empty() && topology.queues.is_empty());
        if has_entities {
            steps.push_back(Step::Open {
                channel: own,
                serial: 0,
                last_delivery_tag: 0,
            });
            for exchange in &topology.exchanges {
                steps.push_back(rpc(own, Method::ExchangeDeclare(exchange.clone())));
            }
            for queue in &topology.queues {
                let mut declare = queue.declare.clone();
                let renames = queue
                    .server_named
                    .then(|| std::mem::take(&mut declare.queue));
                steps.push_back(Step::Rpc {
                    channel: own,
                    method: Method::QueueDeclare(declare),
                    consumer: None,
                    renames,
                });
            }
            for binding in &topology.queue_bindings {
                steps.push_back(rpc(own, Method::QueueBind(binding.clone())));
            }
            for binding in &topology.exchange_bindings {
                steps.push_back(rpc(own, Method::ExchangeBind(binding.clone())));
            }
            steps.push_back(Step::Close { channel: own });
        }
        for consumer in &topology.consumers {
            steps.push_back(Step::Rpc {
                channel: consumer.channel,
                method: Method::BasicConsume(consumer.consume.clone()),
                consumer: Some(consumer.consumer.clone()),
                renames: None,
            });
        }
        Replay {
            steps,
            own_channel: own,
            report: RecoveryReport::default(),
        }
    }

    /// The next step, with queue names updated by the renames so far.
    pub(crate) fn next_step(&mut self) -> Option<Step<C>> {
        let mut step = self.steps.pop_front()?;
        if let Step::Rpc { method, .. } = &mut step {
            let queue = match method {
                Method::QueueBind(m) => &mut m.queue,
                Method::BasicConsume(m) => &mut m.queue,
                _ => return Some(step),
            };
            if let Some((_, new)) = self
                .report
                .renamed_queues
                .iter()
                .find(|(old, _)| Some(old.as_str()) == queue.as_str())
            {
                *queue = ShortString::try_from(new.as_str()).unwrap_or_default();
            }
        }
        Some(step)
    }

    /// Puts a step back at the front (to run after its channel reopens).
    pub(crate) fn push_front(&mut self, step: Step<C>) {
        self.steps.push_front(step);
    }

    /// A server-named queue was declared again as `new`.
    pub(crate) fn renamed(
        &mut self,
        old: &ShortString,
        new: &ShortString,
        topology: &mut Topology<C>,
    ) {
        topology.rename_queue(old, new);
        if old != new {
            self.report
                .renamed_queues
                .push((old.to_string(), new.to_string()));
        }
    }

    /// A step failed: it is dropped from the topology and reported.
    pub(crate) fn failed(&mut self, what: String, error: Error) {
        self.report.failures.push((what, error));
    }
}

/// Drops what a failed step would have rebuilt, so the next recovery does
/// not try it again.
pub(crate) fn forget<C: Clone>(topology: &mut Topology<C>, channel: u16, method: &Method) {
    match method {
        Method::ExchangeDeclare(m) => topology.exchanges.retain(|e| e.exchange != m.exchange),
        Method::QueueDeclare(m) => topology.queue_deleted(&m.queue),
        Method::QueueBind(m) => topology.queue_unbound(&m.queue, &m.exchange, |b| {
            b.routing_key == m.routing_key && b.arguments == m.arguments
        }),
        Method::ExchangeBind(m) => topology.exchange_unbound(&m.destination, &m.source, |b| {
            b.routing_key == m.routing_key && b.arguments == m.arguments
        }),
        Method::BasicConsume(m) => topology.consumer_gone(channel, &m.consumer_tag),
        _ => {}
    }
}

/// Describes a step for the recovery report.
pub(crate) fn describe(method: &Method) -> String {
    let text = |s: &ShortString| s.to_string();
    match method {
        Method::ExchangeDeclare(m) => format!("exchange.declare {}", text(&m.exchange)),
        Method::QueueDeclare(m) => format!("queue.declare {}", text(&m.queue)),
        Method::QueueBind(m) => format!(
            "queue.bind {} to {} ({})",
            text(&m.queue),
            text(&m.exchange),
            text(&m.routing_key)
        ),
        Method::ExchangeBind(m) => format!(
            "exchange.bind {} to {} ({})",
            text(&m.destination),
            text(&m.source),
            text(&m.routing_key)
        ),
        Method::BasicConsume(m) => format!(
            "basic.consume {} on {}",
            text(&m.consumer_tag),
            text(&m.queue)
        ),
        other => other.name().to_string(),
    }
}

/// What a recovery rebuilt, and what it could not.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Server-named queues, declared again: (old name, new name).
    pub renamed_queues: Vec<(String, String)>,
    /// Steps the broker refused (e.g. an exchange redeclared by someone
    /// else with other arguments), with why. They are no longer recovered.
    pub failures: Vec<(String, Error)>,
}

/// channel.open for a replayed channel.
pub(crate) fn channel_open() -> Method {
    Method::ChannelOpen(ChannelOpen)
}
