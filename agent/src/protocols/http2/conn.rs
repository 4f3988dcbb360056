//! One HTTP/2 connection (RFC 9113) followed from both directions' bytes.
//!
//! Each direction has a [`FrameReader`] and its own HPACK decoder (each
//! peer's encoder keeps its own table). Every stream is followed from its
//! request HEADERS to the response's END_STREAM, a RST_STREAM or a GOAWAY
//! that refuses it, and then becomes one [`Call`]: the span covers
//! the whole stream, so unary and streaming gRPC calls alike. gRPC calls
//! (`content-type: application/grpc`) carry their method and status in
//! [`RpcInfo`]; a reset stream gets the status a client reports for it.
//!
//! Bytes can be missed (capture limits, a connection already open when the
//! agent attached). The decoder of a direction then forgets its dynamic
//! table (see [`hpack`]): header blocks still give what the static table
//! and literals say, a field that refers to an entry the agent never saw is
//! unknown rather than guessed, and a request whose method is unknown gives
//! no exchange (counted). Besides frames that were not captured, misses are
//! noticed when a client skips stream ids (the requests in between were not
//! seen) and when a response's DATA comes without its HEADERS.
//!
//! Memory is bounded: open streams per connection (the oldest is abandoned
//! to make room), header blocks (`max_head_bytes`) and HPACK tables.

mod frames;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::SocketAddr};

use compact_str::CompactString;
use tracing::debug;

use self::frames::{FrameReader, ReaderEvent};
use super::{
    hpack::{self, Field},
    parse::{self as http2, FrameHeader, FrameType, Http2Error, flags},
};
use crate::{
    model::call::{
        Call, ConnInfo, Detail, HttpVersion, Outcome, RequestInfo, RpcInfo, RpcMethod, Side,
    },
    probes::decode::{Direction, SocketData},
    protocols::{
        Ctx, Flow, ProtocolConn, Segment, Stamp, TrackerConfig, grpc::parse as grpc,
        request_direction,
    },
    telemetry::{Counter, Stats},
};

/// How the agent came upon the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// From its first bytes: the preface comes (or came) from the client.
    Fresh {
        /// The process's side.
        side: Side,
    },
    /// Mid-way: the event that showed frames starts at a frame boundary,
    /// nothing else is known.
    MidConnection {
        /// The direction of that event.
        direction: Direction,
    },
}

/// An HTTP/2 connection.
#[derive(Debug)]
pub(super) struct Http2Conn {
    /// Frame readers, by [`index`] of direction.
    readers: [FrameReader; 2],
    streams: Streams,
}

impl Http2Conn {
    pub fn new(ev: &SocketData, start: Start, config: &TrackerConfig) -> Self {
        let table = config.max_header_table_bytes;
        let (readers, decoders, side, blind) = match start {
            Start::Fresh { side } => {
                let mut readers = [FrameReader::at_frame(), FrameReader::at_frame()];
                readers[index(request_direction(side))] = FrameReader::at_preface();
                let decoders = [hpack::Decoder::new(table), hpack::Decoder::new(table)];
                (readers, decoders, Some(side), [false, false])
            }
            Start::MidConnection { direction } => {
                let mut readers = [FrameReader::lost(), FrameReader::lost()];
                readers[index(direction)] = FrameReader::at_frame();
                let decoders = [
                    hpack::Decoder::mid_connection(table),
                    hpack::Decoder::mid_connection(table),
                ];
                let mut blind = [true, true];
                blind[index(direction)] = false;
                (readers, decoders, None, blind)
            }
        };
        Self {
            readers,
            streams: Streams {
                pid: ev.pid,
                cookie: ev.socket_cookie,
                local: ev.local,
                remote: ev.remote,
                tls: ev.tls,
                side,
                decoders,
                blind,
                blocks: [None, None],
                open: BTreeMap::new(),
                last_request_stream: None,
            },
        }
    }
}

