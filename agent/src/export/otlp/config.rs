//! Exporter settings from the standard environment variables
//! (`OTEL_EXPORTER_OTLP_*`, with the signal's `_TRACES_` or `_METRICS_`
//! variants taking precedence, and the batch span processor's
//! `OTEL_BSP_*`), with the agent's own configuration on top. Parsing is a pure function over a key -> value
//! lookup, so it is tested without touching the process environment.
//!
//! Everything is validated here, once: building the transports from an
//! [`OtlpConfig`] cannot fail.

use std::num::{NonZeroU64, NonZeroUsize, ParseIntError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};
use hyper::http::uri::InvalidUri;

use super::disk_queue::DiskQueueConfig;
use super::tls::{TlsFiles, client_config};

/// Errors in the export settings. They name the variable (or configuration
/// field) that holds the bad value. Header values are never printed: they
/// often carry API keys.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that parses but is not one this exporter supports.
    #[error("{setting}={value} is not supported (expected {expected})")]
    Unsupported {
        /// Variable or configuration field.
        setting: &'static str,
        /// The value found.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// An endpoint that is not a URL.
    #[error("{setting}={value} is not a valid URL")]
    InvalidEndpoint {
        /// Variable or configuration field.
        setting: &'static str,
        /// The value found.
        value: String,
        /// Cause.
        #[source]
        source: InvalidUri,
    },
    /// A number (count or milliseconds) that does not parse or is zero.
    #[error("{setting}={value} is not a positive integer")]
    InvalidNumber {
        /// Variable.
        setting: &'static str,
        /// The value found.
        value: String,
        /// Cause.
        #[source]
        source: ParseIntError,
    },
    /// A header list entry without `=`, or with bad percent-encoding.
    #[error("{setting}: entry {position} is not a percent-encoded key=value pair")]
    MalformedHeader {
        /// Variable.
        setting: &'static str,
        /// 1-based position of the entry in the comma-separated list.
        position: usize,
    },
    /// A header name that HTTP does not allow.
    #[error("{setting}: invalid header name {name:?}")]
    InvalidHeaderName {
        /// Variable.
        setting: &'static str,
        /// The decoded name.
        name: String,
        /// Cause.
        #[source]
        source: InvalidHeaderName,
    },
    /// A header value that HTTP does not allow (e.g. a control character).
    #[error("{setting}: invalid value for header {name}")]
    InvalidHeaderValue {
        /// Variable.
        setting: &'static str,
        /// The header's name.
        name: String,
        /// Cause.
        #[source]
        source: InvalidHeaderValue,
    },
    /// A TLS file that cannot be read.
    #[error("{setting}={path}: cannot read it")]
    TlsFile {
        /// Variable.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file without the PEM content its variable asks for.
    #[error("{setting}={path}: {reason}")]
    TlsPem {
        /// Variable.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// TLS settings that do not fit together, or no trusted roots.
    #[error("TLS to the OTLP endpoint: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// The batch size exceeds the queue, so a full batch could never form.
    #[error(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is larger than OTEL_BSP_MAX_QUEUE_SIZE={queue}"
    )]
    BatchLargerThanQueue {
        /// Batch size.
        batch: usize,
        /// Queue size.
        queue: usize,
    },
}

/// What is exported: picks the signal-specific variables and URL path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Spans (`OTEL_EXPORTER_OTLP_TRACES_*`, `/v1/traces`).
    Traces,
    /// Metrics (`OTEL_EXPORTER_OTLP_METRICS_*`, `/v1/metrics`).
    Metrics,
}

impl Signal {
    /// Its directory under `export.queue_dir`.
    pub fn queue_dir_name(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Metrics => "metrics",
        }
    }

    /// The OTLP/HTTP path appended to a base endpoint.
    fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "v1/traces",
            Self::Metrics => "v1/metrics",
        }
    }
}

/// OTLP transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies (default port 4318); the
    /// specification's default.
    HttpProtobuf,
}

/// Request body compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip (gRPC message compression, or HTTP `Content-Encoding: gzip`).
    Gzip,
}

