//! The header scan of received requests: tp_btf `sock:sock_recv_length`
//! (Linux >= 6.2), attached before `socket_data`'s program on the same
//! tracepoint, which then reports the context this one made (see
//! `crate::context`). A program of its own because the verifier explores
//! each program's paths as a product: scan and capture together exceed its
//! limits.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::socket_call;

#[btf_tracepoint(function = "sock_recv_length")]
pub fn server_request_context(ctx: BtfTracePointContext) -> u32 {
    let _ = socket_call::scan_request(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}
