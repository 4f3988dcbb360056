//! RED metrics (rate, errors, duration) from every finished request, with
//! bounded cardinality: routes (`crate::model::route`) keep raw paths out of the
//! attributes, the registry ([`red`]) keeps a per-service series budget,
//! and the histograms leave as OTLP metrics ([`otlp`]) and on a Prometheus
//! endpoint ([`prometheus`]) that also shows the agent's own counters.
//!
//! [`MetricsStage::start`] builds all of it from the configuration; the
//! span-building stage records the measurement a protocol slice derived
//! from each call record (`crate::model::measure`) through
//! [`MetricsStage::red`]: metrics never read span attributes.

pub mod otlp;
pub mod prometheus;
pub mod red;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ExportConfig, MetricsConfig};
use crate::export::otlp::{ConfigError, OtlpConfig, OtlpOverrides, Signal};
use crate::model::route::{RouteError, Routes};
use crate::model::span::Resource;
use crate::telemetry::Stats;
use otlp::{AgentTelemetry, ExportSchedule, MetricSources, run_metrics_exporter};
use prometheus::{PrometheusEndpoint, PrometheusError};
use red::{RedError, RedMetrics};

/// The Prometheus port when none is configured (the OpenTelemetry
/// Prometheus exporter's default).
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9464;

