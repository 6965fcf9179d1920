//! Codec benchmarks: warren's frame decoder and message encoder side by side
//! with `amq-protocol` (lapin's codec), in one run, on the byte streams a
//! consumer receives and a publisher sends.
//!
//! Workloads, for bodies of 16 B, 1 KiB and 128 KiB with `frame_max` 131072
//! (so a 128 KiB body travels in two body frames, as a broker sends it):
//! - `parse`: a stream of deliveries on channel 1, each a basic.deliver
//!   method frame, a content header (content-type, delivery-mode 2 and a
//!   3-entry `headers` table) and its body frame(s), decoded frame by frame.
//!   warren is measured twice: with the properties left as received
//!   (checked, not decoded: that is warren's receive path) and with the
//!   headers table read through its getter and every entry iterated, since
//!   amq-protocol always decodes properties and tables into a map.
//! - `encode`: the matching stream of basic.publish messages.
//!
//! Criterion reports each as msgs/s (`Throughput::Elements`). After the
//! criterion groups, `main` prints its own summary table, timed with a
//! simple loop (median of 5 interleaved runs of 0.5 s), with msgs/s, GB/s,
//! the ratio warren/amq-protocol and the heap allocations per message on
//! both sides. Both time the benchmark thread's CPU time, not the wall
//! clock, so that other processes on a shared machine do not skew them (see
//! "Timing" below): criterion's `time:` lines are CPU time.
//!
//! `cargo bench --bench codec -- summary` runs the summary alone (the
//! filter matches no criterion benchmark); `CODEC_SUMMARY=off` skips it.
//! Under `cargo test --benches` (criterion's test mode) every benchmark runs
//! once and the summary is a quick smoke run.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use amq_protocol::frame::{
    gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, ParserError, WriteContext,
};
use amq_protocol::protocol::{basic, AMQPClass, BasicProperties as AmqProperties};
use amq_protocol::types::{AMQPValue, FieldTable as AmqTable};
use bytes::BytesMut;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use warren::protocol::{
    encode_message, BasicDeliver, BasicProperties, BasicPublish, Decoded, FieldTable, Frame,
    FrameDecoder, LongString, Method, ShortString,
};

// ---------------------------------------------------------------------------
// Allocation counting.
//
// Counts allocation calls (alloc, alloc_zeroed and realloc) made on the
// current thread while a thread-local gate is open. The gate is closed while
// timing; then the counter costs one thread-local read per allocation, which
// only amq-protocol pays (about 12 allocations per parsed message: well
// under 1% of its time).

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::count_allocations;

// ---------------------------------------------------------------------------
// Timing.
//
// Both criterion and the summary time with the CPU time of the benchmark
// thread rather than the wall clock: the machines this runs on are shared,
// and time during which another process had the core must not count against
// either codec. Reading that clock is a system call (about 0.6 us on the
// 2-core VM this was written on), so its own cost is measured once and
// subtracted from every reading; otherwise it would weigh on the shortest
// routine, an 11 us parse of the 128 KiB stream.

/// The CPU time this thread has run.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid `timespec` for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Elsewhere, wall-clock time since the first call.
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// What an empty measurement reads: the median of many back-to-back reads.
fn clock_overhead() -> Duration {
    static OVERHEAD: OnceLock<Duration> = OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let mut reads: Vec<Duration> = (0..2001)
            .map(|_| {
                let start = thread_cpu_time();
                thread_cpu_time() - start
            })
            .collect();
        reads.sort();
        reads[reads.len() / 2]
    })
}

/// Thread CPU time, less the cost of reading it, as a criterion measurement.
/// Values are nanoseconds, as with criterion's `WallTime`, whose formatter
/// it borrows.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, start: Duration) -> Duration {
        (thread_cpu_time() - start).saturating_sub(clock_overhead())
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL_TIME: WallTime = WallTime;
        WALL_TIME.formatter()
    }
}

// ---------------------------------------------------------------------------
// Workloads.

