//! OTLP metrics export: every export interval the RED histograms are
//! collected (cumulative or delta, as configured) and sent as one
//! `ExportMetricsServiceRequest` over the same transports, retries and
//! `OTEL_EXPORTER_OTLP_*` settings as the spans (`export::otlp`), with the
//! same resources and instrumentation scope.
//!
//! The same request carries the agent's own telemetry under the agent's
//! own resource (`service.name` `sonde`, see [`AgentTelemetry`]): every
//! counter of [`crate::telemetry`] as a monotonic cumulative sum since the
//! agent started (whatever the RED temporality: these are totals a
//! collector can always difference) and every gauge as a gauge, under the
//! names /metrics shows them by (`sonde_spans_exported`, which a
//! Prometheus translation turns back into `sonde_spans_exported_total`).
//!
//! Every collected data point ends up in `sonde_metric_points_exported`,
//! `sonde_metric_points_export_failed` (refused for good) or one of the
//! `sonde_metric_points_dropped_*` counters (queue full, aged out, shutdown).
//! Exports that fail with a retryable error are kept and retried, like
//! spans, so a delta interval survives a collector restart.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge as ProtoGauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use super::red::{Point, RedMetrics, ResourcePoints, Temporality, bounds_for, unix_now_ns};
use crate::export::otlp::{
    Backoff, DiskQueue, Entry, MetricsExport, OtlpConfig, ProtocolTransport, QueueMetrics,
    SendError, attempt, key_value, open_disk_queue, proto_resource, scope, sleep_until,
};
use crate::model::error::ErrorChain;
use crate::model::measure::{Instrument, LabelValue};
use crate::model::span::{AttributeValue, Resource};
use crate::telemetry::{Counter, Gauge, Stats};

/// When and how metrics are exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportSchedule {
    /// Time between exports.
    pub interval: Duration,
    /// Cumulative or delta data points.
    pub temporality: Temporality,
}

/// What the metrics exporter sends: the RED histograms when they are on,
/// and always the agent's own telemetry.
#[derive(Debug)]
pub struct MetricSources {
    /// RED metrics; `None` when `metrics.enabled` is off.
    pub red: Option<Arc<RedMetrics>>,
    /// The agent's counters and gauges.
    pub agent: AgentTelemetry,
}

/// The agent's own counters and gauges, as metrics of its own resource.
#[derive(Debug)]
pub struct AgentTelemetry {
    /// The counters and gauges.
    pub stats: Arc<Stats>,
    /// The agent's resource (`service.name` `sonde`, host, node).
    pub resource: Resource,
    /// When the counters started from zero: the start of every cumulative
    /// sum.
    pub start_unix_ns: u64,
}