impl Http2Conn {
    /// See [`super::upgraded`]: a fresh connection whose stream 1 is
    /// `request`, already sent; `response_framed` false when the server's
    /// first frame boundary is not known.
    pub fn upgraded(
        ev: &SocketData,
        side: Side,
        request: RequestInfo,
        first: Stamp,
        response_framed: bool,
        config: &TrackerConfig,
    ) -> Self {
        let mut conn = Self::new(ev, Start::Fresh { side }, config);
        if !response_framed {
            let responses = 1 - index(request_direction(side));
            conn.readers[responses] = FrameReader::lost();
            conn.streams.blind[responses] = true;
        }
        let request = Heads {
            method: Some(request.method),
            path: Some(request.target),
            authority: request.host,
            user_agent: request.user_agent,
            traceparent: request.traceparent,
            tracestate: request.tracestate,
            request_pseudo: true,
            ..Heads::default()
        };
        conn.streams
            .open
            .insert(1, Stream::new(request, first, first, !response_framed));
        conn.streams.last_request_stream = Some(1);
        conn
    }
}

impl ProtocolConn for Http2Conn {
    fn on_data(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) -> Flow {
        let segment = Segment {
            payload: &ev.payload,
            len: u64::from(ev.total_len),
            at: Stamp {
                ns: ev.timestamp_ns,
                tid: ev.tid,
                trace: None,
            },
        };
        let direction = ev.direction;
        let streams = &mut self.streams;
        self.readers[index(direction)].feed(&segment, ctx.config.max_head_bytes, &mut |event| {
            streams.on_event(direction, event, segment.at, ctx)
        });
        Flow::Continue
    }

    fn needs_all_bytes(&self) -> bool {
        true
    }

    /// Ends every open stream with `unanswered`: the connection closed or
    /// was dropped.
    fn finish(&mut self, unanswered: &Outcome, at_ns: u64, ctx: &mut Ctx<'_>) {
        let at = Stamp {
            ns: at_ns,
            tid: 0,
            trace: None,
        };
        let ending = match unanswered {
            Outcome::Abandoned => Ending::Abandoned,
            _ => Ending::Closed,
        };
        let ids: Vec<u32> = self.streams.open.keys().copied().collect();
        if ending == Ending::Abandoned && !ids.is_empty() {
            ctx.stats.add(Counter::ExchangesAbandoned, ids.len() as u64);
        }
        for id in ids {
            self.streams.complete(id, ending, at, ctx);
        }
    }
}

/// Index of a direction in per-direction arrays.
fn index(direction: Direction) -> usize {
    match direction {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The response's END_STREAM.
    Ended,
    /// RST_STREAM (either side), or refused by GOAWAY.
    Reset { code: Option<u32> },
    /// The connection closed first.
    Closed,
    /// The agent gave up on it (idle, evicted).
    Abandoned,
}

/// A header block being assembled from HEADERS (or PUSH_PROMISE) and
/// CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    /// PUSH_PROMISE blocks are decoded only to keep the table in step.
    promise: bool,
    end_stream: bool,
    bytes: Vec<u8>,
    /// Every byte of the block so far was captured.
    complete: bool,
    first: Stamp,
}

/// The fields of a header block the agent keeps. Never `authorization`,
/// `cookie` or `set-cookie`.
#[derive(Debug, Default)]
struct Heads {
    method: Option<CompactString>,
    path: Option<CompactString>,
    authority: Option<CompactString>,
    user_agent: Option<CompactString>,
    traceparent: Option<CompactString>,
    tracestate: Option<CompactString>,
    /// `:scheme` or any other request pseudo-header was seen.
    request_pseudo: bool,
    status: Option<u16>,
    grpc_content_type: bool,
    grpc_status: Option<u32>,
    grpc_timeout_ns: Option<u64>,
    /// Fields that could not be decoded.
    unknown: usize,
}

impl Heads {
    fn from_fields(fields: Vec<Field>) -> Self {
        let mut heads = Self::default();
        for field in fields {
            let Field::Known { name, value } = field else {
                heads.unknown += 1;
                continue;
            };
            let text = || crate::protocols::lossy_text(&value);
            match &name[..] {
                b":method" => heads.method = Some(text()),
                b":path" => heads.path = Some(text()),
                b":authority" => heads.authority = Some(text()),
                b"host" => {
                    heads.authority.get_or_insert_with(text);
                }
                b":scheme" | b":protocol" => heads.request_pseudo = true,
                b":status" => {
                    heads.status = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                }
                b"user-agent" => heads.user_agent = Some(text()),
                b"traceparent" => heads.traceparent = Some(text()),
                b"tracestate" => heads.tracestate = Some(text()),
                b"content-type" => heads.grpc_content_type = grpc::is_grpc_content_type(&value),
                b"grpc-status" => heads.grpc_status = grpc::parse_status(&value),
                b"grpc-timeout" => heads.grpc_timeout_ns = grpc::parse_timeout(&value),
                _ => {}
            }
        }
        heads
    }

