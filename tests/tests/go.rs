//! End-to-end: Go services, whose HTTPS runs on Go's own `crypto/tls`
//! (no OpenSSL), traced with no change to them: tests/apps/go_https
//! built at test time with Go 1.19 (symbols and DWARF) and Go 1.23
//! stripped (`-ldflags=-s -w`: functions found in `.gopclntab`, struct
//! offsets from the agent's table), HTTP/1.1 and HTTP/2 (ALPN h2), spans
//! on both sides with `url.scheme` https; and Go 1.22, a release the
//! agent has no offsets for, traced at the socket level only and counted.
//! Needs root; see `sonde_tests::agent::skip_reason`.

use std::{net::TcpListener, path::Path, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Certificate, Held},
    go::build,
    require_e2e, spans_of,
};

const WAIT: Duration = Duration::from_secs(30);
/// After the expected spans arrived, how long to keep watching for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);
/// What the agent logs once a Go executable has its probes.
const ATTACHED: &str = "Go TLS probes attached";

/// A TCP port free on 127.0.0.1 now, for a server that must be told one.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The program at `bin` held: `go_https args...`.
fn held(bin: &Path, args: &[&str]) -> Held {
    Held::new(bin.to_str().expect("utf-8 path"), args)
}

/// A held HTTPS server of `bin` on `port`.
fn https_server(bin: &Path, cert: &Certificate, port: u16) -> Held {
    held(
        bin,
        &[
            "server",
            "-port",
            &port.to_string(),
            "-cert",
            &cert.cert(),
            "-key",
            &cert.key(),
        ],
    )
}

