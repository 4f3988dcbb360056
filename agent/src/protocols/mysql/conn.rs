//! MySQL and MariaDB client/server protocol, client connections: the
//! server greeting (MariaDB told from MySQL by its version), the client's
//! handshake response (capabilities, database), then commands paired with
//! their responses: `COM_QUERY`, `COM_STMT_PREPARE` (statement ids
//! remembered with their query) and `COM_STMT_EXECUTE` (resolved to it),
//! `COM_INIT_DB` (the namespace), result sets framed by their column count
//! and EOF/OK terminators, `ERR` packets with their error number.
//!
//! One operation per `COM_QUERY` and `COM_STMT_EXECUTE`, and per failed
//! `COM_STMT_PREPARE`; other commands are paired but give no span. Rows,
//! parameters and messages are skipped by length, never copied out.

use std::collections::{HashMap, VecDeque};

use crate::protocols::{
    Stamp,
    db::{
        Chunk, DbEvent, DbOutcome, DbRequest, DbSystem, Degraded, Pending,
        sql::{self, Dialect},
    },
};

/// Most payload bytes kept of a packet (query text).
const MAX_KEEP: usize = 16 * 1024;
/// Most prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 512;
/// Most commands waiting for a response.
const MAX_PENDING: usize = 64;
/// `CLIENT_CONNECT_WITH_DB`, `CLIENT_SSL`, `CLIENT_DEPRECATE_EOF`.
const CONNECT_WITH_DB: u32 = 1 << 3;
const CLIENT_SSL: u32 = 1 << 11;
const PLUGIN_AUTH_LENENC: u32 = 1 << 21;
const DEPRECATE_EOF: u32 = 1 << 24;
/// `SERVER_MORE_RESULTS_EXISTS` status flag.
const MORE_RESULTS: u16 = 0x0008;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;

/// One packet: sequence id, the captured start of its payload, its whole
/// length.
#[derive(Debug)]
struct Packet {
    seq: u8,
    payload: Vec<u8>,
    len: usize,
    complete: bool,
    start: Stamp,
}

/// Streaming packet reader for one direction.
#[derive(Debug, Default)]
struct Reader {
    header: Vec<u8>,
    current: Option<(Packet, usize)>,
    lost: bool,
    now: Stamp,
}

struct Lost;

impl Reader {
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Packet>) -> Result<(), Lost> {
        if self.lost {
            // A command starts with sequence id 0.
            if chunk.data.get(3) != Some(&0) {
                return Ok(());
            }
            *self = Self::default();
        }
        self.now = chunk.at();
        let mut data = chunk.data;
        while !data.is_empty() {
            if let Some((packet, left)) = self.current.as_mut() {
                let n = (*left).min(data.len());
                let room = MAX_KEEP.saturating_sub(packet.payload.len());
                packet.payload.extend_from_slice(&data[..n.min(room)]);
                packet.complete &= n <= room;
                *left -= n;
                data = &data[n..];
                if *left == 0 {
                    out.push(self.current.take().expect("just matched").0);
                }
                continue;
            }
            let n = (4 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < 4 {
                break;
            }
            let len = usize::from(self.header[0])
                | usize::from(self.header[1]) << 8
                | usize::from(self.header[2]) << 16;
            let packet = Packet {
                seq: self.header[3],
                payload: Vec::new(),
                len,
                complete: true,
                start: self.now,
            };
            self.header.clear();
            if len == 0 {
                out.push(packet);
            } else {
                self.current = Some((packet, len));
            }
        }
        if chunk.uncaptured > 0 {
            match self.current.as_mut() {
                Some((packet, left)) if *left >= chunk.uncaptured => {
                    *left -= chunk.uncaptured;
                    packet.complete = false;
                    if *left == 0 {
                        out.push(self.current.take().expect("just matched").0);
                    }
                }
                _ => return Err(Lost),
            }
        }
        Ok(())
    }

    fn lose(&mut self) {
        *self = Self {
            lost: true,
            ..Self::default()
        };
    }
}

/// Where a response is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Response {
    /// Its first packet is next.
    First,
    /// Column definitions left, then (without `DEPRECATE_EOF`) an EOF.
    Columns(u64),
    /// Rows until a terminator.
    Rows,
    /// `COM_STMT_PREPARE` OK: definitions left (parameters then columns,
    /// each group followed by an EOF without `DEPRECATE_EOF`).
    Definitions(u64),
}

