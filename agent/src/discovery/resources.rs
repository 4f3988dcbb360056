//! One OpenTelemetry resource per instrumented process, built from /proc
//! when the process is first seen and kept until it exits. On Kubernetes
//! the resource also carries the process's pod (`k8s.*`, and `service.name`
//! from the pod's labels or workload): the cached resource is rebuilt when
//! the pod store holds a newer version of the pod than the one it was
//! built from, so metadata that arrives after the first span still lands.
//!
//! The table is bounded ([`MAX_PROCESSES`]): exits and a periodic prune
//! against /proc keep it to live processes, and if that is not enough
//! (exit events lost, a pid flood) the entry described longest ago makes
//! room, counted in `sonde_process_metadata_evicted`. An evicted process
//! that still sends spans is described again from /proc.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use super::{
    cgroup::{self, ContainerRef},
    k8s::{PodMatch, Pods},
    procfs::Procfs,
};
use crate::model::span::{AttributeValue, Resource};
use crate::telemetry::{Counter, Stats};

/// Processes described at once: far more than a node runs instrumented
/// (each entry is a few hundred bytes, so the bound is a few MiB).
pub const MAX_PROCESSES: usize = 16_384;

/// Name and version this agent reports as `telemetry.sdk.*` / `telemetry.distro.*`.
pub const AGENT_NAME: &str = "sonde";
/// Agent version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What /proc told about a process, read once.
#[derive(Debug)]
struct ProcessInfo {
    pid: u32,
    start: u64,
    exe_name: String,
    exe_path: Option<String>,
    /// The process's own `OTEL_SERVICE_NAME`.
    env_service_name: Option<String>,
    container: Option<ContainerRef>,
}

#[derive(Debug)]
struct Entry {
    process: ProcessInfo,
    /// The pod version `resource` was built from.
    pod: Option<PodMatch>,
    resource: Arc<Resource>,
    /// Insertion order, for eviction.
    seq: u64,
}

/// The entries and their age, kept in step.
#[derive(Debug, Default)]
struct Table {
    by_pid: HashMap<u32, Entry>,
    /// `seq -> pid`, oldest first.
    by_age: BTreeMap<u64, u32>,
    next_seq: u64,
}

impl Table {
    fn remove(&mut self, pid: u32) -> Option<Entry> {
        let entry = self.by_pid.remove(&pid)?;
        self.by_age.remove(&entry.seq);
        Some(entry)
    }

    /// Inserts (the pid must not be in the table), evicting the oldest
    /// entry first if the table holds `max` already.
    fn insert(&mut self, pid: u32, mut entry: Entry, max: usize, stats: &Stats) {
        if self.by_pid.len() >= max
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.by_pid.remove(&oldest);
            stats.add(Counter::ProcessMetadataEvicted, 1);
        }
        entry.seq = self.next_seq;
        self.next_seq += 1;
        self.by_age.insert(entry.seq, pid);
        self.by_pid.insert(pid, entry);
    }

    fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.by_pid.retain(|&pid, _| keep(pid));
        let by_pid = &self.by_pid;
        self.by_age.retain(|_, pid| by_pid.contains_key(pid));
    }
}

/// Resources by pid, shared between discovery (writes) and span building (reads).
#[derive(Clone, Debug)]
pub struct ProcessRegistry {
    procfs: Procfs,
    pods: Option<Pods>,
    host_name: String,
    max_processes: usize,
    stats: Arc<Stats>,
    table: Arc<RwLock<Table>>,
}

impl ProcessRegistry {
    /// An empty registry holding up to [`MAX_PROCESSES`], counting
    /// evictions in `stats`.
    pub fn new(procfs: Procfs, stats: Arc<Stats>) -> Self {
        Self {
            procfs,
            pods: None,
            host_name: host_name(),
            max_processes: MAX_PROCESSES,
            stats,
            table: Arc::default(),
        }
    }