/// `(method, url.path or url.full, status, protocol version)` of spans,
/// sorted.
fn requests(spans: &[ReceivedSpan]) -> Vec<(String, String, i64, String)> {
    let mut found: Vec<_> = spans
        .iter()
        .map(|span| {
            let url = match span.kind {
                SpanKind::Server => span.str_attr("url.path"),
                _ => span.str_attr("url.full"),
            };
            (
                span.str_attr("http.request.method").to_owned(),
                url.to_owned(),
                span.int_attr("http.response.status_code"),
                span.str_attr("network.protocol.version").to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Asserts one server span of `server` and one client span of `client`
/// for each `(path, status)`, over `version`, all https.
fn assert_https_spans(
    spans: &[ReceivedSpan],
    (server, client): (u32, u32),
    port: u16,
    version: &str,
    expected: &[(&str, i64)],
) {
    let served = spans_of(spans, server, SpanKind::Server);
    let made = spans_of(spans, client, SpanKind::Client);
    let as_seen = |url: &dyn Fn(&str) -> String| {
        let mut all: Vec<_> = expected
            .iter()
            .map(|&(path, status)| ("GET".to_owned(), url(path), status, version.to_owned()))
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        requests(&served),
        as_seen(&|path| path.to_owned()),
        "one server span per request: {served:#?}"
    );
    assert_eq!(
        requests(&made),
        as_seen(&|path| format!("https://127.0.0.1:{port}{path}")),
        "one client span per request: {made:#?}"
    );
    for span in &served {
        assert_eq!(span.str_attr("url.scheme"), "https", "{span:#?}");
        assert!(
            span.str_attr("user_agent.original")
                .starts_with("Go-http-client/"),
            "{span:#?}"
        );
    }
}

/// Go 1.19 with symbols: an HTTPS server and a client on one keep-alive
/// connection, both held until the agent selected them. The log names the
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go119_https_server_and_client() {
    require_e2e!();
    let bin = build("go_https", 19, false);
    let cert = Certificate::new("go119");
    let receiver = OtlpReceiver::start().await;
    let port = free_port();
    let mut server = https_server(&bin, &cert, port);
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let client = held(
        &bin,
        &[
            "client",
            &url("/status/200"),
            &url("/status/404"),
            &url("/status/503"),
        ],
    );
    let pids = (server.pid(), client.pid());
    let agent = Agent::start(
        &["--pid", &format!("{},{}", pids.0, pids.1)],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert_eq!(server.run_server(), port);
    agent.wait_for_log(ATTACHED, WAIT);
    assert!(
        agent.plain_log().contains("go1.19."),
        "{}",
        agent.plain_log()
    );
    assert_eq!(client.run(), "200 HTTP/1.1\n404 HTTP/1.1\n503 HTTP/1.1\n");
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            spans_of(spans, pids.0, SpanKind::Server).len() >= 3
                && spans_of(spans, pids.1, SpanKind::Client).len() >= 3
        })
        .await;
    assert_https_spans(
        &spans,
        pids,
        port,
        "1.1",
        &[
            ("/status/200", 200),
            ("/status/404", 404),
            ("/status/503", 503),
        ],
    );
    assert_eq!(agent.stop(), 0);
}

/// Go 1.23 stripped (`-ldflags=-s -w`): no symbols, no DWARF. An HTTPS
/// server, a client over HTTP/1.1 and one that negotiates HTTP/2 (ALPN
/// h2): spans on both sides over HTTP/1.1, the server side over h2 (see below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go123_stripped_https_http1_and_h2() {
    require_e2e!();
    let bin = build("go_https", 23, true);
    let cert = Certificate::new("go123");
    let receiver = OtlpReceiver::start().await;
    let port = free_port();
    let mut server = https_server(&bin, &cert, port);
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let http1 = held(&bin, &["client", &url("/status/200"), &url("/status/404")]);
    let h2 = held(
        &bin,
        &["client", "-h2", &url("/status/201"), &url("/status/500")],
    );
    let (server_pid, http1_pid, h2_pid) = (server.pid(), http1.pid(), h2.pid());
    let agent = Agent::start(
        &["--pid", &format!("{server_pid},{http1_pid},{h2_pid}")],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert_eq!(server.run_server(), port);
    agent.wait_for_log(ATTACHED, WAIT);
    assert!(
        agent.plain_log().contains("go1.23."),
        "{}",
        agent.plain_log()
    );
    assert_eq!(http1.run(), "200 HTTP/1.1\n404 HTTP/1.1\n");
    assert_eq!(h2.run(), "201 HTTP/2.0\n500 HTTP/2.0\n");
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            spans_of(spans, server_pid, SpanKind::Server).len() >= 4
                && spans_of(spans, http1_pid, SpanKind::Client).len() >= 2
                && spans_of(spans, h2_pid, SpanKind::Client).len() >= 2
        })
        .await;
    let (h1_served, h2_served): (Vec<ReceivedSpan>, Vec<ReceivedSpan>) =
        spans_of(&spans, server_pid, SpanKind::Server)
            .into_iter()
            .partition(|s| s.str_attr("network.protocol.version") == "1.1");
    let only = |served: Vec<ReceivedSpan>, client: &[ReceivedSpan]| {
        let mut all = served;
        all.extend_from_slice(client);
        all
    };
    assert_https_spans(
        &only(h1_served, &spans_of(&spans, http1_pid, SpanKind::Client)),
        (server_pid, http1_pid),
        port,
        "1.1",
        &[("/status/200", 200), ("/status/404", 404)],
    );
    // Both sides of h2: the client's response must not be seen before
    // its request (see agent-ebpf/src/probes/go_tls.rs).
    assert_https_spans(
        &only(h2_served, &spans_of(&spans, h2_pid, SpanKind::Client)),
        (server_pid, h2_pid),
        port,
        "2",
        &[("/status/201", 201), ("/status/500", 500)],
    );
    assert_eq!(agent.stop(), 0);
}

/// Go 1.22 stripped: a release without offsets in the agent's table and
/// no DWARF to read them from. The agent says so, counts it and leaves the
/// Go probes off: its plain HTTP is traced at the socket level, its HTTPS
/// not at all (no span from ciphertext), and the programs run unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_release_without_offsets_is_traced_at_socket_level() {
    require_e2e!();
    let bin = build("go_https", 22, true);
    let cert = Certificate::new("go122");
    let receiver = OtlpReceiver::start().await;
    let (tls_port, plain_port) = (free_port(), free_port());
    let mut tls_server = https_server(&bin, &cert, tls_port);
    let mut plain_server = held(
        &bin,
        &["server", "-plain", "-port", &plain_port.to_string()],
    );
    let client = held(
        &bin,
        &[
            "client",
            &format!("https://127.0.0.1:{tls_port}/status/200"),
            &format!("http://127.0.0.1:{plain_port}/status/202"),
        ],
    );
    let pids = [tls_server.pid(), plain_server.pid(), client.pid()];
    let agent = Agent::start(
        &["--pid", &pids.map(|p| p.to_string()).join(",")],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert_eq!(tls_server.run_server(), tls_port);
    assert_eq!(plain_server.run_server(), plain_port);
    agent.wait_for_log("Go release without known struct offsets", WAIT);
    assert_eq!(client.run(), "200 HTTP/1.1\n202 HTTP/1.1\n");
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            !spans_of(spans, pids[1], SpanKind::Server).is_empty()
                && !spans_of(spans, pids[2], SpanKind::Client).is_empty()
        })
        .await;
    let plain = spans_of(&spans, pids[1], SpanKind::Server);
    assert_eq!(plain.len(), 1, "{plain:#?}");
    assert_eq!(plain[0].str_attr("url.path"), "/status/202");
    assert_eq!(plain[0].str_attr("url.scheme"), "http");
    let made = spans_of(&spans, pids[2], SpanKind::Client);
    assert_eq!(
        made.iter()
            .map(|s| s.str_attr("url.full"))
            .collect::<Vec<_>>(),
        [format!("http://127.0.0.1:{plain_port}/status/202")],
        "no span from the HTTPS connection's ciphertext: {made:#?}"
    );
    assert!(
        spans_of(&spans, pids[0], SpanKind::Server).is_empty(),
        "no span from ciphertext"
    );
    let (code, log) = agent.stop_with_log();
    assert_eq!(code, 0);
    assert!(!log.contains(ATTACHED), "{log}");
    assert!(log.contains("go1.22."), "{log}");
    assert!(log.contains("sonde_go_unsupported=1"), "{log}");
}

