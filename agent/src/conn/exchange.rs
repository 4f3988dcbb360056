//! What the connection tracker hands to span building: one request and its
//! response (or what became of it), protocol-neutral enough that HTTP/2 and
//! gRPC can produce the same record.

use std::net::SocketAddr;

use crate::probes::decode::KernelTrace;

/// The process's side of the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The process sent the request.
    Client,
    /// The process received the request.
    Server,
}

/// Connection the exchange happened on.
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
    /// The exchange was read as TLS plaintext (`url.scheme` `https`).
    pub tls: bool,
}

/// HTTP protocol version of an exchange.
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
    pub method: String,
    /// Request target as sent: origin form (`/a?b`) or absolute form.
    /// Empty when it could not be decoded (an HTTP/2 `:path` that refers to
    /// header-table entries the agent did not see).
    pub target: String,
    /// Protocol version.
    pub version: HttpVersion,
    /// `Host` header (or `:authority`).
    pub host: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// `traceparent` header, raw.
    pub traceparent: Option<String>,
    /// `tracestate` header, raw.
    pub tracestate: Option<String>,
}

/// How the exchange ended.
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
}

/// One request/response pair. Times are CLOCK_MONOTONIC nanoseconds from
/// the kernel: `start_ns` when the first request byte moved, `end_ns` when
/// the last response byte seen moved (or the close/timeout time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// Connection.
    pub conn: ConnInfo,
    /// Request.
    pub request: RequestInfo,
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
    /// gRPC facts, when the exchange was a gRPC call.
    pub rpc: Option<RpcInfo>,
}

/// A gRPC call (HTTP/2, `content-type: application/grpc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcInfo {
    /// `package.Service` and `Method` from `:path`; `None` when the path
    /// could not be decoded or is not of that form.
    pub method: Option<RpcMethod>,
    /// gRPC status code: `grpc-status` from the trailers (or a
    /// trailers-only response), or, for a reset stream, the code its client
    /// reports ([`crate::protocols::grpc::status_for_reset`]: `CANCELLED`,
    /// `DEADLINE_EXCEEDED` once its `grpc-timeout` had passed,
    /// `UNAVAILABLE` for a refused stream...). `None` when neither was
    /// seen. Names: [`crate::protocols::grpc::status_name`].
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
