//! Connection side and life cycle.
//!
//! - tp_btf `sock:inet_sock_set_state` (Linux >= 4.16):
//!   /// match-proto:v4.16:include/trace/events/sock.h:
//!   /// TRACE_EVENT(inet_sock_set_state, TP_PROTO(const struct sock *sk, const int oldstate, const int newstate))
//!   CLOSE -> SYN_SENT runs inside `connect()` in the caller's thread: a target
//!   connecting marks the socket as client. Any -> CLOSE of a tracked socket
//!   emits a close event (on the data ring, so it stays ordered after the
//!   connection's last data) and ends a server request left in flight on it. Fires on TCP state changes only, a few per
//!   connection.
//! - `syscalls:sys_exit_accept` / `sys_exit_accept4`: the returned fd is an
//!   accepted (server side) socket, named by a random serial until its
//!   first data resolves it to its cookie (a Python context made for it
//!   holds the serial: `pycontext`).
//!   Accept is rare next to read/write, so hooking it costs the node little.

use agent_common::{
    EventKind,
    socket_data::ROLE_CLIENT,
    socket_state::{ListenEvent, SocketCloseEvent, TrackedConn},
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    context::{forget_server_request, random_id},
    maps::{
        ACCEPTED_FDS, CONTROL_EVENTS, DATA_EVENTS, TRACKED_CONNS, config, count_drop,
        data_ring_flags, event_header, is_target,
    },
    pycontext::{self, ACCEPTED_IN_CONTEXT},
    read,
    sock::socket_id,
};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
/// Offset of `long ret` in the sys_exit_* tracepoint record.
const SYS_EXIT_RET: usize = 16;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    state_changed::<false>(&ctx)
}

/// For the portable capture programs (`probes::tcp_calls`): the same with
/// connections identified as they identify them.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_portable(ctx: BtfTracePointContext) -> u32 {
    state_changed::<true>(&ctx)
}

#[inline(always)]
fn state_changed<const PORTABLE: bool>(ctx: &BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    let id = || socket_id::<PORTABLE>(ctx.as_ptr().cast(), sk);
    if new_state == TCP_SYN_SENT && old_state == TCP_CLOSE {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if let (true, Some(cookie)) = (is_target(tgid), id()) {
            let _ = TRACKED_CONNS.insert(cookie, TrackedConn::new(ROLE_CLIENT), 0);
        }
    } else if new_state == TCP_LISTEN {
        emit_listen(sk);
    } else if new_state == TCP_CLOSE {
        let Some(cookie) = id() else {
            return 0;
        };
        // SAFETY: plain value lookup.
        if unsafe { TRACKED_CONNS.get(cookie) }.is_some() {
            let _ = TRACKED_CONNS.remove(cookie);
            // A request never answered is no longer in flight.
            forget_server_request(cookie);
            emit_close(cookie);
        }
    }
    0
}

fn emit_close(socket_cookie: u64) {
    let event = SocketCloseEvent {
        header: event_header(EventKind::SocketClose),
        socket_cookie,
    };
    if DATA_EVENTS
        .output::<SocketCloseEvent>(
            &event,
            data_ring_flags(size_of::<SocketCloseEvent>() as u64),
        )
        .is_err()
    {
        count_drop(agent_common::drops::DATA_RINGBUF_FULL);
    }
}

/// Any process, on the control ring: listen() is rare, and discovery
/// matches the port against its selectors.
fn emit_listen(sk: *const u8) {
    let Ok(port) = read::kernel::<u16>(sk, config().off_skc_num) else {
        return;
    };
    let event = ListenEvent {
        header: event_header(EventKind::SocketListen),
        port,
        reserved: [0; 6],
    };
    if CONTROL_EVENTS.output::<ListenEvent>(&event, 0).is_err() {
        count_drop(agent_common::drops::CONTROL_RINGBUF_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    remember_accepted(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    remember_accepted(&ctx);
    0
}

fn remember_accepted(ctx: &TracePointContext) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return;
    }
    // SAFETY: the offset is inside the sys_exit record.
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(SYS_EXIT_RET) }) else {
        return;
    };
    if fd >= 0 {
        let key = ((tgid as u64) << 32) | fd as u64;
        let mut serial = (u64::from_ne_bytes(random_id::<8>()) & !ACCEPTED_IN_CONTEXT) | 2;
        if pycontext::accepted(serial | ACCEPTED_IN_CONTEXT) {
            serial |= ACCEPTED_IN_CONTEXT;
        }
        let _ = ACCEPTED_FDS.insert(key, serial, 0);
    }
}
