//! HTTP/2 frame headers, one after another as on a connection, with the
//! payload readers the agent uses: `agent::protocols::http2::parse`.
#![no_main]

use agent::protocols::http2::parse::{
    FrameHeader, error_code_name, fragment_range, goaway, rst_stream_code, starts_with_frames,
    starts_with_preface,
};
use libfuzzer_sys::fuzz_target;

/// Frame header bytes (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;

fuzz_target!(|data: &[u8]| {
    starts_with_preface(data);
    starts_with_frames(data, data.len() as u64);
    starts_with_frames(data, u64::from(u32::MAX) + 1);
    let mut rest = data;
    while let Some(header) = FrameHeader::parse(rest) {
        let _ = header.validate();
        header.ends_stream();
        rest = rest.get(HEADER_LEN..).unwrap_or_default();
        let len = rest.len().min(header.len as usize);
        let payload = &rest[..len];
        let _ = fragment_range(&header, payload.first().copied());
        if let Some(code) = rst_stream_code(payload) {
            error_code_name(code);
        }
        goaway(payload);
        rest = &rest[len..];
    }
});
