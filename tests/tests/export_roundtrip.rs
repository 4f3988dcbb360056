//! The agent's OTLP exporter against the test receiver, over both
//! protocols: spans arrive intact (ids, parent, attributes, resource), gzip
//! works, and retries carry spans across a collector that starts late or
//! refuses for a while. Spans are built by hand: no root, no kernel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::export::otlp::{OtlpConfig, OtlpOverrides, run_exporter};
use agent::model::span::{
    Attribute, AttributeValue, Resource, Span, SpanBatch, SpanKind, SpanStatus,
};
use agent::telemetry::{Counter, Stats};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;
use sonde_tests::{Failure, OtlpReceiver, Protocol, ReceivedSpan, hex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// The exporter task under test, fed through its channel.
struct Exporter {
    tx: mpsc::Sender<SpanBatch>,
    task: JoinHandle<()>,
    stats: Arc<Stats>,
}

impl Exporter {
    /// Configured through the standard variables; a batch is sent as soon
    /// as one [`trace`] is queued, so no test depends on the batch delay.
    fn start(protocol: Protocol, endpoint: &str, gzip: bool) -> Self {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                match protocol {
                    Protocol::Grpc => "grpc",
                    Protocol::Http => "http/protobuf",
                },
            ),
            (
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                if gzip { "gzip" } else { "none" },
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20a"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3"),
        ];
        let lookup = |key: &str| {
            vars.iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        };
        let mut config = OtlpConfig::from_lookup(&OtlpOverrides::default(), lookup)
            .unwrap_or_else(|error| panic!("exporter config for {vars:?}: {error}"));
        // Fast retries keep the tests short; the budget still allows for a
        // slow machine.
        config.retry.initial_backoff = Duration::from_millis(50);
        config.retry.max_backoff = Duration::from_millis(500);
        config.retry.max_elapsed = Duration::from_secs(20);
        let (tx, rx) = mpsc::channel(64);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run_exporter(rx, config, Arc::clone(&stats)));
        Self { tx, task, stats }
    }

    async fn send(&self, spans: &[Span]) {
        if let Err(error) = self.tx.send(spans.to_vec()).await {
            panic!(
                "exporter stopped before taking {} spans: {error}",
                spans.len()
            );
        }
    }

    /// Polls the exporter's counters until `done` holds.
    async fn wait_until(&self, what: &str, done: impl Fn(&Stats) -> bool) {
        let started = Instant::now();
        while !done(&self.stats) {
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {what}; counters: {:?}",
                self.stats.nonzero()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the channel and waits for the flush.
    async fn stop(self) -> Arc<Stats> {
        drop(self.tx);
        match tokio::time::timeout(WAIT, self.task).await {
            Ok(Ok(())) => self.stats,
            Ok(Err(error)) => panic!("exporter task failed: {error}"),
            Err(_) => panic!(
                "exporter did not stop within {WAIT:?}; counters: {:?}",
                self.stats.nonzero()
            ),
        }
    }
}

fn resource(pid: i64, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("pid:{pid}"),
        service_name: service.to_owned(),
        attributes: vec![
            ("service.name".to_owned(), service.into()),
            ("process.pid".to_owned(), pid.into()),
            ("host.name".to_owned(), "test-host".into()),
        ],
    })
}

/// A trace over two processes: frontend's server span, its client call,
/// and backend's server span for that call (child of the client span).
fn trace() -> Vec<Span> {
    let frontend = resource(100, "frontend");
    let backend = resource(200, "backend");
    let trace_id = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    let start = 1_700_000_000_000_000_000;
    let server = Span {
        resource: Arc::clone(&frontend),
        trace_id,
        span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        parent_span_id: None,
        trace_flags: 0x01,
        trace_state: Some("vendor=opaque".to_owned()),
        kind: SpanKind::Server,
        name: "GET /checkout".to_owned(),
        start_unix_ns: start,
        end_unix_ns: start + 48_000_000,
        attributes: vec![
            Attribute::new("http.request.method", "GET"),
            Attribute::new("url.path", "/checkout"),
            Attribute::new("http.response.status_code", 200_i64),
            Attribute::new("sonde.test.ratio", AttributeValue::Float(0.25)),
            Attribute::new("sonde.test.flag", AttributeValue::Bool(true)),
        ],
        status: SpanStatus::Unset,
    };
    let client = Span {
        span_id: [0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36],
        parent_span_id: Some(server.span_id),
        trace_state: None,
        kind: SpanKind::Client,
        name: "POST".to_owned(),
        start_unix_ns: start + 10_000_000,
        end_unix_ns: start + 40_000_000,
        attributes: vec![
            Attribute::new("http.request.method", "POST"),
            Attribute::new("server.address", "backend"),
            Attribute::new("server.port", 8080_i64),
            Attribute::new("http.response.status_code", 503_i64),
            Attribute::new("error.type", "503"),
        ],
        status: SpanStatus::Error("503".to_owned()),
        ..server.clone()
    };
    let downstream = Span {
        resource: backend,
        span_id: [0x5f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78],
        parent_span_id: Some(client.span_id),
        kind: SpanKind::Server,
        name: "POST /charge".to_owned(),
        start_unix_ns: start + 12_000_000,
        end_unix_ns: start + 38_000_000,
        ..client.clone()
    };
    // In the order they finish.
    vec![downstream, client, server]
}

