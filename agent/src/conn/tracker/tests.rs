//! Tracker tests: sequences of synthetic socket events, one per syscall.
//! Event `n` of a [`Wire`] (counting from 1) happens at `n * 1000` ns on
//! thread `n`, so times and threads in the expectations name events.

use std::net::SocketAddr;

use bytes::Bytes;

use super::*;
use crate::{
    model::call::{HttpVersion, KernelTrace},
    probes::decode::Direction,
    protocols::{Stamp, request_direction},
    test_support::FinishedCalls,
};

const PID: u32 = 42;

/// A tracker and a clock; events go to `cookie`, whose kernel role is `role`.
struct Wire {
    tracker: ConnTracker,
    stats: Arc<Stats>,
    cookie: u64,
    role: Role,
    pid: u32,
    events: u64,
    /// Kernel trace context for the next event.
    next_trace: Option<KernelTrace>,
    /// Events are TLS plaintext from the OpenSSL probes.
    tls: bool,
}

impl Wire {
    fn new(role: Role) -> Self {
        Self::with_config(role, TrackerConfig::default())
    }

    fn with_config(role: Role, config: TrackerConfig) -> Self {
        let stats = Arc::new(Stats::default());
        Self {
            tracker: ConnTracker::new(config, Arc::clone(&stats)),
            stats,
            cookie: 1,
            role,
            pid: PID,
            events: 0,
            next_trace: None,
            tls: false,
        }
    }

    fn next_stamp(&mut self) -> Stamp {
        self.events += 1;
        Stamp {
            ns: self.events * 1000,
            tid: u32::try_from(self.events).expect("few events"),
            trace: None,
        }
    }

    /// One syscall that moved `total_len` bytes, of which `payload` was captured.
    fn event(&mut self, direction: Direction, payload: &[u8], total_len: usize) -> Vec<Call> {
        let at = self.next_stamp();
        let local: SocketAddr = "10.0.0.1:8080".parse().expect("address");
        let remote: SocketAddr = "10.0.0.2:50000".parse().expect("address");
        self.tracker.data(&SocketData {
            pid: self.pid,
            tid: at.tid,
            timestamp_ns: at.ns,
            socket_cookie: self.cookie,
            local,
            remote,
            direction,
            role: self.role,
            fd: Some(3),
            total_len: u32::try_from(total_len).expect("small"),
            payload: Bytes::copy_from_slice(payload),
            trace: self.next_trace.take(),
            tls: self.tls,
        })
    }

    fn recv(&mut self, bytes: &[u8]) -> Vec<Call> {
        self.event(Direction::Ingress, bytes, bytes.len())
    }

    fn send(&mut self, bytes: &[u8]) -> Vec<Call> {
        self.event(Direction::Egress, bytes, bytes.len())
    }

    /// A syscall that moved `total_len` bytes but only `captured` was copied.
    fn recv_truncated(&mut self, captured: &[u8], total_len: usize) -> Vec<Call> {
        self.event(Direction::Ingress, captured, total_len)
    }

    fn send_truncated(&mut self, captured: &[u8], total_len: usize) -> Vec<Call> {
        self.event(Direction::Egress, captured, total_len)
    }

    fn close(&mut self) -> Vec<Call> {
        let at = self.next_stamp();
        self.tracker.close(&SocketClose {
            timestamp_ns: at.ns,
            socket_cookie: self.cookie,
        })
    }

    fn count(&self, counter: Counter) -> u64 {
        self.stats.get(counter)
    }
}

fn ok(status: u16) -> Outcome {
    Outcome::Response { status }
}

/// `(target, outcome, start_ns, end_ns)` of each exchange.
fn brief(exchanges: &[Call]) -> Vec<(&str, Outcome, u64, u64)> {
    exchanges
        .iter()
        .map(|x| {
            (
                x.request().target.as_str(),
                x.outcome.clone(),
                x.start_ns,
                x.end_ns,
            )
        })
        .collect()
}

