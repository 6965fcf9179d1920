//! The I/O driver: one mio event loop thread per connection. The only place
//! with sockets, threads and clocks; all protocol decisions are the
//! session's.
//!
//! Each turn: read everything the socket has into one buffer and hand it to
//! the session; take every queued command; fire timers; hand the session's
//! events to the waiting handles (deliveries in one batch per consumer); and
//! write everything produced in the turn with as few writes as the socket
//! allows.
//!
//! The reactor thread runs these turns whenever no blocking caller does: a
//! caller about to park for its result drives the turns itself until the
//! result is in (leader/follower, see `lead`).

mod coalesce;
pub(crate) mod handle;
mod lead;
#[cfg(all(unix, feature = "tokio"))]
mod runtime;

pub(crate) use self::lead::Lead;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use self::coalesce::{ReceiveCoalescing, NO_MARK};
use self::handle::{lock, ChannelShared, Completion, ConnectionEvent, ConsumerQueue, Shared};
use crate::error::Error;
use crate::protocol::{BasicAck, BasicReject, FieldTable, Method};
use crate::session::recovery::Topology;
use crate::session::{Command, Delivery, Event, Reply, Session};
use crate::uri::ConnectionConfig;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// The wake-up timer async callers arm (see `runtime::WakeupTimer`).
#[cfg(all(target_os = "linux", feature = "tokio"))]
const WAKEUP_TIMER: Token = Token(2);

/// Bytes reserved for each read: one read can take many frames.
const READ_CHUNK: usize = 128 * 1024;

/// How many filled read blocks are kept to be reused once no delivery views
/// them any more (each is `READ_CHUNK` and a bit): a consumer whose buffer
/// holds a few blocks' worth of deliveries reads into recycled blocks, not
/// fresh allocations (and fresh pages). Let go after [`KEEP_BLOCKS_IDLE`]
/// without a new block.
const RECYCLED_BLOCKS: usize = 8;

/// How long filled blocks are kept for reuse when reading needs no new one.
const KEEP_BLOCKS_IDLE: Duration = Duration::from_secs(1);

/// How long a closed connection may take to write what it has left.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// The smallest window offered to a read.
const MIN_READ_WINDOW: usize = 8 * 1024;

/// A turn that takes this many publishes at once shows a publisher faster
/// than the wake-ups that serve it: the next poll gathers publishes.
const STREAMING_PUBLISHES: usize = 8;

/// How long a poll gathers a fast publisher's publishes before writing them
/// (the poll's timeout resolution is a millisecond). A publisher that slows
/// below [`STREAMING_PUBLISHES`] a millisecond is woken for each publish
/// again after at most this long.
pub(crate) const GATHER_WAIT: Duration = Duration::from_millis(1);

type Cmd = Command<Arc<Completion>, Arc<ConsumerQueue>>;

/// A connection being opened: its reactor thread connects and runs the
/// handshake; `handshake` completes when the connection is open (then
/// [`Shared::info`] holds what was negotiated) or failed.
pub(crate) struct Starting {
    pub(crate) shared: Arc<Shared>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) handshake: Arc<Completion>,
}

/// Starts the reactor thread, which opens the TCP connection (trying each
/// resolved address within the connection timeout) and runs the AMQP
/// handshake. Returns at once; nothing here blocks.
pub(crate) fn start(config: ConnectionConfig) -> Result<Starting, Error> {
    if config.tls {
        return Err(Error::InvalidArgument(
            "amqps:// (TLS) is not supported yet; use amqp://".into(),
        ));
    }
    let poll = Poll::new()?;
    let shared = Arc::new(Shared::new(&poll)?);
    let handshake = Completion::new();
    let (thread_shared, thread_handshake) = (shared.clone(), handshake.clone());
    let thread = std::thread::Builder::new()
        .name("warren-reactor".into())
        .spawn(move || {
            let opened = open_socket(&config).and_then(|stream| {
                Ok(Reactor::new(
                    config,
                    poll,
                    stream,
                    thread_shared.clone(),
                    thread_handshake.clone(),
                )?)
            });
            match opened {
                Ok(reactor) => Reactor::run(&thread_shared, reactor),
                Err(e) => {
                    *lock(&thread_shared.closed) = Some(e.clone());
                    thread_handshake.complete(Err(e));
                }
            }
        })?;
    Ok(Starting {
        shared,
        thread,
        handshake,
    })
}

