//! `sonde`: the command line. Everything else lives in the library.

use std::{path::PathBuf, process::ExitCode};

use agent::{check, config::AgentConfig, pipeline};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// eBPF zero-code instrumentation: HTTP traces from unmodified processes,
/// exported over OTLP.
#[derive(Parser)]
#[command(name = "sonde", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and trace the selected processes (needs root).
    Run(RunArgs),
    /// Preflight for this node (needs root): loads the kernel programs and
    /// prints which capture hooks and features (TLS, injection, in-kernel
    /// context) work and why not. Exit status 0: all work; 2: runs with
    /// features off; 1: cannot run.
    Check {
        /// YAML config file (features it turns off are not checked).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print the effective configuration.
    CheckConfig {
        /// YAML config file.
        config: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// YAML config file; command-line selectors add to its selectors.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Instrument processes listening on this TCP port (repeatable, or comma-separated).
    #[arg(long = "port", value_delimiter = ',')]
    ports: Vec<u16>,
    /// Instrument executables matching this glob: on the file name, or on the
    /// full path if it contains '/' (repeatable).
    #[arg(long = "exe")]
    executables: Vec<String>,
    /// Instrument this process id (repeatable, or comma-separated).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Bytes of each send/receive the kernel copies on HTTP/1 connections (max 65536; HTTP/2 connections are copied whole).
    #[arg(long)]
    capture_bytes: Option<u32>,
    /// Do not insert `traceparent` into outgoing HTTP/1 requests.
    #[arg(long)]
    no_inject: bool,
    /// Do not open Node.js processes' inspector to follow their requests
    /// (their event-loop calls are then parented by thread only).
    #[arg(long)]
    no_node_inspector: bool,
    /// Do not trace inside TLS connections (no OpenSSL uprobes).
    #[arg(long)]
    no_tls: bool,
    /// Print spans to the terminal (default when no OTLP endpoint is set).
    #[arg(long)]
    print: bool,
    /// OTLP endpoint, e.g. http://localhost:4317 (default: OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long)]
    otlp_protocol: Option<String>,
    /// Directory of the persistent export queue (export.queue_dir): spans
    /// and metrics wait there for the collector across agent restarts.
    #[arg(long)]
    queue_dir: Option<PathBuf>,
    /// Port of the Prometheus /metrics endpoint; 0 turns it off (default 9464).
    #[arg(long)]
    prometheus_port: Option<u16>,
    /// Address the /metrics endpoint listens on (default 127.0.0.1; 0.0.0.0
    /// or a pod IP to be scraped from elsewhere).
    #[arg(long)]
    prometheus_address: Option<std::net::IpAddr>,
}

impl RunArgs {
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        config.selectors.ports.extend(self.ports);
        config.selectors.executables.extend(self.executables);
        config.selectors.pids.extend(self.pids);
        if let Some(bytes) = self.capture_bytes {
            config.capture.payload_bytes = bytes;
        }
        if self.no_inject {
            config.trace_context.inject = false;
        }
        if self.no_node_inspector {
            config.trace_context.node_inspector = false;
        }
        if self.no_tls {
            config.tls.enabled = false;
        }
        if self.print {
            config.export.print = Some(true);
        }
        if self.otlp_endpoint.is_some() {
            config.export.otlp_endpoint = self.otlp_endpoint;
        }
        if self.otlp_protocol.is_some() {
            config.export.otlp_protocol = self.otlp_protocol;
        }
        if self.queue_dir.is_some() {
            config.export.queue_dir = self.queue_dir;
        }
        if self.prometheus_port.is_some() {
            config.metrics.prometheus_port = self.prometheus_port;
        }
        if let Some(address) = self.prometheus_address {
            config.metrics.prometheus_address = address;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SONDE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(status) => status,
        Err(error) => {
            // The cause chain on one line, without the backtrace anyhow
            // adds when RUST_BACKTRACE is set: these are the user's errors
            // (config, privileges, kernel features), not the agent's bugs.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let config = args.into_config()?;
            if config.selectors.is_empty() {
                anyhow::bail!(
                    "nothing selected: give --port, --exe or --pid (or selectors in --config)"
                );
            }
            // One thread for the whole hot path (reader, tracker, span
            // building, export): handing each batch between worker threads
            // cost more than the work (futex wakeups, cold caches), ~25% of
            // the agent's CPU per request (alternating runs under the same
            // nginx load, README "Latest results"). Discovery,
            // whose work is long and synchronous, has a thread of its own
            // (see `pipeline`).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(pipeline::run(config))?;
        }
        Command::Check { config } => {
            let config = match config {
                Some(path) => AgentConfig::from_file(&path)?,
                None => AgentConfig::default(),
            };
            config.validate()?;
            return Ok(check::run(&config).into());
        }
        Command::CheckConfig { config } => {
            let config = AgentConfig::from_file(&config)?;
            config.validate()?;
            println!("{config:#?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
