//! The header every kernel event starts with.

/// What follows the header. Stored as a `u32` in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`crate::socket_data::SocketDataEvent`]: bytes a process sent or received.
    SocketData = 1,
    /// A [`crate::socket_state::SocketCloseEvent`]: a tracked TCP connection closed.
    SocketClose = 2,
    /// A [`crate::process::ProcessEvent`]: a process called exec.
    ProcessExec = 3,
    /// A [`crate::process::ProcessEvent`]: a targeted process exited.
    ProcessExit = 4,
    /// A [`crate::socket_state::ListenEvent`]: a process started listening
    /// on a TCP port.
    SocketListen = 5,
    /// A [`crate::trace_context::Http2InjectedEvent`]: ids written into an
    /// outgoing HTTP/2 request.
    Http2Injected = 6,
}

impl EventKind {
    /// The kind for a raw header value, if it is one we know.
    pub fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::SocketData),
            2 => Some(Self::SocketClose),
            3 => Some(Self::ProcessExec),
            4 => Some(Self::ProcessExit),
            5 => Some(Self::SocketListen),
            6 => Some(Self::Http2Injected),
            _ => None,
        }
    }
}

/// First field of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Reserved, zero; keeps `timestamp_ns` 8-byte aligned without padding.
    pub reserved: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds when the event happened.
    pub timestamp_ns: u64,
}
