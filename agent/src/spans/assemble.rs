//! A span from a call record and what its protocol slice says about it
//! (`protocols::describe`): the protocol-neutral parts every span gets,
//! its place in the trace (kernel ids, the request's own `traceparent`, or
//! a new trace), its resource and its times.

use std::sync::Arc;

use super::trace_context::{new_span_id, new_trace_id, parse_traceparent};
use crate::{
    model::{
        call::{Call, Side},
        span::{Resource, Span, SpanId, TraceId},
    },
    protocols::SpanParts,
};

/// The span of `call`. `start_unix_ns`/`end_unix_ns` are the call's kernel
/// times already converted to Unix time; the end is never before the start.
pub fn assemble(
    call: &Call,
    parts: SpanParts,
    resource: Arc<Resource>,
    start_unix_ns: u64,
    end_unix_ns: u64,
) -> Span {
    let (traceparent, tracestate) = call.propagated();
    let identity = identity(call, traceparent);
    Span {
        resource,
        trace_id: identity.trace_id,
        span_id: identity.span_id,
        parent_span_id: identity.parent_span_id,
        trace_flags: identity.trace_flags,
        trace_state: tracestate
            .filter(|_| identity.joined_header)
            .map(str::to_owned),
        kind: parts.kind,
        name: parts.name,
        start_unix_ns,
        end_unix_ns: end_unix_ns.max(start_unix_ns),
        attributes: parts.attributes,
        status: parts.status,
    }
}

/// Where a span sits in its trace.
struct Identity {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    trace_flags: u8,
    /// The trace came from the request's own `traceparent` (so its
    /// `tracestate` belongs to it too).
    joined_header: bool,
}

/// The kernel's ids when it assigned them (they may be on the wire already),
/// overridden by the request's own `traceparent` on a client request the
/// application itself propagated; otherwise the header, or a new trace.
fn identity(call: &Call, traceparent: Option<&str>) -> Identity {
    let header = traceparent.and_then(parse_traceparent);
    let from_header = |span_id| {
        header.map(|parent| Identity {
            trace_id: parent.trace_id,
            span_id,
            parent_span_id: Some(parent.span_id),
            trace_flags: parent.flags,
            joined_header: true,
        })
    };
    match call.trace {
        Some(kernel) if call.conn.side == Side::Client && !kernel.injected && header.is_some() => {
            from_header(kernel.span_id)
        }
        Some(kernel) => Some(Identity {
            trace_id: kernel.trace_id,
            span_id: kernel.span_id,
            parent_span_id: kernel.parent_span_id,
            trace_flags: kernel.trace_flags,
            joined_header: kernel.from_header,
        }),
        None => from_header(new_span_id()),
    }
    .unwrap_or_else(|| Identity {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        parent_span_id: None,
        trace_flags: 1,
        joined_header: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{
            call::{Detail, Outcome},
            span::{SpanKind, SpanStatus},
        },
        test_support::{http_call, resource},
    };

    fn parts() -> SpanParts {
        SpanParts {
            kind: SpanKind::Server,
            name: "GET /".into(),
            attributes: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    #[test]
    fn incoming_traceparent_is_joined() {
        let mut call = http_call(Side::Server, "GET", "/", Outcome::Response { status: 200 });
        if let Detail::Http(request) = &mut call.detail {
            request.traceparent =
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            request.tracestate = Some("vendor=x".into());
        }
        let span = assemble(&call, parts(), resource("k", "svc"), 0, 1);
        assert_eq!(span.trace_id[0], 0x4b);
        assert_eq!(
            span.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(span.trace_state.as_deref(), Some("vendor=x"));
    }

    #[test]
    fn a_new_root_ends_no_earlier_than_it_starts() {
        let call = http_call(Side::Server, "GET", "/", Outcome::Response { status: 200 });
        let span = assemble(&call, parts(), resource("k", "svc"), 100, 50);
        assert_eq!(span.end_unix_ns, 100, "end never before start");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.trace_state, None);
        assert_eq!((span.kind, span.name.as_str()), (SpanKind::Server, "GET /"));
    }
}
