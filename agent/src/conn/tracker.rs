//! The connection table: turns captured socket data into finished calls by
//! handing each connection's bytes to the protocol slice that claimed it
//! (`crate::protocols`). Nothing here knows a protocol.
//!
//! Connections are keyed by socket cookie. The first payload decides the
//! protocol: each detector in `protocols::DETECTORS` is asked in turn. The
//! process's side comes from the kernel's [`Role`] when it saw the
//! connection set up (the payload is then the connection's first bytes);
//! otherwise the detector infers it. A connection whose first bytes no
//! protocol claims (TLS, another protocol) is ignored until it closes; one
//! of unknown role may have been caught mid-message, so it gets a few
//! events to show a message start first. Both count as
//! [`Counter::ParseFailedHttp1`].
//!
//! TLS connections are read from the plaintext the OpenSSL probes report
//! with the socket's cookie (`SocketData::tls`). The first such event
//! restarts the connection's detection, since the handshake went through the
//! socket probes before the kernel knew the socket was TLS; later socket
//! events on it are ciphertext and are dropped (counted in
//! [`Counter::TlsCiphertextIgnored`]).
//!
//! Memory is bounded: connections (least recently used evicted), and each
//! slice bounds its own state. Every loss is counted in [`Stats`].

use std::{collections::BTreeSet, sync::Arc};

// foldhash, not SipHash: the keys are socket cookies, which the kernel
// assigns from a counter, so no peer can choose them to collide.
use hashbrown::HashMap;
use tracing::debug;

pub use crate::protocols::TrackerConfig;
use crate::{
    model::call::{Call, Outcome, Side},
    probes::{
        decode::{Http2Injected, Role, SocketClose, SocketData},
        node,
    },
    protocols::{self, Ctx, Flow, Injection, ProtocolConn, http2::hpack::Huffman},
    telemetry::{Counter, Stats},
};

/// Every tracked connection, each read by its protocol slice.
#[derive(Debug)]
pub struct ConnTracker {
    /// What every connection's protocol slice reads with.
    shared: Shared,
    conns: HashMap<u64, Conn>,
    /// `(activity ns, cookie)`, oldest first: the eviction and idle order.
    /// A connection's key is its activity when it was last filed, which
    /// trails its `last_ns`: re-filing it on every event cost two tree
    /// operations per event, so it is re-filed only when it comes first
    /// (see [`ConnTracker::oldest`]), which keeps the order exact.
    by_activity: BTreeSet<(u64, u64)>,
    /// Connections whose protocol needs every byte, found since the last
    /// [`ConnTracker::take_capture_all`].
    capture_all: Vec<u64>,
}

/// The tracker's state that is not per connection, apart from the
/// connection table so both can be borrowed at once.
#[derive(Debug)]
struct Shared {
    config: TrackerConfig,
    stats: Arc<Stats>,
    /// Shared by every HTTP/2 connection's HPACK decoders.
    huffman: Huffman,
    /// Ids the kernel injected into HTTP/2 requests, waiting for their
    /// connection to read the request.
    injection: Injection,
}

impl Shared {
    /// What a connection needs to read an event.
    fn ctx<'a>(&'a mut self, out: &'a mut Vec<Call>) -> Ctx<'a> {
        Ctx {
            config: &self.config,
            stats: &self.stats,
            huffman: &mut self.huffman,
            out,
            injection: &mut self.injection,
        }
    }
}

