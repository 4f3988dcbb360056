//! End-to-end RED metrics: the real agent instruments a real server under a
//! load of known shape; a real Prometheus server scrapes the agent's
//! /metrics and PromQL over its HTTP API returns the expected request
//! counts, error counts and latency buckets; the OTLP receiver gets the
//! same numbers; a flood of 100,000 unique paths keeps the series count at
//! the budget and the agent's memory within a stated bound. The OTLP
//! metrics exporter itself is also run against the receiver over both
//! protocols without root.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::export::otlp::{OtlpConfig, OtlpOverrides, Signal};
use agent::metrics::otlp::{AgentTelemetry, ExportSchedule, MetricSources, run_metrics_exporter};
use agent::metrics::red::{RedMetrics, Temporality};
use agent::model::measure::{Measurement, Protocol as CallProtocol};
use agent::model::span::{AttributeValue, Resource, SpanKind};
use agent::telemetry::{Counter, Stats};
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoSpanKind;
use serde_json::json;
use sonde_tests::{
    OtlpReceiver, Protocol, ReceivedHistogram, ReceivedSpan,
    agent::{Agent, config_file, memory_kib},
    apps::{Server, curl},
    prometheus::{self, Prometheus, free_port, http_get},
    require_e2e,
};

const WAIT: Duration = Duration::from_secs(30);
const SERVER_DURATION: &str = "http.server.request.duration";

