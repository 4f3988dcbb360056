//! W3C trace context as the kernel assigns it, mirrored by
//! `agent-ebpf/src/context.rs` and `probes/inject.rs`.
//!
//! The kernel owns span identity for HTTP/1 requests: it gives a server
//! request its span id when the request arrives (joining an incoming
//! `traceparent` it finds in the captured head), remembers it per thread
//! while the request is served, and gives each outgoing request a client
//! span id whose parent is that server span. The same ids are injected into
//! outgoing requests, so the next service's span is a child of ours.

/// `flags`: the context is set.
pub const CTX_VALID: u32 = 1;
/// `flags`: `parent_span_id` is set (from a header or the serving thread).
pub const CTX_HAS_PARENT: u32 = 2;
/// `flags`: the ids were injected into the request as a `traceparent`.
pub const CTX_INJECTED: u32 = 4;
/// `flags`: the trace id and parent came from the request's own `traceparent`.
pub const CTX_FROM_HEADER: u32 = 8;

/// `flags`: a later read of the request's head brought its `traceparent`:
/// this replaces the trace id and parent reported for the same span id.
pub const CTX_UPDATE: u32 = 16;

/// `flags`: a client request sent while its thread had more than one
/// server request in flight: which one caused it is unknown, so it has no
/// parent (a new trace) rather than a guessed one.
pub const CTX_AMBIGUOUS: u32 = 32;

/// Span identity attached to the first event of a request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceContext {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// This request's span id.
    pub span_id: [u8; 8],
    /// Parent span id (zero if none).
    pub parent_span_id: [u8; 8],
    /// `CTX_*` bits.
    pub flags: u32,
    /// W3C trace flags (bit 0: sampled).
    pub trace_flags: u32,
}

/// An injection attempt's outcome, counted in the `INJECT_STATS` array,
/// next to the other trace context counters.
pub mod inject {
    /// A `traceparent` was inserted.
    pub const INJECTED: u32 = 0;
    /// Skipped: the request already had a `traceparent`.
    pub const ALREADY_PRESENT: u32 = 1;
    /// Skipped: the head did not fit in what the program can inspect.
    pub const HEAD_TOO_LONG: u32 = 2;
    /// Skipped: the message does not start with an HTTP/1 request line.
    pub const NOT_A_REQUEST: u32 = 3;
    /// Failed: pulling or pushing message data failed.
    pub const FAILED: u32 = 4;
    /// Not an injection outcome: client requests left without a parent
    /// because their thread had several server requests in flight
    /// (`CTX_AMBIGUOUS`), injected or not.
    pub const AMBIGUOUS_PARENT: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}
