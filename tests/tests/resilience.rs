//! End-to-end resilience: the real agent against a real OTLP receiver that
//! is missing, killed, restarted, answering 503 or answering slowly (past
//! the export timeout) under a steady load; graceful shutdown with spans
//! still queued; `kill -9` and an immediate restart (no program of the
//! dead agent left attached); an agent stopped or killed and replaced
//! under a steady load that never sees a failed request; a flood of
//! garbage and truncated HTTP; 5,000 short-lived processes that must leave
//! no state behind, in the agent or in the kernel's target map; clear
//! errors for bad configuration and flags. Losses are checked with the
//! agent's own counters (/metrics, its exit log line, and its OTLP
//! self-metrics), which must reconcile with what the receiver got.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use serde_json::{Value, json};
use sonde_tests::{
    Failure, NumberKind, OtlpReceiver, ReceivedNumber, ReceivedSpan,
    agent::{Agent, config_file, memory_kib, strip_colours},
    apps::{Server, SteadyLoad, get_many},
    prometheus::{Counters, free_port},
    require_e2e,
};

/// Longest wait for spans or counters.
const WAIT: Duration = Duration::from_secs(30);
/// Retries after 0.5-1 s, doubling up to 2 s (the defaults, 5 s up to 30 s,
/// would make each phase wait tens of seconds), one request at a time.
const FAST_RETRIES: &str = "export:\n  max_in_flight: 1\n  retry:\n    initial_interval_secs: 1\n    max_interval_secs: 2\n";
/// Batches leave 200 ms after their first span, so each phase is short.
const FAST_BATCHES: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "200")];
/// The exporter's shutdown deadline (`DEFAULT_SHUTDOWN_TIMEOUT`).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// On top of the deadline: the other stages stopping, the metrics
/// exporter's flush (concurrent, same deadline) and the process exiting.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(3);
/// Requests per phase.
const PER_PHASE: usize = 20;

/// Where the agent's spans went, by its own counters: each span produced is
/// exported, dropped from the full queue, dropped for waiting longer than
/// the retry budget, refused for good by the collector, or still queued
/// (the gauge). A batch in flight is in none of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SpanLedger {
    produced: u64,
    exported: u64,
    dropped: u64,
    expired: u64,
    failed: u64,
    queued: u64,
}

impl SpanLedger {
    fn read(counters: &Counters) -> Self {
        let all = counters.all();
        let get = |name: &str| {
            *all.get(name)
                .unwrap_or_else(|| panic!("no {name} on /metrics: {all:?}"))
        };
        Self {
            produced: get("sonde_spans_produced_total"),
            exported: get("sonde_spans_exported_total"),
            dropped: get("sonde_spans_dropped_queue_full_total"),
            expired: get("sonde_spans_dropped_expired_total"),
            failed: get("sonde_spans_export_failed_total"),
            queued: get("sonde_export_queue_spans"),
        }
    }

    fn balanced(&self) -> bool {
        self.produced == self.exported + self.dropped + self.expired + self.failed + self.queued
    }

    /// Polls until no batch is in flight: the ledger balances, and holds
    /// still between two reads (one read of /metrics is not atomic).
    fn settled(counters: &Counters) -> Self {
        let started = Instant::now();
        let mut last = Self::read(counters);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = Self::read(counters);
            if now.balanced() && now == last {
                return now;
            }
            assert!(
                started.elapsed() < WAIT,
                "produced != exported + dropped + expired + failed + queued after {WAIT:?}: {now:?}"
            );
            last = now;
        }
    }

    /// The receiver got exactly the spans counted as exported, each once
    /// (a retried batch is not delivered twice).
    fn assert_delivered(&self, received: &[ReceivedSpan]) {
        assert_eq!(
            self.exported,
            received.len() as u64,
            "exported == received: {self:?}"
        );
        let ids: BTreeSet<&str> = received.iter().map(|span| span.span_id.as_str()).collect();
        assert_eq!(ids.len(), received.len(), "a span received twice");
    }
}

