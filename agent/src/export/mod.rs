//! Where finished spans go: the OTLP exporter ([`otlp`]), the terminal
//! printer ([`print`]), or both through a fan-out. [`Sinks`] picks from the
//! export settings and runs them on the `spans_to_export` channel.

mod fan_out;
pub mod otlp;
pub mod print;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use fan_out::{FanOutput, fan_out};

use crate::config::ExportConfig;
use crate::model::span::SpanBatch;
use crate::telemetry::{Counter, Stats};
use otlp::{ConfigError, DiskQueueConfig, OtlpConfig, OtlpOverrides, Signal, run_exporter};

/// Fan-out channel sizes (in batches of spans) when both sinks run. The
/// exporter drains its channel into its own queue at once, so it needs
/// little; the printer gets room for a burst while the terminal catches up.
const FAN_OUT_TO_EXPORTER: usize = 64;
const FAN_OUT_TO_PRINTER: usize = 256;

/// The sinks chosen by the export settings.
#[derive(Debug)]
pub struct Sinks {
    otlp: Option<OtlpConfig>,
    print: bool,
    stats: Arc<Stats>,
}

impl Sinks {
    /// OTLP export when an endpoint is set (configuration or
    /// `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`); printing when asked, or by
    /// default when there is no endpoint.
    pub fn new(config: &ExportConfig, stats: Arc<Stats>) -> Result<Self, ConfigError> {
        Self::from_lookup(config, stats, |key| std::env::var(key).ok())
    }

    fn from_lookup(
        config: &ExportConfig,
        stats: Arc<Stats>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let overrides = OtlpOverrides {
            endpoint: config.otlp_endpoint.clone(),
            protocol: config.otlp_protocol.clone(),
        };
        let otlp = if OtlpConfig::endpoint_is_set(&overrides, &lookup) {
            let mut otlp = OtlpConfig::from_lookup(&overrides, &lookup)?;
            apply_file_settings(config, Signal::Traces, &mut otlp);
            Some(otlp)
        } else {
            None
        };
        let print = config.print.unwrap_or(otlp.is_none());
        Ok(Self { otlp, print, stats })
    }

    /// Runs until `spans_to_export` closes and every sink has finished
    /// (the exporter flushes within its shutdown deadline).
    pub async fn run(self, spans_to_export: mpsc::Receiver<SpanBatch>) {
        let Self { otlp, print, stats } = self;
        match (otlp, print) {
            (Some(config), false) => run_exporter(spans_to_export, config, stats).await,
            (None, true) => print_to_stdout(spans_to_export).await,
            (Some(config), true) => {
                let (exporter_tx, exporter_rx) = mpsc::channel(FAN_OUT_TO_EXPORTER);
                let (printer_tx, printer_rx) = mpsc::channel(FAN_OUT_TO_PRINTER);
                let outputs = vec![
                    FanOutput {
                        tx: exporter_tx,
                        when_full: Counter::SpansDroppedQueueFull,
                    },
                    // The terminal view is a sink like the exporter: a span
                    // it cannot keep up with is counted the same way.
                    FanOutput {
                        tx: printer_tx,
                        when_full: Counter::SpansDroppedQueueFull,
                    },
                ];
                tokio::join!(
                    fan_out(spans_to_export, outputs, Arc::clone(&stats)),
                    run_exporter(exporter_rx, config, stats),
                    print_to_stdout(printer_rx),
                );
            }
            (None, false) => {
                tracing::warn!("no OTLP endpoint is set and printing is off: spans are discarded");
                let mut spans_to_export = spans_to_export;
                while spans_to_export.recv().await.is_some() {}
            }
        }
    }
}

/// The persistent queue's bound per signal when `export.queue_max_bytes`
/// is unset: minutes of spans at thousands a second.
const DEFAULT_QUEUE_MAX_BYTES: u64 = 64 << 20;

/// The configuration file's queue and retry settings, on top of what the
/// environment gave, for either signal.
pub fn apply_file_settings(config: &ExportConfig, signal: Signal, otlp: &mut OtlpConfig) {
    otlp.disk_queue = config.queue_dir.as_ref().map(|dir| DiskQueueConfig {
        dir: dir.join(signal.queue_dir_name()),
        max_bytes: config.queue_max_bytes.unwrap_or(DEFAULT_QUEUE_MAX_BYTES),
    });
    if let Some(bytes) = config.max_queue_bytes {
        otlp.batch.max_queue_bytes = bytes;
    }
    if let Some(requests) = config.max_in_flight {
        otlp.batch.max_in_flight = requests;
    }
    let retry = &config.retry;
    let settings = [
        (retry.initial_interval_secs, &mut otlp.retry.initial_backoff),
        (retry.max_interval_secs, &mut otlp.retry.max_backoff),
        (retry.max_elapsed_secs, &mut otlp.retry.max_elapsed),
    ];
    for (secs, field) in settings {
        if let Some(secs) = secs {
            *field = Duration::from_secs(secs);
        }
    }
}

