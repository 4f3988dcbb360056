//! End-to-end: W3C trace context propagated with no code changes, through
//! real unmodified services (threaded Python `http.server` with urllib,
//! Node.js `http`, and a service instrumented with the OpenTelemetry Python
//! SDK), the real agent and kernel programs, and a real OTLP receiver.
//!
//! Covers the three parts of "Trace context" in the architecture: an
//! incoming `traceparent` joins the caller's trace, a call made while a
//! request is served is that request's child, and the kernel injects the
//! client span's ids into outgoing HTTP/1 requests; over loopback, across
//! network namespaces joined by a veth pair, next to an SDK, and byte for
//! byte on the wire. Needs root; see `sonde_tests::agent::skip_reason`.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Certificate, Nginx, Server, app_path, curl, raw_exchange},
    chain::{CaptureServer, DONE, Interpreters, load, load_each, node_chain, node22, python_chain},
    go::build,
    hex,
    prometheus::{Counters, free_port},
    require_e2e, the_span,
};

const WAIT: Duration = Duration::from_secs(30);
/// After the expected spans arrived, how long to keep watching for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);
/// Requests of each measured run, and how many of them are in flight at once.
const LOAD_REQUESTS: usize = 100;
const LOAD_CONCURRENCY: usize = 8;
/// A trace context of the caller's own (W3C's example values).
const OWN_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const OWN_PARENT_ID: &str = "b7ad6b7169203331";
const OWN_TRACE_STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

