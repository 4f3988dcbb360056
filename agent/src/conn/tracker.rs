//! Turns captured socket data into request/response exchanges: HTTP/1.x
//! here, HTTP/2 and gRPC in `conn/http2.rs`.
//!
//! Connections are keyed by socket cookie. The first bytes decide the
//! protocol: an HTTP/1 request or response, the HTTP/2 client preface (or a
//! server's first SETTINGS frame), or, on a connection caught mid-way,
//! bytes that read as HTTP/2 frames. An HTTP/1 connection has a
//! `MessageStream` per
//! direction; requests are queued as their heads arrive and responses pair
//! with them first in, first out, which covers keep-alive and pipelining.
//! Interim (1xx) responses are skipped; `101` and 2xx answers to `CONNECT`
//! end HTTP on the connection.
//!
//! The process's side comes from the kernel's [`Role`] when it saw the
//! connection set up; otherwise from the first message (a request received
//! means server). A connection whose first bytes are not HTTP/1.x (TLS,
//! another protocol) is ignored until it closes; one of unknown role may
//! have been caught mid-message, so it gets a few events to show a message
//! start first. Both count as [`Counter::ParseFailedHttp1`].
//!
//! Captures are prefixes, so framing is sometimes lost (a head or chunk line
//! not copied, a body that runs until close). The response in flight then
//! ends, at the last response bytes seen, when the next message starts in
//! either direction, when the connection closes or goes idle.
//!
//! TLS connections are read from the plaintext the OpenSSL probes report
//! with the socket's cookie (`SocketData::tls`). The first such event
//! restarts the connection's parsing, since the handshake went through the
//! socket probes before the kernel knew the socket was TLS; later socket
//! events on it are ciphertext and are dropped (counted in
//! [`Counter::TlsCiphertextIgnored`]).
//!
//! Memory is bounded: connections (least recently used evicted), queued
//! requests per connection, head buffers, and for HTTP/2 open streams and
//! header tables. Every loss is counted in [`Stats`].

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use tracing::debug;

use crate::{
    conn::{
        exchange::{ConnInfo, HttpExchange, Outcome, RequestInfo, Side},
        http2::{self, Ctx, Http2Conn},
        stream::{MessageSink, MessageStream, Segment, Stamp},
    },
    probes::decode::KernelTrace,
    probes::decode::{Direction, Role, SocketClose, SocketData},
    protocols::{
        hpack::{self, Huffman},
        http1::{self, Body, Http1Error, Parsed, ResponseHead},
        http2::{starts_with_frames, starts_with_preface},
    },
    telemetry::{Counter, Stats},
};

/// Bounds and timeouts of a [`ConnTracker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Connections tracked at once (at least one); the least recently used
    /// is evicted to make room.
    pub max_connections: usize,
    /// A connection without traffic for this many nanoseconds is dropped on
    /// [`ConnTracker::on_tick`], its unanswered requests abandoned.
    pub idle_timeout_ns: u64,
    /// Requests waiting for a response on one connection (at least one);
    /// the oldest is abandoned to make room.
    pub max_pending_requests: usize,
    /// Bytes buffered for a head split over syscalls.
    pub max_head_bytes: usize,
    /// Events with payload a connection of unknown role may carry before
    /// one looks like HTTP: it may have been caught mid-message, so its
    /// first bytes do not decide.
    pub unknown_role_probe_events: u32,
    /// Open HTTP/2 streams on one connection (at least one); the oldest is
    /// abandoned to make room.
    pub max_streams_per_connection: usize,
    /// Memory for each HPACK dynamic table (RFC 7541 entry sizes); a peer
    /// that uses more gets unknown fields, never wrong ones.
    pub max_header_table_bytes: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            idle_timeout_ns: 300 * 1_000_000_000,
            max_pending_requests: 32,
            max_head_bytes: 16 * 1024,
            unknown_role_probe_events: 8,
            max_streams_per_connection: 4096,
            max_header_table_bytes: hpack::DEFAULT_TABLE_SIZE,
        }
    }
}

/// Pairs requests with responses on every tracked connection.
#[derive(Debug)]
pub struct ConnTracker {
    config: TrackerConfig,
    stats: Arc<Stats>,
    conns: HashMap<u64, Conn>,
    /// `(last activity ns, cookie)`, oldest first: the eviction and idle
    /// order.
    by_activity: BTreeSet<(u64, u64)>,
    /// Shared by every HTTP/2 connection's HPACK decoders.
    huffman: Huffman,
    /// Connections found to speak HTTP/2 since the last
    /// [`ConnTracker::take_new_http2`]: the kernel must capture all their bytes.
    new_http2: Vec<u64>,
}

