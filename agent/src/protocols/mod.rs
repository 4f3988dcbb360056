//! Protocol slices: each application protocol in one folder that detects
//! it, parses it, keeps its per-connection state and turns each finished
//! call into a typed record ([`Call`]), and says what span and measurement
//! that record gives.
//!
//! How a slice plugs in:
//! - **Detection**: a [`Detector`] looks at a connection's first payload
//!   (and the side the kernel saw, if any) and, if the bytes are its
//!   protocol, returns the connection's state. [`DETECTORS`] lists them in
//!   the order they are asked; the connection tracker (`crate::conn`) asks
//!   them and owns nothing protocol-specific.
//! - **Per-connection state**: a [`ProtocolConn`] reads every later event
//!   of its connection and pushes finished calls into [`Ctx::out`].
//! - **Parsing**: a pure module (`parse.rs`: bytes in, typed result out, no
//!   I/O, no state) tested on recorded bytes under `agent/tests/fixtures/`.
//! - **Call record**: [`Call`] with the protocol's facts in a
//!   [`Detail`] variant (types on the floor, `crate::model::call`).
//! - **Span and metric**: [`describe`] maps a record to the span's name,
//!   attributes and status and to the RED measurement, both from the same
//!   typed facts; the span stage adds identity, resource and times.
//!
//! A new protocol is a new folder here, a line in [`DETECTORS`], its
//! [`Detail`] variant and its arm in [`describe`].
//!
//! HTTP/1 ([`http1`]) and HTTP/2 ([`http2`]) are wire slices; both give
//! HTTP calls, described by [`http`]. gRPC ([`grpc`]) rides on HTTP/2: the
//! HTTP/2 slice recognises it by content type and records a gRPC call.

pub mod db;
pub mod grpc;
pub mod http;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;

use std::{fmt::Debug, net::SocketAddr, sync::Arc};

use compact_str::CompactString;

use crate::{
    model::{
        call::{Call, Detail, KernelTrace, Outcome, Side},
        measure::Measurement,
        route::Routes,
        span::{Attribute, AttributeValue, SpanKind, SpanStatus},
    },
    probes::decode::{Direction, SocketData},
    telemetry::{Counter, Stats},
};

/// Bounds and timeouts of connection tracking: the table's, and those each
/// slice applies to its own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Connections tracked at once (at least one); the least recently used
    /// is evicted to make room.
    pub max_connections: usize,
    /// A connection without traffic for this many nanoseconds is dropped on
    /// the tracker's tick, its unanswered requests abandoned.
    pub idle_timeout_ns: u64,
    /// Requests waiting for a response on one connection (at least one);
    /// the oldest is abandoned to make room.
    pub max_pending_requests: usize,
    /// Bytes buffered for a head split over syscalls.
    pub max_head_bytes: usize,
    /// Events with payload a connection of unknown role may carry before
    /// one looks like a protocol: it may have been caught mid-message, so
    /// its first bytes do not decide.
    pub unknown_role_probe_events: u32,
    /// Open HTTP/2 streams on one connection (at least one); the oldest is
    /// abandoned to make room.
    pub max_streams_per_connection: usize,
    /// Memory for each HPACK dynamic table (RFC 7541 entry sizes); a peer
    /// that uses more gets unknown fields, never wrong ones.
    pub max_header_table_bytes: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            idle_timeout_ns: 300 * 1_000_000_000,
            max_pending_requests: 32,
            max_head_bytes: 16 * 1024,
            unknown_role_probe_events: 8,
            max_streams_per_connection: 4096,
            max_header_table_bytes: http2::hpack::DEFAULT_TABLE_SIZE,
        }
    }
}

/// What the tracker lends a connection while it reads an event.
pub struct Ctx<'a> {
    /// Bounds.
    pub config: &'a TrackerConfig,
    /// Where losses are counted.
    pub stats: &'a Stats,
    /// Huffman decoding table shared by every HTTP/2 connection's HPACK
    /// decoders (built once: it is the largest part of a decoder).
    pub huffman: &'a mut http2::hpack::Huffman,
    /// Calls finished by the event.
    pub out: &'a mut Vec<Call>,
    /// Ids the kernel injected into HTTP/2 requests.
    pub injection: &'a mut Injection,
}

/// The ids the kernel wrote into outgoing HTTP/2 requests, reported just
/// before the send's data: each waits here only until its connection
/// reads that data. Keyed by the connection's addresses (the kernel's
/// sk_msg programs cannot read socket cookies).
#[derive(Debug, Default)]
pub struct Injection {
    /// Waiting ids by connection: `(stream id, ids)`.
    pending: hashbrown::HashMap<(SocketAddr, SocketAddr), Vec<(u32, KernelTrace)>>,
}

