//! Which request a Go goroutine works for. Goroutines move between OS
//! threads, so in a Go process the thread says nothing about the request a
//! call serves; the goroutine does. Kept by goroutine (`runtime.g`
//! address, which Go's register ABI keeps in R14 in all Go code, syscalls
//! included: amd64, Go >= 1.17; the agent attaches the probes for Go >=
//! 1.18 only), filled by:
//! - `context`, when a goroutine reads a request's start ([`serve`]);
//! - `probes::go_context`, at `runtime.newproc1` (a goroutine started
//!   by one that works for a request works for it too: errgroup-style
//!   fan-out) and at net/http's client (`persistConn.roundTrip` names
//!   the request the connection's `writeLoop` goroutine writes next).
//!
//! What is kept is a [`RequestRef`], checked against the connection's live
//! request when used ([`request_of_current`]): a goroutine that outlives
//! its request, or a `g` the runtime reuses, gives no parent, never another
//! request's.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};

use crate::{
    maps::{RequestRef, ServerRequest, may_use_tls_or_go},
    read,
    syscall_args::user_registers,
};

/// `struct pt_regs` offset of R14 (x86_64 user ABI).
const PT_REGS_R14: u32 = 8;

/// A goroutine of a process (or, in [`CONN_REQUESTS`], a net/http
/// `persistConn` of a process).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoroutineKey {
    /// Process.
    pub tgid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The goroutine's `runtime.g` address (or the `*persistConn`).
    pub g: u64,
}

impl GoroutineKey {
    /// `g` (or another address) of the current process.
    #[inline(always)]
    pub fn of_current(g: u64) -> Self {
        Self {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            reserved: 0,
            g,
        }
    }
}

/// Go processes whose goroutines are followed (tgid), marked by the
/// `runtime.newproc1` probe.
#[map]
pub static GO_PROCESSES: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The request each goroutine works for.
#[map]
pub static GO_SERVING: LruHashMap<GoroutineKey, RequestRef> =
    LruHashMap::with_max_entries(65_536, 0);

/// net/http `writeLoop` goroutines: the `*persistConn` each writes for.
#[map]
pub static GO_WRITERS: LruHashMap<GoroutineKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// The request each `*persistConn`'s current round trip is made for.
#[map]
pub static CONN_REQUESTS: LruHashMap<GoroutineKey, RequestRef> =
    LruHashMap::with_max_entries(16_384, 0);

/// True if the current process's goroutines are followed.
#[inline(always)]
pub fn is_go_process(tgid: u32) -> bool {
    // SAFETY: plain value lookup.
    may_use_tls_or_go(tgid) && unsafe { GO_PROCESSES.get(tgid) }.is_some()
}

/// The goroutine the current thread runs, if the process is Go: R14 of
/// its user registers (saved at the syscall or the uprobe's trap), found
/// as `PORTABLE` programs find them (`syscall_args::user_registers`).
#[inline(always)]
pub fn current<const PORTABLE: bool>() -> Option<GoroutineKey> {
    let key = GoroutineKey::of_current(0);
    if !is_go_process(key.tgid) {
        return None;
    }
    let g = read::kernel::<u64>(user_registers::<PORTABLE>()?, PT_REGS_R14).ok()?;
    (g != 0).then_some(GoroutineKey { g, ..key })
}

/// Goroutine `key` read the start of the request `span_id` on connection
/// `cookie`: it works for it from now on.
#[inline(always)]
pub fn serve(key: &GoroutineKey, cookie: u64, span_id: [u8; 8]) {
    let _ = GO_SERVING.insert(key, RequestRef { cookie, span_id }, 0);
}

/// The request goroutine `key` works for, not checked: a net/http
/// writer's comes from the round trip it writes for.
#[inline(always)]
pub fn request_of(key: &GoroutineKey) -> Option<RequestRef> {
    // SAFETY: plain value lookups, copied out.
    match unsafe { GO_WRITERS.get(key) }.copied() {
        Some(conn) => unsafe { CONN_REQUESTS.get(GoroutineKey { g: conn, ..*key }) }.copied(),
        None => unsafe { GO_SERVING.get(key) }.copied(),
    }
}

/// The live server request the current goroutine works for: `None` if
/// the process is not Go, the goroutine works for none, or its request
/// is over (its response started, or another request replaced it on its
/// connection).
#[inline(always)]
pub fn request_of_current<const PORTABLE: bool>() -> Option<ServerRequest> {
    request_of(&current::<PORTABLE>()?)?.live()
}
