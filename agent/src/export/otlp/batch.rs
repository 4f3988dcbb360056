//! The exporter task's engine: a bounded queue filled from the span channel,
//! one batch in flight at a time with its retries, and the flush when the
//! channel closes. Generic over the transport so the tests drive it with a
//! scripted fake on tokio's paused clock.
//!
//! The channel is read even while a batch is in flight, so upstream never
//! waits on the network: when the collector is slow the queue fills and the
//! oldest spans make room for new ones, each one counted.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{BatchConfig, OtlpConfig};
use super::convert::{encoded_size_estimate, to_request};
use super::events::{BatchExported, BatchLost, QueueFull, ShutdownTimedOut};
use super::retry::send_with_retry;
use super::transport::Transport;
use crate::spans::model::Span;
use crate::telemetry::{Gauge, Stats};

/// Runs until `rx` closes, then flushes within `config.shutdown_timeout`.
pub(super) async fn run_batcher<T: Transport>(
    mut rx: mpsc::Receiver<Span>,
    transport: T,
    config: &OtlpConfig,
    stats: &Stats,
) {
    // Zero would never form a batch; the fields are public, so guard here.
    let max_batch = config.batch.max_batch_size.max(1);
    let mut queue = Queue::new(&config.batch);
    let mut in_flight: Option<InFlight<'_>> = None;
    loop {
        if in_flight.is_none()
            && let Some(spans) = queue.take_ready(max_batch, config.batch.max_delay)
        {
            in_flight = Some(InFlight::start(&transport, spans, config, stats));
        }
        queue.publish(stats);
        // While a batch is in flight the delay is moot: the next batch
        // starts when this one is done.
        let deadline = match in_flight {
            None => queue.deadline(config.batch.max_delay),
            Some(_) => None,
        };
        let wake = tokio::select! {
            received = rx.recv() => match received {
                Some(span) => Wake::Span(span),
                None => Wake::Closed,
            },
            () = finish(&mut in_flight) => Wake::BatchDone,
            () = sleep_until(deadline) => Wake::DelayElapsed,
        };
        match wake {
            Wake::Span(span) => queue.push(span, stats),
            Wake::BatchDone => in_flight = None,
            Wake::DelayElapsed => {}
            Wake::Closed => break,
        }
    }

    let flush = async {
        loop {
            if in_flight.is_some() {
                finish(&mut in_flight).await;
                in_flight = None;
            }
            let spans = queue.take(max_batch);
            if spans.is_empty() {
                break;
            }
            in_flight = Some(InFlight::start(&transport, spans, config, stats));
        }
    };
    let flushed = tokio::time::timeout(config.shutdown_timeout, flush).await;
    queue.publish(stats);
    if flushed.is_err() {
        let in_flight = in_flight.map_or(0, |batch| batch.spans);
        ShutdownTimedOut {
            spans: in_flight + queue.len(),
            timeout: config.shutdown_timeout,
        }
        .emit(stats);
    }
}

/// What woke the loop.
enum Wake {
    Span(Span),
    BatchDone,
    DelayElapsed,
    Closed,
}

/// Spans waiting to be sent, bounded in number and in bytes.
struct Queue {
    spans: VecDeque<Queued>,
    max_spans: usize,
    max_bytes: usize,
    /// Sum of the queued spans' size estimates.
    bytes: usize,
    /// Dropping since the last batch was taken; only the first drop of such
    /// an episode is logged.
    overflowing: bool,
}

/// A queued span with its arrival time (the batch delay counts from the
/// oldest) and its weight in the byte bound.
struct Queued {
    arrived: Instant,
    bytes: usize,
    span: Span,
}

impl Queue {
    fn new(batch: &BatchConfig) -> Self {
        Self {
            // Grows to its bounds only if the collector falls behind.
            spans: VecDeque::new(),
            // Zero would never hold a span; the fields are public, so
            // guard here.
            max_spans: batch.max_queue_size.max(1),
            max_bytes: batch.max_queue_bytes.max(1),
            bytes: 0,
            overflowing: false,
        }
    }

    fn len(&self) -> u64 {
        self.spans.len() as u64
    }

