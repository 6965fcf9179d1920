//! Receive coalescing end to end, against a scripted fake broker
//! (`tests/support/fake_broker.rs`): while deliveries stream in fast, the
//! connection's socket gets a receive mark (`SO_RCVLOWAT`), the bytes of a
//! burst's end that never reach the mark still arrive promptly, the mark
//! goes when the stream pauses, and an RPC after the stream is answered at
//! once; an ack made while the stream's brief polls run (which an ack does
//! not cut short) still leaves promptly when the stream stops right there;
//! and results that arrive together wake the task awaiting them once.
//! The tests read the mark off the client's socket, found by its peer
//! address among this process's descriptors. Linux only, as coalescing is.
#![cfg(target_os = "linux")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::fake_broker::{deliver_bytes, fail, FakeBroker, Peer, Step, Tune};
use warren::blocking::Connection;
use warren::options::{ConsumeOptions, PublishOptions, QueueDeclareOptions};
use warren::protocol::{
    BasicAck, BasicProperties, ConfirmSelectOk, FieldTable, Frame, Method, MethodId,
    QueueDeclareOk, ShortString,
};
use warren::ConnectionConfig;

/// Bursts the fake broker sends, each of `PER_BURST` deliveries of
/// `BODY` bytes (about 33 KiB), written at once.
const BURSTS: u64 = 40;
const PER_BURST: u64 = 30;
const BODY: usize = 1000;
/// The pause between bursts: short enough that the bytes flow fast.
const BETWEEN_BURSTS: Duration = Duration::from_micros(300);
/// What "promptly" means for bytes left under the mark (the fallback is a
/// millisecond; this leaves room for a loaded machine).
const PROMPTLY: Duration = Duration::from_millis(500);
const ARRIVES: Duration = Duration::from_secs(5);

/// Sends `BURSTS` fast bursts of deliveries for consumer `tag` on channel
/// 1; returns the last delivery tag.
fn stream_bursts(peer: &mut Peer, tag: &ShortString) -> Step<u64> {
    let body = vec![b'x'; BODY];
    let mut delivery_tag = 0;
    for _ in 0..BURSTS {
        let mut burst = Vec::new();
        for _ in 0..PER_BURST {
            delivery_tag += 1;
            burst.extend(deliver_bytes(1, tag, delivery_tag, &body, 131_072));
        }
        peer.send_raw(&burst)?;
        std::thread::sleep(BETWEEN_BURSTS);
    }
    Ok(delivery_tag)
}

/// The fake broker's side: a consumer's deliveries in fast bursts, then one
/// small delivery right behind the last burst, then a queue.declare-ok for
/// the client's declare, then the close.
fn streaming_broker() -> FakeBroker {
    FakeBroker::start(|peer: &mut Peer| -> Step {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        let mut delivery_tag = stream_bursts(peer, &tag)?;
        // The tail: far under any mark, and nothing after it.
        delivery_tag += 1;
        peer.send_raw(&deliver_bytes(1, &tag, delivery_tag, b"tail", 131_072))?;
        let Method::QueueDeclare(declare) = peer.expect_method(1, MethodId::QUEUE_DECLARE)? else {
            unreachable!("expect_method checked the method")
        };
        peer.send_method(
            1,
            QueueDeclareOk {
                queue: declare.queue,
                message_count: 0,
                consumer_count: 0,
            },
        )?;
        peer.serve_close()?;
        Ok(())
    })
}

/// The receive mark (`SO_RCVLOWAT`) of socket `fd`.
fn receive_mark(fd: i32) -> i32 {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    assert_eq!(status, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

/// The descriptor of this process's TCP socket whose peer is `peer`.
fn client_socket(peer: SocketAddr) -> Option<i32> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&fd| peer_port(fd) == Some(peer.port()))
}

fn peer_port(fd: i32) -> Option<u16> {
    // SAFETY: a zeroed sockaddr_in is a valid value; getpeername writes at
    // most `len` bytes into it.
    unsafe {
        let mut address: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let status = libc::getpeername(fd, std::ptr::from_mut(&mut address).cast(), &mut len);
        (status == 0 && i32::from(address.sin_family) == libc::AF_INET)
            .then(|| u16::from_be(address.sin_port))
    }
}

