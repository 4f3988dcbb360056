//! One OpenTelemetry resource per instrumented process, built from /proc
//! when the process is first seen and kept until it exits.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use super::procfs::Procfs;
use crate::spans::model::{AttributeValue, Resource};

/// Name and version this agent reports as `telemetry.sdk.*` / `telemetry.distro.*`.
pub const AGENT_NAME: &str = "sonde";
/// Agent version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Resources by pid, shared between discovery (writes) and span building (reads).
#[derive(Clone, Debug)]
pub struct ProcessRegistry {
    procfs: Procfs,
    host_name: String,
    by_pid: Arc<RwLock<HashMap<u32, Arc<Resource>>>>,
}

impl ProcessRegistry {
    /// An empty registry.
    pub fn new(procfs: Procfs) -> Self {
        Self {
            procfs,
            host_name: host_name(),
            by_pid: Arc::default(),
        }
    }

    /// The resource for `pid`, built from /proc on first use. A process that
    /// is already gone still gets a resource (with what is known: the pid).
    pub fn resource(&self, pid: u32) -> Arc<Resource> {
        if let Some(resource) = self.by_pid.read().ok().and_then(|m| m.get(&pid).cloned()) {
            return resource;
        }
        let resource = Arc::new(self.describe(pid));
        if let Ok(mut map) = self.by_pid.write() {
            map.insert(pid, Arc::clone(&resource));
        }
        resource
    }

    /// Forgets an exited process.
    pub fn forget(&self, pid: u32) {
        if let Ok(mut map) = self.by_pid.write() {
            map.remove(&pid);
        }
    }

    /// Number of processes known (a gauge for the agent's own metrics).
    pub fn len(&self) -> usize {
        self.by_pid.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True if no process is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn describe(&self, pid: u32) -> Resource {
        let exe = self.procfs.exe(pid);
        let exe_name = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| self.procfs.comm(pid))
            .unwrap_or_else(|| "unknown".to_owned());
        // service.name: the process's own OTEL_SERVICE_NAME wins over the
        // executable name, as an OpenTelemetry SDK in the process would do.
        let service_name = self
            .procfs
            .env_var(pid, "OTEL_SERVICE_NAME")
            .unwrap_or_else(|| exe_name.clone());
        let start = self.procfs.start_time(pid).unwrap_or(0);
        let str_attr =
            |key: &str, value: &str| (key.to_owned(), AttributeValue::Str(value.to_owned()));
        let mut attributes = vec![
            str_attr("service.name", &service_name),
            str_attr(
                "service.instance.id",
                &format!("{}:{pid}:{start}", self.host_name),
            ),
            ("process.pid".to_owned(), AttributeValue::Int(pid.into())),
            str_attr("process.executable.name", &exe_name),
            str_attr("host.name", &self.host_name),
            str_attr("telemetry.sdk.name", AGENT_NAME),
            str_attr("telemetry.sdk.version", AGENT_VERSION),
            str_attr("telemetry.distro.name", AGENT_NAME),
            str_attr("telemetry.distro.version", AGENT_VERSION),
        ];
        if let Some(path) = &exe {
            attributes.push(str_attr("process.executable.path", &path.to_string_lossy()));
        }
        Resource {
            key: format!("{pid}:{start}"),
            service_name,
            attributes,
        }
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
        let registry = ProcessRegistry::new(Procfs::default());
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
    fn a_vanished_process_still_gets_a_resource() {
        let registry = ProcessRegistry::new(Procfs::at("/nonexistent"));
        let resource = registry.resource(4_000_000);
        assert_eq!(resource.service_name, "unknown");
    }
}