impl Injection {
    /// Ids waiting per connection at most: more means their data never
    /// came (lost), and the oldest go, counted. One send may carry
    /// hundreds of requests (grpcio batches them).
    const MAX_PENDING: usize = 1024;
    /// Connections with ids waiting at most; past it all are dropped,
    /// counted (ids whose data never came: connections not followed).
    const MAX_CONNECTIONS: usize = 16_384;

    /// The kernel wrote `trace` into the request on `stream` of the
    /// connection from `local` to `remote`.
    pub fn insert(
        &mut self,
        conn: (SocketAddr, SocketAddr),
        stream: u32,
        trace: KernelTrace,
        stats: &Stats,
    ) {
        if self.pending.len() >= Self::MAX_CONNECTIONS && !self.pending.contains_key(&conn) {
            let dropped: usize = self.pending.values().map(Vec::len).sum();
            stats.add(Counter::TraceparentH2IdsUnmatched, dropped as u64);
            self.pending.clear();
        }
        let pending = self.pending.entry(conn).or_default();
        if pending.len() >= Self::MAX_PENDING {
            pending.remove(0);
            stats.add(Counter::TraceparentH2IdsUnmatched, 1);
        }
        pending.push((stream, trace));
    }

    /// The ids written into the request on `stream` of `conn`, if any:
    /// the latest such, as an earlier connection between the same
    /// addresses may have left some unclaimed (its data lost).
    pub fn take(&mut self, conn: (SocketAddr, SocketAddr), stream: u32) -> Option<KernelTrace> {
        let pending = self.pending.get_mut(&conn)?;
        let at = pending.iter().rposition(|&(id, _)| id == stream)?;
        let (_, trace) = pending.remove(at);
        if pending.is_empty() {
            self.pending.remove(&conn);
        }
        Some(trace)
    }
}

/// When and by which thread bytes moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Span identity the kernel gave the request this call started, if any.
    pub trace: Option<KernelTrace>,
}

/// The bytes one syscall moved in one direction.
pub struct Segment<'a> {
    /// The captured prefix.
    pub payload: &'a [u8],
    /// Bytes moved in all.
    pub len: u64,
    /// When.
    pub at: Stamp,
}

/// What became of a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading it.
    Continue,
    /// It no longer carries the protocol (a tunnel, or it turned out not to
    /// be the protocol): everything in flight was ended, ignore the rest.
    Stop,
    /// It switched to another protocol this agent reads (HTTP/1.1 to h2c by
    /// `Upgrade`): [`ProtocolConn::take_successor`] follows it from here.
    Switch,
}

/// One connection's state, owned by the protocol that claimed it.
pub trait ProtocolConn: Debug + Send {
    /// Reads one syscall's bytes; finished calls go to `ctx.out`.
    fn on_data(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) -> Flow;

    /// Ends everything in flight: the connection closed
    /// ([`Outcome::ConnectionClosed`]) or was dropped
    /// ([`Outcome::Abandoned`], counted by the slice).
    fn finish(&mut self, unanswered: &Outcome, at_ns: u64, ctx: &mut Ctx<'_>);

    /// The kernel must copy every byte of the connection, not only the
    /// start of each write (HTTP/2 frame headers sit anywhere in a write).
    fn needs_all_bytes(&self) -> bool {
        false
    }

    /// After [`Flow::Switch`]: the state of the protocol the connection
    /// switched to, which already read the rest of the event.
    fn take_successor(&mut self) -> Option<Box<dyn ProtocolConn>> {
        None
    }
}

/// Claims a connection from its first payload. `side` is the process's
/// side when the kernel saw the connection set up (these are then its very
/// first bytes), `None` when it was caught mid-way.
pub type Detector = fn(&SocketData, Option<Side>, &TrackerConfig) -> Option<Box<dyn ProtocolConn>>;

/// Detectors in the order they are asked; the first to claim the bytes
/// wins. The HTTP/2 preface reads as an HTTP/1 request line, so it is
/// asked first; HTTP/2 frames found mid-connection are the weakest sign,
/// so they come last.
pub const DETECTORS: &[Detector] = &[
    http2::detect_preface,
    http1::detect,
    redis::detect,
    postgres::detect,
    memcached::detect,
    mysql::detect,
    http2::detect_frames,
];

/// The state of the protocol the first payload shows, if any detector
/// claims it.
pub fn detect(
    ev: &SocketData,
    side: Option<Side>,
    config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    DETECTORS.iter().find_map(|detect| detect(ev, side, config))
}

/// Which way requests go for a side.
pub fn request_direction(side: Side) -> Direction {
    match side {
        Side::Client => Direction::Egress,
        Side::Server => Direction::Ingress,
    }
}

/// Span options users can set.
#[derive(Clone, Debug)]
pub struct DescribeOptions {
    /// Record `url.query` (off by default: queries often carry secrets).
    pub capture_query: bool,
    /// Route patterns, heuristic and ignored paths.
    pub routes: Arc<Routes>,
    /// Which gRPC attribute names to emit.
    pub rpc_conventions: grpc::RpcConventions,
    /// Record `db.query.text` (sanitized) on database spans.
    pub db_query_text: bool,
}

impl Default for DescribeOptions {
    fn default() -> Self {
        Self {
            capture_query: false,
            routes: Arc::default(),
            rpc_conventions: grpc::RpcConventions::default(),
            db_query_text: true,
        }
    }
}

/// What a span says about its call; the span stage adds identity, resource
/// and times.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanParts {
    /// Server or client.
    pub kind: SpanKind,
    /// Name per the semantic conventions (never a raw path).
    pub name: String,
    /// Attributes.
    pub attributes: Vec<Attribute>,
    /// Status.
    pub status: SpanStatus,
}