    /// Sets the queue depth gauges.
    fn publish(&self, stats: &Stats) {
        stats.set_gauge(Gauge::ExportQueueSpans, self.len());
        stats.set_gauge(Gauge::ExportQueueBytes, self.bytes as u64);
    }

    /// Drops the oldest spans until the new one fits both bounds: recent
    /// spans are the ones people are looking for. A span larger than the
    /// byte bound on its own still goes in (alone), so it is sent or
    /// counted like any other.
    fn push(&mut self, span: Span, stats: &Stats) {
        let bytes = encoded_size_estimate(&span);
        while self.spans.len() >= self.max_spans || self.bytes + bytes > self.max_bytes {
            let Some(oldest) = self.spans.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
            QueueFull {
                first: !self.overflowing,
                max_spans: self.max_spans,
                max_bytes: self.max_bytes,
            }
            .emit(stats);
            self.overflowing = true;
        }
        self.bytes += bytes;
        self.spans.push_back(Queued {
            arrived: Instant::now(),
            bytes,
            span,
        });
    }

    fn deadline(&self, max_delay: Duration) -> Option<Instant> {
        self.spans.front().map(|queued| queued.arrived + max_delay)
    }

    /// A batch if a full one is waiting or the oldest span waited long enough.
    fn take_ready(&mut self, max_batch: usize, max_delay: Duration) -> Option<Vec<Span>> {
        let ready = self.spans.len() >= max_batch
            || self
                .deadline(max_delay)
                .is_some_and(|deadline| deadline <= Instant::now());
        ready.then(|| self.take(max_batch))
    }

    fn take(&mut self, max_batch: usize) -> Vec<Span> {
        self.overflowing = false;
        let count = self.spans.len().min(max_batch);
        self.spans
            .drain(..count)
            .map(|queued| {
                self.bytes -= queued.bytes;
                queued.span
            })
            .collect()
    }
}

/// A batch being exported, retries included. Its outcome is counted inside
/// the future; `spans` is kept for counting it if shutdown abandons it.
struct InFlight<'a> {
    spans: u64,
    future: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

impl<'a> InFlight<'a> {
    fn start<T: Transport>(
        transport: &'a T,
        spans: Vec<Span>,
        config: &'a OtlpConfig,
        stats: &'a Stats,
    ) -> Self {
        let count = spans.len() as u64;
        let future = Box::pin(async move {
            let request = to_request(spans);
            match send_with_retry(transport, &request, config, stats).await {
                Ok(response) => {
                    let partial = response.partial_success.unwrap_or_default();
                    BatchExported {
                        spans: count,
                        rejected: partial.rejected_spans,
                        message: &partial.error_message,
                    }
                    .emit(stats);
                }
                Err(error) => BatchLost {
                    endpoint: &config.endpoint,
                    spans: count,
                    error: &error,
                }
                .emit(stats),
            }
        });
        Self {
            spans: count,
            future,
        }
    }
}