fn url_path(span: &ReceivedSpan) -> &str {
    span.attributes
        .get("url.path")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn count_path(spans: &[ReceivedSpan], pid: u32, path: &str) -> usize {
    spans
        .iter()
        .filter(|span| span.resource.get("process.pid") == Some(&json!(pid)))
        .filter(|span| url_path(span) == path)
        .count()
}

/// `sonde run` flags for a server's port, a Prometheus endpoint on a free
/// port, and the address of that endpoint.
fn selecting(server: &Server) -> (Vec<String>, Counters) {
    let metrics_port = free_port();
    let args = vec![
        "--port".to_owned(),
        server.port.to_string(),
        "--prometheus-port".to_owned(),
        metrics_port.to_string(),
    ];
    (
        args,
        Counters(SocketAddr::from(([127, 0, 0, 1], metrics_port))),
    )
}

/// [`selecting`] with a configuration file holding `yaml`.
fn selecting_with(server: &Server, test: &str, yaml: &str) -> (Vec<String>, Counters) {
    let (mut args, counters) = selecting(server);
    let config = config_file(test, yaml);
    args.extend(["--config".to_owned(), config.display().to_string()]);
    (args, counters)
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The agent with `args`, exporting to `receiver` over gRPC in fast
/// batches.
fn agent_exporting_to(receiver: &OtlpReceiver, args: &[String]) -> Agent {
    Agent::start_with_env(
        &as_strs(args),
        &receiver.grpc_endpoint(),
        "grpc",
        FAST_BATCHES,
    )
}

/// Waits until `receiver` has `count` spans of `server`'s process for
/// `path`.
async fn wait_for_path(
    receiver: &OtlpReceiver,
    server: &Server,
    path: &str,
    count: usize,
) -> Vec<ReceivedSpan> {
    receiver
        .wait_for(|spans| count_path(spans, server.pid(), path) == count, WAIT)
        .await
}

/// `count` GETs of `path` on one connection, then [`wait_for_path`].
async fn traced_gets(
    receiver: &OtlpReceiver,
    server: &Server,
    path: &str,
    count: usize,
) -> Vec<ReceivedSpan> {
    get_many(server, path, count);
    wait_for_path(receiver, server, path, count).await
}

/// The collector is down when the agent starts, then comes up; later it is
/// killed and restarted on the same port. Spans made while it was away are
/// delivered once it is back, and the agent's counters reconcile with what
/// the receiver got. OTLP/HTTP, whose test server closes the agent's
/// keep-alive connection when dropped, as a killed collector would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_made_while_the_collector_is_away_are_delivered() {
    require_e2e!();
    let server = Server::python_http();
    let grpc_port = free_port();
    let http_port = free_port();
    let (args, counters) = selecting_with(&server, "collector-away", FAST_RETRIES);
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &format!("http://127.0.0.1:{http_port}"),
        "http/protobuf",
        FAST_BATCHES,
    );

    // Down at start: the spans exist and their export has failed at least
    // once before the collector appears.
    get_many(&server, "/before-collector", PER_PHASE);
    counters.wait_for("sonde_spans_produced_total", PER_PHASE as u64);
    counters.wait_for("sonde_export_requests_failed_total", 1);
    let first = OtlpReceiver::start_on(grpc_port, http_port).await;
    wait_for_path(&first, &server, "/before-collector", PER_PHASE).await;

    // Killed mid-run, spans made during the gap, then back on the same port.
    let delivered_first = first.spans();
    let failed_before_gap = counters.get("sonde_export_requests_failed_total");
    drop(first);
    get_many(&server, "/during-gap", PER_PHASE);
    counters.wait_for("sonde_spans_produced_total", 2 * PER_PHASE as u64);
    // An export was tried and failed during the gap.
    counters.wait_for("sonde_export_requests_failed_total", failed_before_gap + 1);
    let second = OtlpReceiver::start_on(grpc_port, http_port).await;
    wait_for_path(&second, &server, "/during-gap", PER_PHASE).await;

    // Nothing else is in flight: every counter is final.
    let ledger = SpanLedger::settled(&counters);
    let received: Vec<ReceivedSpan> = delivered_first.into_iter().chain(second.spans()).collect();
    assert_eq!(ledger.produced, 2 * PER_PHASE as u64, "{ledger:?}");
    assert_eq!(
        (ledger.dropped, ledger.expired, ledger.failed, ledger.queued),
        (0, 0, 0, 0),
        "no loss: {ledger:?}"
    );
    ledger.assert_delivered(&received);
    assert_eq!(
        count_path(&received, server.pid(), "/before-collector"),
        PER_PHASE
    );
    assert_eq!(
        count_path(&received, server.pid(), "/during-gap"),
        PER_PHASE
    );
    assert_eq!(agent.stop(), 0);
}

/// A collector answering 503 for a while, then 200: every span arrives once
/// and the failed attempts are counted. OTLP/HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_answering_503_loses_nothing() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    // Backoff at most 1 + 2 + 2 s.
    const REFUSALS: usize = 3;
    receiver.fail_next(REFUSALS, Failure::Retryable);
    let server = Server::python_http();
    let (args, counters) = selecting_with(&server, "through-503", FAST_RETRIES);
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &receiver.http_endpoint(),
        "http/protobuf",
        FAST_BATCHES,
    );
    traced_gets(&receiver, &server, "/through-503", PER_PHASE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let refused = receiver.requests().iter().filter(|r| !r.accepted).count();
    assert_eq!(refused, REFUSALS, "{:#?}", receiver.requests());
    let all = counters.all();
    assert_eq!(
        all["sonde_export_requests_failed_total"], REFUSALS as u64,
        "{all:?}"
    );
    assert_eq!(
        all["sonde_spans_exported_total"], PER_PHASE as u64,
        "{all:?}"
    );
    assert_eq!(all["sonde_spans_export_failed_total"], 0, "{all:?}");
    assert_eq!(
        receiver.spans().len(),
        PER_PHASE,
        "each span once: {:#?}",
        receiver.spans()
    );
    assert_eq!(agent.stop(), 0);
}

/// How long the collector stays down in the outage test, and its load:
/// six clients, each waiting 10 ms after every answer (at most 600 a
/// second; at least 200 a second asked for, which four barely made on a
/// busy 2-core machine).
const OUTAGE: Duration = Duration::from_secs(60);
const OUTAGE_PERIOD: Duration = Duration::from_millis(10);
const OUTAGE_MIN_RATE: usize = 200;
/// Longest wait for the backlog once the collector is back: the next retry
/// is at most 30 s away (the default maximum backoff).
const OUTAGE_CATCH_UP: Duration = Duration::from_secs(90);
/// Room for the minute's spans (about 12,000) in spans and bytes, and a
/// metrics export every 5 s.
const OUTAGE_CONFIG: &str =
    "export:\n  max_queue_bytes: 134217728\nmetrics:\n  export_interval_secs: 5\n";

