//! Span identity for HTTP/1 requests, assigned in the kernel so that the ids
//! injected into outgoing requests (`probes::inject`) are the ids the agent
//! reports. Shared by the hooks that see requests: socket and TLS capture
//! (`capture`), the header scan (`socket_call`), injection and
//! connection close (`probes::socket_state`).
//!
//! - A request received by a target starts a server context: the
//!   `traceparent` found in the head (W3C rules), else a new trace; a new
//!   span id either way. Kept in `SERVER_CTX`, by connection, active until
//!   the response starts (the entry stays for the connection's next request
//!   until it closes); meanwhile the request is
//!   in flight on the thread that read it (`IN_FLIGHT`: a count and the XOR
//!   of the connections). The header scan ([`scan_copied`]) runs on the
//!   capture's copy of the read's first bytes, before the capture decides
//!   anything else, in a function the verifier checks apart
//!   (`socket_call::sonde_scan_request`: it explores a program's paths as
//!   a product, and scan and capture together exceed its limits); the
//!   capture then reports the context with the data.
//! - A request sent by a target gets a client span id, parented to the
//!   thread's server request if it has exactly one in flight
//!   (thread-per-request servers), or the ids `probes::inject` already put on
//!   the wire. With several in flight (an event loop) the cause is unknown:
//!   the call starts a trace of its own, flagged `CTX_AMBIGUOUS` and
//!   counted, never a guessed parent. A runtime that names the request a
//!   send is for (`nginx`) overrides both.
//! - Each new context gets its sampled flag here, from the configured head
//!   sampler (`agent_common::sampling`): what the agent exports and what
//!   `probes::inject` writes downstream are the same decision. A client span
//!   inherits its server span's flag (same trace id, same process: the
//!   same decision under every sampler).

use agent_common::{
    sampling,
    scan::{self, TRACEPARENT_VALUE_LEN, TraceParent, has_newline},
    trace_context::{
        CTX_AMBIGUOUS, CTX_FROM_HEADER, CTX_HAS_PARENT, CTX_UPDATE, CTX_VALID, TraceContext, inject,
    },
};
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32,
        generated::{bpf_loop, bpf_probe_read_user},
    },
    macros::map,
    maps::LruHashMap,
};

use crate::{
    goroutine,
    maps::{
        HEAD_OPEN, IN_FLIGHT, INJECT_STATS, INJECTED_CTX, InFlight, NGINX_REQUEST,
        SAMPLING_THRESHOLDS, SERVER_CTX, ServerRequest, TRACE_SCRATCH, TraceScratch, config,
    },
    nodecontext, pycontext,
};

/// Kernel-internal `flags` bit of a connection's entry: a context update
/// (`CTX_UPDATE`) made by a later read of a head, cleared when the capture
/// reports it, so it is reported with the read that brought it only.
const CTX_FRESH: u32 = 1 << 31;

/// Set in the "thread" of Go TLS events (`probes::go_tls`), and the key of
/// a Go process's requests in flight (`GO_CONTEXT_KEY | tgid`): goroutines
/// move between threads, so requests are counted per process and calls
/// are parented by goroutine (`goroutine`). Thread ids are below 2^22
/// (`PID_MAX_LIMIT`), so the keys never meet a thread's.
pub const GO_CONTEXT_KEY: u32 = 1 << 31;

/// How far into a captured head the `traceparent` header is looked for.
pub const SCAN_LIMIT: u32 = 1024;
/// Scan offsets are masked with this; `TRACE_SCRATCH` has room past it.
const MASK: u32 = SCAN_LIMIT - 1;
/// Length of `traceparent:`.
const NAME_LEN: u32 = 12;

/// True if `payload` (at least 4 readable bytes) starts like a request line.
#[inline(always)]
pub fn is_request_start(payload: *const u8, len: u32) -> bool {
    if len < 4 {
        return false;
    }
    // SAFETY: the caller guarantees 4 readable bytes.
    scan::is_request_start(unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 4]>()) })
}

/// True if `payload` starts like a response status line (`HTTP/1.`).
#[inline(always)]
pub fn is_response_start(payload: *const u8, len: u32) -> bool {
    if len < 7 {
        return false;
    }
    // SAFETY: the caller guarantees 7 readable bytes.
    scan::is_response_start(unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 7]>()) })
}

