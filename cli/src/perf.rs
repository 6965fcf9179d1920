//! `warren perf`: a load generator in the manner of RabbitMQ's PerfTest, on
//! warren's blocking API (one thread per producer and per consumed queue).
//!
//! - The tool declares its queues, `warren-perf-<pid>-<i>` (not durable, not
//!   exclusive, not auto-delete), and deletes them at the end: after a normal
//!   run, an error, or Ctrl-C (a second Ctrl-C exits at once and leaves them).
//!   With `--queue NAME` it uses that one queue instead (declared if missing)
//!   and keeps it, so producers and consumers can run in separate processes.
//! - Each producer has its own connection and one channel, and publishes to
//!   the default exchange with the queue's name as routing key. With
//!   `--confirm N` the channel is in confirm mode and at most N messages
//!   are unconfirmed at a time (the producer waits for the oldest).
//! - Each consumer has its own connection and, for each queue it consumes
//!   from, one channel and one thread (the blocking API waits on one
//!   consumer at a time). Prefetch (basic.qos) is per channel.
//! - With `--queues N`, queue `q` is published to by producer `q % P` and
//!   consumed by consumer `q % C`, so every queue has at least one of each;
//!   with more producers (consumers) than queues, producer `p` publishes to
//!   queue `p % N`. A producer with several queues publishes to them in turn.
//! - A body is 8 bytes of send time (nanoseconds since the Unix epoch, big
//!   endian), 4 bytes of sequence number, then zeros up to `--size`. A
//!   consumer's latency is its clock minus the send time, so producers and
//!   consumers on different hosts need synchronised clocks.
//!
//! Output: one progress line a second on stderr, then a summary on stdout
//! (a table, or with `--json` one JSON object; `--json` also prints one JSON
//! object a second on stdout, one per line, before it). Both carry the
//! tool's own resident memory (on Linux): the progress its current RSS, the
//! summary its peak.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use serde::Serialize;
use warren::blocking::{Channel, Connection, PublishConfirm};
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use warren::protocol::{BasicProperties, FieldTable};
use warren::{Confirmation, Error};

use crate::histogram::Histogram;
use crate::{catch_ctrl_c, interrupted, parse_uri, Failure, Outcome, Target, DEFAULT_URI};

/// Bytes of a body that carry the send time and sequence number.
const STAMP: u64 = 12;
/// How long consumers may go without a message, once every producer is
/// done, before a `--messages` run gives up waiting for the rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Worker threads need little stack; `--queues 1000` means 1,000 of them.
const STACK_SIZE: usize = 512 * 1024;

/// Starts a worker thread in `scope`; failing to, stops the run.
fn spawn<'scope>(
    scope: &'scope thread::Scope<'scope, '_>,
    name: String,
    run: &Run,
    work: impl FnOnce() + Send + 'scope,
) {
    let spawned = thread::Builder::new()
        .name(name)
        .stack_size(STACK_SIZE)
        .spawn_scoped(scope, work);
    if let Err(e) = spawned {
        run.fail(format!("cannot start a thread: {e}"));
    }
}

#[derive(Args)]
pub(crate) struct PerfArgs {
    /// The broker: amqp://user:password@host:port/vhost (`/` as `%2f`).
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri, value_name = "URI")]
    uri: Target,
    /// Producers, each with its own connection.
    #[arg(long, short = 'x', default_value_t = 1, value_name = "N")]
    producers: u32,
    /// Consumers, each with its own connection (and a channel per queue).
    #[arg(long, short = 'y', default_value_t = 1, value_name = "N")]
    consumers: u32,
    /// Message body size; the first 12 bytes carry a timestamp and a sequence number.
    #[arg(long, short = 's', default_value_t = 16, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(STAMP..=512 * 1024 * 1024))]
    size: u64,
    /// Unacknowledged messages the broker may send ahead to each consumer
    /// channel (basic.qos; 0: no limit). Ignored with --auto-ack.
    #[arg(long, short = 'q', default_value_t = 1000, value_name = "N")]
    prefetch: u16,
    /// Publisher confirms, with at most N unconfirmed messages per producer
    /// (0: no confirms).
    #[arg(long, short = 'c', default_value_t = 0, value_name = "N")]
    confirm: u32,
    /// Consume without acknowledgements (the broker forgets a message as it
    /// sends it).
    #[arg(long, short = 'a')]
    auto_ack: bool,
    /// With manual acks, acknowledge every Nth message with multiple=true
    /// (1: ack each message on its own). Capped at --prefetch; pending acks
    /// are also sent when a consumer has been idle for 100 ms.
    #[arg(long, short = 'A', default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    multiple_ack_every: u32,
    /// Queues to spread producers and consumers over, round robin.
    #[arg(long, short = 'Q', default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    queues: u32,
    /// Use this one queue (declared if missing) and keep it at the end,
    /// instead of queues of the tool's own: lets producers and consumers
    /// run in separate processes.
    #[arg(long, short = 'u', value_name = "NAME", conflicts_with = "queues")]
    queue: Option<String>,
    /// Run for this long, in seconds (default 10, unless --messages is given).
    #[arg(long, short = 'z', value_name = "SECS", value_parser = parse_seconds,
          conflicts_with = "messages")]
    duration: Option<Duration>,
    /// Messages each producer sends; the run ends once consumers have
    /// received them all.
    #[arg(long, short = 'C', value_name = "N")]
    messages: Option<u64>,
    /// Messages the consumers receive in all; the run ends once they have
    /// (with producers, once these are also done).
    #[arg(long, short = 'D', value_name = "N", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    consumer_messages: Option<u64>,
    /// Messages per second, per producer (0: as fast as possible).
    #[arg(long, short = 'r', default_value_t = 0.0, value_name = "MSGS_PER_SEC",
          value_parser = parse_rate)]
    rate: f64,
    /// Publish persistent messages (delivery-mode 2).
    #[arg(long)]
    persistent: bool,
    /// Print JSON on stdout: one object per second, then the summary.
    #[arg(long)]
    json: bool,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
        }
        _ => Err("expected a number of seconds above 0".into()),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate >= 0.0 && rate.is_finite() => Ok(rate),
        _ => Err("expected a number of messages per second, 0 or more".into()),
    }
}