/// Consumes the fake broker's stream on a connection opened with `config`;
/// returns the highest receive mark seen while it streamed.
fn consume_the_stream(broker: &FakeBroker, config: ConnectionConfig) -> i32 {
    let connection = Connection::open_with(config).expect("connect to the fake broker");
    let channel = connection.open_channel().unwrap();
    let fd = client_socket(broker.addr()).expect("the client's socket to the fake broker");
    let consumer = channel
        .basic_consume(
            "q",
            "ctag",
            ConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::new(),
        )
        .unwrap();
    let mut highest_mark = 0;
    let mut previous = Instant::now();
    for tag in 1..=BURSTS * PER_BURST + 1 {
        let delivery = consumer
            .recv_timeout(ARRIVES)
            .unwrap()
            .unwrap_or_else(|| panic!("delivery {tag} never came"));
        assert_eq!(delivery.delivery_tag, tag);
        if tag > BURSTS * PER_BURST {
            assert_eq!(&delivery.body[..], b"tail");
            assert!(
                previous.elapsed() < PROMPTLY,
                "the tail came {:?} after the last burst",
                previous.elapsed()
            );
        }
        highest_mark = highest_mark.max(receive_mark(fd));
        previous = Instant::now();
    }

    // The stream has paused: the mark goes (the first fallback read finds
    // nothing), and an RPC is answered at once.
    let deadline = Instant::now() + PROMPTLY;
    while receive_mark(fd) != 1 {
        assert!(
            Instant::now() < deadline,
            "the mark is still {} after the stream paused",
            receive_mark(fd)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let asked = Instant::now();
    let ok = channel
        .queue_declare("q", QueueDeclareOptions::default(), FieldTable::new())
        .unwrap();
    assert_eq!(ok.queue, ShortString::from_static("q"));
    assert!(
        asked.elapsed() < PROMPTLY,
        "declare took {:?}",
        asked.elapsed()
    );
    connection.close().unwrap();
    highest_mark
}

#[test]
fn a_fast_stream_gets_a_receive_mark_and_its_tail_and_an_rpc_after_it_still_come_promptly() {
    let broker = streaming_broker();
    let highest = consume_the_stream(&broker, broker.config());
    assert!(
        highest >= 2048,
        "the socket's receive mark never rose while ~1.3 MB streamed in (highest {highest})"
    );
    broker.finish();
}

#[test]
fn with_receive_coalescing_off_the_socket_keeps_waking_on_every_byte() {
    let broker = streaming_broker();
    let highest = consume_the_stream(&broker, broker.config().receive_coalescing(false));
    assert_eq!(highest, 1);
    broker.finish();
}

/// The broker's side of the ack test: expects the ack of `delivery_tag`
/// within [`PROMPTLY`], then answers with delivery `delivery_tag + 1`.
fn expect_ack_then_answer(peer: &mut Peer, tag: &ShortString, delivery_tag: u64) -> Step {
    let Some(frame) = peer.next_frame_within(PROMPTLY)? else {
        return fail(format!("no ack of {delivery_tag} within {PROMPTLY:?}"));
    };
    match frame {
        warren::protocol::Frame::Method {
            method: Method::BasicAck(ack),
            ..
        } if ack.delivery_tag == delivery_tag => {}
        other => return fail(format!("expected the ack of {delivery_tag}, got {other:?}")),
    }
    peer.send_raw(&deliver_bytes(1, tag, delivery_tag + 1, b"acked", 131_072))
}

#[test]
fn acks_leave_promptly_both_during_a_fast_stream_and_after_it_paused() {
    // The broker streams, then stops and waits for the ack of the last
    // delivery, made at once: the client's reactor thread is in a brief
    // poll (the mark is set), which an ack does not cut short, and the turn
    // after it sends it. The second ack is made once the stream has long
    // paused and the poll waits for nothing: that ack must wake it. Each
    // time the client waits for the broker's answer, so nothing else wakes
    // the connection meanwhile.
    let broker = FakeBroker::start(|peer: &mut Peer| -> Step {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        let tag = peer.serve_consume(1)?;
        let last = stream_bursts(peer, &tag)?;
        expect_ack_then_answer(peer, &tag, last)?;
        expect_ack_then_answer(peer, &tag, last + 1)?;
        peer.serve_close()?;
        Ok(())
    });
    let config = broker.config();
    let last = BURSTS * PER_BURST;
    futures::executor::block_on(async {
        let connection = warren::nonblocking::Connection::open_with(config)
            .await
            .expect("connect to the fake broker");
        let channel = connection.open_channel().await.unwrap();
        let consumer = channel
            .basic_consume("q", "ctag", ConsumeOptions::default(), FieldTable::new())
            .await
            .unwrap();
        for tag in 1..=last {
            let delivery = consumer.recv().await.unwrap().expect("a delivery");
            assert_eq!(delivery.delivery_tag, tag);
        }
        for tag in [last, last + 1] {
            if tag > last {
                std::thread::sleep(Duration::from_millis(50));
            }
            channel.basic_ack(tag, true).unwrap();
            let answer = consumer.recv().await.unwrap().expect("the broker's answer");
            assert_eq!(
                (answer.delivery_tag, &answer.body[..]),
                (tag + 1, &b"acked"[..])
            );
        }
        connection.close().await.unwrap();
    });
    broker.finish();
}

/// Counts the wake-ups of the task it stands for.
#[derive(Default)]
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn confirms_that_arrive_together_wake_the_task_waiting_on_them_once() {
    // Fifty confirmed publishes, each awaited by the same task; the broker
    // then acks them one by one, every ack in one write. The reactor reads
    // them in one turn and wakes the task once, when all are in, not once
    // per confirm (each waking a task that would find only its own).
    use std::future::Future;
    use std::sync::{mpsc, Arc};
    use std::task::{Context, Poll, Waker};
    const PUBLISHES: u64 = 50;
    let (ack_now, acks_wanted) = mpsc::channel::<()>();
    let broker = FakeBroker::start(move |peer: &mut Peer| -> Step {
        peer.handshake(Tune::default())?;
        peer.serve_channel_open(1)?;
        peer.expect_method(1, MethodId::CONFIRM_SELECT)?;
        peer.send_method(1, ConfirmSelectOk)?;
        for _ in 0..PUBLISHES {
            peer.expect_method(1, MethodId::BASIC_PUBLISH)?;
            peer.next_non_heartbeat()?; // its content header
            peer.next_non_heartbeat()?; // its body
        }
        if acks_wanted.recv_timeout(ARRIVES).is_err() {
            return fail("the client never awaited its confirms");
        }
        let acks: Vec<Frame> = (1..=PUBLISHES)
            .map(|delivery_tag| Frame::Method {
                channel: 1,
                method: BasicAck {
                    delivery_tag,
                    multiple: false,
                }
                .into(),
            })
            .collect();
        peer.send_frames(&acks)?;
        peer.serve_close()?;
        Ok(())
    });
    let config = broker.config();
    // The channel is kept: dropping it would close it, failing the calls.
    let (connection, _channel, mut calls) = futures::executor::block_on(async {
        let connection = warren::nonblocking::Connection::open_with(config)
            .await
            .expect("connect to the fake broker");
        let channel = connection.open_channel().await.unwrap();
        channel.confirm_select().await.unwrap();
        let mut calls = Vec::new();
        for _ in 0..PUBLISHES {
            let call = channel
                .basic_publish_confirmed(
                    "",
                    "q",
                    PublishOptions::default(),
                    BasicProperties::default(),
                    "confirm me",
                )
                .await
                .unwrap();
            calls.push(call);
        }
        (connection, channel, calls)
    });
    let task = Arc::new(CountingWaker::default());
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    for call in &mut calls {
        assert!(std::pin::Pin::new(call).poll(&mut cx).is_pending());
    }
    ack_now.send(()).unwrap();
    let woken = Instant::now();
    while task.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            woken.elapsed() < ARRIVES,
            "the confirms never woke the task"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Anything later would have woken it again by now.
    std::thread::sleep(Duration::from_millis(100));
    for call in &mut calls {
        match std::pin::Pin::new(call).poll(&mut cx) {
            Poll::Ready(Ok(confirmation)) => assert!(confirmation.is_ack()),
            other => panic!("a confirm is not in after the wake-up: {other:?}"),
        }
    }
    assert_eq!(task.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    futures::executor::block_on(connection.close()).unwrap();
    broker.finish();
}
