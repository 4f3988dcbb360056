//! Outgoing trace context for HTTP/2 (h2c): adds a `traceparent` field
//! to each request's HEADERS frame on a target's client connection,
//! rewriting the kernel's copy of the message in sk_msg (lockdown forbids
//! writing user memory).
//!
//! Tail-called by `probes::inject` (through `H2_TAILS`) for messages of a
//! connection whose client preface it saw, so a kernel that refuses this
//! program loses HTTP/2 injection only.
//!
//! - One bounded walk over the message's frame headers (a `bpf_loop`
//!   whose state is in map memory, checked once by the verifier); the
//!   bytes left of a frame that goes on in the next send are kept per
//!   connection (`H2_CONNS`), and so are the bytes of a frame header cut
//!   by a send's end, so the next walk starts right. A message with more
//!   frames than the walk follows loses the connection's place: nothing
//!   more is touched on it (counted).
//! - A request's HEADERS frame (odd stream id above every one seen, so not
//!   trailers) gets, at the end of its header block, a literal field
//!   without indexing with a new name (`agent_common::trace_context::h2_field`):
//!   no peer's HPACK dynamic table changes, so every other byte of the
//!   connection stays valid. The frame's length grows by the field's.
//! - Never a second `traceparent`: each request block is first scanned (a
//!   second `bpf_loop`, one step per byte) for the name `traceparent` as
//!   an HPACK literal, plain or Huffman-coded. An application's first
//!   `traceparent` on a connection must be such a literal (the name is not
//!   in the static table); later ones may name a dynamic table entry, so
//!   once one is seen, or a request block goes by unread, the connection
//!   gets no more fields. Skipped and counted: header blocks continued in
//!   CONTINUATION frames, padded frames, frames not whole in one send,
//!   frames that would pass 16 KiB (the smallest maximum frame size a peer
//!   may set), and such connections.
//! - Each stream gets a client span id, parented as `context::client_context`
//!   says; its ids go to the agent in an `Http2InjectedEvent` ahead of the
//!   send's data event, reserved before the message changes and
//!   submitted only once it did.

use agent_common::{
    EventKind,
    drops::DATA_RINGBUF_FULL,
    scan::HEX,
    socket_data::ConnTuple,
    trace_context::{
        CTX_AMBIGUOUS, CTX_INJECTED, Http2InjectedEvent, TraceContext,
        h2_field::{self, NAME_HUFFMAN, NAME_PLAIN},
        inject,
    },
};
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_loop, bpf_msg_pull_data},
    },
    macros::sk_msg,
    programs::SkMsgContext,
};

use crate::{
    capture::{get, set},
    context::client_context,
    http2::{PREFACE, conn_key, starts_with_preface},
    maps::{
        DATA_EVENTS, H2_CONNS, H2_SCRATCH, H2Conn, H2Walk, INJECT_STATS, count_drop,
        data_ring_flags, event_header, is_target,
    },
};

const SK_PASS: u32 = 1;
const FRAME_HEADER_LEN: u32 = 9;
const TYPE_HEADERS: u8 = 1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
/// SETTINGS_MAX_FRAME_SIZE's initial value, the least a peer may set.
const MIN_MAX_FRAME: u32 = 16_384;
const FIELD_LEN: u32 = h2_field::LEN as u32;
/// Frames followed in one message: a send of gRPC's (hundreds of
/// iovecs) holds far fewer frames than this.
const MAX_FRAMES: u32 = 8192;
/// Block offsets are masked with this (blocks are under 16 KiB).
const BLOCK_MASK: u32 = MIN_MAX_FRAME - 1;
/// A `ConnTuple` in 8-byte words.
const TUPLE_WORDS: usize = core::mem::size_of::<ConnTuple>() / 8;
const _: () = assert!(
    core::mem::size_of::<ConnTuple>().is_multiple_of(8)
        && core::mem::offset_of!(Http2InjectedEvent, tuple).is_multiple_of(8)
);
/// [`NAME_PLAIN`]'s first 8 bytes and last 4, and [`NAME_HUFFMAN`]'s
/// first 8, as the scan reads them.
const PLAIN_HEAD: u64 = u64::from_le_bytes([
    NAME_PLAIN[0],
    NAME_PLAIN[1],
    NAME_PLAIN[2],
    NAME_PLAIN[3],
    NAME_PLAIN[4],
    NAME_PLAIN[5],
    NAME_PLAIN[6],
    NAME_PLAIN[7],
]);
const PLAIN_TAIL: u32 =
    u32::from_le_bytes([NAME_PLAIN[8], NAME_PLAIN[9], NAME_PLAIN[10], NAME_PLAIN[11]]);
