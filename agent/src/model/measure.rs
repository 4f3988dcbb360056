//! What RED metrics record of a finished call: the instrument, the typed
//! facts its series attributes come from, and the duration. A protocol
//! slice derives it from the call record (`crate::protocols`), alongside
//! the span, with the same values (`error.type`, status, route).

use std::borrow::Cow;
use std::time::Duration;

use super::span::SpanKind;

/// The four duration histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    /// `http.server.request.duration`
    HttpServer,
    /// `http.client.request.duration`
    HttpClient,
    /// `rpc.server.call.duration`
    RpcServer,
    /// `rpc.client.call.duration`
    RpcClient,
    /// `db.client.operation.duration`
    DbClient,
}

impl Instrument {
    /// Every instrument, in export order.
    pub const ALL: [Instrument; 5] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
        Instrument::DbClient,
    ];

    /// Semantic-convention name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server.request.duration",
            Self::HttpClient => "http.client.request.duration",
            Self::RpcServer => "rpc.server.call.duration",
            Self::RpcClient => "rpc.client.call.duration",
            Self::DbClient => "db.client.operation.duration",
        }
    }

    /// Description, as the conventions word it.
    pub fn description(self) -> &'static str {
        match self {
            Self::HttpServer => "Duration of HTTP server requests.",
            Self::HttpClient => "Duration of HTTP client requests.",
            Self::RpcServer => "Measures the duration of inbound remote procedure calls.",
            Self::RpcClient => "Measures the duration of outgoing remote procedure calls.",
            Self::DbClient => "Duration of database client operations.",
        }
    }

    /// Every instrument records seconds.
    pub const UNIT: &'static str = "s";
}

/// Where a client call went (`server.address`, `server.port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddress<'a> {
    /// Host name or IP the client asked for.
    pub address: Cow<'a, str>,
    /// Port.
    pub port: u16,
}

/// Protocol-specific facts of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol<'a> {
    /// HTTP.
    Http {
        /// `http.request.method`, normalized (`_OTHER` for unknown ones).
        method: &'a str,
        /// `http.route` (server side), templated: never a raw path.
        route: Option<Cow<'a, str>>,
        /// `url.scheme`.
        scheme: Option<&'a str>,
        /// `http.response.status_code`; `None` when no response came.
        status_code: Option<u16>,
    },
    /// An RPC system such as gRPC.
    Rpc {
        /// `rpc.system.name`, e.g. `grpc`.
        system: &'a str,
        /// `rpc.method`, e.g. `package.Service/Method`.
        method: Cow<'a, str>,
        /// `rpc.response.status_code` as the status name (`OK`,
        /// `DEADLINE_EXCEEDED`); `None` when no status came.
        status_code: Option<Cow<'a, str>>,
    },
    /// A database or cache client operation.
    Db {
        /// `db.system.name`.
        system: &'a str,
        /// `db.operation.name`.
        operation: Option<&'a str>,
        /// `db.collection.name`.
        collection: Option<&'a str>,
        /// `db.namespace`.
        namespace: Option<&'a str>,
        /// `db.response.status_code`.
        status_code: Option<&'a str>,
    },
}

/// One finished call, in the terms every protocol shares.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement<'a> {
    /// Server or client side.
    pub kind: SpanKind,
    /// Protocol facts.
    pub protocol: Protocol<'a>,
    /// `error.type` when the call failed (same value as on its span).
    pub error_type: Option<Cow<'a, str>>,
    /// The server a client called; ignored on the server side, where the
    /// conventions leave it off (it would multiply series by host names).
    pub server: Option<ServerAddress<'a>>,
    /// Duration of the call.
    pub duration: Duration,
}

