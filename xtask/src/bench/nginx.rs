//! nginx for the benchmark: one worker serving a small static response on
//! a free port of 127.0.0.1, from a config generated in a scratch
//! directory, in the foreground as a child of the benchmark.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::process::{Process, free_port};

/// One worker: the other core runs the load generator (and the agent).
/// Keep-alive connections are never closed by nginx during a run (its
/// default closes them every 1,000 requests, which wrk would then count
/// as reconnections).
const CONFIG: &str = r#"daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {
        listen {addr};
        location / {
            default_type text/plain;
            return 200 "hello from nginx\n";
        }
    }
}
"#;

/// A running nginx.
pub struct Nginx {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Writes the config into `dir` and starts nginx with it.
    pub fn start(dir: &Path) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("nginx.conf");
        let text = CONFIG
            .replace("{dir}", &dir.display().to_string())
            .replace("{addr}", &addr.to_string());
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new("nginx");
        // -e: the error log before the config is read (the default is under
        // /var/log, which may not exist).
        command
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config);
        let mut process = Process::spawn("nginx", &mut command, false)?;
        process.wait_for_port(addr, Duration::from_secs(10))?;
        Ok(Self { process, addr })
    }

    /// Stops nginx.
    pub fn stop(self) -> Result<()> {
        let exited = self.process.stop()?;
        if !exited.status.success() {
            bail!("nginx exited with {}", exited.status);
        }
        Ok(())
    }
}

/// `nginx/1.22.1`, for the report.
pub fn version() -> Option<String> {
    // nginx prints its version on stderr.
    let output = Command::new("nginx").arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    text.trim()
        .strip_prefix("nginx version: ")
        .map(str::to_owned)
}
