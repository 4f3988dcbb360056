//! Resources and spans for unit tests: one place that knows how to fill
//! them.

use std::sync::Arc;

use crate::spans::model::{AttributeValue, Resource, Span, SpanKind, SpanStatus};

/// A process resource with `service.name` first, then `process.pid`.
pub(crate) fn resource(key: &str, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: key.to_owned(),
        service_name: service.to_owned(),
        attributes: vec![
            ("service.name".to_owned(), AttributeValue::from(service)),
            ("process.pid".to_owned(), AttributeValue::Int(42)),
        ],
    })
}

/// A sampled root SERVER span of 12.345678 ms with the W3C example ids.
pub(crate) fn span(resource: &Arc<Resource>, name: &str) -> Span {
    Span {
        resource: Arc::clone(resource),
        trace_id: [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ],
        span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        kind: SpanKind::Server,
        name: name.to_owned(),
        start_unix_ns: 1_000_000_000,
        end_unix_ns: 1_012_345_678,
        attributes: Vec::new(),
        status: SpanStatus::Unset,
    }
}
