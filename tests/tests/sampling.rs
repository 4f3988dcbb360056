//! End-to-end: head sampling (`OTEL_TRACES_SAMPLER`, `sampling:` in the
//! config file) decided in the kernel where trace ids are made, through
//! real unmodified Python services, the real agent and kernel programs, and
//! a real OTLP receiver; RED metrics read from the agent's /metrics.
//!
//! - `traceidratio` 0.25 over a two-service chain: the exported share is
//!   within statistical bounds, each trace is kept or dropped whole, and
//!   each decision is the specification's (the 56 rightmost trace id bits
//!   against the threshold).
//! - An OpenTelemetry SDK client that did not sample (sampled flag 0):
//!   nothing is exported for its requests, the header injected downstream
//!   says not sampled, the metrics count every request.
//! - `always_off`: no spans, full metrics.
//! - The per-service rate cap under a flood.
//!
//! Needs root; see `sonde_tests::agent::skip_reason`.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::{Agent, config_file},
    apps::{Server, curl},
    chain::{CaptureServer, DONE, Interpreters, load, python_chain},
    prometheus::http_get,
    require_e2e,
};

const WAIT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 8;

/// Starts the agent on the ports of `servers`, with its /metrics on a free
/// port and, if given, a config file of `yaml`; waits until it traces them.
fn start_agent(
    receiver: &OtlpReceiver,
    servers: &[&Server],
    yaml: Option<&str>,
    env: &[(&str, &str)],
) -> (Agent, SocketAddr) {
    let ports: Vec<String> = servers.iter().map(|s| s.port.to_string()).collect();
    let mut args = vec!["--port".to_owned(), ports.join(",")];
    if let Some(yaml) = yaml {
        let file = config_file(&format!("sampling-{}", ports.join("-")), yaml);
        args.extend([
            "--config".to_owned(),
            file.to_str().expect("utf-8").to_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Batches leave every 200 ms: a span not there after SETTLE is not coming.
    let mut env = env.to_vec();
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200"));
    let (agent, metrics) =
        Agent::start_with_env_and_metrics(&args, &receiver.grpc_endpoint(), "grpc", &env);
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    agent.wait_instrumented(&pids, WAIT);
    (agent, metrics)
}

/// Sum of the `{metric}_count` series of process `pid` on the agent's /metrics.
fn request_count(metrics: SocketAddr, metric: &str, pid: u32) -> u64 {
    let (status, text) = http_get(metrics, "/metrics").expect("the agent serves /metrics");
    assert_eq!(status, 200, "{text}");
    let prefix = format!("{metric}_count{{");
    let instance = format!(":{pid}:");
    text.lines()
        .filter(|line| line.starts_with(&prefix) && line.contains(&instance))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("bad sample {line}"))
        })
        .sum()
}

