//! What can happen to spans in the exporter, one type per event, each
//! counting and logging together so that the counters in
//! [`crate::telemetry`] and the logs always agree.

use std::time::Duration;

use hyper::Uri;

use super::transport::SendError;
use crate::model::error::ErrorChain;
use crate::telemetry::{Counter, Stats};

/// A span pushed out of the full queue (full in spans or in bytes) to make
/// room for a newer one.
pub(super) struct QueueFull {
    /// Spans dropped at once (a whole batch once it has been tried).
    pub(super) spans: u64,
    /// First drop since the queue last had room: worth a warning; the
    /// following ones are only counted.
    pub(super) first: bool,
    pub(super) max_spans: usize,
    pub(super) max_bytes: usize,
}

impl QueueFull {
    pub(super) fn emit(self, stats: &Stats) {
        stats.add(Counter::SpansDroppedQueueFull, self.spans);
        if self.first {
            tracing::warn!(
                max_spans = self.max_spans,
                max_bytes = self.max_bytes,
                "export queue full, dropping the oldest spans (see {})",
                Counter::SpansDroppedQueueFull.name()
            );
        }
    }
}

/// One request failed; the batch may still go through on a retry.
pub(super) struct AttemptFailed<'a> {
    pub(super) endpoint: &'a Uri,
    pub(super) error: &'a SendError,
    pub(super) retry_in: Option<Duration>,
    /// First failure since the last success: worth a warning (a wrong CA
    /// or a collector down shows at the default log level); the retries
    /// that follow are debug lines.
    pub(super) first: bool,
}

impl AttemptFailed<'_> {
    pub(super) fn emit(self, stats: &Stats) {
        stats.add(Counter::ExportRequestsFailed, 1);
        stats.add(self.error.kind(), 1);
        let Some(retry_in) = self.retry_in else {
            return;
        };
        if self.first {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %ErrorChain(self.error),
                ?retry_in,
                "OTLP export attempt failed, retrying (data stays queued until it ages out)"
            );
        } else {
            tracing::debug!(
                endpoint = %self.endpoint,
                error = %ErrorChain(self.error),
                ?retry_in,
                "OTLP export attempt failed, retrying"
            );
        }
    }
}

/// The collector took the batch, possibly rejecting part of it.
pub(super) struct BatchExported<'a> {
    pub(super) spans: u64,
    /// `partial_success.rejected_spans`, as sent by the collector.
    pub(super) rejected: i64,
    pub(super) message: &'a str,
}

impl BatchExported<'_> {
    pub(super) fn emit(self, stats: &Stats) {
        // A negative or oversized count from a confused server must not make
        // the counters lie the other way.
        let rejected = u64::try_from(self.rejected).unwrap_or(0).min(self.spans);
        stats.add(Counter::SpansExported, self.spans - rejected);
        if rejected > 0 {
            stats.add(Counter::SpansExportFailed, rejected);
        }
        if rejected > 0 || !self.message.is_empty() {
            tracing::warn!(
                rejected,
                message = self.message,
                "OTLP collector rejected part of a batch"
            );
        }
    }
}

/// Spans that waited in the queue longer than the retry budget
/// (`RetryConfig::max_elapsed`).
pub(super) struct Expired {
    pub(super) spans: u64,
    pub(super) max_age: Duration,
}

impl Expired {
    pub(super) fn emit(self, stats: &Stats) {
        stats.add(Counter::SpansDroppedExpired, self.spans);
        tracing::warn!(
            spans = self.spans,
            max_age = ?self.max_age,
            "OTLP endpoint unreachable for too long, dropping the oldest spans (see {})",
            Counter::SpansDroppedExpired.name()
        );
    }
}

/// The batch is given up on: the endpoint refused it for good.
pub(super) struct BatchLost<'a> {
    pub(super) endpoint: &'a Uri,
    pub(super) spans: u64,
    pub(super) error: &'a SendError,
}

impl BatchLost<'_> {
    pub(super) fn emit(self, stats: &Stats) {
        stats.add(Counter::SpansExportFailed, self.spans);
        tracing::warn!(
            endpoint = %self.endpoint,
            spans = self.spans,
            error = %ErrorChain(self.error),
            "OTLP export failed, spans lost"
        );
    }
}

/// Shutdown reached its deadline with spans still unsent.
pub(super) struct ShutdownTimedOut {
    pub(super) spans: u64,
    pub(super) timeout: Duration,
}

impl ShutdownTimedOut {
    pub(super) fn emit(self, stats: &Stats) {
        stats.add(Counter::SpansDroppedShutdown, self.spans);
        tracing::warn!(
            spans = self.spans,
            timeout = ?self.timeout,
            "OTLP exporter shut down before sending every span"
        );
    }
}
