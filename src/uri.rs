//! amqp(s):// URIs and [`ConnectionConfig`]. This module owns the settings a
//! connection is opened with and their URI form; it never does I/O: no name
//! resolution, no sockets, no reading of files or environment variables.
//!
//! The URI form is RabbitMQ's [URI specification], with the query parameters
//! its Erlang client reads ([URI query parameters]):
//!
//! ```text
//! amqp[s]://[user[:password]@][host][:port][/vhost][?name=value&...]
//! ```
//!
//! Every part is optional, and an absent part takes its default (see
//! [`ConnectionConfig::default`]). User name, password, host and vhost are
//! percent-decoded: a `/` in a vhost name is written `%2f`, so the default
//! vhost `/` is `amqp://host/%2f`. As the specification says, an empty path
//! and no path are different things: `amqp://host/` names the empty vhost
//! `""`, while `amqp://host` leaves the vhost at its default `/`.
//!
//! ```
//! use std::time::Duration;
//! use warren::uri::ConnectionConfig;
//!
//! let config: ConnectionConfig =
//!     "amqps://app:s3cret@mq.example.com/orders?heartbeat=30&connection_name=billing".parse()?;
//! assert_eq!((config.host.as_str(), config.port, config.tls), ("mq.example.com", 5671, true));
//!
//! // The same settings, in code.
//! let built = ConnectionConfig::default()
//!     .host("mq.example.com")
//!     .port(5671)
//!     .tls(true)
//!     .credentials("app", "s3cret")
//!     .vhost("orders")
//!     .heartbeat(30)
//!     .connection_name("billing");
//! assert_eq!(config, built);
//! assert_eq!(config.connection_timeout, Duration::from_secs(30));
//! # Ok::<(), warren::Error>(())
//! ```
//!
//! Errors never quote the URI or the password: URIs carry credentials, and
//! error messages end up in logs.
//!
//! [URI specification]: https://www.rabbitmq.com/docs/uri-spec
//! [URI query parameters]: https://www.rabbitmq.com/docs/uri-query-parameters

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// IANA port for AMQP over TCP.
const AMQP_PORT: u16 = 5672;
/// IANA port for AMQP over TLS.
const AMQPS_PORT: u16 = 5671;
/// The smallest `frame_max` AMQP 0-9-1 allows (`frame-min-size`), other than 0.
const FRAME_MIN_SIZE: u32 = 4096;

/// The query parameters [`ConnectionConfig::from_uri`] understands.
const QUERY_PARAMETERS: [&str; 9] = [
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "operation_timeout",
    "auth_mechanism",
    "connection_name",
    "recovery",
    "receive_coalescing",
];

/// How automatic recovery reconnects after the connection is lost (see
/// [`ConnectionConfig::recovery`]). Attempt `n` (from 0) waits
/// `initial_delay * 2^n`, at most `max_delay`, before it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// The wait before the first attempt. Default 100 ms.
    pub initial_delay: Duration,
    /// The longest wait between attempts. Default 5 s.
    pub max_delay: Duration,
    /// Attempts before giving up (the connection then closes with the last
    /// error). Default `None`: keep trying until the application closes
    /// the connection.
    pub max_attempts: Option<u32>,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl RecoveryConfig {
    /// The wait before attempt `attempt` (counted from 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// The SASL mechanism the client authenticates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AuthMechanism {
    /// `PLAIN` (RFC 4616): user name and password, readable by anyone on the
    /// path unless the connection uses TLS. Every broker offers it.
    #[default]
    Plain,
    /// `AMQPLAIN`: RabbitMQ's older mechanism, user name and password in a
    /// field table. Same security as `PLAIN`.
    AmqPlain,
    /// `EXTERNAL`: the broker identifies the client by other means, usually
    /// its TLS client certificate (RabbitMQ's `rabbitmq_auth_mechanism_ssl`
    /// plugin). No password is sent.
    External,
}

impl AuthMechanism {
    /// The mechanism's name on the wire, as `connection.start` lists it and
    /// `connection.start-ok` sends it: `"PLAIN"`, `"AMQPLAIN"` or `"EXTERNAL"`.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::AmqPlain => "AMQPLAIN",
            AuthMechanism::External => "EXTERNAL",
        }
    }

    /// The mechanism called `name`, ignoring case.
    fn from_name(name: &str) -> Option<Self> {
        [
            AuthMechanism::Plain,
            AuthMechanism::AmqPlain,
            AuthMechanism::External,
        ]
        .into_iter()
        .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }
}

