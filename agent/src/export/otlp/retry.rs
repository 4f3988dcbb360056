//! Retries of one export request, shared by every signal: exponential
//! backoff with jitter, the server's `Retry-After` when it gives one, and a
//! bound on the total time so a dead collector costs bounded memory.

use std::time::Duration;

use tokio::time::Instant;

use super::config::OtlpConfig;
use super::events::AttemptFailed;
use super::transport::{ExportService, SendError, Transport};
use crate::telemetry::Stats;

/// Attempts until success, a permanent error, or the retry budget would be
/// exceeded by the next wait.
pub(crate) async fn send_with_retry<S: ExportService, T: Transport<S>>(
    transport: &T,
    request: &S::Request,
    config: &OtlpConfig,
    stats: &Stats,
) -> Result<S::Response, SendError> {
    let started = Instant::now();
    let mut backoff = config.retry.initial_backoff;
    loop {
        let error = match tokio::time::timeout(config.timeout, transport.export(request)).await {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(error)) => error,
            Err(_elapsed) => SendError::Timeout {
                timeout: config.timeout,
            },
        };
        let retry_in = error
            .is_retryable()
            .then(|| error.retry_after().unwrap_or_else(|| jittered(backoff)))
            .filter(|delay| started.elapsed() + *delay <= config.retry.max_elapsed);
        AttemptFailed {
            endpoint: &config.endpoint,
            error: &error,
            retry_in,
        }
        .emit(stats);
        let Some(delay) = retry_in else {
            return Err(error);
        };
        tokio::time::sleep(delay).await;
        backoff = backoff.saturating_mul(2).min(config.retry.max_backoff);
    }
}

/// Between half and all of `backoff`, so that agents that lost the same
/// collector do not all come back at the same instant.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random_range(0.5..=1.0))
}
