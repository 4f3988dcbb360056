//! Selection: which processes the kernel programs capture.
//!
//! Selectors (open ports, executable name or path globs, pids) are resolved
//! here in userspace; the kernel only sees the resulting pid set. Selection
//! is live: exec events are matched as they arrive, listening ports are
//! re-checked every [`RESCAN_INTERVAL`], and exits remove the process.

pub mod procfs;
pub mod resources;

use std::{collections::HashSet, path::Path, time::Duration};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::{procfs::Procfs, resources::ProcessRegistry};
use crate::probes::{TargetSet, decode::KernelEvent};

/// How often listening ports are re-checked: a server started after the
/// agent is picked up within this time of opening its port.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(500);

/// What to instrument, as written in the config file or on the command line.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    /// Processes listening on any of these TCP ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Executables: a glob on the full path if it contains `/`, else on the
    /// file name (`python3*`, `/usr/sbin/nginx`).
    #[serde(default)]
    pub executables: Vec<String>,
    /// Process ids.
    #[serde(default)]
    pub pids: Vec<u32>,
}

impl SelectorConfig {
    /// True if nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.executables.is_empty() && self.pids.is_empty()
    }
}

/// A glob that could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("invalid executable pattern {pattern:?}")]
pub struct SelectorError {
    pattern: String,
    #[source]
    source: globset::Error,
}

/// Compiled selectors.
#[derive(Clone, Debug)]
pub struct Selectors {
    ports: HashSet<u16>,
    path_globs: GlobSet,
    name_globs: GlobSet,
    pids: HashSet<u32>,
}

impl Selectors {
    /// Compiles a [`SelectorConfig`].
    pub fn new(config: &SelectorConfig) -> Result<Self, SelectorError> {
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for pattern in &config.executables {
            let glob = Glob::new(pattern).map_err(|source| SelectorError {
                pattern: pattern.clone(),
                source,
            })?;
            if pattern.contains('/') {
                paths.add(glob)
            } else {
                names.add(glob)
            };
        }
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|source| SelectorError {
                pattern: config.executables.join(","),
                source,
            })
        };
        Ok(Self {
            ports: config.ports.iter().copied().collect(),
            path_globs: build(paths)?,
            name_globs: build(names)?,
            pids: config.pids.iter().copied().collect(),
        })
    }

    /// True if the pid or executable selectors match (ports are checked
    /// separately, over all processes at once).
    pub fn matches_process(&self, pid: u32, exe: Option<&Path>) -> bool {
        if self.pids.contains(&pid) {
            return true;
        }
        let Some(exe) = exe else { return false };
        self.path_globs.is_match(exe)
            || exe
                .file_name()
                .is_some_and(|name| self.name_globs.is_match(name))
    }
}

/// Keeps the kernel's target set in line with the selectors.
pub struct Discovery<T: TargetSet> {
    selectors: Selectors,
    procfs: Procfs,
    targets: T,
    registry: ProcessRegistry,
    selected: HashSet<u32>,
    /// Listening inodes at the last port scan: owners are looked up again
    /// only when this changes, since walking every fd is the costly part.
    last_listening: HashSet<u64>,
}

impl<T: TargetSet> Discovery<T> {
    /// A discovery over `targets`.
    pub fn new(
        selectors: Selectors,
        procfs: Procfs,
        targets: T,
        registry: ProcessRegistry,
    ) -> Self {
        Self {
            selectors,
            procfs,
            targets,
            registry,
            selected: HashSet::new(),
            last_listening: HashSet::new(),
        }
    }

    /// Pids selected so far.
    pub fn selected(&self) -> &HashSet<u32> {
        &self.selected
    }

    /// Checks every running process (at start).
    pub fn scan_all(&mut self) {
        for pid in self.procfs.pids() {
            self.on_exec(pid);
        }
        self.rescan_ports();
    }

    /// A process exec'd: select it if it matches.
    pub fn on_exec(&mut self, pid: u32) {
        if self.selected.contains(&pid) {
            return;
        }
        let exe = self.procfs.exe(pid);
        if self.selectors.matches_process(pid, exe.as_deref()) {
            self.select(pid);
        }
    }

    /// A target exited (the kernel already removed it from its map).
    pub fn on_exit(&mut self, pid: u32) {
        if self.selected.remove(&pid) {
            debug!(pid, "target exited");
        }
        self.registry.forget(pid);
    }

