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
//! Servers that create the task serving a connection when it opens,
//! before any request (asyncio streams `start_server`, aiohttp,
//! hypercorn), read requests in a context their handler does not descend
//! from; but both descend from the connection's own context: asyncio
//! accepts in the listener's callback and makes the connection's first
//! context right after (`_accept_connection2`'s task), and everything of
//! that connection (transport, protocol, handler task, reader callback)
//! is made in it or its copies. So the first copy a thread makes of the
//! context it accepted a connection in works for that connection
//! ([`PY_ACCEPTING`], [`PyWork::connection`]); a copy made from it while
//! the connection has a request in flight works for that request (the
//! handler's per-request task), one made between requests for none, one
//! made before the first request for the connection still (the handler
//! task), and a call made in it names the connection's request in flight.
//!
//! The current context is `PyThreadState.context`, reached through the
//! thread's `PyThreadState`, which the probe records per thread while the
//! thread holds the GIL ([`PY_THREADS`]: the address of that field).
//!
//! Never a wrong parent: a context in which requests of two connections
//! were read is marked shared and names none; what is kept is a
//! [`RequestRef`], checked against the live request when used, so a
//! context whose request is over gives its calls no parent; a connection
//! names its request only while one is in flight and none was ever read
//! while another was (`ServerRequest::pipelined`). A context that
//! knows nothing (shared, or made before the agent came) leaves the call
//! to the thread rule (`context::client_context`). Known limits: a task
//! a connection's handler starts before the first request (a per-connection
//! keep-alive pinger, say) works for the connection, so a call it makes
//! while a request of that connection is in flight is given that request;
//! and the kernel sees one request start per read, so a pipelined request
//! read together with the one before it goes unseen, and a call made for
//! it after a later request arrived would be given that later one
//! (clients do not pipeline today: browsers, curl, Go, Python and Node
//! clients wait for each response). A connection accepted by a thread not
//! known yet (no context copy since the probes came: [`PY_THREADS`]) is
//! not followed.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};

use crate::{
    maps::{RequestRef, SERVER_CTX, ServerRequest, may_use_tls_or_go},
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

/// What a context works for: a [`PY_SERVING`] value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyWork {
    /// [`REQUEST`], [`CONNECTION`], [`SHARED`] or [`NOTHING`].
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// [`REQUEST`]: the request. [`CONNECTION`]: `cookie` is the
    /// connection's accept serial (`maps::ACCEPTED_FDS`), not yet its
    /// cookie, which its first data brings ([`ACCEPTED_CONNS`]).
    pub request: RequestRef,
}

/// [`PyWork::kind`]: a request.
pub const REQUEST: u32 = 1;
/// [`PyWork::kind`]: a connection, whichever request it has in flight.
pub const CONNECTION: u32 = 2;
/// [`PyWork::kind`]: requests of several connections were read in this
/// context: it names none, and its calls keep the thread rule.
pub const SHARED: u32 = 3;
/// [`PyWork::kind`]: made for a connection between its requests, it works
/// for none of them: its calls get no parent.
pub const NOTHING: u32 = 4;

/// `maps::ACCEPTED_FDS`'s serial bit: accepted in a Python context, so
/// that its first data records its cookie in [`ACCEPTED_CONNS`].
pub const ACCEPTED_IN_CONTEXT: u64 = 1;

impl PyWork {
    const fn new(kind: u32, cookie: u64, span_id: [u8; 8]) -> Self {
        Self {
            kind,
            reserved: 0,
            request: RequestRef { cookie, span_id },
        }
    }

    /// Works for the connection accepted as `serial`.
    pub const fn connection(serial: u64) -> Self {
        Self::new(CONNECTION, serial, [0; 8])
    }

