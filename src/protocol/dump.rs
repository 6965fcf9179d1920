//! A readable dump of a captured AMQP byte stream, one line per frame: what
//! `examples/decode.rs` and `warren decode` print. Pure formatting over the
//! codec; it never reads or writes anything but the writer it is given.

use std::fmt;
use std::io::{self, Write};

use bytes::{Buf, BytesMut};

use super::frame::{Decoded, Frame, FrameDecoder, PROTOCOL_HEADER};

/// One line per frame: `<channel> method <class.method> <field=value ...>`,
/// `<channel> header <class-id> body-size=<n> <property=value ...>`,
/// `<channel> body len=<n>` or `<channel> heartbeat`.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Method { channel, method } => write!(f, "{channel} method {method}"),
            Frame::Header { channel, header } => {
                write!(
                    f,
                    "{channel} header {} body-size={}",
                    header.class_id, header.body_size
                )?;
                let properties = header.properties.to_string();
                if !properties.is_empty() {
                    write!(f, " {properties}")?;
                }
                Ok(())
            }
            Frame::Body { channel, payload } => write!(f, "{channel} body len={}", payload.len()),
            Frame::Heartbeat { channel } => write!(f, "{channel} heartbeat"),
        }
    }
}

/// Writes every frame of `input` (which may start with the protocol header)
/// as a [`Frame`] line. Malformed or cut input ends with a line
/// `error at offset <n>: <reason>`, the offset counted from the start of
/// `input`; the result is then `Ok(false)`.
pub fn dump(mut input: BytesMut, frame_max: u32, out: &mut impl Write) -> io::Result<bool> {
    let mut base = 0;
    if input.starts_with(&PROTOCOL_HEADER) {
        writeln!(out, "protocol-header AMQP 0-9-1")?;
        input.advance(PROTOCOL_HEADER.len());
        base = PROTOCOL_HEADER.len() as u64;
    } else if !input.is_empty() && PROTOCOL_HEADER.starts_with(&input) {
        let needed = PROTOCOL_HEADER.len() - input.len();
        writeln!(
            out,
            "error at offset 0: stream ends inside the protocol header ({needed} more bytes expected)"
        )?;
        return Ok(false);
    }
    let mut decoder = FrameDecoder::with_frame_max(frame_max);
    while !input.is_empty() {
        match decoder.decode(&mut input) {
            Ok(Decoded::Frame(frame)) => writeln!(out, "{frame}")?,
            Ok(Decoded::Incomplete { needed }) => {
                let offset = base + decoder.offset();
                writeln!(
                    out,
                    "error at offset {offset}: stream ends inside a frame ({needed} more bytes expected)"
                )?;
                return Ok(false);
            }
            Err(err) => {
                writeln!(out, "error at offset {}: {err}", base + err.offset)?;
                return Ok(false);
            }
        }
    }
    Ok(true)
}
