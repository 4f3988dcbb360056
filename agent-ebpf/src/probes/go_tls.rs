//! TLS plaintext of Go programs, at `crypto/tls.(*Conn).Read` and what
//! `Write` hands to `writeRecordLocked`:
//! uprobes the agent puts on each Go executable a selected process runs
//! (`agent/src/probes/go`), at the functions' entries and at each of their
//! `RET` instructions (a uretprobe would put its trampoline address on a
//! goroutine stack, which the Go runtime copies when it grows).
//!
//! /// match-proto:go1.19,go1.23:src/crypto/tls/conn.go:
//! /// func (c *Conn) Read(b []byte) (int, error)
//! /// func (c *Conn) writeRecordLocked(typ recordType, data []byte) (int, error)
//! /// func (c *Conn) handshakeContext(ctx context.Context) (ret error)
//!
//! Go's register ABI (ABIInternal, amd64, Go >= 1.17): arguments in RAX,
//! RBX, RCX, ... (`c`, `b`'s pointer, its length), results in RAX, RBX...
//! (`n` first), the current goroutine's `g` in R14. A `Read`'s entry
//! records the call under the goroutine (`g` does not move while the
//! goroutine runs, and the goroutine may change threads inside the call);
//! the `RET` probe takes it back and reports the `n` bytes moved as
//! `SOURCE_TLS` data of the connection under `c`. What `Write` sends is
//! reported at the entry of `writeRecordLocked`, which `Write` calls with
//! its plaintext after the handshake and before any byte leaves: at
//! `Write`'s `RET` the peer may have answered and another goroutine
//! (net/http's `readLoop`) reported the answer already, and a response
//! seen before its request pairs with nothing; at `Write`'s entry the
//! handshake may not have run yet (`tls.Client(...).Write`), so the
//! descriptor could still name an earlier connection. The descriptor is
//! read from the `tls.Conn`
//! with the struct offsets the agent packs in each uprobe's attach cookie
//! (16 bits each: `tls.Conn.conn`, `net.TCPConn`'s `fd`, `netFD`'s
//! `Sysfd`), then the connection from `go::GO_TLS_FDS`. The handshake
//! probe marks the process as a Go TLS user before its first record moves
//! (see `go`).
//!
//! These events stand for the process, not a thread
//! (`context::GO_CONTEXT_KEY`): goroutines move between threads, so a
//! thread says nothing about which request a call serves; the goroutine
//! does (`goroutine`: the one that reads a request's start works for it).
//! A read is first scanned for a request's start and `traceparent`, then
//! reported by [`go_tls_capture`] through a tail call, as
//! `probes::openssl` does.

use agent_common::{
    EventKind,
    drops::TLS_SOCKET_UNKNOWN,
    socket_data::{DIRECTION_EGRESS, DIRECTION_INGRESS, ROLE_CLIENT, SOURCE_TLS},
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_attach_cookie},
    macros::{map, uprobe},
    maps::{LruHashMap, ProgramArray},
    programs::ProbeContext,
};

use crate::{
    capture::{own_capture_bytes, report_call},
    context::{GO_CONTEXT_KEY, scan_received},
    go::{GO_TLS_FDS, GO_TLS_PROCESS, fd_key},
    goroutine::GoroutineKey,
    maps::{DATA_SCRATCH, SSL_PROCESSES, SslSocket, count_drop, is_target, mark_tls_or_go},
    read,
    syscall_args::UserData,
};

/// A `Read` or `Write` a goroutine is in.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoTlsCall {
    /// The `*tls.Conn`.
    pub conn: u64,
    /// The plaintext buffer.
    pub buffer: u64,
    /// `DIRECTION_*`.
    pub direction: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Calls in progress, by goroutine.
#[map]
pub static GO_TLS_CALLS: LruHashMap<GoroutineKey, GoTlsCall> =
    LruHashMap::with_max_entries(16_384, 0);

/// The tail call of [`go_tls_read_return`] (index 0: [`go_tls_capture`]).
#[map]
pub static GO_TLS_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[uprobe]
pub fn go_tls_handshake_enter(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain value lookup.
    if is_target(tgid) && unsafe { SSL_PROCESSES.get(tgid) } != Some(&GO_TLS_PROCESS) {
        mark_tls_or_go(tgid);
        let _ = SSL_PROCESSES.insert(tgid, GO_TLS_PROCESS, 0);
    }
    0
}

#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    record_read(&ctx);
    0
}

/// TLS record type of application data (RFC 8446 section 5.1).
const RECORD_APPLICATION_DATA: u64 = 23;

/// At the entry of `writeRecordLocked(typ, data)`, which `Write` calls
/// for its plaintext once the handshake is done, before any byte leaves
/// (see the module's comment): reports `data` if it is application data.
#[uprobe]
pub fn go_tls_write_record_enter(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a uprobe's context is the user registers: `c` in RAX, the
    // record type (a byte) in RBX, `data`'s pointer and length in RCX, RDI.
    let (conn, typ, buffer, len) = unsafe {
        let regs = &*ctx.regs;
        (regs.rax, regs.rbx & 0xff, regs.rcx, regs.rdi)
    };
    if typ == RECORD_APPLICATION_DATA && is_target(tgid) {
        let call = GoTlsCall {
            conn,
            buffer,
            direction: DIRECTION_EGRESS,
            reserved: 0,
        };
        let _ = report(&ctx, &call, clamp_len(len as i64));
    }
    0
}

