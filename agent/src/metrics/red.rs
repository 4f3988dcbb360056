//! RED metrics: one duration histogram per finished call (rate and errors
//! come from its count and its `error.type` attribute), per instrument
//! (`http.server.request.duration`, `http.client.request.duration`,
//! `rpc.server.call.duration`, `rpc.client.call.duration`), per attribute
//! set, per instrumented service.
//!
//! Cardinality is bounded per service (one resource, i.e. one instrumented
//! process, as an SDK inside it would bound it): once a service has
//! `cardinality_limit` series, measurements for a new attribute set go to
//! one overflow series per instrument, marked `otel.metric.overflow=true`
//! as OpenTelemetry SDKs mark theirs, and are counted in
//! `sonde_metric_measurements_folded`. At most [`MAX_SERVICES`] services are
//! kept, and a service idle for [`SERVICE_IDLE_TTL`] is forgotten (its
//! process has usually exited), so memory stays bounded whatever the
//! traffic.
//!
//! Values are always kept cumulative (Prometheus needs that); delta
//! temporality for OTLP is computed at collection time against what the
//! previous delta collection returned.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// hashbrown for lookups by a borrowed form of the key (`Equivalent`): a
// measurement finds its series without building an owned key. Its default
// hasher (foldhash, seeded per process) is much cheaper than SipHash; the
// maps are bounded (services, series per service), so a peer choosing
// label values could at worst slow a bounded map.
use hashbrown::{Equivalent, HashMap};
use serde::Deserialize;

use crate::model::measure::{Instrument, LabelRef, LabelValue, Labels, Measurement};
use crate::model::span::Resource;
use crate::telemetry::{Counter, Stats};

/// Explicit bucket bounds, in seconds, from the HTTP and RPC semantic
/// conventions.
pub const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Bucket bounds of `db.client.operation.duration`, from the database
/// conventions (fixed: `metrics.buckets` configures the HTTP and RPC ones).
pub const DB_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// The bounds an instrument's histograms use: `configured` (the HTTP and
/// RPC ones), or the database conventions' own.
pub fn bounds_for(instrument: Instrument, configured: &[f64]) -> &[f64] {
    match instrument {
        Instrument::DbClient => &DB_BUCKETS,
        _ => configured,
    }
}

/// Services (resources) with series at once; measurements of further ones
/// are dropped and counted.
pub const MAX_SERVICES: usize = 1024;
/// A service without a measurement for this long is forgotten.
pub const SERVICE_IDLE_TTL: Duration = Duration::from_secs(15 * 60);
/// How often recording looks for idle services.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The attribute OpenTelemetry SDKs put on their overflow series.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// How OTLP data points relate to each other over time.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Each point covers everything since the series started (the
    /// OpenTelemetry default, and what Prometheus needs).
    #[default]
    Cumulative,
    /// Each point covers the time since the previous export.
    Delta,
}

/// Invalid metrics settings.
#[derive(Debug, thiserror::Error)]
pub enum RedError {
    /// Bucket bounds must be finite and strictly increasing.
    #[error("bucket bounds {bounds:?}: {reason}")]
    Buckets {
        /// The bounds as configured.
        bounds: Vec<f64>,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A budget of zero series would fold everything.
    #[error("the cardinality limit must be at least 1")]
    ZeroCardinalityLimit,
}

/// Checks explicit bucket bounds.
fn check_buckets(bounds: &[f64]) -> Result<(), RedError> {
    let invalid = |reason| RedError::Buckets {
        bounds: bounds.to_vec(),
        reason,
    };
    if bounds.is_empty() {
        return Err(invalid("at least one bound is needed"));
    }
    if !bounds.iter().all(|bound| bound.is_finite()) {
        return Err(invalid("bounds must be finite"));
    }
    if !bounds.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(invalid("bounds must be strictly increasing"));
    }
    Ok(())
}

