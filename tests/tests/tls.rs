//! End-to-end: HTTP and gRPC inside TLS, read at OpenSSL's API by the
//! uprobes on the system's libssl.so.3, from real unmodified programs:
//! Python's `http.server` wrapped in `ssl`, nginx serving HTTPS (HTTP/1.1
//! and HTTP/2), curl -k as the client, and a grpcio server and client with
//! TLS credentials (Debian's python3-grpcio under /usr/bin/python3, which
//! links the system libssl; PyPI's wheel embeds BoringSSL, out of these
//! probes' reach). The certificates are made at test time by `openssl req`.
//! Trace context inside TLS: an incoming `traceparent` joins, in-process
//! links hold across a TLS call, nothing is injected into TLS.
//! Needs root; see `sonde_tests::agent::skip_reason`.

use std::{net::TcpListener, process::Command, time::Duration};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Certificate, Held, Nginx, Server, app_path, raw_exchange},
    chain::node22,
    grpc_suite::{PARENT_ID, SUITE_OUTPUT, TRACE_ID, assert_suite_traced},
    require_e2e, spans_of,
};

const WAIT: Duration = Duration::from_secs(20);
/// After the expected spans arrived, how long to keep watching for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);
/// What the agent logs once a library has its uprobes.
const ATTACHED: &str = "TLS probes attached";
/// The interpreter whose grpc module links the system's OpenSSL.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// A curl held until released, trusting any certificate; prints each
/// response's status on a line.
fn held_curl(args: &[&str]) -> Held {
    let mut all = vec!["-sSk", "-w", "%{http_code}\\n"];
    all.extend_from_slice(args);
    Held::new("curl", &all)
}

/// Every span the processes in `pids` sent, by kind.
fn spans_from(spans: &[ReceivedSpan], pids: &[u32], kind: SpanKind) -> Vec<ReceivedSpan> {
    let mut found: Vec<ReceivedSpan> = pids
        .iter()
        .flat_map(|&pid| spans_of(spans, pid, kind))
        .collect();
    found.sort_by_key(|s| s.start_unix_ns);
    found
}

/// `(method, url.path, status)` of server spans, `(method, url.full,
/// status)` of client spans, sorted.
fn requests(spans: &[ReceivedSpan]) -> Vec<(String, String, i64)> {
    let mut found: Vec<_> = spans
        .iter()
        .map(|span| {
            let url = match span.kind {
                SpanKind::Server => "url.path",
                _ => "url.full",
            };
            (
                span.str_attr("http.request.method").to_owned(),
                span.str_attr(url).to_owned(),
                span.int_attr("http.response.status_code"),
            )
        })
        .collect();
    found.sort();
    found
}

/// A TCP port free on 127.0.0.1 now, for a server that must be told one.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Asserts exactly one server span and one client span for each request
/// `(method, path, status)` made to 127.0.0.1:`port`, in any order.
fn assert_one_span_each(
    served: &[ReceivedSpan],
    made: &[ReceivedSpan],
    port: u16,
    expected: &[(&str, &str, i64)],
) {
    let as_made = |url: &dyn Fn(&str) -> String| {
        let mut requests: Vec<(String, String, i64)> = expected
            .iter()
            .map(|&(method, path, status)| (method.to_owned(), url(path), status))
            .collect();
        requests.sort();
        requests
    };
    assert_eq!(
        requests(served),
        as_made(&|path| path.to_owned()),
        "one server span per request: {served:#?}"
    );
    assert_eq!(
        requests(made),
        as_made(&|path| format!("https://127.0.0.1:{port}{path}")),
        "one client span per request: {made:#?}"
    );
}

