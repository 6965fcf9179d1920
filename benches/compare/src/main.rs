//! `warren-compare`: the same AMQP workloads through warren (blocking and
//! async), lapin, amqprs, amiquip and rabbitmq-c (the C client, through
//! FFI), against a local RabbitMQ.
//!
//! The harness process (the coordinator) prepares queues, then re-executes
//! itself as a worker (`warren-compare --worker ...`) for every single
//! measurement, so each client's CPU time and peak RSS are its own. Workers
//! talk to the coordinator over stdin/stdout lines (see [`worker`]).
//!
//! `cargo run --release -p warren-compare -- --help` lists the options.

mod clients;
mod coordinator;
mod report;
mod worker;

use std::process::ExitCode;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// N messages to a fresh queue, no confirms; timed until the queue holds N.
    Publish,
    /// The same with publisher confirms, up to [`CONFIRM_WINDOW`] outstanding.
    PublishConfirm,
    /// N messages from a pre-filled queue, prefetch 1000, ack multiple every 100.
    Consume,
    /// N messages spread over many pre-filled queues, one consumer per queue.
    ManyQueues,
    /// The memory run (`--memory`): a long consume (10 M messages by
    /// default) from a queue the harness keeps topped up to
    /// [`MAX_BACKLOG`] while the worker consumes; the worker's RSS is read
    /// at [`MEMORY_MARKS`].
    LongConsume,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Publish,
        Scenario::PublishConfirm,
        Scenario::Consume,
        Scenario::ManyQueues,
        Scenario::LongConsume,
    ];

    /// The scenarios of a default run (the memory run is `--memory`).
    pub const DEFAULT: [Scenario; 4] = [
        Scenario::Publish,
        Scenario::PublishConfirm,
        Scenario::Consume,
        Scenario::ManyQueues,
    ];

    /// The name used on the command line, in the CSV and in RESULTS.md.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Publish => "publish",
            Scenario::PublishConfirm => "publish-confirm",
            Scenario::Consume => "consume",
            Scenario::ManyQueues => "many-queues",
            Scenario::LongConsume => "long-consume",
        }
    }

    /// Whether the worker consumes (from queues the harness fills).
    pub fn consumes(self) -> bool {
        matches!(
            self,
            Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume
        )
    }

    /// Parses a scenario name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The clients, in the order of the first round.
pub const CLIENTS: [&str; 6] = [
    "warren",
    "warren-async",
    "lapin",
    "amqprs",
    "amiquip",
    "rabbitmq-c",
];

/// Publisher confirms outstanding at most, in `publish-confirm`.
pub const CONFIRM_WINDOW: usize = 1000;
/// basic.qos prefetch count of every consumer.
pub const PREFETCH: u16 = 1000;
/// Consumers ack with `multiple = true` every this many deliveries.
pub const ACK_EVERY: u64 = 100;

/// In `long-consume`, the harness publishes more only while the queue holds
/// at most this many messages (and fills it with this many before timing),
/// so the consumer never waits for the publisher and the broker's memory
/// stays bounded.
pub const MAX_BACKLOG: u64 = 200_000;
/// In `long-consume`, the worker reads its RSS when it has received this
/// many messages (the first is the baseline of the flatness check), then
/// every [`MEMORY_STEP`].
pub const MEMORY_FIRST_MARK: u64 = 100_000;
/// See [`MEMORY_FIRST_MARK`].
pub const MEMORY_STEP: u64 = 1_000_000;

/// A boxed error: every client library has its own error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The result of a client run.
pub type Res<T = ()> = Result<T, BoxError>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker::main(&args[1..]);
    }
    match coordinator::Options::parse(&args) {
        Ok(Some(options)) => match coordinator::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("warren-compare: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => {
            println!("{}", coordinator::USAGE);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warren-compare: {e}\n\n{}", coordinator::USAGE);
            ExitCode::from(2)
        }
    }
}