    /// Selects owners of listening sockets on the selected ports.
    pub fn rescan_ports(&mut self) {
        if self.selectors.ports.is_empty() {
            return;
        }
        let pids = self.procfs.pids();
        let listening = self.procfs.listening_inodes(&pids, &self.selectors.ports);
        if listening == self.last_listening {
            return;
        }
        let new_inodes: HashSet<u64> = listening
            .difference(&self.last_listening)
            .copied()
            .collect();
        for pid in self.procfs.owners_of(&pids, &new_inodes) {
            if !self.selected.contains(&pid) {
                self.select(pid);
            }
        }
        self.last_listening = listening;
    }

    fn select(&mut self, pid: u32) {
        match self.targets.add(pid) {
            Ok(()) => {
                let resource = self.registry.resource(pid);
                info!(pid, service = %resource.service_name, "instrumenting process");
                self.selected.insert(pid);
            }
            Err(error) => warn!(pid, %error, "could not add target (target map full?)"),
        }
    }
}

/// The discovery task: exec/exit events and port rescans, after the
/// caller's initial [`Discovery::scan_all`].
pub async fn run_discovery<T: TargetSet>(
    mut discovery: Discovery<T>,
    mut reader_to_discovery: mpsc::Receiver<KernelEvent>,
    discovery_to_conn: mpsc::Sender<KernelEvent>,
) {
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    loop {
        tokio::select! {
            event = reader_to_discovery.recv() => match event {
                Some(KernelEvent::Exec { pid }) => discovery.on_exec(pid),
                Some(KernelEvent::Exit { pid }) => {
                    discovery.on_exit(pid);
                    // The tracker frees the process's connections; if it is
                    // behind, its idle timeout will.
                    let _ = discovery_to_conn.try_send(KernelEvent::Exit { pid });
                }
                Some(_) => {}
                None => break,
            },
            _ = rescan.tick() => discovery.rescan_ports(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aya::maps::MapError;

    use super::*;

    #[derive(Default)]
    struct FakeTargets(HashSet<u32>);

    impl TargetSet for FakeTargets {
        fn add(&mut self, pid: u32) -> Result<(), MapError> {
            self.0.insert(pid);
            Ok(())
        }
        fn remove(&mut self, pid: u32) -> Result<(), MapError> {
            self.0.remove(&pid);
            Ok(())
        }
        fn pids(&self) -> Vec<u32> {
            self.0.iter().copied().collect()
        }
    }

    fn selectors(executables: &[&str], pids: &[u32]) -> Selectors {
        Selectors::new(&SelectorConfig {
            ports: vec![],
            executables: executables.iter().map(|s| s.to_string()).collect(),
            pids: pids.to_vec(),
        })
        .unwrap()
    }

    #[test]
    fn matches_names_paths_and_pids() {
        let s = selectors(&["python3*", "/usr/sbin/nginx", "/opt/*/bin/*"], &[42]);
        let m = |pid, path: &str| s.matches_process(pid, Some(&PathBuf::from(path)));
        assert!(m(1, "/usr/bin/python3.11"));
        assert!(m(1, "/usr/sbin/nginx"));
        assert!(
            !m(1, "/usr/local/sbin/nginx"),
            "path globs match the whole path"
        );
        assert!(m(1, "/opt/app/bin/server"));
        assert!(!m(1, "/usr/bin/node"));
        assert!(m(42, "/usr/bin/node"));
        assert!(s.matches_process(42, None));
        assert!(!s.matches_process(7, None));
    }

    #[test]
    fn rejects_bad_globs() {
        let config = SelectorConfig {
            executables: vec!["[unclosed".into()],
            ..Default::default()
        };
        assert!(Selectors::new(&config).is_err());
    }

    #[test]
    fn selects_this_test_process_by_executable_and_port() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap().to_owned();
        let registry = ProcessRegistry::new(Procfs::default());

        let mut by_name = Discovery::new(
            selectors(&[&name], &[]),
            Procfs::default(),
            FakeTargets::default(),
            registry.clone(),
        );
        by_name.scan_all();
        assert!(by_name.selected().contains(&me));
        assert!(by_name.targets.0.contains(&me));
        by_name.on_exit(me);
        assert!(!by_name.selected().contains(&me));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = SelectorConfig {
            ports: vec![port],
            ..Default::default()
        };
        let mut by_port = Discovery::new(
            Selectors::new(&config).unwrap(),
            Procfs::default(),
            FakeTargets::default(),
            registry,
        );
        by_port.rescan_ports();
        assert!(by_port.selected().contains(&me), "owner of port {port}");
    }
}
