//! Agent spans -> one OTLP `ExportTraceServiceRequest`: spans are grouped by
//! their resource (one per instrumented process), each group under a single
//! `sonde` instrumentation scope. Ids and timestamps are copied as the
//! kernel side produced them.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as ProtoSpan, Status, span::SpanKind as ProtoSpanKind,
    status::StatusCode,
};

use crate::model::span::{AttributeValue, Resource, Span, SpanKind, SpanStatus};

/// Instrumentation scope name: the agent, not a library inside the target.
pub(crate) const SCOPE_NAME: &str = "sonde";

/// Builds the request, keeping resources and spans in arrival order.
pub(crate) fn to_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    // A batch holds the spans of a few processes: a scan of the groups
    // found so far beats hashing each span's resource key.
    let mut groups: Vec<(Arc<Resource>, Vec<ProtoSpan>)> = Vec::new();
    for span in spans {
        let index = match groups.iter().position(|(resource, _)| {
            Arc::ptr_eq(resource, &span.resource) || resource.key == span.resource.key
        }) {
            Some(index) => index,
            None => {
                groups.push((Arc::clone(&span.resource), Vec::new()));
                groups.len() - 1
            }
        };
        groups[index].1.push(to_proto_span(span));
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(proto_resource(&resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The OTLP form of a resource (shared by every signal).
pub(crate) fn proto_resource(resource: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: resource
            .attributes
            .iter()
            .map(|(key, value)| key_value(key.clone(), value.clone()))
            .collect(),
        ..Default::default()
    }
}

/// The agent's instrumentation scope.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

fn to_proto_span(span: Span) -> ProtoSpan {
    let kind = match span.kind {
        SpanKind::Server => ProtoSpanKind::Server,
        SpanKind::Client => ProtoSpanKind::Client,
    };
    let status = match span.status {
        SpanStatus::Unset => Status::default(),
        SpanStatus::Error(message) => Status {
            message,
            code: StatusCode::Error.into(),
        },
    };
    ProtoSpan {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.trace_state.unwrap_or_default(),
        // OTLP: an empty parent id means a root span.
        parent_span_id: span.parent_span_id.map(Vec::from).unwrap_or_default(),
        // W3C trace flags go in the low byte; the "parent is remote" bits
        // above it stay clear because the model does not record that.
        flags: u32::from(span.trace_flags),
        name: span.name,
        kind: kind.into(),
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        // Moved, not copied: the span is consumed.
        attributes: span
            .attributes
            .into_iter()
            .map(|attribute| key_value(attribute.key.to_owned(), attribute.value))
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

/// Protobuf bytes of a span's fixed fields: trace id (2 + 16), span id
/// (2 + 8), parent id (2 + 8), flags (5), kind (2), two fixed64 timestamps
/// (2 x 9), status (6), and the span's own tag and length in `ScopeSpans`
/// (3).
const SPAN_FIXED_BYTES: usize = 70;
/// Framing around one attribute: the `KeyValue` and `AnyValue` tags and
/// lengths, the key's and a string value's tag and length (one-byte
/// lengths, two-byte past 127: the slack covers it).
const ATTRIBUTE_FRAMING_BYTES: usize = 12;
/// Framing of the span's variable-length strings (name, trace state,
/// status message): a tag and a length each.
const STRING_FRAMING_BYTES: usize = 3;

/// Bytes a span adds to an OTLP request, estimated from the lengths of its
/// fields without encoding it (the queue weighs every span it takes, so
/// this must be cheap): the fixed fields, then each string's length plus
/// its framing. Numbers count 9 bytes (the most a fixed64 or 10-byte
/// varint field costs, give or take). The span's resource is left out: it
/// is shared by every span of its process and sent once per batch.
pub(crate) fn encoded_size_estimate(span: &Span) -> usize {
    let strings = [
        span.name.len(),
        span.trace_state.as_ref().map_or(0, String::len),
        match &span.status {
            SpanStatus::Unset => 0,
            SpanStatus::Error(message) => message.len(),
        },
    ];
    let attributes: usize = span
        .attributes
        .iter()
        .map(|attribute| {
            let value = match &attribute.value {
                AttributeValue::Str(text) => text.len(),
                AttributeValue::Int(_) | AttributeValue::Float(_) => 9,
                AttributeValue::Bool(_) => 1,
            };
            ATTRIBUTE_FRAMING_BYTES + attribute.key.len() + value
        })
        .sum();
    SPAN_FIXED_BYTES
        + strings
            .iter()
            .map(|len| len + STRING_FRAMING_BYTES)
            .sum::<usize>()
        + attributes
}

/// One OTLP attribute.
pub(crate) fn key_value(key: String, value: AttributeValue) -> KeyValue {
    let value = match value {
        AttributeValue::Str(text) => any_value::Value::StringValue(text),
        AttributeValue::Int(number) => any_value::Value::IntValue(number),
        AttributeValue::Float(number) => any_value::Value::DoubleValue(number),
        AttributeValue::Bool(flag) => any_value::Value::BoolValue(flag),
    };
    KeyValue {
        key,
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::Attribute;
    use crate::test_support::{resource, span};

    fn value(key_value: &KeyValue) -> &any_value::Value {
        key_value
            .value
            .as_ref()
            .and_then(|value| value.value.as_ref())
            .unwrap_or_else(|| panic!("attribute {} has no value", key_value.key))
    }

    #[test]
    fn groups_spans_by_resource_in_arrival_order() {
        let api = resource("pid:1:100", "api");
        let db = resource("pid:2:200", "db");
        // Same key, different Arc: still the same resource.
        let api_again = resource("pid:1:100", "api");
        let request = to_request(vec![
            span(&db, "a"),
            span(&api, "b"),
            span(&db, "c"),
            span(&api_again, "d"),
        ]);
        let groups: Vec<(&any_value::Value, Vec<&str>)> = request
            .resource_spans
            .iter()
            .map(|group| {
                let resource = group
                    .resource
                    .as_ref()
                    .unwrap_or_else(|| panic!("{group:?}"));
                assert_eq!(group.scope_spans.len(), 1, "{group:?}");
                let names = group.scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                // service.name comes first in the test resource.
                (value(&resource.attributes[0]), names)
            })
            .collect();
        let service = |name: &str| any_value::Value::StringValue(name.to_owned());
        assert_eq!(
            groups,
            vec![
                (&service("db"), vec!["a", "c"]),
                (&service("api"), vec!["b", "d"])
            ]
        );
    }

    #[test]
    fn resource_and_scope_fields() {
        let request = to_request(vec![span(&resource("k", "api"), "GET")]);
        let group = &request.resource_spans[0];
        let attributes = &group
            .resource
            .as_ref()
            .unwrap_or_else(|| panic!("{group:?}"))
            .attributes;
        assert_eq!(attributes.len(), 2);
        assert_eq!(attributes[0].key, "service.name");
        assert_eq!(
            value(&attributes[0]),
            &any_value::Value::StringValue("api".into())
        );
        assert_eq!(attributes[1].key, "process.pid");
        assert_eq!(value(&attributes[1]), &any_value::Value::IntValue(42));
        let scope = group.scope_spans[0]
            .scope
            .as_ref()
            .unwrap_or_else(|| panic!("{group:?}"));
        assert_eq!(scope.name, "sonde");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn span_fields() {
        let resource = resource("k", "api");
        let mut client = span(&resource, "GET");
        client.kind = SpanKind::Client;
        client.trace_id = *b"0123456789abcdef";
        client.span_id = *b"spanid01";
        client.parent_span_id = Some(*b"parent01");
        client.trace_flags = 0x01;
        client.trace_state = Some("vendor=value".into());
        client.start_unix_ns = 1_700_000_000_000_000_000;
        client.end_unix_ns = 1_700_000_000_250_000_000;
        client.attributes = vec![
            Attribute::new("http.request.method", "GET"),
            Attribute::new("http.response.status_code", 503_i64),
            Attribute::new("sonde.ratio", AttributeValue::Float(0.5)),
            Attribute::new("sonde.flag", AttributeValue::Bool(true)),
        ];
        client.status = SpanStatus::Error("503".into());
        let mut root = span(&resource, "POST");
        root.trace_flags = 0;

        let request = to_request(vec![client, root]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        let client = &spans[0];
        assert_eq!(client.trace_id, b"0123456789abcdef");
        assert_eq!(client.span_id, b"spanid01");
        assert_eq!(client.parent_span_id, b"parent01");
        assert_eq!(client.flags, 0x01);
        assert_eq!(client.trace_state, "vendor=value");
        assert_eq!(client.name, "GET");
        assert_eq!(client.kind, i32::from(ProtoSpanKind::Client));
        assert_eq!(client.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(client.end_time_unix_nano, 1_700_000_000_250_000_000);
        let attributes: Vec<(&str, &any_value::Value)> = client
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), value(kv)))
            .collect();
        assert_eq!(
            attributes,
            vec![
                (
                    "http.request.method",
                    &any_value::Value::StringValue("GET".into())
                ),
                (
                    "http.response.status_code",
                    &any_value::Value::IntValue(503)
                ),
                ("sonde.ratio", &any_value::Value::DoubleValue(0.5)),
                ("sonde.flag", &any_value::Value::BoolValue(true)),
            ]
        );
        assert_eq!(
            client.status,
            Some(Status {
                message: "503".into(),
                code: StatusCode::Error.into()
            })
        );

        let root = &spans[1];
        assert!(root.parent_span_id.is_empty(), "{root:?}");
        assert_eq!(root.flags, 0);
        assert_eq!(root.trace_state, "");
        assert_eq!(root.kind, i32::from(ProtoSpanKind::Server));
        assert_eq!(root.status, Some(Status::default()));
        assert_eq!(
            root.status.as_ref().map(|s| s.code),
            Some(i32::from(StatusCode::Unset))
        );
    }

    /// The estimate never undercounts what the span really costs in a
    /// request (its encoded length plus its tag and length in the
    /// `ScopeSpans`), and overcounts by little, for small spans and for
    /// spans with long strings.
    #[test]
    fn size_estimate_is_close_above_the_encoded_size() {
        use prost::Message;

        let resource = resource("k", "api");
        let bare = span(&resource, "GET");
        let mut typical = span(&resource, "GET /api/users/{id}");
        typical.parent_span_id = Some(*b"parent01");
        typical.trace_state = Some("vendor=value".into());
        typical.attributes = vec![
            Attribute::new("http.request.method", "GET"),
            Attribute::new("url.path", "/api/users/8812"),
            Attribute::new("http.route", "/api/users/{id}"),
            Attribute::new("http.response.status_code", 200_i64),
            Attribute::new("server.port", 8080_i64),
            Attribute::new("network.peer.address", "10.1.2.3"),
            Attribute::new("user_agent.original", "curl/8.5.0"),
        ];
        let mut large = typical.clone();
        large
            .attributes
            .push(Attribute::new("url.full", "x".repeat(3000)));
        large
            .attributes
            .push(Attribute::new("sonde.ratio", AttributeValue::Float(0.5)));
        large
            .attributes
            .push(Attribute::new("sonde.flag", AttributeValue::Bool(true)));
        large.status = SpanStatus::Error("x".repeat(200));
        for span in [bare, typical, large] {
            let estimate = encoded_size_estimate(&span);
            let name = span.name.clone();
            let encoded = to_proto_span(span).encoded_len();
            let in_request = encoded + 1 + prost::length_delimiter_len(encoded);
            assert!(
                (in_request..=in_request + in_request / 4 + 16).contains(&estimate),
                "{name}: estimated {estimate} bytes, {in_request} in a request"
            );
        }
    }
}
