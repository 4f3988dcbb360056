//! The Python side of the benchmark: a virtualenv under target/bench with
//! FastAPI, uvicorn and the OpenTelemetry SDK from PyPI (installed when
//! missing), and uvicorn serving `fastapi_app.py`, plain or instrumented
//! with the SDK.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Result, bail};

use super::process::{Exited, Process, free_port};
use crate::cmd;

/// What the service needs from PyPI: the web stack and the usual
/// OpenTelemetry instrumentation with its OTLP/HTTP exporter.
const PACKAGES: &[&str] = &[
    "fastapi",
    "uvicorn",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-exporter-otlp-proto-http",
];
/// The distributions whose versions the report records.
const REPORTED: &[&str] = &[
    "fastapi",
    "uvicorn",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-fastapi",
];
/// Imports that prove [`PACKAGES`] are installed.
const IMPORT_CHECK: &str = "import fastapi, uvicorn, opentelemetry.sdk, \
    opentelemetry.instrumentation.fastapi, opentelemetry.exporter.otlp.proto.http";

/// The benchmark's virtualenv.
pub struct Venv {
    python: PathBuf,
}

impl Venv {
    /// Creates the virtualenv in `dir` and installs [`PACKAGES`] unless
    /// they are already there.
    pub fn ensure(dir: &Path) -> Result<Self> {
        let python = dir.join("bin").join("python");
        if !python.exists() {
            eprintln!("xtask: creating a Python virtualenv for the benchmark");
            cmd::run(Command::new("python3").args(["-m", "venv"]).arg(dir))?;
        }
        let venv = Self { python };
        if cmd::probe(Command::new(&venv.python).args(["-c", IMPORT_CHECK])).is_none() {
            eprintln!("xtask: installing {} from PyPI", PACKAGES.join(", "));
            cmd::run(
                Command::new(&venv.python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .args(PACKAGES),
            )?;
        }
        Ok(venv)
    }

    /// `Python 3.11.7, fastapi 0.1, ...`, for the report.
    pub fn versions(&self) -> String {
        let script = format!(
            "import sys, importlib.metadata as m\n\
             print(', '.join(['Python ' + sys.version.split()[0]] + \
             [d + ' ' + m.version(d) for d in {REPORTED:?}]))"
        );
        cmd::probe(Command::new(&self.python).args(["-c", &script]))
            .map(|out| out.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

/// How the service is instrumented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Not at all (alone, or traced by the agent).
    Plain,
    /// OpenTelemetry SDK + FastAPIInstrumentor, exporting to the sink.
    Sdk,
}

/// uvicorn serving the benchmark's FastAPI app, one worker process.
pub struct Uvicorn {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
    /// CPU time it had used when it started listening (imports).
    cpu_at_start: Duration,
}

impl Uvicorn {
    /// Starts one uvicorn worker; the SDK flavour exports to `endpoint`.
    pub fn start(venv: &Venv, flavor: Flavor, endpoint: &str) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let app_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench");
        let mut command = Command::new(&venv.python);
        command
            .args(["-m", "uvicorn", "fastapi_app:app", "--app-dir"])
            .arg(app_dir)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .args(["--no-access-log", "--log-level", "warning"])
            .env("OTEL_SERVICE_NAME", "bench-fastapi")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        if flavor == Flavor::Sdk {
            command.env("BENCH_OTEL_SDK", "1");
        }
        let mut process = Process::spawn("uvicorn", &mut command, false)?;
        process.wait_for_port(addr, Duration::from_secs(30))?;
        let cpu_at_start = process.cpu()?;
        Ok(Self {
            process,
            addr,
            cpu_at_start,
        })
    }

    /// Stops the service (the SDK flushes its queue on exit) and returns
    /// the CPU time it used since it started listening.
    pub fn stop(self) -> Result<Duration> {
        let Exited { status, cpu } = self.process.stop()?;
        // After a graceful shutdown uvicorn re-raises the signal it got.
        if !status.success() && status.signal() != Some(libc::SIGTERM) {
            bail!("uvicorn exited with {status}");
        }
        Ok(cpu.saturating_sub(self.cpu_at_start))
    }
}
