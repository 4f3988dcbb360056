//! The one place the stages are wired together.
//!
//! ```text
//! kernel rings --reader--> reader_to_conn --> conn tracker + span builder --> spans_to_export --> exporter / printer
//!                     \--> reader_to_discovery --> discovery --(exits)--^              |
//!                                                  RED metrics registry <--(record)--+--> OTLP metrics exporter, /metrics
//! ```
//!
//! Threads: every stage but discovery runs on one thread (the runtime
//! `main` builds is single-threaded). Items cross tasks in batches: the
//! reader sends what one drain of the ring read, and the tracker stage
//! sends the spans that batch finished. Connection tracking and span
//! building share one task: handing each finished call to another task
//! cost a wakeup per call, more than building its span. With two worker
//! threads each batch also crossed threads (futex wakeups, cold caches),
//! ~25% of the agent's CPU per request. Discovery's work is synchronous
//! and can take tens of milliseconds (/proc, ELF and DWARF of each new
//! executable, probe attaches), so it has a thread of its own; the
//! exporter's disk queue (`export.queue_dir`) writes and flushes a file
//! per batch on the main thread, at most once per batch delay or full
//! batch, while the ring holds what arrives.
//!
//! Overflow policy: every channel up to the exporter is bounded and its
//! sender drops the newest batch and counts its items when full
//! (`try_send`), so no stage can stall the ring-buffer reader. The exporter
//! keeps its own bounded queue (drop oldest, counted). Metrics take no
//! channel: the tracker stage records each call's measurement (derived
//! from the call record by the protocol slice) into the shared registry
//! (`Arc`, one short mutex hold), which never waits on export (exporters
//! copy a snapshot under the same mutex); past a service's series budget
//! measurements fold into its overflow series (counted), and beyond the
//! service limit they are dropped (counted). Shutdown cascades: the reader
//! stops on SIGINT/SIGTERM, each stage ends when its input closes, the
//! exporter flushes within its deadline.
//!
//! On Kubernetes a pod watcher task keeps the node's pod store current
//! (bounded, counted refusals); discovery and the span builder's resources
//! read it, and its change signal (a `watch` channel: changes that arrive
//! while discovery is busy coalesce into one) wakes discovery.
//!
//! Discovery also owns the OpenSSL probes: it attaches them to each libssl
//! file the selected processes map, as it finds them (no channel: attaching
//! is a few syscalls, and only discovery knows when a library appears).

use std::{sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    config::AgentConfig,
    conn::tracker::{ConnTracker, TrackerConfig},
    discovery::{
        Discovery, SelectorError, Selectors, cgroup,
        k8s::{KubernetesError, PodWatcher, Pods},
        procfs::Procfs,
        resources::{ProcessRegistry, agent_resource},
        run_discovery,
    },
    export,
    metrics::{MetricsError, MetricsStage, red::RedMetrics},
    model::{
        call::{Call, Side},
        span::{Span, SpanBatch},
    },
    probes::{
        ConnCapture, EventBatch, MAX_BATCH, ProbeConfig, ProbeError, ProbeHandle, Probes,
        ReaderChannels, TargetMap, decode::KernelEvent, run_reader,
    },
    protocols::{DescribeOptions, describe},
    sampling::{HeadSampler, SamplingError, rate::RateCap},
    spans::{
        assemble::{assemble, identity},
        clock::Clock,
        unlinked::UnlinkedCalls,
    },
    telemetry::{Counter, Gauge, Stats},
};

/// Channel sizes. Big enough to absorb bursts; past them, loss is counted.
/// `reader_to_conn` carries batches of up to `MAX_BATCH` events (one per
/// drain of the ring, every few ms): at most 65,536 events.
/// `spans_to_export` carries the spans of one such batch each; the
/// exporter moves them to its own bounded queue as they come.
const READER_TO_CONN: usize = 65_536 / MAX_BATCH;
const READER_TO_DISCOVERY: usize = 4_096;
const SPANS_TO_EXPORT: usize = 128;
/// How often kernel loss counters are read and the tracker's timers run.
const TICK: Duration = Duration::from_secs(1);
/// How long after a process exits its connections are dropped.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How often a summary of losses is logged, when there were any.
const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How long start-up waits for the node's pods before the first scan.
const INITIAL_POD_LIST: Duration = Duration::from_secs(10);

