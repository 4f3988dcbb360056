//! Redis (RESP2 and RESP3) client connections: a streaming RESP reader per
//! direction and the pairing of commands with replies, in order (pipelines
//! give one operation per command; `MULTI` commands answer `QUEUED` and
//! `EXEC` carries the results).
//!
//! Only command names and error prefixes leave this module: keys, values
//! and error messages are skipped by length, never copied out. A bulk
//! string cut by the capture is skipped by its length; a cut where a type
//! byte or length was loses sync until the next call that starts with a
//! message (counted, pending commands dropped).

use std::collections::VecDeque;

use crate::protocols::Stamp;
use crate::protocols::db::{
    Chunk, DbEvent, DbOutcome, DbRequest, DbSystem, Degraded, Pending, token,
};

/// Longest header line (`*<count>`, `+OK`, `-ERR ...`) kept while it
/// arrives; longer simple strings and errors are read up to this and the
/// rest skipped.
const MAX_LINE: usize = 512;
/// Most `?` in a command's `db.query.text`.
const MAX_TEXT_ARGS: usize = 16;
/// Most commands waiting for replies on one connection.
const MAX_PENDING: usize = 4096;

/// A top-level message the reader finished.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Message {
    /// A command: its name when it reads as one, its argument count, and
    /// when and by which thread its first bytes were sent.
    Command {
        name: Option<String>,
        args: usize,
        start: Stamp,
    },
    /// A reply; `Some(prefix)` for an error (`-ERR ...`, `!..`).
    Reply { error: Option<Option<String>> },
    /// A RESP3 push (`>`): out of band, answers no command.
    Push,
}

/// What the bytes being read belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    /// The command name (first element of a top-level array).
    CommandName,
    /// A top-level blob error's first word.
    BlobError,
}

/// Streaming RESP reader for one direction.
#[derive(Debug, Default)]
struct Reader {
    /// A header line being assembled.
    line: Vec<u8>,
    /// The current line went past [`MAX_LINE`]: skip to its end.
    line_overflow: bool,
    /// Remaining elements of each open aggregate, outermost first.
    stack: Vec<u64>,
    /// Bytes left of the bulk body being read, CRLF included.
    bulk_left: u64,
    /// What the bulk body being read is kept for.
    capture: Option<Capture>,
    /// Bytes kept of that body.
    kept: Vec<u8>,
    /// The top-level message under way.
    top: Option<Top>,
    /// Message boundaries are unknown: wait for a call that starts one.
    lost: bool,
    /// Reads the client's commands (else the server's replies).
    requests: bool,
    /// Time and thread of the call being read.
    now: Stamp,
}

/// What is known of the top-level message under way.
#[derive(Clone, Debug, Default)]
struct Top {
    kind: u8,
    start: Stamp,
    name: Option<String>,
    elements: u64,
    error: Option<String>,
}

/// Why a reader lost sync.
struct Lost;

