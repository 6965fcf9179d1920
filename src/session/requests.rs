//! The channel operations as requests: user arguments checked and turned
//! into methods, and the broker's reply turned into the typed result. Both
//! facades build their calls from these, so argument rules and reply
//! handling exist once.

use crate::error::Error;
use crate::options::*;
use crate::protocol::*;
use crate::session::{Confirmation, Delivery, Reply};

/// A synchronous method and how to read its answer.
pub(crate) struct Request<T> {
    pub(crate) method: Method,
    /// Reads the reply (given the method sent, for no-wait echoes).
    pub(crate) parse: fn(Reply, &Method) -> Result<T, Error>,
}

/// A name or key as a short string, or an error naming the argument.
pub(crate) fn short(value: &str, argument: &str) -> Result<ShortString, Error> {
    ShortString::try_from(value).map_err(|e| {
        Error::InvalidArgument(format!(
            "{argument} {:?}...: {e}",
            &value[..value.len().min(32)]
        ))
    })
}

fn unexpected(reply: impl std::fmt::Debug, wanted: &str) -> Error {
    Error::InvalidArgument(format!("expected {wanted}, the broker answered {reply:?}"))
}

fn done(reply: Reply, _: &Method) -> Result<(), Error> {
    match reply {
        Reply::Method(_) | Reply::Sent => Ok(()),
        other => Err(unexpected(other, "an acknowledgement")),
    }
}

fn message_count(reply: Reply, _: &Method) -> Result<u32, Error> {
    match reply {
        Reply::Method(method) => match *method {
            Method::QueuePurgeOk(m) => Ok(m.message_count),
            Method::QueueDeleteOk(m) => Ok(m.message_count),
            other => Err(unexpected(other, "a message count")),
        },
        Reply::Sent => Ok(0),
        other => Err(unexpected(other, "a message count")),
    }
}

pub(crate) fn exchange_declare(
    exchange: &str,
    kind: &ExchangeKind,
    options: ExchangeDeclareOptions,
    arguments: FieldTable,
) -> Result<Request<()>, Error> {
    Ok(Request {
        method: Method::ExchangeDeclare(ExchangeDeclare {
            exchange: short(exchange, "exchange")?,
            kind: short(kind.as_str(), "exchange type")?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            no_wait: options.no_wait,
            arguments,
        }),
        parse: done,
    })
}

pub(crate) fn exchange_delete(
    exchange: &str,
    options: ExchangeDeleteOptions,
) -> Result<Request<()>, Error> {
    Ok(Request {
        method: Method::ExchangeDelete(ExchangeDelete {
            exchange: short(exchange, "exchange")?,
            if_unused: options.if_unused,
            no_wait: options.no_wait,
        }),
        parse: done,
    })
}

/// The names of an exchange-to-exchange binding, checked.
fn exchange_binding(
    destination: &str,
    source: &str,
    routing_key: &str,
) -> Result<(ShortString, ShortString, ShortString), Error> {
    Ok((
        short(destination, "destination exchange")?,
        short(source, "source exchange")?,
        short(routing_key, "routing key")?,
    ))
}

