//! The PostgreSQL slice (frontend/backend protocol v3, client side):
//! [`conn`] is the pure reader and pairing, tested on recorded psycopg and
//! asyncpg sessions; this module claims connections and plugs it into the
//! tracker.

pub mod conn;

use conn::PostgresConn;

use crate::{
    model::call::Side,
    probes::decode::SocketData,
    protocols::{
        ProtocolConn, TrackerConfig,
        db::{DbConn, client_sent},
    },
};

/// Claims a client connection whose first bytes are a startup message
/// (seen from its start); one caught mid-way is not claimed: typed
/// messages alone are too weak a sign.
pub fn detect(
    ev: &SocketData,
    side: Option<Side>,
    _config: &TrackerConfig,
) -> Option<Box<dyn ProtocolConn>> {
    (client_sent(ev, side) && conn::looks_like_startup(&ev.payload))
        .then(|| DbConn::boxed(ev, PostgresConn::new(true)))
}

crate::protocols::db::db_protocol!(PostgresConn);
