//! Content assembly: a basic.deliver, basic.return or basic.get-ok method,
//! its content header and its body frames, put back together into one
//! message. Also the message types handed to users, and the properties a
//! publish carries to the connection's thread.
//!
//! A body that arrived in one frame stays a zero-copy view of the read
//! buffer; a body split over several frames is joined once, into a buffer
//! sized from the content header.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{
    BasicDeliver, BasicGetOk, BasicProperties, BasicReturn, EncodeProperties,
    EncodedBasicProperties, ReplyCode, ShortString,
};

/// A message from a queue: pushed to a consumer (basic.deliver) or fetched
/// with basic.get.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The tag to acknowledge it with, unique on its channel.
    pub delivery_tag: u64,
    /// Whether it was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The exchange it was published to (empty for the default exchange).
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// The consumer it was delivered to (empty for basic.get).
    pub consumer_tag: ShortString,
    /// Its properties, as they arrived: read one with its getter
    /// (`properties.content_type()`), all with `properties.to_properties()`.
    pub properties: EncodedBasicProperties,
    /// Its body.
    pub body: Bytes,
}

/// A mandatory message the broker could not route, sent back (basic.return).
#[derive(Debug, Clone, PartialEq)]
pub struct ReturnedMessage {
    /// Why it came back, usually 312 NO_ROUTE.
    pub reply_code: u16,
    /// The broker's explanation.
    pub reply_text: ShortString,
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// Its properties, as they arrived: read one with its getter
    /// (`properties.content_type()`), all with `properties.to_properties()`.
    pub properties: EncodedBasicProperties,
    /// Its body.
    pub body: Bytes,
}

impl ReturnedMessage {
    /// The reply code as a known [`ReplyCode`], when it is one.
    pub fn reply(&self) -> Option<ReplyCode> {
        ReplyCode::from_code(self.reply_code)
    }
}

/// The method that opened a content sequence.
#[derive(Debug)]
pub(crate) enum ContentMethod {
    Deliver(BasicDeliver),
    Return(BasicReturn),
    GetOk(BasicGetOk),
}

/// A message whose content is complete.
#[derive(Debug)]
pub(crate) enum Assembled {
    Deliver(Delivery),
    Return(ReturnedMessage),
    GetOk {
        delivery: Delivery,
        message_count: u32,
    },
}

/// What went wrong in a content sequence; the connection must be closed
/// with the reply code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ContentError {
    pub(crate) code: ReplyCode,
    pub(crate) text: String,
}

#[derive(Debug)]
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// A message being put together from its frames.
#[derive(Debug)]
pub(crate) struct Assembly {
    method: ContentMethod,
    header: Option<(u64, EncodedBasicProperties)>,
    body: Body,
    received: u64,
}

/// Largest buffer reserved up front for a multi-frame body: a hostile
/// header announcing 16 EiB must not allocate more than the bytes that come.
const MAX_RESERVE: u64 = 16 << 20;

impl Assembly {
    pub(crate) fn new(method: ContentMethod) -> Self {
        Assembly {
            method,
            header: None,
            body: Body::Empty,
            received: 0,
        }
    }

    /// Takes the content header. `Ok(Some(_))` when the body is empty and
    /// the message is complete.
    pub(crate) fn header(
        &mut self,
        class_id: u16,
        body_size: u64,
        properties: EncodedBasicProperties,
    ) -> Result<(), ContentError> {
        if self.header.is_some() {
            return Err(unexpected("a second content header"));
        }
        if class_id != crate::protocol::CLASS_BASIC {
            // Spec 4.2.6.1: a class that differs from the method's is a frame error.
            return Err(ContentError {
                code: ReplyCode::FrameError,
                text: format!("content header of class {class_id} for a basic method"),
            });
        }
        self.header = Some((body_size, properties));
        Ok(())
    }

