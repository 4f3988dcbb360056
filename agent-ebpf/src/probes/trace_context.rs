//! The header scan of received requests: tp_btf `sock:sock_recv_length`
//! (Linux >= 6.2), attached before `socket_data`'s program on the same
//! tracepoint, which then reports the context this one made (see
//! `crate::context`). A program of its own because the verifier explores
//! each program's paths as a product: scan and capture together exceed its
//! limits.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    context::scan_received,
    maps::{SERVER_FDS, is_target},
    sock::{MSG_PEEK, tcp_family},
    syscall_args::SyscallArgs,
};

#[btf_tracepoint(function = "sock_recv_length")]
pub fn server_request_context(ctx: BtfTracePointContext) -> u32 {
    let _ = try_server_request_context(&ctx);
    0
}

fn try_server_request_context(ctx: &BtfTracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return None;
    }
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret < 4 || flags & MSG_PEEK != 0 || tcp_family(sk).is_none() {
        return None;
    }
    let args = SyscallArgs::current()?;
    let (buffer, buffer_len) = args.data.first_segment()?;
    // SAFETY: `sk` is the tracepoint's typed socket argument.
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