/// The collector is down for a minute while clients keep 200 requests a
/// second on a traced server, then comes back. With the default retry
/// settings and a queue that holds the minute, every span and every
/// metrics export made during the outage arrives, and the counters
/// reconcile: spans produced = exported, metric points collected =
/// exported, nothing dropped for any reason. OTLP/gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_a_minute_under_load_loses_nothing_that_fit() {
    require_e2e!();
    let server = Server::python_http();
    let (grpc_port, http_port) = (free_port(), free_port());
    let (args, counters) = selecting_with(&server, "outage", OUTAGE_CONFIG);
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &format!("http://127.0.0.1:{grpc_port}"),
        "grpc",
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "40000"),
        ],
    );
    agent.wait_instrumented(&[server.pid()], WAIT);
    let outage_started = std::time::SystemTime::now();
    let loads = [
        SteadyLoad::start(server.port, "/outage-a", OUTAGE_PERIOD),
        SteadyLoad::start(server.port, "/outage-b", OUTAGE_PERIOD),
        SteadyLoad::start(server.port, "/outage-c", OUTAGE_PERIOD),
    ];
    tokio::time::sleep(OUTAGE).await;
    let requests: Vec<_> = loads.into_iter().flat_map(SteadyLoad::stop).collect();
    eprintln!(
        "{} requests in {OUTAGE:?} ({}/s)",
        requests.len(),
        requests.len() / OUTAGE.as_secs() as usize
    );
    let during = SpanLedger::read(&counters);
    let receiver = OtlpReceiver::start_on(grpc_port, http_port).await;

    let started = Instant::now();
    let ledger = loop {
        let now = SpanLedger::read(&counters);
        if now.produced == requests.len() as u64 && now.exported == now.produced {
            break now;
        }
        assert!(
            started.elapsed() < OUTAGE_CATCH_UP,
            "not caught up after {OUTAGE_CATCH_UP:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let failed: Vec<_> = requests.iter().filter(|r| r.error.is_some()).collect();
    assert!(failed.is_empty(), "client requests failed: {failed:#?}");
    assert!(
        requests.len() >= OUTAGE_MIN_RATE * OUTAGE.as_secs() as usize,
        "the load was too light: {} requests",
        requests.len()
    );
    assert_eq!(
        during.exported, 0,
        "nothing got through the outage: {during:?}"
    );
    assert!(
        counters.get("sonde_export_requests_unreachable_total") > 0,
        "{:?}",
        counters.all()
    );
    assert_eq!(
        (ledger.dropped, ledger.expired, ledger.failed, ledger.queued),
        (0, 0, 0, 0),
        "{ledger:?}"
    );
    ledger.assert_delivered(&receiver.spans());

    // Metrics: the exports collected every 5 s during the outage arrive
    // (the agent's own counter under its resource, one point per export),
    // and after the last export at shutdown every collected point is
    // counted as exported.
    let agent_pid = json!(agent.pid());
    let outage_ns = outage_started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let exports_during_outage = || {
        receiver
            .numbers()
            .iter()
            .filter(|n| n.name == "sonde_spans_produced")
            .filter(|n| n.resource.get("process.pid") == Some(&agent_pid))
            .filter(|n| n.time_unix_ns >= outage_ns)
            .map(|n| n.time_unix_ns)
            .collect::<BTreeSet<u64>>()
    };
    let log = agent_log_on_exit(agent);
    let collected_during_outage = exports_during_outage();
    assert!(
        collected_during_outage.len() >= (OUTAGE.as_secs() / 5 - 1) as usize,
        "metrics exports made during the outage: {}",
        collected_during_outage.len()
    );
    let exit = exit_counters(&log);
    let received_points = (receiver.numbers().len() + receiver.histograms().len()) as u64;
    assert_eq!(
        exit.get("sonde_metric_points_exported"),
        Some(&received_points),
        "{exit:?}"
    );
    assert_eq!(
        exit.get("sonde_metric_points_collected"),
        Some(&received_points),
        "every collected point exported: {exit:?}"
    );
    for lost in [
        "sonde_metric_points_export_failed",
        "sonde_metric_points_dropped_queue_full",
        "sonde_metric_points_dropped_expired",
        "sonde_metric_points_dropped_shutdown",
        "sonde_spans_dropped_shutdown",
    ] {
        assert_eq!(exit.get(lost), None, "{lost}: {exit:?}");
    }
}

/// The agent's export timeout in the slow-collector test.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// How the slow collector answers, request after request: late, late, and
/// past the export timeout (the agent gives up and retries).
const SLOW_ANSWERS: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_millis(300),
    Duration::from_millis(2500),
];
/// The export queue of that test, in spans, and its batches: small, so
/// that the stalls fill it (about 32 spans leave per 0.7 s of a cycle of
/// three requests lasting 2.0 s, while 50 come in a second).
const SLOW_QUEUE: u64 = 64;
const SLOW_BATCH: u64 = 32;
/// Every client of a [`SteadyLoad`] sends one request per period: two
/// clients, 50 requests a second.
const LOAD_PERIOD: Duration = Duration::from_millis(40);
/// How long the slow-collector test keeps its load on.
const SLOW_LOAD_SECONDS: usize = 12;

