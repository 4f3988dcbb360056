//! The exporter task's engine: a bounded queue filled from the span
//! channel, a few requests in flight at a time, retries until the data
//! ages out, and the flush when the channel closes. Generic over the
//! transport so the tests drive it with a scripted fake on tokio's paused
//! clock.
//!
//! The channel is read even while requests are in flight, so upstream
//! never waits on the network. A batch that fails with a retryable error
//! goes back to the front of the queue (it holds the oldest spans) and the
//! endpoint is left alone for a backoff ([`Backoff`]); nothing is given up
//! for a try count. Spans leave the queue only by being sent, by the
//! queue's bounds (oldest first: once a batch has been tried, it is
//! dropped whole), or by age (`RetryConfig::max_elapsed` since they were
//! queued), each way counted.
//!
//! Ordering: with one request in flight, spans reach the collector in the
//! order they were queued. With more (`BatchConfig::max_in_flight`), a
//! round trip no longer caps throughput, but batches may land out of
//! order and a retried batch lands after newer ones. Spans carry their own
//! timestamps and OTLP requires no order, so only the first is a default.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{BatchConfig, OtlpConfig};
use super::convert::{EncodedSpan, EncodedTraces, SpanEncoder, encode_request};
use super::disk_queue::{DiskQueue, Entry};
use super::events::{BatchExported, BatchLost, Expired, QueueFull, ShutdownTimedOut};
use super::retry::{Backoff, attempt, sleep_until};
use super::transport::{SendError, Transport};
use crate::model::span::SpanBatch;
use crate::telemetry::{Gauge, Stats};

/// Runs until `rx` closes, then flushes within `config.shutdown_timeout`.
pub(super) async fn run_batcher<T: Transport>(
    mut rx: mpsc::Receiver<SpanBatch>,
    transport: T,
    config: &OtlpConfig,
    mut disk: Option<DiskQueue>,
    stats: &Stats,
) {
    // Zero would never form a batch or send it; the fields are public, so
    // guard here.
    let max_batch = config.batch.max_batch_size.max(1);
    let max_in_flight = config.batch.max_in_flight.max(1);
    let mut queue = Queue::new(&config.batch);
    let mut encoder = SpanEncoder::default();
    let mut backoff = Backoff::new(&config.retry);
    let mut in_flight: FuturesUnordered<Attempt<'_>> = FuturesUnordered::new();
    // Spans of the requests in flight.
    let mut on_wire = 0;
    // Set once the channel closed: partial batches go at once, and what is
    // not sent by then is given up.
    let mut closing: Option<Instant> = None;
    // When the channel closes the queue gets one pass past a closed
    // backoff: a collector back during the wait would otherwise see none
    // of what queued up in an outage. The first failure ends that pass.
    let mut flush_on_close = false;
    loop {
        queue.expire(backoff.max_age(), stats);
        if let Some(disk) = &mut disk {
            disk.expire(backoff.max_age(), stats);
            // Batches go to disk as soon as they are formed, whatever the
            // backoff: only what is on disk outlives the agent.
            while let Some(batch) =
                queue.take_ready(max_batch, config.batch.max_delay, closing.is_some())
            {
                let age = batch.oldest.elapsed().as_millis() as u64;
                let created_ms = disk.now_ms().saturating_sub(age);
                disk.push(&batch.request, batch.spans, created_ms, stats);
            }
        }
        while in_flight.len() < max_in_flight && (backoff.is_open() || flush_on_close) {
            let next = match &mut disk {
                Some(disk) => disk.next(stats).map(Batch::from_file),
                None => queue.take_ready(max_batch, config.batch.max_delay, closing.is_some()),
            };
            let Some(batch) = next else {
                break;
            };
            on_wire += batch.spans;
            in_flight.push(start(&transport, batch, config));
        }
        queue.publish(stats);
        if let Some(disk) = &disk {
            disk.publish(stats);
        }
        let backlog = !queue.is_empty() || disk.as_ref().is_some_and(|disk| !disk.is_empty());
        // With a disk queue, what the shutdown pass did not send waits on
        // disk for the next start: no use waiting out the backoff.
        let done = !backlog || (disk.is_some() && queue.is_empty() && !flush_on_close);
        if closing.is_some() && in_flight.is_empty() && done {
            break;
        }
        // With a disk queue batches are formed whatever the backoff.
        let forming = disk.is_some() || (in_flight.len() < max_in_flight && backoff.is_open());
        let wake_at = [
            closing,
            backoff.opens_at().filter(|_| backlog),
            forming
                .then(|| queue.deadline(config.batch.max_delay))
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            received = rx.recv(), if closing.is_none() => match received {
                Some(spans) => {
                    let now = Instant::now();
                    // Each span is encoded as it arrives: a batch is then
                    // a copy of bytes, not a burst of encoding.
                    for span in &spans {
                        queue.push(encoder.encode(span), now, stats);
                    }
                }
                None => {
                    closing = Some(Instant::now() + config.shutdown_timeout);
                    flush_on_close = true;
                }
            },
            Some((batch, result)) = in_flight.next(), if !in_flight.is_empty() => {
                on_wire -= batch.spans;
                flush_on_close &= result.is_ok();
                settle(batch, result, &mut backoff, &mut queue, disk.as_mut(), config, stats);
            }
            () = sleep_until(wake_at) => {
                if closing.is_some_and(|deadline| deadline <= Instant::now()) {
                    break;
                }
            }
        }
    }
    queue.publish(stats);
    // Batches in flight keep their files on disk.
    let unsent = match &disk {
        Some(disk) => {
            disk.publish(stats);
            let left = disk.items() + on_wire;
            if left > 0 {
                tracing::info!(
                    "{left} spans left in the export queue directory for the next start"
                );
            }
            queue.len()
        }
        None => on_wire + queue.len(),
    };
    if unsent > 0 {
        ShutdownTimedOut {
            spans: unsent,
            timeout: config.shutdown_timeout,
        }
        .emit(stats);
    }
}