/// The printer on a blocking thread, since terminal writes can block.
async fn print_to_stdout(spans: mpsc::Receiver<SpanBatch>) {
    let colour = print::use_colour(&io::stdout());
    let printer =
        tokio::task::spawn_blocking(move || print::run_printer(spans, io::stdout(), colour));
    match printer.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "terminal span view stopped"),
        Err(error) => tracing::warn!(%error, "terminal span view panicked"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::RetrySettings;

    fn sinks(print: Option<bool>, endpoint_env: Option<&str>) -> (bool, bool) {
        let config = ExportConfig {
            print,
            ..ExportConfig::default()
        };
        let endpoint_env = endpoint_env.map(str::to_owned);
        let lookup = |key: &str| {
            (key == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .then(|| endpoint_env.clone())
                .flatten()
        };
        match Sinks::from_lookup(&config, Arc::default(), lookup) {
            Ok(sinks) => (sinks.otlp.is_some(), sinks.print),
            Err(error) => panic!("print {print:?}, endpoint {endpoint_env:?}: {error}"),
        }
    }

    #[test]
    fn sinks_follow_the_settings() {
        let endpoint = Some("http://collector:4318");
        // (print setting, endpoint) -> (export, print)
        assert_eq!(sinks(None, None), (false, true));
        assert_eq!(sinks(None, endpoint), (true, false));
        assert_eq!(sinks(Some(true), endpoint), (true, true));
        assert_eq!(sinks(Some(false), None), (false, false));
    }

    #[test]
    fn the_queue_byte_bound_comes_from_the_config_file() {
        let bound = |max_queue_bytes| {
            let config = ExportConfig {
                otlp_endpoint: Some("http://collector:4318".into()),
                max_queue_bytes,
                ..ExportConfig::default()
            };
            match Sinks::from_lookup(&config, Arc::default(), |_| None) {
                Ok(sinks) => sinks.otlp.map(|otlp| otlp.batch.max_queue_bytes),
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(bound(Some(4096)), Some(4096));
        assert_eq!(bound(None), Some(8 << 20), "the default");
    }

    #[test]
    fn each_signal_gets_its_own_queue_directory() {
        let queue = |queue_dir: Option<&str>, signal| {
            let config = ExportConfig {
                queue_dir: queue_dir.map(PathBuf::from),
                queue_max_bytes: Some(4096),
                ..ExportConfig::default()
            };
            let mut otlp = match OtlpConfig::from_lookup(&OtlpOverrides::default(), |_| None) {
                Ok(otlp) => otlp,
                Err(error) => panic!("{error}"),
            };
            apply_file_settings(&config, signal, &mut otlp);
            otlp.disk_queue
        };
        assert_eq!(queue(None, Signal::Traces), None);
        assert_eq!(
            queue(Some("/var/lib/sonde/queue"), Signal::Metrics),
            Some(DiskQueueConfig {
                dir: PathBuf::from("/var/lib/sonde/queue/metrics"),
                max_bytes: 4096,
            })
        );
        assert_eq!(
            queue(Some("/q"), Signal::Traces).map(|queue| queue.dir),
            Some(PathBuf::from("/q/traces"))
        );
    }

    #[test]
    fn retry_settings_come_from_the_config_file() {
        let retry = |settings: RetrySettings| {
            let config = ExportConfig {
                otlp_endpoint: Some("http://collector:4318".into()),
                retry: settings,
                max_in_flight: Some(1),
                ..ExportConfig::default()
            };
            match Sinks::from_lookup(&config, Arc::default(), |_| None) {
                Ok(Sinks {
                    otlp: Some(otlp), ..
                }) => {
                    assert_eq!(otlp.batch.max_in_flight, 1);
                    otlp.retry
                }
                other => panic!("{other:?}"),
            }
        };
        let defaults = retry(RetrySettings::default());
        assert_eq!(
            (
                defaults.initial_backoff,
                defaults.max_backoff,
                defaults.max_elapsed
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300)
            ),
            "the OpenTelemetry Collector's defaults"
        );
        let set = retry(RetrySettings {
            initial_interval_secs: Some(1),
            max_interval_secs: Some(2),
            max_elapsed_secs: Some(60),
        });
        assert_eq!(
            (set.initial_backoff, set.max_backoff, set.max_elapsed),
            (
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(60)
            )
        );
    }

    #[test]
    fn bad_export_settings_are_reported() {
        let config = ExportConfig {
            otlp_endpoint: Some("http://collector:4317".into()),
            otlp_protocol: Some("thrift".into()),
            ..ExportConfig::default()
        };
        let sinks = Sinks::from_lookup(&config, Arc::default(), |_| None);
        assert!(
            matches!(
                sinks,
                Err(ConfigError::Unsupported {
                    setting: "export.otlp_protocol",
                    ..
                })
            ),
            "{sinks:?}"
        );
    }
}
