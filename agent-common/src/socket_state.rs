//! TCP connection life cycle, from `agent-ebpf/src/probes/socket_state.rs`.

use crate::EventHeader;

/// A connection the agent had seen data on reached TCP_CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketCloseEvent {
    /// `kind` is [`crate::EventKind::SocketClose`]; pid/tid are whoever closed it
    /// (may be zero or unrelated when the kernel closes it from softirq).
    pub header: EventHeader,
    /// Socket cookie, as in [`crate::socket_data::SocketDataEvent`].
    pub socket_cookie: u64,
}

/// Value of the kernel's tracked-connection map, keyed by socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedConn {
    /// A `ROLE_*` constant from [`crate::socket_data`].
    pub role: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