impl Measurement<'_> {
    /// The histogram this call goes to.
    pub fn instrument(&self) -> Instrument {
        match (&self.protocol, self.kind) {
            (Protocol::Http { .. }, SpanKind::Server) => Instrument::HttpServer,
            (Protocol::Http { .. }, SpanKind::Client) => Instrument::HttpClient,
            (Protocol::Rpc { .. }, SpanKind::Server) => Instrument::RpcServer,
            (Protocol::Rpc { .. }, SpanKind::Client) => Instrument::RpcClient,
            // Database calls are client calls only.
            (Protocol::Db { .. }, _) => Instrument::DbClient,
        }
    }

    /// The series attributes, in a fixed order, owned (as tests compare
    /// them).
    #[cfg(test)]
    pub(crate) fn attributes(&self) -> Vec<(&'static str, LabelValue)> {
        self.labels()
            .as_slice()
            .iter()
            .map(|&(key, value)| (key, value.to_value()))
            .collect()
    }

    /// The series attributes, in a fixed order, borrowed from the call:
    /// what recording looks a series up by, allocating nothing.
    pub(crate) fn labels(&self) -> Labels<'_> {
        let mut labels = Labels::default();
        let mut push = |key, value| labels.push(key, value);
        match &self.protocol {
            Protocol::Http {
                method,
                route,
                scheme,
                status_code,
            } => {
                push("http.request.method", Some(LabelRef::Str(method)));
                push("http.route", route.as_deref().map(LabelRef::Str));
                push(
                    "http.response.status_code",
                    status_code.map(|code| LabelRef::Int(code.into())),
                );
                push("url.scheme", scheme.map(LabelRef::Str));
            }
            Protocol::Rpc {
                system,
                method,
                status_code,
            } => {
                push("rpc.system.name", Some(LabelRef::Str(system)));
                push("rpc.method", Some(LabelRef::Str(method)));
                push(
                    "rpc.response.status_code",
                    status_code.as_deref().map(LabelRef::Str),
                );
            }
            Protocol::Db {
                system,
                operation,
                collection,
                namespace,
                status_code,
            } => {
                push("db.system.name", Some(LabelRef::Str(system)));
                push("db.operation.name", operation.map(LabelRef::Str));
                push("db.collection.name", collection.map(LabelRef::Str));
                push("db.namespace", namespace.map(LabelRef::Str));
                push("db.response.status_code", status_code.map(LabelRef::Str));
            }
        }
        push("error.type", self.error_type.as_deref().map(LabelRef::Str));
        if self.kind == SpanKind::Client
            && let Some(server) = &self.server
        {
            push("server.address", Some(LabelRef::Str(&server.address)));
            push("server.port", Some(LabelRef::Int(server.port.into())));
        }
        labels
    }
}

/// Most attributes a series has: a database call's five, `error.type`
/// and the server's address and port.
const MAX_LABELS: usize = 8;

/// A measurement's series attributes, borrowed, without a heap allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Labels<'a> {
    items: [(&'static str, LabelRef<'a>); MAX_LABELS],
    len: usize,
}

impl Default for Labels<'_> {
    fn default() -> Self {
        Self {
            items: [("", LabelRef::Bool(false)); MAX_LABELS],
            len: 0,
        }
    }
}

impl<'a> Labels<'a> {
    /// Adds the attribute if it has a value.
    fn push(&mut self, key: &'static str, value: Option<LabelRef<'a>>) {
        if let Some(value) = value {
            // `labels` pushes at most `MAX_LABELS`; a slot past them would
            // be a bug there, not data to lose quietly.
            self.items[self.len] = (key, value);
            self.len += 1;
        }
    }

    /// The attributes, in order.
    pub(crate) fn as_slice(&self) -> &[(&'static str, LabelRef<'a>)] {
        &self.items[..self.len]
    }
}

/// A metric attribute value borrowed from a measurement: hashes and
/// compares like the [`LabelValue`] it becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LabelRef<'a> {
    /// String.
    Str(&'a str),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
}

impl LabelRef<'_> {
    /// The owned value.
    pub(crate) fn to_value(self) -> LabelValue {
        match self {
            Self::Str(text) => LabelValue::Str(text.into()),
            Self::Int(number) => LabelValue::Int(number),
            Self::Bool(flag) => LabelValue::Bool(flag),
        }
    }
}

/// A metric attribute value (hashable, unlike span attribute values).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LabelValue {
    /// String.
    Str(Box<str>),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
}

impl LabelValue {
    /// The borrowed form, as measurements give it.
    pub(crate) fn borrowed(&self) -> LabelRef<'_> {
        match self {
            Self::Str(text) => LabelRef::Str(text),
            Self::Int(number) => LabelRef::Int(*number),
            Self::Bool(flag) => LabelRef::Bool(*flag),
        }
    }
}

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        Self::Str(value.into())
    }
}

impl std::fmt::Display for LabelValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(text) => f.write_str(text),
            Self::Int(number) => write!(f, "{number}"),
            Self::Bool(flag) => write!(f, "{flag}"),
        }
    }
}