/// Everything needed to open a connection: where to, as whom, and what to
/// ask for in the `connection.tune` negotiation.
///
/// Build one from [`Default`] with the setters, or parse an `amqp://` or
/// `amqps://` URI with [`ConnectionConfig::from_uri`] (or [`str::parse`]).
/// Its `Debug` output never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Host name or IP address of the broker. An IPv6 address is held
    /// without brackets (`::1`). Default `"localhost"`.
    pub host: String,
    /// TCP port. Default 5672, or 5671 for an `amqps://` URI.
    pub port: u16,
    /// Whether to speak TLS from the first byte (`amqps://`). Default `false`.
    pub tls: bool,
    /// User name for authentication. Default `"guest"`.
    pub username: String,
    /// Password for authentication. Default `"guest"`.
    pub password: String,
    /// Virtual host to open (`connection.open`). Default `"/"`.
    pub vhost: String,
    /// Heartbeat interval to ask for, in seconds. Default 60; 0 asks for no
    /// heartbeats. The interval in force is negotiated with the broker.
    pub heartbeat: u16,
    /// Largest frame to accept, in bytes, header and frame-end included.
    /// Default 131072; 0 means no limit. The limit in force is negotiated with
    /// the broker; AMQP allows no limit below 4096.
    pub frame_max: u32,
    /// Highest channel number to allow. Default 2047; 0 means no limit other
    /// than 65535. The limit in force is negotiated with the broker.
    pub channel_max: u16,
    /// How long the TCP connect plus the AMQP handshake may take before the
    /// attempt fails with a timeout. Default 30 s.
    pub connection_timeout: Duration,
    /// How long a blocking call (an RPC, a publish held by back-pressure, a
    /// confirm) may wait before it fails with `Error::Timeout`; the operation
    /// itself is not undone. Default none: wait as long as the connection
    /// lives (heartbeats detect a dead peer).
    pub operation_timeout: Option<Duration>,
    /// SASL mechanism to authenticate with. Default [`AuthMechanism::Plain`].
    pub auth_mechanism: AuthMechanism,
    /// Name sent in the client properties as `connection_name`; RabbitMQ
    /// shows it in its management UI and in `rabbitmqctl list_connections
    /// name`. Default none.
    pub connection_name: Option<String>,
    /// Locale to ask for in `connection.start-ok`. Default `"en_US"`.
    pub locale: String,
    /// Automatic recovery: when the connection is lost (not closed by the
    /// application), reconnect with backoff, reopen every channel with the
    /// same number, restore its qos and confirm/tx mode, declare the
    /// exchanges, queues (server-named ones get new names) and bindings the
    /// application declared, and restart its consumers. Calls in flight fail
    /// with [`Error::ConnectionLost`]; delivery tags from before are refused
    /// locally. Only a connection that was open recovers (a failed first
    /// connect is returned as an error). Default `None`: off.
    pub recovery: Option<RecoveryConfig>,
    /// Receive coalescing: while the broker streams to this connection fast
    /// (more than about 4 KiB per millisecond), the socket wakes the
    /// connection once up to a millisecond of bytes has arrived (4-64 KiB)
    /// instead of on every packet, which saves most of the wake-ups and
    /// system calls of a fast consumer. A message can then wait up to a
    /// millisecond for the rest of its batch, and the last bytes of a burst
    /// a millisecond after the last read, rounded up to the poll's whole
    /// milliseconds (so under two); slower traffic is read as soon as it
    /// arrives.
    /// A publisher with at least 256 confirms outstanding has its acks
    /// coalesced the same way from 128 bytes a millisecond.
    /// Default `true` (Linux only: elsewhere it has no effect).
    pub receive_coalescing: bool,
}

impl Default for ConnectionConfig {
    /// The settings of the URI `amqp://`: user `guest`, password `guest` on
    /// `localhost:5672`, vhost `/`, heartbeat 60 s, frame_max 131072,
    /// channel_max 2047, a 30 s connection timeout, `PLAIN`, locale `en_US`.
    fn default() -> Self {
        ConnectionConfig {
            host: "localhost".to_owned(),
            port: AMQP_PORT,
            tls: false,
            username: "guest".to_owned(),
            password: "guest".to_owned(),
            vhost: "/".to_owned(),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            connection_timeout: Duration::from_secs(30),
            operation_timeout: None,
            auth_mechanism: AuthMechanism::Plain,
            connection_name: None,
            locale: "en_US".to_owned(),
            recovery: None,
            receive_coalescing: true,
        }
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field can't be left out (or leak) silently.
        let ConnectionConfig {
            host,
            port,
            tls,
            username,
            password: _,
            vhost,
            heartbeat,
            frame_max,
            channel_max,
            connection_timeout,
            operation_timeout,
            auth_mechanism,
            connection_name,
            locale,
            recovery,
            receive_coalescing,
        } = self;
        f.debug_struct("ConnectionConfig")
            .field("host", host)
            .field("port", port)
            .field("tls", tls)
            .field("username", username)
            .field("password", &format_args!("<redacted>"))
            .field("vhost", vhost)
            .field("heartbeat", heartbeat)
            .field("frame_max", frame_max)
            .field("channel_max", channel_max)
            .field("connection_timeout", connection_timeout)
            .field("operation_timeout", operation_timeout)
            .field("auth_mechanism", auth_mechanism)
            .field("connection_name", connection_name)
            .field("locale", locale)
            .field("recovery", recovery)
            .field("receive_coalescing", receive_coalescing)
            .finish()
    }
}

