//! The agent's configuration: a YAML file, the command line on top of it,
//! and the standard `OTEL_*` environment variables for export.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::discovery::{SelectorConfig, k8s::KubernetesConfig};
use crate::metrics::red::{DEFAULT_BUCKETS, RedMetrics, Temporality};
use crate::model::route::Routes;
use crate::sampling::{HeadSampler, SamplingConfig};

/// Errors reading the configuration, naming the file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// What is wrong, including the field.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {field}: {reason}")]
    Invalid {
        /// Field path.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Everything `sonde run` needs. Each section has defaults, so an empty file
/// is a valid configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// What to instrument.
    #[serde(default)]
    pub selectors: SelectorConfig,
    /// Pod metadata and pod selectors.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// Kernel capture.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// Connection tracking limits.
    #[serde(default)]
    pub tracking: TrackingConfig,
    /// Span options.
    #[serde(default)]
    pub spans: SpansConfig,
    /// Trace context propagation.
    #[serde(default)]
    pub trace_context: TraceContextConfig,
    /// TLS plaintext capture.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where spans go.
    #[serde(default)]
    pub export: ExportConfig,
    /// RED metrics, routes and the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Head sampling (over `OTEL_TRACES_SAMPLER` / `_ARG`) and the span rate cap.
    #[serde(default)]
    pub sampling: SamplingConfig,
}

/// Kernel capture settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Bytes of each send/receive copied to userspace (max 65536). HTTP/1
    /// heads longer than this are cut: raise it if headers matter past
    /// that. HTTP/2 connections get every byte up to the maximum: their
    /// frames must all be followed.
    pub payload_bytes: u32,
    /// Kernel ring buffer for socket data, bytes (power of two).
    pub ring_buffer_bytes: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            payload_bytes: 1024,
            ring_buffer_bytes: 8 << 20,
        }
    }
}

/// Connection tracker bounds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Connections tracked at once; the least recently used is evicted.
    pub max_connections: usize,
    /// A connection idle this long is dropped; its open request is reported.
    pub idle_timeout_secs: u64,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            idle_timeout_secs: 30,
        }
    }
}

/// Trace context propagation.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TraceContextConfig {
    /// Insert `traceparent` into outgoing plaintext HTTP/1 requests of
    /// selected processes that lack one.
    pub inject: bool,
    /// cgroup v2 directory whose processes get injection (default: the
    /// cgroup2 root, i.e. every selected process).
    pub inject_cgroup: Option<PathBuf>,
    /// Follow the requests of selected Node.js processes through a script
    /// evaluated in them by their inspector (opened on SIGUSR1 and closed
    /// again; removed when the agent stops): exact parents for calls made
    /// on their event loop.
    pub node_inspector: bool,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        Self {
            inject: true,
            inject_cgroup: None,
            node_inspector: true,
        }
    }
}

/// TLS plaintext capture (OpenSSL uprobes).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Attach uprobes to the libssl (OpenSSL 1.1 or 3, shared library) of
    /// selected processes and trace the HTTP inside their TLS connections.
    pub enabled: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// RED metrics settings. Routes and ignore patterns apply to spans too.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record RED metrics (the Prometheus endpoint and the OTLP metrics
    /// export still carry the agent's own counters when this is off).
    pub enabled: bool,
    /// Port of the Prometheus `/metrics` endpoint; 0 turns it off. Unset:
    /// 9464, skipped with a warning if that port is taken.
    pub prometheus_port: Option<u16>,
    /// Address the endpoint listens on. Default 127.0.0.1: the series name
    /// services, routes and peers, so they are not published on every
    /// interface of the host unless asked (`0.0.0.0`, `::`, or the pod IP
    /// as deploy/ does).
    pub prometheus_address: IpAddr,
    /// Seconds between OTLP metrics exports.
    pub export_interval_secs: u64,
    /// OTLP temporality: `cumulative` or `delta`.
    pub temporality: Temporality,
    /// Histogram bucket bounds, seconds, strictly increasing.
    pub buckets: Vec<f64>,
    /// Series per service (instrumented process); new attribute sets past
    /// it go to one overflow series per instrument.
    pub cardinality_limit: usize,
    /// Route patterns such as `/api/users/{id}`, tried in order before the
    /// route heuristic.
    pub routes: Vec<String>,
    /// Glob patterns on the request path (`/health*`): such requests give
    /// neither spans nor metrics.
    pub ignore: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prometheus_port: None,
            prometheus_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            export_interval_secs: 60,
            temporality: Temporality::Cumulative,
            buckets: DEFAULT_BUCKETS.to_vec(),
            cardinality_limit: 200,
            routes: Vec::new(),
            ignore: Vec::new(),
        }
    }
}

