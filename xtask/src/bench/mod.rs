//! `cargo xtask bench`: what the agent costs, measured side by side on this
//! machine in one run.
//!
//! Two workloads, each under several loads, with and without the agent:
//! nginx serving a small static response (agent off, agent tracing nginx,
//! agent on but tracing nothing), and a FastAPI service under uvicorn
//! (plain, instrumented with the OpenTelemetry SDK, plain + agent). Every
//! variant of a workload runs once per round, rounds repeat `--runs` times
//! and the variant order rotates between rounds, so slow drift on a shared
//! machine spreads over all variants; ratios are taken against the baseline
//! of the same round. Each figure is the median of the rounds with min and
//! max. Results go to target/bench/results.{json,md} and the table is
//! printed; missed targets are listed, not hidden.
//!
//! The load generator and the OTLP sink run as separate processes from a
//! release build of xtask (`xtask bench-helper`), so that a debug build of
//! the orchestrator never limits the load.

mod agent;
mod floor;
mod load;
mod nginx;
mod process;
mod profile;
mod python;
mod report;
mod sink;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use self::{
    agent::{Agent, AgentBinary, AgentReport},
    load::{Generator, Load, LoadResult},
    nginx::Nginx,
    process::free_port,
    python::{Flavor, Uvicorn, Venv},
    sink::{Sink, SinkCounts},
};
use crate::{build, cmd, setup};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// About 3 minutes instead of about 12: 2 runs of 3 s per figure.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (the median, min and max are reported) [default: 3].
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds of measured load per run [default: 10].
    #[arg(long)]
    duration: Option<u64>,
    /// Benchmark this agent binary instead of building one.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Run only one workload.
    #[arg(long, value_enum)]
    only: Option<Workload>,
}

/// The processes `bench` starts from the release build of xtask.
#[derive(clap::Subcommand, Debug)]
pub enum Helper {
    /// Fixed-rate load generator; prints its results as JSON.
    Load(load::RateArgs),
    /// OTLP/HTTP sink; prints `listening ADDR`, and its counts on SIGTERM.
    Sink,
}

/// Runs a helper process.
pub fn helper(helper: &Helper) -> Result<()> {
    match helper {
        Helper::Load(args) => load::fixed_rate(args),
        Helper::Sink => sink::serve(),
    }
}

/// A service under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// nginx, small static response.
    Nginx,
    /// FastAPI under uvicorn.
    Python,
}

impl Workload {
    /// How tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Nginx => "nginx",
            Workload::Python => "FastAPI",
        }
    }
}

/// What runs alongside the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The service alone: the baseline.
    Baseline,
    /// The agent, selecting the service.
    AgentTracing,
    /// The agent, selecting a port nobody listens on: what every other
    /// process on the node pays.
    AgentIdle,
    /// The agent, selecting the service, sampling 10% of traces
    /// (`traceidratio` 0.1): what head sampling saves.
    AgentSampled,
    /// The service instrumented with the OpenTelemetry SDK.
    Sdk,
}

impl Variant {
    /// How tables name it.
    pub fn label(self, workload: Workload) -> &'static str {
        match (workload, self) {
            (Workload::Nginx, Variant::Baseline) => "agent off",
            (Workload::Nginx, Variant::AgentTracing) => "agent tracing nginx",
            (Workload::Python, Variant::Baseline) => "plain",
            (Workload::Python, Variant::AgentTracing) => "plain + agent",
            (_, Variant::AgentIdle) => "agent on, tracing nothing",
            (_, Variant::AgentSampled) => "agent tracing, 10% sampled",
            (_, Variant::Sdk) => "OpenTelemetry SDK",
        }
    }
}

/// The variants and loads of one workload.
struct Plan {
    workload: Workload,
    variants: &'static [Variant],
    loads: &'static [Load],
}

const PLANS: &[Plan] = &[
    Plan {
        workload: Workload::Nginx,
        variants: &[
            Variant::Baseline,
            Variant::AgentTracing,
            Variant::AgentSampled,
            Variant::AgentIdle,
        ],
        loads: &[Load::Saturation, Load::Rate(5_000), Load::Rate(20_000)],
    },
    Plan {
        workload: Workload::Python,
        variants: &[Variant::Baseline, Variant::Sdk, Variant::AgentTracing],
        // A single uvicorn worker answers a few thousand requests a second
        // here; 1,000/s leaves room for the SDK variant.
        loads: &[Load::Saturation, Load::Rate(1_000)],
    },
];

