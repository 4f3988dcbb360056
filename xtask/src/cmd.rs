//! Running commands: print each one before it runs (with its directory and
//! the environment changes that matter), fail with the command line in the
//! error, and build the scrubbed environment the nightly BPF build needs.

use std::{
    env,
    ffi::{OsStr, OsString},
    ops::AddAssign,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Variables that cargo, rustup or the user set for the host build and that
/// would make `cargo +nightly` inside agent-ebpf use the stable rustc, the
/// wrong target or host-only flags.
const HOST_BUILD_VARS: &[&str] = &[
    "CARGO",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUST_RECURSION_COUNT",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
];

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is a direct child of the workspace root")
}

/// The shared cargo target directory, absolute so that cargo runs started in
/// agent-ebpf/ resolve it the same way.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `cargo` for host builds: the same cargo that runs xtask.
pub fn cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    // A relative target dir would otherwise resolve against the workspace
    // root instead of where xtask was started.
    if env::var_os("CARGO_TARGET_DIR").is_some_and(|d| !d.is_empty() && Path::new(&d).is_relative())
    {
        cmd.env("CARGO_TARGET_DIR", target_dir());
    }
    cmd
}

/// `cargo +nightly` run inside agent-ebpf/, whose .cargo/config.toml selects
/// the BPF target and build-std, with the host build's environment removed.
pub fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    scrub_host_env(&mut cmd);
    cmd.current_dir(workspace_root().join("agent-ebpf"));
    cmd.env("CARGO_TARGET_DIR", target_dir());
    cmd
}

/// Removes what the parent cargo/rustup put in the environment so that a
/// `+nightly` child uses the nightly toolchain throughout.
pub fn scrub_host_env(cmd: &mut Command) {
    for var in HOST_BUILD_VARS {
        cmd.env_remove(var);
    }
    // `cargo run` prepends the stable toolchain's libraries to
    // LD_LIBRARY_PATH; keep only what the user had.
    if let Some(paths) = env::var_os("LD_LIBRARY_PATH") {
        let toolchains = env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .map(|home| home.join("toolchains"));
        let target = target_dir();
        let kept: Vec<PathBuf> = env::split_paths(&paths)
            .filter(|p| !p.starts_with(&target))
            .filter(|p| toolchains.as_ref().is_none_or(|t| !p.starts_with(t)))
            .collect();
        if kept.is_empty() {
            cmd.env_remove("LD_LIBRARY_PATH");
        } else if let Ok(joined) = env::join_paths(kept) {
            cmd.env("LD_LIBRARY_PATH", joined);
        }
    }
}

/// The command line as a shell would show it: `cd dir && VAR=x cmd args`,
/// listing only removed variables that are actually set here.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        let shown = dir.strip_prefix(workspace_root()).unwrap_or(dir);
        if !shown.as_os_str().is_empty() {
            parts.push(format!("cd {} &&", shown.display()));
        }
    }
    let mut removed = Vec::new();
    let mut set = Vec::new();
    for (key, value) in cmd.get_envs() {
        let key = key.to_string_lossy();
        match value {
            None if env::var_os(&*key).is_some() => removed.push(format!("-u {key}")),
            None => {}
            Some(value) => set.push(format!("{key}={}", quote(value))),
        }
    }
    if !removed.is_empty() {
        parts.push(format!("env {}", removed.join(" ")));
    }
    parts.extend(set);
    // The parent's cargo is a long toolchain path; it is the `cargo` the
    // user typed.
    let program = cmd.get_program();
    if env::var_os("CARGO").is_some_and(|cargo| cargo == program) {
        parts.push("cargo".to_owned());
    } else {
        parts.push(quote(program));
    }
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+./:,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints and runs `cmd` with inherited stdio; an unsuccessful exit is an
/// error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Like [`run`], but runs `cmd` once more after `pause` if it fails: for
/// downloads, where a network hiccup or a lock held for a moment should
/// not fail a CI run.
pub fn run_retrying(cmd: &mut Command, pause: Duration) -> Result<()> {
    let Err(first) = run(cmd) else {
        return Ok(());
    };
    let pause_secs = pause.as_secs();
    eprintln!("xtask: {first}; trying once more in {pause_secs} s");
    thread::sleep(pause);
    run(cmd).with_context(|| format!("failed twice, {pause_secs} s apart"))
}

/// Totals of libtest's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestTally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestTally {
    /// Adds the counts of one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

impl AddAssign for TestTally {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Like [`run`] for `cargo test`: echoes its output and adds its results
/// to `tally`, so the suite can end with one total line.
pub fn run_tests(cmd: &mut Command, tally: &mut TestTally) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading test output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Prints and runs `cmd`, returning its exit status whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs a probe quietly (no echo): `Some(stdout)` if it started and
/// succeeded, `None` otherwise. Used by `setup`'s checks.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`probe`] but returns stdout even when the command exits non-zero
/// (dpkg-query exits 1 when one of several packages is unknown).
pub fn probe_stdout(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds an executable on PATH, and in the sbin directories that a non-root
/// PATH often lacks (bpftool, ip).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(OsString::from);
    env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::{display, workspace_root};

    #[test]
    fn display_shows_directory_environment_and_quoted_arguments() {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(workspace_root().join("agent-ebpf"))
            .env("SONDE_EBPF_OBJECT", "/tmp/a b")
            .args(["build", "--message", "it's"]);
        assert_eq!(
            display(&cmd),
            r"cd agent-ebpf && SONDE_EBPF_OBJECT='/tmp/a b' cargo build --message 'it'\''s'"
        );
    }
}

#[cfg(test)]
mod tally_tests {
    use super::TestTally;

    #[test]
    fn sums_libtest_result_lines() {
        let mut tally = TestTally::default();
        tally.add_line("test result: ok. 115 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.10s");
        tally.add_line(
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        tally.add_line("running 3 tests");
        tally.add_line("test foo ... ok");
        assert_eq!(
            tally,
            TestTally {
                passed: 116,
                failed: 2,
                ignored: 2
            }
        );
    }
}
