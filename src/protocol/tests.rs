//! Round-trip properties of the codec over every generated method, the basic
//! properties and field values, with inputs built by `arbitrary` from
//! proptest's random bytes (the same generators the fuzz targets use).

use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// Encodes `frame`, decodes it back and checks it comes back equal, with the
/// buffer fully consumed and the size `encoded_len` announced.
fn assert_frame_round_trips(frame: &Frame) {
    let mut wire = BytesMut::new();
    frame.encode(&mut wire);
    assert_eq!(wire.len(), frame.encoded_len(), "encoded_len of {frame:?}");
    let mut decoder = FrameDecoder::with_frame_max(u32::MAX);
    match decoder.decode(&mut wire) {
        Ok(Decoded::Frame(decoded)) => assert_eq!(&decoded, frame),
        other => panic!("{frame:?} decoded as {other:?}"),
    }
    assert!(wire.is_empty(), "bytes left after {frame:?}");
}

fn method_from(data: &[u8]) -> Option<Method> {
    Method::arbitrary(&mut Unstructured::new(data)).ok()
}

#[test]
fn every_generated_method_round_trips() {
    // A fixed pseudo-random stream, so the test is deterministic: draw
    // methods until every one the spec defines has been seen at least 20 times.
    let mut seen = std::collections::BTreeMap::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut data = vec![0u8; 512];
    for _ in 0..200_000 {
        for byte in data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let Some(method) = method_from(&data) else {
            continue;
        };
        *seen.entry(method.id()).or_insert(0) += 1;
        assert_frame_round_trips(&Frame::Method { channel: 7, method });
        if seen.len() == MethodId::ALL.len() && seen.values().all(|&n| n >= 20) {
            return;
        }
    }
    let missing: BTreeSet<_> = MethodId::ALL
        .iter()
        .filter(|id| seen.get(id).copied().unwrap_or(0) < 20)
        .filter_map(|id| id.name())
        .collect();
    panic!("methods not exercised 20 times: {missing:?}");
}

#[test]
fn method_metadata_matches_the_spec() {
    // 10 + 4 (RabbitMQ) connection, 6 channel, 8 exchange, 10 queue, 18 basic,
    // 6 tx and 2 confirm methods.
    assert_eq!(MethodId::ALL.len(), 64);
    assert_eq!(MethodId::BASIC_DELIVER.name(), Some("basic.deliver"));
    assert!(MethodId::BASIC_CONSUME.is_synchronous());
    assert_eq!(
        MethodId::BASIC_CONSUME.responses(),
        &[MethodId::BASIC_CONSUME_OK]
    );
    assert_eq!(
        MethodId::BASIC_GET.responses(),
        &[MethodId::BASIC_GET_OK, MethodId::BASIC_GET_EMPTY]
    );
    assert_eq!(
        MethodId::BASIC_RECOVER.responses(),
        &[MethodId::BASIC_RECOVER_OK]
    );
    assert!(!MethodId::BASIC_PUBLISH.is_synchronous());
    assert!(MethodId::BASIC_PUBLISH.has_content() && MethodId::BASIC_GET_OK.has_content());
    assert!(MethodId::BASIC_PUBLISH.sent_by_client() && !MethodId::BASIC_PUBLISH.sent_by_server());
    assert!(MethodId::BASIC_ACK.sent_by_client() && MethodId::BASIC_ACK.sent_by_server());
    assert!(MethodId::CONNECTION_BLOCKED.sent_by_server());
    assert_eq!(
        MethodId::CONNECTION_UPDATE_SECRET.responses(),
        &[MethodId::CONNECTION_UPDATE_SECRET_OK]
    );
    assert_eq!(MethodId::EXCHANGE_UNBIND_OK.method_id, 51);
    assert_eq!(
        MethodId {
            class_id: 60,
            method_id: 99
        }
        .name(),
        None
    );
    assert_eq!(ReplyCode::from_code(404), Some(ReplyCode::NotFound));
    assert_eq!(ReplyCode::NotFound.name(), "NOT_FOUND");
    assert!(ReplyCode::NotFound.is_soft_error() && !ReplyCode::NotFound.is_hard_error());
    assert!(ReplyCode::NoRoute.is_soft_error());
    assert!(ReplyCode::FrameError.is_hard_error());
    assert!(!ReplyCode::ReplySuccess.is_soft_error() && !ReplyCode::ReplySuccess.is_hard_error());
    let deliver = Method::BasicAck(BasicAck {
        delivery_tag: 9,
        multiple: true,
    });
    assert_eq!(
        deliver.to_string(),
        "basic.ack delivery-tag=9 multiple=true"
    );
}

