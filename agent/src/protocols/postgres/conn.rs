//! PostgreSQL frontend/backend protocol (v3) client connections: startup
//! (with `SSLRequest`/`GSSENCRequest` answered `N` or `S`), simple query,
//! and the extended protocol (Parse/Bind/Execute/Sync, pipelined, with
//! prepared statements reused by name), paired with their results and
//! `ErrorResponse` SQLSTATEs.
//!
//! One operation per simple `Query` (ended by `ReadyForQuery`) and per
//! `Execute` (ended by `CommandComplete`, `EmptyQueryResponse`,
//! `PortalSuspended` or `ErrorResponse`); an `Execute` the server skipped
//! after an earlier error in the same pipeline gets no span (counted).
//! Query text is sanitized here ([`crate::protocols::db::sql`]): parameter values (Bind),
//! rows and error messages are skipped by length, never copied out.
//! Messages cut by the capture are skipped by length; a cut where a
//! message header was loses sync until a call starts with a message.

use std::collections::{HashMap, VecDeque};

use crate::protocols::{
    Stamp,
    db::{
        Chunk, DbEvent, DbOutcome, DbRequest, DbSystem, Degraded, Pending,
        sql::{self, Dialect},
    },
};

/// Most body bytes kept of a message the parser reads (query text).
const MAX_KEEP: usize = 16 * 1024;
/// Longest message accepted: the server's own limit for most messages is
/// 1 GiB, but a length this large in practice means the bytes are not
/// PostgreSQL.
const MAX_MESSAGE: u32 = 256 * 1024 * 1024;
/// Most prepared statements and portals remembered per connection.
const MAX_STATEMENTS: usize = 512;
/// Most operations waiting for results on one connection.
const MAX_PENDING: usize = 4096;
/// `SSLRequest`, `GSSENCRequest` and `CancelRequest` codes, and protocol 3.0.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;

/// One message: its type (0 for the untyped startup family) and the
/// captured start of its body.
#[derive(Debug)]
struct Message {
    kind: u8,
    body: Vec<u8>,
    /// The whole body was captured.
    complete: bool,
    /// Time and thread of the call the message started in.
    start: Stamp,
}

/// Streaming message reader for one direction.
#[derive(Debug, Default)]
struct Reader {
    /// Header bytes so far (type and length, or startup length).
    header: Vec<u8>,
    /// The message whose body is being read, and how much of it is left.
    current: Option<(Message, u32)>,
    /// The next message has no type byte (the client's first).
    untyped_next: bool,
    /// Message boundaries are unknown: wait for a call that starts one.
    lost: bool,
    now: Stamp,
}

/// Why a reader lost sync.
struct Lost;

impl Reader {
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Message>) -> Result<(), Lost> {
        if self.lost {
            if !chunk.data.first().is_some_and(|b| b.is_ascii_alphabetic()) {
                return Ok(());
            }
            self.lost = false;
        }
        self.now = chunk.at();
        let mut data = chunk.data;
        while !data.is_empty() {
            data = self.step(data, out)?;
        }
        if chunk.uncaptured == 0 {
            return Ok(());
        }
        match self.current.as_mut() {
            Some((message, left)) if *left as usize >= chunk.uncaptured => {
                *left -= chunk.uncaptured as u32;
                message.complete = false;
                if *left == 0 {
                    out.push(self.current.take().expect("just matched").0);
                }
                Ok(())
            }
            _ => Err(Lost),
        }
    }

    fn lose(&mut self) {
        *self = Self {
            lost: true,
            ..Self::default()
        };
    }

    fn step<'a>(&mut self, data: &'a [u8], out: &mut Vec<Message>) -> Result<&'a [u8], Lost> {
        if let Some((message, left)) = self.current.as_mut() {
            let n = (*left as usize).min(data.len());
            let room = MAX_KEEP.saturating_sub(message.body.len());
            message.body.extend_from_slice(&data[..n.min(room)]);
            if n > room {
                message.complete = false;
            }
            *left -= n as u32;
            if *left == 0 {
                out.push(self.current.take().expect("just matched").0);
            }
            return Ok(&data[n..]);
        }
        let header_len = if self.untyped_next { 4 } else { 5 };
        let n = (header_len - self.header.len()).min(data.len());
        self.header.extend_from_slice(&data[..n]);
        if self.header.len() < header_len {
            return Ok(&data[n..]);
        }
        let (kind, len_bytes) = if self.untyped_next {
            (0, &self.header[..4])
        } else {
            (self.header[0], &self.header[1..5])
        };
        let len = u32::from_be_bytes(len_bytes.try_into().expect("four bytes"));
        if !(4..=MAX_MESSAGE).contains(&len) || !(kind == 0 || kind.is_ascii_alphanumeric()) {
            return Err(Lost);
        }
        self.header.clear();
        self.untyped_next = false;
        let message = Message {
            kind,
            body: Vec::new(),
            complete: true,
            start: self.now,
        };
        if len == 4 {
            out.push(message);
        } else {
            self.current = Some((message, len - 4));
        }
        Ok(&data[n..])
    }
}

