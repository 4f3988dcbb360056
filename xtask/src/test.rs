//! `cargo xtask test`: the whole suite CI runs, in order, stopping at the
//! first failure: rustfmt, clippy on the host crates, clippy on the BPF
//! crate, unit tests, then (as root) the offline validation of deploy/, a
//! release build and the end-to-end tests against it, the kernel matrix
//! test against it under Debian's kernels in qemu, then a short run of
//! every fuzz target.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, fuzz, setup, vm};

/// One step of the suite.
struct Step {
    name: &'static str,
    run: fn(&mut State) -> Result<()>,
}

/// What a step hands to later ones.
#[derive(Default)]
struct State {
    /// The release `sonde` binary, once built.
    agent: Option<PathBuf>,
    /// Test counts so far.
    tally: cmd::TestTally,
}

/// Runs the suite; `unit_only` stops before the build and the end-to-end
/// tests (which need root).
pub fn run(unit_only: bool) -> Result<()> {
    if !unit_only && !cmd::is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and need root: \
             run `sudo -E cargo xtask test`, or `cargo xtask test --unit-only` \
             for formatting, lints and unit tests"
        );
    }
    let groups: &[setup::Group] = if unit_only {
        &[setup::Group::EbpfToolchain]
    } else {
        setup::Group::ALL
    };
    setup::ensure(groups, setup::Mode::Install, setup::Verbosity::Summary)?;

    let mut steps = vec![
        Step {
            name: "rustfmt",
            run: fmt,
        },
        Step {
            name: "clippy (host crates)",
            run: clippy_host,
        },
        Step {
            name: "clippy (eBPF crate)",
            run: clippy_ebpf,
        },
        Step {
            name: "unit tests",
            run: unit_tests,
        },
    ];
    if !unit_only {
        steps.push(Step {
            name: "deploy manifests (yamllint, kubernetes-validate)",
            run: deploy_manifests,
        });
        steps.push(Step {
            name: "build (eBPF object + release agent)",
            run: build_agent,
        });
        steps.push(Step {
            name: "end-to-end tests",
            run: end_to_end,
        });
        steps.push(Step {
            name: "kernel matrix (Debian's kernels in qemu)",
            run: kernel_matrix,
        });
        steps.push(Step {
            name: "fuzz targets (short fixed-seed runs)",
            run: fuzz_smoke,
        });
    }

    let total = steps.len();
    let mut state = State::default();
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        eprintln!("\n==> [{n}/{total}] {}", step.name);
        (step.run)(&mut state)
            .with_context(|| format!("test step {n}/{total} ({}) failed", step.name))?;
    }
    eprintln!("\nxtask: all {total} test steps passed");
    // The plain closing line CI reads.
    let cmd::TestTally {
        passed,
        failed,
        ignored,
    } = state.tally;
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if unit_only {
        eprintln!("xtask: end-to-end tests skipped (--unit-only)");
    }
    Ok(())
}

/// `cargo fmt --all` covers every workspace member, agent-ebpf included.
fn fmt(_: &mut State) -> Result<()> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))
}

fn clippy_host(_: &mut State) -> Result<()> {
    // agent-ebpf only builds for the BPF target; it is linted next.
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn clippy_ebpf(_: &mut State) -> Result<()> {
    cmd::run(cmd::nightly_cargo().args(["clippy", "--release", "--", "-D", "warnings"]))
}

fn unit_tests(state: &mut State) -> Result<()> {
    cmd::run_tests(
        cmd::cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "sonde-tests",
            "--exclude",
            "agent-ebpf",
        ]),
        &mut state.tally,
    )
}

/// Kubernetes versions deploy/ is validated against: the oldest the
/// manifests support (`appArmorProfile` and the agent's v1_33 client) and
/// the newest the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.33.0", "1.37.0"];

/// Validates deploy/ offline: yamllint, then every manifest against the
/// Kubernetes schemas, rejecting unknown fields.
fn deploy_manifests(_: &mut State) -> Result<()> {
    let deploy = cmd::workspace_root().join("deploy");
    let bin = setup::deploy_validators_dir().join("bin");
    cmd::run(
        Command::new(bin.join("yamllint"))
            .arg("--strict")
            .arg("--config-file")
            .arg(deploy.join(".yamllint.yaml"))
            .arg(&deploy),
    )?;
    let manifests = yaml_files(&deploy)?;
    if manifests.is_empty() {
        bail!("no manifests under {}", deploy.display());
    }
    for version in KUBERNETES_VERSIONS {
        cmd::run(
            Command::new(bin.join("kubernetes-validate"))
                .args(["--strict", "--quiet", "--kubernetes-version", version])
                .args(&manifests),
        )?;
    }
    Ok(())
}

/// `*.yaml` files under `dir`, hidden ones (tool settings) left out.
fn yaml_files(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files.extend(yaml_files(&path)?);
        } else if name.ends_with(".yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn build_agent(state: &mut State) -> Result<()> {
    state.agent = Some(build::agent(build::Profile::Release)?);
    Ok(())
}

/// Runs the end-to-end tests one at a time (they share the kernel, the
/// tracefs mounts and ports) against the binary built by the previous step.
fn end_to_end(state: &mut State) -> Result<()> {
    let agent = state.agent.as_ref().context("the build step did not run")?;
    let mut test: Command = cmd::cargo();
    test.args(["test", "--package", "sonde-tests", "--", "--test-threads=1"])
        .env("SONDE_AGENT_BIN", agent)
        // Missing root or binary is a failure here, not a skip.
        .env("SONDE_E2E_REQUIRED", "1");
    cmd::run_tests(&mut test, &mut state.tally)
}

/// The kernel matrix test under the suite's kernels in VMs, against the
/// release build the end-to-end tests ran (about 3.5 minutes). Alone:
/// beside the fuzz build, which takes both cores, a guest ran 2.2 times
/// slower and the two together saved 30 s of 400; beside the end-to-end
/// tests, whose waits are timed, it would make them flaky.
fn kernel_matrix(state: &mut State) -> Result<()> {
    let agent = state.agent.as_ref().context("the build step did not run")?;
    vm::suite(agent, &mut state.tally)
}

/// Last, so that a parser crash a short run finds does not hide the
/// end-to-end verdict.
fn fuzz_smoke(_: &mut State) -> Result<()> {
    fuzz::smoke()
}