/// A collector that answers every export late, and every third one past the
/// agent's export timeout, while clients keep a steady load on a traced
/// server: the pipeline upstream of the exporter never waits (spans keep
/// being produced every second, one for each request, none dropped on the
/// way), the queue holds its bound and drops its oldest spans, the agent's
/// memory stays within its bound, every timeout is counted and retried,
/// and the counters reconcile with what the receiver got. OTLP/gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_never_blocks_the_pipeline() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    receiver.answer_after(&SLOW_ANSWERS);
    let server = Server::python_http();
    // One request at a time, so that a stall holds up the queue.
    let (args, counters) = selecting_with(&server, "slow-collector", FAST_RETRIES);
    let timeout = EXPORT_TIMEOUT.as_millis().to_string();
    let (queue, batch) = (SLOW_QUEUE.to_string(), SLOW_BATCH.to_string());
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &receiver.grpc_endpoint(),
        "grpc",
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", &timeout),
            ("OTEL_BSP_MAX_QUEUE_SIZE", &queue),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &batch),
        ],
    );
    agent.wait_instrumented(&[server.pid()], WAIT);
    let sampler = RssSampler::start(agent.pid());
    let load = SteadyLoad::start(server.port, "/slow-collector", LOAD_PERIOD);
    let mut produced = Vec::new();
    let mut deepest_queue = 0;
    for _ in 0..SLOW_LOAD_SECONDS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = SpanLedger::read(&counters);
        produced.push(now.produced);
        deepest_queue = deepest_queue.max(now.queued);
    }
    let requests = load.stop();
    // The last stalled request may still be waiting: its retry, and the
    // rest of the queue, go out at once.
    receiver.answer_after(&[]);
    let ledger = SpanLedger::settled(&counters);
    let samples = sampler.samples();
    drop(sampler);
    let peak = memory_kib(agent.pid(), "VmHWM");
    let all = counters.all();
    let exchanges = receiver.requests();
    let given_up = exchanges.iter().filter(|request| !request.accepted).count() as u64;
    let attempts_failed = all["sonde_export_requests_failed_total"];
    let log = agent.plain_log();
    // The deadline ends a stalled request on both sides at once: the
    // agent's own timeout, or the receiver's (tonic honours the
    // `grpc-timeout` the agent sends), whichever fires first.
    let own_timeout = format!("no response within {EXPORT_TIMEOUT:?}");
    let retried: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("OTLP export attempt failed, retrying"))
        .collect();
    let timeouts = retried
        .iter()
        .filter(|line| line.contains(&own_timeout) || line.contains("Timeout expired"))
        .count() as u64;
    eprintln!(
        "{} requests in {SLOW_LOAD_SECONDS} s; produced per second {produced:?}; {ledger:?}; \
         deepest queue {deepest_queue}; {} export requests, {given_up} given up by the agent, \
         {attempts_failed} failed attempts counted, {timeouts} timeouts logged; agent RSS \
         {}..{} KiB, peak {peak} KiB",
        requests.len(),
        exchanges.len(),
        samples.iter().min().copied().unwrap_or_default(),
        samples.iter().max().copied().unwrap_or_default(),
    );

    let failed: Vec<_> = requests.iter().filter(|r| r.error.is_some()).collect();
    assert!(failed.is_empty(), "client requests failed: {failed:#?}");
    // Upstream of the exporter nothing waited and nothing was lost.
    assert!(
        produced.windows(2).all(|pair| pair[1] > pair[0]),
        "spans stopped being produced for a second: {produced:?}"
    );
    assert_eq!(
        ledger.produced,
        requests.len() as u64,
        "one span per request: {all:?}"
    );
    for name in [
        "sonde_events_dropped_channel_full_total",
        "sonde_kernel_data_ringbuf_full_total",
    ] {
        assert_eq!(all[name], 0, "{name}: {all:?}");
    }
    // Every stalled request was given up on at the timeout, counted as a
    // failed attempt and retried; nothing else failed.
    assert!(
        given_up >= 3,
        "too few stalls to test anything: {exchanges:#?}"
    );
    assert_eq!(attempts_failed, given_up, "{all:?}");
    assert_eq!(
        (retried.len() as u64, timeouts),
        (given_up, given_up),
        "one retried timeout per stall:\n{log}"
    );
    assert_eq!(ledger.failed, 0, "a retry got every stalled batch through");
    // The queue held its bound by dropping the oldest spans, and counted them.
    assert!(deepest_queue <= SLOW_QUEUE, "queue at {deepest_queue}");
    assert!(
        ledger.dropped > 0,
        "the stalls never filled the queue: {ledger:?}"
    );
    ledger.assert_delivered(&receiver.spans());
    assert!(
        peak <= AGENT_MAX_RSS_KIB,
        "agent peak RSS {peak} KiB > {AGENT_MAX_RSS_KIB} KiB"
    );
    assert_eq!(agent.stop(), 0);
}

/// The agent's own telemetry reaches the collector as OTLP metrics of the
/// agent's own resource (not of a traced process's), counters as
/// monotonic cumulative sums and gauges as gauges, and its spans-exported
/// counter matches the spans the receiver got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_metrics_reach_the_collector_under_its_resource() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let config = config_file(
        "self-metrics",
        "metrics:\n  export_interval_secs: 1\n  prometheus_port: 0\n",
    );
    let agent = Agent::start_with_env(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--port",
            &server.port.to_string(),
        ],
        &receiver.grpc_endpoint(),
        "grpc",
        FAST_BATCHES,
    );
    traced_gets(&receiver, &server, "/counted", PER_PHASE).await;
    let agent_pid = json!(agent.pid());
    let latest = |numbers: &[ReceivedNumber], name: &str| -> Option<ReceivedNumber> {
        numbers
            .iter()
            .rfind(|n| n.name == name && n.resource.get("process.pid") == Some(&agent_pid))
            .cloned()
    };
    let numbers = receiver
        .wait_for_numbers(
            |numbers| {
                latest(numbers, "sonde_spans_exported").map(|n| n.value) == Some(PER_PHASE as f64)
            },
            WAIT,
        )
        .await;
    assert_eq!(
        receiver.spans().len(),
        PER_PHASE,
        "the counter matches what the receiver got"
    );

    let exported = latest(&numbers, "sonde_spans_exported").expect("waited for above");
    assert_eq!(exported.resource.get("service.name"), Some(&json!("sonde")));
    assert!(
        exported.resource.contains_key("host.name"),
        "{:?}",
        exported.resource
    );
    assert_eq!(
        exported.kind,
        NumberKind::Sum {
            monotonic: true,
            temporality: AggregationTemporality::Cumulative
        }
    );
    assert!(exported.start_unix_ns > 0 && exported.start_unix_ns <= exported.time_unix_ns);
    let produced = latest(&numbers, "sonde_spans_produced").expect("every counter is sent");
    assert_eq!(produced.value, PER_PHASE as f64);
    let queue = latest(&numbers, "sonde_export_queue_spans").expect("every gauge is sent");
    assert_eq!(queue.kind, NumberKind::Gauge);
    assert!(
        numbers
            .iter()
            .all(|n| n.resource.get("service.name") == Some(&json!("sonde"))),
        "agent metrics only under the agent's resource"
    );
    assert_eq!(agent.stop(), 0);
}

/// The counters of the agent's last log line (`... counters=a=1 b=2`).
fn exit_counters(log: &str) -> BTreeMap<String, u64> {
    let log = strip_colours(log);
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("counters="))
        .unwrap_or_else(|| panic!("no counters line in the log:\n{log}"));
    line.split_once("counters=")
        .map_or("", |(_, rest)| rest)
        .trim_matches('"')
        .split_whitespace()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.trim_matches('"').parse().ok()?))
        })
        .collect()
}

