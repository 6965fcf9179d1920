//! `warren publish` and `warren consume`: one message out, messages in, in
//! the manner of the amqp-tools commands `amqp-publish` and `amqp-consume`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use warren::options::{ConsumeOptions, PublishOptions};
use warren::protocol::{BasicProperties, FieldTable, ShortString};
use warren::{Confirmation, Error};

use crate::{catch_ctrl_c, interrupted, parse_uri, Failure, Outcome, Target, DEFAULT_URI};

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// The broker: amqp://user:password@host:port/vhost (`/` as `%2f`).
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri, value_name = "URI")]
    uri: Target,
    /// The exchange; the default exchange (``) routes by queue name.
    #[arg(long, short, default_value = "")]
    exchange: String,
    /// The routing key (with the default exchange: the queue's name).
    #[arg(long, short)]
    routing_key: String,
    /// The body, as text.
    #[arg(long, short, conflicts_with = "file")]
    body: Option<String>,
    /// Read the body from this file (`-`: stdin). With neither --body nor
    /// --file, the body is read from stdin.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// The content-type property, e.g. text/plain.
    #[arg(long, short = 'C')]
    content_type: Option<String>,
    /// Mark the message persistent (delivery-mode 2).
    #[arg(long, short)]
    persistent: bool,
    /// A header, NAME=VALUE (the value is sent as a string); repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Fail (status 1) if no queue takes the message. Implies --confirm, which
    /// is how warren knows the broker has routed it, or returned it.
    #[arg(long, short)]
    mandatory: bool,
    /// Wait for the broker's publisher confirm; fail (status 1) on a nack.
    #[arg(long)]
    confirm: bool,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err("expected NAME=VALUE".to_string()),
    }
}

pub(crate) fn publish(args: PublishArgs) -> Outcome {
    let body = match (&args.body, &args.file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() != "-" => std::fs::read(path)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?,
        (None, _) => {
            let mut body = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut body)
                .map_err(|e| Failure::new(format!("cannot read stdin: {e}")))?;
            body
        }
    };
    let mut properties = BasicProperties::default();
    if let Some(content_type) = &args.content_type {
        let content_type = ShortString::try_from(content_type.as_str())
            .map_err(|e| Failure::new(format!("--content-type: {e}")))?;
        properties = properties.with_content_type(content_type);
    }
    if args.persistent {
        properties = properties.with_delivery_mode(2);
    }
    if !args.headers.is_empty() {
        let mut headers = FieldTable::new();
        for (name, value) in &args.headers {
            headers
                .insert(name.as_str(), value.as_str())
                .map_err(|e| Failure::new(format!("--header {name}: {e}")))?;
        }
        properties = properties.with_headers(headers);
    }
    let options = PublishOptions {
        mandatory: args.mandatory,
        ..Default::default()
    };
    let failed = |e: Error| Failure::new(format!("publish: {e}"));

    let connection = args.uri.connect()?;
    let channel = connection.open_channel().map_err(failed)?;
    if args.confirm || args.mandatory {
        channel.confirm_select().map_err(failed)?;
        let confirmation = channel
            .basic_publish_confirmed(&args.exchange, &args.routing_key, options, properties, body)
            .and_then(|confirm| confirm.wait())
            .map_err(failed)?;
        match confirmation {
            Confirmation::Ack => {}
            Confirmation::Nack => {
                return Err(Failure::new("publish: the broker nacked the message"));
            }
            Confirmation::Returned(returned) => {
                return Err(Failure::new(format!(
                    "publish: the broker returned the message: {} {} (exchange {:?}, routing key {:?})",
                    returned.reply_code,
                    returned.reply_text,
                    returned.exchange.as_str().unwrap_or_default(),
                    returned.routing_key.as_str().unwrap_or_default(),
                )));
            }
        }
    } else {
        channel
            .basic_publish(&args.exchange, &args.routing_key, options, properties, body)
            .map_err(failed)?;
    }
    // Without confirms, a round trip tells whether the broker refused the
    // publish (an exchange that does not exist closes the channel with 404):
    // the answer comes after the broker has handled the publish. (basic.qos
    // is harmless on a channel that consumes nothing; channel.close would
    // not do, as warren's close() answers Ok when the broker's close crosses
    // ours.)
    channel.basic_qos(0, false).map_err(failed)?;
    channel.close().map_err(failed)?;
    connection.close().map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(crate) struct ConsumeArgs {
    /// The broker: amqp://user:password@host:port/vhost (`/` as `%2f`).
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri, value_name = "URI")]
    uri: Target,
    /// The queue to consume from (it must exist).
    #[arg(long, short)]
    queue: String,
    /// Stop after this many messages (default: run until Ctrl-C, or until the
    /// broker cancels the consumer, e.g. because the queue was deleted).
    #[arg(long, short)]
    count: Option<u64>,
    /// Let the broker consider messages acknowledged as it sends them. With
    /// --count, messages sent beyond the count are lost.
    #[arg(long)]
    no_ack: bool,
    /// Unacknowledged messages the broker may send ahead (basic.qos; 0: no
    /// limit). Each message is acknowledged once its line is written.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Print bodies as hex instead of text.
    #[arg(long)]
    hex: bool,
}

/// One line per message: the body as UTF-8 (invalid sequences replaced,
/// control characters such as newlines escaped as in Rust strings) or hex.
pub(crate) fn consume(args: ConsumeArgs) -> Outcome {
    catch_ctrl_c();
    let failed = |e: Error| Failure::new(format!("consume: {e}"));
    let connection = args.uri.connect()?;
    let channel = connection.open_channel().map_err(failed)?;
    if !args.no_ack {
        // No point in taking more than --count ahead.
        let count = args.count.map_or(u64::MAX, |count| count.max(1));
        let prefetch = match args.prefetch {
            0 => count.min(u64::from(u16::MAX)) as u16,
            prefetch => count.min(u64::from(prefetch)) as u16,
        };
        if args.prefetch != 0 || count < u64::MAX {
            channel.basic_qos(prefetch, false).map_err(failed)?;
        }
    }
    let options = ConsumeOptions {
        no_ack: args.no_ack,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(&args.queue, "", options, FieldTable::new())
        .map_err(failed)?;
    let mut out = io::stdout().lock();
    let mut received = 0;
    while args.count.is_none_or(|count| received < count) && !interrupted() {
        let delivery = match consumer.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(delivery)) => delivery,
            Ok(None) => continue,
            Err(Error::ConsumerCancelled { .. }) => {
                eprintln!("warren: the broker cancelled the consumer (was the queue deleted?)");
                break;
            }
            Err(e) => return Err(failed(e)),
        };
        let line = if args.hex {
            delivery.body.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            printable(&delivery.body)
        };
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`| head -1`): stop, leaving the message
            // unacknowledged, so the broker requeues it.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(Failure::new(format!("cannot write output: {e}"))),
        }
        if !args.no_ack {
            channel
                .basic_ack(delivery.delivery_tag, false)
                .map_err(failed)?;
        }
        received += 1;
    }
    drop(consumer);
    connection.close().map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

fn printable(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(char::is_control) {
        return text.into_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_prints_on_one_line() {
        assert_eq!(printable(b"hello"), "hello");
        assert_eq!(printable(b"a\nb\tc\x1b"), "a\\nb\\tc\\u{1b}");
        assert_eq!(printable(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }

    #[test]
    fn headers_need_a_name_and_an_equals_sign() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), String::new())));
        assert!(parse_header("=b").is_err());
        assert!(parse_header("ab").is_err());
    }
}
