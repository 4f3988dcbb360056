//! Connection tracking: the table of connections ([`tracker`]), each read
//! by the protocol slice (`crate::protocols`) that claimed it, from the
//! bytes each syscall moved on a TCP socket to finished call records
//! (`crate::model::call::Call`).

pub mod tracker;
