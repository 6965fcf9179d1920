//! Frames: the protocol header, the frame layout (type, channel, size,
//! payload, frame-end) and the incremental decoder that cuts frames out of a
//! read buffer.
//!
//! This module owns framing only. It never interprets a frame in the light
//! of connection state (a heartbeat on channel 5 decodes fine here; the
//! session rejects it).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, DecodeErrorKind};
use crate::protocol::generated::{
    BasicProperties, EncodedBasicProperties, Method, CLASS_BASIC, FRAME_BODY, FRAME_END,
    FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE,
};
use crate::protocol::value::{self, WireError};

/// The eight bytes a client sends first: `AMQP` then protocol 0, version 0-9-1.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Bytes in front of a frame's payload: type (1), channel (2), size (4).
pub const FRAME_HEADER_SIZE: usize = 7;

/// Bytes a frame adds to its payload: the header and the frame-end octet.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;

/// One AMQP frame. Strings, tables and body payloads in it are views of the
/// buffer it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number (0 for the connection).
        channel: u16,
        /// The method and its arguments.
        method: Method,
    },
    /// A content header frame, announcing a message's size and properties.
    Header {
        /// Channel number.
        channel: u16,
        /// Class, body size and properties.
        header: ContentHeader,
    },
    /// A content body frame: one piece of a message body.
    Body {
        /// Channel number.
        channel: u16,
        /// The bytes of this piece.
        payload: Bytes,
    },
    /// A heartbeat frame (valid only on channel 0; the session checks).
    Heartbeat {
        /// Channel number.
        channel: u16,
    },
}

/// The payload of a content header frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// Class of the method the content belongs to (60, basic, in 0-9-1).
    pub class_id: u16,
    /// Total size of the body that follows, over zero or more body frames.
    pub body_size: u64,
    /// The message properties, as received: checked, decoded on demand.
    pub properties: EncodedBasicProperties,
}

impl ContentHeader {
    /// Payload bytes: class (2), weight (2), body size (8), properties.
    fn encoded_len(&self) -> usize {
        12 + self.properties.encoded_len()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u16(self.class_id);
        buf.put_u16(0); // weight, unused
        buf.put_u64(self.body_size);
        self.properties.encode(buf);
    }
}

impl Frame {
    /// The channel the frame travels on.
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }

    /// The frame type octet.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Method { .. } => FRAME_METHOD,
            Frame::Header { .. } => FRAME_HEADER,
            Frame::Body { .. } => FRAME_BODY,
            Frame::Heartbeat { .. } => FRAME_HEARTBEAT,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Method { method, .. } => method.encoded_len(),
            Frame::Header { header, .. } => header.encoded_len(),
            Frame::Body { payload, .. } => payload.len(),
            Frame::Heartbeat { .. } => 0,
        }
    }

    /// Total bytes the frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        FRAME_OVERHEAD + self.payload_len()
    }

    /// Appends the frame to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.frame_type());
        buf.put_u16(self.channel());
        buf.put_u32(self.payload_len() as u32);
        match self {
            Frame::Method { method, .. } => method.encode(buf),
            Frame::Header { header, .. } => header.encode(buf),
            Frame::Body { payload, .. } => buf.put_slice(payload),
            Frame::Heartbeat { .. } => {}
        }
        buf.put_u8(FRAME_END);
    }
}

/// Content properties as [`encode_message`] writes them into a content
/// header: owned [`BasicProperties`], or properties encoded already
/// ([`EncodedBasicProperties`], or the connection's own form of a publish's
/// properties, encoded on the application's thread).
pub trait EncodeProperties {
    /// Bytes the flags word and the present properties take.
    fn encoded_len(&self) -> usize;
    /// Writes the flags word and the present properties.
    fn encode_into(&self, buf: &mut impl BufMut);
}

impl EncodeProperties for BasicProperties {
    fn encoded_len(&self) -> usize {
        BasicProperties::encoded_len(self)
    }

    fn encode_into(&self, buf: &mut impl BufMut) {
        self.encode(buf);
    }
}

impl EncodeProperties for EncodedBasicProperties {
    fn encoded_len(&self) -> usize {
        EncodedBasicProperties::encoded_len(self)
    }

