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
        ConnTuple, DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_INET, FAMILY_INET6,
        MAX_CAPTURE_BYTES, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SOCKET_DATA_HEADER_LEN,
        SOURCE_SOCKET, SocketDataEvent,
    },
    socket_state::TrackedConn,
    trace_context::TraceContext,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::bpf_probe_read_user, generated::bpf_ringbuf_output,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use super::syscall_args::SyscallArgs;
use super::trace_context::{
    close_request_head, end_server_request, is_request_start, is_response_start,
    start_client_request, take_server_request, take_server_request_update,
};
use crate::{
    maps::{ACCEPTED_FDS, DATA_EVENTS, DATA_SCRATCH, TRACKED_CONNS, config, count_drop, is_target},
    read,
};

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// Iovecs walked for readv/writev/sendmsg/recvmsg: HTTP heads are in the first.
const MAX_IOVECS: usize = 4;
const CAPTURE_MASK: u32 = (MAX_CAPTURE_BYTES as u32) - 1;

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
    let Some(family) = tcp_family(sk) else {
        return Ok(());
    };
    let cfg = config();

    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let event = unsafe { &mut (*scratch).event };
    // SAFETY: `sk` is the tracepoint's typed socket argument.
    event.socket_cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    event.header.kind = EventKind::SocketData as u32;
    event.header.pid = tgid;
    event.header.tid = pid_tgid as u32;
    event.header.reserved = 0;
    event.header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    event.tuple = read_tuple(sk, family)?;
    event.total_len = ret as u32;
    event.direction = direction;
    event.source = SOURCE_SOCKET;

    let args = SyscallArgs::current();
    event.fd = args.as_ref().map_or(u32::MAX, |a| a.fd);
    event.role = role_of(event.socket_cookie, tgid, event.fd);

    let limit = core::cmp::min(
        core::cmp::min(ret as u32, cfg.capture_bytes),
        MAX_CAPTURE_BYTES as u32,
    );
    let copied = match args {
        Some(args) => copy_payload(scratch.cast::<u8>(), &args, limit),
        None => 0,
    };
    // Restated bound for the verifier: the output size below must be provably small.
    let copied = core::cmp::min(copied, MAX_CAPTURE_BYTES as u32);
    event.captured_len = copied;
    let payload = scratch.cast::<u8>().wrapping_add(SOCKET_DATA_HEADER_LEN);
    event.trace = trace_context_of(event, payload, copied);

    let size = (SOCKET_DATA_HEADER_LEN as u32 + copied) as u64;
    // SAFETY: `scratch` holds at least SOCKET_DATA_HEADER_LEN + MAX_CAPTURE_BYTES bytes.
    let rc = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(DATA_EVENTS).cast_mut().cast(),
            scratch.cast(),
            size,
            0,
        )
    };
    if rc != 0 {
        count_drop(agent_common::drops::DATA_RINGBUF_FULL);
    }
    Ok(())
}

/// Span identity when this call starts a request, and the end of a served
/// request when a server thread starts its response.
fn trace_context_of(event: &SocketDataEvent, payload: *const u8, copied: u32) -> TraceContext {
    let tid = event.header.tid;
    let role = event.role;
    if event.direction == DIRECTION_INGRESS {
        if role != ROLE_CLIENT {
            return if is_request_start(payload, copied) {
                take_server_request(tid)
            } else {
                take_server_request_update(tid)
            };
        }
    } else {
        close_request_head(tid);
        if role != ROLE_SERVER && is_request_start(payload, copied) {
            return start_client_request(tid);
        } else if role != ROLE_CLIENT && is_response_start(payload, copied) {
            end_server_request(tid);
        }
    }
    TraceContext::default()
}

