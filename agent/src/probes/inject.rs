//! Userspace side of `agent-ebpf/src/probes/inject.rs`: attaches the
//! sock_ops program to a cgroup v2 (the root by default, so every process
//! on the node is covered) and the sk_msg program to the client socket map,
//! and reports the injection outcomes.

use std::{fs, os::fd::AsFd, path::PathBuf};

use agent_common::trace_context::inject;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps},
};

use super::ProbeError;
use crate::telemetry::{Counter, Stats};

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo
/// (it is /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid
/// ones, elsewhere on others: never assumed).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount(&mountinfo)
}

fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "id parent major:minor root mount-point options ... - fstype source super-options"
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Attaches injection: sock_ops on `cgroup` (or the cgroup2 root) and
/// sk_msg on `CLIENT_SOCKETS`. Several agents may run at once (tests,
/// upgrades): on Linux >= 5.7 aya attaches with a BPF link, and cgroup links
/// always coexist (the kernel rejects attach flags on links, so the mode
/// must stay `Single`, which only applies to the legacy attach).
pub fn attach(ebpf: &mut Ebpf, cgroup: Option<PathBuf>) -> Result<(), ProbeError> {
    let cgroup = cgroup.or_else(cgroup2_root).ok_or(ProbeError::NoCgroup2)?;
    let cgroup_dir = fs::File::open(&cgroup).map_err(|source| ProbeError::Cgroup {
        path: cgroup.clone(),
        source,
    })?;
    let attach_error = |program: &'static str, hook: &'static str| {
        move |source| ProbeError::Attach {
            program,
            hook,
            source,
        }
    };

    let sock_ops: &mut SockOps = ebpf
        .program_mut("track_client_sockets")
        .ok_or(ProbeError::Map("track_client_sockets"))?
        .try_into()
        .map_err(attach_error("track_client_sockets", "cgroup sock_ops"))?;
    sock_ops
        .load()
        .map_err(attach_error("track_client_sockets", "cgroup sock_ops"))?;
    sock_ops
        .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
        .map_err(attach_error("track_client_sockets", "cgroup sock_ops"))?;

    let sockets: SockHash<&MapData, u64> = SockHash::try_from(
        ebpf.map("CLIENT_SOCKETS")
            .ok_or(ProbeError::Map("CLIENT_SOCKETS"))?,
    )
    .map_err(|_| ProbeError::Map("CLIENT_SOCKETS"))?;
    let sockets_fd = sockets
        .fd()
        .try_clone()
        .map_err(|_| ProbeError::Map("CLIENT_SOCKETS"))?;
    let sk_msg: &mut SkMsg = ebpf
        .program_mut("inject_traceparent")
        .ok_or(ProbeError::Map("inject_traceparent"))?
        .try_into()
        .map_err(attach_error("inject_traceparent", "sk_msg"))?;
    sk_msg
        .load()
        .map_err(attach_error("inject_traceparent", "sk_msg"))?;
    sk_msg
        .attach(&sockets_fd)
        .map_err(attach_error("inject_traceparent", "sk_msg"))?;
    tracing::info!(cgroup = %cgroup.display(), "traceparent injection attached");
    Ok(())
}

/// Copies injection outcomes and the other trace context counters (summed
/// over CPUs) into `stats`.
pub fn publish_stats(map: &PerCpuArray<MapData, u64>, stats: &Stats) {
    let read = |index: u32| -> u64 { map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    stats.set(Counter::TraceparentInjected, read(inject::INJECTED));
    stats.set(
        Counter::TraceparentAlreadyPresent,
        read(inject::ALREADY_PRESENT),
    );
    stats.set(Counter::TraceparentHeadTooLong, read(inject::HEAD_TOO_LONG));
    stats.set(Counter::TraceparentInjectFailed, read(inject::FAILED));
    stats.set(Counter::LinksAmbiguous, read(inject::AMBIGUOUS_PARENT));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage"), None);
    }
}
