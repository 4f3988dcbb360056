//! Agent spans -> one OTLP `ExportTraceServiceRequest`: spans are grouped by
//! their resource (one per instrumented process), each group under a single
//! `sonde` instrumentation scope. Ids and timestamps are copied as the
//! kernel side produced them.
//!
//! Spans are written straight to protobuf bytes, each once, as it is
//! queued ([`SpanEncoder`]); forming a request ([`encode_request`]) only
//! frames them by resource and copies their bytes. Building prost structs
//! first cost an allocation per id and attribute key and several
//! `encoded_len` passes over every span, the biggest share of the agent's
//! CPU after the kernel reader; encoding a whole batch of 512 spans at
//! once kept a CPU busy for a stretch the traced service could feel on a
//! small node. The bytes are what prost would write for the same request
//! (fields in order of number as prost writes them, proto3 defaults left
//! out); a test holds the two identical.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as ProtoSpanKind, status::StatusCode};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};
use prost::{DecodeError, Message};

use crate::model::span::{AttributeValue, Resource, Span, SpanKind, SpanStatus};

/// Instrumentation scope name: the agent, not a library inside the target.
pub(crate) const SCOPE_NAME: &str = "sonde";

/// An encoded `ExportTraceServiceRequest`. A prost message itself, so the
/// transports and the disk queue take it as they would the struct: it
/// encodes as its bytes, clones without copying them (each gRPC attempt
/// takes its own request), and decodes (a file of the disk queue) through
/// the real message types, so a payload that is not a request still fails.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EncodedTraces(Bytes);

