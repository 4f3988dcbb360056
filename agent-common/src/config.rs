//! Settings the agent hands the kernel programs at load time, as the global
//! `CONFIG`. Rust eBPF code has no CO-RE relocations, so kernel struct field
//! offsets are read from the running kernel's BTF by the agent and passed here.

/// The kernel programs' configuration (global `CONFIG` in `agent-ebpf`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Bytes captured per call by default, at most
    /// [`crate::socket_data::MAX_CALL_CAPTURE_BYTES`].
    pub capture_bytes: u32,
    /// Offset of `sock_common.skc_family` (u16).
    pub off_skc_family: u32,
    /// Offset of `sock_common.skc_daddr` (IPv4 remote address).
    pub off_skc_daddr: u32,
    /// Offset of `sock_common.skc_rcv_saddr` (IPv4 local address).
    pub off_skc_rcv_saddr: u32,
    /// Offset of `sock_common.skc_dport` (remote port, network byte order).
    pub off_skc_dport: u32,
    /// Offset of `sock_common.skc_num` (local port, host byte order).
    pub off_skc_num: u32,
    /// Offset of `sock_common.skc_v6_daddr`.
    pub off_skc_v6_daddr: u32,
    /// Offset of `sock_common.skc_v6_rcv_saddr`.
    pub off_skc_v6_rcv_saddr: u32,
    /// Offset of `sock.sk_protocol` (u16).
    pub off_sk_protocol: u32,
    /// Offset of `child_pid` in the `sched_process_fork` tracepoint record.
    pub off_fork_child_pid: u32,
    /// Non-zero: insert `traceparent` into outgoing HTTP/1 requests.
    pub inject_traceparent: u32,
    /// Head sampler bits: `crate::sampling::PARENT_BASED`, `SERVICE_RULES`.
    pub sampler: u32,
    /// Rejection threshold for traces without a (honoured) parent, see
    /// `crate::sampling`; per-process values in `SAMPLING_THRESHOLDS` win.
    pub sample_threshold: u64,
    /// A program wakes the reader with the record that takes the bytes
    /// waiting in the data ring past a multiple of this; other records are
    /// written without a wakeup and the reader drains on its timer (see
    /// `agent::probes::reader`).
    pub wakeup_bytes: u32,
    /// Offset of `sock.sk_user_data` (a sockmap socket's psock).
    pub off_sk_user_data: u32,
    /// Offset of `task_struct.stack` (the portable programs find the
    /// syscall's saved registers at the top of the task's kernel stack).
    pub off_task_stack: u32,
    /// Size of a task's kernel stack (`THREAD_SIZE`).
    pub thread_size: u32,
    /// Random per agent run: the portable programs identify a connection
    /// by its socket's address XOR this, so that no kernel address reaches
    /// userspace (events, logs).
    pub socket_id_salt: u64,
}

impl KernelConfig {
    /// Offsets of Linux 6.x on x86_64, used until the agent reads the real ones
    /// from BTF.
    pub const DEFAULT: Self = Self {
        capture_bytes: 1024,
        off_skc_family: 16,
        off_skc_daddr: 0,
        off_skc_rcv_saddr: 4,
        off_skc_dport: 12,
        off_skc_num: 14,
        off_skc_v6_daddr: 56,
        off_skc_v6_rcv_saddr: 72,
        off_sk_protocol: 532,
        off_fork_child_pid: 20,
        inject_traceparent: 1,
        sampler: crate::sampling::PARENT_BASED,
        sample_threshold: 0,
        wakeup_bytes: 0,
        off_sk_user_data: 656,
        off_task_stack: 32,
        thread_size: 16384,
        socket_id_salt: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are repr(C), Copy, and have no padding or
    // invalid bit patterns.
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for crate::socket_state::TrackedConn {}
}
