//! Structured round trip: arbitrary frames and whole messages are encoded
//! into one stream, which the decoder must give back exactly. Any decode
//! error on the encoders' output is a bug.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::protocol::{
    encode_message, BasicDeliver, BasicGetOk, BasicProperties, BasicPublish, BasicReturn,
    ContentHeader, Decoded, EncodedBasicProperties, Frame, FrameDecoder, Method, FRAME_OVERHEAD,
};

#[derive(Arbitrary, Debug)]
enum Item {
    Method {
        channel: u16,
        method: Method,
    },
    Header {
        channel: u16,
        body_size: u64,
        properties: BasicProperties,
    },
    Body {
        channel: u16,
        payload: Vec<u8>,
    },
    Heartbeat {
        channel: u16,
    },
    Message {
        channel: u16,
        method: ContentMethod,
        properties: BasicProperties,
        body: Vec<u8>,
        /// Any value: below 9 the encoder still cuts 1-byte pieces.
        frame_max: u32,
    },
}

/// The methods that carry content (an arbitrary `Method` would rarely be one).
#[derive(Arbitrary, Debug)]
enum ContentMethod {
    Publish(BasicPublish),
    Return(BasicReturn),
    Deliver(BasicDeliver),
    GetOk(BasicGetOk),
}

/// What the decoder must give back for one item.
#[allow(clippy::large_enum_variant)] // as `Frame` itself
enum Expect {
    Frame(Frame),
    Message {
        method: Frame,
        header: Frame,
        body: Vec<u8>,
        max_payload: usize,
    },
}

/// Encodes owned properties as received ones, which must read back as the
/// same properties, one by one and all at once, and encode the same bytes.
fn check_encoded(properties: &BasicProperties) -> EncodedBasicProperties {
    let encoded = EncodedBasicProperties::from(properties);
    assert_eq!(&encoded.to_properties(), properties);
    warren::fuzzing::check_properties(&encoded);
    encoded
}

fuzz_target!(|items: Vec<Item>| {
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    let mut frame_max = 4096u32;
    for item in items {
        let frame = match item {
            Item::Method { channel, method } => Frame::Method { channel, method },
            Item::Header {
                channel,
                body_size,
                properties,
            } => Frame::Header {
                channel,
                header: ContentHeader {
                    class_id: 60,
                    body_size,
                    properties: check_encoded(&properties),
                },
            },
            Item::Body { channel, payload } => Frame::Body {
                channel,
                payload: payload.into(),
            },
            Item::Heartbeat { channel } => Frame::Heartbeat { channel },
            Item::Message {
                channel,
                method,
                properties,
                body,
                frame_max: fm,
            } => {
                let method = match method {
                    ContentMethod::Publish(m) => Method::BasicPublish(m),
                    ContentMethod::Return(m) => Method::BasicReturn(m),
                    ContentMethod::Deliver(m) => Method::BasicDeliver(m),
                    ContentMethod::GetOk(m) => Method::BasicGetOk(m),
                };
                assert!(method.has_content());
                let start = wire.len();
                encode_message(channel, &method, &properties, &body, fm, &mut wire);
                let method = Frame::Method { channel, method };
                let header = Frame::Header {
                    channel,
                    header: ContentHeader {
                        class_id: 60,
                        body_size: body.len() as u64,
                        properties: check_encoded(&properties),
                    },
                };
                // The method and header frames are laid out as Frame::encode
                // lays them out.
                let mut head = BytesMut::new();
                method.encode(&mut head);
                header.encode(&mut head);
                assert_eq!(wire[start..start + head.len()], head[..]);
                let max_payload = (fm as usize).saturating_sub(FRAME_OVERHEAD).max(1);
                frame_max = frame_max.max(fm).max(method.encoded_len() as u32);
                frame_max = frame_max.max(header.encoded_len() as u32);
                expected.push(Expect::Message {
                    method,
                    header,
                    body,
                    max_payload,
                });
                continue;
            }
        };
        let start = wire.len();
        frame.encode(&mut wire);
        assert_eq!(
            wire.len() - start,
            frame.encoded_len(),
            "encoded_len of {frame:?}"
        );
        frame_max = frame_max.max(frame.encoded_len() as u32);
        expected.push(Expect::Frame(frame));
    }

    let total = wire.len() as u64;
    let mut decoder = FrameDecoder::with_frame_max(frame_max);
    let mut next = || match decoder.decode(&mut wire) {
        Ok(Decoded::Frame(frame)) => frame,
        other => panic!("decoding encoder output: {other:?}"),
    };
    for expect in expected {
        match expect {
            Expect::Frame(frame) => assert_eq!(next(), frame),
            Expect::Message {
                method,
                header,
                body,
                max_payload,
            } => {
                assert_eq!(next(), method);
                assert_eq!(next(), header);
                let mut got = Vec::new();
                let mut pieces = 0;
                while got.len() < body.len() {
                    let Frame::Body { channel, payload } = next() else {
                        panic!("expected a body frame")
                    };
                    assert_eq!(channel, method.channel());
                    assert!(!payload.is_empty() && payload.len() <= max_payload);
                    got.extend_from_slice(&payload);
                    pieces += 1;
                }
                assert_eq!(got, body);
                assert_eq!(
                    pieces,
                    body.len().div_ceil(max_payload),
                    "more pieces than needed"
                );
            }
        }
    }
    assert!(matches!(
        decoder.decode(&mut wire),
        Ok(Decoded::Incomplete { .. })
    ));
    assert!(wire.is_empty());
    assert_eq!(decoder.offset(), total);
});