impl EncodedTraces {
    /// The protobuf bytes, shared, not copied: an OTLP/HTTP body as it is.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// `ExportTraceServiceRequest.resource_spans`.
const REQUEST_RESOURCE_SPANS: u32 = 1;

impl Message for EncodedTraces {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != REQUEST_RESOURCE_SPANS {
            // As the generated struct does: unknown fields are skipped.
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        let mut group = ResourceSpans::default();
        prost::encoding::message::merge(wire_type, &mut group, buf, ctx)?;
        let mut bytes = Vec::with_capacity(self.0.len() + group.encoded_len() + 8);
        bytes.extend_from_slice(&self.0);
        prost::encoding::message::encode(REQUEST_RESOURCE_SPANS, &group, &mut bytes);
        self.0 = bytes.into();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// Field numbers of `ResourceSpans`, `ScopeSpans`, `Span`, `Status`,
/// `KeyValue` and `AnyValue` (opentelemetry/proto/trace/v1/trace.proto,
/// common/v1/common.proto).
mod field {
    pub(super) const RESOURCE: u32 = 1;
    pub(super) const SCOPE_SPANS: u32 = 2;
    pub(super) const SCOPE: u32 = 1;
    pub(super) const SPANS: u32 = 2;
    pub(super) const TRACE_ID: u32 = 1;
    pub(super) const SPAN_ID: u32 = 2;
    pub(super) const TRACE_STATE: u32 = 3;
    pub(super) const PARENT_SPAN_ID: u32 = 4;
    pub(super) const NAME: u32 = 5;
    pub(super) const KIND: u32 = 6;
    pub(super) const START: u32 = 7;
    pub(super) const END: u32 = 8;
    pub(super) const ATTRIBUTES: u32 = 9;
    pub(super) const STATUS: u32 = 15;
    pub(super) const FLAGS: u32 = 16;
    pub(super) const STATUS_MESSAGE: u32 = 2;
    pub(super) const STATUS_CODE: u32 = 3;
    pub(super) const KEY: u32 = 1;
    pub(super) const VALUE: u32 = 2;
    pub(super) const STRING_VALUE: u32 = 1;
    pub(super) const BOOL_VALUE: u32 = 2;
    pub(super) const INT_VALUE: u32 = 3;
    pub(super) const DOUBLE_VALUE: u32 = 4;
}

/// One span as it goes into a request: its `ScopeSpans.spans` tag and
/// length, then the span; and the resource it is grouped under.
#[derive(Clone, Debug)]
pub(crate) struct EncodedSpan {
    resource: Arc<Resource>,
    bytes: Bytes,
}

impl EncodedSpan {
    /// Bytes it adds to a request; its resource is left out (shared by
    /// every span of its process, sent once per batch).
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Encoded spans are slices of one buffer allocated this many bytes at a
/// time (a few hundred spans), freed with the last of them, rather than
/// one allocation per span.
const ENCODE_CHUNK: usize = 64 * 1024;

/// Encodes spans one by one into a shared buffer.
#[derive(Debug, Default)]
pub(crate) struct SpanEncoder {
    buf: BytesMut,
}

impl SpanEncoder {
    pub(crate) fn encode(&mut self, span: &Span) -> EncodedSpan {
        let len = span_len(span);
        let total = delimited_len(field::SPANS, len);
        if self.buf.capacity() < total {
            self.buf.reserve(ENCODE_CHUNK.max(total));
        }
        put_header(field::SPANS, len, &mut self.buf);
        put_span(span, &mut self.buf);
        debug_assert_eq!(self.buf.len(), total);
        EncodedSpan {
            resource: Arc::clone(&span.resource),
            bytes: self.buf.split().freeze(),
        }
    }
}

/// Frames encoded spans into a request, keeping resources and spans in
/// arrival order. Takes references: the spans are read where they are
/// queued, not moved.
pub(crate) fn encode_request<'a>(
    spans: impl IntoIterator<Item = &'a EncodedSpan>,
) -> EncodedTraces {
    // A batch holds the spans of a few processes: a scan of the groups
    // found so far beats hashing each span's resource key.
    let mut groups: Vec<(&Arc<Resource>, Vec<&EncodedSpan>)> = Vec::new();
    for span in spans {
        match groups.iter_mut().find(|(resource, _)| {
            Arc::ptr_eq(resource, &span.resource) || resource.key == span.resource.key
        }) {
            Some((_, members)) => members.push(span),
            None => groups.push((&span.resource, vec![span])),
        }
    }
    let scope = scope();
    let scope_len = prost::encoding::message::encoded_len(field::SCOPE, &scope);
    let groups: Vec<(ProtoResource, usize, Vec<&EncodedSpan>)> = groups
        .into_iter()
        .map(|(resource, members)| {
            let spans_len: usize = members.iter().map(|span| span.len()).sum();
            (proto_resource(resource), scope_len + spans_len, members)
        })
        .collect();
    let total: usize = groups
        .iter()
        .map(|(resource, scope_spans_len, _)| {
            delimited_len(
                REQUEST_RESOURCE_SPANS,
                resource_spans_len(resource, *scope_spans_len),
            )
        })
        .sum();
    let mut buf = Vec::with_capacity(total);
    for (resource, scope_spans_len, members) in &groups {
        put_header(
            REQUEST_RESOURCE_SPANS,
            resource_spans_len(resource, *scope_spans_len),
            &mut buf,
        );
        prost::encoding::message::encode(field::RESOURCE, resource, &mut buf);
        put_header(field::SCOPE_SPANS, *scope_spans_len, &mut buf);
        prost::encoding::message::encode(field::SCOPE, &scope, &mut buf);
        for span in members {
            buf.extend_from_slice(&span.bytes);
        }
    }
    debug_assert_eq!(buf.len(), total);
    EncodedTraces(buf.into())
}

fn resource_spans_len(resource: &ProtoResource, scope_spans_len: usize) -> usize {
    prost::encoding::message::encoded_len(field::RESOURCE, resource)
        + delimited_len(field::SCOPE_SPANS, scope_spans_len)
}

/// Bytes of a length-delimited field whose payload is `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string or bytes field; proto3 leaves an empty one out.
fn optional_bytes_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

fn put_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    put_header(tag, bytes.len(), buf);
    buf.put_slice(bytes);
}

fn put_optional_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    if !bytes.is_empty() {
        put_bytes(tag, bytes, buf);
    }
}

fn proto_kind(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Server => ProtoSpanKind::Server as u64,
        SpanKind::Client => ProtoSpanKind::Client as u64,
    }
}

/// The status message and code (an unset status is an empty message).
fn status_fields(status: &SpanStatus) -> (&[u8], u64) {
    match status {
        SpanStatus::Unset => (&[], StatusCode::Unset as u64),
        SpanStatus::Error(message) => (message.as_bytes(), StatusCode::Error as u64),
    }
}

fn status_len(status: &SpanStatus) -> usize {
    let (message, code) = status_fields(status);
    optional_bytes_len(field::STATUS_MESSAGE, message)
        + if code == 0 {
            0
        } else {
            key_len(field::STATUS_CODE) + encoded_len_varint(code)
        }
}

fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