    fn encode_into(&self, buf: &mut impl BufMut) {
        self.encode(buf);
    }
}

/// Appends a whole message to `buf` in one pass: its method frame, its content
/// header and as many body frames as `frame_max` requires (none for an empty
/// body). This is the publish path: no intermediate frame values are built.
pub fn encode_message(
    channel: u16,
    method: &Method,
    properties: &impl EncodeProperties,
    body: &[u8],
    frame_max: u32,
    buf: &mut impl BufMut,
) {
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    buf.put_u32(method.encoded_len() as u32);
    method.encode(buf);
    buf.put_u8(FRAME_END);

    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    buf.put_u32((12 + properties.encoded_len()) as u32);
    buf.put_u16(method.class_id());
    buf.put_u16(0);
    buf.put_u64(body.len() as u64);
    properties.encode_into(buf);
    buf.put_u8(FRAME_END);

    let max_payload = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(max_payload) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(piece.len() as u32);
        buf.put_slice(piece);
        buf.put_u8(FRAME_END);
    }
}

/// What [`FrameDecoder::decode`] found at the head of the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A complete frame, removed from the buffer.
    Frame(Frame),
    /// The buffer holds only part of a frame; at least `needed` more bytes
    /// must arrive before it is complete. Nothing was consumed.
    Incomplete {
        /// Bytes still missing (exact once the 7-byte frame header is in).
        needed: usize,
    },
}

/// Cuts frames out of a read buffer, one at a time, without copying.
///
/// The decoder checks each frame's announced size against `frame_max` as
/// soon as the 7-byte header is in, so an oversized frame is refused before
/// its payload is buffered. A complete frame is split off the buffer and
/// frozen; its strings, tables and body are views of that memory.
///
/// After an error, the stream is not resynchronised: the connection must be
/// closed with [`DecodeError::reply_code`].
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    frame_max: u32,
    offset: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with `frame_max` at the spec's pre-tune limit of 4096 bytes.
    pub fn new() -> Self {
        Self::with_frame_max(FRAME_MIN_SIZE)
    }

    /// A decoder that accepts frames of up to `frame_max` bytes, header and
    /// frame-end included.
    pub fn with_frame_max(frame_max: u32) -> Self {
        FrameDecoder {
            frame_max,
            offset: 0,
        }
    }

    /// The largest frame accepted, header and frame-end included.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Changes the limit, as after connection.tune.
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// Stream offset of the next byte to decode (bytes consumed so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Decodes the frame at the head of `buf`, removing it from the buffer
    /// when complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let head = match self.check_header(buf)? {
            Ok(head) => head,
            Err(needed) => return Ok(Decoded::Incomplete { needed }),
        };
        let total = FRAME_OVERHEAD + head.size as usize;
        if buf.len() < total {
            return Ok(Decoded::Incomplete {
                needed: total - buf.len(),
            });
        }
        if buf[total - 1] != FRAME_END {
            return Err(self.error(
                (total - 1) as u64,
                "frame end",
                DecodeErrorKind::BadFrameEnd {
                    found: buf[total - 1],
                },
            ));
        }
        let mut frame = buf.split_to(total).freeze();
        frame.truncate(total - 1);
        frame.advance(FRAME_HEADER_SIZE);
        let start = self.offset + FRAME_HEADER_SIZE as u64;
        let result = decode_payload(head, frame);
        match result {
            Ok(frame) => {
                self.offset += total as u64;
                Ok(Decoded::Frame(frame))
            }
            Err((err, payload_start)) => Err(DecodeError {
                offset: start + err.at.saturating_sub(payload_start) as u64,
                kind: err.kind,
                context: if err.context.is_empty() {
                    "frame payload"
                } else {
                    err.context
                },
            }),
        }
    }

    /// Reads and checks the 7-byte header; `Err(needed)` when it is not all in.
    fn check_header(&self, buf: &[u8]) -> Result<Result<FrameHead, usize>, DecodeError> {
        if let Some(&frame_type) = buf.first() {
            if !matches!(
                frame_type,
                FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
            ) {
                // A peer refusing our version answers with its own protocol
                // header: wait for all 8 bytes of it to say so.
                let prefix = buf.len().min(4);
                if buf.len() < PROTOCOL_HEADER.len() && buf[..prefix] == PROTOCOL_HEADER[..prefix] {
                    return Ok(Err(PROTOCOL_HEADER.len() - buf.len()));
                }
                return Err(self.bad_frame_type(buf));
            }
        }
        if buf.len() < FRAME_HEADER_SIZE {
            return Ok(Err(FRAME_OVERHEAD - buf.len()));
        }
        let head = FrameHead {
            frame_type: buf[0],
            channel: u16::from_be_bytes([buf[1], buf[2]]),
            size: u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]),
        };
        let frame_size = head.size as u64 + FRAME_OVERHEAD as u64;
        if frame_size > u64::from(self.frame_max) {
            return Err(self.error(
                3,
                "frame header",
                DecodeErrorKind::FrameTooLarge {
                    frame_size,
                    frame_max: self.frame_max,
                },
            ));
        }
        if head.frame_type == FRAME_HEARTBEAT && head.size != 0 {
            return Err(self.error(
                3,
                "frame header",
                DecodeErrorKind::HeartbeatWithPayload { size: head.size },
            ));
        }
        Ok(Ok(head))
    }

    fn bad_frame_type(&self, buf: &[u8]) -> DecodeError {
        if buf.len() >= 8 && buf[..4] == PROTOCOL_HEADER[..4] {
            let mut header = [0; 8];
            header.copy_from_slice(&buf[..8]);
            return self.error(
                0,
                "frame header",
                DecodeErrorKind::ProtocolHeader { header },
            );
        }
        self.error(
            0,
            "frame header",
            DecodeErrorKind::UnknownFrameType { frame_type: buf[0] },
        )
    }

    fn error(&self, at: u64, context: &'static str, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.offset + at,
            kind,
            context,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    frame_type: u8,
    channel: u16,
    size: u32,
}