const CHANNEL: u16 = 1;
/// The negotiated frame size limit (RabbitMQ's default), header and frame-end included.
const FRAME_MAX: u32 = 131_072;
/// The largest body piece one frame carries: `frame_max` less 8 bytes of framing.
const MAX_BODY_PIECE: usize = FRAME_MAX as usize - 8;

struct Size {
    name: &'static str,
    body: usize,
    /// Messages per stream: enough to make a stream of a few hundred KB to a few MB.
    messages: usize,
}

const SIZES: [Size; 3] = [
    Size {
        name: "16B",
        body: 16,
        messages: 1000,
    },
    Size {
        name: "1KiB",
        body: 1024,
        messages: 1000,
    },
    Size {
        name: "128KiB",
        body: 128 * 1024,
        messages: 32,
    },
];

/// One body size's inputs, built once.
struct Workload {
    size: &'static Size,
    body: Vec<u8>,
    /// Frames per message: method, header and one body frame per `MAX_BODY_PIECE`.
    frames_per_message: usize,
    /// The deliver stream (`size.messages` deliveries), as warren encodes it.
    deliver: Vec<u8>,
    /// What warren encodes per publish.
    publish: Method,
    properties: BasicProperties,
    /// What amq-protocol encodes per publish: prebuilt frames of one message.
    amq_publish: Vec<AMQPFrame>,
    /// Bytes of the publish stream (`size.messages` messages).
    publish_len: usize,
}

/// The message properties: content-type, delivery-mode 2 and a 3-entry
/// headers table. The table's keys are inserted in sorted order, the order in
/// which amq-protocol's `BTreeMap` writes them, so that both encoders write
/// byte-identical streams (checked in [`check`]).
fn warren_properties() -> BasicProperties {
    let headers = FieldTable::new()
        .with("x-flag", true)
        .and_then(|t| t.with("x-retries", 3i32))
        .and_then(|t| t.with("x-trace", LongString::from("abc-123")))
        .expect("short keys");
    BasicProperties::default()
        .with_content_type(ShortString::from_static("application/json"))
        .with_delivery_mode(2)
        .with_headers(headers)
}

fn amq_properties() -> AmqProperties {
    let mut headers = AmqTable::default();
    headers.insert("x-trace".into(), AMQPValue::LongString("abc-123".into()));
    headers.insert("x-retries".into(), AMQPValue::LongInt(3));
    headers.insert("x-flag".into(), AMQPValue::Boolean(true));
    AmqProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

impl Workload {
    fn new(size: &'static Size) -> Self {
        let body: Vec<u8> = (0..size.body).map(|i| (i % 251) as u8).collect();
        let properties = warren_properties();

        let mut deliver = BytesMut::new();
        for i in 0..size.messages {
            let method = Method::BasicDeliver(BasicDeliver {
                consumer_tag: ShortString::from_static("ctag-1"),
                delivery_tag: i as u64 + 1,
                redelivered: false,
                exchange: ShortString::from_static("amq.direct"),
                routing_key: ShortString::from_static("orders"),
            });
            encode_message(
                CHANNEL,
                &method,
                &properties,
                &body,
                FRAME_MAX,
                &mut deliver,
            );
        }

        let publish = Method::BasicPublish(BasicPublish {
            exchange: ShortString::from_static("amq.direct"),
            routing_key: ShortString::from_static("orders"),
            mandatory: false,
            immediate: false,
        });
        let mut amq_publish = vec![
            AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "amq.direct".into(),
                    routing_key: "orders".into(),
                    mandatory: false,
                    immediate: false,
                })),
            ),
            AMQPFrame::Header(
                CHANNEL,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties: amq_properties(),
                },
            ),
        ];
        for piece in body.chunks(MAX_BODY_PIECE) {
            amq_publish.push(AMQPFrame::Body(CHANNEL, piece.to_vec()));
        }

        let mut one = BytesMut::new();
        encode_message(CHANNEL, &publish, &properties, &body, FRAME_MAX, &mut one);
        Workload {
            size,
            frames_per_message: 2 + size.body.div_ceil(MAX_BODY_PIECE),
            deliver: deliver.to_vec(),
            publish,
            properties,
            amq_publish,
            publish_len: one.len() * size.messages,
            body,
        }
    }

    fn messages(&self) -> usize {
        self.size.messages
    }

    fn frames(&self) -> usize {
        self.size.messages * self.frames_per_message
    }

    /// What a parse of the whole deliver stream must report.
    fn expected_tally(&self, header_entries: usize) -> Tally {
        Tally {
            frames: self.frames(),
            body_bytes: self.size.messages * self.size.body,
            header_entries: header_entries * self.size.messages,
        }
    }
}

