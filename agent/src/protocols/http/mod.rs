//! HTTP semantics shared by the HTTP/1 and HTTP/2 slices: the span and
//! the RED measurement of an HTTP call record, per the OpenTelemetry HTTP
//! semantic conventions (stable, v1.26+): names, attributes and status
//! rules. Server spans carry `http.route` from the route patterns or
//! heuristic (`crate::model::route`) and are named `{method} {route}`;
//! the measurement carries the same method, route, status and
//! `error.type`.

use std::{borrow::Cow, net::SocketAddr, time::Duration};

use super::{DescribeOptions, Description, SpanParts, http2::parse as http2, span_kind};
use crate::model::{
    call::{Call, Outcome, RequestInfo},
    measure::{Measurement, Protocol, ServerAddress},
    span::{Attribute, AttributeValue, SpanKind, SpanStatus},
};

/// Methods the conventions know; anything else is reported as `_OTHER`.
const KNOWN_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// The most attributes [`describe`] gives a span (a server span with an
/// unknown method, query capture and a failed exchange).
const MAX_ATTRIBUTES: usize = 15;

/// Describes an HTTP call, `None` if its path is ignored; the span part
/// only when `with_span` (the measurement needs far less).
pub fn describe<'a>(
    call: &'a Call,
    request: &'a RequestInfo,
    options: &'a DescribeOptions,
    with_span: bool,
) -> Option<Description<'a>> {
    let (method, original_method) = normalize_method(&request.method);
    let (path, query) = split_target(&request.target);
    // An HTTP/2 `:path` that could not be decoded: no path is made up.
    let path_known = !request.target.is_empty();
    if path_known && options.routes.is_ignored(path) {
        return None;
    }
    let kind = span_kind(call.conn.side);
    let (scheme, default_port) = if call.conn.tls {
        ("https", 443)
    } else {
        ("http", 80)
    };
    // The conventions give clients no route (a client cannot know the
    // server's routing).
    let route = (kind == SpanKind::Server && path_known).then(|| options.routes.route(path));
    // What the client asked for: the span's `server.address`, and the
    // measurement's for client calls (see `Measurement::server`).
    let (host, port) = authority(
        request.host.as_deref(),
        match kind {
            SpanKind::Server => call.conn.local,
            SpanKind::Client => call.conn.remote,
        },
    );
    let (status_code, error_type) = match call.outcome {
        Outcome::Response { status } => {
            let is_error = status >= 500 || (kind == SpanKind::Client && status >= 400);
            (
                Some(status),
                is_error.then(|| Cow::Owned(status.to_string())),
            )
        }
        Outcome::ConnectionClosed
        | Outcome::Abandoned
        | Outcome::Reset { .. }
        | Outcome::Succeeded
        | Outcome::Failed { .. } => (None, Some(Cow::Borrowed(unanswered(&call.outcome).0))),
    };
    let span = with_span.then(|| {
        // Room for all of them: growing the vector was ~3% of the agent's CPU.
        let mut attributes = Vec::with_capacity(MAX_ATTRIBUTES);
        attributes.push(Attribute::new(
            "http.request.method",
            AttributeValue::fixed(method),
        ));
        if let Some(original) = original_method {
            attributes.push(Attribute::new("http.request.method_original", original));
        }
        let peer = call.conn.remote;
        let peer_address = AttributeValue::from(peer.ip());
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
                attributes.push(Attribute::new("url.scheme", AttributeValue::fixed(scheme)));
                attributes.push(Attribute::new("client.address", peer_address.clone()));
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
        attributes.push(Attribute::new("server.address", host.as_ref()));
        attributes.push(Attribute::new("server.port", i64::from(port)));
        attributes.push(Attribute::new("network.peer.address", peer_address));
        attributes.push(Attribute::new("network.peer.port", i64::from(peer.port())));
        attributes.push(Attribute::new(
            "network.protocol.version",
            AttributeValue::fixed(request.version.as_str()),
        ));
        if kind == SpanKind::Server
            && let Some(user_agent) = &request.user_agent
        {
            attributes.push(Attribute::new("user_agent.original", user_agent.as_str()));
        }
        if let Some(status) = status_code {
            attributes.push(Attribute::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(error_type) = &error_type {
            attributes.push(Attribute::new("error.type", error_type.as_ref()));
        }
        let status = match (status_code, &error_type) {
            (_, None) => SpanStatus::Unset,
            (Some(status), Some(_)) => SpanStatus::Error(format!("HTTP {status}")),
            (None, Some(_)) => SpanStatus::Error(unanswered(&call.outcome).1.into()),
        };
        let name_method = if method == "_OTHER" { "HTTP" } else { method };
        let name = match &route {
            Some(route) => format!("{name_method} {route}"),
            None => name_method.to_owned(),
        };
        SpanParts {
            kind,
            name,
            attributes,
            status,
        }
    });
    let measurement = Measurement {
        kind,
        protocol: Protocol::Http {
            method,
            // `url.scheme` is a server span attribute only.
            scheme: (kind == SpanKind::Server).then_some(scheme),
            route,
            status_code,
        },
        error_type,
        server: (kind == SpanKind::Client).then_some(ServerAddress {
            address: host,
            port,
        }),
        duration: Duration::from_nanos(call.duration_ns()),
    };
    Some(Description { span, measurement })
}

/// `error.type` and status message of an exchange without a final
/// response.
pub(crate) fn unanswered(outcome: &Outcome) -> (&'static str, &'static str) {
    match outcome {
        // (`Succeeded` and `Failed` are database answers, never HTTP ones.)
        Outcome::Response { .. }
        | Outcome::Abandoned
        | Outcome::Succeeded
        | Outcome::Failed { .. } => ("no_response", "no response seen"),
        Outcome::ConnectionClosed => ("connection_closed", "connection closed before a response"),
        Outcome::Reset { code } => (
            code.and_then(http2::error_code_name)
                .unwrap_or("stream_reset"),
            "stream reset before a response",
        ),
    }
}

/// `(method attribute, original method if it was not a known one)`.
fn normalize_method(method: &str) -> (&'static str, Option<&str>) {
    match KNOWN_METHODS.iter().find(|known| **known == method) {
        Some(known) => (*known, None),
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
/// asked for, borrowed from it), else the socket address.
pub(crate) fn authority(host_header: Option<&str>, socket: SocketAddr) -> (Cow<'_, str>, u16) {
    let Some(host) = host_header.map(str::trim).filter(|h| !h.is_empty()) else {
        return (Cow::Owned(socket.ip().to_string()), socket.port());
    };
    // "[::1]:8080", "example.com:8080", "example.com"
    if let Some(rest) = host.strip_prefix('[')
        && let Some((ip, after)) = rest.split_once(']')
    {
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(socket.port());
        return (Cow::Borrowed(ip), port);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => {
            (Cow::Borrowed(name), port.parse().unwrap_or(socket.port()))
        }
        _ => (Cow::Borrowed(host), socket.port()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        model::{
            call::{Detail, Side},
            measure::{Instrument, LabelValue},
            route::Routes,
            span::AttributeValue,
        },
        test_support::http_call as exchange,
    };

    /// The span part of a call's description; `None` if it is ignored.
    fn span_of(call: &Call, options: &DescribeOptions) -> Option<SpanParts> {
        describe(call, call.detail.http_request()?, options, true).and_then(|d| d.span)
    }

    fn str_attr<'a>(span: &'a SpanParts, key: &str) -> Option<&'a str> {
        match span.attribute(key) {
            Some(AttributeValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn measurements_carry_what_spans_say() {
        let options = DescribeOptions::default();
        let mut server = exchange(
            Side::Server,
            "GET",
            "/users/7",
            Outcome::Response { status: 503 },
        );
        server.end_ns = 250_000_000;
        let request = server.detail.http_request().expect("HTTP");
        let described = describe(&server, request, &options, false).expect("not ignored");
        assert_eq!(described.span, None, "no span attributes unless asked");
        let measurement = described.measurement;
        assert_eq!(measurement.instrument(), Instrument::HttpServer);
        assert_eq!(measurement.duration, Duration::from_millis(250));
        assert_eq!(
            measurement.attributes(),
            vec![
                ("http.request.method", LabelValue::from("GET")),
                ("http.route", LabelValue::from("/users/{id}")),
                ("http.response.status_code", LabelValue::Int(503)),
                ("url.scheme", LabelValue::from("http")),
                ("error.type", LabelValue::from("503")),
            ],
            "no raw path, no server address on server metrics"
        );

        let client = exchange(Side::Client, "POST", "/x", Outcome::ConnectionClosed);
        let request = client.detail.http_request().expect("HTTP");
        let measurement = describe(&client, request, &options, false)
            .expect("not ignored")
            .measurement;
        assert_eq!(measurement.instrument(), Instrument::HttpClient);
        assert_eq!(
            measurement.attributes(),
            vec![
                ("http.request.method", LabelValue::from("POST")),
                ("error.type", LabelValue::from("connection_closed")),
                ("server.address", LabelValue::from("api.local")),
                ("server.port", LabelValue::Int(8080)),
            ]
        );
    }

    #[test]
    fn server_span_follows_conventions() {
        let ex = exchange(
            Side::Server,
            "GET",
            "/users/1?token=secret",
            Outcome::Response { status: 200 },
        );
        let span = span_of(&ex, &DescribeOptions::default()).expect("not ignored");
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
    }

    #[test]
    fn status_rules_differ_by_kind() {
        let check = |side, status, error: bool| {
            let span = span_of(
                &exchange(side, "GET", "/", Outcome::Response { status }),
                &DescribeOptions::default(),
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
        let closed = span_of(
            &exchange(Side::Client, "POST", "/", Outcome::ConnectionClosed),
            &DescribeOptions::default(),
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
        let span = span_of(&ex, &DescribeOptions::default()).expect("not ignored");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.name, "POST", "clients do not know the route");
        assert_eq!(span.attribute("http.route"), None);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://api.local:8080/orders")
        );
        assert_eq!(span.attribute("url.path"), None);
        let with_query = span_of(
            &ex,
            &DescribeOptions {
                capture_query: true,
                ..DescribeOptions::default()
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
            if let Detail::Http(request) = &mut ex.detail {
                request.host = Some(host.into());
            }
            span_of(&ex, &DescribeOptions::default()).expect("not ignored")
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
        let plain = span_of(
            &exchange(Side::Server, "GET", "/a", Outcome::Response { status: 200 }),
            &DescribeOptions::default(),
        )
        .expect("not ignored");
        assert_eq!(str_attr(&plain, "url.scheme"), Some("http"));
    }

    #[test]
    fn routes_name_server_spans_and_ignored_paths_give_none() {
        let options = DescribeOptions {
            routes: Arc::new(
                Routes::new(&["/files/{name}".into()], &["/health*".into()])
                    .unwrap_or_else(|error| panic!("{error}")),
            ),
            ..DescribeOptions::default()
        };
        let build = |side, target: &str| {
            let ex = exchange(side, "GET", target, Outcome::Response { status: 200 });
            span_of(&ex, &options)
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
        let span = span_of(
            &exchange(
                Side::Server,
                "PURGE",
                "/",
                Outcome::Response { status: 200 },
            ),
            &DescribeOptions::default(),
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