/// What one measured run is.
#[derive(Clone, Copy)]
struct Run {
    workload: Workload,
    variant: Variant,
    load: Load,
    /// 0-based round.
    round: usize,
    /// `kernel.bpf_stats_enabled` on during the run: only in the runs the
    /// kernel figures come from (`report::kernel_figures_load`).
    kernel_stats: bool,
}

/// Load before each measured run, not measured: connections, caches, the
/// agent's first allocations.
const WARMUP: Duration = Duration::from_secs(1);

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub workload: Workload,
    pub variant: Variant,
    pub load: Load,
    /// 0-based round.
    pub round: usize,
    /// The measured window.
    pub result: LoadResult,
    /// Requests answered while the agent (or SDK) was running: warm-up
    /// and measured window.
    pub served: u64,
    /// The agent's cost and losses, when it ran.
    pub agent: Option<AgentReport>,
    /// CPU time of the Python service from listening to exit.
    pub service_cpu_ms: Option<f64>,
    /// What the OTLP sink received.
    pub sink: SinkCounts,
    /// Other agents (`sonde*` processes) on the machine when the run
    /// started: their kernel programs run during it too.
    pub other_agents: usize,
    /// ns per run of an empty program on the socket hooks during the
    /// warm-up (see `floor`): what bpf_stats adds to every ns/run figure.
    pub stats_floor_ns: Option<f64>,
}

/// Everything a run needs.
struct Bench {
    agent: AgentBinary,
    helper: PathBuf,
    generator: Generator,
    venv: Option<Venv>,
    /// target/bench: results, the virtualenv, `work/`.
    out: PathBuf,
    /// Scratch files (nginx's prefix, wrk's script), cleared each time.
    work: PathBuf,
    runs: usize,
    duration: Duration,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmark loads eBPF programs and enables kernel.bpf_stats_enabled: \
             run `sudo -E cargo xtask bench`"
        );
    }
    let plans: Vec<&Plan> = PLANS
        .iter()
        .filter(|plan| args.only.is_none_or(|only| only == plan.workload))
        .collect();
    let bench = Bench::prepare(args, &plans)?;

    let total = plans
        .iter()
        .map(|p| p.variants.len() * p.loads.len())
        .sum::<usize>()
        * bench.runs;
    let per_run = bench.duration + WARMUP + Duration::from_secs(2);
    eprintln!(
        "xtask: {total} runs of {}s (+{}s warm-up), about {} minutes",
        bench.duration.as_secs(),
        WARMUP.as_secs(),
        (per_run * u32::try_from(total)?).as_secs().div_ceil(60)
    );
    let load_before = report::load_average();
    let started = Instant::now();
    catch_interrupt();
    let stats_at = report::kernel_figures_load(
        plans
            .iter()
            .flat_map(|plan| plan.loads.iter().map(|&load| (plan.workload, load))),
    );
    let mut records = Vec::with_capacity(total);
    for plan in &plans {
        bench.run_plan(plan, stats_at, total, &mut records)?;
    }
    let profile = if plans.iter().any(|p| p.workload == Workload::Nginx) {
        bench.profile_agent()?
    } else {
        None
    };

    let settings = report::Settings {
        runs: bench.runs,
        duration_s: bench.duration.as_secs(),
        warmup_s: WARMUP.as_secs(),
        quick: args.quick,
        agent: match &args.agent {
            Some(path) => format!("agent binary {} (--agent)", path.display()),
            None => "agent built from this tree".to_owned(),
        },
    };
    let meta = report::Meta::collect(
        settings,
        bench.venv.as_ref(),
        load_before,
        started.elapsed(),
    );
    bench.write(&report::Report::new(meta, records, profile))
}

