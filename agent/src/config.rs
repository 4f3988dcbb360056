//! The agent's configuration: a YAML file, the command line on top of it,
//! and the standard `OTEL_*` environment variables for export.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::discovery::SelectorConfig;

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
    /// Kernel capture.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// Connection tracking limits.
    #[serde(default)]
    pub tracking: TrackingConfig,
    /// Span options.
    #[serde(default)]
    pub spans: SpansConfig,
    /// Where spans go.
    #[serde(default)]
    pub export: ExportConfig,
}

/// Kernel capture settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Bytes of each send/receive copied to userspace (max 4096). HTTP heads
    /// longer than this are cut: raise it if headers matter past that.
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

/// Span content options.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpansConfig {
    /// Record `url.query` and queries in `url.full` (may hold secrets).
    pub capture_query: bool,
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
        if payload == 0 || payload as usize > agent_common::socket_data::MAX_CAPTURE_BYTES {
            return Err(ConfigError::Invalid {
                field: "capture.payload_bytes",
                reason: format!(
                    "{payload} is not in 1..={}",
                    agent_common::socket_data::MAX_CAPTURE_BYTES
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
        if self.tracking.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "tracking.max_connections",
                reason: "must be > 0".into(),
            });
        }
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
        assert!(
            message.contains("payload_bytes") || message.contains("invalid type"),
            "{message}"
        );
    }

    #[test]
    fn rejects_out_of_range_values() {
        let mut config = AgentConfig::default();
        config.capture.payload_bytes = 5000;
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
    }
}