/// What every HTTPS span of these tests carries, whichever side.
fn assert_https_span(span: &ReceivedSpan, port: u16, version: &str) {
    assert_eq!(span.int_attr("server.port"), i64::from(port), "{span:#?}");
    assert_eq!(span.str_attr("network.peer.address"), "127.0.0.1");
    assert_eq!(span.str_attr("network.protocol.version"), version);
    let status = span.int_attr("http.response.status_code");
    let is_error = status >= 500 || (span.kind == SpanKind::Client && status >= 400);
    let expected = if is_error {
        StatusCode::Error
    } else {
        StatusCode::Unset
    };
    assert_eq!(span.status_code, expected, "{span:#?}");
    match span.kind {
        SpanKind::Server => {
            assert_eq!(span.str_attr("url.scheme"), "https", "{span:#?}");
            let route = span.str_attr("http.route");
            assert_eq!(
                span.name,
                format!("{} {route}", span.str_attr("http.request.method"))
            );
        }
        _ => {
            let prefix = format!("https://127.0.0.1:{port}/");
            assert!(span.str_attr("url.full").starts_with(&prefix), "{span:#?}");
            assert_eq!(span.name, span.str_attr("http.request.method"));
        }
    }
}

/// Server spans of requests curl made.
fn assert_curl_user_agent(served: &[ReceivedSpan]) {
    for span in served {
        assert!(
            span.str_attr("user_agent.original").starts_with("curl/"),
            "{span:#?}"
        );
    }
}

/// Python's `http.server` in `ssl` and curl clients, all held until the
/// agent selected them by pid: the server maps libssl only once it runs,
/// so the library is found by the rescan of processes without one. One
/// server span and one client span per request, all https, keep-alive
/// included; a client that sends a broken handshake gives none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_https_server_and_curl_clients() {
    require_e2e!();
    let cert = Certificate::new("python");
    let receiver = OtlpReceiver::start().await;
    // Held, the server can print its port only once released: it gets
    // one chosen here, so the held clients can name it.
    let port = free_port();
    let mut server = Held::new(
        "python3",
        &[
            app_path("http_server.py").to_str().expect("utf-8 path"),
            "--port",
            &port.to_string(),
            "--cert",
            &cert.cert(),
            "--key",
            &cert.key(),
        ],
    );
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    let curls = [
        held_curl(&[
            "-o",
            "/dev/null",
            "-H",
            &traceparent,
            &url("/status/200?sleep=0.2"),
        ]),
        held_curl(&[
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-d",
            "hello",
            &url("/status/503"),
        ]),
        // Keep-alive: both requests on one connection.
        held_curl(&[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            &url("/chunked"),
            &url("/status/404"),
        ]),
    ];
    let mut pids = vec![server.pid().to_string()];
    pids.extend(curls.iter().map(|c| c.pid().to_string()));
    let agent = Agent::start(
        &["--pid", &pids.join(",")],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert!(
        !agent.log_text().contains(ATTACHED),
        "no selected process maps libssl yet"
    );
    assert_eq!(server.run_server(), port);
    agent.wait_for_log(ATTACHED, WAIT);

    let curl_pids: Vec<u32> = curls.iter().map(Held::pid).collect();
    let statuses: Vec<String> = curls.into_iter().map(Held::run).collect();
    assert_eq!(statuses, ["200\n", "503\n", "200\n404\n"]);
    // The start of a ClientHello and no more: the handshake never ends.
    raw_exchange(
        port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xde\xad\xbe\xef",
        Duration::from_secs(2),
    );

    let server_pid = server.pid();
    let ours = |spans: &[ReceivedSpan]| {
        (
            spans_from(spans, &[server_pid], SpanKind::Server),
            spans_from(spans, &curl_pids, SpanKind::Client),
        )
    };
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            let (served, made) = ours(spans);
            served.len() >= 4 && made.len() >= 4
        })
        .await;
    let (served, made) = ours(&spans);
    assert_one_span_each(
        &served,
        &made,
        port,
        &[
            ("GET", "/status/200", 200),
            ("POST", "/status/503", 503),
            ("GET", "/chunked", 200),
            ("GET", "/status/404", 404),
        ],
    );
    for span in served.iter().chain(&made) {
        assert_https_span(span, port, "1.1");
    }
    assert_curl_user_agent(&served);
    // Selected as the holding shell, described as the program it became.
    assert!(
        served.iter().all(|s| {
            let name = s.resource.get("process.executable.name");
            name.and_then(|n| n.as_str())
                .is_some_and(|n| n.starts_with("python3"))
        }),
        "{served:#?}"
    );
    let slow = served
        .iter()
        .find(|s| s.str_attr("url.path") == "/status/200")
        .expect("200 span");
    assert!(slow.duration_ms() >= 200.0, "handler slept: {slow:#?}");
    assert_eq!(
        (slow.trace_id.as_str(), slow.parent_span_id.as_str()),
        (TRACE_ID, PARENT_ID),
        "the traceparent inside TLS joined: {slow:#?}"
    );
    assert_eq!(
        spans.iter().filter(|s| s.pid() == server_pid).count(),
        4,
        "nothing else from the server (the broken handshake): {spans:#?}"
    );
    assert_eq!(agent.stop(), 0);
}

