//! End-to-end: the real agent, its real kernel programs, real unmodified
//! servers and clients (Python http.server, Node.js http, curl, urllib), and
//! a real OTLP receiver. Needs root; see `sonde_tests::agent::skip_reason`.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use serde_json::Value;
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Server, app_path, curl, raw_exchange},
    require_e2e,
};

const WAIT: Duration = Duration::from_secs(20);
/// After the expected spans arrived, how long to keep watching for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);

/// Spans of one process, by `url.path` and status, for assertions.
fn server_spans_by_request(
    spans: &[ReceivedSpan],
    pid: u32,
) -> BTreeMap<(String, i64), Vec<ReceivedSpan>> {
    let mut by_request: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for span in spans
        .iter()
        .filter(|s| s.pid() == pid && s.kind == SpanKind::Server)
    {
        let key = (
            span.str_attr("url.path").to_owned(),
            span.int_attr("http.response.status_code"),
        );
        by_request.entry(key).or_default().push(span.clone());
    }
    by_request
}

fn assert_server_span(span: &ReceivedSpan, method: &str, port: u16) {
    assert_eq!(span.kind, SpanKind::Server, "{span:#?}");
    // The route heuristic templates the numeric status segment.
    let path = span.str_attr("url.path");
    let route = span.str_attr("http.route");
    let expected_route = if path.starts_with("/status/") {
        "/status/{id}"
    } else {
        path
    };
    assert_eq!(route, expected_route, "{span:#?}");
    assert_eq!(
        span.name,
        format!("{method} {route}"),
        "span name is `{{method}} {{route}}`"
    );
    assert_eq!(span.str_attr("http.request.method"), method);
    assert_eq!(span.str_attr("url.scheme"), "http");
    assert_eq!(span.int_attr("server.port"), i64::from(port));
    assert_eq!(span.str_attr("network.peer.address"), "127.0.0.1");
    assert_eq!(span.str_attr("client.address"), "127.0.0.1");
    assert!(span.int_attr("network.peer.port") > 0);
    assert_eq!(span.str_attr("network.protocol.version"), "1.1");
    assert_eq!(span.trace_id.len(), 32);
    assert_eq!(span.span_id.len(), 16);
    assert!(span.end_unix_ns >= span.start_unix_ns);
    let status = span.int_attr("http.response.status_code");
    if status >= 500 {
        assert_eq!(span.status_code, StatusCode::Error, "{span:#?}");
        assert_eq!(span.str_attr("error.type"), status.to_string());
    } else {
        assert_eq!(span.status_code, StatusCode::Unset, "{span:#?}");
        assert!(!span.attributes.contains_key("error.type"));
    }
}

/// Python and Node servers selected by port and by pid; every request gives
/// exactly one correct server span; an unselected server and garbage bytes
/// give none. Exported over OTLP/gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_spans_from_python_and_node() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let python = Server::python_http();
    let node = Server::node_http();
    let unselected = Server::python_http();
    let agent = Agent::start(
        &[
            "--port",
            &python.port.to_string(),
            "--pid",
            &node.pid().to_string(),
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );

    curl(&["-o", "/dev/null", &python.url("/status/200?sleep=0.3")]);
    curl(&[
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-d",
        "hello",
        &python.url("/status/503"),
    ]);
    // Keep-alive: curl reuses one connection for both URLs.
    curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &python.url("/chunked"),
        &python.url("/status/404"),
    ]);
    // Pipelining: two requests in one send.
    let pipelined = raw_exchange(
        python.port,
        b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\nDELETE /status/202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(
        String::from_utf8_lossy(&pipelined)
            .matches("HTTP/1.")
            .count(),
        2,
        "two responses"
    );
    // Expect: 100-continue with a body sent after the interim response.
    let body = "x".repeat(3000);
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &body,
        &python.url("/status/201"),
    ]);
    // Not HTTP: a TLS ClientHello and binary garbage on the selected port.
    raw_exchange(
        python.port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xde\xad\xbe\xef",
        Duration::from_secs(2),
    );
    raw_exchange(
        python.port,
        b"\x00\x01\x02 not http at all \xff\xfe\r\n\r\n",
        Duration::from_secs(2),
    );
    curl(&["-o", "/dev/null", &node.url("/status/201?sleep=100")]);
    curl(&["-o", "/dev/null", &node.url("/status/500")]);
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &unselected.url("/status/200")]);
    }

    receiver.wait_for(|spans| spans.len() >= 9, WAIT).await;
    tokio::time::sleep(SETTLE).await;
    let spans = receiver.spans();
    let python_spans = server_spans_by_request(&spans, python.pid());
    let node_spans = server_spans_by_request(&spans, node.pid());
    let expected_python = [
        ("/status/200", 200, "GET", 2),
        ("/status/503", 503, "POST", 1),
        ("/chunked", 200, "GET", 1),
        ("/status/404", 404, "GET", 1),
        ("/status/202", 202, "DELETE", 1),
        ("/status/201", 201, "POST", 1),
    ];
    for (path, status, method, count) in expected_python {
        let found = python_spans
            .get(&(path.to_owned(), status))
            .map_or(&[][..], Vec::as_slice);
        assert_eq!(
            found.len(),
            count,
            "python {method} {path} -> {status}: {python_spans:#?}"
        );
        for span in found {
            assert_server_span(span, method, python.port);
        }
    }
    let slow = &python_spans[&("/status/200".to_owned(), 200)];
    assert!(
        slow.iter().any(|s| s.duration_ms() >= 300.0),
        "handler slept 300 ms: {slow:#?}"
    );
    assert_eq!(
        python_spans.values().map(Vec::len).sum::<usize>(),
        7,
        "no span for garbage: {python_spans:#?}"
    );

    assert_eq!(node_spans.len(), 2, "{node_spans:#?}");
    let node_slow = &node_spans[&("/status/201".to_owned(), 201)][0];
    assert_server_span(node_slow, "GET", node.port);
    assert!(node_slow.duration_ms() >= 100.0, "{node_slow:#?}");
    assert_server_span(
        &node_spans[&("/status/500".to_owned(), 500)][0],
        "GET",
        node.port,
    );

    assert!(
        spans.iter().all(|s| s.pid() != unselected.pid()),
        "nothing from the unselected server"
    );
    assert_eq!(spans.len(), 9, "only the expected spans: {spans:#?}");
    let service = spans[0]
        .resource
        .get("service.name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(!service.is_empty(), "service.name set");
    assert_eq!(agent.stop(), 0, "clean exit on SIGTERM");
}