/// One attempt at sending a batch; it comes back with its outcome.
type Attempt<'a> = Pin<
    Box<dyn Future<Output = (Batch, Result<ExportTraceServiceResponse, SendError>)> + Send + 'a>,
>;

fn start<'a, T: Transport>(transport: &'a T, batch: Batch, config: &'a OtlpConfig) -> Attempt<'a> {
    Box::pin(async move {
        let result = attempt(transport, &batch.request, config).await;
        (batch, result)
    })
}

/// Counts a finished attempt, or puts its batch back for a retry.
fn settle(
    mut batch: Batch,
    result: Result<ExportTraceServiceResponse, SendError>,
    backoff: &mut Backoff,
    queue: &mut Queue,
    disk: Option<&mut DiskQueue>,
    config: &OtlpConfig,
    stats: &Stats,
) {
    match result {
        Ok(response) => {
            backoff.succeeded(&config.endpoint);
            remove_file(&mut batch, disk);
            let partial = response.partial_success.unwrap_or_default();
            BatchExported {
                spans: batch.spans,
                rejected: partial.rejected_spans,
                message: &partial.error_message,
            }
            .emit(stats);
        }
        Err(error) => {
            if backoff.failed(&error, &config.endpoint, stats) {
                match (batch.file.take(), disk) {
                    (Some(file), Some(disk)) => disk.requeue(file),
                    _ => queue.requeue(batch, stats),
                }
            } else {
                remove_file(&mut batch, disk);
                BatchLost {
                    endpoint: &config.endpoint,
                    spans: batch.spans,
                    error: &error,
                }
                .emit(stats);
            }
        }
    }
}

/// A batch done with (sent or refused for good) leaves the disk.
fn remove_file(batch: &mut Batch, disk: Option<&mut DiskQueue>) {
    if let (Some(file), Some(disk)) = (batch.file.take(), disk) {
        disk.remove(file);
    }
}

/// Spans on their way: encoded once, kept for the retries.
struct Batch {
    request: EncodedTraces,
    spans: u64,
    bytes: usize,
    /// When its oldest span was queued: the batch ages out with it.
    oldest: Instant,
    /// Its file in the disk queue: a retry puts the file back in line
    /// there (the two fields above then serve nothing).
    file: Option<Entry>,
}

impl Batch {
    fn from_file((file, request): (Entry, EncodedTraces)) -> Self {
        Self {
            request,
            spans: file.items,
            bytes: 0,
            oldest: Instant::now(),
            file: Some(file),
        }
    }
}

