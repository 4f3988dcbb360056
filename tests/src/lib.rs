//! Helpers for Sonde's end-to-end tests: a real OTLP receiver that records
//! what the agent exports, over gRPC and HTTP.

pub mod otlp_receiver;

pub use otlp_receiver::{Failure, OtlpReceiver, Protocol, ReceivedRequest, ReceivedSpan, hex};
