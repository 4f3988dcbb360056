//! Bytes a selected process moved over a TCP socket, as captured by
//! `agent-ebpf/src/probes/socket_data.rs`.

use crate::{EventHeader, trace_context::TraceContext};

/// Largest payload one event carries. A call that moved more is reported as
/// consecutive events of at most this many bytes each.
pub const MAX_CAPTURE_BYTES: usize = 4096;

/// Largest number of bytes captured from one call, over all its events.
/// What is captured is [`crate::KernelConfig::capture_bytes`] or the
/// connection's own limit ([`crate::socket_state::TrackedConn::capture_bytes`]),
/// at most this; the rest of the call is reported by length only.
pub const MAX_CALL_CAPTURE_BYTES: usize = 64 * 1024;

/// The bytes went through a socket syscall (plaintext or not).
pub const SOURCE_SOCKET: u32 = 0;
/// The bytes are TLS plaintext handed to or returned by OpenSSL
/// (`SSL_write`/`SSL_read`); the connection's ciphertext is not reported.
pub const SOURCE_TLS: u32 = 1;

/// Index of the program that reports TLS plaintext in the kernel's
/// `TLS_TAILS` program array (the agent fills it at load time).
pub const TLS_CAPTURE_TAIL: u32 = 0;

/// The process sent the bytes.
pub const DIRECTION_EGRESS: u32 = 1;
/// The process received the bytes.
pub const DIRECTION_INGRESS: u32 = 2;

/// Unknown side: the connection was opened before the agent saw it.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process opened the connection (`connect`).
pub const ROLE_CLIENT: u32 = 1;
/// The process accepted the connection (`accept`).
pub const ROLE_SERVER: u32 = 2;

/// IPv4 in [`ConnTuple::family`] (`AF_INET`).
pub const FAMILY_INET: u16 = 2;
/// IPv6 in [`ConnTuple::family`] (`AF_INET6`).
pub const FAMILY_INET6: u16 = 10;

/// Addresses and ports of a TCP connection, from the process's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub local_addr: [u8; 16],
    /// Remote address, same encoding.
    pub remote_addr: [u8; 16],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u16,
    /// Reserved, zero.
    pub reserved: u16,
}

/// Bytes of one send or receive on a TCP socket by a selected process (or
/// of one OpenSSL read or write, see [`SOURCE_TLS`]). A call is reported as
/// one or more consecutive events: each carries a piece of the data, whole
/// (`captured_len == total_len`), and the last may report bytes that were
/// not captured (`captured_len < total_len`). Only `captured_len` bytes of
/// `payload` are sent to userspace: the event is truncated to
/// `size_of::<SocketDataEvent>() - MAX_CAPTURE_BYTES + captured_len`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketDataEvent {
    /// `kind` is [`crate::EventKind::SocketData`].
    pub header: EventHeader,
    /// The kernel's socket cookie: unique for the socket's lifetime, never reused.
    pub socket_cookie: u64,
    /// Addresses and ports.
    pub tuple: ConnTuple,
    /// Bytes of the call this event stands for.
    pub total_len: u32,
    /// Bytes of `payload` that are valid: a prefix of those `total_len` bytes.
    pub captured_len: u32,
    /// File descriptor the process used, or `u32::MAX` when unknown.
    pub fd: u32,
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u32,
    /// [`ROLE_UNKNOWN`], [`ROLE_CLIENT`] or [`ROLE_SERVER`].
    pub role: u32,
    /// [`SOURCE_SOCKET`] or [`SOURCE_TLS`].
    pub source: u32,
    /// Span identity when this call starts an HTTP/1 request (see
    /// `trace_context`), on the call's first event; `flags == 0` otherwise.
    pub trace: TraceContext,
    /// The first `captured_len` bytes of the data.
    pub payload: [u8; MAX_CAPTURE_BYTES],
}

/// Size of the event without its payload: where the payload starts.
pub const SOCKET_DATA_HEADER_LEN: usize =
    core::mem::size_of::<SocketDataEvent>() - MAX_CAPTURE_BYTES;
