//! Span building: a call record and its protocol slice's description
//! (`crate::protocols::describe`) become an OpenTelemetry span, with
//! kernel timestamps converted to Unix time and trace context.

pub mod assemble;
pub mod clock;
pub mod trace_context;
pub mod unlinked;