/// Completes when the batch in flight is done; never if there is none.
async fn finish(in_flight: &mut Option<InFlight<'_>>) {
    match in_flight {
        Some(batch) => batch.future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::StatusCode;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;

    use super::super::transport::SendError;
    use super::*;
    use crate::export::otlp::OtlpOverrides;
    use crate::telemetry::Counter;
    use crate::test_support::{resource, span};

    /// What the fake transport does with one attempt.
    enum Reply {
        Accept,
        PartiallyAccept {
            rejected: i64,
        },
        Fail(SendError),
        /// Never answers (the attempt times out).
        Hang,
        /// Accepts once the semaphore gives a permit.
        AcceptWhenReleased(Arc<Semaphore>),
    }

    /// Records every attempt and answers from a script indexed by attempt.
    struct Fake<F> {
        script: F,
        attempts: AtomicUsize,
        requests: mpsc::UnboundedSender<(Instant, Vec<String>)>,
    }

    impl<F: Fn(usize) -> Reply + Sync> Transport for Fake<F> {
        async fn export(
            &self,
            request: &ExportTraceServiceRequest,
        ) -> Result<ExportTraceServiceResponse, SendError> {
            let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
            let names = request
                .resource_spans
                .iter()
                .flat_map(|group| &group.scope_spans)
                .flat_map(|scope| &scope.spans)
                .map(|span| span.name.clone())
                .collect();
            // The receiving half lives as long as the test that reads it.
            let _ = self.requests.send((Instant::now(), names));
            match (self.script)(attempt) {
                Reply::Accept => Ok(ExportTraceServiceResponse::default()),
                Reply::PartiallyAccept { rejected } => Ok(ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: "too old".into(),
                    }),
                }),
                Reply::Fail(error) => Err(error),
                Reply::Hang => std::future::pending().await,
                Reply::AcceptWhenReleased(gate) => {
                    let permit = gate.acquire().await;
                    assert!(permit.is_ok(), "gate closed");
                    Ok(ExportTraceServiceResponse::default())
                }
            }
        }
    }

    struct Harness {
        tx: mpsc::Sender<Span>,
        requests: mpsc::UnboundedReceiver<(Instant, Vec<String>)>,
        stats: Arc<Stats>,
        task: JoinHandle<()>,
        started: Instant,
    }

    impl Harness {
        fn start(
            script: impl Fn(usize) -> Reply + Send + Sync + 'static,
            configure: impl FnOnce(&mut OtlpConfig),
        ) -> Self {
            let mut config = OtlpConfig::from_lookup(&OtlpOverrides::default(), |_| None)
                .unwrap_or_else(|error| panic!("default config: {error}"));
            configure(&mut config);
            let (tx, rx) = mpsc::channel(64);
            let (requests_tx, requests) = mpsc::unbounded_channel();
            let fake = Fake {
                script,
                attempts: AtomicUsize::new(0),
                requests: requests_tx,
            };
            let stats = Arc::new(Stats::default());
            let task_stats = Arc::clone(&stats);
            let task = tokio::spawn(async move {
                run_batcher(rx, fake, &config, &task_stats).await;
            });
            Self {
                tx,
                requests,
                stats,
                task,
                started: Instant::now(),
            }
        }

        /// A harness whose collector holds every request until the
        /// returned gate gives permits.
        fn gated(configure: impl FnOnce(&mut OtlpConfig)) -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            let script_gate = Arc::clone(&gate);
            let harness = Self::start(
                move |_| Reply::AcceptWhenReleased(Arc::clone(&script_gate)),
                configure,
            );
            (harness, gate)
        }

        async fn send(&self, names: &[&str]) {
            let resource = resource("pid:1:1", "api");
            for name in names {
                let sent = self.tx.send(span(&resource, name)).await;
                assert!(sent.is_ok(), "exporter stopped before receiving {name}");
            }
        }

        /// The next attempt's span names, and when it was made relative to
        /// the start.
        async fn next_request(&mut self) -> (Duration, Vec<String>) {
            let (at, names) = self.requests.recv().await.unwrap_or_else(|| {
                panic!("exporter stopped; counters: {:?}", self.stats.nonzero())
            });
            (at - self.started, names)
        }

        /// Until the exporter has taken every sent span off the channel.
        async fn until_received(&self) {
            while self.tx.capacity() < self.tx.max_capacity() {
                tokio::task::yield_now().await;
            }
        }

        /// Closes the channel, waits for the flush, returns every attempt.
        async fn shut_down(mut self) -> (Vec<Vec<String>>, Arc<Stats>) {
            drop(self.tx);
            let joined = self.task.await;
            assert!(joined.is_ok(), "exporter task panicked: {joined:?}");
            let mut requests = Vec::new();
            while let Ok((_, names)) = self.requests.try_recv() {
                requests.push(names);
            }
            (requests, self.stats)
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn unavailable() -> SendError {
        SendError::Grpc {
            code: tonic::Code::Unavailable,
            message: "connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_without_waiting_for_the_delay() {
        let mut harness = Harness::start(
            |_| Reply::Accept,
            |config| {
                config.batch.max_batch_size = 3;
                config.batch.max_delay = Duration::from_secs(3600);
            },
        );
        harness.send(&["a", "b", "c", "d"]).await;
        assert_eq!(
            harness.next_request().await,
            (Duration::ZERO, names(&["a", "b", "c"]))
        );
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["d"])], "flushed on shutdown");
        assert_eq!(stats.get(Counter::SpansExported), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_goes_after_the_delay_from_its_first_span() {
        let mut harness = Harness::start(
            |_| Reply::Accept,
            |config| {
                config.batch.max_batch_size = 10;
                config.batch.max_delay = Duration::from_millis(200);
            },
        );
        harness.send(&["a"]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        harness.send(&["b"]).await;
        assert_eq!(
            harness.next_request().await,
            (Duration::from_millis(200), names(&["a", "b"]))
        );
        let (requests, stats) = harness.shut_down().await;
        assert!(requests.is_empty(), "{requests:?}");
        assert_eq!(stats.get(Counter::SpansExported), 2);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_counts_them() {
        let (mut harness, gate) = Harness::gated(|config| {
            config.batch.max_batch_size = 2;
            config.batch.max_queue_size = 4;
            config.batch.max_delay = Duration::from_secs(3600);
        });
        harness.send(&["s0", "s1"]).await;
        // The first batch is now held by the collector...
        assert_eq!(harness.next_request().await.1, names(&["s0", "s1"]));
        // ...so these wait in a queue of 4: s2 and s3 make room for s6, s7.
        harness.send(&["s2", "s3", "s4", "s5", "s6", "s7"]).await;
        harness.until_received().await;
        gate.add_permits(10);
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["s4", "s5"]), names(&["s6", "s7"])]);
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 2);
        assert_eq!(stats.get(Counter::SpansExported), 6);
        assert_eq!(stats.get(Counter::SpansExportFailed), 0);
    }

    #[tokio::test]
    async fn a_queue_full_in_bytes_drops_the_oldest_and_counts_them() {
        let resource = resource("pid:1:1", "api");
        let small = encoded_size_estimate(&span(&resource, "s0"));
        // The estimate grows with the name: this span weighs two small ones.
        let big = "b".repeat(small + 2);
        assert_eq!(encoded_size_estimate(&span(&resource, &big)), 2 * small);
        let (mut harness, gate) = Harness::gated(|config| {
            config.batch.max_batch_size = 2;
            // Only the byte bound can bite.
            config.batch.max_queue_size = 100;
            config.batch.max_queue_bytes = 4 * small;
            config.batch.max_delay = Duration::from_secs(3600);
        });
        harness.send(&["s0", "s1"]).await;
        assert_eq!(harness.next_request().await.1, names(&["s0", "s1"]));
        // Four small spans fill the bytes: s2 and s3 make room for s6, s7,
        // then s4 and s5 for the big one.
        harness.send(&["s2", "s3", "s4", "s5", "s6", "s7"]).await;
        harness.until_received().await;
        assert_eq!(
            harness.stats.gauge(Gauge::ExportQueueBytes),
            4 * small as u64
        );
        harness.send(&[big.as_str()]).await;
        harness.until_received().await;
        assert_eq!(harness.stats.gauge(Gauge::ExportQueueSpans), 3);
        assert_eq!(
            harness.stats.gauge(Gauge::ExportQueueBytes),
            4 * small as u64
        );
        gate.add_permits(10);
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["s6", "s7"]), vec![big]]);
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 4);
        assert_eq!(stats.get(Counter::SpansExported), 5);
        assert_eq!(stats.gauge(Gauge::ExportQueueBytes), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_span_larger_than_the_byte_bound_still_goes_alone() {
        let harness = Harness::start(
            |_| Reply::Accept,
            |config| {
                config.batch.max_batch_size = 10;
                config.batch.max_queue_bytes = 1;
            },
        );
        harness.send(&["a", "b"]).await;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["b"])]);
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 1);
        assert_eq!(stats.get(Counter::SpansExported), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_timeouts_and_retryable_statuses_honouring_retry_after() {
        let mut harness = Harness::start(
            |attempt| match attempt {
                0 => Reply::Hang,
                1 => Reply::Fail(SendError::HttpStatus {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: String::new(),
                    retry_after: Some(Duration::from_secs(7)),
                }),
                2 => Reply::Fail(unavailable()),
                _ => Reply::Accept,
            },
            |config| {
                config.batch.max_batch_size = 1;
                config.timeout = Duration::from_secs(2);
                config.retry.initial_backoff = Duration::from_secs(1);
            },
        );
        harness.send(&["a"]).await;
        let mut attempts = Vec::new();
        for _ in 0..4 {
            attempts.push(harness.next_request().await.0);
        }
        // Attempt 1 after the 2 s timeout plus a jittered 0.5-1 s backoff;
        // attempt 2 exactly 7 s later (Retry-After); attempt 3 after a
        // jittered 2-4 s (the backoff doubled at each retry).
        let gaps: Vec<Duration> = attempts.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert!(
            (Duration::from_millis(2500)..=Duration::from_secs(3)).contains(&gaps[0]),
            "{gaps:?}"
        );
        assert_eq!(gaps[1], Duration::from_secs(7), "{gaps:?}");
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(4)).contains(&gaps[2]),
            "{gaps:?}"
        );
        let (requests, stats) = harness.shut_down().await;
        assert!(requests.is_empty(), "{requests:?}");
        assert_eq!(stats.get(Counter::SpansExported), 1);
        assert_eq!(stats.get(Counter::ExportRequestsFailed), 3);
        assert_eq!(stats.get(Counter::SpansExportFailed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let harness = Harness::start(
            |_| {
                Reply::Fail(SendError::HttpStatus {
                    status: StatusCode::BAD_REQUEST,
                    message: "malformed".into(),
                    retry_after: None,
                })
            },
            |_| {},
        );
        harness.send(&["a", "b", "c"]).await;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["a", "b", "c"])]);
        assert_eq!(stats.get(Counter::ExportRequestsFailed), 1);
        assert_eq!(stats.get(Counter::SpansExportFailed), 3);
        assert_eq!(stats.get(Counter::SpansExported), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_within_the_time_budget() {
        let mut harness = Harness::start(
            |_| Reply::Fail(unavailable()),
            |config| {
                config.batch.max_batch_size = 2;
                config.retry.max_elapsed = Duration::from_secs(20);
            },
        );
        harness.send(&["a", "b"]).await;
        let mut last = Duration::ZERO;
        while harness.stats.get(Counter::SpansExportFailed) == 0 {
            last = harness.next_request().await.0;
        }
        assert!(last <= Duration::from_secs(20), "attempt at {last:?}");
        let attempts = harness.stats.get(Counter::ExportRequestsFailed);
        // 0.5 s doubling to 5 s, jittered: between 5 and 15 attempts in 20 s.
        assert!((5..=15).contains(&attempts), "{attempts} attempts");
        let (_, stats) = harness.shut_down().await;
        assert_eq!(stats.get(Counter::SpansExportFailed), 2);
        assert_eq!(stats.get(Counter::SpansExported), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn partially_rejected_batches_count_the_rejected_spans() {
        let harness = Harness::start(|_| Reply::PartiallyAccept { rejected: 1 }, |_| {});
        harness.send(&["a", "b", "c"]).await;
        let (_, stats) = harness.shut_down().await;
        assert_eq!(stats.get(Counter::SpansExported), 2);
        assert_eq!(stats.get(Counter::SpansExportFailed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_whatever_is_queued() {
        let harness = Harness::start(
            |_| Reply::Accept,
            |config| {
                config.batch.max_batch_size = 2;
                config.batch.max_delay = Duration::from_secs(3600);
            },
        );
        harness.send(&["a", "b", "c", "d", "e"]).await;
        let started = harness.started;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(
            requests,
            vec![names(&["a", "b"]), names(&["c", "d"]), names(&["e"])]
        );
        assert_eq!(stats.get(Counter::SpansExported), 5);
        assert_eq!(stats.gauge(Gauge::ExportQueueSpans), 0);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no waiting for the delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_at_its_deadline_and_counts_the_rest() {
        let harness = Harness::start(
            |_| Reply::Hang,
            |config| {
                config.batch.max_batch_size = 2;
                config.shutdown_timeout = Duration::from_secs(1);
            },
        );
        harness.send(&["a", "b", "c", "d", "e"]).await;
        let started = harness.started;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(requests, vec![names(&["a", "b"])]);
        assert_eq!(stats.get(Counter::SpansExportFailed), 5);
        assert_eq!(stats.get(Counter::SpansExported), 0);
        // The batch in flight is not in the queue.
        assert_eq!(stats.gauge(Gauge::ExportQueueSpans), 3);
    }
}
