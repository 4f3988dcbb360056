//! Indexes of the kernel's loss counters (the `DROPS` per-CPU array).
//! Userspace sums them across CPUs and reports them as the agent's own metrics.

/// A socket data event did not fit in the ring buffer.
pub const DATA_RINGBUF_FULL: u32 = 0;
/// A process or close event did not fit in the ring buffer.
pub const CONTROL_RINGBUF_FULL: u32 = 1;
/// Copying the payload from user memory failed; the event went out without it.
pub const PAYLOAD_READ_FAILED: u32 = 2;
/// TLS plaintext whose socket could not be identified was not reported.
pub const TLS_SOCKET_UNKNOWN: u32 = 3;
/// A call had more buffers than the portable programs' bounded copy loop
/// steps through (kernels without `bpf_loop`): the rest of its bytes went
/// out by length only.
pub const CAPTURE_STEPS_EXHAUSTED: u32 = 4;
/// Number of counters.
pub const COUNT: u32 = 5;
