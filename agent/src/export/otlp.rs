//! OTLP trace export over gRPC or HTTP/protobuf: a batching exporter task
//! written directly on opentelemetry-proto's generated types, a tonic
//! client and a hyper client.
//!
//! Why not the `opentelemetry-otlp` `SpanExporter`: it exports spans of one
//! SDK, under one `Resource` fixed when the provider is built, with ids and
//! timestamps the SDK generates. This agent speaks for many processes at
//! once, so one batch carries one resource per instrumented process; its
//! ids and timestamps come from the kernel side and must go out unchanged;
//! and every span it drops (full queue, failed export, shutdown) has to be
//! counted in [`crate::telemetry`], where the SDK's batch processor only
//! logs.
//!
//! Start it with [`run_exporter`] on the receiving end of the
//! `spans_to_exporter` channel; closing that channel flushes and stops it.
//!
//! The transports, retries and settings serve any signal: the metrics
//! exporter (`crate::metrics::otlp`) sends through them too.

mod batch;
mod config;
mod convert;
mod disk_queue;
mod events;
mod retry;
mod tls;
mod transport;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use config::{
    BatchConfig, Compression, ConfigError, OtlpConfig, OtlpOverrides, Protocol, RetryConfig, Signal,
};
// For the metrics exporter, which shares the transports and retries.
pub(crate) use convert::{key_value, proto_resource, scope};
pub use disk_queue::DiskQueueConfig;
pub(crate) use disk_queue::{DiskQueue, Entry, QueueMetrics};
pub(crate) use retry::{Backoff, attempt, sleep_until};
pub(crate) use transport::{MetricsExport, ProtocolTransport, SendError};

use crate::model::span::SpanBatch;
use crate::telemetry::{Counter, Gauge, Stats};

/// Exports every span received on `rx` until the channel closes, then sends
/// what is still queued (within `config.shutdown_timeout`) and returns.
///
/// `rx` is read even while a request is in flight, so senders see it full
/// only if this task is starved; beyond `config.batch.max_queue_size`
/// waiting spans, or `config.batch.max_queue_bytes` of them (OTLP
/// encoded size), the oldest are dropped. Retryable failures are
/// retried until the data is older than `config.retry.max_elapsed`. Every
/// span ends up in exactly one of the counters `SpansExported`,
/// `SpansExportFailed` (refused for good), `SpansDroppedQueueFull`,
/// `SpansDroppedExpired` or `SpansDroppedShutdown`.
pub async fn run_exporter(rx: mpsc::Receiver<SpanBatch>, config: OtlpConfig, stats: Arc<Stats>) {
    tracing::info!(
        endpoint = %config.endpoint,
        protocol = ?config.protocol,
        compression = ?config.compression,
        "exporting spans over OTLP"
    );
    let transport = transport::ProtocolTransport::<transport::TraceExport>::new(&config);
    let disk = config
        .disk_queue
        .as_ref()
        .and_then(|queue| open_disk_queue(queue, SPAN_QUEUE, &stats));
    batch::run_batcher(rx, transport, &config, disk, &stats).await;
}

/// The span queue's counters.
pub(crate) const SPAN_QUEUE: QueueMetrics = QueueMetrics {
    items: "spans",
    dropped_full: Counter::SpansDroppedQueueFull,
    dropped_write: Counter::SpansDroppedQueueWrite,
    expired: Counter::SpansDroppedExpired,
    recovered: Counter::SpansRecovered,
    queued_items: Gauge::ExportQueueDiskSpans,
    queued_bytes: Gauge::ExportQueueDiskBytes,
};

/// Opens a signal's disk queue; one that cannot be opened (permissions, a
/// file in the way) leaves the exporter queueing in memory, with an error
/// in the log: the data still goes out while the collector is up.
pub(crate) fn open_disk_queue(
    config: &DiskQueueConfig,
    metrics: QueueMetrics,
    stats: &Stats,
) -> Option<DiskQueue> {
    match DiskQueue::open(config, metrics, stats) {
        Ok(queue) => {
            tracing::info!(
                dir = %config.dir.display(),
                max_bytes = config.max_bytes,
                "export queue on disk"
            );
            Some(queue)
        }
        Err(error) => {
            tracing::error!(
                dir = %config.dir.display(),
                error = %crate::model::error::ErrorChain(&error),
                "export queue directory unusable: {} are queued in memory only",
                metrics.items,
            );
            None
        }
    }
}
