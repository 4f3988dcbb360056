//! The agent's own counters: every place that can lose or drop data counts
//! it here, under one typed name, so /metrics, the periodic log summary and
//! the tests all read the same numbers. A few gauges sit beside them: the
//! fill level of the bounded tables and queues, to see a loss coming.

use std::sync::atomic::{AtomicU64, Ordering};

/// An enum of named, described metrics: one variant each, with `ALL`,
/// `name()` and `help()`, so no metric name is spelt anywhere else.
macro_rules! metrics {
    ($(#[$meta:meta])* $enum:ident { $($variant:ident => $name:literal, $help:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum {
            $(#[doc = $help] $variant,)*
        }

        impl $enum {
            /// Every one, in declaration order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];

            /// Metric name, as on /metrics (where counters also get the
            /// `_total` suffix) and in the OTLP self-metrics.
            pub fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }

            /// One-line description.
            pub fn help(self) -> &'static str {
                match self { $($enum::$variant => $help,)* }
            }
        }
    };
}

metrics! {
    /// Something the agent counts.
    Counter {
        KernelDataRingbufFull => "sonde_kernel_data_ringbuf_full", "Socket data or close events lost because the kernel ring buffer was full";
        KernelControlRingbufFull => "sonde_kernel_control_ringbuf_full", "Process events lost because the kernel ring buffer was full";
        KernelPayloadReadFailed => "sonde_kernel_payload_read_failed", "Payload copies from user memory that failed (event sent without payload)";
        KernelTlsSocketUnknown => "sonde_kernel_tls_socket_unknown", "TLS plaintext not reported because its connection could not be identified";
        KernelCaptureStepsExhausted => "sonde_kernel_capture_steps_exhausted", "calls with more buffers than the portable capture programs step through (kernels without bpf_loop): the rest went out by length only";
        TraceparentInjected => "sonde_traceparent_injected", "Outgoing HTTP/1 requests that got a traceparent header";
        TraceparentAlreadyPresent => "sonde_traceparent_already_present", "Outgoing requests left alone because they carried a traceparent";
        TraceparentHeadTooLong => "sonde_traceparent_head_too_long", "Outgoing requests not injected because their head did not fit the inspected bytes";
        TraceparentInjectFailed => "sonde_traceparent_inject_failed", "Outgoing requests whose injection failed (sent unchanged)";
        TraceparentH2Injected => "sonde_traceparent_h2_injected", "Outgoing HTTP/2 requests whose HEADERS got a traceparent field";
        TraceparentH2Continuation => "sonde_traceparent_h2_skipped_continuation", "Outgoing HTTP/2 requests not injected because their header block went on in CONTINUATION frames";
        TraceparentH2Padded => "sonde_traceparent_h2_skipped_padded", "Outgoing HTTP/2 requests not injected because their HEADERS frame was padded";
        TraceparentH2Split => "sonde_traceparent_h2_skipped_split", "Outgoing HTTP/2 requests not injected because their HEADERS frame was split over sends";
        TraceparentH2TooBig => "sonde_traceparent_h2_skipped_too_big", "Outgoing HTTP/2 requests not injected because their HEADERS frame would pass 16 KiB";
        TraceparentH2OwnContext => "sonde_traceparent_h2_skipped_own_context", "Outgoing HTTP/2 requests not injected because their connection may carry the application's own traceparent (its name was seen in a request, or a request's header block could not be read)";
        TraceparentH2Failed => "sonde_traceparent_h2_failed", "Outgoing HTTP/2 requests whose injection failed (sent unchanged)";
        TraceparentH2Lost => "sonde_traceparent_h2_connections_lost", "HTTP/2 connections on which injection stopped because where frames start was lost";
        TraceparentH2IdsUnmatched => "sonde_traceparent_h2_ids_unmatched", "Ids injected into HTTP/2 requests whose request the agent never read (its data lost): the client span could not carry them";
        TraceparentH2Unavailable => "sonde_traceparent_h2_unavailable", "Outgoing HTTP/2 messages sent unchanged because the HTTP/2 injection program could not be loaded";
        LinksAmbiguous => "sonde_links_ambiguous", "Outgoing HTTP/1 requests sent while their thread had several server requests in flight: given a trace of their own, not a guessed parent";
        LinksUnmadeWhileServing => "sonde_links_unmade_while_serving", "Outgoing requests that got no parent although their process was serving a request when they were made and answered (HTTP/2 and gRPC requests, whose heads the kernel does not read; work handed to another thread): a trace of their own, never a guessed parent. Not counted again in sonde_links_ambiguous";
        EventsReceived => "sonde_events_received", "Kernel events read from the ring buffers";
        EventsUndecodable => "sonde_events_undecodable", "Kernel records rejected by the decoder";
        EventsDroppedChannelFull => "sonde_events_dropped_channel_full", "Events dropped because connection tracking and span building were behind";
        ParseFailedHttp1 => "sonde_parse_failed_http1", "HTTP/1 messages that could not be parsed";
        ParseFailedHttp2 => "sonde_parse_failed_http2", "HTTP/2 frames or header blocks that could not be parsed";
        Http2FramingLost => "sonde_http2_framing_lost", "Times HTTP/2 frame boundaries were lost to bytes the capture did not copy (found again at a later syscall)";
        Http2TableDegraded => "sonde_http2_table_degraded", "Times an HTTP/2 header decoder stopped trusting its dynamic table because bytes were missed";
        Http2StreamsUnresolved => "sonde_http2_streams_unresolved", "HTTP/2 streams without a span because their method or status could not be decoded";
        DbSyncLost => "sonde_db_sync_lost", "Times a database or cache connection lost its message boundaries to bytes the capture did not copy or that did not parse (found again at a later call)";
        DbRequestsDropped => "sonde_db_requests_dropped", "Database or cache requests without a span: their answers could no longer be told apart, or the server skipped them after an earlier error in a pipeline";
        ConnectionsEvicted => "sonde_connections_evicted", "Connections dropped from the tracker (table full or idle)";
        ExchangesAbandoned => "sonde_exchanges_abandoned", "Requests given up on without a response";
        ResponsesUnmatched => "sonde_responses_unmatched", "HTTP/1 responses with no request seen waiting for them on their connection (the request's bytes were not captured, or reached the agent after the response): no span";
        SpansProduced => "sonde_spans_produced", "Spans built";
        SpansDroppedQueueFull => "sonde_spans_dropped_queue_full", "Spans dropped because the export queue was full";
        SpansNotSampled => "sonde_spans_not_sampled", "Spans not built because the head sampler did not sample their trace (their requests still count in the RED metrics)";
        SpansDroppedRateCap => "sonde_spans_dropped_rate_cap", "Spans dropped by the per-service rate cap (sampling.max_spans_per_second)";
        SpansExported => "sonde_spans_exported", "Spans accepted by the OTLP endpoint";
        SpansExportFailed => "sonde_spans_export_failed", "Spans the OTLP endpoint refused for good (permanent error or partial rejection; not retried)";
        SpansDroppedExpired => "sonde_spans_dropped_expired", "Spans dropped unsent because they waited longer than the retry budget (export.retry.max_elapsed_secs)";
        SpansDroppedShutdown => "sonde_spans_dropped_shutdown", "Spans still unsent when the exporter's shutdown deadline passed";
        SpansDroppedQueueWrite => "sonde_spans_dropped_queue_write", "Spans dropped because their batch could not be written to export.queue_dir (disk full or another I/O error)";
        SpansRecovered => "sonde_spans_recovered", "Spans found in export.queue_dir at start, left unsent by an earlier run, and queued for export";
        ExportQueueFilesCorrupt => "sonde_export_queue_files_corrupt", "Files of export.queue_dir removed unsent because they were torn, truncated or corrupted (their data is lost)";
        ExportRequestsFailed => "sonde_export_requests_failed", "OTLP export requests that failed (all kinds; the next four counters break it down)";
        ExportRequestsTimedOut => "sonde_export_requests_timed_out", "OTLP export requests without an answer within the export timeout (retried)";
        ExportRequestsUnreachable => "sonde_export_requests_unreachable", "OTLP export requests that could not reach the endpoint (connection failure, UNAVAILABLE; retried)";
        ExportRequestsThrottled => "sonde_export_requests_throttled", "OTLP export requests the endpoint asked to retry later (429, 502, 503, 504, RESOURCE_EXHAUSTED...)";
        ExportRequestsRejected => "sonde_export_requests_rejected", "OTLP export requests refused for good (bad request, unauthenticated...; not retried)";
        RequestsIgnored => "sonde_requests_ignored", "Requests matching metrics.ignore: no span, no measurement";
        MetricMeasurementsFolded => "sonde_metric_measurements_folded", "Measurements folded into an overflow series because their service's series budget was spent";
        MetricMeasurementsDropped => "sonde_metric_measurements_dropped", "Measurements dropped because too many services had metrics";
        MetricPointsCollected => "sonde_metric_points_collected", "Metric data points collected for OTLP export (each ends up exported, refused or dropped by one of the reasons below)";
        MetricPointsExported => "sonde_metric_points_exported", "Metric data points accepted by the OTLP endpoint";
        MetricPointsExportFailed => "sonde_metric_points_export_failed", "Metric data points the OTLP endpoint refused for good (permanent error or partial rejection; not retried)";
        MetricPointsDroppedQueueFull => "sonde_metric_points_dropped_queue_full", "Metric data points dropped, oldest export first, because the metrics export queue was full";
        MetricPointsDroppedExpired => "sonde_metric_points_dropped_expired", "Metric data points dropped unsent because they waited longer than the retry budget";
        MetricPointsDroppedShutdown => "sonde_metric_points_dropped_shutdown", "Metric data points still unsent when the exporter's shutdown deadline passed";
        MetricPointsDroppedQueueWrite => "sonde_metric_points_dropped_queue_write", "Metric data points dropped because their export could not be written to export.queue_dir (disk full or another I/O error)";
        MetricPointsRecovered => "sonde_metric_points_recovered", "Metric data points found in export.queue_dir at start, left unsent by an earlier run, and queued for export";
        TlsCiphertextIgnored => "sonde_tls_ciphertext_ignored", "Socket events dropped because their connection's plaintext comes from the OpenSSL probes (the socket bytes are ciphertext)";
        TlsAttachFailed => "sonde_tls_attach_failed", "OpenSSL libraries whose uprobes could not be attached (their processes' TLS traffic is not traced)";
        GoUnsupported => "sonde_go_unsupported", "Go executables whose release has no known struct offsets and no DWARF: their processes are traced at the socket level only";
        NodeContextFailed => "sonde_node_context_failed", "Node.js processes the context script could not be evaluated in (no inspector, SIGUSR1 not caught, a port taken...): their calls are parented by thread (in-flight rule) only";
        PythonUnsupported => "sonde_python_unsupported", "CPython interpreters (executables or libpython) whose release has no known layout: their asyncio calls are parented by thread (in-flight rule) only";
        K8sWatchErrors => "sonde_k8s_watch_errors", "Failed list or watch requests to the Kubernetes API (retried with backoff)";
        K8sPodsDroppedStoreFull => "sonde_k8s_pods_dropped_store_full", "Pods not tracked because the pod store was full";
        ProcessMetadataEvicted => "sonde_process_metadata_evicted", "Process descriptions dropped because the process table was full (read again from /proc if the process sends more)";
    }
}

