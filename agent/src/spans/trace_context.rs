//! W3C Trace Context (`traceparent`): parsing incoming headers and making
//! new ids. Rules from https://www.w3.org/TR/trace-context/#traceparent-header.

use rand::Rng;

use crate::model::span::{SpanId, TraceId};

/// A valid parent context taken from a `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentContext {
    /// Trace id.
    pub trace_id: TraceId,
    /// The caller's span id.
    pub span_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

fn hex_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Lowercase only: the spec forbids uppercase hex in traceparent.
    if text.len() != N * 2
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent` value; `None` for anything invalid, in which case
/// the request starts a new trace.
pub fn parse_traceparent(value: &str) -> Option<ParentContext> {
    let value = value.trim();
    let version = hex_exact::<1>(value.get(0..2)?)?[0];
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 characters; later versions may append fields
    // after a '-', and are parsed by their first 55 characters.
    if value.len() < 55
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value.as_bytes()[55] != b'-')
    {
        return None;
    }
    let bytes = value.as_bytes();
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = hex_exact::<16>(&value[3..35])?;
    let span_id = hex_exact::<8>(&value[36..52])?;
    let flags = hex_exact::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ParentContext {
        trace_id,
        span_id,
        flags,
    })
}

/// A random, non-zero trace id.
pub fn new_trace_id() -> TraceId {
    loop {
        let id: TraceId = rand::rng().random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random, non-zero span id.
pub fn new_span_id() -> SpanId {
    loop {
        let id: SpanId = rand::rng().random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Lowercase hex of an id.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_header() {
        let parent = parse_traceparent(VALID).unwrap();
        assert_eq!(to_hex(&parent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&parent.span_id), "00f067aa0ba902b7");
        assert_eq!(parent.flags, 1);
    }

    #[test]
    fn rejects_invalid_headers() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_future_versions_by_their_prefix() {
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(parse_traceparent(future).is_some());
        assert_eq!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }

    #[test]
    fn new_ids_are_distinct_and_non_zero() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_span_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert_ne!(new_trace_id(), [0; 16]);
    }
}
