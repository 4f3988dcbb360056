//! Running the agent for one benchmark run and reading what it cost: CPU
//! time and peak RSS from /proc, what it lost from the counters it logs at
//! exit ("agent counters counters=..."), and the run time of each of its
//! kernel programs.
//!
//! Kernel figures come from `/proc/AGENT/fdinfo`: the agent holds an fd for
//! each program (`run_cnt`, `run_time_ns`, counted while
//! `kernel.bpf_stats_enabled` is 1) and each link (`tp_name`, the hook).
//! That is what `bpftool prog show` reads, restricted to this agent's
//! programs, with untruncated hook names.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::process::{Process, free_port};

/// How long the agent may take to load its programs and report running.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters that mean a kernel event was lost before it became part of a
/// connection (names as in agent/src/telemetry.rs).
const EVENT_LOSS_COUNTERS: &[&str] = &[
    "sonde_kernel_data_ringbuf_full",
    "sonde_kernel_control_ringbuf_full",
    "sonde_events_undecodable",
    "sonde_events_dropped_channel_full",
];
/// Counters that mean a finished request did not reach the OTLP endpoint.
const SPAN_LOSS_COUNTERS: &[&str] = &[
    "sonde_spans_dropped_queue_full",
    "sonde_spans_dropped_expired",
    "sonde_spans_dropped_shutdown",
    "sonde_spans_export_failed",
];

/// The agent's cost and losses over one run.
#[derive(Clone, Debug, Serialize)]
pub struct AgentReport {
    /// CPU time from "agent running" (programs loaded) to exit, flush
    /// included.
    pub cpu_ms: f64,
    /// Wall time over the same span.
    pub wall_ms: f64,
    /// Peak resident set size.
    pub peak_rss_kib: u64,
    /// Every counter it logged at exit.
    pub counters: BTreeMap<String, u64>,
    /// Sum of [`EVENT_LOSS_COUNTERS`].
    pub events_lost: u64,
    /// Sum of [`SPAN_LOSS_COUNTERS`].
    pub spans_lost: u64,
    /// Its kernel programs, by hook.
    pub programs: Vec<ProgramStats>,
}

impl AgentReport {
    /// A counter's value (0 when it was not logged: the agent logs only
    /// non-zero counters).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Run statistics of the kernel programs attached to one hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    /// The tracepoint.
    pub hook: String,
    /// Times the programs ran.
    pub run_cnt: u64,
    /// Time spent in them.
    pub run_time_ns: u64,
}

/// The agent binary under test.
pub struct AgentBinary {
    path: PathBuf,
    /// Whether it has `--prometheus-port` (agents built before the
    /// Prometheus endpoint, which `--agent` may name, do not).
    has_prometheus_port: bool,
}

impl AgentBinary {
    /// Asks `path run --help` what it supports.
    pub fn new(path: PathBuf) -> Result<Self> {
        let help = Command::new(&path)
            .args(["run", "--help"])
            .output()
            .with_context(|| format!("running {} run --help", path.display()))?;
        if !help.status.success() {
            bail!("{} run --help failed ({})", path.display(), help.status);
        }
        let has_prometheus_port =
            String::from_utf8_lossy(&help.stdout).contains("--prometheus-port");
        Ok(Self {
            path,
            has_prometheus_port,
        })
    }
}

/// A running agent.
pub struct Agent {
    process: Process,
    log: Arc<Mutex<Vec<String>>>,
    cpu_at_start: Duration,
    started: Instant,
}

