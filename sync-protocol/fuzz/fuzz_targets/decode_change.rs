//! Untrusted bytes as an Automerge change chunk: must never panic, and never inflate past the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_protocol::changes::{Limits, decode_change};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        change_bytes: 64 * 1024,
        ..Limits::default()
    };
    let _ = decode_change(data, &limits);
});
