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
    /// HTTP/2: a `traceparent` field was added to a request's HEADERS.
    pub const H2_INJECTED: u32 = 6;
    /// HTTP/2, skipped: the header block goes on in CONTINUATION frames.
    pub const H2_CONTINUATION: u32 = 7;
    /// HTTP/2, skipped: the HEADERS frame is padded.
    pub const H2_PADDED: u32 = 8;
    /// HTTP/2, skipped: the HEADERS frame is not whole in one send.
    pub const H2_SPLIT: u32 = 9;
    /// HTTP/2, skipped: the frame would outgrow the smallest maximum
    /// frame size a peer may set (16 KiB).
    pub const H2_TOO_BIG: u32 = 10;
    /// HTTP/2, skipped: the connection's requests may carry their own
    /// `traceparent` (its name went by in a header block, or a request's
    /// header block could not be read).
    pub const H2_OWN_CONTEXT: u32 = 11;
    /// HTTP/2, failed: pulling or pushing message data, or reporting the
    /// ids, failed (the frame was sent unchanged).
    pub const H2_FAILED: u32 = 12;
    /// HTTP/2: where the connection's frames start was lost (a frame
    /// header split oddly, or more frames in one send than the walk
    /// follows): nothing more is injected on it.
    pub const H2_LOST: u32 = 13;
    /// HTTP/2: the program that rewrites HTTP/2 could not be loaded, so
    /// the message went unchanged.
    pub const H2_UNAVAILABLE: u32 = 14;
    /// Number of counters.
    pub const COUNT: u32 = 15;
}

/// Ids the kernel added as a `traceparent` to an outgoing HTTP/2
/// request (`EventKind::Http2Injected`), sent before the data event of the
/// same send so the agent's client span carries the ids that went out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2InjectedEvent {
    /// Kind `Http2Injected`.
    pub header: crate::EventHeader,
    /// The connection's addresses (sk_msg programs cannot read the
    /// socket cookie).
    pub tuple: crate::socket_data::ConnTuple,
    /// The request's stream.
    pub stream_id: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The client span's identity, as written (`CTX_INJECTED` set).
    pub trace: TraceContext,
}

/// The HPACK field `probes::inject_h2` appends to a request's header
/// block: a literal field without indexing and with a new name
/// (RFC 7541 §6.2.2: first byte 0, no Huffman coding), so no peer's
/// dynamic table changes, followed by the 55-character value.
pub mod h2_field {
    /// Bytes before the value: the representation byte, the name's
    /// length and the name, the value's length.
    pub const PREFIX: [u8; 14] = *b"\x00\x0btraceparent\x37";
    /// Whole field: prefix and the 55-character value.
    pub const LEN: usize = PREFIX.len() + 55;
    /// The name `traceparent` as an HPACK string literal, plain: its
    /// length (11) and its bytes. How an application's own first
    /// `traceparent` on a connection names it, if not Huffman-coded.
    pub const NAME_PLAIN: [u8; 12] = *b"\x0btraceparent";
    /// The same, Huffman-coded (RFC 7541 Appendix B): `H` and length 8,
    /// then the code.
    pub const NAME_HUFFMAN: [u8; 9] = [0x88, 0x4d, 0x83, 0x21, 0x6b, 0x1d, 0x85, 0xa9, 0x3f];
}
