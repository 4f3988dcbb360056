//! One HTTP/1.x connection: a [`MessageStream`] per direction; requests
//! are queued as their heads arrive and responses pair with them first in,
//! first out, which covers keep-alive and pipelining. Interim (1xx)
//! responses are skipped; `101` and 2xx answers to `CONNECT` end HTTP on
//! the connection, except a `101` to `h2c`: the request it answers is
//! handed to an HTTP/2 connection as its stream 1, which reads on from the
//! byte after the `101` head (RFC 7540 §3.2).
//!
//! Captures are prefixes, so framing is sometimes lost (a head or chunk line
//! not copied, a body that runs until close). The response in flight then
//! ends, at the last response bytes seen, when the next message starts in
//! either direction, when the connection closes or goes idle.
//!
//! Memory is bounded: queued requests per connection and head buffers.
//! Every loss is counted.

use std::collections::VecDeque;

use tracing::debug;

use super::{
    parse::{self, Body, Http1Error, Parsed, ResponseHead},
    stream::{MessageSink, MessageStream},
};
use crate::{
    model::call::{Call, ConnInfo, Detail, KernelTrace, Outcome, RequestInfo, Side},
    probes::decode::SocketData,
    protocols::{Ctx, Flow, ProtocolConn, Segment, Stamp, TrackerConfig, http2, request_direction},
    telemetry::{Counter, Stats},
};

/// An HTTP/1.x connection.
#[derive(Debug)]
pub(super) struct HttpConn {
    requests: MessageStream,
    responses: MessageStream,
    pairing: Pairing,
    /// The HTTP/2 connection an `Upgrade: h2c` switched to.
    successor: Option<Box<dyn ProtocolConn>>,
}

