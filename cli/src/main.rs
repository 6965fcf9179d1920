//! `warren`: command-line tools on the warren AMQP 0-9-1 client.
//!
//! - `warren perf`: a load generator in the manner of RabbitMQ's PerfTest
//!   (producers, consumers, confirms, acks, many queues, latency);
//! - `warren publish` and `warren consume`: one-off messages, like the
//!   amqp-tools commands `amqp-publish` and `amqp-consume`;
//! - `warren decode FILE`: the frames of a captured AMQP byte stream.
//!
//! Every failure is one line on stderr, `warren: <what happened>`, and a
//! non-zero exit status: 2 for bad arguments, 1 for everything else (the
//! broker is unreachable, refused something, a file can't be read...).

mod decode;
mod histogram;
mod perf;
mod tools;

use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use warren::ConnectionConfig;

/// The local broker with the default account and vhost.
pub(crate) const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Tools on the warren AMQP 0-9-1 client: perf, publish, consume, decode",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load test a broker, PerfTest style: publish and consume at full speed
    /// (or a set rate) and report throughput and latency.
    Perf(perf::PerfArgs),
    /// Publish one message (like amqp-publish).
    Publish(tools::PublishArgs),
    /// Consume messages from a queue and print one line per message (like
    /// amqp-consume).
    Consume(tools::ConsumeArgs),
    /// Dump the frames of a captured AMQP 0-9-1 byte stream, one per line.
    Decode(decode::DecodeArgs),
}

/// A failure: one line on stderr, and exit status 1, or 2 for bad arguments.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) status: u8,
}

impl Failure {
    /// A failure while doing the work: status 1.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: 1,
        }
    }

    /// A bad combination of arguments that clap does not check: status 2.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: format!("{} (see 'warren --help')", message.into()),
            status: 2,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a subcommand returns.
pub(crate) type Outcome = Result<ExitCode, Failure>;

/// Where to connect: the parsed settings, and the URI to show in messages
/// (without its password).
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: ConnectionConfig,
    pub(crate) shown: String,
}

impl Target {
    /// Opens a blocking connection, failing with `cannot connect to <uri>: ...`.
    pub(crate) fn connect(&self) -> Result<warren::blocking::Connection, Failure> {
        warren::blocking::Connection::open_with(self.config.clone())
            .map_err(|e| Failure::new(format!("cannot connect to {}: {e}", self.shown)))
    }
}

/// `--uri` values: checked when the arguments are parsed, so a bad URI is a
/// usage error (status 2).
pub(crate) fn parse_uri(uri: &str) -> Result<Target, String> {
    let config = ConnectionConfig::from_uri(uri).map_err(|e| e.to_string())?;
    Ok(Target {
        config,
        shown: without_password(uri),
    })
}

/// The URI without its password: `amqp://user:secret@host/` becomes
/// `amqp://user@host/`.
fn without_password(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}{}", &uri[..scheme_end + colon], &rest[at..]),
            None => uri.to_string(),
        },
        None => uri.to_string(),
    }
}

/// Set by the first Ctrl-C; `perf` and `consume` poll it and stop cleanly. A
/// second Ctrl-C exits at once.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Installs the Ctrl-C handler (for the commands that run until stopped).
pub(crate) fn catch_ctrl_c() {
    // Failing to install it only means Ctrl-C kills the process outright.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let outcome = match cli.command {
        Command::Perf(args) => perf::run(args),
        Command::Publish(args) => tools::publish(args),
        Command::Consume(args) => tools::consume(args),
        Command::Decode(args) => decode::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("warren: {failure}");
            ExitCode::from(failure.status)
        }
    }
}

/// Prints `--help` and `--version` as clap does; any other argument error
/// becomes one line, `warren: <error>`, and status 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprintln!(
            "warren: a subcommand is needed: perf, publish, consume or decode (see 'warren --help')"
        );
        return ExitCode::from(2);
    }
    eprintln!("warren: {}", one_line(&error.render().to_string()));
    ExitCode::from(2)
}

/// clap's error text without its usage and "for more information" lines,
/// folded onto one line.
fn one_line(rendered: &str) -> String {
    let message = rendered
        .split("\nUsage:")
        .next()
        .unwrap_or(rendered)
        .split("\nFor more information")
        .next()
        .unwrap_or(rendered);
    let folded = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let folded = folded.strip_prefix("error: ").unwrap_or(&folded);
    format!("{folded} (see 'warren --help')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_shown_uris() {
        assert_eq!(
            without_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            without_password("amqps://u:p@ss@host/v?heartbeat=5"),
            "amqps://u@host/v?heartbeat=5"
        );
        assert_eq!(without_password("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(
            without_password("amqp://user@host/x:y@z"),
            "amqp://user@host/x:y@z"
        );
    }

    #[test]
    fn clap_errors_fold_onto_one_line() {
        let text = "error: the following required arguments were not provided:\n  \
                    --routing-key <KEY>\n\nUsage: warren publish --routing-key <KEY>\n\n\
                    For more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "the following required arguments were not provided: --routing-key <KEY> \
             (see 'warren --help')"
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
