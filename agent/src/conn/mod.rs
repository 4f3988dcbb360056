//! Connection tracking: from the bytes each syscall moved on a TCP socket
//! to request/response [`exchange::HttpExchange`]s. [`tracker`] keeps the
//! per-connection state, `stream` walks one direction's messages, and the
//! protocol parsers in [`crate::protocols`] say what the bytes mean.

pub mod exchange;
mod stream;
pub mod tracker;