/// Asserts `exchanges` is exactly one, and returns it.
fn only(exchanges: Vec<Call>) -> Call {
    let [exchange] = <[Call; 1]>::try_from(exchanges).unwrap_or_else(|v| panic!("{v:#?}"));
    exchange
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: svc\r\nUser-Agent: test\r\n\r\n";
const OK_2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn keep_alive_carries_many_exchanges() {
    let mut wire = Wire::new(Role::Server);
    let mut out = Vec::new();
    for i in 0..3u64 {
        assert!(wire.recv(GET).is_empty());
        let exchange = only(wire.send(OK_2));
        assert_eq!(
            (exchange.start_ns, exchange.end_ns),
            (2000 * i + 1000, 2000 * i + 2000)
        );
        assert_eq!(
            (exchange.request_tid, exchange.response_tid),
            (2 * i as u32 + 1, Some(2 * i as u32 + 2))
        );
        out.push(exchange);
    }
    let first = &out[0];
    assert_eq!(first.conn.side, Side::Server);
    assert_eq!((first.conn.pid, first.conn.socket_cookie), (PID, 1));
    assert_eq!(first.request().method, "GET");
    assert_eq!(first.request().host.as_deref(), Some("svc"));
    assert_eq!(first.request().user_agent.as_deref(), Some("test"));
    assert_eq!(first.request().version, HttpVersion::Http11);
    assert_eq!(first.outcome, ok(200));
    assert!(wire.close().is_empty());
    assert_eq!(wire.tracker.connections(), 0);
    assert!(
        wire.tracker.take_capture_all().is_empty(),
        "HTTP/1 keeps the default capture"
    );
    assert!(
        wire.stats.nonzero().is_empty(),
        "{:?}",
        wire.stats.nonzero()
    );
}

#[test]
fn client_side_sends_requests() {
    let mut wire = Wire::new(Role::Client);
    assert!(wire.send(GET).is_empty());
    let exchange = only(wire.recv(OK_2));
    assert_eq!(exchange.conn.side, Side::Client);
    assert_eq!(
        (exchange.start_ns, exchange.end_ns, exchange.outcome),
        (1000, 2000, ok(200))
    );
}

#[test]
fn unknown_role_is_inferred_from_the_first_message() {
    // (first event direction, its bytes, side expected)
    let cases: [(Direction, &[u8], Side); 4] = [
        (Direction::Ingress, GET, Side::Server),
        (Direction::Egress, GET, Side::Client),
        (Direction::Ingress, OK_2, Side::Client),
        (Direction::Egress, OK_2, Side::Server),
    ];
    for (direction, first, side) in cases {
        let mut wire = Wire::new(Role::Unknown);
        // A response first was for a request sent before the agent looked.
        assert!(wire.event(direction, first, first.len()).is_empty());
        let request_direction = request_direction(side);
        let response_direction = if request_direction == Direction::Ingress {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        wire.event(request_direction, GET, GET.len());
        let exchange = only(wire.event(response_direction, OK_2, OK_2.len()));
        assert_eq!(
            exchange.conn.side,
            side,
            "{direction:?} {:?}",
            String::from_utf8_lossy(first)
        );
        assert_eq!(exchange.outcome, ok(200));
    }
}

#[test]
fn unknown_role_caught_mid_body_waits_for_a_message() {
    let mut wire = Wire::new(Role::Unknown);
    assert!(
        wire.send(b"...the end of a body sent before the agent attached")
            .is_empty()
    );
    assert!(wire.recv(b"\x00\x01 more of it").is_empty());
    wire.recv(GET);
    assert_eq!(only(wire.send(OK_2)).conn.side, Side::Server);
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut wire = Wire::new(Role::Server);
    let requests = b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n";
    assert!(wire.recv(requests).is_empty());
    let mut responses = OK_2.to_vec();
    responses.extend_from_slice(
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
    responses.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Le");
    let done = wire.send(&responses);
    let rest = wire.send(b"ngth: 0\r\n\r\n");
    assert_eq!(
        brief(&done),
        [("/1", ok(200), 1000, 2000), ("/2", ok(201), 1000, 2000)]
    );
    assert_eq!(brief(&rest), [("/3", ok(404), 1000, 3000)]);
    assert_eq!(done[1].request().method, "POST");
}

#[test]
fn chunked_response_split_over_writes() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(GET);
    assert!(
        wire.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            .is_empty()
    );
    assert!(wire.send(b"lo\r\n1").is_empty());
    assert!(wire.send(b"0\r\n0123456789ABCDEF\r\n0\r").is_empty());
    let exchange = only(wire.send(b"\n\r\n"));
    assert_eq!((exchange.end_ns, exchange.response_tid), (5000, Some(5)));
    // The connection is still in step.
    wire.recv(GET);
    assert_eq!(only(wire.send(OK_2)).start_ns, 6000);
}

#[test]
fn response_split_in_three_writes() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(GET);
    assert!(wire.send(b"HTTP/1.1 200 OK\r\nConte").is_empty());
    assert!(wire.send(b"nt-Length: 5\r\n\r\nhel").is_empty());
    let exchange = only(wire.send(b"lo"));
    assert_eq!(
        (exchange.start_ns, exchange.end_ns, exchange.outcome),
        (1000, 4000, ok(200))
    );
}

#[test]
fn request_head_split_over_reads() {
    let mut wire = Wire::new(Role::Server);
    for part in [
        &b"G"[..],
        b"ET /split HTTP/1.1\r\nHost: sv",
        b"c\r\n",
        b"\r\n",
    ] {
        assert!(wire.recv(part).is_empty());
    }
    let exchange = only(wire.send(OK_2));
    assert_eq!(
        (
            exchange.request().target.as_str(),
            exchange.request().host.as_deref()
        ),
        ("/split", Some("svc"))
    );
    assert_eq!((exchange.start_ns, exchange.request_tid), (1000, 1));
}

#[test]
fn expect_100_continue_pairs_the_final_response() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert!(wire.send(b"HTTP/1.1 100 Continue\r\n\r\n").is_empty());
    assert!(wire.recv(b"hello").is_empty());
    let exchange = only(wire.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(
        (exchange.outcome, exchange.start_ns, exchange.end_ns),
        (ok(201), 1000, 4000)
    );
    // Interim and final in one write, as Python's http.server does.
    wire.recv(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello");
    let exchange = only(
        wire.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!(exchange.outcome, ok(500));
}

#[test]
fn uncaptured_bodies_are_skipped_by_length() {
    let mut wire = Wire::new(Role::Server);
    // A 10000-byte upload of which the kernel copied 64 bytes, then 0.
    let head = b"POST /upload HTTP/1.1\r\nContent-Length: 10000\r\n\r\n";
    let mut first = head.to_vec();
    first.resize(64, b'x');
    wire.recv_truncated(&first, head.len() + 6000);
    wire.recv_truncated(b"", 4000);
    // A 100000-byte response, 1024 bytes captured per write.
    let response_head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let mut captured = response_head.to_vec();
    captured.resize(1024, b'y');
    assert!(
        wire.send_truncated(&captured, response_head.len() + 50_000)
            .is_empty()
    );
    let exchange = only(wire.send_truncated(&[b'y'; 1024], 50_000));
    assert_eq!(
        (exchange.request().target.as_str(), exchange.end_ns),
        ("/upload", 4000)
    );
    // Still in step: the next exchange parses.
    wire.recv(GET);
    assert_eq!(brief(&wire.send(OK_2)), [("/a", ok(200), 5000, 6000)]);
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}

#[test]
fn lost_chunked_framing_resyncs_on_the_next_request() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(GET);
    // The second chunk-size line lies past the captured 64 bytes.
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n";
    assert!(wire.send_truncated(head, head.len() + 8000).is_empty());
    assert!(wire.send_truncated(b"more body", 8000).is_empty());
    // The next request ends the previous response at its last bytes seen.
    let done = wire.recv(b"GET /next HTTP/1.1\r\n\r\n");
    assert_eq!(brief(&done), [("/a", ok(200), 1000, 3000)]);
    assert_eq!(done[0].response_tid, Some(3));
    assert_eq!(brief(&wire.send(OK_2)), [("/next", ok(200), 4000, 5000)]);
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}

#[test]
fn unframed_response_ends_where_the_next_response_starts() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    wire.send_truncated(head, head.len() + 20_000);
    let done = wire.send(OK_2);
    assert_eq!(
        brief(&done),
        [("/1", ok(200), 1000, 2000), ("/2", ok(200), 1000, 3000)]
    );
}

#[test]
fn truncated_request_head_keeps_the_captured_lines() {
    let mut wire = Wire::new(Role::Server);
    let mut head = b"GET /big HTTP/1.1\r\nHost: svc\r\nCookie: ".to_vec();
    head.resize(1024, b'c');
    // The head (and its end) is 3000 bytes long; 1024 were captured.
    assert!(wire.recv_truncated(&head, 3000).is_empty());
    let exchange = only(wire.send(OK_2));
    assert_eq!(
        (
            exchange.request().target.as_str(),
            exchange.request().host.as_deref()
        ),
        ("/big", Some("svc"))
    );
    assert!(
        !format!("{exchange:?}").contains("ccc"),
        "cookie value kept"
    );
    // Later bytes of the lost message are skipped; the next request resyncs.
    wire.recv(b"cookie continued, body...");
    wire.recv(b"BODY");
    wire.recv(GET);
    let exchange = only(wire.send(OK_2));
    assert_eq!(
        (exchange.request().method.as_str(), exchange.start_ns),
        ("GET", 5000)
    );
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}

#[test]
fn head_larger_than_the_bound_is_counted() {
    let config = TrackerConfig {
        max_head_bytes: 64,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    wire.recv(b"GET /huge HTTP/1.1\r\nHost: svc\r\n");
    for _ in 0..4 {
        wire.recv(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert!(wire.recv(b"\r\n").is_empty());
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 1);
    // The request line was kept; its response still pairs.
    let exchange = only(wire.send(OK_2));
    assert_eq!(
        (exchange.request().target.as_str(), exchange.start_ns),
        ("/huge", 1000)
    );
}

#[test]
fn garbage_first_bytes_mark_the_connection_not_http() {
    for role in [Role::Server, Role::Client] {
        let mut wire = Wire::new(role);
        assert!(
            wire.recv(b"\x00\x00\x00\x0c\x00\x04\xd2\x16\x2f binary protocol")
                .is_empty()
        );
        assert!(wire.recv(GET).is_empty());
        assert!(wire.send(OK_2).is_empty());
        assert!(wire.close().is_empty());
        assert_eq!(wire.count(Counter::ParseFailedHttp1), 1, "{role:?}");
    }
}

#[test]
fn first_message_that_fails_to_parse_is_not_http() {
    let mut wire = Wire::new(Role::Client);
    // SMTP: starts like a request line (a method-like token, a space), but
    // httparse finds no HTTP version.
    wire.send(b"EHLO client.example\r\n");
    wire.recv(b"250-mail.example Hello\r\n250 SIZE 35882577\r\n");
    wire.send(GET);
    assert!(wire.recv(OK_2).is_empty());
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 1);
}

#[test]
fn tls_is_ignored() {
    let mut wire = Wire::new(Role::Client);
    assert!(wire.send(CLIENT_HELLO).is_empty());
    assert!(wire.recv(SERVER_HELLO).is_empty());
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 1);

    // Unknown role: ignored once the probe budget is spent, counted once.
    let config = TrackerConfig {
        unknown_role_probe_events: 3,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Unknown, config);
    wire.send(CLIENT_HELLO);
    wire.recv(SERVER_HELLO);
    wire.send(b"\x17\x03\x03\x00\x20 application data");
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 1);
    wire.send(GET);
    assert!(wire.recv(OK_2).is_empty());
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 1);
}