const HUFFMAN_HEAD: u64 = u64::from_le_bytes([
    NAME_HUFFMAN[0],
    NAME_HUFFMAN[1],
    NAME_HUFFMAN[2],
    NAME_HUFFMAN[3],
    NAME_HUFFMAN[4],
    NAME_HUFFMAN[5],
    NAME_HUFFMAN[6],
    NAME_HUFFMAN[7],
]);

#[sk_msg]
pub fn inject_traceparent_h2(ctx: SkMsgContext) -> u32 {
    walk_message(&ctx);
    SK_PASS
}

/// Follows the message's frames, rewriting request HEADERS on the way.
#[inline(always)]
fn walk_message(ctx: &SkMsgContext) {
    let key = conn_key(ctx);
    let Some(conn) = connection(ctx, &key) else {
        return;
    };
    // SAFETY: a valid map value pointer.
    let conn_ref = unsafe { &mut *conn };
    if conn_ref.lost != 0 {
        return;
    }
    let Some(walk) = H2_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, ours for this program's run.
    let walk_ref = unsafe { &mut *walk };
    walk_ref.key = key;
    let start = if conn_ref.partial != 0 {
        match finish_cut_header(ctx, conn_ref) {
            Some(start) => start,
            None => return,
        }
    } else {
        conn_ref.skip
    };
    set(&mut walk_ref.pos, start);
    set(&mut walk_ref.size, u32::MAX);
    let mut args = StepArgs {
        ctx: ctx.msg.cast(),
        walk,
        conn,
    };
    // SAFETY: `step_callback` has bpf_loop's callback signature and `args`
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_FRAMES,
            step_callback as *mut c_void,
            core::ptr::from_mut(&mut args).cast(),
            0,
        )
    };
    // `size` is set when the walk reached the end of the message.
    if get(&walk_ref.size) == u32::MAX && conn_ref.lost == 0 {
        lose(conn_ref);
    }
}

/// The connection's state, created when the message starts with the
/// client preface (`probes::inject` checked the sender is a target).
#[inline(always)]
fn connection(ctx: &SkMsgContext, key: &ConnTuple) -> Option<*mut H2Conn> {
    if let Some(conn) = H2_CONNS.get_ptr_mut(key) {
        return Some(conn);
    }
    if !starts_with_preface(ctx) {
        return None;
    }
    let fresh = H2Conn {
        skip: PREFACE.len() as u32,
        last_stream: 0,
        partial: 0,
        lost: 0,
        own: 0,
        reserved: 0,
        header: [0; 8],
    };
    H2_CONNS.insert(key, fresh, 0).ok()?;
    H2_CONNS.get_ptr_mut(key)
}

/// Where frames start is no longer known: the connection is left alone.
#[inline(always)]
fn lose(conn: &mut H2Conn) {
    conn.lost = 1;
    count(inject::H2_LOST);
}

/// The previous send ended `partial` bytes into a frame header: the rest
/// of it starts this message. Returns where the next frame header starts,
/// or `None` if this message ends within the header too (its bytes are
/// kept) or the connection is lost.
#[inline(always)]
fn finish_cut_header(ctx: &SkMsgContext, conn: &mut H2Conn) -> Option<u32> {
    let have = conn.partial & 7;
    let need = FRAME_HEADER_LEN - have;
    let size = ctx.size();
    let take = core::cmp::min(size, need);
    let Some(bytes) = read(ctx, 0, take) else {
        lose(conn);
        return None;
    };
    // The cut header's bytes, then this message's.
    let mut header = [0u8; 9];
    let mut i = 0;
    while i < 9 {
        header[i] = if (i as u32) < have {
            conn.header[i & 7]
        } else {
            bytes[(i - have as usize) & 7]
        };
        i += 1;
    }
    if take < need {
        // Still not whole: keep what there is.
        let mut i = 0;
        while i < 8 {
            conn.header[i] = header[i];
            i += 1;
        }
        conn.partial = have + take;
        return None;
    }
    conn.partial = 0;
    let (len, stream) = frame_fields(&header);
    if header[3] == TYPE_HEADERS {
        unread_headers(conn, stream, inject::H2_SPLIT);
    }
    Some(need + len)
}

