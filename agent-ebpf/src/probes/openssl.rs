//! TLS plaintext at OpenSSL's API: uprobes on the libssl files the agent
//! finds mapped by selected processes, attached once per file for all
//! processes (non-targets return at the first check).
//!
//! /// match-proto:openssl-1.1.1,3:include/openssl/ssl.h:
//! /// int SSL_read(SSL *ssl, void *buf, int num);
//! /// int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes);
//! /// int SSL_write(SSL *ssl, const void *buf, int num);
//! /// int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written);
//! /// int SSL_do_handshake(SSL *s);
//!
//! The entry probes record the call per thread (`SSL_CALLS`), which ties
//! the `SSL *` to a connection (see `crate::tls`). Return probes without a
//! tie use the clues left there: an untied `SSL *` whose read returns
//! plaintext is tied to the connection the thread read from last, if that
//! read was recent ([`LAST_READ_MAX_AGE_NS`]): memory-BIO programs hand
//! what they read to OpenSSL at once. An `SSL *` no clue ties stays untied:
//! its plaintext is not reported, and counted (`TLS_SOCKET_UNKNOWN`).
//! `SSL_free` unties the object, whose address a later connection's object
//! may get.
//!
//! The return probes report the plaintext as `SOURCE_TLS` data events on
//! the connection's cookie. A read is first scanned for a request's
//! `traceparent`, as `socket_call::sonde_scan_request` does for
//! sockets, then reported by [`tls_capture`] through a tail call: scan and
//! capture in one program are more than the verifier accepts.

use agent_common::{
    EventKind,
    drops::TLS_SOCKET_UNKNOWN,
    socket_data::{DIRECTION_EGRESS, DIRECTION_INGRESS, ROLE_CLIENT, SOURCE_TLS, TLS_CAPTURE_TAIL},
};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    capture::{own_capture_bytes, report_call},
    context::scan_received,
    maps::{
        DATA_SCRATCH, LAST_READ, LAST_UNTIED_SSL, SSL_CALLS, SSL_PROCESSES, SSL_SOCKETS, SslCall,
        SslKey, SslSocket, TLS_TAILS, UntiedSsl, count_drop, is_target, mark_tls_or_go,
    },
    read,
    syscall_args::UserData,
    tls::tie,
};

/// How long "the connection the thread read from last" may stand for an
/// untied `SSL *`: memory-BIO programs hand what they read to OpenSSL at once.
const LAST_READ_MAX_AGE_NS: u64 = 100_000_000;
/// [`SslCall::direction`] of a handshake.
const HANDSHAKE: u32 = 0;

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, DIRECTION_INGRESS, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, DIRECTION_INGRESS, true);
    0
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, DIRECTION_EGRESS, false);
    0
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, DIRECTION_EGRESS, true);
    0
}

#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, HANDSHAKE, false);
    0
}

/// Records the call the thread enters.
fn enter(ctx: &ProbeContext, direction: u32, ex: bool) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return None;
    }
    let call = SslCall {
        ssl: ctx.arg(0)?,
        buffer: if direction == HANDSHAKE {
            0
        } else {
            ctx.arg(1)?
        },
        len_out: if ex { ctx.arg(3)? } else { 0 },
        direction,
        reserved: 0,
    };
    mark_tls_or_go(tgid);
    let _ = SSL_PROCESSES.insert(tgid, 1, 0);
    // A handshake OpenSSL runs inside a read or write belongs to that call.
    let flags = if direction == HANDSHAKE {
        BPF_NOEXIST
    } else {
        BPF_ANY
    };
    let _ = SSL_CALLS.insert(pid_tgid as u32, call, flags.into());
    Some(())
}

/// `SSL_free(SSL *s)`: the object's tie ends with it.
#[uprobe]
pub fn ssl_free_enter(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(ssl) = ctx.arg::<u64>(0)
        && is_target(tgid)
    {
        let _ = SSL_SOCKETS.remove(SslKey {
            tgid,
            reserved: 0,
            ssl,
        });
    }
    0
}

#[uretprobe]
pub fn ssl_handshake_exit(_ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: plain value lookup, copied out.
    if let Some(call) = unsafe { SSL_CALLS.get(tid) }.copied()
        && call.direction == HANDSHAKE
    {
        let _ = SSL_CALLS.remove(tid);
        // Not by the last read: a client's first handshake step reads
        // nothing of its own connection, and the thread may just have read
        // another. The handshake message it made, written next, ties it.
        if socket_of((pid_tgid >> 32) as u32, call.ssl, tid, false).is_none() {
            remember_untied(tid, call.ssl);
        }
    }
    0
}

#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    read_exit::<false>(&ctx)
}

#[uretprobe]
pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
    let _ = capture::<false>(&ctx);
    0
}

/// Reached from [`ssl_read_exit`] by tail call.
#[uretprobe]
pub fn tls_capture(ctx: RetProbeContext) -> u32 {
    let _ = capture::<false>(&ctx);
    0
}

/// The same three for the portable capture path (kernels without
/// `bpf_loop`: see `socket_call::report`).
#[uretprobe]
pub fn ssl_read_exit_portable(ctx: RetProbeContext) -> u32 {
    read_exit::<true>(&ctx)
}

