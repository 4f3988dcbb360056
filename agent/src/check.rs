//! `sonde check`: a preflight for this node. Loads and attaches the kernel
//! programs as `sonde run` would (the only reliable test of what a kernel
//! accepts), prints which capture hooks and features work and why not,
//! detaches, and tells scripts by its exit status: 0 everything works, 2
//! the agent runs with features off, 1 it cannot run.

use std::{path::Path, process::ExitCode, sync::Arc};

use crate::{
    config::AgentConfig,
    model::error::ErrorChain,
    probes::{ProbeConfig, Probes, inject},
    sampling::HeadSampler,
    telemetry::Stats,
};

/// Where the kernel reports its lockdown mode (securityfs).
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// The verdict, as an exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything configured works.
    Ready,
    /// The agent runs, some features off.
    Degraded,
    /// The agent cannot run here.
    CannotRun,
}

impl From<Verdict> for ExitCode {
    fn from(verdict: Verdict) -> Self {
        ExitCode::from(match verdict {
            Verdict::Ready => 0,
            Verdict::CannotRun => 1,
            Verdict::Degraded => 2,
        })
    }
}

/// Runs the preflight for `config` and prints the report on stdout.
pub fn run(config: &AgentConfig) -> Verdict {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|e| format!("unknown ({e})"), |r| r.trim().to_owned());
    println!("{:<18} Linux {kernel}", "kernel");
    println!(
        "{:<18} {}",
        "BTF",
        if Path::new(BTF).exists() {
            BTF.to_owned()
        } else {
            format!("MISSING: {BTF} (needs CONFIG_DEBUG_INFO_BTF)")
        }
    );
    println!(
        "{:<18} {}",
        "cgroup v2",
        inject::cgroup2_root().map_or_else(
            || "not mounted (injection needs it)".to_owned(),
            |root| root.display().to_string()
        )
    );
    println!("{:<18} {}", "lockdown", lockdown());

    let (sampler, _warnings) =
        match HeadSampler::new(&config.sampling, |key| std::env::var(key).ok()) {
            Ok(sampler) => sampler,
            Err(error) => {
                println!("cannot run: {}", ErrorChain(&error));
                return Verdict::CannotRun;
            }
        };
    let stats = Arc::new(Stats::default());
    let verdict = match Probes::load(&ProbeConfig::new(config, &sampler), stats) {
        Ok(probes) => {
            print!("{}", probes.features);
            if probes.features.degraded() {
                Verdict::Degraded
            } else {
                Verdict::Ready
            }
        }
        Err(error) => {
            println!("cannot run: {}", ErrorChain(&error));
            Verdict::CannotRun
        }
    };
    println!(
        "{:<18} {}",
        "result",
        match verdict {
            Verdict::Ready => "every configured feature works (exit 0)",
            Verdict::Degraded => "runs with the features above off (exit 2)",
            Verdict::CannotRun => "the agent cannot run on this node (exit 1)",
        }
    );
    verdict
}

/// The kernel's lockdown mode and what it means for the agent. securityfs
/// is mounted if it is not (the agent runs as root).
fn lockdown() -> String {
    if !Path::new(LOCKDOWN).exists() {
        // SAFETY: valid NUL-terminated strings; mount has no other preconditions.
        unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    match std::fs::read_to_string(LOCKDOWN) {
        Ok(text) => describe_lockdown(&text),
        Err(error) => format!("unknown ({LOCKDOWN}: {error}; no lockdown LSM, or not root)"),
    }
}

/// The current mode (the bracketed word of `none [integrity]
/// confidentiality`) and its effect.
fn describe_lockdown(text: &str) -> String {
    let mode = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("unknown");
    let effect = match mode {
        "none" => "no restriction",
        "integrity" => "writing user memory from BPF is forbidden (the agent never does)",
        "confidentiality" => {
            "BPF may not read kernel memory: the kernel refuses the agent's programs"
        }
        _ => "unrecognised mode",
    };
    format!("{mode}: {effect}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bracketed_lockdown_mode() {
        assert_eq!(
            describe_lockdown("none [integrity] confidentiality\n"),
            "integrity: writing user memory from BPF is forbidden (the agent never does)"
        );
        assert!(describe_lockdown("[none] integrity confidentiality").starts_with("none:"));
        assert!(
            describe_lockdown("none integrity [confidentiality]")
                .contains("refuses the agent's programs")
        );
        assert!(describe_lockdown("").starts_with("unknown:"));
    }

    #[test]
    fn verdicts_map_to_exit_statuses() {
        assert_eq!(ExitCode::from(Verdict::Ready), ExitCode::from(0));
        assert_eq!(ExitCode::from(Verdict::CannotRun), ExitCode::from(1));
        assert_eq!(ExitCode::from(Verdict::Degraded), ExitCode::from(2));
    }
}
