//! Which request a Node.js client request is written for. A Node process
//! serves every request on one thread, so the thread says nothing; the
//! process itself knows, once the agent has evaluated its script in it
//! (`agent/src/probes/node/context.js`): each served request gets a token
//! that follows the work its handlers start, each client request takes the
//! token of the work that made it, and the script tells the kernel, by
//! looking up environment variables that are never set, whose names the
//! probe on libuv's `uv_os_getenv` reads (`probes::node_context`):
//! - request `token` came in on socket `fd` ([`serve`]): the token names
//!   the connection's live request;
//! - a write for `token` begins on this thread ([`begin_write`]), and ends
//!   ([`end_write`]): a client request starting in between is that
//!   request's child ([`writing`]).
//!
//! Never a wrong parent: what a token names is a [`RequestRef`], checked
//! against the live request when used, so work that outlives its request
//! gives no parent; a write for a token the kernel does not know gives
//! none either (not the thread rule, which would guess).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};

use crate::maps::{RequestRef, SERVER_CTX, SERVER_FDS, mark_tls_or_go, may_use_tls_or_go};

/// A token of a Node process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NodeToken {
    /// Process.
    pub tgid: u32,
    /// The script's number for a served request.
    pub token: u32,
}

/// The request each token names.
#[map]
pub static NODE_TOKENS: LruHashMap<NodeToken, RequestRef> = LruHashMap::with_max_entries(65_536, 0);

/// The request a thread is writing for now, by tid; a zero cookie: one the
/// kernel does not know (no parent).
#[map]
pub static NODE_WRITES: LruHashMap<u32, RequestRef> = LruHashMap::with_max_entries(16_384, 0);

/// Request `token` of the current process came in on its socket `fd`: the
/// token names the request live on that connection now (the script reports
/// it as the server starts the request, after the kernel read its head).
#[inline(always)]
pub fn serve(fd: u32, token: u32) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = NodeToken { tgid, token };
    // SAFETY: plain value lookups, copied out.
    let request = unsafe { SERVER_FDS.get((u64::from(tgid) << 32) | u64::from(fd)) }
        .copied()
        .and_then(|cookie| {
            unsafe { SERVER_CTX.get(cookie) }
                .copied()
                .filter(|request| request.active != 0)
                .map(|request| RequestRef {
                    cookie,
                    span_id: request.ctx.span_id,
                })
        });
    match request {
        Some(request) => {
            mark_tls_or_go(tgid);
            let _ = NODE_TOKENS.insert(key, request, 0);
        }
        // Not one the kernel saw: a reused token names nothing.
        None => {
            // SAFETY: plain value lookup.
            if unsafe { NODE_TOKENS.get(key) }.is_some() {
                let _ = NODE_TOKENS.remove(key);
            }
        }
    }
}

/// The current thread begins a write for request `token`.
#[inline(always)]
pub fn begin_write(token: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = NodeToken {
        tgid: (pid_tgid >> 32) as u32,
        token,
    };
    // SAFETY: plain value lookup, copied out.
    let request = unsafe { NODE_TOKENS.get(key) }
        .copied()
        .unwrap_or(RequestRef {
            cookie: 0,
            span_id: [0; 8],
        });
    let _ = NODE_WRITES.insert(pid_tgid as u32, request, 0);
}

/// The current thread's write ended.
#[inline(always)]
pub fn end_write() {
    let _ = NODE_WRITES.remove(bpf_get_current_pid_tgid() as u32);
}

/// The request thread `tid` of process `tgid` is writing for, if a Node
/// script said so (a zero cookie if it names none the kernel knows).
#[inline(always)]
pub fn writing(tgid: u32, tid: u32) -> Option<RequestRef> {
    if !may_use_tls_or_go(tgid) {
        return None;
    }
    // SAFETY: plain value lookup, copied out.
    unsafe { NODE_WRITES.get(tid) }.copied()
}