/// A command waiting for its response.
#[derive(Debug)]
struct Waiting {
    command: u8,
    /// The span to give (`None`: paired, no span).
    pending: Option<Pending>,
    /// The prepare's query, to remember under the statement id.
    prepared: Option<DbRequest>,
    /// The database a `COM_INIT_DB` selects.
    database: Option<String>,
    response: Response,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The server greeting is next.
    Greeting,
    /// The client's handshake response is next.
    HandshakeResponse,
    /// Authentication until the server's OK or ERR.
    Auth,
    /// TLS was asked for: ciphertext follows (the OpenSSL probes report
    /// the plaintext, read by a new connection state).
    Encrypted,
    /// Commands.
    Commands,
}

/// One MySQL/MariaDB client connection.
#[derive(Debug)]
pub struct MysqlConn {
    requests: Reader,
    replies: Reader,
    phase: Phase,
    system: DbSystem,
    server_caps: u32,
    deprecate_eof: bool,
    database: Option<String>,
    statements: HashMap<u32, DbRequest>,
    waiting: VecDeque<Waiting>,
    replies_wait_for_request: bool,
}

impl Default for MysqlConn {
    fn default() -> Self {
        Self {
            requests: Reader::default(),
            replies: Reader::default(),
            phase: Phase::Greeting,
            system: DbSystem::Mysql,
            server_caps: 0,
            deprecate_eof: false,
            database: None,
            statements: HashMap::new(),
            waiting: VecDeque::new(),
            replies_wait_for_request: false,
        }
    }
}

