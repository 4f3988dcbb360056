//! A real OTLP receiver for tests: OTLP/gRPC (the generated tonic
//! `TraceService` and `MetricsService` servers) and OTLP/HTTP with protobuf
//! bodies (hyper, gzip accepted), on 127.0.0.1, storing every span and
//! metric point (histograms, sums, gauges) flattened with its resource so that tests assert on
//! exactly what a collector would have got. It can refuse span exports
//! ([`OtlpReceiver::fail_next`]) or answer them late
//! ([`OtlpReceiver::answer_after`]), as a sick collector would.

mod flatten;
mod grpc;
mod http;
mod metrics;
mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use flatten::hex;
pub use metrics::{NumberKind, ReceivedHistogram, ReceivedNumber};

/// One received span with its resource, ids as lowercase hex.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// Resource attributes.
    pub resource: BTreeMap<String, Value>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Instrumentation scope version.
    pub scope_version: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// W3C `tracestate`.
    pub trace_state: String,
    /// OTLP span flags (W3C trace flags in the low byte).
    pub flags: u32,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start, Unix epoch nanoseconds.
    pub start_unix_ns: u64,
    /// End, Unix epoch nanoseconds.
    pub end_unix_ns: u64,
    /// Span attributes (arrays and maps as JSON arrays and objects, bytes
    /// as hex strings).
    pub attributes: BTreeMap<String, Value>,
    /// Status code (`Unset` when the span has no status).
    pub status_code: StatusCode,
    /// Status message.
    pub status_message: String,
}

impl ReceivedSpan {
    /// A string attribute; panics naming the span if it is missing.
    pub fn str_attr(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{key} missing in {self:#?}"))
    }

    /// An integer attribute; panics naming the span if it is missing.
    pub fn int_attr(&self, key: &str) -> i64 {
        self.attributes
            .get(key)
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("{key} missing in {self:#?}"))
    }

    /// The `process.pid` resource attribute; 0 for spans without one (an
    /// SDK's).
    pub fn pid(&self) -> u32 {
        self.resource
            .get("process.pid")
            .and_then(Value::as_u64)
            .map_or(0, |pid| pid as u32)
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        (self.end_unix_ns - self.start_unix_ns) as f64 / 1e6
    }
}

/// Spans of `pid` of that kind, oldest first.
pub fn spans_of(spans: &[ReceivedSpan], pid: u32, kind: SpanKind) -> Vec<ReceivedSpan> {
    let mut ours: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.pid() == pid && s.kind == kind)
        .cloned()
        .collect();
    ours.sort_by_key(|s| s.start_unix_ns);
    ours
}

/// The one span of `spans` that `pick` selects; panics, naming `what`,
/// when there are none or several.
pub fn the_span<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    match found.as_slice() {
        [span] => span,
        _ => panic!("{} spans for {what}: {found:#?}", found.len()),
    }
}

/// Which OTLP transport a request came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP (protobuf).
    Http,
}

/// One export request, accepted or not.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedRequest {
    /// Transport.
    pub protocol: Protocol,
    /// Request headers (gRPC metadata), names lowercase; values that are
    /// not text are left out.
    pub headers: BTreeMap<String, String>,
    /// Spans in the request.
    pub spans: usize,
    /// True once its spans are stored and the answer is on its way; false
    /// when the receiver answered with an injected failure, and while a
    /// delayed answer is pending (for good if the client gave up first).
    pub accepted: bool,
}

/// A failure the receiver answers with instead of accepting (see
/// [`OtlpReceiver::fail_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// gRPC `UNAVAILABLE` / HTTP 503: the exporter should retry.
    Retryable,
    /// gRPC `INVALID_ARGUMENT` / HTTP 400: the exporter should give up.
    Permanent,
}

/// What both servers record into.
#[derive(Debug, Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    requests: Vec<ReceivedRequest>,
    failures: VecDeque<Failure>,
    /// Delays before answering span exports, cycled through (see
    /// [`OtlpReceiver::answer_after`]); empty: answer at once.
    delays: Vec<Duration>,
    /// Span exports received since `delays` was set.
    delayed: usize,
    /// Metrics are kept apart: requests and failures above are spans'.
    histograms: Vec<ReceivedHistogram>,
    numbers: Vec<ReceivedNumber>,
}

impl Store {
    fn next_delay(&mut self) -> Duration {
        if self.delays.is_empty() {
            return Duration::ZERO;
        }
        let delay = self.delays[self.delayed % self.delays.len()];
        self.delayed += 1;
        delay
    }
}