fn service_name(span: &ReceivedSpan) -> &str {
    span.resource
        .get("service.name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The peer port a client span called.
fn called_port(span: &ReceivedSpan) -> u16 {
    u16::try_from(span.int_attr("server.port")).expect("server.port is a port")
}

/// Waits for `count` spans of `pids` received after the first `skip` spans,
/// then for stragglers; returns every span of `pids` past `skip`.
async fn wait_for_spans(
    receiver: &OtlpReceiver,
    pids: &[u32],
    skip: usize,
    count: usize,
) -> Vec<ReceivedSpan> {
    let ours = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .skip(skip)
            .filter(|s| pids.contains(&s.pid()))
            .cloned()
            .collect()
    };
    receiver
        .wait_for(|spans| ours(spans).len() >= count, WAIT)
        .await;
    tokio::time::sleep(SETTLE).await;
    ours(&receiver.spans())
}

/// Trace ids are 32 lowercase hex digits, span ids 16, none all zeros; no
/// span id is used twice.
fn assert_ids_well_formed(spans: &[ReceivedSpan]) {
    let is_id = |id: &str, len: usize| {
        id.len() == len
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && id.bytes().any(|b| b != b'0')
    };
    let mut seen = HashSet::new();
    for span in spans {
        assert!(is_id(&span.trace_id, 32), "trace id of {span:#?}");
        assert!(is_id(&span.span_id, 16), "span id of {span:#?}");
        assert!(
            span.parent_span_id.is_empty() || is_id(&span.parent_span_id, 16),
            "parent id of {span:#?}"
        );
        assert!(
            seen.insert(span.span_id.clone()),
            "span id used twice: {span:#?}"
        );
    }
}

/// One service of a call graph whose spans our agent reports.
struct Service {
    label: &'static str,
    pid: u32,
    port: u16,
    /// Called from outside the graph (by curl): its server spans are roots.
    entry: bool,
    /// Ports it calls, once each, for every request it serves.
    calls: Vec<u16>,
}

impl Service {
    fn new(label: &'static str, server: &Server, entry: bool, calls: &[&Server]) -> Self {
        Self {
            label,
            pid: server.pid(),
            port: server.port,
            entry,
            calls: calls.iter().map(|s| s.port).collect(),
        }
    }
}

/// How well the spans of a run through a call graph were linked.
#[derive(Debug)]
struct Linkage {
    /// Spans the run should give: requests times spans per request.
    expected: usize,
    received: usize,
    /// Spans whose parent is right (see [`linkage`]).
    linked: usize,
    /// Traces holding exactly the spans of one request.
    complete_traces: usize,
    requests: usize,
    problems: Vec<String>,
}

impl Linkage {
    fn fraction(&self) -> f64 {
        self.linked as f64 / self.expected as f64
    }

    fn summary(&self) -> String {
        format!(
            "{}/{} spans linked ({:.1}%), {} received, {}/{} traces complete",
            self.linked,
            self.expected,
            100.0 * self.fraction(),
            self.received,
            self.complete_traces,
            self.requests,
        )
    }
}

/// Scores the spans of `requests` requests through `services`.
///
/// A span is linked when its parent is exactly what the call graph says,
/// in the same trace: nothing for an entry service's server span; for
/// another server span, the client span that called its port, which has
/// that one server child; for a client span, a server span of its own
/// service holding as many client children as the service makes calls per
/// request. Counting children is what catches a call given to the wrong
/// request of the right service: that request then has one child too many
/// (neither of which counts) and the real caller one too few.
fn linkage(
    spans: &[ReceivedSpan],
    services: &[Service],
    requests: usize,
    per_request: usize,
) -> Linkage {
    let ours: Vec<(&ReceivedSpan, &Service)> = spans
        .iter()
        .filter_map(|span| Some((span, services.iter().find(|s| s.pid == span.pid())?)))
        .collect();
    let by_id: HashMap<&str, (&ReceivedSpan, &Service)> = ours
        .iter()
        .map(|&(span, service)| (span.span_id.as_str(), (span, service)))
        .collect();
    let mut children: HashMap<&str, usize> = HashMap::new();
    for (span, _) in &ours {
        *children.entry(span.parent_span_id.as_str()).or_default() += 1;
    }
    let children_of = |id: &str| children.get(id).copied().unwrap_or(0);

    let check = |span: &ReceivedSpan, service: &Service| -> Result<(), String> {
        if span.kind == SpanKind::Server && service.entry {
            return match span.parent_span_id.as_str() {
                "" => Ok(()),
                parent => Err(format!("entry request has parent {parent}")),
            };
        }
        let (parent, parent_service) = by_id
            .get(span.parent_span_id.as_str())
            .ok_or_else(|| format!("parent {:?} is no span of ours", span.parent_span_id))?;
        if parent.trace_id != span.trace_id {
            return Err(format!("parent {} is in another trace", parent.span_id));
        }
        match span.kind {
            SpanKind::Server => {
                if parent.kind != SpanKind::Client || called_port(parent) != service.port {
                    return Err(format!(
                        "parent {} did not call this service",
                        parent.span_id
                    ));
                }
                if !parent_service.calls.contains(&service.port) {
                    return Err(format!("{} never calls this service", parent_service.label));
                }
                match children_of(&parent.span_id) {
                    1 => Ok(()),
                    n => Err(format!("caller {} has {n} server children", parent.span_id)),
                }
            }
            SpanKind::Client => {
                if parent.kind != SpanKind::Server || parent_service.pid != service.pid {
                    return Err(format!(
                        "parent {} is not a request it served",
                        parent.span_id
                    ));
                }
                if !service.calls.contains(&called_port(span)) {
                    return Err(format!("unexpected call to port {}", called_port(span)));
                }
                match children_of(&parent.span_id) {
                    n if n == service.calls.len() => Ok(()),
                    n => Err(format!(
                        "its request {} has {n} client children, not {}",
                        parent.span_id,
                        service.calls.len()
                    )),
                }
            }
            kind => Err(format!("unexpected kind {kind:?}")),
        }
    };

    let mut linked = 0;
    let mut problems = Vec::new();
    let mut per_trace: HashMap<&str, usize> = HashMap::new();
    for &(span, service) in &ours {
        *per_trace.entry(span.trace_id.as_str()).or_default() += 1;
        match check(span, service) {
            Ok(()) => linked += 1,
            Err(why) => problems.push(format!(
                "{} {:?} span {} (trace {}): {why}",
                service.label, span.kind, span.span_id, span.trace_id
            )),
        }
    }
    let expected = requests * per_request;
    Linkage {
        expected,
        received: ours.len(),
        // Extra spans can be linked too; they never make up for missing ones.
        linked: linked.min(expected),
        complete_traces: per_trace.values().filter(|&&n| n == per_request).count(),
        requests,
        problems,
    }
}

/// The one span matching `pick`, with context if there are none or several.
fn assert_child_of(child: &ReceivedSpan, parent: &ReceivedSpan, what: &str) {
    assert_eq!(
        child.trace_id, parent.trace_id,
        "{what}: same trace\n{child:#?}\n{parent:#?}"
    );
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{what}: parent\n{child:#?}\n{parent:#?}"
    );
}

/// curl -> A (Python) -> B (Python) and C (Node.js); B -> C. Every request
/// is one trace of 7 spans with the right parents, one at a time and 8 at
/// a time. Exported over OTLP/gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_over_loopback_is_one_trace_per_request() {
    require_e2e!();
    let interpreters = Interpreters::new("chain");
    let receiver = OtlpReceiver::start().await;
    let c = node_chain(&interpreters, &[]);
    let b = python_chain(&interpreters, &[c.url("/work")]);
    let a = python_chain(&interpreters, &[b.url("/work"), c.url("/work")]);
    let pids = [a.pid(), b.pid(), c.pid()];
    let ports = format!("{},{},{}", a.port, b.port, c.port);
    let agent = Agent::start(
        &["--port", &ports, "--prometheus-port", "0"],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    agent.wait_instrumented(&pids, WAIT);

    // One at a time; the last request comes with a trace context of its own.
    let own_context = [
        "-H",
        &format!("traceparent: 00-{OWN_TRACE_ID}-{OWN_PARENT_ID}-01"),
        "-H",
        &format!("tracestate: {OWN_TRACE_STATE}"),
    ];
    for with_context in [false, false, true] {
        let before = receiver.spans().len();
        let mut args = vec![a.url("/work")];
        if with_context {
            args.extend(own_context.iter().map(|&arg| arg.to_owned()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&args), DONE);
        let spans = wait_for_spans(&receiver, &pids, before, 7).await;
        assert_eq!(spans.len(), 7, "7 spans per request\n{spans:#?}");
        let is =
            |s: &ReceivedSpan, server: &Server, kind| s.pid() == server.pid() && s.kind == kind;
        let a_server = the_span(&spans, "A server", |s| is(s, &a, SpanKind::Server));
        let a_to_b = the_span(&spans, "A -> B", |s| {
            is(s, &a, SpanKind::Client) && called_port(s) == b.port
        });
        let a_to_c = the_span(&spans, "A -> C", |s| {
            is(s, &a, SpanKind::Client) && called_port(s) == c.port
        });
        let b_server = the_span(&spans, "B server", |s| is(s, &b, SpanKind::Server));
        let b_to_c = the_span(&spans, "B -> C", |s| is(s, &b, SpanKind::Client));
        let c_from_a = the_span(&spans, "C server called by A", |s| {
            is(s, &c, SpanKind::Server) && s.parent_span_id == a_to_c.span_id
        });
        let c_from_b = the_span(&spans, "C server called by B", |s| {
            is(s, &c, SpanKind::Server) && s.parent_span_id == b_to_c.span_id
        });
        if with_context {
            assert_eq!(a_server.trace_id, OWN_TRACE_ID, "{a_server:#?}");
            assert_eq!(a_server.parent_span_id, OWN_PARENT_ID, "{a_server:#?}");
            assert_eq!(a_server.trace_state, OWN_TRACE_STATE, "{a_server:#?}");
        } else {
            assert!(
                a_server.parent_span_id.is_empty(),
                "curl sent no traceparent: A is the root\n{a_server:#?}"
            );
        }
        assert_child_of(a_to_b, a_server, "A's call to B");
        assert_child_of(a_to_c, a_server, "A's call to C");
        assert_child_of(b_server, a_to_b, "B's request");
        assert_child_of(b_to_c, b_server, "B's call to C");
        assert_child_of(c_from_a, a_to_c, "C's request from A");
        assert_child_of(c_from_b, b_to_c, "C's request from B");
        assert_eq!(called_port(b_to_c), c.port);
        // The injected header has no tracestate: only A saw one.
        assert!(
            spans
                .iter()
                .all(|s| s.span_id == a_server.span_id || s.trace_state.is_empty()),
            "{spans:#?}"
        );
    }

    let before = receiver.spans().len();
    load(&a.url("/work"), LOAD_REQUESTS, LOAD_CONCURRENCY).await;
    let spans = wait_for_spans(&receiver, &pids, before, 7 * LOAD_REQUESTS).await;
    let services = [
        Service::new("A", &a, true, &[&b, &c]),
        Service::new("B", &b, false, &[&c]),
        Service::new("C", &c, false, &[]),
    ];
    let linkage = linkage(&spans, &services, LOAD_REQUESTS, 7);
    println!(
        "python chain, {LOAD_REQUESTS} requests, concurrency {LOAD_CONCURRENCY}: {}",
        linkage.summary()
    );
    assert_eq!(linkage.received, linkage.expected, "{linkage:#?}");
    assert_eq!(
        linkage.linked, linkage.expected,
        "thread-per-request services link every span: {linkage:#?}"
    );
    assert_eq!(linkage.complete_traces, LOAD_REQUESTS, "{linkage:#?}");
    assert_ids_well_formed(&receiver.spans());
    assert_eq!(agent.stop(), 0);
}

/// Bytes the server's end of the connection `client_port` -> `server_port`
/// on 127.0.0.1 has received and how many of them still wait to be read,
/// from `ss` (`None` before it has received any).
fn server_socket_bytes(server_port: u16, client_port: u16) -> Option<(u64, u64)> {
    let output = Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!(
            "src 127.0.0.1:{server_port} dst 127.0.0.1:{client_port}"
        ))
        .output()
        .expect("running ss");
    let text = String::from_utf8_lossy(&output.stdout);
    // Recv-Q Send-Q Local Peer, then the TCP info fields.
    let mut fields = text.split_whitespace();
    let queued = fields.next()?.parse().ok()?;
    let received = fields
        .find_map(|field| field.strip_prefix("bytes_received:"))?
        .parse()
        .ok()?;
    Some((received, queued))
}

/// Waits until the server has read all of the first `sent` bytes.
fn wait_read_by_server(server_port: u16, client_port: u16, sent: usize) {
    let started = Instant::now();
    while server_socket_bytes(server_port, client_port) != Some((sent as u64, 0)) {
        assert!(
            started.elapsed() < WAIT,
            "the server never read the request line: {:?}",
            server_socket_bytes(server_port, client_port)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Python server (`label` names its interpreter), traced alone by a new
/// agent (with `agent_args` as well) exporting to a new receiver.
async fn traced_python_server(
    label: &str,
    agent_args: &[&str],
) -> (Interpreters, OtlpReceiver, Server, Agent) {
    let interpreters = Interpreters::new(label);
    let receiver = OtlpReceiver::start().await;
    let server = python_chain(&interpreters, &[]);
    let port = server.port.to_string();
    let args = [
        &["--port", port.as_str(), "--prometheus-port", "0"],
        agent_args,
    ]
    .concat();
    let agent = Agent::start(&args, &receiver.grpc_endpoint(), "grpc");
    agent.wait_instrumented(&[server.pid()], WAIT);
    (interpreters, receiver, server, agent)
}

/// An incoming `traceparent` that reaches the server after its request
/// line, in a later segment, still joins the caller's trace. Clients split
/// heads on their own (the request line written first, with TCP_NODELAY),
/// so a callee that reads fast can get the request line alone. The server
/// here reads the request line before the rest is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_after_a_split_request_line_joins_the_trace() {
    require_e2e!();
    let (_interpreters, receiver, server, agent) = traced_python_server("split", &[]).await;

    let port = server.port;
    let reply = tokio::task::spawn_blocking(move || {
        let request_line = b"GET /work HTTP/1.1\r\n";
        let rest = format!(
            "Host: 127.0.0.1\r\ntraceparent: 00-{OWN_TRACE_ID}-{OWN_PARENT_ID}-01\r\n\
             tracestate: {OWN_TRACE_STATE}\r\nConnection: close\r\n\r\n"
        );
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let client_port = stream.local_addr().expect("local address").port();
        stream
            .write_all(request_line)
            .expect("sending the request line");
        wait_read_by_server(port, client_port, request_line.len());
        stream
            .write_all(rest.as_bytes())
            .expect("sending the headers");
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .expect("reading the reply");
        reply
    })
    .await
    .expect("client thread");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let spans = wait_for_spans(&receiver, &[server.pid()], 0, 1).await;
    let span = the_span(&spans, "the server span", |s| s.kind == SpanKind::Server);
    assert_eq!(
        (
            span.trace_id.as_str(),
            span.parent_span_id.as_str(),
            span.trace_state.as_str()
        ),
        (OWN_TRACE_ID, OWN_PARENT_ID, OWN_TRACE_STATE),
        "the request's own context, read from its second segment\n{span:#?}"
    );
    assert_ids_well_formed(&receiver.spans());
    assert_eq!(agent.stop(), 0);
}

/// A head longer than the kernel's scan window (1 KiB), sent and read in
/// one piece, still joins the caller's trace when its `traceparent` comes
/// early: clients with many or long headers (cookies, tokens) send such
/// heads, and servers read them whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_in_a_long_head_read_at_once_joins_the_trace() {
    require_e2e!();
    let (_interpreters, receiver, server, agent) = traced_python_server("longhead", &[]).await;

    // One parent per head length, to tell the spans apart: exactly the
    // scan window, and well past it.
    let heads = [(1024, "00f067aa0ba90201"), (3000, "00f067aa0ba90202")];
    let port = server.port;
    tokio::task::spawn_blocking(move || {
        for (length, parent) in heads {
            let start = format!(
                "GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 traceparent: 00-{OWN_TRACE_ID}-{parent}-01\r\nX-Padding: "
            );
            let end = "\r\nConnection: close\r\n\r\n";
            let padding = "p".repeat(length - start.len() - end.len());
            let head = format!("{start}{padding}{end}");
            assert_eq!(head.len(), length);
            let reply = raw_exchange(port, head.as_bytes(), WAIT);
            assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
        }
    })
    .await
    .expect("client thread");

    let spans = wait_for_spans(&receiver, &[server.pid()], 0, heads.len()).await;
    for (length, parent) in heads {
        let span = the_span(&spans, &format!("the {length}-byte head"), |s| {
            s.kind == SpanKind::Server && s.parent_span_id == parent
        });
        assert_eq!(span.trace_id, OWN_TRACE_ID, "{span:#?}");
    }
    assert_ids_well_formed(&receiver.spans());
    assert_eq!(agent.stop(), 0);
}

/// A `traceparent` past the bytes the kernel sends up per call
/// (`--capture-bytes`) still joins the caller's trace: the header scan
/// looks at the head's first KiB whatever the capture limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_past_a_small_capture_joins_the_trace() {
    require_e2e!();
    let (_interpreters, receiver, server, agent) =
        traced_python_server("smallcapture", &["--capture-bytes", "48"]).await;

    let port = server.port;
    let head = format!(
        "GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\
         traceparent: 00-{OWN_TRACE_ID}-{OWN_PARENT_ID}-01\r\nConnection: close\r\n\r\n",
        "p".repeat(200)
    );
    assert!(head.find("traceparent").expect("in the head") > 200);
    let reply = tokio::task::spawn_blocking(move || raw_exchange(port, head.as_bytes(), WAIT))
        .await
        .expect("client thread");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");

    let spans = wait_for_spans(&receiver, &[server.pid()], 0, 1).await;
    let span = the_span(&spans, "the server span", |s| s.kind == SpanKind::Server);
    assert_eq!(
        (span.trace_id.as_str(), span.parent_span_id.as_str()),
        (OWN_TRACE_ID, OWN_PARENT_ID),
        "the context from past the 48 captured bytes\n{span:#?}"
    );
    assert_ids_well_formed(&receiver.spans());
    assert_eq!(agent.stop(), 0);
}

/// Requests of each event-loop run, and how many of them are in flight at once.
const LOOP_REQUESTS: usize = 200;

/// What the spans of one run through a gateway say about each call it
/// made, scored by the request id every URL carries (`/work/<id>` in,
/// `/leaf/<id>/<call>` out): see [`attribution`].
#[derive(Debug, Default)]
struct Attribution {
    /// Calls the gateway's requests should have made.
    expected: usize,
    /// The gateway's client spans: right parent, none (a trace of their
    /// own), or another request's.
    calls: Scores,
    /// The downstream server spans of those calls, likewise.
    downstream: Scores,
    /// What was wrong, one line each (wrong parents first).
    problems: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Scores {
    right: usize,
    unlinked: usize,
    wrong: usize,
}

impl Scores {
    fn total(self) -> usize {
        self.right + self.unlinked + self.wrong
    }
}

impl Attribution {
    fn summary(&self) -> String {
        let percent = |n: usize| 100.0 * n as f64 / self.expected.max(1) as f64;
        let line = |what: &str, s: Scores| {
            format!(
                "{what}: {}/{} right parent ({:.1}%), {} unlinked, {} in another request's trace",
                s.right,
                self.expected,
                percent(s.right),
                s.unlinked,
                s.wrong
            )
        };
        format!(
            "{}; {}",
            line("downstream spans", self.downstream),
            line("gateway calls", self.calls)
        )
    }
}

/// The request id in a path: the number after `/work/` or `/leaf/`.
fn request_id_in(path: &str) -> Option<u64> {
    let mut parts = path.split('/');
    parts.find(|&p| p == "work" || p == "leaf")?;
    parts.next()?.parse().ok()
}

/// The request id a span's URL carries.
fn request_id(span: &ReceivedSpan) -> Option<u64> {
    match span.kind {
        SpanKind::Server => request_id_in(span.str_attr("url.path")),
        SpanKind::Client => {
            let url = span.str_attr("url.full");
            // Past `scheme://host:port`.
            request_id_in(url.splitn(4, '/').nth(3)?)
        }
        _ => None,
    }
}

/// Scores each call of a gateway (spans `is_gateway` picks) to the leaf
/// services `leaf_pids`, by request id: a gateway client span is right when
/// its parent is the server span of the request with its id (same trace);
/// a downstream server span is right when its parent is such a right call
/// of the same id. Either is wrong when it sits in the trace of another
/// request or under its span, and unlinked when it is in a trace of its
/// own (the agent could not tell which request caused it).
fn attribution(
    spans: &[ReceivedSpan],
    is_gateway: impl Fn(&ReceivedSpan) -> bool,
    leaf_pids: &[u32],
    expected: usize,
) -> Attribution {
    let gateway_servers: HashMap<u64, &ReceivedSpan> = spans
        .iter()
        .filter(|s| is_gateway(s) && s.kind == SpanKind::Server)
        .filter_map(|s| Some((request_id(s)?, s)))
        .collect();
    // Which request a trace or a server span belongs to.
    let request_of_trace: HashMap<&str, u64> = gateway_servers
        .iter()
        .map(|(&id, s)| (s.trace_id.as_str(), id))
        .collect();
    let request_of_span: HashMap<&str, u64> = gateway_servers
        .iter()
        .map(|(&id, s)| (s.span_id.as_str(), id))
        .collect();
    let calls: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| is_gateway(s) && s.kind == SpanKind::Client)
        .collect();
    let mut scored = Attribution {
        expected,
        ..Attribution::default()
    };
    // The verdict on each call, by span id, for the downstream spans.
    let mut call_verdicts: HashMap<&str, (u64, bool)> = HashMap::new();
    let judge = |scores: &mut Scores,
                 problems: &mut Vec<String>,
                 span: &ReceivedSpan,
                 id: u64,
                 parent_right: bool,
                 parent_request: Option<u64>| {
        let other = |found: Option<u64>| found.is_some_and(|found| found != id);
        let in_other_trace = other(request_of_trace.get(span.trace_id.as_str()).copied());
        if parent_right && !in_other_trace {
            scores.right += 1;
            true
        } else if in_other_trace || other(parent_request) {
            scores.wrong += 1;
            problems.insert(0, format!("request {id}: WRONG parent {span:?}"));
            false
        } else {
            scores.unlinked += 1;
            problems.push(format!(
                "request {id}: unlinked {:?} span {}",
                span.kind, span.span_id
            ));
            false
        }
    };
    for call in &calls {
        let Some(id) = request_id(call) else {
            scored
                .problems
                .push(format!("call without a request id: {call:?}"));
            continue;
        };
        let right = gateway_servers.get(&id).is_some_and(|server| {
            call.parent_span_id == server.span_id && call.trace_id == server.trace_id
        });
        let parent_request = request_of_span.get(call.parent_span_id.as_str()).copied();
        let verdict = judge(
            &mut scored.calls,
            &mut scored.problems,
            call,
            id,
            right,
            parent_request,
        );
        call_verdicts.insert(call.span_id.as_str(), (id, verdict));
    }
    for span in spans
        .iter()
        .filter(|s| leaf_pids.contains(&s.pid()) && s.kind == SpanKind::Server)
    {
        let Some(id) = request_id(span) else {
            continue;
        };
        let parent_call = call_verdicts.get(span.parent_span_id.as_str()).copied();
        let right = parent_call == Some((id, true))
            && calls
                .iter()
                .any(|c| c.span_id == span.parent_span_id && c.trace_id == span.trace_id);
        let parent_request = parent_call.map(|(call_id, _)| call_id);
        judge(
            &mut scored.downstream,
            &mut scored.problems,
            span,
            id,
            right,
            parent_request,
        );
    }
    scored
}

/// A gateway under test: how to tell its spans, and what to wait for.
struct GatewayRun<'a> {
    label: &'a str,
    /// Base URL; request `i` goes to `<base>/work/<i>`.
    base: String,
    /// curl's options for it (`--cacert` for an HTTPS gateway).
    curl_options: Vec<String>,
    /// Processes whose spans to wait for (the gateway's and the leaf's).
    pids: Vec<u32>,
    is_gateway: &'a dyn Fn(&ReceivedSpan) -> bool,
    leaf_pids: Vec<u32>,
    /// Calls the gateway makes per request.
    calls: usize,
}

