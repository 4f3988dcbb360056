//! The Redis slice (RESP2 and RESP3 clients): [`conn`] is the pure
//! reader and pairing, tested on recorded redis-py sessions; this module
//! claims connections and plugs it into the tracker.

pub mod conn;

use conn::RedisConn;

use crate::{
    model::call::Side,
    probes::decode::SocketData,
    protocols::{
        ProtocolConn, TrackerConfig,
        db::{DbConn, client_sent},
    },
};

/// Claims a client connection whose bytes start a command (the tracker
/// then feeds it the same bytes).
pub fn detect(
    ev: &SocketData,
    side: Option<Side>,
    _config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    (client_sent(ev, side) && conn::looks_like_command(&ev.payload))
        .then(|| DbConn::boxed(ev, RedisConn::default()))
}

crate::protocols::db::db_protocol!(RedisConn);
