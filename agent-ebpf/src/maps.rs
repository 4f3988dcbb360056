//! Maps and the configuration global shared by all programs. Names are the
//! contract with `agent/src/probes/`.

use agent_common::{
    EventHeader, EventKind, KernelConfig,
    socket_data::{ConnTuple, MAX_CAPTURE_BYTES, SocketDataEvent},
    socket_state::TrackedConn,
    trace_context::TraceContext,
};
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};

use crate::syscall_args::UserData;

/// Set by the agent at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: KernelConfig = KernelConfig::DEFAULT;

/// The configuration as the agent set it.
#[inline(always)]
pub fn config() -> KernelConfig {
    // SAFETY: CONFIG is a plain global; volatile stops the compiler from
    // folding in the default the object was compiled with.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Processes (tgid) to capture, filled by the agent's selectors; children
/// forked by a target are added by `probes::process`.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(65_536, 0);

/// Head sampling rejection thresholds by process (tgid), for processes whose
/// service has its own ratio (`sampling.rules`); others use `CONFIG`'s.
#[map]
pub static SAMPLING_THRESHOLDS: HashMap<u32, u64> = HashMap::with_max_entries(16_384, 0);

/// The same set as one byte per pid (8 pids per entry), read by every
/// hook's first check: an array lookup the verifier inlines, where a hash
/// lookup hashes the key and walks a bucket. Sized by the agent from
/// `kernel.pid_max` at load time and written by it through a shared
/// mapping (byte stores: no read-modify-write that could lose the kernel's
/// concurrent writes); pids past its end fall back to `TARGETS`.
#[map]
pub static TARGET_FLAGS: Array<[u8; 8]> = Array::with_max_entries(4096, BPF_F_MMAPABLE);

/// Processes (tgid) where an OpenSSL, Go or Python probe ran, one byte per
/// pid as in `TARGET_FLAGS` (sized by the agent the same way): a filter in
/// front of `SSL_PROCESSES`, `goroutine::GO_PROCESSES` and
/// `pycontext::PY_THREADS`, which every traced
/// socket call asks about while most targets are in none (hash
/// lookups per HTTP request saved). Set before those maps get an entry,
/// only ever to 1, so setters on several CPUs cannot undo each other;
/// cleared with them at exec, when the image they describe goes. Pids past
/// its end are looked up in the maps.
#[map]
pub static TLS_OR_GO: Array<[u8; 8]> = Array::with_max_entries(4096, 0);

/// False if process `tgid` is in none of `SSL_PROCESSES`, `GO_PROCESSES`
/// and `PY_THREADS`.
#[inline(always)]
pub fn may_use_tls_or_go(tgid: u32) -> bool {
    TLS_OR_GO
        .get(tgid >> 3)
        .is_none_or(|flags| flags[(tgid & 7) as usize] != 0)
}

/// Marks process `tgid` before it enters `SSL_PROCESSES`, `GO_PROCESSES` or
/// `PY_THREADS`.
#[inline(always)]
pub fn mark_tls_or_go(tgid: u32) {
    if let Some(flags) = TLS_OR_GO.get_ptr_mut(tgid >> 3) {
        // SAFETY: a valid map value pointer; one byte, so no other pid's
        // flag is rewritten.
        unsafe { (*flags)[(tgid & 7) as usize] = 1 };
    }
}

/// Process `tgid` runs a new image: what `SSL_PROCESSES`, `GO_PROCESSES`
/// and `PY_THREADS` said of the old one no longer holds (its probes mark it
/// again if the new one uses OpenSSL or is Go or Python).
#[inline(always)]
pub fn forget_tls_or_go(tgid: u32) {
    if let Some(flags) = TLS_OR_GO.get_ptr_mut(tgid >> 3) {
        // SAFETY: a valid map value pointer.
        let flag = unsafe { &mut (*flags)[(tgid & 7) as usize] };
        if *flag == 0 {
            return;
        }
        *flag = 0;
    }
    let _ = SSL_PROCESSES.remove(tgid);
    let _ = crate::goroutine::GO_PROCESSES.remove(tgid);
    // The exec'ing thread is the process's only one, under the tgid.
    let _ = crate::pycontext::PY_THREADS.remove((u64::from(tgid) << 32) | u64::from(tgid));
}

/// Socket data and close events. Size set by the agent at load time.
#[map]
pub static DATA_EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Flags for a record of `record_bytes` written to `DATA_EVENTS`: no
/// wakeup (the reader drains on a short timer), unless this record takes
/// the backlog past a multiple of `KernelConfig::wakeup_bytes`. A wakeup
/// costs the writing thread an irq_work (a self-IPI) and the reader a
/// context switch, ~1 us: waking for every record past the threshold, as
/// long as the reader had not caught up, cost ~10% of the kernel time per
/// request at saturation. Every multiple, not only the first: two CPUs
/// writing at once can both miss the first crossing (each reads the
/// backlog before the other's record), never all of them.
#[inline(always)]
pub fn data_ring_flags(record_bytes: u64) -> u64 {
    let threshold = u64::from(config().wakeup_bytes);
    if threshold == 0 {
        return u64::from(BPF_RB_FORCE_WAKEUP);
    }
    let waiting = DATA_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if waiting / threshold != (waiting + record_bytes) / threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Process exec/exit events, apart from data so a data flood cannot starve them.
#[map]
pub static CONTROL_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Connections a target has moved data on (or connected), by socket cookie.
#[map]
pub static TRACKED_CONNS: LruHashMap<u64, TrackedConn> = LruHashMap::with_max_entries(65_536, 0);

/// Sockets a target accepted but has not used yet, `(tgid << 32) | fd`,
/// with a serial that names the connection until its first data tells its
/// cookie (random, non-zero; `pycontext::ACCEPTED_IN_CONTEXT` set if it
/// was accepted in a Python context that may name it).
#[map]
pub static ACCEPTED_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// A connection's last server request: in flight while read and its
/// response not started yet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ServerRequest {
    /// Its span identity.
    pub ctx: TraceContext,
    /// The thread that read it, whose in-flight count it is in while active.
    pub tid: u32,
    /// 1 while in flight, 0 once its response started.
    pub active: u16,
    /// 1 if a request of this connection ever started while the one before
    /// was in flight (pipelined, or a response not recognised): which of
    /// them some work serves, the connection cannot say (`pycontext`).
    pub pipelined: u16,
}

/// The last server request of each connection (socket cookie; see
/// `crate::context`), kept until the connection closes: the next request
/// on a keep-alive connection overwrites it in place.
#[map]
pub static SERVER_CTX: LruHashMap<u64, ServerRequest> = LruHashMap::with_max_entries(65_536, 0);

/// A server request some unit of work (a goroutine, a Python context)
/// serves: its connection and span id. Checked against the connection's
/// live request when used ([`RequestRef::live`]), so work that outlives its
/// request, or a reused address, gives no parent, never another request's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RequestRef {
    /// The connection's socket cookie (`SERVER_CTX`'s key).
    pub cookie: u64,
    /// The request's span id, which the live request must still have.
    pub span_id: [u8; 8],
}