impl Reader {
    /// Reads `chunk`, pushing finished messages with the chunk they ended in.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Message>) -> Result<(), Lost> {
        if self.lost {
            if !chunk.data.first().is_some_and(|b| is_type_byte(*b)) {
                return Ok(());
            }
            *self = Self::new(self.requests);
        }
        self.now = chunk.at();
        let mut data = chunk.data;
        while !data.is_empty() {
            data = self.step(data, out)?;
        }
        if chunk.uncaptured > 0 {
            let gap = chunk.uncaptured as u64;
            if self.bulk_left >= gap && self.line.is_empty() {
                self.bulk_left -= gap;
                if self.bulk_left == 0 {
                    self.end_bulk(out);
                }
            } else {
                return Err(Lost);
            }
        }
        Ok(())
    }

    fn new(requests: bool) -> Self {
        Self {
            requests,
            ..Self::default()
        }
    }

    fn lose(&mut self) {
        *self = Self {
            lost: true,
            ..Self::new(self.requests)
        };
    }

    /// Consumes some of `data`, returns the rest.
    fn step<'a>(&mut self, data: &'a [u8], out: &mut Vec<Message>) -> Result<&'a [u8], Lost> {
        if self.bulk_left > 0 {
            let n = (self.bulk_left as usize).min(data.len());
            if self.capture.is_some() {
                let room = 34usize.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&data[..n.min(room)]);
            }
            self.bulk_left -= n as u64;
            if self.bulk_left == 0 {
                self.end_bulk(out);
            }
            return Ok(&data[n..]);
        }
        let inline_ok = self.requests && self.stack.is_empty();
        if self.line.is_empty()
            && !(is_type_byte(data[0]) || inline_ok && data[0].is_ascii_alphabetic())
        {
            return Err(Lost);
        }
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            self.push_line(data);
            return Ok(&[]);
        };
        self.push_line(&data[..=nl]);
        let line = std::mem::take(&mut self.line);
        self.line_overflow = false;
        self.header(&line, out)?;
        Ok(&data[nl + 1..])
    }

    fn push_line(&mut self, part: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        if part.len() > room {
            self.line_overflow = true;
        }
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    /// A complete header line (up to and with its `\n`).
    fn header(&mut self, line: &[u8], out: &mut Vec<Message>) -> Result<(), Lost> {
        let body = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        let Some((&kind, rest)) = body.split_first() else {
            return Err(Lost);
        };
        let top_level = self.stack.is_empty();
        if top_level {
            self.top = Some(Top {
                kind,
                start: self.now,
                ..Top::default()
            });
        }
        match kind {
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let count = number(rest)?;
                let elements = match count {
                    n if n < 0 => 0,
                    n if matches!(kind, b'%' | b'|') => 2 * n as u64,
                    n => n as u64,
                };
                if let (true, Some(top)) = (top_level, self.top.as_mut()) {
                    top.elements = elements;
                }
                if elements == 0 {
                    self.end_element(out);
                } else {
                    self.stack.push(elements);
                }
            }
            b'$' | b'!' | b'=' => {
                let len = number(rest)?;
                if len < 0 {
                    self.end_element(out);
                    return Ok(());
                }
                self.capture = self.capture_for(kind);
                self.kept.clear();
                self.bulk_left = len as u64 + 2;
            }
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                if kind == b'-' && top_level {
                    let word = rest.split(|b| *b == b' ').next().unwrap_or(rest);
                    if let Some(top) = self.top.as_mut() {
                        top.error = Some(token(word).unwrap_or_default());
                    }
                }
                self.end_element(out);
            }
            _ if top_level && kind.is_ascii_alphabetic() && !self.line_overflow => {
                // An inline command (`PING\r\n`).
                let mut words = body.split(|b| *b == b' ').filter(|w| !w.is_empty());
                let name = words.next().and_then(token);
                out.push(Message::Command {
                    name,
                    args: words.count(),
                    start: self.now,
                });
                self.top = None;
            }
            _ => return Err(Lost),
        }
        Ok(())
    }

    fn capture_for(&self, kind: u8) -> Option<Capture> {
        let top = self.top.as_ref()?;
        if kind == b'!' && self.stack.is_empty() {
            return Some(Capture::BlobError);
        }
        let first_of_command = self.stack.len() == 1
            && top.kind == b'*'
            && top.name.is_none()
            && self.stack[0] == top.elements;
        first_of_command.then_some(Capture::CommandName)
    }

    fn end_bulk(&mut self, out: &mut Vec<Message>) {
        let kept = std::mem::take(&mut self.kept);
        let body = kept.get(..kept.len().saturating_sub(2)).unwrap_or(&[]);
        match self.capture.take() {
            Some(Capture::CommandName) => {
                if let Some(top) = self.top.as_mut() {
                    top.name = token(body);
                }
            }
            Some(Capture::BlobError) => {
                let word = body.split(|b| *b == b' ').next().unwrap_or(body);
                if let Some(top) = self.top.as_mut() {
                    top.kind = b'-';
                    top.error = Some(token(word).unwrap_or_default());
                }
            }
            None => {}
        }
        self.end_element(out);
    }

    /// An element ended: close the aggregates it completes, and the
    /// top-level message if that was the last.
    fn end_element(&mut self, out: &mut Vec<Message>) {
        while let Some(left) = self.stack.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.stack.pop();
        }
        let Some(top) = self.top.take() else { return };
        out.push(match top.kind {
            // An attribute is metadata about the reply that follows it.
            b'|' => return,
            b'*' if self.requests => Message::Command {
                start: top.start,
                name: top.name,
                args: top.elements.saturating_sub(1) as usize,
            },
            b'>' => Message::Push,
            b'-' => Message::Reply {
                error: Some(top.error),
            },
            _ => Message::Reply { error: None },
        });
    }
}

fn is_type_byte(b: u8) -> bool {
    b"*%~>|$!=+-:_,#(".contains(&b)
}

fn number(digits: &[u8]) -> Result<i64, Lost> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n: &i64| *n >= -1 && *n < (1 << 32))
        .ok_or(Lost)
}

/// Whether a client's first bytes on a connection look like a RESP
/// command: an array of bulk strings (`*<n>\r\n$<len>\r\n`).
pub fn looks_like_command(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=6).contains(&digits) && rest[digits..].starts_with(b"\r\n$")
}

/// Commands after which the connection carries pushed messages, not
/// replies (RESP2 pub/sub).
const SUBSCRIBE_COMMANDS: [&str; 3] = ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"];