impl ConnTracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig, stats: Arc<Stats>) -> Self {
        Self {
            shared: Shared {
                config,
                stats,
                huffman: Huffman::default(),
                injection: Injection::default(),
            },
            conns: HashMap::new(),
            by_activity: BTreeSet::new(),
            capture_all: Vec::new(),
        }
    }

    /// The kernel wrote ids into an outgoing HTTP/2 request; its data
    /// comes next.
    pub fn on_injected(&mut self, ev: &Http2Injected) {
        let shared = &mut self.shared;
        shared
            .injection
            .insert((ev.local, ev.remote), ev.stream_id, ev.trace, &shared.stats);
    }

    /// Cookies of the connections found since the last call to speak a
    /// protocol that needs every byte copied (HTTP/2: frame headers sit
    /// anywhere in a write), where HTTP/1 needs only the heads of large
    /// writes.
    pub fn take_capture_all(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.capture_all)
    }

    /// Connections currently tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Reads one syscall's bytes; the calls they complete go to `out`.
    pub fn on_data(&mut self, ev: &SocketData, out: &mut Vec<Call>) {
        if ev.total_len == 0 {
            return;
        }
        let cookie = ev.socket_cookie;
        if !self.conns.contains_key(&cookie) {
            if self.conns.len() >= self.shared.config.max_connections
                && let Some(oldest) = self.oldest()
            {
                self.drop_conn(oldest, "table full", ev.timestamp_ns, out);
            }
            let mut conn = Conn::new(
                ev.pid,
                ev.timestamp_ns,
                self.shared.config.unknown_role_probe_events,
            );
            // The agent talking to a Node process's inspector: not the
            // service's traffic.
            if ev.role != Role::Client && node::inspector::is_agent_session(ev.local, ev.remote) {
                conn.state = ConnState::Ignored;
            }
            self.by_activity.insert((conn.filed_ns, cookie));
            self.conns.insert(cookie, conn);
        }
        let Some(conn) = self.conns.get_mut(&cookie) else {
            return;
        };
        conn.last_ns = conn.last_ns.max(ev.timestamp_ns);
        let needed_all = conn.needs_all_bytes();
        conn.on_data(ev, &mut self.shared.ctx(out));
        if !needed_all && conn.needs_all_bytes() {
            self.capture_all.push(cookie);
        }
    }

    /// The connection closed: a response running until close ends, requests
    /// still unanswered end with [`Outcome::ConnectionClosed`] (to `out`).
    pub fn on_close(&mut self, ev: &SocketClose, out: &mut Vec<Call>) {
        if let Some(mut conn) = self.remove(ev.socket_cookie) {
            conn.finish(
                Outcome::ConnectionClosed,
                ev.timestamp_ns,
                &mut self.shared.ctx(out),
            );
        }
    }

    /// Drops connections idle since before `now_ns - idle_timeout_ns`; their
    /// unanswered requests are abandoned (to `out`).
    pub fn on_tick(&mut self, now_ns: u64, out: &mut Vec<Call>) {
        while let Some(cookie) = self.oldest()
            && let Some(conn) = self.conns.get(&cookie)
            && conn
                .last_ns
                .saturating_add(self.shared.config.idle_timeout_ns)
                <= now_ns
        {
            self.drop_conn(cookie, "idle", now_ns, out);
        }
    }

    /// The process exited: its connections end as if closed, at their last
    /// activity (to `out`).
    pub fn forget_pid(&mut self, pid: u32, out: &mut Vec<Call>) {
        let cookies: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.pid == pid)
            .map(|(&cookie, _)| cookie)
            .collect();
        for cookie in cookies {
            if let Some(mut conn) = self.remove(cookie) {
                let at = conn.last_ns;
                conn.finish(Outcome::ConnectionClosed, at, &mut self.shared.ctx(out));
            }
        }
    }

    fn remove(&mut self, cookie: u64) -> Option<Conn> {
        let conn = self.conns.remove(&cookie)?;
        self.by_activity.remove(&(conn.filed_ns, cookie));
        Some(conn)
    }

    /// The least recently active connection. Connections filed before
    /// their latest activity are re-filed at it on the way, so what comes
    /// first is truly the oldest.
    fn oldest(&mut self) -> Option<u64> {
        while let Some(&(filed_ns, cookie)) = self.by_activity.first() {
            let Some(conn) = self.conns.get_mut(&cookie) else {
                // Never happens (both are updated together); not looping on it.
                self.by_activity.pop_first();
                continue;
            };
            if conn.last_ns == filed_ns {
                return Some(cookie);
            }
            self.by_activity.pop_first();
            conn.filed_ns = conn.last_ns;
            self.by_activity.insert((conn.filed_ns, cookie));
        }
        None
    }

    /// Evicts a connection, abandoning what it still waits for.
    fn drop_conn(&mut self, cookie: u64, reason: &'static str, now_ns: u64, out: &mut Vec<Call>) {
        if let Some(mut conn) = self.remove(cookie) {
            Loss::Evicted { cookie, reason }.record(&self.shared.stats);
            conn.finish(Outcome::Abandoned, now_ns, &mut self.shared.ctx(out));
        }
    }
}