/// A frame header's length and stream id.
#[inline(always)]
fn frame_fields(header: &[u8; 9]) -> (u32, u32) {
    let len = (u32::from(header[0]) << 16) | (u32::from(header[1]) << 8) | u32::from(header[2]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    (len, stream)
}

/// What each step of the walks needs, on [`walk_message`]'s stack.
#[repr(C)]
struct StepArgs {
    /// The `sk_msg_md`.
    ctx: *mut c_void,
    walk: *mut H2Walk,
    conn: *mut H2Conn,
}

/// The `bpf_loop` callback of [`walk_message`]: 0 to go on, 1 to stop.
extern "C" fn step_callback(_index: u64, args: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `StepArgs` walk_message gave it.
    let args = unsafe { &*args.cast::<StepArgs>() };
    if step(args) { 0 } else { 1 }
}

/// One frame: reads its header at `walk.pos`, rewrites it if it is a
/// request's HEADERS, and moves past it. Returns false at the message's
/// end, having kept in the connection where the next send's first frame
/// header starts.
#[inline(always)]
fn step(args: &StepArgs) -> bool {
    let ctx = SkMsgContext::new(args.ctx.cast());
    // SAFETY: map value pointers walk_message looked up for this run.
    let (walk, conn) = unsafe { (&mut *args.walk, &mut *args.conn) };
    let pos = get(&walk.pos);
    let size = ctx.size();
    if pos >= size {
        conn.skip = pos - size;
        set(&mut walk.size, size);
        return false;
    }
    let avail = size - pos;
    if avail < FRAME_HEADER_LEN {
        // A frame header cut by the end of the message.
        match read(&ctx, pos, avail) {
            Some(bytes) => {
                conn.header = [
                    bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                ];
                conn.partial = avail;
                conn.skip = 0;
                set(&mut walk.size, size);
            }
            None => lose(conn),
        }
        return false;
    }
    let Some(header) = read(&ctx, pos, FRAME_HEADER_LEN) else {
        lose(conn);
        return false;
    };
    let (len, stream) = frame_fields(&header);
    let mut next = pos + FRAME_HEADER_LEN + len;
    if header[3] == TYPE_HEADERS
        && on_headers(&ctx, args, pos, len, header[4], stream) == inject::H2_INJECTED
    {
        next += FIELD_LEN;
    }
    set(&mut walk.pos, next);
    true
}

/// Copies `len` (1..=9) bytes at `at` out of the message; the rest of the
/// 9 are zero.
#[inline(always)]
fn read(ctx: &SkMsgContext, at: u32, len: u32) -> Option<[u8; 9]> {
    if len == 0 || len > FRAME_HEADER_LEN {
        return None;
    }
    // SAFETY: valid context; the caller keeps the range within the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + len, 0) } != 0 {
        return None;
    }
    let data = ctx.data();
    let end = ctx.data_end();
    let mut out = [0u8; 9];
    if data + 9 <= end {
        // SAFETY: bounds checked just above.
        out = unsafe { core::ptr::read_unaligned(data as *const [u8; 9]) };
    } else {
        let mut i = 0;
        while i < 8 {
            if data + i + 1 > end {
                break;
            }
            // SAFETY: bounds checked just above.
            out[i] = unsafe { *((data + i) as *const u8) };
            i += 1;
        }
    }
    Some(out)
}

/// A request's HEADERS on `stream` went by without being read: the
/// application may have put its own `traceparent` name in the peer's
/// dynamic table there, so the connection gets no more fields.
#[inline(always)]
fn unread_headers(conn: &mut H2Conn, stream: u32, why: u32) {
    if stream & 1 == 1 && stream > conn.last_stream {
        conn.last_stream = stream;
        conn.own = 1;
        count(why);
    }
}

