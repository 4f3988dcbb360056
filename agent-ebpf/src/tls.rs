//! Which connection an OpenSSL `SSL *` runs over, learnt from what the
//! thread does on sockets; shared by the socket capture (`probes::socket_data`)
//! and the OpenSSL probes (`probes::openssl`).
//!
//! OpenSSL's structs differ between versions and builds, so nothing reads
//! them. The OpenSSL entry probes record the call per thread
//! (`SSL_CALLS`); the socket capture program, seeing the same thread do
//! socket I/O inside the call, ties the `SSL *` to that socket
//! (`SSL_SOCKETS`), marks the connection TLS and drops its ciphertext
//! ([`is_tls_socket`]). Programs that feed OpenSSL through memory BIOs
//! (gRPC core, Node.js) do their socket I/O outside the calls, so an
//! `SSL *` is tied by what the thread does next to or right before it:
//! - a TLS record (by its 5-byte header) the thread writes, within
//!   [`UNTIED_SSL_MAX_AGE_NS`], on a connection no `SSL *` is tied to, after
//!   an OpenSSL call on an untied `SSL *` returned: that call made the
//!   record (Node.js writes what OpenSSL put in its memory BIO at once, in
//!   the same native call: the ClientHello after the first `SSL_read`, the
//!   ServerHello after the one that took the ClientHello).
//! - reads by OpenSSL-using processes are remembered (`LAST_READ`), for
//!   the OpenSSL read probes to tie an untied `SSL *` to.
//!
//! Each clue ties one `SSL *` once and is used up.
//!
//! Go programs link their own TLS: see `go` for how their connections are
//! told.

use agent_common::{
    scan::is_tls_record,
    socket_data::{DIRECTION_INGRESS, ROLE_SERVER, SocketDataEvent},
    socket_state::{CONN_TLS, TrackedConn},
};

use crate::{
    go::{GO_TLS_PROCESS, is_go_tls_socket},
    maps::{
        LAST_READ, LAST_UNTIED_SSL, SERVER_FDS, SSL_CALLS, SSL_PROCESSES, SSL_SOCKETS, SslKey,
        SslSocket, TRACKED_CONNS, may_use_tls_or_go,
    },
    syscall_args::{UserData, head_of},
};

/// How long after an OpenSSL call on an untied `SSL *` a TLS record the
/// thread writes may be taken for that call's output: memory-BIO programs
/// write it out in the same native call.
const UNTIED_SSL_MAX_AGE_NS: u64 = 10_000_000;
/// Ties `key` to a connection, which now carries TLS. A server
/// connection's descriptor is noted as its plaintext requests' (what
/// `socket_call` does for plaintext ones, which the TLS probes cannot: they
/// see no descriptor), for the runtimes that name a request by it
/// (`probes::nginx`, `nodecontext`).
#[inline(always)]
pub fn tie(key: &SslKey, socket: &SslSocket) {
    let _ = SSL_SOCKETS.insert(key, socket, 0);
    if socket.role == ROLE_SERVER && socket.fd != u32::MAX {
        let fd_key = (u64::from(key.tgid) << 32) | u64::from(socket.fd);
        let _ = SERVER_FDS.insert(fd_key, socket.cookie, 0);
    }
    if let Some(conn) = TRACKED_CONNS.get_ptr_mut(socket.cookie) {
        // SAFETY: a valid map value pointer.
        unsafe { (*conn).flags |= CONN_TLS };
    }
}

/// Called by the socket capture program for each call, with the call's data
/// (`total` bytes): true if the connection carries TLS (its ciphertext is
/// not reported). Socket I/O inside an OpenSSL call ties that call's `SSL
/// *` to the socket; for memory-BIO programs, a TLS record written right
/// after a call on an untied `SSL *` ties it, and reads by OpenSSL-using
/// processes are remembered.
#[inline(always)]
pub fn is_tls_socket(
    event: &SocketDataEvent,
    conn: &TrackedConn,
    data: Option<&UserData>,
    total: u32,
) -> bool {
    let tid = event.header.tid;
    let tgid = event.header.pid;
    // Most targets never call OpenSSL or Go's TLS: the filter, else one
    // lookup, rules out the rest (`SSL_CALLS` only holds threads of
    // processes in `SSL_PROCESSES`).
    if !may_use_tls_or_go(tgid) {
        return conn.flags & CONN_TLS != 0;
    }
    // SAFETY: plain value lookup.
    match unsafe { SSL_PROCESSES.get(tgid) } {
        None => return conn.flags & CONN_TLS != 0,
        Some(&GO_TLS_PROCESS) => return is_go_tls_socket(event, conn, data, total),
        Some(_) => {}
    }
    let socket = SslSocket {
        cookie: event.socket_cookie,
        seen_ns: event.header.timestamp_ns,
        tuple: event.tuple,
        role: event.role,
        fd: event.fd,
    };
    // SAFETY: plain value lookup.
    if let Some(call) = unsafe { SSL_CALLS.get(tid) } {
        let key = SslKey {
            tgid,
            reserved: 0,
            ssl: call.ssl,
        };
        tie(&key, &socket);
        return true;
    }
    if conn.flags & CONN_TLS != 0 {
        return true;
    }
    if event.direction == DIRECTION_INGRESS {
        let _ = LAST_READ.insert(tid, socket, 0);
        return false;
    }
    // SAFETY: plain value lookup, copied out.
    let Some(untied) = (unsafe { LAST_UNTIED_SSL.get(tid) }).copied() else {
        return false;
    };
    if event.header.timestamp_ns.wrapping_sub(untied.seen_ns) > UNTIED_SSL_MAX_AGE_NS {
        return false;
    }
    let (head, len) = head_of(data, total);
    if !is_tls_record(&head, len) {
        return false;
    }
    let _ = LAST_UNTIED_SSL.remove(tid);
    let key = SslKey {
        tgid,
        reserved: 0,
        ssl: untied.ssl,
    };
    tie(&key, &socket);
    true
}