/// Checks every getter, `to_properties`, the encoding and the formatting of
/// `encoded` against the owned `properties`.
fn assert_same_properties(encoded: &EncodedBasicProperties, properties: &BasicProperties) {
    assert_eq!(&encoded.to_properties(), properties);
    assert_eq!(encoded.flags(), properties.flags());
    assert_eq!(encoded.is_empty(), properties.flags() == 0);
    assert_eq!(encoded.content_type(), properties.content_type);
    assert_eq!(encoded.content_encoding(), properties.content_encoding);
    assert_eq!(encoded.headers(), properties.headers);
    assert_eq!(encoded.delivery_mode(), properties.delivery_mode);
    assert_eq!(encoded.priority(), properties.priority);
    assert_eq!(encoded.correlation_id(), properties.correlation_id);
    assert_eq!(encoded.reply_to(), properties.reply_to);
    assert_eq!(encoded.expiration(), properties.expiration);
    assert_eq!(encoded.message_id(), properties.message_id);
    assert_eq!(encoded.timestamp(), properties.timestamp);
    assert_eq!(encoded.kind(), properties.kind);
    assert_eq!(encoded.user_id(), properties.user_id);
    assert_eq!(encoded.app_id(), properties.app_id);
    assert_eq!(encoded.reserved(), properties.reserved);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    encoded.encode(&mut ours);
    properties.encode(&mut theirs);
    assert_eq!(ours, theirs);
    assert_eq!(encoded.encoded_len(), properties.encoded_len());
    assert_eq!(encoded.to_string(), properties.to_string());
    assert_eq!(&EncodedBasicProperties::from(properties), encoded);
}

/// The eager decode the generator wrote before properties were kept encoded:
/// every present property built, in flag order. The reference for the errors
/// of [`EncodedBasicProperties::decode`].
fn eager_decode<'a>(src: &Bytes, i: &'a [u8]) -> value::WireResult<'a, BasicProperties> {
    let flags_at = i.as_ptr() as usize;
    let (mut i, flags) = value::short(i).map_err(value::in_field("basic property flags"))?;
    if flags & !BasicProperties::DEFINED_FLAGS != 0 {
        return Err(nom::Err::Error(value::WireError {
            at: flags_at,
            kind: crate::error::DecodeErrorKind::InvalidPropertyFlags { flags },
            context: "basic property flags",
        }));
    }
    let mut p = BasicProperties::default();
    macro_rules! property {
        ($bit:expr, $field:ident, $name:literal, $parse:expr) => {
            if flags & (1 << $bit) != 0 {
                let (rest, v) =
                    $parse(i).map_err(value::in_field(concat!("basic property ", $name)))?;
                p.$field = Some(v);
                i = rest;
            }
        };
    }
    let shortstr = |i| value::shortstr(src, i);
    property!(15, content_type, "content-type", shortstr);
    property!(14, content_encoding, "content-encoding", shortstr);
    property!(13, headers, "headers", |i| value::table(src, i));
    property!(12, delivery_mode, "delivery-mode", value::octet);
    property!(11, priority, "priority", value::octet);
    property!(10, correlation_id, "correlation-id", shortstr);
    property!(9, reply_to, "reply-to", shortstr);
    property!(8, expiration, "expiration", shortstr);
    property!(7, message_id, "message-id", shortstr);
    property!(6, timestamp, "timestamp", value::longlong);
    property!(5, kind, "type", shortstr);
    property!(4, user_id, "user-id", shortstr);
    property!(3, app_id, "app-id", shortstr);
    property!(2, reserved, "reserved", shortstr);
    Ok((i, p))
}