/// SIGTERM with spans queued (a batch delay far longer than the test): the
/// agent flushes them to the collector and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_queued_spans() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let (args, counters) = selecting(&server);
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &receiver.grpc_endpoint(),
        "grpc",
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    get_many(&server, "/queued", PER_PHASE);
    counters.wait_for("sonde_spans_produced_total", PER_PHASE as u64);
    assert_eq!(
        counters.get("sonde_spans_exported_total"),
        0,
        "still queued"
    );
    assert_eq!(
        counters.get("sonde_export_queue_spans"),
        PER_PHASE as u64,
        "the queue depth gauge shows them"
    );
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());

    assert_eq!(agent.stop(), 0);
    assert_eq!(
        count_path(&receiver.spans(), server.pid(), "/queued"),
        PER_PHASE,
        "{:#?}",
        receiver.requests()
    );
}

/// SIGTERM while the collector is down: the agent exits 0 within the
/// shutdown deadline and counts the spans it could not deliver as dropped
/// at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_collector_down_counts_the_loss() {
    require_e2e!();
    let server = Server::python_http();
    let (args, counters) = selecting(&server);
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let agent = Agent::start_with_env(&as_strs(&args), &endpoint, "grpc", FAST_BATCHES);
    get_many(&server, "/undeliverable", PER_PHASE);
    counters.wait_for("sonde_spans_produced_total", PER_PHASE as u64);
    counters.wait_for("sonde_export_requests_failed_total", 1);

    let log = {
        let started = Instant::now();
        let agent_log = agent_log_on_exit(agent);
        let took = started.elapsed();
        assert!(
            took < SHUTDOWN_DEADLINE + SHUTDOWN_SLACK,
            "stopping took {took:?}:\n{agent_log}"
        );
        agent_log
    };
    let exit = exit_counters(&log);
    assert_eq!(exit.get("sonde_spans_produced"), Some(&(PER_PHASE as u64)));
    assert_eq!(
        exit.get("sonde_spans_dropped_shutdown"),
        Some(&(PER_PHASE as u64)),
        "every undelivered span counted: {exit:?}\n{log}"
    );
    assert_eq!(exit.get("sonde_spans_export_failed"), None, "{exit:?}");
    assert_eq!(exit.get("sonde_spans_exported"), None, "{exit:?}");
}

/// Stops the agent, asserts exit code 0, and returns its whole log.
fn agent_log_on_exit(agent: Agent) -> String {
    let (code, log) = agent.stop_with_log();
    assert_eq!(code, 0, "{log}");
    log
}

