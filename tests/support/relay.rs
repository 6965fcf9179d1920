//! A TCP relay that sits between warren and a real broker and injects
//! network faults on command, as Toxiproxy does for the Java and .NET
//! clients' suites: cut the link, stall it in one direction or both,
//! throttle it, or reset it. Threads and std only.
//!
//! [`Relay::start`] listens on an ephemeral loopback port; each connection
//! accepted there is joined to a new connection to the upstream address by
//! two pump threads, one per direction. Commands apply to every connection
//! the relay carries, at once.
//!
//! ```ignore
//! let relay = Relay::start(broker_address);
//! let connection = Connection::open_with(relay.config(config()))?;
//! relay.stall(Direction::ToBroker); // the client's writes back up
//! relay.resume();
//! relay.cut();                      // both sides see the connection end
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use warren::ConnectionConfig;

use super::fake_broker::set_linger_zero;

/// How often a pump looks at its commands while it waits on a socket.
const POLL: Duration = Duration::from_millis(10);

/// Which way traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (warren) to the broker.
    ToBroker,
    /// From the broker to the client.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    fn includes(self, other: Direction) -> bool {
        self == Direction::Both || self == other
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One direction's knobs.
#[derive(Default)]
struct Valve {
    stalled: AtomicBool,
    /// Bytes per second; 0 for no limit.
    rate: AtomicU64,
}

#[derive(Default)]
struct Shared {
    stopped: AtomicBool,
    to_broker: Valve,
    to_client: Valve,
    record: AtomicBool,
    links: Mutex<Vec<Arc<Link>>>,
}

impl Shared {
    fn valve(&self, direction: Direction) -> &Valve {
        match direction {
            Direction::ToBroker => &self.to_broker,
            _ => &self.to_client,
        }
    }
}

/// One relayed connection: the client's socket and the upstream one.
struct Link {
    /// Handles kept to cut or reset the link; the pumps hold clones.
    client: Mutex<Option<TcpStream>>,
    upstream: Mutex<Option<TcpStream>>,
    /// Set when the link is cut or reset: the pumps stop.
    over: AtomicBool,
    /// Bytes forwarded each way, when recording.
    from_client: Mutex<Vec<u8>>,
    from_broker: Mutex<Vec<u8>>,
}