/// What waits for the server's answer, in order.
#[derive(Debug)]
enum Awaited {
    /// A simple query: ends at `ReadyForQuery`.
    Query {
        pending: Pending,
        error: Option<String>,
    },
    /// An `Execute`: ends at its completion or error.
    Execute(Pending),
    /// A `Parse`: no span of its own when it succeeds (its `Execute`
    /// has one); a span with the error when it fails (a bad query that
    /// never ran).
    Parse(Pending),
    /// A `Sync`: answered by `ReadyForQuery`.
    Sync,
}

/// A statement's text, sanitized, with its summary.
#[derive(Clone, Debug)]
struct Statement {
    request: DbRequest,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The client's next message is a startup-family one.
    Startup,
    /// An `SSLRequest` or `GSSENCRequest` waits for its one-byte answer.
    EncryptionAnswer,
    /// Encryption was accepted: ciphertext until a startup message shows
    /// (the OpenSSL probes hand over the plaintext).
    Encrypted,
    /// Regular messages.
    Ready,
}

/// One PostgreSQL client connection.
#[derive(Debug)]
pub struct PostgresConn {
    requests: Reader,
    replies: Reader,
    phase: Phase,
    /// `db.namespace`: the database named at startup.
    database: Option<String>,
    statements: HashMap<Vec<u8>, Statement>,
    /// Portal name to the statement it was bound from.
    portals: HashMap<Vec<u8>, Vec<u8>>,
    awaited: VecDeque<Awaited>,
    /// After an `ErrorResponse` in the extended protocol, the server skips
    /// messages until `Sync`.
    replies_wait_for_request: bool,
}

impl PostgresConn {
    /// A connection seen from its start (`startup`) or already running
    /// when the agent started.
    pub fn new(startup: bool) -> Self {
        Self {
            requests: Reader {
                untyped_next: startup,
                ..Reader::default()
            },
            replies: Reader::default(),
            phase: if startup {
                Phase::Startup
            } else {
                Phase::Ready
            },
            database: None,
            statements: HashMap::new(),
            portals: HashMap::new(),
            awaited: VecDeque::new(),
            replies_wait_for_request: false,
        }
    }