/// PromQL label matcher for the series of one instrumented process
/// (`instance` is `service.instance.id`, `host:pid:start`).
fn of_pid(pid: u32) -> String {
    format!(r#"instance=~".+:{pid}:.+""#)
}

/// GETs every URL on one curl connection (keep-alive), bodies discarded.
fn get_all(method: &str, urls: &[String]) {
    let mut args = vec!["-X", method];
    for url in urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
}

/// The latest cumulative point of each series of `pid`'s server histogram.
fn latest_server_points(points: &[ReceivedHistogram], pid: u32) -> Vec<ReceivedHistogram> {
    let mut latest = BTreeMap::new();
    for point in points
        .iter()
        .filter(|p| p.name == SERVER_DURATION && p.resource.get("process.pid") == Some(&json!(pid)))
    {
        let key = serde_json::to_string(&point.attributes).unwrap_or_default();
        latest.insert(key, point.clone());
    }
    latest.into_values().collect()
}

fn total_count(points: &[ReceivedHistogram], filter: impl Fn(&ReceivedHistogram) -> bool) -> u64 {
    points.iter().filter(|p| filter(p)).map(|p| p.count).sum()
}

/// A known load against the Python server: 30 requests on
/// `/users/<n>/orders/<m>` (templated by the heuristic), 6 slow (300 ms)
/// and 8 failing (503) requests on `/status/<code>` (a user route
/// pattern), 4 POSTs answered 404 (not an error on the server side), and
/// 10 health checks (ignored). Prometheus, the OTLP receiver and the
/// spans must all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_metrics_reach_prometheus_and_otlp() {
    require_e2e!();
    if let Some(reason) = prometheus::skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let metrics_port = free_port();
    let config = config_file(
        "red",
        &format!(
            "metrics:\n  prometheus_port: {metrics_port}\n  export_interval_secs: 1\n  \
             routes: ['/status/{{code}}']\n  ignore: ['/health*']\n"
        ),
    );
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--pid",
            &server.pid().to_string(),
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    let prometheus = Prometheus::start(SocketAddr::from(([127, 0, 0, 1], metrics_port)));

    let users: Vec<String> = (0..30)
        .map(|i| server.url(&format!("/users/{}/orders/{}", 1000 + i * 37, i)))
        .collect();
    get_all("GET", &users);
    get_all("GET", &vec![server.url("/status/200?sleep=0.3"); 6]);
    get_all("GET", &vec![server.url("/status/503"); 8]);
    get_all("POST", &vec![server.url("/status/404"); 4]);
    get_all("GET", &vec![server.url("/health"); 10]);

    // PromQL over what Prometheus scraped.
    let pid = of_pid(server.pid());
    let series = "http_server_request_duration_seconds";
    prometheus.wait_for_value(&format!("sum({series}_count{{{pid}}})"), 48.0, WAIT);
    let query = |promql: String| prometheus.scalar(&promql);
    assert_eq!(
        query(format!(
            r#"sum({series}_count{{{pid},http_route="/users/{{id}}/orders/{{id}}",http_response_status_code="200"}})"#
        )),
        Some(30.0)
    );
    assert_eq!(
        query(format!(r#"sum({series}_count{{{pid},error_type!=""}})"#)),
        Some(8.0),
        "only the 503s are errors on the server side"
    );
    assert_eq!(
        query(format!(
            r#"sum({series}_count{{{pid},http_route="/status/{{code}}",error_type="503"}})"#
        )),
        Some(8.0)
    );
    assert_eq!(
        query(format!(
            r#"sum({series}_count{{{pid},http_request_method="POST",http_response_status_code="404"}})"#
        )),
        Some(4.0)
    );
    let slow = format!(r#"{pid},http_route="/status/{{code}}",http_response_status_code="200""#);
    assert_eq!(
        query(format!(r#"sum({series}_bucket{{{slow},le="0.5"}})"#)),
        Some(6.0),
        "300 ms requests are within 0.5 s"
    );
    assert_eq!(
        query(format!(r#"sum({series}_bucket{{{slow},le="0.25"}})"#)),
        Some(0.0),
        "300 ms requests are above 0.25 s"
    );
    assert_eq!(
        query(format!(
            r#"count({series}_count{{{pid},http_route=~"/health.*"}})"#
        )),
        None,
        "ignored paths have no series"
    );
    assert_eq!(
        query(format!(r#"count({series}_count{{{pid},url_path!=""}})"#)),
        None,
        "raw paths are never labels"
    );
    assert_eq!(
        query(format!(
            r#"count(target_info{{{pid},process_pid="{}"}})"#,
            server.pid()
        )),
        Some(1.0)
    );
    // The agent's own counters, on the same endpoint.
    assert_eq!(
        query(r#"sum(sonde_requests_ignored_total{job="sonde"})"#.to_owned()),
        Some(10.0)
    );
    assert!(
        query(r#"sum(sonde_spans_produced_total{job="sonde"})"#.to_owned()) >= Some(48.0),
        "{}",
        agent.log_text()
    );

    // The OTLP receiver gets the same numbers.
    let points = receiver
        .wait_for_histograms(
            |points| total_count(&latest_server_points(points, server.pid()), |_| true) == 48,
            WAIT,
        )
        .await;
    let latest = latest_server_points(&points, server.pid());
    let route = |p: &ReceivedHistogram| p.attributes.get("http.route").cloned();
    assert_eq!(
        total_count(&latest, |p| route(p)
            == Some(json!("/users/{id}/orders/{id}"))),
        30
    );
    assert_eq!(
        total_count(&latest, |p| p.attributes.contains_key("error.type")),
        8
    );
    let slow: Vec<&ReceivedHistogram> = latest
        .iter()
        .filter(|p| {
            route(p) == Some(json!("/status/{code}"))
                && p.attributes.get("http.response.status_code") == Some(&json!(200))
        })
        .collect();
    assert_eq!(slow.len(), 1, "{slow:#?}");
    assert_eq!((slow[0].count_le(0.5), slow[0].count_le(0.25)), (6, 0));
    for point in &latest {
        assert_eq!(point.unit, "s");
        assert_eq!(point.temporality, AggregationTemporality::Cumulative);
        assert_eq!(point.scope_name, "sonde");
        assert!(!point.attributes.contains_key("url.path"), "{point:#?}");
    }

    // Spans are named after the same routes; ignored paths give no span.
    let ours = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| {
                s.kind == ProtoSpanKind::Server
                    && s.resource.get("process.pid") == Some(&json!(server.pid()))
            })
            .cloned()
            .collect()
    };
    let spans = ours(
        &receiver
            .wait_for(|spans| ours(spans).len() >= 48, WAIT)
            .await,
    );
    let names: BTreeMap<&str, usize> = spans.iter().fold(BTreeMap::new(), |mut names, span| {
        *names.entry(span.name.as_str()).or_default() += 1;
        names
    });
    assert_eq!(
        names,
        BTreeMap::from([
            ("GET /status/{code}", 14),
            ("GET /users/{id}/orders/{id}", 30),
            ("POST /status/{code}", 4),
        ]),
        "{spans:#?}"
    );
    assert_eq!(agent.stop(), 0);
    let _ = std::fs::remove_file(config);
}

/// Series budget of the flood test.
const FLOOD_LIMIT: usize = 50;
/// Unique paths in the flood.
const FLOOD_PATHS: usize = 100_000;
/// Client connections sending the flood at once.
const FLOOD_CONNECTIONS: usize = 4;
/// The agent's peak resident memory must stay under this. Measured on the
/// 2-core CI machine: 51 MiB peak (46 MiB after the first fifth of the
/// flood, 48 MiB at the end); the rest is headroom for allocator noise.
const AGENT_MAX_RSS_KIB: u64 = 96 * 1024;
/// How much the agent's RSS may grow from the first fifth of the flood to
/// its end (measured: ~2 MiB) before it counts as growing with the paths.
const AGENT_MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;

/// A flood of unique, non-templatable paths (`/flood/abcd`): the agent
/// keeps exactly the budget of series plus one overflow series, counts the
/// folded measurements, and its memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unique_paths_stays_within_the_budget() {
    require_e2e!();
    let server = Server::node_http();
    let metrics_port = free_port();
    let config = config_file(
        "flood",
        &format!(
            "metrics:\n  prometheus_port: {metrics_port}\n  cardinality_limit: {FLOOD_LIMIT}\n"
        ),
    );
    // Spans go to a closed port: the export queue stays at its bound, the
    // worst case for memory, and no receiver competes for the CPU.
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--pid",
            &server.pid().to_string(),
        ],
        "http://127.0.0.1:1",
        "http/protobuf",
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let started = Instant::now();
    let port = server.port;
    let flood = |first_half: bool| {
        let clients: Vec<_> = (0..FLOOD_CONNECTIONS)
            .map(|connection| {
                std::thread::spawn(move || {
                    let per_connection = FLOOD_PATHS / FLOOD_CONNECTIONS;
                    let half = per_connection / 5;
                    let range = if first_half {
                        0..half
                    } else {
                        half..per_connection
                    };
                    let paths = range
                        .map(|i| format!("/flood/{}", letters(connection * per_connection + i)));
                    get_sequentially(port, paths)
                })
            })
            .collect();
        for client in clients {
            client.join().expect("flood client panicked");
        }
    };
    // A fifth of the flood, then the memory it took, then the rest.
    flood(true);
    let early_rss = memory_kib(agent.pid(), "VmRSS");
    flood(false);
    let flood_time = started.elapsed();

    // Wait for the agent to work through what the kernel handed it.
    let mut last_total = 0;
    let mut stable_since = Instant::now();
    let scrape = loop {
        let scrape = Scrape::fetch(metrics, server.pid());
        if scrape.total != last_total {
            last_total = scrape.total;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            break scrape;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{scrape:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let peak = memory_kib(agent.pid(), "VmHWM");
    let late_rss = memory_kib(agent.pid(), "VmRSS");
    eprintln!(
        "flood of {FLOOD_PATHS} paths in {flood_time:?}: {} measured, {} folded; \
         agent RSS {early_rss} KiB after a fifth, {late_rss} KiB at the end, peak {peak} KiB",
        scrape.total, scrape.folded
    );

    assert!(
        scrape.total >= (FLOOD_PATHS / 2) as u64,
        "most of the flood must reach the agent: {scrape:?}\n{}",
        agent.log_text()
    );
    assert_eq!(scrape.regular_series, FLOOD_LIMIT, "{scrape:?}");
    assert_eq!(scrape.overflow_series, 1, "{scrape:?}");
    assert_eq!(
        scrape.folded,
        scrape.total - FLOOD_LIMIT as u64,
        "every measurement past the budget is folded and counted: {scrape:?}"
    );
    assert!(
        peak <= AGENT_MAX_RSS_KIB,
        "agent peak RSS {peak} KiB > {AGENT_MAX_RSS_KIB} KiB"
    );
    assert!(
        late_rss <= early_rss + AGENT_MAX_RSS_GROWTH_KIB,
        "agent memory grew with the flood: {early_rss} KiB after a fifth, {late_rss} KiB at the end"
    );
    assert_eq!(agent.stop(), 0);
    let _ = std::fs::remove_file(config);
}

/// `i` as four letters: unique, and never an id to the route heuristic.
/// The /metrics endpoint listens on loopback unless told otherwise, and
/// on exactly the address it is given (as the DaemonSet gives it the pod
/// IP): the real agent, scraped over each address of the loopback range.
#[test]
fn the_prometheus_endpoint_listens_where_it_is_told() {
    require_e2e!();
    let scrape = |ip: [u8; 4], port| http_get(SocketAddr::from((ip, port)), "/metrics");
    let port = free_port();
    let agent = Agent::start(
        &["--prometheus-port", &port.to_string(), "--port", "1"],
        "http://127.0.0.1:1",
        "grpc",
    );
    let served = scrape([127, 0, 0, 1], port);
    assert!(
        served.as_ref().is_some_and(
            |(status, body)| *status == 200 && body.contains("sonde_spans_exported_total")
        ),
        "default address: {served:?}"
    );
    assert_eq!(scrape([127, 0, 0, 2], port), None, "not on other addresses");
    agent.stop();

    let port = free_port();
    let agent = Agent::start(
        &[
            "--prometheus-port",
            &port.to_string(),
            "--prometheus-address",
            "127.0.0.2",
            "--port",
            "1",
        ],
        "http://127.0.0.1:1",
        "grpc",
    );
    assert!(
        scrape([127, 0, 0, 2], port).is_some_and(|(status, _)| status == 200),
        "given address"
    );
    assert_eq!(scrape([127, 0, 0, 1], port), None, "only the given address");
    agent.stop();
}

fn letters(i: usize) -> String {
    (0..4)
        .rev()
        .map(|digit| char::from(b'a' + (i / 26_usize.pow(digit) % 26) as u8))
        .collect()
}

/// Sends one GET per path on one keep-alive connection, each after the
/// previous response (one request per send, as clients do, so the agent
/// sees every request).
fn get_sequentially(port: u16, paths: impl Iterator<Item = String>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    stream.set_nodelay(true).expect("nodelay");
    let mut buffer = Vec::with_capacity(4096);
    for path in paths {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: flood\r\n\r\n").expect("send");
        loop {
            if let Some(length) = complete_response(&buffer) {
                buffer.drain(..length);
                break;
            }
            let mut chunk = [0; 4096];
            let read = stream.read(&mut chunk).expect("receive");
            assert!(read > 0, "server closed the connection at {path}");
            buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Length of the first complete response in `buffer` (head, then a
/// `Content-Length` or a chunked body), if it is all there.
fn complete_response(buffer: &[u8]) -> Option<usize> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    if let Some(length) = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
    {
        let length: usize = length.trim().parse().expect("content-length");
        return (buffer.len() >= head_end + length).then_some(head_end + length);
    }
    assert!(
        head.contains("transfer-encoding: chunked"),
        "response without a length: {head}"
    );
    // The last chunk, `0\r\n\r\n`, follows the head's or a chunk's CRLF
    // (the bodies here are short text without CRLFs of their own).
    const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";
    let last = buffer[head_end - 2..]
        .windows(LAST_CHUNK.len())
        .position(|w| w == LAST_CHUNK)?;
    Some(head_end - 2 + last + LAST_CHUNK.len())
}

/// What the agent's /metrics says about one instrumented process.
#[derive(Debug)]
struct Scrape {
    regular_series: usize,
    overflow_series: usize,
    /// Measurements in all its server series.
    total: u64,
    /// `sonde_metric_measurements_folded_total`.
    folded: u64,
}

impl Scrape {
    fn fetch(agent: SocketAddr, pid: u32) -> Self {
        let (status, text) = http_get(agent, "/metrics").expect("the agent serves /metrics");
        assert_eq!(status, 200, "{text}");
        let instance = format!(":{pid}:");
        let value = |line: &str| -> u64 {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad sample {line}"))
        };
        let mut scrape = Self {
            regular_series: 0,
            overflow_series: 0,
            total: 0,
            folded: 0,
        };
        for line in text.lines() {
            if line.starts_with("http_server_request_duration_seconds_count{")
                && line.contains(&instance)
            {
                if line.contains(r#"otel_metric_overflow="true""#) {
                    scrape.overflow_series += 1;
                } else {
                    scrape.regular_series += 1;
                }
                scrape.total += value(line);
            } else if line.starts_with("sonde_metric_measurements_folded_total ") {
                scrape.folded = value(line);
            }
        }
        scrape
    }
}

fn resource(name: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("{name}:1"),
        service_name: name.to_owned(),
        attributes: vec![
            ("service.name".to_owned(), AttributeValue::from(name)),
            ("process.pid".to_owned(), AttributeValue::Int(1)),
        ],
    })
}

/// The OTLP metrics exporter against the receiver over gRPC and HTTP, with
/// both temporalities, and its last export at shutdown. No root needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_export_over_both_protocols() {
    for (protocol, temporality) in [
        (Protocol::Grpc, Temporality::Cumulative),
        (Protocol::Http, Temporality::Delta),
    ] {
        let receiver = OtlpReceiver::start().await;
        let (endpoint, protocol_name) = match protocol {
            Protocol::Grpc => (receiver.grpc_endpoint(), "grpc"),
            Protocol::Http => (receiver.http_endpoint(), "http/protobuf"),
        };
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol_name),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ];
        let lookup = |key: &str| {
            vars.iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        };
        let config =
            OtlpConfig::from_lookup_for(Signal::Metrics, &OtlpOverrides::default(), lookup)
                .unwrap_or_else(|error| panic!("{error}"));
        let stats = Arc::new(Stats::default());
        let red = Arc::new(
            RedMetrics::new(&[0.1, 1.0], 10, Arc::clone(&stats)).unwrap_or_else(|e| panic!("{e}")),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let sources = MetricSources {
            red: Some(Arc::clone(&red)),
            agent: AgentTelemetry {
                stats: Arc::clone(&stats),
                resource: Resource::clone(&resource("sonde")),
                start_unix_ns: 1_700_000_000_000_000_000,
            },
        };
        let exporter = tokio::spawn(run_metrics_exporter(
            sources,
            config,
            ExportSchedule {
                interval: Duration::from_millis(200),
                temporality,
            },
            Arc::clone(&stats),
            stopped,
        ));
        let call = |millis| Measurement {
            kind: SpanKind::Server,
            protocol: CallProtocol::Http {
                method: "GET",
                route: Some("/users/{id}".into()),
                scheme: Some("http"),
                status_code: Some(200),
            },
            error_type: None,
            server: None,
            duration: Duration::from_millis(millis),
        };
        let api = resource("api");
        red.record(&api, &call(50));
        red.record(&api, &call(500));
        receiver
            .wait_for_histograms(|points| !points.is_empty(), WAIT)
            .await;
        // Recorded between exports, sent at the latest by the last export.
        red.record(&api, &call(5000));
        let _ = stop.send(());
        exporter.await.expect("exporter task");

        let points = receiver.histograms();
        let counts: Vec<u64> = points.iter().map(|p| p.count).collect();
        match temporality {
            // Each point has everything so far.
            Temporality::Cumulative => {
                assert_eq!(counts.last(), Some(&3), "{points:#?}");
                assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
            }
            // Each point has what is new, and nothing is counted twice.
            Temporality::Delta => assert_eq!(counts.iter().sum::<u64>(), 3, "{points:#?}"),
        }
        let first = &points[0];
        assert_eq!(first.name, SERVER_DURATION);
        assert_eq!(first.resource.get("service.name"), Some(&json!("api")));
        assert_eq!(
            first.attributes.get("http.route"),
            Some(&json!("/users/{id}"))
        );
        assert_eq!(first.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(first.bucket_counts[..2], [1, 1], "{first:#?}");
        let expected = match temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        };
        assert!(points.iter().all(|p| p.temporality == expected));
        // The agent's own counters and gauges came along in each request.
        let numbers = receiver.numbers();
        assert!(
            numbers
                .iter()
                .all(|n| n.resource.get("service.name") == Some(&json!("sonde"))),
            "{numbers:#?}"
        );
        assert_eq!(
            stats.get(Counter::MetricPointsExported),
            (points.len() + numbers.len()) as u64,
            "{protocol:?}"
        );
        assert_eq!(stats.get(Counter::MetricPointsExportFailed), 0);
        assert!(
            first.sum.is_some_and(|sum| (sum - 0.55).abs() < 1e-9),
            "{first:#?}"
        );
    }
}
