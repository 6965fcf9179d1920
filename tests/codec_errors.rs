//! Incomplete and malformed input: every prefix of a valid stream is
//! "incomplete", never an error; every kind of malformed frame gives its own
//! typed error, at the right offset, with the reply code the spec assigns.

mod support;

use bytes::BytesMut;
use support::{decode_all, encode, hex};
use warren::protocol::*;
use warren::{DecodeError, DecodeErrorKind};

/// A stream with one frame of every type and a table-bearing method.
fn valid_stream() -> Vec<u8> {
    let mut wire = BytesMut::new();
    Frame::Method {
        channel: 0,
        method: ConnectionStartOk {
            client_properties: FieldTable::new()
                .with("product", LongString::from("warren"))
                .unwrap()
                .with("nested", FieldTable::new().with("n", 1i32).unwrap())
                .unwrap(),
            mechanism: ShortString::from_static("PLAIN"),
            response: LongString::from("\0guest\0guest"),
            locale: ShortString::from_static("en_US"),
        }
        .into(),
    }
    .encode(&mut wire);
    let deliver = Method::BasicDeliver(BasicDeliver {
        consumer_tag: ShortString::from_static("ctag"),
        delivery_tag: 7,
        ..BasicDeliver::default()
    });
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from_static("application/json"))
        .with_headers(FieldTable::new().with("x-retries", 3i32).unwrap());
    encode_message(1, &deliver, &properties, &[1u8; 300], 4096, &mut wire);
    Frame::Heartbeat { channel: 0 }.encode(&mut wire);
    wire.to_vec()
}

fn error_of(bytes: &[u8], frame_max: u32) -> DecodeError {
    match decode_all(bytes, frame_max) {
        (_, Err(err)) => err,
        (frames, Ok(tail)) => panic!("no error; decoded {frames:?}, {tail} bytes short"),
    }
}

#[test]
fn every_proper_prefix_is_incomplete_never_an_error() {
    let stream = valid_stream();
    let (all, rest) = decode_all(&stream, 4096);
    assert_eq!(rest, Ok(0));
    assert_eq!(all.len(), 5);
    let ends: Vec<usize> = all
        .iter()
        .scan(0, |end, f| {
            *end += f.encoded_len();
            Some(*end)
        })
        .collect();
    for len in 0..stream.len() {
        let (frames, rest) = decode_all(&stream[..len], 4096);
        let complete = ends.iter().filter(|&&end| end <= len).count();
        assert_eq!(frames, all[..complete], "prefix of {len} bytes");
        let needed = rest.unwrap_or_else(|e| panic!("prefix of {len} bytes: {e}"));
        let start = if complete == 0 { 0 } else { ends[complete - 1] };
        if len > start {
            assert!(needed > 0, "prefix of {len} bytes");
            if len - start >= FRAME_HEADER_SIZE {
                // Once the header is in, the decoder knows exactly how much is missing.
                assert_eq!(needed, ends[complete] - len, "prefix of {len} bytes");
            }
        }
    }
}

#[test]
fn a_stream_split_at_any_byte_gives_the_same_frames() {
    let stream = valid_stream();
    let (expected, _) = decode_all(&stream, 4096);
    for split in 0..=stream.len() {
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            while let Decoded::Frame(frame) = decoder.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames, expected, "split at {split}");
        assert!(buf.is_empty());
        assert_eq!(decoder.offset(), stream.len() as u64);
    }
}

#[test]
fn a_corrupted_frame_end_is_a_frame_error_at_its_offset() {
    let mut stream = valid_stream();
    let first = decode_all(&stream, 4096).0[0].encoded_len();
    let second_end = first + decode_all(&stream, 4096).0[1].encoded_len() - 1;
    stream[second_end] = 0xcd;
    let err = error_of(&stream, 4096);
    assert_eq!(err.kind, DecodeErrorKind::BadFrameEnd { found: 0xcd });
    assert_eq!(err.offset, second_end as u64);
    assert_eq!(err.reply_code(), ReplyCode::FrameError);
}

#[test]
fn an_unknown_frame_type_is_refused_from_its_first_byte() {
    let err = error_of(&[0x05], 4096);
    assert_eq!(
        err.kind,
        DecodeErrorKind::UnknownFrameType { frame_type: 5 }
    );
    assert_eq!(err.offset, 0);
    assert_eq!(err.reply_code(), ReplyCode::FrameError);
}

#[test]
fn a_frame_past_frame_max_is_refused_from_its_header_before_buffering() {
    // Only the 7 header bytes are given: a 5000-byte payload never has to arrive.
    let err = error_of(&hex("03 0001 00001388"), 4096);
    assert_eq!(
        err.kind,
        DecodeErrorKind::FrameTooLarge {
            frame_size: 5008,
            frame_max: 4096
        }
    );
    assert_eq!(err.reply_code(), ReplyCode::FrameError);
    // A hostile 4 GiB size is refused the same way.
    let err = error_of(&hex("03 0001 ffffffff"), 131_072);
    assert!(matches!(err.kind, DecodeErrorKind::FrameTooLarge { .. }));
}

#[test]
fn a_frame_exactly_at_frame_max_is_accepted() {
    let body = Frame::Body {
        channel: 1,
        payload: vec![0u8; 4096 - FRAME_OVERHEAD].into(),
    };
    let (frames, rest) = decode_all(&encode(&body), 4096);
    assert_eq!(rest, Ok(0));
    assert_eq!(frames, vec![body]);
}