/// The address family of a TCP socket over IPv4 or IPv6; `None` for any
/// other socket.
#[inline(always)]
pub fn tcp_family(sk: *const u8) -> Option<u16> {
    let cfg = config();
    let family = read::kernel::<u16>(sk, cfg.off_skc_family).ok()?;
    let is_tcp = (family == FAMILY_INET || family == FAMILY_INET6)
        && read::kernel::<u16>(sk, cfg.off_sk_protocol).ok()? == IPPROTO_TCP;
    is_tcp.then_some(family)
}

/// The connection's side, learnt at connect (see `socket_state`) or accept.
fn role_of(cookie: u64, tgid: u32, fd: u32) -> u32 {
    // SAFETY: plain value lookups.
    if let Some(conn) = unsafe { TRACKED_CONNS.get(cookie) } {
        return conn.role;
    }
    let fd_key = ((tgid as u64) << 32) | fd as u64;
    let role = if unsafe { ACCEPTED_FDS.get(fd_key) }.is_some() {
        let _ = ACCEPTED_FDS.remove(fd_key);
        ROLE_SERVER
    } else {
        ROLE_UNKNOWN
    };
    let _ = TRACKED_CONNS.insert(cookie, TrackedConn { role, reserved: 0 }, 0);
    role
}

fn read_tuple(sk: *const u8, family: u16) -> Result<ConnTuple, i64> {
    let cfg = config();
    let mut tuple = ConnTuple {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: read::kernel(sk, cfg.off_skc_num)?,
        remote_port: u16::from_be(read::kernel(sk, cfg.off_skc_dport)?),
        family,
        reserved: 0,
    };
    if family == FAMILY_INET {
        let local: [u8; 4] = read::kernel(sk, cfg.off_skc_rcv_saddr)?;
        let remote: [u8; 4] = read::kernel(sk, cfg.off_skc_daddr)?;
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    } else {
        tuple.local_addr = read::kernel(sk, cfg.off_skc_v6_rcv_saddr)?;
        tuple.remote_addr = read::kernel(sk, cfg.off_skc_v6_daddr)?;
    }
    Ok(tuple)
}

/// Copies up to `limit` bytes of the call's data into the scratch event's
/// payload and returns how many were copied.
fn copy_payload(scratch: *mut u8, args: &SyscallArgs, limit: u32) -> u32 {
    if args.buffer != 0 {
        return copy_segment(scratch, 0, args.buffer, limit);
    }
    let mut copied: u32 = 0;
    for i in 0..MAX_IOVECS {
        if copied >= limit || i as u64 >= args.iovec_count {
            break;
        }
        let iov = args.iovecs + (i as u64) * 16;
        let (Ok(base), Ok(len)) = (read::user::<u64>(iov), read::user::<u64>(iov + 8)) else {
            count_drop(agent_common::drops::PAYLOAD_READ_FAILED);
            break;
        };
        let want = core::cmp::min(len, (limit - copied) as u64) as u32;
        let got = copy_segment(scratch, copied, base, want);
        copied += got;
        if got < want {
            break;
        }
    }
    copied
}

/// Copies `len` bytes from user `src` to payload offset `offset`; returns the
/// bytes copied (0 or `len`).
fn copy_segment(scratch: *mut u8, offset: u32, src: u64, len: u32) -> u32 {
    // Masks give the verifier bounds: offset < MAX, len <= MAX, and the
    // scratch has room after the payload. The volatile read stops LLVM from
    // dropping the mask when it can prove it redundant: the verifier cannot.
    // SAFETY: reading a local.
    let offset = unsafe { core::ptr::read_volatile(&offset) } & CAPTURE_MASK;
    let len = core::cmp::min(len, MAX_CAPTURE_BYTES as u32);
    if len == 0 {
        return 0;
    }
    let dst = scratch.wrapping_add(SOCKET_DATA_HEADER_LEN + offset as usize);
    // SAFETY: dst..dst+len is inside the scratch value (see DataScratch).
    let rc = unsafe { bpf_probe_read_user(dst.cast(), len, src as *const _) };
    if rc != 0 {
        count_drop(agent_common::drops::PAYLOAD_READ_FAILED);
        return 0;
    }
    len
}
