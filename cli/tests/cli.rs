//! The `warren` binary, run as a user runs it, against the broker at
//! 127.0.0.1:5672 (guest/guest), like warren's other broker tests.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use warren::blocking::Connection;
use warren::options::{QueueDeclareOptions, QueueDeleteOptions};
use warren::protocol::FieldTable;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn warren(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the warren binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the run failed with `status` and exactly one line on stderr,
/// which it returns.
fn one_line_failure(output: &Output, status: i32) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(stderr.starts_with("warren: "), "stderr: {stderr:?}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr:?}");
    stderr.trim_end().to_string()
}

/// The last line of stdout, as JSON.
fn summary(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "status {:?}, stdout {stdout}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    let last = stdout.lines().last().expect("a summary line");
    let summary: Value = serde_json::from_str(last).expect("the summary is JSON");
    assert_eq!(summary["type"], "summary", "{summary}");
    summary
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A fresh queue for one test, deleted when dropped.
struct TestQueue {
    connection: Connection,
    name: String,
}

impl TestQueue {
    fn new(what: &str) -> TestQueue {
        let connection = Connection::open(BROKER).expect("the broker at 127.0.0.1:5672");
        let name = format!("warren-cli-test-{what}-{}", std::process::id());
        let channel = connection.open_channel().expect("a channel");
        channel
            .queue_declare(&name, QueueDeclareOptions::default(), FieldTable::new())
            .expect("queue.declare");
        channel.queue_purge(&name).expect("queue.purge");
        TestQueue { connection, name }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        if let Ok(channel) = self.connection.open_channel() {
            let _ = channel.queue_delete(&self.name, QueueDeleteOptions::default());
        }
    }
}

#[test]
fn perf_with_a_message_count_receives_every_message_sent_and_deletes_its_queues() {
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "perf",
            "--messages",
            "2000",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the warren binary runs");
    let pid = child.id();
    let output = child.wait_with_output().expect("it ends");
    let summary = summary(&output);
    assert_eq!(summary["sent"], 4000, "{summary}");
    assert_eq!(summary["received"], 4000, "{summary}");
    assert_eq!(summary["producers"], 2);
    assert_eq!(summary["consumers"], 2);
    assert_eq!(summary["latency_ms"]["samples"], 4000, "{summary}");
    assert!(
        summary["latency_ms"]["p99"].as_f64().unwrap()
            >= summary["latency_ms"]["p50"].as_f64().unwrap()
    );

    let connection = Connection::open(BROKER).expect("the broker");
    let channel = connection.open_channel().expect("a channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let gone = channel.queue_declare(&format!("warren-perf-{pid}-0"), passive, FieldTable::new());
    assert_eq!(
        gone.err().and_then(|e| e.reply_code()),
        Some(404),
        "the queue was deleted"
    );
}

#[test]
fn perf_with_confirms_and_many_queues_confirms_every_message() {
    let output = warren(&[
        "perf",
        "--messages",
        "500",
        "--producers",
        "2",
        "--consumers",
        "3",
        "--queues",
        "5",
        "--confirm",
        "50",
        "--size",
        "100",
        "--json",
    ]);
    let summary = summary(&output);
    assert_eq!(summary["sent"], 1000, "{summary}");
    assert_eq!(summary["confirmed"], 1000, "{summary}");
    assert_eq!(summary["nacked"], 0, "{summary}");
    assert_eq!(summary["received"], 1000, "{summary}");
}

#[test]
fn perf_for_a_duration_at_a_set_rate_prints_progress_then_a_table() {
    let output = warren(&["perf", "--duration", "1.5", "--rate", "200", "--auto-ack"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("time 1s, sent "), "{stderr}");
    assert!(stdout.contains("sent "), "{stdout}");
    assert!(stdout.contains("received "), "{stdout}");
    assert!(stdout.contains("latency    min "), "{stdout}");
}

#[test]
fn perf_producers_and_consumers_in_two_processes_share_a_named_queue_and_keep_it() {
    let queue = TestQueue::new("perf-named");
    let produced = warren(&[
        "perf",
        "--producers",
        "1",
        "--consumers",
        "0",
        "--queue",
        &queue.name,
        "--messages",
        "700",
        "--confirm",
        "100",
        "--json",
    ]);
    let produced = summary(&produced);
    assert_eq!(produced["confirmed"], 700, "{produced}");
    assert_eq!(produced["received"], 0, "{produced}");

    // The queue outlived the producer's run, with every message in it.
    let channel = queue.connection.open_channel().expect("a channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let held = channel
        .queue_declare(&queue.name, passive, FieldTable::new())
        .expect("the named queue is kept");
    assert_eq!(held.message_count, 700);

    let consumed = warren(&[
        "perf",
        "--producers",
        "0",
        "--consumers",
        "1",
        "--queue",
        &queue.name,
        "--consumer-messages",
        "700",
        "--json",
    ]);
    let stdout = text(&consumed.stdout);
    let consumed = summary(&consumed);
    assert_eq!(consumed["received"], 700, "{consumed}");
    assert_eq!(consumed["latency_ms"]["samples"], 700, "{consumed}");
    let held = channel
        .queue_declare(&queue.name, passive, FieldTable::new())
        .expect("the named queue is kept");
    assert_eq!(held.message_count, 0, "every message was acked");

    // Resident memory, on Linux: the peak in the summary, the current
    // figure and the received total in each progress object.
    if cfg!(target_os = "linux") {
        let peak = consumed["peak_rss_kib"].as_u64().expect("a peak RSS");
        assert!(peak > 1024, "{consumed}");
        for line in stdout.lines().filter(|l| l.contains("\"progress\"")) {
            let progress: Value = serde_json::from_str(line).expect("JSON");
            assert!(progress["rss_kib"].as_u64().is_some(), "{progress}");
            assert!(progress["received"].as_u64().unwrap() <= 700, "{progress}");
        }
    }
}

#[test]
fn a_published_body_comes_back_from_consume() {
    let queue = TestQueue::new("round-trip");
    let published = warren(&[
        "publish",
        "--uri",
        BROKER,
        "--routing-key",
        &queue.name,
        "--body",
        "hello, warren",
        "--content-type",
        "text/plain",
        "--header",
        "x-test=1",
        "--confirm",
    ]);
    assert!(published.status.success(), "{}", text(&published.stderr));
    let consumed = warren(&[
        "consume",
        "--uri",
        BROKER,
        "--queue",
        &queue.name,
        "--count",
        "1",
    ]);
    assert!(consumed.status.success(), "{}", text(&consumed.stderr));
    assert_eq!(text(&consumed.stdout), "hello, warren\n");

    let published = warren(&[
        "publish",
        "--routing-key",
        &queue.name,
        "--body",
        "\x01\x02",
    ]);
    assert!(published.status.success(), "{}", text(&published.stderr));
    let consumed = warren(&["consume", "--queue", &queue.name, "--count", "1", "--hex"]);
    assert_eq!(
        text(&consumed.stdout),
        "0102\n",
        "{}",
        text(&consumed.stderr)
    );
}

#[test]
fn a_mandatory_message_nobody_takes_is_an_error() {
    let name = format!("warren-cli-test-nowhere-{}", std::process::id());
    let output = warren(&[
        "publish",
        "--routing-key",
        &name,
        "--body",
        "x",
        "--mandatory",
    ]);
    let line = one_line_failure(&output, 1);
    assert!(line.contains("returned") && line.contains("312"), "{line}");
}

#[test]
fn publishing_to_a_missing_exchange_is_an_error_even_without_confirms() {
    let exchange = format!("warren-cli-test-no-exchange-{}", std::process::id());
    for confirm in [&[][..], &["--confirm"]] {
        let mut args = vec![
            "publish",
            "--exchange",
            &exchange,
            "--routing-key",
            "k",
            "--body",
            "x",
        ];
        args.extend_from_slice(confirm);
        let line = one_line_failure(&warren(&args), 1);
        assert!(line.contains("404"), "{line}");
    }
}

#[test]
fn consuming_from_a_missing_queue_is_one_line() {
    let name = format!("warren-cli-test-missing-{}", std::process::id());
    let line = one_line_failure(&warren(&["consume", "--queue", &name, "--count", "1"]), 1);
    assert!(line.contains("404"), "{line}");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for args in [
        &["perf", "--producers", "many"][..],
        &["perf", "--size", "11"],
        &["perf", "--no-such-option"],
        &["perf", "--uri", "http://127.0.0.1/"],
        &["perf", "--producers", "0", "--consumers", "0"],
        &["perf", "--duration", "1", "--messages", "1"],
        &["perf", "--queue", "q", "--queues", "2"],
        &["perf", "--consumers", "0", "--consumer-messages", "5"],
        &["perf", "--consumer-messages", "0"],
        &["publish", "--body", "x"],
        &["publish", "--routing-key", "q", "--header", "novalue"],
        &["consume"],
        &["frobnicate"],
        &[],
    ] {
        let line = one_line_failure(&warren(args), 2);
        assert!(line.ends_with("(see 'warren --help')"), "{args:?}: {line}");
    }
}

#[test]
fn an_unreachable_broker_is_one_line_without_the_password() {
    let uri = format!("amqp://guest:s3cret@127.0.0.1:{}/%2f", closed_port());
    for args in [
        &["perf", "--uri", &uri][..],
        &[
            "publish",
            "--uri",
            &uri,
            "--routing-key",
            "q",
            "--body",
            "x",
        ],
        &["consume", "--uri", &uri, "--queue", "q"],
    ] {
        let line = one_line_failure(&warren(args), 1);
        let shown = uri.replace(":s3cret", "");
        assert!(
            line.starts_with(&format!("warren: cannot connect to {shown}: ")),
            "{line}"
        );
        assert!(!line.contains("s3cret"), "{line}");
    }
}

#[test]
fn decode_dumps_a_capture_and_flags_a_cut_frame() {
    let path = std::env::temp_dir().join(format!("warren-cli-decode-{}", std::process::id()));
    let mut capture = b"AMQP\x00\x00\x09\x01".to_vec();
    capture.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]); // heartbeat
    std::fs::write(&path, &capture).unwrap();
    let output = warren(&["decode", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "protocol-header AMQP 0-9-1\n0 heartbeat\n"
    );

    capture.extend_from_slice(&[1, 0, 1, 0, 0]);
    std::fs::write(&path, &capture).unwrap();
    let output = warren(&["decode", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    // How many bytes are missing is the decoder's lower bound; the offset is exact.
    assert!(
        stdout.contains("\nerror at offset 16: stream ends inside a frame ("),
        "{stdout}"
    );
    let missing = one_line_failure(&warren(&["decode", "/nonexistent/capture"]), 1);
    assert!(
        missing.contains("cannot read /nonexistent/capture"),
        "{missing}"
    );
}
