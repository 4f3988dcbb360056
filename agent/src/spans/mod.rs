//! Span building: exchanges from the connection tracker become OpenTelemetry
//! HTTP or gRPC spans with semantic-convention names and attributes, kernel
//! timestamps converted to Unix time, and trace context.

pub mod clock;
pub mod grpc;
pub mod http;
pub mod model;
pub mod trace_context;