/// When a batch is sent and how many spans may wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Send as soon as this many spans are queued (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_batch_size: usize,
    /// Send at the latest this long after the oldest queued span arrived
    /// (`OTEL_BSP_SCHEDULE_DELAY`).
    pub max_delay: Duration,
    /// Spans waiting beyond this are dropped, oldest first
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Spans waiting beyond this many bytes (their OTLP encoded size) are dropped, oldest first (`export.max_queue_bytes`): long
    /// URLs and many attributes make spans of very different sizes, and
    /// memory follows bytes, not spans. The metrics exporter bounds its
    /// queue of unsent exports by the same number of encoded bytes.
    pub max_queue_bytes: usize,
    /// Export requests in flight at once (`export.max_in_flight`): a slow
    /// round trip does not cap throughput. Above 1, batches may reach the
    /// collector out of order.
    pub max_in_flight: usize,
}

/// Retries after retryable failures: exponential backoff with jitter, and
/// an age past which queued data is dropped instead of sent. The defaults
/// are the OpenTelemetry Collector exporters' `retry_on_failure` ones; the
/// OTLP exporter specification defines no environment variables for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Wait before the first retry (before jitter).
    pub initial_backoff: Duration,
    /// Upper bound of the wait between attempts (before jitter).
    pub max_backoff: Duration,
    /// Queued data older than this (since it entered the queue) is
    /// dropped unsent.
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// Everything the OTLP exporter needs, validated.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// For gRPC, the collector's URL; for HTTP, the full signal URL
    /// (`.../v1/traces`, `.../v1/metrics`).
    pub endpoint: Uri,
    /// gRPC or HTTP/protobuf.
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata), values marked sensitive so
    /// that `Debug` does not print them.
    pub headers: HeaderMap,
    /// Limit for one export attempt, connection included.
    pub timeout: Duration,
    /// Body compression.
    pub compression: Compression,
    /// Batching (spans only).
    pub batch: BatchConfig,
    /// Retries.
    pub retry: RetryConfig,
    /// TLS client settings, for an `https://` endpoint only.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// On shutdown, queued spans are sent within this time, then counted
    /// as lost (or, with a persistent queue, left on disk).
    pub shutdown_timeout: Duration,
    /// The persistent queue (`export.queue_dir`), if any.
    pub disk_queue: Option<DiskQueueConfig>,
}

/// Settings from the agent's configuration file or command line; each one
/// that is set wins over the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpOverrides {
    /// Base endpoint, with the meaning of `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (the signal's path, e.g. `/v1/traces`, is appended for HTTP). Wins
    /// over both endpoint variables.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
}

/// A variable with signal-specific forms that win over the generic one.
struct SignalVar {
    traces: &'static str,
    metrics: &'static str,
    generic: &'static str,
}

impl SignalVar {
    fn specific(&self, signal: Signal) -> &'static str {
        match signal {
            Signal::Traces => self.traces,
            Signal::Metrics => self.metrics,
        }
    }
}

const ENDPOINT: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    generic: "OTEL_EXPORTER_OTLP_ENDPOINT",
};
const PROTOCOL: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    generic: "OTEL_EXPORTER_OTLP_PROTOCOL",
};
const HEADERS: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    generic: "OTEL_EXPORTER_OTLP_HEADERS",
};
const TIMEOUT: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    generic: "OTEL_EXPORTER_OTLP_TIMEOUT",
};
const COMPRESSION: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    generic: "OTEL_EXPORTER_OTLP_COMPRESSION",
};
const CERTIFICATE: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    generic: "OTEL_EXPORTER_OTLP_CERTIFICATE",
};
const CLIENT_CERTIFICATE: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    generic: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
};
const CLIENT_KEY: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    generic: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
};
const INSECURE: SignalVar = SignalVar {
    traces: "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    metrics: "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
    generic: "OTEL_EXPORTER_OTLP_INSECURE",
};
const BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
const BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
const BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";

const OVERRIDE_ENDPOINT: &str = "export.otlp_endpoint";
const OVERRIDE_PROTOCOL: &str = "export.otlp_protocol";

// Defaults from the OTLP exporter and batch span processor specifications.
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BATCH: BatchConfig = BatchConfig {
    max_batch_size: 512,
    max_delay: Duration::from_secs(5),
    max_queue_size: 2048,
    // A full queue of 2,048 typical spans (300-600 bytes) stays far below;
    // the bound bites when spans carry long URLs or the span bound is
    // raised.
    max_queue_bytes: 8 << 20,
    // Enough to hide a round trip of a few milliseconds at thousands of
    // spans a second; the OpenTelemetry Collector's default is 10.
    max_in_flight: 4,
};
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A value and the variable or field it came from.
pub(super) struct Setting {
    pub(super) name: &'static str,
    pub(super) value: String,
}

