//! What the gRPC test clients' `suite` action does
//! (`tests/apps/grpc_client.{py,js}`), and how its calls must look as
//! spans, whatever the transport (h2c or TLS) and library.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

use crate::{OtlpReceiver, ReceivedSpan};

/// The `traceparent` the test clients send with their first call.
pub const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
/// Its parent span id.
pub const PARENT_ID: &str = "b7ad6b7169203331";

/// What `grpc_client.{py,js} suite` prints: the calls and their outcomes.
pub const SUITE_OUTPUT: [&str; 5] = [
    "Unary OK 2",
    "Unary NOT_FOUND -",
    "Unary DEADLINE_EXCEEDED -",
    "ServerStream OK 3",
    "ClientStream OK got 4",
];

/// The suite's calls as spans: `(rpc.method, status name)`.
pub const SUITE_SPANS: [(&str, &str); 5] = [
    ("sonde.test.Echo/Unary", "OK"),
    ("sonde.test.Echo/Unary", "NOT_FOUND"),
    ("sonde.test.Echo/Unary", "DEADLINE_EXCEEDED"),
    ("sonde.test.Echo/ServerStream", "OK"),
    ("sonde.test.Echo/ClientStream", "OK"),
];

/// Asserts the five spans of a suite run seen from one side.
pub fn assert_suite(spans: &[ReceivedSpan], kind: SpanKind, server_port: u16) {
    let got: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.name.as_str(), s.str_attr("rpc.response.status_code")))
        .collect();
    assert_eq!(got, SUITE_SPANS, "{kind:?} spans: {spans:#?}");
    for span in spans {
        assert_eq!(span.str_attr("rpc.system.name"), "grpc");
        assert_eq!(span.str_attr("rpc.method"), span.name);
        assert_eq!(span.int_attr("server.port"), i64::from(server_port));
        assert_eq!(span.str_attr("network.protocol.version"), "2");
        let status = span.str_attr("rpc.response.status_code");
        let is_error = match kind {
            SpanKind::Server => status == "DEADLINE_EXCEEDED",
            _ => status != "OK",
        };
        let expected = if is_error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(span.status_code, expected, "{span:#?}");
        if is_error {
            assert_eq!(span.str_attr("error.type"), status);
        }
    }
    // The deadline was 200 ms; the server stopped waiting then too.
    let deadline = spans[2].duration_ms();
    assert!(
        (150.0..950.0).contains(&deadline),
        "deadline call took {deadline} ms: {:#?}",
        spans[2]
    );
    if kind == SpanKind::Server {
        assert_eq!(spans[0].trace_id, TRACE_ID, "incoming traceparent joined");
        assert_eq!(spans[0].parent_span_id, PARENT_ID);
        assert!(spans[1..].iter().all(|s| s.trace_id != TRACE_ID));
    }
}

/// Waits (see [`OtlpReceiver::settle_pair`]) for a suite run's spans from the
/// server and client processes, then asserts both sides.
pub async fn assert_suite_traced(
    receiver: &OtlpReceiver,
    (server_pid, server_port): (u32, u16),
    client_pid: u32,
    wait: Duration,
    settle: Duration,
) {
    let (served, made) = receiver
        .settle_pair((server_pid, client_pid), 5, wait, settle)
        .await;
    assert_suite(&served, SpanKind::Server, server_port);
    assert_suite(&made, SpanKind::Client, server_port);
}