/// Records the `Read` the goroutine enters: `c` in RAX, `b`'s pointer in
/// RBX.
#[inline(always)]
fn record_read(ctx: &ProbeContext) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return;
    }
    // SAFETY: a uprobe's context is the user registers.
    let (g, conn, buffer) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax, (*ctx.regs).rbx) };
    let key = GoroutineKey {
        tgid,
        reserved: 0,
        g,
    };
    let call = GoTlsCall {
        conn,
        buffer,
        direction: DIRECTION_INGRESS,
        reserved: 0,
    };
    let _ = GO_TLS_CALLS.insert(key, call, 0);
}

/// At each `RET` of `Read`: scans a request's head, then reports.
#[uprobe]
pub fn go_tls_read_return(ctx: ProbeContext) -> u32 {
    let _ = scan_read(&ctx);
    // SAFETY: `ctx` is this program's context; on success this does not return.
    unsafe { GO_TLS_TAILS.tail_call(&ctx, 0) };
    // Only reached if the agent did not fill GO_TLS_TAILS.
    let _ = take_call(&ctx);
    0
}

/// Reached from [`go_tls_read_return`] by tail call.
#[uprobe]
pub fn go_tls_capture(ctx: ProbeContext) -> u32 {
    let _ = capture(&ctx);
    0
}

/// The goroutine's call and the key it is under.
#[inline(always)]
fn call_of(ctx: &ProbeContext) -> Option<(GoroutineKey, GoTlsCall)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = GoroutineKey {
        tgid,
        reserved: 0,
        // SAFETY: a uprobe's context is the user registers.
        g: unsafe { (*ctx.regs).r14 },
    };
    // SAFETY: plain value lookup, copied out.
    let call = unsafe { GO_TLS_CALLS.get(key) }.copied()?;
    Some((key, call))
}

/// Takes the goroutine's call out of [`GO_TLS_CALLS`].
#[inline(always)]
fn take_call(ctx: &ProbeContext) -> Option<GoTlsCall> {
    let (key, call) = call_of(ctx)?;
    let _ = GO_TLS_CALLS.remove(key);
    Some(call)
}

/// Bytes the call moved (its `n`), if any.
#[inline(always)]
fn returned_len(ctx: &ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the user registers.
    clamp_len(unsafe { (*ctx.regs).rax } as i64)
}

/// A Go `int` length as a byte count: none if negative.
#[inline(always)]
fn clamp_len(n: i64) -> u32 {
    if n <= 0 {
        0
    } else {
        core::cmp::min(n, i64::from(u32::MAX)) as u32
    }
}

/// A read that may start a request: its server context, before capture.
#[inline(always)]
fn scan_read(ctx: &ProbeContext) -> Option<()> {
    let (key, call) = call_of(ctx)?;
    let len = returned_len(ctx);
    if len == 0 {
        return None;
    }
    let socket = socket_of(ctx, key.tgid, call.conn)?;
    if socket.role == ROLE_CLIENT {
        return None;
    }
    scan_received::<false>(
        GO_CONTEXT_KEY | key.tgid,
        socket.cookie,
        call.buffer,
        u64::from(len),
    )
}

/// The connection under the `*tls.Conn` `conn` of process `tgid`.
#[inline(always)]
fn socket_of(ctx: &ProbeContext, tgid: u32, conn: u64) -> Option<SslSocket> {
    // SAFETY: the program's own context, for the attach cookie.
    let offsets = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let field = |shift: u32| (offsets >> shift) & 0xffff;
    // `tls.Conn.conn`'s data word (after the type word), a `*net.TCPConn`.
    let tcp_conn = read::user::<u64>(conn + field(0) + 8).ok()?;
    let net_fd = read::user::<u64>(tcp_conn + field(16)).ok()?;
    let fd = read::user::<i64>(net_fd + field(32)).ok()?;
    if !(0..i64::from(u32::MAX)).contains(&fd) {
        return None;
    }
    // SAFETY: plain value lookup, copied out.
    unsafe { GO_TLS_FDS.get(fd_key(tgid, fd as u32)) }.copied()
}

/// Reports the plaintext of the `Read` the goroutine returns from.
#[inline(always)]
fn capture(ctx: &ProbeContext) -> Option<()> {
    let call = take_call(ctx)?;
    report(ctx, &call, returned_len(ctx))
}

/// Reports `len` bytes of plaintext moved by `call`.
#[inline(always)]
fn report(ctx: &ProbeContext, call: &GoTlsCall, len: u32) -> Option<()> {
    if len == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(socket) = socket_of(ctx, tgid, call.conn) else {
        count_drop(TLS_SOCKET_UNKNOWN);
        return None;
    };
    let scratch = DATA_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let event = unsafe { &mut (*scratch).event };
    event.header.kind = EventKind::SocketData as u32;
    event.header.pid = tgid;
    // The context key stands for the thread (see the module's comment).
    event.header.tid = GO_CONTEXT_KEY | tgid;
    event.header.reserved = 0;
    // SAFETY: always-safe helper.
    event.header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    event.socket_cookie = socket.cookie;
    event.tuple = socket.tuple;
    event.fd = u32::MAX;
    event.direction = call.direction;
    event.role = socket.role;
    event.source = SOURCE_TLS;
    report_call::<false>(
        scratch,
        Some(&UserData::single(call.buffer)),
        len,
        own_capture_bytes(socket.cookie),
    );
    Some(())
}
