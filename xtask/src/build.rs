//! `cargo xtask build-ebpf` and `cargo xtask build`: the kernel programs
//! with nightly + bpf-linker, then the `sonde` binary with that object
//! embedded (handed to agent/build.rs through `SONDE_EBPF_OBJECT`).

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};

use crate::{cmd, setup};

/// A cargo build profile.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// Builds the eBPF object (installing missing toolchain pieces first) and
/// returns its path. Always optimised: unoptimised BPF code fails to link
/// (aggregate returns) and would not pass the verifier's limits anyway.
pub fn ebpf() -> Result<PathBuf> {
    setup::ensure(
        &[setup::Group::EbpfToolchain],
        setup::Mode::Install,
        setup::Verbosity::Summary,
    )?;

    let mut cargo = cmd::nightly_cargo();
    cargo.args(["build", "--release"]);
    cmd::run(&mut cargo).context("building the eBPF programs")?;

    let object = cmd::target_dir()
        .join("bpfel-unknown-none")
        .join("release")
        .join("agent-ebpf");
    let size = object
        .metadata()
        .with_context(|| format!("the build did not produce {}", object.display()))?
        .len();
    eprintln!("xtask: eBPF object {} ({size} bytes)", object.display());
    Ok(object)
}

/// Builds the eBPF object (always release: that is what the verifier gets in
/// production) and the agent with it embedded; returns the `sonde` binary.
pub fn agent(profile: Profile) -> Result<PathBuf> {
    let object = ebpf()?;

    let mut cargo = cmd::cargo();
    cargo
        .args(["build", "--package", "agent", "--bin", "sonde"])
        .env("SONDE_EBPF_OBJECT", &object);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building the agent")?;

    let binary = cmd::target_dir().join(profile.dir()).join("sonde");
    ensure!(
        binary.is_file(),
        "the build did not produce {}",
        binary.display()
    );
    eprintln!("xtask: agent binary {}", binary.display());
    Ok(binary)
}