/// What can stop the metrics side from starting.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Bad buckets or cardinality limit.
    #[error("metrics settings")]
    Red(#[from] RedError),
    /// Bad route or ignore pattern.
    #[error("metrics routes")]
    Routes(#[from] RouteError),
    /// The configured Prometheus port could not be bound.
    #[error("metrics endpoint")]
    Prometheus(#[from] PrometheusError),
    /// Bad OTLP metrics export settings.
    #[error("OTLP metrics export settings")]
    Export(#[from] ConfigError),
}

/// The running metrics side.
pub struct MetricsStage {
    /// Route patterns, heuristic and ignore globs, for spans and metrics.
    pub routes: Arc<Routes>,
    /// Where spans are recorded; `None` when RED metrics are disabled.
    pub red: Option<Arc<RedMetrics>>,
    prometheus: Option<JoinHandle<()>>,
    exporter: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
}

impl MetricsStage {
    /// Builds the registry and starts the Prometheus endpoint and the OTLP
    /// metrics exporter as configured (the exporter only when an OTLP
    /// endpoint is set, as for spans; it carries the agent's own telemetry,
    /// under `agent_resource`, even with RED metrics off). Call it before
    /// anything is counted in `stats`: the agent's cumulative sums start
    /// here.
    pub async fn start(
        config: &MetricsConfig,
        export: &ExportConfig,
        stats: Arc<Stats>,
        agent_resource: Resource,
    ) -> Result<Self, MetricsError> {
        Self::start_with(config, export, stats, agent_resource, |key| {
            std::env::var(key).ok()
        })
        .await
    }

    async fn start_with(
        config: &MetricsConfig,
        export: &ExportConfig,
        stats: Arc<Stats>,
        agent_resource: Resource,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, MetricsError> {
        let start_unix_ns = red::unix_now_ns();
        let routes = Arc::new(Routes::new(&config.routes, &config.ignore)?);
        let red = if config.enabled {
            Some(Arc::new(RedMetrics::new(
                &config.buckets,
                config.cardinality_limit,
                Arc::clone(&stats),
            )?))
        } else {
            None
        };
        let prometheus = bind_prometheus(
            config.prometheus_address,
            config.prometheus_port,
            red.clone(),
            Arc::clone(&stats),
        )
        .await?
        .map(|endpoint| {
            let address = endpoint.local_addr();
            tracing::info!(?address, "serving Prometheus metrics on /metrics");
            tokio::spawn(endpoint.serve())
        });
        let overrides = OtlpOverrides {
            endpoint: export.otlp_endpoint.clone(),
            protocol: export.otlp_protocol.clone(),
        };
        let exporter = if OtlpConfig::endpoint_is_set_for(Signal::Metrics, &overrides, &lookup) {
            let mut otlp = OtlpConfig::from_lookup_for(Signal::Metrics, &overrides, &lookup)?;
            crate::export::apply_file_settings(export, Signal::Metrics, &mut otlp);
            let schedule = ExportSchedule {
                interval: Duration::from_secs(config.export_interval_secs),
                temporality: config.temporality,
            };
            let sources = MetricSources {
                red: red.clone(),
                agent: AgentTelemetry {
                    stats: Arc::clone(&stats),
                    resource: agent_resource,
                    start_unix_ns,
                },
            };
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(run_metrics_exporter(
                sources, otlp, schedule, stats, stopped,
            ));
            Some((task, stop))
        } else {
            None
        };
        Ok(Self {
            routes,
            red,
            prometheus,
            exporter,
        })
    }

    /// Sends the last OTLP export (within the exporter's shutdown timeout)
    /// and closes the endpoint. Call after the last span was recorded.
    pub async fn stop(self) {
        if let Some((task, stop)) = self.exporter {
            // The exporter also stops if it finds the sender dropped.
            let _ = stop.send(());
            if let Err(error) = task.await
                && error.is_panic()
            {
                tracing::warn!(%error, "the metrics exporter panicked");
            }
        }
        if let Some(prometheus) = self.prometheus {
            prometheus.abort();
        }
    }
}

/// `None`: port 0 (off). Unset: the default port, where a port already in
/// use (another agent, another exporter) only costs a warning; an
/// explicitly configured port must be bound.
async fn bind_prometheus(
    ip: IpAddr,
    port: Option<u16>,
    red: Option<Arc<RedMetrics>>,
    stats: Arc<Stats>,
) -> Result<Option<PrometheusEndpoint>, PrometheusError> {
    let address = |port| SocketAddr::new(ip, port);
    match port {
        Some(0) => Ok(None),
        Some(port) => PrometheusEndpoint::bind(address(port), red, stats)
            .await
            .map(Some),
        None => {
            match PrometheusEndpoint::bind(address(DEFAULT_PROMETHEUS_PORT), red, stats).await {
                Ok(endpoint) => Ok(Some(endpoint)),
                Err(error) => {
                    tracing::warn!(
                        error = %crate::model::error::ErrorChain(&error),
                        "no Prometheus endpoint: the default port is taken; set metrics.prometheus_port"
                    );
                    Ok(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(config: &MetricsConfig, endpoint: Option<&str>) -> MetricsStage {
        let export = ExportConfig {
            otlp_endpoint: endpoint.map(str::to_owned),
            ..ExportConfig::default()
        };
        let agent = Resource {
            key: "agent".into(),
            service_name: "sonde".into(),
            attributes: Vec::new(),
        };
        MetricsStage::start_with(config, &export, Arc::default(), agent, |_| None)
            .await
            .unwrap_or_else(|error| panic!("{config:?}, endpoint {endpoint:?}: {error}"))
    }

    #[tokio::test]
    async fn stages_follow_the_settings() {
        let endpoint = Some("http://127.0.0.1:1");
        let config = MetricsConfig {
            prometheus_port: Some(0),
            ..MetricsConfig::default()
        };
        let stage = start(&config, endpoint).await;
        assert!(stage.red.is_some());
        assert!(stage.exporter.is_some(), "an OTLP endpoint is set");
        assert!(stage.prometheus.is_none(), "port 0 is off");
        stage.stop().await;

        let disabled = MetricsConfig {
            enabled: false,
            ..config.clone()
        };
        let stage = start(&disabled, endpoint).await;
        assert!(stage.red.is_none());
        assert!(
            stage.exporter.is_some(),
            "the agent's own metrics are exported without RED metrics"
        );
        stage.stop().await;

        let no_endpoint = start(&config, None).await;
        assert!(
            no_endpoint.exporter.is_none(),
            "no OTLP endpoint, no export"
        );
        no_endpoint.stop().await;
    }

    #[tokio::test]
    async fn only_an_explicit_port_must_be_free() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let explicit = bind_prometheus(loopback, Some(port), None, Arc::default()).await;
        assert!(explicit.is_err());
        let free = bind_prometheus(loopback, Some(0), None, Arc::default())
            .await
            .unwrap();
        assert!(free.is_none());
    }

    #[tokio::test]
    async fn the_endpoint_listens_on_the_configured_address_only() {
        let port = {
            let probe = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
            probe.local_addr().unwrap().port()
        };
        let ip = IpAddr::from([127, 0, 0, 2]);
        let endpoint = bind_prometheus(ip, Some(port), None, Arc::default())
            .await
            .unwrap()
            .expect("an explicit port is served");
        assert_eq!(endpoint.local_addr(), Some(SocketAddr::new(ip, port)));
        let serving = tokio::spawn(endpoint.serve());
        assert!(tokio::net::TcpStream::connect((ip, port)).await.is_ok());
        let elsewhere = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(elsewhere.is_err(), "reachable on 127.0.0.1: {elsewhere:?}");
        serving.abort();
    }
}
