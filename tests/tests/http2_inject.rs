//! End-to-end: `traceparent` injected by the kernel into outgoing HTTP/2
//! (h2c) requests of unmodified programs, with the real agent and kernel
//! programs and a real OTLP receiver. Byte level (an hyper-h2 client
//! against a raw TCP server, decoded with a strict HPACK decoder), and
//! through real gRPC peers that validate strictly. Needs root; see
//! `sonde_tests::agent::skip_reason`.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sonde_tests::{
    OtlpReceiver,
    agent::Agent,
    apps::{Held, Server, app_path},
    chain::Interpreters,
    prometheus::Counters,
    require_e2e, spans_of,
};

const WAIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_millis(1500);

/// The request streams of `h2_inject_check.py`'s first connection that
/// get the field when injection is on: their HEADERS frames are whole in
/// one send, not continued, not trailers. Stream 13's frame header is cut
/// over three sends and stream 15's block goes on in a CONTINUATION
/// frame: both go by unread, so stream 17 after them is left alone too (an
/// unread block may have put an application's own `traceparent` in the
/// peer's table). On the second connection the application sends its own
/// `traceparent`: nothing is added there.
const INJECTED: [u32; 6] = [1, 3, 5, 7, 9, 11];
const FIRST_STREAMS: [u32; 9] = [1, 3, 5, 7, 9, 11, 13, 15, 17];
const OWN_CONTEXT_STREAMS: [u32; 3] = [1, 3, 5];

/// Runs `python script args...`, which waits for a line on stdin before
/// it connects, once the agent selected it; returns its pid and output
/// lines after checking it exited with success.
async fn run_selected(
    python: &str,
    script: &str,
    args: &[&str],
    agent: &Agent,
) -> (u32, Vec<String>) {
    let mut child = Command::new(python)
        .arg(app_path(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {script}: {e}"));
    let pid = child.id();
    agent.wait_instrumented(&[pid], WAIT);
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"go\n")
        .expect("starting the client");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("waiting for the client")
        .expect("the client's output");
    assert!(output.status.success(), "{script} {args:?}: {output:?}");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (pid, lines)
}

/// Runs `h2_inject_check.py`; returns its pid and its per-stream lines
/// (`stream N injected VALUE` or `stream N unchanged`). The script itself
/// fails on any byte that differs from what the client sent other than one
/// appended field per request.
async fn run_check(python: &str, agent: &Agent) -> (u32, Vec<String>) {
    let (pid, lines) = run_selected(python, "h2_inject_check.py", &[], agent).await;
    assert_eq!(lines.last().map(String::as_str), Some("ok"), "{lines:?}");
    (pid, lines[..lines.len() - 1].to_vec())
}

/// Byte level: each request's HEADERS frame that can be rewritten gets one
/// `traceparent` field (literal, not indexed, new name) at the end of its
/// header block, its length grown by the field's; a strict HPACK decoder
/// reading the received blocks in order gets the client's fields plus
/// that one (so the dynamic table stayed in step); every other byte is the
/// client's. The field carries the ids of the client span the agent
/// reports. A frame header cut over sends, trailers and a block continued
/// in CONTINUATION are left alone and counted, and so is a connection on
/// which the application sends its own `traceparent` (never a second
/// one). With `--no-inject` nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_headers_decode_strictly_and_the_rest_is_byte_exact() {
    require_e2e!();
    let interpreters = Interpreters::new("h2wire");
    let receiver = OtlpReceiver::start().await;
    let counter_names = [
        "sonde_traceparent_h2_injected",
        "sonde_traceparent_h2_skipped_continuation",
        "sonde_traceparent_h2_skipped_split",
        "sonde_traceparent_h2_skipped_own_context",
        "sonde_traceparent_h2_connections_lost",
        "sonde_traceparent_h2_failed",
        "sonde_traceparent_h2_unavailable",
    ];
    for inject in [true, false] {
        let client = interpreters.client_python();
        let mut args = vec!["--exe", &client];
        if !inject {
            args.push("--no-inject");
        }
        let (agent, metrics) =
            Agent::start_with_metrics(&args, &receiver.http_endpoint(), "http/protobuf");
        let (client, lines) = run_check(&interpreters.client_python(), &agent).await;
        println!("h2 wire, inject {inject}: {lines:#?}");
        let mut injected = Vec::new();
        let mut streams: Vec<(String, u32)> = Vec::new();
        let mut connection = String::new();
        for line in &lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["connection", name] => connection = name.to_owned(),
                ["stream", stream, what, ..] => {
                    let stream: u32 = stream.parse().expect("stream id");
                    let expect_injected =
                        inject && connection == "first_connection" && INJECTED.contains(&stream);
                    assert_eq!(
                        what,
                        if expect_injected {
                            "injected"
                        } else {
                            "unchanged"
                        },
                        "{connection} stream {stream} (inject: {inject}): {lines:?}"
                    );
                    if expect_injected {
                        injected.push(words[3].to_owned());
                    }
                    streams.push((connection.clone(), stream));
                }
                _ => panic!("{line}"),
            }
        }
        let expected_streams: Vec<(String, u32)> = FIRST_STREAMS
            .iter()
            .map(|&s| ("first_connection".to_owned(), s))
            .chain(
                OWN_CONTEXT_STREAMS
                    .iter()
                    .map(|&s| ("own_context_connection".to_owned(), s)),
            )
            .collect();
        assert_eq!(streams, expected_streams, "one line per request");

        // The server never answers: the client spans end when the
        // connection closes, and carry the ids that went out.
        let spans = receiver
            .settle(WAIT, SETTLE, |spans| {
                spans_of(spans, client, SpanKind::Client).len() >= expected_streams.len()
            })
            .await;
        let made = spans_of(&spans, client, SpanKind::Client);
        for value in &injected {
            let ids: Vec<&str> = value.split('-').collect();
            assert!(
                made.iter()
                    .any(|s| s.trace_id == ids[1] && s.span_id == ids[2]),
                "a client span carries {value}: {made:#?}"
            );
        }
        let expected: [u64; 7] = if inject {
            [6, 1, 1, 4, 0, 0, 0]
        } else {
            [0; 7]
        };
        let counters = Counters(metrics)
            .wait_for_counters(&counter_names, |v| v == expected)
            .await;
        println!("h2 wire, inject {inject}: {counter_names:?} = {counters:?}");
        assert_eq!(agent.stop(), 0);
    }
}

