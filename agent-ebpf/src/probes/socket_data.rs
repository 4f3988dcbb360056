//! Payload capture: tp_btf `sock:sock_send_length` and `sock:sock_recv_length`
//! (Linux >= 6.2).
//!
//! /// match-proto:v6.2:include/trace/events/sock.h:
//! /// TRACE_EVENT(sock_send_length, TP_PROTO(struct sock *sk, int ret, int flags))
//! /// TRACE_EVENT(sock_recv_length, TP_PROTO(struct sock *sk, int ret, int flags))
//!
//! Both fire at the end of `sock_sendmsg`/`sock_recvmsg`, in the calling
//! thread, for socket I/O only: file and pipe I/O never reach them. They carry
//! the socket and the byte count but not the buffer, so the buffer is taken
//! from the syscall's own arguments (`bpf_task_pt_regs`): after a send the
//! user buffer still holds what was sent, after a receive it holds what was
//! received. Calls that are not one of the known syscalls (io_uring, sendfile)
//! still produce an event, with the length and no payload, so userspace keeps
//! its byte accounting right.

use agent_common::{
    EventKind,
    socket_data::{
        ConnTuple, DIRECTION_EGRESS, DIRECTION_INGRESS, ROLE_SERVER, ROLE_UNKNOWN, SOURCE_SOCKET,
    },
    socket_state::TrackedConn,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    capture::report_call,
    maps::{ACCEPTED_FDS, DATA_SCRATCH, TRACKED_CONNS, is_target},
    sock::{MSG_PEEK, read_tuple, tcp_family},
    syscall_args::SyscallArgs,
    tls::is_tls_socket,
};

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let _ = try_socket_data(&ctx, DIRECTION_EGRESS);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    let _ = try_socket_data(&ctx, DIRECTION_INGRESS);
    0
}

fn try_socket_data(ctx: &BtfTracePointContext, direction: u32) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || (direction == DIRECTION_INGRESS && flags & MSG_PEEK != 0) {
        return Ok(());
    }
    // SAFETY: `sk` is the tracepoint's typed socket argument.
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