impl Link {
    fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    fn cut(&self) {
        self.over.store(true, Ordering::Release);
        for side in [&self.client, &self.upstream] {
            if let Some(stream) = &*lock(side) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn reset(&self) {
        if let Some(client) = lock(&self.client).take() {
            let _ = set_linger_zero(&client);
            // The socket is closed (with a RST) when the pumps drop their
            // clones, within one POLL.
        }
        if let Some(upstream) = lock(&self.upstream).take() {
            let _ = set_linger_zero(&upstream);
        }
        self.over.store(true, Ordering::Release);
    }
}

/// A fault-injecting TCP relay to an upstream address.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1 (an ephemeral port) and relays every connection
    /// to `upstream`.
    pub fn start(upstream: impl ToSocketAddrs) -> Relay {
        let upstream: Vec<SocketAddr> = upstream
            .to_socket_addrs()
            .expect("resolve the relay's upstream")
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("a nonblocking listener");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept_loop(&listener, &upstream, &thread_shared))
            .expect("spawn the relay");
        Relay {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address to connect to instead of the upstream one.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `config` aimed at the relay instead of its broker.
    pub fn config(&self, config: ConnectionConfig) -> ConnectionConfig {
        config.host("127.0.0.1").port(self.addr.port())
    }

    /// Keeps a copy of every byte forwarded on connections accepted from
    /// now on (see [`Relay::bytes_from_client`]).
    pub fn record(&self) {
        self.shared.record.store(true, Ordering::Release);
    }

    /// How many connections the relay has accepted.
    pub fn connections(&self) -> usize {
        lock(&self.shared.links).len()
    }

    /// What the client of connection `index` (in accept order) sent, as
    /// far as the relay read it (recording must be on).
    pub fn bytes_from_client(&self, index: usize) -> Vec<u8> {
        lock(&lock(&self.shared.links)[index].from_client).clone()
    }

    /// What the broker sent on connection `index` (recording must be on).
    pub fn bytes_from_broker(&self, index: usize) -> Vec<u8> {
        lock(&lock(&self.shared.links)[index].from_broker).clone()
    }

    /// Stops forwarding in `direction`: the relay stops reading from that
    /// side, so the sender's writes back up once the socket buffers fill.
    pub fn stall(&self, direction: Direction) {
        for d in [Direction::ToBroker, Direction::ToClient] {
            if direction.includes(d) {
                self.shared.valve(d).stalled.store(true, Ordering::Release);
            }
        }
    }

    /// Forwards again in both directions (a throttle stays).
    pub fn resume(&self) {
        for d in [Direction::ToBroker, Direction::ToClient] {
            self.shared.valve(d).stalled.store(false, Ordering::Release);
        }
    }

    /// Limits forwarding in `direction` to `bytes_per_second` (`None`: no limit).
    pub fn throttle(&self, direction: Direction, bytes_per_second: Option<u64>) {
        for d in [Direction::ToBroker, Direction::ToClient] {
            if direction.includes(d) {
                self.shared
                    .valve(d)
                    .rate
                    .store(bytes_per_second.unwrap_or(0), Ordering::Release);
            }
        }
    }

    /// Cuts every link: both sockets are shut down, so the client and the
    /// broker each read end of file.
    pub fn cut(&self) {
        for link in lock(&self.shared.links).iter() {
            link.cut();
        }
    }

    /// Resets every link: the client's socket is closed with SO_LINGER 0,
    /// so its next read or write fails with `ConnectionReset`.
    pub fn reset(&self) {
        for link in lock(&self.shared.links).iter() {
            link.reset();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.cut();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: &[SocketAddr], shared: &Arc<Shared>) {
    while !shared.stopped.load(Ordering::Acquire) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => return,
        };
        if let Err(e) = relay_connection(client, upstream, shared) {
            eprintln!("relay: could not join a connection to its upstream: {e}");
        }
    }
}

fn relay_connection(
    client: TcpStream,
    upstream: &[SocketAddr],
    shared: &Arc<Shared>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = connect(upstream)?;
    for stream in [&client, &upstream] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(POLL))?;
    }
    let link = Arc::new(Link {
        client: Mutex::new(Some(client.try_clone()?)),
        upstream: Mutex::new(Some(upstream.try_clone()?)),
        over: AtomicBool::new(false),
        from_client: Mutex::new(Vec::new()),
        from_broker: Mutex::new(Vec::new()),
    });
    lock(&shared.links).push(link.clone());
    let pumps = [
        (
            client.try_clone()?,
            upstream.try_clone()?,
            Direction::ToBroker,
        ),
        (upstream, client, Direction::ToClient),
    ];
    for (from, to, direction) in pumps {
        let (link, shared) = (link.clone(), shared.clone());
        std::thread::Builder::new()
            .name(format!("relay-{direction:?}"))
            .spawn(move || pump(from, to, direction, &link, &shared))?;
    }
    Ok(())
}

fn connect(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no upstream address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(5)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Forwards `from` to `to` until either side ends or the link is cut,
/// obeying the direction's stall and throttle.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    direction: Direction,
    link: &Link,
    shared: &Shared,
) {
    let valve = shared.valve(direction);
    let record = shared.record.load(Ordering::Acquire);
    let mut buf = vec![0u8; 64 * 1024];
    'pump: while !link.is_over() {
        if valve.stalled.load(Ordering::Acquire) {
            std::thread::sleep(POLL);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                // An orderly end from this side: pass it on.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => {
                link.cut();
                return;
            }
        };
        if record {
            let log = match direction {
                Direction::ToBroker => &link.from_client,
                _ => &link.from_broker,
            };
            lock(log).extend_from_slice(&buf[..n]);
        }
        let mut sent = 0;
        while sent < n {
            if link.is_over() {
                break 'pump;
            }
            if valve.stalled.load(Ordering::Acquire) {
                std::thread::sleep(POLL);
                continue;
            }
            let rate = valve.rate.load(Ordering::Acquire);
            // Throttled: pieces of a twentieth of a second's worth.
            let piece = if rate == 0 {
                n - sent
            } else {
                ((rate / 20).max(1) as usize).min(n - sent)
            };
            let started = Instant::now();
            match to.write(&buf[sent..sent + piece]) {
                Ok(0) => {
                    link.cut();
                    return;
                }
                Ok(k) => {
                    sent += k;
                    if rate > 0 {
                        let due = Duration::from_secs_f64(k as f64 / rate as f64);
                        std::thread::sleep(due.saturating_sub(started.elapsed()));
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    link.cut();
                    return;
                }
            }
        }
    }
}