/// A HEADERS frame at `pos`: a request's first (odd stream id above every
/// one seen) is rewritten if it can be. Returns the counted outcome, or
/// `inject::NOT_A_REQUEST` for trailers and the server's streams.
#[inline(always)]
fn on_headers(
    ctx: &SkMsgContext,
    args: &StepArgs,
    pos: u32,
    len: u32,
    flags: u8,
    stream: u32,
) -> u32 {
    // SAFETY: map value pointers walk_message looked up for this run.
    let conn = unsafe { &mut *args.conn };
    if stream & 1 == 0 || stream <= conn.last_stream {
        return inject::NOT_A_REQUEST;
    }
    let unread = if flags & FLAG_END_HEADERS == 0 {
        inject::H2_CONTINUATION
    } else if flags & FLAG_PADDED != 0 {
        inject::H2_PADDED
    } else if pos + FRAME_HEADER_LEN + len > ctx.size() {
        inject::H2_SPLIT
    } else if len + FIELD_LEN > MIN_MAX_FRAME {
        inject::H2_TOO_BIG
    } else {
        inject::INJECTED
    };
    if unread != inject::INJECTED {
        unread_headers(conn, stream, unread);
        return unread;
    }
    conn.last_stream = stream;
    let pid_tgid = bpf_get_current_pid_tgid();
    // A process that shares a target's connection but is not one: the
    // block is still read, for the application's own `traceparent`.
    let target = is_target((pid_tgid >> 32) as u32);
    if conn.own == 0 && names_traceparent(args, pos + FRAME_HEADER_LEN, len) {
        conn.own = 1;
    }
    if !target {
        return inject::NOT_A_REQUEST;
    }
    let outcome = if conn.own != 0 {
        inject::H2_OWN_CONTEXT
    } else {
        rewrite(ctx, args, pos, len, stream, pid_tgid as u32)
    };
    count(outcome);
    outcome
}

/// True if the `len`-byte header block at `start` holds the name
/// `traceparent` as an HPACK literal (plain or Huffman-coded), or cannot
/// be read. A value that happens to hold those bytes reads as one too:
/// that only skips an injection.
#[inline(always)]
fn names_traceparent(args: &StepArgs, start: u32, len: u32) -> bool {
    let ctx = SkMsgContext::new(args.ctx.cast());
    if len < NAME_HUFFMAN.len() as u32 {
        return false;
    }
    // SAFETY: valid context; the block is within the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, start, start + len, 0) } != 0 {
        return true;
    }
    // SAFETY: map value pointer walk_message looked up for this run.
    let walk = unsafe { &mut *args.walk };
    set(&mut walk.found, 0);
    // SAFETY: `scan_callback` has bpf_loop's callback signature and `args`
    // outlives the call.
    unsafe {
        bpf_loop(
            len - NAME_HUFFMAN.len() as u32 + 1,
            scan_callback as *mut c_void,
            core::ptr::from_ref(args).cast_mut().cast(),
            0,
        )
    };
    get(&walk.found) != 0
}

/// The `bpf_loop` callback of [`names_traceparent`]: looks for the name
/// at block offset `index`. 0 to go on, 1 to stop (found).
extern "C" fn scan_callback(index: u64, args: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `StepArgs` names_traceparent gave it.
    let args = unsafe { &*args.cast::<StepArgs>() };
    let ctx = SkMsgContext::new(args.ctx.cast());
    let at = ctx.data() + (index as u32 & BLOCK_MASK) as usize;
    let end = ctx.data_end();
    // Compared as integers: an array comparison would call memcmp, which
    // BPF lacks.
    let found = if at + NAME_PLAIN.len() <= end {
        // SAFETY: bounds checked just above.
        let (head, tail) = unsafe {
            (
                core::ptr::read_unaligned(at as *const u64),
                core::ptr::read_unaligned((at + 8) as *const u32),
            )
        };
        (head == PLAIN_HEAD && tail == PLAIN_TAIL)
            || (head == HUFFMAN_HEAD && (tail & 0xff) as u8 == NAME_HUFFMAN[8])
    } else if at + NAME_HUFFMAN.len() <= end {
        // SAFETY: bounds checked just above.
        let (head, last) = unsafe {
            (
                core::ptr::read_unaligned(at as *const u64),
                *((at + 8) as *const u8),
            )
        };
        head == HUFFMAN_HEAD && last == NAME_HUFFMAN[8]
    } else {
        false
    };
    if found {
        // SAFETY: map value pointer walk_message looked up for this run.
        set(unsafe { &mut (*args.walk).found }, 1);
        1
    } else {
        0
    }
}

