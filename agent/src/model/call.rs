//! The call record: what a protocol slice hands to span building and
//! metrics. One request and its response (or what became of it): the parts
//! every protocol shares (connection, side, times, threads, kernel trace
//! context, outcome) plus the protocol's own typed facts in [`Detail`].
//! Spans and RED metrics are both derived from it, never from each other.

use std::net::SocketAddr;

use compact_str::CompactString;

/// Span identity the kernel assigned to a request it saw start (and may
/// have written on the wire as a `traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTrace {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The request's span id.
    pub span_id: [u8; 8],
    /// Parent span id: the caller's (from `traceparent`) for a server
    /// request, the serving thread's server span for a client request.
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags.
    pub trace_flags: u8,
    /// The ids were injected into the request on the wire.
    pub injected: bool,
    /// The trace id and parent came from the request's own `traceparent`.
    pub from_header: bool,
    /// A client request left without a parent because its thread had
    /// several server requests in flight (counted by the kernel in
    /// `sonde_links_ambiguous`).
    pub ambiguous: bool,
    /// Not a request start: the rest of a head brought the `traceparent`,
    /// and this replaces the trace id and parent of the request whose span
    /// id is `span_id`.
    pub update: bool,
}

/// The process's side of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The process sent the request.
    Client,
    /// The process received the request.
    Server,
}

/// Connection the call happened on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Process id.
    pub pid: u32,
    /// Kernel socket cookie.
    pub socket_cookie: u64,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Client or server.
    pub side: Side,
    /// The call was read as TLS plaintext (`url.scheme` `https`).
    pub tls: bool,
}

/// HTTP protocol version of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
    /// HTTP/2
    Http2,
}

impl HttpVersion {
    /// `network.protocol.version` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "1.0",
            Self::Http11 => "1.1",
            Self::Http2 => "2",
        }
    }
}

/// The parts of a request the agent keeps. Never bodies, never
/// `Authorization`/`Cookie` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Method as sent (e.g. `GET`); may be a non-standard token.
    pub method: CompactString,
    /// Request target as sent: origin form (`/a?b`) or absolute form.
    /// Empty when it could not be decoded (an HTTP/2 `:path` that refers to
    /// header-table entries the agent did not see).
    pub target: CompactString,
    /// Protocol version.
    pub version: HttpVersion,
    /// `Host` header (or `:authority`).
    pub host: Option<CompactString>,
    /// `User-Agent` header.
    pub user_agent: Option<CompactString>,
    /// `traceparent` header, raw.
    pub traceparent: Option<CompactString>,
    /// `tracestate` header, raw.
    pub tracestate: Option<CompactString>,
}

/// How the call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A final response was seen.
    Response {
        /// HTTP status code.
        status: u16,
    },
    /// The connection closed before a final response.
    ConnectionClosed,
    /// The HTTP/2 stream was reset (RST_STREAM, or refused by GOAWAY)
    /// before a final response.
    Reset {
        /// HTTP/2 error code, if it was captured.
        code: Option<u32>,
    },
    /// The tracker gave up waiting (idle timeout or eviction).
    Abandoned,
    /// A database or cache server answered without an error.
    Succeeded,
    /// A database or cache server answered with an error.
    Failed {
        /// Its code (`db.response.status_code`): SQLSTATE, MySQL error
        /// number, Redis error prefix...
        code: Option<String>,
    },
}

/// One finished call. Times are CLOCK_MONOTONIC nanoseconds from
/// the kernel: `start_ns` when the first request byte moved, `end_ns` when
/// the last response byte seen moved (or the close/timeout time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// Connection.
    pub conn: ConnInfo,
    /// What the protocol says about the call.
    pub detail: Detail,
    /// Response or failure.
    pub outcome: Outcome,
    /// Start, monotonic ns.
    pub start_ns: u64,
    /// End, monotonic ns.
    pub end_ns: u64,
    /// Thread that moved the first request bytes (in-process context links).
    pub request_tid: u32,
    /// Thread that moved the last response bytes, if any.
    pub response_tid: Option<u32>,
    /// Span identity the kernel assigned (HTTP/1 request starts it saw).
    pub trace: Option<KernelTrace>,
}

impl Call {
    /// Duration in nanoseconds (0 if the end came before the start).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// The W3C `traceparent` and `tracestate` the request carried, raw.
    pub fn propagated(&self) -> (Option<&str>, Option<&str>) {
        match &self.detail {
            Detail::Http(request) | Detail::Grpc { request, .. } => (
                request.traceparent.as_deref(),
                request.tracestate.as_deref(),
            ),
            Detail::Db(_) => (None, None),
        }
    }
}

/// The protocol's own facts about a call: one variant per protocol slice
/// (`crate::protocols`), which also says how it becomes a span and a
/// measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// A database or cache call.
    Db(super::db::DbCall),
    /// An HTTP request, over HTTP/1.x or HTTP/2.
    Http(RequestInfo),
    /// A gRPC call: its HTTP/2 request and the RPC facts.
    Grpc {
        /// The HTTP/2 request that carried the call.
        request: RequestInfo,
        /// Method and status.
        rpc: RpcInfo,
    },
}

impl Detail {
    /// The HTTP request, for HTTP and gRPC calls.
    pub fn http_request(&self) -> Option<&RequestInfo> {
        match self {
            Self::Http(request) | Self::Grpc { request, .. } => Some(request),
            Self::Db(_) => None,
        }
    }

    /// The RPC facts of a gRPC call.
    pub fn rpc(&self) -> Option<&RpcInfo> {
        match self {
            Self::Grpc { rpc, .. } => Some(rpc),
            Self::Http(_) | Self::Db(_) => None,
        }
    }
}

/// A gRPC call (HTTP/2, `content-type: application/grpc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcInfo {
    /// `package.Service` and `Method` from `:path`; `None` when the path
    /// could not be decoded or is not of that form.
    pub method: Option<RpcMethod>,
    /// gRPC status code: `grpc-status` from the trailers (or a
    /// trailers-only response), or, for a reset stream, the code its client
    /// reports (`protocols::grpc::status_for_reset`: `CANCELLED`,
    /// `DEADLINE_EXCEEDED` once its `grpc-timeout` had passed,
    /// `UNAVAILABLE` for a refused stream...). `None` when neither was
    /// seen. Names: `protocols::grpc::status_name`.
    pub status_code: Option<u32>,
}

/// A gRPC method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcMethod {
    /// `package.Service`.
    pub service: String,
    /// `Method`.
    pub method: String,
}

impl RpcMethod {
    /// `package.Service/Method`: `rpc.method` and the span name.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }
}