/// What can stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Kernel side.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// Bad selector.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// Kubernetes client settings.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    /// Bad export settings.
    #[error(transparent)]
    Export(#[from] export::otlp::ConfigError),
    /// Metrics settings or endpoint.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Sampling settings.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// Signal handlers or the ring-buffer poller.
    #[error("setting up {what}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> Result<(), PipelineError> {
    let stats = Arc::new(Stats::default());
    let selectors = Selectors::new(&config.selectors)?.excluding_agent(
        std::process::id(),
        Procfs::default()
            .cgroup(std::process::id())
            .and_then(|text| cgroup::container_of(&text)?.pod_uid),
    );
    let sinks = export::Sinks::new(&config.export, Arc::clone(&stats))?;
    let (sampler, warnings) = HeadSampler::new(&config.sampling, |key| std::env::var(key).ok())?;
    for warning in warnings {
        warn!("{warning}");
    }
    info!(sampler = %sampler.describe(), "head sampling");
    let node_name = config
        .kubernetes
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|name| !name.is_empty());
    let metrics = MetricsStage::start(
        &config.metrics,
        &config.export,
        Arc::clone(&stats),
        agent_resource(node_name.as_deref()),
    )
    .await?;
    let probes = Probes::load(&ProbeConfig::new(&config, &sampler), Arc::clone(&stats))?;
    let Probes {
        handle,
        targets,
        data_ring,
        control_ring,
        openssl,
        conn_capture,
        features,
    } = probes;
    features.log();
    let mut registry = ProcessRegistry::new(Procfs::default(), Arc::clone(&stats));
    let clock = Arc::new(Clock::default());
    let pods = if config.kubernetes.enabled {
        let pods = Pods::default();
        let watcher = PodWatcher::new(
            &config.kubernetes,
            pods.clone(),
            Arc::clone(&stats),
            selectors.annotation_keys(),
        )
        .await?;
        let (listed_tx, listed_rx) = oneshot::channel();
        let task = tokio::spawn(watcher.run(listed_tx));
        // Running pods are selected by the first scan only if their
        // metadata is there; an API server that does not answer in time
        // delays their selection, not the agent's start.
        if tokio::time::timeout(INITIAL_POD_LIST, listed_rx)
            .await
            .is_err()
        {
            warn!("no pod list from the Kubernetes API yet; pods are selected as it arrives");
        }
        registry = registry.with_pods(pods.clone());
        Some((pods, task))
    } else {
        None
    };

    let (reader_to_conn_tx, reader_to_conn_rx) = mpsc::channel(READER_TO_CONN);
    let (reader_to_discovery_tx, reader_to_discovery_rx) = mpsc::channel(READER_TO_DISCOVERY);
    let (spans_to_export_tx, spans_to_export_rx) = mpsc::channel(SPANS_TO_EXPORT);

    let mut discovery = Discovery::new(selectors, Procfs::default(), targets, registry.clone())
        .with_sampler(sampler.clone());
    if let Some((pods, _)) = &pods {
        discovery = discovery.with_pods(pods.clone());
    }
    if let Some(openssl) = openssl {
        discovery = discovery.with_tls(Box::new(openssl));
    }
    // Before reporting "running": processes that already match are traced
    // from the first request on.
    discovery.scan_all();
    let discovery_thread = spawn_discovery(
        discovery,
        reader_to_discovery_rx,
        reader_to_conn_tx.clone(),
        Arc::clone(&stats),
    )
    .map_err(|source| PipelineError::Io {
        what: "the discovery thread",
        source,
    })?;
    let tracker = ConnTracker::new(
        TrackerConfig {
            max_connections: config.tracking.max_connections,
            idle_timeout_ns: config.tracking.idle_timeout_secs * 1_000_000_000,
            ..TrackerConfig::default()
        },
        Arc::clone(&stats),
    );
    let conn_task = tokio::spawn(run_conn_tracker(
        reader_to_conn_rx,
        spans_to_export_tx,
        tracker,
        conn_capture,
        SpanBuilder {
            registry,
            clock: Arc::clone(&clock),
            options: DescribeOptions {
                capture_query: config.spans.capture_query,
                routes: Arc::clone(&metrics.routes),
                rpc_conventions: config.spans.rpc_conventions,
                db_query_text: !config.spans.omit_db_query_text,
            },
            red: metrics.red.clone(),
            rate_cap: config.sampling.max_spans_per_second.map(RateCap::new),
            sampler,
            unlinked: UnlinkedCalls::default(),
        },
        Arc::clone(&stats),
    ));
    let export_task = tokio::spawn(sinks.run(spans_to_export_rx));
    let housekeeping = tokio::spawn(run_housekeeping(handle, Arc::clone(&stats), clock));

    let shutdown = shutdown_signal().map_err(|source| PipelineError::Io {
        what: "signal handlers",
        source,
    })?;
    let channels = ReaderChannels {
        reader_to_conn: reader_to_conn_tx,
        reader_to_discovery: reader_to_discovery_tx,
    };
    info!("agent running; SIGINT or SIGTERM to stop");
    run_reader(
        data_ring,
        control_ring,
        channels,
        Arc::clone(&stats),
        shutdown,
    )
    .await
    .map_err(|source| PipelineError::Io {
        what: "ring buffer polling",
        source,
    })?;

    info!("stopping: flushing what is queued");
    // Discovery holds a sender into the tracker: it ends first (its input
    // closed with the reader), so the cascade can close every channel.
    if let Some((_, pod_watcher)) = pods {
        pod_watcher.abort();
    }
    match tokio::task::spawn_blocking(move || discovery_thread.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => warn!("discovery thread panicked"),
    }
    join_logged(conn_task, "connection tracker").await;
    tokio::join!(join_logged(export_task, "export"), metrics.stop());
    // Dropping the handle detaches the kernel programs.
    housekeeping.abort();
    log_losses(&stats);
    Ok(())
}

