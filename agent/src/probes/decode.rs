//! Turns raw ring-buffer records into typed events. The kernel writes
//! `agent_common` structs; every record is checked for size and kind before
//! it is read, and a bad record is an error, never a panic.

use std::{
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use agent_common::{
    EventHeader, EventKind,
    process::ProcessEvent,
    socket_data::{
        ConnTuple, DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_INET, FAMILY_INET6,
        MAX_CAPTURE_BYTES, ROLE_CLIENT, ROLE_SERVER, SOCKET_DATA_HEADER_LEN, SOURCE_TLS,
        SocketDataEvent,
    },
    socket_state::{ListenEvent, SocketCloseEvent},
    trace_context::{
        CTX_AMBIGUOUS, CTX_FROM_HEADER, CTX_HAS_PARENT, CTX_INJECTED, CTX_UPDATE, CTX_VALID,
        Http2InjectedEvent, TraceContext,
    },
};
use bytes::{Bytes, BytesMut};

use crate::model::call::KernelTrace;

/// Which way the bytes went, from the instrumented process's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process sent them.
    Egress,
    /// The process received them.
    Ingress,
}

/// The process's side of the connection, when the kernel saw it being set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opened before the agent attached: infer it from the payload.
    Unknown,
    /// The process connected.
    Client,
    /// The process accepted.
    Server,
}

impl KernelTrace {
    /// The trace context of a record (see `agent_common::trace_context`),
    /// if the kernel gave the request one.
    fn from_raw(raw: &TraceContext) -> Option<Self> {
        if raw.flags & CTX_VALID == 0 {
            return None;
        }
        Some(Self {
            trace_id: raw.trace_id,
            span_id: raw.span_id,
            parent_span_id: (raw.flags & CTX_HAS_PARENT != 0).then_some(raw.parent_span_id),
            trace_flags: raw.trace_flags as u8,
            injected: raw.flags & CTX_INJECTED != 0,
            from_header: raw.flags & CTX_FROM_HEADER != 0,
            ambiguous: raw.flags & CTX_AMBIGUOUS != 0,
            update: raw.flags & CTX_UPDATE != 0,
        })
    }
}

/// Bytes moved over one TCP socket by one syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketData {
    /// Process id.
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds at the end of the call.
    pub timestamp_ns: u64,
    /// Kernel socket cookie: the connection's identity.
    pub socket_cookie: u64,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Send or receive.
    pub direction: Direction,
    /// Client or server side, if known.
    pub role: Role,
    /// The file descriptor used, when the syscall was identified.
    pub fd: Option<u32>,
    /// Bytes the call moved.
    pub total_len: u32,
    /// A prefix of those bytes (possibly empty, at most `total_len`).
    pub payload: Bytes,
    /// Set when this call starts an HTTP/1 request.
    pub trace: Option<KernelTrace>,
    /// TLS plaintext captured at OpenSSL's API, not socket bytes.
    pub tls: bool,
}

impl SocketData {
    /// True if the kernel copied less than the call moved.
    pub fn is_truncated(&self) -> bool {
        (self.payload.len() as u64) < u64::from(self.total_len)
    }
}

/// A tracked connection reached TCP_CLOSE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketClose {
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// Kernel socket cookie.
    pub socket_cookie: u64,
}

/// The ids the kernel wrote as a `traceparent` into an outgoing HTTP/2
/// request, reported before the send's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Injected {
    /// The connection's local address and port.
    pub local: SocketAddr,
    /// Its remote address and port.
    pub remote: SocketAddr,
    /// The request's stream.
    pub stream_id: u32,
    /// The client span's identity (`injected` set).
    pub trace: KernelTrace,
}

/// Everything the kernel programs report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// See [`SocketData`].
    Data(SocketData),
    /// See [`Http2Injected`].
    Http2Injected(Http2Injected),
    /// See [`SocketClose`].
    Close(SocketClose),
    /// A process called exec.
    Exec {
        /// The process.
        pid: u32,
    },
    /// A target process exited.
    Exit {
        /// The process.
        pid: u32,
    },
    /// A process started listening on a TCP port.
    Listen {
        /// The process that called `listen()`.
        pid: u32,
        /// The local port.
        port: u16,
    },
}

/// Why a ring-buffer record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    #[error("record of {len} bytes is too short for {what} ({need} bytes)")]
    TooShort {
        /// Record length.
        len: usize,
        /// Bytes needed.
        need: usize,
        /// What was being decoded.
        what: &'static str,
    },
    /// Unknown kind in the header.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// A field holds a value the kernel never writes.
    #[error("invalid {field} value {value}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// Reads a `T` from the start of `bytes`, if long enough.