impl RequestRef {
    /// The request, if it is still in flight: its response has not
    /// started and no later request replaced it on its connection.
    #[inline(always)]
    pub fn live(&self) -> Option<ServerRequest> {
        // SAFETY: plain value lookup, copied out.
        let server = unsafe { SERVER_CTX.get(self.cookie) }.copied()?;
        (server.active != 0 && server.ctx.span_id == self.span_id).then_some(server)
    }
}

/// The server requests a thread has in flight: how many, and the XOR of
/// their connections' cookies (which is the one connection when there is
/// one).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// Requests in flight.
    pub count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// XOR of their socket cookies.
    pub cookies: u64,
}

impl InFlight {
    /// No request in flight.
    pub const NONE: Self = Self {
        count: 0,
        reserved: 0,
        cookies: 0,
    };
}

/// The connection (socket cookie) each server socket's last request came
/// in on, by `(tgid << 32) | fd`: how `probes::nginx` finds the request
/// nginx names by its file descriptor.
#[map]
pub static SERVER_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65_536, 0);

/// The request (its connection's cookie) an nginx thread is writing
/// upstream for right now (see `probes::nginx`).
#[map]
pub static NGINX_REQUEST: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);

/// In-flight server requests by tid (see `crate::context`).
#[map]
pub static IN_FLIGHT: LruHashMap<u32, InFlight> = LruHashMap::with_max_entries(65_536, 0);

/// Threads whose request head (on this socket cookie) is still arriving
/// without a `traceparent` so far (see `crate::context`).
#[map]
pub static HEAD_OPEN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Ids `probes::inject` put on the wire, by tid, for the same send's data
/// event: sk_msg runs before `sock_send_length` in the same thread.
#[map]
pub static INJECTED_CTX: LruHashMap<u32, TraceContext> = LruHashMap::with_max_entries(16_384, 0);

/// Client sockets of targets, where `probes::inject`'s sk_msg program runs.
#[map]
pub static CLIENT_SOCKETS: SockHash<u64> = SockHash::with_max_entries(65_536, 0);

