//! The kernel's set of target processes (`TARGETS` map) and their own head
//! sampling thresholds (`SAMPLING_THRESHOLDS`), behind a small trait so
//! selection logic can be unit-tested without a kernel.

use aya::maps::{HashMap, Map, MapData, MapError};

/// Value the agent writes for a process its selectors chose (forks inherit
/// with another value, see `agent-ebpf/src/probes/process.rs`).
const SELECTED: u32 = 1;

/// A set of process ids the kernel programs capture.
pub trait TargetSet: Send {
    /// Starts capturing `pid`.
    fn add(&mut self, pid: u32) -> Result<(), MapError>;
    /// Gives `pid`'s new traces their own rejection threshold (its
    /// service's sampling rule) instead of the global one.
    fn sample_at(&mut self, pid: u32, threshold: u64) -> Result<(), MapError>;
    /// Stops capturing `pid` (and forgets its threshold).
    fn remove(&mut self, pid: u32) -> Result<(), MapError>;
    /// Pids currently in the set.
    fn pids(&self) -> Vec<u32>;
}

/// The real `TARGETS` and `SAMPLING_THRESHOLDS` maps.
pub struct TargetMap {
    targets: HashMap<MapData, u32, u32>,
    thresholds: HashMap<MapData, u32, u64>,
}

impl TargetMap {
    /// Wraps the `TARGETS` and `SAMPLING_THRESHOLDS` maps taken from the
    /// loaded object.
    pub fn new(targets: Map, thresholds: Map) -> Result<Self, MapError> {
        Ok(Self {
            targets: HashMap::try_from(targets)?,
            thresholds: HashMap::try_from(thresholds)?,
        })
    }
}

/// `KeyNotFound` is success for a removal.
fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl TargetSet for TargetMap {
    fn add(&mut self, pid: u32) -> Result<(), MapError> {
        self.targets.insert(pid, SELECTED, 0)
    }

    fn sample_at(&mut self, pid: u32, threshold: u64) -> Result<(), MapError> {
        self.thresholds.insert(pid, threshold, 0)
    }

    fn remove(&mut self, pid: u32) -> Result<(), MapError> {
        removed(self.thresholds.remove(&pid))?;
        removed(self.targets.remove(&pid))
    }

    fn pids(&self) -> Vec<u32> {
        self.targets.keys().filter_map(Result::ok).collect()
    }
}
