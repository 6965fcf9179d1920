//! Runs the `decode` example (examples/decode.rs) over streams built with
//! warren's encoder and checks its exact output and exit status.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use warren::protocol::{
    encode_message, BasicDeliver, BasicProperties, ConnectionTuneOk, ContentHeader,
    EncodedBasicProperties, FieldTable, Frame, Method, FRAME_OVERHEAD, PROTOCOL_HEADER,
};

/// A temp file removed on drop, named uniquely per process and call.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "warren-decode-{}-{}.amqp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `cargo run -q --example decode --`, ready for the example's arguments.
/// (`cargo test --test decode_example` does not build examples; `cargo run`
/// builds it if needed.)
fn example() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "run",
        "-q",
        "--example",
        "decode",
        "--",
    ]);
    command
}

/// Runs the example with `extra` arguments over a file holding `input`.
fn decode(input: &[u8], extra: &[&str]) -> Output {
    let file = TempFile::new(input);
    example()
        .args(extra)
        .arg(&file.0)
        .output()
        .expect("run cargo")
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .expect("utf-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The sample capture and the offsets of its channel-1 frames.
struct Capture {
    bytes: Vec<u8>,
    deliver_at: usize,
    header_at: usize,
    body_at: usize,
}

fn capture() -> Capture {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&PROTOCOL_HEADER);
    Frame::Method {
        channel: 0,
        method: Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
        }),
    }
    .encode(&mut wire);
    let deliver = Method::BasicDeliver(BasicDeliver {
        consumer_tag: "ctag".try_into().unwrap(),
        delivery_tag: 1,
        redelivered: false,
        exchange: "amq.direct".try_into().unwrap(),
        routing_key: "jobs".try_into().unwrap(),
    });
    let properties = BasicProperties {
        content_type: Some("text/plain".try_into().unwrap()),
        delivery_mode: Some(2),
        headers: Some(FieldTable::new().with("x-retries", 3i32).unwrap()),
        ..BasicProperties::default()
    };
    let deliver_at = wire.len();
    let header_at = deliver_at + deliver_frame_len(&deliver);
    encode_message(1, &deliver, &properties, b"hello", 131072, &mut wire);
    let body_at = wire.len() - (FRAME_OVERHEAD + b"hello".len());
    Frame::Heartbeat { channel: 0 }.encode(&mut wire);
    Capture {
        bytes: wire.to_vec(),
        deliver_at,
        header_at,
        body_at,
    }
}

fn deliver_frame_len(method: &Method) -> usize {
    Frame::Method {
        channel: 1,
        method: method.clone(),
    }
    .encoded_len()
}

const SAMPLE: [&str; 6] = [
    "protocol-header AMQP 0-9-1",
    "0 method connection.tune-ok channel-max=2047 frame-max=131072 heartbeat=60",
    "1 method basic.deliver consumer-tag=\"ctag\" delivery-tag=1 redelivered=false \
     exchange=\"amq.direct\" routing-key=\"jobs\"",
    "1 header 60 body-size=5 content-type=\"text/plain\" headers={\"x-retries\": I32(3)} \
     delivery-mode=2",
    "1 body len=5",
    "0 heartbeat",
];

#[test]
fn dumps_every_frame() {
    let output = decode(&capture().bytes, &[]);
    assert_eq!(stdout_lines(&output), SAMPLE);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn dumps_a_stream_without_protocol_header_and_empty_properties() {
    let mut wire = BytesMut::new();
    Frame::Header {
        channel: 3,
        header: ContentHeader {
            class_id: 60,
            body_size: 0,
            properties: EncodedBasicProperties::default(),
        },
    }
    .encode(&mut wire);
    Frame::Body {
        channel: 3,
        payload: Bytes::new(),
    }
    .encode(&mut wire);
    let output = decode(&wire, &[]);
    assert_eq!(
        stdout_lines(&output),
        ["3 header 60 body-size=0", "3 body len=0"]
    );
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn stops_at_a_bad_frame_end() {
    let Capture {
        mut bytes, body_at, ..
    } = capture();
    // The body frame's frame-end octet: after 7 header bytes and "hello".
    let frame_end = body_at + 7 + 5;
    assert_eq!(bytes[frame_end], 0xce);
    bytes[frame_end] = 0x00;
    let output = decode(&bytes, &[]);
    let mut expected: Vec<String> = SAMPLE[..4].iter().map(|s| s.to_string()).collect();
    expected.push(format!(
        "error at offset {frame_end}: frame end: frame-end octet is 0x00, expected 0xce"
    ));
    assert_eq!(stdout_lines(&output), expected);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[test]
fn stops_where_the_stream_is_cut() {
    let capture = capture();
    // Cut the content header frame three bytes short of its end.
    let output = decode(&capture.bytes[..capture.body_at - 3], &[]);
    let mut expected: Vec<String> = SAMPLE[..3].iter().map(|s| s.to_string()).collect();
    expected.push(format!(
        "error at offset {}: stream ends inside a frame (3 more bytes expected)",
        capture.header_at
    ));
    assert_eq!(stdout_lines(&output), expected);
    assert_eq!(output.status.code(), Some(1), "{output:?}");

    let output = decode(&PROTOCOL_HEADER[..5], &[]);
    assert_eq!(
        stdout_lines(&output),
        ["error at offset 0: stream ends inside the protocol header (3 more bytes expected)"]
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[test]
fn enforces_frame_max() {
    let capture = capture();
    let deliver_len = capture.header_at - capture.deliver_at;
    // Large enough for connection.tune-ok, one byte short for basic.deliver.
    let frame_max = (deliver_len - 1).to_string();
    let output = decode(&capture.bytes, &["--frame-max", &frame_max]);
    let mut expected: Vec<String> = SAMPLE[..2].iter().map(|s| s.to_string()).collect();
    expected.push(format!(
        "error at offset {}: frame header: frame of {deliver_len} bytes exceeds the \
         negotiated frame_max of {frame_max}",
        // The decoder points at the frame's size field.
        capture.deliver_at + 3
    ));
    assert_eq!(stdout_lines(&output), expected);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[test]
fn reads_stdin() {
    let mut child = example()
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cargo");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(&capture().bytes).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait for cargo");
    assert_eq!(stdout_lines(&output), SAMPLE);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn reports_usage_errors() {
    // The example's message is the last line (cargo may warn before it).
    let last_stderr_line = |output: &Output| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        stderr.lines().last().unwrap_or_default().to_owned()
    };
    let output = decode(b"", &["--bogus"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(output.stdout.is_empty());
    assert_eq!(
        last_stderr_line(&output),
        "decode: unknown option \"--bogus\" (usage: decode [--frame-max N] [FILE|-])"
    );

    let missing = std::env::temp_dir().join("warren-decode-no-such-file.amqp");
    let output = example().arg(&missing).output().expect("run cargo");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(output.stdout.is_empty());
    let message = format!("decode: cannot read {}: ", missing.display());
    assert!(
        last_stderr_line(&output).starts_with(&message),
        "{output:?}"
    );
}
