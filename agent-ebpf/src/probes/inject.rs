//! Outgoing trace context: inserts `traceparent` into HTTP/1 requests that
//! targets send, without writing user memory (lockdown forbids
//! `bpf_probe_write_user`).
//!
//! - `sockops` on the cgroup v2 root (Linux >= 4.13): when a connection a
//!   target opened (marked client in `TRACKED_CONNS` by `probes::socket_state`)
//!   becomes established, its socket joins `CLIENT_SOCKETS` (and the
//!   HTTP/2 state an earlier connection with its addresses left is dropped).
//! - `sk_msg` on `CLIENT_SOCKETS` (Linux >= 4.17; push_data 4.20): runs on
//!   each send before the data is queued. If the message starts with a
//!   request line whose whole head is in the first bytes and carries no
//!   `traceparent`, a 70-byte header line is pushed in right after the
//!   request line, carrying the client span's ids; those ids are left in
//!   `INJECTED_CTX` for `probes::socket_data` to report with the same send.
//!   Anything else passes untouched. Content-Length is unaffected (the
//!   header is not body).
//! - Messages of HTTP/2 connections (one `probes::inject_h2` follows, or a
//!   target's whose client preface this message starts) are tail-called to
//!   that program, kept apart so that a kernel refusing it loses HTTP/2
//!   injection only (counted as `inject::H2_UNAVAILABLE`).

use agent_common::{
    scan::{HEX, has_newline},
    socket_data::ROLE_CLIENT,
    trace_context::{CTX_INJECTED, TraceContext, inject},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie,
        generated::{bpf_msg_pull_data, bpf_probe_read_kernel},
    },
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};

use crate::{
    context::{client_context, forget_precision, is_request_start, names_traceparent, zero_tail},
    http2,
    maps::{
        CLIENT_SOCKETS, H2_CONNS, H2_TAILS, INJECT_STATS, INJECTED_CTX, TRACE_SCRATCH,
        TRACKED_CONNS, config, is_target,
    },
};

const SK_PASS: u32 = 1;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
/// The head must end within this many bytes for injection to happen.
const HEAD_LIMIT: u32 = 512;
/// `traceparent: ` + 55-character value + CRLF.
const LINE_LEN: usize = 13 + 55 + 2;

#[sock_ops]
pub fn track_client_sockets(ctx: SockOpsContext) -> u32 {
    track::<false>(&ctx)
}

/// `track_client_sockets` where the capture programs identify connections
/// by socket address (`sock::socket_id::<true>`).
#[sock_ops]
pub fn track_client_sockets_portable(ctx: SockOpsContext) -> u32 {
    track::<true>(&ctx)
}

#[inline(always)]
fn track<const PORTABLE: bool>(ctx: &SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let Some(mut id) = connection_id::<PORTABLE>(ctx) else {
            return 1;
        };
        // SAFETY: plain value lookup.
        let is_client = unsafe { TRACKED_CONNS.get(id) }.is_some_and(|c| c.role == ROLE_CLIENT);
        if is_client {
            // SAFETY: `ops` is this program's context.
            let _ = CLIENT_SOCKETS.update(&mut id, unsafe { &mut *ctx.ops }, 0);
            // A connection's HTTP/2 state is kept by its addresses
            // (`http2::conn_key`): an earlier connection's entry with the
            // same addresses must not carry over into this one.
            // SAFETY: `ops` is this program's context.
            let key = unsafe { http2::context_tuple!(ctx.ops) };
            if http2::is_followed(&key) {
                let _ = H2_CONNS.remove(key);
            }
        }
    }
    1
}

/// The connection's key in `TRACKED_CONNS`, as the capture programs make
/// it (`sock::socket_id`): its cookie, or with `PORTABLE` its salted
/// address. The verifier allows no arithmetic on a socket pointer (`sk`,
/// Linux >= 5.10): stored in map memory, it reads back as a number.
#[inline(always)]
fn connection_id<const PORTABLE: bool>(ctx: &SockOpsContext) -> Option<u64> {
    if !PORTABLE {
        // SAFETY: the sock_ops context is a valid socket argument.
        return Some(unsafe { bpf_get_socket_cookie(ctx.ops.cast()) });
    }
    // SAFETY: `ops` is this program's context.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let scratch = TRACE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, ours for this program's run.
    let address = unsafe {
        let slot = &raw mut (*scratch).socket_address;
        core::ptr::write_volatile(slot, sk as u64);
        core::ptr::read_volatile(slot)
    };
    Some(address ^ config().socket_id_salt)
}

/// A followed connection's every message is walked, whoever sends it, or
/// the walk would lose its place; a new one is followed only for a target.
/// Out of line: its early returns then meet again in one verifier state,
/// where inlined they would make the verifier walk `try_inject` once for
/// each (past its instruction limit).
#[inline(never)]
fn goes_to_http2(ctx: &SkMsgContext) -> bool {
    http2::is_followed(&http2::conn_key(ctx))
        || (is_target((bpf_get_current_pid_tgid() >> 32) as u32) && http2::starts_with_preface(ctx))
}

