//! HTTP/2 tracking tests on bytes recorded from real clients and servers
//! (`agent/tests/fixtures/http2/`, see `capture.py` there), replayed as the
//! kernel would report them: one event per recorded send, from either
//! process's side, optionally cut by a capture limit, split into smaller
//! syscalls, or starting mid-connection.

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use compact_str::CompactString;

use crate::{
    conn::tracker::{ConnTracker, TrackerConfig},
    model::call::{Call, HttpVersion, Outcome, Side},
    probes::decode::{Direction, Role, SocketClose, SocketData},
    telemetry::{Counter, Stats},
    test_support::FinishedCalls,
};

/// One recorded send: true if the client sent it.
type Record = (bool, Vec<u8>);

fn fixture(name: &str) -> Vec<Record> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/http2")
        .join(format!("{name}.h2.bin"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut records = Vec::new();
    let mut rest = &bytes[..];
    while let [side, a, b, c, d, tail @ ..] = rest {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        records.push((*side == b'C', tail[..len].to_vec()));
        rest = &tail[len..];
    }
    records
}

/// How a recording is replayed.
#[derive(Clone, Copy, Debug)]
struct Replay {
    /// Whose syscalls the events are.
    side: Side,
    /// Bytes the kernel copies of each syscall.
    capture: usize,
    /// Records the agent missed before it looked (the role is then
    /// unknown): a connection caught mid-way.
    skip: usize,
    /// Bytes of the first record looked at that were missed too: caught
    /// mid-frame.
    skip_bytes: usize,
    /// Each record is moved by syscalls of at most this many bytes.
    split: usize,
    /// Records are TLS plaintext from the OpenSSL probes; the socket probes
    /// saw the handshake first and see each record's ciphertext too.
    tls: bool,
}

impl Replay {
    fn server() -> Self {
        Self {
            side: Side::Server,
            capture: 4096,
            skip: 0,
            skip_bytes: 0,
            split: usize::MAX,
            tls: false,
        }
    }

    fn client() -> Self {
        Self {
            side: Side::Client,
            ..Self::server()
        }
    }

    /// Exchanges and counters after replaying `records` and closing. Event
    /// times count syscalls from the start of the recording, missed ones
    /// included, so exchanges of different replays can be compared.
    fn run(self, records: &[Record]) -> (Vec<Call>, Arc<Stats>) {
        let (_, out, stats) = self.run_tracker(records);
        (out, stats)
    }

    /// [`Replay::run`], also returning the tracker.
    fn run_tracker(self, records: &[Record]) -> (ConnTracker, Vec<Call>, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let mut tracker = ConnTracker::new(TrackerConfig::default(), Arc::clone(&stats));
        let role = match (self.skip, self.side) {
            (0, Side::Server) => Role::Server,
            (0, Side::Client) => Role::Client,
            _ => Role::Unknown,
        };
        let event = |direction, ns, bytes: &[u8], tls| SocketData {
            pid: 7,
            tid: 7,
            timestamp_ns: ns,
            socket_cookie: 1,
            local: "127.0.0.1:50051".parse().expect("address"),
            remote: "127.0.0.1:40000".parse().expect("address"),
            direction,
            role,
            fd: Some(3),
            total_len: bytes.len() as u32,
            payload: Bytes::copy_from_slice(&bytes[..bytes.len().min(self.capture)]),
            trace: None,
            tls,
        };
        let mut out = Vec::new();
        if self.tls {
            for direction in [Direction::Egress, Direction::Ingress] {
                out.extend(tracker.data(&event(direction, 1, HANDSHAKE, false)));
            }
        }
        let mut ns = 0;
        for (i, (client_sent, bytes)) in records.iter().enumerate() {
            let direction = match (client_sent, self.side) {
                (true, Side::Client) | (false, Side::Server) => Direction::Egress,
                _ => Direction::Ingress,
            };
            // Leading bytes of this record the agent did not see.
            let unseen = match i.cmp(&self.skip) {
                std::cmp::Ordering::Less => bytes.len(),
                std::cmp::Ordering::Equal => self.skip_bytes.min(bytes.len()),
                std::cmp::Ordering::Greater => 0,
            };
            let mut end = 0;
            for chunk in bytes.chunks(self.split) {
                ns += 1000;
                let start = end;
                end += chunk.len();
                if end <= unseen {
                    continue;
                }
                let chunk = &chunk[unseen.saturating_sub(start)..];
                out.extend(tracker.data(&event(direction, ns, chunk, self.tls)));
                if self.tls {
                    let ciphertext = [&HANDSHAKE[..5], chunk].concat();
                    out.extend(tracker.data(&event(direction, ns, &ciphertext, false)));
                }
            }
        }
        out.extend(tracker.close(&SocketClose {
            timestamp_ns: ns + 1000,
            socket_cookie: 1,
        }));
        (tracker, out, stats)
    }
}

#[test]
fn asks_once_for_full_capture_of_each_http2_connection() {
    for name in ["curl_get", "grpcio_calls"] {
        let (mut tracker, _, _) = Replay::server().run_tracker(&fixture(name));
        assert_eq!(tracker.take_capture_all(), vec![1], "{name}");
        assert!(tracker.take_capture_all().is_empty(), "{name}");
    }
}

/// A TLS record header and the start of a ClientHello: what the socket
/// probes capture of a TLS connection.
const HANDSHAKE: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x1b";

/// What an exchange says, for comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Brief {
    start_ns: u64,
    method: CompactString,
    target: CompactString,
    outcome: Outcome,
    rpc_method: Option<String>,
    grpc_status: Option<u32>,
}