impl ConnTracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig, stats: Arc<Stats>) -> Self {
        Self {
            config,
            stats,
            conns: HashMap::new(),
            by_activity: BTreeSet::new(),
            huffman: Huffman::default(),
            new_http2: Vec::new(),
        }
    }

    /// Cookies of the connections that turned out to be HTTP/2 since the
    /// last call. HTTP/1 needs only the heads of large writes; HTTP/2 needs
    /// every frame header, wherever it sits in a write.
    pub fn take_new_http2(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.new_http2)
    }

    /// Connections currently tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Reads one syscall's bytes; returns the exchanges they complete.
    pub fn on_data(&mut self, ev: &SocketData) -> Vec<HttpExchange> {
        let mut out = Vec::new();
        if ev.total_len == 0 {
            return out;
        }
        let cookie = ev.socket_cookie;
        let mut conn = match self.remove(cookie) {
            Some(conn) => conn,
            None => {
                if self.conns.len() >= self.config.max_connections
                    && let Some(&(_, oldest)) = self.by_activity.first()
                {
                    self.drop_conn(oldest, "table full", ev.timestamp_ns, &mut out);
                }
                Conn::new(
                    ev.pid,
                    ev.timestamp_ns,
                    self.config.unknown_role_probe_events,
                )
            }
        };
        conn.last_ns = conn.last_ns.max(ev.timestamp_ns);
        let was_http2 = conn.is_http2();
        conn.on_data(ev, &mut self.ctx(&mut out));
        if !was_http2 && conn.is_http2() {
            self.new_http2.push(cookie);
        }
        self.by_activity.insert((conn.last_ns, cookie));
        self.conns.insert(cookie, conn);
        out
    }

    /// The connection closed: a response running until close ends, requests
    /// still unanswered end with [`Outcome::ConnectionClosed`].
    pub fn on_close(&mut self, ev: &SocketClose) -> Vec<HttpExchange> {
        let mut out = Vec::new();
        if let Some(mut conn) = self.remove(ev.socket_cookie) {
            conn.finish(
                Outcome::ConnectionClosed,
                ev.timestamp_ns,
                &mut self.ctx(&mut out),
            );
        }
        out
    }

    /// Drops connections idle since before `now_ns - idle_timeout_ns`; their
    /// unanswered requests are abandoned.
    pub fn on_tick(&mut self, now_ns: u64) -> Vec<HttpExchange> {
        let mut out = Vec::new();
        while let Some(&(last_ns, cookie)) = self.by_activity.first()
            && last_ns.saturating_add(self.config.idle_timeout_ns) <= now_ns
        {
            self.drop_conn(cookie, "idle", now_ns, &mut out);
        }
        out
    }

    /// The process exited: its connections end as if closed, at their last
    /// activity.
    pub fn forget_pid(&mut self, pid: u32) -> Vec<HttpExchange> {
        let cookies: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.pid == pid)
            .map(|(&cookie, _)| cookie)
            .collect();
        let mut out = Vec::new();
        for cookie in cookies {
            if let Some(mut conn) = self.remove(cookie) {
                let at = conn.last_ns;
                conn.finish(Outcome::ConnectionClosed, at, &mut self.ctx(&mut out));
            }
        }
        out
    }

    /// What a connection needs to read an event.
    fn ctx<'a>(&'a mut self, out: &'a mut Vec<HttpExchange>) -> Ctx<'a> {
        Ctx {
            config: &self.config,
            stats: &self.stats,
            huffman: &mut self.huffman,
            out,
        }
    }

    fn remove(&mut self, cookie: u64) -> Option<Conn> {
        let conn = self.conns.remove(&cookie)?;
        self.by_activity.remove(&(conn.last_ns, cookie));
        Some(conn)
    }

    /// Evicts a connection, abandoning what it still waits for.
    fn drop_conn(
        &mut self,
        cookie: u64,
        reason: &'static str,
        now_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) {
        if let Some(mut conn) = self.remove(cookie) {
            Loss::Evicted { cookie, reason }.record(&self.stats);
            conn.finish(Outcome::Abandoned, now_ns, &mut self.ctx(out));
        }
    }
}