/// Spans not on the wire, bounded in number and in bytes: batches waiting
/// for a retry (the oldest) and spans not yet in a batch.
struct Queue {
    retries: VecDeque<Batch>,
    spans: VecDeque<Queued>,
    max_spans: usize,
    max_bytes: usize,
    /// Spans in both parts.
    count: usize,
    /// Sum of the encoded sizes in both parts.
    bytes: usize,
    /// Dropping since the last batch was taken; only the first drop of such
    /// an episode is logged.
    overflowing: bool,
}

/// A queued span, encoded, with its arrival time (the batch delay and the
/// age limit count from it).
struct Queued {
    arrived: Instant,
    span: EncodedSpan,
}

impl Queue {
    fn new(batch: &BatchConfig) -> Self {
        Self {
            retries: VecDeque::new(),
            // Grows to its bounds only if the collector falls behind.
            spans: VecDeque::new(),
            // Zero would never hold a span; the fields are public, so
            // guard here.
            max_spans: batch.max_queue_size.max(1),
            max_bytes: batch.max_queue_bytes.max(1),
            count: 0,
            bytes: 0,
            overflowing: false,
        }
    }

    fn len(&self) -> u64 {
        self.count as u64
    }

    fn is_empty(&self) -> bool {
        self.count == 0
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
    fn push(&mut self, span: EncodedSpan, arrived: Instant, stats: &Stats) {
        let bytes = span.len();
        self.make_room(1, bytes, stats);
        self.count += 1;
        self.bytes += bytes;
        self.spans.push_back(Queued { arrived, span });
    }

    /// A batch that failed with a retryable error goes back before the
    /// spans queued after it; then the bounds apply as to any span.
    fn requeue(&mut self, batch: Batch, stats: &Stats) {
        let at = self
            .retries
            .partition_point(|queued| queued.oldest <= batch.oldest);
        self.count += batch.spans as usize;
        self.bytes += batch.bytes;
        self.retries.insert(at, batch);
        self.make_room(0, 0, stats);
    }

    /// Drops the oldest until `spans` more spans of `bytes` fit.
    fn make_room(&mut self, spans: usize, bytes: usize, stats: &Stats) {
        while self.count + spans > self.max_spans || self.bytes + bytes > self.max_bytes {
            let dropped = match self.drop_oldest() {
                Some(dropped) => dropped,
                None => break,
            };
            QueueFull {
                spans: dropped,
                first: !self.overflowing,
                max_spans: self.max_spans,
                max_bytes: self.max_bytes,
            }
            .emit(stats);
            self.overflowing = true;
        }
    }

    /// Removes the oldest batch waiting for a retry, or else the oldest
    /// span; returns how many spans went.
    fn drop_oldest(&mut self) -> Option<u64> {
        // Every batch was formed from the front of `spans`, so retries are
        // older than any span still there.
        if let Some(batch) = self.retries.pop_front() {
            self.count -= batch.spans as usize;
            self.bytes -= batch.bytes;
            return Some(batch.spans);
        }
        let oldest = self.spans.pop_front()?;
        self.count -= 1;
        self.bytes -= oldest.span.len();
        Some(1)
    }

    /// Drops what has waited longer than `max_age`: a collector away that
    /// long gets the recent data when it is back, not a backlog it would
    /// mostly reject as too old.
    fn expire(&mut self, max_age: Duration, stats: &Stats) {
        let Some(cutoff) = Instant::now().checked_sub(max_age) else {
            return;
        };
        let mut expired = 0;
        while let Some(batch) = self.retries.front()
            && batch.oldest <= cutoff
        {
            expired += batch.spans;
            self.drop_oldest();
        }
        while let Some(queued) = self.spans.front()
            && queued.arrived <= cutoff
            && self.retries.is_empty()
        {
            expired += 1;
            self.drop_oldest();
        }
        if expired > 0 {
            Expired {
                spans: expired,
                max_age,
            }
            .emit(stats);
        }
    }

    fn deadline(&self, max_delay: Duration) -> Option<Instant> {
        self.spans.front().map(|queued| queued.arrived + max_delay)
    }

    /// The next batch to send: a retry first, else new spans if a full
    /// batch is waiting, the oldest waited long enough, or `flush` is set.
    fn take_ready(&mut self, max_batch: usize, max_delay: Duration, flush: bool) -> Option<Batch> {
        if let Some(batch) = self.retries.pop_front() {
            self.count -= batch.spans as usize;
            self.bytes -= batch.bytes;
            return Some(batch);
        }
        let ready = self.spans.len() >= max_batch
            || (flush && !self.spans.is_empty())
            || self
                .deadline(max_delay)
                .is_some_and(|deadline| deadline <= Instant::now());
        ready.then(|| self.take(max_batch))
    }

    fn take(&mut self, max_batch: usize) -> Batch {
        self.overflowing = false;
        let count = self.spans.len().min(max_batch);
        let taken = self.spans.range(..count);
        let bytes: usize = taken.clone().map(|queued| queued.span.len()).sum();
        let oldest = taken.clone().next().map(|queued| queued.arrived);
        let request = encode_request(taken.map(|queued| &queued.span));
        self.spans.drain(..count);
        self.count -= count;
        self.bytes -= bytes;
        Batch {
            request,
            spans: count as u64,
            bytes,
            oldest: oldest.unwrap_or_else(Instant::now),
            file: None,
        }
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
    use prost::Message as _;
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;

    use super::super::transport::SendError;
    use super::*;
    use crate::export::otlp::{DiskQueueConfig, OtlpOverrides, SPAN_QUEUE};
    use crate::telemetry::Counter;
    use crate::test_support::{TestDir, resource, span};

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
            request: &EncodedTraces,
        ) -> Result<ExportTraceServiceResponse, SendError> {
            let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
            let request = ExportTraceServiceRequest::decode(request.bytes().clone())
                .unwrap_or_else(|error| panic!("the batcher sent a bad request: {error}"));
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
        tx: mpsc::Sender<SpanBatch>,
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
            // One request at a time unless a test says otherwise: the order
            // of the requests is then the order of the spans.
            config.batch.max_in_flight = 1;
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
                let disk = config
                    .disk_queue
                    .as_ref()
                    .map(|queue| DiskQueue::open(queue, SPAN_QUEUE, &task_stats))
                    .transpose()
                    .unwrap_or_else(|error| panic!("opening the disk queue: {error}"));
                run_batcher(rx, fake, &config, disk, &task_stats).await;
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
                let sent = self.tx.send(vec![span(&resource, name)]).await;
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
        let weight = |name: &str| SpanEncoder::default().encode(&span(&resource, name)).len();
        let small = weight("s0");
        // A span weighs its encoded bytes: a long enough name makes one that
        // weighs two small ones.
        let big = (1..4 * small)
            .map(|len| "b".repeat(len))
            .find(|name| weight(name) == 2 * small)
            .unwrap_or_else(|| panic!("no name makes a span of {} bytes", 2 * small));
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
    async fn a_collector_away_for_minutes_gets_everything_once_back() {
        // Down for the first 8 attempts (about 2.5 minutes with the default
        // backoff), then up.
        let mut harness = Harness::start(
            |attempt| {
                if attempt < 8 {
                    Reply::Fail(unavailable())
                } else {
                    Reply::Accept
                }
            },
            |config| config.batch.max_batch_size = 2,
        );
        harness.send(&["a", "b"]).await;
        let mut attempts = Vec::new();
        for _ in 0..9 {
            attempts.push(harness.next_request().await.0);
        }
        let gaps: Vec<Duration> = attempts.windows(2).map(|pair| pair[1] - pair[0]).collect();
        // 5 s doubling, jittered to half or more, capped at 30 s.
        assert!(
            (Duration::from_millis(2500)..=Duration::from_secs(5)).contains(&gaps[0]),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().all(|gap| *gap <= Duration::from_secs(30)),
            "{gaps:?}"
        );
        assert!(
            (Duration::from_secs(15)..=Duration::from_secs(30)).contains(&gaps[7]),
            "{gaps:?}"
        );
        let (_, stats) = harness.shut_down().await;
        assert_eq!(stats.get(Counter::SpansExported), 2);
        assert_eq!(stats.get(Counter::ExportRequestsFailed), 8);
        assert_eq!(stats.get(Counter::SpansExportFailed), 0);
        assert_eq!(stats.get(Counter::SpansDroppedExpired), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn spans_older_than_the_retry_budget_are_dropped_and_counted() {
        let mut harness = Harness::start(
            |_| Reply::Fail(unavailable()),
            |config| {
                config.batch.max_batch_size = 2;
                config.retry.max_elapsed = Duration::from_secs(20);
            },
        );
        harness.send(&["a", "b"]).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut last = Duration::ZERO;
        while let Ok((at, _)) = harness.requests.try_recv() {
            last = at - harness.started;
        }
        assert!(last < Duration::from_secs(20), "attempt at {last:?}");
        assert_eq!(harness.stats.get(Counter::SpansDroppedExpired), 2);
        assert_eq!(harness.stats.gauge(Gauge::ExportQueueSpans), 0);
        let attempts = harness.stats.get(Counter::ExportRequestsFailed); // 5 s doubling, jittered: between 2 and 7 attempts in 20 s.
        assert!((2..=7).contains(&attempts), "{attempts} attempts");
        harness.send(&["c"]).await;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(
            requests.last(),
            Some(&names(&["c"])),
            "newer spans still go"
        );
        assert_eq!(stats.get(Counter::SpansDroppedExpired), 2);
        assert_eq!(stats.get(Counter::SpansExportFailed), 0);
        assert_eq!(stats.get(Counter::SpansExported), 0);
        assert_eq!(stats.get(Counter::SpansDroppedShutdown), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_awaiting_its_retry_is_the_first_the_bounds_drop() {
        let mut harness = Harness::start(
            |attempt| {
                if attempt == 0 {
                    Reply::Fail(unavailable())
                } else {
                    Reply::Accept
                }
            },
            |config| {
                config.batch.max_batch_size = 2;
                config.batch.max_queue_size = 4;
                config.batch.max_delay = Duration::from_secs(3600);
            },
        );
        harness.send(&["s0", "s1"]).await;
        assert_eq!(harness.next_request().await.1, names(&["s0", "s1"]));
        // s0 and s1 are back in the queue for a retry, the endpoint left
        // alone for the backoff: s4 pushes the whole tried batch out.
        harness.send(&["s2", "s3", "s4", "s5"]).await;
        harness.until_received().await;
        assert_eq!(harness.stats.gauge(Gauge::ExportQueueSpans), 4);
        let (retry_at, retried) = harness.next_request().await;
        assert!(retry_at >= Duration::from_millis(2500), "{retry_at:?}");
        assert_eq!(retried, names(&["s2", "s3"]));
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["s4", "s5"])]);
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 2);
        assert_eq!(stats.get(Counter::SpansExported), 4);
    }

    #[tokio::test]
    async fn several_requests_go_at_once_up_to_the_bound() {
        let (mut harness, gate) = Harness::gated(|config| {
            config.batch.max_batch_size = 2;
            config.batch.max_in_flight = 3;
            config.batch.max_delay = Duration::from_secs(3600);
        });
        harness
            .send(&["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"])
            .await;
        // Three requests held by the collector at once; the fourth waits.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(harness.next_request().await.1);
        }
        assert_eq!(
            held,
            vec![
                names(&["s0", "s1"]),
                names(&["s2", "s3"]),
                names(&["s4", "s5"])
            ]
        );
        harness.until_received().await;
        assert_eq!(harness.stats.gauge(Gauge::ExportQueueSpans), 2);
        assert!(harness.requests.try_recv().is_err(), "a fourth request");
        gate.add_permits(10);
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["s6", "s7"])]);
        assert_eq!(stats.get(Counter::SpansExported), 8);
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
    async fn shutdown_tries_the_queue_once_past_a_closed_backoff() {
        // The collector is down for the first attempt, then back; the agent
        // stops while waiting out the backoff, which outlasts the shutdown
        // deadline: the queue still gets one pass.
        let mut harness = Harness::start(
            |attempt| {
                if attempt == 0 {
                    Reply::Fail(unavailable())
                } else {
                    Reply::Accept
                }
            },
            |config| {
                config.batch.max_batch_size = 2;
                config.retry.initial_backoff = Duration::from_secs(60);
                config.shutdown_timeout = Duration::from_secs(1);
            },
        );
        harness.send(&["a", "b"]).await;
        assert_eq!(harness.next_request().await.1, names(&["a", "b"]));
        harness.send(&["c"]).await;
        harness.until_received().await;
        let started = harness.started;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["a", "b"]), names(&["c"])]);
        assert_eq!(stats.get(Counter::SpansExported), 3);
        assert_eq!(stats.get(Counter::SpansDroppedShutdown), 0);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_pass_ends_at_the_first_failure() {
        let harness = Harness::start(
            |_| Reply::Fail(unavailable()),
            |config| {
                config.batch.max_batch_size = 1;
                config.retry.initial_backoff = Duration::from_secs(60);
                config.shutdown_timeout = Duration::from_secs(1);
            },
        );
        harness.send(&["a", "b", "c"]).await;
        harness.until_received().await;
        let (requests, stats) = harness.shut_down().await;
        // "a" failed before the channel closed or during the pass: either
        // way no more than two attempts, not one per queued batch.
        assert!(requests.len() <= 2, "{requests:?}");
        assert_eq!(stats.get(Counter::SpansDroppedShutdown), 3);
        assert_eq!(stats.get(Counter::SpansExported), 0);
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
        assert_eq!(stats.get(Counter::SpansDroppedShutdown), 5);
        assert_eq!(stats.get(Counter::SpansExportFailed), 0);
        assert_eq!(stats.get(Counter::SpansExported), 0);
        // The batch in flight is not in the queue.
        assert_eq!(stats.gauge(Gauge::ExportQueueSpans), 3);
    }

    fn on_disk(dir: &TestDir) -> impl FnOnce(&mut OtlpConfig) {
        let queue = DiskQueueConfig {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
        };
        move |config| {
            config.batch.max_batch_size = 2;
            config.retry.initial_backoff = Duration::from_secs(60);
            config.shutdown_timeout = Duration::from_secs(1);
            config.disk_queue = Some(queue);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_disk_queue_keeps_what_the_collector_missed_for_the_next_run() {
        let dir = TestDir::new("batcher-disk-restart");
        // The collector is down for the whole first run: batches are still
        // formed and written while the backoff is closed.
        let harness = Harness::start(|_| Reply::Fail(unavailable()), on_disk(&dir));
        harness.send(&["a", "b", "c", "d", "e"]).await;
        harness.until_received().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(harness.stats.gauge(Gauge::ExportQueueDiskSpans), 5);
        assert_eq!(harness.stats.gauge(Gauge::ExportQueueSpans), 0);
        let (requests, stats) = harness.shut_down().await;
        // The first batch tried once, and the shutdown pass ends at its
        // first failure: nothing is counted lost, it is all on disk.
        assert!(requests.len() <= 2, "{requests:?}");
        assert_eq!(stats.get(Counter::SpansDroppedShutdown), 0);
        assert_eq!(stats.get(Counter::SpansExported), 0);
        assert_eq!(dir.files().len(), 3, "{:?}", dir.files());

        // The next run finds them and sends them, oldest first, then
        // removes the files.
        let mut harness = Harness::start(|_| Reply::Accept, on_disk(&dir));
        for expected in [&["a", "b"][..], &["c", "d"], &["e"]] {
            assert_eq!(harness.next_request().await.1, names(expected));
        }
        harness.send(&["f"]).await;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(requests, vec![names(&["f"])]);
        assert_eq!(stats.get(Counter::SpansRecovered), 5);
        assert_eq!(stats.get(Counter::SpansExported), 6);
        assert!(dir.files().is_empty(), "{:?}", dir.files());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_leaves_the_disk_and_a_retried_one_stays() {
        let dir = TestDir::new("batcher-disk-refused");
        let harness = Harness::start(
            |attempt| match attempt {
                0 => Reply::Fail(SendError::HttpStatus {
                    status: StatusCode::BAD_REQUEST,
                    message: "malformed".into(),
                    retry_after: None,
                }),
                1 => Reply::Fail(unavailable()),
                _ => Reply::Accept,
            },
            |config| {
                on_disk(&dir)(config);
                config.retry.initial_backoff = Duration::from_secs(1);
            },
        );
        harness.send(&["a", "b", "c", "d"]).await;
        harness.until_received().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (requests, stats) = harness.shut_down().await;
        assert_eq!(
            requests,
            vec![names(&["a", "b"]), names(&["c", "d"]), names(&["c", "d"])]
        );
        assert_eq!(stats.get(Counter::SpansExportFailed), 2);
        assert_eq!(stats.get(Counter::SpansExported), 2);
        assert!(dir.files().is_empty(), "{:?}", dir.files());
    }
}