    fn is_request(&self) -> bool {
        self.method.is_some() || self.path.is_some() || self.request_pseudo
    }
}

/// A stream whose request was seen.
#[derive(Debug)]
struct Stream {
    request: Heads,
    /// When the request headers came.
    first: Stamp,
    /// The last frame of the stream, either way.
    last: Stamp,
    /// The last response frame.
    last_response: Option<Stamp>,
    /// A final response head arrived (or its DATA did, the head missed).
    responded: bool,
    /// Frame boundaries were lost in a direction while the stream was
    /// open: its response or reset may have gone by unseen.
    blind: bool,
    /// The final `:status`, if decoded.
    status: Option<u16>,
    grpc_response: bool,
    grpc_status: Option<u32>,
}

impl Stream {
    /// A stream whose request headers came at `first`, its last frame at
    /// `last`.
    fn new(request: Heads, first: Stamp, last: Stamp, blind: bool) -> Self {
        Self {
            request,
            first,
            last,
            last_response: None,
            responded: false,
            blind,
            status: None,
            grpc_response: false,
            grpc_status: None,
        }
    }
}

/// Everything but the frame readers, so that their events can change it.
#[derive(Debug)]
struct Streams {
    pid: u32,
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
    /// Plaintext from the OpenSSL probes.
    tls: bool,
    /// The process's side, once known.
    side: Option<Side>,
    /// HPACK decoders, by [`index`] of the direction they decode.
    decoders: [hpack::Decoder; 2],
    /// Directions whose frame boundaries are not known now.
    blind: [bool; 2],
    /// Header blocks waiting for CONTINUATION frames, by direction.
    blocks: [Option<PendingBlock>; 2],
    /// Open streams by id: ids grow, so the first is the oldest.
    open: BTreeMap<u32, Stream>,
    /// The highest stream id the client opened, as far as seen.
    last_request_stream: Option<u32>,
}