fn brief(exchanges: &[Call]) -> Vec<Brief> {
    let mut briefs: Vec<Brief> = exchanges
        .iter()
        .map(|x| Brief {
            start_ns: x.start_ns,
            method: x.request().method.clone(),
            target: x.request().target.clone(),
            outcome: x.outcome.clone(),
            rpc_method: x
                .detail
                .rpc()
                .and_then(|r| r.method.as_ref())
                .map(|m| m.full_name()),
            grpc_status: x.detail.rpc().and_then(|r| r.status_code),
        })
        .collect();
    briefs.sort_by_key(|b| b.start_ns);
    briefs
}

/// `(rpc method, grpc status)` of each exchange, in request order.
fn calls(exchanges: &[Call]) -> Vec<(String, u32)> {
    brief(exchanges)
        .into_iter()
        .map(|b| match (&b.rpc_method, b.grpc_status) {
            (Some(method), Some(status)) => (method.clone(), status),
            _ => panic!("not a gRPC call with a status: {b:?}"),
        })
        .collect()
}

const UNARY: &str = "sonde.test.Echo/Unary";

/// What `grpc_client.{py,js} suite` does.
fn suite() -> Vec<(String, u32)> {
    [
        (UNARY, 0),
        (UNARY, 5),
        (UNARY, 4),
        ("sonde.test.Echo/ServerStream", 0),
        ("sonde.test.Echo/ClientStream", 0),
    ]
    .map(|(method, status)| (method.to_owned(), status))
    .to_vec()
}

