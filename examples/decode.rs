//! Dumps the frames of a captured AMQP 0-9-1 byte stream, one line per frame.
//!
//! ```text
//! cargo run --example decode -- [--frame-max N] [FILE]
//! ```
//!
//! Reads the bytes one side of a connection sent, from `FILE`, or from stdin
//! when `FILE` is absent or `-`. A capture does not say which `frame_max`
//! the peers negotiated, so any frame size is accepted unless `--frame-max N`
//! sets a limit (header and frame-end included, as in `connection.tune`).
//!
//! Output, one line per item, values of strings and tables in Rust debug
//! notation (so a line never breaks):
//!
//! ```text
//! protocol-header AMQP 0-9-1
//! 0 method connection.tune-ok channel-max=2047 frame-max=131072 heartbeat=60
//! 1 method basic.deliver consumer-tag="ctag" delivery-tag=1 redelivered=false exchange="" routing-key="q"
//! 1 header 60 body-size=5 content-type="text/plain" delivery-mode=2
//! 1 body len=5
//! 0 heartbeat
//! ```
//!
//! The `protocol-header` line appears only when the stream starts with the
//! 8-byte header `AMQP\x00\x00\x09\x01`. A header line lists only the
//! properties present. Malformed input ends the dump with
//! `error at offset <n>: <reason>`, and a stream cut inside a frame with
//! `error at offset <n>: stream ends inside a frame (<k> more bytes expected)`,
//! where `<n>` counts bytes from the start of the input (for a cut frame, the
//! offset of its first byte; `<k>` is a lower bound when the cut falls inside
//! the 7-byte frame header). Either exits with status 1. Usage and I/O errors
//! go to stderr and exit with status 2.

use std::ffi::OsString;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::{BufMut, BytesMut};
use warren::protocol::dump;

const USAGE: &str = "usage: decode [--frame-max N] [FILE|-]";

fn main() -> ExitCode {
    let (frame_max, path) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => return fail(&format!("{msg} ({USAGE})")),
    };
    let mut input = BytesMut::new();
    let read = match &path {
        None => io::copy(&mut io::stdin().lock(), &mut (&mut input).writer()),
        Some(path) => std::fs::File::open(path)
            .and_then(|mut file| io::copy(&mut file, &mut (&mut input).writer())),
    };
    if let Err(err) = read {
        let name = path.map_or("stdin".into(), |path| path.display().to_string());
        return fail(&format!("cannot read {name}: {err}"));
    }
    let mut out = BufWriter::new(io::stdout().lock());
    match dump(input, frame_max, &mut out).and_then(|ok| out.flush().map(|()| ok)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => fail(&format!("cannot write output: {err}")),
    }
}

/// Returns `frame_max` and the input file (`None` for stdin); `Ok(None)` asks
/// for the usage text; `Err` is a usage error.
fn parse_args(
    mut args: impl Iterator<Item = OsString>,
) -> Result<Option<(u32, Option<PathBuf>)>, String> {
    let mut frame_max = u32::MAX;
    let mut input = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(None),
            Some("--frame-max") => {
                let value = args.next().ok_or("--frame-max needs a value")?;
                frame_max = value
                    .to_str()
                    .and_then(|value| value.parse().ok())
                    .ok_or_else(|| format!("bad --frame-max value {value:?}"))?;
            }
            Some(flag) if flag.starts_with('-') && flag != "-" => {
                return Err(format!("unknown option {flag:?}"))
            }
            _ if input.is_some() => return Err("more than one input file".into()),
            _ => input = Some(arg),
        }
    }
    Ok(Some((
        frame_max,
        input.filter(|path| path != "-").map(PathBuf::from),
    )))
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("decode: {msg}");
    ExitCode::from(2)
}
