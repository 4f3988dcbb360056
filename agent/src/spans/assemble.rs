//! A span from a call record and what its protocol slice says about it
//! (`protocols::describe`): the protocol-neutral parts every span gets,
//! its place in the trace ([`identity`]: kernel ids, the request's own
//! `traceparent`, or a new trace, with the head sampler's decision), its
//! resource and its times.

use std::sync::Arc;

use super::trace_context::{new_span_id, new_trace_id, parse_traceparent};
use crate::{
    model::{
        call::{Call, Side},
        span::{Resource, Span, SpanId, TraceId},
    },
    protocols::SpanParts,
    sampling::HeadSampler,
};

/// The span of `call` at its place in the trace ([`identity`]).
/// `start_unix_ns`/`end_unix_ns` are the call's kernel times already
/// converted to Unix time; the end is never before the start.
pub fn assemble(
    call: &Call,
    identity: Identity,
    parts: SpanParts,
    resource: Arc<Resource>,
    start_unix_ns: u64,
    end_unix_ns: u64,
) -> Span {
    let (_, tracestate) = call.propagated();
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
pub struct Identity {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    trace_flags: u8,
    /// The trace came from the request's own `traceparent` (so its
    /// `tracestate` belongs to it too).
    joined_header: bool,
}

impl Identity {
    /// The trace is sampled: the span is to be built and exported.
    pub fn sampled(&self) -> bool {
        self.trace_flags & 1 == 1
    }

    /// The span has a parent (it joined a trace, not started one).
    pub fn has_parent(&self) -> bool {
        self.parent_span_id.is_some()
    }
}

/// The kernel's ids and sampling decision when it assigned them (they may
/// be on the wire already), overridden by the request's own `traceparent`
/// on a client request the application itself propagated (its flags are
/// what went downstream); otherwise the header, or a new trace, sampled
/// here by `sampler` as the kernel would for `service`.
pub fn identity(call: &Call, sampler: &HeadSampler, service: &str) -> Identity {
    let header = call.propagated().0.and_then(parse_traceparent);
    let from_header = |span_id| {
        header.map(|parent| Identity {
            trace_id: parent.trace_id,
            span_id,
            parent_span_id: Some(parent.span_id),
            trace_flags: match call.conn.side {
                Side::Client => parent.flags,
                Side::Server => sampler.trace_flags(service, &parent.trace_id, Some(parent.flags)),
            },
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
    .unwrap_or_else(|| {
        let trace_id = new_trace_id();
        Identity {
            trace_id,
            span_id: new_span_id(),
            parent_span_id: None,
            trace_flags: sampler.trace_flags(service, &trace_id, None),
            joined_header: false,
        }
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

    fn sampler(sampler: &str) -> HeadSampler {
        let env = |key: &str| (key == "OTEL_TRACES_SAMPLER").then(|| sampler.to_owned());
        HeadSampler::new(&Default::default(), env).unwrap().0
    }

    /// `call`'s span under the default sampler, and the span's times.
    fn span_of(call: &Call, start: u64, end: u64) -> Span {
        let identity = identity(call, &sampler("parentbased_always_on"), "svc");
        assemble(call, identity, parts(), resource("k", "svc"), start, end)
    }

    fn with_traceparent(side: Side, traceparent: &str) -> Call {
        let mut call = http_call(side, "GET", "/", Outcome::Response { status: 200 });
        if let Detail::Http(request) = &mut call.detail {
            request.traceparent = Some(traceparent.into());
        }
        call
    }

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
        let span = span_of(&call, 0, 1);
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
        let span = span_of(&call, 100, 50);
        assert_eq!(span.end_unix_ns, 100, "end never before start");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.trace_state, None);
        assert_eq!((span.kind, span.name.as_str()), (SpanKind::Server, "GET /"));
    }

    /// Where the agent makes the ids (no kernel context), it samples as the
    /// kernel would: the incoming flag under a parent-based sampler, the
    /// sampler's own decision otherwise; a client request the application
    /// propagated keeps the flags it sent.
    #[test]
    fn samples_where_the_kernel_did_not() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let decide = |name: &str, call: &Call| identity(call, &sampler(name), "svc").sampled();
        let server = |tp| with_traceparent(Side::Server, tp);
        let client = |tp| with_traceparent(Side::Client, tp);
        assert!(!decide("parentbased_always_on", &server(unsampled)));
        assert!(decide("parentbased_always_off", &server(sampled)));
        assert!(decide("always_on", &server(unsampled)));
        assert!(!decide("always_off", &server(sampled)));
        assert!(!decide("always_on", &client(unsampled)));
        let root = http_call(Side::Server, "GET", "/", Outcome::Response { status: 200 });
        assert!(decide("parentbased_always_on", &root));
        assert!(!decide("parentbased_always_off", &root));
        let flags = identity(&root, &sampler("always_on"), "svc").trace_flags;
        assert_eq!(flags, 3, "a new trace is sampled and says its id is random");
    }
}