/// A random, non-zero id of N bytes (N a multiple of 4).
#[inline(always)]
pub fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    let mut i = 0;
    while i < N {
        // SAFETY: always-safe helper.
        let word = unsafe { bpf_get_prandom_u32() };
        id[i..i + 4].copy_from_slice(&word.to_le_bytes());
        i += 4;
    }
    id[0] |= 1;
    id
}

/// Looks at `len` bytes thread `tid` just received on connection `cookie`
/// at user address `buffer` (see [`scan_copied`]), read into the header
/// scan's scratch first. The TLS plaintext paths' (`probes::openssl`,
/// `probes::go_tls`).
#[inline(always)]
pub fn scan_received<const PORTABLE: bool>(
    tid: u32,
    cookie: u64,
    buffer: u64,
    len: u64,
) -> Option<()> {
    let len = core::cmp::min(len, u64::from(SCAN_LIMIT)) as u32;
    let scratch = TRACE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, ours for this program's run.
    let bytes = unsafe { (*scratch).bytes.as_mut_ptr() };
    let len = core::cmp::min(len, SCAN_LIMIT);
    // SAFETY: the destination holds SCAN_LIMIT bytes at least.
    if unsafe { bpf_probe_read_user(bytes.cast(), len, buffer as *const _) } != 0 {
        return None;
    }
    scan_copied::<PORTABLE>(tid, cookie, bytes, len).map(drop)
}

/// Looks at the `copied` bytes thread `tid` just received on connection
/// `cookie`, already in map memory at `bytes` (8-byte aligned, writable
/// for at least 72 bytes past them): a request start gets a server
/// context (also one whose first byte came alone just before, see
/// [`LONE_BYTE`]), the rest of a head may bring its `traceparent`. The
/// first `SCAN_LIMIT` bytes are looked at. Shared by the socket path
/// (`socket_call`, on the capture's own copy) and [`scan_received`].
/// `PORTABLE`: for kernels without `bpf_loop` (see `socket_call::report`).
/// `Some(true)` if the bytes start the connection's first request, `None`
/// if they are no part of a request head.
#[inline(always)]
pub fn scan_copied<const PORTABLE: bool>(
    tid: u32,
    cookie: u64,
    bytes: *mut u8,
    copied: u32,
) -> Option<bool> {
    let scratch = TRACE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, ours for this program's run.
    let scratch = unsafe { &mut *scratch };
    scratch.fresh_cookie = 0;
    zero_tail(bytes, copied);
    let len = core::cmp::min(copied, SCAN_LIMIT);
    let payload = bytes.cast_const();
    if len == 1 {
        // SAFETY: one byte was copied.
        keep_lone_byte(cookie, unsafe { *payload });
        return None;
    }
    let starts_request = is_request_start(payload, len);
    let case = if starts_request {
        START
    } else if split_request_start(cookie, payload, len) {
        SPLIT_START
    } else {
        0
    };
    // A later read of a head whose first read had no traceparent: clients
    // may write the request line and the headers separately.
    // SAFETY: plain value lookup.
    let continues_head = case == 0 && unsafe { HEAD_OPEN.get(tid) } == Some(&cookie);
    if case == 0 && !continues_head {
        return None;
    }
    // One scan and one parse, shared by both cases: each inlined copy would
    // multiply what the verifier walks. Which case this is waits in map
    // memory meanwhile, so the verifier walks the scan once, not once per
    // case (see forget_precision).
    // SAFETY: writing our own per-CPU scratch.
    unsafe { core::ptr::write_volatile(&mut scratch.case, case) };
    let search = scan_head::<PORTABLE>(scratch, payload, len);
    let parent = parent_from(payload, search, &mut scratch.slot);
    if search == HeadSearch::Open && parent.is_none() {
        let _ = HEAD_OPEN.insert(tid, cookie, 0);
    } else {
        close_request_head(tid);
    }
    // SAFETY: reading back the value stored above.
    let case = unsafe { core::ptr::read_volatile(&scratch.case) };
    if case != 0 {
        return Some(start_server_request::<PORTABLE>(
            scratch,
            tid,
            cookie,
            parent,
            case == SPLIT_START,
        ));
    }
    if let Some(parent) = parent {
        update_server_request(cookie, &parent);
    }
    Some(false)
}