/// Index of `probes::inject_h2` in `H2_TAILS`.
pub const H2_TAIL: u32 = 0;

#[sk_msg]
pub fn inject_traceparent(ctx: SkMsgContext) -> u32 {
    inject_message::<false>(&ctx)
}

/// `inject_traceparent` for the portable capture path (Linux 5.10-5.16):
/// HTTP/1 only (the HTTP/2 rewrite needs `bpf_loop`), and a Go caller's
/// goroutine found as `PORTABLE` programs find it.
#[sk_msg]
pub fn inject_traceparent_portable(ctx: SkMsgContext) -> u32 {
    inject_message::<true>(&ctx)
}

#[inline(always)]
fn inject_message<const PORTABLE: bool>(ctx: &SkMsgContext) -> u32 {
    if config().inject_traceparent != 0 {
        let outcome = if goes_to_http2(ctx) {
            if !PORTABLE {
                // SAFETY: `H2_TAILS` holds sk_msg programs only. Returns
                // only if the agent could not load the HTTP/2 program.
                unsafe { H2_TAILS.tail_call(ctx, H2_TAIL) };
            }
            inject::H2_UNAVAILABLE
        } else {
            try_inject::<PORTABLE>(ctx)
        };
        if let Some(counter) = INJECT_STATS.get_ptr_mut(outcome) {
            // SAFETY: per-CPU slot.
            unsafe { *counter += 1 };
        }
    }
    SK_PASS
}

fn try_inject<const PORTABLE: bool>(ctx: &SkMsgContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return inject::NOT_A_REQUEST;
    }
    let pull = core::cmp::min(ctx.size(), HEAD_LIMIT);
    // SAFETY: valid context; range within the message.
    if pull < 16 || unsafe { bpf_msg_pull_data(ctx.msg, 0, pull, 0) } != 0 {
        return inject::NOT_A_REQUEST;
    }
    // Scan a copy in map memory: bounds there are static, where every
    // packet access would need its own check against data_end.
    let Some(scratch) = TRACE_SCRATCH.get_ptr_mut(0) else {
        return inject::FAILED;
    };
    // SAFETY: per-CPU scratch, ours for this program's run.
    let scratch = unsafe { &mut *scratch };
    // `pull` is at most HEAD_LIMIT, so the compiler drops a second bound
    // of the length by it; older verifiers (6.1's) do not bound the min of
    // two unknowns. Past map memory the verifier cannot see the min either,
    // and sees the bound applied after it.
    let len = core::cmp::min(
        forget_precision(
            &mut scratch.slot,
            core::cmp::min((ctx.data_end() - ctx.data()) as u32, pull),
        ),
        HEAD_LIMIT,
    );
    // SAFETY: the destination holds HEAD_LIMIT bytes at least; the source
    // is the pulled message data.
    if len < 16
        || unsafe {
            bpf_probe_read_kernel(
                scratch.bytes.as_mut_ptr().cast(),
                len,
                ctx.data() as *const _,
            )
        } != 0
    {
        return inject::NOT_A_REQUEST;
    }
    zero_tail(scratch.bytes.as_mut_ptr(), len);
    let head = scratch.bytes.as_ptr();
    if !is_request_start(head, len) {
        return inject::NOT_A_REQUEST;
    }
    let line_end = match scan_head(head, len, &mut scratch.slot) {
        HeadScan::Inject { line_end } => line_end,
        HeadScan::AlreadyPresent => return inject::ALREADY_PRESENT,
        HeadScan::TooLong => return inject::HEAD_TOO_LONG,
    };
    let tid = pid_tgid as u32;
    let mut trace = client_context::<PORTABLE>(tid);
    trace.flags |= CTX_INJECTED;
    let insert_at = (line_end + 2) & (HEAD_LIMIT - 1);
    if ctx.push_data(insert_at, LINE_LEN as u32, 0).is_err() {
        return inject::FAILED;
    }
    // Make the head and the new line one linear piece: the message's pieces
    // leave as separate TCP segments under TCP_NODELAY, and a receiver that
    // reads the request line alone would not see the header in that read.
    let whole = core::cmp::min(ctx.size(), len + LINE_LEN as u32);
    // SAFETY: valid context; the range is within the grown message.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, whole, 0) } != 0 {
        return undo_push(ctx, insert_at);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let at = data + insert_at as usize;
    if at + LINE_LEN > end {
        return undo_push(ctx, insert_at);
    }
    write_line(at as *mut u8, &trace);
    let _ = INJECTED_CTX.insert(tid, trace, 0);
    inject::INJECTED
}