pub(crate) fn exchange_bind(
    destination: &str,
    source: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<Request<()>, Error> {
    let (destination, source, routing_key) = exchange_binding(destination, source, routing_key)?;
    let bind = ExchangeBind {
        destination,
        source,
        routing_key,
        no_wait: false,
        arguments,
    };
    Ok(Request {
        method: Method::ExchangeBind(bind),
        parse: done,
    })
}

pub(crate) fn exchange_unbind(
    destination: &str,
    source: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<Request<()>, Error> {
    let (destination, source, routing_key) = exchange_binding(destination, source, routing_key)?;
    let unbind = ExchangeUnbind {
        destination,
        source,
        routing_key,
        no_wait: false,
        arguments,
    };
    Ok(Request {
        method: Method::ExchangeUnbind(unbind),
        parse: done,
    })
}

pub(crate) fn queue_declare(
    queue: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> Result<Request<QueueDeclareOk>, Error> {
    if options.no_wait && queue.is_empty() {
        return Err(Error::InvalidArgument(
            "a server-named queue (empty name) needs declare-ok: no_wait is not possible".into(),
        ));
    }
    Ok(Request {
        method: Method::QueueDeclare(QueueDeclare {
            queue: short(queue, "queue")?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            no_wait: options.no_wait,
            arguments,
        }),
        parse: |reply, sent| match (reply, sent) {
            (Reply::Method(method), _) => match *method {
                Method::QueueDeclareOk(ok) => Ok(ok),
                other => Err(unexpected(other, "queue.declare-ok")),
            },
            (Reply::Sent, Method::QueueDeclare(d)) => Ok(QueueDeclareOk {
                queue: d.queue.clone(),
                message_count: 0,
                consumer_count: 0,
            }),
            (other, _) => Err(unexpected(other, "queue.declare-ok")),
        },
    })
}

pub(crate) fn queue_bind(
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<Request<()>, Error> {
    Ok(Request {
        method: Method::QueueBind(QueueBind {
            queue: short(queue, "queue")?,
            exchange: short(exchange, "exchange")?,
            routing_key: short(routing_key, "routing key")?,
            no_wait: false,
            arguments,
        }),
        parse: done,
    })
}

pub(crate) fn queue_unbind(
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<Request<()>, Error> {
    Ok(Request {
        method: Method::QueueUnbind(QueueUnbind {
            queue: short(queue, "queue")?,
            exchange: short(exchange, "exchange")?,
            routing_key: short(routing_key, "routing key")?,
            arguments,
        }),
        parse: done,
    })
}

pub(crate) fn queue_purge(queue: &str) -> Result<Request<u32>, Error> {
    Ok(Request {
        method: Method::QueuePurge(QueuePurge {
            queue: short(queue, "queue")?,
            no_wait: false,
        }),
        parse: message_count,
    })
}

pub(crate) fn queue_delete(
    queue: &str,
    options: QueueDeleteOptions,
) -> Result<Request<u32>, Error> {
    Ok(Request {
        method: Method::QueueDelete(QueueDelete {
            queue: short(queue, "queue")?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            no_wait: options.no_wait,
        }),
        parse: message_count,
    })
}

pub(crate) fn basic_qos(prefetch_count: u16, prefetch_size: u32, global: bool) -> Request<()> {
    Request {
        method: Method::BasicQos(BasicQos {
            prefetch_size,
            prefetch_count,
            global,
        }),
        parse: done,
    }
}

/// Reads a consume's answer: the consumer tag.
pub(crate) type ConsumeReply = fn(Reply, &Method) -> Result<ShortString, Error>;

/// basic.consume; answers with the consumer tag (the broker's, if `tag` is empty).
pub(crate) fn basic_consume(
    queue: &str,
    tag: &str,
    options: ConsumeOptions,
    arguments: FieldTable,
) -> Result<(BasicConsume, ConsumeReply), Error> {
    if options.no_wait && tag.is_empty() {
        return Err(Error::InvalidArgument(
            "a no-wait consume needs a consumer tag: the broker's reply would carry it".into(),
        ));
    }
    let method = BasicConsume {
        queue: short(queue, "queue")?,
        consumer_tag: short(tag, "consumer tag")?,
        no_local: options.no_local,
        no_ack: options.no_ack,
        exclusive: options.exclusive,
        no_wait: options.no_wait,
        arguments,
    };
    let parse = |reply, sent: &Method| match (reply, sent) {
        (Reply::Method(method), _) => match *method {
            Method::BasicConsumeOk(ok) => Ok(ok.consumer_tag),
            other => Err(unexpected(other, "basic.consume-ok")),
        },
        (Reply::Sent, Method::BasicConsume(c)) => Ok(c.consumer_tag.clone()),
        (other, _) => Err(unexpected(other, "basic.consume-ok")),
    };
    Ok((method, parse))
}

pub(crate) fn basic_cancel(consumer_tag: &str) -> Result<Request<()>, Error> {
    Ok(Request {
        method: Method::BasicCancel(BasicCancel {
            consumer_tag: short(consumer_tag, "consumer tag")?,
            no_wait: false,
        }),
        parse: done,
    })
}

pub(crate) fn basic_get(
    queue: &str,
    no_ack: bool,
) -> Result<Request<Option<(Delivery, u32)>>, Error> {
    Ok(Request {
        method: Method::BasicGet(BasicGet {
            queue: short(queue, "queue")?,
            no_ack,
        }),
        parse: |reply, _| match reply {
            Reply::Get(message) => Ok(message.map(|boxed| *boxed)),
            other => Err(unexpected(other, "basic.get-ok or get-empty")),
        },
    })
}

pub(crate) fn basic_publish(
    exchange: &str,
    routing_key: &str,
    options: PublishOptions,
) -> Result<BasicPublish, Error> {
    Ok(BasicPublish {
        exchange: short(exchange, "exchange")?,
        routing_key: short(routing_key, "routing key")?,
        mandatory: options.mandatory,
        immediate: options.immediate,
    })
}

pub(crate) fn basic_recover(requeue: bool) -> Request<()> {
    Request {
        method: Method::BasicRecover(BasicRecover { requeue }),
        parse: done,
    }
}

pub(crate) fn confirm_select() -> Request<()> {
    Request {
        method: Method::ConfirmSelect(ConfirmSelect { nowait: false }),
        parse: done,
    }
}

pub(crate) fn tx_select() -> Request<()> {
    Request {
        method: Method::TxSelect(TxSelect),
        parse: done,
    }
}

pub(crate) fn tx_commit() -> Request<()> {
    Request {
        method: Method::TxCommit(TxCommit),
        parse: done,
    }
}

pub(crate) fn tx_rollback() -> Request<()> {
    Request {
        method: Method::TxRollback(TxRollback),
        parse: done,
    }
}

pub(crate) fn channel_flow(active: bool) -> Request<bool> {
    Request {
        method: Method::ChannelFlow(ChannelFlow { active }),
        parse: |reply, _| match reply {
            Reply::Method(method) => match *method {
                Method::ChannelFlowOk(ok) => Ok(ok.active),
                other => Err(unexpected(other, "channel.flow-ok")),
            },
            other => Err(unexpected(other, "channel.flow-ok")),
        },
    }
}

pub(crate) fn update_secret(new_secret: &str, reason: &str) -> Result<Request<()>, Error> {
    Ok(Request {
        method: Method::ConnectionUpdateSecret(ConnectionUpdateSecret {
            new_secret: LongString::from(new_secret),
            reason: short(reason, "reason")?,
        }),
        parse: done,
    })
}

/// A publisher confirm's outcome.
pub(crate) fn confirmation(reply: Reply) -> Result<Confirmation, Error> {
    match reply {
        Reply::Confirmed(c) => Ok(c),
        Reply::Sent => Err(Error::InvalidArgument(
            "the channel is not in confirm mode: call confirm_select first".into(),
        )),
        other => Err(unexpected(other, "a publisher confirm")),
    }
}
