//! Just enough of a Node.js inspector client to evaluate one expression
//! in a running process, then turn its inspector off again.
//!
//! Node opens its inspector on SIGUSR1, on `127.0.0.1:9229` of the
//! process's network namespace (it prints two lines about it on its
//! stderr), and serves the Chrome DevTools protocol over a WebSocket. The
//! agent connects from that namespace (a thread of its own joins it),
//! checks that the inspector answering is the process's own (the process
//! holds the listening socket), sends `Runtime.evaluate`, and asks the process to close the inspector
//! once the agent has hung up (`inspector.close()` waits for sessions to
//! end). While it is open, anything in that network namespace could
//! connect to it: the window lasts one evaluation.
//!
//! SIGUSR1 is sent only to a process that catches it (a process that does
//! not would be killed by it) and was not started with an inspector of its
//! own (`--inspect*`, whose port is not known, on its command line or in
//! `NODE_OPTIONS`) or with SIGUSR1 turned off.
//!
//! The inspector's HTTP and WebSocket traffic is the process's, and its
//! probes see it: the connection tracker leaves alone the connections
//! this module made ([`is_agent_session`]), which are no service's calls.

use std::{
    collections::{HashSet, VecDeque},
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use thiserror::Error;
use tungstenite::{Message, WebSocket};

use crate::discovery::procfs::Procfs;

/// Where Node's inspector listens when SIGUSR1 opens it.
const INSPECTOR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9229);
/// `SIGUSR1`'s bit in `/proc/PID/status`'s signal masks.
const SIGUSR1_BIT: u64 = 1 << (libc::SIGUSR1 - 1);
/// The inspector's listening socket in `/proc/PID/net/tcp`: local address
/// 127.0.0.1:9229 (address bytes as the kernel stores them, port in hex),
/// state LISTEN.
const LISTENER: (&str, &str) = ("0100007F:240D", "0A");
/// How long the process may take to close its inspector.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many of the agent's recent inspector connections are remembered.
const SESSIONS_KEPT: usize = 64;

/// The local ports of the agent's latest connections to inspectors: one
/// list for the whole agent, as the connections a process makes are one
/// set (written by the Node worker, read by the connection tracker).
static SESSIONS: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());

/// Whether a connection a process accepted from `remote` on `local` is one
/// of the agent's own inspector sessions.
pub fn is_agent_session(local: SocketAddr, remote: SocketAddr) -> bool {
    local.port() == INSPECTOR.port()
        && remote.ip().is_loopback()
        && SESSIONS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&remote.port())
}