/// gRPC-Go (Debian's golang-google-grpc-dev) server and client, each
/// held until selected: over TLS built with Go 1.19, and over h2c built
/// with Go 1.23 stripped. A unary call, one failing with NOT_FOUND and a
/// bidirectional stream give a server and a client span each, with their
/// status. Known gap: over TLS the client side loses a call's response now
/// and then (about one run in four, the span ends `connection_closed`), so
/// there only the server side is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_over_tls_and_h2c() {
    require_e2e!();
    let cert = Certificate::new("gogrpc");
    let receiver = OtlpReceiver::start().await;
    for (minor, stripped, tls) in [(19, false, true), (23, true, false)] {
        let bin = build("go_grpc", minor, stripped);
        let port = free_port();
        let mut server_args = vec!["server".to_owned(), "-port".into(), port.to_string()];
        if tls {
            server_args.extend(["-cert".into(), cert.cert(), "-key".into(), cert.key()]);
        }
        let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
        let mut server = held(&bin, &server_args);
        let address = format!("127.0.0.1:{port}");
        let client = held(
            &bin,
            &if tls {
                vec!["client", "-tls", &address]
            } else {
                vec!["client", &address]
            },
        );
        let pids = (server.pid(), client.pid());
        let agent = Agent::start(
            &["--pid", &format!("{},{}", pids.0, pids.1)],
            &receiver.grpc_endpoint(),
            "grpc",
        );
        assert_eq!(server.run_server(), port);
        if tls {
            agent.wait_for_log(ATTACHED, WAIT);
        }
        assert_eq!(
            client.run(),
            "check ok OK SERVING\ncheck missing NotFound UNKNOWN\nreflection 2 services OK\n"
        );
        let spans = receiver
            .settle(WAIT, SETTLE, |spans| {
                spans_of(spans, pids.0, SpanKind::Server).len() >= 3
                    && spans_of(spans, pids.1, SpanKind::Client).len() >= 3
            })
            .await;
        for (pid, kind) in [(pids.0, SpanKind::Server), (pids.1, SpanKind::Client)] {
            let ours = spans_of(&spans, pid, kind);
            let calls: Vec<(&str, &str)> = ours
                .iter()
                .map(|s| (s.name.as_str(), s.str_attr("rpc.response.status_code")))
                .collect();
            assert_eq!(
                calls,
                [
                    ("grpc.health.v1.Health/Check", "OK"),
                    ("grpc.health.v1.Health/Check", "NOT_FOUND"),
                    (
                        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                        "OK"
                    ),
                ],
                "Go 1.{minor}, tls {tls}, {kind:?}: {ours:#?}"
            );
            for span in &ours {
                assert_eq!(span.str_attr("rpc.system.name"), "grpc");
                assert_eq!(span.int_attr("server.port"), i64::from(port));
                assert_eq!(span.str_attr("network.protocol.version"), "2");
            }
        }
        assert_eq!(agent.stop(), 0);
    }
}
