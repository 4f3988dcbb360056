//! The kernel's set of target processes and their own head sampling
//! thresholds (`SAMPLING_THRESHOLDS`), behind a small trait so selection
//! logic can be unit-tested without a kernel.
//!
//! The set lives twice in the kernel: `TARGETS` (hash map, pid -> how it
//! was selected; what the agent lists) and `TARGET_FLAGS` (one byte per
//! pid, which every hook checks first: an array lookup the verifier
//! inlines costs a few ns where a hash lookup costs tens, and the hooks run
//! for every socket call of every process on the node). The kernel adds
//! and removes forked children in both; the agent writes the flags through
//! a shared mapping of the array, one byte per pid, so neither side ever
//! rewrites a byte the other owns.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use aya::maps::{HashMap, Map, MapData, MapError};

/// Value the agent writes for a process its selectors chose (forks inherit
/// with another value, see `agent-ebpf/src/probes/process.rs`).
const SELECTED: u32 = 1;

/// Where the kernel's highest pid is set.
const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// Linux's upper bound for `pid_max` on 64-bit (`PID_MAX_LIMIT`), used if
/// the sysctl cannot be read.
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Entries of `TARGET_FLAGS` (8 pids each) for this kernel's `pid_max`: one
/// byte per possible pid. If `pid_max` is raised later, higher pids use the
/// hash map alone.
pub fn flag_entries() -> u32 {
    let pid_max = std::fs::read_to_string(PID_MAX)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(PID_MAX_LIMIT);
    pid_max.clamp(8, PID_MAX_LIMIT).div_ceil(8)
}

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

/// The real `TARGETS`, `TARGET_FLAGS` and `SAMPLING_THRESHOLDS` maps.
pub struct TargetMap {
    targets: HashMap<MapData, u32, u32>,
    flags: FlagBytes,
    thresholds: HashMap<MapData, u32, u64>,
}

impl TargetMap {
    /// Wraps the `TARGETS`, `TARGET_FLAGS` and `SAMPLING_THRESHOLDS` maps
    /// taken from the loaded object.
    pub fn new(targets: Map, flags: Map, thresholds: Map) -> Result<Self, MapError> {
        let Map::Array(flags) = flags else {
            return Err(MapError::InvalidName {
                name: "TARGET_FLAGS".to_owned(),
            });
        };
        Ok(Self {
            targets: HashMap::try_from(targets)?,
            flags: FlagBytes::map(flags)?,
            thresholds: HashMap::try_from(thresholds)?,
        })
    }
}

/// A missing key is success for a removal: aya reports it as the
/// syscall's ENOENT.
fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl TargetSet for TargetMap {
    fn add(&mut self, pid: u32) -> Result<(), MapError> {
        self.targets.insert(pid, SELECTED, 0)?;
        self.flags.set(pid, true);
        Ok(())
    }

    fn sample_at(&mut self, pid: u32, threshold: u64) -> Result<(), MapError> {
        self.thresholds.insert(pid, threshold, 0)
    }

    fn remove(&mut self, pid: u32) -> Result<(), MapError> {
        // The target first: a threshold left behind costs a map entry, a
        // target left behind would trace a reused pid.
        self.flags.set(pid, false);
        removed(self.targets.remove(&pid))?;
        removed(self.thresholds.remove(&pid))
    }

    fn pids(&self) -> Vec<u32> {
        self.targets.keys().filter_map(Result::ok).collect()
    }
}

/// `TARGET_FLAGS` mapped into the agent (the map is `BPF_F_MMAPABLE`).
struct FlagBytes {
    bytes: NonNull<AtomicU8>,
    len: usize,
    /// Keeps the map alive as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is shared memory written with atomic byte stores
// only; nothing in it is tied to the thread that created it.
unsafe impl Send for FlagBytes {}

impl FlagBytes {
    fn map(map: MapData) -> Result<Self, MapError> {
        let info = map.info()?;
        let len = info.value_size() as usize * info.max_entries() as usize;
        // SAFETY: mapping an mmapable array map's values, read-write and
        // shared with the kernel; the length is the array's size.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MapError::SyscallError(aya::sys::SyscallError {
                call: "mmap",
                io_error: std::io::Error::last_os_error(),
            }));
        }
        let bytes = NonNull::new(addr.cast()).ok_or_else(|| MapError::InvalidName {
            name: "TARGET_FLAGS".to_owned(),
        })?;
        Ok(Self {
            bytes,
            len,
            _map: map,
        })
    }

    /// Sets `pid`'s byte; pids past the array are the hash map's alone.
    fn set(&self, pid: u32, on: bool) {
        let index = pid as usize;
        if index < self.len {
            // SAFETY: index < len, inside the mapping.
            let byte = unsafe { &*self.bytes.as_ptr().add(index) };
            byte.store(u8::from(on), Ordering::Release);
        }
    }
}

impl Drop for FlagBytes {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, used no more.
        unsafe { libc::munmap(self.bytes.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use aya::{maps::MapError, sys::SyscallError};

    use super::removed;

    fn syscall_error(errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn removing_a_missing_key_succeeds_and_other_errors_stay() {
        assert!(removed(Err(MapError::KeyNotFound)).is_ok());
        assert!(removed(Err(syscall_error(libc::ENOENT))).is_ok());
        assert!(removed(Err(syscall_error(libc::EPERM))).is_err());
    }
}
