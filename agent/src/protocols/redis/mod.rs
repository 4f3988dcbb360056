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
        db::{Chunk, DbConn, DbEvent, DbProtocol, client_sent},
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

impl DbProtocol for RedisConn {
    fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        RedisConn::on_request(self, chunk, out);
    }
    fn on_reply(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        RedisConn::on_reply(self, chunk, out);
    }
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<DbEvent>) {
        RedisConn::on_close(self, ts_ns, out);
    }
}
