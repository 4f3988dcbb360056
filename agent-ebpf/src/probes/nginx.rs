//! nginx as a reverse proxy: the request each upstream send is for.
//!
//! An nginx worker serves many requests on one thread, so the thread's
//! in-flight count (`crate::context`) leaves most of its upstream calls
//! unlinked. nginx itself knows: every upstream request goes out through
//! `ngx_chain_writer(ngx_chain_writer_ctx_t *ctx, ...)` (exported by the
//! nginx executable, for new and keep-alive upstream connections alike),
//! whose `ctx->connection` is the upstream connection and whose `data` is
//! the request (`c->data = r` in `ngx_http_upstream_connect`). Its
//! downstream connection is `r->connection`, whose `fd` the kernel saw the
//! request arrive on (`SERVER_FDS`). A uprobe on entry records that
//! connection as the thread's current request (`NGINX_REQUEST`), which
//! `client_context` prefers; the uretprobe clears it.
//!
//! Only the leading fields of these structs are read, unchanged since
//! nginx 0.x: `ngx_chain_writer_ctx_t { out, last, connection, ... }`,
//! `ngx_connection_t { data, read, write, fd, ... }`,
//! `ngx_http_request_t { signature, connection, ... }`; the request's
//! `signature` ("HTTP") is checked, so another writer's data is skipped.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    maps::{NGINX_REQUEST, SERVER_FDS, is_target},
    read,
};

/// `NGX_HTTP_MODULE`, the `signature` of every `ngx_http_request_t`.
const NGX_HTTP_SIGNATURE: u32 = 0x5054_5448;
/// `ngx_chain_writer_ctx_t.connection`.
const WRITER_CONNECTION: u64 = 16;
/// `ngx_connection_t.data` (the request, on an upstream connection).
const CONNECTION_DATA: u64 = 0;
/// `ngx_connection_t.fd`.
const CONNECTION_FD: u64 = 24;
/// `ngx_http_request_t.connection` (after the 4-byte signature, aligned).
const REQUEST_CONNECTION: u64 = 8;

#[uprobe]
pub fn nginx_chain_writer_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx);
    0
}

#[uretprobe]
pub fn nginx_chain_writer_exit(_ctx: RetProbeContext) -> u32 {
    let _ = NGINX_REQUEST.remove(bpf_get_current_pid_tgid() as u32);
    0
}

fn enter(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return None;
    }
    let writer: u64 = ctx.arg(0)?;
    let upstream: u64 = read::user(writer + WRITER_CONNECTION).ok()?;
    let request: u64 = read::user(upstream + CONNECTION_DATA).ok()?;
    let signature: u32 = read::user(request).ok()?;
    if signature != NGX_HTTP_SIGNATURE {
        return None;
    }
    let downstream: u64 = read::user(request + REQUEST_CONNECTION).ok()?;
    let fd: i32 = read::user(downstream + CONNECTION_FD).ok()?;
    if fd < 0 {
        return None;
    }
    let key = (u64::from(tgid) << 32) | fd as u64;
    // SAFETY: plain value lookup, copied out.
    let cookie = unsafe { SERVER_FDS.get(key) }.copied()?;
    let _ = NGINX_REQUEST.insert(pid_tgid as u32, cookie, 0);
    Some(())
}
