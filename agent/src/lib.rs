//! Sonde agent library: the stages of the pipeline, wired by [`pipeline`].
//! `main.rs` is only the command line.

pub mod check;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod export;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod probes;
pub mod protocols;
pub mod sampling;
pub mod spans;
pub mod telemetry;
#[cfg(test)]
mod test_support;
