//! The kernel's set of target processes (`TARGETS` map), behind a small trait
//! so selection logic can be unit-tested without a kernel.

use aya::maps::{HashMap, Map, MapData, MapError};

/// Value the agent writes for a process its selectors chose (forks inherit
/// with another value, see `agent-ebpf/src/probes/process.rs`).
const SELECTED: u32 = 1;

/// A set of process ids the kernel programs capture.
pub trait TargetSet: Send {
    /// Starts capturing `pid`.
    fn add(&mut self, pid: u32) -> Result<(), MapError>;
    /// Stops capturing `pid`.
    fn remove(&mut self, pid: u32) -> Result<(), MapError>;
    /// Pids currently in the set.
    fn pids(&self) -> Vec<u32>;
}

/// The real `TARGETS` map.
pub struct TargetMap(HashMap<MapData, u32, u32>);

impl TargetMap {
    /// Wraps the `TARGETS` map taken from the loaded object.
    pub fn new(map: Map) -> Result<Self, MapError> {
        Ok(Self(HashMap::try_from(map)?))
    }
}

impl TargetSet for TargetMap {
    fn add(&mut self, pid: u32) -> Result<(), MapError> {
        self.0.insert(pid, SELECTED, 0)
    }

    fn remove(&mut self, pid: u32) -> Result<(), MapError> {
        match self.0.remove(&pid) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.0.keys().filter_map(Result::ok).collect()
    }
}
