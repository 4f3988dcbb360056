//! The Prometheus endpoint: `GET /metrics` in the Prometheus text format
//! (0.0.4, written by the prometheus-client crate), carrying the RED
//! histograms and every agent counter (`sonde_*_total`).
//!
//! Names follow the OpenTelemetry-to-Prometheus translation: dots become
//! underscores and the unit is a suffix
//! (`http_server_request_duration_seconds_bucket{http_route="/users/{id}",...}`).
//! Each series carries `job` (`service.namespace/service.name`) and
//! `instance` (`service.instance.id`) of its service, and `target_info`
//! carries the other resource attributes, as the translation specifies.
//! Those labels clash with the scrape target's own `job` and `instance`,
//! so scrape the agent with `honor_labels: true`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::red::{Point, RedMetrics, Temporality, bounds_for};
use crate::model::measure::Instrument;
use crate::model::span::{AttributeValue, Resource};
use crate::telemetry::{Counter, Gauge, Stats};

/// Scrapes served at once; further connections are closed at once, so a
/// misbehaving scraper cannot make the agent hold unbounded connections.
const MAX_CONNECTIONS: usize = 8;
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Resource attributes that become `job` and `instance` rather than
/// `target_info` labels.
const IDENTIFYING: [&str; 3] = ["service.name", "service.namespace", "service.instance.id"];

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The port is taken or not ours to use.
    #[error("listening for Prometheus scrapes on {address}")]
    Bind {
        /// Address asked for.
        address: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound endpoint; [`PrometheusEndpoint::serve`] answers scrapes.
pub struct PrometheusEndpoint {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl PrometheusEndpoint {
    /// Binds `address` (before the agent reports that it runs, so a taken
    /// port is an error at start-up).
    pub async fn bind(
        address: SocketAddr,
        red: Option<Arc<RedMetrics>>,
        stats: Arc<Stats>,
    ) -> Result<Self, PrometheusError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| PrometheusError::Bind { address, source })?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AgentCollector { red, stats }));
        Ok(Self {
            listener,
            registry: Arc::new(registry),
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers scrapes until the task is dropped.
    pub async fn serve(self) {
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!(%error, "accepting a Prometheus scrape connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                continue;
            };
            let registry = Arc::clone(&self.registry);
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(Arc::clone(&registry), request));
                // A scraper that hangs up mid-request is its own problem.
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(permit);
            });
        }
    }
}

async fn answer(
    registry: Arc<Registry>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::from(body));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "see /metrics\n".into()));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, String::new()));
    }
    let mut text = String::new();
    Ok(match prometheus_text::encode(&mut text, &registry) {
        Ok(()) => {
            let mut response = reply(StatusCode::OK, text);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            response
        }
        Err(std::fmt::Error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n".into(),
        ),
    })
}

/// Everything /metrics shows, read at each scrape.
#[derive(Debug)]
struct AgentCollector {
    red: Option<Arc<RedMetrics>>,
    stats: Arc<Stats>,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(red) = &self.red {
            encode_red(red, &mut encoder)?;
        }
        for &counter in Counter::ALL {
            let mut metric = encoder.encode_descriptor(
                counter.name(),
                counter.help(),
                None,
                MetricType::Counter,
            )?;
            metric.encode_counter::<NoLabelSet, u64, u64>(&self.stats.get(counter), None)?;
        }
        for &gauge in Gauge::ALL {
            let mut metric =
                encoder.encode_descriptor(gauge.name(), gauge.help(), None, MetricType::Gauge)?;
            metric.encode_gauge(&self.stats.gauge(gauge))?;
        }
        Ok(())
    }
}

