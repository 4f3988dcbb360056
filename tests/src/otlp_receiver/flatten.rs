//! OTLP request -> flat [`ReceivedSpan`]s: each span carries its resource
//! and scope, ids become hex and attribute values JSON, so tests compare
//! plain values.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;

use super::ReceivedSpan;

/// Lowercase hex, as W3C Trace Context and tracing backends show ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            // Writing to a String cannot fail.
            let _ = write!(text, "{byte:02x}");
            text
        })
}

pub(super) fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut flat = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|resource| attributes(&resource.attributes))
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.clone().unwrap_or_default();
            for span in &scope_spans.spans {
                let status = span.status.clone().unwrap_or_default();
                flat.push(ReceivedSpan {
                    resource: resource.clone(),
                    scope_name: scope.name.clone(),
                    scope_version: scope.version.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    trace_state: span.trace_state.clone(),
                    flags: span.flags,
                    name: span.name.clone(),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    start_unix_ns: span.start_time_unix_nano,
                    end_unix_ns: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    status_code: StatusCode::try_from(status.code).unwrap_or(StatusCode::Unset),
                    status_message: status.message,
                });
            }
        }
    }
    flat
}

pub(super) fn attributes(key_values: &[KeyValue]) -> BTreeMap<String, Value> {
    key_values
        .iter()
        .map(|key_value| (key_value.key.clone(), json(key_value.value.as_ref())))
        .collect()
}

fn json(value: Option<&AnyValue>) -> Value {
    let Some(value) = value.and_then(|value| value.value.as_ref()) else {
        return Value::Null;
    };
    match value {
        any_value::Value::StringValue(text) => Value::from(text.as_str()),
        any_value::Value::BoolValue(flag) => Value::from(*flag),
        any_value::Value::IntValue(number) => Value::from(*number),
        // Non-finite doubles become null: JSON has no NaN.
        any_value::Value::DoubleValue(number) => Value::from(*number),
        any_value::Value::ArrayValue(array) => {
            Value::Array(array.values.iter().map(|item| json(Some(item))).collect())
        }
        any_value::Value::KvlistValue(list) => Value::Object(
            list.values
                .iter()
                .map(|key_value| (key_value.key.clone(), json(key_value.value.as_ref())))
                .collect(),
        ),
        any_value::Value::BytesValue(bytes) => Value::from(hex(bytes)),
        // A string-table index (profiles only): kept visible, not resolved.
        any_value::Value::StringValueStrindex(index) => {
            serde_json::json!({ "string_value_strindex": index })
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use serde_json::json;

    use super::*;

    fn key_value(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn spans_carry_their_resource_and_plain_values() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![key_value(
                        "service.name",
                        any_value::Value::StringValue("api".into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
                        name: "GET".into(),
                        kind: SpanKind::Client.into(),
                        attributes: vec![
                            key_value("d", any_value::Value::DoubleValue(f64::NAN)),
                            key_value("b", any_value::Value::BytesValue(vec![0xff])),
                            key_value(
                                "a",
                                any_value::Value::ArrayValue(ArrayValue {
                                    values: vec![AnyValue {
                                        value: Some(any_value::Value::IntValue(1)),
                                    }],
                                }),
                            ),
                            key_value(
                                "m",
                                any_value::Value::KvlistValue(KeyValueList {
                                    values: vec![key_value("k", any_value::Value::BoolValue(true))],
                                }),
                            ),
                        ],
                        status: Some(Status {
                            message: "boom".into(),
                            code: StatusCode::Error.into(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let spans = flatten(&request);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        let span = &spans[0];
        assert_eq!(
            span.resource,
            BTreeMap::from([("service.name".to_owned(), json!("api"))])
        );
        assert_eq!(span.trace_id, "ab".repeat(16));
        assert_eq!(span.span_id, "0102030405060708");
        assert_eq!(span.parent_span_id, "");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(
            span.attributes,
            BTreeMap::from([
                ("a".to_owned(), json!([1])),
                ("b".to_owned(), json!("ff")),
                ("d".to_owned(), Value::Null),
                ("m".to_owned(), json!({ "k": true })),
            ])
        );
        assert_eq!(
            (span.status_code, span.status_message.as_str()),
            (StatusCode::Error, "boom")
        );
    }
}