/// The settings every worker reads.
struct Settings {
    target: Target,
    size: usize,
    prefetch: u16,
    confirm: usize,
    auto_ack: bool,
    ack_every: u32,
    messages: Option<u64>,
    rate: f64,
    properties: BasicProperties,
}

/// One worker's counters, on a cache line of its own. A producer counts
/// sent, confirmed and nacked; a consumer thread received and latencies.
#[repr(align(128))]
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    received: AtomicU64,
    latency: Mutex<Histogram>,
    /// When the producer finished (confirms included), or when the consumer
    /// got its last message: nanoseconds since the Unix epoch.
    finished_at: AtomicU64,
}

/// Adds one to a counter only its own thread writes.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the workers and the main thread share about the run.
#[derive(Default)]
struct Run {
    stop: AtomicBool,
    ready: AtomicUsize,
    producers_done: AtomicUsize,
    /// Workers whose counts are final.
    finished: AtomicUsize,
    /// Opened once every worker is ready (or the run is abandoned).
    gate: Mutex<bool>,
    opened: Condvar,
    /// The start, as nanoseconds since the Unix epoch.
    start: OnceLock<(Instant, u64)>,
    /// The first worker error.
    error: Mutex<Option<String>>,
}

impl Run {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn fail(&self, what: String) {
        lock(&self.error).get_or_insert(what);
        self.stop.store(true, Ordering::Relaxed);
        self.open_gate();
    }

    fn open_gate(&self) {
        *lock(&self.gate) = true;
        self.opened.notify_all();
    }

    /// Reports ready and waits for the start; `None` if the run was
    /// abandoned before it started.
    fn ready_and_wait(&self) -> Option<(Instant, u64)> {
        self.ready.fetch_add(1, Ordering::Relaxed);
        let mut open = lock(&self.gate);
        while !*open {
            open = self
                .opened
                .wait(open)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        drop(open);
        if self.stopped() {
            None
        } else {
            self.start.get().copied()
        }
    }
}

/// Counts a worker as finished when dropped (early returns and panics
/// included).
struct Finished<'a>(&'a Run);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The queues of a run; deletes them when dropped, whatever happened,
/// unless the user named them.
struct Queues<'a> {
    target: &'a Target,
    admin: Option<Connection>,
    names: Vec<String>,
    keep: bool,
}