/// Why an evaluation did not happen (the process is left as it was, or
/// with its inspector open only if closing it failed).
#[derive(Debug, Error)]
pub enum InspectorError {
    #[error("the process is gone or not readable")]
    Gone,
    #[error("the process does not catch SIGUSR1 (no inspector, or SIGUSR1 turned off)")]
    NoSignal,
    #[error("the process runs an inspector of its own (--inspect)")]
    OwnInspector,
    #[error("the process changed since it was inspected (a new process with its pid?)")]
    Replaced,
    #[error("sending SIGUSR1")]
    Signal(#[source] std::io::Error),
    #[error("entering the process's network namespace")]
    Namespace(#[source] std::io::Error),
    #[error("the inspector on {INSPECTOR} stayed open")]
    StaysOpen,
    #[error("no inspector answered on {INSPECTOR} in time")]
    NoInspector,
    #[error("the inspector on {INSPECTOR} is another process's")]
    OtherProcess,
    #[error("talking to the inspector")]
    Io(#[from] std::io::Error),
    #[error("the inspector's WebSocket")]
    WebSocket(#[from] tungstenite::Error),
    #[error("unexpected answer from the inspector: {0}")]
    Protocol(String),
    #[error("the expression threw: {0}")]
    Threw(String),
}

/// A Node process, as it was when first looked at: its start time tells
/// it from a later process given the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeProcess {
    /// Its pid.
    pub pid: u32,
    /// Start time (`/proc/PID/stat` field 22, clock ticks after boot).
    pub start_time: u64,
}

impl NodeProcess {
    /// Reads what is needed of `pid`, checking that SIGUSR1 is safe to send
    /// and opens the inspector.
    pub fn inspect(pid: u32) -> Result<Self, InspectorError> {
        let procfs = Procfs::default();
        let caught = procfs
            .status_field(pid, "SigCgt")
            .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
            .ok_or(InspectorError::Gone)?;
        let cmdline = procfs.cmdline(pid).ok_or(InspectorError::Gone)?;
        let start_time = procfs.start_time(pid).ok_or(InspectorError::Gone)?;
        if caught & SIGUSR1_BIT == 0 {
            return Err(InspectorError::NoSignal);
        }
        // Options also come from NODE_OPTIONS. Read here, not with
        // `Procfs::env_var`, which cannot tell an unreadable environment
        // (refused: it may ask for an inspector) from a variable not set.
        let environ = fs::read(format!("/proc/{pid}/environ")).map_err(|_| InspectorError::Gone)?;
        let node_options = environ
            .split(|&byte| byte == 0)
            .find_map(|variable| variable.strip_prefix(b"NODE_OPTIONS="))
            .unwrap_or_default();
        let options = node_options.split(|&byte| byte == b' ');
        for argument in cmdline.split(|&byte| byte == 0).chain(options) {
            if argument.starts_with(b"--inspect") || argument.starts_with(b"--debug-port") {
                return Err(InspectorError::OwnInspector);
            }
            if argument == b"--disable-sigusr1" {
                return Err(InspectorError::NoSignal);
            }
        }
        Ok(Self { pid, start_time })
    }

    /// Evaluates `expression` in the process (with Node's command-line
    /// API: `require` works) and returns its value as a string; then
    /// closes the inspector. Gives up after `timeout`.
    pub fn evaluate(&self, expression: &str, timeout: Duration) -> Result<String, InspectorError> {
        if Self::inspect(self.pid)?.start_time != self.start_time {
            return Err(InspectorError::Replaced);
        }
        let deadline = Instant::now() + timeout;
        let namespace =
            File::open(format!("/proc/{}/ns/net", self.pid)).map_err(InspectorError::Namespace)?;
        // SAFETY: kill(2) with a pid and a signal number.
        if unsafe { libc::kill(self.pid as i32, libc::SIGUSR1) } != 0 {
            return Err(InspectorError::Signal(std::io::Error::last_os_error()));
        }
        let mut list = connect_in(&namespace, deadline)?;
        if !self.holds_inspector() {
            return Err(InspectorError::OtherProcess);
        }
        let target = debugger_target(&mut list, deadline)?;
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .ok_or_else(|| InspectorError::Protocol(target.to_string()))?
            .to_owned();
        let stream = connect_in(&namespace, deadline)?;
        let (mut socket, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|error| InspectorError::Protocol(error.to_string()))?;
        let value = call(&mut socket, 1, expression);
        // Whatever the evaluation gave: the inspector closes once this
        // session is gone (a timer, as `close()` waits for sessions).
        let closed = call(
            &mut socket,
            2,
            "(r => { setTimeout(() => r('inspector').close(), 20).unref(); 'closing' })(require)",
        );
        let _ = socket.close(None);
        let _ = socket.flush();
        drop(socket);
        let value = value?;
        closed?;
        wait_closed(&namespace, Instant::now() + CLOSE_TIMEOUT)?;
        Ok(value)
    }
}

impl NodeProcess {
    /// Whether the inspector listening now in the process's network
    /// namespace is the process's own: it holds the listening socket.
    fn holds_inspector(&self) -> bool {
        let Ok(table) = fs::read_to_string(format!("/proc/{}/net/tcp", self.pid)) else {
            return false;
        };
        let Some(inode) = table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&LISTENER.0) && fields.get(3) == Some(&LISTENER.1))
                .then(|| fields.get(9).copied())
                .flatten()
        }) else {
            return false;
        };
        let Ok(inode) = inode.parse() else {
            return false;
        };
        Procfs::default()
            .owners_of(&[self.pid], &HashSet::from([inode]))
            .contains_key(&self.pid)
    }

    /// How long ago the process started (`None` if that cannot be read).
    pub fn age(&self) -> Option<Duration> {
        let uptime = fs::read_to_string("/proc/uptime").ok()?;
        let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        // SAFETY: sysconf with a valid name.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            return None;
        }
        let started = self.start_time as f64 / ticks as f64;
        Some(Duration::from_secs_f64((uptime - started).max(0.0)))
    }
}

/// Runs `work` on a thread that joined the network namespace
/// `namespace` (the agent's own threads stay where they are).
fn in_namespace<T: Send>(
    namespace: &File,
    work: impl FnOnce() -> Result<T, InspectorError> + Send,
) -> Result<T, InspectorError> {
    let namespace = namespace.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on this thread only, which ends here.
                if unsafe { libc::setns(namespace, libc::CLONE_NEWNET) } != 0 {
                    return Err(InspectorError::Namespace(std::io::Error::last_os_error()));
                }
                work()
            })
            .join()
            .unwrap_or(Err(InspectorError::NoInspector))
    })
}