#[test]
fn curl_requests_from_both_sides() {
    for replay in [Replay::server(), Replay::client()] {
        let (out, stats) = replay.run(&fixture("curl_get"));
        let [get] = &out[..] else { panic!("{out:#?}") };
        assert_eq!(get.conn.side, replay.side);
        assert_eq!(
            (get.request().method.as_str(), get.request().target.as_str()),
            ("GET", "/status/200")
        );
        assert_eq!(get.outcome, Outcome::Response { status: 200 });
        assert_eq!(get.request().version, HttpVersion::Http2);
        assert!(
            get.request()
                .host
                .as_deref()
                .is_some_and(|h| h.starts_with("127.0.0.1:"))
        );
        assert!(
            get.request()
                .user_agent
                .as_deref()
                .is_some_and(|u| u.starts_with("curl/"))
        );
        assert_eq!(
            get.request().traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(get.detail.rpc(), None);
        assert!(get.start_ns < get.end_ns);
        assert!(stats.nonzero().is_empty(), "{:?}", stats.nonzero());

        let (out, _) = replay.run(&fixture("curl_post"));
        let [post] = &out[..] else { panic!("{out:#?}") };
        assert_eq!(
            (
                post.request().method.as_str(),
                post.request().target.as_str()
            ),
            ("POST", "/status/404?q=1")
        );
        assert_eq!(post.outcome, Outcome::Response { status: 404 });
    }
}

#[test]
fn grpc_calls_of_python_and_node_from_both_sides() {
    for (name, user_agent) in [
        ("grpcio_calls", "grpc-python"),
        ("grpc_js_calls", "grpc-node-js"),
    ] {
        for replay in [Replay::server(), Replay::client()] {
            let (out, stats) = replay.run(&fixture(name));
            assert_eq!(calls(&out), suite(), "{name} {replay:?}");
            assert!(stats.nonzero().is_empty(), "{name}: {:?}", stats.nonzero());
            for exchange in &out {
                assert_eq!(exchange.outcome, Outcome::Response { status: 200 });
                assert_eq!(exchange.request().method, "POST");
                assert!(
                    exchange
                        .request()
                        .user_agent
                        .as_deref()
                        .is_some_and(|u| u.starts_with(user_agent)),
                    "{exchange:?}"
                );
            }
            let first = brief(&out)[0].start_ns;
            let traced = out
                .iter()
                .find(|x| x.start_ns == first)
                .expect("first call");
            assert_eq!(
                traced.request().traceparent.as_deref(),
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            );
        }
    }
}

/// HTTP/2 and gRPC over TLS: the plaintext reads exactly as the same bytes
/// in the clear would, although the socket probes saw the handshake first
/// and the ciphertext of every record.
#[test]
fn tls_plaintext_reads_like_cleartext() {
    for name in ["curl_get", "grpcio_calls", "grpc_js_calls"] {
        let records = fixture(name);
        for replay in [Replay::server(), Replay::client()] {
            let (clear, _) = replay.run(&records);
            let (out, stats) = Replay {
                tls: true,
                ..replay
            }
            .run(&records);
            assert_eq!(brief(&out), brief(&clear), "{name} {replay:?}");
            assert!(out.iter().all(|x| x.conn.tls), "{name}: {out:#?}");
            assert_eq!(
                stats.nonzero(),
                [
                    (Counter::ParseFailedHttp1, 1),
                    (Counter::TlsCiphertextIgnored, records.len() as u64)
                ],
                "{name} {replay:?}: the handshake was not HTTP, every record's ciphertext ignored"
            );
        }
    }
}

#[test]
fn many_concurrent_streams_on_one_connection() {
    for replay in [Replay::server(), Replay::client()] {
        let (out, stats) = replay.run(&fixture("grpcio_concurrent"));
        assert_eq!(out.len(), 50);
        assert!(
            calls(&out)
                .iter()
                .all(|(method, status)| method == UNARY && *status == 0)
        );
        // The client wrote all 50 requests at once; responses came one by one.
        let starts: std::collections::BTreeSet<u64> = out.iter().map(|x| x.start_ns).collect();
        assert_eq!(starts.len(), 1, "one syscall carried every request");
        assert!(stats.nonzero().is_empty(), "{:?}", stats.nonzero());
    }
}

#[test]
fn frames_split_across_syscalls() {
    let records = fixture("grpcio_calls");
    // Clients write the preface whole: the first syscall has at least 5 bytes.
    for split in [5, 9, 10, 64] {
        let (out, stats) = Replay {
            split,
            ..Replay::server()
        }
        .run(&records);
        assert_eq!(calls(&out), suite(), "split {split}");
        assert!(
            stats.nonzero().is_empty(),
            "split {split}: {:?}",
            stats.nonzero()
        );
    }
}

/// The property behind every lossy case: whatever was missed (capture
/// limits, a late start, even mid-frame), each exchange the tracker emits
/// says what the lossless replay says, or leaves a field unknown. Never a
/// wrong method, path or status.
#[test]
fn lost_bytes_never_give_wrong_values() {
    let mut emitted = 0;
    let mut lossy_runs = 0;
    for name in [
        "grpcio_calls",
        "grpc_js_calls",
        "grpcio_concurrent",
        "curl_post",
    ] {
        let records = fixture(name);
        for base in [Replay::server(), Replay::client()] {
            for split in [usize::MAX, 13] {
                let truth = brief(&Replay { split, ..base }.run(&records).0);
                for (capture, skip, skip_bytes) in [
                    (16, 0, 0),
                    (40, 0, 0),
                    (100, 0, 0),
                    (256, 0, 0),
                    (4096, 2, 0),
                    (4096, 4, 0),
                    (4096, 6, 0),
                    (4096, 3, 11),
                    (4096, 6, 20),
                    (64, 5, 3),
                ] {
                    let replay = Replay {
                        capture,
                        skip,
                        skip_bytes,
                        split,
                        ..base
                    };
                    let (out, stats) = replay.run(&records);
                    if !stats.nonzero().is_empty() || out.len() < truth.len() {
                        lossy_runs += 1;
                    }
                    for got in brief(&out) {
                        emitted += 1;
                        let want = truth
                            .iter()
                            .find(|t| t.start_ns == got.start_ns && t.method == got.method)
                            .unwrap_or_else(|| {
                                panic!("{name} {replay:?}: {got:?} not in {truth:#?}")
                            });
                        let fits = |ok: bool| {
                            assert!(ok, "{name} {replay:?}: got {got:#?}, want {want:#?}")
                        };
                        fits(got.target == want.target || got.target.is_empty());
                        fits(got.rpc_method == want.rpc_method || got.rpc_method.is_none());
                        fits(got.grpc_status == want.grpc_status || got.grpc_status.is_none());
                        fits(got.outcome == want.outcome);
                    }
                }
            }
        }
    }
    assert!(
        emitted > 100 && lossy_runs > 50,
        "{emitted} exchanges, {lossy_runs} lossy runs"
    );
}

#[test]
fn capture_limits_are_counted() {
    // 256 bytes of the client's 2765-byte write of 50 requests: the first
    // request's header block is whole, the other 49 are not seen.
    let (out, stats) = Replay {
        capture: 256,
        ..Replay::server()
    }
    .run(&fixture("grpcio_concurrent"));
    assert_eq!(calls(&out), [(UNARY.to_owned(), 0)]);
    assert!(stats.get(Counter::Http2FramingLost) > 0);
    assert!(stats.get(Counter::Http2TableDegraded) > 0);
    // A header block cut by the capture still gives its first fields
    // (grpcio sends :path, :authority, :method first).
    let (out, stats) = Replay {
        capture: 80,
        ..Replay::server()
    }
    .run(&fixture("grpcio_calls"));
    let first = &brief(&out)[0];
    assert_eq!(
        (first.method.as_str(), first.target.as_str()),
        ("POST", "/sonde.test.Echo/Unary")
    );
    assert!(stats.get(Counter::Http2TableDegraded) > 0);
}

#[test]
fn connections_caught_mid_way() {
    // After the first calls of grpcio: the Unary path was indexed by then,
    // so it stays unknown; the streaming calls' paths were new literals.
    let (out, stats) = Replay {
        skip: 6,
        ..Replay::server()
    }
    .run(&fixture("grpcio_calls"));
    let got: Vec<_> = brief(&out)
        .into_iter()
        .map(|b| (b.method, b.target, b.outcome))
        .collect();
    let ok = Outcome::Response { status: 200 };
    assert_eq!(
        got,
        [
            ("POST".into(), CompactString::default(), ok.clone()),
            ("POST".into(), CompactString::default(), ok.clone()),
            (
                "POST".into(),
                "/sonde.test.Echo/ServerStream".into(),
                ok.clone()
            ),
            ("POST".into(), "/sonde.test.Echo/ClientStream".into(), ok),
        ]
    );
    assert!(
        out.iter().all(|x| x.conn.side == Side::Server),
        "side learnt from the requests"
    );
    // The error statuses were new literals too.
    let statuses: Vec<_> = brief(&out).iter().map(|b| b.grpc_status).collect();
    assert_eq!(statuses, [Some(5), Some(4), None, None]);
    assert!(stats.nonzero().is_empty(), "{:?}", stats.nonzero());
    // Caught mid-frame, from the client's side: frames are found again at
    // the next syscall.
    let (out, _) = Replay {
        skip: 3,
        skip_bytes: 20,
        ..Replay::client()
    }
    .run(&fixture("grpc_js_calls"));
    assert!(!out.is_empty());
    assert!(out.iter().all(|x| x.conn.side == Side::Client));
}

/// Hand-built traffic for what the recordings do not show.
mod synthetic {
    use super::*;
    use crate::protocols::http2::parse::PREFACE;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// A client's first bytes: the preface and an empty SETTINGS frame.
    fn client_hello() -> Vec<u8> {
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        hello
    }

    /// A header block of literals, the first ones indexed (inserted into
    /// the table) when `indexed` says so.
    fn block(fields: &[(&str, &str)], indexed: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (i, (name, value)) in fields.iter().enumerate() {
            bytes.push(if i < indexed { 0x40 } else { 0x00 });
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(value.len() as u8);
            bytes.extend_from_slice(value.as_bytes());
        }
        bytes
    }

    fn grpc_request(path: &str, timeout: Option<&str>) -> Vec<u8> {
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            ("content-type", "application/grpc"),
        ];
        if let Some(timeout) = timeout {
            fields.push(("grpc-timeout", timeout));
        }
        block(&fields, 0)
    }

    /// One syscall of a server process on connection 1.
    fn data(client_sent: bool, bytes: &[u8], ms: u64, role: Role) -> SocketData {
        SocketData {
            pid: 7,
            tid: 7,
            timestamp_ns: ms * 1_000_000,
            socket_cookie: 1,
            local: "127.0.0.1:50051".parse().expect("address"),
            remote: "127.0.0.1:40000".parse().expect("address"),
            direction: if client_sent {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            role,
            fd: Some(3),
            total_len: bytes.len() as u32,
            payload: Bytes::copy_from_slice(bytes),
            trace: None,
            tls: false,
        }
    }

    /// Events of a server process: `(client sent, bytes, at ms)`.
    fn serve(events: &[(bool, Vec<u8>, u64)], role: Role) -> (Vec<Call>, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let mut tracker = ConnTracker::new(TrackerConfig::default(), Arc::clone(&stats));
        let mut out = Vec::new();
        for (client_sent, bytes, ms) in events {
            out.extend(tracker.data(&data(*client_sent, bytes, *ms, role)));
        }
        (out, stats)
    }

    /// Ten thousand calls opened on one connection and never answered,
    /// through a bound of 16 open streams: each one past the bound
    /// abandons the oldest (counted), and closing the connection ends no
    /// more than the bound. Every request also inserts a new header into
    /// the peer's HPACK table, which stays within its own byte bound
    /// (see `hpack::tests::table_churn_stays_within_the_byte_bound`).
    #[test]
    fn stream_churn_stays_within_the_bound() {
        const MAX: usize = 16;
        const CHURN: u32 = 10_000;
        let stats = Arc::new(Stats::default());
        let config = TrackerConfig {
            max_streams_per_connection: MAX,
            ..TrackerConfig::default()
        };
        let mut tracker = ConnTracker::new(config, Arc::clone(&stats));
        let hello = client_hello();
        assert!(
            tracker
                .data(&data(true, &hello, 0, Role::Server))
                .is_empty()
        );
        let mut abandoned = 0;
        for i in 0..CHURN {
            let request_id = format!("{i}");
            let mut fields = grpc_request("/shop.Cart/Add", None);
            fields.extend(block(&[("x-request-id", &request_id)], 1));
            let headers = frame(0x1, 0x4, 2 * i + 1, &fields);
            let out = tracker.data(&data(true, &headers, u64::from(i), Role::Server));
            assert!(
                out.iter().all(|x| x.outcome == Outcome::Abandoned),
                "{out:?}"
            );
            abandoned += out.len();
        }
        let closed = tracker.close(&SocketClose {
            timestamp_ns: u64::from(CHURN) * 1_000_000,
            socket_cookie: 1,
        });
        assert_eq!(abandoned, CHURN as usize - MAX);
        assert_eq!(closed.len(), MAX, "only the bound was still open");
        assert_eq!(
            stats.get(Counter::ExchangesAbandoned),
            u64::from(CHURN) - MAX as u64
        );
        assert_eq!(tracker.connections(), 0);
    }

    #[test]
    fn resets_and_refused_streams_end_calls() {
        let hello = client_hello();
        let rst_cancel = |stream| frame(0x3, 0, stream, &[0, 0, 0, 8]);
        let events = [
            (true, hello, 0),
            // A call with a 100 ms deadline the client resets at 150 ms,
            // one without a deadline it resets at once.
            (
                true,
                frame(0x1, 0x4, 1, &grpc_request("/a.B/Slow", Some("100m"))),
                1,
            ),
            (
                true,
                frame(0x1, 0x4, 3, &grpc_request("/a.B/Fast", None)),
                2,
            ),
            (true, rst_cancel(3), 3),
            (true, rst_cancel(1), 151),
            // The server refuses stream 5 with GOAWAY (last stream 3).
            (
                true,
                frame(0x1, 0x4, 5, &grpc_request("/a.B/Late", None)),
                152,
            ),
            (false, frame(0x7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]), 153),
        ];
        let (out, stats) = serve(&events, Role::Server);
        let got: Vec<_> = brief(&out)
            .into_iter()
            .map(|b| (b.rpc_method, b.outcome, b.grpc_status))
            .collect();
        let cancel = Outcome::Reset { code: Some(8) };
        assert_eq!(
            got,
            [
                (Some("a.B/Slow".into()), cancel.clone(), Some(4)),
                (Some("a.B/Fast".into()), cancel, Some(1)),
                (
                    Some("a.B/Late".into()),
                    Outcome::Reset { code: Some(7) },
                    Some(14)
                ),
            ]
        );
        assert!(stats.nonzero().is_empty(), "{:?}", stats.nonzero());
    }

    #[test]
    fn skipped_stream_ids_degrade_the_table() {
        let hello = client_hello();
        // Stream 1 inserts its path; stream 3 (with another path inserted)
        // is missed; stream 5 refers to index 62: "/a.B/Two" at the peer,
        // "/a.B/One" in a table that did not see stream 3.
        let events = [
            (true, hello, 0),
            (
                true,
                frame(
                    0x1,
                    0x5,
                    1,
                    &block(&[(":path", "/a.B/One"), (":method", "GET")], 1),
                ),
                1,
            ),
            (false, frame(0x1, 0x5, 1, &[0x88]), 2),
            (true, frame(0x1, 0x5, 5, &[0x82, 0xbe]), 3),
            (false, frame(0x1, 0x5, 5, &[0x88]), 4),
        ];
        let (out, stats) = serve(&events, Role::Server);
        let targets: Vec<_> = brief(&out).into_iter().map(|b| b.target).collect();
        assert_eq!(targets, ["/a.B/One", ""], "unknown, not /a.B/One");
        assert_eq!(stats.get(Counter::Http2TableDegraded), 1);
    }

    #[test]
    fn a_preface_decides_an_unknown_role() {
        let hello = client_hello();
        let events = [
            (true, hello, 0),
            (
                true,
                frame(
                    0x1,
                    0x5,
                    1,
                    &block(&[(":method", "GET"), (":path", "/x")], 0),
                ),
                1,
            ),
            (false, frame(0x1, 0x5, 1, &[0x8d]), 2),
        ];
        let (out, _) = serve(&events, Role::Unknown);
        let [exchange] = &out[..] else {
            panic!("{out:#?}")
        };
        assert_eq!(exchange.conn.side, Side::Server);
        assert_eq!(exchange.outcome, Outcome::Response { status: 404 });
        assert_eq!(exchange.detail.rpc(), None);
    }
}