impl MysqlConn {
    /// Bytes the client sent.
    pub fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        if self.phase == Phase::Encrypted {
            return;
        }
        let mut packets = Vec::new();
        let result = self.requests.feed(chunk, &mut packets);
        self.replies_wait_for_request = false;
        for packet in packets {
            self.client_packet(packet, out);
        }
        if result.is_err() {
            self.requests.lose();
            self.lose(out);
        }
    }

    /// Bytes the client received.
    pub fn on_reply(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        if self.phase == Phase::Encrypted || self.replies_wait_for_request {
            return;
        }
        let mut packets = Vec::new();
        let result = self.replies.feed(chunk, &mut packets);
        for packet in packets {
            self.server_packet(&packet, chunk, out);
        }
        if result.is_err() {
            self.replies.lose();
            self.lose(out);
        }
    }

    /// The connection closed at `ts_ns`.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<DbEvent>) {
        for waiting in self.waiting.drain(..) {
            if let Some(pending) = waiting.pending {
                out.push(pending.closed(self.system, ts_ns));
            }
        }
    }

    fn lose(&mut self, out: &mut Vec<DbEvent>) {
        out.push(DbEvent::Degraded(Degraded::LostSync));
        let dropped = self
            .waiting
            .drain(..)
            .filter(|w| w.pending.is_some())
            .count();
        if dropped > 0 {
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(dropped)));
        }
        self.replies.lose();
        self.replies_wait_for_request = true;
    }

    fn client_packet(&mut self, packet: Packet, out: &mut Vec<DbEvent>) {
        let payload = &packet.payload;
        match self.phase {
            Phase::HandshakeResponse => {
                self.handshake_response(payload);
                return;
            }
            Phase::Commands if packet.seq == 0 => {}
            _ => return,
        }
        let Some((&command, body)) = payload.split_first() else {
            return;
        };
        let complete = packet.complete;
        let mut waiting = Waiting {
            command,
            pending: None,
            prepared: None,
            database: None,
            response: Response::First,
        };
        let pending = |request| Pending {
            request,
            at: packet.start,
        };
        match command {
            COM_QUIT | COM_STMT_SEND_LONG_DATA => return,
            COM_STMT_CLOSE => {
                if let Some(id) = le32(body) {
                    self.statements.remove(&id);
                }
                return;
            }
            COM_QUERY => waiting.pending = Some(pending(self.request_of(body, complete))),
            COM_STMT_PREPARE => {
                let request = self.request_of(body, complete);
                waiting.prepared = Some(request.clone());
                // A span only if it fails (see `server_packet`).
                waiting.pending = Some(pending(request));
            }
            COM_STMT_EXECUTE => {
                let request = le32(body)
                    .and_then(|id| self.statements.get(&id).cloned())
                    .unwrap_or_else(|| DbRequest {
                        namespace: self.database.clone(),
                        ..DbRequest::default()
                    });
                waiting.pending = Some(pending(request));
            }
            COM_INIT_DB => waiting.database = Some(String::from_utf8_lossy(body).into_owned()),
            _ => {}
        }
        if self.waiting.len() >= MAX_PENDING {
            self.waiting.pop_front();
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(1)));
        }
        self.waiting.push_back(waiting);
    }

    fn handshake_response(&mut self, payload: &[u8]) {
        let Some(caps) = le32(payload) else { return };
        self.deprecate_eof = caps & self.server_caps & DEPRECATE_EOF != 0;
        if caps & CLIENT_SSL != 0 && payload.len() <= 32 {
            // An SSL request: TLS follows.
            self.phase = Phase::Encrypted;
            return;
        }
        self.phase = Phase::Auth;
        // caps(4) max_packet(4) charset(1) reserved(23) user\0 auth db\0
        let Some(rest) = payload.get(32..) else {
            return;
        };
        let Some(user_end) = rest.iter().position(|b| *b == 0) else {
            return;
        };
        let rest = &rest[user_end + 1..];
        let (auth_len, skip) = match rest.first() {
            Some(&n) if caps & PLUGIN_AUTH_LENENC == 0 || n < 0xfb => (usize::from(n), 1),
            _ => return,
        };
        if caps & CONNECT_WITH_DB != 0
            && let Some(db) = rest.get(skip + auth_len..)
            && let Some(end) = db.iter().position(|b| *b == 0)
        {
            self.database = Some(String::from_utf8_lossy(&db[..end]).into_owned());
        }
    }

    fn request_of(&self, text: &[u8], complete: bool) -> DbRequest {
        let text = String::from_utf8_lossy(text);
        let summary = sql::summarize(&text, Dialect::MySql, complete);
        DbRequest {
            summary: summary.text(),
            operation: summary.operation,
            collection: summary.collection,
            query_text: complete.then(|| sql::sanitize(&text, Dialect::MySql)),
            namespace: self.database.clone(),
        }
    }

    fn server_packet(&mut self, packet: &Packet, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        let payload = &packet.payload;
        let first = payload.first().copied();
        match self.phase {
            Phase::Greeting => {
                self.greeting(payload);
                return;
            }
            Phase::Auth => {
                if matches!(first, Some(0x00 | 0xff)) {
                    self.phase = Phase::Commands;
                }
                return;
            }
            Phase::Commands => {}
            Phase::HandshakeResponse | Phase::Encrypted => return,
        }
        let deprecate_eof = self.deprecate_eof;
        if first == Some(0xfb)
            && self
                .waiting
                .front()
                .is_some_and(|w| w.response == Response::First)
        {
            // LOCAL INFILE: the client sends a file; not followed.
            self.lose(out);
            return;
        }
        let Some(front) = self.waiting.front_mut() else {
            return;
        };
        let is_eof = first == Some(0xfe) && packet.len < 9;
        let done = match (front.response, first) {
            (_, Some(0xff)) => Some(Err(error_code(payload))),
            (Response::First, Some(0x00)) if front.command == COM_STMT_PREPARE => {
                let id = le32(&payload[1..]);
                let columns = le16(payload.get(5..)).unwrap_or(0);
                let params = le16(payload.get(7..)).unwrap_or(0);
                if let (Some(id), Some(request)) = (id, front.prepared.take()) {
                    if self.statements.len() >= MAX_STATEMENTS {
                        self.statements.clear();
                    }
                    self.statements.insert(id, request);
                }
                front.pending = None;
                let eofs = if deprecate_eof {
                    0
                } else {
                    u64::from(columns > 0) + u64::from(params > 0)
                };
                let definitions = u64::from(columns) + u64::from(params) + eofs;
                if definitions == 0 {
                    Some(Ok(0))
                } else {
                    front.response = Response::Definitions(definitions);
                    None
                }
            }
            (Response::First, Some(0x00)) => Some(Ok(status_of_ok(payload))),
            (Response::First, _) => {
                let columns = lenenc(payload).unwrap_or(0);
                front.response = Response::Columns(columns + u64::from(!deprecate_eof));
                None
            }
            (Response::Columns(left), _) | (Response::Definitions(left), _) => {
                if left <= 1 {
                    if let Response::Definitions(_) = front.response {
                        Some(Ok(0))
                    } else {
                        front.response = Response::Rows;
                        None
                    }
                } else {
                    front.response = match front.response {
                        Response::Columns(_) => Response::Columns(left - 1),
                        _ => Response::Definitions(left - 1),
                    };
                    None
                }
            }
            (Response::Rows, Some(0xfe)) if is_eof || deprecate_eof => {
                Some(Ok(status_of_terminator(payload, is_eof)))
            }
            (Response::Rows, _) => None,
        };
        let Some(result) = done else { return };
        if let Ok(status) = result
            && status & MORE_RESULTS != 0
        {
            // Another result set answers the same command.
            front.response = Response::First;
            return;
        }
        let waiting = self.waiting.pop_front().expect("front exists");
        if let (Some(db), Ok(_)) = (&waiting.database, &result) {
            self.database = Some(db.clone());
        }
        let Some(pending) = waiting.pending else {
            return;
        };
        let outcome = match result {
            Ok(_) => DbOutcome::Ok,
            Err(code) => DbOutcome::Error { code },
        };
        out.push(pending.finish(self.system, outcome, chunk));
    }

    fn greeting(&mut self, payload: &[u8]) {
        // protocol 10, version\0, thread id(4), salt(8), filler(1),
        // caps low(2), charset(1), status(2), caps high(2)...
        if payload.first() != Some(&10) {
            self.phase = Phase::Commands;
            return;
        }
        let Some(end) = payload.iter().position(|b| *b == 0) else {
            return;
        };
        if payload[1..end].windows(7).any(|w| w == b"MariaDB") {
            self.system = DbSystem::Mariadb;
        }
        let at = end + 1 + 4 + 8 + 1;
        let low = le16(payload.get(at..)).unwrap_or(0);
        let high = le16(payload.get(at + 5..)).unwrap_or(0);
        self.server_caps = u32::from(low) | u32::from(high) << 16;
        self.phase = Phase::HandshakeResponse;
    }
}

