//! Golden byte vectors, worked out by hand from the 0-9-1 spec (section 4.2
//! framing, 1.x method definitions): each encodes to exactly these bytes and
//! decodes back to the same value.

mod support;

use bytes::{Bytes, BytesMut};
use support::{decode_one, encode, hex};
use warren::protocol::*;

fn check(frame: Frame, golden: &str) {
    let golden = hex(golden);
    assert_eq!(encode(&frame), golden, "encoding of {frame:?}");
    assert_eq!(frame.encoded_len(), golden.len());
    assert_eq!(decode_one(&golden), frame, "decoding of the golden bytes");
}

#[test]
fn connection_start_ok_with_a_client_properties_table() {
    let client_properties = FieldTable::new()
        .with("product", LongString::from("warren"))
        .unwrap();
    let frame = Frame::Method {
        channel: 0,
        method: Method::ConnectionStartOk(ConnectionStartOk {
            client_properties,
            mechanism: ShortString::from_static("PLAIN"),
            response: LongString::from("\0guest\0guest"),
            locale: ShortString::from_static("en_US"),
        }),
    };
    check(
        frame,
        "01 0000 00000037
         000a 000b
         00000013 07 70726f64756374 53 00000006 77617272656e
         05 504c41494e
         0000000c 00 6775657374 00 6775657374
         05 656e5f5553
         ce",
    );
}

#[test]
fn connection_tune_ok() {
    let frame = Frame::Method {
        channel: 0,
        method: ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }
        .into(),
    };
    check(frame, "01 0000 0000000c 000a 001f 07ff 00020000 003c ce");
}

#[test]
fn queue_declare_packs_its_bits_into_one_octet() {
    let frame = Frame::Method {
        channel: 1,
        method: QueueDeclare {
            queue: ShortString::from_static("q1"),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }
        .into(),
    };
    // reserved-1 short, queue, bits (durable = bit 1), empty table.
    check(
        frame,
        "01 0001 0000000e 0032 000a 0000 02 7131 02 00000000 ce",
    );
}

#[test]
fn basic_publish_then_content_header_then_body() {
    let publish = Method::BasicPublish(BasicPublish {
        exchange: ShortString::empty(),
        routing_key: ShortString::from_static("q1"),
        mandatory: true,
        immediate: false,
    });
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from_static("text/plain"))
        .with_delivery_mode(2);
    let golden = hex("01 0001 0000000b 003c 0028 0000 00 02 7131 01 ce
         02 0001 0000001a 003c 0000 0000000000000005 9000 0a 746578742f706c61696e 02 ce
         03 0001 00000005 68656c6c6f ce");
    let mut wire = BytesMut::new();
    encode_message(1, &publish, &properties, b"hello", 131_072, &mut wire);
    assert_eq!(wire.to_vec(), golden);

    let (frames, rest) = support::decode_all(&golden, 131_072);
    assert_eq!(rest, Ok(0));
    assert_eq!(
        frames,
        vec![
            Frame::Method {
                channel: 1,
                method: publish
            },
            Frame::Header {
                channel: 1,
                header: ContentHeader {
                    class_id: 60,
                    body_size: 5,
                    properties: (&properties).into()
                }
            },
            Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"hello")
            },
        ]
    );
    // The received properties read back as what was published.
    let Frame::Header { header, .. } = &frames[1] else {
        unreachable!()
    };
    assert_eq!(header.properties.to_properties(), properties);
    assert_eq!(header.properties.content_type().unwrap(), "text/plain");
    assert_eq!(header.properties.delivery_mode(), Some(2));
    assert_eq!(header.properties.flags(), 0x9000);
    assert_eq!(&header.properties.raw()[..], &golden[40..52]);
}

#[test]
fn basic_deliver() {
    let frame = Frame::Method {
        channel: 1,
        method: BasicDeliver {
            consumer_tag: ShortString::from_static("ctag"),
            delivery_tag: 1,
            redelivered: false,
            exchange: ShortString::empty(),
            routing_key: ShortString::from_static("q1"),
        }
        .into(),
    };
    check(
        frame,
        "01 0001 00000016 003c 003c 04 63746167 0000000000000001 00 00 02 7131 ce",
    );
}

#[test]
fn basic_ack_multiple() {
    let frame = Frame::Method {
        channel: 1,
        method: BasicAck {
            delivery_tag: 42,
            multiple: true,
        }
        .into(),
    };
    check(frame, "01 0001 0000000d 003c 0050 000000000000002a 01 ce");
}

#[test]
fn heartbeat() {
    check(Frame::Heartbeat { channel: 0 }, "08 0000 00000000 ce");
}

#[test]
fn a_large_body_is_split_at_frame_max() {
    let publish = Method::BasicPublish(BasicPublish::default());
    let body = vec![7u8; 10_000];
    let mut wire = BytesMut::new();
    encode_message(
        1,
        &publish,
        &BasicProperties::default(),
        &body,
        4096,
        &mut wire,
    );
    let (frames, rest) = support::decode_all(&wire, 4096);
    assert_eq!(rest, Ok(0));
    let sizes: Vec<usize> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Body { payload, .. } => Some(payload.len()),
            _ => None,
        })
        .collect();
    // 4096 - 8 bytes of framing per body frame.
    assert_eq!(sizes, vec![4088, 4088, 1824]);
}
