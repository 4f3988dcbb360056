//! End-to-end OTLP export over TLS: the real agent tracing a real server
//! and exporting to the repository's OTLP receiver served over TLS with a
//! certificate authority made for the test (`openssl`). Spans arrive over
//! gRPC and HTTP with mTLS; a receiver that requires a client certificate
//! refuses an agent without one, and an agent that trusts another CA
//! refuses the receiver, each with a clear error naming the endpoint in
//! the agent's log and nothing received.

use std::time::Duration;

use sonde_tests::agent::{Agent, config_file};
use sonde_tests::apps::{Server, curl};
use sonde_tests::tls_ca::TestCa;
use sonde_tests::{OtlpReceiver, require_e2e};

const WAIT: Duration = Duration::from_secs(30);
const REQUESTS: usize = 5;

/// `REQUESTS` traced GETs of `path` on one connection.
fn traced_gets(server: &Server, path: &str) {
    let url = server.url(path);
    let mut args = Vec::new();
    for _ in 0..REQUESTS {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
}

/// The agent tracing `server`, exporting to `endpoint` with `tls` variables
/// and batches sent 200 ms after their first span; `args` added to its
/// command line.
fn agent(
    server: &Server,
    endpoint: &str,
    protocol: &str,
    tls: &[(&str, &str)],
    args: &[&str],
) -> Agent {
    let mut env = vec![("OTEL_BSP_SCHEDULE_DELAY", "200")];
    env.extend_from_slice(tls);
    let port = server.port.to_string();
    let mut all = vec!["--port", &port];
    all.extend_from_slice(args);
    Agent::start_with_env(&all, endpoint, protocol, &env)
}

/// mTLS with the generic variables over gRPC, with the traces variables
/// over HTTP: every span arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_mtls_with_grpc_and_http() {
    require_e2e!();
    let ca = TestCa::new("mtls");
    let receiver = OtlpReceiver::start_tls(ca.server_config(true)).await;
    let server = Server::python_http();
    let ca_cert = ca.ca_cert();
    let (client_cert, client_key) = ca.client();
    let cases = [
        (
            "grpc",
            receiver.grpc_endpoint(),
            [
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_cert.as_str()),
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    client_cert.as_str(),
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", client_key.as_str()),
            ],
        ),
        (
            "http/protobuf",
            receiver.http_endpoint(),
            [
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_cert.as_str()),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                    client_cert.as_str(),
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", client_key.as_str()),
            ],
        ),
    ];
    for (protocol, endpoint, tls) in cases {
        let agent = agent(&server, &endpoint, protocol, &tls, &[]);
        agent.wait_instrumented(&[server.pid()], WAIT);
        let path = format!("/over-tls-{}", protocol.replace('/', "-"));
        traced_gets(&server, &path);
        let spans = receiver
            .wait_for(
                |spans| {
                    spans
                        .iter()
                        .filter(|span| {
                            span.attributes.get("url.path") == Some(&path.clone().into())
                        })
                        .count()
                        == REQUESTS
                },
                WAIT,
            )
            .await;
        assert!(
            spans.iter().all(|span| span.pid() == server.pid()),
            "{spans:#?}"
        );
        assert_eq!(agent.stop(), 0);
    }
}

/// Exports to `receiver` with `tls` trusting nothing it serves or sending
/// nothing it accepts: the first failure is a warning naming the endpoint,
/// and a failed attempt's line gives `reason` (the first one may only say
/// "connection closed": tonic sometimes sees the connection close before
/// the TLS alert); the spans stay queued for retries (nothing received).
async fn assert_refused(
    receiver: &OtlpReceiver,
    protocol: &str,
    tls: &[(&str, &str)],
    reason: &str,
) {
    let server = Server::python_http();
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    // Attempts every 1-2 s, not 5-30: whether an attempt sees the alert or
    // only the closed connection is a race (about half of them), and the
    // default backoff fits four attempts in WAIT.
    let config = config_file(
        "export-tls-refused",
        "export:\n  retry:\n    initial_interval_secs: 1\n    max_interval_secs: 2\n",
    );
    let config = config.display().to_string();
    let agent = agent(&server, &endpoint, protocol, tls, &["--config", &config]);
    agent.wait_instrumented(&[server.pid()], WAIT);
    traced_gets(&server, "/refused");
    agent.wait_for_log("OTLP export attempt failed", WAIT);
    let log = agent.plain_log();
    let line = log
        .lines()
        .find(|line| line.contains("OTLP export attempt failed") && line.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning of the failed export:\n{log}"));
    assert!(line.contains(&endpoint), "endpoint not named: {line}");
    agent.wait_for_log(reason, WAIT);
    assert!(receiver.spans().is_empty());
    assert_eq!(agent.stop(), 0);
}

/// The receiver requires a client certificate the agent does not have
/// (OTLP/gRPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_export_is_refused_with_a_clear_error() {
    require_e2e!();
    let ca = TestCa::new("no-client-cert");
    let receiver = OtlpReceiver::start_tls(ca.server_config(true)).await;
    assert_refused(
        &receiver,
        "grpc",
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca.ca_cert())],
        "received fatal alert: CertificateRequired",
    )
    .await;
}

/// The agent trusts a CA that did not sign the receiver's certificate
/// (OTLP/HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_gives_a_clear_error_naming_the_endpoint() {
    require_e2e!();
    let ca = TestCa::new("server-ca");
    let other = TestCa::new("other-ca");
    let receiver = OtlpReceiver::start_tls(ca.server_config(false)).await;
    assert_refused(
        &receiver,
        "http/protobuf",
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &other.ca_cert())],
        "invalid peer certificate: UnknownIssuer",
    )
    .await;
}
