//! Selection: which processes the kernel programs capture.
//!
//! Selectors (open ports, executable name or path globs, pids, and on
//! Kubernetes the pod's namespace, labels, annotations, owners and
//! container) are resolved here in userspace; the kernel only sees the
//! resulting pid set. Selection is live: exec events are matched as they
//! arrive, listening ports are re-checked when the kernel reports a
//! `listen()` on a selected port (and every [`PORT_RESCAN_EVERY_TICKS`]
//! ticks as a safety net: walking the node's sockets and file descriptors
//! is the costly part of discovery, so it is not done on a short timer),
//! exits remove the process, and every change of the node's pods
//! re-evaluates the processes in containers, adding and removing targets.
//!
//! With TLS capture on, each selected process's memory maps are read for
//! OpenSSL's libssl, and every library file found gets the OpenSSL uprobes
//! (once per file: see [`crate::probes::openssl`]); so are those of the
//! targets the kernel added on its own (children forked by a target),
//! within four [`RESCAN_INTERVAL`]s. A process that maps none yet is looked at
//! again every [`RESCAN_INTERVAL`] until it does, since libraries are often
//! loaded late (Python imports `ssl` on first use, others `dlopen` it);
//! only such processes' maps are re-read.
//!
//! The rule: a process is selected if it matches a top-level selector
//! (`ports`, `executables`, `pids`: each on its own) or every condition of
//! one `include` rule, unless it matches an `exclude` rule, runs in
//! `kube-system` (unless `instrument_kube_system`), or is the agent itself
//! (its process or its pod). Exclusion always wins.

pub mod cgroup;
pub mod k8s;
pub mod procfs;
pub mod resources;
pub mod rules;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use self::{
    cgroup::ContainerRef,
    k8s::{PodMatch, Pods},
    procfs::Procfs,
    resources::ProcessRegistry,
    rules::{Candidate, ExeGlobs, Rule, RuleConfig},
};
use crate::probes::{EventBatch, FileRole, TargetSet, TlsAttach, decode::KernelEvent};
use crate::sampling::HeadSampler;
use crate::telemetry::{Gauge, Stats};

/// How often discovery's periodic chores run.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Listening ports are looked at again this many ticks after a listen
/// event on a selected port (the socket may not be listed yet when the
/// event is read) ...
const PORT_RESCANS_AFTER_LISTEN: u32 = 2;
/// ... and every this many ticks (30 s) in case a listen event was lost
/// (a full control ring, counted).
const PORT_RESCAN_EVERY_TICKS: u32 = 60;

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
    /// Rules that select (see [`rules`]): any rule whose conditions all
    /// hold selects the process.
    #[serde(default)]
    pub include: Vec<RuleConfig>,
    /// Rules that keep processes out, whatever selected them.
    #[serde(default)]
    pub exclude: Vec<RuleConfig>,
    /// Allow selecting pods in `kube-system` (excluded by default).
    #[serde(default)]
    pub instrument_kube_system: bool,
}

impl SelectorConfig {
    /// True if nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
            && self.executables.is_empty()
            && self.pids.is_empty()
            && self.include.is_empty()
    }

    /// True if some rule has pod conditions (they need Kubernetes).
    pub fn uses_pods(&self) -> bool {
        self.include
            .iter()
            .chain(&self.exclude)
            .any(RuleConfig::uses_pods)
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
    executables: ExeGlobs,
    pids: HashSet<u32>,
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    /// Every port any selector or rule looks at (what port scans check).
    all_ports: HashSet<u16>,
    agent_pid: Option<u32>,
    agent_pod: Option<String>,
}

impl Selectors {
    /// Compiles a [`SelectorConfig`].
    pub fn new(config: &SelectorConfig) -> Result<Self, SelectorError> {
        let compile =
            |rules: &[RuleConfig]| rules.iter().map(Rule::new).collect::<Result<Vec<_>, _>>();
        let include = compile(&config.include)?;
        let mut exclude = compile(&config.exclude)?;
        if !config.instrument_kube_system {
            exclude.push(Rule::namespace("kube-system"));
        }
        let all_ports = config
            .ports
            .iter()
            .chain(
                include
                    .iter()
                    .chain(&exclude)
                    .flat_map(|r| &r.config().ports),
            )
            .copied()
            .collect();
        Ok(Self {
            ports: config.ports.iter().copied().collect(),
            executables: ExeGlobs::new(&config.executables)?,
            pids: config.pids.iter().copied().collect(),
            include,
            exclude,
            all_ports,
            agent_pid: None,
            agent_pod: None,
        })
    }

    /// Never selects the agent's own process, nor anything in its pod
    /// (tracing its own exports would feed on itself).
    pub fn excluding_agent(mut self, pid: u32, pod_uid: Option<String>) -> Self {
        self.agent_pid = Some(pid);
        self.agent_pod = pod_uid;
        self
    }

    /// Annotation keys some rule looks at: the only ones worth keeping.
    pub fn annotation_keys(&self) -> HashSet<String> {
        self.include
            .iter()
            .chain(&self.exclude)
            .filter_map(|rule| rule.config().pod_annotations.as_ref())
            .flat_map(|selector| selector.keys().map(str::to_owned))
            .collect()
    }