impl Bench {
    /// Installs what is missing and builds the agent and the helper.
    fn prepare(args: &Args, plans: &[&Plan]) -> Result<Self> {
        let runs = args.runs.unwrap_or(if args.quick { 2 } else { 3 });
        let duration =
            Duration::from_secs(args.duration.unwrap_or(if args.quick { 3 } else { 10 }));
        if runs == 0 || duration.is_zero() {
            bail!("--runs and --duration must be positive");
        }
        setup::ensure(
            &[setup::Group::Bench],
            setup::Mode::Install,
            setup::Verbosity::Summary,
        )?;
        let agent = AgentBinary::new(match &args.agent {
            Some(path) => path.clone(),
            None => build::agent(build::Profile::Release)?,
        })?;
        let helper = build_helper()?;
        let out = cmd::target_dir().join("bench");
        let work = out.join("work");
        if work.exists() {
            fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
        }
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let venv = if plans.iter().any(|p| p.workload == Workload::Python) {
            Some(Venv::ensure(&out.join("venv"))?)
        } else {
            None
        };
        Ok(Self {
            generator: Generator::new(helper.clone(), &work)?,
            agent,
            helper,
            venv,
            out,
            work,
            runs,
            duration,
        })
    }

    /// Writes results.json and results.md and prints the tables.
    fn write(&self, report: &report::Report) -> Result<()> {
        let markdown = report.markdown();
        let json = self.out.join("results.json");
        let md = self.out.join("results.md");
        fs::write(&json, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", json.display()))?;
        fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
        println!("{markdown}");
        eprintln!("xtask: results in {} and {}", json.display(), md.display());
        let missed = report.missed();
        if missed > 0 {
            eprintln!("xtask: {missed} target(s) missed, see the table");
        }
        Ok(())
    }
}

/// Builds the release xtask that runs the load generator and the sink.
fn build_helper() -> Result<PathBuf> {
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "xtask"]))
        .context("building the benchmark's load generator and sink")?;
    let helper = cmd::target_dir().join("release").join("xtask");
    if !helper.is_file() {
        bail!("the build did not produce {}", helper.display());
    }
    Ok(helper)
}

impl Bench {
    /// Every round of one workload; `stats_at`: where bpf_stats are on.
    fn run_plan(
        &self,
        plan: &Plan,
        stats_at: Option<(Workload, Load)>,
        total: usize,
        records: &mut Vec<RunRecord>,
    ) -> Result<()> {
        let nginx = match plan.workload {
            Workload::Nginx => Some(Nginx::start(&self.work.join("nginx"))?),
            Workload::Python => None,
        };
        for round in 0..self.runs {
            // Rotating the order spreads drift and warm-cache effects.
            let n = plan.variants.len();
            for i in 0..n {
                let variant = plan.variants[(i + round) % n];
                for &load in plan.loads {
                    if INTERRUPTED.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                    let run = Run {
                        workload: plan.workload,
                        variant,
                        load,
                        round,
                        kernel_stats: stats_at == Some((plan.workload, load)),
                    };
                    let record = self.run_one(run, nginx.as_ref())?;
                    eprintln!(
                        "xtask: [{}/{total}] {}",
                        records.len() + 1,
                        progress(&record, self.runs)
                    );
                    records.push(record);
                }
            }
        }
        if let Some(nginx) = nginx {
            nginx.stop()?;
        }
        Ok(())
    }