/// The metrics registry, shared (`Arc`) by the stage that records and the
/// exporters that collect. One mutex, held for a hash lookup per record and
/// for a copy per collection.
#[derive(Debug)]
pub struct RedMetrics {
    bounds: Arc<[f64]>,
    cardinality_limit: usize,
    stats: Arc<Stats>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// By resource key.
    services: HashMap<String, Service>,
    last_sweep: Instant,
}

/// The series of one resource.
#[derive(Debug)]
struct Service {
    resource: Arc<Resource>,
    series: HashMap<SeriesKey, Histogram>,
    /// At most one per instrument.
    overflow: BTreeMap<Instrument, Histogram>,
    last_recorded: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SeriesKey {
    instrument: Instrument,
    attributes: Vec<(&'static str, LabelValue)>,
}

/// A series key borrowed from a measurement, to look the series up by.
struct SeriesRef<'a> {
    instrument: Instrument,
    labels: Labels<'a>,
}

/// Hashes a series key as a sequence of borrowed labels, so that
/// [`SeriesKey`] and [`SeriesRef`] hash alike.
fn hash_series<'a>(
    state: &mut impl Hasher,
    instrument: Instrument,
    labels: impl ExactSizeIterator<Item = (&'static str, LabelRef<'a>)>,
) {
    instrument.hash(state);
    state.write_usize(labels.len());
    for (key, value) in labels {
        key.hash(state);
        value.hash(state);
    }
}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let labels = self
            .attributes
            .iter()
            .map(|(key, value)| (*key, value.borrowed()));
        hash_series(state, self.instrument, labels);
    }
}

impl Hash for SeriesRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_series(
            state,
            self.instrument,
            self.labels.as_slice().iter().copied(),
        );
    }
}

impl Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        let labels = self.labels.as_slice();
        self.instrument == key.instrument
            && labels.len() == key.attributes.len()
            && labels
                .iter()
                .zip(&key.attributes)
                .all(|((key, value), (other_key, other))| {
                    key == other_key && *value == other.borrowed()
                })
    }
}

impl SeriesRef<'_> {
    fn to_key(&self) -> SeriesKey {
        SeriesKey {
            instrument: self.instrument,
            attributes: self
                .labels
                .as_slice()
                .iter()
                .map(|&(key, value)| (key, value.to_value()))
                .collect(),
        }
    }
}

/// Cumulative explicit-bucket histogram.
#[derive(Debug)]
struct Histogram {
    start_unix_ns: u64,
    /// One per bound, plus the (last bound, +Inf) bucket.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
    /// What the previous delta collection saw (delta temporality only).
    delta_base: Option<DeltaBase>,
}

#[derive(Debug)]
struct DeltaBase {
    at_unix_ns: u64,
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

/// One service's data points.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourcePoints {
    /// The service.
    pub resource: Arc<Resource>,
    /// Its points, sorted by instrument, then attributes.
    pub points: Vec<Point>,
}

/// One histogram data point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Which histogram.
    pub instrument: Instrument,
    /// Attributes; `otel.metric.overflow=true` alone for the overflow series.
    pub attributes: Vec<(&'static str, LabelValue)>,
    /// Start of the period the point covers, Unix ns.
    pub start_unix_ns: u64,
    /// Per-bucket (not cumulative) counts, one more than the bounds.
    pub bucket_counts: Vec<u64>,
    /// Sum of the durations, seconds.
    pub sum: f64,
    /// Number of calls.
    pub count: u64,
}

