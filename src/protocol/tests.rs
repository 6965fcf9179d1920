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
    fn basic_properties_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), body_size in any::<u64>()) {
        if let Ok(properties) = BasicProperties::arbitrary(&mut Unstructured::new(&data)) {
            let header = ContentHeader { class_id: CLASS_BASIC, body_size, properties };
            assert_frame_round_trips(&Frame::Header { channel: 1, header });
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