/// What a parse loop does with each frame: count it, add up body bytes (and,
/// for warren with `iterate_headers`, the headers table entries), and hand it
/// to `black_box`. The same minimal work on both sides.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    frames: usize,
    body_bytes: usize,
    header_entries: usize,
}

// ---------------------------------------------------------------------------
// The measured routines.

/// Decodes every frame in `buf` with warren, as the read loop will: split off
/// and freeze each complete frame until the decoder reports `Incomplete`.
fn warren_parse(buf: &mut BytesMut, iterate_headers: bool) -> Tally {
    let mut decoder = FrameDecoder::with_frame_max(FRAME_MAX);
    let mut tally = Tally::default();
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Frame(frame)) => {
                tally.frames += 1;
                match &frame {
                    Frame::Body { payload, .. } => tally.body_bytes += payload.len(),
                    Frame::Header { header, .. } if iterate_headers => {
                        let headers = header.properties.headers();
                        tally.header_entries += headers.expect("headers").iter().count();
                    }
                    _ => {}
                }
                black_box(&frame);
            }
            Ok(Decoded::Incomplete { .. }) => break,
            Err(err) => panic!("warren rejected the stream: {err}"),
        }
    }
    tally
}

/// Parses every frame in `bytes` with amq-protocol until it reports `Incomplete`.
fn amq_parse(bytes: &[u8]) -> Tally {
    let mut rest = bytes;
    let mut tally = Tally::default();
    loop {
        match parse_frame(rest) {
            Ok((next, frame)) => {
                rest = next;
                tally.frames += 1;
                if let AMQPFrame::Body(_, payload) = &frame {
                    tally.body_bytes += payload.len();
                }
                black_box(&frame);
            }
            Err(ParserError::Incomplete(_)) => break,
            Err(err) => panic!("amq-protocol rejected the stream: {err:?}"),
        }
    }
    tally
}

/// Encodes the publish stream with warren: from the typed method, the
/// properties and the body slice, each time, as a publisher does.
fn warren_encode(w: &Workload, out: &mut BytesMut) {
    out.clear();
    for _ in 0..w.messages() {
        encode_message(CHANNEL, &w.publish, &w.properties, &w.body, FRAME_MAX, out);
    }
}

/// Encodes the publish stream with amq-protocol. Note the head start: it
/// encodes from `AMQPFrame` values built once, outside the timed loop (body
/// already split and copied into the body frames), while warren writes its
/// frames from the method, properties and body slice on every call. A client
/// would build such frames for every publish; here building them is not
/// timed, so the encode ratios understate warren's lead.
fn amq_encode(w: &Workload, out: &mut Vec<u8>) {
    let mut buf = std::mem::take(out);
    buf.clear();
    for _ in 0..w.messages() {
        for frame in &w.amq_publish {
            buf = gen_frame(frame)(WriteContext::from(buf))
                .expect("a Vec grows")
                .into_inner()
                .0;
        }
    }
    *out = buf;
}

