//! HTTP spans from exchanges, per the OpenTelemetry HTTP semantic
//! conventions (stable, v1.26+): names, attributes and status rules.
//! Server spans carry `http.route` from the route patterns or heuristic
//! (`metrics::route`) and are named `{method} {route}`.

use std::{net::SocketAddr, sync::Arc};

use super::{
    model::{Attribute, Resource, Span, SpanKind, SpanStatus},
    trace_context::{new_span_id, new_trace_id, parse_traceparent},
};
use crate::conn::exchange::{HttpExchange, Outcome, Side};
use crate::metrics::route::Routes;
use crate::protocols::http2;

/// Methods the conventions know; anything else is reported as `_OTHER`.
const KNOWN_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Span options users can set.
#[derive(Clone, Debug, Default)]
pub struct HttpSpanOptions {
    /// Record `url.query` (off by default: queries often carry secrets).
    pub capture_query: bool,
    /// Route patterns, heuristic and ignored paths.
    pub routes: Arc<Routes>,
    /// Which gRPC attribute names to emit.
    pub rpc_conventions: super::grpc::RpcConventions,
}

/// Builds the span for one exchange, `None` if its path is ignored.
/// `start_unix_ns`/`end_unix_ns` are the exchange's kernel times already
/// converted to Unix time.
pub fn build_span(
    exchange: &HttpExchange,
    resource: Arc<Resource>,
    start_unix_ns: u64,
    end_unix_ns: u64,
    options: &HttpSpanOptions,
) -> Option<Span> {
    if let Some(rpc) = &exchange.rpc {
        return Some(super::grpc::build_span(
            exchange,
            rpc,
            resource,
            start_unix_ns,
            end_unix_ns,
            options.rpc_conventions,
        ));
    }
    let request = &exchange.request;
    let (method, original_method) = normalize_method(&request.method);
    let (path, query) = split_target(&request.target);
    // An HTTP/2 `:path` that could not be decoded: no path is made up.
    let path_known = !request.target.is_empty();
    if path_known && options.routes.is_ignored(path) {
        return None;
    }
    let kind = match exchange.conn.side {
        Side::Server => SpanKind::Server,
        Side::Client => SpanKind::Client,
    };
    let mut attributes = vec![Attribute::new("http.request.method", method)];
    if let Some(original) = original_method {
        attributes.push(Attribute::new("http.request.method_original", original));
    }
    let (host, port) = authority(
        request.host.as_deref(),
        match kind {
            SpanKind::Server => exchange.conn.local,
            SpanKind::Client => exchange.conn.remote,
        },
    );
    let peer = exchange.conn.remote;
    let (scheme, default_port) = if exchange.conn.tls {
        ("https", 443)
    } else {
        ("http", 80)
    };
    // The conventions give clients no route (a client cannot know the
    // server's routing).
    let route = (kind == SpanKind::Server && path_known).then(|| options.routes.route(path));
    match kind {
        SpanKind::Server => {
            if path_known {
                attributes.push(Attribute::new("url.path", path));
            }
            if let Some(route) = &route {
                attributes.push(Attribute::new("http.route", route.as_ref()));
            }
            if options.capture_query
                && let Some(query) = query
            {
                attributes.push(Attribute::new("url.query", query));
            }
            attributes.push(Attribute::new("url.scheme", scheme));
            attributes.push(Attribute::new("client.address", peer.ip().to_string()));
        }
        SpanKind::Client if path_known => {
            let shown_port = if port == default_port {
                String::new()
            } else {
                format!(":{port}")
            };
            let shown_query = match (options.capture_query, query) {
                (true, Some(query)) => format!("?{query}"),
                _ => String::new(),
            };
            attributes.push(Attribute::new(
                "url.full",
                format!("{scheme}://{host}{shown_port}{path}{shown_query}"),
            ));
        }
        SpanKind::Client => {}
    }
    attributes.push(Attribute::new("server.address", host));
    attributes.push(Attribute::new("server.port", i64::from(port)));
    attributes.push(Attribute::new(
        "network.peer.address",
        peer.ip().to_string(),
    ));
    attributes.push(Attribute::new("network.peer.port", i64::from(peer.port())));
    attributes.push(Attribute::new(
        "network.protocol.version",
        request.version.as_str(),
    ));
    if kind == SpanKind::Server
        && let Some(user_agent) = &request.user_agent
    {
        attributes.push(Attribute::new("user_agent.original", user_agent.as_str()));
    }
    let status = match exchange.outcome {
        Outcome::Response { status } => {
            attributes.push(Attribute::new(
                "http.response.status_code",
                i64::from(status),
            ));
            let is_error = status >= 500 || (kind == SpanKind::Client && status >= 400);
            if is_error {
                attributes.push(Attribute::new("error.type", status.to_string()));
                SpanStatus::Error(format!("HTTP {status}"))
            } else {
                SpanStatus::Unset
            }
        }
        Outcome::ConnectionClosed | Outcome::Abandoned | Outcome::Reset { .. } => {
            let (error_type, message) = unanswered(&exchange.outcome);
            attributes.push(Attribute::new("error.type", error_type));
            SpanStatus::Error(message.into())
        }
    };

    let identity = identity(exchange);
    let name_method = if method == "_OTHER" { "HTTP" } else { method };
    let name = match &route {
        Some(route) => format!("{name_method} {route}"),
        None => name_method.to_owned(),
    };
    Some(Span {
        resource,
        trace_id: identity.trace_id,
        span_id: identity.span_id,
        parent_span_id: identity.parent_span_id,
        trace_flags: identity.trace_flags,
        trace_state: identity
            .joined_header
            .then(|| request.tracestate.clone())
            .flatten(),
        kind,
        name,
        start_unix_ns,
        end_unix_ns: end_unix_ns.max(start_unix_ns),
        attributes,
        status,
    })
}

