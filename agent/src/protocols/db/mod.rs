//! What the database and cache protocols (Redis, PostgreSQL, memcached,
//! MySQL/MariaDB) share: the bytes they are fed ([`Chunk`]), the typed
//! record of one operation they hand on ([`DbOp`]), and the reasons they
//! give up on bytes ([`Degraded`]), which the caller counts.
//!
//! Each protocol's connection state is pure (no I/O, no globals): it is fed
//! the calls the kernel saw on one connection, in order, and pushes
//! [`DbEvent`]s.

mod describe;
mod slice;
pub mod sql;

pub use describe::describe;
pub(crate) use slice::db_protocol;
pub use slice::{DbConn, DbProtocol, client_sent};

pub use crate::model::db::{DbRequest, DbSystem};

use super::Stamp;
use crate::model::call::KernelTrace;

/// One syscall's worth of bytes in one direction: the captured head, and
/// how many bytes after it moved but were not copied.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Captured bytes.
    pub data: &'a [u8],
    /// Bytes that followed `data` in the same call without being captured.
    pub uncaptured: usize,
    /// When the bytes moved, monotonic ns.
    pub ts_ns: u64,
    /// Thread that moved them.
    pub tid: u32,
    /// Span identity the kernel gave a request starting in these bytes.
    pub trace: Option<KernelTrace>,
}

impl<'a> Chunk<'a> {
    /// A fully captured chunk (tests, fixtures).
    pub fn whole(data: &'a [u8], ts_ns: u64, tid: u32) -> Self {
        Self {
            data,
            uncaptured: 0,
            ts_ns,
            tid,
            trace: None,
        }
    }

    /// When, by which thread, with which kernel span identity.
    pub fn at(&self) -> Stamp {
        Stamp {
            ns: self.ts_ns,
            tid: self.tid,
            trace: self.trace,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbOutcome {
    /// The server answered without an error.
    Ok,
    /// The server answered with an error.
    Error {
        /// `db.response.status_code`: SQLSTATE, MySQL error number, Redis
        /// error prefix, memcached error word.
        code: Option<String>,
    },
    /// The connection closed before the answer.
    ConnectionClosed,
}

/// One finished operation. Times are the kernel's monotonic ns: when its
/// request's first bytes moved, and when its answer's last bytes moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbOp {
    /// Product.
    pub system: DbSystem,
    /// What was asked.
    pub request: DbRequest,
    /// What came of it.
    pub outcome: DbOutcome,
    /// Start, monotonic ns.
    pub start_ns: u64,
    /// End, monotonic ns.
    pub end_ns: u64,
    /// Thread that sent the request.
    pub request_tid: u32,
    /// Thread that read the answer.
    pub response_tid: Option<u32>,
    /// Span identity the kernel gave the call that carried the request.
    pub trace: Option<KernelTrace>,
}

/// Why bytes or operations were given up on (counted by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// Message boundaries were lost (bytes not captured where a header
    /// was, or bytes that do not parse); found again at a later call.
    LostSync,
    /// Requests dropped without a span because their answers could no
    /// longer be told apart.
    RequestsDropped(usize),
}

/// What feeding a connection produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbEvent {
    /// An operation finished.
    Op(DbOp),
    /// Something was given up on.
    Degraded(Degraded),
}

/// A request waiting for its answer, shared by the protocols' pairing.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub request: DbRequest,
    /// When the request's first bytes moved.
    pub at: Stamp,
}

impl Pending {
    /// The finished operation for this request.
    pub fn finish(self, system: DbSystem, outcome: DbOutcome, chunk: &Chunk<'_>) -> DbEvent {
        DbEvent::Op(DbOp {
            system,
            request: self.request,
            outcome,
            start_ns: self.at.ns,
            end_ns: chunk.ts_ns,
            request_tid: self.at.tid,
            response_tid: Some(chunk.tid),
            trace: self.at.trace,
        })
    }

    /// The operation ended by the connection closing at `ts_ns`.
    pub fn closed(self, system: DbSystem, ts_ns: u64) -> DbEvent {
        DbEvent::Op(DbOp {
            system,
            request: self.request,
            outcome: DbOutcome::ConnectionClosed,
            start_ns: self.at.ns,
            end_ns: ts_ns,
            request_tid: self.at.tid,
            response_tid: None,
            trace: self.at.trace,
        })
    }
}

/// A protocol word (command, error prefix) as exported: ASCII letters,
/// digits, `_`, `-`, `.`, at most 32 of them, upper-cased; `None` for
/// anything else (never export bytes that might be a value).
pub(crate) fn token(bytes: &[u8]) -> Option<String> {
    let ok = !bytes.is_empty()
        && bytes.len() <= 32
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then(|| String::from_utf8_lossy(bytes).to_ascii_uppercase())
}

/// Replays recorded conversations (agent/tests/fixtures/record.py).
#[cfg(test)]
pub(crate) mod fixture {
    use super::{Chunk, DbEvent, DbOp};

    /// The chunks of `agent/tests/fixtures/<name>`: `(from_client, bytes)`.
    pub fn chunks(name: &str) -> Vec<(bool, Vec<u8>)> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .map(|line| {
                let (mark, hex) = line.split_once(' ').expect("`> hex` or `< hex`");
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                (mark == ">", bytes)
            })
            .collect()
    }

    /// Feeds the fixture `name` to a connection, chunk `i` at time `i`
    /// (thread 1 sends, thread 2 receives), and returns the operations and
    /// what was degraded.
    pub fn replay(
        name: &str,
        mut feed: impl FnMut(bool, &Chunk<'_>, &mut Vec<DbEvent>),
    ) -> (Vec<DbOp>, Vec<DbEvent>) {
        let mut events = Vec::new();
        for (i, (from_client, bytes)) in chunks(name).iter().enumerate() {
            let tid = if *from_client { 1 } else { 2 };
            feed(
                *from_client,
                &Chunk::whole(bytes, i as u64, tid),
                &mut events,
            );
        }
        split(events)
    }

    /// [`replay`] through a protocol's own request and reply readers.
    pub fn replay_conn(name: &str, conn: &mut impl super::DbProtocol) -> (Vec<DbOp>, Vec<DbEvent>) {
        replay(name, |from_client, chunk, out| {
            if from_client {
                conn.on_request(chunk, out)
            } else {
                conn.on_reply(chunk, out)
            }
        })
    }

    /// Expectations in the shape [`brief`] returns.
    pub fn expect(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(t, c)| (t.to_string(), c.map(str::to_owned)))
            .collect()
    }

    /// Operations apart from the rest.
    pub fn split(events: Vec<DbEvent>) -> (Vec<DbOp>, Vec<DbEvent>) {
        let mut ops = Vec::new();
        let mut other = Vec::new();
        for event in events {
            match event {
                DbEvent::Op(op) => ops.push(op),
                e => other.push(e),
            }
        }
        (ops, other)
    }

    /// `(query text or operation, error code)` per operation, for compact
    /// expectations.
    pub fn brief(ops: &[DbOp]) -> Vec<(String, Option<String>)> {
        ops.iter()
            .map(|op| {
                let text = op
                    .request
                    .query_text
                    .clone()
                    .or_else(|| op.request.operation.clone())
                    .unwrap_or_default();
                let code = match &op.outcome {
                    super::DbOutcome::Ok => None,
                    super::DbOutcome::Error { code } => {
                        Some(code.clone().unwrap_or_else(|| "error".into()))
                    }
                    super::DbOutcome::ConnectionClosed => Some("closed".into()),
                };
                (text, code)
            })
            .collect()
    }
}