/// Appends the field to the header block of the HEADERS frame at `pos`
/// (length `len`, not padded) and grows the frame's length; reports the
/// ids to the agent once the message carries them.
#[inline(always)]
fn rewrite(ctx: &SkMsgContext, args: &StepArgs, pos: u32, len: u32, stream: u32, tid: u32) -> u32 {
    // SAFETY: per-CPU scratch, ours for this program's run.
    let walk = unsafe { &mut *args.walk };
    let mut trace = client_context::<false>(tid);
    trace.flags |= CTX_INJECTED;
    if trace.flags & CTX_AMBIGUOUS != 0 {
        count(inject::AMBIGUOUS_PARENT);
    }
    // Reserving takes no flags (the kernel refuses any); the wakeup choice
    // goes with the submit.
    let Some(mut entry) = DATA_EVENTS.reserve::<Http2InjectedEvent>(0) else {
        count_drop(DATA_RINGBUF_FULL);
        return inject::H2_FAILED;
    };
    // Filled in place: a whole event built on the stack first does not fit
    // beside the caller's frame (512 bytes for both).
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved entry; the tuple sits at an 8-byte
    // aligned offset of both structs (after `EventHeader`, and first in
    // `H2Walk`), and is 5 words long.
    unsafe {
        (*event).header = event_header(EventKind::Http2Injected);
        core::ptr::copy_nonoverlapping(
            core::ptr::addr_of!(walk.key).cast::<u64>(),
            core::ptr::addr_of_mut!((*event).tuple).cast::<u64>(),
            TUPLE_WORDS,
        );
        (*event).stream_id = stream;
        (*event).reserved = 0;
        (*event).trace = trace;
    }
    fill_field(&mut walk.field, &trace);
    let at = pos + FRAME_HEADER_LEN + len;
    if ctx.push_data(at, FIELD_LEN, 0).is_err() {
        entry.discard(0);
        return inject::H2_FAILED;
    }
    if !write_field(ctx, at, &walk.field) || !write_length(ctx, pos, len + FIELD_LEN) {
        // Never send the pushed bytes half-written.
        let _ = ctx.pop_data(at, FIELD_LEN, 0);
        entry.discard(0);
        return inject::H2_FAILED;
    }
    entry.submit(data_ring_flags(size_of::<Http2InjectedEvent>() as u64));
    inject::H2_INJECTED
}

/// Copies the field into the pushed room at `at`.
#[inline(always)]
fn write_field(ctx: &SkMsgContext, at: u32, field: &[u8; 72]) -> bool {
    // SAFETY: valid context; the range is within the grown message.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + FIELD_LEN, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + h2_field::LEN > ctx.data_end() {
        return false;
    }
    // SAFETY: bounds checked just above.
    unsafe {
        core::ptr::write_unaligned(
            data as *mut [u8; h2_field::LEN],
            core::ptr::read_unaligned(field.as_ptr().cast::<[u8; h2_field::LEN]>()),
        )
    };
    true
}

/// Rewrites the 24-bit length of the frame header at `pos`.
#[inline(always)]
fn write_length(ctx: &SkMsgContext, pos: u32, len: u32) -> bool {
    // SAFETY: valid context; the frame header is within the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, pos, pos + 3, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + 3 > ctx.data_end() {
        return false;
    }
    let bytes = [(len >> 16) as u8, (len >> 8) as u8, len as u8];
    // SAFETY: bounds checked just above.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; 3], bytes) };
    true
}

/// The field: `h2_field::PREFIX`, then `00-<trace id>-<span id>-<flags>`.
/// One byte at a time through volatile accesses: left free, the compiler
/// computes every digit first and spills them all, which takes more stack
/// than a `bpf_loop` callback has beside its caller.
#[inline(always)]
fn fill_field(out: &mut [u8; 72], trace: &TraceContext) {
    let out = out.as_mut_ptr();
    // SAFETY: every index written is below the field's 69 bytes.
    let put = |at: usize, byte: u8| unsafe { core::ptr::write_volatile(out.add(at), byte) };
    let hex = |at: usize, byte: &u8| {
        // SAFETY: a valid reference.
        let byte = unsafe { core::ptr::read_volatile(byte) };
        put(at, HEX[(byte >> 4) as usize]);
        put(at + 1, HEX[(byte & 0xf) as usize]);
    };
    let mut at = 0;
    while at < h2_field::PREFIX.len() {
        put(at, h2_field::PREFIX[at]);
        at += 1;
    }
    put(at, b'0');
    put(at + 1, b'0');
    put(at + 2, b'-');
    at += 3;
    for byte in &trace.trace_id {
        hex(at, byte);
        at += 2;
    }
    put(at, b'-');
    at += 1;
    for byte in &trace.span_id {
        hex(at, byte);
        at += 2;
    }
    put(at, b'-');
    hex(at + 1, &(trace.trace_flags as u8));
}

/// Counts one outcome.
#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = INJECT_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *counter += 1 };
    }
}
