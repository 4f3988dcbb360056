//! Helpers for Sonde's end-to-end tests: running the real agent
//! ([`agent`]), the real programs it instruments ([`apps`]), and a real
//! OTLP receiver that records what the agent exports ([`otlp_receiver`]).

pub mod agent;
pub mod apps;
pub mod otlp_receiver;

pub use otlp_receiver::{Failure, OtlpReceiver, Protocol, ReceivedRequest, ReceivedSpan, hex};
