//! A real Prometheus server (Debian's `prometheus`, installed by `cargo
//! xtask setup`) started by a test: generated config scraping one target
//! every second with `honor_labels` (the agent's series carry the `job` and
//! `instance` of the services they describe), on a free port, with its own
//! storage directory; queried over its HTTP API. Plus the small HTTP GET
//! the tests use for it and for the agent's /metrics, and [`Counters`],
//! the agent's own counters read there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long Prometheus may take to start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the Prometheus tests cannot run here, `None` when they can. Under
/// `SONDE_E2E_REQUIRED` (CI) a missing Prometheus is a failure.
pub fn skip_reason() -> Option<String> {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return None;
    }
    let reason = "the `prometheus` binary is missing: `cargo xtask setup` installs it".to_owned();
    if std::env::var_os("SONDE_E2E_REQUIRED").is_some() {
        panic!("end-to-end prerequisites missing: {reason}");
    }
    Some(reason)
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("ephemeral port").port()
}

/// A running Prometheus server; killed and its storage removed on drop.
pub struct Prometheus {
    child: Child,
    address: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, path `/metrics`)
    /// every second and waits until it is ready.
    pub fn start(target: SocketAddr) -> Self {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = std::env::temp_dir().join(format!(
            "sonde-prometheus-{}-{}",
            std::process::id(),
            address.port()
        ));
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: sonde\n    honor_labels: true\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
        let mut prometheus = Self {
            child,
            address,
            dir,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = prometheus.child.try_wait().ok().flatten() {
                panic!("prometheus exited at start-up: {status}");
            }
            if http_get(address, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return prometheus;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "prometheus not ready within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs an instant PromQL query; the result vector as (labels, value).
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http_get(self.address, &path)
            .unwrap_or_else(|| panic!("prometheus at {} did not answer", self.address));
        let reply: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: HTTP {status}, not JSON ({e}): {body}"));
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
        reply["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: no result vector: {reply}"))
            .iter()
            .map(|sample| {
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{promql}: bad sample {sample}"));
                (sample["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of a query that aggregates to one sample (`sum`,
    /// `count`); `None` when the result is empty.
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        assert!(result.len() <= 1, "{promql}: several samples: {result:?}");
        result.first().map(|(_, value)| *value)
    }

    /// Polls `promql` until its single value is `expected`; panics with the
    /// last value after `timeout`.
    pub fn wait_for_value(&self, promql: &str, expected: f64, timeout: Duration) {
        let started = Instant::now();
        loop {
            let value = self.scalar(promql);
            if value == Some(expected) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{promql}: {value:?} after {timeout:?}, expected {expected}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Longest wait in [`Counters::wait_until`].
const COUNTER_WAIT: Duration = Duration::from_secs(30);

/// The agent's own counters and gauges, read from its /metrics endpoint at
/// this address.
pub struct Counters(pub SocketAddr);

impl Counters {
    /// Every `sonde_*` series and its value.
    pub fn all(&self) -> BTreeMap<String, u64> {
        let (status, body) = http_get(self.0, "/metrics")
            .unwrap_or_else(|| panic!("the agent's /metrics at {} did not answer", self.0));
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|line| line.starts_with("sonde_"))
            .filter_map(|line| {
                let (name, value) = line.split_once(' ')?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One series; panics if the agent does not show it.
    pub fn get(&self, name: &str) -> u64 {
        let all = self.all();
        *all.get(name)
            .unwrap_or_else(|| panic!("no {name} on /metrics: {all:?}"))
    }

    /// Counter `name` (without its `_total`), `None` until the agent
    /// shows it (counters appear at their first publication).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let (status, body) = http_get(self.0, "/metrics")?;
        assert_eq!(status, 200, "{body}");
        let prefix = format!("{name}_total ");
        body.lines()
            .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Polls (from an async test) until the agent shows every counter of
    /// `names` and `done` holds for their values, at most 30 s; returns them.
    pub async fn wait_for_counters(
        &self,
        names: &[&str],
        done: impl Fn(&[u64]) -> bool,
    ) -> Vec<u64> {
        let started = Instant::now();
        loop {
            let values: Option<Vec<u64>> = names.iter().map(|name| self.counter(name)).collect();
            if let Some(values) = &values
                && done(values)
            {
                return values.clone();
            }
            assert!(
                started.elapsed() < COUNTER_WAIT,
                "counters {names:?} stuck at {values:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until `name` reaches at least `at_least`.
    pub fn wait_for(&self, name: &str, at_least: u64) -> u64 {
        self.wait_until(name, &format!(">= {at_least}"), |value| value >= at_least)
    }

    /// Polls until `name` falls to `at_most` or below.
    pub fn wait_down_to(&self, name: &str, at_most: u64) -> u64 {
        self.wait_until(name, &format!("<= {at_most}"), |value| value <= at_most)
    }

    /// Polls until `done` holds for the value of `name` (`expected` says
    /// what that means, for the failure message), at most 30 s.
    pub fn wait_until(&self, name: &str, expected: &str, done: impl Fn(u64) -> bool) -> u64 {
        let started = Instant::now();
        loop {
            let value = self.get(name);
            if done(value) {
                return value;
            }
            assert!(
                started.elapsed() < COUNTER_WAIT,
                "{name} = {value} after {COUNTER_WAIT:?}, expected {expected}: {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `GET path` over HTTP/1.0 (the server closes after its answer), `None`
/// if nothing answers.
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum(x{a="/u/{id}"})"#),
            "sum%28x%7Ba%3D%22%2Fu%2F%7Bid%7D%22%7D%29"
        );
    }
}