/// Runs `requests` requests through a gateway, `concurrency` at a time,
/// each with an id of its own (from `first_id` on), and scores the calls
/// it made. Also returns the agent's `sonde_links_ambiguous` growth.
async fn measure_gateway(
    run: &GatewayRun<'_>,
    receiver: &OtlpReceiver,
    metrics: SocketAddr,
    first_id: usize,
    requests: usize,
    concurrency: usize,
) -> (Attribution, u64) {
    let ambiguous_before = Counters(metrics)
        .counter("sonde_links_ambiguous")
        .unwrap_or(0);
    let before = receiver.spans().len();
    let base = run.base.clone();
    load_each(requests, concurrency, run.curl_options.clone(), move |i| {
        format!("{base}/work/{}", first_id + i)
    })
    .await;
    // Gateway server spans, its calls and the leaf's spans.
    let expected_spans = requests * (1 + 2 * run.calls);
    let spans = receiver
        .settle(WAIT, SETTLE, |spans| {
            spans[before.min(spans.len())..]
                .iter()
                .filter(|s| run.pids.contains(&s.pid()) || (run.is_gateway)(s))
                .count()
                >= expected_spans
        })
        .await;
    let spans = &spans[before..];
    let scored = attribution(spans, run.is_gateway, &run.leaf_pids, requests * run.calls);
    // Published every second: wait until it holds the last calls' counts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ambiguous = Counters(metrics)
        .counter("sonde_links_ambiguous")
        .unwrap_or(0)
        - ambiguous_before;
    println!(
        "{}, {requests} requests, concurrency {concurrency}: {}; sonde_links_ambiguous +{ambiguous}",
        run.label,
        scored.summary()
    );
    for problem in scored.problems.iter().take(5) {
        println!("  {problem}");
    }
    (scored, ambiguous)
}