impl AgentTelemetry {
    /// Every counter and gauge as it is now, one data point each.
    fn collect(&self, now_unix_ns: u64) -> ResourceMetrics {
        let point = |value: u64, start_time_unix_nano: u64| NumberDataPoint {
            start_time_unix_nano,
            time_unix_nano: now_unix_ns.max(self.start_unix_ns),
            // Counts never come near i64::MAX; saturate rather than wrap.
            value: Some(number_data_point::Value::AsInt(
                i64::try_from(value).unwrap_or(i64::MAX),
            )),
            ..Default::default()
        };
        let counters = Counter::ALL.iter().map(|&counter| Metric {
            name: counter.name().to_owned(),
            description: counter.help().to_owned(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![point(self.stats.get(counter), self.start_unix_ns)],
                aggregation_temporality: AggregationTemporality::Cumulative.into(),
                is_monotonic: true,
            })),
            ..Default::default()
        });
        // Gauges have no start time: they are levels, not totals.
        let gauges = Gauge::ALL.iter().map(|&gauge| Metric {
            name: gauge.name().to_owned(),
            description: gauge.help().to_owned(),
            data: Some(metric::Data::Gauge(ProtoGauge {
                data_points: vec![point(self.stats.gauge(gauge), 0)],
            })),
            ..Default::default()
        });
        ResourceMetrics {
            resource: Some(proto_resource(&self.resource)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: counters.chain(gauges).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Data points in [`Self::collect`]'s answer.
    fn points() -> u64 {
        (Counter::ALL.len() + Gauge::ALL.len()) as u64
    }
}

/// Exports every `schedule.interval` until `shutdown` resolves (sent or
/// dropped), then collects once more and sends what is still queued, within
/// `config.shutdown_timeout`.
///
/// Each interval's request joins a queue bounded by
/// `config.batch.max_queue_bytes` (encoded size), sent oldest first, one at
/// a time. A retryable failure leaves it at the front and closes the
/// backoff gate shared with nothing else ([`Backoff`]); the queue's bound
/// (oldest first) and the retry budget's age are the only ways a request
/// is dropped unsent, each counted.
pub async fn run_metrics_exporter(
    sources: MetricSources,
    config: OtlpConfig,
    schedule: ExportSchedule,
    stats: Arc<Stats>,
    mut shutdown: oneshot::Receiver<()>,
) {
    tracing::info!(
        endpoint = %config.endpoint,
        protocol = ?config.protocol,
        interval = ?schedule.interval,
        temporality = ?schedule.temporality,
        "exporting metrics over OTLP"
    );
    let transport = ProtocolTransport::<MetricsExport>::new(&config);
    let mut tick = tokio::time::interval_at(Instant::now() + schedule.interval, schedule.interval);
    // A slow collector delays the next collection instead of bunching them.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let disk = config
        .disk_queue
        .as_ref()
        .and_then(|queue| open_disk_queue(queue, METRICS_QUEUE, &stats));
    let mut queue = Pending::new(config.batch.max_queue_bytes, disk);
    let mut backoff = Backoff::new(&config.retry);
    let mut in_flight: Option<InFlight<'_>> = None;
    let mut closing: Option<Instant> = None;
    // At shutdown the queue gets one pass past a closed backoff: a
    // collector that came back during the wait would otherwise see nothing
    // of an outage's exports. The first failure ends that pass.
    let mut flush_on_close = false;
    loop {
        queue.expire(backoff.max_age(), &stats);
        if in_flight.is_none()
            && (backoff.is_open() || flush_on_close)
            && let Some(next) = queue.next(&stats)
        {
            let transport = &transport;
            let config = &config;
            in_flight = Some(Box::pin(async move {
                let result = attempt(transport, &next.request, config).await;
                (next, result)
            }));
        }
        queue.publish(&stats);
        // With a disk queue, what the shutdown pass did not send waits on
        // disk for the next start: no use waiting out the backoff.
        let done = queue.is_empty() || (queue.disk.is_some() && !flush_on_close);
        if closing.is_some() && in_flight.is_none() && done {
            break;
        }
        let wake_at = [closing, backoff.opens_at().filter(|_| !queue.is_empty())]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            _ = &mut shutdown, if closing.is_none() => {
                closing = Some(Instant::now() + config.shutdown_timeout);
                flush_on_close = true;
                queue.push(collect(&sources, schedule.temporality), &stats);
            }
            _ = tick.tick(), if closing.is_none() => {
                queue.push(collect(&sources, schedule.temporality), &stats);
            }
            (sent, result) = finish(&mut in_flight) => {
                in_flight = None;
                flush_on_close &= result.is_ok();
                settle(sent, result, &mut backoff, &mut queue, &config, &stats);
            }
            () = sleep_until(wake_at) => {
                if closing.is_some_and(|deadline| deadline <= Instant::now()) {
                    break;
                }
            }
        }
    }
    queue.publish(&stats);
    let unsent = queue.unsent(in_flight.is_some());
    if unsent > 0 {
        stats.add(Counter::MetricPointsDroppedShutdown, unsent);
        tracing::warn!(
            points = unsent,
            timeout = ?config.shutdown_timeout,
            "OTLP metrics exporter shut down before sending every export"
        );
    }
}

/// The request in flight; it comes back with its outcome.
type InFlight<'a> = Pin<
    Box<
        dyn Future<Output = (Collected, Result<ExportMetricsServiceResponse, SendError>)>
            + Send
            + 'a,
    >,
>;

