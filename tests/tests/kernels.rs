//! The kernel matrix: one short end-to-end pass over what every supported
//! kernel must run, with one agent: `sonde check`'s report, HTTP/1 server
//! and client spans, an incoming `traceparent` joined, injection, OpenSSL
//! TLS and HTTP/2. `cargo test` runs it on this machine's kernel;
//! `cargo xtask vm` runs it under Debian's 5.10, 6.1 and 6.12 kernels in
//! qemu, telling it (`SONDE_EXPECT_OFF`) which features those kernels are
//! known to lack: a feature off that is not declared there fails the test.

use std::{process::Command, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sonde_tests::{
    OtlpReceiver,
    agent::Agent,
    apps::{Certificate, Server, curl},
    chain::{DONE, Interpreters, python_chain},
    require_e2e, spans_of, the_span,
};

/// Generous: under software emulation the guest runs several times slower.
const WAIT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_millis(1500);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
/// What `sonde check` names each optional feature.
const FEATURES: &[&str] = &[
    "TLS",
    "injection",
    "in-kernel context",
    "Go",
    "Python context",
];

/// Runs `sonde check` and returns its report; it must say the agent runs.
fn check_report() -> String {
    let agent = std::env::var("SONDE_AGENT_BIN").expect("SONDE_AGENT_BIN");
    let output = Command::new(&agent)
        .arg("check")
        .output()
        .unwrap_or_else(|e| panic!("running {agent} check: {e}"));
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("sonde check:\n{report}");
    let code = output.status.code();
    assert!(
        matches!(code, Some(0 | 2)),
        "sonde check says the agent cannot run here ({code:?}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        code == Some(2),
        report.contains(" OFF: "),
        "exit status 2 exactly when a feature is off:\n{report}"
    );
    report
}

/// True if the report says `feature` is on.
fn is_on(report: &str, feature: &str) -> bool {
    report.lines().any(|line| {
        line.strip_prefix(feature)
            .is_some_and(|rest| rest.trim() == "on")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_this_kernel_must_run() {
    require_e2e!();
    let report = check_report();
    let expected_off = std::env::var("SONDE_EXPECT_OFF").unwrap_or_default();
    for feature in FEATURES {
        let declared_off = expected_off.split(',').any(|f| f.trim() == *feature);
        assert_eq!(
            is_on(&report, feature),
            !declared_off,
            "{feature}: on unless this kernel is declared to lack it (SONDE_EXPECT_OFF={expected_off:?})\n{report}"
        );
    }
    let on = |feature| is_on(&report, feature);

    let interpreters = Interpreters::new("kernels");
    let receiver = OtlpReceiver::start().await;
    let b = python_chain(&interpreters, &[]);
    let a = python_chain(&interpreters, &[b.url("/work")]);
    let cert = Certificate::new("kernels");
    let https = Server::python_https(&cert);
    let h2c = Server::node_h2c();
    let pids = [a.pid(), b.pid(), https.pid(), h2c.pid()];
    let ports = format!("{},{},{},{}", a.port, b.port, https.port, h2c.port);
    let agent = Agent::start(
        &["--port", &ports, "--prometheus-port", "0"],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    agent.wait_instrumented(&pids, WAIT);

    // HTTP/1: curl -> A -> B, with a trace context of curl's own.
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    assert_eq!(curl(&["-H", &traceparent, &a.url("/work")]), DONE);
    let spans = receiver
        .wait_for(
            |spans| {
                spans
                    .iter()
                    .filter(|s| s.pid() == a.pid() || s.pid() == b.pid())
                    .count()
                    >= 3
            },
            WAIT,
        )
        .await;
    let a_server = the_span(&spans, "A server span", |s| {
        s.pid() == a.pid() && s.kind == SpanKind::Server
    });
    let a_client = the_span(&spans, "A client span", |s| {
        s.pid() == a.pid() && s.kind == SpanKind::Client
    });
    let b_server = the_span(&spans, "B server span", |s| {
        s.pid() == b.pid() && s.kind == SpanKind::Server
    });
    assert_eq!(a_server.str_attr("url.path"), "/work");
    assert_eq!(a_server.int_attr("http.response.status_code"), 200);
    assert_eq!(a_client.int_attr("server.port"), i64::from(b.port));
    if on("in-kernel context") {
        assert_eq!(
            a_server.trace_id, TRACE_ID,
            "incoming traceparent joined\n{a_server:#?}"
        );
        assert_eq!(a_server.parent_span_id, PARENT_ID, "{a_server:#?}");
        assert_eq!(
            a_client.trace_id, TRACE_ID,
            "A's call is in the trace\n{a_client:#?}"
        );
        assert_eq!(a_client.parent_span_id, a_server.span_id, "{a_client:#?}");
    }
    if on("injection") {
        assert_eq!(
            b_server.trace_id, a_client.trace_id,
            "injected\n{b_server:#?}"
        );
        assert_eq!(b_server.parent_span_id, a_client.span_id, "{b_server:#?}");
    }

    // OpenSSL TLS: the Python server's plaintext.
    if on("TLS") {
        agent.wait_for_log("TLS probes attached", WAIT);
        curl(&[
            "-k",
            "-o",
            "/dev/null",
            &format!("https://127.0.0.1:{}/status/201", https.port),
        ]);
        let spans = receiver
            .settle(WAIT, SETTLE, |spans| {
                !spans_of(spans, https.pid(), SpanKind::Server).is_empty()
            })
            .await;
        let spans = spans_of(&spans, https.pid(), SpanKind::Server);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        assert_eq!(spans[0].str_attr("url.scheme"), "https");
        assert_eq!(spans[0].int_attr("http.response.status_code"), 201);
    }

    // HTTP/2 with prior knowledge (every frame copied).
    curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        &h2c.url("/status/202"),
    ]);
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            !spans_of(spans, h2c.pid(), SpanKind::Server).is_empty()
        })
        .await;
    let spans = spans_of(&spans, h2c.pid(), SpanKind::Server);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].str_attr("network.protocol.version"), "2");
    assert_eq!(spans[0].int_attr("http.response.status_code"), 202);

    assert_eq!(agent.stop(), 0);
}