/// `TraceScratch::case` of a read that starts a request.
const START: u32 = 1;
/// Likewise, of a read that goes on from a request's lone first byte.
const SPLIT_START: u32 = 2;

/// The first byte of a request, read alone, by connection: Go's net/http
/// server reads one byte ahead on a keep-alive connection while it serves
/// a request (`connReader.backgroundRead`), which may take the first byte
/// of the next request; the rest of its head follows in the next read.
#[map]
static LONE_BYTE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

/// A read of one byte on connection `cookie`: kept if it may start a
/// request (methods are upper case).
#[inline(always)]
fn keep_lone_byte(cookie: u64, byte: u8) {
    if byte.is_ascii_uppercase() {
        let _ = LONE_BYTE.insert(cookie, byte, 0);
    }
}

/// True if the read at `payload` (`len` bytes) completes the start of a
/// request with the lone byte read before it on connection `cookie`.
#[inline(always)]
fn split_request_start(cookie: u64, payload: *const u8, len: u32) -> bool {
    // SAFETY: plain value lookup, copied out.
    let Some(first) = (unsafe { LONE_BYTE.get(cookie) }).copied() else {
        return false;
    };
    let _ = LONE_BYTE.remove(cookie);
    if len < 3 {
        return false;
    }
    // SAFETY: the caller guarantees `len` >= 3 readable bytes.
    let rest: [u8; 3] = unsafe { core::ptr::read_unaligned(payload.cast()) };
    scan::is_request_start([first, rest[0], rest[1], rest[2]])
}

/// The rest of the head brought the parent: the connection's request joins it.
#[inline(always)]
fn update_server_request(cookie: u64, parent: &TraceParent) {
    let Some(request) = SERVER_CTX.get_ptr_mut(cookie) else {
        return;
    };
    // SAFETY: a valid map value pointer.
    if unsafe { (*request).active } == 0 {
        return;
    }
    // SAFETY: a valid map value pointer.
    let ctx = unsafe { &mut (*request).ctx };
    ctx.trace_id = parent.trace_id;
    ctx.parent_span_id = parent.span_id;
    ctx.trace_flags = sampled_flags(&parent.trace_id, Some(parent.trace_flags));
    ctx.flags |= CTX_HAS_PARENT | CTX_FROM_HEADER | CTX_UPDATE | CTX_FRESH;
}

/// The context update [`update_server_request`] made, reported once with
/// the read that brought it.
#[inline(always)]
pub fn take_server_request_update(cookie: u64) -> TraceContext {
    if let Some(request) = SERVER_CTX.get_ptr_mut(cookie) {
        // SAFETY: a valid map value pointer.
        let ctx = unsafe { &mut (*request).ctx };
        if ctx.flags & (CTX_FRESH | CTX_UPDATE) == CTX_FRESH | CTX_UPDATE {
            ctx.flags &= !(CTX_FRESH | CTX_UPDATE);
            let mut update = *ctx;
            update.flags |= CTX_UPDATE;
            return update;
        }
    }
    TraceContext::default()
}

/// Zeroes at least the 64 bytes after the first `len` at `bytes` (map
/// memory, 8-byte aligned, writable for 72 bytes past them) where scans
/// look: they read whole words and fixed-size values past the end, which
/// must not see bytes left by an earlier message. Past `SCAN_LIMIT` + 64
/// no scan looks, and the bytes are the message's own: nothing to clear.
///
/// In aligned 8-byte stores: the word `len` falls in keeps its first bytes,
/// the next eight are cleared. A 64-byte zero fill at an unaligned offset
/// compiles to a call to memset, a byte loop in BPF (~2% of the receive
/// programs' time at nginx saturation).
#[inline(always)]
pub fn zero_tail(bytes: *mut u8, len: u32) {
    if len >= SCAN_LIMIT + 64 {
        return;
    }
    let start = len as usize;
    let word = start & !7;
    // Little endian: the message's bytes are the word's low ones.
    let kept = (1u64 << ((start & 7) * 8)) - 1;
    let words = bytes.wrapping_add(word).cast::<u64>();
    // SAFETY: aligned, and within the 72 writable bytes past `len` (the
    // caller's guarantee). Volatile stores: the compiler would turn a plain
    // zeroing loop back into memset.
    unsafe {
        *words &= kept;
        let mut i = 1;
        while i <= 8 {
            core::ptr::write_volatile(words.wrapping_add(i), 0);
            i += 1;
        }
    }
}

