//! Reports the data of one call, a socket syscall (`probes::socket_data`)
//! or an OpenSSL read or write (`probes::openssl`), as data events.
//!
//! A call is cut into pieces of at most `MAX_CAPTURE_BYTES`, one event
//! each, up to the call's capture limit; a last event reports what was not
//! captured by its length only. Userspace sees the pieces as consecutive
//! calls, so its byte accounting needs nothing new, and protocols that need
//! every byte of a large write (HTTP/2 frames batched by gRPC into one
//! `sendmsg` of up to hundreds of iovecs) get them. The copy loop is a
//! `bpf_loop` (Linux >= 5.17), which needs the object's BTF (see
//! agent-ebpf/.cargo/config.toml), or in the `PORTABLE` programs, for
//! kernels without it, a bounded loop of [`PORTABLE_STEPS`].

use agent_common::{
    drops::{CAPTURE_STEPS_EXHAUSTED, DATA_RINGBUF_FULL, PAYLOAD_READ_FAILED},
    scan::is_db_request_start,
    socket_data::{
        DIRECTION_INGRESS, MAX_CALL_CAPTURE_BYTES, MAX_CAPTURE_BYTES, ROLE_CLIENT, ROLE_SERVER,
        SOCKET_DATA_HEADER_LEN, SocketDataEvent,
    },
    trace_context::TraceContext,
};
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_probe_read_user, bpf_ringbuf_output},
};

use crate::{
    context::{
        close_request_head, end_server_request, forget_precision, is_request_start,
        is_response_start, start_client_request, take_server_request, take_server_request_update,
    },
    maps::{DATA_EVENTS, DataScratch, TRACKED_CONNS, config, count_drop, data_ring_flags},
    read,
    syscall_args::UserData,
};

/// Most steps a call can need: one per buffer, at most `UIO_MAXIOV`
/// (the kernel refuses calls with more iovecs), plus one per piece
/// boundary, which may cut a buffer in two. The loop is `bpf_loop`, whose
/// callback the verifier checks once whatever the bound, so it covers
/// every call (gRPC batches up to 260 iovecs into one `sendmsg`).
const MAX_STEPS: u32 = UIO_MAXIOV + (MAX_CALL_CAPTURE_BYTES / MAX_CAPTURE_BYTES) as u32;
/// Steps of the portable programs' copy loop (no `bpf_loop`): the verifier
/// walks a bounded loop once per step, so it covers far fewer buffers;
/// what a call has past them is reported by length and counted
/// (`CAPTURE_STEPS_EXHAUSTED`). Enough for every call but large batches
/// (a `writev` of head and body needs one step).
const PORTABLE_STEPS: u32 = 32;
/// `UIO_MAXIOV` (include/uapi/linux/uio.h).
const UIO_MAXIOV: u32 = 1024;
/// Piece offsets are masked with this; `DataScratch` has room past it.
const PIECE_MASK: u32 = MAX_CAPTURE_BYTES as u32 - 1;

/// First bytes of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const HTTP2_PREFACE_START: [u8; 8] = *b"PRI * HT";

/// The connection's own capture limit (`TrackedConn::capture_bytes`, 0 if
/// it has none), for callers that did not look the connection up already.
#[inline(always)]
pub fn own_capture_bytes(cookie: u64) -> u32 {
    // SAFETY: plain value lookup.
    unsafe { TRACKED_CONNS.get(cookie) }.map_or(0, |conn| conn.capture_bytes)
}

/// Bytes to capture per call: the connection's own limit (raised for
/// HTTP/2), else the configured default.
#[inline(always)]
fn capture_limit(own: u32) -> u32 {
    let limit = if own != 0 {
        own
    } else {
        config().capture_bytes
    };
    core::cmp::min(limit, MAX_CALL_CAPTURE_BYTES as u32)
}

/// Captures every byte of the connection's calls from now on.
#[inline(always)]
fn capture_all(cookie: u64) {
    if let Some(conn) = TRACKED_CONNS.get_ptr_mut(cookie) {
        // SAFETY: a valid map value pointer.
        unsafe { (*conn).capture_bytes = MAX_CALL_CAPTURE_BYTES as u32 };
    }
}

/// Sends the call whose identity is in `scratch.event` (header, cookie,
/// tuple, fd, direction, role, source): `total` bytes, of which up to the
/// connection's capture limit (`own_capture_bytes`, 0 for the default) are
/// copied from `data`. [`begin_call`] then [`finish_call`], for callers
/// with nothing to do between the two.
#[inline(always)]
pub fn report_call<const PORTABLE: bool>(
    scratch: *mut DataScratch,
    data: Option<&UserData>,
    total: u32,
    own_capture_bytes: u32,
) {
    begin_call(scratch, data, total, own_capture_bytes, 0);
    finish_call::<PORTABLE>(scratch, data, total, own_capture_bytes);
}