/// What the tracker loses, each logged and counted in one place.
enum Loss<'a> {
    /// Bytes of an HTTP connection that could not be parsed.
    ParseFailed { cookie: u64, error: &'a Http1Error },
    /// A connection that does not carry HTTP/1.x.
    NotHttp {
        cookie: u64,
        why: &'a dyn std::fmt::Display,
    },
    /// A connection dropped to bound memory.
    Evicted { cookie: u64, reason: &'static str },
    /// Requests given up on without a response.
    Abandoned { cookie: u64, count: u64 },
}

impl Loss<'_> {
    fn record(self, stats: &Stats) {
        match self {
            Self::ParseFailed { cookie, error } => {
                debug!(cookie, %error, "HTTP/1 parse failed, resynchronising");
                stats.add(Counter::ParseFailedHttp1, 1);
            }
            Self::NotHttp { cookie, why } => {
                debug!(cookie, %why, "not HTTP/1, ignoring the connection");
                stats.add(Counter::ParseFailedHttp1, 1);
            }
            Self::Evicted { cookie, reason } => {
                debug!(cookie, reason, "connection evicted");
                stats.add(Counter::ConnectionsEvicted, 1);
            }
            Self::Abandoned { cookie, count } => {
                debug!(cookie, count, "requests abandoned");
                stats.add(Counter::ExchangesAbandoned, count);
            }
        }
    }
}

/// One tracked connection.
#[derive(Debug)]
struct Conn {
    pid: u32,
    last_ns: u64,
    state: ConnState,
    /// The OpenSSL probes reported plaintext for it: only their events
    /// count from then on.
    tls: bool,
}

#[derive(Debug)]
enum ConnState {
    /// Role unknown and nothing HTTP-like seen yet; gives up after `budget`
    /// more events with payload.
    Probing {
        budget: u32,
    },
    Http(Box<HttpConn>),
    Http2(Box<Http2Conn>),
    /// Not HTTP (or no longer: upgraded): ignored until it closes.
    Ignored,
}

impl ConnState {
    /// Waiting for a message start, for at most `events` events with payload.
    fn probing(events: u32) -> Self {
        Self::Probing {
            budget: events.max(1),
        }
    }
}

/// What a connection's first bytes say.
enum Probe {
    Http(Side),
    Http2(http2::Start),
    NotHttp,
    Undecided,
}

impl Conn {
    fn new(pid: u32, now_ns: u64, probe_events: u32) -> Self {
        Self {
            pid,
            last_ns: now_ns,
            state: ConnState::probing(probe_events),
            tls: false,
        }
    }

    fn is_http2(&self) -> bool {
        matches!(self.state, ConnState::Http2(_))
    }

    fn on_data(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) {
        let stats = ctx.stats;
        match (self.tls, ev.tls) {
            (false, true) => {
                // The socket's handshake (and maybe more) was captured
                // before the kernel knew it carried TLS: whatever was read
                // from those bytes is not HTTP. The plaintext starts here.
                self.finish(Outcome::Abandoned, ev.timestamp_ns, ctx);
                self.state = ConnState::probing(ctx.config.unknown_role_probe_events);
                self.tls = true;
            }
            (true, false) => {
                // Ciphertext of a connection whose plaintext the OpenSSL
                // probes report: reading it would only make bogus spans.
                debug!(
                    cookie = ev.socket_cookie,
                    "ciphertext on a TLS connection ignored"
                );
                stats.add(Counter::TlsCiphertextIgnored, 1);
                return;
            }
            (false, false) | (true, true) => {}
        }
        if let ConnState::Probing { budget } = &mut self.state {
            if ev.payload.is_empty() {
                return;
            }
            match probe(ev) {
                Probe::Http(side) => {
                    self.state = ConnState::Http(Box::new(HttpConn::new(ev, side)))
                }
                Probe::Http2(start) => {
                    self.state = ConnState::Http2(Box::new(Http2Conn::new(ev, start, ctx.config)))
                }
                Probe::NotHttp => {
                    Loss::NotHttp {
                        cookie: ev.socket_cookie,
                        why: &"first bytes",
                    }
                    .record(stats);
                    self.state = ConnState::Ignored;
                    return;
                }
                Probe::Undecided => {
                    *budget -= 1;
                    if *budget == 0 {
                        Loss::NotHttp {
                            cookie: ev.socket_cookie,
                            why: &"no message start",
                        }
                        .record(stats);
                        self.state = ConnState::Ignored;
                    }
                    return;
                }
            }
        }
        match &mut self.state {
            ConnState::Http(http) => {
                http.on_data(ev, ctx.config, stats, ctx.out);
                if http.pairing.not_http || http.responses.is_tunnel() {
                    http.pairing
                        .finish(Outcome::Abandoned, ev.timestamp_ns, stats, ctx.out);
                    self.state = ConnState::Ignored;
                }
            }
            ConnState::Http2(http2) => http2.on_data(ev, ctx),
            ConnState::Probing { .. } | ConnState::Ignored => {}
        }
    }