metrics! {
    /// A level the agent reports as it is now, not as a total.
    Gauge {
        ConnectionsTracked => "sonde_connections_tracked", "Connections the connection tracker holds now (bounded by tracking.max_connections)";
        ExportQueueSpans => "sonde_export_queue_spans", "Spans waiting in the OTLP export queue now, new or waiting for a retry, the requests in flight not included (bounded by OTEL_BSP_MAX_QUEUE_SIZE)";
        ExportQueueBytes => "sonde_export_queue_bytes", "Estimated OTLP encoded size of the spans waiting in the export queue, bytes (bounded by export.max_queue_bytes)";
        ExportQueueDiskSpans => "sonde_export_queue_disk_spans", "Spans in batches waiting in export.queue_dir now, the requests in flight not included";
        ExportQueueDiskBytes => "sonde_export_queue_disk_bytes", "Bytes of the span batch files in export.queue_dir now, the requests in flight included (bounded by export.queue_max_bytes)";
        MetricsQueueDiskPoints => "sonde_metrics_queue_disk_points", "Metric data points in exports waiting in export.queue_dir now, the request in flight not included";
        MetricsQueueDiskBytes => "sonde_metrics_queue_disk_bytes", "Bytes of the metrics export files in export.queue_dir now, the request in flight included (bounded by export.queue_max_bytes)";
        ProcessesSelected => "sonde_processes_selected", "Processes the selectors chose that are running now";
        ProcessTableEntries => "sonde_process_table_entries", "Processes described in the process table now (live targets and recent senders; bounded)";
        TlsLibrariesAttached => "sonde_tls_libraries_attached", "OpenSSL library files (one per inode, whatever the processes mapping them) with the TLS uprobes attached";
        KernelTargets => "sonde_kernel_targets", "Entries in the kernel's target map: selected processes, the children and threads they started (updated every 10 s)";
        FeatureOffTls => "sonde_feature_off_tls", "1 while TLS capture is wanted but this kernel refused its programs (see the start-up log or `sonde check`)";
        FeatureOffInjection => "sonde_feature_off_injection", "1 while traceparent injection is wanted but could not be set up on this node (see the start-up log or `sonde check`)";
        FeatureOffHttp2Injection => "sonde_feature_off_http2_injection", "1 while traceparent injection into HTTP/2 is wanted but this kernel refused its program (HTTP/1 injection is unaffected; see the start-up log or `sonde check`)";
        FeatureOffGo => "sonde_feature_off_go", "1 while the Go programs (crypto/tls plaintext, goroutine-keyed context) are wanted but this kernel refused them (see the start-up log or `sonde check`)";
        FeatureOffNodeContext => "sonde_feature_off_node_context", "1 while the Node.js context program (event-loop parents by request) is wanted but this kernel refused it (see the start-up log or `sonde check`)";
        FeatureOffPythonContext => "sonde_feature_off_python_context", "1 while the Python context programs (asyncio parents by context) are wanted but this kernel refused them (see the start-up log or `sonde check`)";
        FeatureOffKernelContext => "sonde_feature_off_kernel_context", "1 while the kernel's request-head scan (incoming traceparent, in-kernel parents) is refused by this kernel (see the start-up log or `sonde check`)";
    }
}