/// An agent counter (`name` without `_total`), 0 while unset.
fn counter(metrics: SocketAddr, name: &str) -> u64 {
    let (_, text) = http_get(metrics, "/metrics").expect("the agent serves /metrics");
    let prefix = format!("{name}_total ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the metrics of `pid` count `expected` server requests.
async fn wait_for_server_requests(metrics: SocketAddr, pid: u32, expected: u64) -> u64 {
    let started = Instant::now();
    loop {
        let count = request_count(metrics, "http_server_request_duration_seconds", pid);
        if count >= expected || started.elapsed() > WAIT {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Spans of `pids` received so far.
fn spans_of(receiver: &OtlpReceiver, pids: &[u32]) -> Vec<ReceivedSpan> {
    receiver
        .spans()
        .into_iter()
        .filter(|s| pids.contains(&s.pid()))
        .collect()
}

/// True if the specification's `TraceIdRatioBased` samples `trace_id` at
/// rejection threshold `threshold`: the 7 rightmost bytes, big-endian, at
/// least the threshold.
fn spec_samples(trace_id: &str, threshold: u64) -> bool {
    let randomness = u64::from_str_radix(&trace_id[18..], 16).expect("hex trace id");
    randomness >= threshold
}

/// curl -> A -> B, 4,000 requests, `traceidratio` 0.25 (each service
/// decides on its own, from the trace id): about a quarter of the traces
/// are exported, each whole (A's server and client span, B's server span),
/// and exactly those the specification's rule keeps. Every request counts
/// in both services' metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_id_ratio_keeps_whole_traces_across_services() {
    require_e2e!();
    const REQUESTS: usize = 4_000;
    let interpreters = Interpreters::new("ratio");
    let receiver = OtlpReceiver::start().await;
    let b = python_chain(&interpreters, &[]);
    let a = python_chain(&interpreters, &[b.url("/work")]);
    let pids = [a.pid(), b.pid()];
    let (agent, metrics) = start_agent(
        &receiver,
        &[&a, &b],
        None,
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ],
    );

    load(&a.url("/work"), REQUESTS, CONCURRENCY).await;
    let a_count = wait_for_server_requests(metrics, a.pid(), REQUESTS as u64).await;
    let b_count = wait_for_server_requests(metrics, b.pid(), REQUESTS as u64).await;
    let a_calls = request_count(metrics, "http_client_request_duration_seconds", a.pid());
    assert_eq!(
        (a_count, a_calls, b_count),
        (REQUESTS as u64, REQUESTS as u64, REQUESTS as u64),
        "metrics count every request, sampled or not"
    );
    // Exported spans wait for the exporter's batch: until every span is
    // exported or counted as not sampled.
    let not_sampled = || counter(metrics, "sonde_spans_not_sampled") as usize;
    receiver
        .settle(WAIT, SETTLE, |spans| {
            let ours = spans.iter().filter(|s| pids.contains(&s.pid())).count();
            ours + not_sampled() >= 3 * REQUESTS
        })
        .await;
    let spans = spans_of(&receiver, &pids);

    let mut traces: HashMap<&str, Vec<&ReceivedSpan>> = HashMap::new();
    for span in &spans {
        traces.entry(&span.trace_id).or_default().push(span);
    }
    let span_ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let orphans: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !s.parent_span_id.is_empty() && !span_ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert!(
        orphans.is_empty(),
        "spans whose parent was dropped: {orphans:#?}"
    );
    for (trace_id, trace) in &traces {
        let kinds: Vec<(u32, SpanKind)> = trace.iter().map(|s| (s.pid(), s.kind)).collect();
        assert_eq!(trace.len(), 3, "trace {trace_id} is whole: {kinds:?}");
        assert!(
            spec_samples(trace_id, 0x00c0_0000_0000_0000),
            "{trace_id} is not sampled by the specification's rule at 0.25"
        );
    }
    // Binomial(4000, 0.25): mean 1000, standard deviation 27.4; 5 sigma.
    let kept = traces.len();
    println!(
        "traceidratio 0.25: {kept} of {REQUESTS} traces exported ({} spans)",
        spans.len()
    );
    assert!(
        (863..=1137).contains(&kept),
        "{kept} traces kept of {REQUESTS}"
    );
    assert_eq!(
        not_sampled() + spans.len(),
        3 * REQUESTS,
        "every span is exported or counted as not sampled"
    );
    assert_eq!(agent.stop(), 0);
}

/// An OpenTelemetry SDK client that does not sample (`ALWAYS_OFF`) calls
/// A, which calls a server recording the bytes it receives. Under the
/// default `parentbased_always_on`, nothing is exported for those
/// requests, the `traceparent` A's call carries is on the caller's trace
/// with its flags (not sampled), and A's metrics count every request. A sampled request (`-01`)
/// is the control: exported, and `01` downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_parent_is_honoured_downstream_and_measured() {
    require_e2e!();
    const REQUESTS: usize = 20;
    let interpreters = Interpreters::new("parent");
    let receiver = OtlpReceiver::start().await;
    // Not selected: the agent selects A's port only.
    let capture = CaptureServer::start(&interpreters.client_python());
    let a = python_chain(
        &interpreters,
        &[format!("http://127.0.0.1:{}/work", capture.port)],
    );
    let (agent, metrics) = start_agent(&receiver, &[&a], None, &[]);

    let script = format!(
        r#"
import urllib.request
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
tracer = trace.get_tracer("client")
for _ in range({REQUESTS}):
    with tracer.start_as_current_span("call"):
        headers = {{}}
        propagate.inject(headers)
        print(headers["traceparent"], flush=True)
        with urllib.request.urlopen(urllib.request.Request("{}", headers=headers)) as reply:
            assert reply.read() == b"done\n"
"#,
        a.url("/work")
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("running the SDK client");
    assert!(output.status.success(), "SDK client: {output:?}");
    let sent: Vec<String> = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(sent.len(), REQUESTS, "{sent:?}");
    let control_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let control = format!("traceparent: 00-{control_trace}-00f067aa0ba902b7-01");
    assert_eq!(curl(&["-H", &control, &a.url("/work")]), DONE);

    let downstream: Vec<String> = (0..=REQUESTS)
        .map(|_| {
            let request = String::from_utf8(capture.next_request()).expect("utf-8 head");
            request
                .lines()
                .find_map(|line| line.strip_prefix("traceparent: "))
                .unwrap_or_else(|| panic!("no traceparent injected: {request}"))
                .trim()
                .to_owned()
        })
        .collect();
    // The SDK sets W3C level 2's random flag (02): every flag but the
    // sampled one goes on as it came.
    let flags = |traceparent: &str| u8::from_str_radix(&traceparent[53..], 16).expect("flags");
    for (incoming, outgoing) in sent.iter().zip(&downstream) {
        assert_eq!(flags(incoming) & 1, 0, "the SDK did not sample: {incoming}");
        assert_eq!(
            (&outgoing[..36], flags(outgoing)),
            (&incoming[..36], flags(incoming)),
            "same trace and flags downstream: {incoming} -> {outgoing}"
        );
    }
    let control_out = &downstream[REQUESTS];
    assert!(
        control_out.starts_with(&format!("00-{control_trace}-")) && flags(control_out) == 1,
        "{control_out}"
    );

    let count = wait_for_server_requests(metrics, a.pid(), REQUESTS as u64 + 1).await;
    assert_eq!(count, REQUESTS as u64 + 1, "every request is measured");
    let calls = request_count(metrics, "http_client_request_duration_seconds", a.pid());
    assert_eq!(calls, REQUESTS as u64 + 1, "every call is measured");
    receiver
        .settle(WAIT, SETTLE, |spans| {
            spans.iter().filter(|s| s.trace_id == control_trace).count() >= 2
        })
        .await;
    let spans = spans_of(&receiver, &[a.pid()]);
    let unsampled: HashSet<&str> = sent.iter().map(|t| &t[3..35]).collect();
    let leaked: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| unsampled.contains(s.trace_id.as_str()))
        .collect();
    assert!(leaked.is_empty(), "spans of unsampled traces: {leaked:#?}");
    assert_eq!(
        spans.iter().filter(|s| s.trace_id == control_trace).count(),
        2,
        "the sampled request's server and client spans: {spans:#?}"
    );
    assert_eq!(
        counter(metrics, "sonde_spans_not_sampled"),
        2 * REQUESTS as u64
    );
    assert_eq!(agent.stop(), 0);
}

/// `always_off` from the config file: no span at all, every request in
/// the metrics of both services of a chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_off_exports_no_spans_and_full_metrics() {
    require_e2e!();
    const REQUESTS: usize = 200;
    let interpreters = Interpreters::new("off");
    let receiver = OtlpReceiver::start().await;
    let b = python_chain(&interpreters, &[]);
    let a = python_chain(&interpreters, &[b.url("/work")]);
    let pids = [a.pid(), b.pid()];
    let (agent, metrics) = start_agent(
        &receiver,
        &[&a, &b],
        Some("sampling:\n  sampler: always_off\n"),
        // The file wins over the environment.
        &[("OTEL_TRACES_SAMPLER", "always_on")],
    );
    load(&a.url("/work"), REQUESTS, CONCURRENCY).await;
    for pid in pids {
        let count = wait_for_server_requests(metrics, pid, REQUESTS as u64).await;
        assert_eq!(count, REQUESTS as u64, "server requests of {pid}");
    }
    let calls = request_count(metrics, "http_client_request_duration_seconds", a.pid());
    assert_eq!(calls, REQUESTS as u64);
    tokio::time::sleep(SETTLE).await;
    let spans = spans_of(&receiver, &pids);
    assert!(spans.is_empty(), "always_off exported {spans:#?}");
    assert_eq!(
        counter(metrics, "sonde_spans_not_sampled"),
        3 * REQUESTS as u64
    );
    assert_eq!(agent.stop(), 0);
}

/// `max_spans_per_second: 5` under a flood of one service: what is
/// exported stays within the cap over the flood's duration, the rest is
/// counted, every request is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_cap_holds_under_a_flood() {
    require_e2e!();
    const REQUESTS: usize = 1_000;
    // Well under what curl manages here even on a busy machine (30/s).
    const CAP: u64 = 5;
    let interpreters = Interpreters::new("cap");
    let receiver = OtlpReceiver::start().await;
    let a = python_chain(&interpreters, &[]);
    let yaml = format!("sampling:\n  max_spans_per_second: {CAP}\n");
    let (agent, metrics) = start_agent(&receiver, &[&a], Some(&yaml), &[]);
    let started = Instant::now();
    load(&a.url("/work"), REQUESTS, CONCURRENCY).await;
    let count = wait_for_server_requests(metrics, a.pid(), REQUESTS as u64).await;
    // Spans are built as fast as requests are measured: the flood lasted
    // at most this long for the span builder.
    let flood = started.elapsed().as_secs_f64();
    assert_eq!(count, REQUESTS as u64, "every request is measured");
    let dropped = || counter(metrics, "sonde_spans_dropped_rate_cap");
    receiver
        .settle(WAIT, SETTLE, |spans| {
            let ours = spans.iter().filter(|s| s.pid() == a.pid()).count() as u64;
            ours + dropped() >= REQUESTS as u64
        })
        .await;
    let exported = spans_of(&receiver, &[a.pid()]).len() as u64;
    let dropped = dropped();
    println!("rate cap {CAP}/s: {exported} exported, {dropped} dropped over {flood:.1} s");
    // One second's burst plus the refill over the flood.
    let most = CAP + (CAP as f64 * flood).ceil() as u64;
    assert!(
        exported <= most,
        "{exported} spans exported, cap allows {most}"
    );
    assert!(exported >= CAP, "the cap is not a stop: {exported}");
    assert!(dropped > 0, "the flood went past the cap");
    assert_eq!(exported + dropped, REQUESTS as u64, "every drop is counted");
    assert_eq!(agent.stop(), 0);
}