/// The checks every gateway passes: one request at a time, every call is
/// the child of its request; 8 at a time, no call and no downstream span
/// is ever in another request's trace, and every call left without a
/// parent is counted in `sonde_links_ambiguous`. Returns the concurrent
/// run's scores.
async fn never_a_wrong_parent(
    run: &GatewayRun<'_>,
    receiver: &OtlpReceiver,
    metrics: SocketAddr,
) -> Attribution {
    let (serial, ambiguous) = measure_gateway(run, receiver, metrics, 0, 20, 1).await;
    let all_right = Scores {
        right: 20 * run.calls,
        ..Scores::default()
    };
    assert_eq!(
        (serial.calls, serial.downstream, ambiguous),
        (all_right, all_right, 0),
        "{}, one at a time: {serial:#?}",
        run.label
    );
    let (concurrent, ambiguous) = measure_gateway(
        run,
        receiver,
        metrics,
        1000,
        LOOP_REQUESTS,
        LOAD_CONCURRENCY,
    )
    .await;
    let expected = LOOP_REQUESTS * run.calls;
    assert_eq!(
        (concurrent.calls.total(), concurrent.downstream.total()),
        (expected, expected),
        "{}: every call gives its spans: {concurrent:#?}",
        run.label
    );
    assert_eq!(
        (concurrent.calls.wrong, concurrent.downstream.wrong),
        (0, 0),
        "{}: no span in another request's trace: {concurrent:#?}",
        run.label
    );
    assert_eq!(
        ambiguous, concurrent.calls.unlinked as u64,
        "{}: every unlinked call counted: {concurrent:#?}",
        run.label
    );
    // The injected traceparent carries the call's own ids, linked or not.
    assert_eq!(
        concurrent.downstream, concurrent.calls,
        "{}: downstream spans follow their calls: {concurrent:#?}",
        run.label
    );
    concurrent
}

/// Starts the agent on the gateway's and leaf's ports, with /metrics.
fn agent_for(ports: &[u16], receiver: &OtlpReceiver) -> (Agent, SocketAddr) {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    Agent::start_with_metrics(
        &["--port", &ports.join(",")],
        &receiver.grpc_endpoint(),
        "grpc",
    )
}

/// Runs the gateway `tests/apps/<script>` (under `program`, given the
/// leaf's port and base URL to build its arguments) in front of a threaded
/// Python leaf service, through [`never_a_wrong_parent`]; returns the
/// concurrent run's scores.
async fn loop_gateway(
    label: &str,
    program: &dyn Fn(&Interpreters) -> String,
    script: &str,
    args: &dyn Fn(u16, String) -> Vec<String>,
    calls: usize,
) -> Attribution {
    let setup = LoopGateway::start(program, script, args).await;
    let (gateway, leaf) = (&setup.gateway, &setup.leaf);
    let gateway_pid = gateway.pid();
    let run = GatewayRun {
        label,
        base: gateway.url(""),
        curl_options: Vec::new(),
        pids: vec![gateway_pid, leaf.pid()],
        is_gateway: &|s| s.pid() == gateway_pid,
        leaf_pids: vec![leaf.pid()],
        calls,
    };
    let concurrent = never_a_wrong_parent(&run, &setup.receiver, setup.metrics).await;
    assert_ids_well_formed(&setup.receiver.spans());
    assert_eq!(setup.agent.stop(), 0);
    concurrent
}

/// A gateway `tests/apps/<script>` in front of a threaded Python leaf, both
/// traced by an agent. Fields drop in order: the agent first.
struct LoopGateway {
    agent: Agent,
    /// The agent's /metrics address.
    metrics: SocketAddr,
    gateway: Server,
    leaf: Server,
    receiver: OtlpReceiver,
    interpreters: Interpreters,
}

impl LoopGateway {
    /// Starts the leaf, the gateway (under `program`, given the leaf's port
    /// and base URL to build its arguments) and the agent, and waits until
    /// both are instrumented.
    async fn start(
        program: &dyn Fn(&Interpreters) -> String,
        script: &str,
        args: &dyn Fn(u16, String) -> Vec<String>,
    ) -> Self {
        let interpreters = Interpreters::new(script);
        let receiver = OtlpReceiver::start().await;
        let leaf = python_chain(&interpreters, &[]);
        let script = app_path(script);
        let mut argv = vec![script.to_str().expect("utf-8 path").to_owned()];
        argv.extend(args(leaf.port, leaf.url("")));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let gateway = Server::start(&program(&interpreters), &argv);
        let (agent, metrics) = agent_for(&[gateway.port, leaf.port], &receiver);
        agent.wait_instrumented(&[gateway.pid(), leaf.pid()], WAIT);
        Self {
            agent,
            metrics,
            gateway,
            leaf,
            receiver,
            interpreters,
        }
    }
}

/// A gateway on a runtime with no special support: one thread, a plain
/// Python `selectors` loop, two calls per request at once. The kernel
/// cannot tell which request a call belongs to while several are in
/// flight: those calls get no parent, counted, never a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_event_loop_never_misparents() {
    require_e2e!();
    let concurrent = loop_gateway(
        "python selectors loop",
        &Interpreters::python,
        "selectors_gateway.py",
        &|port, _| vec!["--downstream".to_owned(), port.to_string()],
        2,
    )
    .await;
    assert!(
        concurrent.calls.unlinked > 0,
        "8 clients at a time keep several requests in flight: {concurrent:#?}"
    );
}

/// The same loop run inside one `contextvars.Context`, which the Python
/// context probes follow (the gateway copies a context first): requests of
/// every connection are read in it, so it names none of them, and its
/// calls keep the thread rule, never a wrong parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_loop_in_one_context_never_misparents() {
    require_e2e!();
    let concurrent = loop_gateway(
        "python selectors loop in one context",
        &Interpreters::python,
        "selectors_gateway.py",
        &|port, _| {
            vec![
                "--downstream".to_owned(),
                port.to_string(),
                "--in-context".to_owned(),
            ]
        },
        2,
    )
    .await;
    assert!(
        concurrent.calls.unlinked > 0,
        "a context shared by the loop's connections names no request: {concurrent:#?}"
    );
}

/// FastAPI under uvicorn (asyncio), two concurrent httpx calls per request
/// (`asyncio.gather`) over one keep-alive pool: the Python context probes
/// give every call its request (pyenv's CPython 3.11, libpython with
/// symbols).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_gather_exact_parents() {
    require_e2e!();
    let concurrent = loop_gateway(
        "fastapi/uvicorn + httpx gather",
        &Interpreters::python,
        "fastapi_gateway.py",
        &|_, url| vec!["--downstream".to_owned(), url],
        2,
    )
    .await;
    assert_exact(&concurrent, "fastapi/uvicorn");
}

/// Plain asyncio (a protocol server that starts a task per request where
/// it reads it, as uvicorn does; two calls per request through
/// `asyncio.gather` over a keep-alive pool of stream connections), on each
/// CPython release installed whose layout the agent knows: Debian's
/// stripped `python3.11` (always) and pyenv's builds with symbols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncio_gather_exact_parents_on_each_cpython() {
    require_e2e!();
    on_each_cpython("asyncio", &[]).await;
}

/// asyncio streams (`asyncio.start_server`): the task serving a connection
/// is made when the connection opens, before any request, and serves its
/// requests in turn, making one call itself and one in a task it starts
/// for the request; on each CPython release as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncio_streams_exact_parents_on_each_cpython() {
    require_e2e!();
    on_each_cpython("asyncio streams", &["--streams"]).await;
}

/// `tests/apps/asyncio_gateway.py` with `options` through
/// [`loop_gateway`] on each CPython release installed whose layout the
/// agent knows, each with exact parents.
async fn on_each_cpython(what: &str, options: &'static [&'static str]) {
    let mut pythons = vec![PathBuf::from("/usr/bin/python3.11")];
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|home| home.join(".pyenv")));
    for release in ["3.9", "3.10", "3.12.1", "3.13.0"] {
        let Some(Ok(versions)) = pyenv
            .as_ref()
            .map(|root| std::fs::read_dir(root.join("versions")))
        else {
            break;
        };
        let found = versions.filter_map(|v| Some(v.ok()?.path())).find(|dir| {
            dir.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| name == release || name.starts_with(&format!("{release}.")))
        });
        match found {
            Some(dir) => pythons.push(dir.join("bin/python3")),
            None => println!("CPython {release} not installed: not checked"),
        }
    }
    for python in pythons {
        let python =
            std::fs::canonicalize(&python).unwrap_or_else(|e| panic!("{}: {e}", python.display()));
        let name = python
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let label = format!("{what} on {}", python.display());
        let concurrent = loop_gateway(
            &label,
            &|interpreters| interpreters.link(&name, &python),
            "asyncio_gateway.py",
            &|port, _| {
                let mut args = vec!["--downstream".to_owned(), port.to_string()];
                args.extend(options.iter().map(|option| (*option).to_owned()));
                args
            },
            2,
        )
        .await;
        assert_exact(&concurrent, &label);
    }
}

/// An aiohttp web server (which starts the task serving a connection when
/// it opens, before any request) making two concurrent calls per request
/// with an aiohttp `ClientSession` (`asyncio.gather`, one keep-alive
/// pool): exact parents through the connection's own context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiohttp_exact_parents() {
    require_e2e!();
    let concurrent = loop_gateway(
        "aiohttp server + aiohttp client gather",
        &Interpreters::python,
        "aiohttp_gateway.py",
        &|port, _| vec!["--downstream".to_owned(), port.to_string()],
        2,
    )
    .await;
    assert_exact(&concurrent, "aiohttp");
}

