//! Ring-buffer records as the kernel programs write them:
//! `agent::probes::decode::decode`.
#![no_main]

use agent::probes::decode::decode;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut payloads = BytesMut::new();
    let _ = decode(data, &mut payloads);
});