const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x1b\x00";
const SERVER_HELLO: &[u8] = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76";

#[test]
fn tls_plaintext_restarts_parsing_and_ciphertext_is_ignored() {
    for role in [Role::Server, Role::Unknown] {
        // The handshake alone spends an unknown role's probe budget.
        let config = TrackerConfig {
            unknown_role_probe_events: 3,
            ..TrackerConfig::default()
        };
        let mut wire = Wire::with_config(role, config);
        // Before the kernel knew the socket was TLS.
        wire.recv(CLIENT_HELLO);
        wire.send(SERVER_HELLO);
        wire.recv(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(wire.count(Counter::ParseFailedHttp1), 1, "{role:?}");

        wire.tls = true;
        wire.recv(GET);
        let exchange = only(wire.send(OK_2));
        assert!(exchange.conn.tls, "{role:?}");
        assert_eq!(exchange.conn.side, Side::Server, "{role:?}");
        assert_eq!(brief(&[exchange]), [("/a", ok(200), 4000, 5000)]);

        // Socket bytes of the TLS connection: ciphertext, even when they
        // happen to look like HTTP.
        wire.tls = false;
        assert!(
            wire.recv(b"\x17\x03\x03\x00\x20 application data")
                .is_empty()
        );
        assert!(wire.recv(GET).is_empty());
        assert!(wire.send(OK_2).is_empty());
        assert_eq!(wire.count(Counter::TlsCiphertextIgnored), 3, "{role:?}");

        wire.tls = true;
        wire.recv(GET);
        assert_eq!(
            brief(&wire.send(OK_2)),
            [("/a", ok(200), 9000, 10000)],
            "{role:?}"
        );
        assert_eq!(wire.count(Counter::ParseFailedHttp1), 1, "{role:?}");
    }
}

/// A client reaching an HTTPS server through a proxy: the `CONNECT` is
/// plaintext HTTP on the socket, the tunnelled requests TLS plaintext on
/// the same socket.
#[test]
fn tls_inside_a_connect_tunnel() {
    let mut wire = Wire::new(Role::Client);
    wire.send(b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n");
    let connect = only(wire.recv(b"HTTP/1.1 200 Connection established\r\n\r\n"));
    assert_eq!(connect.request().method, "CONNECT");
    assert!(!connect.conn.tls);
    wire.send(CLIENT_HELLO);
    wire.recv(SERVER_HELLO);

    wire.tls = true;
    wire.send(GET);
    let tunnelled = only(wire.recv(OK_2));
    assert!(tunnelled.conn.tls);
    assert_eq!(tunnelled.conn.side, Side::Client);
    assert_eq!(brief(&[tunnelled]), [("/a", ok(200), 5000, 6000)]);
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}

#[test]
fn parse_failure_mid_connection_resyncs() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(GET);
    wire.send(OK_2);
    assert!(wire.recv(b"GET / HTTP/7.0\r\n\r\n").is_empty());
    assert!(wire.recv(b"body of the bad request").is_empty());
    wire.recv(GET);
    assert_eq!(brief(&wire.send(OK_2)), [("/a", ok(200), 5000, 6000)]);
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 1);
}