impl RedMetrics {
    /// An empty registry.
    pub fn new(
        bounds: &[f64],
        cardinality_limit: usize,
        stats: Arc<Stats>,
    ) -> Result<Self, RedError> {
        Self::check_settings(bounds, cardinality_limit)?;
        Ok(Self {
            bounds: bounds.into(),
            cardinality_limit,
            stats,
            inner: Mutex::new(Inner {
                services: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        })
    }

    /// The checks [`Self::new`] makes, for validating a configuration.
    pub fn check_settings(bounds: &[f64], cardinality_limit: usize) -> Result<(), RedError> {
        check_buckets(bounds)?;
        if cardinality_limit == 0 {
            return Err(RedError::ZeroCardinalityLimit);
        }
        Ok(())
    }

    /// The configured explicit bucket bounds, seconds (see [`bounds_for`]).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Records one finished call of `resource`.
    pub fn record(&self, resource: &Arc<Resource>, call: &Measurement<'_>) {
        let instrument = call.instrument();
        let bounds = bounds_for(instrument, &self.bounds);
        let key = SeriesRef {
            instrument,
            labels: call.labels(),
        };
        let seconds = call.duration.as_secs_f64();
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if now.duration_since(inner.last_sweep) >= SWEEP_INTERVAL {
            inner.sweep(now);
        }
        if !inner.services.contains_key(resource.key.as_str()) {
            if inner.services.len() >= MAX_SERVICES {
                self.stats.add(Counter::MetricMeasurementsDropped, 1);
                return;
            }
            inner.services.insert(
                resource.key.clone(),
                Service {
                    resource: Arc::clone(resource),
                    series: HashMap::new(),
                    overflow: BTreeMap::new(),
                    last_recorded: now,
                },
            );
        }
        let Some(service) = inner.services.get_mut(resource.key.as_str()) else {
            return;
        };
        service.last_recorded = now;
        // The registry may have learnt more about the process since (its
        // pod, say): new points carry the newest resource.
        if !Arc::ptr_eq(&service.resource, resource) {
            service.resource = Arc::clone(resource);
        }
        if let Some(histogram) = service.series.get_mut(&key) {
            histogram.observe(seconds, bounds);
            return;
        }
        let buckets = bounds.len() + 1;
        let histogram = if service.series.len() < self.cardinality_limit {
            service
                .series
                .entry(key.to_key())
                .or_insert_with(|| Histogram::new(buckets))
        } else {
            self.stats.add(Counter::MetricMeasurementsFolded, 1);
            service
                .overflow
                .entry(instrument)
                .or_insert_with(|| Histogram::new(buckets))
        };
        histogram.observe(seconds, bounds);
    }

    /// Every series' cumulative value, or with [`Temporality::Delta`] what
    /// changed since the previous delta collection (series without new
    /// measurements are left out). Also forgets idle services.
    pub fn collect(&self, temporality: Temporality) -> Vec<ResourcePoints> {
        let now_unix_ns = unix_now_ns();
        let mut inner = self.lock();
        inner.sweep(Instant::now());
        let mut collected: Vec<ResourcePoints> = inner
            .services
            .values_mut()
            .map(|service| {
                let regular = service
                    .series
                    .iter_mut()
                    .map(|(key, histogram)| (key.instrument, key.attributes.clone(), histogram));
                let overflow = service.overflow.iter_mut().map(|(instrument, histogram)| {
                    let attributes = vec![(OVERFLOW_ATTRIBUTE, LabelValue::Bool(true))];
                    (*instrument, attributes, histogram)
                });
                let mut points: Vec<Point> = regular
                    .chain(overflow)
                    .filter_map(|(instrument, attributes, histogram)| {
                        let (start_unix_ns, bucket_counts, sum, count) = match temporality {
                            Temporality::Cumulative => histogram.cumulative(),
                            Temporality::Delta => histogram.take_delta(now_unix_ns)?,
                        };
                        Some(Point {
                            instrument,
                            attributes,
                            start_unix_ns,
                            bucket_counts,
                            sum,
                            count,
                        })
                    })
                    .collect();
                points.sort_by(|a, b| {
                    (a.instrument, &a.attributes).cmp(&(b.instrument, &b.attributes))
                });
                ResourcePoints {
                    resource: Arc::clone(&service.resource),
                    points,
                }
            })
            .filter(|service| !service.points.is_empty())
            .collect();
        drop(inner);
        collected.sort_by(|a, b| a.resource.key.cmp(&b.resource.key));
        collected
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent, so a panic elsewhere
        // while holding the lock does not make the data unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.services
            .retain(|_, service| now.duration_since(service.last_recorded) < SERVICE_IDLE_TTL);
    }
}

impl Histogram {
    fn new(buckets: usize) -> Self {
        Self {
            start_unix_ns: unix_now_ns(),
            counts: vec![0; buckets].into_boxed_slice(),
            sum: 0.0,
            count: 0,
            delta_base: None,
        }
    }

    /// Bucket `i` holds values in `(bounds[i-1], bounds[i]]`, as OTLP and
    /// Prometheus (`le`) define them.
    fn observe(&mut self, value: f64, bounds: &[f64]) {
        let bucket = bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn cumulative(&self) -> (u64, Vec<u64>, f64, u64) {
        (
            self.start_unix_ns,
            self.counts.to_vec(),
            self.sum,
            self.count,
        )
    }

    /// The change since the previous call, `None` if nothing changed.
    fn take_delta(&mut self, now_unix_ns: u64) -> Option<(u64, Vec<u64>, f64, u64)> {
        let (start, counts, sum, count) = match &self.delta_base {
            Some(base) => (
                base.at_unix_ns,
                self.counts
                    .iter()
                    .zip(base.counts.iter())
                    .map(|(now, then)| now - then)
                    .collect(),
                self.sum - base.sum,
                self.count - base.count,
            ),
            None => self.cumulative(),
        };
        if count == 0 {
            return None;
        }
        self.delta_base = Some(DeltaBase {
            at_unix_ns: now_unix_ns,
            counts: self.counts.clone(),
            sum: self.sum,
            count: self.count,
        });
        Some((start, counts, sum, count))
    }
}

/// Wall-clock time now, Unix nanoseconds (metric timestamps).
pub(super) fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::measure::{Protocol, ServerAddress};
    use crate::model::span::SpanKind;
    use crate::test_support::resource;

    fn http_server(route: &str, status: u16, millis: u64) -> Measurement<'_> {
        Measurement {
            kind: SpanKind::Server,
            protocol: Protocol::Http {
                method: "GET",
                route: Some(route.into()),
                scheme: Some("http"),
                status_code: Some(status),
            },
            error_type: None,
            server: None,
            duration: Duration::from_millis(millis),
        }
    }

    fn registry(limit: usize) -> (RedMetrics, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let red = RedMetrics::new(&DEFAULT_BUCKETS, limit, Arc::clone(&stats)).unwrap();
        (red, stats)
    }

    fn attribute<'a>(point: &'a Point, key: &str) -> Option<&'a LabelValue> {
        point
            .attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn durations_land_in_the_right_buckets() {
        let bounds = [0.1, 0.5, 1.0];
        let mut histogram = Histogram::new(bounds.len() + 1);
        // (seconds, bucket): a bound belongs to the bucket it closes.
        for (value, _) in [
            (0.0, 0),
            (0.1, 0),
            (0.1000001, 1),
            (0.5, 1),
            (0.75, 2),
            (1.0, 2),
            (30.0, 3),
        ] {
            histogram.observe(value, &bounds);
        }
        assert_eq!(&*histogram.counts, &[2, 2, 2, 1]);
        assert_eq!(histogram.count, 7);
        assert!(
            (histogram.sum - 32.4500001).abs() < 1e-9,
            "{}",
            histogram.sum
        );
    }