#[test]
fn a_bad_field_type_tag_is_a_syntax_error_pointing_at_the_tag() {
    // connection.start-ok whose client-properties table holds key "k" with tag 'Z'.
    let bytes = hex("01 0000 00000011 000a 000b 00000003 01 6b 5a 00 00000000 00 ce");
    let err = error_of(&bytes, 4096);
    assert_eq!(err.kind, DecodeErrorKind::UnknownFieldType { tag: b'Z' });
    assert_eq!(err.offset, 7 + 4 + 4 + 2);
    assert_eq!(err.context, "connection.start-ok client-properties");
    assert_eq!(err.reply_code(), ReplyCode::SyntaxError);
}

#[test]
fn a_table_length_past_its_frame_is_refused_without_allocating_for_it() {
    // The table claims 0xfffffff0 bytes; the frame holds 4.
    let bytes = hex("01 0000 0000000c 000a 000b fffffff0 00000000 ce");
    let err = error_of(&bytes, 4096);
    assert_eq!(
        err.kind,
        DecodeErrorKind::LengthOverrun {
            declared: 0xffff_fff0,
            available: 4
        }
    );
    assert_eq!(err.reply_code(), ReplyCode::SyntaxError);
}

#[test]
fn a_short_string_past_its_frame_is_refused() {
    // basic.ack is fine; basic.consume-ok with a 200-byte tag in a 5-byte payload is not.
    let bytes = hex("01 0001 00000005 003c 0015 c8 ce");
    let err = error_of(&bytes, 4096);
    assert_eq!(
        err.kind,
        DecodeErrorKind::LengthOverrun {
            declared: 200,
            available: 0
        }
    );
    assert_eq!(err.context, "basic.consume-ok consumer-tag");
}

#[test]
fn a_method_cut_short_by_its_frame_is_truncated() {
    // basic.ack needs 9 bytes of arguments; the frame holds 3.
    let err = error_of(&hex("01 0001 00000007 003c 0050 000000 ce"), 4096);
    assert_eq!(err.kind, DecodeErrorKind::Truncated);
    assert_eq!(err.context, "basic.ack delivery-tag");
    assert_eq!(err.offset, 11);
}

#[test]
fn an_unknown_method_is_not_implemented() {
    let err = error_of(&hex("01 0001 00000004 003c 0063 ce"), 4096);
    assert_eq!(
        err.kind,
        DecodeErrorKind::UnknownMethod {
            class_id: 60,
            method_id: 99
        }
    );
    assert_eq!(err.reply_code(), ReplyCode::NotImplemented);
}

#[test]
fn bytes_after_a_methods_arguments_are_refused() {
    let err = error_of(&hex("01 0001 00000006 003c 000b ffff ce"), 4096);
    assert_eq!(err.kind, DecodeErrorKind::TrailingBytes { count: 2 });
    assert_eq!(err.context, "basic.qos-ok");
}

#[test]
fn a_content_header_with_trailing_padding_is_consumed_exactly() {
    // class 60, weight 0, size 5, no properties, then 3 bytes of padding.
    let bytes =
        hex("02 0001 00000011 003c 0000 0000000000000005 0000 000000 ce 08 0000 00000000 ce");
    let (frames, rest) = decode_all(&bytes, 4096);
    assert_eq!(rest, Ok(0));
    assert_eq!(frames.len(), 2);
    assert!(matches!(&frames[0], Frame::Header { header, .. } if header.body_size == 5));
    assert_eq!(frames[1], Frame::Heartbeat { channel: 0 });
}

#[test]
fn a_content_header_of_a_class_without_content_is_refused() {
    let err = error_of(
        &hex("02 0001 0000000e 0032 0000 0000000000000005 0000 ce"),
        4096,
    );
    assert_eq!(
        err.kind,
        DecodeErrorKind::UnknownContentClass { class_id: 50 }
    );
    assert_eq!(err.offset, 7);
}

#[test]
fn undefined_property_flags_are_refused() {
    // Bit 0 (continuation) set: basic has only 14 properties.
    let err = error_of(
        &hex("02 0001 0000000e 003c 0000 0000000000000005 0001 ce"),
        4096,
    );
    assert_eq!(err.kind, DecodeErrorKind::InvalidPropertyFlags { flags: 1 });
}

#[test]
fn a_heartbeat_with_a_payload_is_a_frame_error() {
    let err = error_of(&hex("08 0000 00000001 00 ce"), 4096);
    assert_eq!(err.kind, DecodeErrorKind::HeartbeatWithPayload { size: 1 });
    assert_eq!(err.reply_code(), ReplyCode::FrameError);
}

#[test]
fn a_protocol_header_from_the_server_names_the_version_it_wants() {
    let err = error_of(b"AMQP\x00\x00\x09\x01", 4096);
    assert_eq!(
        err.kind,
        DecodeErrorKind::ProtocolHeader {
            header: *b"AMQP\x00\x00\x09\x01"
        }
    );
    assert!(err.to_string().contains("0-9-1"), "{err}");
}

#[test]
fn tables_nested_past_the_limit_are_refused_without_exhausting_the_stack() {
    // Build a table nested 10,000 deep by hand: "k" -> F -> "k" -> F ...
    let depth = 10_000;
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![1, b'k', b'F'];
        outer.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    let err = FieldTable::from_encoded(inner.into()).unwrap_err();
    assert_eq!(
        err.kind,
        DecodeErrorKind::NestingTooDeep { limit: MAX_NESTING }
    );
    // Just inside the limit is fine.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..MAX_NESTING {
        let mut outer = vec![1, b'k', b'F'];
        outer.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    assert!(FieldTable::from_encoded(inner.into()).is_ok());
}

#[test]
fn errors_say_what_and_where() {
    let err = error_of(&hex("01 0001 00000007 003c 0050 000000 ce"), 4096);
    assert_eq!(
        err.to_string(),
        "basic.ack delivery-tag: field runs past the end of its frame"
    );
}
