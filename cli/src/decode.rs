//! `warren decode`: the frames of a captured AMQP 0-9-1 byte stream, one line
//! each, in the format of `examples/decode.rs` (see its docs), through the
//! same public codec API (`FrameDecoder` and the `Display` of methods and
//! properties).

use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::BytesMut;
use clap::Args;
use warren::protocol::dump;

use crate::{Failure, Outcome};

#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// The capture: the bytes one side of a connection sent; `-` or none
    /// for stdin.
    file: Option<PathBuf>,
    /// Refuse frames larger than this (header and frame-end included, as in
    /// connection.tune); a capture does not say what the peers negotiated,
    /// so by default any size is accepted.
    #[arg(long, value_name = "BYTES", default_value_t = u32::MAX, hide_default_value = true)]
    frame_max: u32,
}

/// Exit status 0 when the whole input decoded, 1 when the dump ends in an
/// `error at offset ...` line.
pub(crate) fn run(args: DecodeArgs) -> Outcome {
    let path = args.file.filter(|path| path.as_os_str() != "-");
    let mut input = Vec::new();
    let read = match &path {
        None => io::stdin().lock().read_to_end(&mut input),
        Some(path) => std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut input)),
    };
    if let Err(e) = read {
        let name = path.map_or("stdin".into(), |path| path.display().to_string());
        return Err(Failure::new(format!("cannot read {name}: {e}")));
    }
    let mut out = BufWriter::new(io::stdout().lock());
    match dump(BytesMut::from(&input[..]), args.frame_max, &mut out).and_then(|complete| {
        out.flush()?;
        Ok(complete)
    }) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::new(format!("cannot write output: {e}"))),
    }
}