    #[test]
    fn default_buckets_follow_the_conventions() {
        let (red, _) = registry(10);
        let service = resource("api", "api");
        // 3 ms, 40 ms, 300 ms, 12 s.
        for millis in [3, 40, 300, 12_000] {
            red.record(&service, &http_server("/a", 200, millis));
        }
        let collected = red.collect(Temporality::Cumulative);
        let point = &collected[0].points[0];
        let expected_buckets = {
            let mut counts = vec![0; 15];
            counts[0] = 1; // <= 0.005
            counts[3] = 1; // (0.025, 0.05]
            counts[7] = 1; // (0.25, 0.5]
            counts[14] = 1; // > 10
            counts
        };
        assert_eq!(point.bucket_counts, expected_buckets);
        assert_eq!(point.count, 4);
        check_buckets(&DEFAULT_BUCKETS).unwrap();
    }

    #[test]
    fn bad_buckets_are_refused() {
        assert!(check_buckets(&[]).is_err());
        assert!(check_buckets(&[0.1, 0.1]).is_err());
        assert!(check_buckets(&[0.5, 0.1]).is_err());
        assert!(check_buckets(&[0.1, f64::INFINITY]).is_err());
        assert!(RedMetrics::new(&[1.0], 0, Arc::default()).is_err());
    }

