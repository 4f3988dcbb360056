//! Runs the real agent binary for a test, reads its log, and stops it with
//! SIGTERM or `kill -9`.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use crate::prometheus::free_port;

/// Why an end-to-end test cannot run here; `None` when it can.
///
/// The tests need root (to load BPF programs) and an agent binary built with
/// its kernel object (`cargo xtask build` sets `SONDE_AGENT_BIN`). Under
/// `cargo xtask test` (`SONDE_E2E_REQUIRED=1`, as in CI) a missing
/// prerequisite is a failure, not a skip.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc_geteuid() } != 0 {
        Some("end-to-end tests need root to load eBPF programs".to_owned())
    } else if std::env::var_os("SONDE_AGENT_BIN").is_none() {
        Some("SONDE_AGENT_BIN is not set: run through `cargo xtask test`".to_owned())
    } else {
        None
    };
    if let Some(reason) = &reason
        && std::env::var_os("SONDE_E2E_REQUIRED").is_some()
    {
        panic!("end-to-end prerequisites missing: {reason}");
    }
    reason
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Writes a config file for one test (named after it, in the temp
/// directory) and returns its path.
pub fn config_file(test: &str, yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sonde-{test}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// `VmRSS` (resident now) or `VmHWM` (peak resident) of a process, KiB.
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// `log` without its ANSI colour sequences (`ESC [ parameters letter`):
/// tracing colours field names even when it writes to a pipe.
pub fn strip_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Skips the calling test (returns from it) with a printed reason.
#[macro_export]
macro_rules! require_e2e {
    () => {
        if let Some(reason) = $crate::agent::skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// A running agent.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `sonde run <args>` exporting to `otlp_endpoint` over `protocol`
    /// and waits until it reports that it is running.
    pub fn start(args: &[&str], otlp_endpoint: &str, protocol: &str) -> Self {
        Self::start_with_env(args, otlp_endpoint, protocol, &[])
    }

    /// [`Agent::start`] with extra environment variables (`OTEL_BSP_*`...).
    pub fn start_with_env(
        args: &[&str],
        otlp_endpoint: &str,
        protocol: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let bin = PathBuf::from(std::env::var_os("SONDE_AGENT_BIN").expect("SONDE_AGENT_BIN"));
        let mut child = Command::new(&bin)
            .arg("run")
            .args(args)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("SONDE_LOG", "info,agent=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agent running") {
                    let _ = ready_tx.send(());
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut agent = Self { child, log };
        // Longer under software emulation (`cargo xtask vm` sets it): the
        // verifier alone takes ~20 s there.
        let start_timeout = std::env::var("SONDE_E2E_START_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(30);
        if ready_rx
            .recv_timeout(Duration::from_secs(start_timeout))
            .is_err()
        {
            let status = agent.child.try_wait().ok().flatten();
            panic!(
                "agent did not start (exit: {status:?}); log:\n{}",
                agent.log_text()
            );
        }
        agent
    }

    /// [`Agent::start`] with the agent's /metrics on a free port of its
    /// own, whose address comes back with it (for [`Counters`]).
    ///
    /// [`Counters`]: crate::prometheus::Counters
    pub fn start_with_metrics(
        args: &[&str],
        otlp_endpoint: &str,
        protocol: &str,
    ) -> (Self, SocketAddr) {
        Self::start_with_env_and_metrics(args, otlp_endpoint, protocol, &[])
    }

    /// [`Agent::start_with_metrics`] with extra environment variables.
    pub fn start_with_env_and_metrics(
        args: &[&str],
        otlp_endpoint: &str,
        protocol: &str,
        env: &[(&str, &str)],
    ) -> (Self, SocketAddr) {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let port = metrics.port().to_string();
        let mut args = args.to_vec();
        args.extend(["--prometheus-port", &port]);
        let agent = Self::start_with_env(&args, otlp_endpoint, protocol, env);
        (agent, metrics)
    }

    /// The agent's process id (for its memory use in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits until the agent logged a line containing `needle`; panics with
    /// the log if `timeout` passes first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let started = std::time::Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                started.elapsed() < timeout,
                "agent did not log {needle:?} within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Agent::log_text`] without colours.
    pub fn plain_log(&self) -> String {
        strip_colours(&self.log_text())
    }

    /// Waits until the agent has put each of `pids` in the kernel's target
    /// set (it logs "instrumenting process" after that): only then are
    /// their new connections traced and their requests injected. Panics
    /// with the log after `timeout`.
    pub fn wait_instrumented(&self, pids: &[u32], timeout: Duration) {
        let started = Instant::now();
        loop {
            let log = self.plain_log();
            let missing: Vec<&u32> = pids
                .iter()
                .filter(|pid| {
                    let field = format!(" pid={pid} ");
                    !log.lines()
                        .any(|l| l.contains("instrumenting process") && l.contains(&field))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "pids {missing:?} never instrumented; agent log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
        self.terminate()
    }

    /// `kill -9`: the agent gets no chance to clean up. Returns once the
    /// process is reaped, so none of its file descriptors is left.
    pub fn kill(mut self) {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("kill -9 of the agent: {e}"));
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping the agent: {e}"));
        assert_eq!(status.signal(), Some(9), "{status}");
    }

    /// [`Agent::stop`], then everything the agent logged, its last lines
    /// (the exit summary) included.
    pub fn stop_with_log(mut self) -> (i32, String) {
        let code = self.terminate();
        // The stderr reader holds the other reference until it has read
        // the last line.
        for _ in 0..100 {
            if Arc::strong_count(&self.log) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (code, self.log_text())
    }

    fn terminate(&mut self) -> i32 {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!(
            "agent did not stop within 10 s of SIGTERM; log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