/// The context [`scan_copied`] made, in this program run, for the request
/// thread `tid` just received on connection `cookie`, reported once; a new
/// one if it made none (e.g. the bytes could not be read).
#[inline(always)]
pub fn take_server_request<const PORTABLE: bool>(tid: u32, cookie: u64) -> TraceContext {
    if let Some(scratch) = TRACE_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, ours for this program's run.
        let scratch = unsafe { &mut *scratch };
        if scratch.fresh_cookie == cookie && scratch.fresh_tid == tid {
            scratch.fresh_cookie = 0;
            return scratch.fresh;
        }
    }
    let ctx = new_server_context(random_id::<16>(), None);
    let _ = track_server_request::<PORTABLE>(tid, cookie, ctx);
    ctx
}

/// A server span on trace `trace_id`, sampled as the configured sampler
/// says given the parent's flags (`None`: a new trace).
#[inline(always)]
fn new_server_context(trace_id: [u8; 16], parent_flags: Option<u32>) -> TraceContext {
    TraceContext {
        trace_id,
        span_id: random_id::<8>(),
        parent_span_id: [0; 8],
        flags: CTX_VALID,
        trace_flags: sampled_flags(&trace_id, parent_flags),
    }
}

/// The head sampler's trace flags for a span of this process on trace
/// `trace_id` (see `agent_common::sampling`): the process's own threshold
/// (per-service rules) if the agent set one, else the global one.
#[inline(always)]
fn sampled_flags(trace_id: &[u8; 16], parent_flags: Option<u32>) -> u32 {
    let config = config();
    // Without per-service rules no process has a threshold of its own: a
    // lookup saved on every new server context.
    let threshold = if config.sampler & sampling::SERVICE_RULES != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: plain value lookup.
        unsafe { SAMPLING_THRESHOLDS.get(tgid) }
            .copied()
            .unwrap_or(config.sample_threshold)
    } else {
        config.sample_threshold
    };
    sampling::trace_flags(config.sampler, threshold, trace_id, parent_flags)
}

/// A server request starts on connection `cookie`, read by thread `tid`:
/// keeps its context for the thread's outgoing calls and for the capture
/// to report. The capture runs next in the same program run (the socket
/// and TLS paths scan, then capture): the context waits for it in the
/// per-CPU scratch (`TraceScratch::fresh`), which saves a map lookup and
/// write per request. `split`: its first byte came in an earlier read,
/// reported already, so the context is reported as an update of the
/// request being read, flagged in the connection's entry. True if it is
/// the connection's first request.
#[inline(always)]
fn start_server_request<const PORTABLE: bool>(
    scratch: &mut TraceScratch,
    tid: u32,
    cookie: u64,
    parent: Option<TraceParent>,
    split: bool,
) -> bool {
    let (trace_id, parent_flags) = match &parent {
        Some(parent) => (parent.trace_id, Some(parent.trace_flags)),
        None => (random_id::<16>(), None),
    };
    let mut ctx = new_server_context(trace_id, parent_flags);
    if let Some(parent) = parent {
        ctx.parent_span_id = parent.span_id;
        ctx.flags |= CTX_HAS_PARENT | CTX_FROM_HEADER;
    }
    if split {
        ctx.flags |= CTX_FRESH | CTX_UPDATE;
    } else {
        scratch.fresh = ctx;
        scratch.fresh_tid = tid;
        scratch.fresh_cookie = cookie;
    }
    track_server_request::<PORTABLE>(tid, cookie, ctx)
}