/// Histograms grouped by instrument (the format wants one block per
/// metric), then one `target_info` per service.
fn encode_red(red: &RedMetrics, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let collected = red.collect(Temporality::Cumulative);
    let bounds = red.bounds();
    for instrument in Instrument::ALL {
        let mut points = collected.iter().flat_map(|service| {
            service
                .points
                .iter()
                .filter(move |point| point.instrument == instrument)
                .map(move |point| (&service.resource, point))
        });
        let Some(first) = points.next() else {
            continue;
        };
        let name = prometheus_name(instrument.name());
        let mut metric = encoder.encode_descriptor(
            &name,
            instrument.description(),
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (resource, point) in std::iter::once(first).chain(points) {
            let labels = series_labels(resource, point);
            let buckets: Vec<(f64, u64)> = bounds_for(instrument, bounds)
                .iter()
                .copied()
                .zip(point.bucket_counts.iter().copied())
                .collect();
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(point.sum, point.count, &buckets, None)?;
        }
    }
    if !collected.is_empty() {
        let mut info =
            encoder.encode_descriptor("target", "Target metadata", None, MetricType::Info)?;
        for service in &collected {
            info.encode_info(&target_labels(&service.resource))?;
        }
    }
    Ok(())
}

/// `job` and `instance` of the service, then the point's attributes.
fn series_labels(resource: &Resource, point: &Point) -> Vec<(String, String)> {
    let mut labels = identity_labels(resource);
    labels.extend(
        point
            .attributes
            .iter()
            .map(|(key, value)| (prometheus_name(key), value.to_string())),
    );
    labels
}

fn target_labels(resource: &Resource) -> Vec<(String, String)> {
    let mut labels = identity_labels(resource);
    labels.extend(
        resource
            .attributes
            .iter()
            .filter(|(key, _)| !IDENTIFYING.contains(&key.as_str()))
            .map(|(key, value)| (prometheus_name(key), label_value(value))),
    );
    labels
}

fn identity_labels(resource: &Resource) -> Vec<(String, String)> {
    let attribute = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| label_value(value))
    };
    let job = match attribute("service.namespace") {
        Some(namespace) => format!("{namespace}/{}", resource.service_name),
        None => resource.service_name.clone(),
    };
    let mut labels = vec![("job".to_owned(), job)];
    if let Some(instance) = attribute("service.instance.id") {
        labels.push(("instance".to_owned(), instance));
    }
    labels
}

fn label_value(value: &AttributeValue) -> String {
    match value {
        AttributeValue::Str(text) => text.to_string(),
        AttributeValue::Int(number) => number.to_string(),
        AttributeValue::Float(number) => number.to_string(),
        AttributeValue::Bool(flag) => flag.to_string(),
    }
}

