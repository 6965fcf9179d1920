//! Heap allocations on the receive path: decoding a stream of deliveries
//! (basic.deliver, content header with a headers table, body) allocates
//! nothing per message.
//!
//! A counting global allocator wraps the system allocator. It counts only on
//! the thread that opened its gate, so the tests in this binary can run on
//! several threads without seeing each other's allocations. (This file holds
//! only allocation tests: the allocator is global to the test binary.)

use bytes::{Bytes, BytesMut};
use warren::protocol::{
    encode_message, BasicDeliver, BasicProperties, ContentHeader, Decoded, FieldTable, FieldValue,
    Frame, FrameDecoder, LongString, Method, ShortString,
};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::count_allocations;

const MESSAGES: usize = 1000;
const BODY: usize = 1024;
const FRAME_MAX: u32 = 131_072;

/// `MESSAGES` deliveries on channel 1, each a basic.deliver, a content header
/// (content-type, delivery-mode 2, a 3-entry headers table) and one 1 KiB body
/// frame, in one read buffer as the reactor would hold them.
fn deliver_stream() -> BytesMut {
    let headers = FieldTable::new()
        .with("x-trace", LongString::from("abc-123"))
        .and_then(|t| t.with("x-retries", 3i32))
        .and_then(|t| t.with("x-flag", true))
        .expect("short keys");
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from_static("application/json"))
        .with_delivery_mode(2)
        .with_headers(headers);
    let body = vec![0x5a; BODY];
    let mut buf = BytesMut::new();
    for i in 0..MESSAGES {
        let method = Method::BasicDeliver(BasicDeliver {
            consumer_tag: ShortString::from_static("ctag-1"),
            delivery_tag: i as u64 + 1,
            redelivered: false,
            exchange: ShortString::from_static("amq.direct"),
            routing_key: ShortString::from_static("orders"),
        });
        encode_message(1, &method, &properties, &body, FRAME_MAX, &mut buf);
    }
    buf
}

/// Decodes one frame, which must be there.
fn next_frame(decoder: &mut FrameDecoder, buf: &mut BytesMut) -> Frame {
    match decoder.decode(buf) {
        Ok(Decoded::Frame(frame)) => frame,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// What the decode loop keeps of the stream: the content headers and body
/// payloads, in vectors reserved before counting starts.
struct Received {
    headers: Vec<ContentHeader>,
    bodies: Vec<Bytes>,
    methods: usize,
}

impl Received {
    fn with_capacity(messages: usize) -> Self {
        Received {
            headers: Vec::with_capacity(messages),
            bodies: Vec::with_capacity(messages),
            methods: 0,
        }
    }

    fn keep(&mut self, frame: Frame) {
        match frame {
            Frame::Method {
                method: Method::BasicDeliver(deliver),
                ..
            } => {
                assert_eq!(deliver.delivery_tag, self.methods as u64 + 1);
                self.methods += 1;
            }
            Frame::Header { header, .. } => self.headers.push(header),
            Frame::Body { payload, .. } => self.bodies.push(payload),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[test]
fn the_counting_allocator_counts_this_threads_allocations() {
    // Guards the tests below against passing vacuously.
    let (v, allocations) = count_allocations(|| std::hint::black_box(Vec::<u8>::with_capacity(64)));
    drop(v);
    assert_eq!(allocations, 1);
    let (_, allocations) = count_allocations(|| std::hint::black_box(1 + 1));
    assert_eq!(allocations, 0);
}

#[test]
fn decoding_deliveries_allocates_nothing_per_message_with_the_headers_table_unparsed() {
    let mut buf = deliver_stream();
    let stream = buf.as_ptr_range();
    let mut decoder = FrameDecoder::with_frame_max(FRAME_MAX);
    let mut received = Received::with_capacity(MESSAGES);

    // The first frame split off the read buffer promotes the buffer from
    // its `Vec` form to shared, reference-counted storage: `BytesMut::split_to`
    // allocates the shared header once. That is one allocation per read
    // buffer, not per message.
    let (first, first_allocations) = count_allocations(|| next_frame(&mut decoder, &mut buf));
    received.keep(first);
    println!("first frame of the buffer: {first_allocations} allocation(s)");
    assert!(
        first_allocations <= 1,
        "the first frame of a buffer should cost at most the buffer's promotion to \
         shared storage, but it made {first_allocations} allocations"
    );

    // Every frame after it is a view of that shared storage: no allocation.
    let ((), allocations) = count_allocations(|| loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Frame(frame)) => received.keep(frame),
            Ok(Decoded::Incomplete { .. }) => break,
            Err(err) => panic!("decode failed: {err}"),
        }
    });
    let frames = 3 * MESSAGES - 1;
    assert_eq!(
        allocations, 0,
        "decoding {frames} more frames ({MESSAGES} deliveries: method, header with a \
         3-entry headers table, 1 KiB body) made {allocations} heap allocations; \
         the receive path should make none"
    );

    assert!(buf.is_empty());
    assert_eq!(received.methods, MESSAGES);
    assert_eq!(received.headers.len(), MESSAGES);
    assert_eq!(received.bodies.len(), MESSAGES);
    for body in &received.bodies {
        assert_eq!(body.len(), BODY);
        assert!(
            stream.contains(&body.as_ptr()),
            "a body payload is a copy, not a view of the read buffer"
        );
    }
    for header in &received.headers {
        assert_eq!(header.body_size, BODY as u64);
        let table = header.properties.headers().expect("headers");
        assert!(stream.contains(&table.encoded().as_ptr()));
    }
}

#[test]
fn iterating_the_headers_tables_of_deliveries_allocates_nothing() {
    let mut buf = deliver_stream();
    let mut decoder = FrameDecoder::with_frame_max(FRAME_MAX);
    let mut received = Received::with_capacity(MESSAGES);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Frame(frame)) => received.keep(frame),
            Ok(Decoded::Incomplete { .. }) => break,
            Err(err) => panic!("decode failed: {err}"),
        }
    }
    assert_eq!(received.headers.len(), MESSAGES);

    // Entries decode lazily: keys are `ShortString`s and string values
    // `LongString`s viewing the table's bytes (a reference count increment),
    // numbers and booleans are plain values. Reading them allocates nothing.
    let (entries, allocations) = count_allocations(|| {
        let mut entries = 0;
        for header in &received.headers {
            // The properties were checked, not decoded, with their frame:
            // the getter finds the table and hands out a view of it.
            let table = header.properties.headers().expect("headers");
            for (key, value) in table.iter() {
                entries += 1;
                match key.as_bytes() {
                    b"x-trace" => assert_eq!(value.as_str(), Some("abc-123")),
                    b"x-retries" => assert_eq!(value, FieldValue::I32(3)),
                    b"x-flag" => assert_eq!(value.as_bool(), Some(true)),
                    other => panic!("unexpected key {:?}", String::from_utf8_lossy(other)),
                }
            }
            assert_eq!(table.get("x-retries").and_then(|v| v.as_i64()), Some(3));
        }
        entries
    });
    assert_eq!(entries, 3 * MESSAGES);
    assert_eq!(
        allocations, 0,
        "iterating {MESSAGES} headers tables of 3 entries (and one `get` each) made \
         {allocations} heap allocations; entries should be views of the frame"
    );
}