/// Connects the TCP socket and readies it for the event loop.
fn open_socket(config: &ConnectionConfig) -> Result<TcpStream, Error> {
    let stream = connect(&config.host, config.port, config.connection_timeout)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

/// Whether this connection coalesces its reads (see `coalesce`): asked for,
/// and on a system where the reactor can set the mark.
fn coalescing_wanted(config: &ConnectionConfig) -> bool {
    config.receive_coalescing && cfg!(target_os = "linux")
}

/// Sets how many bytes the socket waits for before it is reported readable
/// (`SO_RCVLOWAT`).
#[cfg(target_os = "linux")]
fn set_receive_mark(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one `c_int` from a live local, for a
    // descriptor the socket owns for the length of the call.
    let status = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive coalescing is Linux-only for now: the mark is never set.
#[cfg(not(target_os = "linux"))]
fn set_receive_mark(_socket: &TcpStream, _bytes: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<StdTcpStream, Error> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host} resolves to no address"),
    );
    for addr in addrs {
        match StdTcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = io::Error::new(e.kind(), format!("connecting to {addr}: {e}")),
        }
    }
    Err(last.into())
}

/// What the handshake negotiated, passed from the reactor to the opener.
pub(crate) struct HandshakeInfo {
    pub(crate) server_properties: FieldTable,
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) heartbeat: u16,
}

type Recorded = Topology<Arc<ConsumerQueue>>;

struct Reactor {
    config: ConnectionConfig,
    poll: Poll,
    events: Events,
    /// When the session closed, if it did: the final flush's start.
    closed_at: Option<Instant>,
    socket: TcpStream,
    session: Session<Arc<Completion>, Arc<ConsumerQueue>>,
    shared: Arc<Shared>,
    connected: Option<Arc<Completion>>,
    /// The bytes read: its first `read_len` are unread by the session; past
    /// them, room earlier reads already initialised.
    read_buf: BytesMut,
    read_len: usize,
    /// Earlier read blocks, oldest first, still viewed by deliveries or
    /// free to be reused (see [`RECYCLED_BLOCKS`]).
    filled_blocks: VecDeque<BytesMut>,
    /// When reading last moved to another block.
    block_switched_at: Instant,
    /// How many bytes the next read is offered (adapts to what reads return).
    read_window: usize,
    /// How many bytes the socket waits for before it is reported readable.
    coalescing: ReceiveCoalescing,
    commands: Vec<Cmd>,
    /// Armed for the next deadline when an async caller leaves the poll to
    /// its runtime; `None` if it could not be made.
    #[cfg(all(target_os = "linux", feature = "tokio"))]
    wakeup_timer: Option<runtime::WakeupTimer>,
    /// Wakers of the results a dispatch completed, woken at its end.
    wake_later: Vec<std::task::Waker>,
    writable_interest: bool,
    /// The last turn took at least [`STREAMING_PUBLISHES`] publishes: the
    /// next poll gathers publishes for up to [`GATHER_WAIT`].
    publishes_streaming: bool,
    /// From a loss until the replay is done: application commands wait.
    recovering: bool,
    /// Reconnection attempts made in the current recovery.
    recovery_attempt: u32,
    /// Why the connection ended, when no session can say (recovery gave up
    /// between sessions, or the application closed it then).
    final_error: Option<Error>,
}