/// An OpenTelemetry name as a Prometheus metric or label name: every
/// character outside `[a-zA-Z0-9_]` becomes `_`, and a leading digit gets
/// a `_` in front.
fn prometheus_name(name: &str) -> String {
    let mut translated: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if translated.starts_with(|c: char| c.is_ascii_digit()) {
        translated.insert(0, '_');
    }
    translated
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::red::DEFAULT_BUCKETS;
    use crate::model::measure::{Measurement, Protocol};
    use crate::model::span::SpanKind;

    fn resource() -> Arc<Resource> {
        Arc::new(Resource {
            key: "1:1".into(),
            service_name: "shop".into(),
            attributes: vec![
                ("service.name".into(), AttributeValue::from("shop")),
                ("service.instance.id".into(), AttributeValue::from("h:1:1")),
                ("process.pid".into(), AttributeValue::Int(1)),
            ],
        })
    }

    fn scrape(red: Option<Arc<RedMetrics>>, stats: Arc<Stats>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AgentCollector { red, stats }));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn histograms_and_counters_in_the_text_format() {
        let stats = Arc::new(Stats::default());
        stats.add(Counter::SpansProduced, 7);
        let red = Arc::new(RedMetrics::new(&DEFAULT_BUCKETS, 1, Arc::clone(&stats)).unwrap());
        let call = |route: &'static str, millis| Measurement {
            kind: SpanKind::Server,
            protocol: Protocol::Http {
                method: "GET",
                route: Some(route.into()),
                scheme: Some("http"),
                status_code: Some(200),
            },
            error_type: None,
            server: None,
            duration: Duration::from_millis(millis),
        };
        red.record(&resource(), &call("/users/{id}", 30));
        red.record(&resource(), &call("/users/{id}", 300));
        // Over the budget of 1: folded.
        red.record(&resource(), &call("/other", 3));

        let text = scrape(Some(red), stats);
        let labels = r#"job="shop",instance="h:1:1",http_request_method="GET",http_route="/users/{id}",http_response_status_code="200",url_scheme="http""#;
        for line in [
            "# TYPE http_server_request_duration_seconds histogram".to_owned(),
            format!(r#"http_server_request_duration_seconds_bucket{{{labels},le="0.025"}} 0"#),
            format!(r#"http_server_request_duration_seconds_bucket{{{labels},le="0.05"}} 1"#),
            format!(r#"http_server_request_duration_seconds_bucket{{{labels},le="0.5"}} 2"#),
            format!(r#"http_server_request_duration_seconds_bucket{{{labels},le="+Inf"}} 2"#),
            format!("http_server_request_duration_seconds_count{{{labels}}} 2"),
            r#"http_server_request_duration_seconds_count{job="shop",instance="h:1:1",otel_metric_overflow="true"} 1"#.to_owned(),
            r#"target_info{job="shop",instance="h:1:1",process_pid="1"} 1"#.to_owned(),
            "# TYPE sonde_spans_produced_total counter".to_owned(),
            "sonde_spans_produced_total 7".to_owned(),
            "sonde_metric_measurements_folded_total 1".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nmissing in:\n{text}");
        }
        // 0.03 + 0.3 in binary floating point.
        let sum = format!("http_server_request_duration_seconds_sum{{{labels}}} 0.3");
        assert!(
            text.lines().any(|l| l.starts_with(&sum)),
            "{sum}\nmissing in:\n{text}"
        );
        assert_eq!(
            text.matches("# TYPE http_server_request_duration_seconds ")
                .count(),
            1,
            "one block per metric:\n{text}"
        );
    }

    #[test]
    fn without_red_metrics_only_counters_and_gauges() {
        let stats = Arc::new(Stats::default());
        stats.set_gauge(Gauge::ExportQueueSpans, 12);
        let text = scrape(None, stats);
        assert!(!text.contains("duration"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("# TYPE sonde_"))
                .count(),
            Counter::ALL.len() + Gauge::ALL.len()
        );
        assert!(
            text.contains("# TYPE sonde_export_queue_spans gauge\n"),
            "{text}"
        );
        assert!(text.contains("\nsonde_export_queue_spans 12\n"), "{text}");
        assert!(text.contains("\nsonde_connections_tracked 0\n"), "{text}");
    }

    #[test]
    fn names_are_translated() {
        assert_eq!(
            prometheus_name("http.response.status_code"),
            "http_response_status_code"
        );
        assert_eq!(prometheus_name("k8s.pod.name"), "k8s_pod_name");
        assert_eq!(prometheus_name("1st"), "_1st");
    }

    #[tokio::test]
    async fn the_endpoint_answers_scrapes() {
        let stats = Arc::new(Stats::default());
        stats.add(Counter::SpansExported, 3);
        let endpoint = PrometheusEndpoint::bind("127.0.0.1:0".parse().unwrap(), None, stats)
            .await
            .unwrap();
        let address = endpoint.local_addr().unwrap();
        let server = tokio::spawn(endpoint.serve());
        let get = |path: &'static str| async move {
            let stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = Request::get(path)
                .header("host", "agent")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                content_type,
                String::from_utf8_lossy(&body).into_owned(),
            )
        };
        let (status, content_type, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type.unwrap(),
            prometheus_text::CONTENT_TYPE,
            "the Prometheus text format"
        );
        assert!(body.contains("sonde_spans_exported_total 3\n"), "{body}");
        assert_eq!(get("/").await.0, StatusCode::NOT_FOUND);
        server.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap();
        let error = PrometheusEndpoint::bind(address, None, Arc::default())
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }
}