    /// Ends everything in flight: see [`Pairing::finish`] and
    /// [`Http2Conn::finish`].
    fn finish(&mut self, unanswered: Outcome, at_ns: u64, ctx: &mut Ctx<'_>) {
        match &mut self.state {
            ConnState::Http(http) => http.pairing.finish(unanswered, at_ns, ctx.stats, ctx.out),
            ConnState::Http2(http2) => http2.finish(&unanswered, at_ns, ctx),
            ConnState::Probing { .. } | ConnState::Ignored => {}
        }
    }
}

/// Which way requests go for a side.
pub(super) fn request_direction(side: Side) -> Direction {
    match side {
        Side::Client => Direction::Egress,
        Side::Server => Direction::Ingress,
    }
}

/// Judges a connection by its first payload.
fn probe(ev: &SocketData) -> Probe {
    let bytes = &ev.payload[..];
    let known = match ev.role {
        Role::Client => Some(Side::Client),
        Role::Server => Some(Side::Server),
        Role::Unknown => None,
    };
    if let Some(side) = known {
        // The kernel saw the connection open, so these are its first
        // bytes: a request (or the HTTP/2 preface) from the client, a
        // response (or the HTTP/2 server's first SETTINGS) from the server.
        return if ev.direction == request_direction(side) {
            if starts_with_preface(bytes) {
                Probe::Http2(http2::Start::Fresh { side })
            } else if http1::looks_like_request(bytes) {
                Probe::Http(side)
            } else {
                Probe::NotHttp
            }
        } else if http1::looks_like_response(bytes) {
            Probe::Http(side)
        } else if starts_with_frames(bytes, u64::from(ev.total_len)) {
            Probe::Http2(http2::Start::Fresh { side })
        } else {
            Probe::NotHttp
        };
    }
    let (requester, responder) = match ev.direction {
        Direction::Egress => (Side::Client, Side::Server),
        Direction::Ingress => (Side::Server, Side::Client),
    };
    if starts_with_preface(bytes) {
        Probe::Http2(http2::Start::Fresh { side: requester })
    } else if http1::looks_like_request(bytes) {
        Probe::Http(requester)
    } else if http1::looks_like_response(bytes) {
        Probe::Http(responder)
    } else if starts_with_frames(bytes, u64::from(ev.total_len)) {
        Probe::Http2(http2::Start::MidConnection {
            direction: ev.direction,
        })
    } else {
        Probe::Undecided
    }
}

/// An HTTP/1.x connection.
#[derive(Debug)]
struct HttpConn {
    requests: MessageStream,
    responses: MessageStream,
    pairing: Pairing,
}

impl HttpConn {
    fn new(ev: &SocketData, side: Side) -> Self {
        Self {
            requests: MessageStream::new("request"),
            responses: MessageStream::new("response"),
            pairing: Pairing {
                info: ConnInfo {
                    pid: ev.pid,
                    socket_cookie: ev.socket_cookie,
                    local: ev.local,
                    remote: ev.remote,
                    side,
                    tls: ev.tls,
                },
                confirmed: false,
                not_http: false,
                pending: VecDeque::new(),
                in_flight: None,
                trace_update: None,
                last_kernel_span: None,
            },
        }
    }