/// Waits until nothing listens on the inspector's port in `namespace`
/// (the process closes it a few milliseconds after the session ends), so
/// that the next process there can open its own; gives up at `deadline`.
fn wait_closed(namespace: &File, deadline: Instant) -> Result<(), InspectorError> {
    in_namespace(namespace, || {
        while TcpStream::connect_timeout(&INSPECTOR, Duration::from_millis(100)).is_ok() {
            if Instant::now() > deadline {
                return Err(InspectorError::StaysOpen);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })
}

/// A TCP connection to the inspector from the process's network
/// namespace, retried until `deadline` (the inspector starts on SIGUSR1,
/// a few milliseconds later).
fn connect_in(namespace: &File, deadline: Instant) -> Result<TcpStream, InspectorError> {
    let stream = in_namespace(namespace, || {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(InspectorError::NoInspector);
            }
            if let Ok(stream) = TcpStream::connect_timeout(&INSPECTOR, left) {
                return Ok(stream);
            }
            std::thread::sleep(Duration::from_millis(20).min(left));
        }
    })?;
    let mut sessions = SESSIONS.lock().unwrap_or_else(PoisonError::into_inner);
    if sessions.len() == SESSIONS_KEPT {
        sessions.pop_front();
    }
    sessions.push_back(stream.local_addr()?.port());
    drop(sessions);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The inspector's one target (`GET /json/list`).
fn debugger_target(stream: &mut TcpStream, deadline: Instant) -> Result<Value, InspectorError> {
    stream.write_all(b"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:9229\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut length = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || Instant::now() > deadline {
            return Err(InspectorError::Protocol("no /json/list answer".to_owned()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let length = length.ok_or_else(|| InspectorError::Protocol("no Content-Length".to_owned()))?;
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let list: Value = serde_json::from_slice(&body)
        .map_err(|error| InspectorError::Protocol(error.to_string()))?;
    match list.as_array().map(Vec::as_slice) {
        Some([target]) => Ok(target.clone()),
        _ => Err(InspectorError::Protocol(list.to_string())),
    }
}

/// `Runtime.evaluate` of `expression` as message `id`: its value, as a
/// string.
fn call(
    socket: &mut WebSocket<TcpStream>,
    id: u64,
    expression: &str,
) -> Result<String, InspectorError> {
    let request = json!({
        "id": id,
        "method": "Runtime.evaluate",
        "params": {
            "expression": expression,
            "includeCommandLineAPI": true,
            "returnByValue": true,
            "silent": true,
        },
    });
    socket.send(Message::text(request.to_string()))?;
    loop {
        let Message::Text(text) = socket.read()? else {
            continue;
        };
        let answer: Value = serde_json::from_str(text.as_str())
            .map_err(|error| InspectorError::Protocol(error.to_string()))?;
        // Events (no id) and other answers are not ours.
        if answer["id"].as_u64() != Some(id) {
            continue;
        }
        if let Some(error) = answer.get("error") {
            return Err(InspectorError::Protocol(error.to_string()));
        }
        let result = &answer["result"];
        if let Some(thrown) = result.get("exceptionDetails") {
            let text = thrown["exception"]["description"]
                .as_str()
                .or(thrown["text"].as_str())
                .unwrap_or_default();
            return Err(InspectorError::Threw(text.to_owned()));
        }
        return Ok(match &result["result"]["value"] {
            Value::String(value) => value.clone(),
            other => other.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A child process, killed on drop.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `program args...`, given time to start up (see `super::MIN_AGE`).
    fn run(program: &str, args: &[&str]) -> Running {
        let child = Command::new(program)
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{program}: {error}"));
        std::thread::sleep(Duration::from_secs(1));
        Running(child)
    }

    #[test]
    fn sigusr1_goes_only_to_node_processes_that_catch_it() {
        // `sleep` does not catch SIGUSR1: it would die of it.
        let sleep = run("sleep", &["30"]);
        assert!(matches!(
            NodeProcess::inspect(sleep.0.id()),
            Err(InspectorError::NoSignal)
        ));
        let debugged = run(
            "node",
            &["--inspect=0", "-e", "setInterval(() => {}, 1000)"],
        );
        assert!(matches!(
            NodeProcess::inspect(debugged.0.id()),
            Err(InspectorError::OwnInspector)
        ));
        assert!(matches!(
            NodeProcess::inspect(u32::MAX),
            Err(InspectorError::Gone)
        ));
    }

    /// Evaluates in a real Node process (root: the namespace switch), and
    /// leaves its inspector closed.
    #[test]
    fn evaluates_in_a_node_process_and_closes_the_inspector() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (setns)");
            return;
        }
        let node = run(
            "node",
            &["-e", "globalThis.answer = 42; setInterval(() => {}, 1000)"],
        );
        let process = NodeProcess::inspect(node.0.id()).expect("a Node process");
        let value = process
            .evaluate("String(globalThis.answer + 1)", Duration::from_secs(5))
            .expect("evaluated");
        assert_eq!(value, "43");
        let thrown = process.evaluate("missing.property", Duration::from_secs(5));
        assert!(
            matches!(thrown, Err(InspectorError::Threw(_))),
            "{thrown:?}"
        );
        // Another Node process of the same network namespace, right after:
        // the port is free again for its inspector.
        let other = run("node", &["-e", "setInterval(() => {}, 1000)"]);
        let other_process = NodeProcess::inspect(other.0.id()).expect("a Node process");
        assert_eq!(
            other_process
                .evaluate("String(process.pid)", Duration::from_secs(5))
                .expect("evaluated in the other process"),
            other_process.pid.to_string()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(INSPECTOR).is_ok() {
            assert!(Instant::now() < deadline, "the inspector stays open");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
