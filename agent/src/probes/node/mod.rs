//! Node.js: which request each outgoing call of an event loop is for.
//!
//! A Node process serves every request on one thread, and nothing the
//! kernel can see tells which request a call belongs to: that lives in
//! JavaScript (the work a request's handler starts, across promises and
//! timers). So the agent asks the process: it evaluates `context.js` in it
//! through Node's inspector (`inspector`), which keeps a token per served
//! request on that work (AsyncLocalStorage), gives each client request
//! (`http`, `https`, `fetch`) the token of the work that made it, and tells
//! the kernel, while the request is written, which token it is for. The
//! messages are lookups of environment variables that are never set,
//! whose names a uprobe on libuv's `uv_os_getenv` reads
//! (`agent-ebpf/src/probes/node_context.rs`, `nodecontext.rs`).
//!
//! This changes the process, so it is said in the README and can be
//! turned off (`trace_context.node_inspector: false`,
//! `--no-node-inspector`): SIGUSR1 opens the inspector (Node prints two
//! lines on its stderr), the script is evaluated, the inspector closes
//! again. The script only wraps three methods and subscribes to three
//! diagnostics channels; when the agent stops, or the process is no
//! longer selected, the same way removes it (`uninstall()`). A process
//! the agent cannot reach keeps the thread rule (never a wrong parent).
//!
//! Injection is one process at a time, on a thread of its own: each opens
//! the same port (9229) in its network namespace.

pub mod inspector;

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use self::inspector::NodeProcess;
use super::function_probes::FunctionProbes;
use crate::{
    model::error::ErrorChain,
    telemetry::{Counter, Stats},
};

/// The function probed: Node looks up every `process.env` name with it.
pub const FUNCTION: &str = "uv_os_getenv";

/// A function only Node defines (N-API, for native addons): the
/// executable is Node, whose SIGUSR1 opens the inspector (another program
/// linking libuv may use SIGUSR1 for something else).
pub const NODE_MARKER: &str = "napi_module_register";

/// Its program (entry only).
pub const PROBES: FunctionProbes = FunctionProbes {
    function: FUNCTION,
    entry: "node_getenv",
    exit: None,
};

/// What is evaluated in each process.
const INSTALL: &str = include_str!("context.js");
/// What removes it again.
const UNINSTALL: &str = "globalThis[Symbol.for('sonde.node-context')]?.uninstall() ?? 'absent'";
/// How long one evaluation may take (signal, connect, evaluate, close).
const EVALUATION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the agent's stop may spend removing the script.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How old a process must be before it gets SIGUSR1: Node aborts on one
/// that comes before its start-up has set up the inspector's wakeup
/// ("Assertion failed: start_io_thread_async_initialized", seen on Node 20
/// for a signal sent right after exec). Short-lived Node programs (CLI
/// tools, one-shot clients) are never signalled.
const MIN_AGE: Duration = Duration::from_secs(2);

enum Job {
    /// A selected process runs a Node executable carrying the probe.
    Install(u32),
    /// A process exited or is no longer selected.
    Forget(u32),
}

/// Puts the script in Node processes and takes it out again: a worker
/// thread, fed by discovery. Dropping it (the agent stops) removes the
/// script from every process that still runs.
pub struct NodeContext {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl NodeContext {
    /// Starts the worker.
    pub fn start(stats: Arc<Stats>) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("sonde-node".to_owned())
            .spawn(move || run(&receiver, &stats))?;
        Ok(Self {
            jobs: Some(jobs),
            worker: Some(worker),
        })
    }

    /// Evaluates the script in `pid` (once per process).
    pub fn install(&self, pid: u32) {
        self.send(Job::Install(pid));
    }

    /// Takes the script out of `pid` if it is still running.
    pub fn forget(&self, pid: u32) {
        self.send(Job::Forget(pid));
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // The worker only ends when this is dropped.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for NodeContext {
    fn drop(&mut self) {
        // Closing the channel tells the worker to clean up and end.
        self.jobs = None;
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            warn!("the Node.js context worker panicked");
        }
    }
}

/// The worker: installs and removes until the channel closes, then removes
/// the script from every process it is in. A process waits in `waiting`
/// until it is [`MIN_AGE`] old.
fn run(jobs: &mpsc::Receiver<Job>, stats: &Stats) {
    let mut installed: HashMap<u32, NodeProcess> = HashMap::new();
    let mut waiting: Vec<(Instant, NodeProcess)> = Vec::new();
    loop {
        let next = waiting.iter().map(|(due, _)| *due).min();
        let job = match next {
            Some(due) => match jobs.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(job) => Some(job),
                Err(mpsc::RecvError) => break,
            },
        };
        match job {
            // Queued even when old enough (due now): installed below.
            Some(Job::Install(pid)) => match NodeProcess::inspect(pid) {
                Ok(process) => {
                    let wait = process
                        .age()
                        .map_or(Duration::ZERO, |age| MIN_AGE.saturating_sub(age));
                    waiting.push((Instant::now() + wait, process));
                }
                Err(error) => failed(pid, &error, stats),
            },
            Some(Job::Forget(pid)) => {
                waiting.retain(|(_, process)| process.pid != pid);
                if let Some(process) = installed.remove(&pid) {
                    uninstall(&process, EVALUATION_TIMEOUT);
                }
            }
            None => {}
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(at, _)| *at <= now);
        waiting = later;
        for (_, process) in due {
            if install(&process, stats) {
                installed.insert(process.pid, process);
            }
        }
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    for process in installed.values() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn!(
                pid = process.pid,
                "no time left to remove the Node.js context script"
            );
            continue;
        }
        uninstall(process, left.min(EVALUATION_TIMEOUT));
    }
}

/// Evaluates the script in `process`; whether it is in.
fn install(process: &NodeProcess, stats: &Stats) -> bool {
    match process.evaluate(INSTALL, EVALUATION_TIMEOUT) {
        Ok(_) => {
            info!(pid = process.pid, "Node.js context script installed");
            true
        }
        Err(error) => {
            failed(process.pid, &error, stats);
            false
        }
    }
}

fn failed(pid: u32, error: &inspector::InspectorError, stats: &Stats) {
    stats.add(Counter::NodeContextFailed, 1);
    warn!(
        pid,
        error = %ErrorChain(error),
        "this Node.js process's calls are parented by thread only"
    );
}

fn uninstall(process: &NodeProcess, timeout: Duration) {
    match process.evaluate(UNINSTALL, timeout) {
        Ok(outcome) => debug!(pid = process.pid, %outcome, "Node.js context script removed"),
        // Gone or replaced: nothing is left to remove.
        Err(inspector::InspectorError::Gone | inspector::InspectorError::Replaced) => {}
        Err(error) => warn!(
            pid = process.pid,
            error = %ErrorChain(&error),
            "could not remove the Node.js context script"
        ),
    }
}
