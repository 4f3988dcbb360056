//! TCP connection life cycle, from `agent-ebpf/src/probes/socket_state.rs`.

use crate::{EventHeader, socket_data::ConnTuple};

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

/// A TCP socket of any process went to LISTEN (inside `listen()`, in the
/// caller's thread): discovery looks for new listeners on the selected
/// ports when this happens rather than polling the node's sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenEvent {
    /// `kind` is [`crate::EventKind::SocketListen`]; pid/tid are the caller.
    pub header: EventHeader,
    /// Local port, host byte order.
    pub port: u16,
    /// Reserved, zero.
    pub reserved: [u8; 6],
}

/// [`TrackedConn::flags`]: the connection carries TLS. Its socket bytes
/// (ciphertext) are not reported; the OpenSSL probes report its plaintext.
pub const CONN_TLS: u32 = 1;

/// Value of the kernel's tracked-connection map, keyed by socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedConn {
    /// A `ROLE_*` constant from [`crate::socket_data`].
    pub role: u32,
    /// `CONN_*` bits.
    pub flags: u32,
    /// Bytes to capture per call on this connection; 0 means
    /// [`crate::KernelConfig::capture_bytes`]. The agent raises it for
    /// connections whose protocol needs every byte (HTTP/2 frames).
    pub capture_bytes: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Addresses and ports, read from the socket at the first data (zero
    /// `family` until then): later calls take them from here instead of
    /// reading the socket again.
    pub tuple: ConnTuple,
}

impl TrackedConn {
    /// A connection first seen in the given role, with default capture.
    pub const fn new(role: u32) -> Self {
        Self {
            role,
            flags: 0,
            capture_bytes: 0,
            reserved: 0,
            tuple: ConnTuple {
                local_addr: [0; 16],
                remote_addr: [0; 16],
                local_port: 0,
                remote_port: 0,
                family: 0,
                reserved: 0,
            },
        }
    }
}
