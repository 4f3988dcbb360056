//! The persistent export queue (`export.queue_dir`) end to end: the real
//! agent traces a real Python server while the collector is down, is
//! stopped with SIGTERM, started again, killed with `kill -9`, started
//! again on the same directory, and only then does the collector come up:
//! every span written to the queue arrives, once. A corrupted file in the
//! directory is skipped, counted and removed; a queue on a full (small)
//! tmpfs drops new batches, counted and logged, and the agent goes on
//! exporting once the collector is back.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::{Agent, config_file},
    apps::{Server, get_many},
    prometheus::{Counters, free_port},
    require_e2e,
};

/// Longest wait for spans.
const WAIT: Duration = Duration::from_secs(30);
/// Requests per phase.
const PER_PHASE: usize = 20;

/// A directory of its own under the temp dir, removed on drop.
struct QueueDir(PathBuf);

impl QueueDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-queue-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    /// The span batch files waiting in the queue.
    fn span_batches(&self) -> Vec<PathBuf> {
        let traces = self.0.join("traces");
        let Ok(entries) = std::fs::read_dir(&traces) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "batch"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for QueueDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent tracing `server`, its queue in `dir`, exporting over gRPC to
/// 127.0.0.1:`collector_port` (up or not) with batches 200 ms after their
/// first span and quick retries; `extra` is more of the configuration
/// file's `export` section.
fn agent(
    server: &Server,
    dir: &Path,
    collector_port: u16,
    test: &str,
    extra: &str,
) -> (Agent, Counters) {
    let metrics_port = free_port();
    let config = config_file(
        test,
        &format!(
            "export:\n  max_in_flight: 1\n  retry:\n    initial_interval_secs: 1\n    max_interval_secs: 2\n{extra}"
        ),
    );
    let args = [
        "--port".to_owned(),
        server.port.to_string(),
        "--prometheus-port".to_owned(),
        metrics_port.to_string(),
        "--queue-dir".to_owned(),
        dir.display().to_string(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with_env(
        &args,
        &format!("http://127.0.0.1:{collector_port}"),
        "grpc",
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    (
        agent,
        Counters(SocketAddr::from(([127, 0, 0, 1], metrics_port))),
    )
}

fn count_path(spans: &[ReceivedSpan], server: &Server, path: &str) -> usize {
    spans
        .iter()
        .filter(|span| span.resource.get("process.pid") == Some(&json!(server.pid())))
        .filter(|span| span.attributes.get("url.path") == Some(&json!(path)))
        .count()
}

/// Collector down throughout two agent runs, one ended by SIGTERM and one
/// by `kill -9`; a third run finds both runs' spans on disk and delivers
/// them once the collector is up, each span once, and empties the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_on_disk_survive_sigterm_and_kill_9() {
    require_e2e!();
    let server = Server::python_http();
    let dir = QueueDir::new("restarts");
    let collector_port = free_port();
    let http_port = free_port();
    let test = "queue-restarts";

    // Run 1, stopped by SIGTERM: the shutdown pass fails, nothing is
    // counted lost, the batches stay on disk.
    let (first, counters) = agent(&server, &dir.0, collector_port, test, "");
    get_many(&server, "/before-sigterm", PER_PHASE);
    counters.wait_for("sonde_export_queue_disk_spans", PER_PHASE as u64);
    counters.wait_for("sonde_export_requests_failed_total", 1);
    let (code, log) = first.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("left in the export queue directory for the next start"),
        "{log}"
    );
    assert!(!dir.span_batches().is_empty());

    // Run 2 takes them over and adds its own; `kill -9` once they are
    // written.
    let (second, counters) = agent(&server, &dir.0, collector_port, test, "");
    assert_eq!(
        counters.wait_for("sonde_spans_recovered_total", PER_PHASE as u64),
        PER_PHASE as u64
    );
    get_many(&server, "/before-kill", PER_PHASE);
    counters.wait_for("sonde_export_queue_disk_spans", 2 * PER_PHASE as u64);
    second.kill();

    // Run 3 with the collector up: everything arrives, once.
    let receiver = OtlpReceiver::start_on(collector_port, http_port).await;
    let (third, counters) = agent(&server, &dir.0, collector_port, test, "");
    assert_eq!(
        counters.wait_for("sonde_spans_recovered_total", 2 * PER_PHASE as u64),
        2 * PER_PHASE as u64
    );
    receiver
        .wait_for(
            |spans| {
                count_path(spans, &server, "/before-sigterm") >= PER_PHASE
                    && count_path(spans, &server, "/before-kill") >= PER_PHASE
            },
            WAIT,
        )
        .await;
    counters.wait_for("sonde_spans_exported_total", 2 * PER_PHASE as u64);
    counters.wait_down_to("sonde_export_queue_disk_spans", 0);
    // Room for a stray duplicate to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = receiver.spans();
    assert_eq!(count_path(&spans, &server, "/before-sigterm"), PER_PHASE);
    assert_eq!(count_path(&spans, &server, "/before-kill"), PER_PHASE);
    let ids: BTreeSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "a span delivered twice");
    assert_eq!(counters.get("sonde_export_queue_files_corrupt_total"), 0);
    assert!(dir.span_batches().is_empty(), "{:?}", dir.span_batches());
    assert_eq!(third.stop(), 0);
}

/// Broken files in the queue (garbage, a torn copy of a real batch, a
/// temp file of an unfinished write) are removed and counted at start;
/// the whole batches next to them are still sent, and the agent works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_queue_files_are_skipped_and_counted() {
    require_e2e!();
    let server = Server::python_http();
    let dir = QueueDir::new("corrupt");
    let collector_port = free_port();
    let test = "queue-corrupt";

    // A real batch, written by an agent whose collector is down.
    let (first, counters) = agent(&server, &dir.0, collector_port, test, "");
    get_many(&server, "/queued", PER_PHASE);
    counters.wait_for("sonde_export_queue_disk_spans", PER_PHASE as u64);
    first.kill();
    let batches = dir.span_batches();
    let whole = std::fs::read(&batches[0]).unwrap_or_else(|e| panic!("{e}"));
    let traces = dir.0.join("traces");
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(traces.join(name), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    write("10000000000000000000.batch", b"not a queue file at all");
    write("10000000000000000001.batch", &whole[..whole.len() - 7]);
    write("10000000000000000002.tmp", &whole[..20]);

    let receiver = OtlpReceiver::start_on(collector_port, free_port()).await;
    let (second, counters) = agent(&server, &dir.0, collector_port, test, "");
    assert_eq!(
        counters.wait_for("sonde_export_queue_files_corrupt_total", 3),
        3
    );
    assert_eq!(
        counters.wait_for("sonde_spans_recovered_total", PER_PHASE as u64),
        PER_PHASE as u64
    );
    get_many(&server, "/after", PER_PHASE);
    let spans = receiver
        .wait_for(
            |spans| {
                count_path(spans, &server, "/queued") == PER_PHASE
                    && count_path(spans, &server, "/after") == PER_PHASE
            },
            WAIT,
        )
        .await;
    assert_eq!(spans.len(), 2 * PER_PHASE, "only the whole batches");
    counters.wait_down_to("sonde_export_queue_disk_spans", 0);
    assert!(dir.span_batches().is_empty(), "{:?}", dir.span_batches());
    assert!(
        !traces.join("10000000000000000002.tmp").exists(),
        "temp file left"
    );
    let (code, log) = second.stop_with_log();
    assert_eq!(code, 0);
    assert!(log.contains("broken file removed"), "{log}");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(QueueDir);

impl Tmpfs {
    fn mount(test: &str, size: &str) -> Self {
        let dir = QueueDir::new(test);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .unwrap_or_else(|e| panic!("mount: {e}"));
        assert!(status.success(), "mount -t tmpfs on {}", dir.0.display());
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0.0).status();
    }
}

/// The queue on a 32 KiB tmpfs with the collector down: once the disk is
/// full, new batches are dropped (counted, one warning), the agent keeps
/// tracing and its /metrics keeps answering; when the collector is back,
/// what is on disk is sent, the disk has room again, and new spans go
/// through. Every span is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_new_batches_counted_without_blocking() {
    require_e2e!();
    let server = Server::python_http();
    let tmpfs = Tmpfs::mount("full-disk", "32k");
    let collector_port = free_port();
    // The byte bound far above the disk's size: only the disk can refuse.
    let (agent, counters) = agent(
        &server,
        &tmpfs.0.0,
        collector_port,
        "queue-full-disk",
        "  queue_max_bytes: 1073741824\n",
    );
    let mut sent = 0;
    while counters.get("sonde_spans_dropped_queue_write_total") == 0 {
        assert!(
            sent < 2_000,
            "no write failed after {sent} requests: {:?}",
            counters.all()
        );
        get_many(&server, "/fill", PER_PHASE);
        sent += PER_PHASE;
        std::thread::sleep(Duration::from_millis(300));
    }
    // More requests while the disk is full: still traced, still dropped,
    // nothing waits.
    get_many(&server, "/fill", PER_PHASE);
    sent += PER_PHASE;
    counters.wait_for("sonde_spans_produced_total", sent as u64);
    let log = agent.plain_log();
    assert!(
        log.contains("could not be written and is dropped"),
        "a warning: {log}"
    );

    let receiver = OtlpReceiver::start_on(collector_port, free_port()).await;
    counters.wait_down_to("sonde_export_queue_disk_spans", 0);
    get_many(&server, "/after", PER_PHASE);
    receiver
        .wait_for(
            |spans| count_path(spans, &server, "/after") == PER_PHASE,
            WAIT,
        )
        .await;
    let produced = counters.get("sonde_spans_produced_total");
    let dropped = counters.get("sonde_spans_dropped_queue_write_total");
    let exported = counters.wait_for("sonde_spans_exported_total", produced - dropped);
    assert_eq!(produced, (sent + PER_PHASE) as u64);
    assert_eq!(exported + dropped, produced, "{:?}", counters.all());
    assert_eq!(receiver.spans().len() as u64, exported);
    assert!(agent.plain_log().contains("export queue: writing again"));
    assert_eq!(agent.stop(), 0);
}
