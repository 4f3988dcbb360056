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

use agent_common::socket_data::{DIRECTION_EGRESS, DIRECTION_INGRESS};
use aya_ebpf::{macros::fexit, programs::FExitContext};

use crate::{maps::config, read, socket_call};

/// `tcp_sendmsg`'s (and `tcp_bpf_sendmsg`'s) return value: after its 3 arguments.
const SENDMSG_RET: usize = 3;
/// `tcp_recvmsg`'s `flags`, and its return value after its 5 arguments.
const RECVMSG_FLAGS: usize = 3;
const RECVMSG_RET: usize = 5;

#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> u32 {
    socket_call::report::<false>(ctx.arg(0), ctx.arg(SENDMSG_RET), 0, DIRECTION_EGRESS);
    0
}

/// Sends on a socket in a sockmap or sockhash (injection's
/// `CLIENT_SOCKETS`): its protocol is then `tcp_bpf`'s, whose sends skip
/// `tcp_sendmsg`. Without its psock (`sk_user_data`, gone while the socket
/// leaves the map) `tcp_bpf_sendmsg` calls `tcp_sendmsg`, whose program
/// reports the call: not again here.
#[fexit(function = "tcp_bpf_sendmsg")]
pub fn tcp_bpf_sendmsg_exit(ctx: FExitContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    if read::kernel::<u64>(sk, config().off_sk_user_data).is_ok_and(|psock| psock != 0) {
        socket_call::report::<false>(sk, ctx.arg(SENDMSG_RET), 0, DIRECTION_EGRESS);
    }
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit(ctx: FExitContext) -> u32 {
    socket_call::report::<true>(
        ctx.arg(0),
        ctx.arg(RECVMSG_RET),
        ctx.arg(RECVMSG_FLAGS),
        DIRECTION_INGRESS,
    );
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_capture(ctx: FExitContext) -> u32 {
    socket_call::report::<false>(
        ctx.arg(0),
        ctx.arg(RECVMSG_RET),
        ctx.arg(RECVMSG_FLAGS),
        DIRECTION_INGRESS,
    );
    0
}
