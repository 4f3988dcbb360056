//! W3C `traceparent` values as read from requests:
//! `agent::spans::trace_context::parse_traceparent`.
#![no_main]

use agent::spans::trace_context::parse_traceparent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parse_traceparent(&String::from_utf8_lossy(data));
});