/// Shared by the two servers and the test.
#[derive(Debug, Default)]
struct Shared(Mutex<Store>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread must not hide what was received.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request, waits for its delay, then accepts its spans or
    /// answers with the next injected failure.
    ///
    /// A client that gives up during the delay drops this future at the
    /// `await` (tonic at the request's `grpc-timeout` or on the client's
    /// RST_STREAM, hyper on the client's hang-up): the request stays
    /// unaccepted and its spans unstored, as at a collector that never
    /// finished it, so what the receiver holds is what the exporter saw
    /// accepted.
    async fn receive(
        &self,
        protocol: Protocol,
        headers: BTreeMap<String, String>,
        request: &ExportTraceServiceRequest,
    ) -> Result<(), Failure> {
        let spans = flatten::flatten(request);
        let (index, failure, delay) = {
            let mut store = self.lock();
            let failure = store.failures.pop_front();
            let delay = store.next_delay();
            store.requests.push(ReceivedRequest {
                protocol,
                headers,
                spans: spans.len(),
                accepted: false,
            });
            (store.requests.len() - 1, failure, delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        let mut store = self.lock();
        store.requests[index].accepted = true;
        store.spans.extend(spans);
        Ok(())
    }

    /// Records the histogram, sum and gauge points of a metrics request.
    fn receive_metrics(&self, request: &ExportMetricsServiceRequest) {
        let (histograms, numbers) = metrics::flatten(request);
        let mut store = self.lock();
        store.histograms.extend(histograms);
        store.numbers.extend(numbers);
    }
}

/// The receiver; both servers stop when it is dropped. OTLP/HTTP
/// connections are closed with it (a killed collector); tonic shuts OTLP/gRPC
/// connections down gracefully, finishing what they are serving.
#[derive(Debug)]
pub struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    /// Serving TLS.
    tls: bool,
    shared: Arc<Shared>,
    servers: [JoinHandle<()>; 2],
}

impl OtlpReceiver {
    /// Serves gRPC and HTTP on two ephemeral ports.
    pub async fn start() -> Self {
        Self::start_on(0, 0).await
    }

    /// Serves on the given ports (0: any free port), for tests where the
    /// exporter is pointed at the receiver before it exists.
    pub async fn start_on(grpc_port: u16, http_port: u16) -> Self {
        Self::serve(grpc_port, http_port, None).await
    }

    /// Serves both protocols over TLS with `config` (see
    /// [`crate::tls_ca::TestCa::server_config`]); the endpoints are then
    /// `https://localhost:PORT`, the name the server certificate carries.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::serve(0, 0, Some(config)).await
    }

    async fn serve(grpc_port: u16, http_port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let grpc_listener = bind(grpc_port).await;
        let http_listener = bind(http_port).await;
        let grpc_addr = local_addr(&grpc_listener);
        let http_addr = local_addr(&http_listener);
        let shared = Arc::new(Shared::default());
        let servers = [
            tokio::spawn(grpc::serve(grpc_listener, Arc::clone(&shared), tls.clone())),
            tokio::spawn(http::serve(http_listener, Arc::clone(&shared), tls.clone())),
        ];
        Self {
            grpc_addr,
            http_addr,
            tls: tls.is_some(),
            shared,
            servers,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` over TLS) for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        self.endpoint(self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` over TLS) for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf` (the exporter
    /// appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        self.endpoint(self.http_addr)
    }

    fn endpoint(&self, addr: SocketAddr) -> String {
        if self.tls {
            format!("https://localhost:{}", addr.port())
        } else {
            format!("http://{addr}")
        }
    }

    /// Every span accepted so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// Every histogram point received so far, in arrival order.
    pub fn histograms(&self) -> Vec<ReceivedHistogram> {
        self.shared.lock().histograms.clone()
    }

    /// Polls until `predicate` holds for the histogram points received so
    /// far and returns them; panics with everything received if `timeout`
    /// passes.
    pub async fn wait_for_histograms(
        &self,
        predicate: impl Fn(&[ReceivedHistogram]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedHistogram> {
        poll_until(|| self.histograms(), predicate, timeout, String::new).await
    }

    /// Every sum and gauge point received so far, in arrival order.
    pub fn numbers(&self) -> Vec<ReceivedNumber> {
        self.shared.lock().numbers.clone()
    }

    /// Polls until `predicate` holds for the sum and gauge points received
    /// so far and returns them; panics with everything received if
    /// `timeout` passes.
    pub async fn wait_for_numbers(
        &self,
        predicate: impl Fn(&[ReceivedNumber]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedNumber> {
        poll_until(|| self.numbers(), predicate, timeout, String::new).await
    }

    /// Every export request so far, including rejected ones.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests received over `protocol`.
    pub fn request_count(&self, protocol: Protocol) -> usize {
        let store = self.shared.lock();
        store
            .requests
            .iter()
            .filter(|request| request.protocol == protocol)
            .count()
    }

    /// Answers the next `count` requests with `failure` instead of
    /// accepting them.
    pub fn fail_next(&self, count: usize, failure: Failure) {
        self.shared
            .lock()
            .failures
            .extend(std::iter::repeat_n(failure, count));
    }

    /// Answers span exports from now on only after a delay, the n-th one
    /// after `delays[n % delays.len()]` (empty: at once again): a slow
    /// collector, and with a delay longer than the exporter's timeout one
    /// the exporter gives up on (such a request stays unaccepted, its spans
    /// unstored). The delay of a request is fixed when it arrives.
    pub fn answer_after(&self, delays: &[Duration]) {
        let mut store = self.shared.lock();
        store.delays = delays.to_vec();
        store.delayed = 0;
    }

    /// Polls until `predicate` holds for the spans received so far and
    /// returns them; panics with everything received if `timeout` passes.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let requests = || format!("\nrequests: {:#?}", self.requests());
        poll_until(|| self.spans(), predicate, timeout, requests).await
    }
    /// Waits until `done` holds for the spans received, or `wait` passed,
    /// then `settle` more for stray extra spans; returns them. Unlike
    /// [`OtlpReceiver::wait_for`] it does not panic: the assertions that
    /// follow say what is missing, where other tests' processes may be
    /// selected too and a dump of everything received would drown that.
    pub async fn settle(
        &self,
        wait: Duration,
        settle: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let started = Instant::now();
        while started.elapsed() < wait && !done(&self.spans()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(settle).await;
        self.spans()
    }

    /// The server spans of process `server` and the client spans of
    /// process `client` (each by start time) once both have `calls` at
    /// least, as [`OtlpReceiver::settle`] waits for them.
    pub async fn settle_pair(
        &self,
        (server, client): (u32, u32),
        calls: usize,
        wait: Duration,
        settle: Duration,
    ) -> (Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
        let pair = |spans: &[ReceivedSpan]| {
            (
                spans_of(spans, server, SpanKind::Server),
                spans_of(spans, client, SpanKind::Client),
            )
        };
        let spans = self
            .settle(wait, settle, |spans| {
                let (served, made) = pair(spans);
                served.len() >= calls && made.len() >= calls
            })
            .await;
        pair(&spans)
    }
}

/// Calls `fetch` until `predicate` holds for what it returns; panics with
/// the last value and `context` if `timeout` passes first.
async fn poll_until<T: std::fmt::Debug>(
    fetch: impl Fn() -> Vec<T>,
    predicate: impl Fn(&[T]) -> bool,
    timeout: Duration,
    context: impl Fn() -> String,
) -> Vec<T> {
    let started = Instant::now();
    loop {
        let items = fetch();
        if predicate(&items) {
            return items;
        }
        if started.elapsed() > timeout {
            panic!(
                "no match within {timeout:?}; {} received: {items:#?}{}",
                items.len(),
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

/// Headers whose values are text, for [`ReceivedRequest::headers`].
fn text_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect()
}

async fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|error| panic!("binding the OTLP receiver to 127.0.0.1:{port}: {error}"))
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|error| panic!("address of the OTLP receiver's socket: {error}"))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn one_span() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "GET".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// As the agent's exporter does: a deadline on the call, sent as
    /// `grpc-timeout`, and the call dropped when it passes.
    async fn export_within(
        client: &mut TraceServiceClient<tonic::transport::Channel>,
        timeout: Duration,
    ) -> bool {
        let mut request = tonic::Request::new(one_span());
        request.set_timeout(timeout);
        matches!(
            tokio::time::timeout(timeout, client.export(request)).await,
            Ok(Ok(_))
        )
    }

    /// A request whose answer comes after the client gave up is never
    /// accepted, even once its delay has passed; the next one, answered in
    /// time, is.
    #[tokio::test]
    async fn a_request_answered_after_the_client_gave_up_is_not_accepted() {
        let receiver = OtlpReceiver::start().await;
        let stall = Duration::from_millis(800);
        let slow = Duration::from_millis(100);
        receiver.answer_after(&[stall, slow]);
        let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
            .await
            .unwrap_or_else(|error| panic!("connecting to the receiver: {error}"));
        let timeout = Duration::from_millis(300);

        assert!(!export_within(&mut client, timeout).await, "stalled");
        tokio::time::sleep(stall).await;
        assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
        let started = Instant::now();
        assert!(
            export_within(&mut client, timeout).await,
            "slow but in time"
        );
        assert!(
            started.elapsed() >= slow,
            "answered after {:?}",
            started.elapsed()
        );

        let accepted: Vec<bool> = receiver.requests().iter().map(|r| r.accepted).collect();
        assert_eq!(accepted, [false, true]);
        assert_eq!(receiver.spans().len(), 1);
    }
}
