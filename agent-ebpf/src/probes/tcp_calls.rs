//! Payload capture where the `sock_*_length` tracepoints do not exist
//! (Linux < 6.2): fexit on `tcp_sendmsg` and `tcp_recvmsg` (trampolines,
//! Linux >= 5.5 with BTF), which every TCP send and receive of a process
//! passes through (`inet_sendmsg`/`inet_recvmsg` call them through the
//! socket's protocol, IPv4 and IPv6 alike), and `tcp_bpf_sendmsg` for the
//! sends of sockets in a sockmap (injection's). Like the tracepoints they
//! fire for socket I/O only. What is reported is `crate::socket_call`'s.
//!
//! /// match-proto:v5.19:net/ipv4/tcp.c:
//! /// int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
//! /// int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)
//!
//! Before 5.19 `tcp_recvmsg` had a `nonblock` parameter before `flags`:
//! the agent checks the prototype in the kernel's BTF before it picks
//! these programs. As on the tracepoints, the agent attaches
//! `tcp_recvmsg_exit`, which also scans request heads, or
//! `tcp_recvmsg_capture` where the kernel refuses that one.
//!
//! The `_portable` programs are for kernels older still (5.10 to 5.16),
//! which lack `bpf_loop`, socket cookies in tracing programs and
//! `bpf_task_pt_regs`: they read that older `tcp_recvmsg`, identify a
//! connection by its socket's address (`crate::sock::socket_id`), and
//! copy and scan with bounded loops.
//!
//! /// match-proto:v5.10:net/ipv4/tcp.c:
//! /// int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock, int flags, int *addr_len)

use agent_common::socket_data::{DIRECTION_EGRESS, DIRECTION_INGRESS};
use aya_ebpf::{EbpfContext as _, macros::fexit, programs::FExitContext};

use crate::{maps::config, read, socket_call};

/// `tcp_sendmsg`'s (and `tcp_bpf_sendmsg`'s) return value: after its 3 arguments.
const SENDMSG_RET: usize = 3;
/// `tcp_recvmsg`'s `flags`, and its return value after its 5 arguments.
const RECVMSG_FLAGS: usize = 3;
const RECVMSG_RET: usize = 5;
/// The same before 5.19, with `nonblock` before `flags`.
const RECVMSG_NONBLOCK_FLAGS: usize = 4;
const RECVMSG_NONBLOCK_RET: usize = 6;

#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> u32 {
    report::<false, false>(&ctx, SENDMSG_RET, None, DIRECTION_EGRESS)
}

/// Sends on a socket in a sockmap or sockhash (injection's
/// `CLIENT_SOCKETS`): its protocol is then `tcp_bpf`'s, whose sends skip
/// `tcp_sendmsg`. Without its psock (`sk_user_data`, gone while the socket
/// leaves the map) `tcp_bpf_sendmsg` calls `tcp_sendmsg`, whose program
/// reports the call: not again here.
#[fexit(function = "tcp_bpf_sendmsg")]
pub fn tcp_bpf_sendmsg_exit(ctx: FExitContext) -> u32 {
    report_sockmap_send::<false>(&ctx)
}

/// `tcp_bpf_sendmsg_exit` for the portable capture path.
#[fexit(function = "tcp_bpf_sendmsg")]
pub fn tcp_bpf_sendmsg_portable(ctx: FExitContext) -> u32 {
    report_sockmap_send::<true>(&ctx)
}

#[inline(always)]
fn report_sockmap_send<const PORTABLE: bool>(ctx: &FExitContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    if read::kernel::<u64>(sk, config().off_sk_user_data).is_ok_and(|psock| psock != 0) {
        report::<false, PORTABLE>(ctx, SENDMSG_RET, None, DIRECTION_EGRESS);
    }
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit(ctx: FExitContext) -> u32 {
    report::<true, false>(&ctx, RECVMSG_RET, Some(RECVMSG_FLAGS), DIRECTION_INGRESS)
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_capture(ctx: FExitContext) -> u32 {
    report::<false, false>(&ctx, RECVMSG_RET, Some(RECVMSG_FLAGS), DIRECTION_INGRESS)
}

#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_portable(ctx: FExitContext) -> u32 {
    report::<false, true>(&ctx, SENDMSG_RET, None, DIRECTION_EGRESS)
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_portable(ctx: FExitContext) -> u32 {
    report::<true, true>(
        &ctx,
        RECVMSG_NONBLOCK_RET,
        Some(RECVMSG_NONBLOCK_FLAGS),
        DIRECTION_INGRESS,
    )
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_portable_capture(ctx: FExitContext) -> u32 {
    report::<false, true>(
        &ctx,
        RECVMSG_NONBLOCK_RET,
        Some(RECVMSG_NONBLOCK_FLAGS),
        DIRECTION_INGRESS,
    )
}

/// Reports the call: the socket is the first argument, the returned bytes
/// and the receive flags (if any) at the positions given.
#[inline(always)]
fn report<const SCAN: bool, const PORTABLE: bool>(
    ctx: &FExitContext,
    ret: usize,
    flags: Option<usize>,
    direction: u32,
) -> u32 {
    socket_call::report::<SCAN, PORTABLE>(
        ctx.as_ptr().cast(),
        ctx.arg(0),
        ctx.arg(ret),
        flags.map_or(0, |flags| ctx.arg(flags)),
        direction,
    );
    0
}