    /// Holds up to `max` processes (at least one) instead.
    pub fn with_max_processes(mut self, max: usize) -> Self {
        self.max_processes = max.max(1);
        self
    }

    /// Adds Kubernetes metadata from `pods` to the resources.
    pub fn with_pods(mut self, pods: Pods) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The resource for `pid`, built from /proc on first use. A process that
    /// is already gone still gets a resource (with what is known: the pid).
    pub fn resource(&self, pid: u32) -> Arc<Resource> {
        if let Ok(table) = self.table.read()
            && let Some(entry) = table.by_pid.get(&pid)
        {
            let pod = self.pod_of(&entry.process);
            let unchanged = match (&pod, &entry.pod) {
                (Some(now), Some(then)) => now.same_as(then),
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                return Arc::clone(&entry.resource);
            }
        }
        let Ok(mut table) = self.table.write() else {
            return Arc::new(self.describe(&self.read_process(pid), None));
        };
        // Keep what /proc said the first time: the process may be gone now.
        let process = match table.remove(pid) {
            Some(entry) => entry.process,
            None => self.read_process(pid),
        };
        let pod = self.pod_of(&process);
        let resource = Arc::new(self.describe(&process, pod.as_ref()));
        let entry = Entry {
            process,
            pod,
            resource: Arc::clone(&resource),
            seq: 0,
        };
        table.insert(pid, entry, self.max_processes, &self.stats);
        resource
    }

    /// Forgets an exited process.
    pub fn forget(&self, pid: u32) {
        if let Ok(mut table) = self.table.write() {
            table.remove(pid);
        }
    }

    /// Keeps only the processes for which `keep` holds.
    pub fn retain(&self, keep: impl FnMut(u32) -> bool) {
        if let Ok(mut table) = self.table.write() {
            table.retain(keep);
        }
    }

    /// Number of processes known (a gauge for the agent's own metrics).
    pub fn len(&self) -> usize {
        self.table.read().map_or(0, |table| table.by_pid.len())
    }

    /// True if no process is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pod_of(&self, process: &ProcessInfo) -> Option<PodMatch> {
        self.pods.as_ref()?.find(process.container.as_ref()?)
    }

    fn read_process(&self, pid: u32) -> ProcessInfo {
        let exe = self.procfs.exe(pid);
        let exe_name = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| self.procfs.comm(pid))
            .unwrap_or_else(|| "unknown".to_owned());
        ProcessInfo {
            pid,
            start: self.procfs.start_time(pid).unwrap_or(0),
            exe_name,
            exe_path: exe.map(|path| path.to_string_lossy().into_owned()),
            env_service_name: self.procfs.env_var(pid, "OTEL_SERVICE_NAME"),
            container: self
                .pods
                .as_ref()
                .and_then(|_| cgroup::container_of(&self.procfs.cgroup(pid)?)),
        }
    }

    fn describe(&self, process: &ProcessInfo, pod: Option<&PodMatch>) -> Resource {
        let ProcessInfo { pid, start, .. } = *process;
        // service.name, in the conventions' order: the pod's labels or
        // workload, the process's own OTEL_SERVICE_NAME (as an SDK in the
        // process would do), the executable name.
        let service_name = pod
            .and_then(|found| found.pod.service_name())
            .map(str::to_owned)
            .or_else(|| process.env_service_name.clone())
            .unwrap_or_else(|| process.exe_name.clone());
        let str_attr = |key: &str, value: &str| (key.to_owned(), AttributeValue::from(value));
        let mut attributes = vec![
            str_attr("service.name", &service_name),
            str_attr(
                "service.instance.id",
                &format!("{}:{pid}:{start}", self.host_name),
            ),
            ("process.pid".to_owned(), AttributeValue::Int(pid.into())),
            str_attr("process.executable.name", &process.exe_name),
            str_attr("host.name", &self.host_name),
            str_attr("telemetry.sdk.name", AGENT_NAME),
            str_attr("telemetry.sdk.version", AGENT_VERSION),
            str_attr("telemetry.distro.name", AGENT_NAME),
            str_attr("telemetry.distro.version", AGENT_VERSION),
        ];
        if let Some(path) = &process.exe_path {
            attributes.push(str_attr("process.executable.path", path));
        }
        // The key groups spans by resource in an export batch: a new pod
        // version is a new resource.
        let mut key = format!("{pid}:{start}");
        if let Some(found) = pod {
            attributes.extend(
                found
                    .resource_attributes()
                    .into_iter()
                    .map(|(key, value)| (key, AttributeValue::from(value))),
            );
            key = format!(
                "{key}:{}:{}",
                found.pod.resource_version,
                found.container.as_deref().unwrap_or("")
            );
        }
        Resource {
            key,
            service_name,
            attributes,
        }
    }
}