/// Checks that both codecs see the same streams, so the comparison measures
/// the same work: both parse the deliver stream into the same frames, and
/// both encoders write the same publish stream byte for byte.
fn check(w: &Workload) {
    let mut buf = BytesMut::from(&w.deliver[..]);
    assert_eq!(warren_parse(&mut buf, false), w.expected_tally(0));
    let mut buf = BytesMut::from(&w.deliver[..]);
    assert_eq!(warren_parse(&mut buf, true), w.expected_tally(3));
    assert_eq!(amq_parse(&w.deliver), w.expected_tally(0));

    // amq-protocol decodes the first and last delivery as warren encoded them.
    let (rest, first) = parse_frame(&w.deliver[..]).expect("a method frame");
    match first {
        AMQPFrame::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
            assert_eq!(d.consumer_tag.as_str(), "ctag-1");
            assert_eq!(d.delivery_tag, 1);
            assert!(!d.redelivered);
            assert_eq!(d.exchange.as_str(), "amq.direct");
            assert_eq!(d.routing_key.as_str(), "orders");
        }
        other => panic!("expected basic.deliver, got {other:?}"),
    }
    match parse_frame(rest).expect("a header frame").1 {
        AMQPFrame::Header(CHANNEL, header) => {
            assert_eq!(header.class_id, 60);
            assert_eq!(header.body_size, w.size.body as u64);
            assert_eq!(header.properties, amq_properties());
        }
        other => panic!("expected a content header, got {other:?}"),
    }
    let mut rest = &w.deliver[..];
    let mut last_tag = 0;
    while let Ok((next, frame)) = parse_frame(rest) {
        if let AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) = frame {
            last_tag = d.delivery_tag;
        }
        rest = next;
    }
    assert_eq!(last_tag, w.messages() as u64);

    let mut ours = BytesMut::new();
    warren_encode(w, &mut ours);
    let mut theirs = Vec::new();
    amq_encode(w, &mut theirs);
    assert_eq!(ours.len(), w.publish_len);
    assert!(
        ours[..] == theirs[..],
        "warren and amq-protocol encode different publish streams"
    );
}

// ---------------------------------------------------------------------------
// Criterion.

fn workloads() -> Vec<Workload> {
    SIZES.iter().map(Workload::new).collect()
}