/// nginx, running before the agent starts (its libssl is found by the
/// first scan), serving HTTPS over HTTP/1.1 and HTTP/2 (ALPN) to curl:
/// server spans from its worker and client spans from curl, one per
/// request, https, with the protocol version each used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_https_over_http1_and_http2() {
    require_e2e!();
    let cert = Certificate::new("nginx");
    let port = free_port();
    let nginx = Nginx::start(
        "tls",
        &format!(
            "server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 \"hello\\n\"; }}
        location /missing {{ return 404; }}
        location /fail {{ return 503; }}
    }}",
            cert = cert.cert(),
            key = cert.key(),
        ),
        port,
    );

    let receiver = OtlpReceiver::start().await;
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let curls = [
        held_curl(&["--http1.1", "-o", "/dev/null", &url("/hello/1")]),
        held_curl(&["--http2", "-o", "/dev/null", &url("/missing")]),
        held_curl(&["--http2", "-o", "/dev/null", "-d", "x", &url("/fail")]),
        held_curl(&[
            "--http1.1",
            "-o",
            "/dev/null",
            "-X",
            "DELETE",
            &url("/fail"),
        ]),
    ];
    let curl_pids: Vec<u32> = curls.iter().map(Held::pid).collect();
    let pids: Vec<String> = curl_pids.iter().map(u32::to_string).collect();
    let agent = Agent::start(
        &["--port", &port.to_string(), "--pid", &pids.join(",")],
        &receiver.http_endpoint(),
        "http/protobuf",
    );
    assert!(
        agent.log_text().contains(ATTACHED),
        "nginx's libssl attached by the first scan"
    );
    let statuses: Vec<String> = curls.into_iter().map(Held::run).collect();
    assert_eq!(statuses, ["200\n", "404\n", "503\n", "503\n"]);

    // nginx's worker, a child of the selected master, serves.
    let served_by_nginx = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        let mut found: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| {
                s.kind == SpanKind::Server
                    && s.resource
                        .get("process.executable.name")
                        .and_then(|v| v.as_str())
                        == Some("nginx")
            })
            .cloned()
            .collect();
        found.sort_by_key(|s| s.start_unix_ns);
        found
    };
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            served_by_nginx(spans).len() >= 4
                && spans_from(spans, &curl_pids, SpanKind::Client).len() >= 4
        })
        .await;
    let served = served_by_nginx(&spans);
    let made = spans_from(&spans, &curl_pids, SpanKind::Client);
    let version = |spans: &[ReceivedSpan]| -> Vec<(String, String)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.str_attr("http.request.method").to_owned(),
                    s.str_attr("network.protocol.version").to_owned(),
                )
            })
            .collect()
    };
    let in_order = [
        ("GET", "1.1"),
        ("GET", "2"),
        ("POST", "2"),
        ("DELETE", "1.1"),
    ]
    .map(|(m, v)| (m.to_owned(), v.to_owned()));
    assert_eq!(version(&served), in_order, "{served:#?}");
    assert_eq!(version(&made), in_order, "{made:#?}");
    assert_one_span_each(
        &served,
        &made,
        port,
        &[
            ("GET", "/hello/1", 200),
            ("GET", "/missing", 404),
            ("POST", "/fail", 503),
            ("DELETE", "/fail", 503),
        ],
    );
    for span in served.iter().chain(&made) {
        let version = span.str_attr("network.protocol.version").to_owned();
        assert_https_span(span, port, &version);
    }
    assert_curl_user_agent(&served);
    assert_eq!(
        served[0].str_attr("http.route"),
        "/hello/{id}",
        "{:#?}",
        served[0]
    );
    assert_eq!(agent.stop(), 0);
    drop(nginx);
}

