//! What the running kernel lets the agent do, learnt by loading the
//! programs (never from the version number): which hooks capture socket
//! data, and which optional features are on. An optional feature whose
//! programs the kernel refuses is turned off alone, with the reason logged
//! and its `sonde_feature_off_*` gauge at 1; the rest traces on. `sonde
//! check` prints the same report.

use std::fmt;

use tracing::{info, warn};

use crate::telemetry::{Gauge, Stats};

/// An optional feature: the agent traces without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// TLS plaintext from OpenSSL (uprobes).
    Tls,
    /// `traceparent` inserted into outgoing HTTP/1 requests (sock_ops +
    /// sk_msg on a cgroup v2).
    Injection,
    /// `traceparent` inserted into outgoing HTTP/2 (h2c) requests: an
    /// sk_msg program that injection's tail-calls, so that HTTP/1 injection
    /// runs without it.
    Http2Injection,
    /// Span identity assigned in the kernel from received request heads
    /// (the header scan program).
    KernelContext,
    /// Go programs' `crypto/tls` plaintext and goroutine-keyed context
    /// (uprobes; loaded with TLS).
    Go,
    /// CPython's context-keyed parents for asyncio (uprobes with attach
    /// cookies; loaded with TLS).
    PythonContext,
    /// Node.js request-keyed parents (a uprobe on libuv's `uv_os_getenv`
    /// and a script evaluated through each process's inspector; loaded
    /// with TLS).
    NodeContext,
}

impl Feature {
    /// Every feature, in report order.
    pub const ALL: [Feature; 7] = [
        Feature::Tls,
        Feature::Injection,
        Feature::Http2Injection,
        Feature::KernelContext,
        Feature::Go,
        Feature::PythonContext,
        Feature::NodeContext,
    ];

    /// Short name, as in the report and the logs.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Tls => "TLS",
            Feature::Injection => "injection",
            Feature::Http2Injection => "HTTP/2 injection",
            Feature::KernelContext => "in-kernel context",
            Feature::Go => "Go",
            Feature::PythonContext => "Python context",
            Feature::NodeContext => "Node context",
        }
    }

    /// What is lost while the feature is off.
    pub fn loss(self) -> &'static str {
        match self {
            Feature::Tls => "traffic inside OpenSSL TLS connections is not traced",
            Feature::Injection => "outgoing HTTP/1 and HTTP/2 requests carry no traceparent",
            Feature::Http2Injection => {
                "outgoing HTTP/2 requests carry no traceparent (HTTP/1 injection is unaffected; \
                 sonde_traceparent_h2_unavailable counts the HTTP/2 messages sent unchanged)"
            }
            Feature::KernelContext => {
                "server spans start new traces: incoming traceparent headers are not joined, \
                 and outgoing calls are not parented in the kernel"
            }
            Feature::Go => {
                "Go programs: HTTPS on crypto/tls is not traced, and their calls are not \
                 parented by goroutine (socket-level spans only)"
            }
            Feature::PythonContext => {
                "Python asyncio services: calls are parented by thread only (unlinked and \
                 counted while the loop has several requests in flight)"
            }
            Feature::NodeContext => {
                "Node.js services: calls are parented by thread only (unlinked and counted \
                 while the loop has several requests in flight)"
            }
        }
    }

    /// The gauge that is 1 while the kernel keeps the feature off.
    fn gauge(self) -> Gauge {
        match self {
            Feature::Tls => Gauge::FeatureOffTls,
            Feature::Injection => Gauge::FeatureOffInjection,
            Feature::Http2Injection => Gauge::FeatureOffHttp2Injection,
            Feature::KernelContext => Gauge::FeatureOffKernelContext,
            Feature::Go => Gauge::FeatureOffGo,
            Feature::PythonContext => Gauge::FeatureOffPythonContext,
            Feature::NodeContext => Gauge::FeatureOffNodeContext,
        }
    }
}

/// Whether a feature runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureState {
    /// Loaded and attached.
    On,
    /// Turned off by the configuration.
    Disabled,
    /// Wanted, but this node cannot run it: why.
    Off(String),
}

/// The hooks that capture socket data on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureHooks {
    /// tp_btf `sock:sock_send_length` / `sock:sock_recv_length` (Linux >= 6.2).
    SockLengthTracepoints,
    /// fexit `tcp_sendmsg` / `tcp_recvmsg` (where those tracepoints do not exist).
    TcpFexit,
    /// The same with the portable programs, for kernels that refuse the
    /// others (before 5.17: no `bpf_loop`, no socket cookies in tracing
    /// programs, the older `tcp_recvmsg`).
    TcpFexitPortable,
}