/// Concurrent callers on one channel: each its own stream.
const GRPC_CALLS: usize = 8;
/// Rounds of 8 concurrent calls `h2_table_client.py` makes.
const TABLE_ROUNDS: usize = 5;

/// A grpcio client making [`GRPC_CALLS`] concurrent unary calls on one
/// channel to a grpcio server (plaintext h2c; both validate HTTP/2 and
/// HPACK strictly), with injection on and off. On: every call succeeds and
/// each server span joins its client span's trace with the client span as
/// parent. Off: the calls succeed and the server spans start traces of
/// their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_server_spans_are_children_of_the_client_spans() {
    require_e2e!();
    for inject in [true, false] {
        let count = GRPC_CALLS.to_string();
        let client = ["grpc_client.py", "PORT", "concurrent", &count, "--wait"];
        calls_joined(
            "h2grpc",
            &client,
            &format!("concurrent {GRPC_CALLS}"),
            GRPC_CALLS,
            inject,
        )
        .await;
    }
}

/// The grpcio server's HPACK decoder with its dynamic table in heavy use:
/// a client that indexes every field sends 40 calls with 480 fields seen
/// once and 10 shared ones; with a field added to every request, the
/// server still decodes every block (no COMPRESSION_ERROR, no reset
/// stream), answers every call, and each server span is its client
/// span's child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_hpack_table_stays_in_step() {
    require_e2e!();
    let rounds = TABLE_ROUNDS.to_string();
    let calls = TABLE_ROUNDS * 8;
    let client = ["h2_table_client.py", "PORT", &rounds, "--wait"];
    calls_joined("h2table", &client, &format!("ok {calls}"), calls, true).await;
}

/// curl processes, one request each.
const CURLS: usize = 4;