/// An HTTP/2 connection a target opened, as `probes::inject_h2` follows
/// its outgoing frames, by its addresses (`http2::conn_key`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct H2Conn {
    /// Bytes of the frame in progress still to come: the next send's
    /// first frame header starts this far in.
    pub skip: u32,
    /// The highest stream id whose request HEADERS went by: a HEADERS
    /// frame on a stream at or below it is trailers (or a repeat).
    pub last_stream: u32,
    /// Bytes of a frame header cut by the end of a send (0 to 8), kept in
    /// `header`.
    pub partial: u32,
    /// 1 once where frames start is lost: nothing more is touched.
    pub lost: u32,
    /// 1 once the application's own `traceparent` name went by, or a
    /// request header block went by unread (which may have put it in the
    /// peer's dynamic table): no more fields are added.
    pub own: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The cut frame header's first `partial` bytes.
    pub header: [u8; 8],
}

/// HTTP/2 connections `probes::inject_h2` follows (their client preface
/// went through it).
#[map]
pub static H2_CONNS: LruHashMap<ConnTuple, H2Conn> = LruHashMap::with_max_entries(65_536, 0);

/// The HTTP/2 rewrite, tail-called by `probes::inject` (`H2_TAIL`): kept
/// apart so that if the kernel refuses it, HTTP/1 injection still runs.
#[map]
pub static H2_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Where `probes::inject_h2`'s walks are in a message, in map memory
/// (see `capture::report_call` for why).
#[repr(C, align(8))]
pub struct H2Walk {
    /// The connection.
    pub key: ConnTuple,
    /// Offset of the next frame header in the message.
    pub pos: u32,
    /// The message's size once the frame walk reached its end, `u32::MAX`
    /// until then.
    pub size: u32,
    /// 1 if the header block scan found the name `traceparent`.
    pub found: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The field being inserted (`agent_common::trace_context::h2_field`).
    pub field: [u8; 72],
}

#[map]
pub static H2_SCRATCH: PerCpuArray<H2Walk> = PerCpuArray::with_max_entries(1, 0);

/// Injection outcomes and other trace context counters, indexed by
/// `agent_common::trace_context::inject::*`.
#[map]
pub static INJECT_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(agent_common::trace_context::inject::COUNT, 0);

/// Loss counters, indexed by `agent_common::drops::*`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(agent_common::drops::COUNT, 0);

/// An OpenSSL read, write or handshake a thread is in (`probes::openssl`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer (0 for a handshake).
    pub buffer: u64,
    /// `_ex` variants: where the byte count is written (else 0).
    pub len_out: u64,
    /// `DIRECTION_*`, or 0 for a handshake.
    pub direction: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// An `SSL *` of one process: the key of [`SSL_SOCKETS`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    /// Process.
    pub tgid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The `SSL *`.
    pub ssl: u64,
}

/// The TCP connection under an `SSL *`, or the last one a thread read from.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSocket {
    /// Socket cookie.
    pub cookie: u64,
    /// When it was seen (`bpf_ktime_get_ns`).
    pub seen_ns: u64,
    /// Addresses and ports.
    pub tuple: ConnTuple,
    /// `ROLE_*`.
    pub role: u32,
    /// The file descriptor it was seen on (`u32::MAX`: unknown).
    pub fd: u32,
}

/// OpenSSL calls in progress, by tid.
#[map]
pub static SSL_CALLS: LruHashMap<u32, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// The connection each `SSL *` runs over, learnt from the socket I/O the
/// thread does inside an OpenSSL call (or right before, see `probes::openssl`).
#[map]
pub static SSL_SOCKETS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(65_536, 0);

/// Processes that have called OpenSSL (tgid).
#[map]
pub static SSL_PROCESSES: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The last connection each thread of an OpenSSL-using process read from.
#[map]
pub static LAST_READ: LruHashMap<u32, SslSocket> = LruHashMap::with_max_entries(16_384, 0);

/// An OpenSSL object a thread's last call returned from while it was not
/// tied to a connection yet (`probes::openssl`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UntiedSsl {
    /// The `SSL *`.
    pub ssl: u64,
    /// When the call returned (`bpf_ktime_get_ns`).
    pub seen_ns: u64,
}

/// The last untied `SSL *` each thread of an OpenSSL-using process called.
#[map]
pub static LAST_UNTIED_SSL: LruHashMap<u32, UntiedSsl> = LruHashMap::with_max_entries(16_384, 0);