impl fmt::Display for CaptureHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaptureHooks::SockLengthTracepoints => {
                "tracepoints sock:sock_send_length and sock:sock_recv_length"
            }
            CaptureHooks::TcpFexit => "fexit on tcp_sendmsg and tcp_recvmsg",
            CaptureHooks::TcpFexitPortable => {
                "fexit on tcp_sendmsg and tcp_recvmsg (portable programs: bounded copy loop, \
                 connections identified by socket address)"
            }
        })
    }
}

/// What the agent runs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureReport {
    /// The capture hooks in use.
    pub capture: CaptureHooks,
    states: [FeatureState; Feature::ALL.len()],
}

impl FeatureReport {
    /// Capture on `capture`, every feature on until told otherwise.
    pub fn new(capture: CaptureHooks) -> Self {
        Self {
            capture,
            states: [const { FeatureState::On }; Feature::ALL.len()],
        }
    }

    /// Records a feature's state.
    pub fn set(&mut self, feature: Feature, state: FeatureState) {
        self.states[feature as usize] = state;
    }

    /// A feature's state.
    pub fn state(&self, feature: Feature) -> &FeatureState {
        &self.states[feature as usize]
    }

    /// True if some wanted feature is off.
    pub fn degraded(&self) -> bool {
        self.states
            .iter()
            .any(|state| matches!(state, FeatureState::Off(_)))
    }

    /// Sets the `sonde_feature_off_*` gauges.
    pub fn publish(&self, stats: &Stats) {
        for feature in Feature::ALL {
            let off = matches!(self.state(feature), FeatureState::Off(_));
            stats.set_gauge(feature.gauge(), u64::from(off));
        }
    }

    /// Logs the report: one line for capture, a warning per feature off.
    pub fn log(&self) {
        info!(capture = %self.capture, "capture hooks");
        for feature in Feature::ALL {
            match self.state(feature) {
                FeatureState::On => info!(feature = feature.name(), "feature on"),
                FeatureState::Disabled => {
                    info!(
                        feature = feature.name(),
                        "feature disabled by configuration"
                    )
                }
                FeatureState::Off(why) => warn!(
                    feature = feature.name(),
                    reason = %why,
                    "feature off on this kernel: {}; the rest is traced",
                    feature.loss()
                ),
            }
        }
    }
}

impl fmt::Display for FeatureReport {
    /// The report as `sonde check` prints it, one line per item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<18} {}", "capture", self.capture)?;
        for feature in Feature::ALL {
            match self.state(feature) {
                FeatureState::On => writeln!(f, "{:<18} on", feature.name())?,
                FeatureState::Disabled => {
                    writeln!(f, "{:<18} disabled by configuration", feature.name())?
                }
                FeatureState::Off(why) => writeln!(
                    f,
                    "{:<18} OFF: {}\n{:<18}   because: {why}",
                    feature.name(),
                    feature.loss(),
                    ""
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feature_off_degrades_and_sets_its_gauge_only() {
        let stats = Stats::default();
        let mut report = FeatureReport::new(CaptureHooks::SockLengthTracepoints);
        report.set(Feature::Injection, FeatureState::Disabled);
        assert!(!report.degraded(), "disabled by choice is not degraded");
        report.publish(&stats);
        assert_eq!(stats.gauge(Gauge::FeatureOffInjection), 0);

        report.set(
            Feature::Tls,
            FeatureState::Off("loading ssl_write_exit: verifier".into()),
        );
        assert!(report.degraded());
        report.publish(&stats);
        assert_eq!(stats.gauge(Gauge::FeatureOffTls), 1);
        assert_eq!(stats.gauge(Gauge::FeatureOffKernelContext), 0);

        let text = report.to_string();
        assert!(
            text.contains("TLS                OFF: traffic inside OpenSSL TLS"),
            "{text}"
        );
        assert!(
            text.contains("because: loading ssl_write_exit: verifier"),
            "{text}"
        );
        assert!(
            text.contains("injection          disabled by configuration"),
            "{text}"
        );
        assert!(text.contains("in-kernel context  on"), "{text}");
        assert!(text.starts_with("capture            tracepoints sock:sock_send_length"));

        // Back on (a later load): the gauge follows.
        report.set(Feature::Tls, FeatureState::On);
        report.publish(&stats);
        assert_eq!(stats.gauge(Gauge::FeatureOffTls), 0);
    }
}
