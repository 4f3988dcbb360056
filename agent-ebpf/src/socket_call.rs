//! One socket send or receive of a target, reported whichever kernel event
//! it was seen at (`probes::socket_data`'s tracepoints on Linux >= 6.2,
//! `probes::tcp_calls`' fexit programs on older kernels): the bytes as data
//! events ([`report`]) and, for a received request head, its server
//! context ([`sonde_scan_request`], on the first bytes the capture copied,
//! before it reports them). One program per hook: each program
//! run costs every socket call on the machine its dispatch, targets or
//! not. Inlining of [`report`] is left to the compiler: forcing it grows
//! the programs' stack past the verifier's 512 bytes for a chain of calls.
//!
//! The events carry the socket and the byte count but not the buffer, so
//! the buffer is taken from the syscall's own arguments (`crate::syscall_args`):
//! after a send the user buffer still holds what was sent, after a receive
//! it holds what was received. Calls that are not one of the known syscalls
//! (io_uring, sendfile) still produce an event, with the length and no
//! payload, so userspace keeps its byte accounting right.

use agent_common::{
    EventKind,
    socket_data::{
        ConnTuple, DIRECTION_INGRESS, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SOURCE_SOCKET,
    },
    socket_state::TrackedConn,
};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};

use crate::{
    capture::{begin_call, finish_call, report_call},
    context::{SCAN_LIMIT, scan_copied},
    maps::{ACCEPTED_FDS, DATA_SCRATCH, PendingCall, SERVER_FDS, TRACKED_CONNS, is_target},
    pycontext::{ACCEPTED_CONNS, ACCEPTED_IN_CONTEXT},
    sock::{MSG_PEEK, read_tuple, socket_id, tcp_family},
    syscall_args::{SyscallArgs, UserData},
    tls::is_tls_socket,
};

/// Reports a call that moved `ret` bytes (`flags`: the receive's flags) on
/// socket `sk`, the first of the hook's arguments `args`, in `direction`
/// (`DIRECTION_EGRESS` or `DIRECTION_INGRESS`); with `SCAN`, a receive
/// that may hold a request head is scanned first (the in-kernel context,
/// an optional feature: a program without it is what the agent falls back
/// to if the kernel refuses the scan). `PORTABLE` programs run on kernels
/// without `bpf_loop` (5.17), socket cookies in tracing programs (5.12)
/// or `bpf_task_pt_regs` (5.15): see `probes::tcp_calls`.
///
/// Inlined into each program, which calls the steps one after the other:
/// a frame held across the calls would add to theirs, and the verifier
/// allows 512 bytes for a chain of calls. Processes that are not targets
/// leave at the first check, before any call.
#[inline(always)]
pub fn report<const SCAN: bool, const PORTABLE: bool>(
    args: *const u8,
    sk: *const u8,
    ret: i32,
    flags: i32,
    direction: u32,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return;
    }
    if ret <= 0 || (direction == DIRECTION_INGRESS && flags & MSG_PEEK != 0) {
        return;
    }
    let Some(cookie) = socket_id::<PORTABLE>(args, sk) else {
        return;
    };
    if !prepare::<PORTABLE>(sk, cookie, pid_tgid, ret as u32, direction) {
        return;
    }
    if SCAN && direction == DIRECTION_INGRESS {
        begin_scanned();
        if PORTABLE {
            sonde_scan_request_portable();
        } else {
            sonde_scan_request();
        }
        send::<false, PORTABLE>();
    } else {
        send::<true, PORTABLE>();
    }
}

/// Fills the per-CPU scratch with the call's identity (`scratch.event`)
/// and where its data is (`scratch.call`): true if the call is to be
/// reported (not if the socket could not be read).
#[inline(never)]
fn prepare<const PORTABLE: bool>(
    sk: *const u8,
    cookie: u64,
    pid_tgid: u64,
    total: u32,
    direction: u32,
) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value lookup.
    let known = unsafe { TRACKED_CONNS.get(cookie) }.copied();
    // Only TCP sockets are ever tracked, with their tuple from the first
    // data on: known connections skip reading the socket.
    let tuple = match known {
        Some(conn) if conn.tuple.family != 0 => conn.tuple,
        _ => {
            let Some(Ok(tuple)) = tcp_family(sk).map(|family| read_tuple(sk, family)) else {
                return false;
            };
            tuple
        }
    };

    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let (event, call) = unsafe { (&mut (*scratch).event, &mut (*scratch).call) };
    event.socket_cookie = cookie;
    event.header.kind = EventKind::SocketData as u32;
    event.header.pid = tgid;
    event.header.tid = pid_tgid as u32;
    event.header.reserved = 0;
    event.header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    event.tuple = tuple;
    event.direction = direction;
    event.source = SOURCE_SOCKET;

    let args = SyscallArgs::current::<PORTABLE>();
    event.fd = args.as_ref().map_or(u32::MAX, |a| a.fd);
    let conn = match known {
        Some(conn) if conn.tuple.family != 0 => conn,
        _ => conn_state(cookie, known, tgid, event.fd, &tuple),
    };
    event.role = conn.role;
    if is_tls_socket(event, &conn, args.as_ref().map(|a| &a.data), total) {
        // Ciphertext: the OpenSSL probes report this connection's plaintext.
        return false;
    }
    let data = args.map(|a| a.data);
    *call = PendingCall {
        has_data: u32::from(data.is_some()),
        data: data.unwrap_or(UserData::single(0)),
        total,
        // The connection was just looked up: its capture limit comes with it.
        capture_bytes: conn.capture_bytes,
        copied: 0,
    };
    true
}

