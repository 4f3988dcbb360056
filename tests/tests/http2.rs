//! End-to-end: HTTP/2 and gRPC spans from real unmodified programs (a
//! grpcio server and client, an @grpc/grpc-js server and client, curl
//! --http2-prior-knowledge against a Node.js h2c server, curl --http2
//! upgrading to h2c with hypercorn), the real agent and
//! kernel programs, and a real OTLP receiver. Needs root; see
//! `sonde_tests::agent::skip_reason`.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Held, Server, app_path, curl},
    grpc_suite::{PARENT_ID, SUITE_OUTPUT, TRACE_ID, assert_suite_traced},
    require_e2e, spans_of,
};

const WAIT: Duration = Duration::from_secs(30);
/// After the expected spans arrived, how long to keep watching for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);

/// The real path of an interpreter on PATH, for `--exe`.
fn executable(name: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    let found = String::from_utf8(output.stdout).expect("utf-8");
    let path = if name == "python3" {
        // pyenv's shim is a script: ask the interpreter itself.
        let output = Command::new("python3")
            .args([
                "-c",
                "import os, sys; print(os.path.realpath(sys.executable))",
            ])
            .output()
            .expect("python3");
        String::from_utf8(output.stdout).expect("utf-8")
    } else {
        std::fs::canonicalize(Path::new(found.trim()))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .display()
            .to_string()
    };
    path.trim().to_owned()
}

/// Runs a test client to completion; returns its pid and output lines.
fn run_client(program: &str, script: &str, args: &[&str]) -> (u32, Vec<String>) {
    let child = Command::new(program)
        .arg(app_path(script))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {script}: {e}"));
    let pid = child.id();
    let output = child.wait_with_output().expect("running the client");
    assert!(output.status.success(), "{script} {args:?} failed");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (pid, lines)
}

/// A grpcio client calling a grpcio server: unary, an error status, a
/// deadline, server and client streaming, as server spans (selected by
/// port) and client spans (selected by executable, started after the
/// agent).
///
/// grpcio writes with `sendmsg` of up to 24 iovecs: every frame of them
/// must be captured for HPACK to stay in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_from_both_sides() {
    require_e2e!();
    suite_between(Server::python_grpc(), "python3", "grpc_client.py", "grpc").await;
}

/// The same calls between an @grpc/grpc-js client and server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_calls_from_both_sides() {
    require_e2e!();
    suite_between(
        Server::node_grpc(),
        "node",
        "grpc_client.js",
        "http/protobuf",
    )
    .await;
}

/// Runs the gRPC suite from a `program` client (`script`) against `server`,
/// both selected, with spans exported over OTLP `protocol`, and asserts
/// both sides' spans.
async fn suite_between(server: Server, program: &str, script: &str, protocol: &str) {
    let receiver = OtlpReceiver::start().await;
    let port = server.port.to_string();
    let endpoint = if protocol == "grpc" {
        receiver.grpc_endpoint()
    } else {
        receiver.http_endpoint()
    };
    let agent = Agent::start(
        &["--port", &port, "--exe", &executable(program)],
        &endpoint,
        protocol,
    );
    let (client, output) = run_client(program, script, &[&port, "suite"]);
    assert_eq!(output, SUITE_OUTPUT);

    assert_suite_traced(&receiver, (server.pid(), server.port), client, WAIT, SETTLE).await;
    assert_eq!(agent.stop(), 0);
}

/// curl --http2-prior-knowledge against a Node.js h2c server: HTTP spans
/// with `network.protocol.version` "2", like HTTP/1 ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_h2c_requests() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::node_h2c();
    let agent = Agent::start(
        &["--port", &server.port.to_string()],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    let h2c = |args: &[&str]| {
        let mut all = vec!["--http2-prior-knowledge", "-o", "/dev/null"];
        all.extend_from_slice(args);
        curl(&all);
    };
    h2c(&[
        "-H",
        &format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01"),
        &server.url("/status/200?sleep=100"),
    ]);
    h2c(&["-d", "hello", &server.url("/status/404")]);
    h2c(&[&server.url("/status/503")]);

    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            spans_of(spans, server.pid(), SpanKind::Server).len() >= 3
        })
        .await;
    let spans = spans_of(&spans, server.pid(), SpanKind::Server);
    let got: Vec<(&str, &str, i64)> = spans
        .iter()
        .map(|s| {
            (
                s.str_attr("http.request.method"),
                s.str_attr("url.path"),
                s.int_attr("http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET", "/status/200", 200),
            ("POST", "/status/404", 404),
            ("GET", "/status/503", 503),
        ]
    );
    for span in &spans {
        assert_eq!(span.str_attr("network.protocol.version"), "2");
        assert_eq!(span.int_attr("server.port"), i64::from(server.port));
        assert!(span.str_attr("user_agent.original").starts_with("curl/"));
        assert!(!span.attributes.contains_key("rpc.system.name"));
    }
    assert!(spans[0].duration_ms() >= 100.0, "{:#?}", spans[0]);
    assert_eq!(spans[0].trace_id, TRACE_ID);
    assert_eq!(spans[0].parent_span_id, PARENT_ID);
    assert_eq!(spans[1].status_code, StatusCode::Unset, "4xx on a server");
    assert_eq!(spans[2].status_code, StatusCode::Error);
    assert_eq!(agent.stop(), 0);
}