    #[test]
    fn series_are_split_by_attributes_and_services() {
        let (red, _) = registry(10);
        let api = resource("api", "api");
        let web = resource("web", "web");
        red.record(&api, &http_server("/users/{id}", 200, 10));
        red.record(&api, &http_server("/users/{id}", 200, 20));
        red.record(&api, &http_server("/users/{id}", 503, 20));
        red.record(&web, &http_server("/users/{id}", 200, 20));
        let collected = red.collect(Temporality::Cumulative);
        let counts: Vec<(&str, Vec<u64>)> = collected
            .iter()
            .map(|service| {
                (
                    service.resource.key.as_str(),
                    service.points.iter().map(|p| p.count).collect(),
                )
            })
            .collect();
        assert_eq!(counts, vec![("api", vec![2, 1]), ("web", vec![1])]);
        let point = &collected[0].points[0];
        assert_eq!(
            point.attributes,
            vec![
                ("http.request.method", LabelValue::from("GET")),
                ("http.route", LabelValue::from("/users/{id}")),
                ("http.response.status_code", LabelValue::Int(200)),
                ("url.scheme", LabelValue::from("http")),
            ]
        );
        assert!((point.sum - 0.03).abs() < 1e-9);
    }

    #[test]
    fn the_budget_folds_new_series_into_one_overflow_series() {
        let (red, stats) = registry(3);
        let api = resource("api", "api");
        for i in 0..10_000 {
            red.record(&api, &http_server(&format!("/unique/{i}"), 200, 1));
        }
        // An existing series keeps counting after the budget is spent.
        red.record(&api, &http_server("/unique/0", 200, 1));
        // Another instrument of the same service: its own overflow series.
        let client = Measurement {
            kind: SpanKind::Client,
            ..http_server("/x", 200, 1)
        };
        red.record(&api, &client);
        // Another service has its own budget.
        red.record(&resource("web", "web"), &http_server("/unique/1", 200, 1));

        let collected = red.collect(Temporality::Cumulative);
        let api_points = &collected[0].points;
        assert_eq!(api_points.len(), 3 + 2, "{api_points:#?}");
        let overflow: Vec<&Point> = api_points
            .iter()
            .filter(|p| attribute(p, OVERFLOW_ATTRIBUTE).is_some())
            .collect();
        assert_eq!(overflow.len(), 2);
        assert_eq!(overflow[0].instrument, Instrument::HttpServer);
        assert_eq!(overflow[0].count, 10_000 - 3);
        assert_eq!(overflow[1].instrument, Instrument::HttpClient);
        assert_eq!(overflow[1].count, 1);
        assert_eq!(
            overflow[0].attributes,
            vec![(OVERFLOW_ATTRIBUTE, LabelValue::Bool(true))]
        );
        let first = api_points
            .iter()
            .find(|p| attribute(p, "http.route") == Some(&LabelValue::from("/unique/0")))
            .unwrap();
        assert_eq!(first.count, 2);
        assert_eq!(stats.get(Counter::MetricMeasurementsFolded), 10_000 - 3 + 1);
        assert_eq!(collected[1].points.len(), 1);
    }