/// Sends the call [`prepare`] staged: the whole of it (`BEGIN`), or the
/// rest of a receive [`begin_scanned`] started.
#[inline(never)]
fn send<const BEGIN: bool, const PORTABLE: bool>() {
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let call = unsafe { &(*scratch).call };
    if BEGIN {
        report_call::<PORTABLE>(scratch, call.data(), call.total, call.capture_bytes);
    } else {
        finish_call::<PORTABLE>(scratch, call.data(), call.total, call.capture_bytes);
    }
}

/// Copies the first piece of the receive [`prepare`] staged into the event
/// (`capture::begin_call`), at least the header scan's window of it, which
/// [`sonde_scan_request`] then looks at in place: one user read of the
/// head instead of one for the scan and one for the capture (~80 ns of a
/// traced nginx request at saturation).
#[inline(never)]
fn begin_scanned() {
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let call = unsafe { &(*scratch).call };
    let copied = begin_call(
        scratch,
        call.data(),
        call.total,
        call.capture_bytes,
        SCAN_LIMIT,
    );
    // SAFETY: as above.
    unsafe { (*scratch).call.copied = copied };
}

/// The state of a connection seen for the first time, or tracked without
/// its tuple yet (marked client at connect, before its port was bound):
/// its side, learnt at connect (see `probes::socket_state`) or accept, stored with
/// the tuple.
fn conn_state(
    cookie: u64,
    known: Option<TrackedConn>,
    tgid: u32,
    fd: u32,
    tuple: &ConnTuple,
) -> TrackedConn {
    let mut conn = match known {
        Some(conn) => conn,
        None => {
            let fd_key = ((tgid as u64) << 32) | fd as u64;
            // SAFETY: plain value lookup.
            let role = match unsafe { ACCEPTED_FDS.get(fd_key) }.copied() {
                Some(serial) => {
                    let _ = ACCEPTED_FDS.remove(fd_key);
                    if serial & ACCEPTED_IN_CONTEXT != 0 {
                        let _ = ACCEPTED_CONNS.insert(serial, cookie, 0);
                    }
                    ROLE_SERVER
                }
                None => ROLE_UNKNOWN,
            };
            TrackedConn::new(role)
        }
    };
    conn.tuple = *tuple;
    match TRACKED_CONNS.get_ptr_mut(cookie) {
        // Only the tuple: the agent or the TLS probes may have changed the
        // rest since it was read.
        // SAFETY: a valid map value pointer.
        Some(entry) if known.is_some() => unsafe { (*entry).tuple = *tuple },
        _ => {
            let _ = TRACKED_CONNS.insert(cookie, conn, 0);
        }
    }
    conn
}

/// The header scan of the receive [`begin_scanned`] copied (see
/// `crate::context`), run before [`send`] reports it with the context
/// this made. A global function: the verifier checks it once, on its own,
/// where a static one would be walked again for every path through the
/// capture that follows it, more than it accepts. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sonde_scan_request() -> i32 {
    scan_request::<false>()
}

/// [`sonde_scan_request`] for the portable programs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sonde_scan_request_portable() -> i32 {
    scan_request::<true>()
}

#[inline(always)]
fn scan_request<const PORTABLE: bool>() -> i32 {
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let (event, call) = unsafe { (&mut (*scratch).event, &(*scratch).call) };
    // Client connections receive responses, never request heads. One byte
    // may be a request's first, read alone (see `context::scan_copied`).
    if event.role == ROLE_CLIENT || (call.total != 1 && call.total < 4) || call.copied == 0 {
        return 0;
    }
    let (tid, cookie) = (event.header.tid, event.socket_cookie);
    // The payload has MAX_CAPTURE_BYTES of room after it (`DataScratch`).
    let first_request =
        scan_copied::<PORTABLE>(tid, cookie, event.payload.as_mut_ptr(), call.copied);
    // The connection's first request came in on this descriptor: what
    // `probes::nginx` looks up. Written once per connection, not checked
    // on every request: the lookup, of an entry no other request touches,
    // missed the cache (~4% of a traced nginx request's kernel time). A
    // connection keeps its descriptor; one reused by a new connection is
    // written again at that one's first request.
    if first_request == Some(true) {
        let fd_key = (u64::from(event.header.pid) << 32) | u64::from(event.fd);
        let _ = SERVER_FDS.insert(fd_key, cookie, 0);
    }
    0
}