impl ConnectionConfig {
    /// Parses an `amqp://` or `amqps://` URI; absent parts keep their
    /// [defaults](ConnectionConfig::default).
    ///
    /// The scheme is `amqp` or `amqps` (in any case); `amqps` turns on TLS and
    /// makes 5671 the default port. User name, password, host and vhost are
    /// percent-decoded, and must be valid UTF-8 once decoded. The vhost is the
    /// path without its leading `/`: no path keeps the default `/`, an empty
    /// path (`amqp://host/`) is the empty vhost, and a `/` inside the name must
    /// be written `%2f`. IPv6 addresses go in brackets: `amqp://[::1]:5672`.
    ///
    /// Query parameters, each at most once:
    ///
    /// | name | value |
    /// |------|-------|
    /// | `heartbeat` | seconds, 0 to 65535 |
    /// | `frame_max` | bytes, 0 (no limit) or 4096 to 4294967295 |
    /// | `channel_max` | 0 to 65535 |
    /// | `connection_timeout` | milliseconds, at least 1 (as RabbitMQ's Erlang client reads it) |
    /// | `operation_timeout` | milliseconds, at least 1: how long a blocking call may wait |
    /// | `recovery` | `true` (automatic recovery with the default backoff) or `false` |
    /// | `receive_coalescing` | `true` (the default) or `false` |
    /// | `auth_mechanism` | `plain`, `amqplain` or `external`, in any case |
    /// | `connection_name` | any text, percent-decoded |
    ///
    /// In the query, `+` stands for a space, as in HTML forms; write a plus
    /// sign as `%2B`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] saying what is wrong, without quoting the
    /// URI or the password: a scheme other than `amqp`/`amqps`, a port that is
    /// not a number from 1 to 65535, a bad percent-escape or non-UTF-8 text, a
    /// vhost with a second unescaped `/`, an unknown or repeated query
    /// parameter, a value out of range, a fragment (`#`), or spaces and
    /// control characters (percent-encode them).
    pub fn from_uri(uri: &str) -> Result<Self, Error> {
        parse(uri)
    }