/// What the tracker loses, each logged and counted in one place.
enum Loss {
    /// A connection no protocol claimed.
    Unrecognised { cookie: u64, why: &'static str },
    /// A connection dropped to bound memory.
    Evicted { cookie: u64, reason: &'static str },
}

impl Loss {
    fn record(self, stats: &Stats) {
        match self {
            Self::Unrecognised { cookie, why } => {
                debug!(cookie, why, "no known protocol, ignoring the connection");
                // The counter predates other protocols: it counts
                // connections that are not HTTP/1 (nor any other protocol).
                stats.add(Counter::ParseFailedHttp1, 1);
            }
            Self::Evicted { cookie, reason } => {
                debug!(cookie, reason, "connection evicted");
                stats.add(Counter::ConnectionsEvicted, 1);
            }
        }
    }
}

/// One tracked connection.
#[derive(Debug)]
struct Conn {
    pid: u32,
    /// Latest activity, monotonic ns.
    last_ns: u64,
    /// Its key in `ConnTracker::by_activity`.
    filed_ns: u64,
    state: ConnState,
    /// The OpenSSL probes reported plaintext for it: only their events
    /// count from then on.
    tls: bool,
}

#[derive(Debug)]
enum ConnState {
    /// Role unknown and no protocol seen yet; gives up after `budget` more
    /// events with payload.
    Probing { budget: u32 },
    /// Read by the protocol that claimed it.
    Protocol(Box<dyn ProtocolConn>),
    /// No known protocol (or no longer: upgraded): ignored until it closes.
    Ignored,
}

impl ConnState {
    /// Waiting for a message start, for at most `events` events with payload.
    fn probing(events: u32) -> Self {
        Self::Probing {
            budget: events.max(1),
        }
    }
}

impl Conn {
    fn new(pid: u32, now_ns: u64, probe_events: u32) -> Self {
        Self {
            pid,
            last_ns: now_ns,
            filed_ns: now_ns,
            state: ConnState::probing(probe_events),
            tls: false,
        }
    }

    fn needs_all_bytes(&self) -> bool {
        match &self.state {
            ConnState::Protocol(protocol) => protocol.needs_all_bytes(),
            ConnState::Probing { .. } | ConnState::Ignored => false,
        }
    }

    fn on_data(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) {
        let stats = ctx.stats;
        match (self.tls, ev.tls) {
            (false, true) => {
                // The socket's handshake (and maybe more) was captured
                // before the kernel knew it carried TLS: whatever was read
                // from those bytes is not HTTP. The plaintext starts here.
                self.finish(Outcome::Abandoned, ev.timestamp_ns, ctx);
                self.state = ConnState::probing(ctx.config.unknown_role_probe_events);
                self.tls = true;
            }
            (true, false) => {
                // Ciphertext of a connection whose plaintext the OpenSSL
                // probes report: reading it would only make bogus spans.
                debug!(
                    cookie = ev.socket_cookie,
                    "ciphertext on a TLS connection ignored"
                );
                stats.add(Counter::TlsCiphertextIgnored, 1);
                return;
            }
            (false, false) | (true, true) => {}
        }
        if let ConnState::Probing { budget } = &mut self.state {
            if ev.payload.is_empty() {
                return;
            }
            let side = match ev.role {
                Role::Client => Some(Side::Client),
                Role::Server => Some(Side::Server),
                Role::Unknown => None,
            };
            match protocols::detect(ev, side, ctx.config) {
                Some(protocol) => self.state = ConnState::Protocol(protocol),
                // The kernel saw the connection open, so these were its
                // first bytes, and no protocol starts that way.
                None if side.is_some() => {
                    Loss::Unrecognised {
                        cookie: ev.socket_cookie,
                        why: "first bytes",
                    }
                    .record(stats);
                    self.state = ConnState::Ignored;
                    return;
                }
                None => {
                    *budget -= 1;
                    if *budget == 0 {
                        Loss::Unrecognised {
                            cookie: ev.socket_cookie,
                            why: "no message start",
                        }
                        .record(stats);
                        self.state = ConnState::Ignored;
                    }
                    return;
                }
            }
        }
        if let ConnState::Protocol(protocol) = &mut self.state {
            match protocol.on_data(ev, ctx) {
                Flow::Continue => {}
                Flow::Stop => self.state = ConnState::Ignored,
                Flow::Switch => {
                    self.state = match protocol.take_successor() {
                        Some(next) => ConnState::Protocol(next),
                        None => ConnState::Ignored,
                    }
                }
            }
        }
    }

    /// Ends everything in flight.
    fn finish(&mut self, unanswered: Outcome, at_ns: u64, ctx: &mut Ctx<'_>) {
        if let ConnState::Protocol(protocol) = &mut self.state {
            protocol.finish(&unanswered, at_ns, ctx);
        }
    }
}

#[cfg(test)]
mod tests;
