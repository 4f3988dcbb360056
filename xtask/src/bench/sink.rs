//! The OTLP receiver of the benchmark: OTLP/HTTP with protobuf bodies on
//! 127.0.0.1, answering every export with success and counting spans
//! (metrics and logs exports are accepted and only counted).
//!
//! The agent and the OpenTelemetry Python SDK export to the same sink, over
//! the same protocol. It is not the end-to-end tests' receiver on purpose:
//! that one decodes and stores every span for assertions, which at tens of
//! thousands of spans per second would take CPU from the server under test
//! on a 2-core machine and charge it to the agent. This one decodes only the
//! nesting of an `ExportTraceServiceRequest` down to each span's bytes.
//! It runs as its own process (`xtask bench-helper sink`, release build),
//! prints `listening ADDR`, and on SIGTERM prints its [`SinkCounts`] as JSON.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use super::process::Process;

/// What the sink received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkCounts {
    /// Trace export requests accepted.
    pub requests: u64,
    /// Spans in them.
    pub spans: u64,
    /// Metrics and logs export requests accepted.
    pub other_requests: u64,
    /// Requests refused (not an uncompressed protobuf POST to /v1/traces,
    /// /v1/metrics or /v1/logs).
    pub rejected: u64,
}

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`,
/// down to the spans, which stay undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
}

fn count_spans(body: Bytes) -> Option<u64> {
    let request = ExportTraceServiceRequest::decode(body).ok()?;
    Some(
        request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len() as u64)
            .sum(),
    )
}

/// The running sink, seen from the benchmark.
pub struct Sink {
    process: Process,
    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
}

impl Sink {
    /// Starts the sink from the release xtask binary `helper`.
    pub fn start(helper: &Path) -> Result<Self> {
        let mut command = Command::new(helper);
        command.args(["bench-helper", "sink"]);
        let mut process = Process::spawn("the OTLP sink", &mut command, true)?;
        let line = process.read_line()?;
        let addr = line
            .strip_prefix("listening ")
            .with_context(|| format!("unexpected first line from the OTLP sink: {line}"))?;
        Ok(Self {
            endpoint: format!("http://{addr}"),
            process,
        })
    }

    /// Stops the sink and returns what it received.
    pub fn stop(self) -> Result<SinkCounts> {
        let (_, output) = self.process.stop_and_read()?;
        let json = output
            .lines()
            .find(|line| line.starts_with('{'))
            .with_context(|| format!("no counts from the OTLP sink: {output}"))?;
        serde_json::from_str(json).with_context(|| format!("parsing the sink's counts {json}"))
    }
}

/// Shared by the connections.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    spans: AtomicU64,
    other_requests: AtomicU64,
    rejected: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SinkCounts {
        SinkCounts {
            requests: self.requests.load(Ordering::Relaxed),
            spans: self.spans.load(Ordering::Relaxed),
            other_requests: self.other_requests.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// `xtask bench-helper sink`: serves until SIGTERM, then prints the counts.
pub fn serve() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the sink's runtime")?;
    let counts = runtime.block_on(serve_until_terminated())?;
    println!("{}", serde_json::to_string(&counts)?);
    Ok(())
}

async fn serve_until_terminated() -> Result<SinkCounts> {
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the OTLP sink")?;
    let addr: SocketAddr = listener.local_addr()?;
    // The benchmark reads this line to learn the port.
    println!("listening {addr}");
    let counters = Arc::new(Counters::default());
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(counters.snapshot()),
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting an exporter connection")?;
                let counters = Arc::clone(&counters);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let counters = Arc::clone(&counters);
                        async move { Ok::<_, Infallible>(handle(request, &counters).await) }
                    });
                    // An exporter closing its connection is not our concern.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// What an export request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Traces,
    /// Metrics or logs.
    Other,
}

fn signal_of(method: &Method, path: &str) -> Option<Signal> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/traces" => Some(Signal::Traces),
        "/v1/metrics" | "/v1/logs" => Some(Signal::Other),
        _ => None,
    }
}

async fn handle(request: Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    let signal = signal_of(request.method(), request.uri().path()).filter(|_| {
        !request
            .headers()
            .contains_key(hyper::header::CONTENT_ENCODING)
    });
    let accepted = match (signal, request.into_body().collect().await) {
        (Some(Signal::Traces), Ok(body)) => count_spans(body.to_bytes()).map(|spans| {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            counters.spans.fetch_add(spans, Ordering::Relaxed);
        }),
        (Some(Signal::Other), Ok(_)) => {
            counters.other_requests.fetch_add(1, Ordering::Relaxed);
            Some(())
        }
        _ => None,
    };
    let (status, body) = match accepted {
        // An empty Export*ServiceResponse: everything accepted.
        Some(()) => (StatusCode::OK, Bytes::new()),
        None => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            (StatusCode::BAD_REQUEST, Bytes::from_static(b"not OTLP"))
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message as _;

    use hyper::Method;

    use super::{
        ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Signal, count_spans, signal_of,
    };

    #[test]
    fn signals_by_path() {
        assert_eq!(signal_of(&Method::POST, "/v1/traces"), Some(Signal::Traces));
        assert_eq!(signal_of(&Method::POST, "/v1/metrics"), Some(Signal::Other));
        assert_eq!(signal_of(&Method::GET, "/v1/traces"), None);
        assert_eq!(signal_of(&Method::POST, "/"), None);
    }

    #[test]
    fn spans_are_counted_across_resources_and_scopes() {
        let scope = |n: usize| ScopeSpans {
            spans: vec![Bytes::from_static(b"\x0a\x01\x01"); n],
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(2), scope(3)],
                },
                ResourceSpans {
                    scope_spans: vec![scope(1)],
                },
            ],
        };
        assert_eq!(count_spans(request.encode_to_vec().into()), Some(6));
        assert_eq!(count_spans(Bytes::new()), Some(0));
        assert_eq!(count_spans(Bytes::from_static(b"\xff\xff")), None);
    }
}
