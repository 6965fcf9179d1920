//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use bytes::BytesMut;
use warren::protocol::{Decoded, Frame, FrameDecoder};
use warren::DecodeError;

/// Bytes from hex text; spaces and newlines are ignored.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Decodes every complete frame in `bytes`; returns them with what stopped
/// the decoder: `Ok(needed)` for an incomplete tail (0 if none), or the error.
pub fn decode_all(bytes: &[u8], frame_max: u32) -> (Vec<Frame>, Result<usize, DecodeError>) {
    let mut decoder = FrameDecoder::with_frame_max(frame_max);
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Frame(frame)) => frames.push(frame),
            Ok(Decoded::Incomplete { needed }) => {
                let tail = if buf.is_empty() { 0 } else { needed };
                return (frames, Ok(tail));
            }
            Err(err) => return (frames, Err(err)),
        }
    }
}

/// Decodes `bytes` expecting exactly one frame and nothing else.
pub fn decode_one(bytes: &[u8]) -> Frame {
    let (mut frames, rest) = decode_all(bytes, 131_072);
    assert_eq!(rest, Ok(0), "stream did not end on a frame boundary");
    assert_eq!(frames.len(), 1, "expected one frame, got {frames:?}");
    frames.pop().unwrap()
}

/// Encodes one frame.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.to_vec()
}
pub mod broker;
pub mod fake_broker;
pub mod nonblocking;
pub mod relay;