/// One Redis client connection: commands paired with replies in order.
#[derive(Debug)]
pub struct RedisConn {
    requests: Reader,
    replies: Reader,
    pending: VecDeque<Pending>,
    /// Replies cannot be paired any more (pub/sub mode).
    subscribed: bool,
    /// Replies lost sync: ignore them until the client sends again.
    replies_wait_for_request: bool,
}

impl Default for RedisConn {
    fn default() -> Self {
        Self {
            requests: Reader::new(true),
            replies: Reader::new(false),
            pending: VecDeque::new(),
            subscribed: false,
            replies_wait_for_request: false,
        }
    }
}

impl RedisConn {
    /// Bytes the client sent.
    pub fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        let mut messages = Vec::new();
        let result = self.requests.feed(chunk, &mut messages);
        self.replies_wait_for_request = false;
        for message in messages {
            let Message::Command { name, args, start } = message else {
                continue;
            };
            if self.subscribed {
                continue;
            }
            if name
                .as_deref()
                .is_some_and(|n| SUBSCRIBE_COMMANDS.contains(&n))
            {
                // Replies now interleave with pushed messages: stop.
                self.subscribed = true;
                self.drop_pending(out);
                continue;
            }
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
                out.push(DbEvent::Degraded(Degraded::RequestsDropped(1)));
            }
            self.pending.push_back(Pending {
                request: request_of(name, args),
                at: start,
            });
        }
        if result.is_err() {
            self.requests.lose();
            out.push(DbEvent::Degraded(Degraded::LostSync));
            // The commands lost cannot be told from the replies to come.
            self.drop_pending(out);
            self.replies_wait_for_request = true;
        }
    }

    /// Bytes the client received.
    pub fn on_reply(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        if self.subscribed || self.replies_wait_for_request {
            return;
        }
        let mut messages = Vec::new();
        let result = self.replies.feed(chunk, &mut messages);
        for message in messages {
            let Message::Reply { error } = message else {
                continue;
            };
            let Some(pending) = self.pending.pop_front() else {
                // A reply to a command sent before the agent looked.
                continue;
            };
            let outcome = match error {
                None => DbOutcome::Ok,
                Some(code) => DbOutcome::Error {
                    code: code.filter(|c| !c.is_empty()),
                },
            };
            out.push(pending.finish(DbSystem::Redis, outcome, chunk));
        }
        if result.is_err() {
            self.replies.lose();
            out.push(DbEvent::Degraded(Degraded::LostSync));
            self.drop_pending(out);
            self.replies_wait_for_request = true;
        }
    }

    /// The connection closed at `ts_ns`: commands still waiting end so.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<DbEvent>) {
        for pending in self.pending.drain(..) {
            out.push(pending.closed(DbSystem::Redis, ts_ns));
        }
    }

    fn drop_pending(&mut self, out: &mut Vec<DbEvent>) {
        if !self.pending.is_empty() {
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(
                self.pending.len(),
            )));
            self.pending.clear();
        }
    }
}