impl Streams {
    fn on_event(
        &mut self,
        direction: Direction,
        event: ReaderEvent<'_>,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        match event {
            ReaderEvent::Frame {
                header,
                payload,
                complete,
            } => self.on_frame(direction, header, payload, complete, at, ctx),
            ReaderEvent::Lost { why } => {
                match &why {
                    Some(error) => Loss::ParseFailed {
                        cookie: self.cookie,
                        error,
                    },
                    None => Loss::FramingLost {
                        cookie: self.cookie,
                    },
                }
                .record(ctx.stats);
                // A header block in progress lost its continuation.
                if let Some(block) = self.blocks[index(direction)].take() {
                    self.finish_block(direction, block, false, at, ctx);
                }
                self.degrade(direction, "frames not captured", ctx.stats);
                self.blind[index(direction)] = true;
                for stream in self.open.values_mut() {
                    stream.blind = true;
                }
            }
            ReaderEvent::Resynced => {
                debug!(
                    cookie = self.cookie,
                    ?direction,
                    "HTTP/2 frames found again"
                );
                self.blind[index(direction)] = false;
            }
        }
    }

    fn on_frame(
        &mut self,
        direction: Direction,
        header: FrameHeader,
        payload: &[u8],
        complete: bool,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        let slot = index(direction);
        if header.kind != FrameType::Continuation
            && let Some(block) = self.blocks[slot].take()
        {
            // The block's CONTINUATION frames were not seen.
            self.finish_block(direction, block, false, at, ctx);
        }
        match header.kind {
            FrameType::Headers | FrameType::PushPromise => {
                let range = match http2::fragment_range(&header, payload.first().copied()) {
                    Ok(range) => range,
                    Err(error) => {
                        self.failed(direction, &error, ctx.stats);
                        return;
                    }
                };
                let end = payload.len().min(range.end as usize);
                let block = PendingBlock {
                    stream_id: header.stream_id,
                    promise: header.kind == FrameType::PushPromise,
                    end_stream: header.ends_stream(),
                    bytes: payload
                        .get(range.start as usize..end)
                        .unwrap_or_default()
                        .to_vec(),
                    // Padding that was not captured does not matter.
                    complete: complete || payload.len() >= range.end as usize,
                    first: at,
                };
                self.continue_block(direction, block, header, at, ctx);
            }
            FrameType::Continuation => match self.blocks[slot].take() {
                Some(mut block) if block.stream_id == header.stream_id => {
                    let room = ctx.config.max_head_bytes.saturating_sub(block.bytes.len());
                    if block.complete {
                        block
                            .bytes
                            .extend_from_slice(&payload[..payload.len().min(room)]);
                        block.complete = complete && payload.len() <= room;
                    }
                    self.continue_block(direction, block, header, at, ctx);
                }
                other => {
                    // A CONTINUATION of a block that was not seen.
                    if let Some(block) = other {
                        self.finish_block(direction, block, false, at, ctx);
                    }
                    self.degrade(direction, "CONTINUATION without HEADERS", ctx.stats);
                }
            },
            FrameType::Data => self.on_data_frame(direction, header, at, ctx),
            FrameType::RstStream => {
                let code = if complete {
                    http2::rst_stream_code(payload)
                } else {
                    None
                };
                if self.open.contains_key(&header.stream_id) {
                    self.complete(header.stream_id, Ending::Reset { code }, at, ctx);
                }
            }
            FrameType::GoAway => {
                // A server's GOAWAY: streams above its last were not processed.
                if let Some(side) = self.side
                    && direction != request_direction(side)
                    && let Some((last, _)) = complete.then(|| http2::goaway(payload)).flatten()
                {
                    let refused: Vec<u32> =
                        self.open.range(last + 1..).map(|(&id, _)| id).collect();
                    for id in refused {
                        let code = Some(http2::REFUSED_STREAM);
                        self.complete(id, Ending::Reset { code }, at, ctx);
                    }
                }
            }
            _ => {}
        }
    }

    /// Waits for the block's end, or decodes it.
    fn continue_block(
        &mut self,
        direction: Direction,
        block: PendingBlock,
        header: FrameHeader,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        if header.has(flags::END_HEADERS) {
            let complete = block.complete;
            self.finish_block(direction, block, complete, at, ctx);
        } else {
            self.blocks[index(direction)] = Some(block);
        }
    }

    /// Decodes a header block (`complete` false when it was not all
    /// captured) and applies it to its stream.
    fn finish_block(
        &mut self,
        direction: Direction,
        block: PendingBlock,
        complete: bool,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        let is_new_request = !block.promise
            && self
                .side
                .is_some_and(|side| direction == request_direction(side))
            && !self.open.contains_key(&block.stream_id);
        if is_new_request
            && let Some(last) = self.last_request_stream
            && block.stream_id > last.saturating_add(2)
        {
            // Client streams open in order: the requests in between were
            // missed, and their header blocks may have changed the table.
            self.degrade(direction, "stream ids skipped", ctx.stats);
        }
        let decoder = &mut self.decoders[index(direction)];
        let was_whole = decoder.is_whole();
        let decoded = decoder.decode(&block.bytes, complete, ctx.huffman);
        if was_whole && !decoder.is_whole() {
            Loss::TableDegraded {
                cookie: self.cookie,
                why: "header block not captured",
            }
            .record(ctx.stats);
        }
        let heads = match decoded {
            Ok(fields) => Heads::from_fields(fields),
            Err(error) => {
                Loss::HpackFailed {
                    cookie: self.cookie,
                    error: &error,
                }
                .record(ctx.stats);
                // Nothing of a block that disagrees with the table is trusted.
                Heads {
                    unknown: 1,
                    ..Heads::default()
                }
            }
        };
        if block.promise {
            return;
        }
        if self.side.is_none() {
            // A connection caught mid-way: the first block that says what
            // it is places the client.
            self.side = match (heads.is_request(), heads.status, direction) {
                (true, _, Direction::Egress) | (false, Some(_), Direction::Ingress) => {
                    Some(Side::Client)
                }
                (true, _, Direction::Ingress) | (false, Some(_), Direction::Egress) => {
                    Some(Side::Server)
                }
                (false, None, _) => None,
            };
        }
        let Some(side) = self.side else {
            return;
        };
        if direction == request_direction(side) {
            self.on_request_block(block, heads, at, ctx);
        } else {
            self.on_response_block(block, heads, at, ctx);
        }
    }

    fn on_request_block(
        &mut self,
        block: PendingBlock,
        heads: Heads,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        let id = block.stream_id;
        if let Some(stream) = self.open.get_mut(&id) {
            // Request trailers.
            stream.last = at;
            return;
        }
        let stale = self.last_request_stream.is_some_and(|last| id <= last);
        // Even ids are the server's (pushes): no request of the client's.
        if id.is_multiple_of(2) || stale {
            return;
        }
        self.last_request_stream = Some(id);
        if self.open.len() >= ctx.config.max_streams_per_connection.max(1)
            && let Some((&oldest, _)) = self.open.first_key_value()
        {
            ctx.stats.add(Counter::ExchangesAbandoned, 1);
            debug!(cookie = self.cookie, oldest, "too many open HTTP/2 streams");
            self.complete(oldest, Ending::Abandoned, at, ctx);
        }
        let mut first = block.first;
        if self.side == Some(Side::Client)
            && let Some(trace) = ctx.injection.take((self.local, self.remote), id)
        {
            // The ids the kernel put in this request's HEADERS.
            first.trace = Some(trace);
        }
        self.open.insert(
            id,
            Stream::new(heads, first, at, self.blind.contains(&true)),
        );
    }

    fn on_response_block(
        &mut self,
        block: PendingBlock,
        heads: Heads,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        let id = block.stream_id;
        let Some(stream) = self.open.get_mut(&id) else {
            // A stream that started before the agent looked, or one it
            // could not follow.
            return;
        };
        stream.last = at;
        stream.last_response = Some(at);
        if !stream.responded {
            // 1xx heads come before the final one.
            if heads.status.is_some_and(|status| status < 200) {
                return;
            }
            stream.responded = true;
            stream.status = heads.status;
            stream.grpc_response = heads.grpc_content_type;
        }
        if heads.grpc_status.is_some() {
            stream.grpc_status = heads.grpc_status;
        }
        if block.end_stream {
            self.complete(id, Ending::Ended, at, ctx);
        }
    }

    fn on_data_frame(
        &mut self,
        direction: Direction,
        header: FrameHeader,
        at: Stamp,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(side) = self.side else {
            return;
        };
        let Some(stream) = self.open.get_mut(&header.stream_id) else {
            return;
        };
        stream.last = at;
        if direction == request_direction(side) {
            return;
        }
        stream.last_response = Some(at);
        if !stream.responded {
            // The response's HEADERS were missed: so was what they did to
            // the table. The status stays unknown.
            stream.responded = true;
            self.degrade(direction, "response DATA before its HEADERS", ctx.stats);
        }
        if header.ends_stream() {
            self.complete(header.stream_id, Ending::Ended, at, ctx);
        }
    }

    /// Ends a stream and hands on its exchange, if one can be built.
    fn complete(&mut self, id: u32, ending: Ending, at: Stamp, ctx: &mut Ctx<'_>) {
        let (Some(stream), Some(side)) = (self.open.remove(&id), self.side) else {
            return;
        };
        let Stream {
            request,
            first,
            last,
            last_response,
            responded,
            blind,
            status,
            grpc_response,
            grpc_status,
        } = stream;
        let outcome = match (responded, status, ending) {
            (true, Some(status), _) => Outcome::Response { status },
            (true, None, _) => {
                Loss::Unresolved {
                    cookie: self.cookie,
                    stream: id,
                    what: "response status",
                }
                .record(ctx.stats);
                return;
            }
            // The response (or a reset) may have gone by unseen: saying
            // there was none could be false.
            (false, _, _) if blind => {
                Loss::Unresolved {
                    cookie: self.cookie,
                    stream: id,
                    what: "response (frames were lost)",
                }
                .record(ctx.stats);
                return;
            }
            (false, _, Ending::Reset { code }) => Outcome::Reset { code },
            (false, _, Ending::Ended | Ending::Closed) => Outcome::ConnectionClosed,
            (false, _, Ending::Abandoned) => Outcome::Abandoned,
        };
        let Some(method) = request.method else {
            Loss::Unresolved {
                cookie: self.cookie,
                stream: id,
                what: "request method",
            }
            .record(ctx.stats);
            return;
        };
        let end = if ending == Ending::Abandoned {
            last.ns
        } else {
            at.ns.max(last.ns)
        };
        // Without a `grpc-status`, a reset call gets what its client
        // reports for it; a request with fields that did not decode may
        // have had a deadline.
        let reset_status = match (ending, request.grpc_timeout_ns) {
            (Ending::Reset { code: Some(code) }, Some(timeout)) => Some(grpc::status_for_reset(
                code,
                grpc::deadline_passed(end.saturating_sub(first.ns), timeout),
            )),
            (Ending::Reset { code: Some(code) }, None) if request.unknown == 0 => {
                Some(grpc::status_for_reset(code, false))
            }
            _ => None,
        };
        let is_grpc = request.grpc_content_type || grpc_response || grpc_status.is_some();
        let request = RequestInfo {
            method,
            target: request.path.unwrap_or_default(),
            version: HttpVersion::Http2,
            host: request.authority,
            user_agent: request.user_agent,
            traceparent: request.traceparent,
            tracestate: request.tracestate,
        };
        let detail = if is_grpc {
            let rpc = RpcInfo {
                method: grpc::split_path(&request.target).map(|(service, method)| RpcMethod {
                    service: service.to_owned(),
                    method: method.to_owned(),
                }),
                status_code: grpc_status.or(reset_status),
            };
            Detail::Grpc { request, rpc }
        } else {
            Detail::Http(request)
        };
        ctx.out.push(Call {
            conn: ConnInfo {
                pid: self.pid,
                socket_cookie: self.cookie,
                local: self.local,
                remote: self.remote,
                side,
                tls: self.tls,
            },
            detail,
            outcome,
            start_ns: first.ns,
            end_ns: end.max(first.ns),
            request_tid: first.tid,
            response_tid: last_response.map(|stamp| stamp.tid),
            // Only a request that came over HTTP/1.1 before an upgrade has
            // the kernel's span identity.
            trace: first.trace,
        });
    }

    /// Bytes of `direction` may have been missed: its table is forgotten.
    fn degrade(&mut self, direction: Direction, why: &'static str, stats: &Stats) {
        if self.decoders[index(direction)].forget() {
            Loss::TableDegraded {
                cookie: self.cookie,
                why,
            }
            .record(stats);
        }
    }

    fn failed(&mut self, direction: Direction, error: &Http2Error, stats: &Stats) {
        Loss::ParseFailed {
            cookie: self.cookie,
            error,
        }
        .record(stats);
        self.degrade(direction, "bad header frame", stats);
    }
}