/// Span content options.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpansConfig {
    /// Record `url.query` and queries in `url.full` (may hold secrets).
    pub capture_query: bool,
    /// gRPC attribute names: `current` (default), `legacy` (`rpc.system`,
    /// `rpc.service`, `rpc.grpc.status_code`...) or `both`.
    pub rpc_conventions: crate::protocols::grpc::RpcConventions,
    /// Leave `db.query.text` off database spans (it is always sanitized:
    /// literals and arguments replaced by `?`).
    pub omit_db_query_text: bool,
}

/// Export settings; unset OTLP fields fall back to `OTEL_EXPORTER_OTLP_*`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Print spans to the terminal. Default: on when no OTLP endpoint is set.
    pub print: Option<bool>,
    /// OTLP endpoint (overrides `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (overrides `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub otlp_protocol: Option<String>,
    /// Bytes of spans (OTLP encoded size) the export queue holds
    /// before dropping the oldest, on top of `OTEL_BSP_MAX_QUEUE_SIZE`
    /// spans. Default 8 MiB. Also bounds the queue of unsent metrics
    /// exports, in encoded bytes.
    pub max_queue_bytes: Option<usize>,
    /// Span export requests in flight at once. Default 4; 1 keeps spans in
    /// queue order at the collector.
    pub max_in_flight: Option<usize>,
    /// Retries while the collector is unreachable or busy.
    pub retry: RetrySettings,
    /// Directory of the persistent export queue (off when unset): batches
    /// of spans and metrics are written there (under `traces/` and
    /// `metrics/`) before they are sent, and removed once the collector
    /// took them, so an agent restart or a collector outage that outlives
    /// the agent loses nothing that was written. Delivery is at least once.
    pub queue_dir: Option<PathBuf>,
    /// Bytes each signal's queue directory may hold before its oldest
    /// batches are dropped. Default 64 MiB.
    pub queue_max_bytes: Option<u64>,
}

/// Backoff and age limit of the OTLP exporters (the OpenTelemetry
/// Collector's `retry_on_failure`: `initial_interval`, `max_interval`,
/// `max_elapsed_time`). Unset: 5 s, 30 s, 300 s.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Wait after the first failure, seconds (doubles at each failure).
    pub initial_interval_secs: Option<u64>,
    /// Longest wait between attempts, seconds.
    pub max_interval_secs: Option<u64>,
    /// Data queued longer than this is dropped unsent, seconds.
    pub max_elapsed_secs: Option<u64>,
}