/// HTTP/1.1 pipelining into servers whose handler task is made per
/// connection (asyncio streams, aiohttp), 4 keep-alive connections: each
/// second request of a pair is sent before the first's response, in the
/// same read or a later one. Once a connection had two requests in flight
/// it cannot say which one a call serves: unlinked calls are fine, a call
/// in another request's trace is not. One request first: a connection
/// accepted before the loop's thread made its first context copy since
/// the agent came is not followed (the thread rule, which pipelining can
/// mislead: see README "Limits today").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_never_misparent() {
    require_e2e!();
    for (script, options) in [
        ("asyncio_gateway.py", &["--streams"][..]),
        ("aiohttp_gateway.py", &[][..]),
    ] {
        let setup = LoopGateway::start(&Interpreters::python, script, &|port, _| {
            let mut args = vec!["--downstream".to_owned(), port.to_string()];
            args.extend(options.iter().map(|option| (*option).to_owned()));
            args
        })
        .await;
        let (gateway, leaf, receiver) = (&setup.gateway, &setup.leaf, &setup.receiver);
        let warm_up = curl(&[&gateway.url("/work/1000")]);
        assert_eq!(warm_up.trim(), "done", "{script}");
        let output = Command::new(setup.interpreters.python())
            .arg(app_path("pipelining_client.py"))
            .arg(gateway.port.to_string())
            .output()
            .expect("running the pipelining client");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "pipelined 200",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let gateway_pid = gateway.pid();
        let pids = [gateway_pid, leaf.pid()];
        // Per request: the gateway's server span, two calls, two leaf spans.
        let spans = receiver
            .settle(WAIT, SETTLE, |spans| {
                spans.iter().filter(|s| pids.contains(&s.pid())).count() >= 201 * 5
            })
            .await;
        let spans: Vec<ReceivedSpan> = spans
            .into_iter()
            .filter(|s| request_id(s) != Some(1000))
            .collect();
        let scored = attribution(&spans, |s| s.pid() == gateway_pid, &[leaf.pid()], 400);
        println!(
            "{script} {options:?}, 200 pipelined requests: {}",
            scored.summary()
        );
        assert_eq!(
            (scored.calls.total(), scored.downstream.total()),
            (400, 400),
            "{script}: every call gives its spans: {scored:#?}"
        );
        assert_eq!(
            (scored.calls.wrong, scored.downstream.wrong),
            (0, 0),
            "{script}: no span in another request's trace: {scored:#?}"
        );
        assert_eq!(setup.agent.stop(), 0);
    }
}

/// The FastAPI gateway under hypercorn (asyncio streams underneath: a task
/// per connection made when it opens, a task per request it spawns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypercorn_exact_parents() {
    require_e2e!();
    let concurrent = loop_gateway(
        "fastapi/hypercorn + httpx gather",
        &Interpreters::python,
        "fastapi_gateway.py",
        &|_, url| vec!["--downstream".to_owned(), url, "--hypercorn".to_owned()],
        2,
    )
    .await;
    assert_exact(&concurrent, "fastapi/hypercorn");
}

/// At least 99% of the calls and of their downstream spans have the right
/// parent (never a wrong one: `never_a_wrong_parent` checked that).
fn assert_exact(concurrent: &Attribution, label: &str) {
    for scores in [concurrent.calls, concurrent.downstream] {
        assert!(
            scores.right * 100 >= concurrent.expected * 99,
            "{label}: at least 99% right parents: {concurrent:#?}"
        );
    }
}

/// A Node.js gateway (`tests/apps/loop_gateway.js` under `node` (Node 20
/// if `None`) with `options`, over HTTPS with `tls`) in front of a
/// threaded Python leaf, traced by an
/// agent run with `agent_args`, through [`never_a_wrong_parent`]. Checks
/// what the agent leaves in the process: its script while it runs (unless
/// `--no-node-inspector`), nothing once it stopped (methods, channels,
/// globals as they were; the inspector closed). Returns the concurrent
/// run's scores.
async fn node_gateway(
    label: &str,
    node: Option<String>,
    options: &[&str],
    tls: bool,
    agent_args: &[&str],
) -> Attribution {
    let interpreters = Interpreters::new("loop_gateway.js");
    let receiver = OtlpReceiver::start().await;
    let leaf = python_chain(&interpreters, &[]);
    let certificate = tls.then(|| Certificate::new("node-gateway"));
    let script = app_path("loop_gateway.js");
    let leaf_url = leaf.url("");
    let mut argv = vec![script.to_str().expect("utf-8 path"), "0", &leaf_url];
    argv.extend(options);
    let (cert, key) = certificate.as_ref().map(|c| (c.cert(), c.key())).unzip();
    if let (Some(cert), Some(key)) = (&cert, &key) {
        argv.extend(["--cert", cert, "--key", key]);
    }
    let node = node.unwrap_or_else(|| interpreters.node());
    let gateway = Server::start(&node, &argv);
    let curl_options: Vec<String> = cert
        .iter()
        .flat_map(|cert| ["--cacert".to_owned(), cert.clone()])
        .collect();
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://127.0.0.1:{}", gateway.port);
    let state = || {
        let url = format!("{base}/state");
        let mut args: Vec<&str> = curl_options.iter().map(String::as_str).collect();
        args.push(&url);
        curl(&args).trim().to_owned()
    };
    assert_eq!(state(), "pristine", "{label}: before the agent");
    let ports = format!("{},{}", gateway.port, leaf.port);
    let mut args = vec!["--port", ports.as_str()];
    args.extend(agent_args);
    let (agent, metrics) = Agent::start_with_metrics(&args, &receiver.grpc_endpoint(), "grpc");
    agent.wait_instrumented(&[gateway.pid(), leaf.pid()], WAIT);
    let inspector = !agent_args.contains(&"--no-node-inspector");
    if inspector {
        wait_for_log(&agent, "Node.js context script installed");
        assert_ne!(state(), "pristine", "{label}: the agent's script runs");
    }
    let gateway_pid = gateway.pid();
    let run = GatewayRun {
        label,
        base: base.clone(),
        curl_options: curl_options.clone(),
        pids: vec![gateway_pid, leaf.pid()],
        is_gateway: &|s| s.pid() == gateway_pid,
        leaf_pids: vec![leaf.pid()],
        calls: 2,
    };
    let concurrent = never_a_wrong_parent(&run, &receiver, metrics).await;
    assert_ids_well_formed(&receiver.spans());
    // The inspector's own HTTP and WebSocket traffic is no span.
    let inspector_spans: Vec<String> = receiver
        .spans()
        .iter()
        .filter(|s| {
            s.attributes.get("server.port").and_then(Value::as_i64) == Some(9229)
                || s.name.contains("/json")
        })
        .map(|s| s.name.clone())
        .collect();
    assert!(
        inspector_spans.is_empty(),
        "{label}: the agent's inspector sessions are not the service's spans: {inspector_spans:?}"
    );
    assert_eq!(agent.stop(), 0);
    assert_eq!(
        state(),
        "pristine",
        "{label}: the agent left nothing behind"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", 9229)).is_err(),
        "{label}: the inspector is closed again"
    );
    concurrent
}

/// Waits until the agent logged `text`.
fn wait_for_log(agent: &Agent, text: &str) {
    let deadline = Instant::now() + WAIT;
    while !agent.log_text().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in the agent's log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node.js `http` server, two sequential calls per request with a timer
/// between, through one keep-alive `http.Agent` (4 sockets for 8 clients:
/// requests wait for a socket too): the agent's script in the process
/// names each call's request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_keep_alive_exact_parents() {
    require_e2e!();
    let label = "node http + keep-alive agent";
    assert_exact(&node_gateway(label, None, &[], false, &[]).await, label);
}

/// The same calls through `fetch` (undici's keep-alive pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch_exact_parents() {
    require_e2e!();
    let label = "node http + fetch";
    assert_exact(
        &node_gateway(label, None, &["--fetch"], false, &[]).await,
        label,
    );
}

/// An HTTPS gateway (Node's built-in TLS) calling over a keep-alive agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_https_exact_parents() {
    require_e2e!();
    let label = "node https + keep-alive agent";
    assert_exact(&node_gateway(label, None, &[], true, &[]).await, label);
}

/// Node.js 22: `http.Agent` and `fetch` (its own undici).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node22_exact_parents() {
    require_e2e!();
    for (label, options) in [
        ("node 22 http + keep-alive agent", &[][..]),
        ("node 22 http + fetch", &["--fetch"][..]),
    ] {
        assert_exact(
            &node_gateway(label, Some(node22()), options, false, &[]).await,
            label,
        );
    }
}

