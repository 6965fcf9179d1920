//! A fake AMQP 0-9-1 server for the scripted tests (`tests/scripted_*.rs`).
//!
//! [`FakeBroker::start`] listens on an ephemeral loopback port, accepts one
//! connection in a thread of its own and plays the test's script on it
//! through a [`Peer`]: the handshake with chosen tune values, then frames,
//! raw bytes (corrupt or oversized frames), a stream cut at any byte, a
//! stall, a reset. Frames are encoded and decoded with warren's own codec.
//!
//! Every step that waits for the client has a time limit, and a script's
//! failure (an `Err` from a step, or a panic) is raised in the test when the
//! broker is finished or dropped, so a script cannot fail silently.
//!
//! ```ignore
//! let broker = FakeBroker::start(|peer| {
//!     peer.handshake(Tune { channel_max: 10, frame_max: 4096, heartbeat: 0 })?;
//!     peer.serve_channel_open(1)?;
//!     peer.send_raw(&[1, 0, 1, 0, 0, 0x20, 0])?; // a header announcing 8 KiB
//!     peer.expect_close(501)?;
//!     Ok(())
//! });
//! let connection = Connection::open(&broker.uri())?;
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren::protocol::{
    encode_message, BasicConsumeOk, BasicDeliver, BasicProperties, ChannelOpenOk, ConnectionClose,
    ConnectionCloseOk, ConnectionOpen, ConnectionOpenOk, ConnectionStart, ConnectionStartOk,
    ConnectionTune, ConnectionTuneOk, Decoded, FieldTable, Frame, FrameDecoder, LongString, Method,
    MethodId, ShortString, PROTOCOL_HEADER,
};
use warren::{ConnectionConfig, DecodeError, Error};

/// How long a step waits for the client unless told otherwise.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the broker waits for the client to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a stall "until released" lasts, should the test never release it.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Why a script step failed.
#[derive(Debug)]
pub struct ScriptError(pub String);

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<io::Error> for ScriptError {
    fn from(e: io::Error) -> Self {
        ScriptError(format!("I/O error: {e}"))
    }
}

impl From<DecodeError> for ScriptError {
    fn from(e: DecodeError) -> Self {
        ScriptError(format!(
            "the client sent malformed bytes: {e} (at byte {})",
            e.offset
        ))
    }
}

/// The result of a script step.
pub type Step<T = ()> = Result<T, ScriptError>;

/// Fails a step with a message.
pub fn fail<T>(message: impl Into<String>) -> Step<T> {
    Err(ScriptError(message.into()))
}

/// The values the fake broker proposes in connection.tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tune {
    /// Highest channel number (0: no limit).
    pub channel_max: u16,
    /// Largest frame, header and frame-end included (0: no limit).
    pub frame_max: u32,
    /// Heartbeat interval in seconds (0: none).
    pub heartbeat: u16,
}

impl Default for Tune {
    /// RabbitMQ's defaults, without heartbeats.
    fn default() -> Self {
        Tune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        }
    }
}

/// What the client said during the handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// Its connection.start-ok.
    pub start_ok: ConnectionStartOk,
    /// Its connection.tune-ok: the values it settled on.
    pub tune_ok: ConnectionTuneOk,
    /// Its connection.open.
    pub open: ConnectionOpen,
}

/// A fake broker playing one script for one client connection.
pub struct FakeBroker {
    addr: SocketAddr,
    released: Arc<AtomicBool>,
    script: Option<JoinHandle<Step>>,
}

impl FakeBroker {
    /// Listens on 127.0.0.1 (an ephemeral port) and plays `script` on the
    /// first connection. Connect to [`FakeBroker::uri`] or
    /// [`FakeBroker::config`].
    pub fn start<F>(script: F) -> FakeBroker
    where
        F: FnOnce(&mut Peer) -> Step + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake broker");
        let addr = listener.local_addr().expect("the fake broker's address");
        let released = Arc::new(AtomicBool::new(false));
        let thread_released = released.clone();
        let script = std::thread::Builder::new()
            .name("fake-broker".into())
            .spawn(move || {
                let stream = accept(&listener, &thread_released)?;
                let mut peer = Peer::new(stream, thread_released)?;
                script(&mut peer)
            })
            .expect("spawn the fake broker");
        FakeBroker {
            addr,
            released,
            script: Some(script),
        }
    }

    /// The address the fake broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `amqp://` URI for the fake broker (guest/guest, vhost `/`).
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.addr.port())
    }

    /// Default connection settings aimed at the fake broker.
    pub fn config(&self) -> ConnectionConfig {
        ConnectionConfig::default()
            .host("127.0.0.1")
            .port(self.addr.port())
    }

    /// Ends a [`Peer::stall_until_released`] stall.
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Releases any stall, waits for the script to end and raises its
    /// failure (a step's error or a panic) in the calling test.
    #[track_caller]
    pub fn finish(mut self) {
        self.join();
    }

    #[track_caller]
    fn join(&mut self) {
        self.release();
        let Some(script) = self.script.take() else {
            return;
        };
        match script.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the fake broker's script failed: {e}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for FakeBroker {
    /// Like [`FakeBroker::finish`], unless the test is already failing (then
    /// the script is left to end on its own).
    fn drop(&mut self) {
        self.release();
        if std::thread::panicking() {
            return;
        }
        self.join();
    }
}