/// Counter and gauge values, shared by every stage (`Arc<Stats>`).
#[derive(Debug)]
pub struct Stats {
    values: Vec<AtomicU64>,
    gauges: Vec<AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            values: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            gauges: Gauge::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(&self, counter: Counter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a counter that mirrors a total kept elsewhere (kernel counters).
    pub fn set(&self, counter: Counter, value: u64) {
        self.values[counter as usize].store(value, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// Sets a gauge to its current level.
    pub fn set_gauge(&self, gauge: Gauge, value: u64) {
        self.gauges[gauge as usize].store(value, Ordering::Relaxed);
    }

    /// Current level of a gauge.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges[gauge as usize].load(Ordering::Relaxed)
    }

    /// Non-zero counters, for the log summary.
    pub fn nonzero(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .map(|&c| (c, self.get(c)))
            .filter(|&(_, v)| v > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_independent() {
        let stats = Stats::default();
        stats.add(Counter::SpansProduced, 3);
        stats.add(Counter::SpansExported, 2);
        stats.add(Counter::SpansProduced, 1);
        assert_eq!(stats.get(Counter::SpansProduced), 4);
        assert_eq!(stats.get(Counter::SpansExported), 2);
        assert_eq!(stats.get(Counter::SpansExportFailed), 0);
        assert_eq!(
            stats.nonzero(),
            vec![(Counter::SpansProduced, 4), (Counter::SpansExported, 2)]
        );
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.extend(Gauge::ALL.iter().map(|g| g.name()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len() + Gauge::ALL.len());
    }

    #[test]
    fn gauges_hold_the_last_level_apart_from_counters() {
        let stats = Stats::default();
        stats.set_gauge(Gauge::ExportQueueSpans, 5);
        stats.set_gauge(Gauge::ExportQueueSpans, 2);
        assert_eq!(stats.gauge(Gauge::ExportQueueSpans), 2);
        assert_eq!(stats.gauge(Gauge::ConnectionsTracked), 0);
        assert!(stats.nonzero().is_empty(), "gauges are not losses");
    }
}
