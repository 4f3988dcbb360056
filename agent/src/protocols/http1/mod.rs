//! The HTTP/1.x slice: [`parse`] is the pure parser (heads, body framing,
//! message-start detection, chunked bodies), `stream` walks one direction's
//! messages, `conn` pairs requests with responses on one connection and
//! produces [`crate::model::call::Detail::Http`] records, described by
//! [`super::http`].

mod conn;
pub mod parse;
mod stream;

use crate::{
    model::call::Side,
    probes::decode::{Direction, SocketData},
    protocols::{ProtocolConn, TrackerConfig, request_direction},
};

/// Claims a connection whose first payload starts an HTTP/1 request or
/// response. With a known side these are the connection's first bytes, so
/// only the message that side starts with counts.
pub fn detect(
    ev: &SocketData,
    side: Option<Side>,
    _config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    let bytes = &ev.payload[..];
    let side = match side {
        Some(side) if ev.direction == request_direction(side) => {
            parse::looks_like_request(bytes).then_some(side)?
        }
        Some(side) => parse::looks_like_response(bytes).then_some(side)?,
        None => {
            let (requester, responder) = match ev.direction {
                Direction::Egress => (Side::Client, Side::Server),
                Direction::Ingress => (Side::Server, Side::Client),
            };
            if parse::looks_like_request(bytes) {
                requester
            } else if parse::looks_like_response(bytes) {
                responder
            } else {
                return None;
            }
        }
    };
    Some(Box::new(conn::HttpConn::new(ev, side)))
}