/// Keeps `ctx` as the request in flight on connection `cookie`, counted on
/// thread `tid`. A connection has one request in flight at a time: a new
/// one (pipelined, or after a response the kernel did not recognise)
/// replaces the old in its thread's count, and marks the connection
/// pipelined for good. The connection's entry is
/// rewritten in place when it has one (keep-alive): an insert and a
/// delete per request cost more than the rest of the bookkeeping. True if
/// the entry is new: the connection's first request.
#[inline(always)]
fn track_server_request<const PORTABLE: bool>(tid: u32, cookie: u64, ctx: TraceContext) -> bool {
    // A Go process: the goroutine reading it works for it, and it is
    // counted in the process's requests.
    let tid = match goroutine::current::<PORTABLE>() {
        Some(goroutine) => {
            goroutine::serve(&goroutine, cookie, ctx.span_id);
            GO_CONTEXT_KEY | goroutine.tgid
        }
        None => {
            // A Python thread: its current context works for it.
            pycontext::serve(cookie, ctx.span_id);
            tid
        }
    };
    let mut request = ServerRequest {
        ctx,
        tid,
        active: 1,
        pipelined: 0,
    };
    match SERVER_CTX.get_ptr_mut(cookie) {
        Some(entry) => {
            // SAFETY: a valid map value pointer.
            let (owner, active, pipelined) =
                unsafe { ((*entry).tid, (*entry).active, (*entry).pipelined) };
            if active == 0 || owner != tid {
                if active != 0 {
                    leave_in_flight(owner, cookie);
                }
                join_in_flight(tid, cookie);
            }
            request.pipelined = pipelined | active;
            // SAFETY: as above.
            unsafe { *entry = request };
            false
        }
        None => {
            join_in_flight(tid, cookie);
            let _ = SERVER_CTX.insert(cookie, request, 0);
            true
        }
    }
}

/// Counts connection `cookie`'s request in thread `tid`'s requests in
/// flight. Only the thread itself adds to its entry; see
/// [`leave_in_flight`] for the rest.
#[inline(always)]
fn join_in_flight(tid: u32, cookie: u64) {
    match IN_FLIGHT.get_ptr_mut(tid) {
        // SAFETY: a valid map value pointer.
        Some(in_flight) => unsafe {
            (*in_flight).count += 1;
            (*in_flight).cookies ^= cookie;
        },
        None => {
            let in_flight = InFlight {
                count: 1,
                reserved: 0,
                cookies: cookie,
            };
            let _ = IN_FLIGHT.insert(tid, in_flight, 0);
        }
    }
}

/// Takes connection `cookie`'s request out of thread `tid`'s count.
///
/// Usually the thread itself (it sends the response); a close may come
/// from another CPU. Plain read-modify-write, not atomic: the programs
/// are built for BPF v1, without atomic XOR, and the window is a few
/// instructions. A count left too high only unlinks calls, never misparents
/// them; one that reaches zero clears the cookies, so a thread whose count
/// went wrong is right again once it has nothing in flight.
#[inline(always)]
fn leave_in_flight(tid: u32, cookie: u64) {
    if let Some(in_flight) = IN_FLIGHT.get_ptr_mut(tid) {
        // SAFETY: a valid map value pointer.
        unsafe {
            if (*in_flight).count <= 1 {
                (*in_flight).count = 0;
                (*in_flight).cookies = 0;
            } else {
                (*in_flight).count -= 1;
                (*in_flight).cookies ^= cookie;
            }
        }
    }
}

/// The parent a head search found, parsed.
#[inline(always)]
fn parent_from(
    payload: *const u8,
    search: HeadSearch,
    scratch_slot: &mut u32,
) -> Option<TraceParent> {
    let HeadSearch::Found(at) = search else {
        return None;
    };
    // A header at the very start of the read comes with a constant offset,
    // one found by the scan loop with an unknown one; passing the offset
    // through map memory makes both unknown, so the verifier walks the
    // parser below once, not once per kind of offset.
    let at = forget_precision(scratch_slot, at);
    parse_value(payload, at)
}

