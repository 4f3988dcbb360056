//! Load generation: wrk at saturation, and an open-loop fixed-rate
//! generator for the fixed rates.
//!
//! Debian's wrk has no rate option, and wrk2 (which has one) is not packaged
//! in Debian, so the fixed-rate load comes from [`fixed_rate`], which runs in
//! the release build of xtask (`xtask bench-helper load`): a single-threaded
//! tokio runtime drives N keep-alive connections (hyper), and a pacer thread
//! releases one request token per 1/rate seconds, each carrying its intended
//! send time. Any free connection takes the next token; latency is measured
//! from the intended send time to the end of the response body, so a slow
//! response delays the requests queued behind it and they count that wait
//! (no coordinated omission). The pacer sleeps with a 1 ns timer slack
//! rather than on tokio's millisecond timer wheel, whose granularity would
//! be most of the latency being measured. Latencies are kept in full and
//! sorted: at most a few hundred thousand per run, so percentiles are exact.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, client::conn::http1::SendRequest, header::HOST};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpStream,
    sync::{Mutex, mpsc},
    task::JoinSet,
};

use super::stats::quantile;
use crate::cmd;

/// Keep-alive connections, for wrk and the fixed-rate generator alike.
const CONNECTIONS: usize = 32;
/// After the schedule ends, how long queued requests may still be sent;
/// past that they count as errors (the server could not keep the rate).
const DRAIN: Duration = Duration::from_secs(2);

/// The load of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// As fast as the server answers (wrk, closed loop).
    Saturation,
    /// This many requests per second (open loop).
    Rate(u32),
}

impl Load {
    /// Short label for tables and progress lines.
    pub fn label(self) -> String {
        match self {
            Load::Saturation => "saturation".to_owned(),
            Load::Rate(rate) => format!("{} req/s", thousands(u64::from(rate))),
        }
    }
}

/// `12345` -> `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What one load run measured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Requests answered with a 2xx.
    pub requests: u64,
    /// Failed requests, non-2xx answers, and (fixed rate) requests never
    /// sent because the server was too far behind.
    pub errors: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
}

impl LoadResult {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Drives `load` against `http://addr/` for `duration`.
pub struct Generator {
    /// The release xtask binary that runs [`fixed_rate`].
    helper: PathBuf,
    /// wrk's script, which prints the results as JSON.
    wrk_script: PathBuf,
}

impl Generator {
    /// Writes wrk's script into `dir`.
    pub fn new(helper: PathBuf, dir: &Path) -> Result<Self> {
        let wrk_script = dir.join("report.lua");
        std::fs::write(&wrk_script, WRK_SCRIPT)
            .with_context(|| format!("writing {}", wrk_script.display()))?;
        Ok(Self { helper, wrk_script })
    }

