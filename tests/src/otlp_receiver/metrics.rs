//! The receiver's metrics side: `ExportMetricsServiceRequest` -> flat
//! [`ReceivedHistogram`] points (RED metrics) and [`ReceivedNumber`] points
//! (sums and gauges: the agent's own telemetry), each with its resource, so
//! tests compare what a collector would have stored.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, NumberDataPoint, metric, number_data_point,
};
use serde_json::Value;

use super::flatten::attributes;

/// One histogram data point with its metric, resource and scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedHistogram {
    /// Resource attributes.
    pub resource: BTreeMap<String, Value>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Metric name, e.g. `http.server.request.duration`.
    pub name: String,
    /// Metric unit.
    pub unit: String,
    /// Cumulative or delta.
    pub temporality: AggregationTemporality,
    /// Data point attributes.
    pub attributes: BTreeMap<String, Value>,
    /// Start of the period, Unix ns.
    pub start_unix_ns: u64,
    /// End of the period, Unix ns.
    pub time_unix_ns: u64,
    /// Number of measurements.
    pub count: u64,
    /// Sum of the measurements.
    pub sum: Option<f64>,
    /// Per-bucket counts (one more than the bounds).
    pub bucket_counts: Vec<u64>,
    /// Upper bounds.
    pub explicit_bounds: Vec<f64>,
}

impl ReceivedHistogram {
    /// Measurements at or below `bound` (an explicit bound of the point),
    /// like Prometheus' `le` buckets.
    pub fn count_le(&self, bound: f64) -> u64 {
        let buckets = self
            .explicit_bounds
            .iter()
            .position(|b| *b == bound)
            .unwrap_or_else(|| panic!("{bound} is not a bound of {self:#?}"));
        self.bucket_counts[..=buckets].iter().sum()
    }
}

/// What kind of number metric a [`ReceivedNumber`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberKind {
    /// A sum, with its monotonicity and temporality.
    Sum {
        /// Only ever grows.
        monotonic: bool,
        /// Cumulative or delta.
        temporality: AggregationTemporality,
    },
    /// A gauge.
    Gauge,
}

/// One sum or gauge data point with its metric, resource and scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedNumber {
    /// Resource attributes.
    pub resource: BTreeMap<String, Value>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Metric name, e.g. `sonde_spans_exported`.
    pub name: String,
    /// Sum or gauge.
    pub kind: NumberKind,
    /// Data point attributes.
    pub attributes: BTreeMap<String, Value>,
    /// Start of the period, Unix ns (0 for gauges).
    pub start_unix_ns: u64,
    /// When the value was taken, Unix ns.
    pub time_unix_ns: u64,
    /// The value (integers converted).
    pub value: f64,
}

/// Every histogram and number point of a request, in order.
pub(super) fn flatten(
    request: &ExportMetricsServiceRequest,
) -> (Vec<ReceivedHistogram>, Vec<ReceivedNumber>) {
    let mut histograms = Vec::new();
    let mut numbers = Vec::new();
    for resource_metrics in &request.resource_metrics {
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(|resource| attributes(&resource.attributes))
            .unwrap_or_default();
        for scope_metrics in &resource_metrics.scope_metrics {
            let scope_name = scope_metrics
                .scope
                .as_ref()
                .map(|scope| scope.name.clone())
                .unwrap_or_default();
            for metric in &scope_metrics.metrics {
                let number = |kind: NumberKind, point: &NumberDataPoint| ReceivedNumber {
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    name: metric.name.clone(),
                    kind,
                    attributes: attributes(&point.attributes),
                    start_unix_ns: point.start_time_unix_nano,
                    time_unix_ns: point.time_unix_nano,
                    value: match point.value {
                        Some(number_data_point::Value::AsInt(value)) => value as f64,
                        Some(number_data_point::Value::AsDouble(value)) => value,
                        None => f64::NAN,
                    },
                };
                let histogram = match &metric.data {
                    Some(metric::Data::Histogram(histogram)) => histogram,
                    Some(metric::Data::Sum(sum)) => {
                        let kind = NumberKind::Sum {
                            monotonic: sum.is_monotonic,
                            temporality: temporality(sum.aggregation_temporality),
                        };
                        numbers.extend(sum.data_points.iter().map(|point| number(kind, point)));
                        continue;
                    }
                    Some(metric::Data::Gauge(gauge)) => {
                        let points = gauge.data_points.iter();
                        numbers.extend(points.map(|point| number(NumberKind::Gauge, point)));
                        continue;
                    }
                    // Not produced by the agent.
                    _ => continue,
                };
                let temporality = temporality(histogram.aggregation_temporality);
                histograms.extend(histogram.data_points.iter().map(|point| ReceivedHistogram {
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    name: metric.name.clone(),
                    unit: metric.unit.clone(),
                    temporality,
                    attributes: attributes(&point.attributes),
                    start_unix_ns: point.start_time_unix_nano,
                    time_unix_ns: point.time_unix_nano,
                    count: point.count,
                    sum: point.sum,
                    bucket_counts: point.bucket_counts.clone(),
                    explicit_bounds: point.explicit_bounds.clone(),
                }));
            }
        }
    }
    (histograms, numbers)
}

fn temporality(value: i32) -> AggregationTemporality {
    AggregationTemporality::try_from(value).unwrap_or(AggregationTemporality::Unspecified)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };
    use serde_json::json;

    use super::*;

    #[test]
    fn points_carry_metric_and_resource() {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("api".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "sonde_spans_exported".into(),
                            data: Some(metric::Data::Sum(Sum {
                                data_points: vec![NumberDataPoint {
                                    start_time_unix_nano: 1,
                                    time_unix_nano: 2,
                                    value: Some(number_data_point::Value::AsInt(7)),
                                    ..Default::default()
                                }],
                                aggregation_temporality: AggregationTemporality::Cumulative.into(),
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "sonde_export_queue_bytes".into(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    value: Some(number_data_point::Value::AsDouble(0.5)),
                                    ..Default::default()
                                }],
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "http.server.request.duration".into(),
                            unit: "s".into(),
                            data: Some(metric::Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    count: 3,
                                    bucket_counts: vec![1, 2, 0],
                                    explicit_bounds: vec![0.1, 1.0],
                                    ..Default::default()
                                }],
                                aggregation_temporality: AggregationTemporality::Delta.into(),
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (points, numbers) = flatten(&request);
        let [sum, gauge] = &numbers[..] else {
            panic!("{numbers:#?}");
        };
        assert_eq!(
            (sum.name.as_str(), sum.kind, sum.value, sum.start_unix_ns),
            (
                "sonde_spans_exported",
                NumberKind::Sum {
                    monotonic: true,
                    temporality: AggregationTemporality::Cumulative
                },
                7.0,
                1
            )
        );
        assert_eq!(sum.resource["service.name"], json!("api"));
        assert_eq!((gauge.kind, gauge.value), (NumberKind::Gauge, 0.5));
        assert_eq!(points.len(), 1);
        let point = &points[0];
        assert_eq!(point.resource["service.name"], json!("api"));
        assert_eq!(point.name, "http.server.request.duration");
        assert_eq!(point.temporality, AggregationTemporality::Delta);
        assert_eq!(point.count_le(0.1), 1);
        assert_eq!(point.count_le(1.0), 3);
    }
}
