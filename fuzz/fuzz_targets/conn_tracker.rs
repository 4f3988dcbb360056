//! Whole connections through the connection tracker, as the pipeline feeds
//! it: protocol detection, then every protocol's connection state (HTTP/1,
//! HTTP/2 with HPACK and gRPC, PostgreSQL, MySQL, Redis, memcached), over
//! sends and receives that may be cut short by the capture limit; every
//! finished call is then described as a span (routes, SQL sanitizing).
//!
//! The input is a sequence of events: a control byte, a little-endian u16
//! payload length, then the payload. Control bits: 0 direction (set:
//! receive), 1-2 role (unknown, client, server), 3 the kernel copied only
//! part of the call, 4 TLS plaintext, 5 a second connection, 6 the
//! connection closes after this event, 7 an idle tick follows.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use agent::conn::tracker::ConnTracker;
use agent::probes::decode::{Direction, Role, SocketClose, SocketData};
use agent::protocols::{DescribeOptions, TrackerConfig, describe};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = TrackerConfig {
        // Small bounds, so evictions and overflows are reached too.
        max_connections: 2,
        max_pending_requests: 4,
        max_head_bytes: 512,
        max_streams_per_connection: 8,
        ..TrackerConfig::default()
    };
    let mut tracker = ConnTracker::new(config, Arc::default());
    let options = DescribeOptions::default();
    let mut calls = Vec::new();
    let mut now_ns = 1_000_000_000;
    let mut rest = data;
    while let [control, low, high, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        now_ns += 1_000_000;
        let cookie = 1 + u64::from(control >> 5 & 1);
        let client = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000 + cookie as u16));
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
        let role = match control >> 1 & 3 {
            1 => Role::Client,
            2 => Role::Server,
            _ => Role::Unknown,
        };
        let (local, remote) = match role {
            Role::Server => (server, client),
            _ => (client, server),
        };
        let event = SocketData {
            pid: 7,
            tid: 7,
            timestamp_ns: now_ns,
            socket_cookie: cookie,
            local,
            remote,
            direction: if control & 1 == 1 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            role,
            fd: Some(3),
            total_len: len as u32 + if control & 8 == 8 { 4096 } else { 0 },
            payload: Bytes::copy_from_slice(payload),
            trace: None,
            tls: control & 16 == 16,
        };
        tracker.on_data(&event, &mut calls);
        if control & 64 == 64 {
            let close = SocketClose {
                timestamp_ns: now_ns,
                socket_cookie: cookie,
            };
            tracker.on_close(&close, &mut calls);
        }
        if control & 128 == 128 {
            now_ns += 600_000_000_000;
            tracker.on_tick(now_ns, &mut calls);
        }
    }
    tracker.forget_pid(7, &mut calls);
    for call in &calls {
        describe(call, &options, true);
    }
});