    /// Takes a body frame.
    pub(crate) fn body(&mut self, payload: Bytes) -> Result<(), ContentError> {
        let Some((size, _)) = &self.header else {
            return Err(unexpected("a body frame before its content header"));
        };
        let size = *size;
        self.received += payload.len() as u64;
        if self.received > size {
            return Err(ContentError {
                code: ReplyCode::FrameError,
                text: format!(
                    "body frames carry {} bytes, more than the {size} the content header announced",
                    self.received
                ),
            });
        }
        self.body = match std::mem::replace(&mut self.body, Body::Empty) {
            Body::Empty if self.received == size => Body::One(payload),
            Body::Empty => {
                let mut joined = BytesMut::with_capacity(size.min(MAX_RESERVE) as usize);
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
            Body::Many(mut joined) => {
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
            Body::One(_) => unreachable!("a complete body takes no more frames"),
        };
        Ok(())
    }

    /// Whether header and body are all in.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(&self.header, Some((size, _)) if self.received == *size)
    }

    /// The finished message. Call only when [`Assembly::is_complete`].
    #[inline(always)]
    pub(crate) fn finish(self) -> Assembled {
        let (_, properties) = self.header.expect("finish() after the header");
        let body = match self.body {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        };
        match self.method {
            ContentMethod::Deliver(m) => Assembled::Deliver(Delivery {
                delivery_tag: m.delivery_tag,
                redelivered: m.redelivered,
                exchange: m.exchange,
                routing_key: m.routing_key,
                consumer_tag: m.consumer_tag,
                properties,
                body,
            }),
            ContentMethod::Return(m) => Assembled::Return(ReturnedMessage {
                reply_code: m.reply_code,
                reply_text: m.reply_text,
                exchange: m.exchange,
                routing_key: m.routing_key,
                properties,
                body,
            }),
            ContentMethod::GetOk(m) => Assembled::GetOk {
                delivery: Delivery {
                    delivery_tag: m.delivery_tag,
                    redelivered: m.redelivered,
                    exchange: m.exchange,
                    routing_key: m.routing_key,
                    consumer_tag: ShortString::empty(),
                    properties,
                    body,
                },
                message_count: m.message_count,
            },
        }
    }
}

fn unexpected(what: &str) -> ContentError {
    ContentError {
        code: ReplyCode::UnexpectedFrame,
        text: format!("unexpected {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver() -> Assembly {
        Assembly::new(ContentMethod::Deliver(BasicDeliver {
            delivery_tag: 3,
            ..BasicDeliver::default()
        }))
    }

    #[test]
    fn a_single_frame_body_is_the_frames_own_bytes() {
        let frame = Bytes::from_static(b"hello");
        let mut a = deliver();
        a.header(60, 5, EncodedBasicProperties::default()).unwrap();
        a.body(frame.clone()).unwrap();
        let Assembled::Deliver(d) = a.finish() else {
            panic!()
        };
        assert_eq!(d.body.as_ptr(), frame.as_ptr(), "zero copy");
        assert_eq!(d.delivery_tag, 3);
    }

    #[test]
    fn a_split_body_is_joined() {
        let mut a = deliver();
        a.header(60, 6, EncodedBasicProperties::default()).unwrap();
        a.body(Bytes::from_static(b"abc")).unwrap();
        assert!(!a.is_complete());
        a.body(Bytes::from_static(b"def")).unwrap();
        assert!(a.is_complete());
        let Assembled::Deliver(d) = a.finish() else {
            panic!()
        };
        assert_eq!(&d.body[..], b"abcdef");
    }

    #[test]
    fn an_empty_body_completes_with_the_header() {
        let mut a = deliver();
        a.header(60, 0, EncodedBasicProperties::default()).unwrap();
        assert!(a.is_complete());
    }

    #[test]
    fn faults_are_typed() {
        let mut a = deliver();
        assert_eq!(
            a.body(Bytes::new()).unwrap_err().code,
            ReplyCode::UnexpectedFrame
        );
        a.header(60, 2, EncodedBasicProperties::default()).unwrap();
        assert_eq!(
            a.header(60, 2, EncodedBasicProperties::default())
                .unwrap_err()
                .code,
            ReplyCode::UnexpectedFrame
        );
        assert_eq!(
            a.body(Bytes::from_static(b"abc")).unwrap_err().code,
            ReplyCode::FrameError
        );
        let mut b = deliver();
        assert_eq!(
            b.header(50, 2, EncodedBasicProperties::default())
                .unwrap_err()
                .code,
            ReplyCode::FrameError
        );
    }

    #[test]
    fn frames_and_deliveries_stay_small() {
        // Every received message is moved by value several times: out of the
        // decoder as a `Frame`, into the assembly, out as a `Delivery` through
        // the session's event queue and the reactor to the consumer. Each move
        // is a memcpy of the whole value, so its size is paid per message.
        // With the 14 properties decoded inline a `Frame` took 480 bytes and
        // a `Delivery` about 600, and memcpy was 41% of a consume run's
        // instructions; kept encoded (a flags word and a `Bytes` view) they
        // take 152 and 184 bytes on 64-bit targets.
        use std::mem::size_of;
        assert!(size_of::<EncodedBasicProperties>() <= 40);
        assert!(size_of::<crate::protocol::Frame>() < 200);
        assert!(size_of::<Delivery>() < 200);
        assert!(size_of::<ReturnedMessage>() < 200);
    }

    #[test]
    fn a_huge_announced_size_reserves_a_bounded_buffer() {
        let mut a = deliver();
        a.header(60, u64::MAX, EncodedBasicProperties::default())
            .unwrap();
        a.body(Bytes::from_static(b"x")).unwrap();
        match &a.body {
            Body::Many(b) => assert!(b.capacity() <= MAX_RESERVE as usize),
            _ => panic!(),
        }
    }
}

/// Bytes of encoded properties (flags word included) a publish holds
/// inline: enough for a delivery mode, a content type, a correlation id or
/// a short message id, which is what most publishes carry.
const INLINE_PROPERTIES: usize = 54;

/// A publish's properties, encoded on the application's thread: a small
/// value to move through the command queue (56 bytes, not the 456 of
/// `BasicProperties`), held inline when short, so that the common cases
/// cost no allocation; longer ones (a headers table, say) in a buffer.
#[derive(Debug, Clone)]
pub(crate) enum PublishProperties {
    Inline {
        len: u8,
        bytes: [u8; INLINE_PROPERTIES],
    },
    Encoded(EncodedBasicProperties),
}

impl PublishProperties {
    /// No property: the flags word alone, zero.
    const NONE: Self = PublishProperties::Inline {
        len: 2,
        bytes: [0; INLINE_PROPERTIES],
    };

    /// Encodes `properties`.
    pub(crate) fn new(properties: &BasicProperties) -> Self {
        if properties.flags() == 0 {
            return PublishProperties::NONE;
        }
        let len = properties.encoded_len();
        if len > INLINE_PROPERTIES {
            return PublishProperties::Encoded(EncodedBasicProperties::from(properties));
        }
        let mut bytes = [0; INLINE_PROPERTIES];
        properties.encode(&mut &mut bytes[..]);
        PublishProperties::Inline {
            len: len as u8,
            bytes,
        }
    }
}

impl Default for PublishProperties {
    /// No property.
    fn default() -> Self {
        PublishProperties::NONE
    }
}

impl EncodeProperties for PublishProperties {
    fn encoded_len(&self) -> usize {
        match self {
            PublishProperties::Inline { len, .. } => usize::from(*len),
            PublishProperties::Encoded(encoded) => encoded.encoded_len(),
        }
    }

    fn encode_into(&self, buf: &mut impl BufMut) {
        match self {
            PublishProperties::Inline { len, bytes } => buf.put_slice(&bytes[..usize::from(*len)]),
            PublishProperties::Encoded(encoded) => encoded.encode(buf),
        }
    }
}