    /// Bytes the client sent.
    pub fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        if self.phase == Phase::Encrypted {
            if !looks_like_startup(chunk.data) {
                return;
            }
            self.phase = Phase::Startup;
            self.requests = Reader {
                untyped_next: true,
                ..Reader::default()
            };
        }
        let mut messages = Vec::new();
        let result = self.requests.feed(chunk, &mut messages);
        self.replies_wait_for_request = false;
        for message in messages {
            self.client_message(message, out);
        }
        if result.is_err() {
            self.requests.lose();
            self.lose(out);
        }
    }

    /// Bytes the client received.
    pub fn on_reply(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        if self.phase == Phase::EncryptionAnswer {
            // One byte, `S`/`G` (go encrypted) or `N`; an `E` is an old
            // server's error, read as a regular message.
            match chunk.data.first() {
                Some(b'S' | b'G') => {
                    self.phase = Phase::Encrypted;
                    return;
                }
                Some(b'N') => {
                    self.phase = Phase::Startup;
                    self.requests.untyped_next = true;
                    let rest = Chunk {
                        data: &chunk.data[1..],
                        ..*chunk
                    };
                    return self.on_reply(&rest, out);
                }
                _ => self.phase = Phase::Ready,
            }
        }
        if self.phase == Phase::Encrypted || self.replies_wait_for_request {
            return;
        }
        let mut messages = Vec::new();
        let result = self.replies.feed(chunk, &mut messages);
        for message in messages {
            self.server_message(&message, chunk, out);
        }
        if result.is_err() {
            self.replies.lose();
            self.lose(out);
        }
    }

    /// The connection closed at `ts_ns`.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<DbEvent>) {
        for awaited in self.awaited.drain(..) {
            match awaited {
                Awaited::Query { pending, .. } | Awaited::Execute(pending) => {
                    out.push(pending.closed(DbSystem::Postgresql, ts_ns));
                }
                Awaited::Sync | Awaited::Parse(_) => {}
            }
        }
    }

    /// Sync lost in either direction: what waits can no longer be paired.
    fn lose(&mut self, out: &mut Vec<DbEvent>) {
        out.push(DbEvent::Degraded(Degraded::LostSync));
        let dropped = self
            .awaited
            .drain(..)
            .filter(|a| matches!(a, Awaited::Query { .. } | Awaited::Execute(_)))
            .count();
        if dropped > 0 {
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(dropped)));
        }
        self.replies.lose();
        self.replies_wait_for_request = true;
    }

    fn client_message(&mut self, message: Message, out: &mut Vec<DbEvent>) {
        let body = &message.body;
        let pending = |request: DbRequest| Pending {
            request,
            at: message.start,
        };
        match message.kind {
            0 => self.startup(body),
            b'Q' => {
                let text = cstr(body).unwrap_or(body);
                let request = self.request_of(text, message.complete && cstr(body).is_some());
                self.push(
                    Awaited::Query {
                        pending: pending(request),
                        error: None,
                    },
                    out,
                );
            }
            b'P' => {
                let Some(name) = cstr(body) else { return };
                let rest = &body[name.len() + 1..];
                let text = cstr(rest).unwrap_or(rest);
                let complete = message.complete && cstr(rest).is_some();
                let statement = Statement {
                    request: self.request_of(text, complete),
                };
                let request = statement.request.clone();
                remember(&mut self.statements, name, statement);
                self.push(Awaited::Parse(pending(request)), out);
            }
            b'B' => {
                let Some(portal) = cstr(body) else { return };
                let Some(statement) = cstr(&body[portal.len() + 1..]) else {
                    return;
                };
                remember(&mut self.portals, portal, statement.to_vec());
            }
            b'E' => {
                let portal = cstr(body).unwrap_or_default();
                let request = self
                    .portals
                    .get(portal)
                    .and_then(|s| self.statements.get(s))
                    .map(|s| s.request.clone())
                    .unwrap_or_else(|| DbRequest {
                        namespace: self.database.clone(),
                        ..DbRequest::default()
                    });
                self.push(Awaited::Execute(pending(request)), out);
            }
            b'S' => self.push(Awaited::Sync, out),
            b'C' => {
                // Close: `S` statement or `P` portal, then its name.
                if let Some((&what, rest)) = body.split_first() {
                    let name = cstr(rest).unwrap_or_default();
                    if what == b'S' {
                        self.statements.remove(name);
                    } else {
                        self.portals.remove(name);
                    }
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, awaited: Awaited, out: &mut Vec<DbEvent>) {
        if self.awaited.len() >= MAX_PENDING {
            self.awaited.pop_front();
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(1)));
        }
        self.awaited.push_back(awaited);
    }

    fn startup(&mut self, body: &[u8]) {
        let Some(code) = body
            .get(..4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("four")))
        else {
            return;
        };
        match code {
            SSL_REQUEST | GSSENC_REQUEST => self.phase = Phase::EncryptionAnswer,
            CANCEL_REQUEST => {}
            PROTOCOL_3 => {
                let mut params = body[4..].split(|b| *b == 0);
                let mut user = None;
                while let (Some(key), Some(value)) = (params.next(), params.next()) {
                    match key {
                        b"database" => {
                            self.database = Some(String::from_utf8_lossy(value).into_owned())
                        }
                        b"user" => user = Some(String::from_utf8_lossy(value).into_owned()),
                        _ => {}
                    }
                }
                // The server's default database is the user's name.
                self.database = self.database.take().or(user);
                self.phase = Phase::Ready;
            }
            _ => self.phase = Phase::Ready,
        }
    }

    fn request_of(&self, text: &[u8], complete: bool) -> DbRequest {
        let text = String::from_utf8_lossy(text);
        let summary = sql::summarize(&text, Dialect::Postgres, complete);
        DbRequest {
            summary: summary.text(),
            operation: summary.operation,
            collection: summary.collection,
            query_text: complete.then(|| sql::sanitize(&text, Dialect::Postgres)),
            namespace: self.database.clone(),
        }
    }

    fn server_message(&mut self, message: &Message, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        match message.kind {
            b'1' => {
                if matches!(self.awaited.front(), Some(Awaited::Parse(_))) {
                    self.awaited.pop_front();
                }
            }
            b'C' | b'I' | b's' => {
                if matches!(self.awaited.front(), Some(Awaited::Execute(_))) {
                    let Some(Awaited::Execute(p)) = self.awaited.pop_front() else {
                        unreachable!("just matched")
                    };
                    out.push(p.finish(DbSystem::Postgresql, DbOutcome::Ok, chunk));
                }
            }
            b'E' => {
                let code = sqlstate(&message.body);
                match self.awaited.front_mut() {
                    Some(Awaited::Query { error, .. }) => *error = Some(code.unwrap_or_default()),
                    Some(Awaited::Execute(_) | Awaited::Parse(_)) => {
                        let Some(Awaited::Execute(p) | Awaited::Parse(p)) =
                            self.awaited.pop_front()
                        else {
                            unreachable!("just matched")
                        };
                        out.push(p.finish(DbSystem::Postgresql, DbOutcome::Error { code }, chunk));
                        // The server skips to the next Sync.
                        self.skip_to_sync(out);
                    }
                    // An error for a Parse or Bind with no Execute, or
                    // outside any operation (authentication).
                    Some(Awaited::Sync) | None => {}
                }
            }
            b'Z' => {
                self.skip_to_sync(out);
                match self.awaited.pop_front() {
                    Some(Awaited::Query { pending, error }) => {
                        let outcome = match error {
                            None => DbOutcome::Ok,
                            Some(code) => DbOutcome::Error {
                                code: Some(code).filter(|c| !c.is_empty()),
                            },
                        };
                        out.push(pending.finish(DbSystem::Postgresql, outcome, chunk));
                    }
                    Some(Awaited::Sync) | None => {}
                    Some(Awaited::Execute(_) | Awaited::Parse(_)) => unreachable!("skipped above"),
                }
            }
            _ => {}
        }
    }

    /// Drops the `Execute`s before the next `Sync` (or simple query): the
    /// server did not run them.
    fn skip_to_sync(&mut self, out: &mut Vec<DbEvent>) {
        let mut dropped = 0;
        while let Some(Awaited::Execute(_) | Awaited::Parse(_)) = self.awaited.front() {
            if let Some(Awaited::Execute(_)) = self.awaited.pop_front() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(dropped)));
        }
    }
}

