//! Which request a Python `contextvars.Context` works for. An asyncio
//! loop serves many requests on one thread, so the thread says nothing
//! about the request a call serves; the context it runs in does. asyncio
//! runs every callback and every task step inside a `Context`: each
//! connection's reader callback in a context of its own, each task in the
//! context copied when it was created (`PyContext_CopyCurrent`). So:
//! - the context current when a request's start is read names the
//!   connection it came on ([`serve`]);
//! - a task created while that request is served (uvicorn's per-request
//!   task, `asyncio.gather`'s children, anyio's thread-pool calls)
//!   copies a context that works for it, and its copy works for it too
//!   (`probes::python_context`, at `PyContext_CopyCurrent`);
//! - a call made in a context names its request ([`serves`]).
//!
//! The current context is `PyThreadState.context`, reached through the
//! thread's `PyThreadState`, which the probe records per thread while the
//! thread holds the GIL ([`PY_THREADS`]: the address of that field).
//!
//! Never a wrong parent: a context in which requests of two connections
//! were read is marked shared and names none; what is kept is a
//! [`RequestRef`], checked against the live request when used, so a
//! context whose request is over gives its calls no parent. A context that
//! knows no request (shared, made before the agent came, or by a server
//! that creates its handler task when the connection opens, before any
//! request: asyncio streams, aiohttp) leaves the call to the thread rule
//! (`context::client_context`).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};

use crate::{
    maps::{RequestRef, may_use_tls_or_go},
    read,
};

/// A `Context` object of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyContextKey {
    /// Process.
    pub tgid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The `PyContext *`.
    pub context: u64,
}

impl PyContextKey {
    /// Context `context` of the current process.
    #[inline(always)]
    pub fn of_current(context: u64) -> Self {
        Self {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            reserved: 0,
            context,
        }
    }
}

/// A [`PY_SERVING`] value's cookie meaning "requests of several
/// connections were read in this context": it names none.
pub const SHARED: u64 = 0;

/// Where each Python thread (`pid_tgid`) keeps its current context: the
/// address of its `PyThreadState.context`.
#[map]
pub static PY_THREADS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65_536, 0);

/// The request each context works for (or [`SHARED`]).
#[map]
pub static PY_SERVING: LruHashMap<PyContextKey, RequestRef> =
    LruHashMap::with_max_entries(65_536, 0);

/// The context the current thread runs in, if its process's contexts are
/// followed and it has one (else the thread rule applies).
#[inline(always)]
pub fn current() -> Option<PyContextKey> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !may_use_tls_or_go((pid_tgid >> 32) as u32) {
        return None;
    }
    // SAFETY: plain value lookup, copied out.
    let slot = unsafe { PY_THREADS.get(pid_tgid) }.copied()?;
    let context = read::user::<u64>(slot).ok()?;
    (context != 0).then(|| PyContextKey::of_current(context))
}

/// The current thread read the start of the request `span_id` on
/// connection `cookie`: its context works for it, unless a request of
/// another connection read in the same context is still in flight (not an
/// asyncio connection's own context): then it is shared from now on.
/// A subprogram of its own: inlined, it changes how the compiler lays out
/// the request scan around it (`context::scan_copied`), into code the 6.1
/// verifier refuses (a stack slot read on a path that never wrote it).
#[inline(never)]
pub fn serve(cookie: u64, span_id: [u8; 8]) {
    let Some(key) = current() else {
        return;
    };
    let mut request = RequestRef { cookie, span_id };
    // SAFETY: plain value lookup, copied out.
    if let Some(known) = unsafe { PY_SERVING.get(key) }.copied() {
        if known.cookie == SHARED {
            return;
        }
        if known.cookie != cookie && known.live().is_some() {
            request.cookie = SHARED;
        }
    }
    let _ = PY_SERVING.insert(key, request, 0);
}

/// The request context `key` works for, if it knows one (not checked:
/// see [`RequestRef::live`]). A shared context knows none.
#[inline(always)]
pub fn serves(key: &PyContextKey) -> Option<RequestRef> {
    // SAFETY: plain value lookup, copied out.
    unsafe { PY_SERVING.get(key) }
        .copied()
        .filter(|request| request.cookie != SHARED)
}
