//! Application protocol parsers. Each module is a pure API over byte slices
//! (no I/O, no globals, no connection state): the connection tracker in
//! [`crate::conn`] owns the state and asks these modules what the bytes it
//! saw mean.

pub mod grpc;
pub mod hpack;
pub mod http1;
pub mod http2;