    /// Runs `load` for `duration` (whole seconds for wrk).
    pub fn run(&self, load: Load, addr: SocketAddr, duration: Duration) -> Result<LoadResult> {
        let mut command = match load {
            Load::Saturation => {
                let mut wrk = Command::new("wrk");
                wrk.args(["--threads", "1", "--connections"])
                    .arg(CONNECTIONS.to_string())
                    .arg("--duration")
                    .arg(format!("{}s", duration.as_secs().max(1)))
                    .args(["--timeout", "5s", "--script"])
                    .arg(&self.wrk_script)
                    .arg(format!("http://{addr}/"));
                wrk
            }
            Load::Rate(rate) => {
                let mut helper = Command::new(&self.helper);
                helper
                    .args(["bench-helper", "load", "--addr"])
                    .arg(addr.to_string())
                    .arg("--rate")
                    .arg(rate.to_string())
                    .arg("--duration-ms")
                    .arg(duration.as_millis().to_string());
                helper
            }
        };
        eprintln!("$ {}", cmd::display(&command));
        let output = command
            .output()
            .with_context(|| format!("could not start `{}`", cmd::display(&command)))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "`{}` failed ({}): {} {}",
                cmd::display(&command),
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let json = stdout
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .with_context(|| format!("no results from `{}`: {stdout}", cmd::display(&command)))?;
        serde_json::from_str(json).with_context(|| format!("parsing load results {json}"))
    }
}

/// wrk's `done` hook: counts and latency percentiles (microseconds) as one
/// JSON line; any error class counts.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    '{"requests":%d,"errors":%d,"seconds":%f,"p50_us":%f,"p99_us":%f}\n',
    summary.requests - e.status, errors, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// Arguments of `xtask bench-helper load`.
#[derive(clap::Args, Debug)]
pub struct RateArgs {
    /// Server address (127.0.0.1:PORT).
    #[arg(long)]
    addr: SocketAddr,
    /// Requests per second.
    #[arg(long)]
    rate: u32,
    /// How long to send for.
    #[arg(long)]
    duration_ms: u64,
}

/// Sends `GET /` at a fixed rate and prints a [`LoadResult`] as JSON.
pub fn fixed_rate(args: &RateArgs) -> Result<()> {
    ensure!(
        args.addr.ip().is_loopback(),
        "load goes to 127.0.0.1 only, not {}",
        args.addr
    );
    ensure!(args.rate > 0, "the rate must be positive");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let result = runtime.block_on(send_at_rate(
        args.addr,
        args.rate,
        Duration::from_millis(args.duration_ms),
    ))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// What one connection did.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    errors: u64,
}

async fn send_at_rate(addr: SocketAddr, rate: u32, duration: Duration) -> Result<LoadResult> {
    // Connections are opened before the clock starts: connection setup is
    // not part of the measured latency.
    let mut senders = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        senders.push(connect(addr).await?);
    }
    let (tokens_tx, tokens_rx) = mpsc::unbounded_channel();
    let tokens = Arc::new(Mutex::new(tokens_rx));
    let start = Instant::now() + Duration::from_millis(10);
    let last_send = start + duration + DRAIN;
    let mut workers = JoinSet::new();
    for sender in senders {
        workers.spawn(worker(addr, sender, Arc::clone(&tokens), last_send));
    }
    let pacer = std::thread::spawn(move || pace(&tokens_tx, start, duration, rate));

    let mut all = Tally::default();
    while let Some(joined) = workers.join_next().await {
        let tally = joined.context("a load generator connection panicked")?;
        all.latencies_ns.extend(tally.latencies_ns);
        all.errors += tally.errors;
    }
    let seconds = start.elapsed().as_secs_f64();
    if pacer.join().is_err() {
        bail!("the load generator's pacer panicked");
    }
    all.latencies_ns.sort_unstable();
    let micros = |q| quantile(&all.latencies_ns, q).map_or(f64::NAN, |ns| ns as f64 / 1e3);
    Ok(LoadResult {
        requests: all.latencies_ns.len() as u64,
        errors: all.errors,
        seconds,
        p50_us: micros(0.50),
        p99_us: micros(0.99),
    })
}

/// Releases one token per request at its intended send time.
fn pace(tokens: &mpsc::UnboundedSender<Instant>, start: Instant, duration: Duration, rate: u32) {
    // The default 50 us timer slack would delay every wake-up by up to that.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let total = (duration.as_secs_f64() * f64::from(rate)).round() as u64;
    for k in 0..total {
        let intended = start + Duration::from_nanos(k * 1_000_000_000 / u64::from(rate));
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if tokens.send(intended).is_err() {
            return;
        }
    }
}

/// One keep-alive connection taking tokens until the pacer is done;
/// reconnects after a failure.
async fn worker(
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
    tokens: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    last_send: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender = Some(sender);
    loop {
        // Holding the lock while waiting hands tokens to waiting workers in
        // turn (tokio's mutex is fair).
        let Some(intended) = tokens.lock().await.recv().await else {
            return tally;
        };
        if Instant::now() > last_send {
            tally.errors += 1;
            continue;
        }
        let outcome = match sender.as_mut() {
            Some(sender) => get(sender, addr).await,
            None => match connect(addr).await {
                Ok(new) => get(sender.insert(new), addr).await,
                Err(err) => Err(err),
            },
        };
        match outcome {
            Ok(()) => tally
                .latencies_ns
                .push(intended.elapsed().as_nanos() as u64),
            Err(_) => {
                tally.errors += 1;
                sender = None;
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1 handshake")?;
    // Connection errors surface through the sender.
    tokio::spawn(connection);
    Ok(sender)
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr) -> Result<()> {
    sender.ready().await?;
    let request = Request::get("/")
        .header(HOST, addr.to_string())
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    ensure!(status.is_success(), "status {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Load, thousands};

    #[test]
    fn labels() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(Load::Rate(20_000).label(), "20,000 req/s");
        assert_eq!(Load::Saturation.label(), "saturation");
    }
}