impl<'a> Queues<'a> {
    fn declare(target: &'a Target, count: u32) -> Result<Queues<'a>, Failure> {
        let admin = target.connect()?;
        let channel = admin.open_channel().map_err(declare_failed)?;
        let mut queues = Queues {
            target,
            admin: Some(admin),
            names: Vec::new(),
            keep: false,
        };
        // Pipelined: no_wait for all but the last, whose declare-ok comes
        // after the others were done (a failure closes the channel, so the
        // last call reports it).
        let pid = std::process::id();
        for i in 0..count {
            let name = format!("warren-perf-{pid}-{i}");
            queues.names.push(name.clone());
            let options = QueueDeclareOptions {
                no_wait: i + 1 < count,
                ..Default::default()
            };
            channel
                .queue_declare(&name, options, FieldTable::new())
                .map_err(declare_failed)?;
        }
        channel.close().map_err(declare_failed)?;
        Ok(queues)
    }

    /// The user's queue, declared if missing (a queue of that name with
    /// other settings is an error from the broker), and kept.
    fn declare_named(target: &'a Target, name: &str) -> Result<Queues<'a>, Failure> {
        let admin = target.connect()?;
        let channel = admin.open_channel().map_err(declare_failed)?;
        channel
            .queue_declare(name, QueueDeclareOptions::default(), FieldTable::new())
            .map_err(declare_failed)?;
        channel.close().map_err(declare_failed)?;
        closed(admin.close(), "setup");
        Ok(Queues {
            target,
            admin: None,
            names: vec![name.to_string()],
            keep: true,
        })
    }
}

fn declare_failed(e: Error) -> Failure {
    Failure::new(format!("cannot declare the queues: {e}"))
}

impl Drop for Queues<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() || self.keep {
            return;
        }
        // The connection may have died during the run: then use a new one.
        let channel = |admin: &Option<Connection>| admin.as_ref()?.open_channel().ok();
        let mut open = channel(&self.admin);
        if open.is_none() {
            self.admin = self.target.connect().ok();
            open = channel(&self.admin);
        }
        // Deletes pipelined: no_wait for all but the last, whose delete-ok
        // says the others were done (a failed one closes the channel, so the
        // last call reports it).
        let result = open
            .ok_or_else(|| "no connection".to_string())
            .and_then(|channel| {
                let last = self.names.len() - 1;
                for (i, name) in self.names.iter().enumerate() {
                    let options = QueueDeleteOptions {
                        no_wait: i < last,
                        ..Default::default()
                    };
                    channel
                        .queue_delete(name, options)
                        .map_err(|e| format!("{name}: {e}"))?;
                }
                Ok(())
            });
        if let Err(e) = result {
            eprintln!(
                "warren: could not delete the queues warren-perf-{}-*: {e}",
                std::process::id()
            );
        }
        if let Some(admin) = self.admin.take() {
            let _ = admin.close();
        }
    }
}

/// The queues worker `index` of `workers` uses (see the module docs).
fn share(index: u32, workers: u32, queues: &[String]) -> Vec<&str> {
    let count = queues.len() as u32;
    if workers >= count {
        vec![&queues[(index % count) as usize]]
    } else {
        (index..count)
            .step_by(workers as usize)
            .map(|q| queues[q as usize].as_str())
            .collect()
    }
}