impl Reactor {
    fn new(
        config: ConnectionConfig,
        poll: Poll,
        mut socket: TcpStream,
        shared: Arc<Shared>,
        connected: Arc<Completion>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        let coalescing = ReceiveCoalescing::new(coalescing_wanted(&config), Instant::now());
        #[cfg(all(target_os = "linux", feature = "tokio"))]
        let wakeup_timer = runtime::WakeupTimer::new(poll.registry(), WAKEUP_TIMER).ok();
        Ok(Reactor {
            session: Session::new(config.clone(), Instant::now()),
            config,
            poll,
            events: Events::with_capacity(16),
            closed_at: None,
            socket,
            shared,
            connected: Some(connected),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            read_len: 0,
            filled_blocks: VecDeque::new(),
            block_switched_at: Instant::now(),
            read_window: MIN_READ_WINDOW,
            coalescing,
            commands: Vec::new(),
            #[cfg(all(target_os = "linux", feature = "tokio"))]
            wakeup_timer,
            wake_later: Vec::new(),
            writable_interest: false,
            publishes_streaming: false,
            recovering: false,
            recovery_attempt: 0,
            final_error: None,
        })
    }

    /// The reactor thread: drives sessions until the connection is over
    /// (the first, and with recovery on, each one that replaces a lost
    /// one), sharing the driving with blocking callers.
    fn run(shared: &Shared, reactor: Self) {
        let mut guard = shared.lead.install(reactor);
        loop {
            guard = shared.drive_until_finished(Some(guard));
            let reactor = guard.as_mut().expect("installed above");
            reactor.dispatch();
            let Some(topology) = reactor.session.take_recovery() else {
                break;
            };
            if !reactor.reconnect(topology) {
                break;
            }
        }
        let mut reactor = shared.retire(guard);
        reactor.dispatch();
        reactor.shutdown();
    }

    /// Whether a blocking caller may drive: the connection is open and not
    /// recovering (everything else is the reactor thread's).
    fn may_lead(&self) -> bool {
        self.session.is_open() && !self.recovering
    }

    /// Whether the session is closed and its last output written (or the
    /// socket had its while to take it: a stalled peer).
    fn finished(&mut self) -> bool {
        if !self.session.is_closed() {
            return false;
        }
        let since = *self.closed_at.get_or_insert_with(Instant::now);
        self.session.poll_transmit().is_none() || since.elapsed() >= FINAL_FLUSH
    }

    /// Writes what is pending and hands the session's events out.
    fn settle(&mut self) {
        self.flush();
        self.dispatch();
    }

    /// One turn of the event loop: waits for the socket, the waker or the
    /// session's next deadline (and at most `max_wait`), takes what came in
    /// and every queued command, fires timers, then settles.
    fn turn(&mut self, max_wait: Option<Duration>) {
        let started = Instant::now();
        let mut timeout = self
            .next_deadline(started)
            .map(|t| t.saturating_duration_since(started));
        if let Some(max) = max_wait {
            timeout = Some(timeout.map_or(max, |t| t.min(max)));
        }
        // Commands queued while nobody polled came without a wake (acks
        // inside `Shared::send_acks_here`'s spacing, or anything queued
        // while the driver was busy): take them now.
        let briefly = self.coalescing.max_wait(started).is_some();
        // A fast publisher's publishes are gathered for at most
        // GATHER_WAIT, so one wake-up and one write carry many (see
        // `Shared::submit`).
        let gathering = self.publishes_streaming && !self.recovering && !self.session.is_closed();
        if gathering {
            timeout = Some(timeout.map_or(GATHER_WAIT, |t| t.min(GATHER_WAIT)));
        }
        let queued = self.shared.prepare_poll(briefly, gathering);
        if queued && !self.recovering && !self.session.is_closed() {
            timeout = Some(Duration::ZERO);
        }
        let polled = self.poll.poll(&mut self.events, timeout);
        self.shared.done_polling();
        if let Err(e) = polled {
            if e.kind() != io::ErrorKind::Interrupted {
                self.session.handle_eof(Some(e), Instant::now());
            }
            self.settle();
            return;
        }
        let now = Instant::now();
        let mut readable = false;
        let mut hung_up = false;
        for event in self.events.iter().filter(|e| e.token() == SOCKET) {
            readable |= event.is_readable() || event.is_read_closed() || event.is_error();
            hung_up |= event.is_read_closed() || event.is_error();
        }
        // Bytes under the receive mark are read once the fallback is due.
        let fallback = !readable && self.coalescing.read_due(now);
        if readable || fallback {
            self.read(now, hung_up, fallback);
        }
        if !self.filled_blocks.is_empty()
            && now.saturating_duration_since(self.block_switched_at) > KEEP_BLOCKS_IDLE
        {
            self.filled_blocks.clear();
        }
        if self.session.is_closed() {
            // Nothing more to do but flush.
        } else if self.recovering {
            // Commands wait for the replay, except a close.
            if let Some(reply) = self.shared.take_close_request() {
                self.close_while_recovering(reply, now);
            }
        } else {
            self.handle_commands(now);
        }
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        self.settle();
    }