#[uretprobe]
pub fn ssl_write_exit_portable(ctx: RetProbeContext) -> u32 {
    let _ = capture::<true>(&ctx);
    0
}

/// Reached from [`ssl_read_exit_portable`] by tail call.
#[uretprobe]
pub fn tls_capture_portable(ctx: RetProbeContext) -> u32 {
    let _ = capture::<true>(&ctx);
    0
}

/// A read returns: scanned here, reported by the capture program the
/// agent put in `TLS_TAILS` (`tls_capture` or its portable twin; both in
/// one program are more than the verifier accepts).
#[inline(always)]
fn read_exit<const PORTABLE: bool>(ctx: &RetProbeContext) -> u32 {
    let _ = scan_read::<PORTABLE>(ctx);
    // SAFETY: `ctx` is this program's context; on success this does not return.
    unsafe { TLS_TAILS.tail_call(ctx, TLS_CAPTURE_TAIL) };
    // Only reached if the agent did not fill TLS_TAILS.
    let _ = SSL_CALLS.remove(bpf_get_current_pid_tgid() as u32);
    0
}

/// A read that may start a request: its server context, before capture.
#[inline(always)]
fn scan_read<const PORTABLE: bool>(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: plain value lookup, copied out.
    let call = unsafe { SSL_CALLS.get(tid) }.copied()?;
    if call.direction != DIRECTION_INGRESS {
        return None;
    }
    let len = returned_len(ctx, &call)?;
    let socket = socket_of((pid_tgid >> 32) as u32, call.ssl, tid, true)?;
    if socket.role == ROLE_CLIENT {
        return None;
    }
    scan_received::<PORTABLE>(tid, socket.cookie, call.buffer, u64::from(len))
}

/// Reports the plaintext of the call the thread returns from.
#[inline(always)]
fn capture<const PORTABLE: bool>(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: plain value lookup, copied out.
    let call = unsafe { SSL_CALLS.get(tid) }.copied()?;
    let _ = SSL_CALLS.remove(tid);
    if call.direction == HANDSHAKE {
        return None;
    }
    // 0 for none: an `Option` here leaves the verifier an uninitialised
    // register on the `None` path.
    let len = returned_len(ctx, &call).unwrap_or(0);
    let Some(socket) = socket_of(
        tgid,
        call.ssl,
        tid,
        len != 0 && call.direction == DIRECTION_INGRESS,
    ) else {
        // What the call made (a handshake message, the encrypted
        // plaintext) may be written out next: that ties the object.
        remember_untied(tid, call.ssl);
        if len != 0 {
            count_drop(TLS_SOCKET_UNKNOWN);
        }
        return None;
    };
    if len == 0 {
        return None;
    }
    let scratch = DATA_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let event = unsafe { &mut (*scratch).event };
    event.header.kind = EventKind::SocketData as u32;
    event.header.pid = tgid;
    event.header.tid = tid;
    event.header.reserved = 0;
    // SAFETY: always-safe helper.
    event.header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    event.socket_cookie = socket.cookie;
    event.tuple = socket.tuple;
    event.fd = u32::MAX;
    event.direction = call.direction;
    event.role = socket.role;
    event.source = SOURCE_TLS;
    report_call::<PORTABLE>(
        scratch,
        Some(&UserData::single(call.buffer)),
        len,
        own_capture_bytes(socket.cookie),
    );
    Some(())
}

/// Plaintext bytes the call moved, from its return value (or, for the
/// `_ex` variants, the count it wrote back); `None` if it failed.
#[inline(always)]
fn returned_len(ctx: &RetProbeContext, call: &SslCall) -> Option<u32> {
    let ret = ctx.ret::<i64>() as i32;
    let len = if call.len_out != 0 {
        if ret != 1 {
            return None;
        }
        read::user::<u64>(call.len_out).ok()?
    } else if ret > 0 {
        ret as u64
    } else {
        return None;
    };
    (len != 0).then_some(core::cmp::min(len, u64::from(u32::MAX)) as u32)
}

/// The connection under `ssl` in process `tgid`; else, if allowed, the one
/// thread `tid` just read from, which `ssl` is then tied to.
#[inline(always)]
fn socket_of(tgid: u32, ssl: u64, tid: u32, may_use_last_read: bool) -> Option<SslSocket> {
    let key = SslKey {
        tgid,
        reserved: 0,
        ssl,
    };
    // SAFETY: plain value lookups, copied out.
    if let Some(socket) = unsafe { SSL_SOCKETS.get(key) }.copied() {
        return Some(socket);
    }
    if !may_use_last_read {
        return None;
    }
    let last = unsafe { LAST_READ.get(tid) }.copied()?;
    // Used up, recent or not: one read ties one object.
    let _ = LAST_READ.remove(tid);
    // SAFETY: always-safe helper.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last.seen_ns) > LAST_READ_MAX_AGE_NS {
        return None;
    }
    tie(&key, &last);
    Some(last)
}

/// Remembers that thread `tid` last called OpenSSL on `ssl`, not tied yet.
#[inline(always)]
fn remember_untied(tid: u32, ssl: u64) {
    let untied = UntiedSsl {
        ssl,
        // SAFETY: always-safe helper.
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = LAST_UNTIED_SSL.insert(tid, untied, 0);
}
