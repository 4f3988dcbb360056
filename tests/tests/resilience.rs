//! End-to-end resilience: the real agent against a real OTLP receiver that
//! is missing, killed, restarted or answering 503; graceful shutdown with
//! spans still queued; `kill -9` and an immediate restart (no program of the
//! dead agent left attached); a flood of garbage and truncated HTTP; clear
//! errors for bad configuration and flags. Losses are checked with the
//! agent's own counters (/metrics and its exit log line), which must
//! reconcile with what the receiver got.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sonde_tests::{
    Failure, OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Server, curl},
    prometheus::{free_port, http_get},
    require_e2e,
};

/// Longest wait for spans or counters; the retry budget is 30 s too.
const WAIT: Duration = Duration::from_secs(30);
/// Batches leave 200 ms after their first span, so each phase is short.
const FAST_BATCHES: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "200")];
/// The exporter's shutdown deadline (`DEFAULT_SHUTDOWN_TIMEOUT`).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// On top of the deadline: the other stages stopping, the metrics
/// exporter's flush (concurrent, same deadline) and the process exiting.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(3);
/// Requests per phase.
const PER_PHASE: usize = 20;

/// The agent's own counters and gauges, read from its /metrics endpoint.
struct Counters(SocketAddr);

impl Counters {
    fn all(&self) -> BTreeMap<String, u64> {
        let (status, body) = http_get(self.0, "/metrics")
            .unwrap_or_else(|| panic!("the agent's /metrics at {} did not answer", self.0));
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|line| line.starts_with("sonde_"))
            .filter_map(|line| {
                let (name, value) = line.split_once(' ')?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    fn get(&self, name: &str) -> u64 {
        let all = self.all();
        *all.get(name)
            .unwrap_or_else(|| panic!("no {name} on /metrics: {all:?}"))
    }

    /// Polls until `name` reaches at least `at_least`.
    fn wait_for(&self, name: &str, at_least: u64) -> u64 {
        let started = Instant::now();
        loop {
            let value = self.get(name);
            if value >= at_least {
                return value;
            }
            assert!(
                started.elapsed() < WAIT,
                "{name} = {value} after {WAIT:?}, expected >= {at_least}: {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sends `count` GETs of `path` on one keep-alive connection.
fn get_many(server: &Server, path: &str, count: usize) {
    let url = server.url(path);
    let mut args = Vec::new();
    for _ in 0..count {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
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

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
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
    let (args, counters) = selecting(&server);
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
    first
        .wait_for(
            |spans| count_path(spans, server.pid(), "/before-collector") == PER_PHASE,
            WAIT,
        )
        .await;

    // Killed mid-run, spans made during the gap, then back on the same port.
    let delivered_first = first.spans();
    let failed_before_gap = counters.get("sonde_export_requests_failed_total");
    drop(first);
    get_many(&server, "/during-gap", PER_PHASE);
    counters.wait_for("sonde_spans_produced_total", 2 * PER_PHASE as u64);
    // An export was tried and failed during the gap.
    counters.wait_for("sonde_export_requests_failed_total", failed_before_gap + 1);
    let second = OtlpReceiver::start_on(grpc_port, http_port).await;
    second
        .wait_for(
            |spans| count_path(spans, server.pid(), "/during-gap") == PER_PHASE,
            WAIT,
        )
        .await;

    // Nothing else is in flight: every counter is final.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = counters.all();
    let received: Vec<ReceivedSpan> = delivered_first.into_iter().chain(second.spans()).collect();
    let produced = all["sonde_spans_produced_total"];
    let exported = all["sonde_spans_exported_total"];
    let dropped = all["sonde_spans_dropped_queue_full_total"];
    let failed = all["sonde_spans_export_failed_total"];
    assert_eq!(produced, 2 * PER_PHASE as u64, "{all:?}");
    assert_eq!(produced, exported + dropped + failed, "{all:?}");
    assert_eq!((dropped, failed), (0, 0), "no loss: {all:?}");
    assert_eq!(
        exported,
        received.len() as u64,
        "exported == received: {all:?}"
    );
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
    // Backoff 0.5 + 1 + 2 s: well inside the 30 s retry budget.
    const REFUSALS: usize = 3;
    receiver.fail_next(REFUSALS, Failure::Retryable);
    let server = Server::python_http();
    let (args, counters) = selecting(&server);
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &receiver.http_endpoint(),
        "http/protobuf",
        FAST_BATCHES,
    );
    get_many(&server, "/through-503", PER_PHASE);
    receiver
        .wait_for(
            |spans| count_path(spans, server.pid(), "/through-503") == PER_PHASE,
            WAIT,
        )
        .await;
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

/// The log without its ANSI colour sequences (`ESC [ ... m`).
fn strip_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
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
/// shutdown deadline and counts the spans it could not deliver as failed.
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
        exit.get("sonde_spans_export_failed"),
        Some(&(PER_PHASE as u64)),
        "every undelivered span counted as failed: {exit:?}\n{log}"
    );
    assert_eq!(exit.get("sonde_spans_exported"), None, "{exit:?}");
}

/// Stops the agent, asserts exit code 0, and returns its whole log.
fn agent_log_on_exit(agent: Agent) -> String {
    let (code, log) = agent.stop_with_log();
    assert_eq!(code, 0, "{log}");
    log
}

/// Ids of the BPF programs a process holds open, from its fdinfo.
fn bpf_program_ids(pid: u32) -> BTreeSet<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"));
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog")
        })
        .filter_map(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
                    .ok()?;
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Ids of every BPF program loaded in the kernel (`bpftool prog show`).
fn loaded_program_ids() -> BTreeSet<u64> {
    let output = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .unwrap_or_else(|e| panic!("running bpftool: {e}"));
    assert!(
        output.status.success(),
        "bpftool prog show: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let programs: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("bpftool output is not JSON: {e}"));
    programs
        .as_array()
        .unwrap_or_else(|| panic!("bpftool: not a list: {programs}"))
        .iter()
        .filter_map(|program| program["id"].as_u64())
        .collect()
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
    let killed = Agent::start_with_env(
        &as_strs(&args),
        &receiver.grpc_endpoint(),
        "grpc",
        FAST_BATCHES,
    );
    get_many(&server, "/first-agent", 1);
    receiver
        .wait_for(
            |spans| count_path(spans, server.pid(), "/first-agent") == 1,
            WAIT,
        )
        .await;
    let programs = bpf_program_ids(killed.pid());
    assert!(!programs.is_empty(), "the agent holds no BPF program fd");
    assert!(
        programs.is_subset(&loaded_program_ids()),
        "bpftool lists the running agent's programs {programs:?}"
    );

    let status = Command::new("kill")
        .args(["-KILL", &killed.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
    // Dropping reaps the dead process: none of its descriptors is left.
    drop(killed);

    let (args, _) = selecting(&server);
    let next = Agent::start_with_env(
        &as_strs(&args),
        &receiver.grpc_endpoint(),
        "grpc",
        FAST_BATCHES,
    );
    get_many(&server, "/second-agent", 1);
    receiver
        .wait_for(
            |spans| count_path(spans, server.pid(), "/second-agent") == 1,
            WAIT,
        )
        .await;
    assert_eq!(
        count_path(&receiver.spans(), server.pid(), "/first-agent"),
        1,
        "the second agent did not trace the first one's request again"
    );

    // The kernel frees programs asynchronously after their last reference.
    let started = Instant::now();
    loop {
        let left: BTreeSet<u64> = programs
            .intersection(&loaded_program_ids())
            .copied()
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "programs of the killed agent still loaded: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(next.stop(), 0);
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
    let agent = Agent::start_with_env(
        &as_strs(&args),
        &receiver.grpc_endpoint(),
        "grpc",
        FAST_BATCHES,
    );
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

    get_many(&server, "/after-flood", 1);
    let spans = receiver
        .wait_for(
            |spans| count_path(spans, server.pid(), "/after-flood") == 1,
            WAIT,
        )
        .await;
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

fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
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