/// Removes the pushed (still zeroed) bytes again: a request is never sent
/// with a half-written line in it.
fn undo_push(ctx: &SkMsgContext, insert_at: u32) -> u32 {
    let _ = ctx.pop_data(insert_at, LINE_LEN as u32, 0);
    inject::FAILED
}

/// What the head of an outgoing request allows.
enum HeadScan {
    /// Insert after the request line, which ends (CRLF) at `line_end`.
    Inject { line_end: u32 },
    /// A `traceparent` header is there already.
    AlreadyPresent,
    /// The head does not end within the inspected bytes, or the request
    /// line does not end in CRLF: leave it alone.
    TooLong,
}

/// Two passes over the copied head, a word at a time (verifier-friendly,
/// see `context::scan_head`): the first newline ends the
/// request line; in the second, each newline either starts a `traceparent`
/// header or ends the head (it is followed by an empty line).
fn scan_head(head: *const u8, len: u32, slot: &mut u32) -> HeadScan {
    let Some(first) = first_newline(head, len) else {
        return HeadScan::TooLong;
    };
    let first = forget_precision(slot, first) & (HEAD_LIMIT - 1);
    // The byte before the newline, at an offset bounded by a mask of its
    // own: older verifiers (6.1's) do not learn `first >= 1` from
    // `first != 0`, and refuse `first - 1` as an offset.
    let before = forget_precision(slot, first.wrapping_sub(1)) & (HEAD_LIMIT - 1);
    // SAFETY: before < HEAD_LIMIT, inside the scratch buffer.
    if first == 0 || unsafe { *head.wrapping_add(before as usize) } != b'\r' {
        return HeadScan::TooLong;
    }
    // Whole words, the last one partly past `len`: zeroed there (zero_tail).
    let words = len.div_ceil(8);
    let mut word: u32 = 0;
    while word < words && word < HEAD_LIMIT / 8 {
        let base = (word * 8) & (HEAD_LIMIT - 1);
        // SAFETY: base < HEAD_LIMIT; the scratch has room past it.
        let bytes =
            unsafe { core::ptr::read_unaligned(head.wrapping_add(base as usize).cast::<u64>()) };
        if has_newline(bytes) {
            let mut k: u32 = 0;
            while k < 8 {
                let at = head.wrapping_add((base + k) as usize);
                // SAFETY: as above; `traceparent:` (12 bytes) more are in the scratch.
                let (byte, next) = unsafe {
                    (
                        *at,
                        core::ptr::read_unaligned(at.wrapping_add(1).cast::<[u8; 2]>()),
                    )
                };
                if byte == b'\n' {
                    if next == *b"\r\n" {
                        return HeadScan::Inject {
                            line_end: first - 1,
                        };
                    }
                    if names_traceparent(at.wrapping_add(1)) {
                        return HeadScan::AlreadyPresent;
                    }
                }
                k += 1;
            }
        }
        word += 1;
    }
    HeadScan::TooLong
}

/// Offset of the first `\n` in the first `len` bytes of `head`.
fn first_newline(head: *const u8, len: u32) -> Option<u32> {
    let words = len.div_ceil(8);
    let mut word: u32 = 0;
    while word < words && word < HEAD_LIMIT / 8 {
        let base = (word * 8) & (HEAD_LIMIT - 1);
        // SAFETY: base < HEAD_LIMIT; the scratch has room past it.
        let bytes = unsafe {
            core::ptr::read_unaligned(head.wrapping_add(base as usize).cast::<[u8; 8]>())
        };
        if has_newline(u64::from_le_bytes(bytes)) {
            let mut k = 0;
            while k < 8 {
                if bytes[k] == b'\n' {
                    return Some(base + k as u32);
                }
                k += 1;
            }
        }
        word += 1;
    }
    None
}

/// Writes `traceparent: 00-<trace>-<span>-<flags>\r\n` at `out`.
fn write_line(out: *mut u8, trace: &TraceContext) {
    let mut line = [0u8; LINE_LEN];
    line[..16].copy_from_slice(b"traceparent: 00-");
    let mut at = 16;
    for byte in trace.trace_id {
        line[at] = HEX[(byte >> 4) as usize];
        line[at + 1] = HEX[(byte & 0xf) as usize];
        at += 2;
    }
    line[at] = b'-';
    at += 1;
    for byte in trace.span_id {
        line[at] = HEX[(byte >> 4) as usize];
        line[at + 1] = HEX[(byte & 0xf) as usize];
        at += 2;
    }
    line[at] = b'-';
    line[at + 1] = HEX[((trace.trace_flags >> 4) & 0xf) as usize];
    line[at + 2] = HEX[(trace.trace_flags & 0xf) as usize];
    line[at + 3] = b'\r';
    line[at + 4] = b'\n';
    // SAFETY: the caller checked out + LINE_LEN <= data_end.
    unsafe { core::ptr::write_unaligned(out.cast::<[u8; LINE_LEN]>(), line) };
}