/// Parses a frame's payload (`payload` is exactly the payload, a view of the
/// read buffer). On failure returns the error and the payload's address so
/// the caller can turn the error's address into a stream offset.
fn decode_payload(head: FrameHead, payload: Bytes) -> Result<Frame, (WireError, usize)> {
    let channel = head.channel;
    let base = payload.as_ptr() as usize;
    let wire = |err: nom::Err<WireError>| match err {
        nom::Err::Error(e) | nom::Err::Failure(e) => (e, base),
        nom::Err::Incomplete(_) => (
            WireError {
                at: base + payload.len(),
                kind: DecodeErrorKind::Truncated,
                context: "",
            },
            base,
        ),
    };
    match head.frame_type {
        FRAME_METHOD => {
            let (rest, method) = Method::decode(&payload, &payload).map_err(wire)?;
            if !rest.is_empty() {
                return Err((
                    WireError {
                        at: rest.as_ptr() as usize,
                        kind: DecodeErrorKind::TrailingBytes { count: rest.len() },
                        context: method.name(),
                    },
                    base,
                ));
            }
            Ok(Frame::Method { channel, method })
        }
        FRAME_HEADER => {
            let header = decode_content_header(&payload, &payload).map_err(wire)?;
            Ok(Frame::Header { channel, header })
        }
        FRAME_BODY => Ok(Frame::Body { channel, payload }),
        _ => Ok(Frame::Heartbeat { channel }),
    }
}

/// Parses a content header payload. Bytes after the properties (padding some
/// peers add) are ignored: the frame size bounds the header.
fn decode_content_header(src: &Bytes, i: &[u8]) -> Result<ContentHeader, nom::Err<WireError>> {
    let ctx = value::in_field("content header");
    let class_at = i.as_ptr() as usize;
    let (i, class_id) = value::short(i).map_err(&ctx)?;
    if class_id != CLASS_BASIC {
        return Err(nom::Err::Error(WireError {
            at: class_at,
            kind: DecodeErrorKind::UnknownContentClass { class_id },
            context: "content header",
        }));
    }
    let (i, _weight) = value::short(i).map_err(&ctx)?;
    let (i, body_size) = value::longlong(i).map_err(&ctx)?;
    let (_padding, properties) = EncodedBasicProperties::decode(src, i)?;
    Ok(ContentHeader {
        class_id,
        body_size,
        properties,
    })
}