/// The error number of an `ERR` packet (`0xff`, number LE, `#SQLSTATE`...).
fn error_code(payload: &[u8]) -> Option<String> {
    le16(payload.get(1..)).map(|n| n.to_string())
}

/// Status flags of an OK packet: after the header and two length-encoded
/// integers.
fn status_of_ok(payload: &[u8]) -> u16 {
    let mut at = 1;
    for _ in 0..2 {
        at += match payload.get(at) {
            Some(0xfc) => 3,
            Some(0xfd) => 4,
            Some(0xfe) => 9,
            Some(_) => 1,
            None => return 0,
        };
    }
    le16(payload.get(at..)).unwrap_or(0)
}

/// Status flags of a result set's terminator: an EOF packet (warnings,
/// status) or, with `DEPRECATE_EOF`, an OK packet with the `0xfe` header.
fn status_of_terminator(payload: &[u8], is_eof: bool) -> u16 {
    if is_eof {
        le16(payload.get(3..)).unwrap_or(0)
    } else {
        status_of_ok(payload)
    }
}

/// A length-encoded integer at the start of `bytes`.
fn lenenc(bytes: &[u8]) -> Option<u64> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0..=0xfa => return Some(u64::from(first)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let digits = rest.get(..width)?;
    Some(digits.iter().rev().fold(0, |n, b| n << 8 | u64::from(*b)))
}

fn le16(bytes: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_le_bytes(bytes?.get(..2)?.try_into().ok()?))
}