/// A grpcio server with TLS credentials (selected by port) and a grpcio
/// client (held, selected by pid) on one TLS channel: the suite's calls as
/// server and client spans. gRPC core encrypts into memory buffers, so its
/// `SSL_read`/`SSL_write` make no syscall: the kernel ties each SSL object to
/// its socket by the handshake record gRPC writes right after the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_over_tls() {
    require_e2e!();
    let has_grpc = Command::new(DEBIAN_PYTHON)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_grpc,
        "{DEBIAN_PYTHON} has no grpc module: `cargo xtask setup` installs python3-grpcio"
    );
    let cert = Certificate::new("grpc");
    let receiver = OtlpReceiver::start().await;
    let server = Server::start(
        DEBIAN_PYTHON,
        &[
            app_path("grpc_server.py").to_str().expect("utf-8 path"),
            "--cert",
            &cert.cert(),
            "--key",
            &cert.key(),
        ],
    );
    let port = server.port.to_string();
    let client = Held::new(
        DEBIAN_PYTHON,
        &[
            app_path("grpc_client.py").to_str().expect("utf-8 path"),
            &port,
            "suite",
            "--ca",
            &cert.cert(),
        ],
    );
    let client_pid = client.pid();
    let agent = Agent::start(
        &[
            "--port",
            &port,
            "--pid",
            &client_pid.to_string(),
            // gRPC batches frames into large TLS writes.
            "--capture-bytes",
            "4096",
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert!(agent.log_text().contains(ATTACHED));
    let output = client.run();
    assert_eq!(output.lines().collect::<Vec<_>>(), SUITE_OUTPUT);

    assert_suite_traced(
        &receiver,
        (server.pid(), server.port),
        client_pid,
        WAIT,
        SETTLE,
    )
    .await;
    assert_eq!(agent.stop(), 0);
}

/// `--no-tls`: no uprobes, and the ciphertext the socket probes see on a
/// selected HTTPS server and client gives no span at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_ciphertext_gives_no_spans() {
    require_e2e!();
    let cert = Certificate::new("off");
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_https(&cert);
    let url = format!("https://127.0.0.1:{}/status/200", server.port);
    let client = held_curl(&["-o", "/dev/null", "-o", "/dev/null", &url, &url]);
    let client_pid = client.pid();
    let agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--pid",
            &client_pid.to_string(),
            "--no-tls",
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert_eq!(client.run(), "200\n200\n");
    // The agent reads what it captured within a second or so.
    tokio::time::sleep(WAIT / 4).await;
    let (code, log) = agent.stop_with_log();
    assert_eq!(code, 0);
    assert!(!log.contains(ATTACHED), "{log}");
    // The socket probes did capture the connections, and judged them.
    assert!(log.contains("sonde_parse_failed_http1="), "{log}");
    let ours: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.pid() == server.pid() || s.pid() == client_pid)
        .collect();
    assert!(ours.is_empty(), "spans from ciphertext: {ours:#?}");
}