#[test]
fn received_properties_read_one_at_a_time() {
    let headers = FieldTable::new().with("x-n", 7i32).unwrap();
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from_static("text/plain"))
        .with_headers(headers.clone())
        .with_timestamp(1_700_000_000)
        .with_kind(ShortString::try_from("a type name longer than 23 bytes").unwrap())
        .with_app_id(ShortString::from_static("app"));
    let encoded = EncodedBasicProperties::from(&properties);
    assert_same_properties(&encoded, &properties);
    assert_eq!(encoded.priority(), None);
    assert_eq!(encoded.kind().unwrap(), "a type name longer than 23 bytes");
    // Tables and long short strings are views of the encoding.
    let raw = encoded.raw().as_ptr_range();
    assert!(raw.contains(&encoded.headers().unwrap().encoded().as_ptr()));
    assert!(raw.contains(&encoded.kind().unwrap().as_bytes().as_ptr()));
    // Debug lists the present properties only, decoded.
    assert_eq!(
        format!("{encoded:?}"),
        "EncodedBasicProperties { content_type: \"text/plain\", headers: {\"x-n\": I32(7)}, \
         timestamp: 1700000000, kind: \"a type name longer than 23 bytes\", app_id: \"app\" }"
    );
    assert_eq!(
        format!("{:?}", EncodedBasicProperties::default()),
        "EncodedBasicProperties"
    );
    assert!(EncodedBasicProperties::default().to_string().is_empty());
}

#[test]
fn received_properties_keep_no_padding() {
    // Flags: content-type. Then the string and 3 bytes of padding.
    let src = Bytes::from_static(b"\x80\x00\x02okPAD");
    let (rest, encoded) = EncodedBasicProperties::decode(&src, &src).unwrap();
    assert_eq!(rest, b"PAD");
    assert_eq!(&encoded.raw()[..], b"\x02ok");
    assert_eq!(encoded.encoded_len(), 5);
    assert_eq!(encoded.content_type().unwrap(), "ok");
}