fn read_struct<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::TooShort {
            len: bytes.len(),
            need,
            what,
        });
    }
    // SAFETY: length checked; T is a repr(C) agent_common type valid for any
    // bit pattern; read_unaligned since ring-buffer records are only 8-aligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record. A socket payload is appended to
/// `payloads` and split off it: the caller decides how its buffer grows.
pub fn decode(record: &[u8], payloads: &mut BytesMut) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_struct(record, "event header")?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::SocketData) => decode_data(record, payloads).map(KernelEvent::Data),
        Some(EventKind::SocketClose) => {
            let event: SocketCloseEvent = read_struct(record, "socket close event")?;
            Ok(KernelEvent::Close(SocketClose {
                timestamp_ns: event.header.timestamp_ns,
                socket_cookie: event.socket_cookie,
            }))
        }
        Some(EventKind::ProcessExec) => {
            let event: ProcessEvent = read_struct(record, "process event")?;
            Ok(KernelEvent::Exec {
                pid: event.header.pid,
            })
        }
        Some(EventKind::ProcessExit) => {
            let event: ProcessEvent = read_struct(record, "process event")?;
            Ok(KernelEvent::Exit {
                pid: event.header.pid,
            })
        }
        Some(EventKind::SocketListen) => {
            let event: ListenEvent = read_struct(record, "listen event")?;
            Ok(KernelEvent::Listen {
                pid: event.header.pid,
                port: event.port,
            })
        }
        Some(EventKind::Http2Injected) => {
            let event: Http2InjectedEvent = read_struct(record, "HTTP/2 injection event")?;
            let trace = KernelTrace::from_raw(&event.trace).ok_or(DecodeError::InvalidField {
                field: "trace flags",
                value: event.trace.flags,
            })?;
            let (local, remote) = socket_addrs(&event.tuple)?;
            Ok(KernelEvent::Http2Injected(Http2Injected {
                local,
                remote,
                stream_id: event.stream_id,
                trace,
            }))
        }
        None => Err(DecodeError::UnknownKind(header.kind)),
    }
}

fn decode_data(record: &[u8], payloads: &mut BytesMut) -> Result<SocketData, DecodeError> {
    if record.len() < SOCKET_DATA_HEADER_LEN {
        return Err(DecodeError::TooShort {
            len: record.len(),
            need: SOCKET_DATA_HEADER_LEN,
            what: "socket data event",
        });
    }
    // Only the fixed part is read, field by field: a copy of the whole
    // struct would move its 4 KiB payload array (twice, through a zeroed
    // buffer) for every event, most of whose payloads are a few hundred
    // bytes.
    let fixed = &record[..SOCKET_DATA_HEADER_LEN];
    macro_rules! field {
        ($name:ident) => {
            read_struct(
                &fixed[offset_of!(SocketDataEvent, $name)..],
                concat!("socket data event ", stringify!($name)),
            )?
        };
    }
    let header: EventHeader = field!(header);
    let total_len: u32 = field!(total_len);
    let captured_len: u32 = field!(captured_len);
    let captured = captured_len as usize;
    if captured > MAX_CAPTURE_BYTES || captured > total_len as usize {
        return Err(DecodeError::InvalidField {
            field: "captured_len",
            value: captured_len,
        });
    }
    let payload_end = SOCKET_DATA_HEADER_LEN + captured;
    if record.len() < payload_end {
        return Err(DecodeError::TooShort {
            len: record.len(),
            need: payload_end,
            what: "socket data payload",
        });
    }
    let direction = match field!(direction) {
        DIRECTION_EGRESS => Direction::Egress,
        DIRECTION_INGRESS => Direction::Ingress,
        value => {
            return Err(DecodeError::InvalidField {
                field: "direction",
                value,
            });
        }
    };
    let role = match field!(role) {
        ROLE_CLIENT => Role::Client,
        ROLE_SERVER => Role::Server,
        _ => Role::Unknown,
    };
    let tuple: ConnTuple = field!(tuple);
    let fd: u32 = field!(fd);
    let source: u32 = field!(source);
    let trace: TraceContext = field!(trace);
    let (local, remote) = socket_addrs(&tuple)?;
    Ok(SocketData {
        pid: header.pid,
        tid: header.tid,
        timestamp_ns: header.timestamp_ns,
        socket_cookie: field!(socket_cookie),
        local,
        remote,
        direction,
        role,
        fd: (fd != u32::MAX).then_some(fd),
        total_len,
        payload: {
            // Appended to the caller's buffer and split off it: no
            // allocation of its own while the buffer has room.
            payloads.extend_from_slice(&record[SOCKET_DATA_HEADER_LEN..payload_end]);
            payloads.split().freeze()
        },
        trace: KernelTrace::from_raw(&trace),
        tls: source == SOURCE_TLS,
    })
}