fn accept(listener: &TcpListener, released: &AtomicBool) -> Step<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if released.load(Ordering::Acquire) || Instant::now() >= deadline {
                    return fail("the client never connected");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What one read from the socket gave.
enum Got {
    Data,
    TimedOut,
    Eof,
}

/// The fake broker's end of the connection, as a script sees it.
pub struct Peer {
    stream: Option<TcpStream>,
    decoder: FrameDecoder,
    buf: BytesMut,
    released: Arc<AtomicBool>,
    timeout: Duration,
    frame_max: u32,
    /// Every frame received from the client, in order, with when it came.
    pub received: Vec<(Instant, Frame)>,
}

impl Peer {
    fn new(stream: TcpStream, released: Arc<AtomicBool>) -> Step<Peer> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(STEP_TIMEOUT))?;
        Ok(Peer {
            stream: Some(stream),
            decoder: FrameDecoder::new(),
            buf: BytesMut::with_capacity(64 * 1024),
            released,
            timeout: STEP_TIMEOUT,
            frame_max: 4096,
            received: Vec::new(),
        })
    }

    fn stream(&mut self) -> Step<&mut TcpStream> {
        match &mut self.stream {
            Some(stream) => Ok(stream),
            None => fail("the fake broker already closed its socket"),
        }
    }

    /// How long later steps wait for the client.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The frame_max the client agreed to (4096 before the handshake).
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    // ---- the handshake -------------------------------------------------

    /// Reads the client's 8-byte protocol header and checks it is 0-9-1.
    pub fn expect_protocol_header(&mut self) -> Step {
        let deadline = Instant::now() + self.timeout;
        while self.buf.len() < PROTOCOL_HEADER.len() {
            match self.read_more(deadline)? {
                Got::Data => {}
                Got::TimedOut => return fail("no protocol header from the client"),
                Got::Eof => return fail("the client hung up before its protocol header"),
            }
        }
        let header = self.buf.split_to(PROTOCOL_HEADER.len());
        if header[..] != PROTOCOL_HEADER {
            return fail(format!("the client sent the protocol header {header:?}"));
        }
        Ok(())
    }

    /// Sends connection.start offering PLAIN and AMQPLAIN.
    pub fn send_start(&mut self) -> Step {
        let mut capabilities = FieldTable::new();
        for name in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities
                .insert(ShortString::from_static(name), true)
                .expect("short name");
        }
        let mut properties = FieldTable::new();
        properties
            .insert(
                ShortString::from_static("product"),
                LongString::from("warren fake broker"),
            )
            .expect("short name");
        properties
            .insert(ShortString::from_static("capabilities"), capabilities)
            .expect("short name");
        self.send_method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: properties,
                mechanisms: LongString::from("PLAIN AMQPLAIN"),
                locales: LongString::from("en_US"),
            },
        )
    }

    /// Reads connection.start-ok.
    pub fn expect_start_ok(&mut self) -> Step<ConnectionStartOk> {
        match self.expect_method(0, MethodId::CONNECTION_START_OK)? {
            Method::ConnectionStartOk(m) => Ok(m),
            _ => unreachable!("expect_method checked the method"),
        }
    }

    /// Sends connection.tune with `tune`.
    pub fn send_tune(&mut self, tune: Tune) -> Step {
        self.send_method(
            0,
            ConnectionTune {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: tune.heartbeat,
            },
        )
    }

    /// Reads connection.tune-ok and from then on holds the client to the
    /// frame_max it agreed to.
    pub fn expect_tune_ok(&mut self) -> Step<ConnectionTuneOk> {
        let Method::ConnectionTuneOk(tune_ok) =
            self.expect_method(0, MethodId::CONNECTION_TUNE_OK)?
        else {
            unreachable!("expect_method checked the method")
        };
        if tune_ok.frame_max != 0 {
            self.frame_max = tune_ok.frame_max;
            self.decoder.set_frame_max(tune_ok.frame_max);
        } else {
            self.frame_max = 1 << 20;
            self.decoder.set_frame_max(u32::MAX);
        }
        Ok(tune_ok)
    }

    /// Plays the whole handshake: protocol header, start, start-ok, tune
    /// (with `tune`), tune-ok, open, open-ok.
    pub fn handshake(&mut self, tune: Tune) -> Step<Handshake> {
        self.expect_protocol_header()?;
        self.send_start()?;
        let start_ok = self.expect_start_ok()?;
        self.send_tune(tune)?;
        let tune_ok = self.expect_tune_ok()?;
        let Method::ConnectionOpen(open) = self.expect_method(0, MethodId::CONNECTION_OPEN)? else {
            unreachable!("expect_method checked the method")
        };
        self.send_method(0, ConnectionOpenOk)?;
        Ok(Handshake {
            start_ok,
            tune_ok,
            open,
        })
    }

    // ---- common exchanges ----------------------------------------------

    /// Answers the client's channel.open on `channel` with open-ok.
    pub fn serve_channel_open(&mut self, channel: u16) -> Step {
        self.expect_method(channel, MethodId::CHANNEL_OPEN)?;
        self.send_method(channel, ChannelOpenOk)
    }

    /// Answers the client's basic.consume on `channel` with consume-ok;
    /// returns the consumer tag (`ctag-<channel>` when the client left it
    /// to the server).
    pub fn serve_consume(&mut self, channel: u16) -> Step<ShortString> {
        let Method::BasicConsume(consume) = self.expect_method(channel, MethodId::BASIC_CONSUME)?
        else {
            unreachable!("expect_method checked the method")
        };
        let consumer_tag = if consume.consumer_tag.is_empty() {
            ShortString::try_from(format!("ctag-{channel}")).expect("short")
        } else {
            consume.consumer_tag
        };
        self.send_method(
            channel,
            BasicConsumeOk {
                consumer_tag: consumer_tag.clone(),
            },
        )?;
        Ok(consumer_tag)
    }

    /// Sends a basic.deliver with its content.
    pub fn deliver(
        &mut self,
        channel: u16,
        consumer_tag: &ShortString,
        delivery_tag: u64,
        body: &[u8],
    ) -> Step {
        let bytes = deliver_bytes(channel, consumer_tag, delivery_tag, body, self.frame_max);
        self.send_raw(&bytes)
    }

    /// Reads the client's connection.close, checks its reply code and
    /// answers close-ok.
    pub fn expect_close(&mut self, reply_code: u16) -> Step<ConnectionClose> {
        let close = self.expect_connection_close()?;
        if close.reply_code != reply_code {
            return fail(format!(
                "the client closed the connection with {} {:?}, expected {reply_code}",
                close.reply_code, close.reply_text
            ));
        }
        self.send_method(0, ConnectionCloseOk)?;
        Ok(close)
    }

    /// Reads the client's connection.close (whatever its code), without
    /// answering.
    pub fn expect_connection_close(&mut self) -> Step<ConnectionClose> {
        match self.expect_method(0, MethodId::CONNECTION_CLOSE)? {
            Method::ConnectionClose(m) => Ok(m),
            _ => unreachable!("expect_method checked the method"),
        }
    }

    /// Plays the broker's side of the client's orderly close: reads frames
    /// until connection.close, answers close-ok; returns the frames before it.
    pub fn serve_close(&mut self) -> Step<Vec<Frame>> {
        let mut before = Vec::new();
        loop {
            match self.next_frame()? {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    self.send_method(0, ConnectionCloseOk)?;
                    return Ok(before);
                }
                frame => before.push(frame),
            }
        }
    }

    // ---- reading ---------------------------------------------------------

    /// The next frame from the client (heartbeats included).
    pub fn next_frame(&mut self) -> Step<Frame> {
        match self.next_frame_within(self.timeout)? {
            Some(frame) => Ok(frame),
            None => fail(format!(
                "no frame from the client within {:?}",
                self.timeout
            )),
        }
    }

    /// The next frame from the client, or `None` if none comes within
    /// `limit`. The client hanging up is an error.
    pub fn next_frame_within(&mut self, limit: Duration) -> Step<Option<Frame>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(Some(frame));
            }
            match self.read_more(deadline)? {
                Got::Data => {}
                Got::TimedOut => return Ok(None),
                Got::Eof => return fail("the client closed the connection"),
            }
        }
    }

    /// The next method frame on `channel` that is `id` (heartbeats are
    /// skipped); anything else is an error.
    pub fn expect_method(&mut self, channel: u16, id: MethodId) -> Step<Method> {
        let frame = self.next_non_heartbeat()?;
        match frame {
            Frame::Method { channel: c, method } if c == channel && method.id() == id => Ok(method),
            other => fail(format!(
                "expected {} on channel {channel}, the client sent {}",
                id.name().unwrap_or("an unknown method"),
                describe(&other)
            )),
        }
    }

    /// The next frame that is not a heartbeat.
    pub fn next_non_heartbeat(&mut self) -> Step<Frame> {
        loop {
            match self.next_frame()? {
                Frame::Heartbeat { .. } => {}
                frame => return Ok(frame),
            }
        }
    }

    /// Reads frames until the client closes the socket (EOF or reset) and
    /// returns them; fails if it is still open after `limit`.
    pub fn read_until_closed(&mut self, limit: Duration) -> Step<Vec<Frame>> {
        let deadline = Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.decode()? {
                frames.push(frame);
            }
            match self.read_more(deadline) {
                Ok(Got::Data) => {}
                Ok(Got::Eof) => return Ok(frames),
                Err(_) if self.stream.is_some() => return Ok(frames), // reset
                Ok(Got::TimedOut) => {
                    return fail(format!(
                        "the client kept the connection open for {limit:?}; it sent {}",
                        frames.iter().map(describe).collect::<Vec<_>>().join(", ")
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn decode(&mut self) -> Step<Option<Frame>> {
        match self.decoder.decode(&mut self.buf)? {
            Decoded::Frame(frame) => {
                self.received.push((Instant::now(), frame.clone()));
                Ok(Some(frame))
            }
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    fn read_more(&mut self, deadline: Instant) -> Step<Got> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(Got::TimedOut);
        }
        let mut chunk = [0u8; 16 * 1024];
        let stream = self.stream()?;
        stream.set_read_timeout(Some(remaining.max(Duration::from_millis(1))))?;
        match stream.read(&mut chunk) {
            Ok(0) => Ok(Got::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(Got::Data)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Got::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Got::Data),
            Err(e) => Err(e.into()),
        }
    }

    // ---- writing ---------------------------------------------------------

    /// Sends a method frame.
    pub fn send_method(&mut self, channel: u16, method: impl Into<Method>) -> Step {
        self.send_frame(&Frame::Method {
            channel,
            method: method.into(),
        })
    }

    /// Sends one frame.
    pub fn send_frame(&mut self, frame: &Frame) -> Step {
        self.send_frames(std::slice::from_ref(frame))
    }

    /// Sends frames coalesced into one write.
    pub fn send_frames(&mut self, frames: &[Frame]) -> Step {
        let mut buf = BytesMut::new();
        for frame in frames {
            frame.encode(&mut buf);
        }
        self.send_raw(&buf)
    }

    /// Sends a heartbeat frame.
    pub fn heartbeat(&mut self) -> Step {
        self.send_frame(&Frame::Heartbeat { channel: 0 })
    }

    /// Sends bytes as they are, in one write.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Step {
        let stream = self.stream()?;
        stream.write_all(bytes)?;
        stream.flush()?;
        Ok(())
    }

    /// Sends bytes in pieces, one write each, pausing `gap` between them, so
    /// the client reads them apart.
    pub fn send_in_pieces(&mut self, bytes: &[u8], cuts: &[usize], gap: Duration) -> Step {
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            if cut > start {
                self.send_raw(&bytes[start..cut])?;
                std::thread::sleep(gap);
                start = cut;
            }
        }
        Ok(())
    }

    // ---- faults ----------------------------------------------------------

    /// Ends the stream towards the client (it reads end of file), still
    /// reading what it sends.
    pub fn shutdown_write(&mut self) -> Step {
        self.stream()?.shutdown(Shutdown::Write)?;
        Ok(())
    }

    /// Sends `bytes` and the end of the stream together: on Linux the socket
    /// is corked first, so the bytes and the FIN leave in one segment and the
    /// client finds both in one read readiness.
    pub fn send_raw_then_shutdown(&mut self, bytes: &[u8]) -> Step {
        let stream = self.stream()?;
        set_cork(stream, true)?;
        stream.write_all(bytes)?;
        stream.shutdown(Shutdown::Write)?;
        Ok(())
    }

    /// Closes the socket in both directions (an orderly FIN).
    pub fn close(&mut self) -> Step {
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(())
    }

    /// Resets the connection: the client's next read fails with
    /// `ConnectionReset` (SO_LINGER 0, then close).
    pub fn reset(&mut self) -> Step {
        if let Some(stream) = self.stream.take() {
            set_linger_zero(&stream)?;
            drop(stream);
        }
        Ok(())
    }

    /// Neither reads nor writes for `duration`: a delay before the next
    /// step, or a peer that stalls (the client's writes back up once the
    /// socket buffers are full).
    pub fn stall(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    /// Neither reads nor writes until the test releases the broker (finishes
    /// or drops it): a half-open peer.
    pub fn stall_until_released(&mut self) {
        let deadline = Instant::now() + STALL_LIMIT;
        while !self.released.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sets SO_LINGER to zero seconds, so that closing the socket sends a RST.
#[cfg(unix)]
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open for the duration of the call, and the
    // option value is a `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets TCP_CORK: writes are held until it is cleared or the stream shut down.
#[cfg(target_os = "linux")]
fn set_cork(stream: &TcpStream, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = on.into();
    // SAFETY: the descriptor is open for the duration of the call, and the
    // option value is a `c_int` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the bytes and the FIN may leave apart.
#[cfg(not(target_os = "linux"))]
fn set_cork(_stream: &TcpStream, _on: bool) -> io::Result<()> {
    Ok(())
}

/// Without SO_LINGER control a reset degrades to a close.
#[cfg(not(unix))]
pub fn set_linger_zero(_stream: &TcpStream) -> io::Result<()> {
    Ok(())
}

/// The bytes of a basic.deliver with its content header and body frames.
pub fn deliver_bytes(
    channel: u16,
    consumer_tag: &ShortString,
    delivery_tag: u64,
    body: &[u8],
    frame_max: u32,
) -> Vec<u8> {
    let method = Method::BasicDeliver(BasicDeliver {
        consumer_tag: consumer_tag.clone(),
        delivery_tag,
        redelivered: false,
        exchange: ShortString::empty(),
        routing_key: ShortString::from_static("key"),
    });
    let mut buf = BytesMut::new();
    encode_message(
        channel,
        &method,
        &BasicProperties::default(),
        body,
        frame_max,
        &mut buf,
    );
    buf.to_vec()
}

/// The bytes of one frame of `frame_type` on `channel` with `payload`,
/// framed as the spec says (or not: the caller chooses every byte).
pub fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + 8);
    bytes.push(frame_type);
    bytes.extend_from_slice(&channel.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes.push(0xCE);
    bytes
}

/// The payload bytes of a method.
pub fn method_payload(method: impl Into<Method>) -> Bytes {
    let mut buf = BytesMut::new();
    method.into().encode(&mut buf);
    buf.freeze()
}

/// A frame in a few words, for failure messages.
pub fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Method { channel, method } => format!("{} on channel {channel}", method.name()),
        Frame::Header { channel, header } => format!(
            "a content header (class {}, {} bytes) on channel {channel}",
            header.class_id, header.body_size
        ),
        Frame::Body { channel, payload } => {
            format!("a {}-byte body frame on channel {channel}", payload.len())
        }
        Frame::Heartbeat { channel } => format!("a heartbeat on channel {channel}"),
    }
}

/// The frames of `frames` that are methods with id `id`.
pub fn methods_with_id(frames: &[Frame], id: MethodId) -> Vec<(u16, Method)> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Method { channel, method } if method.id() == id => {
                Some((*channel, method.clone()))
            }
            _ => None,
        })
        .collect()
}

// ---- for the tests that drive the client -----------------------------------

/// Runs `f` on a thread of its own and returns what it returns, or fails
/// the test if it takes longer than `limit` (a hang; the thread is left
/// behind).
#[track_caller]
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not return within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Whether two errors are the same. `Error` has no `PartialEq` (it can hold
/// an `io::Error`), but clones of one error print alike.
pub fn same_error(a: &Error, b: &Error) -> bool {
    format!("{a:?}") == format!("{b:?}")
}