/// Returns `value` after a round trip through map memory, which the verifier
/// cannot see through (see `start_server_request`).
#[inline(always)]
pub fn forget_precision(slot: &mut u32, value: u32) -> u32 {
    // SAFETY: `slot` is a valid, exclusive reference.
    unsafe {
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}

/// The response on connection `cookie` starts: its request is no longer
/// in flight, and calls made from now on are not its own. The entry stays
/// for the connection's next request.
#[inline(always)]
pub fn end_server_request(cookie: u64) {
    if let Some(entry) = SERVER_CTX.get_ptr_mut(cookie) {
        // SAFETY: a valid map value pointer.
        unsafe {
            if (*entry).active != 0 {
                (*entry).active = 0;
                leave_in_flight((*entry).tid, cookie);
            }
        }
    }
}

/// Connection `cookie` closed: its entry goes, and a request never
/// answered is no longer in flight. Only the program that removes the
/// entry counts it out, so two closes end it once; a response starting
/// on another CPU at the same instant may count it out a second time
/// (see [`leave_in_flight`]).
#[inline(always)]
pub fn forget_server_request(cookie: u64) {
    // SAFETY: plain value lookup, copied out.
    let Some(request) = (unsafe { SERVER_CTX.get(cookie) }).copied() else {
        return;
    };
    if SERVER_CTX.remove(cookie).is_ok() && request.active != 0 {
        leave_in_flight(request.tid, cookie);
    }
}

/// The thread sends something: the head it was reading is complete.
/// Looked up first: a delete locks the map's bucket, and most threads have
/// no head open (a head usually comes in one read).
#[inline(always)]
pub fn close_request_head(tid: u32) {
    // SAFETY: plain value lookup.
    if unsafe { HEAD_OPEN.get(tid) }.is_some() {
        let _ = HEAD_OPEN.remove(tid);
    }
}

/// A client request leaves on thread `tid`: the ids `probes::inject` just put
/// on the wire for this send, else new ones (`PORTABLE`: see
/// `socket_call::report`).
#[inline(always)]
pub fn start_client_request<const PORTABLE: bool>(tid: u32) -> TraceContext {
    // SAFETY: plain value lookups.
    let ctx = match unsafe { INJECTED_CTX.get(tid) } {
        Some(injected) => {
            let ctx = *injected;
            let _ = INJECTED_CTX.remove(tid);
            ctx
        }
        None => client_context::<PORTABLE>(tid),
    };
    // Counted here, once per request, injected or not.
    if ctx.flags & CTX_AMBIGUOUS != 0
        && let Some(counter) = INJECT_STATS.get_ptr_mut(inject::AMBIGUOUS_PARENT)
    {
        // SAFETY: per-CPU slot.
        unsafe { *counter += 1 };
    }
    ctx
}

/// A new client span: child of the thread's server request (and sampled
/// as it is) if it has exactly one in flight; else the root of a new
/// trace, flagged `CTX_AMBIGUOUS` when it had any. In a Go process
/// ([`GO_CONTEXT_KEY`], or followed by `goroutine`), child of the request
/// the goroutine works for, else a root, ambiguous while the process
/// serves requests. In a Python thread whose context is followed
/// (`pycontext`) and works for a request, child of that request while it
/// is in flight, else a root. In a Node thread writing for a request its
/// script named (`nodecontext`), likewise.
#[inline(always)]
pub fn client_context<const PORTABLE: bool>(tid: u32) -> TraceContext {
    let mut ctx = TraceContext {
        trace_id: [0; 16],
        span_id: random_id::<8>(),
        parent_span_id: [0; 8],
        flags: CTX_VALID,
        trace_flags: 1,
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let go = tid & GO_CONTEXT_KEY != 0 || goroutine::is_go_process(tgid);
    let key = if go { GO_CONTEXT_KEY | tgid } else { tid };
    // SAFETY: plain value lookups, copied out.
    // None read as zero: an `Option` carried into `thread_request` leaves
    // its payload undefined, which the verifier refuses to read.
    let in_flight = unsafe { IN_FLIGHT.get(key) }
        .copied()
        .unwrap_or(InFlight::NONE);
    let server = if go {
        // Go: the process's requests in flight say nothing about which one
        // a goroutine's call serves; the goroutine does.
        goroutine::request_of_current::<PORTABLE>()
    } else if let Some(request) = nodecontext::writing(tgid, tid) {
        // Node: its script names the request this write is for.
        request.live()
    } else {
        // Python: the context the call is made in says, if it knows.
        match pycontext::current().and_then(|context| pycontext::serves(&context)) {
            Some(work) => work.request(),
            None => thread_request(tid, in_flight),
        }
    };
    match server {
        Some(ServerRequest { ctx: server, .. }) => {
            ctx.trace_id = server.trace_id;
            ctx.parent_span_id = server.span_id;
            ctx.trace_flags = server.trace_flags;
            ctx.flags |= CTX_HAS_PARENT;
        }
        None => {
            ctx.trace_id = random_id::<16>();
            ctx.trace_flags = sampled_flags(&ctx.trace_id, None);
            // Several in flight, or one that cannot be found: unknown cause.
            if in_flight.count > 0 {
                ctx.flags |= CTX_AMBIGUOUS;
            }
        }
    }
    ctx
}

/// The server request a call thread `tid` makes now serves by the thread
/// rule: the one the runtime named (`nginx`), else the thread's only one
/// in flight.
#[inline(always)]
fn thread_request(tid: u32, in_flight: InFlight) -> Option<ServerRequest> {
    // SAFETY: plain value lookups, copied out.
    let named = unsafe { NGINX_REQUEST.get(tid) }.copied();
    match (named, in_flight.count) {
        (Some(cookie), _) => unsafe { SERVER_CTX.get(cookie) }
            .copied()
            .filter(|request| request.active != 0),
        (None, 1) => unsafe { SERVER_CTX.get(in_flight.cookies) }
            .copied()
            .filter(|request| request.tid == tid && request.active != 0),
        _ => None,
    }
}

/// What a read of a request head says about `traceparent`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadSearch {
    /// Found: its value starts at this offset (after the colon).
    Found(u32),
    /// The head ended (empty line) without one.
    Ended,
    /// Not in this read, and the head goes on.
    Open,
}

/// Looks for `traceparent:` at line starts (any case) in the first
/// `captured` bytes at `payload`, and whether the head ends there.
/// The read may itself start at a line start (a head written in pieces).
/// Bytes past `captured` are zero, or the message's own (`zero_tail`).
///
/// The scan is a `bpf_loop` over the words (8 bytes) of the read: the
/// verifier checks its callback once, where it walked every iteration of
/// an inlined loop (up to 128, each a state compared with the earlier ones).
/// `PORTABLE` programs (no `bpf_loop`) run that inlined loop.
#[inline(always)]
fn scan_head<const PORTABLE: bool>(
    scratch: &mut TraceScratch,
    payload: *const u8,
    captured: u32,
) -> HeadSearch {
    let scanned = core::cmp::min(captured, SCAN_LIMIT);
    // SAFETY: the scratch holds at least 16 bytes.
    let start: [u8; 2] = unsafe { core::ptr::read_unaligned(payload.cast()) };
    if start == *b"\r\n" {
        return HeadSearch::Ended;
    }
    // A read too short to hold the header (most requests without one) needs
    // only the end-of-head check below.
    if scanned >= NAME_LEN + TRACEPARENT_VALUE_LEN as u32 {
        if names_traceparent(payload) {
            return HeadSearch::Found(NAME_LEN);
        }
        // SAFETY: writing our own per-CPU scratch.
        unsafe { core::ptr::write_volatile(&mut scratch.found, 0) };
        let words = scanned.div_ceil(8);
        if PORTABLE {
            let mut index = 0;
            while index < SCAN_LIMIT / 8
                && index < words
                && scan_step(core::ptr::from_mut(scratch), payload, index)
            {
                index += 1;
            }
        } else {
            let mut args = ScanArgs {
                scratch: core::ptr::from_mut(scratch),
                payload,
            };
            // SAFETY: `scan_step_callback` has bpf_loop's callback signature
            // and `args` outlives the call.
            unsafe {
                bpf_loop(
                    words,
                    scan_step_callback as *mut c_void,
                    core::ptr::from_mut(&mut args).cast(),
                    0,
                )
            };
        }
        // SAFETY: reading back what the loop stored.
        let found = unsafe { core::ptr::read_volatile(&scratch.found) };
        if found != 0 {
            return HeadSearch::Found(found);
        }
    }
    // Checked once, not at every newline (that doubles the paths the
    // verifier walks): a head that ends exactly where the read ends, the
    // usual case. A head that ends mid-read stays "open" until the thread
    // sends something (see `capture::trace_context_of`).
    // Masked after the subtraction: the verifier must see a bounded index.
    let end = scanned.wrapping_sub(4) & MASK;
    // SAFETY: end < SCAN_LIMIT; the scratch has room past it.
    let tail: [u8; 4] =
        unsafe { core::ptr::read_unaligned(payload.wrapping_add(end as usize).cast()) };
    if tail == *b"\r\n\r\n" {
        HeadSearch::Ended
    } else {
        HeadSearch::Open
    }
}

/// What the steps of [`scan_head`]'s loop need, on its stack (`bpf_loop`
/// hands its callback a stack pointer).
#[repr(C)]
struct ScanArgs {
    /// The per-CPU scratch, where the step leaves what it found.
    scratch: *mut TraceScratch,
    /// The read's bytes.
    payload: *const u8,
}

/// The `bpf_loop` callback of [`scan_head`]: 0 to go on, 1 to stop.
extern "C" fn scan_step_callback(index: u64, args: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `ScanArgs` scan_head gave it.
    let args = unsafe { &*args.cast::<ScanArgs>() };
    if scan_step(args.scratch, args.payload, index as u32) {
        0
    } else {
        1
    }
}

/// One step of [`scan_head`]'s loop: looks for `traceparent:` after each
/// newline of word `index` of the read. Returns false to stop, when found,
/// with the value's offset (after the colon) in `TraceScratch::found`:
/// map memory, so that the callback ends in the same state whatever it
/// found, and the verifier checks it once.
///
/// Looks at the bytes of a word only if it holds a newline, and compares
/// the header name without branches: the callback's paths stay few.
#[inline(always)]
fn scan_step(scratch: *mut TraceScratch, payload: *const u8, index: u32) -> bool {
    // SAFETY: the per-CPU scratch is ours for this program's run.
    let scratch = unsafe { &mut *scratch };
    let base = (index * 8) & MASK;
    // SAFETY: base < SCAN_LIMIT and the scratch has room past it.
    let bytes =
        unsafe { core::ptr::read_unaligned(payload.wrapping_add(base as usize).cast::<u64>()) };
    if !has_newline(bytes) {
        return true;
    }
    let mut k: u32 = 0;
    while k < 8 {
        let at = payload.wrapping_add((base + k) as usize);
        // SAFETY: as above, 13 more bytes are within the buffer.
        if unsafe { *at } == b'\n' && names_traceparent(at.wrapping_add(1)) {
            // SAFETY: writing our own per-CPU scratch.
            unsafe { core::ptr::write_volatile(&mut scratch.found, base + k + 1 + NAME_LEN) };
            return false;
        }
        k += 1;
    }
    true
}

/// True if the 12 bytes at `at` are `traceparent:` in any case.
#[inline(always)]
pub fn names_traceparent(at: *const u8) -> bool {
    // SAFETY: the caller guarantees 12 readable bytes.
    let (head, tail) = unsafe {
        (
            core::ptr::read_unaligned(at.cast::<u64>()),
            core::ptr::read_unaligned(at.wrapping_add(8).cast::<u32>()),
        )
    };
    scan::names_traceparent(head, tail)
}

/// Parses the header value starting at `at` (after the colon and up to
/// two blanks; see `agent_common::scan::parse_traceparent_value`).
#[inline(always)]
fn parse_value(payload: *const u8, at: u32) -> Option<TraceParent> {
    let mut start = at & MASK;
    // Optional whitespace after the colon (at most two).
    let mut skipped = 0;
    while skipped < 2 {
        // SAFETY: in the scratch buffer (start < MAX, +2).
        let byte = unsafe { *payload.wrapping_add(start as usize) };
        if byte != b' ' && byte != b'\t' {
            break;
        }
        start = (start + 1) & MASK;
        skipped += 1;
    }
    // SAFETY: start < MAX and the value's bytes follow within the buffer.
    let text: [u8; TRACEPARENT_VALUE_LEN + 1] =
        unsafe { core::ptr::read_unaligned(payload.wrapping_add(start as usize).cast()) };

    scan::parse_traceparent_value(&text)
}
