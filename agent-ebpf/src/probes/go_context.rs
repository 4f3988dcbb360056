//! Goroutines of Go programs, followed for their trace context (see
//! `goroutine`): uprobes the agent puts on each Go executable a selected
//! process runs (`agent/src/probes/go`), found in `.gopclntab`.
//!
//! /// match-proto:go1.19,go1.22:src/runtime/proc.go:
//! /// func newproc1(fn *funcval, callergp *g, callerpc uintptr) *g
//! /// match-proto:go1.23:src/runtime/proc.go:
//! /// func newproc1(fn *funcval, callergp *g, callerpc uintptr, parked bool, waitreason waitReason) *g
//! /// match-proto:go1.19,go1.23:src/net/http/transport.go:
//! /// func (pc *persistConn) roundTrip(req *transportRequest) (resp *Response, err error)
//! /// func (pc *persistConn) writeLoop()
//!
//! Go's register ABI (amd64): arguments in RAX, RBX..., the result in
//! RAX, the running goroutine's `g` in R14.
//! - `runtime.newproc1` runs on the thread's system stack (R14 is `g0`,
//!   and the thread cannot change before it returns): its entry notes the
//!   creator (`callergp`, RBX) by thread, its `RET` gives the new
//!   goroutine (RAX) the creator's request, or clears what a reused `g`
//!   had. It also marks the process as Go (`goroutine::GO_PROCESSES`).
//! - net/http's client writes a request from the connection's own
//!   `writeLoop` goroutine, not the caller's: `persistConn.roundTrip`
//!   (on the caller's goroutine) names the caller's request for the
//!   connection, `writeLoop`'s entry ties its goroutine to the connection.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use crate::{
    goroutine::{CONN_REQUESTS, GO_PROCESSES, GO_SERVING, GO_WRITERS, GoroutineKey, request_of},
    maps::{is_target, mark_tls_or_go},
};

/// The goroutine each thread is creating a goroutine for (`callergp`).
#[map]
pub static GO_NEWPROC: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);

/// User registers of a uprobe, if the process is a target.
#[inline(always)]
fn target_regs(ctx: &ProbeContext) -> Option<(u64, u64, u64)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return None;
    }
    // SAFETY: a uprobe's context is the user registers.
    Some(unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) })
}

#[uprobe]
pub fn go_newproc_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some((_, callergp, _)) = target_regs(&ctx) else {
        return 0;
    };
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value lookup.
    if unsafe { GO_PROCESSES.get(tgid) }.is_none() {
        mark_tls_or_go(tgid);
        let _ = GO_PROCESSES.insert(tgid, 1, 0);
    }
    let _ = GO_NEWPROC.insert(pid_tgid as u32, callergp, 0);
    0
}

/// At `newproc1`'s `RET`: the new goroutine works for its creator's
/// request, if any; nothing a former user of its `g` left stays.
#[uprobe]
pub fn go_newproc_return(ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some((newg, _, _)) = target_regs(&ctx) else {
        return 0;
    };
    // SAFETY: plain value lookup, copied out.
    let Some(callergp) = (unsafe { GO_NEWPROC.get(tid) }).copied() else {
        return 0;
    };
    let _ = GO_NEWPROC.remove(tid);
    let child = GoroutineKey::of_current(newg);
    // SAFETY: plain value lookup.
    if unsafe { GO_WRITERS.get(child) }.is_some() {
        let _ = GO_WRITERS.remove(child);
    }
    match request_of(&GoroutineKey::of_current(callergp)) {
        Some(request) => {
            let _ = GO_SERVING.insert(child, request, 0);
        }
        None => {
            // SAFETY: plain value lookup.
            if unsafe { GO_SERVING.get(child) }.is_some() {
                let _ = GO_SERVING.remove(child);
            }
        }
    }
    0
}

/// `persistConn.roundTrip` on the caller's goroutine: the connection's
/// next request is made for the caller's request (or for none).
#[uprobe]
pub fn go_round_trip_enter(ctx: ProbeContext) -> u32 {
    let Some((conn, _, g)) = target_regs(&ctx) else {
        return 0;
    };
    let conn = GoroutineKey::of_current(conn);
    match request_of(&GoroutineKey::of_current(g)) {
        Some(request) => {
            let _ = CONN_REQUESTS.insert(conn, request, 0);
        }
        None => {
            // SAFETY: plain value lookup.
            if unsafe { CONN_REQUESTS.get(conn) }.is_some() {
                let _ = CONN_REQUESTS.remove(conn);
            }
        }
    }
    0
}

/// `persistConn.writeLoop` starts: its goroutine writes for the connection.
#[uprobe]
pub fn go_write_loop_enter(ctx: ProbeContext) -> u32 {
    if let Some((conn, _, g)) = target_regs(&ctx) {
        let _ = GO_WRITERS.insert(GoroutineKey::of_current(g), conn, 0);
    }
    0
}