    #[test]
    fn services_beyond_the_limit_are_dropped_and_counted() {
        let (red, stats) = registry(1);
        for i in 0..MAX_SERVICES + 5 {
            let service = format!("svc{i}");
            red.record(&resource(&service, &service), &http_server("/", 200, 1));
        }
        assert_eq!(red.collect(Temporality::Cumulative).len(), MAX_SERVICES);
        assert_eq!(stats.get(Counter::MetricMeasurementsDropped), 5);
    }

    #[test]
    fn idle_services_are_forgotten() {
        let (red, _) = registry(10);
        red.record(&resource("old", "old"), &http_server("/", 200, 1));
        red.lock().sweep(Instant::now() + SERVICE_IDLE_TTL);
        assert!(red.collect(Temporality::Cumulative).is_empty());
    }

    #[test]
    fn delta_points_cover_the_time_since_the_previous_collection() {
        let (red, _) = registry(10);
        let api = resource("api", "api");
        red.record(&api, &http_server("/a", 200, 1));
        red.record(&api, &http_server("/a", 200, 300));
        let first = red.collect(Temporality::Delta);
        assert_eq!(first[0].points[0].count, 2);
        let first_start = first[0].points[0].start_unix_ns;

        // Nothing new: no point.
        assert!(red.collect(Temporality::Delta).is_empty());

        red.record(&api, &http_server("/a", 200, 300));
        red.record(&api, &http_server("/b", 200, 1));
        let second = red.collect(Temporality::Delta);
        let points = &second[0].points;
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].count, 1);
        assert_eq!(points[0].bucket_counts[7], 1, "300 ms is in (0.25, 0.5]");
        assert_eq!(points[0].bucket_counts.iter().sum::<u64>(), 1);
        assert!((points[0].sum - 0.3).abs() < 1e-9);
        assert!(points[0].start_unix_ns >= first_start);
        assert_eq!(points[1].count, 1);

        // Cumulative collection is unaffected by delta collections.
        let cumulative = red.collect(Temporality::Cumulative);
        assert_eq!(cumulative[0].points[0].count, 3);
    }

    #[test]
    fn rpc_instruments() {
        let call = Measurement {
            kind: SpanKind::Server,
            protocol: Protocol::Rpc {
                system: "grpc",
                method: "shop.Cart/Add".into(),
                status_code: Some("UNAVAILABLE".into()),
            },
            error_type: Some("UNAVAILABLE".into()),
            server: None,
            duration: Duration::from_millis(250),
        };
        assert_eq!(call.instrument(), Instrument::RpcServer);
        assert_eq!(
            call.attributes(),
            vec![
                ("rpc.system.name", LabelValue::from("grpc")),
                ("rpc.method", LabelValue::from("shop.Cart/Add")),
                ("rpc.response.status_code", LabelValue::from("UNAVAILABLE")),
                ("error.type", LabelValue::from("UNAVAILABLE")),
            ]
        );

        let (red, _) = registry(10);
        let api = resource("api", "api");
        let client = Measurement {
            kind: SpanKind::Client,
            protocol: Protocol::Rpc {
                system: "grpc",
                method: "shop.Cart/Add".into(),
                status_code: Some("OK".into()),
            },
            error_type: None,
            server: Some(ServerAddress {
                address: "cart".into(),
                port: 50051,
            }),
            duration: Duration::from_millis(7),
        };
        red.record(&api, &client);
        red.record(&api, &client);
        red.record(&api, &call);
        let collected = red.collect(Temporality::Cumulative);
        let points = &collected[0].points;
        assert_eq!(points[0].instrument, Instrument::RpcServer);
        assert_eq!(points[0].count, 1);
        assert_eq!(points[1].instrument, Instrument::RpcClient);
        assert_eq!(points[1].count, 2);
        assert_eq!(
            attribute(&points[1], "server.port"),
            Some(&LabelValue::Int(50051))
        );
        assert_eq!(points[1].bucket_counts[1], 2, "7 ms is in (0.005, 0.01]");
        assert_eq!(Instrument::RpcClient.name(), "rpc.client.call.duration");
    }
}