/// The lookup, with the specification's rule that an empty value is unset,
/// for one signal.
struct Env<F> {
    lookup: F,
    signal: Signal,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, name: &'static str) -> Option<Setting> {
        let value = (self.lookup)(name)?.trim().to_owned();
        (!value.is_empty()).then_some(Setting { name, value })
    }

    fn signal(&self, var: &SignalVar) -> Option<Setting> {
        self.get(var.specific(self.signal))
            .or_else(|| self.get(var.generic))
    }
}

impl OtlpConfig {
    /// Reads the process environment for spans.
    pub fn from_env(overrides: &OtlpOverrides) -> Result<Self, ConfigError> {
        Self::from_lookup(overrides, |key| std::env::var(key).ok())
    }

    /// Whether a traces endpoint is set; see [`Self::endpoint_is_set_for`].
    pub fn endpoint_is_set(
        overrides: &OtlpOverrides,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> bool {
        Self::endpoint_is_set_for(Signal::Traces, overrides, lookup)
    }

    /// Whether an endpoint is set at all for `signal` (override, or the
    /// signal's or the generic endpoint variable). The agent exports only
    /// then: the default endpoint is for SDKs next to a collector, and an
    /// agent started to look at the terminal should not retry against a
    /// collector nobody runs.
    pub fn endpoint_is_set_for(
        signal: Signal,
        overrides: &OtlpOverrides,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> bool {
        override_or(&overrides.endpoint, OVERRIDE_ENDPOINT, || {
            Env { lookup, signal }.signal(&ENDPOINT)
        })
        .is_some()
    }

    /// Reads the span export variables through `lookup` (`None` or empty:
    /// unset).
    pub fn from_lookup(
        overrides: &OtlpOverrides,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup_for(Signal::Traces, overrides, lookup)
    }

    /// Reads the variables of `signal` through `lookup` (`None` or empty:
    /// unset).
    pub fn from_lookup_for(
        signal: Signal,
        overrides: &OtlpOverrides,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = Env { lookup, signal };
        let protocol = override_or(&overrides.protocol, OVERRIDE_PROTOCOL, || {
            env.signal(&PROTOCOL)
        })
        .map(|setting| parse_protocol(&setting))
        .transpose()?
        .unwrap_or(Protocol::HttpProtobuf);
        let batch = BatchConfig {
            max_batch_size: env
                .get(BSP_MAX_EXPORT_BATCH_SIZE)
                .map(|setting| parse_count(&setting))
                .transpose()?
                .unwrap_or(DEFAULT_BATCH.max_batch_size),
            max_delay: env
                .get(BSP_SCHEDULE_DELAY)
                .map(|setting| parse_millis(&setting))
                .transpose()?
                .unwrap_or(DEFAULT_BATCH.max_delay),
            max_queue_size: env
                .get(BSP_MAX_QUEUE_SIZE)
                .map(|setting| parse_count(&setting))
                .transpose()?
                .unwrap_or(DEFAULT_BATCH.max_queue_size),
            max_queue_bytes: DEFAULT_BATCH.max_queue_bytes,
            max_in_flight: DEFAULT_BATCH.max_in_flight,
        };
        if batch.max_batch_size > batch.max_queue_size {
            return Err(ConfigError::BatchLargerThanQueue {
                batch: batch.max_batch_size,
                queue: batch.max_queue_size,
            });
        }
        let endpoint = resolve_endpoint(overrides, &env, protocol)?;
        let tls = if endpoint.scheme_str() == Some("https") {
            Some(client_config(TlsFiles {
                ca: env.signal(&CERTIFICATE),
                client_certificate: env.signal(&CLIENT_CERTIFICATE),
                client_key: env.signal(&CLIENT_KEY),
            })?)
        } else {
            None
        };
        Ok(Self {
            endpoint,
            protocol,
            headers: env
                .signal(&HEADERS)
                .map(|setting| parse_headers(&setting))
                .transpose()?
                .unwrap_or_default(),
            timeout: env
                .signal(&TIMEOUT)
                .map(|setting| parse_millis(&setting))
                .transpose()?
                .unwrap_or(DEFAULT_TIMEOUT),
            compression: env
                .signal(&COMPRESSION)
                .map(|setting| parse_compression(&setting))
                .transpose()?
                .unwrap_or(Compression::None),
            batch,
            retry: RetryConfig::default(),
            tls,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            disk_queue: None,
        })
    }
}

fn override_or(
    value: &Option<String>,
    name: &'static str,
    otherwise: impl FnOnce() -> Option<Setting>,
) -> Option<Setting> {
    match value.as_deref().map(str::trim) {
        Some(value) if !value.is_empty() => Some(Setting {
            name,
            value: value.to_owned(),
        }),
        _ => otherwise(),
    }
}

/// The signal's own endpoint variable is used as-is; a base endpoint
/// (generic variable, override or default) gets the signal path appended
/// for HTTP only, as the specification says.
fn resolve_endpoint<F: Fn(&str) -> Option<String>>(
    overrides: &OtlpOverrides,
    env: &Env<F>,
    protocol: Protocol,
) -> Result<Uri, ConfigError> {
    let (setting, is_base) = match override_or(&overrides.endpoint, OVERRIDE_ENDPOINT, || None) {
        Some(setting) => (setting, true),
        None => match env.signal(&ENDPOINT) {
            Some(setting) => {
                let is_base = setting.name == ENDPOINT.generic;
                (setting, is_base)
            }
            None => {
                let value = match protocol {
                    Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                    Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
                };
                let setting = Setting {
                    name: ENDPOINT.generic,
                    value: value.to_owned(),
                };
                (setting, true)
            }
        },
    };
    let mut url = if is_base && protocol == Protocol::HttpProtobuf {
        format!(
            "{}/{}",
            setting.value.trim_end_matches('/'),
            env.signal.http_path()
        )
    } else {
        setting.value.clone()
    };
    // The specification's one use of `_INSECURE`: a gRPC endpoint given
    // without a scheme is secure unless it is set to true.
    if protocol == Protocol::Grpc && !url.contains("://") {
        let insecure = env
            .signal(&INSECURE)
            .is_some_and(|setting| setting.value.eq_ignore_ascii_case("true"));
        url = format!("{}://{url}", if insecure { "http" } else { "https" });
    }
    let uri = url
        .parse::<Uri>()
        .map_err(|source| ConfigError::InvalidEndpoint {
            setting: setting.name,
            value: setting.value.clone(),
            source,
        })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(ConfigError::Unsupported {
            setting: setting.name,
            value: setting.value,
            expected: "an http:// or https:// URL with a host",
        });
    }
    Ok(uri)
}

fn parse_protocol(setting: &Setting) -> Result<Protocol, ConfigError> {
    match setting.value.as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        _ => Err(ConfigError::Unsupported {
            setting: setting.name,
            value: setting.value.clone(),
            expected: "grpc or http/protobuf",
        }),
    }
}