impl SpanParts {
    /// The attribute with that key, if present.
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }
}

/// A call's span and measurement, derived together from its record.
#[derive(Clone, Debug, PartialEq)]
pub struct Description<'a> {
    /// The span's protocol part, when it was asked for.
    pub span: Option<SpanParts>,
    /// What RED metrics record.
    pub measurement: Measurement<'a>,
}

/// Describes a call; `None` when it should give neither span nor metric (an
/// ignored path). The span part is built only `with_span`: every call is
/// measured, but most calls of a sampled-down service give no span, and
/// its attributes cost more than the measurement.
pub fn describe<'a>(
    call: &'a Call,
    options: &'a DescribeOptions,
    with_span: bool,
) -> Option<Description<'a>> {
    match &call.detail {
        Detail::Http(request) => http::describe(call, request, options, with_span),
        Detail::Grpc { request, rpc } => Some(grpc::describe(
            call,
            request,
            rpc,
            options.rpc_conventions,
            with_span,
        )),
        Detail::Db(db) => Some(db::describe(call, db, options, with_span)),
    }
}

/// Text of a header value or request target, invalid UTF-8 replaced (the
/// bytes are the peer's: anything may come). Checked whole first:
/// `CompactString::from_utf8_lossy` pushes one character at a time, 5% of
/// the agent's CPU at nginx saturation, for values that are nearly always
/// valid.
pub fn lossy_text(bytes: &[u8]) -> CompactString {
    match std::str::from_utf8(bytes) {
        Ok(text) => CompactString::new(text),
        Err(_) => CompactString::from_utf8_lossy(bytes),
    }
}

/// The span kind of a side.
pub fn span_kind(side: Side) -> SpanKind {
    match side {
        Side::Server => SpanKind::Server,
        Side::Client => SpanKind::Client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_text_keeps_valid_text_and_replaces_invalid_bytes() {
        assert_eq!(lossy_text(b"/api/v1?q=caf\xc3\xa9"), "/api/v1?q=caf\u{e9}");
        assert_eq!(lossy_text(b""), "");
        assert_eq!(lossy_text(b"a\xffb\xc3"), "a\u{fffd}b\u{fffd}");
        let long = "x".repeat(300);
        assert_eq!(lossy_text(long.as_bytes()), long);
    }

    fn ids(span: u8) -> KernelTrace {
        KernelTrace {
            trace_id: [1; 16],
            span_id: [span; 8],
            parent_span_id: None,
            trace_flags: 1,
            injected: true,
            from_header: false,
            ambiguous: false,
            update: false,
        }
    }

    /// A stream's ids are claimed once; the latest win over ones an
    /// earlier connection between the same addresses left unclaimed; ids
    /// whose data never came are dropped past the bound, counted.
    #[test]
    fn injected_ids_are_claimed_by_stream_latest_first() {
        let stats = Stats::default();
        let conn = (
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:50051".parse().unwrap(),
        );
        let mut injection = Injection::default();
        injection.insert(conn, 1, ids(1), &stats);
        injection.insert(conn, 1, ids(2), &stats);
        injection.insert(conn, 3, ids(3), &stats);
        assert_eq!(injection.take(conn, 1), Some(ids(2)));
        assert_eq!(injection.take(conn, 3), Some(ids(3)));
        assert_eq!(injection.take(conn, 3), None);
        assert_eq!(injection.take(conn, 5), None);
        for stream in 0..=Injection::MAX_PENDING as u32 {
            injection.insert(conn, stream * 2 + 101, ids(4), &stats);
        }
        assert_eq!(stats.get(Counter::TraceparentH2IdsUnmatched), 2);
        assert_eq!(injection.take(conn, 101), None, "the oldest went");
        assert_eq!(injection.take(conn, 103), Some(ids(4)));
    }
}
