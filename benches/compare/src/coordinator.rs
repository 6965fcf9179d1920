//! The coordinator: prepares queues with warren's blocking client, runs one
//! worker process per measurement, times it, cleans up, and writes the
//! report.
//!
//! Order: for each scenario, for each size, for each run, every client once
//! (round-robin; the starting client rotates from run to run, so no client
//! always goes first after a queue fill). When both run, each consume
//! measurement comes right after the same client's publish-confirm one and
//! consumes the queue it filled, which saves the fill.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::blocking::{Channel, Connection};
use warren::options::{PublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use warren::protocol::{BasicProperties, FieldTable};

use crate::report::{self, Sample};
use crate::worker::{self, Job};
use crate::{Res, Scenario, CLIENTS, MAX_BACKLOG};

pub const USAGE: &str = "\
usage: warren-compare [OPTIONS]

Runs publish, publish-confirm, consume and many-queues through warren
(blocking and async), lapin, amqprs, amiquip and rabbitmq-c against a local RabbitMQ,
each measurement in a fresh worker process, and writes RESULTS.md and
results.csv.

options:
  --messages N        messages per measurement (default 200000)
  --sizes A,B         body sizes in bytes (default 16,1024)
  --runs R            runs per client, scenario and size; medians reported (default 3)
  --clients LIST      any of warren,warren-async,lapin,amqprs,amiquip,rabbitmq-c (default all)
  --scenarios LIST    any of publish,publish-confirm,consume,many-queues (default all)
  --queues Q          queues in many-queues (default 200)
  --uri URI           broker (default $WARREN_TEST_URI or amqp://guest:guest@127.0.0.1:5672/%2f)
  --out DIR           where RESULTS.md and results.csv go (default: this crate's folder)
  --memory            the memory run instead: long-consume, one consumer taking 10 M
                      messages of 1 KiB (prefetch 1000) from a queue the harness keeps
                      topped up, RSS read after 100k and every 1 M; writes MEMORY.md and
                      memory.csv (--messages, --sizes, --runs, --clients still apply)
  --help              this text";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub messages: u64,
    pub sizes: Vec<usize>,
    pub runs: usize,
    pub clients: Vec<String>,
    pub scenarios: Vec<Scenario>,
    pub queues: usize,
    pub uri: String,
    pub out: PathBuf,
    /// The memory run (`--memory`): long-consume only, MEMORY.md.
    pub memory: bool,
}

impl Options {
    /// Parses the command line; `Ok(None)` for `--help`.
    pub fn parse(args: &[String]) -> Res<Option<Options>> {
        let mut options = Options {
            messages: 200_000,
            sizes: vec![16, 1024],
            runs: 3,
            clients: CLIENTS.iter().map(|c| c.to_string()).collect(),
            scenarios: Scenario::DEFAULT.to_vec(),
            queues: 200,
            uri: std::env::var("WARREN_TEST_URI")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            out: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            memory: false,
        };
        let (mut messages, mut sizes, mut runs) = (None, None, None);
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            if flag == "--memory" {
                options.memory = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
            match flag.as_str() {
                "--messages" => messages = Some(value.parse()?),
                "--sizes" => sizes = Some(list().map(str::parse).collect::<Result<_, _>>()?),
                "--runs" => runs = Some(value.parse()?),
                "--clients" => {
                    options.clients = list().map(String::from).collect();
                    for client in &options.clients {
                        if !CLIENTS.contains(&client.as_str()) {
                            return Err(format!("unknown client {client:?}").into());
                        }
                    }
                }
                "--scenarios" => {
                    options.scenarios = list()
                        .map(|s| match Scenario::parse(s) {
                            Some(Scenario::LongConsume) => {
                                Err("long-consume is the memory run: use --memory".to_string())
                            }
                            Some(scenario) => Ok(scenario),
                            None => Err(format!("unknown scenario {s:?}")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--queues" => options.queues = value.parse()?,
                "--uri" => options.uri = value.clone(),
                "--out" => options.out = PathBuf::from(value),
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        if options.memory {
            options.scenarios = vec![Scenario::LongConsume];
            options.messages = 10_000_000;
            options.sizes = vec![1024];
            options.runs = 1;
        }
        options.messages = messages.unwrap_or(options.messages);
        options.sizes = sizes.unwrap_or(options.sizes);
        options.runs = runs.unwrap_or(options.runs);
        if options.messages == 0 || options.runs == 0 || options.queues == 0 {
            return Err("--messages, --runs and --queues must be positive".into());
        }
        if options.sizes.is_empty() || options.clients.is_empty() || options.scenarios.is_empty() {
            return Err("--sizes, --clients and --scenarios need at least one entry".into());
        }
        if options.messages < options.queues as u64 {
            return Err("--messages must be at least --queues".into());
        }
        Ok(Some(options))
    }
}

/// Runs every measurement and writes the report.
pub fn run(options: &Options) -> Res {
    let started = Instant::now();
    let harness = Harness::open(&options.uri)?;
    let machine = report::Machine::probe(&harness.connection);
    println!(
        "warren-compare: {} messages, sizes {:?}, {} run(s), clients {}, against RabbitMQ {}",
        options.messages,
        options.sizes,
        options.runs,
        options.clients.join(","),
        machine.rabbitmq
    );
    // The first measurement after the broker idled comes out slow (its
    // schedulers and allocators wake up): one untimed round first.
    let warm_up = Options {
        messages: options.messages.min(50_000),
        ..options.clone()
    };
    let sample = harness.measure(
        &warm_up,
        &options.clients[0],
        options.scenarios[0],
        options.sizes[0],
        0,
    );
    println!(
        "warm-up: {}",
        sample.error.as_deref().unwrap_or("done (discarded)")
    );
    let mut samples = Vec::new();
    // Each consume measurement takes the queue the publish-confirm
    // measurement before it filled (same client, size and run), when both
    // run: that saves a fill per consume measurement, a fifth of the run.
    let paired = options.scenarios.contains(&Scenario::PublishConfirm)
        && options.scenarios.contains(&Scenario::Consume);
    let mut record = |sample: Sample| {
        match &sample.error {
            None => println!("{}", sample.line()),
            Some(e) => println!("{}  FAILED: {e}", sample.label()),
        }
        samples.push(sample);
    };
    for &scenario in &options.scenarios {
        if paired && scenario == Scenario::Consume {
            continue;
        }
        for &size in &options.sizes {
            for run in 0..options.runs {
                let n = options.clients.len();
                for k in 0..n {
                    let client = &options.clients[(k + run) % n];
                    if paired && scenario == Scenario::PublishConfirm {
                        let (sample, filled) =
                            harness.measure_from(options, client, scenario, size, run, None);
                        record(sample);
                        let (sample, _) = harness.measure_from(
                            options,
                            client,
                            Scenario::Consume,
                            size,
                            run,
                            filled,
                        );
                        record(sample);
                    } else {
                        record(harness.measure(options, client, scenario, size, run));
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let (markdown, csv) = if options.memory {
        report::write_memory(options, &machine, &samples, elapsed)?;
        ("MEMORY.md", "memory.csv")
    } else {
        report::write(options, &machine, &samples, elapsed)?;
        ("RESULTS.md", "results.csv")
    };
    println!(
        "wrote {} and {} in {:.0} s",
        options.out.join(markdown).display(),
        options.out.join(csv).display(),
        elapsed.as_secs_f64()
    );
    harness.close()
}

/// The coordinator's own connection: declares, fills, polls and deletes
/// queues.
struct Harness {
    connection: Connection,
    channel: Channel,
    broker_pid: Option<u32>,
    prefix: String,
    /// The queues the many-queues measurements share, deleted on drop.
    reused_queues: RefCell<Vec<String>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        delete_queues(&self.channel, &self.reused_queues.take());
    }
}

impl Harness {
    fn open(uri: &str) -> Res<Harness> {
        let connection =
            Connection::open(uri).map_err(|e| format!("cannot reach the broker at {uri}: {e}"))?;
        let channel = connection.open_channel()?;
        // Queues are filled with confirms on this channel.
        channel.confirm_select()?;
        Ok(Harness {
            connection,
            channel,
            broker_pid: report::broker_pid(),
            prefix: format!("warren-compare-{}", std::process::id()),
            reused_queues: RefCell::new(Vec::new()),
        })
    }

    /// Deletes the shared queues and closes the connection.
    fn close(&self) -> Res {
        delete_queues(&self.channel, &self.reused_queues.take());
        Ok(self.connection.close()?)
    }

    fn measure(
        &self,
        options: &Options,
        client: &str,
        scenario: Scenario,
        size: usize,
        run: usize,
    ) -> Sample {
        self.measure_from(options, client, scenario, size, run, None)
            .0
    }

    /// One measurement. A consume measurement given `filled` (a publish
    /// measurement's queue, holding N messages of this size) takes that
    /// queue instead of declaring and filling one. Returns the sample and,
    /// when it succeeded, its queues (deleted when dropped).
    fn measure_from<'h>(
        &'h self,
        options: &Options,
        client: &str,
        scenario: Scenario,
        size: usize,
        run: usize,
        filled: Option<Queues<'h>>,
    ) -> (Sample, Option<Queues<'h>>) {
        let queue_count = match scenario {
            Scenario::ManyQueues => options.queues,
            _ => 1,
        };
        let per_queue = options.messages / queue_count as u64;
        // A filled queue is taken only by the one-queue consume scenario.
        let filled = filled.filter(|q| scenario == Scenario::Consume && q.names.len() == 1);
        // The many-queues measurements share one set of queues, which each
        // drains; declaring and deleting 200 queues took 0.8 s a measurement.
        let reused = scenario == Scenario::ManyQueues;
        let prefix = match &filled {
            Some(queues) => queues.names[0].clone(),
            None if reused => format!("{}-{}", self.prefix, scenario.name()),
            None => format!(
                "{}-{}-{}-{}-{}",
                self.prefix,
                scenario.name(),
                size,
                run,
                client
            ),
        };
        let job = Job {
            scenario,
            size,
            messages: per_queue * queue_count as u64,
            queues: worker::queue_names(&prefix, queue_count),
            uri: options.uri.clone(),
        };
        let mut sample = Sample::new(client, scenario, size, run, job.messages);
        let t0 = Instant::now();
        let (queues, declared) = match filled {
            Some(queues) => {
                let holds = queues.check_holds(job.prefill());
                (queues, holds)
            }
            None => {
                let queues = Queues {
                    channel: &self.channel,
                    names: job.queues.clone(),
                    reused,
                };
                if reused {
                    self.reused_queues.replace(job.queues.clone());
                }
                let declared = queues.declare(&job);
                (queues, declared)
            }
        };
        let filled_at = Instant::now();
        self.wait_quiet();
        let t1 = Instant::now();
        let outcome = declared.and_then(|()| self.run_worker(&job, client, &prefix, &mut sample));
        let t2 = Instant::now();
        if let Err(e) = outcome.and_then(|()| queues.check_after(&job)) {
            sample.error = Some(e.to_string());
        }
        let kept = match sample.error {
            None => Some(queues),
            // Whatever a failed measurement left goes with its queues.
            Some(_) => {
                queues.delete();
                None
            }
        };
        eprintln!(
            "phases: prepare {:?} (quiet wait {:?}) worker {:?} cleanup {:?} (wall {:?})",
            t1 - t0,
            t1 - filled_at,
            t2 - t1,
            t2.elapsed(),
            sample.wall
        );
        (sample, kept)
    }

    /// Starts the worker and times it; fills `sample`.
    fn run_worker(&self, job: &Job, client: &str, prefix: &str, sample: &mut Sample) -> Res {
        let mut worker = Worker::start(job, client, prefix)?;
        let result = self.time_worker(job, &mut worker, sample);
        if result.is_err() {
            worker.kill();
        }
        worker.reap()?;
        result
    }

    fn time_worker(&self, job: &Job, worker: &mut Worker, sample: &mut Sample) -> Res {
        let go = worker.expect("@@go", Duration::from_secs(60))?;
        let broker_before = self.broker_cpu_us();
        let machine_before = report::machine_cpu_us();
        let top_up = (job.scenario == Scenario::LongConsume && job.messages > job.prefill())
            .then(|| TopUp::start(job));
        // At least 5,000 messages a second, and never less than 10 minutes.
        let work_timeout = Duration::from_secs((job.messages / 5_000).max(600));
        let done = worker.expect("@@done", work_timeout);
        if let Some(top_up) = top_up {
            let published = top_up.stop()?;
            if done.is_ok() && published != job.messages - job.prefill() {
                return Err(format!(
                    "the top-up published {published} of {}",
                    job.messages - job.prefill()
                )
                .into());
            }
        }
        let done = done?;
        let end = match job.scenario {
            Scenario::Publish | Scenario::PublishConfirm => {
                // Timed until the queue holds every message.
                let full = Instant::now() + Duration::from_secs(600);
                loop {
                    let ready = self
                        .channel
                        .queue_declare(&job.queues[0], passive(), FieldTable::new())?
                        .message_count as u64;
                    if ready >= job.messages {
                        break Instant::now().max(done.0);
                    }
                    if Instant::now() > full {
                        return Err(format!("the queue holds {ready} of {}", job.messages).into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => done.0,
        };
        let broker_after = self.broker_cpu_us();
        let machine_after = report::machine_cpu_us();
        worker.stop()?;
        let result = worker.expect("@@result", Duration::from_secs(60))?;
        sample.wall = end.duration_since(go.0);
        for field in result.1.split_whitespace().skip(1) {
            let (key, value) = field.split_once('=').ok_or("bad @@result line")?;
            match key {
                "cpu_us" => sample.cpu_us = value.parse()?,
                "peak_rss_kb" => sample.peak_rss_kb = value.parse()?,
                "sleeps" => sample.sleeps = Some(value.parse()?),
                "jain" if job.scenario == Scenario::ManyQueues => {
                    sample.jain = Some(value.parse()?)
                }
                "rss_kb_at" => {
                    for reading in value.split(',').filter(|r| !r.is_empty()) {
                        let mut parts = reading.split(':').map(str::parse::<u64>);
                        let (Some(received), Some(rss), Some(anon)) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            return Err("bad rss_kb_at reading".into());
                        };
                        sample.rss_kb_at.push((received?, rss?, anon?));
                    }
                }
                _ => {}
            }
        }
        if let (Some(before), Some(after)) = (broker_before, broker_after) {
            sample.broker_cpu_us = Some(after.saturating_sub(before));
        }
        if let (Some(before), Some(after)) = (machine_before, machine_after) {
            let machine = after.saturating_sub(before);
            let ours = sample.cpu_us + sample.broker_cpu_us.unwrap_or(0);
            sample.other_cpu_us = Some(machine.saturating_sub(ours));
        }
        Ok(())
    }

    /// Waits (at most 1 s) until the broker has gone quiet after the
    /// previous measurement, its clean-up or a fill: under 20% of a core
    /// over 100 ms.
    fn wait_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let Some(before) = self.broker_cpu_us() else {
                return;
            };
            std::thread::sleep(Duration::from_millis(100));
            let Some(after) = self.broker_cpu_us() else {
                return;
            };
            if after.saturating_sub(before) <= 20_000 {
                return;
            }
        }
    }

    /// The broker's (beam.smp's) CPU time so far, in µs.
    fn broker_cpu_us(&self) -> Option<u64> {
        report::process_cpu_us(self.broker_pid?)
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Connections that fill queues side by side.
const FILL_CONNECTIONS: usize = 2;

/// How a fill of `per_queue` messages into each of `names` is split over
/// [`FILL_CONNECTIONS`]: each connection's queues and how many it puts in
/// each. Several queues are dealt out between the connections; one queue
/// gets a part of its messages from each.
fn fill_shares(names: &[String], per_queue: u64) -> Vec<(Vec<&str>, u64)> {
    if let [name] = names {
        let part = per_queue.div_ceil(FILL_CONNECTIONS as u64);
        let mut left = per_queue;
        return (0..FILL_CONNECTIONS)
            .map(|_| {
                let count = left.min(part);
                left -= count;
                (vec![name.as_str()], count)
            })
            .collect();
    }
    (0..FILL_CONNECTIONS)
        .map(|k| {
            let share = names.iter().skip(k).step_by(FILL_CONNECTIONS);
            (share.map(String::as_str).collect::<Vec<_>>(), per_queue)
        })
        .filter(|(share, _)| !share.is_empty())
        .collect()
}

/// Publishes `count` messages of `body` to each of `names` on a connection
/// of its own, with confirms; done when every one is confirmed.
fn fill(uri: &str, names: &[&str], count: u64, body: Bytes) -> Res {
    let connection = Connection::open(uri)?;
    let channel = connection.open_channel()?;
    channel.confirm_select()?;
    for name in names {
        for _ in 0..count {
            channel.basic_publish(
                "",
                name,
                PublishOptions::default(),
                BasicProperties::default(),
                body.clone(),
            )?;
        }
    }
    if !channel.wait_for_confirms()? {
        return Err("the broker nacked a message while filling".into());
    }
    connection.close()?;
    Ok(())
}

/// The queues of one measurement; deleted when dropped, whatever happened,
/// unless they are `reused` by the next measurement of the same scenario
/// (the harness deletes those at the end of the run).
struct Queues<'a> {
    channel: &'a Channel,
    names: Vec<String>,
    reused: bool,
}

impl Queues<'_> {
    /// Deletes the queues now.
    fn delete(mut self) {
        self.reused = false;
    }

    /// Declares the queues, and fills them for the consume scenarios (with
    /// confirms, before any timing).
    fn declare(&self, job: &Job) -> Res {
        for name in &self.names {
            let declared = self.channel.queue_declare(
                name,
                QueueDeclareOptions::default(),
                FieldTable::new(),
            )?;
            // A reused queue was drained by the measurement before (checked
            // after it), but nothing is taken on trust.
            if declared.message_count > 0 {
                self.channel.queue_purge(name)?;
            }
        }
        if job.scenario.consumes() {
            // The broker takes messages in on more than one core when they
            // come from several connections (each has its own reader and
            // channel processes): the fill is split over FILL_CONNECTIONS.
            let shares = fill_shares(&self.names, job.prefill());
            let body = Bytes::from(job.body());
            std::thread::scope(|scope| -> Res {
                let fillers: Vec<_> = shares
                    .iter()
                    .map(|(names, count)| {
                        let body = body.clone();
                        scope.spawn(move || fill(&job.uri, names, *count, body))
                    })
                    .collect();
                for filler in fillers {
                    filler.join().map_err(|_| "a fill thread panicked")??;
                }
                Ok(())
            })?;
            self.check_holds(job.prefill())?;
        }
        Ok(())
    }

    /// Checks that every queue holds `messages`, ready.
    fn check_holds(&self, messages: u64) -> Res {
        for name in &self.names {
            let ready = self
                .channel
                .queue_declare(name, passive(), FieldTable::new())?
                .message_count as u64;
            if ready != messages {
                return Err(format!("{name} holds {ready}, expected {messages}").into());
            }
        }
        Ok(())
    }

    /// Checks what the worker left: publishers every message, consumers none.
    fn check_after(&self, job: &Job) -> Res {
        let expected = match job.scenario {
            Scenario::Publish | Scenario::PublishConfirm => job.messages,
            Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => 0,
        };
        let mut total = 0;
        for name in &self.names {
            total += self
                .channel
                .queue_declare(name, passive(), FieldTable::new())?
                .message_count as u64;
        }
        if total != expected {
            return Err(format!("{total} messages left in the queues, expected {expected}").into());
        }
        Ok(())
    }
}

impl Drop for Queues<'_> {
    fn drop(&mut self) {
        if !self.reused {
            delete_queues(self.channel, &self.names);
        }
    }
}

fn delete_queues(channel: &Channel, names: &[String]) {
    for name in names {
        if let Err(e) = channel.queue_delete(name, QueueDeleteOptions::default()) {
            eprintln!("warren-compare: could not delete queue {name}: {e}");
        }
    }
}

/// The publisher of `long-consume`: on a connection of its own, publishes
/// the messages the harness did not fill before timing, in batches of
/// [`crate::CONFIRM_WINDOW`] with confirms, and only while the queue holds at
/// most [`MAX_BACKLOG`] messages, so the broker's memory stays bounded.
/// (The broker cannot take messages in as fast as a consumer takes them
/// out: once the first backlog is drained, the consumer runs at the
/// publisher's pace.)
struct TopUp {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Res<u64>>,
}

impl TopUp {
    fn start(job: &Job) -> TopUp {
        let stop = Arc::new(AtomicBool::new(false));
        let (uri, queue) = (job.uri.clone(), job.queues[0].clone());
        let (total, body) = (job.messages - job.prefill(), Bytes::from(job.body()));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || -> Res<u64> {
            let connection = Connection::open(&uri)?;
            let channel = connection.open_channel()?;
            channel.confirm_select()?;
            let mut published = 0;
            while published < total && !stopped.load(Ordering::Relaxed) {
                let depth = channel
                    .queue_declare(&queue, passive(), FieldTable::new())?
                    .message_count as u64;
                if depth > MAX_BACKLOG {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let batch = (total - published).min(crate::CONFIRM_WINDOW as u64);
                for _ in 0..batch {
                    channel.basic_publish(
                        "",
                        &queue,
                        PublishOptions::default(),
                        BasicProperties::default(),
                        body.clone(),
                    )?;
                }
                if !channel.wait_for_confirms()? {
                    return Err("the broker nacked a top-up message".into());
                }
                published += batch;
            }
            connection.close()?;
            Ok(published)
        });
        TopUp { stop, thread }
    }

    /// Stops publishing (if not done yet); how many messages it published.
    fn stop(self) -> Res<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the top-up thread panicked")?
    }
}

/// A running worker process and the lines it printed.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Worker {
    fn start(job: &Job, client: &str, prefix: &str) -> Res<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(worker::args(job, client, prefix))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("@@") && tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            lines,
        })
    }

    /// Waits for the line starting with `what`; its arrival time and text.
    fn expect(&mut self, what: &str, timeout: Duration) -> Res<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.split_whitespace().next() == Some(what) => {
                    return Ok((at, line))
                }
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("the worker did not say {what} in {timeout:?}").into())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    return Err(format!("the worker exited ({status}) before {what}").into());
                }
            }
        }
    }

    fn stop(&mut self) -> Res {
        let mut stdin = self.stdin.take().ok_or("stop sent twice")?;
        stdin.write_all(b"stop\n")?;
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the worker to exit (at most 60 s, then kills it).
    fn reap(mut self) -> Res {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the worker exited with {status}").into())
                };
            }
            if Instant::now() > deadline {
                self.kill();
                let _ = self.child.wait();
                return Err("the worker did not exit in 60 s after stop; killed".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_queue_is_filled_in_parts_that_add_up() {
        let names = vec!["q".to_string()];
        let shares = fill_shares(&names, 200_001);
        assert_eq!(shares.len(), FILL_CONNECTIONS);
        assert!(shares.iter().all(|(share, _)| share == &["q"]));
        assert_eq!(shares.iter().map(|(_, n)| n).sum::<u64>(), 200_001);
    }

    #[test]
    fn many_queues_are_dealt_out_once_each() {
        let names: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
        let shares = fill_shares(&names, 1000);
        let mut seen: Vec<&str> = shares.iter().flat_map(|(s, _)| s.clone()).collect();
        seen.sort();
        assert_eq!(seen, ["q0", "q1", "q2", "q3", "q4"]);
        assert!(shares.iter().all(|(_, n)| *n == 1000));
    }

    /// Needs the broker (`$WARREN_TEST_URI` or the local one).
    #[test]
    fn reused_queues_start_each_fill_empty_and_go_when_the_harness_closes() {
        let uri = Options::parse(&[]).unwrap().unwrap().uri;
        let harness = Harness::open(&uri).unwrap_or_else(|e| panic!("{e}"));
        let prefix = format!("{}-reuse-test", harness.prefix);
        let job = Job {
            scenario: Scenario::ManyQueues,
            size: 16,
            messages: 40,
            queues: worker::queue_names(&prefix, 4),
            uri: uri.clone(),
        };
        harness.reused_queues.replace(job.queues.clone());
        let queues = || Queues {
            channel: &harness.channel,
            names: job.queues.clone(),
            reused: true,
        };
        queues().declare(&job).unwrap();
        // Dropped undrained, as by a measurement that failed to check so:
        // the next fill must not add to what is left.
        queues().declare(&job).unwrap();
        queues().check_holds(10).unwrap();
        harness.close().unwrap();

        let connection = Connection::open(&uri).unwrap();
        for name in &job.queues {
            let channel = connection.open_channel().unwrap();
            let declared = channel.queue_declare(name, passive(), FieldTable::new());
            assert!(declared.is_err(), "{name} outlived the harness");
        }
        connection.close().unwrap();
    }
}
