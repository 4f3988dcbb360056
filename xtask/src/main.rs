//! Sonde's task runner (`cargo xtask <task>`): installs the toolchain the
//! kernel programs need, builds them and the agent, runs the agent, the demo,
//! the test suite CI runs and the benchmark. Every command is printed before
//! it runs.

mod bench;
mod build;
mod cmd;
mod fuzz;
mod setup;
mod test;
mod vm;

use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::build::Profile;

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Sonde build, setup, run, demo, test and bench tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the build and test prerequisites and install what is missing
    /// (apt packages, nightly rust-src/clippy, bpf-linker, python requests).
    Setup {
        /// Only check and report; fail if something is missing.
        #[arg(long)]
        no_install: bool,
    },
    /// Build the kernel programs (nightly, bpfel-unknown-none, bpf-linker).
    BuildEbpf,
    /// Build the kernel programs and the `sonde` binary that embeds them.
    Build {
        /// Release profile for the agent (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Debug profile for the agent (the kernel programs stay release).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent as root with the given arguments:
    /// `cargo xtask run -- <agent args>`.
    Run {
        /// Debug profile for the agent.
        #[arg(long)]
        debug: bool,
        /// Arguments for `sonde`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run demo/demo.py against the agent.
    Demo,
    /// Rustfmt, clippy (host and BPF), unit tests, then (as root) the
    /// end-to-end tests against a release build, the kernel matrix under
    /// Debian's kernels in qemu and short fuzz runs. What CI runs.
    Test {
        /// Stop after the unit tests (no root needed).
        #[arg(long)]
        unit_only: bool,
    },
    /// Run the cargo-fuzz targets in fuzz/ (nightly, libFuzzer): all of
    /// them, or the one named, each for `--seconds`.
    Fuzz {
        /// One target (default: every one).
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The short fixed-seed run of every target that `cargo xtask test`
        /// ends with, instead.
        #[arg(long, conflicts_with_all = ["target", "seconds"])]
        smoke: bool,
    },
    /// Measure what the agent costs (nginx and FastAPI with and without it,
    /// against the OpenTelemetry SDK); results in target/bench (root).
    Bench(bench::Args),
    /// Run the kernel matrix test (or a command) under Debian's 6.12, 6.1
    /// or 5.10 kernel in qemu (by default the kernels `test` boots), with
    /// this machine's root shared read-only (root; kernels cached in
    /// /var/cache/sonde/kernels).
    Vm(vm::Args),
    /// The load generator and OTLP sink processes of `bench`.
    #[command(hide = true, subcommand)]
    BenchHelper(bench::Helper),
}

fn profile(debug: bool) -> Profile {
    if debug {
        Profile::Debug
    } else {
        Profile::Release
    }
}

fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain says which step and which command failed; a
            // backtrace of xtask itself (RUST_BACKTRACE is often set) would
            // only bury it.
            eprintln!("\nxtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup { no_install } => {
            let mode = if no_install {
                setup::Mode::Check
            } else {
                setup::Mode::Install
            };
            setup::ensure(setup::Group::ALL, mode, setup::Verbosity::Table)
        }
        Task::BuildEbpf => {
            let object = build::ebpf()?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Build { release: _, debug } => {
            let binary = build::agent(profile(debug))?;
            println!("{}", binary.display());
            Ok(())
        }
        Task::Run { debug, args } => run(profile(debug), &args),
        Task::Demo => demo(),
        Task::Test { unit_only } => test::run(unit_only),
        Task::Fuzz {
            target,
            seconds,
            smoke,
        } => {
            setup::ensure(
                &[setup::Group::EbpfToolchain],
                setup::Mode::Install,
                setup::Verbosity::Summary,
            )?;
            if smoke {
                return fuzz::smoke();
            }
            let targets = match target {
                Some(target) => vec![target],
                None => fuzz::targets()?,
            };
            fuzz::run(&targets, seconds)
        }
        Task::Bench(args) => bench::run(&args),
        Task::Vm(args) => vm::run(&args),
        Task::BenchHelper(helper) => bench::helper(&helper),
    }
}

/// Replaces xtask with the agent, through sudo when not already root
/// (loading eBPF programs needs root).
fn run(profile: Profile, args: &[String]) -> Result<()> {
    let binary = build::agent(profile)?;
    let mut agent = if cmd::is_root() {
        Command::new(&binary)
    } else if cmd::which("sudo").is_some() {
        eprintln!("xtask: the agent needs root; running it through sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    } else {
        bail!(
            "the agent needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) and sudo is not installed"
        );
    };
    agent.args(args);
    eprintln!("$ {}", cmd::display(&agent));
    let err = agent.exec();
    Err(err).with_context(|| format!("could not start `{}`", cmd::display(&agent)))
}

/// Runs the demo script and exits with its status.
fn demo() -> Result<()> {
    setup::ensure(
        setup::Group::ALL,
        setup::Mode::Install,
        setup::Verbosity::Summary,
    )?;
    let binary = build::agent(Profile::Release)?;
    let mut demo = Command::new("python3");
    demo.current_dir(cmd::workspace_root())
        .arg("demo/demo.py")
        .arg("--agent")
        .arg(&binary);
    let status = cmd::status(&mut demo)?;
    // Killed by a signal: exit as a shell would report it.
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Task};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_agent_arguments_through() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "--port", "8080", "--help"])
            .unwrap_or_else(|e| panic!("parse failed: {e}"));
        match cli.task {
            Task::Run { debug, args } => {
                assert!(!debug);
                assert_eq!(args, ["--port", "8080", "--help"]);
            }
            _ => panic!("parsed as another task"),
        }
    }
}
