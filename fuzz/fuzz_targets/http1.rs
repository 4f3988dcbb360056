//! HTTP/1 heads, whole and cut short, their body framing, and chunked
//! bodies: `agent::protocols::http1::parse`.
#![no_main]

use agent::protocols::http1::parse::{
    ChunkedScanner, Parsed, looks_like_request, looks_like_response, parse_request,
    parse_request_prefix, parse_response, parse_response_prefix,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    looks_like_request(data);
    looks_like_response(data);
    if let Ok(Parsed::Complete { head, .. }) = parse_request(data) {
        let _ = head.body();
    }
    if let Ok(Parsed::Complete { head, .. }) = parse_response(data) {
        head.is_interim();
        head.body("GET");
        head.body("HEAD");
    }
    if let Ok(head) = parse_request_prefix(data) {
        let _ = head.body();
    }
    if let Ok(head) = parse_response_prefix(data) {
        head.body("CONNECT");
    }
    // A chunked body walked in two segments, the second only half copied.
    let half = data.len() / 2;
    let mut scanner = ChunkedScanner::new();
    if scanner.scan(&data[..half], half as u64).is_ok() {
        let rest = &data[half..];
        let _ = scanner.scan(&rest[..rest.len() / 2], rest.len() as u64);
    }
});
