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
//! Every exported data point ends up in `sonde_metric_points_exported` or
//! `sonde_metric_points_export_failed`. A failed cumulative export loses
//! nothing for good (the next one carries the totals); a failed delta
//! export loses its interval.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge as ProtoGauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use super::red::{
    Instrument, LabelValue, Point, RedMetrics, ResourcePoints, Temporality, unix_now_ns,
};
use crate::export::otlp::{
    ErrorChain, MetricsExport, OtlpConfig, ProtocolTransport, SendError, key_value, proto_resource,
    scope, send_with_retry,
};
use crate::spans::model::{AttributeValue, Resource};
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
/// dropped), then lets an export under way finish and exports once more,
/// both within `config.shutdown_timeout`.
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
    // A slow collector delays the next export instead of bunching them.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = loop {
        tokio::select! {
            _ = &mut shutdown => break Instant::now() + config.shutdown_timeout,
            _ = tick.tick() => {}
        }
        let collected = collect(&sources, schedule.temporality);
        let points = collected.points;
        let sending = export(&transport, collected, &config, &stats);
        tokio::pin!(sending);
        tokio::select! {
            () = &mut sending => continue,
            _ = &mut shutdown => {}
        }
        // Shutdown during an export: it may still finish, within the
        // deadline the last export below shares.
        let deadline = Instant::now() + config.shutdown_timeout;
        if tokio::time::timeout_at(deadline, sending).await.is_err()
            && schedule.temporality == Temporality::Delta
        {
            // The cumulative totals go out below; a delta interval is lost.
            MetricsLost {
                points,
                cause: LossCause::Abandoned,
            }
            .emit(&stats);
        }
        break deadline;
    };
    let collected = collect(&sources, schedule.temporality);
    let points = collected.points;
    let last = export(&transport, collected, &config, &stats);
    if tokio::time::timeout_at(deadline, last).await.is_err() {
        MetricsLost {
            points,
            cause: LossCause::Abandoned,
        }
        .emit(&stats);
    }
}

/// A request and the number of data points in it.
struct Collected {
    request: ExportMetricsServiceRequest,
    points: u64,
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
    Collected { request, points }
}

async fn export(
    transport: &ProtocolTransport<MetricsExport>,
    collected: Collected,
    config: &OtlpConfig,
    stats: &Stats,
) {
    match send_with_retry(transport, &collected.request, config, stats).await {
        Ok(response) => {
            let partial = response.partial_success.unwrap_or_default();
            // A confused server's negative or oversized count must not make
            // the counters lie the other way.
            let rejected = u64::try_from(partial.rejected_data_points)
                .unwrap_or(0)
                .min(collected.points);
            stats.add(Counter::MetricPointsExported, collected.points - rejected);
            if rejected > 0 || !partial.error_message.is_empty() {
                stats.add(Counter::MetricPointsExportFailed, rejected);
                tracing::warn!(
                    rejected,
                    message = partial.error_message,
                    "OTLP collector rejected part of the metrics"
                );
            }
        }
        Err(error) => MetricsLost {
            points: collected.points,
            cause: LossCause::Failed {
                endpoint: &config.endpoint,
                error: &error,
            },
        }
        .emit(stats),
    }
}

/// Data points given up on.
struct MetricsLost<'a> {
    points: u64,
    cause: LossCause<'a>,
}

enum LossCause<'a> {
    Failed {
        endpoint: &'a hyper::Uri,
        error: &'a SendError,
    },
    Abandoned,
}

impl MetricsLost<'_> {
    fn emit(self, stats: &Stats) {
        stats.add(Counter::MetricPointsExportFailed, self.points);
        match self.cause {
            LossCause::Failed { endpoint, error } => tracing::warn!(
                %endpoint,
                points = self.points,
                error = %ErrorChain(error),
                "OTLP metrics export failed"
            ),
            LossCause::Abandoned => tracing::warn!(
                points = self.points,
                "a metrics export did not finish before shutdown"
            ),
        }
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
                    LabelValue::Str(text) => AttributeValue::Str(text.to_string()),
                    LabelValue::Int(number) => AttributeValue::Int(*number),
                    LabelValue::Bool(flag) => AttributeValue::Bool(*flag),
                };
                key_value((*key).to_owned(), &value)
            })
            .collect(),
        start_time_unix_nano: point.start_unix_ns,
        time_unix_nano: now_unix_ns.max(point.start_unix_ns),
        count: point.count,
        sum: Some(point.sum),
        bucket_counts: point.bucket_counts.clone(),
        explicit_bounds: bounds.to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;
    use crate::metrics::red::{Call, DEFAULT_BUCKETS, Protocol};
    use crate::spans::model::SpanKind;
    use crate::test_support::resource;

    fn call(kind: SpanKind, status: u16, millis: u64) -> Call<'static> {
        Call {
            kind,
            protocol: Protocol::Http {
                method: "GET",
                route: (kind == SpanKind::Server).then_some("/users/{id}"),
                scheme: None,
                status_code: Some(status),
            },
            error_type: (status >= 500).then_some("500"),
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
