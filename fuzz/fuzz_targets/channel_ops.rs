//! An arbitrary sequence of user operations and server frames against the
//! session core. Invariants live in `warren::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzzing::channel_ops(data));