    fn on_data(
        &mut self,
        ev: &SocketData,
        config: &TrackerConfig,
        stats: &Stats,
        out: &mut Vec<HttpExchange>,
    ) {
        let update = ev.trace.filter(|t| t.update);
        if let Some(update) = update {
            self.pairing.update_trace(update);
        }
        let segment = Segment {
            payload: &ev.payload,
            len: u64::from(ev.total_len),
            at: Stamp {
                ns: ev.timestamp_ns,
                tid: ev.tid,
                trace: ev.trace.filter(|t| !t.update),
            },
        };
        if ev.direction == request_direction(self.pairing.info.side) {
            let mut sink = RequestSink {
                pairing: &mut self.pairing,
                responses: &self.responses,
                stats,
                out,
                max_pending: config.max_pending_requests,
            };
            self.requests
                .feed(&segment, config.max_head_bytes, &mut sink);
        } else {
            let mut sink = ResponseSink {
                pairing: &mut self.pairing,
                stats,
                out,
            };
            self.responses
                .feed(&segment, config.max_head_bytes, &mut sink);
        }
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct PendingRequest {
    info: RequestInfo,
    /// When its first bytes moved.
    first: Stamp,
}

/// The final response being read.
#[derive(Debug)]
struct InFlight {
    /// The request it answers; `None` if that was never seen.
    request: Option<PendingRequest>,
    status: u16,
    /// When its last bytes seen moved.
    last: Stamp,
}

/// Requests and responses of one connection, and how they pair.
#[derive(Debug)]
struct Pairing {
    info: ConnInfo,
    /// A head parsed: later failures are parse errors, not proof that the
    /// connection does not carry HTTP.
    confirmed: bool,
    /// The first message failed to parse: stop tracking.
    not_http: bool,
    pending: VecDeque<PendingRequest>,
    in_flight: Option<InFlight>,
    /// The latest kernel update of a request's trace (its `traceparent` came
    /// in a later read of the head), for a request whose head is still
    /// being read when it arrives.
    trace_update: Option<KernelTrace>,
    /// Span id of the kernel trace context last given to a request: several
    /// pipelined requests in one read share the read's context, which
    /// belongs to the first of them only.
    last_kernel_span: Option<[u8; 8]>,
}

impl Pairing {
    fn exchange(
        &self,
        request: PendingRequest,
        outcome: Outcome,
        end_ns: u64,
        response_tid: Option<u32>,
    ) -> HttpExchange {
        HttpExchange {
            conn: self.info.clone(),
            outcome,
            start_ns: request.first.ns,
            // Events from different CPUs can arrive slightly out of order.
            end_ns: end_ns.max(request.first.ns),
            request_tid: request.first.tid,
            response_tid,
            trace: request.first.trace,
            rpc: None,
            request: request.info,
        }
    }

    fn push_request(
        &mut self,
        info: RequestInfo,
        first: Stamp,
        max_pending: usize,
        stats: &Stats,
        out: &mut Vec<HttpExchange>,
    ) {
        self.confirmed = true;
        if self.pending.len() >= max_pending.max(1)
            && let Some(oldest) = self.pending.pop_front()
        {
            Loss::Abandoned {
                cookie: self.info.socket_cookie,
                count: 1,
            }
            .record(stats);
            out.push(self.exchange(oldest, Outcome::Abandoned, first.ns, None));
        }
        let mut first = first;
        if let (Some(trace), Some(update)) = (first.trace, self.trace_update)
            && trace.span_id == update.span_id
        {
            first.trace = Some(update);
        }
        let kernel_span = first.trace.map(|t| t.span_id);
        if kernel_span.is_some() && kernel_span == self.last_kernel_span {
            first.trace = None;
        } else {
            self.last_kernel_span = kernel_span;
        }
        self.pending.push_back(PendingRequest { info, first });
    }

    /// A later read of a request head brought its `traceparent`: the request
    /// with that kernel span id (queued, or still being read) joins it.
    fn update_trace(&mut self, update: KernelTrace) {
        let update = KernelTrace {
            update: false,
            ..update
        };
        let queued = self.pending.iter_mut().find(|request| {
            request
                .first
                .trace
                .is_some_and(|t| t.span_id == update.span_id)
        });
        match queued {
            Some(request) => request.first.trace = Some(update),
            None => self.trace_update = Some(update),
        }
    }

    /// A response head arrived: pairs a final one with the oldest request
    /// and says how its body is framed.
    fn on_response(&mut self, head: &ResponseHead, first: Stamp) -> Body {
        self.confirmed = true;
        if head.is_interim() {
            // 100 Continue, 103 Early Hints: the final response follows.
            return Body::None;
        }
        let request = self.pending.pop_front();
        let body = head.body(request.as_ref().map_or("", |r| r.info.method.as_str()));
        self.in_flight = Some(InFlight {
            request,
            status: head.status,
            last: first,
        });
        body
    }

    /// The response in flight ended with its last bytes seen.
    fn complete_in_flight(&mut self, out: &mut Vec<HttpExchange>) {
        if let Some(InFlight {
            request: Some(request),
            status,
            last,
        }) = self.in_flight.take()
        {
            out.push(self.exchange(
                request,
                Outcome::Response { status },
                last.ns,
                Some(last.tid),
            ));
        }
    }

    /// Ends the response in flight, and every unanswered request with
    /// `unanswered` at `at_ns`.
    fn finish(
        &mut self,
        unanswered: Outcome,
        at_ns: u64,
        stats: &Stats,
        out: &mut Vec<HttpExchange>,
    ) {
        self.complete_in_flight(out);
        if unanswered == Outcome::Abandoned && !self.pending.is_empty() {
            let count = self.pending.len() as u64;
            Loss::Abandoned {
                cookie: self.info.socket_cookie,
                count,
            }
            .record(stats);
        }
        while let Some(request) = self.pending.pop_front() {
            out.push(self.exchange(request, unanswered.clone(), at_ns, None));
        }
    }

    fn failed(&mut self, error: &Http1Error, stats: &Stats) {
        let cookie = self.info.socket_cookie;
        if self.confirmed {
            Loss::ParseFailed { cookie, error }.record(stats);
        } else {
            Loss::NotHttp { cookie, why: error }.record(stats);
            self.not_http = true;
        }
    }
}

/// Reads the request direction.
struct RequestSink<'a> {
    pairing: &'a mut Pairing,
    responses: &'a MessageStream,
    stats: &'a Stats,
    out: &'a mut Vec<HttpExchange>,
    max_pending: usize,
}

impl RequestSink<'_> {
    fn push(&mut self, info: RequestInfo, first: Stamp) {
        self.pairing
            .push_request(info, first, self.max_pending, self.stats, self.out);
    }
}