/// What an HTTP/2 connection loses, each logged and counted in one place.
enum Loss<'a> {
    /// Frames that break the protocol's rules.
    ParseFailed { cookie: u64, error: &'a Http2Error },
    /// A header block that does not decode.
    HpackFailed {
        cookie: u64,
        error: &'a hpack::HpackError,
    },
    /// Frame boundaries lost to bytes that were not captured.
    FramingLost { cookie: u64 },
    /// A decoder stopped trusting its table.
    TableDegraded { cookie: u64, why: &'static str },
    /// A stream whose exchange cannot be built without guessing.
    Unresolved {
        cookie: u64,
        stream: u32,
        what: &'static str,
    },
}

impl Loss<'_> {
    fn record(self, stats: &Stats) {
        match self {
            Self::ParseFailed { cookie, error } => {
                debug!(cookie, %error, "HTTP/2 frame parse failed");
                stats.add(Counter::ParseFailedHttp2, 1);
            }
            Self::HpackFailed { cookie, error } => {
                debug!(cookie, %error, "HTTP/2 header block did not decode");
                stats.add(Counter::ParseFailedHttp2, 1);
            }
            Self::FramingLost { cookie } => {
                debug!(cookie, "HTTP/2 frame boundaries lost");
                stats.add(Counter::Http2FramingLost, 1);
            }
            Self::TableDegraded { cookie, why } => {
                debug!(cookie, why, "HTTP/2 header table degraded");
                stats.add(Counter::Http2TableDegraded, 1);
            }
            Self::Unresolved {
                cookie,
                stream,
                what,
            } => {
                debug!(cookie, stream, what, "HTTP/2 stream dropped: not decoded");
                stats.add(Counter::Http2StreamsUnresolved, 1);
            }
        }
    }
}