/// The NUL-terminated string at the start of `bytes`, without its NUL.
fn cstr(bytes: &[u8]) -> Option<&[u8]> {
    bytes.iter().position(|b| *b == 0).map(|end| &bytes[..end])
}

/// The `C` (SQLSTATE) field of an `ErrorResponse`, if it reads as one.
fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        let value = cstr(tail)?;
        if field == b'C' {
            let valid = value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric);
            return valid.then(|| String::from_utf8_lossy(value).into_owned());
        }
        rest = &tail[value.len() + 1..];
    }
    None
}

/// Inserts into a bounded name table (a client that never closes its
/// statements cannot grow it without end).
fn remember<V>(table: &mut HashMap<Vec<u8>, V>, name: &[u8], value: V) {
    if table.len() >= MAX_STATEMENTS && !table.contains_key(name) {
        table.clear();
    }
    table.insert(name.to_vec(), value);
}

/// Whether a client's first bytes look like a startup-family message
/// (`StartupMessage` 3.0, `SSLRequest`, `GSSENCRequest`).
pub fn looks_like_startup(head: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(head, 0), be32(head, 4)) else {
        return false;
    };
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        PROTOCOL_3 => (9..=10_000).contains(&len),
        _ => false,
    }
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::db::{
        DbOp,
        fixture::{brief, expect, replay_conn, split},
    };

    fn replay_pg(name: &str) -> (Vec<DbOp>, Vec<DbEvent>) {
        let mut conn = PostgresConn::new(true);
        replay_conn(name, &mut conn)
    }

    /// psycopg 3 (libpq) against PostgreSQL 15: SSLRequest refused, simple
    /// and extended queries, a statement prepared as `_pg3_0` and executed
    /// by name twice, two errors, and a three-query pipeline.
    #[test]
    fn psycopg_fixture() {
        let (ops, other) = replay_pg("postgres/psycopg.trace");
        let select = "SELECT note FROM orders WHERE id = $1";
        assert_eq!(
            brief(&ops),
            expect(&[
                (
                    "CREATE TABLE IF NOT EXISTS orders (id int, note text)",
                    None
                ),
                ("INSERT INTO orders VALUES (?, ?)", None),
                (select, None),
                (select, None),
                (select, None),
                ("SELECT ?/?", Some("22012")),
                ("SELECT * FROM missing_table WHERE x = $1", Some("42P01")),
                ("SELECT count(*) FROM orders", None),
                ("UPDATE orders SET note = $1 WHERE id = $2", None),
                ("DELETE FROM orders WHERE id = ?", None),
            ])
        );
        // The Execute the server skipped after the failed Parse.
        assert_eq!(other, vec![DbEvent::Degraded(Degraded::RequestsDropped(1))]);
        let insert = &ops[1].request;
        assert_eq!(insert.summary.as_deref(), Some("INSERT orders"));
        assert_eq!(insert.collection.as_deref(), Some("orders"));
        assert_eq!(insert.namespace.as_deref(), Some("postgres"));
        assert!(!format!("{ops:?}").contains("4111"));
        // The pipeline's answers came in one read: one span each, sent
        // before the first answer came.
        assert_eq!(ops[7].end_ns, ops[9].end_ns);
        assert!(ops[9].start_ns < ops[7].end_ns);
    }

    /// asyncpg: named statements (`__asyncpg_stmt_N__`) prepared once and
    /// executed by name, a failed prepare, a two-statement simple query.
    #[test]
    fn asyncpg_fixture() {
        let (ops, other) = replay_pg("postgres/asyncpg.trace");
        let select = "SELECT note FROM orders WHERE id = $1";
        assert_eq!(
            brief(&ops),
            expect(&[
                (
                    "CREATE TABLE IF NOT EXISTS orders (id int, note text)",
                    None
                ),
                (select, None),
                (select, None),
                (select, None),
                ("SELECT * FROM missing_table", Some("42P01")),
                ("SELECT ?; SELECT ?", None),
            ])
        );
        assert!(other.is_empty(), "{other:?}");
        // Two statements: no single operation.
        assert_eq!(ops[5].request.operation, None);
    }

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00u\x00database\x00shop\x00\x00";
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn ssl_accepted_then_plaintext_from_openssl() {
        let mut conn = PostgresConn::new(true);
        let mut out = Vec::new();
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        conn.on_request(&Chunk::whole(&ssl, 1, 1), &mut out);
        conn.on_reply(&Chunk::whole(b"S", 2, 1), &mut out);
        // Ciphertext on the socket is ignored...
        conn.on_request(&Chunk::whole(b"\x16\x03\x01\x00\xf0", 3, 1), &mut out);
        conn.on_reply(&Chunk::whole(b"\x16\x03\x03\x00\x7a", 4, 1), &mut out);
        // ...and the plaintext the OpenSSL probes report is read.
        conn.on_request(&Chunk::whole(&startup(), 5, 1), &mut out);
        conn.on_reply(&Chunk::whole(&msg(b'Z', b"I"), 6, 1), &mut out);
        conn.on_request(&Chunk::whole(&msg(b'Q', b"SELECT 1\0"), 7, 1), &mut out);
        conn.on_reply(&Chunk::whole(&msg(b'Z', b"I"), 8, 1), &mut out);
        let (ops, other) = split(out);
        assert_eq!(brief(&ops), expect(&[("SELECT ?", None)]));
        assert_eq!(ops[0].request.namespace.as_deref(), Some("shop"));
        assert!(other.is_empty());
    }

    #[test]
    fn cut_query_keeps_no_text_and_skips_by_length() {
        let mut conn = PostgresConn::new(false);
        let mut out = Vec::new();
        let query = msg(
            b'Q',
            b"SELECT * FROM big WHERE a = 'secret' AND b IN (1, 2)\0",
        );
        let chunk = Chunk {
            data: &query[..40],
            uncaptured: query.len() - 40,
            ts_ns: 1,
            tid: 1,
            trace: None,
        };
        conn.on_request(&chunk, &mut out);
        let mut reply = msg(b'C', b"SELECT 1\0");
        reply.extend(msg(b'Z', b"I"));
        conn.on_reply(&Chunk::whole(&reply, 2, 2), &mut out);
        let (ops, other) = split(out);
        assert!(other.is_empty());
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].request.query_text, None);
        assert_eq!(ops[0].request.summary.as_deref(), Some("SELECT big"));
        assert_eq!(ops[0].start_ns, 1);
        assert_eq!(ops[0].end_ns, 2);
    }

    #[test]
    fn lost_header_drops_and_recovers() {
        let mut conn = PostgresConn::new(false);
        let mut out = Vec::new();
        conn.on_request(&Chunk::whole(&msg(b'Q', b"SELECT 1\0"), 1, 1), &mut out);
        // A reply whose next header was not captured.
        let reply = msg(b'D', b"\x00\x01\x00\x00\x00\x01x");
        conn.on_reply(
            &Chunk {
                data: &reply,
                uncaptured: 30,
                ts_ns: 2,
                tid: 2,
                trace: None,
            },
            &mut out,
        );
        conn.on_reply(&Chunk::whole(&msg(b'Z', b"I"), 3, 2), &mut out);
        conn.on_request(&Chunk::whole(&msg(b'Q', b"SELECT 2\0"), 4, 1), &mut out);
        conn.on_reply(&Chunk::whole(&msg(b'Z', b"I"), 5, 2), &mut out);
        let (ops, other) = split(out);
        assert_eq!(brief(&ops), expect(&[("SELECT ?", None)]));
        assert_eq!(ops[0].start_ns, 4);
        assert_eq!(
            other,
            vec![
                DbEvent::Degraded(Degraded::LostSync),
                DbEvent::Degraded(Degraded::RequestsDropped(1))
            ]
        );
    }

    #[test]
    fn detects_startup() {
        assert!(looks_like_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
        assert!(looks_like_startup(&startup()));
        assert!(!looks_like_startup(b"GET / HTTP/1.1"));
        assert!(!looks_like_startup(&[0, 0, 0, 8]));
    }
}