/// Parse benchmarks. Each iteration decodes a fresh copy of the stream: the
/// warren decoder consumes its `BytesMut`, so the input must be rebuilt, and
/// amq-protocol gets a fresh copy too so that both read memory in the same
/// state (just written, in cache, as after a socket read). The copy is made
/// in criterion's untimed setup (`iter_batched`, one input per batch), and
/// the buffer is handed back so that freeing it is not timed either; the
/// per-frame drops (refcount decrements for warren, frees for amq-protocol)
/// are timed, since a consumer pays them.
fn parse(c: &mut Criterion<ThreadCpuTime>) {
    for w in workloads() {
        check(&w);
        let mut group = c.benchmark_group(format!("parse-{}", w.size.name));
        group.throughput(Throughput::Elements(w.messages() as u64));
        group.bench_function("warren", |b| {
            b.iter_batched(
                || BytesMut::from(&w.deliver[..]),
                |mut buf| {
                    black_box(warren_parse(&mut buf, false));
                    buf
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("warren-headers-iterated", |b| {
            b.iter_batched(
                || BytesMut::from(&w.deliver[..]),
                |mut buf| {
                    black_box(warren_parse(&mut buf, true));
                    buf
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("amq-protocol", |b| {
            b.iter_batched(
                || w.deliver.clone(),
                |buf| {
                    black_box(amq_parse(&buf));
                    buf
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

/// Encode benchmarks: the whole publish stream into a reused, pre-reserved
/// buffer on both sides.
fn encode(c: &mut Criterion<ThreadCpuTime>) {
    for w in workloads() {
        let mut group = c.benchmark_group(format!("encode-{}", w.size.name));
        group.throughput(Throughput::Elements(w.messages() as u64));
        let mut ours = BytesMut::with_capacity(w.publish_len);
        group.bench_function("warren", |b| {
            b.iter(|| {
                warren_encode(&w, &mut ours);
                black_box(&ours);
            })
        });
        let mut theirs = Vec::with_capacity(w.publish_len);
        group.bench_function("amq-protocol", |b| {
            b.iter(|| {
                amq_encode(&w, &mut theirs);
                black_box(&theirs);
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: the whole `cargo bench --bench codec` stays under a few
    // minutes on a 2-core machine. Command-line flags still override these.
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20);
    targets = parse, encode
}

// ---------------------------------------------------------------------------
// The summary table.

/// How long the summary measures.
#[derive(Clone, Copy)]
struct Plan {
    runs: usize,
    run_time: Duration,
}

/// One timed iteration of a routine: it makes its input (untimed), runs the
/// routine on it (timed), drops the output (untimed) and returns the time.
type Timed<'a> = Box<dyn FnMut() -> Duration + 'a>;

fn timed<'a, I, O>(
    mut setup: impl FnMut() -> I + 'a,
    mut routine: impl FnMut(I) -> O + 'a,
) -> Timed<'a> {
    Box::new(move || {
        let input = setup();
        let start = ThreadCpuTime.start();
        let output = routine(input);
        let spent = ThreadCpuTime.end(start);
        drop(black_box(output));
        spent
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds per iteration of each routine, per run. Runs are interleaved
/// (run 1 of every routine, then run 2 of every routine...) so that load
/// from elsewhere on the machine hits the codecs alike; each run repeats its
/// routine until `plan.run_time` of timed work has accumulated, or (when the
/// untimed setup dominates, as copying a 4 MB stream for an 11 us parse
/// does, or the machine is busy) until twice that much wall-clock time has
/// passed, after at least 100 iterations.
fn measure(plan: Plan, routines: &mut [Timed<'_>]) -> Vec<Vec<f64>> {
    let mut per_run = vec![Vec::with_capacity(plan.runs); routines.len()];
    for _ in 0..plan.runs {
        for (routine, results) in routines.iter_mut().zip(&mut per_run) {
            let (mut spent, mut iterations) = (Duration::ZERO, 0u32);
            let started = std::time::Instant::now();
            while iterations == 0
                || (spent < plan.run_time
                    && (iterations < 100 || started.elapsed() < 2 * plan.run_time))
            {
                spent += routine();
                iterations += 1;
            }
            results.push(spent.as_secs_f64() / f64::from(iterations));
        }
    }
    per_run
}

struct Row {
    workload: &'static str,
    size: &'static str,
    messages: usize,
    bytes: usize,
    /// Seconds per stream, per run.
    warren: Vec<f64>,
    amq: Vec<f64>,
}

impl Row {
    fn print(&self) {
        let (warren, amq) = (median(self.warren.clone()), median(self.amq.clone()));
        // The ratio of each pair of adjacent runs, then the median of those.
        let ratio = median(
            self.amq
                .iter()
                .zip(&self.warren)
                .map(|(a, w)| a / w)
                .collect(),
        );
        let rate = |secs: f64| self.messages as f64 / secs;
        let gbps = |secs: f64| self.bytes as f64 / secs / 1e9;
        println!(
            "{:<24} {:>7} {:>14.0} {:>7.2} {:>14.0} {:>7.2} {:>9.2}x",
            self.workload,
            self.size,
            rate(warren),
            gbps(warren),
            rate(amq),
            gbps(amq),
            ratio,
        );
    }
}

fn summary(plan: Plan) {
    let workloads = workloads();
    let mut rows = Vec::new();
    for w in &workloads {
        check(w);
        let fresh = || BytesMut::from(&w.deliver[..]);
        let mut ours = BytesMut::with_capacity(w.publish_len);
        let mut theirs = Vec::with_capacity(w.publish_len);
        let mut routines = [
            timed(fresh, |mut buf| (warren_parse(&mut buf, false), buf)),
            timed(fresh, |mut buf| (warren_parse(&mut buf, true), buf)),
            timed(|| w.deliver.clone(), |buf| (amq_parse(&buf), buf)),
            timed(|| (), |()| warren_encode(w, &mut ours)),
            timed(|| (), |()| amq_encode(w, &mut theirs)),
        ];
        let mut secs = measure(plan, &mut routines).into_iter();
        let mut next = || secs.next().expect("one result per routine");
        let (parse, iterated, amq_parse, encode, amq_encode) =
            (next(), next(), next(), next(), next());
        let row = |workload, bytes, warren, amq| Row {
            workload,
            size: w.size.name,
            messages: w.messages(),
            bytes,
            warren,
            amq,
        };
        rows.push(row("parse", w.deliver.len(), parse, amq_parse.clone()));
        rows.push(row(
            "parse, headers iterated",
            w.deliver.len(),
            iterated,
            amq_parse,
        ));
        rows.push(row("encode", w.publish_len, encode, amq_encode));
    }

    println!();
    if plan.run_time.is_zero() {
        println!("(test mode: one iteration of each routine; the numbers below measure nothing)");
    }
    println!(
        "codec summary: {} interleaved runs of {:?} of thread CPU time per routine; msg/s \
         and GB/s from the median run, GB/s counting stream bytes (deliver stream for parse, \
         publish stream for encode); warren/amq is the median of the per-run speed ratios",
        plan.runs, plan.run_time
    );
    println!(
        "{:<24} {:>7} {:>14} {:>7} {:>14} {:>7} {:>10}",
        "workload", "body", "warren msg/s", "GB/s", "amq-pr. msg/s", "GB/s", "warren/amq"
    );
    rows.sort_by_key(|r| r.workload);
    for row in &rows {
        row.print();
    }
    println!(
        "(\"parse, headers iterated\": warren also iterates every headers table; \
         amq-protocol's column is the same plain parse, which always builds its table map)"
    );

    println!();
    println!(
        "heap allocation calls (alloc + realloc) per message, one pass over each stream, \
         first-split promotion of warren's buffer included"
    );
    println!(
        "{:<8} {:>10} {:>22} {:>22} {:>14} {:>15} {:>15}",
        "body",
        "messages",
        "warren parse",
        "warren parse+iterate",
        "amq parse",
        "warren encode",
        "amq encode"
    );
    for w in &workloads {
        let per_message = |n: usize| n as f64 / w.messages() as f64;
        let mut buf = BytesMut::from(&w.deliver[..]);
        let (_, ours) = count_allocations(|| warren_parse(&mut buf, false));
        let mut buf = BytesMut::from(&w.deliver[..]);
        let (_, iterated) = count_allocations(|| warren_parse(&mut buf, true));
        let (_, theirs) = count_allocations(|| amq_parse(&w.deliver));
        let mut out = BytesMut::with_capacity(w.publish_len);
        let (_, encode_ours) = count_allocations(|| warren_encode(w, &mut out));
        let mut out = Vec::with_capacity(w.publish_len);
        let (_, encode_theirs) = count_allocations(|| amq_encode(w, &mut out));
        println!(
            "{:<8} {:>10} {:>22.3} {:>22.3} {:>14.3} {:>15.3} {:>15.3}",
            w.size.name,
            w.messages(),
            per_message(ours),
            per_message(iterated),
            per_message(theirs),
            per_message(encode_ours),
            per_message(encode_theirs),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    benches();
    Criterion::default().configure_from_args().final_summary();
    if has("--list") || std::env::var("CODEC_SUMMARY").is_ok_and(|v| v == "off") {
        return;
    }
    // Criterion's rule: benchmark under `cargo bench` (`--bench`), test
    // otherwise (`cargo test --benches`, or `cargo bench -- --test`).
    let benchmarking = has("--bench") && !has("--test");
    summary(if benchmarking {
        Plan {
            runs: 5,
            run_time: Duration::from_millis(500),
        }
    } else {
        Plan {
            runs: 1,
            run_time: Duration::ZERO,
        }
    });
}
