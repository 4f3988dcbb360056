//! One socket send or receive of a target, reported whichever kernel event
//! it was seen at (`probes::socket_data`'s tracepoints on Linux >= 6.2,
//! `probes::tcp_calls`' fexit programs on older kernels): the bytes as data
//! events ([`report`]) and, for a received request head, its server
//! context ([`scan_request`]). Inlining is left to the compiler, as before
//! these hooks shared it: forcing it grows the programs' stack past the
//! verifier's 512 bytes for a chain of calls.
//!
//! The events carry the socket and the byte count but not the buffer, so
//! the buffer is taken from the syscall's own arguments (`bpf_task_pt_regs`):
//! after a send the user buffer still holds what was sent, after a receive
//! it holds what was received. Calls that are not one of the known syscalls
//! (io_uring, sendfile) still produce an event, with the length and no
//! payload, so userspace keeps its byte accounting right.

use agent_common::{
    EventKind,
    socket_data::{ConnTuple, DIRECTION_INGRESS, ROLE_SERVER, ROLE_UNKNOWN, SOURCE_SOCKET},
    socket_state::TrackedConn,
};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns};

use crate::{
    capture::report_call,
    context::scan_received,
    maps::{ACCEPTED_FDS, DATA_SCRATCH, SERVER_FDS, TRACKED_CONNS, is_target},
    sock::{MSG_PEEK, read_tuple, tcp_family},
    syscall_args::SyscallArgs,
    tls::is_tls_socket,
};

/// Reports a call that moved `ret` bytes (`flags`: the receive's flags) on
/// socket `sk` in `direction` (`DIRECTION_EGRESS` or `DIRECTION_INGRESS`).
/// Errors are the probe-read helpers' (the call is then not reported).
pub fn report(sk: *const u8, ret: i32, flags: i32, direction: u32) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return Ok(());
    }
    if ret <= 0 || (direction == DIRECTION_INGRESS && flags & MSG_PEEK != 0) {
        return Ok(());
    }
    // SAFETY: `sk` is the hook's typed socket argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    // SAFETY: plain value lookup.
    let known = unsafe { TRACKED_CONNS.get(cookie) }.copied();
    // Only TCP sockets are ever tracked, with their tuple from the first
    // data on: known connections skip reading the socket.
    let tuple = match known {
        Some(conn) if conn.tuple.family != 0 => conn.tuple,
        _ => {
            let Some(family) = tcp_family(sk) else {
                return Ok(());
            };
            read_tuple(sk, family)?
        }
    };

    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let event = unsafe { &mut (*scratch).event };
    event.socket_cookie = cookie;
    event.header.kind = EventKind::SocketData as u32;
    event.header.pid = tgid;
    event.header.tid = pid_tgid as u32;
    event.header.reserved = 0;
    event.header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    event.tuple = tuple;
    event.direction = direction;
    event.source = SOURCE_SOCKET;

    let args = SyscallArgs::current();
    event.fd = args.as_ref().map_or(u32::MAX, |a| a.fd);
    let conn = match known {
        Some(conn) if conn.tuple.family != 0 => conn,
        _ => conn_state(cookie, known, tgid, event.fd, &tuple),
    };
    event.role = conn.role;
    if is_tls_socket(event, &conn, args.as_ref().map(|a| &a.data), ret as u32) {
        // Ciphertext: the OpenSSL probes report this connection's plaintext.
        return Ok(());
    }
    // The connection was just looked up: its capture limit comes with it.
    report_call(
        scratch,
        args.as_ref().map(|a| &a.data),
        ret as u32,
        conn.capture_bytes,
    );
    Ok(())
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
            let role = if unsafe { ACCEPTED_FDS.get(fd_key) }.is_some() {
                let _ = ACCEPTED_FDS.remove(fd_key);
                ROLE_SERVER
            } else {
                ROLE_UNKNOWN
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

/// The header scan of a receive of `ret` bytes on `sk` (see
/// `crate::context`): run before [`report`] for the same call, which then
/// reports the context this made.
pub fn scan_request(sk: *const u8, ret: i32, flags: i32) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return None;
    }
    // One byte may be a request's first, read alone (see
    // `context::scan_received`).
    if (ret != 1 && ret < 4) || flags & MSG_PEEK != 0 || tcp_family(sk).is_none() {
        return None;
    }
    let args = SyscallArgs::current()?;
    let (buffer, buffer_len) = args.data.first_segment()?;
    // SAFETY: `sk` is the hook's typed socket argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    scan_received(
        pid_tgid as u32,
        cookie,
        buffer,
        core::cmp::min(ret as u64, buffer_len),
    )?;
    // A request head came in on this descriptor: what `probes::nginx` looks
    // up. Usually already there (keep-alive): an update costs a map
    // element swap, a lookup does not.
    let fd_key = (pid_tgid & !0xffff_ffff) | u64::from(args.fd);
    // SAFETY: plain value lookup.
    if unsafe { SERVER_FDS.get(fd_key) } != Some(&cookie) {
        let _ = SERVER_FDS.insert(fd_key, cookie, 0);
    }
    Some(())
}
