//! A CPU profile of the agent under load, so that a regression can be
//! traced to a function: `perf record` (software `cpu-clock` event, call
//! graphs) on the agent's pid, folded into one line per distinct stack
//! (`thread;outermost;...;leaf count`, the input of flame graph tools) in
//! target/bench/agent.folded, and the functions where samples landed most
//! in the report.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::process::Process;

/// Samples per second.
const FREQUENCY: &str = "1999";
/// Functions listed in the report.
const TOP: usize = 15;

/// `perf record` running on the agent.
pub struct Recording {
    perf: Process,
}

/// What the profile shows.
#[derive(Debug, Serialize)]
pub struct Profile {
    /// Samples taken.
    pub samples: u64,
    /// Functions by share of samples where they were the running one
    /// (self time), highest first.
    pub top_self: Vec<(String, f64)>,
}

impl Recording {
    /// Samples `pid` for `duration` into `out`/agent.perf.data.
    pub fn start(pid: u32, out: &Path, duration: Duration) -> Result<Self> {
        let mut command = Command::new("perf");
        command
            .args(["record", "-e", "cpu-clock", "-F", FREQUENCY, "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out.join("agent.perf.data"))
            .arg("--")
            .arg("sleep")
            .arg(duration.as_secs().to_string())
            .stderr(Stdio::null());
        Ok(Self {
            perf: Process::spawn("perf record", &mut command, false)?,
        })
    }

    /// Waits for the recording, writes agent.folded and summarises it.
    pub fn finish(self, out: &Path) -> Result<Profile> {
        let status = self.perf.wait(Duration::from_secs(30))?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let script = Command::new("perf")
            .args(["script", "-F", "comm,ip,sym", "-i"])
            .arg(out.join("agent.perf.data"))
            .stderr(Stdio::null())
            .output()
            .context("running perf script")?;
        let (folded, profile) = fold(&String::from_utf8_lossy(&script.stdout));
        let path = out.join("agent.folded");
        fs::write(&path, folded).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: agent profile in {}", path.display());
        Ok(profile)
    }
}

/// Folds `perf script -F comm,ip,sym` output: samples are blocks separated
/// by blank lines, a `comm` line then one `address symbol` line per frame,
/// innermost first.
fn fold(script: &str) -> (String, Profile) {
    let mut stacks: HashMap<String, u64> = HashMap::new();
    let mut leaves: HashMap<String, u64> = HashMap::new();
    let mut samples = 0;
    for block in script.split("\n\n") {
        let mut lines = block.lines().filter(|line| !line.trim().is_empty());
        let Some(comm) = lines.next() else {
            continue;
        };
        let frames: Vec<&str> = lines
            .map(|line| {
                let line = line.trim();
                line.split_once(' ')
                    .map_or("[unknown]", |(_, sym)| sym.trim())
            })
            .collect();
        let Some(leaf) = frames.first() else {
            continue;
        };
        samples += 1;
        *leaves.entry((*leaf).to_owned()).or_default() += 1;
        let mut stack = comm.trim().replace(';', ":");
        for frame in frames.iter().rev() {
            stack.push(';');
            stack.push_str(&frame.replace(';', ":"));
        }
        *stacks.entry(stack).or_default() += 1;
    }
    let mut folded: Vec<(String, u64)> = stacks.into_iter().collect();
    folded.sort();
    let text: String = folded
        .iter()
        .map(|(stack, count)| format!("{stack} {count}\n"))
        .collect();
    let mut top: Vec<(String, u64)> = leaves.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top_self = top
        .into_iter()
        .take(TOP)
        .map(|(name, count)| (name, count as f64 * 100.0 / samples.max(1) as f64))
        .collect();
    (text, Profile { samples, top_self })
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn folds_samples_outermost_first() {
        let script = "tokio-rt\n\t  1 leaf\n\t  2 caller\n\t  3 main\n\n\
                      tokio-rt\n\t  1 leaf\n\t  2 caller\n\t  3 main\n\n\
                      reader\n\t  4 other\n";
        let (folded, profile) = fold(script);
        assert_eq!(
            folded,
            "reader;other 1\ntokio-rt;main;caller;leaf 2\n".to_owned()
        );
        assert_eq!(profile.samples, 3);
        assert_eq!(profile.top_self[0].0, "leaf");
        assert!((profile.top_self[0].1 - 200.0 / 3.0).abs() < 1e-9);
    }
}
