//! gRPC, carried by the HTTP/2 slice (`super::http2` records a
//! [`crate::model::call::Detail::Grpc`] call when the content type says
//! gRPC): [`parse`] reads gRPC's header values, `describe` gives the span
//! and measurement of a gRPC call.

mod describe;
pub mod parse;

pub use describe::{RpcConventions, describe};