    /// The request this work's calls are made for, if it is still in
    /// flight.
    #[inline(always)]
    pub fn request(&self) -> Option<ServerRequest> {
        match self.kind {
            REQUEST => self.request.live(),
            CONNECTION => connection_entry(self.request.cookie)
                .map(|(_, server)| server)
                .filter(names_its_request),
            _ => None,
        }
    }

    /// What a copy of a context that works for this works for: the same,
    /// except that a connection's is its request in flight if it has one,
    /// none if it had requests but none is in flight, and still the
    /// connection before its first.
    #[inline(always)]
    pub fn for_copy(self) -> Self {
        if self.kind != CONNECTION {
            return self;
        }
        match connection_entry(self.request.cookie) {
            Some((cookie, server)) if names_its_request(&server) => {
                Self::new(REQUEST, cookie, server.ctx.span_id)
            }
            Some(_) => Self::new(NOTHING, 0, [0; 8]),
            None => self,
        }
    }
}

/// The cookie and last request of the connection accepted as `serial`,
/// once its first data told the cookie and a request was read on it.
#[inline(always)]
fn connection_entry(serial: u64) -> Option<(u64, ServerRequest)> {
    // SAFETY: plain value lookups, copied out.
    let cookie = unsafe { ACCEPTED_CONNS.get(serial) }.copied()?;
    unsafe { SERVER_CTX.get(cookie) }
        .copied()
        .map(|server| (cookie, server))
}

/// True if a connection's last request is the one its work serves: in
/// flight, on a connection that never had two at once.
#[inline(always)]
fn names_its_request(server: &ServerRequest) -> bool {
    server.active != 0 && server.pipelined == 0
}

/// Where each Python thread (`pid_tgid`) keeps its current context: the
/// address of its `PyThreadState.context`.
#[map]
pub static PY_THREADS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65_536, 0);

/// What each context works for.
#[map]
pub static PY_SERVING: LruHashMap<PyContextKey, PyWork> = LruHashMap::with_max_entries(65_536, 0);

/// A connection a Python thread (`pid_tgid`) just accepted: the context
/// it accepted it in, and its accept serial. Taken by the thread's next
/// context copy, which works for the connection if it copies that context.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Accepting {
    /// The `PyContext *` current at the accept.
    pub context: u64,
    /// The connection's serial (`maps::ACCEPTED_FDS`).
    pub serial: u64,
}

/// See [`Accepting`].
#[map]
pub static PY_ACCEPTING: LruHashMap<u64, Accepting> = LruHashMap::with_max_entries(16_384, 0);

/// The cookie of each connection accepted in a Python context, by accept
/// serial, written at its first data. Socket cookies are never reused, so
/// an entry left after the connection closed names no live request.
#[map]
pub static ACCEPTED_CONNS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

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
    let mut work = PyWork::new(REQUEST, cookie, span_id);
    // SAFETY: plain value lookup, copied out.
    if let Some(known) = unsafe { PY_SERVING.get(key) }.copied() {
        if known.kind == SHARED {
            return;
        }
        if known.kind == REQUEST && known.request.cookie != cookie && known.request.live().is_some()
        {
            work.kind = SHARED;
        }
    }
    let _ = PY_SERVING.insert(key, work, 0);
}

/// What context `key` works for, if it knows (a shared context does not).
#[inline(always)]
pub fn serves(key: &PyContextKey) -> Option<PyWork> {
    // SAFETY: plain value lookup, copied out.
    unsafe { PY_SERVING.get(key) }
        .copied()
        .filter(|work| work.kind != SHARED)
}

/// The current thread accepted the connection `serial` (its first use
/// tells its cookie): if it runs in a followed context, its next copy of
/// that context works for the connection. True if so.
#[inline(always)]
pub fn accepted(serial: u64) -> bool {
    let Some(key) = current() else {
        return false;
    };
    let accepting = Accepting {
        context: key.context,
        serial,
    };
    PY_ACCEPTING
        .insert(bpf_get_current_pid_tgid(), accepting, 0)
        .is_ok()
}