/// Starts a call's report: copies its first piece into the event's
/// payload, before anything is decided: the call's first bytes, which tell
/// a request or a response start and the HTTP/2 client preface, are read
/// from the copy, not by a read of their own (each user read is a helper
/// call with its own access checks, ~10% of a call's cost). `at_least`
/// bytes of the first buffer are copied whatever the capture limit (the
/// header scan's window, see `socket_call`), though only the limit's are
/// sent. Returns the bytes copied.
#[inline(always)]
pub fn begin_call(
    scratch: *mut DataScratch,
    data: Option<&UserData>,
    total: u32,
    own_capture_bytes: u32,
    at_least: u32,
) -> u32 {
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let cursor = unsafe { &mut (*scratch).cursor };
    set(&mut cursor.reported, 0);
    set(&mut cursor.filled, 0);
    set(&mut cursor.base, 0);
    set(&mut cursor.left, 0);
    set(&mut cursor.next_iovec, 0);
    set(&mut cursor.second_len, u64::MAX);
    let limit = capture_limit(own_capture_bytes);
    data.map_or(0, |data| {
        copy_first_piece(scratch, data, total, limit, at_least)
    })
}

/// Sends the call [`begin_call`] started, with the same arguments: the
/// rest of its data, up to the capture limit, and its span identity.
#[inline(always)]
pub fn finish_call<const PORTABLE: bool>(
    scratch: *mut DataScratch,
    data: Option<&UserData>,
    total: u32,
    own_capture_bytes: u32,
) {
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let (event, cursor) = unsafe { (&mut (*scratch).event, &mut (*scratch).cursor) };
    let mut limit = capture_limit(own_capture_bytes);
    let head_len = get(&cursor.filled);
    let head = event.payload.as_ptr();
    // SAFETY: the payload holds MAX_CAPTURE_BYTES >= 8 bytes; only the
    // `head_len` copied ones are looked at.
    if head_len >= 8
        && unsafe { core::ptr::read_unaligned(head.cast::<[u8; 8]>()) } == HTTP2_PREFACE_START
    {
        // The HTTP/2 client preface: every frame of the connection matters,
        // this call's included (the agent would learn it one call late).
        capture_all(event.socket_cookie);
        limit = MAX_CALL_CAPTURE_BYTES as u32;
    }
    event.trace = trace_context_of::<PORTABLE>(event, head_len);
    if let Some(data) = data {
        let filled = get(&cursor.filled);
        if filled >= MAX_CAPTURE_BYTES as u32 {
            output(scratch, filled, filled);
            set(&mut cursor.reported, filled);
            set(&mut cursor.filled, 0);
        }
        let mut args = StepArgs {
            scratch,
            iovecs: data.iovecs,
            iovec_count: if data.buffer != 0 {
                0
            } else {
                data.iovec_count
            },
            limit: core::cmp::min(limit, total),
        };
        // Most calls need one step after the first piece or none: a read
        // into one buffer is all in the first piece, a response written
        // as writev(head, body) needs its second buffer. That step runs
        // here; the loop (a helper call, and an indirect call per step)
        // only for what is left after it.
        if capture_step(&args) && capture_step_has_work(&args) {
            if PORTABLE {
                copy_rest_bounded(&args);
            } else {
                // SAFETY: `capture_step_callback` has bpf_loop's callback
                // signature and `args` outlives the call. It stops at the
                // end of the data; MAX_STEPS is never the bound that stops it.
                unsafe {
                    bpf_loop(
                        MAX_STEPS,
                        capture_step_callback as *mut c_void,
                        core::ptr::from_mut(&mut args).cast(),
                        0,
                    )
                };
            }
        }
        let filled = get(&cursor.filled);
        if filled > 0 {
            output(scratch, filled, filled);
            let reported = get(&cursor.reported);
            set(&mut cursor.reported, reported + filled);
        }
    }
    let reported = get(&cursor.reported);
    if reported < total {
        output(scratch, 0, total - reported);
    }
}