/// Starts discovery on a thread of its own, with its own single-threaded
/// runtime, until its input closes. Its work is synchronous and can be
/// long (reading /proc, parsing each new executable's ELF and DWARF,
/// attaching probes): on the agent's one runtime thread it would hold up
/// the reader and the tracker.
fn spawn_discovery(
    discovery: Discovery<TargetMap>,
    reader_to_discovery: mpsc::Receiver<KernelEvent>,
    discovery_to_conn: mpsc::Sender<EventBatch>,
    stats: Arc<Stats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("sonde-discovery".to_owned())
        .spawn(move || {
            runtime.block_on(run_discovery(
                discovery,
                reader_to_discovery,
                discovery_to_conn,
                stats,
            ));
        })
}

/// Resolves on the first SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Connection tracker stage: batches of socket events in; the calls they
/// finish are measured and, when sampled, built into spans on the spot;
/// the spans of each batch go out together.
async fn run_conn_tracker(
    mut reader_to_conn: mpsc::Receiver<EventBatch>,
    spans_to_export: mpsc::Sender<SpanBatch>,
    mut tracker: ConnTracker,
    mut conn_capture: ConnCapture,
    mut builder: SpanBuilder,
    stats: Arc<Stats>,
) {
    let mut tick = tokio::time::interval(TICK);
    // Exit events come from the control ring and can overtake the process's
    // last data (a client that exits right after reading its response), so
    // a process is forgotten only after a grace period.
    let mut exited: Vec<(u32, u64)> = Vec::new();
    let mut calls = Vec::new();
    loop {
        tokio::select! {
            batch = reader_to_conn.recv() => {
                let Some(batch) = batch else { break };
                // By reference: moving each event out of the batch, and
                // each call out of `calls` below, was ~3% of the agent's
                // CPU in copies.
                for event in &batch {
                    match event {
                        KernelEvent::Data(data) => tracker.on_data(data, &mut calls),
                        KernelEvent::Http2Injected(ids) => tracker.on_injected(ids),
                        KernelEvent::Close(close) => tracker.on_close(close, &mut calls),
                        KernelEvent::Exit { pid } => exited
                            .push((*pid, Clock::monotonic_now_ns() + EXIT_GRACE.as_nanos() as u64)),
                        KernelEvent::Exec { .. } | KernelEvent::Listen { .. } => {}
                    }
                }
            }
            _ = tick.tick() => {
                let now = Clock::monotonic_now_ns();
                tracker.on_tick(now, &mut calls);
                exited.retain(|&(pid, forget_at)| {
                    let due = forget_at <= now;
                    if due {
                        tracker.forget_pid(pid, &mut calls);
                        builder.unlinked.forget_pid(pid);
                    }
                    !due
                });
            }
        };
        stats.set_gauge(Gauge::ConnectionsTracked, tracker.connections() as u64);
        for cookie in tracker.take_capture_all() {
            conn_capture.capture_all(cookie);
        }
        let spans: SpanBatch = calls
            .iter()
            .filter_map(|call| builder.build(call, &stats))
            .collect();
        calls.clear();
        if !spans.is_empty() {
            let count = spans.len() as u64;
            if spans_to_export.try_send(spans).is_err() {
                stats.add(Counter::SpansDroppedQueueFull, count);
            }
        }
    }
}

/// What span building needs besides the call.
struct SpanBuilder {
    registry: ProcessRegistry,
    clock: Arc<Clock>,
    options: DescribeOptions,
    /// RED metrics, when enabled.
    red: Option<Arc<RedMetrics>>,
    /// Decides for the spans whose ids the kernel did not make.
    sampler: HeadSampler,
    /// `sampling.max_spans_per_second`, when set.
    rate_cap: Option<RateCap>,
    /// Calls without a parent, counted when a request covers them.
    unlinked: UnlinkedCalls,
}

