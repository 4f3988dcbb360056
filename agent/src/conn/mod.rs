//! Connection tracking: from the bytes each syscall moved on a TCP socket
//! to request/response [`exchange::HttpExchange`]s. [`tracker`] keeps the
//! per-connection state, `stream` walks one direction's HTTP/1 messages,
//! `http2` follows an HTTP/2 connection's frames and streams, and the
//! protocol parsers in [`crate::protocols`] say what the bytes mean.

pub mod exchange;
mod http2;
mod stream;
pub mod tracker;
