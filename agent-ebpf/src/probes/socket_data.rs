//! Payload capture: tp_btf `sock:sock_send_length` and `sock:sock_recv_length`
//! (Linux >= 6.2), the capture hooks wherever they exist.
//!
//! /// match-proto:v6.2:include/trace/events/sock.h:
//! /// TRACE_EVENT(sock_send_length, TP_PROTO(struct sock *sk, int ret, int flags))
//! /// TRACE_EVENT(sock_recv_length, TP_PROTO(struct sock *sk, int ret, int flags))
//!
//! Both fire at the end of `sock_sendmsg`/`sock_recvmsg`, in the calling
//! thread, for socket I/O only: file and pipe I/O never reach them. What is
//! reported is `crate::socket_call`'s. One program per tracepoint: the
//! agent attaches `sock_recv_length`, which also scans request heads, or
//! `sock_recv_length_capture` where the kernel refuses that one.

use agent_common::socket_data::{DIRECTION_EGRESS, DIRECTION_INGRESS};
use aya_ebpf::{EbpfContext as _, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::socket_call;

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    report::<false>(&ctx, DIRECTION_EGRESS)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    report::<true>(&ctx, DIRECTION_INGRESS)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length_capture(ctx: BtfTracePointContext) -> u32 {
    report::<false>(&ctx, DIRECTION_INGRESS)
}

/// Both tracepoints pass (sk, ret, flags).
#[inline(always)]
fn report<const SCAN: bool>(ctx: &BtfTracePointContext, direction: u32) -> u32 {
    socket_call::report::<SCAN, false>(
        ctx.as_ptr().cast(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        direction,
    );
    0
}