/// `error.type` and status message of an exchange without a final
/// response.
pub(super) fn unanswered(outcome: &Outcome) -> (&'static str, &'static str) {
    match outcome {
        Outcome::Response { .. } | Outcome::Abandoned => ("no_response", "no response seen"),
        Outcome::ConnectionClosed => ("connection_closed", "connection closed before a response"),
        Outcome::Reset { code } => (
            code.and_then(http2::error_code_name)
                .unwrap_or("stream_reset"),
            "stream reset before a response",
        ),
    }
}

/// Where a span sits in its trace.
pub(super) struct Identity {
    pub(super) trace_id: [u8; 16],
    pub(super) span_id: [u8; 8],
    pub(super) parent_span_id: Option<[u8; 8]>,
    pub(super) trace_flags: u8,
    /// The trace came from the request's own `traceparent` (so its
    /// `tracestate` belongs to it too).
    pub(super) joined_header: bool,
}

/// The kernel's ids when it assigned them (they may be on the wire already),
/// overridden by the request's own `traceparent` on a client request the
/// application itself propagated; otherwise the header, or a new trace.
pub(super) fn identity(exchange: &HttpExchange) -> Identity {
    let header = exchange
        .request
        .traceparent
        .as_deref()
        .and_then(parse_traceparent);
    let from_header = |span_id| {
        header.map(|parent| Identity {
            trace_id: parent.trace_id,
            span_id,
            parent_span_id: Some(parent.span_id),
            trace_flags: parent.flags,
            joined_header: true,
        })
    };
    match exchange.trace {
        Some(kernel)
            if exchange.conn.side == Side::Client && !kernel.injected && header.is_some() =>
        {
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

/// `(method attribute, original method if it was not a known one)`.
fn normalize_method(method: &str) -> (&str, Option<&str>) {
    match KNOWN_METHODS.iter().find(|known| **known == method) {
        Some(known) => (known, None),
        None => ("_OTHER", Some(method)),
    }
}

/// Path and query of a request target (origin or absolute form).
fn split_target(target: &str) -> (&str, Option<&str>) {
    let without_scheme = target.split_once("://").map_or(target, |(_, rest)| rest);
    let path_start = if without_scheme.len() < target.len() {
        without_scheme.find('/').map_or(without_scheme.len(), |i| i)
    } else {
        0
    };
    let origin = &without_scheme[path_start..];
    let origin = origin.split_once('#').map_or(origin, |(before, _)| before);
    match origin.split_once('?') {
        Some((path, query)) => (if path.is_empty() { "/" } else { path }, Some(query)),
        None => (if origin.is_empty() { "/" } else { origin }, None),
    }
}

/// Server name and port: from the Host header when present (what the client
/// asked for), else the socket address.
pub(super) fn authority(host_header: Option<&str>, socket: SocketAddr) -> (String, u16) {
    let Some(host) = host_header.map(str::trim).filter(|h| !h.is_empty()) else {
        return (socket.ip().to_string(), socket.port());
    };
    // "[::1]:8080", "example.com:8080", "example.com"
    if let Some(rest) = host.strip_prefix('[')
        && let Some((ip, after)) = rest.split_once(']')
    {
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(socket.port());
        return (ip.to_owned(), port);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => {
            (name.to_owned(), port.parse().unwrap_or(socket.port()))
        }
        _ => (host.to_owned(), socket.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conn::exchange::{ConnInfo, HttpVersion, RequestInfo},
        spans::model::AttributeValue,
    };

    fn exchange(side: Side, method: &str, target: &str, outcome: Outcome) -> HttpExchange {
        HttpExchange {
            conn: ConnInfo {
                pid: 10,
                socket_cookie: 1,
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.1:50000".parse().unwrap(),
                side,
                tls: false,
            },
            request: RequestInfo {
                method: method.into(),
                target: target.into(),
                version: HttpVersion::Http11,
                host: Some("api.local:8080".into()),
                user_agent: Some("curl/8".into()),
                traceparent: None,
                tracestate: None,
            },
            outcome,
            start_ns: 0,
            end_ns: 0,
            request_tid: 10,
            response_tid: Some(10),
            trace: None,
            rpc: None,
        }
    }

    fn resource() -> Arc<Resource> {
        Arc::new(Resource {
            key: "k".into(),
            service_name: "svc".into(),
            attributes: vec![],
        })
    }

    fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
        match span.attribute(key) {
            Some(AttributeValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn server_span_follows_conventions() {
        let ex = exchange(
            Side::Server,
            "GET",
            "/users/1?token=secret",
            Outcome::Response { status: 200 },
        );
        let span =
            build_span(&ex, resource(), 100, 50, &HttpSpanOptions::default()).expect("not ignored");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.name, "GET /users/{id}");
        assert_eq!(str_attr(&span, "http.route"), Some("/users/{id}"));
        assert_eq!(str_attr(&span, "url.path"), Some("/users/1"));
        assert_eq!(span.attribute("url.query"), None, "query is opt-in");
        assert_eq!(str_attr(&span, "server.address"), Some("api.local"));
        assert_eq!(
            span.attribute("server.port"),
            Some(&AttributeValue::Int(8080))
        );
        assert_eq!(str_attr(&span, "client.address"), Some("127.0.0.1"));
        assert_eq!(
            span.attribute("network.peer.port"),
            Some(&AttributeValue::Int(50000))
        );
        assert_eq!(str_attr(&span, "network.protocol.version"), Some("1.1"));
        assert_eq!(str_attr(&span, "user_agent.original"), Some("curl/8"));
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(span.end_unix_ns, 100, "end never before start");
        assert_eq!(span.parent_span_id, None);
    }

    #[test]
    fn status_rules_differ_by_kind() {
        let check = |side, status, error: bool| {
            let span = build_span(
                &exchange(side, "GET", "/", Outcome::Response { status }),
                resource(),
                0,
                1,
                &HttpSpanOptions::default(),
            )
            .expect("not ignored");
            assert_eq!(
                matches!(span.status, SpanStatus::Error(_)),
                error,
                "{side:?} {status}"
            );
            assert_eq!(str_attr(&span, "error.type").is_some(), error);
        };
        check(Side::Server, 404, false);
        check(Side::Client, 404, true);
        check(Side::Server, 503, true);
        check(Side::Client, 302, false);
        let closed = build_span(
            &exchange(Side::Client, "POST", "/", Outcome::ConnectionClosed),
            resource(),
            0,
            1,
            &HttpSpanOptions::default(),
        )
        .expect("not ignored");
        assert_eq!(str_attr(&closed, "error.type"), Some("connection_closed"));
        assert!(closed.attribute("http.response.status_code").is_none());
    }

    #[test]
    fn client_span_has_full_url_without_query_by_default() {
        let ex = exchange(
            Side::Client,
            "POST",
            "/orders?card=1",
            Outcome::Response { status: 201 },
        );
        let span =
            build_span(&ex, resource(), 0, 1, &HttpSpanOptions::default()).expect("not ignored");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.name, "POST", "clients do not know the route");
        assert_eq!(span.attribute("http.route"), None);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://api.local:8080/orders")
        );
        assert_eq!(span.attribute("url.path"), None);
        let with_query = build_span(
            &ex,
            resource(),
            0,
            1,
            &HttpSpanOptions {
                capture_query: true,
                ..HttpSpanOptions::default()
            },
        )
        .expect("not ignored");
        assert_eq!(
            str_attr(&with_query, "url.full"),
            Some("http://api.local:8080/orders?card=1")
        );
    }

    #[test]
    fn tls_exchanges_are_https() {
        let build = |side, host: &str| {
            let mut ex = exchange(side, "GET", "/a", Outcome::Response { status: 200 });
            ex.conn.tls = true;
            ex.request.host = Some(host.into());
            build_span(&ex, resource(), 0, 1, &HttpSpanOptions::default()).expect("not ignored")
        };
        let server = build(Side::Server, "api.local:8443");
        assert_eq!(str_attr(&server, "url.scheme"), Some("https"));
        let client = build(Side::Client, "api.local:8443");
        assert_eq!(
            str_attr(&client, "url.full"),
            Some("https://api.local:8443/a")
        );
        let default_port = build(Side::Client, "api.local:443");
        assert_eq!(
            str_attr(&default_port, "url.full"),
            Some("https://api.local/a"),
            "443 is https's default port"
        );
        let plain = build_span(
            &exchange(Side::Server, "GET", "/a", Outcome::Response { status: 200 }),
            resource(),
            0,
            1,
            &HttpSpanOptions::default(),
        )
        .expect("not ignored");
        assert_eq!(str_attr(&plain, "url.scheme"), Some("http"));
    }

    #[test]
    fn routes_name_server_spans_and_ignored_paths_give_none() {
        let options = HttpSpanOptions {
            routes: Arc::new(
                Routes::new(&["/files/{name}".into()], &["/health*".into()])
                    .unwrap_or_else(|error| panic!("{error}")),
            ),
            ..HttpSpanOptions::default()
        };
        let build = |side, target: &str| {
            let ex = exchange(side, "GET", target, Outcome::Response { status: 200 });
            build_span(&ex, resource(), 0, 1, &options)
        };
        let span = build(Side::Server, "/files/report.pdf?x=1").expect("not ignored");
        assert_eq!(span.name, "GET /files/{name}", "the user's pattern wins");
        assert_eq!(str_attr(&span, "http.route"), Some("/files/{name}"));
        let span = build(Side::Server, "/orders/550e8400-e29b-41d4-a716-446655440000")
            .expect("not ignored");
        assert_eq!(span.name, "GET /orders/{id}");
        assert!(build(Side::Server, "/healthz").is_none());
        assert!(build(Side::Client, "/health").is_none());
    }

    #[test]
    fn unknown_methods_are_other() {
        let span = build_span(
            &exchange(
                Side::Server,
                "PURGE",
                "/",
                Outcome::Response { status: 200 },
            ),
            resource(),
            0,
            1,
            &HttpSpanOptions::default(),
        )
        .expect("not ignored");
        assert_eq!(span.name, "HTTP /");
        assert_eq!(str_attr(&span, "http.request.method"), Some("_OTHER"));
        assert_eq!(
            str_attr(&span, "http.request.method_original"),
            Some("PURGE")
        );
    }

    #[test]
    fn incoming_traceparent_is_joined() {
        let mut ex = exchange(Side::Server, "GET", "/", Outcome::Response { status: 200 });
        ex.request.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        ex.request.tracestate = Some("vendor=x".into());
        let span =
            build_span(&ex, resource(), 0, 1, &HttpSpanOptions::default()).expect("not ignored");
        assert_eq!(span.trace_id[0], 0x4b);
        assert_eq!(
            span.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(span.trace_state.as_deref(), Some("vendor=x"));
    }

    #[test]
    fn targets_and_authorities() {
        assert_eq!(split_target("/a/b?x=1#frag"), ("/a/b", Some("x=1")));
        assert_eq!(split_target("http://h:1/p?q"), ("/p", Some("q")));
        assert_eq!(split_target("http://h:1"), ("/", None));
        assert_eq!(split_target("*"), ("*", None));
        let socket: SocketAddr = "10.0.0.1:81".parse().unwrap();
        assert_eq!(authority(Some("[::1]:9000"), socket), ("::1".into(), 9000));
        assert_eq!(
            authority(Some("example.com"), socket),
            ("example.com".into(), 81)
        );
        assert_eq!(authority(None, socket), ("10.0.0.1".into(), 81));
        assert_eq!(authority(Some("h:notaport"), socket), ("h".into(), 81));
    }
}