    /// One measured run: sink, service, agent, warm-up, load, then stop
    /// everything in the order that lets queued spans reach the sink.
    fn run_one(&self, run: Run, nginx: Option<&Nginx>) -> Result<RunRecord> {
        let Run {
            workload,
            variant,
            load,
            round,
            kernel_stats,
        } = run;
        // Off in every other run: the statistics add two clock reads to
        // each program run, which production never pays.
        let _stats = kernel_stats.then(BpfStats::enable).transpose()?;
        let other_agents = other_agents();
        let sink = Sink::start(&self.helper)?;
        let uvicorn = match workload {
            Workload::Python => {
                let venv = self.venv.as_ref().context("no Python virtualenv")?;
                let flavor = if variant == Variant::Sdk {
                    Flavor::Sdk
                } else {
                    Flavor::Plain
                };
                Some(Uvicorn::start(venv, flavor, &sink.endpoint)?)
            }
            Workload::Nginx => None,
        };
        let addr = match (&uvicorn, nginx) {
            (Some(uvicorn), _) => uvicorn.addr,
            (None, Some(nginx)) => nginx.addr,
            (None, None) => bail!("no service to load"),
        };
        let agent = match variant {
            Variant::AgentTracing => {
                Some(Agent::start(&self.agent, addr.port(), &sink.endpoint, &[])?)
            }
            Variant::AgentSampled => Some(Agent::start(
                &self.agent,
                addr.port(),
                &sink.endpoint,
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
                ],
            )?),
            Variant::AgentIdle => Some(Agent::start(
                &self.agent,
                free_port()?,
                &sink.endpoint,
                &[],
            )?),
            Variant::Baseline | Variant::Sdk => None,
        };
        // The floor is measured during the warm-up only, so the empty
        // program adds nothing to the measured window.
        let floor = if kernel_stats && agent.is_some() {
            floor::Floor::attach().ok()
        } else {
            None
        };
        let floor_start = floor.as_ref().map(floor::Floor::count);
        let warmup = self.generator.run(load, addr, WARMUP)?;
        let stats_floor_ns = floor
            .zip(floor_start)
            .and_then(|(floor, start)| floor.count().ns_per_run_since(start));
        let result = self.generator.run(load, addr, self.duration)?;
        let agent = agent.map(Agent::stop).transpose()?;
        let service_cpu_ms = uvicorn
            .map(Uvicorn::stop)
            .transpose()?
            .map(|cpu| cpu.as_secs_f64() * 1e3);
        Ok(RunRecord {
            workload,
            variant,
            load,
            round,
            result,
            served: warmup.requests + result.requests,
            agent,
            service_cpu_ms,
            sink: sink.stop()?,
            other_agents,
            stats_floor_ns,
        })
    }
}

impl Bench {
    /// One more run of the agent tracing nginx at saturation, not measured,
    /// under `perf record`: the agent's profile, as folded stacks
    /// (target/bench/agent.folded) and its top functions in the report.
    fn profile_agent(&self) -> Result<Option<profile::Profile>> {
        if cmd::which("perf").is_none() {
            eprintln!("xtask: perf not found, no agent profile");
            return Ok(None);
        }
        let nginx = Nginx::start(&self.work.join("nginx"))?;
        let sink = Sink::start(&self.helper)?;
        let agent = Agent::start(&self.agent, nginx.addr.port(), &sink.endpoint, &[])?;
        self.generator.run(Load::Saturation, nginx.addr, WARMUP)?;
        let recording = profile::Recording::start(agent.pid(), &self.out, self.duration)?;
        self.generator
            .run(Load::Saturation, nginx.addr, self.duration)?;
        let profile = recording.finish(&self.out)?;
        agent.stop()?;
        sink.stop()?;
        nginx.stop()?;
        Ok(Some(profile))
    }
}

/// One line per run while the benchmark goes.
fn progress(record: &RunRecord, runs: usize) -> String {
    let mut line = format!(
        "{} / {} / {} / run {} of {runs}: {:.0} req/s, p50 {:.0} us, p99 {:.0} us",
        record.workload.label(),
        record.variant.label(record.workload),
        record.load.label(),
        record.round + 1,
        record.result.rate(),
        record.result.p50_us,
        record.result.p99_us,
    );
    if let Some(agent) = &record.agent {
        line.push_str(&format!(
            "; agent {:.0} ms CPU, lost {} events {} spans",
            agent.cpu_ms, agent.events_lost, agent.spans_lost
        ));
    }
    if record.result.errors > 0 {
        line.push_str(&format!("; {} errors", record.result.errors));
    }
    line
}

/// Agents running on the machine (other people's tests, `sonde*`
/// binaries); the benchmark's own agent is not started yet when this runs.
fn other_agents() -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("sonde"))
        })
        .count()
}

/// Set by SIGINT. Ctrl-C reaches every process of the terminal's group:
/// the servers, the agent and the load generator stop on their own, and the
/// benchmark, instead of dying with them, fails its current step and
/// unwinds, which stops what is left and restores the sysctl.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe. A handler (unlike SIG_IGN) is reset to the default
    // in the children the benchmark execs.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        )
    };
}

/// `kernel.bpf_stats_enabled` on for one run, restored when dropped.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        write_sysctl(Path::new(BPF_STATS), "1")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = write_sysctl(Path::new(BPF_STATS), &self.previous) {
            eprintln!("xtask: could not restore {BPF_STATS}: {err:#}");
        }
    }
}

fn write_sysctl(path: &Path, value: &str) -> Result<()> {
    eprintln!("$ sysctl -w kernel.bpf_stats_enabled={value}");
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}