/// Trace context across a TLS hop: a plaintext service (joining curl's
/// `traceparent`) calls an HTTPS one with urllib. Its client span over TLS
/// is a child of its server span (in-process link); no `traceparent` can
/// be inserted into TLS, so the HTTPS service starts a trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_across_a_tls_hop() {
    require_e2e!();
    let cert = Certificate::new("hop");
    let receiver = OtlpReceiver::start().await;
    let backend = Server::python_https(&cert);
    let downstream = format!("https://127.0.0.1:{}/status/200", backend.port);
    // urllib trusts the test certificate through OpenSSL's SSL_CERT_FILE.
    let front = Server::start(
        "env",
        &[
            &format!("SSL_CERT_FILE={}", cert.cert()),
            "python3",
            app_path("chain_service.py").to_str().expect("utf-8 path"),
            "--downstream",
            &downstream,
        ],
    );
    let ports = format!("{},{}", front.port, backend.port);
    let agent = Agent::start(&["--port", &ports], &receiver.grpc_endpoint(), "grpc");
    sonde_tests::apps::curl(&[
        "-o",
        "/dev/null",
        "-H",
        &format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01"),
        &format!("http://127.0.0.1:{}/work", front.port),
    ]);

    let ours = |spans: &[ReceivedSpan]| {
        (
            spans_of(spans, front.pid(), SpanKind::Server),
            spans_of(spans, front.pid(), SpanKind::Client),
            spans_of(spans, backend.pid(), SpanKind::Server),
        )
    };
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            let (served, called, backend) = ours(spans);
            !served.is_empty() && !called.is_empty() && !backend.is_empty()
        })
        .await;
    let (served, called, backend_spans) = ours(&spans);
    let ([served], [called], [backend_span]) = (&served[..], &called[..], &backend_spans[..])
    else {
        panic!("one span each: {served:#?} {called:#?} {backend_spans:#?}");
    };
    assert_eq!(served.trace_id, TRACE_ID, "{served:#?}");
    assert_eq!(served.str_attr("url.scheme"), "http");
    assert_eq!(called.str_attr("url.full"), downstream, "{called:#?}");
    assert_eq!(
        (called.trace_id.as_str(), called.parent_span_id.as_str()),
        (TRACE_ID, served.span_id.as_str()),
        "the call made while serving is the server span's child: {called:#?}"
    );
    assert_eq!(backend_span.str_attr("url.scheme"), "https");
    assert_ne!(backend_span.trace_id, TRACE_ID, "{backend_span:#?}");
    assert_eq!(
        backend_span.parent_span_id, "",
        "nothing injected into TLS: {backend_span:#?}"
    );
    assert_eq!(agent.stop(), 0);
}

/// Node.js 20 (Debian's, on PATH) serving HTTPS and HTTP/2 over TLS to
/// Node.js clients: see [`node_https_both_sides`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node20_https_and_http2_over_tls_both_sides() {
    require_e2e!();
    node_https_both_sides("node", "v20.").await;
}

/// The same with Node.js 22.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node22_https_and_http2_over_tls_both_sides() {
    require_e2e!();
    node_https_both_sides(&node22(), "v22.").await;
}