fn parse_compression(setting: &Setting) -> Result<Compression, ConfigError> {
    match setting.value.as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(ConfigError::Unsupported {
            setting: setting.name,
            value: setting.value.clone(),
            expected: "gzip or none",
        }),
    }
}

fn parse_count(setting: &Setting) -> Result<usize, ConfigError> {
    setting
        .value
        .parse::<NonZeroUsize>()
        .map(NonZeroUsize::get)
        .map_err(|source| invalid_number(setting, source))
}

fn parse_millis(setting: &Setting) -> Result<Duration, ConfigError> {
    setting
        .value
        .parse::<NonZeroU64>()
        .map(|millis| Duration::from_millis(millis.get()))
        .map_err(|source| invalid_number(setting, source))
}

fn invalid_number(setting: &Setting, source: ParseIntError) -> ConfigError {
    ConfigError::InvalidNumber {
        setting: setting.name,
        value: setting.value.clone(),
        source,
    }
}

/// `key1=value1,key2=value2`, keys and values percent-encoded (the W3C
/// Baggage format the specification refers to).
fn parse_headers(setting: &Setting) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    for (index, entry) in setting.value.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let malformed = || ConfigError::MalformedHeader {
            setting: setting.name,
            position: index + 1,
        };
        let (key, value) = entry.split_once('=').ok_or_else(malformed)?;
        let key = percent_decode(key.trim()).ok_or_else(malformed)?;
        let value = percent_decode(value.trim()).ok_or_else(malformed)?;
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|source| {
            ConfigError::InvalidHeaderName {
                setting: setting.name,
                name: key.clone(),
                source,
            }
        })?;
        let mut value =
            HeaderValue::from_str(&value).map_err(|source| ConfigError::InvalidHeaderValue {
                setting: setting.name,
                name: key,
                source,
            })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// `None` on a truncated or non-hex escape, or if the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = char::from(*bytes.get(i + 1)?).to_digit(16)?;
            let low = char::from(*bytes.get(i + 2)?).to_digit(16)?;
            decoded.push(u8::try_from(high * 16 + low).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(overrides: &OtlpOverrides, vars: &[(&str, &str)]) -> Result<OtlpConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        OtlpConfig::from_lookup(overrides, |key| vars.get(key).cloned())
    }

    fn config(vars: &[(&str, &str)]) -> OtlpConfig {
        parse(&OtlpOverrides::default(), vars)
            .unwrap_or_else(|error| panic!("config from {vars:?}: {error}"))
    }

    fn error(vars: &[(&str, &str)]) -> String {
        match parse(&OtlpOverrides::default(), vars) {
            Ok(config) => panic!("{vars:?} accepted: {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn defaults_follow_the_specification() {
        let config = config(&[]);
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert_eq!(config.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.compression, Compression::None);
        assert!(config.headers.is_empty());
        assert_eq!(config.batch, DEFAULT_BATCH);
        let grpc = self::config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(grpc.endpoint, "http://localhost:4317/");
    }

    #[test]
    fn endpoint_resolution() {
        // (variables, expected endpoint)
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
                "http://collector:4318/v1/traces",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base/")],
                "http://collector:4318/base/v1/traces",
            ),
            (
                &[(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/custom",
                )],
                "http://collector:4318/custom",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        "http://traces:4318/v1/traces",
                    ),
                ],
                "http://traces:4318/v1/traces",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ],
                "http://collector:4317/",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                ],
                "http://generic:4318/v1/traces",
            ),
        ];
        for (vars, expected) in cases {
            assert_eq!(config(vars).endpoint, *expected, "{vars:?}");
        }
    }

    #[test]
    fn endpoint_is_set_by_either_variable_or_the_override() {
        let set = |overrides: &OtlpOverrides, vars: &[(&str, &str)]| {
            let vars: HashMap<&str, &str> = vars.iter().copied().collect();
            OtlpConfig::endpoint_is_set(overrides, |key| vars.get(key).map(|v| (*v).to_owned()))
        };
        let none = OtlpOverrides::default();
        assert!(!set(&none, &[]));
        assert!(!set(&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(!set(&none, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]));
        assert!(set(
            &none,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]
        ));
        assert!(set(
            &none,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318")]
        ));
        let endpoint = OtlpOverrides {
            endpoint: Some("http://c:4318".into()),
            protocol: None,
        };
        assert!(set(&endpoint, &[]));
    }

    #[test]
    fn metrics_use_their_own_variables_and_path() {
        let vars: HashMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "generic=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "metrics=2"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1500"),
        ]
        .into_iter()
        .collect();
        let lookup = |key: &str| vars.get(key).map(|value| (*value).to_owned());
        let metrics =
            OtlpConfig::from_lookup_for(Signal::Metrics, &OtlpOverrides::default(), lookup)
                .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(metrics.protocol, Protocol::HttpProtobuf);
        assert_eq!(metrics.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(metrics.headers.len(), 1);
        assert_eq!(metrics.headers["metrics"], "2");
        assert_eq!(metrics.timeout, Duration::from_millis(1500));
        let traces = OtlpConfig::from_lookup(&OtlpOverrides::default(), lookup)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(traces.protocol, Protocol::Grpc);
        assert_eq!(traces.endpoint, "http://collector:4318/");

        let only_metrics = |key: &str| {
            (key == "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").then(|| "http://m:4318/x".to_owned())
        };
        let none = OtlpOverrides::default();
        assert!(OtlpConfig::endpoint_is_set_for(
            Signal::Metrics,
            &none,
            only_metrics
        ));
        assert!(!OtlpConfig::endpoint_is_set(&none, only_metrics));
        let metrics = OtlpConfig::from_lookup_for(Signal::Metrics, &none, only_metrics)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            metrics.endpoint, "http://m:4318/x",
            "the signal's own URL is used as-is"
        );
    }

    #[test]
    fn traces_protocol_wins_over_generic() {
        let config = config(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]);
        assert_eq!(config.protocol, Protocol::Grpc);
    }

    #[test]
    fn overrides_win_over_environment() {
        let overrides = OtlpOverrides {
            endpoint: Some("http://override:4318".into()),
            protocol: Some("http/protobuf".into()),
        };
        let config = parse(
            &overrides,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4317"),
            ],
        )
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert_eq!(config.endpoint, "http://override:4318/v1/traces");

        let blank = OtlpOverrides {
            endpoint: Some(" ".into()),
            protocol: None,
        };
        let config = parse(
            &blank,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")],
        )
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.endpoint, "http://env:4318/v1/traces");
    }

    #[test]
    fn headers_are_percent_decoded_and_signal_specific_wins() {
        let config = config(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=a%20b%2Cc , X-Tenant = t1,,",
        )]);
        assert_eq!(config.headers.len(), 2);
        assert_eq!(config.headers["api-key"], "a b,c");
        assert_eq!(config.headers["x-tenant"], "t1");
        assert!(config.headers["api-key"].is_sensitive());

        let config = self::config(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "generic=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "traces=2"),
        ]);
        assert_eq!(config.headers.len(), 1);
        assert_eq!(config.headers["traces"], "2");
    }

    #[test]
    fn timeout_compression_and_batch_settings() {
        let config = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1000"),
        ]);
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.compression, Compression::Gzip);
        assert_eq!(
            config.batch,
            BatchConfig {
                max_batch_size: 100,
                max_delay: Duration::from_millis(200),
                max_queue_size: 1000,
                max_queue_bytes: DEFAULT_BATCH.max_queue_bytes,
                max_in_flight: DEFAULT_BATCH.max_in_flight,
            }
        );
    }

    #[test]
    fn invalid_values_name_their_variable() {
        // (variables, text the error must contain)
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")],
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318")],
                "an http:// or https:// URL",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
                    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
                ],
                "OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/ca.pem: cannot read it",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
                    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/hostname"),
                ],
                "OTEL_EXPORTER_OTLP_CERTIFICATE=/etc/hostname: no PEM certificate",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/etc/hostname"),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY is set without its pair",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://bad host")],
                "not a valid URL",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                "OTEL_EXPORTER_OTLP_TIMEOUT=10s",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")],
                "OTEL_EXPORTER_OTLP_TIMEOUT=0",
            ),
            (
                &[("OTEL_BSP_MAX_QUEUE_SIZE", "10")],
                "larger than OTEL_BSP_MAX_QUEUE_SIZE=10",
            ),
            (&[("OTEL_EXPORTER_OTLP_HEADERS", "a=1,novalue")], "entry 2"),
            (&[("OTEL_EXPORTER_OTLP_HEADERS", "a=%zz")], "entry 1"),
            (&[("OTEL_EXPORTER_OTLP_HEADERS", "a=%4")], "entry 1"),
            (
                &[("OTEL_EXPORTER_OTLP_HEADERS", "bad%20name=1")],
                "invalid header name \"bad name\"",
            ),
        ];
        for (vars, expected) in cases {
            let message = error(vars);
            assert!(
                message.contains(expected),
                "{vars:?}: {message:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn https_endpoints_get_tls_and_insecure_applies_to_schemeless_grpc() {
        let https = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")]);
        assert!(https.tls.is_some(), "system roots");
        assert!(config(&[]).tls.is_none());
        let grpc = |insecure: Option<&str>| {
            let mut vars = vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ];
            vars.extend(insecure.map(|value| ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", value)));
            let config = config(&vars);
            (config.endpoint.to_string(), config.tls.is_some())
        };
        assert_eq!(grpc(None), ("https://collector:4317/".to_owned(), true));
        assert_eq!(
            grpc(Some("true")),
            ("http://collector:4317/".to_owned(), false)
        );
        assert_eq!(
            grpc(Some("false")),
            ("https://collector:4317/".to_owned(), true)
        );
    }

    #[test]
    fn header_values_stay_out_of_errors() {
        let message = error(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret%0A")]);
        assert!(message.contains("api-key"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