    /// True if the selectors and rules select `candidate` (see the module
    /// doc for the rule).
    pub fn selects(&self, candidate: &Candidate<'_>) -> bool {
        let is_agent = self.agent_pid == Some(candidate.pid)
            || self
                .agent_pod
                .as_ref()
                .is_some_and(|uid| candidate.pod.is_some_and(|found| found.pod.uid == *uid));
        if is_agent || self.exclude.iter().any(|rule| rule.matches(candidate)) {
            return false;
        }
        let by_selector = self.pids.contains(&candidate.pid)
            || candidate
                .ports
                .is_some_and(|ports| ports.iter().any(|p| self.ports.contains(p)))
            || candidate
                .exe
                .is_some_and(|exe| self.executables.matches(exe));
        by_selector || self.include.iter().any(|rule| rule.matches(candidate))
    }
}

/// How many rescan ticks between two prunings of the process registry.
const PRUNE_EVERY_TICKS: u32 = 20;
/// How many rescan ticks between two looks at the kernel's target set for
/// children of targets that may map a libssl of their own.
const TLS_TARGETS_EVERY_TICKS: u32 = 4;
/// How far up the process tree an inherited target looks for the target
/// it descends from.
const MAX_ANCESTRY: usize = 64;

/// Keeps the kernel's target set in line with the selectors.
pub struct Discovery<T: TargetSet> {
    selectors: Selectors,
    procfs: Procfs,
    targets: T,
    registry: ProcessRegistry,
    pods: Option<Pods>,
    selected: HashSet<u32>,
    /// Listening inodes at the last port scan: owners are looked up again
    /// only when this changes, since walking every fd is the costly part.
    last_listening: HashSet<u64>,
    /// Selector ports each live process was seen listening on. Selection by
    /// port is sticky: a server that closes its port stays traced.
    listening: HashMap<u32, HashSet<u16>>,
    /// Puts the OpenSSL probes on libraries, when TLS capture is on.
    tls: Option<Box<dyn TlsAttach>>,
    /// Targets whose maps were read at least once (threads too, to look
    /// at each id once): a subset of the kernel's target set.
    tls_seen: HashSet<u32>,
    /// Targets that mapped no libssl when last looked at.
    tls_waiting: HashSet<u32>,
    /// Processes selected since the last [`Discovery::recheck_new_targets`].
    new_targets: Vec<u32>,
    /// Gives selected processes their service's sampling rule, if any.
    sampler: Option<HeadSampler>,
    /// Port rescans still due after a listen event.
    port_rescans_due: u32,
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
            pods: None,
            selected: HashSet::new(),
            last_listening: HashSet::new(),
            listening: HashMap::new(),
            tls: None,
            tls_seen: HashSet::new(),
            tls_waiting: HashSet::new(),
            new_targets: Vec::new(),
            sampler: None,
            port_rescans_due: 0,
        }
    }

    /// Matches processes against their pods in `pods` (Kubernetes).
    pub fn with_pods(mut self, pods: Pods) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Hands each selected process's head sampling threshold to the kernel
    /// when a `sampling.rules` entry matches its service.
    pub fn with_sampler(mut self, sampler: HeadSampler) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Attaches the OpenSSL probes to the libssl of selected processes.
    pub fn with_tls(mut self, tls: Box<dyn TlsAttach>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Pids selected so far.
    pub fn selected(&self) -> &HashSet<u32> {
        &self.selected
    }

    /// Checks every running process (at start).
    pub fn scan_all(&mut self) {
        self.rescan_ports();
        for pid in self.procfs.pids() {
            self.consider(pid);
        }
    }

    /// A process exec'd: select it if it matches.
    pub fn on_exec(&mut self, pid: u32) {
        // A process that execs another program (a shell's `exec`, a
        // wrapper) is described again, as that program: a selected one at
        // once, while it surely runs (a short-lived one may be gone by its
        // first span), others on their next span.
        self.registry.forget(pid);
        if self.selected.contains(&pid) {
            self.registry.resource(pid);
        } else {
            self.consider(pid);
        }
    }

    /// Selects `pid` if it matches and is not selected yet.
    fn consider(&mut self, pid: u32) {
        if !self.selected.contains(&pid) && self.wants(pid, None) {
            self.select(pid);
        }
    }

    /// A target exited (the kernel already removed it from its map).
    pub fn on_exit(&mut self, pid: u32) {
        if self.selected.remove(&pid) {
            debug!(pid, "target exited");
        }
        if let Some(tls) = &mut self.tls {
            tls.forget(pid);
        }
        self.listening.remove(&pid);
        self.tls_seen.remove(&pid);
        self.tls_waiting.remove(&pid);
        self.registry.forget(pid);
    }

    /// A process started listening on `port`: if it is a selected port,
    /// its owners are looked for now and at the next ticks.
    pub fn on_listen(&mut self, port: u16) {
        if self.selectors.all_ports.contains(&port) {
            self.port_rescans_due = PORT_RESCANS_AFTER_LISTEN;
            self.rescan_ports();
        }
    }

    /// The port rescan of a tick: one still due after a listen event, or
    /// the periodic safety net (`periodic`).
    pub fn tick_ports(&mut self, periodic: bool) {
        if self.port_rescans_due > 0 || periodic {
            self.port_rescans_due = self.port_rescans_due.saturating_sub(1);
            self.rescan_ports();
        }
    }

    /// Selects owners of listening sockets on the selected ports.
    pub fn rescan_ports(&mut self) {
        if self.selectors.all_ports.is_empty() {
            return;
        }
        let pids = self.procfs.pids();
        let listening = self
            .procfs
            .listening_inodes(&pids, &self.selectors.all_ports);
        let inodes: HashSet<u64> = listening.keys().copied().collect();
        if inodes == self.last_listening {
            return;
        }
        let live: HashSet<u32> = pids.iter().copied().collect();
        self.listening.retain(|pid, _| live.contains(pid));
        let new_inodes: HashSet<u64> = inodes.difference(&self.last_listening).copied().collect();
        for (pid, held) in self.procfs.owners_of(&pids, &new_inodes) {
            self.listening
                .entry(pid)
                .or_default()
                .extend(held.iter().filter_map(|inode| listening.get(inode)));
            if !self.selected.contains(&pid) && self.wants(pid, None) {
                self.select(pid);
            }
        }
        self.last_listening = inodes;
    }

    /// Looks again for libssl in targets that had none and, with
    /// `kernel_targets`, in targets the kernel added on its own (children
    /// forked by a target, such as a pre-fork server's workers, which may
    /// import `ssl` after the fork). Reading the kernel's set costs a
    /// syscall per entry, so the caller does that less often.
    pub fn rescan_tls(&mut self, kernel_targets: bool) {
        if self.tls.is_none() {
            return;
        }
        if kernel_targets {
            let in_kernel: HashSet<u32> = self.targets.pids().into_iter().collect();
            self.tls_seen.retain(|pid| in_kernel.contains(pid));
            self.tls_waiting.retain(|pid| in_kernel.contains(pid));
            for id in in_kernel {
                // Thread ids are targets too; their process is looked at
                // under its own id.
                if self.tls_seen.insert(id) && self.procfs.tgid(id) == Some(id) {
                    self.find_tls(id);
                }
            }
        }
        let waiting: Vec<u32> = self.tls_waiting.iter().copied().collect();
        for pid in waiting {
            self.find_tls(pid);
        }
    }

    /// Hands the libssl files `pid` maps, and its executable, to the
    /// OpenSSL probes; keeps the process waiting for a libssl if it maps
    /// none and its executable has no OpenSSL of its own.
    fn find_tls(&mut self, pid: u32) {
        let Some(tls) = &mut self.tls else {
            return;
        };
        self.tls_seen.insert(pid);
        let Some(files) = self.procfs.ssl_libraries(pid) else {
            self.tls_waiting.remove(&pid);
            return;
        };
        let mut found = false;
        for file in &files {
            // Every file is handed over (no short cut): each attaches once.
            let carries = tls.attach(pid, file);
            found |= carries || file.role == FileRole::Libssl;
        }
        if found {
            self.tls_waiting.remove(&pid);
        } else {
            self.tls_waiting.insert(pid);
        }
    }

    /// The node's pods changed: re-evaluates every process that runs in a
    /// container, selecting those that now match and removing those that
    /// no longer do. A child the kernel made a target because its parent
    /// was one (a pre-fork server's worker) follows its ancestors: it goes
    /// once none of them is selected any more. Processes outside containers
    /// keep their state.
    pub fn on_pods_changed(&mut self) {
        let in_kernel: HashSet<u32> = self.targets.pids().into_iter().collect();
        let mut inherited = Vec::new();
        for pid in self.procfs.pids() {
            let Some(container) = self.container_of(pid) else {
                continue;
            };
            let wanted = self.wants(pid, Some(&container));
            if wanted && !self.selected.contains(&pid) {
                self.select(pid);
            } else if !wanted && self.selected.contains(&pid) {
                self.deselect(pid);
            } else if !wanted && in_kernel.contains(&pid) {
                inherited.push(pid);
            }
        }
        for pid in inherited {
            if !self.has_selected_ancestor(pid) {
                self.deselect(pid);
            }
        }
    }

    fn has_selected_ancestor(&self, pid: u32) -> bool {
        // Bounded: a ppid loop cannot happen, a corrupt read must not hang.
        let mut current = pid;
        for _ in 0..MAX_ANCESTRY {
            match self.procfs.ppid(current) {
                Some(parent) if parent > 1 => {
                    if self.selected.contains(&parent) {
                        return true;
                    }
                    current = parent;
                }
                _ => return false,
            }
        }
        false
    }

    /// Forgets processes that are gone. Exit events only come for targets
    /// and can be lost (a full control ring), and late spans may describe a
    /// process again after its exit, so the selection, the registry and
    /// the kernel's target set are pruned against /proc from time to time.
    /// (The kernel removes exiting targets by itself; what it cannot see is
    /// a pid added after its process exited.)
    pub fn prune(&mut self) {
        let live: HashSet<u32> = self.procfs.pids().into_iter().collect();
        self.selected.retain(|pid| live.contains(pid));
        self.listening.retain(|pid, _| live.contains(pid));
        self.registry.retain(|pid| live.contains(&pid));
        // Thread ids are not listed in /proc, but /proc/<tid> answers.
        for id in self.targets.pids() {
            if !live.contains(&id) && !self.procfs.is_running(id) {
                debug!(id, "dropping the kernel target of a process gone unseen");
                if let Err(error) = self.targets.remove(id) {
                    warn!(id, %error, "could not remove target");
                }
            }
        }
    }

    /// Drops the targets selected since the last call whose process has
    /// exited meanwhile. The kernel's exit hook removes targets, but a
    /// process added while on its way out (past the exit hook, not yet a
    /// zombie) passes the check in `select`, and no exit event will come
    /// for it. Called at every rescan: by then it is a zombie or gone.
    pub fn recheck_new_targets(&mut self) {
        for pid in std::mem::take(&mut self.new_targets) {
            if self.selected.contains(&pid) && !self.procfs.is_running(pid) {
                debug!(pid, "exited as it was being instrumented");
                if let Err(error) = self.targets.remove(pid) {
                    warn!(pid, %error, "could not remove target");
                }
                self.on_exit(pid);
            }
        }
    }

    /// Sets the selection gauges; `kernel` also counts the kernel's target
    /// set, which costs a syscall per entry, so not at every tick.
    pub fn publish_gauges(&self, stats: &Stats, kernel: bool) {
        stats.set_gauge(Gauge::ProcessesSelected, self.selected.len() as u64);
        stats.set_gauge(Gauge::ProcessTableEntries, self.registry.len() as u64);
        if kernel {
            stats.set_gauge(Gauge::KernelTargets, self.targets.pids().len() as u64);
        }
    }

    /// The change signal of the pod store, when there is one.
    fn pod_changes(&self) -> Option<watch::Receiver<()>> {
        self.pods.as_ref().map(Pods::subscribe)
    }

    fn container_of(&self, pid: u32) -> Option<ContainerRef> {
        cgroup::container_of(&self.procfs.cgroup(pid)?)
    }

    /// Evaluates the selectors for `pid` (`container`: its cgroup, when the
    /// caller has read it already).
    fn wants(&self, pid: u32, container: Option<&ContainerRef>) -> bool {
        let pod: Option<PodMatch> = self.pods.as_ref().and_then(|pods| match container {
            Some(container) => pods.find(container),
            None => pods.find(&self.container_of(pid)?),
        });
        let exe = self.procfs.exe(pid);
        self.selectors.selects(&Candidate {
            pid,
            exe: exe.as_deref(),
            ports: self.listening.get(&pid),
            pod: pod.as_ref(),
        })
    }

    fn select(&mut self, pid: u32) {
        match self.targets.add(pid) {
            // A process that exited before it became a target gets no exit
            // event, and the kernel would keep its pid: checked after the
            // add, so an exit after it is the kernel's to see.
            Ok(()) if !self.procfs.is_running(pid) => {
                debug!(pid, "exited before it could be instrumented");
                if let Err(error) = self.targets.remove(pid) {
                    warn!(pid, %error, "could not remove target");
                }
            }
            Ok(()) => {
                let resource = self.registry.resource(pid);
                info!(pid, service = %resource.service_name, "instrumenting process");
                let threshold = self
                    .sampler
                    .as_ref()
                    .and_then(|sampler| sampler.service_threshold(&resource.service_name));
                if let Some(threshold) = threshold
                    && let Err(error) = self.targets.sample_at(pid, threshold)
                {
                    warn!(pid, %error, "could not set the service's sampling ratio (global ratio used)");
                }
                self.selected.insert(pid);
                self.find_tls(pid);
                self.new_targets.push(pid);
            }
            Err(error) => warn!(pid, %error, "could not add target (target map full?)"),
        }
    }

    /// Stops capturing a process and its threads (the kernel adds threads
    /// a target creates by thread id; capture itself is keyed on the
    /// process id, so the thread entries only go for tidiness).
    fn deselect(&mut self, pid: u32) {
        let service = self.registry.resource(pid).service_name.clone();
        for id in std::iter::once(pid).chain(self.procfs.tasks(pid)) {
            if let Err(error) = self.targets.remove(id) {
                warn!(pid, id, %error, "could not remove target");
            }
        }
        self.selected.remove(&pid);
        self.tls_seen.remove(&pid);
        self.tls_waiting.remove(&pid);
        if let Some(tls) = &mut self.tls {
            tls.forget(pid);
        }
        // No exit event will come for a process that is no longer a target.
        self.registry.forget(pid);
        info!(pid, %service, "no longer instrumenting process");
    }
}

