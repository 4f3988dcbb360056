//! The HTTP/2 slice (and gRPC, which rides on it): [`parse`] is the pure
//! frame parser, [`hpack`] the header decoder, `conn` follows one
//! connection's frames and streams and produces
//! [`crate::model::call::Detail::Http`] records, or
//! [`crate::model::call::Detail::Grpc`] ones for gRPC calls (see
//! [`super::grpc`]).

mod conn;
pub mod hpack;
pub mod parse;

use crate::{
    model::call::{RequestInfo, Side},
    probes::decode::{Direction, SocketData},
    protocols::{Ctx, ProtocolConn, Stamp, TrackerConfig, request_direction},
};

/// Claims a connection whose first payload is the client preface.
pub fn detect_preface(
    ev: &SocketData,
    side: Option<Side>,
    config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    if !parse::starts_with_preface(&ev.payload) {
        return None;
    }
    let side = match side {
        Some(side) if ev.direction == request_direction(side) => side,
        // The preface comes from the client only.
        Some(_) => return None,
        None => match ev.direction {
            Direction::Egress => Side::Client,
            Direction::Ingress => Side::Server,
        },
    };
    Some(Box::new(conn::Http2Conn::new(
        ev,
        conn::Start::Fresh { side },
        config,
    )))
}

/// Follows a connection that HTTP/1.1 switched to h2c by `Upgrade` in `ev`
/// (RFC 7540 §3.2): `request`, whose bytes first moved at `first`, is stream
/// 1; the client's preface comes next, the server's frames start right after
/// the `101` head, at `rest` in `ev` (`None`: not captured, so the
/// response direction's frame boundaries are unknown until found again).
pub fn upgraded(
    ev: &SocketData,
    side: Side,
    request: RequestInfo,
    first: Stamp,
    rest: Option<u64>,
    ctx: &mut Ctx<'_>,
) -> Box<dyn ProtocolConn> {
    let mut conn = conn::Http2Conn::upgraded(ev, side, request, first, rest.is_some(), ctx.config);
    if let Some(rest) = rest
        && let Some(left) = u64::from(ev.total_len).checked_sub(rest).filter(|&n| n > 0)
    {
        let captured = usize::try_from(rest).map_or(ev.payload.len(), |r| r.min(ev.payload.len()));
        let tail = SocketData {
            payload: ev.payload.slice(captured..),
            total_len: left as u32,
            trace: None,
            ..ev.clone()
        };
        conn.on_data(&tail, ctx);
    }
    Box::new(conn)
}

/// Claims a connection whose first payload reads as HTTP/2 frames: a
/// server's first SETTINGS when the kernel saw the connection open, or a
/// connection caught mid-way.
pub fn detect_frames(
    ev: &SocketData,
    side: Option<Side>,
    config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    let start = match side {
        // The client speaks first (the preface), so frames first seen in
        // the request direction are not a fresh connection's.
        Some(side) if ev.direction == request_direction(side) => return None,
        Some(side) => conn::Start::Fresh { side },
        None => conn::Start::MidConnection {
            direction: ev.direction,
        },
    };
    parse::starts_with_frames(&ev.payload, u64::from(ev.total_len))
        .then(|| Box::new(conn::Http2Conn::new(ev, start, config)) as Box<dyn ProtocolConn>)
}