#[test]
fn close_before_the_response() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(GET);
    let exchange = only(wire.close());
    assert_eq!(
        (exchange.outcome, exchange.start_ns, exchange.end_ns),
        (Outcome::ConnectionClosed, 1000, 2000)
    );
    assert_eq!(exchange.response_tid, None);
    assert_eq!(wire.tracker.connections(), 0);
}

/// A response whose request was not seen first (joined mid-connection,
/// or its bytes reached the agent late) makes no span, and is counted.
#[test]
fn a_response_without_its_request_is_counted() {
    let mut wire = Wire::new(Role::Client);
    assert!(wire.recv(OK_2).is_empty());
    assert_eq!(wire.count(Counter::ResponsesUnmatched), 1);
    wire.send(GET);
    let exchange = only(wire.close());
    assert_eq!(exchange.outcome, Outcome::ConnectionClosed);
}

#[test]
fn http10_response_delimited_by_close() {
    let mut wire = Wire::new(Role::Client);
    wire.send(b"GET / HTTP/1.0\r\nHost: old\r\n\r\n");
    assert!(
        wire.recv(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part")
            .is_empty()
    );
    assert!(wire.recv(b"second part").is_empty());
    let exchange = only(wire.close());
    assert_eq!(
        (&exchange.outcome, exchange.start_ns, exchange.end_ns),
        (&ok(200), 1000, 3000)
    );
    assert_eq!(
        (exchange.request().version, exchange.response_tid),
        (HttpVersion::Http10, Some(3))
    );
}

#[test]
fn http10_response_with_length_completes_at_once() {
    let mut wire = Wire::new(Role::Client);
    wire.send(b"GET / HTTP/1.0\r\n\r\n");
    let exchange = only(wire.recv(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n"));
    assert_eq!((exchange.outcome, exchange.end_ns), (ok(404), 2000));
}

#[test]
fn bodiless_responses_complete_with_their_head() {
    let mut wire = Wire::new(Role::Server);
    let cases: [(&[u8], &[u8], u16); 3] = [
        (
            b"HEAD /h HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            200,
        ),
        (
            b"DELETE /d HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            204,
        ),
        (
            b"GET /c HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            304,
        ),
    ];
    for (request, response, status) in cases {
        wire.recv(request);
        assert_eq!(only(wire.send(response)).outcome, ok(status));
    }
}

#[test]
fn upgrade_ends_http_on_the_connection() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    let exchange = only(
        wire.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
    );
    assert_eq!((exchange.outcome, exchange.end_ns), (ok(101), 2000));
    assert!(
        wire.recv(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
            .is_empty()
    );
    assert!(wire.send(b"GET / HTTP/1.1\r\n\r\n").is_empty());
    assert!(wire.close().is_empty());
    assert!(
        wire.stats.nonzero().is_empty(),
        "{:?}",
        wire.stats.nonzero()
    );
}

#[test]
fn idle_connections_are_dropped() {
    let config = TrackerConfig {
        idle_timeout_ns: 10_000,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    wire.recv(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    // A response running until close, whose close was never seen.
    wire.send(b"HTTP/1.1 200 OK\r\n\r\nbody");
    assert!(wire.tracker.tick(11_999).is_empty());
    let done = wire.tracker.tick(12_000);
    assert_eq!(
        brief(&done),
        [
            ("/1", ok(200), 1000, 2000),
            ("/2", Outcome::Abandoned, 1000, 12_000)
        ]
    );
    assert_eq!(wire.count(Counter::ExchangesAbandoned), 1);
    assert_eq!(wire.count(Counter::ConnectionsEvicted), 1);
    assert_eq!(wire.tracker.connections(), 0);
}

/// A connection is filed at its first event and re-filed only when it
/// comes up as the oldest: one busy since must not be taken for idle.
#[test]
fn connections_active_since_they_were_filed_are_not_idle() {
    let config = TrackerConfig {
        idle_timeout_ns: 10_000,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    wire.recv(GET); // at 1000
    for _ in 0..5 {
        wire.send(OK_2);
        wire.recv(GET);
    } // last at 11_000
    assert!(wire.tracker.tick(20_999).is_empty());
    assert_eq!(wire.tracker.connections(), 1);
    assert_eq!(wire.count(Counter::ConnectionsEvicted), 0);
    assert_eq!(
        brief(&wire.tracker.tick(21_000)),
        [("/a", Outcome::Abandoned, 11_000, 21_000)]
    );
    assert_eq!(wire.count(Counter::ConnectionsEvicted), 1);
    assert_eq!(wire.tracker.connections(), 0);
}

#[test]
fn least_recently_used_connection_is_evicted() {
    let config = TrackerConfig {
        max_connections: 2,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    for cookie in [1, 2] {
        wire.cookie = cookie;
        wire.recv(GET);
    }
    // Connection 1 is used again, so 2 is the least recently used.
    wire.cookie = 1;
    wire.send(OK_2);
    wire.cookie = 3;
    let evicted = only(wire.recv(GET));
    assert_eq!(
        (evicted.conn.socket_cookie, evicted.outcome, evicted.end_ns),
        (2, Outcome::Abandoned, 4000)
    );
    assert_eq!(wire.count(Counter::ConnectionsEvicted), 1);
    assert_eq!(wire.count(Counter::ExchangesAbandoned), 1);
    assert_eq!(wire.tracker.connections(), 2);
}

/// Ten thousand connections through a table of 64, each left with an
/// unanswered request: the table never holds more than its bound, and
/// every eviction and abandoned request is counted.
#[test]
fn connection_churn_stays_within_the_bound() {
    const MAX: usize = 64;
    const CHURN: u64 = 10_000;
    let config = TrackerConfig {
        max_connections: MAX,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    let mut abandoned = 0;
    for cookie in 1..=CHURN {
        wire.cookie = cookie;
        abandoned += wire.recv(GET).len() as u64;
        assert!(wire.tracker.connections() <= MAX, "at connection {cookie}");
    }
    let evicted = CHURN - MAX as u64;
    assert_eq!(wire.tracker.connections(), MAX);
    assert_eq!(wire.tracker.by_activity.len(), MAX, "the LRU index too");
    assert_eq!(wire.count(Counter::ConnectionsEvicted), evicted);
    assert_eq!(wire.count(Counter::ExchangesAbandoned), evicted);
    assert_eq!(abandoned, evicted);
}

/// Ten thousand pipelined requests that are never answered, on one
/// connection with room for 8: the queue stays at 8, the rest are
/// abandoned oldest first and counted.
#[test]
fn pending_request_churn_stays_within_the_bound() {
    const MAX: usize = 8;
    const CHURN: usize = 10_000;
    let config = TrackerConfig {
        max_pending_requests: MAX,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    let mut abandoned = 0;
    // Nothing is answered, so the queue never shrinks but by abandoning:
    // what the close ends is the most it ever held.
    for i in 0..CHURN {
        abandoned += wire
            .recv(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes())
            .len();
    }
    assert_eq!(abandoned, CHURN - MAX);
    assert_eq!(
        wire.count(Counter::ExchangesAbandoned),
        (CHURN - MAX) as u64
    );
    assert_eq!(
        wire.close().len(),
        MAX,
        "the last 8 end with the connection"
    );
}

#[test]
fn pending_requests_are_bounded() {
    let config = TrackerConfig {
        max_pending_requests: 2,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Server, config);
    let abandoned =
        wire.recv(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
    assert_eq!(brief(&abandoned), [("/1", Outcome::Abandoned, 1000, 1000)]);
    assert_eq!(wire.count(Counter::ExchangesAbandoned), 1);
    let mut responses = OK_2.to_vec();
    responses.extend_from_slice(OK_2);
    let done = wire.send(&responses);
    assert_eq!(
        brief(&done),
        [("/2", ok(200), 1000, 2000), ("/3", ok(200), 1000, 2000)]
    );
}

#[test]
fn forgetting_a_process_closes_its_connections() {
    let mut wire = Wire::new(Role::Client);
    wire.send(b"GET /mine HTTP/1.1\r\n\r\n");
    wire.recv(b"HTTP/1.0 200 OK\r\n\r\nstreamed until close");
    wire.cookie = 2;
    wire.send(b"GET /unanswered HTTP/1.1\r\n\r\n");
    wire.cookie = 3;
    wire.pid = PID + 1;
    wire.send(b"GET /other HTTP/1.1\r\n\r\n");
    let done = wire.tracker.forget(PID);
    let mut done = brief(&done);
    done.sort_by_key(|&(target, ..)| target);
    assert_eq!(
        done,
        [
            ("/mine", ok(200), 1000, 2000),
            ("/unanswered", Outcome::ConnectionClosed, 3000, 3000)
        ]
    );
    assert_eq!(wire.tracker.connections(), 1);
}

/// Bytes captured from curl and Python's http.server (see
/// `agent/tests/fixtures/http1/capture.py`), and the exchanges they hold.
struct Fixture {
    name: &'static str,
    requests: &'static [u8],
    responses: &'static [u8],
    expected: &'static [(&'static str, u16)],
}

macro_rules! fixture {
    ($name:literal, $expected:expr) => {
        Fixture {
            name: $name,
            requests: include_bytes!(concat!(
                "../../../tests/fixtures/http1/",
                $name,
                ".request.bin"
            )),
            responses: include_bytes!(concat!(
                "../../../tests/fixtures/http1/",
                $name,
                ".response.bin"
            )),
            expected: &$expected,
        }
    };
}

#[test]
fn fixtures_split_at_any_size() {
    let fixtures = [
        fixture!("simple_get", [("/hello.txt", 200)]),
        fixture!("simple_head", [("/hello.txt", 200)]),
        fixture!("simple_404", [("/missing", 404)]),
        fixture!("chunked", [("/chunked", 200)]),
        fixture!("keepalive", [("/a", 200), ("/b?x=1", 200)]),
        fixture!("expect_continue", [("/upload", 201)]),
        fixture!("http10_close", [("/", 200)]),
    ];
    for Fixture {
        name,
        requests,
        responses,
        expected,
    } in fixtures
    {
        for size in [1, 2, 3, 7, 16, 64, 4096] {
            let mut wire = Wire::new(Role::Server);
            let mut out = Vec::new();
            for part in requests.chunks(size) {
                out.extend(wire.recv(part));
            }
            for part in responses.chunks(size) {
                out.extend(wire.send(part));
            }
            out.extend(wire.close());
            let got: Vec<(&str, Outcome)> = out
                .iter()
                .map(|x| (x.request().target.as_str(), x.outcome.clone()))
                .collect();
            let want: Vec<(&str, Outcome)> = expected.iter().map(|&(t, s)| (t, ok(s))).collect();
            assert_eq!(got, want, "{name} in {size}-byte writes");
            let last_write = wire.events - 1;
            assert_eq!(
                out.last().map(|x| x.end_ns),
                Some(last_write * 1000),
                "{name} in {size}-byte writes"
            );
            assert!(
                wire.stats.nonzero().is_empty(),
                "{name}: {:?}",
                wire.stats.nonzero()
            );
        }
    }
}

#[test]
fn arbitrary_events_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let pieces: [&[u8]; 10] = [
        GET,
        OK_2,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 7\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"\x16\x03\x01\x00",
        b"\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ];
    let config = TrackerConfig {
        max_connections: 4,
        max_pending_requests: 3,
        max_head_bytes: 128,
        ..TrackerConfig::default()
    };
    let mut wire = Wire::with_config(Role::Unknown, config);
    for _ in 0..20_000 {
        wire.cookie = next(6);
        wire.role = [Role::Unknown, Role::Client, Role::Server][next(3) as usize];
        let piece = pieces[next(pieces.len() as u64) as usize];
        let start = next(piece.len() as u64) as usize;
        let captured = &piece[start..start + next((piece.len() - start) as u64 + 1) as usize];
        let total = captured.len() + next(3) as usize * next(2000) as usize;
        let direction = if next(2) == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let mut out = match next(50) {
            0 => wire.close(),
            1 => wire.tracker.tick(wire.events * 1000),
            2 => wire.tracker.forget(PID),
            _ => wire.event(direction, captured, total),
        };
        for exchange in out.drain(..) {
            assert!(exchange.end_ns >= exchange.start_ns, "{exchange:?}");
        }
        assert!(wire.tracker.connections() <= 4);
    }
}

#[test]
fn blank_lines_between_requests_are_skipped() {
    let mut wire = Wire::new(Role::Server);
    wire.recv(b"POST /form HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b");
    wire.recv(b"\r\n");
    assert_eq!(only(wire.send(OK_2)).request().target, "/form");
    wire.recv(b"\r\nGET /next HTTP/1.1\r\n\r\n");
    assert_eq!(only(wire.send(OK_2)).request().target, "/next");
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}

#[test]
fn pipelined_requests_share_no_kernel_trace_context() {
    let mut wire = Wire::new(Role::Server);
    let kernel = KernelTrace {
        trace_id: [7; 16],
        span_id: [8; 8],
        parent_span_id: None,
        trace_flags: 1,
        injected: false,
        from_header: false,
        ambiguous: false,
        update: false,
    };
    wire.next_trace = Some(kernel);
    wire.recv(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut done = wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    done.extend(wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(done.len(), 2);
    assert_eq!(
        done[0].trace,
        Some(kernel),
        "the read's context is the first request's"
    );
    assert_eq!(
        done[1].trace, None,
        "the second request gets ids of its own"
    );
}

#[test]
fn a_traceparent_in_a_later_read_of_the_head_updates_the_request() {
    let first = KernelTrace {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent_span_id: None,
        trace_flags: 1,
        injected: false,
        from_header: false,
        ambiguous: false,
        update: false,
    };
    let joined = KernelTrace {
        trace_id: [3; 16],
        parent_span_id: Some([4; 8]),
        from_header: true,
        update: true,
        ..first
    };
    // The update arrives while the head is still incomplete...
    let mut wire = Wire::new(Role::Server);
    wire.next_trace = Some(first);
    wire.recv(b"GET /a HTTP/1.1\r\n");
    wire.next_trace = Some(joined);
    wire.recv(b"traceparent: 00-03030303030303030303030303030303-0404040404040404-01\r\n\r\n");
    let done = wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].trace,
        Some(KernelTrace {
            update: false,
            ..joined
        })
    );

    // ...or after the request was queued (its head complete).
    let mut wire = Wire::new(Role::Server);
    wire.next_trace = Some(first);
    wire.recv(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n");
    wire.next_trace = Some(joined);
    wire.recv(b"x");
    let done = wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        done[0].trace,
        Some(KernelTrace {
            update: false,
            ..joined
        })
    );
}

/// Go's net/http server may read a keep-alive request's first byte alone:
/// the kernel then sees the start in the next read and sends the
/// request's context as an update there.
#[test]
fn a_request_whose_first_byte_came_alone_gets_the_update() {
    let started = KernelTrace {
        trace_id: [5; 16],
        span_id: [6; 8],
        parent_span_id: None,
        trace_flags: 1,
        injected: false,
        from_header: false,
        ambiguous: false,
        update: true,
    };
    let mut wire = Wire::new(Role::Server);
    wire.recv(b"GET /a HTTP/1.1\r\n\r\n");
    wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    wire.recv(b"G");
    wire.next_trace = Some(started);
    wire.recv(b"ET /b HTTP/1.1\r\n\r\n");
    let done = only(wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(done.request().target, "/b");
    assert_eq!(
        done.trace,
        Some(KernelTrace {
            update: false,
            ..started
        })
    );
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn an_upgrade_to_h2c_is_followed_with_the_request_as_stream_1() {
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const END_STREAM_HEADERS: u8 = 0x1 | 0x4;
    let mut wire = Wire::new(Role::Client);
    let kernel = KernelTrace {
        trace_id: [7; 16],
        span_id: [8; 8],
        parent_span_id: None,
        trace_flags: 1,
        injected: true,
        from_header: false,
        ambiguous: false,
        update: false,
    };
    wire.next_trace = Some(kernel);
    assert!(
        wire.send(
            b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        .is_empty()
    );
    // The 101, the server's SETTINGS and the answer on stream 1 (`:status
    // 503`: a literal with the static table's name) in one read.
    let mut reply =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    reply.extend(h2_frame(SETTINGS, 0, 0, &[]));
    reply.extend(h2_frame(HEADERS, END_STREAM_HEADERS, 1, b"\x08\x03503"));
    let upgraded = wire.recv(&reply);
    assert_eq!(
        brief(&upgraded),
        [("/up", ok(503), 1000, 2000)],
        "the upgraded request, answered over HTTP/2"
    );
    assert_eq!(upgraded[0].request().version, HttpVersion::Http2);
    assert_eq!(
        upgraded[0].trace,
        Some(kernel),
        "the kernel's ids of the HTTP/1.1 request"
    );
    // The client's preface, then a request on stream 3 (`GET`, `http`, `/`).
    let mut next = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    next.extend(h2_frame(SETTINGS, 0, 0, &[]));
    next.extend(h2_frame(HEADERS, END_STREAM_HEADERS, 3, b"\x82\x86\x84"));
    assert!(wire.send(&next).is_empty());
    let second = wire.recv(&h2_frame(HEADERS, END_STREAM_HEADERS, 3, b"\x8d"));
    assert_eq!(brief(&second), [("/", ok(404), 3000, 4000)]);
    assert_eq!(second[0].trace, None);
    assert_eq!(wire.count(Counter::ParseFailedHttp1), 0);
}
