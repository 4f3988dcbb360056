//! Live selection: `sched:sched_process_exec`, `sched_process_exit`,
//! `sched_process_fork` (all kernels with BPF).
//!
//! Exec of any process is reported so the agent can match it against its
//! selectors within milliseconds. A fork by a target makes the child a target
//! at once (pre-fork servers keep their workers traced), and an exiting
//! target is removed here, so the kernel set never holds dead pids.

use agent_common::{EventHeader, EventKind, process::ProcessEvent};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{
    CONTROL_EVENTS, SAMPLING_THRESHOLDS, config, count_drop, forget_tls_or_go, is_target,
    set_target,
};

/// Marks a target inherited from its parent (the agent's selectors use 1).
const TARGET_INHERITED: u32 = 2;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    forget_tls_or_go((pid_tgid >> 32) as u32);
    emit(EventKind::ProcessExec, pid_tgid);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // Threads forked by a target are in the map by tid (see fork below).
    if is_target(tid) {
        set_target(tid, None);
        let _ = SAMPLING_THRESHOLDS.remove(tid);
        if tid == (pid_tgid >> 32) as u32 {
            emit(EventKind::ProcessExit, pid_tgid);
        }
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(parent) {
        return 0;
    }
    // The record layout changed across kernels; the agent reads the offset
    // of `child_pid` from the tracepoint's format file.
    let offset = config().off_fork_child_pid as usize;
    // SAFETY: the offset comes from this kernel's format file.
    if let Ok(child) = unsafe { ctx.read_at::<u32>(offset) } {
        // The child may be a thread: then its tid never equals a live tgid
        // and the entry is removed when the thread exits.
        set_target(child, Some(TARGET_INHERITED));
        // Workers of a pre-fork server sample as their parent's service.
        // SAFETY: plain value lookup.
        if let Some(threshold) = unsafe { SAMPLING_THRESHOLDS.get(parent) } {
            let _ = SAMPLING_THRESHOLDS.insert(child, *threshold, 0);
        }
    }
    0
}

fn emit(kind: EventKind, pid_tgid: u64) {
    let event = ProcessEvent {
        header: EventHeader {
            kind: kind as u32,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            reserved: 0,
            // SAFETY: always-safe helper.
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
        },
    };
    if CONTROL_EVENTS.output::<ProcessEvent>(&event, 0).is_err() {
        count_drop(agent_common::drops::CONTROL_RINGBUF_FULL);
    }
}