/// Ids of the BPF objects of `kind` (`prog`, `map`) a process holds open,
/// from its fdinfo.
fn bpf_ids(pid: u32, kind: &str) -> BTreeSet<u64> {
    let link = format!("anon_inode:bpf-{kind}");
    let key = format!("{kind}_id:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"));
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == link)
        })
        .filter_map(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
                    .ok()?;
            info.lines()
                .find_map(|line| line.strip_prefix(key.as_str()))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// `bpftool --json <args>`, parsed.
fn bpftool(args: &[&str]) -> Value {
    let output = Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running bpftool: {e}"));
    assert!(
        output.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("bpftool {args:?} output is not JSON: {e}"))
}

/// Ids of every BPF program loaded in the kernel (`bpftool prog show`).
fn loaded_program_ids() -> BTreeSet<u64> {
    let programs = bpftool(&["prog", "show"]);
    programs
        .as_array()
        .unwrap_or_else(|| panic!("bpftool: not a list: {programs}"))
        .iter()
        .filter_map(|program| program["id"].as_u64())
        .collect()
}

/// The pids in the `TARGETS` map of the agent `pid`, as the kernel holds
/// them (`bpftool map dump`): what the agent's gauge should agree with.
fn kernel_targets(pid: u32) -> Vec<u32> {
    let id = bpf_ids(pid, "map")
        .into_iter()
        .map(|id| id.to_string())
        .find(|id| bpftool(&["map", "show", "id", id])["name"] == "TARGETS")
        .unwrap_or_else(|| panic!("the agent {pid} holds no TARGETS map"));
    let entries = bpftool(&["map", "dump", "id", &id]);
    let key = |entry: &Value| -> Option<u32> {
        // Without BTF for the map, bpftool shows keys as hex bytes.
        let bytes: Vec<u8> = entry["key"]
            .as_array()?
            .iter()
            .map(|byte| u8::from_str_radix(byte.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect::<Option<_>>()?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    };
    entries
        .as_array()
        .unwrap_or_else(|| panic!("bpftool map dump: not a list: {entries}"))
        .iter()
        .map(|entry| key(entry).unwrap_or_else(|| panic!("TARGETS key: {entry}")))
        .collect()
}

/// What /proc says of each pid (name and state), for failure messages.
fn describe_pids(pids: &[u32]) -> String {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            format!("{pid}: {}", stat.as_deref().unwrap_or("gone").trim())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until none of `programs` (of `whose`) is loaded any more: the
/// kernel frees programs asynchronously after their last reference.
fn wait_unloaded(programs: &BTreeSet<u64>, whose: &str) {
    let started = Instant::now();
    loop {
        let left: BTreeSet<u64> = programs
            .intersection(&loaded_program_ids())
            .copied()
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "programs of {whose} still loaded: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kill -9`, then a new agent at once: it starts and traces, and none of
/// the dead agent's programs stays loaded (they were held only by its file
/// descriptors and links, which died with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_new_agent_starts_and_nothing_stays_attached() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let (args, _) = selecting(&server);
    let killed = agent_exporting_to(&receiver, &args);
    traced_gets(&receiver, &server, "/first-agent", 1).await;
    let programs = bpf_ids(killed.pid(), "prog");
    assert!(!programs.is_empty(), "the agent holds no BPF program fd");
    assert!(
        programs.is_subset(&loaded_program_ids()),
        "bpftool lists the running agent's programs {programs:?}"
    );

    killed.kill();

    let (args, _) = selecting(&server);
    let next = agent_exporting_to(&receiver, &args);
    traced_gets(&receiver, &server, "/second-agent", 1).await;
    assert_eq!(
        count_path(&receiver.spans(), server.pid(), "/first-agent"),
        1,
        "the second agent did not trace the first one's request again"
    );

    wait_unloaded(&programs, "the killed agent");
    assert_eq!(next.stop(), 0);
}

/// How the first agent goes in the restart-under-load tests.
#[derive(Clone, Copy, Debug)]
enum Going {
    /// SIGTERM: a graceful stop that flushes.
    Stopped,
    /// `kill -9`: what it had queued is lost.
    Killed,
}

/// How long each agent of the restart-under-load tests sees the load.
const RESTART_PHASE: Duration = Duration::from_secs(4);

/// The number at the end of a load request's path (`/restart/17`).
fn load_seq(span: &ReceivedSpan) -> Option<u64> {
    url_path(span).rsplit_once('/')?.1.parse().ok()
}

/// A traced server under a steady load; its agent goes (`going`) and a new
/// one is started while the load continues. The clients never see a failed
/// request; a stopped agent exports every span it made before it exits;
/// the new agent traces every request sent after it started instrumenting
/// the server, each once; and no program of the first agent stays loaded.
async fn restart_under_load(going: Going) {
    let first_receiver = OtlpReceiver::start().await;
    let second_receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let (args, _) = selecting(&server);
    let first = agent_exporting_to(&first_receiver, &args);
    first.wait_instrumented(&[server.pid()], WAIT);
    let programs = bpf_ids(first.pid(), "prog");
    assert!(!programs.is_empty(), "the agent holds no BPF program fd");

    let load = SteadyLoad::start(server.port, "/restart", LOAD_PERIOD);
    tokio::time::sleep(RESTART_PHASE).await;
    let stopping = Instant::now();
    let first_exported = match going {
        Going::Stopped => {
            let exit = exit_counters(&agent_log_on_exit(first));
            let produced = exit.get("sonde_spans_produced").copied().unwrap_or(0);
            assert!(produced > 0, "the first agent traced nothing: {exit:?}");
            assert_eq!(
                exit.get("sonde_spans_exported"),
                Some(&produced),
                "everything flushed at exit: {exit:?}"
            );
            Some(produced)
        }
        Going::Killed => {
            first.kill();
            None
        }
    };
    let gone_after = stopping.elapsed();
    let untraced_from = load.next_seq();

    let (args, _) = selecting(&server);
    let second = agent_exporting_to(&second_receiver, &args);
    second.wait_instrumented(&[server.pid()], WAIT);
    let traced_from = load.next_seq();
    tokio::time::sleep(RESTART_PHASE).await;
    let requests = load.stop();

    let failed: Vec<_> = requests.iter().filter(|r| r.error.is_some()).collect();
    assert!(failed.is_empty(), "client requests failed: {failed:#?}");
    let seqs = |spans: &[ReceivedSpan]| -> BTreeSet<u64> {
        spans
            .iter()
            .filter(|span| span.pid() == server.pid())
            .filter_map(load_seq)
            .collect()
    };
    let answered_before_stop: BTreeSet<u64> = requests
        .iter()
        .filter(|request| request.done < stopping)
        .map(|request| request.seq)
        .collect();
    let first_spans = first_receiver.spans();
    let first_traced = seqs(&first_spans);
    assert_eq!(
        first_traced.len(),
        first_spans.len(),
        "one span per request"
    );
    if let Some(exported) = first_exported {
        assert_eq!(first_spans.len() as u64, exported, "{first_spans:#?}");
        let missing: Vec<_> = answered_before_stop.difference(&first_traced).collect();
        assert!(
            missing.is_empty(),
            "the stopped agent has no span for requests answered before SIGTERM: {missing:?}"
        );
    }
    assert!(
        first_traced.iter().all(|seq| *seq < untraced_from),
        "the first agent traced a request sent after it was gone"
    );

    let expected: BTreeSet<u64> = requests
        .iter()
        .map(|request| request.seq)
        .filter(|seq| *seq >= traced_from)
        .collect();
    let second_spans = second_receiver
        .wait_for(|spans| seqs(spans).is_superset(&expected), WAIT)
        .await;
    let traced = seqs(&second_spans);
    assert_eq!(
        traced.len(),
        second_spans.len(),
        "one span per request from the second agent"
    );
    eprintln!(
        "{going:?}: {} requests, none failed; first agent gone {gone_after:?} after the signal, \
         {} spans from it ({} requests answered before); second agent traced \
         {} requests ({} from its start on, #{traced_from}..)",
        requests.len(),
        first_spans.len(),
        answered_before_stop.len(),
        traced.len(),
        expected.len()
    );
    wait_unloaded(&programs, "the first agent");
    assert_eq!(second.stop(), 0);
}

/// SIGTERM under load, then a new agent (see [`restart_under_load`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopped_and_restarted_under_load_breaks_no_request() {
    require_e2e!();
    restart_under_load(Going::Stopped).await;
}

/// `kill -9` under load, then a new agent (see [`restart_under_load`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_and_restarted_under_load_breaks_no_request() {
    require_e2e!();
    restart_under_load(Going::Killed).await;
}

/// Connections in the garbage flood.
const FLOOD_CONNECTIONS: usize = 2_000;
/// Client threads sending it.
const FLOOD_THREADS: usize = 8;
/// The agent's peak resident memory must stay under this (the unique-path
/// flood of tests/metrics.rs peaks at about 51 MiB on the 2-core CI
/// machine; this flood holds far less state).
const AGENT_MAX_RSS_KIB: u64 = 96 * 1024;

/// What the flood sends, connection `i` taking `FLOOD_PAYLOADS[i % len]`
/// or generated noise: binary garbage, a TLS ClientHello, request lines cut
/// short, a request head cut mid-header, and a response sent as a request.
/// The server answers the cut head (Python's server ends the head at EOF),
/// but no head ever ended on the wire, so none of this is a request.
const FLOOD_PAYLOADS: &[&[u8]] = &[
    b"\x00\x01\x02 not http at all \xff\xfe\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xde\xad\xbe\xef",
    b"GET /cut-line HTT",
    b"GET /cut-line",
    b"GET /cut-head HTTP/1.1\r\nHost: a\r\nX-Tr",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
];

/// Sends `payload`, half-closes, and reads until the server closes.
fn send_garbage(port: u16, payload: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(payload);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
}

/// 2,000 connections of garbage and truncated HTTP in a few seconds: the
/// agent keeps running within its memory bound, makes no span of them, and
/// a correct request afterwards still gives its span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_flood_makes_no_spans_and_bounded_memory() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let (args, counters) = selecting(&server);
    let agent = agent_exporting_to(&receiver, &args);
    let port = server.port;
    let started = Instant::now();
    let clients: Vec<_> = (0..FLOOD_THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                for i in (thread..FLOOD_CONNECTIONS).step_by(FLOOD_THREADS) {
                    if i % (FLOOD_PAYLOADS.len() + 1) == FLOOD_PAYLOADS.len() {
                        send_garbage(port, &noise(i));
                    } else {
                        send_garbage(port, FLOOD_PAYLOADS[i % (FLOOD_PAYLOADS.len() + 1)]);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("flood client panicked");
    }
    let flood_time = started.elapsed();
    // The kernel saw every connection; give the agent time to digest them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received_events = counters.get("sonde_events_received_total");
    let peak = memory_kib(agent.pid(), "VmHWM");
    eprintln!(
        "{FLOOD_CONNECTIONS} garbage connections in {flood_time:?}: \
         {received_events} kernel events, agent peak RSS {peak} KiB"
    );
    assert!(
        received_events >= FLOOD_CONNECTIONS as u64,
        "the flood reached the agent: {:?}",
        counters.all()
    );
    assert!(
        peak <= AGENT_MAX_RSS_KIB,
        "agent peak RSS {peak} KiB > {AGENT_MAX_RSS_KIB} KiB"
    );
    // Closed connections leave the tracker; the flood leaves no state.
    let tracked = counters.get("sonde_connections_tracked");
    assert!(
        tracked < (FLOOD_CONNECTIONS / 10) as u64,
        "{tracked} connections still tracked after the flood closed them"
    );

    let spans = traced_gets(&receiver, &server, "/after-flood", 1).await;
    let after = spans
        .iter()
        .find(|span| url_path(span) == "/after-flood")
        .expect("span found above");
    assert_eq!(
        after.attributes.get("http.response.status_code"),
        Some(&json!(200))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "no span from the flood: {spans:#?}");
    assert_eq!(counters.get("sonde_spans_produced_total"), 1);
    assert_eq!(agent.stop(), 0);
}

/// Bytes that are no protocol at all, different for each connection.
fn noise(seed: usize) -> Vec<u8> {
    let mut state = seed as u64 | 1;
    (0..200)
        .map(|_| {
            // xorshift64: cheap, deterministic, good enough for noise.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Short-lived processes in the churn test.
const CHURN_PROCESSES: usize = 5_000;
/// One churn process in this many makes an HTTP request; the others exit
/// at once.
const CHURN_REQUEST_EVERY: usize = 10;
/// Threads starting them.
const CHURN_THREADS: usize = 4;
/// How much the agent's resident memory may grow from the first fifth of
/// the churn to its end: per-process state that is not freed would grow
/// with every process, which 5,000 of them make plain.
const CHURN_MAX_GROWTH_KIB: u64 = 16 * 1024;

/// How long after the churn the kernel's TARGETS map may take to lose the
/// last request thread of the server.
const KERNEL_CLEANUP: Duration = Duration::from_secs(3);
/// The agent's prune period (`PRUNE_EVERY_TICKS` rescans of 500 ms), plus
/// a second of slack: the kernel gauge is counted then.
const PRUNE_PERIOD: Duration = Duration::from_secs(11);

/// The agent's resident memory, sampled every 100 ms on a thread until
/// dropped.
struct RssSampler {
    samples: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let rss = memory_kib(pid, "VmRSS");
                into.lock().expect("samples lock").push(rss);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { samples, stop }
    }

    fn samples(&self) -> Vec<u64> {
        self.samples.lock().expect("samples lock").clone()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A copy of `program` named `name` in `dir`, so the agent can select it
/// by name without selecting every curl on the machine.
fn renamed_copy(program: &str, dir: &Path, name: &str) -> PathBuf {
    let source = ["/usr/bin", "/bin"]
        .iter()
        .map(|bin| Path::new(bin).join(program))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{program} not found in /usr/bin or /bin"));
    let copy = dir.join(name);
    std::fs::copy(&source, &copy)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", source.display(), copy.display()));
    copy
}

/// 5,000 processes the agent selects (by executable name) start and exit
/// within about half a minute, every tenth making one HTTP request to a
/// traced server: the agent's memory stays within its bound and does not
/// grow with the processes, the requests all give server spans (and the
/// clients the agent caught in time give client spans), and once the
/// processes are gone the agent's selection, its process table and the
/// kernel's target map hold no trace of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_short_lived_processes_leave_no_state_behind() {
    require_e2e!();
    let dir = std::env::temp_dir().join(format!("sonde-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let idle = renamed_copy("true", &dir, "sonde-churn-idle");
    let client = renamed_copy("curl", &dir, "sonde-churn-client");
    let receiver = OtlpReceiver::start().await;
    let server = Server::python_http();
    let (mut args, counters) = selecting(&server);
    args.extend(["--exe".to_owned(), "sonde-churn-*".to_owned()]);
    let agent = agent_exporting_to(&receiver, &args);
    // The server alone; the kernel's count comes with the first prune, at
    // start, and counts the server's request threads while they run.
    let base_targets = counters.wait_for("sonde_kernel_targets", 1);
    let base_table = counters.get("sonde_process_table_entries");
    let base_in_kernel = kernel_targets(agent.pid()).len();
    assert_eq!(
        counters.get("sonde_processes_selected"),
        1,
        "{:?}",
        counters.all()
    );

    let sampler = RssSampler::start(agent.pid());
    let url = server.url("/churn");
    let started = Instant::now();
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|thread| {
            let (idle, client, url) = (idle.clone(), client.clone(), url.clone());
            std::thread::spawn(move || {
                for i in (thread..CHURN_PROCESSES).step_by(CHURN_THREADS) {
                    let mut command = if i % CHURN_REQUEST_EVERY == 0 {
                        let mut command = Command::new(&client);
                        command.args(["-s", "-o", "/dev/null", &url]);
                        command
                    } else {
                        Command::new(&idle)
                    };
                    let status = command
                        .status()
                        .unwrap_or_else(|e| panic!("starting churn process {i}: {e}"));
                    assert!(status.success(), "churn process {i}: {status}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("churn thread panicked");
    }
    let churn_time = started.elapsed();
    let requests = CHURN_PROCESSES.div_ceil(CHURN_REQUEST_EVERY);
    let spans = wait_for_path(&receiver, &server, "/churn", requests).await;
    let client_spans = spans
        .iter()
        .filter(|span| {
            span.resource.get("process.executable.name") == Some(&json!("sonde-churn-client"))
        })
        .count();

    // The kernel drops exiting targets itself, and the agent never adds
    // one that has already exited: the map is back to the server alone as
    // soon as the last request thread is gone, well before the agent's
    // prune could have cleaned up after it.
    let cleaned = Instant::now();
    let mut in_kernel = kernel_targets(agent.pid());
    while in_kernel.len() > base_in_kernel && cleaned.elapsed() < KERNEL_CLEANUP {
        std::thread::sleep(Duration::from_millis(100));
        in_kernel = kernel_targets(agent.pid());
    }
    assert!(
        in_kernel.len() <= base_in_kernel,
        "{} TARGETS entries {KERNEL_CLEANUP:?} after the churn, {base_in_kernel} before:\n{}",
        in_kernel.len(),
        describe_pids(&in_kernel)
    );
    let in_kernel = in_kernel.len();
    // Exit events clear the selection at once; the prune catches what they
    // missed. The kernel gauge is counted at each prune: wait for one
    // after the churn so that it speaks of the churn.
    let selected = counters.wait_down_to("sonde_processes_selected", 1);
    let table = counters.wait_down_to("sonde_process_table_entries", base_table);
    tokio::time::sleep(PRUNE_PERIOD.saturating_sub(cleaned.elapsed())).await;
    let targets = counters.get("sonde_kernel_targets");
    assert!(
        targets <= base_targets,
        "the agent counts {targets} kernel targets after the churn, {base_targets} before"
    );
    let samples = sampler.samples();
    drop(sampler);
    let peak = memory_kib(agent.pid(), "VmHWM");
    let early = samples[samples.len() / 5];
    let late = *samples.last().expect("samples");
    eprintln!(
        "{CHURN_PROCESSES} processes in {churn_time:?}: {client_spans} of {requests} clients \
         traced; agent RSS {early} KiB after a fifth, {late} KiB at the end, peak {peak} KiB \
         ({} samples); selected {selected}, process table {table} (before: {base_table}), \
         kernel targets {targets} by the gauge, {in_kernel} by bpftool (before: {base_targets}, \
         {base_in_kernel})",
        samples.len()
    );
    assert!(
        peak <= AGENT_MAX_RSS_KIB,
        "agent peak RSS {peak} KiB > {AGENT_MAX_RSS_KIB} KiB"
    );
    assert!(
        late.saturating_sub(early) <= CHURN_MAX_GROWTH_KIB,
        "agent RSS grew from {early} to {late} KiB with the processes: {samples:?}"
    );
    assert!(
        client_spans > 0,
        "no churn client was traced: {:?}",
        counters.all()
    );
    assert_eq!(agent.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `sonde <args>` to completion (it must fail before loading
/// anything); exit code and stderr.
fn sonde(args: &[&str]) -> (i32, String) {
    let bin = std::env::var_os("SONDE_AGENT_BIN").expect("SONDE_AGENT_BIN");
    let output = Command::new(bin)
        .args(args)
        // What a user sees by default: the error, no backtrace.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("running sonde");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "sonde {args:?} panicked: {stderr}"
    );
    (output.status.code().unwrap_or(-1), stderr)
}

/// Bad config files, flags and selectors give one clear error naming the
/// culprit (file, line and field for config files), and a failing exit
/// code, from both `check-config` and `run`.
#[test]
fn bad_configuration_gives_clear_errors() {
    require_e2e!();
    let dir = std::env::temp_dir().join(format!("sonde-resilience-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let cases = [
        (
            "unknown-field.yaml",
            "selectors:\n  ports: [80]\n  prots: [81]\n",
            &["line 3", "prots"][..],
        ),
        (
            "wrong-type.yaml",
            "capture:\n  payload_bytes: lots\n",
            &["line 2", "payload_bytes"][..],
        ),
        (
            "out-of-range.yaml",
            "selectors:\n  ports: [80]\ncapture:\n  payload_bytes: 99999\n",
            &["capture.payload_bytes", "99999"][..],
        ),
    ];
    for (name, yaml, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let path = path.to_str().expect("utf-8 path");
        for args in [&["check-config", path][..], &["run", "--config", path][..]] {
            let (code, stderr) = sonde(args);
            assert_eq!(code, 1, "sonde {args:?}: {stderr}");
            for needle in expected {
                assert!(
                    stderr.contains(needle),
                    "sonde {args:?}: no {needle:?} in {stderr}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let (code, stderr) = sonde(&["check-config", "/nonexistent/sonde.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/sonde.yaml"), "{stderr}");
    let (code, stderr) = sonde(&["run", "--port", "80", "--selector", "x"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--selector"), "{stderr}");
    let (code, stderr) = sonde(&["run", "--port", "http"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'http'"), "{stderr}");
    let (code, stderr) = sonde(&["run"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nothing selected"), "{stderr}");
    let (code, stderr) = sonde(&[
        "run",
        "--exe",
        "[python",
        "--otlp-endpoint",
        "http://127.0.0.1:1",
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("[python"), "{stderr}");
}