/// Re-encodes a decoded table entry by entry.
fn reencode(table: &FieldTable) -> Bytes {
    let mut out = BytesMut::new();
    for (key, value) in table.iter() {
        value::put_shortstr(&mut out, &key);
        value.encode(&mut out);
    }
    out.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn methods_round_trip(data in proptest::collection::vec(any::<u8>(), 0..2048), channel in any::<u16>()) {
        if let Some(method) = method_from(&data) {
            assert_frame_round_trips(&Frame::Method { channel, method });
        }
    }

    #[test]
    fn a_message_encodes_as_its_frames_one_by_one(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        body_len in 0usize..1200,
        frame_max in prop_oneof![Just(4096u32), 9u32..600],
        form in 0u8..3,
    ) {
        // Split or not, from owned properties, encoded ones, or a publish's
        // (inline or not): the same bytes as frame by frame.
        let mut u = Unstructured::new(&data);
        let (Ok(publish), Ok(properties)) =
            (BasicPublish::arbitrary(&mut u), BasicProperties::arbitrary(&mut u))
        else {
            return Ok(());
        };
        let method = Method::BasicPublish(publish);
        let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
        let mut together = BytesMut::new();
        match form {
            0 => encode_message(3, &method, &properties, &body, frame_max, &mut together),
            1 => {
                let properties = EncodedBasicProperties::from(&properties);
                encode_message(3, &method, &properties, &body, frame_max, &mut together);
            }
            _ => {
                let properties = crate::session::PublishProperties::new(&properties);
                encode_message(3, &method, &properties, &body, frame_max, &mut together);
            }
        }
        let mut apart = BytesMut::new();
        Frame::Method { channel: 3, method: method.clone() }.encode(&mut apart);
        let header = ContentHeader {
            class_id: CLASS_BASIC,
            body_size: body_len as u64,
            properties: EncodedBasicProperties::from(&properties),
        };
        Frame::Header { channel: 3, header }.encode(&mut apart);
        for piece in body.chunks(frame_max as usize - FRAME_OVERHEAD) {
            let payload = Bytes::copy_from_slice(piece);
            Frame::Body { channel: 3, payload }.encode(&mut apart);
        }
        prop_assert_eq!(together, apart);
    }

    #[test]
    fn basic_properties_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), body_size in any::<u64>()) {
        if let Ok(properties) = BasicProperties::arbitrary(&mut Unstructured::new(&data)) {
            let encoded = EncodedBasicProperties::from(&properties);
            assert_same_properties(&encoded, &properties);
            let header = ContentHeader { class_id: CLASS_BASIC, body_size, properties: encoded };
            let frame = Frame::Header { channel: 1, header };
            assert_frame_round_trips(&frame);
            // What the decoder gives back reads as the properties encoded.
            let mut wire = BytesMut::new();
            frame.encode(&mut wire);
            let Ok(Decoded::Frame(Frame::Header { header, .. })) =
                FrameDecoder::with_frame_max(u32::MAX).decode(&mut wire)
            else {
                panic!("not a header frame");
            };
            assert_same_properties(&header.properties, &properties);
        }
    }

    #[test]
    fn lazy_property_checks_fail_as_an_eager_decode_does(
        data in proptest::collection::vec(any::<u8>(), 0..1024),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        xor in any::<u8>(),
        mode in 0u8..4,
    ) {
        // Valid encodings, cut short and/or with one byte changed: the
        // lazy check must accept exactly what a full decode accepts, and
        // fail with the same error at the same place.
        let Ok(properties) = BasicProperties::arbitrary(&mut Unstructured::new(&data)) else {
            return Ok(());
        };
        let mut wire = Vec::new();
        properties.encode(&mut wire);
        wire.extend_from_slice(b"pad");
        if mode & 1 != 0 {
            let at = flip.index(wire.len());
            wire[at] ^= xor;
        }
        if mode & 2 != 0 {
            wire.truncate(cut.index(wire.len() + 1));
        }
        let src = Bytes::from(wire);
        let lazy = EncodedBasicProperties::decode(&src, &src);
        let eager = eager_decode(&src, &src);
        match (lazy, eager) {
            (Ok((rest, lazy)), Ok((eager_rest, eager))) => {
                prop_assert_eq!(rest.len(), eager_rest.len());
                assert_same_properties(&lazy, &eager);
                prop_assert_eq!(lazy.encoded_len(), src.len() - rest.len());
            }
            (Err(lazy), Err(eager)) => prop_assert_eq!(lazy, eager),
            (lazy, eager) => panic!("lazy {lazy:?}, eager {eager:?}"),
        }
    }

    #[test]
    fn field_tables_round_trip_bit_for_bit(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let table = FieldTable::arbitrary(&mut Unstructured::new(&data)).unwrap();
        // Generated tables are canonical, so decoding and re-encoding every
        // entry reproduces the bytes exactly...
        prop_assert_eq!(&reencode(&table), table.encoded());
        // ...and the encoding is accepted as a table from the wire.
        prop_assert_eq!(FieldTable::from_encoded(table.encoded().clone()).unwrap(), table);
    }

    #[test]
    fn field_values_round_trip_bit_for_bit(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let value = FieldValue::arbitrary(&mut Unstructured::new(&data)).unwrap();
        let mut wire = BytesMut::new();
        value.encode(&mut wire);
        prop_assert_eq!(wire.len(), value.encoded_len());
        let array = FieldArray::from_encoded(wire.clone().freeze()).unwrap();
        let decoded: Vec<FieldValue> = array.iter().collect();
        prop_assert_eq!(decoded.len(), 1);
        // Compare encodings: floats may be NaN, which is never `==` itself.
        let mut again = BytesMut::new();
        decoded[0].encode(&mut again);
        prop_assert_eq!(again, wire);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_table_parser(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(table) = FieldTable::from_encoded(Bytes::from(data)) {
            for (_, value) in table.iter() {
                let _ = value.encoded_len();
            }
        }
    }
}