fn le32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// Whether a client's first received bytes are a MySQL/MariaDB server
/// greeting (protocol 10, sequence 0, a printable version).
pub fn looks_like_greeting(head: &[u8]) -> bool {
    let len = head.len();
    len > 10
        && head[3] == 0
        && head[4] == 10
        && head[5].is_ascii_digit()
        && head[5..len.min(16)]
            .iter()
            .take_while(|b| **b != 0)
            .all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::db::fixture::{brief, expect, replay_conn, split};

    /// PyMySQL 1.2 against MariaDB 10.11: greeting, handshake, `COM_QUERY`
    /// with result sets (EOF framing), `COM_INIT_DB`, an ERR packet.
    #[test]
    fn pymysql_fixture() {
        let mut conn = MysqlConn::default();
        let (ops, other) = replay_conn("mysql/pymysql.trace", &mut conn);
        assert_eq!(
            brief(&ops),
            expect(&[
                ("SET NAMES utf8mb4", None),
                ("CREATE DATABASE IF NOT EXISTS shop", None),
                (
                    "CREATE TABLE IF NOT EXISTS orders (id int, note text)",
                    None
                ),
                ("INSERT INTO orders VALUES (?, ?)", None),
                ("SELECT note FROM orders WHERE id = ?", None),
                ("SELECT * FROM orders", None),
                ("SELECT * FROM missing_table", Some("1146")),
            ])
        );
        assert!(other.is_empty(), "{other:?}");
        assert!(ops.iter().all(|op| op.system == DbSystem::Mariadb));
        assert_eq!(ops[0].request.namespace, None);
        assert_eq!(ops[4].request.namespace.as_deref(), Some("shop"));
        assert_eq!(ops[5].request.summary.as_deref(), Some("SELECT orders"));
        assert!(!format!("{ops:?}").contains("4111"));
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut p = len.to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    /// Prepared statements (`DEPRECATE_EOF` on both sides): prepare,
    /// execute twice by id, close; a failing prepare gets a span.
    #[test]
    fn prepared_statements_by_id() {
        let mut conn = MysqlConn::default();
        let mut out = Vec::new();
        let mut n = 0;
        let mut feed =
            |conn: &mut MysqlConn, client: bool, bytes: Vec<u8>, out: &mut Vec<DbEvent>| {
                n += 1;
                let chunk = Chunk::whole(&bytes, n, 1);
                if client {
                    conn.on_request(&chunk, out);
                } else {
                    conn.on_reply(&chunk, out);
                }
            };
        let mut greeting = vec![10];
        greeting.extend_from_slice(b"8.0.36\0");
        greeting.extend_from_slice(&[0; 4 + 8 + 1]);
        greeting.extend_from_slice(&[0xff, 0xff, 0x21, 0, 0, 0xff, 0xff]);
        feed(&mut conn, false, packet(0, &greeting), &mut out);
        let mut response = (DEPRECATE_EOF | CONNECT_WITH_DB | 0x0200)
            .to_le_bytes()
            .to_vec();
        response.extend_from_slice(&[0; 28]);
        response.extend_from_slice(b"app\0\x00shop\0");
        feed(&mut conn, true, packet(1, &response), &mut out);
        feed(
            &mut conn,
            false,
            packet(2, &[0, 0, 0, 2, 0, 0, 0]),
            &mut out,
        );
        feed(
            &mut conn,
            true,
            packet(0, b"\x16SELECT a FROM t WHERE id = ?"),
            &mut out,
        );
        let mut prepare_ok = packet(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        prepare_ok.extend(packet(2, b"param def"));
        prepare_ok.extend(packet(3, b"column def"));
        feed(&mut conn, false, prepare_ok, &mut out);
        for _ in 0..2 {
            feed(
                &mut conn,
                true,
                packet(0, &[0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0]),
                &mut out,
            );
            let mut rows = packet(1, &[1]);
            rows.extend(packet(2, b"column def"));
            rows.extend(packet(3, &[0, 0, 1]));
            rows.extend(packet(4, &[0xfe, 0, 0, 2, 0, 0, 0]));
            feed(&mut conn, false, rows, &mut out);
        }
        feed(&mut conn, true, packet(0, &[0x19, 7, 0, 0, 0]), &mut out);
        feed(&mut conn, true, packet(0, b"\x16SELEC oops"), &mut out);
        feed(
            &mut conn,
            false,
            packet(1, b"\xff\x28\x04#42000You have an error"),
            &mut out,
        );
        let (ops, other) = split(out);
        assert_eq!(
            brief(&ops),
            expect(&[
                ("SELECT a FROM t WHERE id = ?", None),
                ("SELECT a FROM t WHERE id = ?", None),
                ("SELEC oops", Some("1064")),
            ])
        );
        assert!(other.is_empty(), "{other:?}");
        assert_eq!(ops[0].system, DbSystem::Mysql);
        assert_eq!(ops[0].request.namespace.as_deref(), Some("shop"));
        assert_eq!(ops[0].request.summary.as_deref(), Some("SELECT t"));
    }

    #[test]
    fn detects_greeting() {
        let chunks = crate::protocols::db::fixture::chunks("mysql/pymysql.trace");
        assert!(looks_like_greeting(&chunks[0].1));
        assert!(!looks_like_greeting(b"HTTP/1.1 200 OK\r\n"));
        assert!(!looks_like_greeting(b"+OK\r\n"));
    }
}