/// The request record: the command name, every argument a `?`.
fn request_of(name: Option<String>, args: usize) -> DbRequest {
    // Past MAX_TEXT_ARGS the text says how many arguments in a shorter way
    // than a `?` each would.
    let query_text = name.as_ref().map(|n| {
        if args > MAX_TEXT_ARGS {
            return format!("{n} ?({args})");
        }
        let mut text = n.clone();
        for _ in 0..args {
            text.push_str(" ?");
        }
        text
    });
    DbRequest {
        operation: name,
        query_text,
        ..DbRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::db::fixture::{brief, expect, replay_conn, split};

    fn replay_redis(name: &str) -> (Vec<crate::protocols::db::DbOp>, Vec<DbEvent>) {
        let mut conn = RedisConn::default();
        replay_conn(name, &mut conn)
    }

    /// redis-py 8 over RESP2 and RESP3 (`HELLO 3`), recorded from
    /// redis-server 7.0: plain commands, an error, a pipeline, MULTI/EXEC.
    #[test]
    fn redis_py_fixtures() {
        let session = [
            ("CLIENT ? ? ?", Some("ERR")),
            ("CLIENT ? ? ?", Some("ERR")),
            ("SET ? ?", None),
            ("GET ?", None),
            ("GET ?", None),
            ("SET ? ?", None),
            ("INCRBY ? ?", Some("ERR")),
            ("SET ? ?", None),
            ("INCRBY ? ?", None),
            ("GET ?", None),
            ("MULTI", None),
            ("SET ? ?", None),
            ("INCRBY ? ?", None),
            ("EXEC", None),
            ("HSET ? ? ?", None),
            ("HGETALL ?", None),
            ("LPUSH ? ?", Some("WRONGTYPE")),
        ];
        let (ops, other) = replay_redis("redis/redis_py_resp2.trace");
        assert_eq!(brief(&ops), expect(&session));
        assert!(other.is_empty(), "{other:?}");
        let mut resp3 = vec![("HELLO ?", None), ("CLIENT ? ? ? ?", Some("ERR"))];
        resp3.extend(session);
        let (ops, other) = replay_redis("redis/redis_py_resp3.trace");
        assert_eq!(brief(&ops), expect(&resp3));
        assert!(other.is_empty(), "{other:?}");
        // Keys and values never leave the parser.
        let all = format!("{ops:?}");
        assert!(!all.contains("user") && !all.contains("secret"), "{all}");
        // The pipeline's three commands went in one call: same start.
        assert_eq!(ops[9].start_ns, ops[11].start_ns);
        assert_ne!(ops[8].start_ns, ops[9].start_ns);
    }

    fn run(chunks: &[(bool, &[u8], usize)]) -> (Vec<(String, Option<String>)>, Vec<DbEvent>) {
        let mut conn = RedisConn::default();
        let mut out = Vec::new();
        for (i, (from_client, data, uncaptured)) in chunks.iter().enumerate() {
            let chunk = Chunk {
                data,
                uncaptured: *uncaptured,
                ts_ns: i as u64,
                tid: 7,
                trace: None,
            };
            if *from_client {
                conn.on_request(&chunk, &mut out);
            } else {
                conn.on_reply(&chunk, &mut out);
            }
        }
        conn.on_close(99, &mut out);
        let (ops, other) = split(out);
        (brief(&ops), other)
    }

    #[test]
    fn table() {
        type Case<'a> = (
            &'a str,
            Vec<(bool, &'a [u8], usize)>,
            Vec<(&'a str, Option<&'a str>)>,
            Vec<DbEvent>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "value cut by the capture is skipped by length",
                vec![
                    (true, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123", 8),
                    (false, b"+OK\r\n", 0),
                    (true, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 0),
                    (false, b"$10\r\n01234", 7),
                ],
                vec![("SET ? ?", None), ("GET ?", None)],
                vec![],
            ),
            (
                "cut where a header was: sync lost, found again at the next command",
                vec![
                    (true, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 0),
                    (false, b"*2\r\n$1\r\na\r\n", 9),
                    (true, b"*1\r\n$4\r\nPING\r\n", 0),
                    (false, b"+PONG\r\n", 0),
                ],
                vec![("PING", None)],
                vec![
                    DbEvent::Degraded(Degraded::LostSync),
                    DbEvent::Degraded(Degraded::RequestsDropped(1)),
                ],
            ),
            (
                "RESP3 push, attribute, blob error, null, inline command",
                vec![
                    (
                        true,
                        b"PING\r\n*1\r\n$3\r\nGET\r\n*1\r\n$4\r\nEVAL\r\n*1\r\n$3\r\nDEL\r\n",
                        0,
                    ),
                    (false, b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n+PONG\r\n", 0),
                    (false, b"|1\r\n+key-popularity\r\n%0\r\n_\r\n", 0),
                    (false, b"!21\r\nSYNTAX invalid syntax\r\n$-1\r\n", 0),
                ],
                vec![
                    ("PING", None),
                    ("GET", None),
                    ("EVAL", Some("SYNTAX")),
                    ("DEL", None),
                ],
                vec![],
            ),
            (
                "no answer before close; error word that is not a token",
                vec![
                    (true, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", 0),
                    (false, b"-e\xffrr boom\r\n", 0),
                ],
                vec![("PING", Some("error")), ("PING", Some("closed"))],
                vec![],
            ),
            (
                "not RESP at all",
                vec![
                    (true, b"\x16\x03\x01\x02\x00", 0),
                    (false, b"\x16\x03\x03", 0),
                ],
                vec![],
                vec![DbEvent::Degraded(Degraded::LostSync)],
            ),
            (
                "pub/sub: pushed messages are not replies",
                vec![
                    (true, b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n", 0),
                    (false, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n", 0),
                ],
                vec![],
                vec![],
            ),
        ];
        for (what, chunks, ops, other) in cases {
            let (got, got_other) = run(&chunks);
            assert_eq!(got, expect(&ops), "{what}");
            assert_eq!(got_other, other, "{what}");
        }
    }

    #[test]
    fn detects_commands() {
        assert!(looks_like_command(b"*2\r\n$3\r\nGET\r\n"));
        assert!(!looks_like_command(b"*\r\n$"));
        assert!(!looks_like_command(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_command(b"*2\r\n+"));
    }
}