    /// When the next turn is due without input: the session's next
    /// deadline (the final flush's, once closed), or receive coalescing's
    /// fallback read, whichever comes first.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let deadline = match self.closed_at {
            Some(since) => Some(since + FINAL_FLUSH),
            None => self.session.poll_timeout(),
        };
        match self.coalescing.max_wait(now).map(|wait| now + wait) {
            Some(fallback) => Some(deadline.map_or(fallback, |d| d.min(fallback))),
            None => deadline,
        }
    }

    /// An async caller leaves the poll to its runtime: the wake-up timer
    /// makes the poll readable at the next deadline (Linux; elsewhere the
    /// reactor thread's handback looks after deadlines).
    #[cfg(all(unix, feature = "tokio"))]
    fn arm_wakeup(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let now = Instant::now();
            let deadline = self.next_deadline(now);
            if let Some(timer) = &mut self.wakeup_timer {
                timer.arm(deadline, now);
            }
        }
    }

    /// Takes every queued command into the session.
    fn handle_commands(&mut self, now: Instant) {
        let publishes = self.shared.take_commands(&mut self.commands);
        self.publishes_streaming = publishes >= STREAMING_PUBLISHES;
        coalesce_acks(&mut self.commands);
        for command in self.commands.drain(..) {
            self.session.handle_command(command, now);
        }
    }

    /// Sends the queued commands without waiting for input (a thread that
    /// found nobody driving).
    fn send_queued(&mut self) {
        self.handle_commands(Instant::now());
        self.settle();
    }

    /// The application closed the connection during a recovery: an orderly
    /// close if the new connection is open, else it is dropped.
    fn close_while_recovering(&mut self, reply: Arc<Completion>, now: Instant) {
        if self.session.is_open() {
            let close = Command::Close {
                code: 200,
                text: crate::protocol::ShortString::from_static("goodbye"),
                reply,
            };
            self.session.handle_command(close, now);
        } else {
            self.session.abort();
            reply.complete(Ok(Reply::Sent));
        }
    }

    /// After a loss with recovery on: waits (backing off), reconnects and
    /// starts a session that replays `topology`. `false` when recovery gave
    /// up or the application closed the connection meanwhile.
    fn reconnect(&mut self, topology: Recorded) -> bool {
        let mut cause = self.session.error().cloned().unwrap_or(Error::Closed);
        if !self.recovering {
            self.recovering = true;
            self.recovery_attempt = 0;
            // Tags delivered before the loss are void: acks of them are refused.
            for channel in lock(&self.shared.channels).values() {
                lock(&channel.unsettled).clear();
            }
            self.shared.blocked.store(false, Ordering::Release);
            self.shared.push_event(ConnectionEvent::RecoveryStarted {
                cause: cause.clone(),
            });
        }
        let policy = self.config.recovery.unwrap_or_default();
        let _ = self.poll.registry().deregister(&mut self.socket);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        loop {
            if policy
                .max_attempts
                .is_some_and(|max| self.recovery_attempt >= max)
            {
                self.give_up(topology, cause.clone());
                self.shared
                    .push_event(ConnectionEvent::RecoveryFailed { error: cause });
                return false;
            }
            let delay = policy.delay(self.recovery_attempt);
            self.recovery_attempt += 1;
            if let Some(reply) = self.sleep_unless_closed(delay) {
                self.give_up(topology, Error::Closed);
                reply.complete(Ok(Reply::Sent));
                return false;
            }
            match open_socket(&self.config) {
                Ok(socket) => {
                    if self.use_socket(socket).is_err() {
                        continue;
                    }
                    self.session = Session::resume(self.config.clone(), Instant::now(), topology);
                    return true;
                }
                Err(e) => cause = e,
            }
        }
    }

    /// Ends the connection for good between sessions: consumers recovery
    /// held learn why.
    fn give_up(&mut self, topology: Recorded, error: Error) {
        for consumer in topology.into_consumers() {
            consumer.end(Err(error.clone()));
        }
        self.final_error = Some(error);
    }

    /// Waits `delay`; returns a close request if the application made one.
    fn sleep_unless_closed(&mut self, delay: Duration) -> Option<Arc<Completion>> {
        let deadline = Instant::now() + delay;
        let mut events = Events::with_capacity(4);
        loop {
            if let Some(reply) = self.shared.take_close_request() {
                return Some(reply);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let _ = self.poll.poll(&mut events, Some(deadline - now));
        }
    }

    /// Makes `socket` the connection's socket, with a fresh read buffer.
    fn use_socket(&mut self, mut socket: TcpStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        self.socket = socket;
        self.closed_at = None;
        self.read_buf.clear();
        self.read_len = 0;
        self.read_window = MIN_READ_WINDOW;
        self.coalescing = ReceiveCoalescing::new(coalescing_wanted(&self.config), Instant::now());
        self.writable_interest = false;
        Ok(())
    }

    /// Reads until the socket would block, then lets the session take
    /// every complete frame.
    /// `hung_up`: the event said the peer closed (or reset) too, so a short
    /// read is no proof the socket is drained: read on to end of file.
    /// `fallback`: the socket was not reported readable, but bytes under the
    /// receive mark are due.
    fn read(&mut self, now: Instant, hung_up: bool, fallback: bool) {
        // Bytes read since the session last took frames.
        let mut fresh = false;
        let mut total = 0;
        loop {
            let len = self.read_len;
            if self.read_buf.capacity() - len < READ_CHUNK / 2 {
                self.next_block();
            }
            // Offer the socket a window sized from recent reads. A read needs
            // initialised bytes: only the part of the window no earlier read
            // reached is zeroed (`resize` writes past the buffer's length
            // only), so each byte of a block is zeroed once, not once per read.
            let spare = (self.read_buf.capacity() - len).min(self.read_window);
            if self.read_buf.len() < len + spare {
                self.read_buf.resize(len + spare, 0);
            }
            match self.socket.read(&mut self.read_buf[len..len + spare]) {
                Ok(0) => {
                    if fresh {
                        self.take_frames(now);
                    }
                    self.session.handle_eof(None, now);
                    return;
                }
                Ok(n) => {
                    self.read_len += n;
                    total += n;
                    fresh = true;
                    if n < spare {
                        if n < self.read_window / 4 {
                            self.read_window = (self.read_window / 2).max(MIN_READ_WINDOW);
                        }
                        // Edge-triggered: a short read drained the socket,
                        // unless the end of file came with this data.
                        if !hung_up {
                            break;
                        }
                        continue;
                    }
                    self.read_window = (self.read_window * 2).min(READ_CHUNK);
                    // A full window and more to come: the session takes its
                    // frames now, so the buffer never holds more than a
                    // partial frame when it needs a new block.
                    self.take_frames(now);
                    fresh = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if fresh {
                        self.take_frames(now);
                    }
                    self.session.handle_eof(Some(e), now);
                    return;
                }
            }
        }
        if fresh {
            self.take_frames(now);
        }
        let deep = self
            .session
            .confirms_outstanding_at_least(coalesce::DEEP_PIPELINE);
        self.coalescing.confirms_outstanding(deep);
        if let Some(mark) = self.coalescing.after_read(total, fallback, now) {
            if set_receive_mark(&self.socket, mark).is_err() {
                self.coalescing.disable();
                let _ = set_receive_mark(&self.socket, NO_MARK);
            }
        }
    }

    /// Moves reading to another block, carrying the unread bytes (at most a
    /// partial frame) over: the oldest filled block if no delivery views it
    /// any more, else a new one.
    fn next_block(&mut self) {
        let reusable = self
            .filled_blocks
            .iter_mut()
            .position(|block| block.try_reclaim(READ_CHUNK + self.read_len));
        let mut next = match reusable.and_then(|i| self.filled_blocks.remove(i)) {
            Some(block) => block,
            None => BytesMut::with_capacity(READ_CHUNK + self.read_len),
        };
        next.extend_from_slice(&self.read_buf[..self.read_len]);
        let mut filled = std::mem::replace(&mut self.read_buf, next);
        // An empty view that keeps the block for reuse.
        filled.clear();
        if self.filled_blocks.len() == RECYCLED_BLOCKS {
            self.filled_blocks.pop_front();
        }
        self.filled_blocks.push_back(filled);
        self.block_switched_at = Instant::now();
    }

    /// Hands the unread bytes to the session, which takes every complete
    /// frame; the rest (a partial frame) stays at the front of the buffer,
    /// joined again with the already-initialised room behind it.
    fn take_frames(&mut self, now: Instant) {
        let mut unread = self.read_buf.split_to(self.read_len);
        self.session.handle_bytes(&mut unread, now);
        self.read_len = unread.len();
        // Contiguous halves of one block: joined without a copy.
        unread.unsplit(std::mem::take(&mut self.read_buf));
        self.read_buf = unread;
    }

    /// Writes what the session produced, until done or the socket is full.
    fn flush(&mut self) {
        let mut want_writable = false;
        while let Some(bytes) = self.session.poll_transmit() {
            match self.socket.write(bytes) {
                Ok(0) => break,
                Ok(n) => self.session.transmitted(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    want_writable = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.session.handle_eof(Some(e), Instant::now());
                    // Nothing more can be written: drop what is pending.
                    while let Some(bytes) = self.session.poll_transmit() {
                        let n = bytes.len();
                        self.session.transmitted(n);
                    }
                    break;
                }
            }
        }
        if want_writable != self.writable_interest {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut self.socket, SOCKET, interest)
                .is_ok()
            {
                self.writable_interest = want_writable;
            }
        }
        self.shared.release_room(self.session.pending_output());
    }

    /// Hands the session's events to the handles.
    fn dispatch(&mut self) {
        let mut wake_later = std::mem::take(&mut self.wake_later);
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Connected { server_properties } => {
                    let tuning = self.session.tuning().expect("tuned before open");
                    *lock(&self.shared.info) = Some(HandshakeInfo {
                        server_properties,
                        channel_max: tuning.channel_max,
                        frame_max: tuning.frame_max,
                        heartbeat: tuning.heartbeat,
                    });
                    if let Some(c) = self.connected.take() {
                        c.complete(Ok(Reply::Sent));
                    }
                }
                Event::Done { reply, result } => {
                    if let Ok(Reply::ChannelOpened(channel)) = &result {
                        lock(&self.shared.channels)
                            .insert(channel.id, Arc::new(ChannelShared::default()));
                    }
                    reply.complete_later(result, &mut wake_later);
                }
                Event::Delivery { consumer, delivery } => self.hand_over(consumer, delivery),
                Event::ConsumerEnded { consumer, reason } => consumer.end(reason),
                Event::Returned { channel, message } => {
                    lock(&self.shared.channel(channel).returns).push_back(message);
                }
                Event::Recovered { channel } => {
                    // Deliveries before recover-ok (handed over already)
                    // carry the tags it voids.
                    if let Some(ch) = lock(&self.shared.channels).get(&channel) {
                        lock(&ch.unsettled).clear();
                    }
                }
                Event::ChannelClosed { channel, error } => {
                    if let Some(ch) = lock(&self.shared.channels).remove(&channel) {
                        *lock(&ch.closed) = Some(error);
                    }
                }
                Event::Blocked(reason) => {
                    self.shared.blocked.store(true, Ordering::Release);
                    self.shared.push_event(ConnectionEvent::Blocked {
                        reason: reason.unwrap_or_default(),
                    });
                }
                Event::Unblocked => {
                    self.shared.blocked.store(false, Ordering::Release);
                    self.shared.push_event(ConnectionEvent::Unblocked);
                    self.shared.release_room(self.session.pending_output());
                }
                Event::Flow { channel, active } => {
                    self.shared
                        .channel(channel)
                        .flow_paused
                        .store(!active, Ordering::Release);
                }
                Event::Closed(error) => {
                    if let Some(c) = self.connected.take() {
                        c.complete(Err(error.clone()));
                    }
                    *lock(&self.shared.closed) = Some(error);
                    self.shared.wake_event_waiter();
                }
                // The reactor reconnects once the session is flushed.
                Event::Lost => {}
                Event::RecoveryDone(report) => {
                    self.recovering = false;
                    self.recovery_attempt = 0;
                    // Commands that waited for the replay go next turn.
                    self.shared.wake_reactor();
                    self.shared.push_event(ConnectionEvent::Recovered(report));
                }
            }
        }
        // Drained in place: the vector keeps its room for the next turn.
        for waker in wake_later.drain(..) {
            waker.wake();
        }
        self.wake_later = wake_later;
    }

    /// Hands `first`, and the deliveries right behind it in the session's
    /// events for the same consumer, to that consumer: one lock and one
    /// wake-up per run, each delivery moved from the session's queue into
    /// the consumer's.
    fn hand_over(&mut self, consumer: Arc<ConsumerQueue>, first: Delivery) {
        let session = &mut self.session;
        let mut next = || match session.poll_event_if(|event| delivers_to(event, &consumer)) {
            Some(Event::Delivery { delivery, .. }) => Some(delivery),
            _ => None,
        };
        if !consumer.is_abandoned() {
            if consumer.acknowledged {
                // Record the tags before the application can see (and ack) them.
                let mut unsettled = lock(&consumer.channel_state.unsettled);
                consumer.push_run(first, |delivery| {
                    unsettled.delivered(delivery.delivery_tag);
                    next()
                });
            } else {
                consumer.push_run(first, |_| next());
            }
            return;
        }
        // The application dropped the consumer before the broker heard the
        // cancel: give the messages back rather than hold them.
        let mut tags = vec![first.delivery_tag];
        tags.extend(std::iter::from_fn(next).map(|delivery| delivery.delivery_tag));
        if !consumer.acknowledged {
            tags.clear();
        }
        for delivery_tag in tags {
            let reject = Method::BasicReject(BasicReject {
                delivery_tag,
                requeue: true,
            });
            let command = Command::Send {
                channel: consumer.channel,
                method: reject,
            };
            self.session.handle_command(command, Instant::now());
        }
    }

    /// After the session closed: every handle learns why, and commands that
    /// raced with the close fail with the same error.
    fn shutdown(&mut self) {
        let error = self
            .final_error
            .take()
            .or_else(|| self.session.error().cloned())
            .unwrap_or(Error::Closed);
        *lock(&self.shared.closed) = Some(error.clone());
        self.shared.wake_event_waiter();
        for (_, ch) in lock(&self.shared.channels).drain() {
            lock(&ch.closed).get_or_insert_with(|| error.clone());
        }
        self.shared.take_commands(&mut self.commands);
        for command in self.commands.drain(..) {
            fail(command, &error);
        }
        self.shared.release_room(0);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Whether `event` is a delivery to `consumer`.
fn delivers_to(
    event: &Event<Arc<Completion>, Arc<ConsumerQueue>>,
    consumer: &Arc<ConsumerQueue>,
) -> bool {
    matches!(event, Event::Delivery { consumer: c, .. } if Arc::ptr_eq(c, consumer))
}

/// Drops every `multiple` ack that a later `multiple` ack on the same
/// channel covers, when nothing else for that channel came between them:
/// a run of in-order acks leaves as one frame. Order is otherwise kept.
fn coalesce_acks(commands: &mut Vec<Cmd>) {
    let is_multiple_ack = |c: &Cmd| {
        matches!(
            c,
            Command::Send {
                method: Method::BasicAck(BasicAck { multiple: true, .. }),
                ..
            }
        )
    };
    if commands
        .iter()
        .filter(|c| is_multiple_ack(c))
        .nth(1)
        .is_none()
    {
        return; // fewer than two: nothing to coalesce
    }
    // For each command, scanning backwards: keep a multiple ack unless a
    // later multiple ack on its channel follows with nothing else between.
    let mut superseded: Vec<crate::session::ChannelRef> = Vec::new();
    let mut keep = vec![true; commands.len()];
    for (i, command) in commands.iter().enumerate().rev() {
        let channel = match command {
            Command::Rpc { channel, .. }
            | Command::Consume { channel, .. }
            | Command::Publish { channel, .. }
            | Command::Send { channel, .. }
            | Command::WaitForConfirms { channel, .. }
            | Command::CloseChannel { channel, .. } => *channel,
            _ => continue,
        };
        let covered = superseded.contains(&channel);
        if is_multiple_ack(command) {
            keep[i] = !covered;
            if !covered {
                superseded.push(channel);
            }
        } else if covered {
            superseded.retain(|c| *c != channel);
        }
    }
    let mut index = 0;
    commands.retain(|_| {
        index += 1;
        keep[index - 1]
    });
}

/// Completes a command the closed connection will never run.
fn fail(command: Cmd, error: &Error) {
    match command {
        Command::OpenChannel { reply }
        | Command::Rpc { reply, .. }
        | Command::ConnectionRpc { reply, .. }
        | Command::WaitForConfirms { reply, .. }
        | Command::CloseChannel { reply, .. } => reply.complete(Err(error.clone())),
        Command::Close { reply, .. } => reply.complete(Ok(Reply::Sent)),
        Command::Consume {
            reply, consumer, ..
        } => {
            consumer.end(Err(error.clone()));
            reply.complete(Err(error.clone()));
        }
        Command::Publish { confirm, .. } => {
            if let Some(reply) = confirm {
                reply.complete(Err(error.clone()));
            }
        }
        Command::Send { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ChannelRef;

    fn channel(id: u16) -> ChannelRef {
        ChannelRef { id, serial: 1 }
    }

    fn ack(id: u16, tag: u64, multiple: bool) -> Cmd {
        Command::Send {
            channel: channel(id),
            method: Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple,
            }),
        }
    }

    fn publish(id: u16) -> Cmd {
        Command::Publish {
            channel: channel(id),
            method: Default::default(),
            properties: Default::default(),
            body: Default::default(),
            confirm: None,
        }
    }

    /// (channel, tag, multiple) of the acks, or (channel, 0, false) for a publish.
    fn shape(commands: &[Cmd]) -> Vec<(u16, u64, bool)> {
        commands
            .iter()
            .map(|c| match c {
                Command::Send {
                    channel,
                    method: Method::BasicAck(a),
                } => (channel.id, a.delivery_tag, a.multiple),
                Command::Publish { channel, .. } => (channel.id, 0, false),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_run_of_multiple_acks_on_a_channel_leaves_as_its_last() {
        let mut commands = vec![
            ack(1, 1, true),
            ack(2, 1, true),
            ack(1, 2, true),
            ack(1, 3, true),
            ack(2, 2, true),
        ];
        coalesce_acks(&mut commands);
        assert_eq!(shape(&commands), vec![(1, 3, true), (2, 2, true)]);
    }

    #[test]
    fn single_acks_and_other_commands_on_the_channel_are_never_crossed() {
        let mut commands = vec![
            ack(1, 1, true),
            ack(1, 5, false),
            ack(1, 2, true),
            publish(1),
            ack(1, 3, true),
            ack(2, 9, true),
            publish(2),
            ack(1, 4, true),
        ];
        coalesce_acks(&mut commands);
        assert_eq!(
            shape(&commands),
            vec![
                (1, 1, true),
                (1, 5, false),
                (1, 2, true),
                (1, 0, false),
                (2, 9, true),
                (2, 0, false),
                (1, 4, true)
            ]
        );
    }
}