/// The agent's own resource, for its own telemetry: `service.name`
/// `sonde`, as a process of this host (and node, on Kubernetes), so a
/// dashboard finds every agent of a fleet under one service.
pub fn agent_resource(node_name: Option<&str>) -> Resource {
    let host_name = host_name();
    let pid = std::process::id();
    let start = Procfs::default().start_time(pid).unwrap_or(0);
    let str_attr = |key: &str, value: &str| (key.to_owned(), AttributeValue::from(value));
    let mut attributes = vec![
        str_attr("service.name", AGENT_NAME),
        str_attr("service.version", AGENT_VERSION),
        str_attr("service.instance.id", &format!("{host_name}:{pid}:{start}")),
        ("process.pid".to_owned(), AttributeValue::Int(pid.into())),
        str_attr("host.name", &host_name),
        str_attr("telemetry.sdk.name", AGENT_NAME),
        str_attr("telemetry.sdk.version", AGENT_VERSION),
    ];
    if let Some(node) = node_name {
        attributes.push(str_attr("k8s.node.name", node));
    }
    Resource {
        key: format!("agent:{pid}:{start}"),
        service_name: AGENT_NAME.to_owned(),
        attributes,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_this_process_and_caches_it() {
        let registry = ProcessRegistry::new(Procfs::default(), Arc::default());
        let me = std::process::id();
        let resource = registry.resource(me);
        assert_eq!(
            resource
                .attributes
                .iter()
                .find(|(k, _)| k == "process.pid")
                .map(|(_, v)| v),
            Some(&AttributeValue::Int(me.into()))
        );
        assert!(!resource.service_name.is_empty());
        assert!(Arc::ptr_eq(&resource, &registry.resource(me)));
        assert_eq!(registry.len(), 1);
        registry.forget(me);
        assert!(registry.is_empty());
    }

    #[test]
    fn pod_metadata_arriving_later_rebuilds_the_resource() {
        use crate::discovery::k8s::{Owner, PodMeta};
        const ID: &str = "8b1a9c4d2e3f40516273849a0b1c2d3e4f5061728394a5b6c7d8e9f0a1b2c3d4";
        let root = std::env::temp_dir().join(format!("sonde-resources-{}", std::process::id()));
        std::fs::create_dir_all(root.join("7")).unwrap();
        std::fs::write(
            root.join("7/cgroup"),
            format!("0::/kubepods/besteffort/pod0f8e1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b/{ID}\n"),
        )
        .unwrap();
        let pods = Pods::default();
        let registry =
            ProcessRegistry::new(Procfs::at(&root), Arc::default()).with_pods(pods.clone());
        let before = registry.resource(7);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(before.service_name, "unknown");
        assert!(!before.attributes.iter().any(|(k, _)| k.starts_with("k8s.")));

        let mut meta = PodMeta {
            uid: "0f8e1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            namespace: "shop".into(),
            name: "checkout-7d4b9c8f5-x2x9z".into(),
            resource_version: "41".into(),
            node_name: "node-a".into(),
            labels: [(
                "app.kubernetes.io/name".to_owned(),
                "checkout-svc".to_owned(),
            )]
            .into(),
            annotations: Default::default(),
            owners: vec![
                Owner::new("ReplicaSet", "checkout-7d4b9c8f5"),
                Owner::new("Deployment", "checkout"),
            ],
            containers: vec![(ID.to_owned(), "app".to_owned())],
        };
        pods.apply(meta.clone()).unwrap();
        let after = registry.resource(7);
        let attr = |r: &Resource, key: &str| {
            r.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{key} missing in {r:#?}"))
        };
        assert_eq!(after.service_name, "checkout-svc");
        for (key, value) in [
            ("k8s.namespace.name", "shop"),
            ("service.namespace", "shop"),
            ("k8s.pod.name", "checkout-7d4b9c8f5-x2x9z"),
            ("k8s.pod.uid", "0f8e1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"),
            ("k8s.container.name", "app"),
            ("k8s.node.name", "node-a"),
            ("k8s.replicaset.name", "checkout-7d4b9c8f5"),
            ("k8s.deployment.name", "checkout"),
        ] {
            assert_eq!(attr(&after, key), AttributeValue::from(value), "{key}");
        }
        assert_ne!(after.key, before.key, "a new pod version is a new resource");
        assert!(
            Arc::ptr_eq(&after, &registry.resource(7)),
            "cached until the pod changes"
        );

        // Without name labels, the workload names the service.
        meta.labels.clear();
        meta.resource_version = "42".into();
        pods.apply(meta).unwrap();
        assert_eq!(registry.resource(7).service_name, "checkout");
    }

    #[test]
    fn the_agent_is_a_service_of_its_own() {
        let attributes = |node| -> HashMap<String, AttributeValue> {
            agent_resource(node).attributes.into_iter().collect()
        };
        let plain = attributes(None);
        assert_eq!(plain["service.name"], AttributeValue::from("sonde"));
        assert_eq!(
            plain["process.pid"],
            AttributeValue::Int(std::process::id().into())
        );
        assert_eq!(plain["host.name"], AttributeValue::from(host_name()));
        assert!(!plain.contains_key("k8s.node.name"));
        let on_node = attributes(Some("node-a"));
        assert_eq!(on_node["k8s.node.name"], AttributeValue::from("node-a"));
    }

    /// Pids far past the bound (processes whose exits were never seen):
    /// the table stays at its bound, the oldest entries go first and each
    /// one is counted; what is left and forgotten leaves no trace in the
    /// age index either.
    #[test]
    fn churn_past_the_bound_evicts_the_oldest_and_counts_them() {
        const MAX: usize = 64;
        const CHURN: u32 = 10_000;
        let stats = Arc::new(Stats::default());
        let registry = ProcessRegistry::new(Procfs::at("/nonexistent"), Arc::clone(&stats))
            .with_max_processes(MAX);
        for pid in 1..=CHURN {
            registry.resource(pid);
            assert!(
                registry.len() <= MAX,
                "{} entries at pid {pid}",
                registry.len()
            );
        }
        assert_eq!(registry.len(), MAX);
        assert_eq!(
            stats.get(Counter::ProcessMetadataEvicted),
            u64::from(CHURN) - MAX as u64
        );
        let newest = CHURN - MAX as u32 + 1..=CHURN;
        let table = registry.table.read().unwrap();
        let kept: Vec<u32> = table.by_age.values().copied().collect();
        assert_eq!(
            kept,
            newest.collect::<Vec<_>>(),
            "the newest stay, in order"
        );
        drop(table);
        registry.retain(|pid| pid % 2 == 0);
        registry.forget(CHURN);
        let table = registry.table.read().unwrap();
        assert_eq!(table.by_pid.len(), MAX / 2 - 1);
        assert_eq!(table.by_age.len(), table.by_pid.len());
    }

    #[test]
    fn a_vanished_process_still_gets_a_resource() {
        let registry = ProcessRegistry::new(Procfs::at("/nonexistent"), Arc::default());
        let resource = registry.resource(4_000_000);
        assert_eq!(resource.service_name, "unknown");
    }
}