/// Calls a Node gateway makes from a timer, for no request, while it
/// serves one request at a time: the thread rule would make each a child
/// of the request in flight; the script says they are no request's, so
/// they get no parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_background_calls_get_no_parent() {
    require_e2e!();
    let interpreters = Interpreters::new("loop_gateway.js");
    let receiver = OtlpReceiver::start().await;
    let leaf = python_chain(&interpreters, &[]);
    let script = app_path("loop_gateway.js");
    let leaf_url = leaf.url("");
    let gateway = Server::start(
        &interpreters.node(),
        &[
            script.to_str().expect("utf-8 path"),
            "0",
            &leaf_url,
            "--background",
        ],
    );
    let (agent, _) = agent_for(&[gateway.port, leaf.port], &receiver);
    agent.wait_instrumented(&[gateway.pid(), leaf.pid()], WAIT);
    wait_for_log(&agent, "Node.js context script installed");
    load_each(40, 1, Vec::new(), {
        let base = gateway.url("");
        move |i| format!("{base}/work/{i}")
    })
    .await;
    let gateway_pid = gateway.pid();
    let is_background = |s: &ReceivedSpan| {
        s.pid() == gateway_pid
            && s.kind == SpanKind::Client
            && s.attributes
                .get("url.full")
                .and_then(Value::as_str)
                .is_some_and(|url| url.contains("/leaf/background/"))
    };
    let requests = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .filter(|s| s.pid() == gateway_pid && s.kind == SpanKind::Server)
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while requests(&receiver.spans()) < 40 {
        assert!(Instant::now() < deadline, "the gateway's 40 server spans");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = receiver.spans();
    let background: Vec<&ReceivedSpan> = spans.iter().filter(|s| is_background(s)).collect();
    assert!(
        background.len() >= 20,
        "the timer's calls: {}",
        background.len()
    );
    let parented: Vec<&&ReceivedSpan> = background
        .iter()
        .filter(|s| !s.parent_span_id.is_empty())
        .collect();
    assert!(
        parented.is_empty(),
        "{} of {} background calls got a parent: {parented:#?}",
        parented.len(),
        background.len()
    );
    assert_eq!(agent.stop(), 0);
}

/// With the inspector switched off the process is never touched, and its
/// calls keep the thread rule: unlinked while several requests are in
/// flight, never a wrong parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_inspector_never_misparents() {
    require_e2e!();
    let concurrent = node_gateway(
        "node http, --no-node-inspector",
        None,
        &[],
        false,
        &["--no-node-inspector"],
    )
    .await;
    assert!(
        concurrent.calls.unlinked > 0,
        "8 clients at a time keep several requests in flight: {concurrent:#?}"
    );
}

/// nginx `proxy_pass` to an upstream with `keepalive` (4 kept, 8 clients:
/// new and reused upstream connections): its worker serves many requests
/// at once on one thread, one upstream call each, and the nginx probes
/// give each call its request; served over plain HTTP and over TLS (the
/// OpenSSL probes tie each TLS connection to its descriptor, which the
/// nginx probes look up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keepalive_upstream_never_misparents() {
    require_e2e!();
    let certificate = Certificate::new("nginx-gateway");
    for tls in [false, true] {
        nginx_proxy(tls.then_some(&certificate)).await;
    }
}