/// Tail calls of the OpenSSL return probes (`TLS_CAPTURE_TAIL`).
#[map]
pub static TLS_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU staging area for the header scan (`crate::context`).
#[repr(C)]
pub struct TraceScratch {
    /// The first bytes of a received message (1 KiB), plus room for scans
    /// that start near the end to overrun.
    pub bytes: [u8; 2048],
    /// Map memory the verifier cannot see through (see `forget_precision`).
    pub slot: u32,
    /// Likewise, for the case the header scan is handling.
    pub case: u32,
    /// Where the header scan found a `traceparent` value, 0 for nowhere
    /// (see `trace_context::scan_head`).
    pub found: u32,
    /// The thread of the request start the last scan read (see
    /// `context::start_server_request`).
    pub fresh_tid: u32,
    /// Its connection, 0 once the capture took its context (or none).
    pub fresh_cookie: u64,
    /// Its context, for the capture to report.
    pub fresh: TraceContext,
    /// A socket pointer on its way to becoming a number
    /// (`probes::inject::connection_id`).
    pub socket_address: u64,
}

#[map]
pub static TRACE_SCRATCH: PerCpuArray<TraceScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where `probes::capture` is in a call's data, kept in map memory (see
/// `report_call`).
#[repr(C)]
pub struct CaptureCursor {
    /// User address the current buffer continues at.
    pub base: u64,
    /// Bytes left in the current buffer.
    pub left: u64,
    /// Next iovec to read.
    pub next_iovec: u64,
    /// The second iovec, when it was read with the first (its length is
    /// `u64::MAX` otherwise): calls of two buffers or more, such as a
    /// response head and its body, take one read less.
    pub second_base: u64,
    pub second_len: u64,
    /// Bytes of the call sent in events so far.
    pub reported: u32,
    /// Bytes copied into the event being filled.
    pub filled: u32,
}

/// A socket call between `socket_call`'s steps: where its data is, its
/// length and capture limit.
#[repr(C)]
pub struct PendingCall {
    pub data: UserData,
    /// 0 if the call's data could not be located (not a known syscall).
    pub has_data: u32,
    /// Bytes the call moved.
    pub total: u32,
    /// The connection's own capture limit (0: the default).
    pub capture_bytes: u32,
    /// Bytes of the call's first buffer in the event's payload, which the
    /// header scan looks at (see `socket_call`).
    pub copied: u32,
}

impl PendingCall {
    /// Where the call's data is, if known.
    #[inline(always)]
    pub fn data(&self) -> Option<&UserData> {
        (self.has_data != 0).then_some(&self.data)
    }
}

/// A data event being built, room for the copy loop to overrun (which lets
/// the verifier prove every write in bounds without tracking the relation
/// between offset and length), the capture loop's state, and the socket
/// call being reported.
#[repr(C)]
pub struct DataScratch {
    pub event: SocketDataEvent,
    pub overrun: [u8; MAX_CAPTURE_BYTES],
    pub cursor: CaptureCursor,
    pub call: PendingCall,
}

// The header scan clears the bytes after a read in the event's payload in
// aligned words (`context::zero_tail`).
const _: () = assert!(core::mem::offset_of!(DataScratch, event.payload).is_multiple_of(8));

/// Per-CPU staging area: a 4 KiB event does not fit on the 512-byte BPF stack.
#[map]
pub static DATA_SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);

/// The header of an event about the current thread, happening now.
#[inline(always)]
pub fn event_header(kind: EventKind) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        reserved: 0,
        // SAFETY: always-safe helper.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Counts one loss of the given kind.
#[inline(always)]
pub fn count_drop(index: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs do not migrate CPU mid-run.
        unsafe { *counter += 1 };
    }
}

/// True if the current process is a target.
#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    match TARGET_FLAGS.get(tgid >> 3) {
        Some(flags) => flags[(tgid & 7) as usize] != 0,
        // SAFETY: read-only lookup of a plain value.
        None => unsafe { TARGETS.get(tgid) }.is_some(),
    }
}

/// Adds `pid` to the targets (`value`: see `probes::process`) or removes it.
#[inline(always)]
pub fn set_target(pid: u32, value: Option<u32>) {
    match value {
        Some(value) => {
            let _ = TARGETS.insert(pid, value, 0);
        }
        None => {
            let _ = TARGETS.remove(pid);
        }
    }
    if let Some(flags) = TARGET_FLAGS.get_ptr_mut(pid >> 3) {
        // SAFETY: a valid map value pointer; one byte, so no other pid's
        // flag is rewritten.
        unsafe { (*flags)[(pid & 7) as usize] = u8::from(value.is_some()) };
    }
}
