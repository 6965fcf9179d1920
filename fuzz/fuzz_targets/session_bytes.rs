//! The sans-IO session, after a valid handshake, fed arbitrary server bytes
//! in chunk sizes the input chooses. Invariants live in `warren::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzzing::session_bytes(data));