    /// Sets the broker's host name or IP address (an IPv6 address without
    /// brackets).
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets the TCP port.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the user name and password.
    #[must_use]
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = username.into();
        self.password = password.into();
        self
    }

    /// Sets the virtual host, as the broker names it (`"/"` for the default
    /// one; no percent-encoding here).
    #[must_use]
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }

    /// Sets the heartbeat interval to ask for, in seconds; 0 asks for none.
    #[must_use]
    pub fn heartbeat(mut self, seconds: u16) -> Self {
        self.heartbeat = seconds;
        self
    }

    /// Sets the largest frame to accept, in bytes; 0 means no limit. AMQP
    /// allows no limit below 4096.
    #[must_use]
    pub fn frame_max(mut self, frame_max: u32) -> Self {
        self.frame_max = frame_max;
        self
    }

    /// Sets the highest channel number to allow; 0 means 65535.
    #[must_use]
    pub fn channel_max(mut self, channel_max: u16) -> Self {
        self.channel_max = channel_max;
        self
    }

    /// Sets how long the TCP connect plus the AMQP handshake may take.
    #[must_use]
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets [`ConnectionConfig::operation_timeout`].
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// Turns on automatic recovery with `recovery`'s backoff (see
    /// [`ConnectionConfig::recovery`]).
    #[must_use]
    pub fn recovery(mut self, recovery: RecoveryConfig) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// Turns [`ConnectionConfig::receive_coalescing`] on or off.
    #[must_use]
    pub fn receive_coalescing(mut self, on: bool) -> Self {
        self.receive_coalescing = on;
        self
    }

    /// Sets the SASL mechanism to authenticate with.
    #[must_use]
    pub fn auth_mechanism(mut self, mechanism: AuthMechanism) -> Self {
        self.auth_mechanism = mechanism;
        self
    }

    /// Sets the name the broker shows for this connection.
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Turns TLS on or off. The port is left alone: set it too (TLS brokers
    /// usually listen on 5671).
    #[must_use]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

impl FromStr for ConnectionConfig {
    type Err = Error;

    /// Same as [`ConnectionConfig::from_uri`].
    fn from_str(uri: &str) -> Result<Self, Error> {
        parse(uri)
    }
}

/// An [`Error::InvalidArgument`] about an AMQP URI.
fn invalid(what: impl fmt::Display) -> Error {
    Error::InvalidArgument(format!("AMQP URI: {what}"))
}

fn parse(uri: &str) -> Result<ConnectionConfig, Error> {
    if let Some((at, c)) = uri
        .char_indices()
        .find(|&(_, c)| c.is_whitespace() || c.is_control())
    {
        let kind = if c.is_control() {
            "a control character"
        } else {
            "a space"
        };
        return Err(invalid(format_args!(
            "{kind} at byte {at}; percent-encode it (a space is %20)"
        )));
    }

    let mut config = ConnectionConfig::default();

    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(invalid("it must start with amqp:// or amqps://"));
    };
    if scheme.eq_ignore_ascii_case("amqps") {
        config.tls = true;
        config.port = AMQPS_PORT;
    } else if !scheme.eq_ignore_ascii_case("amqp") {
        return Err(if is_scheme(scheme) {
            invalid(format_args!(
                "the scheme is {scheme:?}; it must be amqp or amqps"
            ))
        } else {
            invalid("it must start with amqp:// or amqps://")
        });
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(invalid(format_args!("{scheme}: must be followed by //")));
    };

    if rest.contains('#') {
        return Err(invalid(
            "a fragment (#...) has no meaning here; write a '#' in a name or password as %23",
        ));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (rest, None),
    };

    let host_port = match authority.split_once('@') {
        Some((userinfo, host_port)) => {
            if host_port.contains('@') {
                return Err(invalid(
                    "more than one '@'; write an '@' in the user name or password as %40",
                ));
            }
            let (username, password) = match userinfo.split_once(':') {
                Some((username, password)) => (username, Some(password)),
                None => (userinfo, None),
            };
            config.username = decode(username, Part::Username)?;
            if let Some(password) = password {
                config.password = decode(password, Part::Password)?;
            }
            host_port
        }
        None => authority,
    };

    let (host, port) = split_host_port(host_port).map_err(|e| match e {
        // `amqp://user:pa/ss@host` splits at the '/': the host is `user` and
        // the "port" is part of the password, which is why no port is quoted.
        Error::InvalidArgument(text)
            if path.is_some_and(|p| p.contains('@')) || query.is_some_and(|q| q.contains('@')) =>
        {
            Error::InvalidArgument(format!(
                "{text} (if the user name or password holds a '/' or '?', write it as %2F or %3F)"
            ))
        }
        e => e,
    })?;
    if let Some(host) = host {
        config.host = host;
    }
    if let Some(port) = port {
        config.port = port;
    }

    if let Some(path) = path {
        if path.contains('/') {
            return Err(invalid(
                "the vhost is one path segment; write a '/' in a vhost name as %2f",
            ));
        }
        config.vhost = decode(path, Part::Vhost)?;
    }

    if let Some(query) = query {
        apply_query(&mut config, query)?;
    }
    Ok(config)
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986): only a
/// string of this shape is quoted back in an error.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Splits `host[:port]` or `[ipv6][:port]`. An empty host or port is absent.
fn split_host_port(host_port: &str) -> Result<(Option<String>, Option<u16>), Error> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((literal, after)) = bracketed.split_once(']') else {
            return Err(invalid("an IPv6 address is missing its closing ']'"));
        };
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err(invalid(format_args!("[{literal}] is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(invalid("only ':port' may follow an IPv6 address's ']'")),
            },
        };
        (Some(literal.to_owned()), port)
    } else {
        let (host, port) = match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        };
        if port.is_some_and(|port| port.contains(':')) {
            return Err(invalid(
                "more than one ':' after the host; write an IPv6 address in brackets, like amqp://[::1]:5672",
            ));
        }
        let host = decode(host, Part::Host)?;
        (if host.is_empty() { None } else { Some(host) }, port)
    };

    let port = match port {
        None | Some("") => None,
        Some(digits) => match parse_digits::<u16>(digits) {
            Some(port) if port != 0 => Some(port),
            _ => return Err(invalid("the port must be a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

fn apply_query(config: &mut ConnectionConfig, query: &str) -> Result<(), Error> {
    let mut seen: Vec<&'static str> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (pair, None),
        };
        let name = decode(name, Part::QueryName)?;
        let Some(&known) = QUERY_PARAMETERS.iter().find(|known| **known == name) else {
            return Err(invalid(format_args!(
                "unknown query parameter {name:?}; warren understands {}",
                QUERY_PARAMETERS.join(", ")
            )));
        };
        if seen.contains(&known) {
            return Err(invalid(format_args!(
                "query parameter {known} is given more than once"
            )));
        }
        seen.push(known);
        let Some(value) = value else {
            return Err(invalid(format_args!(
                "query parameter {known} has no value"
            )));
        };
        let value = decode(value, Part::QueryValue(known))?;

        match known {
            "heartbeat" => {
                config.heartbeat = parse_digits(&value)
                    .ok_or_else(|| out_of_range(known, "seconds from 0 to 65535", &value))?;
            }
            "frame_max" => {
                config.frame_max = parse_digits(&value)
                    .filter(|&n| n == 0 || n >= FRAME_MIN_SIZE)
                    .ok_or_else(|| {
                        out_of_range(
                            known,
                            "bytes, 0 (no limit) or from 4096 (AMQP's minimum) to 4294967295",
                            &value,
                        )
                    })?;
            }
            "channel_max" => {
                config.channel_max = parse_digits(&value)
                    .ok_or_else(|| out_of_range(known, "a number from 0 to 65535", &value))?;
            }
            "connection_timeout" => {
                let millis: u64 = parse_digits(&value)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| out_of_range(known, "milliseconds, at least 1", &value))?;
                config.connection_timeout = Duration::from_millis(millis);
            }
            "operation_timeout" => {
                let millis: u64 = parse_digits(&value)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| out_of_range(known, "milliseconds, at least 1", &value))?;
                config.operation_timeout = Some(Duration::from_millis(millis));
            }
            "recovery" => {
                config.recovery = match value.as_ref() {
                    "true" => Some(RecoveryConfig::default()),
                    "false" => None,
                    _ => return Err(out_of_range(known, "true or false", &value)),
                };
            }
            "receive_coalescing" => {
                config.receive_coalescing = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(out_of_range(known, "true or false", &value)),
                };
            }
            "auth_mechanism" => {
                config.auth_mechanism = AuthMechanism::from_name(&value).ok_or_else(|| {
                    invalid(format_args!(
                        "auth_mechanism must be plain, amqplain or external, not {value:?}"
                    ))
                })?;
            }
            "connection_name" => config.connection_name = Some(value),
            _ => unreachable!("{known} is in QUERY_PARAMETERS but not handled"),
        }
    }
    Ok(())
}