fn span_len(span: &Span) -> usize {
    delimited_len(field::TRACE_ID, span.trace_id.len())
        + delimited_len(field::SPAN_ID, span.span_id.len())
        + optional_bytes_len(
            field::TRACE_STATE,
            span.trace_state.as_deref().unwrap_or_default().as_bytes(),
        )
        + span.parent_span_id.map_or(0, |parent| {
            delimited_len(field::PARENT_SPAN_ID, parent.len())
        })
        + if span.trace_flags == 0 {
            0
        } else {
            key_len(field::FLAGS) + 4
        }
        + optional_bytes_len(field::NAME, span.name.as_bytes())
        + key_len(field::KIND)
        + encoded_len_varint(proto_kind(span.kind))
        + fixed64_len(field::START, span.start_unix_ns)
        + fixed64_len(field::END, span.end_unix_ns)
        + span
            .attributes
            .iter()
            .map(|attribute| {
                delimited_len(
                    field::ATTRIBUTES,
                    key_value_len(attribute.key, &attribute.value),
                )
            })
            .sum::<usize>()
        + delimited_len(field::STATUS, status_len(&span.status))
}

fn put_span(span: &Span, buf: &mut impl BufMut) {
    put_bytes(field::TRACE_ID, &span.trace_id, buf);
    put_bytes(field::SPAN_ID, &span.span_id, buf);
    put_optional_bytes(
        field::TRACE_STATE,
        span.trace_state.as_deref().unwrap_or_default().as_bytes(),
        buf,
    );
    // OTLP: no parent id means a root span.
    if let Some(parent) = &span.parent_span_id {
        put_bytes(field::PARENT_SPAN_ID, parent, buf);
    }
    put_optional_bytes(field::NAME, span.name.as_bytes(), buf);
    encode_key(field::KIND, WireType::Varint, buf);
    encode_varint(proto_kind(span.kind), buf);
    for (tag, value) in [
        (field::START, span.start_unix_ns),
        (field::END, span.end_unix_ns),
    ] {
        if value != 0 {
            encode_key(tag, WireType::SixtyFourBit, buf);
            buf.put_u64_le(value);
        }
    }
    for attribute in &span.attributes {
        put_header(
            field::ATTRIBUTES,
            key_value_len(attribute.key, &attribute.value),
            buf,
        );
        put_key_value(attribute.key, &attribute.value, buf);
    }
    put_header(field::STATUS, status_len(&span.status), buf);
    let (message, code) = status_fields(&span.status);
    put_optional_bytes(field::STATUS_MESSAGE, message, buf);
    if code != 0 {
        encode_key(field::STATUS_CODE, WireType::Varint, buf);
        encode_varint(code, buf);
    }
    // Last, as prost writes fields by number. W3C trace flags go in the low
    // byte; the "parent is remote" bits above it stay clear because the
    // model does not record that.
    if span.trace_flags != 0 {
        encode_key(field::FLAGS, WireType::ThirtyTwoBit, buf);
        buf.put_u32_le(u32::from(span.trace_flags));
    }
}

/// An `AnyValue`'s bytes: its one field, written even when it holds the
/// default (a oneof).
fn any_value_len(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::Str(text) => delimited_len(field::STRING_VALUE, text.len()),
        AttributeValue::Bool(_) => key_len(field::BOOL_VALUE) + 1,
        AttributeValue::Int(number) => {
            key_len(field::INT_VALUE) + encoded_len_varint(*number as u64)
        }
        AttributeValue::Float(_) => key_len(field::DOUBLE_VALUE) + 8,
    }
}

fn key_value_len(key: &str, value: &AttributeValue) -> usize {
    optional_bytes_len(field::KEY, key.as_bytes())
        + delimited_len(field::VALUE, any_value_len(value))
}