impl SpanBuilder {
    /// Each call's protocol slice describes it, and the span and the RED
    /// measurement both come from that description. Every call is
    /// measured; only those of sampled traces (within the rate cap) become
    /// spans, and only theirs get span attributes built.
    fn build(&mut self, call: &Call, stats: &Stats) -> Option<Span> {
        let resource = self.registry.resource(call.conn.pid);
        let identity = identity(call, &self.sampler, &resource.service_name);
        self.count_unlinked(call, identity.has_parent(), stats);
        let Some(description) = describe(call, &self.options, identity.sampled()) else {
            stats.add(Counter::RequestsIgnored, 1);
            return None;
        };
        if let Some(red) = &self.red {
            red.record(&resource, &description.measurement);
        }
        let Some(parts) = description.span else {
            stats.add(Counter::SpansNotSampled, 1);
            return None;
        };
        if let Some(cap) = &mut self.rate_cap
            && !cap.allow(&resource.service_name, std::time::Instant::now())
        {
            stats.add(Counter::SpansDroppedRateCap, 1);
            return None;
        }
        let span = assemble(
            call,
            identity,
            parts,
            resource,
            self.clock.to_unix_ns(call.start_ns),
            self.clock.to_unix_ns(call.end_ns),
        );
        stats.add(Counter::SpansProduced, 1);
        Some(span)
    }

    /// Counts the calls that got no parent while their process was
    /// serving (see `spans::unlinked`), sampled or not; those the kernel
    /// counted as ambiguous already are left out.
    fn count_unlinked(&mut self, call: &Call, has_parent: bool, stats: &Stats) {
        let pid = call.conn.pid;
        match call.conn.side {
            Side::Client => {
                if !has_parent && !call.trace.is_some_and(|trace| trace.ambiguous) {
                    self.unlinked.call_without_parent(pid, call.start_ns);
                }
            }
            Side::Server => {
                let covered = self
                    .unlinked
                    .request_served(pid, call.start_ns, call.end_ns);
                if covered > 0 {
                    stats.add(Counter::LinksUnmadeWhileServing, covered);
                }
            }
        }
    }
}

/// Periodic chores: kernel loss counters, clock offset, loss log line.
async fn run_housekeeping(probes: ProbeHandle, stats: Arc<Stats>, clock: Arc<Clock>) {
    let mut tick = tokio::time::interval(TICK);
    let mut last_log = tokio::time::Instant::now();
    let mut logged_losses = 0;
    loop {
        tick.tick().await;
        probes.publish_kernel_counters(&stats);
        clock.refresh();
        let losses = total_losses(&stats);
        if last_log.elapsed() >= LOSS_LOG_INTERVAL && losses != logged_losses {
            log_losses(&stats);
            logged_losses = losses;
            last_log = tokio::time::Instant::now();
        }
    }
}

const LOSS_COUNTERS: &[Counter] = &[
    Counter::KernelDataRingbufFull,
    Counter::KernelControlRingbufFull,
    Counter::KernelPayloadReadFailed,
    Counter::KernelTlsSocketUnknown,
    Counter::KernelCaptureStepsExhausted,
    Counter::EventsUndecodable,
    Counter::EventsDroppedChannelFull,
    Counter::ConnectionsEvicted,
    Counter::Http2StreamsUnresolved,
    Counter::SpansDroppedQueueFull,
    Counter::SpansDroppedRateCap,
    Counter::SpansExportFailed,
    Counter::SpansDroppedExpired,
    Counter::SpansDroppedShutdown,
    Counter::MetricMeasurementsDropped,
    Counter::MetricPointsExportFailed,
    Counter::MetricPointsDroppedQueueFull,
    Counter::MetricPointsDroppedExpired,
    Counter::MetricPointsDroppedShutdown,
    Counter::K8sPodsDroppedStoreFull,
    Counter::ProcessMetadataEvicted,
];

fn total_losses(stats: &Stats) -> u64 {
    LOSS_COUNTERS.iter().map(|&c| stats.get(c)).sum()
}

fn log_losses(stats: &Stats) {
    let summary: Vec<String> = stats
        .nonzero()
        .iter()
        .map(|(c, v)| format!("{}={v}", c.name()))
        .collect();
    if total_losses(stats) > 0 {
        warn!(counters = %summary.join(" "), "data was dropped");
    } else {
        info!(counters = %summary.join(" "), "agent counters");
    }
}

/// Awaits a stage, logging if it panicked.
async fn join_logged(task: JoinHandle<()>, name: &str) {
    if let Err(error) = task.await
        && error.is_panic()
    {
        warn!(stage = name, %error, "stage panicked");
    }
}