fn out_of_range(name: &str, expected: &str, value: &str) -> Error {
    invalid(format_args!("{name} must be {expected}, not {value:?}"))
}

/// A decimal number of plain ASCII digits (no sign, no spaces) that fits in `T`.
fn parse_digits<T: FromStr>(digits: &str) -> Option<T> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Which part of the URI is being decoded, for error messages and for the
/// query's `+`-is-a-space rule.
#[derive(Clone, Copy)]
enum Part {
    Username,
    Password,
    Host,
    Vhost,
    QueryName,
    QueryValue(&'static str),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Username => f.write_str("the user name"),
            Part::Password => f.write_str("the password"),
            Part::Host => f.write_str("the host"),
            Part::Vhost => f.write_str("the vhost"),
            Part::QueryName => f.write_str("a query parameter name"),
            Part::QueryValue(name) => write!(f, "the value of {name}"),
        }
    }
}

/// Percent-decodes `input` (and, in the query, turns `+` into a space). The
/// result must be UTF-8. A bad escape in the password is not quoted back.
fn decode(input: &str, part: Part) -> Result<String, Error> {
    let plus_is_space = matches!(part, Part::QueryName | Part::QueryValue(_));
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
                let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                    let escape = if matches!(part, Part::Password) {
                        String::new()
                    } else {
                        format!(" {:?}", input[i..].chars().take(3).collect::<String>())
                    };
                    return Err(invalid(format_args!(
                        "{part} has a bad percent-escape{escape}: '%' must be followed by two hex digits (write '%' itself as %25)"
                    )));
                };
                // Two hex digits: at most 0xff.
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| invalid(format_args!("{part} is not UTF-8 once percent-decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> ConnectionConfig {
        match ConnectionConfig::from_uri(uri) {
            Ok(config) => config,
            Err(e) => panic!("{uri} should parse: {e}"),
        }
    }

    /// The message of the error `uri` fails with.
    fn error(uri: &str) -> String {
        match ConnectionConfig::from_uri(uri) {
            Ok(config) => panic!("{uri} should not parse, got {config:?}"),
            Err(Error::InvalidArgument(message)) => message,
            Err(e) => panic!("{uri} should fail with InvalidArgument, got {e:?}"),
        }
    }

    fn assert_error(uri: &str, expected: &str) {
        let message = error(uri);
        assert!(
            message.contains(expected),
            "error for {uri} should mention {expected:?}: {message}"
        );
    }

    #[test]
    fn defaults_are_guest_on_localhost_5672_vhost_slash() {
        let config = ConnectionConfig::default();
        assert_eq!(config.host, "localhost");
        assert_eq!(config.port, 5672);
        assert!(!config.tls);
        assert_eq!(config.username, "guest");
        assert_eq!(config.password, "guest");
        assert_eq!(config.vhost, "/");
        assert_eq!(config.heartbeat, 60);
        assert_eq!(config.frame_max, 131_072);
        assert_eq!(config.channel_max, 2047);
        assert_eq!(config.connection_timeout, Duration::from_secs(30));
        assert_eq!(config.auth_mechanism, AuthMechanism::Plain);
        assert_eq!(config.connection_name, None);
        assert_eq!(config.locale, "en_US");
    }

    #[test]
    fn an_empty_uri_and_a_bare_host_give_the_defaults() {
        assert_eq!(parse("amqp://"), ConnectionConfig::default());
        assert_eq!(parse("amqp://localhost"), ConnectionConfig::default());
        assert_eq!(parse("AMQP://localhost"), ConnectionConfig::default());
        assert_eq!(parse("amqp://localhost?"), ConnectionConfig::default());
        // A zero-length host, and an empty port, count as absent.
        assert_eq!(parse("amqp://:"), ConnectionConfig::default());
    }

    #[test]
    fn a_full_uri_sets_every_part() {
        let config = parse(
            "amqp://alice:secret@broker.example.com:5673/prod\
             ?heartbeat=10&frame_max=8192&channel_max=64&connection_timeout=2500\
             &auth_mechanism=AMQPLAIN&connection_name=billing%20worker&receive_coalescing=false",
        );
        let expected = ConnectionConfig {
            host: "broker.example.com".into(),
            port: 5673,
            tls: false,
            username: "alice".into(),
            password: "secret".into(),
            vhost: "prod".into(),
            heartbeat: 10,
            frame_max: 8192,
            channel_max: 64,
            connection_timeout: Duration::from_millis(2500),
            operation_timeout: None,
            auth_mechanism: AuthMechanism::AmqPlain,
            connection_name: Some("billing worker".into()),
            locale: "en_US".into(),
            recovery: None,
            receive_coalescing: false,
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn the_setters_build_what_the_uri_says() {
        let built = ConnectionConfig::default()
            .host("h")
            .port(1234)
            .tls(true)
            .credentials("u", "p")
            .vhost("v")
            .heartbeat(5)
            .frame_max(4096)
            .channel_max(7)
            .connection_timeout(Duration::from_secs(2))
            .auth_mechanism(AuthMechanism::External)
            .connection_name("n");
        let parsed = parse(
            "amqps://u:p@h:1234/v?heartbeat=5&frame_max=4096&channel_max=7\
             &connection_timeout=2000&auth_mechanism=external&connection_name=n",
        );
        assert_eq!(built, parsed);
    }

    #[test]
    fn user_password_host_and_vhost_are_percent_decoded() {
        let config = parse("amqp://us%40er:p%3Ass@h/%2fvh");
        assert_eq!(config.username, "us@er");
        assert_eq!(config.password, "p:ss");
        assert_eq!(config.host, "h");
        assert_eq!(config.vhost, "/vh");

        // The spec's own example.
        let config = parse("amqp://user%61:%61pass@ho%61st:10000/v%2fhost");
        assert_eq!(
            (
                &*config.username,
                &*config.password,
                &*config.host,
                config.port,
                &*config.vhost
            ),
            ("usera", "apass", "hoast", 10000, "v/host")
        );

        // Multi-byte UTF-8, escaped or not; '+' is literal outside the query.
        let config = parse("amqp://j%C3%B6rg:a+b@h/caf%C3%A9");
        assert_eq!(config.username, "jörg");
        assert_eq!(config.password, "a+b");
        assert_eq!(config.vhost, "café");
        assert_eq!(parse("amqp://h/café").vhost, "café");
    }

    #[test]
    fn a_password_may_hold_colons_and_a_user_may_come_without_one() {
        assert_eq!(parse("amqp://u:a:b@h").password, "a:b");
        let config = parse("amqp://alice@h");
        assert_eq!((&*config.username, &*config.password), ("alice", "guest"));
        let config = parse("amqp://:@h");
        assert_eq!((&*config.username, &*config.password), ("", ""));
    }

    #[test]
    fn the_vhost_is_default_without_a_path_and_empty_with_an_empty_one() {
        assert_eq!(parse("amqp://host").vhost, "/");
        assert_eq!(parse("amqp://host?heartbeat=5").vhost, "/");
        assert_eq!(parse("amqp://host/").vhost, "");
        assert_eq!(parse("amqp://host/?heartbeat=5").vhost, "");
        assert_eq!(parse("amqp://host/%2f").vhost, "/");
        assert_eq!(parse("amqp://host/%2F").vhost, "/");
        assert_eq!(parse("amqp:///vhost").vhost, "vhost");
        let config = parse("amqp://:@/");
        assert_eq!(
            (
                &*config.username,
                &*config.password,
                &*config.host,
                &*config.vhost
            ),
            ("", "", "localhost", "")
        );
    }

    #[test]
    fn amqps_turns_on_tls_and_defaults_to_port_5671() {
        let config = parse("amqps://host");
        assert!(config.tls);
        assert_eq!(config.port, 5671);
        assert_eq!(parse("AmQpS://host:5999").port, 5999);
        assert!(!parse("amqp://host").tls);
    }

    #[test]
    fn ports_from_1_to_65535_are_accepted() {
        assert_eq!(parse("amqp://:10000").port, 10000);
        assert_eq!(parse("amqp://h:1").port, 1);
        assert_eq!(parse("amqp://h:65535/v").port, 65535);
    }

    #[test]
    fn ipv6_literals_go_in_brackets_and_are_held_without_them() {
        let config = parse("amqp://[::1]:5673");
        assert_eq!((&*config.host, config.port), ("::1", 5673));
        let config = parse("amqps://u:p@[2001:db8::7]/v");
        assert_eq!(
            (&*config.host, config.port, &*config.vhost),
            ("2001:db8::7", 5671, "v")
        );
        assert_eq!(parse("amqp://[::1]").host, "::1");
    }

    #[test]
    fn every_query_parameter_is_read() {
        assert_eq!(parse("amqp://h?heartbeat=0").heartbeat, 0);
        assert_eq!(parse("amqp://h?heartbeat=65535").heartbeat, 65535);
        assert_eq!(parse("amqp://h?frame_max=0").frame_max, 0);
        assert_eq!(parse("amqp://h?frame_max=4096").frame_max, 4096);
        assert_eq!(parse("amqp://h?frame_max=4294967295").frame_max, u32::MAX);
        assert_eq!(parse("amqp://h?channel_max=0").channel_max, 0);
        assert_eq!(parse("amqp://h?channel_max=65535").channel_max, 65535);
        assert_eq!(
            parse("amqp://h?connection_timeout=10000").connection_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(
            parse("amqp://h?operation_timeout=2500").operation_timeout,
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse("amqp://h").operation_timeout, None);
    }

    #[test]
    fn receive_coalescing_is_on_unless_turned_off() {
        assert!(parse("amqp://h").receive_coalescing);
        assert!(parse("amqp://h?receive_coalescing=true").receive_coalescing);
        assert!(!parse("amqp://h?receive_coalescing=false").receive_coalescing);
        assert!(
            !ConnectionConfig::default()
                .receive_coalescing(false)
                .receive_coalescing
        );
        assert!(ConnectionConfig::from_uri("amqp://h?receive_coalescing=1").is_err());
    }

    #[test]
    fn recovery_is_off_unless_asked_for() {
        assert_eq!(parse("amqp://h").recovery, None);
        assert_eq!(parse("amqp://h?recovery=false").recovery, None);
        assert_eq!(
            parse("amqp://h?recovery=true").recovery,
            Some(RecoveryConfig::default())
        );
        assert!(ConnectionConfig::from_uri("amqp://h?recovery=yes").is_err());
    }

    #[test]
    fn recovery_backoff_doubles_up_to_its_cap() {
        let config = RecoveryConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_attempts: None,
        };
        let delays: Vec<u128> = (0..6).map(|n| config.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(config.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(
            parse("amqp://h?auth_mechanism=plain").auth_mechanism,
            AuthMechanism::Plain
        );
        assert_eq!(
            parse("amqp://h?auth_mechanism=AmqPlain").auth_mechanism,
            AuthMechanism::AmqPlain
        );
        assert_eq!(
            parse("amqp://h?auth_mechanism=EXTERNAL").auth_mechanism,
            AuthMechanism::External
        );
        assert_eq!(
            parse("amqp://h?connection_name=orders%2Bbilling+%26+more")
                .connection_name
                .as_deref(),
            Some("orders+billing & more")
        );
        assert_eq!(
            parse("amqp://h?connection_name=")
                .connection_name
                .as_deref(),
            Some("")
        );
        // Empty pairs are skipped, names may be escaped.
        let config = parse("amqp://h?&heartbeat=7&&%63hannel_max=9&");
        assert_eq!((config.heartbeat, config.channel_max), (7, 9));
    }

    #[test]
    fn auth_mechanisms_have_their_wire_names() {
        assert_eq!(AuthMechanism::Plain.name(), "PLAIN");
        assert_eq!(AuthMechanism::AmqPlain.name(), "AMQPLAIN");
        assert_eq!(AuthMechanism::External.name(), "EXTERNAL");
        assert_eq!(AuthMechanism::default(), AuthMechanism::Plain);
    }

    #[test]
    fn parse_and_from_uri_agree() {
        let uri = "amqps://u:p@h:1/v?heartbeat=3";
        assert_eq!(uri.parse::<ConnectionConfig>().unwrap(), parse(uri));
        assert!("http://h".parse::<ConnectionConfig>().is_err());
    }

    #[test]
    fn a_scheme_other_than_amqp_or_amqps_is_refused() {
        assert_error("http://host", "\"http\"; it must be amqp or amqps");
        assert_error("amqpx://host", "amqp or amqps");
        assert_error("localhost", "must start with amqp:// or amqps://");
        assert_error("://host", "must start with amqp:// or amqps://");
        assert_error("amqp:host", "amqp: must be followed by //");
        assert_error("amqp:/host", "amqp: must be followed by //");
    }

    #[test]
    fn a_port_outside_1_to_65535_is_refused() {
        for port in ["0", "65536", "99999999999", "-1", "+5", "http", "56 72"] {
            let uri = format!("amqp://h:{port}");
            if port.contains(' ') {
                assert_error(&uri, "a space at byte");
            } else {
                assert_error(&uri, "the port must be a number from 1 to 65535");
            }
        }
        assert_error("amqp://::1", "write an IPv6 address in brackets");
        assert_error(
            "amqp://[::1]:0",
            "the port must be a number from 1 to 65535",
        );
    }

    #[test]
    fn a_malformed_ipv6_literal_is_refused() {
        assert_error("amqp://[::1", "missing its closing ']'");
        assert_error("amqp://[not-ipv6]", "[not-ipv6] is not an IPv6 address");
        assert_error("amqp://[::1]x", "only ':port' may follow");
    }

    #[test]
    fn a_bad_percent_escape_is_refused() {
        assert_error("amqp://h/%zz", "the vhost has a bad percent-escape \"%zz\"");
        assert_error("amqp://h/a%2", "the vhost has a bad percent-escape \"%2\"");
        assert_error("amqp://h/a%", "the vhost has a bad percent-escape");
        assert_error("amqp://us%er@h", "the user name has a bad percent-escape");
        assert_error("amqp://h%g0", "the host has a bad percent-escape");
        assert_error(
            "amqp://h?connection_name=%%",
            "the value of connection_name has a bad",
        );
        assert_error("amqp://h?%zz=1", "a query parameter name has a bad");
        // A multi-byte character after the '%' is quoted whole.
        assert_error("amqp://h/%é", "\"%é\"");
    }

    #[test]
    fn percent_escapes_that_decode_to_non_utf8_are_refused() {
        assert_error(
            "amqp://h/%ff",
            "the vhost is not UTF-8 once percent-decoded",
        );
        assert_error("amqp://u:%c3@h", "the password is not UTF-8");
        assert_error(
            "amqp://h?connection_name=%80",
            "the value of connection_name is not UTF-8",
        );
    }

    #[test]
    fn a_vhost_with_a_second_unescaped_slash_is_refused() {
        assert_error("amqp://h/a/b", "write a '/' in a vhost name as %2f");
        assert_error("amqp://h//", "one path segment");
        assert_error("amqp://h/a/?heartbeat=1", "one path segment");
    }

    #[test]
    fn an_unknown_query_parameter_is_refused_by_name() {
        assert_error(
            "amqp://h?heartbeet=5",
            "unknown query parameter \"heartbeet\"",
        );
        assert_error(
            "amqp://h?cacertfile=/tmp/ca.pem",
            "unknown query parameter \"cacertfile\"",
        );
        assert_error("amqp://h?heartbeat=5&x", "unknown query parameter \"x\"");
        assert_error("amqp://h?heartbeat", "heartbeat has no value");
        assert_error(
            "amqp://h?heartbeat=1&heartbeat=2",
            "heartbeat is given more than once",
        );
        assert_error(
            "amqp://h?auth_mechanism=plain&auth_mechanism=amqplain",
            "auth_mechanism is given more than once",
        );
    }

    #[test]
    fn a_bad_number_is_refused_naming_the_parameter() {
        for (query, name) in [
            ("heartbeat=abc", "heartbeat"),
            ("heartbeat=65536", "heartbeat"),
            ("heartbeat=-1", "heartbeat"),
            ("heartbeat=", "heartbeat"),
            ("heartbeat=1.5", "heartbeat"),
            ("frame_max=4294967296", "frame_max"),
            ("frame_max=x", "frame_max"),
            ("channel_max=70000", "channel_max"),
            ("channel_max=%2B1", "channel_max"),
            ("connection_timeout=ten", "connection_timeout"),
            ("connection_timeout=0", "connection_timeout"),
            (
                "connection_timeout=18446744073709551616",
                "connection_timeout",
            ),
        ] {
            assert_error(&format!("amqp://h?{query}"), &format!("{name} must be"));
        }
        assert_error(
            "amqp://h?auth_mechanism=cram-md5",
            "auth_mechanism must be plain, amqplain or external, not \"cram-md5\"",
        );
    }

    #[test]
    fn a_frame_max_below_4096_is_refused_except_zero() {
        assert_error(
            "amqp://h?frame_max=4095",
            "frame_max must be bytes, 0 (no limit) or from 4096",
        );
        assert_error("amqp://h?frame_max=1", "frame_max must be");
        assert_eq!(parse("amqp://h?frame_max=0").frame_max, 0);
    }

    #[test]
    fn more_than_one_at_sign_a_fragment_or_a_space_is_refused() {
        assert_error("amqp://u:p@ss@h", "more than one '@'");
        assert_error("amqp://u:p#ss@h", "fragment");
        assert_error("amqp://h/v#top", "fragment");
        assert_error("amqp://h/my vhost", "a space at byte 11; percent-encode it");
        assert_error("amqp://h\n", "a control character at byte 8");
    }

    #[test]
    fn a_slash_or_question_mark_in_a_password_gets_a_hint_not_an_echo() {
        for uri in [
            "amqp://u:hun/ter2@h",
            "amqp://u:hun?ter2@h",
            "amqp://u:hun:/ter2@h",
        ] {
            let message = error(uri);
            assert!(
                message.contains("write it as %2F or %3F"),
                "{uri}: {message}"
            );
            assert!(!message.contains("hun"), "{uri}: {message}");
        }
        // No hint when no '@' follows.
        assert!(!error("amqp://h:x/v").contains("%2F"));
    }

    #[test]
    fn errors_never_quote_the_password() {
        for uri in [
            "amqp://u:hunter2@h:0",
            "amqp://u:hunter2%zz@h",
            "amqp://u:hunter2%ff@h",
            "amqp://u:hunter2@h/a/b",
            "amqp://u:hunter2@h?nope=1",
            "amqp://u:hunter2@@h",
            "amqp://u:hunter2#@h",
            "amqp://u:hunter2 @h",
            "http://u:hunter2@h",
        ] {
            let message = error(uri);
            assert!(!message.contains("hunter2"), "{uri}: {message}");
        }
        // Not even the bad escape itself.
        assert!(!error("amqp://u:%zz@h").contains("%zz"));
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let config = parse("amqp://alice:hunter2@h");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("password: <redacted>"), "{debug}");
        assert!(debug.contains("username: \"alice\""), "{debug}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("hunter2"), "{pretty}");
    }
}