impl MessageSink for RequestSink<'_> {
    fn is_start(&self, bytes: &[u8]) -> bool {
        http1::looks_like_request(bytes)
    }

    fn message_start(&mut self) {
        // A response whose end could not be seen ended before the client
        // sent its next request.
        if self.responses.is_unframed() {
            self.pairing.complete_in_flight(self.out);
        }
    }

    fn head(&mut self, bytes: &[u8], first: Stamp) -> Result<Parsed<Body>, Http1Error> {
        let Parsed::Complete { head, len } = http1::parse_request(bytes)? else {
            return Ok(Parsed::Partial);
        };
        // Queue the request even if its body framing is bad: the server
        // will still answer it.
        let body = head.body();
        self.push(head.info, first);
        Ok(Parsed::Complete { head: body?, len })
    }

    fn truncated_head(&mut self, captured: &[u8], first: Stamp) -> Result<Body, Http1Error> {
        let head = http1::parse_request_prefix(captured)?;
        self.push(head.info, first);
        // Whatever framing the lost lines held, it can no longer be followed.
        Ok(Body::UntilClose)
    }

    fn failed(&mut self, error: Http1Error) {
        self.pairing.failed(&error, self.stats);
    }
}

/// Reads the response direction.
struct ResponseSink<'a> {
    pairing: &'a mut Pairing,
    stats: &'a Stats,
    out: &'a mut Vec<HttpExchange>,
}

impl MessageSink for ResponseSink<'_> {
    fn is_start(&self, bytes: &[u8]) -> bool {
        http1::looks_like_response(bytes)
    }

    fn message_start(&mut self) {
        // A response whose end could not be seen ended before this one.
        self.pairing.complete_in_flight(self.out);
    }

    fn head(&mut self, bytes: &[u8], first: Stamp) -> Result<Parsed<Body>, Http1Error> {
        let Parsed::Complete { head, len } = http1::parse_response(bytes)? else {
            return Ok(Parsed::Partial);
        };
        Ok(Parsed::Complete {
            head: self.pairing.on_response(&head, first),
            len,
        })
    }

    fn truncated_head(&mut self, captured: &[u8], first: Stamp) -> Result<Body, Http1Error> {
        let head = http1::parse_response_prefix(captured)?;
        Ok(self.pairing.on_response(&head, first))
    }

    fn progress(&mut self, at: Stamp) {
        if let Some(in_flight) = &mut self.pairing.in_flight {
            in_flight.last = at;
        }
    }

    fn message_end(&mut self, at: Stamp) {
        self.progress(at);
        self.pairing.complete_in_flight(self.out);
    }

    fn failed(&mut self, error: Http1Error) {
        self.pairing.failed(&error, self.stats);
    }
}

#[cfg(test)]
mod tests;