impl Agent {
    /// Starts `sonde run --port PORT` exporting over OTLP/HTTP to
    /// `endpoint`, with `env` set too, and waits until it reports running.
    pub fn start(
        binary: &AgentBinary,
        port: u16,
        endpoint: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut command = Command::new(&binary.path);
        command.arg("run").arg("--port").arg(port.to_string());
        if binary.has_prometheus_port {
            // Its own /metrics port: the default one may belong to another
            // agent on the machine.
            command
                .arg("--prometheus-port")
                .arg(free_port()?.to_string());
        }
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("SONDE_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stderr(Stdio::piped());
        let mut process = Process::spawn("the agent", &mut command, false)?;
        let stderr = process.take_stderr().context("the agent's stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agent running") {
                    let _ = ready_tx.send(());
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        // Returns early when the agent exits (its stderr closes).
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            let state = match process.ensure_running() {
                Ok(()) => format!("still not running after {START_TIMEOUT:?}"),
                Err(err) => format!("{err:#}"),
            };
            bail!(
                "the agent did not start ({state}); the end of its log:\n{}",
                tail(&log)
            );
        }
        let cpu_at_start = process.cpu()?;
        let started = Instant::now();
        Ok(Self {
            process,
            log,
            cpu_at_start,
            started,
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the agent (it flushes its export queue) and reports.
    pub fn stop(self) -> Result<AgentReport> {
        let peak_rss_kib = self.process.peak_rss_kib()?;
        let programs = program_stats(self.process.pid())?;
        let exited = self.process.stop()?;
        let wall = self.started.elapsed();
        let log = lines(&self.log);
        if !exited.status.success() {
            bail!(
                "the agent exited with {}; the end of its log:\n{}",
                exited.status,
                tail(&self.log)
            );
        }
        let counters = log
            .iter()
            .rev()
            .find_map(|line| parse_counters(line))
            .with_context(|| {
                format!(
                    "no counters at the end of the agent's log:\n{}",
                    tail(&self.log)
                )
            })?;
        let sum = |names: &[&str]| names.iter().filter_map(|n| counters.get(*n)).sum();
        Ok(AgentReport {
            cpu_ms: exited.cpu.saturating_sub(self.cpu_at_start).as_secs_f64() * 1e3,
            wall_ms: wall.as_secs_f64() * 1e3,
            peak_rss_kib,
            events_lost: sum(EVENT_LOSS_COUNTERS),
            spans_lost: sum(SPAN_LOSS_COUNTERS),
            counters,
            programs,
        })
    }
}

fn lines(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The last lines of the log, for errors (a verifier log runs to
/// thousands).
fn tail(log: &Mutex<Vec<String>>) -> String {
    const LINES: usize = 40;
    let lines = lines(log);
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// The `name=value` pairs after `counters=` in the exit log line
/// (`... agent counters counters=sonde_a=1 sonde_b=2`, or `data was
/// dropped` when something was lost).
fn parse_counters(line: &str) -> Option<BTreeMap<String, u64>> {
    let (_, list) = line.split_once(" counters=")?;
    list.split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The agent's kernel programs with their run statistics, merged by hook
/// (sorted by name).
fn program_stats(pid: u32) -> Result<Vec<ProgramStats>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut programs: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut hooks: BTreeMap<u64, String> = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // An fd closed meanwhile is not one of the programs.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let fields = parse_fdinfo(&text);
        let number = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
        let Some(prog_id) = number("prog_id") else {
            continue;
        };
        if fields.contains_key("link_id") {
            // Tracepoint links name their tracepoint; the others (cgroup,
            // uprobe) are named after their program below.
            if let Some(hook) = fields.get("tp_name") {
                hooks.insert(prog_id, (*hook).to_owned());
            }
        } else if let (Some(cnt), Some(ns)) = (number("run_cnt"), number("run_time_ns")) {
            programs.insert(prog_id, (cnt, ns));
        }
    }
    if programs.is_empty() {
        bail!("no BPF programs among the fds of the agent (pid {pid})");
    }
    let unnamed: Vec<u64> = programs
        .keys()
        .filter(|id| !hooks.contains_key(id))
        .copied()
        .collect();
    if !unnamed.is_empty() {
        hooks.extend(program_names(&unnamed));
    }
    let mut by_hook: BTreeMap<String, ProgramStats> = BTreeMap::new();
    for (id, (run_cnt, run_time_ns)) in programs {
        let hook = hooks
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("program {id}"));
        let entry = by_hook.entry(hook.clone()).or_insert(ProgramStats {
            hook,
            run_cnt: 0,
            run_time_ns: 0,
        });
        entry.run_cnt += run_cnt;
        entry.run_time_ns += run_time_ns;
    }
    Ok(by_hook.into_values().collect())
}

/// Programs attached without a tracepoint (sock_ops, sk_msg, uprobes, tail
/// calls), named `name (type)` from `bpftool prog show`, which reads the
/// full function name from the program's BTF.
fn program_names(ids: &[u64]) -> BTreeMap<u64, String> {
    #[derive(serde::Deserialize)]
    struct Program {
        id: u64,
        name: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let listed = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<Vec<Program>>(&out.stdout).ok())
        .unwrap_or_default();
    listed
        .into_iter()
        .filter(|program| ids.contains(&program.id))
        .filter_map(|program| {
            let kind = match program.kind.as_deref()? {
                // uprobes are kprobe-type programs; Sonde attaches no kprobes.
                "kprobe" => "uprobe",
                other => other,
            };
            Some((program.id, format!("{} ({kind})", program.name?)))
        })
        .collect()
}

/// `key:\tvalue` lines.
fn parse_fdinfo(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.trim(), value.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{parse_counters, parse_fdinfo};

    #[test]
    fn counters_come_from_either_exit_line() {
        let ok = "2026-11-26T07:14:15Z  INFO agent::pipeline: agent counters \
                  counters=sonde_events_received=8 sonde_spans_produced=3";
        let counters = parse_counters(ok).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!(counters.get("sonde_events_received"), Some(&8));
        assert_eq!(counters.get("sonde_spans_produced"), Some(&3));
        let lost = "2026-11-26T07:14:15Z  WARN agent::pipeline: data was dropped \
                    counters=sonde_spans_dropped_queue_full=12";
        let counters = parse_counters(lost).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!(counters.get("sonde_spans_dropped_queue_full"), Some(&12));
        assert!(parse_counters("INFO agent::pipeline: agent running").is_none());
        assert!(parse_counters("x counters=sonde_a=notanumber").is_none());
    }

    #[test]
    fn fdinfo_fields() {
        let text = "pos:\t0\nprog_type:\t26\nprog_id:\t438\nrun_time_ns:\t1200\nrun_cnt:\t10\n";
        let fields = parse_fdinfo(text);
        assert_eq!(fields.get("prog_id"), Some(&"438"));
        assert_eq!(fields.get("run_time_ns"), Some(&"1200"));
    }
}