fn json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Str(text) => Value::from(text.as_str()),
        AttributeValue::Int(number) => Value::from(*number),
        AttributeValue::Float(number) => Value::from(*number),
        AttributeValue::Bool(flag) => Value::from(*flag),
    }
}

/// What a collector must see for `span`, per the OTLP mapping.
fn expected(span: &Span) -> ReceivedSpan {
    let (status_code, status_message) = match &span.status {
        SpanStatus::Unset => (StatusCode::Unset, String::new()),
        SpanStatus::Error(message) => (StatusCode::Error, message.clone()),
    };
    ReceivedSpan {
        resource: span
            .resource
            .attributes
            .iter()
            .map(|(key, value)| (key.clone(), json(value)))
            .collect(),
        scope_name: "sonde".to_owned(),
        // Workspace version: the same for the agent and this crate.
        scope_version: env!("CARGO_PKG_VERSION").to_owned(),
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: span.parent_span_id.map(|id| hex(&id)).unwrap_or_default(),
        trace_state: span.trace_state.clone().unwrap_or_default(),
        flags: u32::from(span.trace_flags),
        name: span.name.clone(),
        kind: match span.kind {
            SpanKind::Server => ProtoSpanKind::Server,
            SpanKind::Client => ProtoSpanKind::Client,
        },
        start_unix_ns: span.start_unix_ns,
        end_unix_ns: span.end_unix_ns,
        attributes: span
            .attributes
            .iter()
            .map(|attribute| (attribute.key.to_owned(), json(&attribute.value)))
            .collect(),
        status_code,
        status_message,
    }
}

fn assert_arrived_intact(sent: &[Span], received: &[ReceivedSpan]) {
    assert_eq!(received.len(), sent.len(), "received: {received:#?}");
    for span in sent {
        let id = hex(&span.span_id);
        let Some(got) = received.iter().find(|received| received.span_id == id) else {
            panic!("span {id} ({}) missing; received: {received:#?}", span.name);
        };
        assert_eq!(got, &expected(span), "span {}", span.name);
    }
}

fn endpoint(receiver: &OtlpReceiver, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        Protocol::Http => receiver.http_endpoint(),
    }
}

fn assert_counters(stats: &Stats, expected: &[(Counter, u64)]) {
    let actual: Vec<(Counter, u64)> = expected
        .iter()
        .map(|&(counter, _)| (counter, stats.get(counter)))
        .collect();
    assert_eq!(actual, expected, "all counters: {:?}", stats.nonzero());
}

/// Sends one trace through `exporter` and [`stop_when_received`].
async fn deliver_trace(exporter: Exporter, receiver: &OtlpReceiver) -> Arc<Stats> {
    let sent = trace();
    exporter.send(&sent).await;
    stop_when_received(exporter, receiver, &sent).await
}

/// Waits for `receiver` to have the `sent` spans, stops the exporter and
/// checks that every span arrived intact; returns the exporter's counters.
async fn stop_when_received(
    exporter: Exporter,
    receiver: &OtlpReceiver,
    sent: &[Span],
) -> Arc<Stats> {
    let received = receiver
        .wait_for(|spans| spans.len() >= sent.len(), WAIT)
        .await;
    let stats = exporter.stop().await;
    assert_arrived_intact(sent, &received);
    stats
}

/// Whether each request so far was accepted, in order.
fn accepted(receiver: &OtlpReceiver) -> Vec<bool> {
    receiver
        .requests()
        .iter()
        .map(|request| request.accepted)
        .collect()
}