impl HttpConn {
    pub(super) fn new(ev: &SocketData, side: Side) -> Self {
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
            successor: None,
        }
    }

    /// After a `101` to h2c in `ev`: the HTTP/2 connection that carries on,
    /// with the upgraded request as its stream 1, having read the bytes of
    /// `ev` past the `101` head. `None` if it is not such a switch.
    fn upgrade(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) -> Option<Box<dyn ProtocolConn>> {
        let in_flight = self.pairing.in_flight.as_ref()?;
        if !in_flight.upgrade_h2c || in_flight.request.is_none() {
            return None;
        }
        let request = self.pairing.in_flight.take()?.request?;
        // The 101 came in this event (the response direction just read);
        // `None` if the end of its head was not captured.
        let rest = self.responses.switched_at();
        Some(http2::upgraded(
            ev,
            self.pairing.info.side,
            request.info,
            request.first,
            rest,
            ctx,
        ))
    }

    fn read(
        &mut self,
        ev: &SocketData,
        config: &TrackerConfig,
        stats: &Stats,
        out: &mut Vec<Call>,
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

impl ProtocolConn for HttpConn {
    fn on_data(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) -> Flow {
        self.read(ev, ctx.config, ctx.stats, ctx.out);
        if self.responses.is_tunnel()
            && let Some(successor) = self.upgrade(ev, ctx)
        {
            self.successor = Some(successor);
            self.pairing
                .finish(Outcome::Abandoned, ev.timestamp_ns, ctx.stats, ctx.out);
            return Flow::Switch;
        }
        if self.pairing.not_http || self.responses.is_tunnel() {
            self.pairing
                .finish(Outcome::Abandoned, ev.timestamp_ns, ctx.stats, ctx.out);
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn finish(&mut self, unanswered: &Outcome, at_ns: u64, ctx: &mut Ctx<'_>) {
        self.pairing
            .finish(unanswered.clone(), at_ns, ctx.stats, ctx.out);
    }

    fn take_successor(&mut self) -> Option<Box<dyn ProtocolConn>> {
        self.successor.take()
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
    /// A `101` to h2c: the request is answered over HTTP/2.
    upgrade_h2c: bool,
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
    /// in a later read of the head, or its start was seen there), for a
    /// request whose head is still being read when it arrives.
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
    ) -> Call {
        Call {
            conn: self.info.clone(),
            outcome,
            start_ns: request.first.ns,
            // Events from different CPUs can arrive slightly out of order.
            end_ns: end_ns.max(request.first.ns),
            request_tid: request.first.tid,
            response_tid,
            trace: request.first.trace,
            detail: Detail::Http(request.info),
        }
    }

    fn push_request(
        &mut self,
        info: RequestInfo,
        first: Stamp,
        max_pending: usize,
        stats: &Stats,
        out: &mut Vec<Call>,
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
        // An update that came while this head was read is this request's:
        // the rest of its head brought the `traceparent`, or the kernel
        // saw the request start only there (its first byte read alone).
        if let Some(update) = self.trace_update.take()
            && first
                .trace
                .is_none_or(|trace| trace.span_id == update.span_id)
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
    fn on_response(&mut self, head: &ResponseHead, first: Stamp, stats: &Stats) -> Body {
        self.confirmed = true;
        if head.is_interim() {
            // 100 Continue, 103 Early Hints: the final response follows.
            return Body::None;
        }
        let request = self.pending.pop_front();
        if request.is_none() {
            Loss::Unmatched {
                cookie: self.info.socket_cookie,
            }
            .record(stats);
        }
        let body = head.body(request.as_ref().map_or("", |r| r.info.method.as_str()));
        self.in_flight = Some(InFlight {
            request,
            status: head.status,
            upgrade_h2c: head.upgrade_h2c,
            last: first,
        });
        body
    }

    /// The response in flight ended with its last bytes seen.
    fn complete_in_flight(&mut self, out: &mut Vec<Call>) {
        if let Some(InFlight {
            request: Some(request),
            status,
            last,
            ..
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
    fn finish(&mut self, unanswered: Outcome, at_ns: u64, stats: &Stats, out: &mut Vec<Call>) {
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
    out: &'a mut Vec<Call>,
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
        parse::looks_like_request(bytes)
    }

    fn message_start(&mut self) {
        // A response whose end could not be seen ended before the client
        // sent its next request.
        if self.responses.is_unframed() {
            self.pairing.complete_in_flight(self.out);
        }
    }

    fn head(&mut self, bytes: &[u8], first: Stamp) -> Result<Parsed<Body>, Http1Error> {
        let Parsed::Complete { head, len } = parse::parse_request(bytes)? else {
            return Ok(Parsed::Partial);
        };
        // Queue the request even if its body framing is bad: the server
        // will still answer it.
        let body = head.body();
        self.push(head.info, first);
        Ok(Parsed::Complete { head: body?, len })
    }

    fn truncated_head(&mut self, captured: &[u8], first: Stamp) -> Result<Body, Http1Error> {
        let head = parse::parse_request_prefix(captured)?;
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
    out: &'a mut Vec<Call>,
}

impl MessageSink for ResponseSink<'_> {
    fn is_start(&self, bytes: &[u8]) -> bool {
        parse::looks_like_response(bytes)
    }

    fn message_start(&mut self) {
        // A response whose end could not be seen ended before this one.
        self.pairing.complete_in_flight(self.out);
    }

    fn head(&mut self, bytes: &[u8], first: Stamp) -> Result<Parsed<Body>, Http1Error> {
        let Parsed::Complete { head, len } = parse::parse_response(bytes)? else {
            return Ok(Parsed::Partial);
        };
        Ok(Parsed::Complete {
            head: self.pairing.on_response(&head, first, self.stats),
            len,
        })
    }

    fn truncated_head(&mut self, captured: &[u8], first: Stamp) -> Result<Body, Http1Error> {
        let head = parse::parse_response_prefix(captured)?;
        Ok(self.pairing.on_response(&head, first, self.stats))
    }

    fn progress(&mut self, at: Stamp) {
        if let Some(in_flight) = &mut self.pairing.in_flight {
            in_flight.last = at;
        }
    }

    fn message_end(&mut self, at: Stamp) {
        self.progress(at);
        // A `101` to h2c: the request's answer comes over HTTP/2.
        if !self
            .pairing
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.upgrade_h2c)
        {
            self.pairing.complete_in_flight(self.out);
        }
    }

    fn failed(&mut self, error: Http1Error) {
        self.pairing.failed(&error, self.stats);
    }
}

/// What an HTTP/1 connection loses, each logged and counted in one place.
enum Loss<'a> {
    /// Bytes of an HTTP connection that could not be parsed.
    ParseFailed { cookie: u64, error: &'a Http1Error },
    /// A connection that does not carry HTTP/1.x.
    NotHttp {
        cookie: u64,
        why: &'a dyn std::fmt::Display,
    },
    /// Requests given up on without a response.
    Abandoned { cookie: u64, count: u64 },
    /// A response with no request waiting for it.
    Unmatched { cookie: u64 },
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
            Self::Abandoned { cookie, count } => {
                debug!(cookie, count, "requests abandoned");
                stats.add(Counter::ExchangesAbandoned, count);
            }
            Self::Unmatched { cookie } => {
                debug!(cookie, "response without a request seen");
                stats.add(Counter::ResponsesUnmatched, 1);
            }
        }
    }
}