fn python_executable() -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A client that starts after the agent is selected live by executable path
/// and gets client spans; the unselected Node server gets none. Exported over
/// OTLP/HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_spans_from_a_process_started_later() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let node = Server::node_http();
    let agent = Agent::start(
        &["--exe", &python_executable()],
        &receiver.http_endpoint(),
        "http/protobuf",
    );

    let client = Command::new("python3")
        .arg(app_path("http_client.py"))
        .args([
            "--wait",
            "1",
            &node.url("/status/200?sleep=50"),
            &node.url("/status/404"),
            &node.url("/status/500"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the python client");
    let client_pid = client.id();
    let output = client
        .wait_with_output()
        .expect("running the python client");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["200", "404", "500"]
    );

    // Other python processes on the machine are selected too: look at ours,
    // and at anything that claims to be the (unselected) node server.
    let ours = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.pid() == client_pid || s.pid() == node.pid())
            .cloned()
            .collect()
    };
    receiver
        .wait_for(|spans| ours(spans).len() >= 3, WAIT)
        .await;
    tokio::time::sleep(SETTLE).await;
    let spans = ours(&receiver.spans());
    assert_eq!(spans.len(), 3, "{spans:#?}");
    for span in &spans {
        assert_eq!(
            span.kind,
            SpanKind::Client,
            "only the python client is selected: {span:#?}"
        );
        assert_eq!(span.pid(), client_pid);
        assert_eq!(span.name, "GET");
        assert_eq!(span.int_attr("server.port"), i64::from(node.port));
        assert_eq!(span.str_attr("server.address"), "127.0.0.1");
        assert_eq!(span.str_attr("network.peer.address"), "127.0.0.1");
        assert!(
            span.str_attr("url.full")
                .starts_with(&format!("http://127.0.0.1:{}/status/", node.port))
        );
        let status = span.int_attr("http.response.status_code");
        // Client side: 4xx is an error too.
        let expected = if status >= 400 {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(span.status_code, expected, "{span:#?}");
    }
    let slow = spans
        .iter()
        .find(|s| s.int_attr("http.response.status_code") == 200)
        .expect("200 span");
    assert!(slow.duration_ms() >= 50.0, "{slow:#?}");
    assert!(
        !slow.str_attr("url.full").contains("sleep"),
        "queries are not exported by default"
    );
    assert_eq!(agent.stop(), 0);
}

/// Requests replayed byte for byte get byte-identical responses with and
/// without the agent (only the Date header may differ), while the agent
/// captures them with a tiny payload prefix that cuts every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_unchanged_and_small_captures_still_traced() {
    require_e2e!();
    let requests: [&[u8]; 4] = [
        b"GET /big?size=20000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /chunked HTTP/1.1\r\nHost: a\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nConnection: close\r\n\r\n",
        b"GET /big?size=5000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST /status/201 HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    ];
    let strip_date = |reply: Vec<u8>| -> String {
        String::from_utf8_lossy(&reply)
            .lines()
            .filter(|l| !l.starts_with("Date:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let server = Server::python_http();
    let replay = || -> Vec<String> {
        requests
            .iter()
            .map(|r| strip_date(raw_exchange(server.port, r, Duration::from_secs(5))))
            .collect()
    };
    let baseline = replay();

    let receiver = OtlpReceiver::start().await;
    let agent = Agent::start(
        &["--port", &server.port.to_string(), "--capture-bytes", "48"],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    let traced = replay();
    assert_eq!(baseline, traced, "responses differ with the agent running");
    assert!(baseline[0].len() > 20000 && baseline[1].contains("third"));
    // Keep-alive after a body far longer than the capture: the tracker must
    // skip it by length to find the next request.
    curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &server.url("/big?size=5000"),
        &server.url("/status/200"),
    ]);

    receiver.wait_for(|spans| spans.len() >= 6, WAIT).await;
    tokio::time::sleep(SETTLE).await;
    let by_request = server_spans_by_request(&receiver.spans(), server.pid());
    let keys: Vec<_> = by_request
        .iter()
        .map(|((path, status), spans)| (path.as_str(), *status, spans.len()))
        .collect();
    assert_eq!(
        keys,
        [
            ("/big", 200, 3),
            ("/chunked", 200, 1),
            ("/status/200", 200, 1),
            ("/status/201", 201, 1)
        ],
        "one span per request despite 48-byte captures"
    );
    assert_eq!(agent.stop(), 0);
}
