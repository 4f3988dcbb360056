//! The agent's span: what span building produces and exporters consume.
//! Kept independent of any wire format; `export::otlp` maps it to OTLP.

use std::{net::IpAddr, sync::Arc};

use compact_str::{CompactString, ToCompactString as _};

/// A W3C trace id (16 bytes, never all zero).
pub type TraceId = [u8; 16];
/// A W3C span id (8 bytes, never all zero).
pub type SpanId = [u8; 8];

/// OpenTelemetry span kind (only the kinds the agent produces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// Handling an incoming request.
    Server,
    /// Making an outgoing request.
    Client,
}

/// OpenTelemetry span status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    /// Not an error.
    Unset,
    /// An error, with a short description.
    Error(String),
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// String: borrowed when it is one of a fixed set (methods, schemes,
    /// protocol versions), inline up to 24 bytes (addresses, most paths,
    /// routes and host names): a span's attributes then need no allocation
    /// of their own. They took ~8 per HTTP span, ~5% of the agent's CPU
    /// at 5,000 req/s.
    Str(CompactString),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
}

impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        Self::Str(CompactString::new(value))
    }
}
impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        Self::Str(CompactString::from(value))
    }
}
impl AttributeValue {
    /// A string from a fixed set, kept without a copy.
    pub fn fixed(value: &'static str) -> Self {
        Self::Str(CompactString::const_new(value))
    }
}
impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}
impl From<IpAddr> for AttributeValue {
    /// The address as text. IPv4 is written digit by digit: its `Display`
    /// goes through `core::fmt` octet by octet, ~3% of the agent's CPU per
    /// traced request (two address attributes on every span).
    fn from(ip: IpAddr) -> Self {
        let text = match ip {
            IpAddr::V4(v4) => {
                // Written into a stack buffer, then made one inline string.
                let mut text = [0u8; "255.255.255.255".len()];
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    for (digit, shown) in [
                        (octet / 100, octet >= 100),
                        (octet / 10 % 10, octet >= 10),
                        (octet % 10, true),
                    ] {
                        if shown {
                            text[len] = b'0' + digit;
                            len += 1;
                        }
                    }
                }
                // Only ASCII digits and dots were written.
                CompactString::from_utf8(&text[..len]).unwrap_or_default()
            }
            IpAddr::V6(v6) => v6.to_compact_string(),
        };
        Self::Str(text)
    }
}

/// One attribute. Keys are semantic-convention names, hence `&'static str`.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Key.
    pub key: &'static str,
    /// Value.
    pub value: AttributeValue,
}

impl Attribute {
    /// Builds an attribute.
    pub fn new(key: &'static str, value: impl Into<AttributeValue>) -> Self {
        Self {
            key,
            value: value.into(),
        }
    }
}

/// The entity that produced spans: one per instrumented process/service.
/// Shared by all spans of that process (`Arc`), compared by `key`.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Stable identity for grouping (e.g. "pid:1234:starttime").
    pub key: String,
    /// `service.name`, also in `attributes`; kept apart for display.
    pub service_name: String,
    /// All resource attributes, including `service.name`.
    pub attributes: Vec<(String, AttributeValue)>,
}

/// A finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// Producer.
    pub resource: Arc<Resource>,
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
    /// Parent span id, if any.
    pub parent_span_id: Option<SpanId>,
    /// W3C trace flags (bit 0: sampled).
    pub trace_flags: u8,
    /// W3C `tracestate`, passed through untouched.
    pub trace_state: Option<String>,
    /// Server or client.
    pub kind: SpanKind,
    /// Span name per semantic conventions (never a raw path).
    pub name: String,
    /// Start, Unix epoch nanoseconds.
    pub start_unix_ns: u64,
    /// End, Unix epoch nanoseconds.
    pub end_unix_ns: u64,
    /// Attributes.
    pub attributes: Vec<Attribute>,
    /// Status.
    pub status: SpanStatus,
}

/// Spans that travel together between stages: those finished by one
/// batch of kernel events (one send and one wakeup for all of them).
pub type SpanBatch = Vec<Span>;

impl Span {
    /// Duration in nanoseconds (0 if the clock went backwards).
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// The attribute with that key, if present.
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::AttributeValue;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "9.99.100.199",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                AttributeValue::from(ip),
                AttributeValue::from(text),
                "{text}"
            );
        }
    }
}