fn socket_addrs(tuple: &ConnTuple) -> Result<(SocketAddr, SocketAddr), DecodeError> {
    let ip = |raw: &[u8; 16]| -> Result<IpAddr, DecodeError> {
        match tuple.family {
            FAMILY_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            FAMILY_INET6 => {
                let v6 = Ipv6Addr::from(*raw);
                // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
                Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            family => Err(DecodeError::InvalidField {
                field: "family",
                value: family.into(),
            }),
        }
    };
    Ok((
        SocketAddr::new(ip(&tuple.local_addr)?, tuple.local_port),
        SocketAddr::new(ip(&tuple.remote_addr)?, tuple.remote_port),
    ))
}

#[cfg(test)]
mod tests {
    use agent_common::{
        EventHeader, EventKind,
        socket_data::{
            ConnTuple, DIRECTION_INGRESS, FAMILY_INET, MAX_CAPTURE_BYTES, ROLE_SERVER,
            SOCKET_DATA_HEADER_LEN, SOURCE_SOCKET, SocketDataEvent,
        },
        trace_context::{CTX_VALID, TraceContext},
    };
    use bytes::BytesMut;

    use super::{DecodeError, Direction, KernelEvent, Role, decode};

    fn event(payload: &[u8], total_len: u32) -> SocketDataEvent {
        let mut event = SocketDataEvent {
            header: EventHeader {
                kind: EventKind::SocketData as u32,
                pid: 41,
                tid: 42,
                reserved: 0,
                timestamp_ns: 1_000,
            },
            socket_cookie: 7,
            tuple: ConnTuple {
                local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                local_port: 8080,
                remote_port: 50_000,
                family: FAMILY_INET,
                reserved: 0,
            },
            total_len,
            captured_len: payload.len() as u32,
            fd: 9,
            direction: DIRECTION_INGRESS,
            role: ROLE_SERVER,
            source: SOURCE_SOCKET,
            trace: TraceContext {
                trace_id: [3; 16],
                span_id: [4; 8],
                parent_span_id: [0; 8],
                flags: CTX_VALID,
                trace_flags: 1,
            },
            payload: [0; MAX_CAPTURE_BYTES],
        };
        event.payload[..payload.len()].copy_from_slice(payload);
        event
    }

    /// The record the kernel writes: the event cut after its captured bytes.
    fn record(event: &SocketDataEvent) -> Vec<u8> {
        // SAFETY: a repr(C) plain-data struct read as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(event).cast::<u8>(),
                size_of::<SocketDataEvent>(),
            )
        };
        bytes[..SOCKET_DATA_HEADER_LEN + event.captured_len as usize].to_vec()
    }

    #[test]
    fn a_data_record_decodes_field_by_field_with_its_payload() {
        let mut payloads = BytesMut::new();
        let raw = record(&event(b"GET / HTTP/1.1\r\n", 100));
        let Ok(KernelEvent::Data(data)) = decode(&raw, &mut payloads) else {
            panic!("not a data event");
        };
        assert_eq!((data.pid, data.tid, data.timestamp_ns), (41, 42, 1_000));
        assert_eq!(data.socket_cookie, 7);
        assert_eq!(data.local.to_string(), "127.0.0.1:8080");
        assert_eq!(data.remote.to_string(), "10.0.0.2:50000");
        assert_eq!(
            (data.direction, data.role),
            (Direction::Ingress, Role::Server)
        );
        assert_eq!((data.fd, data.total_len), (Some(9), 100));
        assert_eq!(&data.payload[..], b"GET / HTTP/1.1\r\n");
        assert!(data.is_truncated() && !data.tls);
        let trace = data.trace.expect("trace context");
        assert_eq!((trace.trace_id, trace.span_id), ([3; 16], [4; 8]));
    }

    #[test]
    fn bad_data_records_are_errors() {
        let mut payloads = BytesMut::new();
        let mut bad = event(b"abc", 2);
        assert_eq!(
            decode(&record(&bad), &mut payloads),
            Err(DecodeError::InvalidField {
                field: "captured_len",
                value: 3
            })
        );
        bad.total_len = 3;
        let raw = record(&bad);
        assert!(matches!(
            decode(&raw[..raw.len() - 1], &mut payloads),
            Err(DecodeError::TooShort { .. })
        ));
        assert!(matches!(
            decode(&raw[..SOCKET_DATA_HEADER_LEN - 1], &mut payloads),
            Err(DecodeError::TooShort { .. })
        ));
        bad.direction = 9;
        assert_eq!(
            decode(&record(&bad), &mut payloads),
            Err(DecodeError::InvalidField {
                field: "direction",
                value: 9
            })
        );
    }
}
