//! Which connection a Go `crypto/tls.Conn` runs over; shared by the socket
//! capture (`probes::socket_data`, through `tls::is_tls_socket`) and the
//! Go TLS probes (`probes::go_tls`).
//!
//! A Go program's TLS connections are told by their first bytes: the
//! socket capture, seeing a TLS record on a connection of a process that
//! runs Go TLS (marked in `SSL_PROCESSES` by the handshake probe, before
//! any record of its connections moves), marks the connection TLS (its
//! ciphertext is not reported) and remembers it under its file descriptor
//! (`GO_TLS_FDS`). The Go probes find the descriptor in the `tls.Conn`
//! (struct offsets from the agent, see `probes::go_tls`), hence the
//! connection.

use agent_common::{
    scan::is_tls_record,
    socket_data::SocketDataEvent,
    socket_state::{CONN_TLS, TrackedConn},
};
use aya_ebpf::{macros::map, maps::LruHashMap};

use crate::{
    maps::{SslSocket, TRACKED_CONNS},
    syscall_args::{UserData, head_of},
};

/// `SSL_PROCESSES` value of a process that runs Go's `crypto/tls`
/// (OpenSSL's probes write 1).
pub const GO_TLS_PROCESS: u32 = 2;

/// The TLS connections of Go processes, by `(tgid << 32) | fd`.
#[map]
pub static GO_TLS_FDS: LruHashMap<u64, SslSocket> = LruHashMap::with_max_entries(65_536, 0);

/// The key of [`GO_TLS_FDS`].
#[inline(always)]
pub fn fd_key(tgid: u32, fd: u32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(fd)
}

/// `tls::is_tls_socket` for a process running Go's `crypto/tls`: true if
/// the connection carries TLS; its first TLS record marks it so.
#[inline(always)]
pub fn is_go_tls_socket(
    event: &SocketDataEvent,
    conn: &TrackedConn,
    data: Option<&UserData>,
    total: u32,
) -> bool {
    if conn.flags & CONN_TLS != 0 {
        return true;
    }
    if event.fd == u32::MAX {
        return false;
    }
    let (head, len) = head_of(data, total);
    if !is_tls_record(&head, len) {
        return false;
    }
    let socket = SslSocket {
        cookie: event.socket_cookie,
        seen_ns: event.header.timestamp_ns,
        tuple: event.tuple,
        role: event.role,
        fd: event.fd,
    };
    let _ = GO_TLS_FDS.insert(fd_key(event.header.pid, event.fd), socket, 0);
    if let Some(conn) = TRACKED_CONNS.get_ptr_mut(event.socket_cookie) {
        // SAFETY: a valid map value pointer.
        unsafe { (*conn).flags |= CONN_TLS };
    }
    true
}
