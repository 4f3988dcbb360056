//! When the next export attempt may start, shared by every signal:
//! exponential backoff with jitter after a retryable failure, the server's
//! `Retry-After` when it gives one. There is no try count: a failed batch
//! goes back to its queue and stays there until it is sent, pushed out by
//! the queue's bounds, or older than `RetryConfig::max_elapsed` (see the
//! span queue in `batch` and the metrics exporter).

use std::time::Duration;

use hyper::Uri;
use tokio::time::Instant;

use super::config::{OtlpConfig, RetryConfig};
use super::events::AttemptFailed;
use super::transport::{ExportService, SendError, Transport};
use crate::telemetry::Stats;

/// One attempt, bounded by the export timeout.
pub(crate) async fn attempt<S: ExportService, T: Transport<S>>(
    transport: &T,
    request: &S::Request,
    config: &OtlpConfig,
) -> Result<S::Response, SendError> {
    match tokio::time::timeout(config.timeout, transport.export(request)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(SendError::Timeout {
            timeout: config.timeout,
        }),
    }
}

/// The gate in front of the endpoint: closed for a backoff after a
/// retryable failure, open again when it elapses; the backoff doubles at
/// each failure up to its maximum and starts over after a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: RetryConfig,
    /// The wait after the next failure, before jitter.
    next: Duration,
    /// No attempt starts before this.
    closed_until: Option<Instant>,
    /// The last attempt failed.
    failing: bool,
}

impl Backoff {
    pub(crate) fn new(config: &RetryConfig) -> Self {
        Self {
            config: config.clone(),
            next: config.initial_backoff,
            closed_until: None,
            failing: false,
        }
    }

    /// Whether an attempt may start now.
    pub(crate) fn is_open(&self) -> bool {
        self.closed_until
            .is_none_or(|until| until <= Instant::now())
    }

    /// When the gate opens, if it is closed.
    pub(crate) fn opens_at(&self) -> Option<Instant> {
        self.closed_until.filter(|until| *until > Instant::now())
    }

    pub(crate) fn succeeded(&mut self, endpoint: &Uri) {
        if self.failing {
            tracing::info!(%endpoint, "OTLP export succeeded again");
        }
        self.failing = false;
        self.next = self.config.initial_backoff;
        self.closed_until = None;
    }

    /// Counts and logs a failed attempt; a retryable one closes the gate
    /// for the backoff (or the server's `Retry-After`). Returns whether the
    /// request should be tried again.
    pub(crate) fn failed(&mut self, error: &SendError, endpoint: &Uri, stats: &Stats) -> bool {
        let retry_in = error
            .is_retryable()
            .then(|| error.retry_after().unwrap_or_else(|| jittered(self.next)));
        AttemptFailed {
            endpoint,
            error,
            retry_in,
            first: !self.failing,
        }
        .emit(stats);
        self.failing = true;
        let Some(delay) = retry_in else {
            return false;
        };
        let until = Instant::now() + delay;
        // Several requests in flight may fail together: the latest wait wins.
        self.closed_until = Some(self.closed_until.map_or(until, |closed| closed.max(until)));
        self.next = self.next.saturating_mul(2).min(self.config.max_backoff);
        true
    }

    /// Data older than this is dropped instead of sent.
    pub(crate) fn max_age(&self) -> Duration {
        self.config.max_elapsed
    }
}

/// Between half and all of `backoff`, so that agents that lost the same
/// collector do not all come back at the same instant.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random_range(0.5..=1.0))
}

/// Sleeps until `deadline`; forever if there is none.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
