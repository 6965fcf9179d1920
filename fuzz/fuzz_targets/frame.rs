//! Arbitrary bytes into the incremental frame decoder, fed in pieces.
//!
//! Input layout: two bytes choose `frame_max`, two bytes choose how the rest
//! (the byte stream) is cut into chunks; then the stream. Errors are fine:
//! panics, hangs, OOM and broken invariants are bugs.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::protocol::{Decoded, Frame, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let fm = u16::from_le_bytes([data[0], data[1]]);
    // 4096 ..= ~1 MiB in steps of 16, and once in a while no limit at all.
    let frame_max = if fm == u16::MAX {
        u32::MAX
    } else {
        4096 + u32::from(fm) * 16
    };
    let mut chunks = Chunker::new(u16::from_le_bytes([data[2], data[3]]));
    let stream = &data[4..];

    let mut decoder = FrameDecoder::with_frame_max(frame_max);
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    // Set by `Incomplete` once the 7-byte header is in: the buffer length at
    // which the frame is complete, so `decode` must not say Incomplete again.
    let mut exact_need: Option<usize> = None;
    // Set by any `Incomplete`: no frame can come out below this length.
    let mut min_len = 0usize;

    while fed < stream.len() {
        let n = chunks.next().min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.len();
            let consumed_so_far = decoder.offset();
            match decoder.decode(&mut buf) {
                Ok(Decoded::Incomplete { needed }) => {
                    assert!(needed > 0, "Incomplete with needed == 0");
                    assert_eq!(buf.len(), before, "Incomplete consumed bytes");
                    assert_eq!(decoder.offset(), consumed_so_far);
                    if let Some(at) = exact_need {
                        assert!(
                            before < at,
                            "Incomplete although {at} bytes were promised enough"
                        );
                    }
                    if before >= 7 {
                        exact_need = Some(before + needed);
                    }
                    min_len = before + needed;
                    break;
                }
                Ok(Decoded::Frame(frame)) => {
                    let consumed = before - buf.len();
                    assert!(
                        before >= min_len,
                        "frame came out before `needed` bytes arrived"
                    );
                    assert_eq!(decoder.offset(), consumed_so_far + consumed as u64);
                    exact_need = None;
                    min_len = 0;
                    check_reencode(&frame, consumed, frame_max);
                }
                Err(err) => {
                    // The offset names a byte of the stream at or after the
                    // start of the failing frame.
                    assert!(err.offset >= decoder.offset(), "{err:?} before the frame");
                    assert!(err.offset < fed as u64, "{err:?} past the {fed} bytes fed");
                    let _ = (err.reply_code(), err.to_string());
                    return;
                }
            }
        }
    }
});

/// Re-encodes a decoded frame and decodes that again: the encoder's length
/// must be exact and the decoded frames equal. (Reserved short strings and
/// content-header padding are dropped, so the canonical encoding may be
/// shorter than the input, never longer.)
fn check_reencode(frame: &Frame, consumed: usize, frame_max: u32) {
    if !matches!(frame, Frame::Body { .. }) {
        let _ = format!("{frame:?}"); // walks every table and array in it
    }
    if let Frame::Header { header, .. } = frame {
        // Properties are checked with the frame and decoded on demand.
        warren::fuzzing::check_properties(&header.properties);
    }
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    assert_eq!(
        frame.encoded_len(),
        out.len(),
        "encoded_len disagrees with encode"
    );
    assert!(
        out.len() <= consumed,
        "re-encoding grew {consumed} -> {}",
        out.len()
    );
    if matches!(frame, Frame::Body { .. } | Frame::Heartbeat { .. }) {
        assert_eq!(out.len(), consumed);
    }
    let wire = out.clone();
    let mut decoder = FrameDecoder::with_frame_max(frame_max);
    match decoder.decode(&mut out) {
        Ok(Decoded::Frame(again)) => {
            assert_eq!(&again, frame, "re-encoded frame decodes differently");
            assert!(out.is_empty(), "re-encoded frame left {} bytes", out.len());
            // The canonical encoding is a fixed point.
            let mut twice = BytesMut::new();
            again.encode(&mut twice);
            assert_eq!(twice, wire);
        }
        other => panic!("re-encoded {frame:?} as {wire:02x?}, which decodes as {other:?}"),
    }
}

/// Chunk sizes for feeding the stream, from a 16-bit seed: the low 3 bits
/// pick a size range (single bytes up to 64 KiB), the rest seed an xorshift.
struct Chunker {
    max: u32,
    state: u32,
}

impl Chunker {
    fn new(seed: u16) -> Self {
        let max = [1, 2, 7, 8, 64, 1024, 4096, 65536][usize::from(seed & 7)];
        Chunker {
            max,
            state: u32::from(seed >> 3) | 0x1_0000,
        }
    }

    fn next(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        (1 + self.state % self.max) as usize
    }
}