pub(crate) fn run(args: PerfArgs) -> Outcome {
    if args.producers == 0 && args.consumers == 0 {
        return Err(Failure::usage(
            "perf needs at least one producer or consumer",
        ));
    }
    if args.consumer_messages.is_some() && args.consumers == 0 {
        return Err(Failure::usage("--consumer-messages needs a consumer"));
    }
    let duration = match (args.duration, args.messages, args.consumer_messages) {
        (Some(duration), _, _) => Some(duration),
        (None, None, None) => Some(Duration::from_secs(10)),
        (None, _, _) => None,
    };
    let ack_every = match args.prefetch {
        0 => args.multiple_ack_every,
        prefetch => args.multiple_ack_every.min(u32::from(prefetch)),
    };
    let mut properties = BasicProperties::default();
    if args.persistent {
        properties = properties.with_delivery_mode(2);
    }
    let settings = Settings {
        target: args.uri.clone(),
        size: args.size as usize,
        prefetch: args.prefetch,
        confirm: args.confirm as usize,
        auto_ack: args.auto_ack,
        ack_every,
        messages: args.messages,
        rate: args.rate,
        properties,
    };
    catch_ctrl_c();
    let queues = match &args.queue {
        Some(name) => Queues::declare_named(&args.uri, name)?,
        None => Queues::declare(&args.uri, args.queues)?,
    };

    let producers: Vec<Vec<&str>> = (0..args.producers)
        .map(|p| share(p, args.producers, &queues.names))
        .collect();
    let consumers: Vec<Vec<&str>> = (0..args.consumers)
        .map(|c| share(c, args.consumers, &queues.names))
        .collect();
    let consumed: usize = consumers.iter().map(Vec::len).sum();
    let producer_stats: Vec<Stats> = producers.iter().map(|_| Stats::default()).collect();
    let consumer_stats: Vec<Stats> = (0..consumed).map(|_| Stats::default()).collect();
    let run = Run::default();
    let shape = describe(&args, &settings, duration);
    if !args.json {
        eprintln!("warren perf: {shape}");
    }

    let summary = thread::scope(|s| {
        let mut next_stats = consumer_stats.iter();
        for (c, queues) in consumers.iter().enumerate() {
            let stats: Vec<&Stats> = next_stats.by_ref().take(queues.len()).collect();
            let (settings, run) = (&settings, &run);
            spawn(s, format!("consumer-{c}"), run, move || {
                consumer(c, queues, &stats, settings, run)
            });
        }
        for (p, (queues, stats)) in producers.iter().zip(&producer_stats).enumerate() {
            let (settings, run) = (&settings, &run);
            spawn(s, format!("producer-{p}"), run, move || {
                if let Err(e) = producer(queues, stats, settings, run) {
                    run.fail(format!("producer {p}: {e}"));
                }
            });
        }
        let reporter = Reporter {
            args: &args,
            run: &run,
            producers: &producer_stats,
            consumers: &consumer_stats,
        };
        let workers = producers.len() + consumed;
        let report = reporter.watch(workers, duration);
        run.stop.store(true, Ordering::Relaxed);
        run.open_gate();
        // The summary comes as soon as every worker has its final counts,
        // before the connections are closed (which can take seconds while
        // the broker reads a backlog of publishes).
        while run.finished.load(Ordering::Relaxed) < workers && lock(&run.error).is_none() {
            thread::sleep(Duration::from_millis(5));
        }
        let mut report = report?;
        if lock(&run.error).is_some() {
            return None;
        }
        report.finish(&producer_stats, &consumer_stats);
        let summary = report.summary(&args, &settings);
        let mut out = std::io::stdout().lock();
        let printed = if args.json {
            writeln!(out, "{}", json(&summary))
        } else {
            write!(out, "{}", summary.table(&shape))
        };
        let _ = printed.and_then(|()| out.flush());
        Some(summary)
    });

    if let Some(error) = lock(&run.error).take() {
        return Err(Failure::new(error));
    }
    let Some(summary) = summary else {
        return Ok(ExitCode::SUCCESS); // Ctrl-C before the start
    };
    drop(queues);
    let expected = summary.sent;
    if args.messages.is_some()
        && args.consumers > 0
        && summary.received < expected
        && !interrupted()
    {
        return Err(Failure::new(format!(
            "only {} of the {expected} messages sent were received",
            summary.received
        )));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(args: &PerfArgs, settings: &Settings, duration: Option<Duration>) -> String {
    let plural = |n: u32, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let queues = match &args.queue {
        Some(name) => format!("queue {name}"),
        None => plural(args.queues, "queue"),
    };
    let mut text = format!(
        "{}, {}, {queues}, {}-byte messages",
        plural(args.producers, "producer"),
        plural(args.consumers, "consumer"),
        args.size
    );
    if args.persistent {
        text.push_str(" (persistent)");
    }
    match settings.confirm {
        0 => text.push_str(", no confirms"),
        n => {
            let _ = write!(text, ", confirms (window {n})");
        }
    }
    if args.consumers > 0 {
        if args.auto_ack {
            text.push_str(", auto-ack");
        } else {
            let prefetch = match args.prefetch {
                0 => "no limit".to_string(),
                n => n.to_string(),
            };
            let acks = match settings.ack_every {
                1 => "single acks".to_string(),
                n => format!("multiple ack every {n}"),
            };
            let _ = write!(text, ", {acks}, prefetch {prefetch}");
        }
    }
    if args.rate > 0.0 {
        let _ = write!(text, ", {} msg/s per producer", args.rate);
    }
    if let Some(duration) = duration {
        let _ = write!(text, ", for {} s", duration.as_secs_f64());
    }
    if let Some(n) = args.messages {
        let _ = write!(text, ", {n} messages per producer");
    }
    if let Some(n) = args.consumer_messages {
        let _ = write!(text, ", {n} messages received in all");
    }
    text
}

/// Publishes until the run stops or `--messages` are sent, then waits for
/// the confirms still outstanding.
fn producer(queues: &[&str], stats: &Stats, settings: &Settings, run: &Run) -> Result<(), String> {
    let finished = Finished(run);
    let connection = settings.target.connect().map_err(|f| f.message)?;
    let channel = connection.open_channel().map_err(|e| e.to_string())?;
    if settings.confirm > 0 {
        channel.confirm_select().map_err(|e| e.to_string())?;
    }
    let Some((start, _)) = run.ready_and_wait() else {
        return Ok(());
    };
    let mut window: VecDeque<PublishConfirm> = VecDeque::with_capacity(settings.confirm);
    let settle = |confirm: PublishConfirm| -> Result<(), Error> {
        match confirm.wait()? {
            Confirmation::Nack => bump(&stats.nacked),
            Confirmation::Ack | Confirmation::Returned(_) => bump(&stats.confirmed),
        }
        Ok(())
    };
    let mut buffer = BytesMut::new();
    let mut sent: u64 = 0;
    let result = (|| -> Result<(), Error> {
        while !run.stopped() && settings.messages.is_none_or(|limit| sent < limit) {
            if settings.rate > 0.0 && !pace(start, sent, settings.rate, run) {
                break;
            }
            let body = next_body(&mut buffer, settings.size, sent as u32);
            let queue = queues[(sent % queues.len() as u64) as usize];
            let properties = settings.properties.clone();
            if settings.confirm > 0 {
                if window.len() >= settings.confirm {
                    window.pop_front().map(settle).transpose()?;
                }
                let options = PublishOptions::default();
                window.push_back(
                    channel.basic_publish_confirmed("", queue, options, properties, body)?,
                );
            } else if !publish(&channel, queue, properties, body, run)? {
                break;
            }
            sent += 1;
            bump(&stats.sent);
        }
        window.drain(..).try_for_each(settle)
    })();
    stats.finished_at.store(unix_nanos(), Ordering::Relaxed);
    run.producers_done.fetch_add(1, Ordering::Relaxed);
    drop(finished);
    result.map_err(|e| e.to_string())?;
    closed(connection.close(), "producer");
    Ok(())
}

/// Closing a connection at the end of a run can time out when the broker
/// is still reading a backlog of publishes; that is no reason to fail the
/// run (the counts are in), but anything else is worth a warning.
fn closed(result: Result<(), Error>, whose: &str) {
    match result {
        Ok(()) | Err(Error::Timeout { .. }) => {}
        Err(e) => eprintln!("warren: warning: closing a {whose} connection: {e}"),
    }
}

/// Publishes without a confirm, waiting for room in the write buffer (or for
/// the broker to unblock the connection) no longer than the run lasts:
/// `false` if the run stopped first.
fn publish(
    channel: &Channel,
    queue: &str,
    properties: BasicProperties,
    body: Bytes,
    run: &Run,
) -> Result<bool, Error> {
    let options = PublishOptions::default();
    loop {
        let wait = Duration::from_millis(100);
        match channel.basic_publish_timeout(
            "",
            queue,
            options,
            properties.clone(),
            body.clone(),
            wait,
        ) {
            Ok(()) => return Ok(true),
            Err(Error::Timeout { .. }) if run.stopped() => return Ok(false),
            Err(Error::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps until message `sent` is due; `false` if the run stopped meanwhile.
fn pace(start: Instant, sent: u64, rate: f64, run: &Run) -> bool {
    let due = start + Duration::from_secs_f64(sent as f64 / rate);
    loop {
        if run.stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        thread::sleep((due - now).min(Duration::from_millis(100)));
    }
}

/// The send time, the sequence number, then zeros up to `size`. Bodies are
/// cut from a shared 64 KiB block, so small ones cost no allocation each.
fn next_body(buffer: &mut BytesMut, size: usize, sequence: u32) -> Bytes {
    if buffer.capacity() < size {
        *buffer = BytesMut::with_capacity(size.max(64 * 1024));
    }
    buffer.put_u64(unix_nanos());
    buffer.put_u32(sequence);
    buffer.put_bytes(0, size - STAMP as usize);
    buffer.split().freeze()
}

/// One consumer: a connection, and a thread and channel per queue.
fn consumer(c: usize, queues: &[&str], stats: &[&Stats], settings: &Settings, run: &Run) {
    let connection = match settings.target.connect() {
        Ok(connection) => connection,
        Err(failure) => {
            // Stops the run: the main thread no longer waits for it to be ready.
            run.fail(format!("consumer {c}: {}", failure.message));
            return;
        }
    };
    thread::scope(|s| {
        for (queue, stats) in queues.iter().zip(stats) {
            let connection = &connection;
            spawn(s, format!("consumer-{c}-{queue}"), run, move || {
                if let Err(e) = consume_queue(connection, queue, stats, settings, run) {
                    run.fail(format!("consumer {c} on {queue}: {e}"));
                }
            });
        }
    });
    closed(connection.close(), "consumer");
}

fn consume_queue(
    connection: &Connection,
    queue: &str,
    stats: &Stats,
    settings: &Settings,
    run: &Run,
) -> Result<(), Error> {
    let finished = Finished(run);
    let channel = connection.open_channel()?;
    if !settings.auto_ack && settings.prefetch > 0 {
        channel.basic_qos(settings.prefetch, false)?;
    }
    let options = ConsumeOptions {
        no_ack: settings.auto_ack,
        ..Default::default()
    };
    let consumer = channel.basic_consume(queue, "", options, FieldTable::new())?;
    if run.ready_and_wait().is_none() {
        return Ok(());
    }
    let mut acks = Acks {
        channel: &channel,
        every: settings.ack_every,
        pending: 0,
        last_tag: 0,
    };
    let mut last = 0;
    while !run.stopped() {
        let Some(delivery) = consumer.recv_timeout(Duration::from_millis(100))? else {
            acks.flush()?; // idle: settle what is pending
            continue;
        };
        let now = unix_nanos();
        if let Some(stamp) = delivery.body.get(..8) {
            let sent = u64::from_be_bytes(stamp.try_into().unwrap_or_default());
            lock(&stats.latency).record(now.saturating_sub(sent));
        }
        bump(&stats.received);
        last = now;
        if !settings.auto_ack {
            acks.delivered(delivery.delivery_tag)?;
        }
    }
    stats.finished_at.store(last, Ordering::Relaxed);
    let flushed = acks.flush();
    drop(finished);
    flushed?;
    drop(consumer);
    channel.close()
}

/// Manual acks, one `multiple` ack every `every` deliveries.
struct Acks<'a> {
    channel: &'a Channel,
    every: u32,
    pending: u32,
    last_tag: u64,
}

impl Acks<'_> {
    fn delivered(&mut self, tag: u64) -> Result<(), Error> {
        self.pending += 1;
        self.last_tag = tag;
        if self.pending >= self.every {
            self.channel.basic_ack(tag, self.every > 1)?;
            self.pending = 0;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.pending > 0 {
            self.channel.basic_ack(self.last_tag, true)?;
            self.pending = 0;
        }
        Ok(())
    }
}

/// Counter totals at one moment.
#[derive(Default, Clone, Copy)]
struct Totals {
    sent: u64,
    confirmed: u64,
    nacked: u64,
    received: u64,
}

impl Totals {
    fn of(producers: &[Stats], consumers: &[Stats]) -> Totals {
        let sum = |stats: &[Stats], field: fn(&Stats) -> &AtomicU64| {
            stats.iter().map(|s| field(s).load(Ordering::Relaxed)).sum()
        };
        Totals {
            sent: sum(producers, |s| &s.sent),
            confirmed: sum(producers, |s| &s.confirmed),
            nacked: sum(producers, |s| &s.nacked),
            received: sum(consumers, |s| &s.received),
        }
    }
}

/// The main thread's side of a run: starts it, prints progress, decides
/// when it ends.
struct Reporter<'a> {
    args: &'a PerfArgs,
    run: &'a Run,
    producers: &'a [Stats],
    consumers: &'a [Stats],
}

/// What the main thread saw; `finish` adds what the workers left.
struct Report {
    start: Instant,
    start_unix: u64,
    end: Instant,
    totals: Totals,
    latency: Histogram,
    publish_seconds: f64,
    consume_seconds: f64,
}

impl Reporter<'_> {
    /// Waits for `workers` to be ready, starts the run and reports each
    /// second until it ends. `None` if it never started.
    fn watch(&self, workers: usize, duration: Option<Duration>) -> Option<Report> {
        while self.run.ready.load(Ordering::Relaxed) < workers {
            if self.run.stopped() || interrupted() {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        let start_unix = unix_nanos();
        let _ = self.run.start.set((start, start_unix));
        self.run.open_gate();

        let deadline = duration.map(|duration| start + duration);
        let mut latency = Histogram::default();
        let mut interval = Histogram::default();
        let mut previous = (start, Totals::default());
        let mut second = 1;
        let mut progress = (Instant::now(), 0);
        loop {
            let tick = start + Duration::from_secs(second);
            let now = Instant::now();
            let wake = deadline.map_or(tick, |deadline| deadline.min(tick));
            thread::sleep(
                wake.saturating_duration_since(now)
                    .min(Duration::from_millis(50)),
            );
            let now = Instant::now();
            let totals = Totals::of(self.producers, self.consumers);
            if totals.received != progress.1 {
                progress = (now, totals.received);
            }
            let producers_done =
                self.run.producers_done.load(Ordering::Relaxed) == self.producers.len();
            let consumers_done = match self.args.consumer_messages {
                Some(wanted) => totals.received >= wanted,
                None => {
                    self.consumers.is_empty()
                        || totals.received >= totals.sent
                        || now - progress.0 >= DRAIN_TIMEOUT
                }
            };
            let ended = self.run.stopped()
                || interrupted()
                || deadline.is_some_and(|deadline| now >= deadline)
                || (deadline.is_none() && producers_done && consumers_done);
            if now >= tick {
                self.drain_latencies(&mut interval);
                latency.add(&interval);
                self.progress(second, now - previous.0, &previous.1, &totals, &interval);
                interval.clear();
                previous = (now, totals);
                second += 1;
            }
            if ended {
                return Some(Report {
                    start,
                    start_unix,
                    end: now,
                    totals,
                    latency,
                    publish_seconds: 0.0,
                    consume_seconds: 0.0,
                });
            }
        }
    }

    fn drain_latencies(&self, into: &mut Histogram) {
        for stats in self.consumers {
            let mut latency = lock(&stats.latency);
            into.add(&latency);
            latency.clear();
        }
    }

    fn progress(
        &self,
        second: u64,
        elapsed: Duration,
        before: &Totals,
        now: &Totals,
        latency: &Histogram,
    ) {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let rate = |after: u64, before: u64| (after - before) as f64 / seconds;
        let sent = rate(now.sent, before.sent);
        let confirmed = rate(now.confirmed, before.confirmed);
        let received = rate(now.received, before.received);
        let mut line = format!("time {second}s, sent {sent:.0} msg/s");
        if self.args.confirm > 0 {
            let _ = write!(line, ", confirmed {confirmed:.0} msg/s");
            let nacked = now.nacked - before.nacked;
            if nacked > 0 {
                let _ = write!(line, ", nacked {nacked}");
            }
        }
        let _ = write!(line, ", received {received:.0} msg/s");
        match (latency.percentile(50.0), latency.percentile(99.0)) {
            (Some(p50), Some(p99)) => {
                let _ = write!(line, ", latency p50 {} ms p99 {} ms", ms(p50), ms(p99));
            }
            _ => line.push_str(", latency -"),
        }
        let rss_kib = memory_kib("VmRSS");
        if let Some(kib) = rss_kib {
            let _ = write!(line, ", rss {}", mib(kib));
        }
        let _ = writeln!(std::io::stderr(), "{line}");
        if self.args.json {
            let object = Progress {
                kind: "progress",
                time: second,
                sent_per_second: round(sent, 1),
                confirmed_per_second: round(confirmed, 1),
                received_per_second: round(received, 1),
                received: now.received,
                latency_ms: LatencyMs::of(latency),
                rss_kib,
                peak_rss_kib: memory_kib("VmHWM"),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", json(&object)).and_then(|()| out.flush());
        }
    }
}

impl Report {
    /// Adds what the workers counted after the main thread's last look,
    /// and the times they finished.
    fn finish(&mut self, producers: &[Stats], consumers: &[Stats]) {
        self.totals = Totals::of(producers, consumers);
        for stats in consumers {
            self.latency.add(&lock(&stats.latency));
        }
        let run_seconds = (self.end - self.start).as_secs_f64();
        let since_start = |stats: &[Stats]| {
            stats
                .iter()
                .map(|s| s.finished_at.load(Ordering::Relaxed))
                .max()
                .filter(|&at| at > self.start_unix)
                .map_or(run_seconds, |at| (at - self.start_unix) as f64 / 1e9)
        };
        self.publish_seconds = since_start(producers);
        self.consume_seconds = since_start(consumers);
    }

    fn summary(&self, args: &PerfArgs, settings: &Settings) -> Summary {
        let rate = |count: u64, seconds: f64| round(count as f64 / seconds.max(1e-9), 1);
        let t = &self.totals;
        Summary {
            kind: "summary",
            producers: args.producers,
            consumers: args.consumers,
            queues: args.queues,
            size: args.size,
            confirm: args.confirm,
            auto_ack: args.auto_ack,
            multiple_ack_every: settings.ack_every,
            prefetch: args.prefetch,
            seconds: round((self.end - self.start).as_secs_f64(), 3),
            publish_seconds: round(self.publish_seconds, 3),
            consume_seconds: round(self.consume_seconds, 3),
            sent: t.sent,
            confirmed: t.confirmed,
            nacked: t.nacked,
            received: t.received,
            sent_per_second: rate(t.sent, self.publish_seconds),
            confirmed_per_second: rate(t.confirmed, self.publish_seconds),
            received_per_second: rate(t.received, self.consume_seconds),
            latency_ms: LatencyMs::of(&self.latency),
            peak_rss_kib: memory_kib("VmHWM"),
        }
    }
}

/// Latency in milliseconds, to the microsecond (nulls when there were no samples).
#[derive(Serialize)]
struct LatencyMs {
    samples: u64,
    min: Option<f64>,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl LatencyMs {
    fn of(h: &Histogram) -> LatencyMs {
        let ms = |ns: Option<u64>| ns.map(|ns| round(ns as f64 / 1e6, 3));
        LatencyMs {
            samples: h.count(),
            min: ms(h.min()),
            p50: ms(h.percentile(50.0)),
            p95: ms(h.percentile(95.0)),
            p99: ms(h.percentile(99.0)),
            max: ms(h.max()),
        }
    }
}

#[derive(Serialize)]
struct Progress {
    #[serde(rename = "type")]
    kind: &'static str,
    time: u64,
    sent_per_second: f64,
    confirmed_per_second: f64,
    received_per_second: f64,
    /// Messages received since the start.
    received: u64,
    latency_ms: LatencyMs,
    /// The tool's resident memory now (`null` where it can't be read).
    rss_kib: Option<u64>,
    /// Its peak since it started.
    peak_rss_kib: Option<u64>,
}

/// The end-of-run summary. Rates divide by `publish_seconds` (until the
/// last producer finished, confirms included) or `consume_seconds` (until
/// the last message was received).
#[derive(Serialize)]
struct Summary {
    #[serde(rename = "type")]
    kind: &'static str,
    producers: u32,
    consumers: u32,
    queues: u32,
    size: u64,
    confirm: u32,
    auto_ack: bool,
    multiple_ack_every: u32,
    prefetch: u16,
    seconds: f64,
    publish_seconds: f64,
    consume_seconds: f64,
    sent: u64,
    confirmed: u64,
    nacked: u64,
    received: u64,
    sent_per_second: f64,
    confirmed_per_second: f64,
    received_per_second: f64,
    latency_ms: LatencyMs,
    /// The tool's peak resident memory over the run (`null` where it can't
    /// be read).
    peak_rss_kib: Option<u64>,
}

impl Summary {
    fn table(&self, shape: &str) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "warren perf: {shape}");
        let _ = writeln!(
            t,
            "{:<10} {:>12} {:>12} {:>9}",
            "", "messages", "msg/s", "seconds"
        );
        let row = |t: &mut String, name: &str, count: u64, rate: f64, seconds: f64| {
            let _ = writeln!(t, "{name:<10} {count:>12} {rate:>12.0} {seconds:>9.2}");
        };
        row(
            &mut t,
            "sent",
            self.sent,
            self.sent_per_second,
            self.publish_seconds,
        );
        if self.confirm > 0 {
            row(
                &mut t,
                "confirmed",
                self.confirmed,
                self.confirmed_per_second,
                self.publish_seconds,
            );
            if self.nacked > 0 {
                let _ = writeln!(t, "{:<10} {:>12}", "nacked", self.nacked);
            }
        }
        row(
            &mut t,
            "received",
            self.received,
            self.received_per_second,
            self.consume_seconds,
        );
        let l = &self.latency_ms;
        match (l.min, l.p50, l.p95, l.p99, l.max) {
            (Some(min), Some(p50), Some(p95), Some(p99), Some(max)) => {
                let f = |v: f64| ms((v * 1e6) as u64);
                let _ = writeln!(
                    t,
                    "latency    min {} ms, p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
                    f(min),
                    f(p50),
                    f(p95),
                    f(p99),
                    f(max)
                );
            }
            _ => {
                let _ = writeln!(t, "latency    -");
            }
        }
        if let Some(kib) = self.peak_rss_kib {
            let _ = writeln!(t, "memory     peak RSS {}", mib(kib));
        }
        t
    }
}

/// One of this process's memory figures from `/proc/self/status` (`VmRSS`,
/// resident now; `VmHWM`, the peak), in KiB; `None` off Linux.
fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// KiB as MiB to one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Nanoseconds as milliseconds to three significant digits.
fn ms(nanos: u64) -> String {
    let ms = nanos as f64 / 1e6;
    match ms {
        ms if ms < 1.0 => format!("{ms:.3}"),
        ms if ms < 10.0 => format!("{ms:.2}"),
        ms if ms < 100.0 => format!("{ms:.1}"),
        ms => format!("{ms:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("q{i}")).collect()
    }

    #[test]
    fn queues_are_shared_round_robin_and_none_is_left_out() {
        let queues = names(5);
        assert_eq!(share(0, 2, &queues), ["q0", "q2", "q4"]);
        assert_eq!(share(1, 2, &queues), ["q1", "q3"]);
        assert_eq!(share(6, 7, &queues), ["q1"]);
        assert_eq!(share(0, 1, &names(1)), ["q0"]);
        for workers in 1..12 {
            let mut covered: Vec<&str> = (0..workers)
                .flat_map(|w| share(w, workers, &queues))
                .collect();
            covered.sort();
            covered.dedup();
            assert_eq!(covered.len(), 5, "{workers} workers");
        }
    }

    #[test]
    fn a_body_starts_with_its_send_time_and_sequence() {
        let mut buffer = BytesMut::new();
        let before = unix_nanos();
        let body = next_body(&mut buffer, 16, 7);
        let second = next_body(&mut buffer, 100, 8);
        assert_eq!((body.len(), second.len()), (16, 100));
        let stamp = u64::from_be_bytes(body[..8].try_into().unwrap());
        assert!(stamp >= before && stamp <= unix_nanos());
        assert_eq!(&body[8..12], &7u32.to_be_bytes());
        assert!(body[12..].iter().all(|&b| b == 0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn resident_memory_is_read_from_proc_and_the_peak_is_at_least_the_current() {
        let rss = memory_kib("VmRSS").expect("VmRSS on Linux");
        let peak = memory_kib("VmHWM").expect("VmHWM on Linux");
        assert!(rss > 0 && peak >= rss, "rss {rss} KiB, peak {peak} KiB");
        assert_eq!(memory_kib("NoSuchField"), None);
        assert_eq!(mib(1536), "1.5 MiB");
    }

    #[test]
    fn milliseconds_print_with_three_significant_digits() {
        assert_eq!(ms(215_000), "0.215");
        assert_eq!(ms(1_234_567), "1.23");
        assert_eq!(ms(45_600_000), "45.6");
        assert_eq!(ms(123_400_000), "123");
    }
}