impl AgentConfig {
    /// Reads a YAML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|(line, column, message)| ConfigError::Parse {
            path: path.into(),
            line,
            column,
            message,
        })
    }

    /// Parses YAML text; an empty document is the default configuration.
    /// Errors are `(line, column, message)`.
    pub fn from_yaml(text: &str) -> Result<Self, (usize, usize, String)> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            (line, column, e.to_string())
        })
    }

    /// Checks ranges that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let payload = self.capture.payload_bytes;
        if payload == 0 || payload as usize > agent_common::socket_data::MAX_CALL_CAPTURE_BYTES {
            return Err(ConfigError::Invalid {
                field: "capture.payload_bytes",
                reason: format!(
                    "{payload} is not in 1..={}",
                    agent_common::socket_data::MAX_CALL_CAPTURE_BYTES
                ),
            });
        }
        let ring = self.capture.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            return Err(ConfigError::Invalid {
                field: "capture.ring_buffer_bytes",
                reason: format!("{ring} is not a power of two >= 4096"),
            });
        }
        let rules = [
            ("selectors.include", &self.selectors.include),
            ("selectors.exclude", &self.selectors.exclude),
        ];
        for (field, rules) in rules {
            if let Some(index) = rules.iter().position(|rule| rule.is_empty()) {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("rule {index} has no condition (it would match every process)"),
                });
            }
        }
        if self.selectors.uses_pods() && !self.kubernetes.enabled {
            return Err(ConfigError::Invalid {
                field: "kubernetes.enabled",
                reason: "selector rules use pod conditions: set kubernetes.enabled: true".into(),
            });
        }
        if self.export.max_queue_bytes == Some(0) {
            return Err(ConfigError::Invalid {
                field: "export.max_queue_bytes",
                reason: "must be > 0".into(),
            });
        }
        if self.export.queue_max_bytes == Some(0) {
            return Err(ConfigError::Invalid {
                field: "export.queue_max_bytes",
                reason: "must be > 0".into(),
            });
        }
        if self.export.max_in_flight == Some(0) {
            return Err(ConfigError::Invalid {
                field: "export.max_in_flight",
                reason: "must be > 0".into(),
            });
        }
        let retry = &self.export.retry;
        let intervals = [
            (
                "export.retry.initial_interval_secs",
                retry.initial_interval_secs,
            ),
            ("export.retry.max_interval_secs", retry.max_interval_secs),
            ("export.retry.max_elapsed_secs", retry.max_elapsed_secs),
        ];
        if let Some((field, _)) = intervals.iter().find(|(_, value)| *value == Some(0)) {
            return Err(ConfigError::Invalid {
                field,
                reason: "must be > 0".into(),
            });
        }
        if self.tracking.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "tracking.max_connections",
                reason: "must be > 0".into(),
            });
        }
        // The environment's samplers are only warned about, never errors.
        HeadSampler::new(&self.sampling, |_| None).map_err(|error| ConfigError::Invalid {
            field: "sampling",
            reason: error.to_string(),
        })?;
        self.metrics.validate()
    }
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.export_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "metrics.export_interval_secs",
                reason: "must be > 0".into(),
            });
        }
        // The same checks the metrics stage makes when it starts.
        RedMetrics::check_settings(&self.buckets, self.cardinality_limit).map_err(|error| {
            ConfigError::Invalid {
                field: "metrics.buckets / metrics.cardinality_limit",
                reason: error.to_string(),
            }
        })?;
        Routes::new(&self.routes, &self.ignore).map_err(|error| ConfigError::Invalid {
            field: "metrics.routes / metrics.ignore",
            reason: match std::error::Error::source(&error) {
                Some(cause) => format!("{error}: {cause}"),
                None => error.to_string(),
            },
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_default() {
        assert_eq!(AgentConfig::from_yaml("").unwrap(), AgentConfig::default());
        assert!(AgentConfig::default().validate().is_ok());
    }

    #[test]
    fn reads_a_full_file() {
        let config = AgentConfig::from_yaml(
            "selectors:\n  ports: [8080, 9090]\n  executables: ['python3*']\n  pids: [1]\n\
             capture:\n  payload_bytes: 2048\nexport:\n  print: true\n  otlp_endpoint: http://collector:4317\n",
        )
        .unwrap();
        assert_eq!(config.selectors.ports, vec![8080, 9090]);
        assert_eq!(config.selectors.executables, vec!["python3*"]);
        assert_eq!(config.capture.payload_bytes, 2048);
        assert_eq!(
            config.capture.ring_buffer_bytes,
            CaptureConfig::default().ring_buffer_bytes
        );
        assert_eq!(config.export.print, Some(true));
        assert_eq!(
            config.export.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let (line, _, message) =
            AgentConfig::from_yaml("selectors:\n  ports: [80]\n  prots: [81]\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("prots"), "{message}");
        let (line, _, message) =
            AgentConfig::from_yaml("capture:\n  payload_bytes: lots\n").unwrap_err();
        assert_eq!(line, 2);
        // The field path, not only the type mismatch: users fix fields.
        assert!(message.contains("capture.payload_bytes"), "{message}");
        let (line, _, message) =
            AgentConfig::from_yaml("selectors:\n  ports: [80]\nexprot:\n  print: true\n")
                .unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("exprot"), "{message}");
        let mut error = AgentConfig::from_file(Path::new("/nonexistent/sonde.yaml")).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(
            error.to_string().contains("/nonexistent/sonde.yaml"),
            "{error}"
        );
        error = ConfigError::Parse {
            path: "sonde.yaml".into(),
            line: 3,
            column: 3,
            message: "unknown field `prots`".into(),
        };
        assert_eq!(
            error.to_string(),
            "config file sonde.yaml, line 3, column 3: unknown field `prots`"
        );
    }

    #[test]
    fn tls_is_on_unless_turned_off() {
        assert!(AgentConfig::default().tls.enabled);
        let off = AgentConfig::from_yaml("tls:\n  enabled: false\n").unwrap();
        assert!(!off.tls.enabled);
        assert!(AgentConfig::from_yaml("tls:\n  enable: false\n").is_err());
    }

    #[test]
    fn reads_the_metrics_section() {
        let config = AgentConfig::from_yaml(
            "metrics:\n  prometheus_port: 9100\n  prometheus_address: '::'\n  export_interval_secs: 10\n  temporality: delta\n  \
             buckets: [0.1, 1]\n  cardinality_limit: 50\n  routes: ['/api/users/{id}']\n  ignore: ['/health*']\n",
        )
        .unwrap();
        let metrics = &config.metrics;
        assert!(metrics.enabled);
        assert_eq!(metrics.prometheus_port, Some(9100));
        assert_eq!(metrics.prometheus_address, IpAddr::from([0u16; 8]));
        assert_eq!(
            AgentConfig::default().metrics.prometheus_address,
            IpAddr::from([127, 0, 0, 1]),
            "loopback unless asked"
        );
        assert_eq!(metrics.export_interval_secs, 10);
        assert_eq!(metrics.temporality, Temporality::Delta);
        assert_eq!(metrics.buckets, vec![0.1, 1.0]);
        assert_eq!(metrics.cardinality_limit, 50);
        assert_eq!(metrics.routes, vec!["/api/users/{id}"]);
        assert_eq!(metrics.ignore, vec!["/health*"]);
        config.validate().unwrap();
        assert_eq!(AgentConfig::default().metrics.buckets, DEFAULT_BUCKETS);
    }

    #[test]
    fn rejects_bad_metrics_settings() {
        let invalid = |edit: fn(&mut MetricsConfig)| {
            let mut config = AgentConfig::default();
            edit(&mut config.metrics);
            match config.validate() {
                Err(ConfigError::Invalid { field, reason }) => format!("{field}: {reason}"),
                other => panic!("accepted: {other:?}"),
            }
        };
        assert!(invalid(|m| m.buckets = vec![1.0, 0.5]).contains("strictly increasing"));
        assert!(invalid(|m| m.cardinality_limit = 0).contains("at least 1"));
        assert!(invalid(|m| m.export_interval_secs = 0).contains("export_interval_secs"));
        assert!(invalid(|m| m.routes = vec!["users/{id}".into()]).contains("users/{id}"));
        assert!(invalid(|m| m.ignore = vec!["/a[".into()]).contains("/a["));
        assert!(AgentConfig::from_yaml("metrics:\n  temporality: sometimes\n").is_err());
    }

    #[test]
    fn reads_the_sampling_section() {
        let config = AgentConfig::from_yaml(
            "sampling:\n  sampler: parentbased_traceidratio\n  ratio: 0.1\n  rules:\n\
             \x20 - {service: 'checkout*', ratio: 1.0}\n  max_spans_per_second: 500\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.sampling.sampler,
            Some(crate::sampling::SamplerName::ParentBasedTraceIdRatio)
        );
        assert_eq!(config.sampling.rules[0].service, "checkout*");
        assert_eq!(config.sampling.max_spans_per_second, Some(500));
        assert!(AgentConfig::from_yaml("sampling:\n  sampler: sometimes\n").is_err());
        let bad = AgentConfig::from_yaml("sampling:\n  ratio: 2\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("ratio 2"));
    }

    #[test]
    fn reads_kubernetes_rules_and_checks_them() {
        let config = AgentConfig::from_yaml(
            "kubernetes: {enabled: true, api_url: 'http://127.0.0.1:8001', node_name: node-a}\n\
             selectors:\n  include:\n  - namespaces: [shop]\n    pod_labels:\n      matchExpressions:\n\
             \x20     - {key: tier, operator: In, values: [web]}\n    owners: [{kind: Deployment, name: web}]\n\
             \x20 exclude: [{containers: [istio-proxy]}]\n",
        )
        .unwrap();
        assert!(config.validate().is_ok(), "{config:#?}");
        assert_eq!(config.kubernetes.node_name.as_deref(), Some("node-a"));
        assert_eq!(config.selectors.include[0].namespaces, ["shop"]);
        assert!(!config.selectors.is_empty());

        let mut without_k8s = config.clone();
        without_k8s.kubernetes.enabled = false;
        assert!(matches!(
            without_k8s.validate(),
            Err(ConfigError::Invalid {
                field: "kubernetes.enabled",
                ..
            })
        ));
        let empty_rule = AgentConfig::from_yaml("selectors: {include: [{}]}").unwrap();
        assert!(matches!(
            empty_rule.validate(),
            Err(ConfigError::Invalid {
                field: "selectors.include",
                ..
            })
        ));
        let (line, _, message) = AgentConfig::from_yaml(
            "selectors:\n  include:\n  - pod_labels: {matchExpressions: [{key: a, operator: In}]}\n",
        )
        .unwrap_err();
        assert_eq!(line, 3, "{message}");
    }

    #[test]
    fn rejects_out_of_range_values() {
        let mut config = AgentConfig::default();
        config.capture.payload_bytes = 65_537;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "capture.payload_bytes",
                ..
            })
        ));
        let mut config = AgentConfig::default();
        config.capture.ring_buffer_bytes = 1000;
        assert!(config.validate().is_err());
        let config = AgentConfig::from_yaml("export:\n  max_queue_bytes: 0\n").unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "export.max_queue_bytes",
                ..
            })
        ));
        let config = AgentConfig::from_yaml("export:\n  max_queue_bytes: 1048576\n").unwrap();
        assert_eq!(config.export.max_queue_bytes, Some(1 << 20));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn persistent_queue_settings() {
        let config = AgentConfig::from_yaml(
            "export:\n  queue_dir: /var/lib/sonde/queue\n  queue_max_bytes: 1048576\n",
        )
        .unwrap();
        assert_eq!(
            config.export.queue_dir.as_deref(),
            Some(Path::new("/var/lib/sonde/queue"))
        );
        assert_eq!(config.export.queue_max_bytes, Some(1 << 20));
        assert!(config.validate().is_ok());
        let config = AgentConfig::from_yaml("export:\n  queue_max_bytes: 0\n").unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "export.queue_max_bytes",
                ..
            })
        ));
    }
}