/// Copies the start of the call's first buffer into the event's payload:
/// up to the capture `limit`, but 8 bytes at least (enough to tell what
/// the call starts), and leaves the cursor where the copy loop goes on.
/// Up to `at_least` bytes are copied in any case; those past the limit
/// are left out of the event. Returns the bytes copied. If the first
/// buffer cannot be located, the loop reads the iovec again and counts
/// the failure.
#[inline(always)]
fn copy_first_piece(
    scratch: *mut DataScratch,
    data: &UserData,
    total: u32,
    limit: u32,
    at_least: u32,
) -> u32 {
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let (event, cursor) = unsafe { (&mut (*scratch).event, &mut (*scratch).cursor) };
    let (base, len) = if data.buffer != 0 {
        (data.buffer, u64::from(total))
    } else if data.iovec_count >= 2 {
        // The first two iovecs in one read (see `CaptureCursor::second_len`).
        let Ok([base, len, second_base, second_len]) = read::user::<[u64; 4]>(data.iovecs) else {
            return 0;
        };
        set(&mut cursor.second_base, second_base);
        set(&mut cursor.second_len, second_len);
        (base, len)
    } else {
        match data.first_segment() {
            Some(segment) => segment,
            None => return 0,
        }
    };
    let kept = core::cmp::max(core::cmp::min(limit, total), core::cmp::min(8, total));
    let want = core::cmp::max(kept, core::cmp::min(at_least, total));
    let copied = piece_bytes(core::cmp::min(len, u64::from(want)), 0);
    // SAFETY: copied <= MAX_CAPTURE_BYTES, the payload's size.
    if unsafe { bpf_probe_read_user(event.payload.as_mut_ptr().cast(), copied, base as *const _) }
        != 0
    {
        count_drop(PAYLOAD_READ_FAILED);
        // The loop has nothing left to read: the call is reported by length.
        set(&mut cursor.next_iovec, u64::MAX);
        return 0;
    }
    let kept = core::cmp::min(copied, kept);
    set(&mut cursor.base, base + u64::from(kept));
    set(&mut cursor.left, len - u64::from(kept));
    set(&mut cursor.next_iovec, u64::from(data.buffer == 0));
    set(&mut cursor.filled, kept);
    copied
}

/// Bytes to copy into the event being filled at `offset`: `want`, cut at
/// the end of the payload, bounded by a constant for the verifier past a
/// round trip the compiler cannot see through (it drops a bound it proves
/// redundant): older verifiers (6.1's) do not bound the minimum of two
/// unknown values. `offset < 4096` and the result `<= 4096` stay within
/// the payload and the room `DataScratch` keeps after it.
#[inline(always)]
fn piece_bytes(want: u64, offset: u32) -> u32 {
    let want = core::cmp::min(want, u64::from(MAX_CAPTURE_BYTES as u32 - offset)) as u32;
    core::cmp::min(forget_precision(&mut 0, want), MAX_CAPTURE_BYTES as u32)
}

/// What every step of the capture loop needs, on the stack of
/// [`report_call`] (`bpf_loop` hands its callback a stack pointer).
#[repr(C)]
struct StepArgs {
    /// The per-CPU scratch slot.
    scratch: *mut DataScratch,
    /// The iovec array, if the data is in one.
    iovecs: u64,
    /// Entries in it (0 for a single buffer).
    iovec_count: u64,
    /// Bytes of the call to copy at most.
    limit: u32,
}

/// The `bpf_loop` callback of [`report_call`]: 0 to go on, 1 to stop.
extern "C" fn capture_step_callback(_index: u64, args: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `StepArgs` report_call gave it.
    let args = unsafe { &*args.cast::<StepArgs>() };
    if capture_step(args) { 0 } else { 1 }
}

/// The copy loop without `bpf_loop`: at most [`PORTABLE_STEPS`] steps
/// (the first ran already), counted when data is left after them.
#[inline(always)]
fn copy_rest_bounded(args: &StepArgs) {
    let mut step = 1;
    while step < PORTABLE_STEPS {
        if !capture_step(args) {
            return;
        }
        step += 1;
    }
    if capture_step_has_work(args) {
        count_drop(CAPTURE_STEPS_EXHAUSTED);
    }
}

/// False when the copy loop is done: the capture limit reached, or the
/// data's end (the current buffer used up and no iovec left).
#[inline(always)]
fn capture_step_has_work(args: &StepArgs) -> bool {
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let cursor = unsafe { &(*args.scratch).cursor };
    get(&cursor.reported) + get(&cursor.filled) < args.limit
        && (get(&cursor.left) != 0 || get(&cursor.next_iovec) < args.iovec_count)
}