/// Resolves when the pod store changed; never, without one (or once its
/// writer is gone).
async fn pods_changed(changes: &mut Option<watch::Receiver<()>>) {
    if let Some(receiver) = changes
        && receiver.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// The discovery task: exec/exit events, port rescans and pod changes,
/// after the caller's initial [`Discovery::scan_all`]; publishes the
/// selection gauges in `stats`.
pub async fn run_discovery<T: TargetSet>(
    mut discovery: Discovery<T>,
    mut reader_to_discovery: mpsc::Receiver<KernelEvent>,
    discovery_to_conn: mpsc::Sender<EventBatch>,
    stats: Arc<Stats>,
) {
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    let mut pod_changes = discovery.pod_changes();
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            event = reader_to_discovery.recv() => match event {
                Some(KernelEvent::Exec { pid }) => discovery.on_exec(pid),
                Some(KernelEvent::Exit { pid }) => {
                    discovery.on_exit(pid);
                    // The tracker frees the process's connections; if it is
                    // behind, its idle timeout will.
                    let _ = discovery_to_conn.try_send(vec![KernelEvent::Exit { pid }]);
                }
                Some(KernelEvent::Listen { port, .. }) => discovery.on_listen(port),
                Some(_) => {}
                None => break,
            },
            _ = rescan.tick() => {
                discovery.recheck_new_targets();
                // Not at the first tick: `scan_all` just did it.
                discovery.tick_ports(ticks > 0 && ticks.is_multiple_of(PORT_RESCAN_EVERY_TICKS));
                discovery.rescan_tls(ticks.is_multiple_of(TLS_TARGETS_EVERY_TICKS));
                // From the first tick on, so the kernel gauge has a value
                // from the start.
                let prune = ticks.is_multiple_of(PRUNE_EVERY_TICKS);
                ticks = ticks.wrapping_add(1);
                if prune {
                    discovery.prune();
                }
                discovery.publish_gauges(&stats, prune);
            }
            () = pods_changed(&mut pod_changes) => discovery.on_pods_changed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::{Path, PathBuf},
        sync::{Arc, Mutex},
    };

    use aya::maps::MapError;

    use super::*;
    use crate::probes::{SslLibrary, openssl::FileId};

    #[derive(Default)]
    struct FakeTargets(HashSet<u32>, HashMap<u32, u64>);

    impl TargetSet for FakeTargets {
        fn add(&mut self, pid: u32) -> Result<(), MapError> {
            self.0.insert(pid);
            Ok(())
        }
        fn sample_at(&mut self, pid: u32, threshold: u64) -> Result<(), MapError> {
            self.1.insert(pid, threshold);
            Ok(())
        }
        fn remove(&mut self, pid: u32) -> Result<(), MapError> {
            self.0.remove(&pid);
            self.1.remove(&pid);
            Ok(())
        }
        fn pids(&self) -> Vec<u32> {
            self.0.iter().copied().collect()
        }
    }

    fn selectors(executables: &[&str], pids: &[u32]) -> Selectors {
        Selectors::new(&SelectorConfig {
            executables: executables.iter().map(|s| s.to_string()).collect(),
            pids: pids.to_vec(),
            ..Default::default()
        })
        .unwrap()
    }

    fn process(pid: u32, exe: Option<&Path>) -> Candidate<'_> {
        Candidate {
            pid,
            exe,
            ports: None,
            pod: None,
        }
    }

    #[test]
    fn matches_names_paths_and_pids() {
        let s = selectors(&["python3*", "/usr/sbin/nginx", "/opt/*/bin/*"], &[42]);
        let m = |pid, path: &str| s.selects(&process(pid, Some(Path::new(path))));
        assert!(m(1, "/usr/bin/python3.11"));
        assert!(m(1, "/usr/sbin/nginx"));
        assert!(
            !m(1, "/usr/local/sbin/nginx"),
            "path globs match the whole path"
        );
        assert!(m(1, "/opt/app/bin/server"));
        assert!(!m(1, "/usr/bin/node"));
        assert!(m(42, "/usr/bin/node"));
        assert!(s.selects(&process(42, None)));
        assert!(!s.selects(&process(7, None)));
    }

    fn pod_meta(
        uid: &str,
        namespace: &str,
        app: &str,
        containers: &[(&str, &str)],
    ) -> k8s::PodMeta {
        k8s::PodMeta {
            uid: uid.into(),
            namespace: namespace.into(),
            name: format!("{app}-0"),
            resource_version: app.into(),
            node_name: "node-a".into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            annotations: Default::default(),
            owners: vec![],
            containers: containers
                .iter()
                .map(|(id, name)| (id.to_string(), name.to_string()))
                .collect(),
        }
    }

    #[test]
    fn exclusion_wins_and_the_agent_is_never_selected() {
        let config: SelectorConfig = serde_yaml_ng::from_str(
            "executables: [python3]\n\
             include: [{pod_labels: {matchLabels: {app: web}}}]\n\
             exclude: [{namespaces: [batch]}, {pids: [13]}]\n",
        )
        .unwrap();
        let s = Selectors::new(&config)
            .unwrap()
            .excluding_agent(99, Some("agent-pod".into()));
        let pod = |uid: &str, namespace: &str, app: &str| PodMatch {
            pod: std::sync::Arc::new(pod_meta(uid, namespace, app, &[])),
            container: None,
        };
        let python = Path::new("/usr/bin/python3");
        fn in_pod(pid: u32, found: &PodMatch) -> Candidate<'_> {
            Candidate {
                pid,
                exe: Some(Path::new("/usr/bin/python3")),
                ports: None,
                pod: Some(found),
            }
        }
        assert!(s.selects(&in_pod(1, &pod("a", "shop", "web"))));
        assert!(
            s.selects(&in_pod(1, &pod("a", "shop", "db"))),
            "by executable"
        );
        assert!(
            !s.selects(&in_pod(1, &pod("a", "batch", "web"))),
            "excluded namespace"
        );
        assert!(
            !s.selects(&in_pod(1, &pod("a", "kube-system", "web"))),
            "kube-system by default"
        );
        assert!(!s.selects(&process(13, Some(python))), "excluded pid");
        assert!(!s.selects(&process(99, Some(python))), "the agent");
        assert!(
            !s.selects(&in_pod(5, &pod("agent-pod", "sonde", "web"))),
            "the agent's pod"
        );

        let config = SelectorConfig {
            instrument_kube_system: true,
            ..config
        };
        let s = Selectors::new(&config).unwrap();
        assert!(s.selects(&in_pod(1, &pod("a", "kube-system", "web"))));
    }

    /// A fake /proc: each process has `cgroup`, `exe`, `stat` (for its
    /// parent) and `task/<tid>`.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir().join(format!("sonde-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Self(root)
        }

        fn add(&self, pid: u32, ppid: u32, exe: &str, cgroup: &str, threads: &[u32]) {
            let dir = self.0.join(pid.to_string());
            for tid in std::iter::once(&pid).chain(threads) {
                std::fs::create_dir_all(dir.join("task").join(tid.to_string())).unwrap();
            }
            std::fs::write(dir.join("stat"), format!("{pid} (x) S {ppid} 1 1 0 -1")).unwrap();
            std::fs::write(dir.join("status"), format!("Name:\tx\nTgid:\t{pid}\n")).unwrap();
            for tid in threads {
                // /proc/<tid> is there for threads too, unlisted.
                let thread = self.0.join(tid.to_string());
                std::fs::create_dir_all(&thread).unwrap();
                std::fs::write(thread.join("status"), format!("Tgid:\t{pid}\n")).unwrap();
            }
            std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        }

        /// Sets the process's memory maps to `paths` (file, inode).
        fn map(&self, pid: u32, files: &[(&str, u64)]) {
            let maps: String = files
                .iter()
                .enumerate()
                .map(|(i, (path, inode))| {
                    format!("7f{i:010x}-7f{i:010x} r-xp 00000000 fd:01 {inode}    {path}\n")
                })
                .collect();
            std::fs::write(self.0.join(pid.to_string()).join("maps"), maps).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn pod_changes_add_and_remove_targets() {
        const APP: &str = "1111111111111111111111111111111111111111111111111111111111111111";
        const SYS: &str = "2222222222222222222222222222222222222222222222222222222222222222";
        let uid_a = "0f8e1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let uid_b = "1f8e1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let path = |uid: &str, id: &str| {
            format!(
                "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            )
        };
        let proc = FakeProc::new("pod-changes");
        proc.add(101, 1, "/usr/bin/python3", &path(uid_a, APP), &[1011]);
        // Forked by a target, then exec'd a shell: inherited, kept while
        // its parent is selected. The other shell's parent is gone.
        proc.add(105, 101, "/bin/sh", &path(uid_a, APP), &[]);
        proc.add(102, 1, "/bin/sh", &path(uid_a, APP), &[]);
        proc.add(103, 1, "/usr/bin/python3", &path(uid_b, SYS), &[]);
        proc.add(
            104,
            1,
            "/usr/sbin/nginx",
            "/system.slice/nginx.service",
            &[],
        );
        let procfs = Procfs::at(&proc.0);

        let pods = Pods::default();
        pods.apply(pod_meta(uid_a, "shop", "db", &[(APP, "app")]))
            .unwrap();
        pods.apply(pod_meta(uid_b, "kube-system", "web", &[(SYS, "app")]))
            .unwrap();
        let config: SelectorConfig = serde_yaml_ng::from_str(
            "executables: [nginx]\n\
             include: [{pod_labels: {matchLabels: {app: web}}, executables: [python3]}]\n",
        )
        .unwrap();
        let registry =
            ProcessRegistry::new(procfs.clone(), Default::default()).with_pods(pods.clone());
        let mut discovery = Discovery::new(
            Selectors::new(&config).unwrap(),
            procfs,
            FakeTargets::default(),
            registry.clone(),
        )
        .with_pods(pods.clone());
        discovery.scan_all();
        assert_eq!(discovery.selected(), &HashSet::from([104]), "only nginx");
        // What the kernel added on its own: forked children and a thread.
        discovery.targets.0.extend([102, 105, 1011]);

        pods.apply(pod_meta(uid_a, "shop", "web", &[(APP, "app")]))
            .unwrap();
        discovery.on_pods_changed();
        assert_eq!(discovery.selected(), &HashSet::from([101, 104]));
        assert_eq!(
            discovery.targets.0,
            HashSet::from([101, 104, 105, 1011]),
            "the orphaned shell matches no rule and descends from no target"
        );
        let resource = registry.resource(101);
        assert_eq!(resource.service_name, "web", "from the app label");

        pods.apply(pod_meta(uid_a, "shop", "db", &[(APP, "app")]))
            .unwrap();
        discovery.on_pods_changed();
        assert_eq!(discovery.selected(), &HashSet::from([104]));
        assert_eq!(
            discovery.targets.0,
            HashSet::from([104]),
            "the pod's processes, their children and threads left the kernel set"
        );
    }

    #[test]
    fn a_target_that_execs_is_described_as_its_new_program() {
        let proc = FakeProc::new("exec");
        proc.add(301, 1, "/usr/bin/dash", "/", &[]);
        let procfs = Procfs::at(&proc.0);
        let registry = ProcessRegistry::new(procfs.clone(), Default::default());
        let mut discovery = Discovery::new(
            selectors(&[], &[301]),
            procfs,
            FakeTargets::default(),
            registry.clone(),
        );
        discovery.scan_all();
        assert_eq!(registry.resource(301).service_name, "dash");
        discovery.scan_all();
        assert_eq!(
            registry.len(),
            1,
            "a scan is no exec: the description stays"
        );
        let exe = proc.0.join("301/exe");
        std::fs::remove_file(&exe).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", &exe).unwrap();
        discovery.on_exec(301);
        // Described at the exec: still so once the process has gone.
        std::fs::remove_dir_all(proc.0.join("301")).unwrap();
        assert_eq!(registry.resource(301).service_name, "python3");
        assert!(discovery.selected().contains(&301));
    }

    /// Records the libraries handed to the OpenSSL probes.
    #[derive(Clone, Default)]
    struct FakeTls(Arc<Mutex<Vec<SslLibrary>>>);

    /// The executable that carries its own OpenSSL in these tests.
    const NODE: &str = "/usr/bin/node";

    impl TlsAttach for FakeTls {
        fn attach(&mut self, _pid: u32, library: &SslLibrary) -> bool {
            let carries = library.role == FileRole::Libssl || library.path.ends_with(&NODE[1..]);
            if carries {
                self.0.lock().unwrap().push(library.clone());
            }
            carries
        }

        fn forget(&mut self, _pid: u32) {}
    }

    impl FakeTls {
        /// The libraries handed over since the last call.
        fn take(&self) -> Vec<SslLibrary> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[test]
    fn libssl_of_targets_goes_to_the_tls_probes_when_mapped() {
        const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let proc = FakeProc::new("tls");
        let python = "/usr/bin/python3";
        proc.add(201, 1, python, "/user.slice", &[]);
        proc.add(202, 1, python, "/user.slice", &[2021]);
        proc.add(203, 1, python, "/user.slice", &[]);
        proc.add(204, 1, "/usr/bin/node", "/user.slice", &[]);
        // Workers 202 forked: targets only because the kernel made them so.
        proc.add(205, 202, "/usr/bin/worker", "/user.slice", &[]);
        proc.add(206, 202, "/usr/bin/worker", "/user.slice", &[]);
        // Selected by pid: Node.js, whose OpenSSL is in its executable.
        proc.add(207, 1, NODE, "/user.slice", &[]);
        proc.map(207, &[(NODE, 13), (LIBC, 11)]);
        proc.map(201, &[(python, 10), (LIBC, 11), (LIBSSL, 12)]);
        for pid in [202, 203, 205] {
            proc.map(pid, &[(python, 10), (LIBC, 11)]);
        }
        proc.map(204, &[(LIBSSL, 12)]);
        proc.map(206, &[(LIBSSL, 12)]);
        let procfs = Procfs::at(&proc.0);
        let tls = FakeTls::default();
        let mut discovery = Discovery::new(
            selectors(&["python3"], &[207]),
            procfs.clone(),
            FakeTargets::default(),
            ProcessRegistry::new(procfs, Default::default()),
        )
        .with_tls(Box::new(tls.clone()));
        let libssl_of = |pid: u32| SslLibrary {
            path: proc.0.join(format!("{pid}/root")).join(&LIBSSL[1..]),
            file: FileId {
                dev: libc::makedev(0xfd, 1),
                ino: 12,
            },
            role: FileRole::Libssl,
        };
        discovery.scan_all();
        let mut found = tls.take();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        let node = SslLibrary {
            path: proc.0.join("207/root").join(&NODE[1..]),
            file: FileId {
                dev: libc::makedev(0xfd, 1),
                ino: 13,
            },
            role: FileRole::Executable,
        };
        assert_eq!(
            found,
            [libssl_of(201), node],
            "opened through the process's root; the executable with its own OpenSSL \
             too; the unselected node is not looked at"
        );
        discovery.targets.0.remove(&201);
        discovery.on_exit(201);
        discovery.targets.0.extend([205, 2021]);

        // 202 imports `ssl` late, its worker too; 203 exits before it does.
        discovery.rescan_tls(true);
        assert!(tls.take().is_empty());
        proc.map(202, &[(python, 10), (LIBC, 11), (LIBSSL, 12)]);
        proc.map(205, &[(python, 10), (LIBSSL, 12)]);
        discovery.targets.0.remove(&203);
        discovery.on_exit(203);
        proc.map(203, &[(LIBSSL, 12)]);
        discovery.targets.0.insert(206);
        // Without the kernel's set, only the processes waiting are read.
        discovery.rescan_tls(false);
        let mut found = tls.take();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            found,
            [libssl_of(202), libssl_of(205)],
            "the thread 2021 is looked at as its process 202"
        );
        discovery.rescan_tls(true);
        assert_eq!(tls.take(), [libssl_of(206)], "a new child of a target");
        discovery.rescan_tls(true);
        discovery.rescan_tls(false);
        assert!(
            tls.take().is_empty(),
            "found once, not looked at again (nor Node.js, which maps no libssl)"
        );
    }

    /// A selected process whose service has a sampling rule gets the
    /// rule's threshold in the kernel; others keep the global one. (On exit
    /// the kernel removes the entry itself, as it does the target's.)
    #[test]
    fn selected_processes_get_their_service_sampling_rule() {
        let proc = FakeProc::new("sampling-rules");
        let procfs = Procfs::at(&proc.0);
        let registry = ProcessRegistry::new(procfs.clone(), Default::default());
        let config = crate::sampling::SamplingConfig {
            rules: vec![crate::sampling::SamplingRule {
                service: "work*".into(),
                ratio: 0.25,
            }],
            ..Default::default()
        };
        let (sampler, _) = HeadSampler::new(&config, |_| None).unwrap();
        let mut discovery = Discovery::new(
            selectors(&["worker", "other"], &[]),
            procfs,
            FakeTargets::default(),
            registry,
        )
        .with_sampler(sampler);
        proc.add(500, 1, "/usr/bin/worker", "/", &[]);
        proc.add(501, 1, "/usr/bin/other", "/", &[]);
        discovery.on_exec(500);
        discovery.on_exec(501);
        let quarter = crate::sampling::ratio_threshold(0.25);
        assert_eq!(discovery.targets.1, HashMap::from([(500, quarter)]));
    }

    /// Thousands of short-lived selected processes whose exits were never
    /// seen (a full control ring, or selected just as they exited): pruning
    /// against /proc leaves only the live ones in the selection, the
    /// process table and the kernel's target set, and the gauges say so.
    #[test]
    fn pruning_forgets_processes_whose_exit_was_missed() {
        const CHURN: u32 = 3_000;
        let proc = FakeProc::new("prune-churn");
        let procfs = Procfs::at(&proc.0);
        let stats = Stats::default();
        let registry = ProcessRegistry::new(procfs.clone(), Default::default());
        let mut discovery = Discovery::new(
            selectors(&["worker"], &[]),
            procfs,
            FakeTargets::default(),
            registry.clone(),
        );
        for pid in 1_000..1_000 + CHURN {
            proc.add(pid, 1, "/usr/bin/worker", "/", &[]);
            discovery.on_exec(pid);
            // Exited, and nobody told discovery or the kernel's set.
            if pid != 1_000 + CHURN - 1 {
                std::fs::remove_dir_all(proc.0.join(pid.to_string())).unwrap();
            }
        }
        discovery.publish_gauges(&stats, true);
        assert_eq!(stats.gauge(Gauge::ProcessesSelected), u64::from(CHURN));
        assert_eq!(stats.gauge(Gauge::KernelTargets), u64::from(CHURN));
        discovery.prune();
        discovery.publish_gauges(&stats, true);
        let survivor = 1_000 + CHURN - 1;
        assert_eq!(discovery.selected(), &HashSet::from([survivor]));
        assert_eq!(registry.len(), 1);
        for gauge in [
            Gauge::ProcessesSelected,
            Gauge::ProcessTableEntries,
            Gauge::KernelTargets,
        ] {
            assert_eq!(stats.gauge(gauge), 1, "{}", gauge.name());
        }
        assert_eq!(discovery.targets.0, HashSet::from([survivor]));
    }

    /// A process that has exited by the time its exec event is handled (a
    /// zombie: exited, not reaped) is not made a target, and one that was
    /// still exiting then is removed at the next recheck: no exit event
    /// would ever remove them.
    #[test]
    fn a_process_gone_before_selection_is_not_a_target() {
        let proc = FakeProc::new("zombie");
        proc.add(200, 1, "/usr/bin/worker", "/", &[]);
        proc.add(201, 1, "/usr/bin/worker", "/", &[]);
        std::fs::write(proc.0.join("201/stat"), "201 (worker) Z 1 1 1 0 -1").unwrap();
        let procfs = Procfs::at(&proc.0);
        let registry = ProcessRegistry::new(procfs.clone(), Default::default());
        let mut discovery = Discovery::new(
            selectors(&["worker"], &[]),
            procfs,
            FakeTargets::default(),
            registry,
        );
        discovery.on_exec(200);
        discovery.on_exec(201);
        assert_eq!(discovery.selected(), &HashSet::from([200]));
        assert_eq!(discovery.targets.0, HashSet::from([200]));
        proc.add(202, 1, "/usr/bin/worker", "/", &[]);
        discovery.on_exec(202);
        // 202 was exiting: past the kernel's exit hook, not yet a zombie.
        std::fs::write(proc.0.join("202/stat"), "202 (worker) Z 1 1 1 0 -1").unwrap();
        discovery.recheck_new_targets();
        assert_eq!(discovery.selected(), &HashSet::from([200]));
        assert_eq!(discovery.targets.0, HashSet::from([200]));
        // Only new targets are checked, once.
        std::fs::write(proc.0.join("200/stat"), "200 (worker) Z 1 1 1 0 -1").unwrap();
        discovery.recheck_new_targets();
        assert_eq!(
            discovery.selected(),
            &HashSet::from([200]),
            "the exit hook's job"
        );
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
        let registry = ProcessRegistry::new(Procfs::default(), Default::default());

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
            registry.clone(),
        );
        by_port.rescan_ports();
        assert!(by_port.selected().contains(&me), "owner of port {port}");

        // A listen event on another port looks at nothing; one on a
        // selected port finds the new listener, and looks again at the
        // next two ticks only.
        let mut by_event = Discovery::new(
            Selectors::new(&config).unwrap(),
            Procfs::default(),
            FakeTargets::default(),
            registry.clone(),
        );
        by_event.on_listen(port.wrapping_add(1));
        assert!(!by_event.selected().contains(&me));
        by_event.on_listen(port);
        assert!(by_event.selected().contains(&me), "listener on {port}");
        assert_eq!(by_event.port_rescans_due, PORT_RESCANS_AFTER_LISTEN);
        by_event.tick_ports(false);
        by_event.tick_ports(false);
        assert_eq!(by_event.port_rescans_due, 0);

        // In a rule, port and executable must both hold.
        for (exe, selected) in [(name.as_str(), true), ("no-such-program", false)] {
            let config: SelectorConfig = serde_yaml_ng::from_str(&format!(
                "include: [{{ports: [{port}], executables: ['{exe}']}}]"
            ))
            .unwrap();
            let mut by_rule = Discovery::new(
                Selectors::new(&config).unwrap(),
                Procfs::default(),
                FakeTargets::default(),
                registry.clone(),
            );
            by_rule.scan_all();
            assert_eq!(
                by_rule.selected().contains(&me),
                selected,
                "port {port} and {exe}"
            );
        }
    }
}