/// curl --http2 asks hypercorn to switch from HTTP/1.1 to h2c (`Upgrade:
/// h2c`); hypercorn agrees (`101`) and answers the upgraded request as
/// HTTP/2 stream 1, the second on stream 3 of the same connection. One
/// server span and one client span per request, each with its real status
/// and version "2": the connection is followed across the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_upgrades_to_h2c() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::start(
        "python3",
        &[app_path("h2c_upgrade_server.py")
            .to_str()
            .expect("utf-8 path")],
    );
    let client = Held::new(
        "curl",
        &[
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}\\n",
            &server.url("/status/503"),
            &server.url("/status/404"),
        ],
    );
    let client_pid = client.pid();
    let agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert_eq!(client.run(), "503 2\n404 2\n", "upgraded: both over HTTP/2");

    let (served, made) = receiver
        .settle_pair((server.pid(), client_pid), 2, WAIT, SETTLE)
        .await;
    let requests = |spans: &[ReceivedSpan], url: &str| -> Vec<(String, String, i64, String)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.str_attr("http.request.method").to_owned(),
                    s.str_attr(url).to_owned(),
                    s.int_attr("http.response.status_code"),
                    s.str_attr("network.protocol.version").to_owned(),
                )
            })
            .collect()
    };
    let expected = |prefix: &str| {
        [("/status/503", 503), ("/status/404", 404)].map(|(path, status)| {
            (
                "GET".to_owned(),
                format!("{prefix}{path}"),
                status,
                "2".to_owned(),
            )
        })
    };
    assert_eq!(requests(&served, "url.path"), expected(""), "{served:#?}");
    assert_eq!(
        requests(&made, "url.full"),
        expected(&server.url("")),
        "{made:#?}"
    );
    // The upgraded request carried the kernel's traceparent over HTTP/1.1.
    assert_eq!(
        served[0].trace_id, made[0].trace_id,
        "{served:#?} {made:#?}"
    );
    assert_eq!(served[0].parent_span_id, made[0].span_id);
    assert_eq!(agent.stop(), 0);
}

/// 1,000 unary calls started at once on one grpcio channel (one HTTP/2
/// connection, up to 1,000 concurrent streams): one correct server span
/// each. The server reads up to 25 KB at once and answers with `sendmsg`s
/// of up to 199 iovecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_unary_calls_served() {
    require_e2e!();
    let (served, _) = thousand_concurrent_calls().await;
    assert_correct_unary_spans("server", &served);
}

/// The client side of the same calls: one correct client span each.
/// grpcio's client batches the calls into `sendmsg`s of up to 260 iovecs,
/// every one of which the kernel must copy: a header block lost there
/// would leave the client's HPACK table untrusted and later methods unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_unary_calls_made() {
    require_e2e!();
    let (_, made) = thousand_concurrent_calls().await;
    assert_correct_unary_spans("client", &made);
}

/// Runs 1,000 concurrent unary calls from a grpcio client to a grpcio
/// server, both selected; returns the server's and the client's spans.
async fn thousand_concurrent_calls() -> (Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_grpc();
    let port = server.port.to_string();
    let agent = Agent::start(
        &["--port", &port, "--exe", &executable("python3")],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    let (client, output) = run_client(
        "python3",
        "grpc_client.py",
        &[&port, "concurrent", &CONCURRENT_CALLS.to_string()],
    );
    assert_eq!(output, [format!("concurrent {CONCURRENT_CALLS}")]);

    let (served, made) = receiver
        .settle_pair((server.pid(), client), CONCURRENT_CALLS, WAIT, SETTLE)
        .await;
    assert_eq!(agent.stop(), 0);
    eprintln!("{} server spans, {} client spans", served.len(), made.len());
    (served, made)
}

const CONCURRENT_CALLS: usize = 1000;

/// Exactly [`CONCURRENT_CALLS`] spans, each a successful `Unary` call.
fn assert_correct_unary_spans(side: &str, spans: &[ReceivedSpan]) {
    assert_eq!(spans.len(), CONCURRENT_CALLS, "{side} spans");
    for span in spans {
        assert_eq!(span.name, "sonde.test.Echo/Unary", "{span:#?}");
        assert_eq!(span.str_attr("rpc.response.status_code"), "OK");
        assert_eq!(span.status_code, StatusCode::Unset);
        assert!(span.end_unix_ns > span.start_unix_ns);
    }
}