/// Node.js links OpenSSL into its executable and feeds it through memory
/// BIOs (its TLS wrap does the socket I/O outside any `SSL_*` call). An
/// `https` server and an `http2.createSecureServer` server, each with two
/// Node.js clients at once on one connection apiece (keep-alive through
/// `https.Agent`, one `http2.connect` session): one server span and one
/// client span per request, all https, each request's plaintext tied to
/// its own connection (a server's spans grouped by peer port are exactly
/// the requests of one client).
async fn node_https_both_sides(node: &str, version: &str) {
    let output = Command::new(node)
        .arg("--version")
        .output()
        .expect("running node");
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with(version),
        "{node} is not Node.js {version}x"
    );
    let cert = Certificate::new(&format!("node{version}"));
    let receiver = OtlpReceiver::start().await;
    let server_app = app_path("tls_server.js");
    let client_app = app_path("tls_client.js");
    let (cert_path, key_path) = (cert.cert(), cert.key());
    let held_server = |h2: bool, port: u16| {
        let port = port.to_string();
        let mut args = vec![
            server_app.to_str().expect("utf-8 path"),
            "--cert",
            &cert_path,
            "--key",
            &key_path,
            "--port",
            &port,
        ];
        if h2 {
            args.push("--h2");
        }
        Held::new(node, &args)
    };
    let (h1_port, h2_port) = (free_port(), free_port());
    let mut servers = [held_server(false, h1_port), held_server(true, h2_port)];
    // Each client's paths start with its name, so the server side tells
    // them apart.
    let clients: Vec<(&str, u16, Held)> = [
        ("c1", h1_port),
        ("c2", h1_port),
        ("c3", h2_port),
        ("c4", h2_port),
    ]
    .into_iter()
    .map(|(name, port)| {
        let url = |path: &str| format!("https://127.0.0.1:{port}/{name}{path}");
        let mut args = vec![
            client_app.to_str().expect("utf-8 path").to_owned(),
            "--ca".to_owned(),
            cert.cert(),
            url("/status/200?sleep=200"),
            format!("POST {}", url("/status/503")),
            url("/status/404"),
        ];
        if port == h2_port {
            args.push("--h2".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (name, port, Held::new(node, &args))
    })
    .collect();
    let pids: Vec<String> = servers
        .iter()
        .map(Held::pid)
        .chain(clients.iter().map(|(_, _, client)| client.pid()))
        .map(|pid| pid.to_string())
        .collect();
    let agent = Agent::start(
        &["--pid", &pids.join(",")],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    assert!(
        !agent.log_text().contains(ATTACHED),
        "nothing runs node yet"
    );
    for (server, port) in servers.iter_mut().zip([h1_port, h2_port]) {
        assert_eq!(server.run_server(), port);
    }
    // The executable carries the probes once a selected process runs it:
    // the clients run the same file.
    agent.wait_for_log(ATTACHED, WAIT);
    assert!(
        agent.log_text().contains("bin/node"),
        "attached to the executable: {}",
        agent.log_text()
    );

    let client_pids: Vec<(&str, u16, u32)> = clients
        .iter()
        .map(|(name, port, client)| (*name, *port, client.pid()))
        .collect();
    let outputs: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = clients
            .into_iter()
            .map(|(_, _, client)| scope.spawn(move || client.run()))
            .collect();
        running
            .into_iter()
            .map(|r| r.join().expect("client thread"))
            .collect()
    });
    assert!(
        outputs.iter().all(|o| o == "200\n503\n404\n"),
        "{outputs:?}"
    );

    let server_pids = [servers[0].pid(), servers[1].pid()];
    let all_clients: Vec<u32> = client_pids.iter().map(|c| c.2).collect();
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            spans_from(spans, &server_pids, SpanKind::Server).len() >= 12
                && spans_from(spans, &all_clients, SpanKind::Client).len() >= 12
        })
        .await;
    let expected = |name: &str| {
        [
            ("GET", format!("/{name}/status/200"), 200),
            ("POST", format!("/{name}/status/503"), 503),
            ("GET", format!("/{name}/status/404"), 404),
        ]
    };
    for (server_pid, port, protocol) in [
        (server_pids[0], h1_port, "1.1"),
        (server_pids[1], h2_port, "2"),
    ] {
        let served = spans_from(&spans, &[server_pid], SpanKind::Server);
        let ours: Vec<&(&str, u16, u32)> = client_pids.iter().filter(|c| c.1 == port).collect();
        let made: Vec<ReceivedSpan> = spans_from(
            &spans,
            &ours.iter().map(|c| c.2).collect::<Vec<_>>(),
            SpanKind::Client,
        );
        let all_expected: Vec<(&str, String, i64)> =
            ours.iter().flat_map(|c| expected(c.0)).collect();
        let all_expected: Vec<(&str, &str, i64)> = all_expected
            .iter()
            .map(|(m, p, s)| (*m, p.as_str(), *s))
            .collect();
        assert_one_span_each(&served, &made, port, &all_expected);
        for span in served.iter().chain(&made) {
            assert_https_span(span, port, protocol);
        }
        // Each client's requests on its own connection: the server spans
        // of one peer port are one client's, all of them.
        let mut by_peer: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for span in &served {
            let client = span
                .str_attr("url.path")
                .split('/')
                .nth(1)
                .expect("client name");
            by_peer
                .entry(span.int_attr("network.peer.port"))
                .or_default()
                .push(client.to_owned());
        }
        assert_eq!(by_peer.len(), 2, "{by_peer:?}");
        for names in by_peer.values() {
            assert_eq!(names.len(), 3, "{by_peer:?}");
            assert!(names.iter().all(|n| n == &names[0]), "{by_peer:?}");
        }
    }
    for (_, _, pid) in &client_pids {
        let made = spans_from(&spans, &[*pid], SpanKind::Client);
        assert_eq!(made.len(), 3, "three requests of one client: {made:#?}");
    }
    let (code, log) = agent.stop_with_log();
    assert_eq!(code, 0);
    assert!(
        !log.contains("sonde_kernel_tls_socket_unknown="),
        "all plaintext tied to its connection: {log}"
    );
    drop(servers);
}
