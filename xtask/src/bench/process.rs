//! The processes a benchmark starts (nginx, uvicorn, the agent, the OTLP
//! sink): started with their command line printed, stopped with SIGTERM,
//! killed if anything goes wrong, and measured without instrumenting them:
//! CPU time from their process CPU clock, peak RSS from /proc.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// How long a process gets to exit after SIGTERM before it is killed; the
/// agent and the OpenTelemetry SDK flush their span queues in that time.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process that is killed when dropped, so that an error anywhere in
/// the benchmark leaves no server or agent running.
pub struct Process {
    name: &'static str,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

/// How a stopped process ended.
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// User + system CPU time over its whole life.
    pub cpu: Duration,
}

impl Process {
    /// Starts `cmd` (printed first); stdout is piped when `capture_stdout`,
    /// else discarded. Stdin is always closed.
    pub fn spawn(name: &'static str, cmd: &mut Command, capture_stdout: bool) -> Result<Self> {
        eprintln!("$ {}", cmd::display(cmd));
        cmd.stdin(Stdio::null()).stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: `{}`", cmd::display(cmd)))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self {
            name,
            child,
            stdout,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the piped stderr (for processes started with `Stdio::piped()`
    /// stderr, read by the caller).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Reads the next line of the piped stdout; an error if the process
    /// closed it (exited).
    pub fn read_line(&mut self) -> Result<String> {
        let stdout = self
            .stdout
            .as_mut()
            .with_context(|| format!("{}'s stdout is not captured", self.name))?;
        let mut line = String::new();
        let n = stdout
            .read_line(&mut line)
            .with_context(|| format!("reading {}'s output", self.name))?;
        if n == 0 {
            bail!("{} exited before printing what was expected", self.name);
        }
        Ok(line.trim_end().to_owned())
    }

    /// Fails if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited early ({status})", self.name),
            Err(err) => Err(err).with_context(|| format!("checking on {}", self.name)),
        }
    }

    /// Waits until something accepts connections on `addr`, failing early
    /// if the process exits.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait(mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?
            {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// User + system CPU time used so far.
    pub fn cpu(&self) -> Result<Duration> {
        Ok(read_stat(self.pid())?.cpu)
    }

    /// Peak resident set size so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// Sends SIGTERM and waits for the process to exit, reading its final
    /// CPU time while it is a zombie (before it is reaped, /proc still has
    /// it). Killed, and an error, if it does not exit in time.
    pub fn stop(mut self) -> Result<Exited> {
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let stat = read_stat(self.pid())?;
            if stat.state == 'Z' {
                let status = self
                    .child
                    .wait()
                    .with_context(|| format!("waiting for {}", self.name))?;
                return Ok(Exited {
                    status,
                    cpu: stat.cpu,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Process::stop`], then reads the rest of stdout.
    pub fn stop_and_read(mut self) -> Result<(Exited, String)> {
        let stdout = self.stdout.take();
        let exited = self.stop()?;
        let mut rest = String::new();
        if let Some(mut stdout) = stdout {
            std::io::Read::read_to_string(&mut stdout, &mut rest)
                .context("reading the output of a stopped process")?;
        }
        Ok((exited, rest))
    }
}

impl Drop for Process {
    /// SIGTERM first: nginx's master stops its workers only then (killed,
    /// it would leave them serving); SIGKILL if that does not work.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        eprintln!("xtask: stopping {} (pid {})", self.name, self.pid());
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of /proc/PID/stat the benchmark uses.
struct Stat {
    state: char,
    cpu: Duration,
}

/// The process's state, and its CPU time from its CPU clock, to the
/// nanosecond, where the kernel gives it (else from /proc, in ticks).
fn read_stat(pid: u32) -> Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let stat =
        parse_stat(&text, clock_ticks_per_second()).with_context(|| format!("parsing {path}"))?;
    Ok(Stat {
        cpu: process_cpu_clock(pid).unwrap_or(stat.cpu),
        ..stat
    })
}

/// User + system CPU time of every thread of `pid`, those gone included,
/// from its process CPU clock (also readable while it is a zombie). /proc's
/// utime and stime count in clock ticks (10 ms): over a 3 s run at 5,000
/// requests a second that is 0.7 µs a request, more than the differences
/// the benchmark is there to show.
fn process_cpu_clock(pid: u32) -> Option<Duration> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes the clock id to `clock`, a valid out pointer.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the time to `time`, a valid out pointer.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(time.tv_sec).ok()?,
        u32::try_from(time.tv_nsec).ok()?,
    ))
}

/// `pid (comm) state ... utime stime ...`: comm may hold spaces and
/// parentheses, so fields are counted after its last `)`. utime and stime
/// are fields 14 and 15, in clock ticks.
fn parse_stat(text: &str, ticks_per_second: u64) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // `fields[0]` is field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let ticks = utime + stime;
    let cpu = Duration::from_secs(ticks / ticks_per_second)
        + Duration::from_nanos((ticks % ticks_per_second) * 1_000_000_000 / ticks_per_second);
    Some(Stat { state, cpu })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(pid, signal) };
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (the machine
/// is shared: fixed ports are often taken).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::{clock_ticks_per_second, parse_stat, process_cpu_clock};

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (my (odd) name) Z 1 4242 4242 0 -1 4194304 100 0 0 0 250 150 0 0 20 0 1 0 \
                    123 0 0 18446744073709551615";
        let stat = parse_stat(text, 100).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!(stat.state, 'Z');
        assert_eq!(stat.cpu.as_millis(), 4000);
    }

    /// The clock reading agrees with /proc's tick count, for a process that
    /// ran and exited but is not reaped yet, the state the benchmark reads
    /// the agent in. To two ticks and a little: /proc truncates utime and
    /// stime to ticks each.
    #[test]
    fn cpu_clock_reads_a_zombie_within_two_ticks_of_proc() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sh: {e}"));
        let pid = child.id();
        let path = format!("/proc/{pid}/stat");
        let ticks = loop {
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let stat = parse_stat(&text, clock_ticks_per_second())
                .unwrap_or_else(|| panic!("unparsed {text}"));
            if stat.state == 'Z' {
                break stat.cpu;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let precise = process_cpu_clock(pid).unwrap_or_else(|| panic!("no CPU clock for {pid}"));
        let _ = child.wait();
        assert!(precise > Duration::from_millis(50), "{precise:?}");
        let tick = Duration::from_secs(1) / clock_ticks_per_second() as u32;
        assert!(
            precise.abs_diff(ticks) <= 2 * tick + Duration::from_millis(2),
            "clock {precise:?}, /proc {ticks:?}"
        );
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert!(parse_stat("1 (init) S 0 1", 100).is_none());
    }
}