/// [`nginx_keepalive_upstream_never_misparents`] for one listener, plain
/// or over TLS with `certificate`.
async fn nginx_proxy(certificate: Option<&Certificate>) {
    let interpreters = Interpreters::new("nginx");
    let receiver = OtlpReceiver::start().await;
    let leaf = python_chain(&interpreters, &[]);
    let port = free_port();
    let (listen, curl_options, scheme) = match certificate {
        Some(certificate) => (
            format!(
                "listen 127.0.0.1:{port} ssl;
        ssl_certificate {};
        ssl_certificate_key {};",
                certificate.cert(),
                certificate.key()
            ),
            vec![
                "--http1.1".to_owned(),
                "--cacert".to_owned(),
                certificate.cert(),
            ],
            "https",
        ),
        None => (format!("listen 127.0.0.1:{port};"), Vec::new(), "http"),
    };
    let nginx = Nginx::start(
        "proxy",
        &format!(
            "upstream leaf {{ server 127.0.0.1:{leaf}; keepalive 4; }}
    server {{
        {listen}
        location /work/ {{
            proxy_pass http://leaf/leaf/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}",
            leaf = leaf.port
        ),
        port,
    );
    let (agent, metrics) = agent_for(&[port, leaf.port], &receiver);
    agent.wait_instrumented(&[nginx.pid(), leaf.pid()], WAIT);
    let is_nginx = |s: &ReceivedSpan| {
        s.resource
            .get("process.executable.name")
            .and_then(Value::as_str)
            == Some("nginx")
    };
    let label = format!("nginx proxy_pass over {scheme}, upstream keepalive");
    let run = GatewayRun {
        label: &label,
        base: format!("{scheme}://127.0.0.1:{port}"),
        curl_options,
        pids: vec![leaf.pid()],
        is_gateway: &is_nginx,
        leaf_pids: vec![leaf.pid()],
        calls: 1,
    };
    assert!(
        agent.log_text().contains("nginx upstream probes attached"),
        "{}",
        agent.log_text()
    );
    let concurrent = never_a_wrong_parent(&run, &receiver, metrics).await;
    // nginx names the request of each upstream send (`ngx_chain_writer`):
    // exact parents, new and kept-alive upstream connections alike.
    assert!(
        concurrent.downstream.right * 100 >= 99 * LOOP_REQUESTS,
        "{label}: at least 99% right parents: {concurrent:#?}"
    );
    assert_ids_well_formed(&receiver.spans());
    assert_eq!(agent.stop(), 0);
    drop(nginx);
}

/// A Go `net/http` gateway that calls two leaves at once for each request
/// (a threaded Python `http.server` and a Go `net/http` server), one
/// goroutine per call, through one keep-alive client: goroutines move
/// between threads, and the client writes each request from its
/// connection's own goroutine. The goroutine probes give the calls their
/// request: at least 99% right parents, with symbols (Go 1.19) and
/// stripped (Go 1.23), over plain HTTP and with the gateway serving
/// HTTP/1.1 over Go's own `crypto/tls` (its requests then read by the Go
/// TLS probes, its calls still plain HTTP, so the leaves' spans show
/// whether the injected ids were the right ones). Over h2 (what curl
/// negotiates with a Go TLS server unless told otherwise) the kernel finds
/// no request start in the HPACK-coded heads, so the calls get no parent:
/// never a wrong one, and each counted (`sonde_links_unmade_while_serving`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_gateway_fan_out_has_exact_parents() {
    require_e2e!();
    let certificate = Certificate::new("go-gateway");
    for (minor, stripped, https) in [
        (19, false, false),
        (23, true, false),
        (19, false, true),
        (23, true, true),
    ] {
        let bin = build("go_https", minor, stripped);
        let bin = bin.to_str().expect("utf-8 path");
        let interpreters = Interpreters::new("go-gateway");
        let receiver = OtlpReceiver::start().await;
        let python_leaf = python_chain(&interpreters, &[]);
        let go_leaf = Server::start(bin, &["server", "-plain"]);
        let (cert, key) = (certificate.cert(), certificate.key());
        let (python_url, go_url) = (python_leaf.url(""), go_leaf.url(""));
        let mut argv = vec!["gateway"];
        if https {
            argv.extend(["-cert", &cert, "-key", &key]);
        }
        argv.extend([python_url.as_str(), &go_url]);
        let gateway = Server::start(bin, &argv);
        let (agent, metrics) =
            agent_for(&[gateway.port, python_leaf.port, go_leaf.port], &receiver);
        let pids = vec![gateway.pid(), python_leaf.pid(), go_leaf.pid()];
        agent.wait_instrumented(&pids, WAIT);
        agent.wait_for_log("Go goroutine probes attached", WAIT);
        if https {
            agent.wait_for_log("Go TLS probes attached", WAIT);
        }
        let gateway_pid = gateway.pid();
        let (scheme, curl_options) = if https {
            let options = ["--http1.1", "--cacert", &cert];
            ("https", options.map(str::to_owned).to_vec())
        } else {
            ("http", Vec::new())
        };
        let label = format!("Go 1.{minor} net/http gateway over {scheme}, goroutine per call");
        let run = GatewayRun {
            label: &label,
            base: format!("{scheme}://127.0.0.1:{}", gateway.port),
            curl_options,
            pids: pids.clone(),
            is_gateway: &|s| s.pid() == gateway_pid,
            leaf_pids: pids[1..].to_vec(),
            calls: 2,
        };
        let concurrent = never_a_wrong_parent(&run, &receiver, metrics).await;
        assert!(
            concurrent.calls.right * 100 >= 99 * 2 * LOOP_REQUESTS,
            "{label}: at least 99% right parents: {concurrent:#?}"
        );
        if https {
            let h2 = GatewayRun {
                label: &format!("{label}, h2"),
                curl_options: run.curl_options[1..].to_vec(),
                ..run
            };
            let unmade = || {
                Counters(metrics)
                    .counter("sonde_links_unmade_while_serving")
                    .unwrap_or(0)
            };
            let unmade_before = unmade();
            let (scored, ambiguous) =
                measure_gateway(&h2, &receiver, metrics, 5000, 40, LOAD_CONCURRENCY).await;
            assert_eq!(
                (scored.calls.wrong, scored.downstream.wrong),
                (0, 0),
                "{label}, h2: never in another request's trace: {scored:#?}"
            );
            assert_eq!(
                unmade() - unmade_before + ambiguous,
                scored.calls.unlinked as u64,
                "{label}, h2: every call left without a parent is counted: {scored:#?}"
            );
        }
        let spans = receiver.spans();
        if https {
            // The gateway's server spans came from the TLS plaintext.
            let served: Vec<&ReceivedSpan> = spans
                .iter()
                .filter(|s| s.pid() == gateway_pid && s.kind == SpanKind::Server)
                .collect();
            assert!(
                !served.is_empty() && served.iter().all(|s| s.str_attr("url.scheme") == "https"),
                "{label}: the gateway's server spans have url.scheme https: {served:#?}"
            );
        }
        assert_ids_well_formed(&spans);
        assert_eq!(agent.stop(), 0);
    }
}

/// Two network namespaces made by the test, deleted on drop (panics
/// included).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// `ip netns add name`; `Err` with ip's message if it failed.
    fn add(&mut self, name: String) -> Result<(), String> {
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("running ip: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        self.names.push(name);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `ip args...` and panics with its message if it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Caller and callee in two network namespaces joined by a veth pair: the
/// callee's server span is the child of the caller's client span, whose
/// ids crossed the link in the injected header. Both are selected by pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_across_network_namespaces() {
    require_e2e!();
    let pid = std::process::id();
    let (caller_ns, callee_ns) = (
        format!("sonde-tc-{pid}-caller"),
        format!("sonde-tc-{pid}-callee"),
    );
    let mut namespaces = Namespaces { names: Vec::new() };
    if let Err(why) = namespaces.add(caller_ns.clone()) {
        // A sandbox without CAP_SYS_ADMIN in its user namespace; anything
        // else is a failure.
        assert!(
            why.contains("Operation not permitted") || why.contains("Permission denied"),
            "ip netns add {caller_ns}: {why}"
        );
        eprintln!("skipped: `ip netns add` is not permitted here: {why}");
        return;
    }
    namespaces
        .add(callee_ns.clone())
        .unwrap_or_else(|why| panic!("ip netns add {callee_ns}: {why}"));
    // A /30 of our own; the addresses exist only inside these namespaces.
    let subnet = pid % 256;
    let (caller_ip, callee_ip) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
    let (caller_if, callee_if) = (format!("stc{pid}a"), format!("stc{pid}b"));
    ip(&[
        "link", "add", &caller_if, "netns", &caller_ns, "type", "veth", "peer", "name", &callee_if,
        "netns", &callee_ns,
    ]);
    for (ns, interface, address) in [
        (&caller_ns, &caller_if, &caller_ip),
        (&callee_ns, &callee_if, &callee_ip),
    ] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{address}/30"),
            "dev",
            interface,
        ]);
        ip(&["-n", ns, "link", "set", interface, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    let interpreters = Interpreters::new("netns");
    let script = app_path("chain_service.py");
    let script = script.to_str().expect("utf-8 path");
    // `ip netns exec` execs the command: the pid is the service's.
    let python = interpreters.python();
    let callee = Server::start(
        "ip",
        &[
            "netns", "exec", &callee_ns, &python, script, "--host", &callee_ip,
        ],
    );
    let callee_url = format!("http://{callee_ip}:{}/work", callee.port);
    let caller = Server::start(
        "ip",
        &[
            "netns",
            "exec",
            &caller_ns,
            &python,
            script,
            "--downstream",
            &callee_url,
        ],
    );
    let pids = [caller.pid(), callee.pid()];
    let receiver = OtlpReceiver::start().await;
    let agent = Agent::start(
        &[
            "--pid",
            &format!("{},{}", caller.pid(), callee.pid()),
            "--prometheus-port",
            "0",
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    agent.wait_instrumented(&pids, WAIT);

    // curl runs next to the caller: its 127.0.0.1 is the caller namespace's.
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &caller_ns,
            "curl",
            "-sS",
            &caller.url("/work"),
        ])
        .output()
        .expect("running curl in the caller's namespace");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        DONE,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let spans = wait_for_spans(&receiver, &pids, 0, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let of = |server: &Server, kind| {
        the_span(&spans, &format!("{kind:?} of {}", server.pid()), |s| {
            s.pid() == server.pid() && s.kind == kind
        })
    };
    let caller_server = of(&caller, SpanKind::Server);
    let caller_client = of(&caller, SpanKind::Client);
    let callee_server = of(&callee, SpanKind::Server);
    assert!(
        caller_server.parent_span_id.is_empty(),
        "{caller_server:#?}"
    );
    assert_child_of(caller_client, caller_server, "the caller's call");
    assert_child_of(
        callee_server,
        caller_client,
        "the callee's request, across the veth pair",
    );
    assert_eq!(caller_client.str_attr("network.peer.address"), callee_ip);
    assert_eq!(called_port(caller_client), callee.port);
    assert_eq!(callee_server.str_attr("network.peer.address"), caller_ip);
    assert_ids_well_formed(&receiver.spans());
    assert_eq!(agent.stop(), 0);
}

/// curl -> A (ours) -> sdk_service.py (OpenTelemetry SDK) -> C (ours). The
/// SDK's server span continues from the header the kernel injected into A's
/// call; the SDK propagates its own client span, which the kernel leaves
/// alone, so C's request is the child of the SDK's call. All one trace.
///
/// The SDK service is selected too: the kernel only looks at the requests
/// of selected processes, and this is what makes it skip one that carries a
/// `traceparent` (`sonde_traceparent_already_present`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_service_in_the_middle_continues_the_trace() {
    require_e2e!();
    let interpreters = Interpreters::new("sdk");
    let receiver = OtlpReceiver::start().await;
    let c = node_chain(&interpreters, &[]);
    let sdk = Server::start(
        &interpreters.python(),
        &[
            app_path("sdk_service.py").to_str().expect("utf-8 path"),
            "--otlp",
            &receiver.http_endpoint(),
            "--downstream",
            &c.url("/work"),
        ],
    );
    let a = python_chain(&interpreters, &[sdk.url("/work")]);
    let (agent, metrics) = Agent::start_with_metrics(
        &["--port", &format!("{},{},{}", a.port, sdk.port, c.port)],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    agent.wait_instrumented(&[a.pid(), sdk.pid(), c.pid()], WAIT);

    const REQUESTS: usize = 3;
    for _ in 0..REQUESTS {
        assert_eq!(curl(&[&a.url("/work")]), DONE);
    }
    let is_sdk = |s: &ReceivedSpan, kind| service_name(s) == "sdk-service" && s.kind == kind;
    let count = |spans: &[ReceivedSpan], pick: &dyn Fn(&ReceivedSpan) -> bool| {
        spans.iter().filter(|s| pick(s)).count()
    };
    receiver
        .wait_for(
            |spans| {
                count(spans, &|s| s.pid() == c.pid()) >= REQUESTS
                    && count(spans, &|s| is_sdk(s, SpanKind::Server)) >= REQUESTS
                    && count(spans, &|s| is_sdk(s, SpanKind::Client)) >= REQUESTS
                    && count(spans, &|s| s.pid() == a.pid()) >= 2 * REQUESTS
                    && count(spans, &|s| s.pid() == sdk.pid()) >= 2 * REQUESTS
            },
            WAIT,
        )
        .await;
    tokio::time::sleep(SETTLE).await;
    let spans = receiver.spans();

    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.pid() == a.pid() && s.kind == SpanKind::Server)
        .collect();
    assert_eq!(roots.len(), REQUESTS, "{spans:#?}");
    for a_server in roots {
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == a_server.trace_id)
            .cloned()
            .collect();
        let a_call = the_span(&trace, "A -> SDK", |s| {
            s.pid() == a.pid() && s.kind == SpanKind::Client
        });
        let sdk_server = the_span(&trace, "the SDK's SERVER span", |s| {
            is_sdk(s, SpanKind::Server)
        });
        let sdk_call = the_span(&trace, "the SDK's CLIENT span", |s| {
            is_sdk(s, SpanKind::Client)
        });
        let c_server = the_span(&trace, "C server", |s| s.pid() == c.pid());
        assert!(a_server.parent_span_id.is_empty(), "{a_server:#?}");
        assert_child_of(a_call, a_server, "A's call");
        assert_child_of(
            sdk_server,
            a_call,
            "the SDK's request (header injected by the kernel)",
        );
        assert_child_of(sdk_call, sdk_server, "the SDK's call");
        assert_child_of(
            c_server,
            sdk_call,
            "C's request (header of the SDK, not replaced)",
        );
        assert_eq!(called_port(a_call), sdk.port);

        // The agent traces the SDK process too: its own spans of it join
        // the same trace rather than starting new ones.
        let ours_server = the_span(&trace, "our server span of the SDK process", |s| {
            s.pid() == sdk.pid() && s.kind == SpanKind::Server
        });
        assert_child_of(ours_server, a_call, "our span of the SDK's request");
        let ours_call = the_span(&trace, "our client span of the SDK's call to C", |s| {
            s.pid() == sdk.pid() && s.kind == SpanKind::Client && called_port(s) == c.port
        });
        // The request carried the SDK's traceparent: the span takes it
        // (agent/src/spans/http.rs, `identity`).
        assert_child_of(ours_call, sdk_call, "our span of the SDK's call");
    }

    let names = [
        "sonde_traceparent_injected",
        "sonde_traceparent_already_present",
        "sonde_traceparent_inject_failed",
    ];
    let counters = Counters(metrics)
        .wait_for_counters(&names, |v| {
            v[0] >= REQUESTS as u64 && v[1] >= REQUESTS as u64
        })
        .await;
    println!("sdk in the middle: {names:?} = {counters:?}");
    assert_eq!(
        counters[1], REQUESTS as u64,
        "the SDK's calls to C, one per request"
    );
    assert_eq!(counters[2], 0);
    assert_ids_well_formed(&spans);
    assert_eq!(agent.stop(), 0);
}

/// The requests of the byte-level test, by path.
fn raw_requests(port: u16) -> Vec<(&'static str, Vec<u8>)> {
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let padding = "p".repeat(600);
    vec![
        ("/small", format!("GET /small HTTP/1.1\r\n{host}Accept: */*\r\n\r\n").into_bytes()),
        (
            "/submit",
            format!(
                "POST /submit HTTP/1.1\r\n{host}Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
            )
            .into_bytes(),
        ),
        (
            "/own-context",
            format!(
                "GET /own-context HTTP/1.1\r\n{host}Traceparent: 00-{OWN_TRACE_ID}-{OWN_PARENT_ID}-01\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "/long-head",
            format!("GET /long-head HTTP/1.1\r\n{host}X-Padding: {padding}\r\n\r\n").into_bytes(),
        ),
    ]
}

/// Runs `raw_client.py` with the test's own python link (the one the agent
/// selects by `--exe`), sending `requests` to `port`. It waits on its stdin
/// until the agent has selected it: its connections are traced only if they
/// are opened after that. Returns its pid.
async fn run_raw_client(
    interpreters: &Interpreters,
    agent: &Agent,
    port: u16,
    requests: &[(&str, Vec<u8>)],
) -> u32 {
    let script = app_path("raw_client.py");
    let mut client = Command::new(interpreters.client_python())
        .args([
            "-c",
            "import runpy, sys; sys.stdin.readline(); sys.argv = sys.argv[1:]; \
             runpy.run_path(sys.argv[0], run_name='__main__')",
            script.to_str().expect("utf-8 path"),
            &port.to_string(),
        ])
        .args(requests.iter().map(|(_, bytes)| hex(bytes)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting raw_client.py");
    let pid = client.id();
    agent.wait_instrumented(&[pid], WAIT);
    client
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"go\n")
        .expect("starting the client");
    let output = tokio::task::spawn_blocking(move || client.wait_with_output())
        .await
        .expect("waiting for raw_client.py")
        .expect("raw_client.py output");
    assert!(
        output.status.success(),
        "raw_client.py: {:?}",
        output.status
    );
    let statuses = String::from_utf8_lossy(&output.stdout);
    assert_eq!(statuses.lines().collect::<Vec<_>>(), ["HTTP/1.1 200 OK"; 4]);
    pid
}

/// Splits `captured` into what was `sent` and one inserted `traceparent`
/// line right after the request line; returns the line's trace and span
/// ids. Panics if anything else differs.
fn inserted_ids(sent: &[u8], captured: &[u8]) -> (String, String) {
    let line_end = sent
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("request line")
        + 2;
    let show = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert_eq!(
        captured.len(),
        sent.len() + 70,
        "one 70-byte line inserted:\nsent {:?}\ngot  {:?}",
        show(sent),
        show(captured)
    );
    assert_eq!(
        captured[..line_end],
        sent[..line_end],
        "request line unchanged"
    );
    assert_eq!(
        captured[line_end + 70..],
        sent[line_end..],
        "the rest unchanged:\nsent {:?}\ngot  {:?}",
        show(sent),
        show(captured)
    );
    let line = show(&captured[line_end..line_end + 70]);
    let value = line
        .strip_prefix("traceparent: 00-")
        // A new trace: sampled (the default sampler) and a random id (W3C
        // Level 2 flag 02).
        .and_then(|v| v.strip_suffix("-03\r\n"))
        .unwrap_or_else(|| panic!("inserted line {line:?}"));
    let (trace_id, span_id) = value.split_once('-').unwrap_or_else(|| panic!("{line:?}"));
    let lower_hex = |id: &str| {
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        trace_id.len() == 32 && span_id.len() == 16 && lower_hex(trace_id) && lower_hex(span_id),
        "inserted line {line:?}"
    );
    (trace_id.to_owned(), span_id.to_owned())
}

/// Byte level, on the wire: the kernel inserts exactly one `traceparent`
/// line after the request line of a small GET and of a POST with a body,
/// carrying the ids of the client span the agent reports; a request with
/// its own `traceparent` and one whose head passes 512 bytes go out
/// untouched. With `--no-inject` nothing is touched. Exported over
/// OTLP/HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_on_the_wire_is_exact_and_can_be_switched_off() {
    require_e2e!();
    let interpreters = Interpreters::new("wire");
    let receiver = OtlpReceiver::start().await;
    // Run by the other python link, which the agent does not select.
    let capture = CaptureServer::start(&interpreters.python());
    let requests = raw_requests(capture.port);
    let counter_names = [
        "sonde_traceparent_injected",
        "sonde_traceparent_already_present",
        "sonde_traceparent_head_too_long",
        "sonde_traceparent_inject_failed",
    ];

    for inject in [true, false] {
        let client = interpreters.client_python();
        let mut args = vec!["--exe", &client];
        if !inject {
            args.push("--no-inject");
        }
        let (agent, metrics) =
            Agent::start_with_metrics(&args, &receiver.http_endpoint(), "http/protobuf");
        let before = receiver.spans().len();
        let client = run_raw_client(&interpreters, &agent, capture.port, &requests).await;
        let captured: Vec<Vec<u8>> = requests.iter().map(|_| capture.next_request()).collect();
        let spans = wait_for_spans(&receiver, &[client], before, requests.len()).await;
        assert_eq!(
            spans.len(),
            requests.len(),
            "one client span per request: {spans:#?}"
        );
        let span_for = |path: &str| {
            the_span(&spans, path, |s| {
                s.kind == SpanKind::Client && s.str_attr("url.full").ends_with(path)
            })
        };

        for ((path, sent), got) in requests.iter().zip(&captured) {
            let span = span_for(path);
            let injectable = matches!(*path, "/small" | "/submit");
            if inject && injectable {
                let (trace_id, span_id) = inserted_ids(sent, got);
                assert_eq!(
                    (trace_id.as_str(), span_id.as_str()),
                    (span.trace_id.as_str(), span.span_id.as_str()),
                    "{path}: the header carries the reported client span's ids\n{span:#?}"
                );
                assert!(
                    span.parent_span_id.is_empty(),
                    "the client serves nothing: {span:#?}"
                );
            } else {
                assert_eq!(
                    String::from_utf8_lossy(got),
                    String::from_utf8_lossy(sent),
                    "{path} arrives unchanged (inject: {inject})"
                );
            }
            if *path == "/own-context" {
                // The span continues the request's own context.
                assert_eq!(span.trace_id, OWN_TRACE_ID, "{span:#?}");
                assert_eq!(span.parent_span_id, OWN_PARENT_ID, "{span:#?}");
            }
        }

        let expected: [u64; 4] = if inject { [2, 1, 1, 0] } else { [0; 4] };
        let counters = Counters(metrics)
            .wait_for_counters(&counter_names, |v| v == expected)
            .await;
        println!("wire, inject {inject}: {counter_names:?} = {counters:?}");
        assert_ids_well_formed(&receiver.spans());
        assert_eq!(agent.stop(), 0);
    }
}

/// A span as the receiver would flatten it, for the scoring test.
fn synthetic(pid: u32, kind: SpanKind, ids: [&str; 3], port: u16) -> ReceivedSpan {
    let [trace_id, span_id, parent_span_id] = ids.map(str::to_owned);
    ReceivedSpan {
        resource: [("process.pid".to_owned(), Value::from(pid))].into(),
        scope_name: String::new(),
        scope_version: String::new(),
        trace_id,
        span_id,
        parent_span_id,
        trace_state: String::new(),
        flags: 1,
        name: "GET".to_owned(),
        kind,
        start_unix_ns: 0,
        end_unix_ns: 0,
        attributes: [("server.port".to_owned(), Value::from(port))].into(),
        status_code: Default::default(),
        status_message: String::new(),
    }
}

/// The scoring itself (no root needed): N serves two requests and calls C
/// once for each, but the first call was given to the second request. The
/// second request's two calls cannot be told apart, so neither counts; the
/// roots and C's requests (children of the calls that made them) do.
#[test]
fn linkage_counts_a_call_given_to_the_wrong_request() {
    let (n, c) = (10, 20);
    let services = [
        Service {
            label: "N",
            pid: n,
            port: 1000,
            entry: true,
            calls: vec![2000],
        },
        Service {
            label: "C",
            pid: c,
            port: 2000,
            entry: false,
            calls: vec![],
        },
    ];
    let (t1, t2) = ("1".repeat(32), "2".repeat(32));
    let spans = [
        synthetic(n, SpanKind::Server, [&t1, "a1", ""], 1000),
        synthetic(n, SpanKind::Server, [&t2, "a2", ""], 1000),
        synthetic(n, SpanKind::Client, [&t2, "b1", "a2"], 2000),
        synthetic(n, SpanKind::Client, [&t2, "b2", "a2"], 2000),
        synthetic(c, SpanKind::Server, [&t2, "c1", "b1"], 2000),
        synthetic(c, SpanKind::Server, [&t2, "c2", "b2"], 2000),
    ];
    let scored = linkage(&spans, &services, 2, 3);
    assert_eq!(
        (scored.expected, scored.received, scored.linked),
        (6, 6, 4),
        "{scored:#?}"
    );
    assert_eq!(scored.complete_traces, 0, "{scored:#?}");
    assert_eq!(scored.problems.len(), 2, "{scored:#?}");

    // Linked right, the same spans score fully; a missing one is not linked.
    let mut right = spans.clone();
    right[2] = synthetic(n, SpanKind::Client, [&t1, "b1", "a1"], 2000);
    right[4] = synthetic(c, SpanKind::Server, [&t1, "c1", "b1"], 2000);
    let scored = linkage(&right, &services, 2, 3);
    assert_eq!(
        (scored.linked, scored.complete_traces),
        (6, 2),
        "{scored:#?}"
    );
    let scored = linkage(&right[..5], &services, 2, 3);
    assert_eq!(
        (scored.linked, scored.complete_traces),
        (5, 1),
        "{scored:#?}"
    );
}
