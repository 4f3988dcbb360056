//! The MySQL/MariaDB slice (client side): [`conn`] is the pure reader and
//! pairing, tested on a recorded PyMySQL session against MariaDB; this
//! module claims connections and plugs it into the tracker.

pub mod conn;

use conn::MysqlConn;

use crate::{
    model::call::Side,
    probes::decode::{Direction, SocketData},
    protocols::{ProtocolConn, TrackerConfig, db::DbConn},
};

/// Claims a client connection whose first received bytes are a server
/// greeting (the server speaks first; a connection caught mid-way is not
/// claimed).
pub fn detect(
    ev: &SocketData,
    side: Option<Side>,
    _config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    let greeting = ev.direction == Direction::Ingress
        && side != Some(Side::Server)
        && conn::looks_like_greeting(&ev.payload);
    greeting.then(|| DbConn::boxed(ev, MysqlConn::default()))
}

crate::protocols::db::db_protocol!(MysqlConn);
