//! Helpers for the integration tests that run against a live RabbitMQ
//! (`tests/broker_*.rs`): where the broker is, connecting with a clear
//! failure when it is down, unique names, cleanup, and `rabbitmqctl`.
//!
//! These tests never skip: a broker that cannot be reached is a failure
//! that says how to start one.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use warren::blocking::Connection;
use warren::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use warren::uri::ConnectionConfig;
use warren::Error;

/// The broker's URI: `WARREN_TEST_URI`, or the local default broker.
pub fn uri() -> String {
    std::env::var("WARREN_TEST_URI")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// [`uri`] with one more query parameter, whether or not it already has a query.
pub fn uri_with(parameter: &str) -> String {
    let base = uri();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{parameter}")
}

/// The settings of [`uri`].
pub fn config() -> ConnectionConfig {
    ConnectionConfig::from_uri(&uri())
        .unwrap_or_else(|e| panic!("WARREN_TEST_URI is not a valid amqp URI: {e}"))
}

/// Where the broker is, for messages (no credentials).
pub fn address() -> String {
    let config = config();
    format!("{}:{} (vhost {:?})", config.host, config.port, config.vhost)
}

/// Panics with a message that says how to get a broker, for an error that
/// means none could be reached.
#[track_caller]
pub fn unreachable(error: &Error) -> ! {
    panic!(
        "RabbitMQ is not reachable at {}: {error}; start it with `rabbitmq-server -detached` \
         (or point WARREN_TEST_URI at one)",
        address()
    )
}

/// The broker's `host:port`, to connect a relay (or a probe) to.
pub fn address_for_relay() -> String {
    let config = config();
    format!("{}:{}", config.host, config.port)
}

/// Opens a connection to the test broker, or panics saying why.
#[track_caller]
pub fn connect() -> Connection {
    connect_with(config())
}

/// Opens a connection with explicit settings, or panics saying why.
#[track_caller]
pub fn connect_with(config: ConnectionConfig) -> Connection {
    match Connection::open_with(config) {
        Ok(connection) => connection,
        Err(e @ (Error::Io(_) | Error::Timeout { .. })) => unreachable(&e),
        Err(e) => panic!(
            "could not open a connection to RabbitMQ at {}: {e}",
            address()
        ),
    }
}

/// A name no other test (or test run) uses: `prefix.pid.counter.nanos`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("warren-test.{prefix}.{}.{n}.{nanos}", std::process::id())
}

/// Deletes the queues and exchanges it was told about when dropped (on a
/// connection of its own), so a failing test leaves nothing behind.
#[derive(Default)]
pub struct Cleanup {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Cleanup {
    /// Nothing to clean up yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes `name` at the end; returns it.
    pub fn queue(&mut self, name: impl Into<String>) -> String {
        let name = name.into();
        self.queues.push(name.clone());
        name
    }

    /// Deletes exchange `name` at the end; returns it.
    pub fn exchange(&mut self, name: impl Into<String>) -> String {
        let name = name.into();
        self.exchanges.push(name.clone());
        name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.queues.is_empty() && self.exchanges.is_empty() {
            return;
        }
        let Ok(connection) = Connection::open(&uri()) else {
            return;
        };
        // Each delete on its own channel: one that fails (already gone is
        // fine for RabbitMQ, but a 406 is not) must not stop the others.
        for queue in &self.queues {
            if let Ok(channel) = connection.open_channel() {
                let _ = channel.queue_delete(queue, QueueDeleteOptions::default());
            }
        }
        for exchange in &self.exchanges {
            if let Ok(channel) = connection.open_channel() {
                let _ = channel.exchange_delete(exchange, ExchangeDeleteOptions::default());
            }
        }
        let _ = connection.close();
    }
}

/// Runs `rabbitmqctl` with `args`; its standard output, or a panic with its
/// error output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run `rabbitmqctl {}`: {e} (is RabbitMQ installed?)",
                args.join(" ")
            )
        });
    assert!(
        output.status.success(),
        "`rabbitmqctl {}` failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