/// One step of [`report_call`]'s copy loop: copies from the current buffer
/// (reading the next iovec when it is used up) into the event being
/// filled, and sends the event when it is full. Returns false to stop.
///
/// Written for the verifier, which checks a `bpf_loop` callback again for
/// as long as the state it starts in differs from one it has seen: where
/// the data continues lives in map memory (`DataScratch::cursor`), which
/// the verifier cannot see through, so every path through a step ends in
/// the state the step started in and one check suffices.
#[inline(always)]
fn capture_step(args: &StepArgs) -> bool {
    if !capture_step_has_work(args) {
        return false;
    }
    let scratch = args.scratch;
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let (event, cursor) = unsafe { (&mut (*scratch).event, &mut (*scratch).cursor) };
    let reported = get(&cursor.reported);
    let filled = get(&cursor.filled);
    let mut left = get(&cursor.left);
    if left == 0 {
        let next_iovec = get(&cursor.next_iovec);
        let second_len = get(&cursor.second_len);
        let [start, len] = if next_iovec == 1 && second_len != u64::MAX {
            [get(&cursor.second_base), second_len]
        } else {
            // Base and length in one read: each read costs a helper call
            // and its access checks, more than the bytes.
            let Ok(iovec) = read::user::<[u64; 2]>(args.iovecs + next_iovec * 16) else {
                count_drop(PAYLOAD_READ_FAILED);
                return false;
            };
            iovec
        };
        set(&mut cursor.next_iovec, next_iovec + 1);
        set(&mut cursor.base, start);
        left = len;
    }
    let base = get(&cursor.base);
    let offset = filled & PIECE_MASK;
    let want = piece_bytes(
        core::cmp::min(left, u64::from(args.limit - reported - filled)),
        offset,
    );
    let dst = event.payload.as_mut_ptr().wrapping_add(offset as usize);
    // SAFETY: see `piece_bytes`.
    if unsafe { bpf_probe_read_user(dst.cast(), want, base as *const _) } != 0 {
        count_drop(PAYLOAD_READ_FAILED);
        return false;
    }
    set(&mut cursor.base, base + u64::from(want));
    set(&mut cursor.left, left - u64::from(want));
    let filled = filled + want;
    if filled >= MAX_CAPTURE_BYTES as u32 {
        output(scratch, filled, filled);
        set(&mut cursor.reported, reported + filled);
        set(&mut cursor.filled, 0);
    } else {
        set(&mut cursor.filled, filled);
    }
    true
}

/// Sends one event: `captured` payload bytes standing for `total` bytes of
/// the call. Only the call's first event carries its span identity.
#[inline(always)]
fn output(scratch: *mut DataScratch, captured: u32, total: u32) {
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let event = unsafe { &mut (*scratch).event };
    // Restated bound for the verifier: the output size must be provably small.
    let captured = core::cmp::min(captured, MAX_CAPTURE_BYTES as u32);
    event.captured_len = captured;
    event.total_len = total;
    let size = (SOCKET_DATA_HEADER_LEN as u32 + captured) as u64;
    // SAFETY: the event is SOCKET_DATA_HEADER_LEN + MAX_CAPTURE_BYTES bytes.
    let rc = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(DATA_EVENTS).cast_mut().cast(),
            core::ptr::from_mut(event).cast(),
            size,
            data_ring_flags(size),
        )
    };
    if rc != 0 {
        count_drop(DATA_RINGBUF_FULL);
    }
    // Clearing the flags is enough to mark it unset, and cheaper for the
    // verifier than clearing the whole struct (a byte loop in BPF).
    event.trace.flags = 0;
}

/// Writes a loop variable to map memory, where the verifier cannot see
/// it (see [`capture_step`]); also `probes::inject_h2`'s frame walk.
#[inline(always)]
pub fn set<T>(slot: &mut T, value: T) {
    // SAFETY: `slot` is a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(slot, value) }
}

/// Reads a loop variable back from map memory.
#[inline(always)]
pub fn get<T: Copy>(slot: &T) -> T {
    // SAFETY: `slot` is a valid reference.
    unsafe { core::ptr::read_volatile(slot) }
}

/// Span identity when this call starts a request, and the end of a served
/// request when a server thread starts its response; `head_len` bytes of
/// the call are in the event's payload.
#[inline(always)]
fn trace_context_of<const PORTABLE: bool>(event: &SocketDataEvent, head_len: u32) -> TraceContext {
    let tid = event.header.tid;
    let cookie = event.socket_cookie;
    let role = event.role;
    let payload = event.payload.as_ptr();
    if event.direction == DIRECTION_INGRESS {
        if role != ROLE_CLIENT {
            return if is_request_start(payload, head_len) {
                take_server_request::<PORTABLE>(tid, cookie)
            } else {
                take_server_request_update(cookie)
            };
        }
    } else {
        close_request_head(tid);
        let http = role != ROLE_SERVER && is_request_start(payload, head_len);
        // SAFETY: the payload holds MAX_CAPTURE_BYTES >= 8 bytes; the check
        // looks at `head_len` of them.
        let head = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 8]>()) };
        let db = role == ROLE_CLIENT && is_db_request_start(&head, head_len);
        if http || db {
            return start_client_request::<PORTABLE>(tid);
        } else if role != ROLE_CLIENT && is_response_start(payload, head_len) {
            end_server_request(cookie);
        }
    }
    TraceContext::default()
}
