//! Userspace side of `agent-ebpf/src/probes/inject.rs`: attaches the
//! sock_ops program to a cgroup v2 (the root by default, so every process
//! on the node is covered) and the sk_msg program to the client socket map,
//! and reports the injection outcomes.

use std::{fs, os::fd::AsFd, path::PathBuf};

use agent_common::trace_context::inject;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, ProgramArray, SockHash},
    programs::{CgroupAttachMode, ProgramError, SkMsg, SockOps},
};

use super::{FeatureState, ProbeError};
use crate::model::error::ErrorChain;
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

/// The programs of injection on one capture path.
pub struct Programs {
    /// Captures the sends of sockets in `CLIENT_SOCKETS` where the capture
    /// programs do not see them (fexit on `tcp_bpf_sendmsg`: such sockets
    /// send through `tcp_bpf`, not `tcp_sendmsg`).
    pub sockmap_sends: Option<&'static str>,
    /// Puts client sockets in `CLIENT_SOCKETS`, keyed as the capture
    /// programs key connections.
    sock_ops: &'static str,
    /// Rewrites their messages.
    sk_msg: &'static str,
    /// Why HTTP/2 messages pass unchanged, if they always do.
    http2_off: Option<&'static str>,
}

/// With the `sock_*_length` tracepoints, which see every send.
pub const WITH_TRACEPOINTS: Programs = Programs {
    sockmap_sends: None,
    ..WITH_FEXIT
};

/// With the current fexit capture programs.
pub const WITH_FEXIT: Programs = Programs {
    sockmap_sends: Some("tcp_bpf_sendmsg_exit"),
    sock_ops: "track_client_sockets",
    sk_msg: "inject_traceparent",
    http2_off: None,
};

/// With the portable capture programs (connections keyed by socket
/// address; no `bpf_loop`).
pub const WITH_PORTABLE: Programs = Programs {
    sockmap_sends: Some("tcp_bpf_sendmsg_portable"),
    sock_ops: "track_client_sockets_portable",
    sk_msg: "inject_traceparent_portable",
    http2_off: Some(
        "the HTTP/2 rewrite walks frames with bpf_loop (Linux >= 5.17), \
         which the portable programs this kernel needs do without",
    ),
};

/// Every program injection may load, for a check that they exist.
#[cfg(test)]
pub fn program_names() -> impl Iterator<Item = &'static str> {
    [WITH_TRACEPOINTS, WITH_FEXIT, WITH_PORTABLE]
        .into_iter()
        .flat_map(|programs| {
            [
                Some(programs.sock_ops),
                Some(programs.sk_msg),
                programs.sockmap_sends,
            ]
        })
        .flatten()
        .chain([H2_PROGRAM])
}

/// Attaches injection: `programs.sock_ops` on `cgroup` (or the cgroup2
/// root) and `programs.sk_msg` on `CLIENT_SOCKETS`. Several agents may run
/// at once (tests, upgrades): on Linux >= 5.7 aya attaches with a BPF link,
/// and cgroup links always coexist (the kernel rejects attach flags on
/// links, so the mode must stay `Single`, which only applies to the legacy
/// attach). Returns the state of HTTP/2 injection, which may be off alone.
pub fn attach(
    ebpf: &mut Ebpf,
    cgroup: Option<PathBuf>,
    programs: &Programs,
) -> Result<FeatureState, ProbeError> {
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
        .program_mut(programs.sock_ops)
        .ok_or(ProbeError::Map(programs.sock_ops))?
        .try_into()
        .map_err(attach_error(programs.sock_ops, "cgroup sock_ops"))?;
    sock_ops
        .load()
        .map_err(attach_error(programs.sock_ops, "cgroup sock_ops"))?;
    sock_ops
        .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
        .map_err(attach_error(programs.sock_ops, "cgroup sock_ops"))?;

    let sockets: SockHash<&MapData, u64> = SockHash::try_from(
        ebpf.map("CLIENT_SOCKETS")
            .ok_or(ProbeError::Map("CLIENT_SOCKETS"))?,
    )
    .map_err(|_| ProbeError::Map("CLIENT_SOCKETS"))?;
    let sockets_fd = sockets
        .fd()
        .try_clone()
        .map_err(|_| ProbeError::Map("CLIENT_SOCKETS"))?;
    sk_msg(ebpf, programs.sk_msg)?
        .load()
        .map_err(attach_error(programs.sk_msg, "sk_msg"))?;
    // HTTP/2 is an addition: without it, HTTP/1 injection still runs and
    // HTTP/2 messages pass unchanged (counted).
    let http2 = match programs.http2_off {
        Some(reason) => FeatureState::Off(reason.into()),
        None => match link_http2(ebpf) {
            Ok(()) => FeatureState::On,
            Err(error) => FeatureState::Off(ErrorChain(&error).to_string()),
        },
    };
    sk_msg(ebpf, programs.sk_msg)?
        .attach(&sockets_fd)
        .map_err(attach_error(programs.sk_msg, "sk_msg"))?;
    tracing::info!(cgroup = %cgroup.display(), "traceparent injection attached");
    Ok(http2)
}

fn sk_msg<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SkMsg, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Map(name))?
        .try_into()
        .map_err(|source| ProbeError::Attach {
            program: name,
            hook: "sk_msg",
            source,
        })
}

/// Loads the HTTP/2 rewrite and puts it where `inject_traceparent`
/// tail-calls it.
fn link_http2(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let error = |source| ProbeError::Attach {
        program: H2_PROGRAM,
        hook: "sk_msg tail call",
        source,
    };
    let program: &mut SkMsg = ebpf
        .program_mut(H2_PROGRAM)
        .ok_or(ProbeError::Map(H2_PROGRAM))?
        .try_into()
        .map_err(error)?;
    program.load().map_err(error)?;
    let fd = program
        .fd()
        .map_err(error)?
        .try_clone()
        .map_err(|e| error(ProgramError::IOError(e)))?;
    let mut tails: ProgramArray<_> = ebpf
        .map_mut("H2_TAILS")
        .ok_or(ProbeError::Map("H2_TAILS"))?
        .try_into()
        .map_err(|_| ProbeError::Map("H2_TAILS"))?;
    tails
        .set(H2_TAIL, &fd, 0)
        .map_err(|_| ProbeError::Map("H2_TAILS"))
}

/// The HTTP/2 program, and its index in `H2_TAILS` (agent-ebpf's
/// `probes::inject::H2_TAIL`).
const H2_PROGRAM: &str = "inject_traceparent_h2";
const H2_TAIL: u32 = 0;

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
    for (counter, index) in [
        (Counter::TraceparentH2Injected, inject::H2_INJECTED),
        (Counter::TraceparentH2Continuation, inject::H2_CONTINUATION),
        (Counter::TraceparentH2Padded, inject::H2_PADDED),
        (Counter::TraceparentH2Split, inject::H2_SPLIT),
        (Counter::TraceparentH2TooBig, inject::H2_TOO_BIG),
        (Counter::TraceparentH2OwnContext, inject::H2_OWN_CONTEXT),
        (Counter::TraceparentH2Failed, inject::H2_FAILED),
        (Counter::TraceparentH2Lost, inject::H2_LOST),
        (Counter::TraceparentH2Unavailable, inject::H2_UNAVAILABLE),
    ] {
        stats.set(counter, read(index));
    }
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
