//! Helpers for Sonde's end-to-end tests: running the real agent
//! ([`agent`]), the real programs it instruments ([`apps`]), a real OTLP
//! receiver that records what the agent exports ([`otlp_receiver`]), chains
//! of services for trace-context tests ([`chain`]), and a
//! real Prometheus server that scrapes it ([`prometheus`]), and for
//! Kubernetes a stand-in API server ([`kube_api`]) and pod-like cgroups
//! ([`pod_cgroup`]); Go programs are built by [`go`].

pub mod agent;
pub mod apps;
pub mod chain;
pub mod db_servers;
pub mod go;
pub mod grpc_suite;
pub mod kube_api;
pub mod otlp_receiver;
pub mod pod_cgroup;
pub mod prometheus;
pub mod tls_ca;

pub use otlp_receiver::{
    Failure, NumberKind, OtlpReceiver, Protocol, ReceivedHistogram, ReceivedNumber,
    ReceivedRequest, ReceivedSpan, hex, spans_of, the_span,
};