/// One trace through the exporter to the receiver, compressed or not:
/// spans intact, headers and encoding as configured.
async fn roundtrip(protocol: Protocol, gzip: bool) {
    let receiver = OtlpReceiver::start().await;
    let exporter = Exporter::start(protocol, &endpoint(&receiver, protocol), gzip);
    let stats = deliver_trace(exporter, &receiver).await;
    assert_counters(
        &stats,
        &[
            (Counter::SpansExported, 3),
            (Counter::SpansExportFailed, 0),
            (Counter::ExportRequestsFailed, 0),
        ],
    );
    let requests = receiver.requests();
    assert!(!requests.is_empty());
    let encoding_header = match protocol {
        Protocol::Grpc => "grpc-encoding",
        Protocol::Http => "content-encoding",
    };
    for request in &requests {
        assert!(
            request.protocol == protocol && request.accepted,
            "{request:#?}"
        );
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        assert_eq!(header("x-tenant"), Some("team a"), "{request:#?}");
        assert!(
            header("user-agent").is_some_and(|agent| agent.starts_with("sonde/")),
            "{request:#?}"
        );
        assert_eq!(
            header(encoding_header),
            gzip.then_some("gzip"),
            "{request:#?}"
        );
    }
}

#[tokio::test]
async fn grpc_spans_arrive_intact() {
    roundtrip(Protocol::Grpc, false).await;
}

#[tokio::test]
async fn grpc_gzip_spans_arrive_intact() {
    roundtrip(Protocol::Grpc, true).await;
}

#[tokio::test]
async fn http_spans_arrive_intact() {
    roundtrip(Protocol::Http, false).await;
}

#[tokio::test]
async fn http_gzip_spans_arrive_intact() {
    roundtrip(Protocol::Http, true).await;
}

/// A port nothing listens on (yet): connections to it are refused.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|error| panic!("binding an ephemeral port: {error}"));
    listener
        .local_addr()
        .unwrap_or_else(|error| panic!("ephemeral port address: {error}"))
        .port()
}

/// The collector comes up after the exporter has already failed to reach it.
async fn late_receiver(protocol: Protocol) {
    let port = free_port();
    let exporter = Exporter::start(protocol, &format!("http://127.0.0.1:{port}"), false);
    let sent = trace();
    exporter.send(&sent).await;
    exporter
        .wait_until("two refused attempts", |stats| {
            stats.get(Counter::ExportRequestsFailed) >= 2
        })
        .await;
    let receiver = match protocol {
        Protocol::Grpc => OtlpReceiver::start_on(port, 0).await,
        Protocol::Http => OtlpReceiver::start_on(0, port).await,
    };
    let stats = stop_when_received(exporter, &receiver, &sent).await;
    assert_counters(
        &stats,
        &[(Counter::SpansExported, 3), (Counter::SpansExportFailed, 0)],
    );
    assert!(
        stats.get(Counter::ExportRequestsFailed) >= 2,
        "{:?}",
        stats.nonzero()
    );
}

#[tokio::test]
async fn grpc_export_retries_until_the_receiver_starts() {
    late_receiver(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_export_retries_until_the_receiver_starts() {
    late_receiver(Protocol::Http).await;
}

/// The receiver answers UNAVAILABLE / 503 twice, then accepts.
async fn retryable_rejections(protocol: Protocol) {
    let receiver = OtlpReceiver::start().await;
    receiver.fail_next(2, Failure::Retryable);
    let exporter = Exporter::start(protocol, &endpoint(&receiver, protocol), false);
    let stats = deliver_trace(exporter, &receiver).await;
    assert_eq!(accepted(&receiver), [false, false, true]);
    assert_counters(
        &stats,
        &[
            (Counter::SpansExported, 3),
            (Counter::SpansExportFailed, 0),
            (Counter::ExportRequestsFailed, 2),
        ],
    );
}

#[tokio::test]
async fn grpc_unavailable_is_retried() {
    retryable_rejections(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_503_is_retried() {
    retryable_rejections(Protocol::Http).await;
}

/// The receiver answers INVALID_ARGUMENT / 400: one attempt, spans counted
/// as lost.
async fn permanent_rejection(protocol: Protocol) {
    let receiver = OtlpReceiver::start().await;
    receiver.fail_next(1, Failure::Permanent);
    let exporter = Exporter::start(protocol, &endpoint(&receiver, protocol), false);
    exporter.send(&trace()).await;
    exporter
        .wait_until("the batch to be given up", |stats| {
            stats.get(Counter::SpansExportFailed) > 0
        })
        .await;
    let stats = exporter.stop().await;

    assert_eq!(accepted(&receiver), [false], "no retry");
    assert!(receiver.spans().is_empty());
    assert_counters(
        &stats,
        &[
            (Counter::SpansExported, 0),
            (Counter::SpansExportFailed, 3),
            (Counter::ExportRequestsFailed, 1),
        ],
    );
}

#[tokio::test]
async fn grpc_invalid_argument_is_not_retried() {
    permanent_rejection(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_400_is_not_retried() {
    permanent_rejection(Protocol::Http).await;
}