/// curl (libcurl over nghttp2) as the client whose requests get the field,
/// and a Node.js h2c server (core `http2`, nghttp2 too: it checks frames
/// and HPACK strictly and resets or closes on any error): every response
/// arrives (curl fails on a reset stream or GOAWAY), one field is injected
/// per request, none fails, and each server span is the child of its curl
/// span. One request per curl: Debian 12's curl 7.88 fails by itself to
/// reuse an h2c connection ("Error in the HTTP2 framing layer" on the
/// second request, agent off, with this server and with hypercorn); HPACK
/// dynamic table reuse is `a_busy_hpack_table_stays_in_step`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_requests_to_a_strict_node_server_are_joined() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let server = Server::node_h2c();
    let curls: Vec<Held> = (0..CURLS)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}/status/200?request={i}", server.port);
            Held::new(
                "curl",
                &[
                    "-sS",
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{http_version}",
                    &url,
                ],
            )
        })
        .collect();
    let pids: Vec<u32> = curls.iter().map(Held::pid).collect();
    let selected: Vec<String> = pids.iter().map(u32::to_string).collect();
    let (agent, metrics) = Agent::start_with_metrics(
        &[
            "--port",
            &server.port.to_string(),
            "--pid",
            &selected.join(","),
        ],
        &receiver.http_endpoint(),
        "http/protobuf",
    );
    agent.wait_instrumented(&[server.pid()], WAIT);
    for (curl, pid) in curls.into_iter().zip(&pids) {
        assert_eq!(curl.run(), "200 2", "curl {pid}: answered over HTTP/2");
        let (served, made) = receiver
            .settle_pair((server.pid(), *pid), 1, WAIT, SETTLE)
            .await;
        let [call] = &made[..] else {
            panic!("one client span for curl {pid}: {made:#?}");
        };
        assert!(
            served
                .iter()
                .any(|s| s.trace_id == call.trace_id && s.parent_span_id == call.span_id),
            "the server span of curl {pid}'s request is its child: {call:#?} {served:#?}"
        );
    }
    let counters = Counters(metrics)
        .wait_for_counters(
            &[
                "sonde_traceparent_h2_injected",
                "sonde_traceparent_h2_failed",
            ],
            |v| v[0] >= CURLS as u64,
        )
        .await;
    assert_eq!(counters, [CURLS as u64, 0]);
    assert_eq!(agent.stop(), 0);
}

/// Runs `client` (a script and its arguments, `PORT` standing for the
/// server's) against a grpcio server under an agent, injecting or not;
/// checks it printed `expect` and that there are `calls` successful
/// unary server and client spans, each server span the child of a client
/// span when injecting, a root of another trace when not.
async fn calls_joined(test: &str, client: &[&str], expect: &str, calls: usize, inject: bool) {
    let interpreters = Interpreters::new(test);
    let receiver = OtlpReceiver::start().await;
    let client_python = interpreters.client_python();
    let server = Server::start(
        &interpreters.python(),
        &[app_path("grpc_server.py").to_str().expect("utf-8 path")],
    );
    let port = server.port.to_string();
    let mut args = vec!["--exe", &client_python, "--port", &port];
    if !inject {
        args.push("--no-inject");
    }
    let agent = Agent::start(&args, &receiver.http_endpoint(), "http/protobuf");
    agent.wait_instrumented(&[server.pid()], WAIT);
    let client_args: Vec<&str> = client[1..]
        .iter()
        .map(|&a| if a == "PORT" { port.as_str() } else { a })
        .collect();
    let (client_pid, output) = run_selected(&client_python, client[0], &client_args, &agent).await;
    assert_eq!(output, [expect], "every call answered, no connection error");
    let (served, made) = receiver
        .settle_pair((server.pid(), client_pid), calls, WAIT, SETTLE)
        .await;
    assert_eq!((served.len(), made.len()), (calls, calls));
    for span in served.iter().chain(&made) {
        assert_eq!(span.name, "sonde.test.Echo/Unary", "{span:#?}");
        assert_eq!(span.str_attr("rpc.response.status_code"), "OK");
    }
    for call in &served {
        if inject {
            let parent = made
                .iter()
                .find(|c| c.trace_id == call.trace_id && c.span_id == call.parent_span_id)
                .unwrap_or_else(|| {
                    panic!("the server span's parent is a client span: {call:#?} {made:#?}")
                });
            assert!(
                parent.parent_span_id.is_empty(),
                "the client call is a root"
            );
        } else {
            assert!(call.parent_span_id.is_empty(), "{call:#?}");
            assert!(
                made.iter().all(|c| c.trace_id != call.trace_id),
                "separate traces without injection"
            );
        }
    }
    assert_eq!(agent.stop(), 0);
}