fn put_key_value(key: &str, value: &AttributeValue, buf: &mut impl BufMut) {
    put_optional_bytes(field::KEY, key.as_bytes(), buf);
    put_header(field::VALUE, any_value_len(value), buf);
    match value {
        AttributeValue::Str(text) => put_bytes(field::STRING_VALUE, text.as_bytes(), buf),
        AttributeValue::Bool(flag) => {
            encode_key(field::BOOL_VALUE, WireType::Varint, buf);
            encode_varint(u64::from(*flag), buf);
        }
        AttributeValue::Int(number) => {
            encode_key(field::INT_VALUE, WireType::Varint, buf);
            encode_varint(*number as u64, buf);
        }
        AttributeValue::Float(number) => {
            encode_key(field::DOUBLE_VALUE, WireType::SixtyFourBit, buf);
            buf.put_f64_le(*number);
        }
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

/// One OTLP attribute.
pub(crate) fn key_value(key: String, value: AttributeValue) -> KeyValue {
    let value = match value {
        AttributeValue::Str(text) => any_value::Value::StringValue(text.into_string()),
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span as ProtoSpan, Status};

    /// The request as prost structs, built the way the agent did before it
    /// wrote the bytes itself: the reference the encoder is held to.
    /// Builds the request, keeping resources and spans in arrival order.
    fn to_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
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

    /// An encoded span weighs exactly what it adds to a request: its
    /// encoded length plus its tag and length in the `ScopeSpans`.
    #[test]
    fn an_encoded_span_weighs_its_bytes_in_a_request() {
        use prost::Message;

        let mut encoder = SpanEncoder::default();
        for span in varied_spans() {
            let name = span.name.clone();
            let weight = encoder.encode(&span).len();
            let encoded = to_proto_span(span).encoded_len();
            let in_request = encoded + 1 + prost::length_delimiter_len(encoded);
            assert_eq!(weight, in_request, "{name}");
        }
    }

    fn encode_spans(spans: &[Span]) -> EncodedTraces {
        let mut encoder = SpanEncoder::default();
        let encoded: Vec<EncodedSpan> = spans.iter().map(|span| encoder.encode(span)).collect();
        encode_request(&encoded)
    }

    /// Spans that exercise every field and every default prost leaves out.
    fn varied_spans() -> Vec<Span> {
        let api = resource("pid:1:100", "api");
        let db = resource("pid:2:200", "db");
        let mut full = span(&api, "GET /api/users/{id}");
        full.kind = SpanKind::Client;
        full.parent_span_id = Some(*b"parent01");
        full.trace_flags = 0x01;
        full.trace_state = Some("vendor=value".into());
        full.attributes = vec![
            Attribute::new("http.request.method", "GET"),
            Attribute::new("url.full", "x".repeat(3000)),
            Attribute::new("empty", ""),
            Attribute::new("http.response.status_code", 503_i64),
            Attribute::new("zero", 0_i64),
            Attribute::new("negative", -7_i64),
            Attribute::new("sonde.ratio", AttributeValue::Float(0.5)),
            Attribute::new("sonde.zero", AttributeValue::Float(0.0)),
            Attribute::new("sonde.flag", AttributeValue::Bool(true)),
            Attribute::new("sonde.off", AttributeValue::Bool(false)),
        ];
        full.status = SpanStatus::Error("x".repeat(200));
        let mut bare = span(&db, "");
        bare.trace_flags = 0;
        bare.start_unix_ns = 0;
        bare.end_unix_ns = 0;
        bare.trace_state = Some(String::new());
        let mut empty_error = span(&api, "POST");
        empty_error.status = SpanStatus::Error(String::new());
        vec![
            full,
            bare,
            span(&resource("pid:1:100", "api"), "same key, other Arc"),
            empty_error,
            span(&db, "c"),
        ]
    }

    #[test]
    fn encoded_bytes_are_what_prost_writes() {
        assert!(encode_spans(&[]).bytes().is_empty());
        let spans = varied_spans();
        for count in 1..=spans.len() {
            let spans = &spans[..count];
            assert_eq!(
                &encode_spans(spans).bytes()[..],
                &to_request(spans.to_vec()).encode_to_vec()[..],
                "{count} spans"
            );
        }
    }

    /// A request read back (from the disk queue) is the same request, and
    /// bytes that are not one fail as the generated struct fails.
    #[test]
    fn encoded_request_decodes_to_itself() {
        let encoded = encode_spans(&varied_spans());
        assert_eq!(
            EncodedTraces::decode(encoded.bytes().clone()),
            Ok(encoded.clone())
        );
        let mut torn = encoded.bytes().to_vec();
        torn.truncate(torn.len() / 2);
        assert!(EncodedTraces::decode(&torn[..]).is_err());
        assert!(ExportTraceServiceRequest::decode(&torn[..]).is_err());
        // An unknown field is skipped.
        let mut extended = encoded.bytes().to_vec();
        extended.extend_from_slice(&[0x10, 0x01]);
        assert_eq!(EncodedTraces::decode(&extended[..]), Ok(encoded));
    }
}