async fn finish(
    in_flight: &mut Option<InFlight<'_>>,
) -> (Collected, Result<ExportMetricsServiceResponse, SendError>) {
    match in_flight {
        Some(request) => request.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Counts a finished attempt, or puts its request back for a retry.
fn settle(
    sent: Collected,
    result: Result<ExportMetricsServiceResponse, SendError>,
    backoff: &mut Backoff,
    queue: &mut Pending,
    config: &OtlpConfig,
    stats: &Stats,
) {
    match result {
        Ok(response) => {
            backoff.succeeded(&config.endpoint);
            let partial = response.partial_success.unwrap_or_default();
            // A confused server's negative or oversized count must not make
            // the counters lie the other way.
            let rejected = u64::try_from(partial.rejected_data_points)
                .unwrap_or(0)
                .min(sent.points);
            stats.add(Counter::MetricPointsExported, sent.points - rejected);
            queue.done(sent);
            if rejected > 0 || !partial.error_message.is_empty() {
                stats.add(Counter::MetricPointsExportFailed, rejected);
                tracing::warn!(
                    rejected,
                    message = partial.error_message,
                    "OTLP collector rejected part of the metrics"
                );
            }
        }
        Err(error) if backoff.failed(&error, &config.endpoint, stats) => queue.retry(sent),
        Err(error) => {
            let points = sent.points;
            queue.done(sent);
            stats.add(Counter::MetricPointsExportFailed, points);
            tracing::warn!(
                endpoint = %config.endpoint,
                points,
                error = %ErrorChain(&error),
                "OTLP metrics export refused, not retried"
            );
        }
    }
}

/// A request, the number of data points in it, its encoded size and when
/// it was collected.
struct Collected {
    request: ExportMetricsServiceRequest,
    points: u64,
    bytes: usize,
    at: Instant,
    /// Its file in the disk queue, once read back from there to be sent.
    file: Option<Entry>,
}

/// The metrics queue's counters on disk.
const METRICS_QUEUE: QueueMetrics = QueueMetrics {
    items: "metric points",
    dropped_full: Counter::MetricPointsDroppedQueueFull,
    dropped_write: Counter::MetricPointsDroppedQueueWrite,
    expired: Counter::MetricPointsDroppedExpired,
    recovered: Counter::MetricPointsRecovered,
    queued_items: Gauge::MetricsQueueDiskPoints,
    queued_bytes: Gauge::MetricsQueueDiskBytes,
};

/// Collected requests not sent yet, oldest first, bounded in bytes: in
/// memory, or with `export.queue_dir` on disk.
struct Pending {
    requests: VecDeque<Collected>,
    bytes: usize,
    max_bytes: usize,
    /// Points of the request in flight, for the shutdown count.
    on_wire: u64,
    disk: Option<DiskQueue>,
}

impl Pending {
    fn new(max_bytes: usize, disk: Option<DiskQueue>) -> Self {
        Self {
            requests: VecDeque::new(),
            bytes: 0,
            max_bytes: max_bytes.max(1),
            on_wire: 0,
            disk,
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.disk.as_ref().is_none_or(DiskQueue::is_empty)
    }

    fn publish(&self, stats: &Stats) {
        if let Some(disk) = &self.disk {
            disk.publish(stats);
        }
    }

    /// The oldest request, taken out to be sent.
    fn next(&mut self, stats: &Stats) -> Option<Collected> {
        let next = match &mut self.disk {
            Some(disk) => disk.next(stats).map(|(file, request)| Collected {
                request,
                points: file.items,
                bytes: 0,
                at: Instant::now(),
                file: Some(file),
            }),
            None => {
                let next = self.requests.pop_front()?;
                self.bytes -= next.bytes;
                Some(next)
            }
        }?;
        self.on_wire = next.points;
        Some(next)
    }

    /// A request done with (sent, or refused for good).
    fn done(&mut self, sent: Collected) {
        if let (Some(file), Some(disk)) = (sent.file, &mut self.disk) {
            disk.remove(file);
        }
    }

    /// Points not sent at shutdown: those in memory, and the request in
    /// flight if it is not on disk.
    fn unsent(&self, in_flight: bool) -> u64 {
        let queued: u64 = self.requests.iter().map(|pending| pending.points).sum();
        match &self.disk {
            Some(disk) => {
                let left = disk.items() + if in_flight { self.on_wire } else { 0 };
                if left > 0 {
                    tracing::info!(
                        "{left} metric points left in the export queue directory for the next start"
                    );
                }
                queued
            }
            None => queued + if in_flight { self.on_wire } else { 0 },
        }
    }

    /// Queues a request: on disk when there is a disk queue, else in
    /// memory, dropping the oldest until it fits (a request larger than
    /// the bound on its own still goes in, alone).
    fn push(&mut self, collected: Collected, stats: &Stats) {
        stats.add(Counter::MetricPointsCollected, collected.points);
        if let Some(disk) = &mut self.disk {
            let now_ms = disk.now_ms();
            disk.push(&collected.request, collected.points, now_ms, stats);
            return;
        }
        while self.bytes + collected.bytes > self.max_bytes
            && let Some(oldest) = self.requests.pop_front()
        {
            self.bytes -= oldest.bytes;
            stats.add(Counter::MetricPointsDroppedQueueFull, oldest.points);
            tracing::warn!(
                points = oldest.points,
                max_bytes = self.max_bytes,
                "metrics export queue full, dropping the oldest export (see {})",
                Counter::MetricPointsDroppedQueueFull.name()
            );
        }
        self.bytes += collected.bytes;
        self.requests.push_back(collected);
    }

    /// A request that failed with a retryable error goes back first.
    fn retry(&mut self, mut collected: Collected) {
        if let (Some(file), Some(disk)) = (collected.file.take(), &mut self.disk) {
            disk.requeue(file);
            return;
        }
        self.bytes += collected.bytes;
        self.requests.push_front(collected);
    }

    /// Drops requests collected longer than `max_age` ago.
    fn expire(&mut self, max_age: Duration, stats: &Stats) {
        if let Some(disk) = &mut self.disk {
            disk.expire(max_age, stats);
        }
        let Some(cutoff) = Instant::now().checked_sub(max_age) else {
            return;
        };
        while let Some(oldest) = self.requests.front()
            && oldest.at <= cutoff
        {
            let points = oldest.points;
            self.bytes -= oldest.bytes;
            self.requests.pop_front();
            stats.add(Counter::MetricPointsDroppedExpired, points);
            tracing::warn!(
                points,
                ?max_age,
                "OTLP endpoint unreachable for too long, dropping the oldest metrics export (see {})",
                Counter::MetricPointsDroppedExpired.name()
            );
        }
    }
}

/// The RED histograms (if any changed) and the agent's own metrics, which
/// are always there: an export every interval also says the agent lives.
fn collect(sources: &MetricSources, temporality: Temporality) -> Collected {
    let now_unix_ns = unix_now_ns();
    let mut request = ExportMetricsServiceRequest::default();
    let mut points = AgentTelemetry::points();
    if let Some(red) = &sources.red {
        let collected = red.collect(temporality);
        points += collected.iter().map(|r| r.points.len() as u64).sum::<u64>();
        request = to_request(collected, red.bounds(), temporality, now_unix_ns);
    }
    request
        .resource_metrics
        .push(sources.agent.collect(now_unix_ns));
    Collected {
        bytes: request.encoded_len(),
        request,
        points,
        at: Instant::now(),
        file: None,
    }
}

/// One `ResourceMetrics` per service, one `Metric` per instrument in use.
fn to_request(
    collected: Vec<ResourcePoints>,
    bounds: &[f64],
    temporality: Temporality,
    now_unix_ns: u64,
) -> ExportMetricsServiceRequest {
    let aggregation_temporality = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative,
        Temporality::Delta => AggregationTemporality::Delta,
    };
    let resource_metrics = collected
        .into_iter()
        .map(|service| {
            let metrics = Instrument::ALL
                .iter()
                .filter_map(|&instrument| {
                    let data_points: Vec<HistogramDataPoint> = service
                        .points
                        .iter()
                        .filter(|point| point.instrument == instrument)
                        .map(|point| data_point(point, bounds, now_unix_ns))
                        .collect();
                    (!data_points.is_empty()).then(|| Metric {
                        name: instrument.name().to_owned(),
                        description: instrument.description().to_owned(),
                        unit: Instrument::UNIT.to_owned(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points,
                            aggregation_temporality: aggregation_temporality.into(),
                        })),
                        ..Default::default()
                    })
                })
                .collect();
            ResourceMetrics {
                resource: Some(proto_resource(&service.resource)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

fn data_point(point: &Point, bounds: &[f64], now_unix_ns: u64) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: point
            .attributes
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    LabelValue::Str(text) => AttributeValue::from(text.as_ref()),
                    LabelValue::Int(number) => AttributeValue::Int(*number),
                    LabelValue::Bool(flag) => AttributeValue::Bool(*flag),
                };
                key_value((*key).to_owned(), value)
            })
            .collect(),
        start_time_unix_nano: point.start_unix_ns,
        time_unix_nano: now_unix_ns.max(point.start_unix_ns),
        count: point.count,
        sum: Some(point.sum),
        bucket_counts: point.bucket_counts.clone(),
        explicit_bounds: bounds_for(point.instrument, bounds).to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;
    use crate::metrics::red::DEFAULT_BUCKETS;
    use crate::model::measure::{Measurement, Protocol};
    use crate::model::span::SpanKind;
    use crate::test_support::resource;

    fn call(kind: SpanKind, status: u16, millis: u64) -> Measurement<'static> {
        Measurement {
            kind,
            protocol: Protocol::Http {
                method: "GET",
                route: (kind == SpanKind::Server).then_some("/users/{id}".into()),
                scheme: None,
                status_code: Some(status),
            },
            error_type: (status >= 500).then_some("500".into()),
            server: None,
            duration: Duration::from_millis(millis),
        }
    }

    /// RED metrics (none: disabled) and the agent's telemetry from `stats`.
    fn sources(red: Option<Arc<RedMetrics>>, stats: Arc<Stats>) -> MetricSources {
        MetricSources {
            red,
            agent: AgentTelemetry {
                stats,
                resource: Resource {
                    key: "agent".into(),
                    service_name: "sonde".into(),
                    attributes: vec![("service.name".into(), AttributeValue::from("sonde"))],
                },
                start_unix_ns: 1_700_000_000_000_000_000,
            },
        }
    }

    fn red_metrics() -> Arc<RedMetrics> {
        Arc::new(RedMetrics::new(&DEFAULT_BUCKETS, 10, Arc::default()).unwrap())
    }

    #[test]
    fn histograms_become_otlp_metrics() {
        let red = red_metrics();
        let api = resource("api", "api");
        red.record(&api, &call(SpanKind::Server, 200, 30));
        red.record(&api, &call(SpanKind::Server, 500, 300));
        red.record(&api, &call(SpanKind::Client, 200, 3));
        red.record(&resource("web", "web"), &call(SpanKind::Server, 200, 3));

        let collected = collect(&sources(Some(red), Arc::default()), Temporality::Cumulative);
        assert_eq!(collected.points, 4 + AgentTelemetry::points());
        let request = collected.request;
        assert_eq!(request.resource_metrics.len(), 3, "api, web, the agent");
        let api_metrics = &request.resource_metrics[0];
        let resource = api_metrics.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        let scope_metrics = &api_metrics.scope_metrics[0];
        assert_eq!(scope_metrics.scope.as_ref().unwrap().name, "sonde");
        let names: Vec<&str> = scope_metrics
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "http.server.request.duration",
                "http.client.request.duration"
            ]
        );
        let server = &scope_metrics.metrics[0];
        assert_eq!(server.unit, "s");
        let Some(metric::Data::Histogram(histogram)) = &server.data else {
            panic!("not a histogram: {server:?}");
        };
        assert_eq!(
            histogram.aggregation_temporality,
            i32::from(AggregationTemporality::Cumulative)
        );
        assert_eq!(histogram.data_points.len(), 2);
        let ok = &histogram.data_points[0];
        assert_eq!(ok.count, 1);
        assert_eq!(ok.explicit_bounds, DEFAULT_BUCKETS);
        assert_eq!(ok.bucket_counts.len(), DEFAULT_BUCKETS.len() + 1);
        assert_eq!(ok.bucket_counts[3], 1, "30 ms is in (0.025, 0.05]");
        assert!(ok.time_unix_nano >= ok.start_time_unix_nano);
        assert!(ok.start_time_unix_nano > 0);
        let attributes: Vec<(&str, &any_value::Value)> = ok
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().unwrap().value.as_ref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            attributes,
            vec![
                (
                    "http.request.method",
                    &any_value::Value::StringValue("GET".into())
                ),
                (
                    "http.route",
                    &any_value::Value::StringValue("/users/{id}".into())
                ),
                (
                    "http.response.status_code",
                    &any_value::Value::IntValue(200)
                ),
            ]
        );
        let failed = &histogram.data_points[1];
        assert_eq!(failed.bucket_counts[7], 1, "300 ms is in (0.25, 0.5]");
        assert_eq!(failed.sum, Some(0.3));
    }

    #[test]
    fn delta_requests_carry_only_what_changed() {
        let red = red_metrics();
        let sources = sources(Some(Arc::clone(&red)), Arc::default());
        let api = resource("api", "api");
        red.record(&api, &call(SpanKind::Server, 200, 30));
        let first = collect(&sources, Temporality::Delta);
        assert_eq!(first.points, 1 + AgentTelemetry::points());
        let idle = collect(&sources, Temporality::Delta);
        assert_eq!(idle.points, AgentTelemetry::points(), "nothing new");
        assert_eq!(idle.request.resource_metrics.len(), 1, "only the agent's");
        red.record(&api, &call(SpanKind::Server, 200, 30));
        red.record(&api, &call(SpanKind::Server, 200, 30));
        let second = collect(&sources, Temporality::Delta);
        let metric = &second.request.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Histogram(histogram)) = &metric.data else {
            panic!("not a histogram: {metric:?}");
        };
        assert_eq!(
            histogram.aggregation_temporality,
            i32::from(AggregationTemporality::Delta)
        );
        assert_eq!(histogram.data_points[0].count, 2);
    }

    /// Every counter and gauge of the agent, under its own resource:
    /// counters as monotonic cumulative sums from the agent's start,
    /// gauges as gauges, whatever the RED temporality, and also with RED
    /// metrics off.
    #[test]
    fn the_agents_own_telemetry_is_a_resource_of_its_own() {
        let stats = Arc::new(Stats::default());
        stats.add(Counter::SpansExported, 7);
        stats.set_gauge(Gauge::ExportQueueSpans, 3);
        let collected = collect(&sources(None, Arc::clone(&stats)), Temporality::Delta);
        assert_eq!(collected.points, AgentTelemetry::points());
        let [agent] = &collected.request.resource_metrics[..] else {
            panic!("{:#?}", collected.request);
        };
        let resource = agent.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        let metrics = &agent.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), Counter::ALL.len() + Gauge::ALL.len());
        let find = |name: &str| {
            metrics
                .iter()
                .find(|metric| metric.name == name)
                .unwrap_or_else(|| panic!("no {name} in {metrics:#?}"))
        };
        let value = |point: &NumberDataPoint| match point.value {
            Some(number_data_point::Value::AsInt(value)) => value,
            other => panic!("not an integer: {other:?}"),
        };
        let exported = find("sonde_spans_exported");
        assert_eq!(exported.description, Counter::SpansExported.help());
        let Some(metric::Data::Sum(sum)) = &exported.data else {
            panic!("not a sum: {exported:?}");
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            i32::from(AggregationTemporality::Cumulative)
        );
        let point = &sum.data_points[0];
        assert_eq!(value(point), 7);
        assert_eq!(point.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert!(point.time_unix_nano > point.start_time_unix_nano);
        let queue = find("sonde_export_queue_spans");
        let Some(metric::Data::Gauge(gauge)) = &queue.data else {
            panic!("not a gauge: {queue:?}");
        };
        assert_eq!(value(&gauge.data_points[0]), 3);
        assert_eq!(gauge.data_points[0].start_time_unix_nano, 0);
    }
}
