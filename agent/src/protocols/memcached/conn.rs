//! memcached text protocol client connections: classic commands (`get`,
//! `set`, `incr`, `delete`, `touch`...) and meta commands (`mg`, `ms`...)
//! paired with their replies in order.
//!
//! Only command words and error words leave this module (keys are often
//! ids): `db.query.text` is the command with every argument a `?`. Data
//! blocks (of `set` and of `VALUE`/`VA` replies) are skipped by their
//! length, even where the capture cut them. `noreply` commands get no span
//! (nothing says when or whether they finished). The binary protocol is
//! not read.

use std::collections::VecDeque;

use crate::protocols::Stamp;
use crate::protocols::db::{
    Chunk, DbEvent, DbOutcome, DbRequest, DbSystem, Degraded, Pending, token,
};

/// Longest command or reply line read; longer means not memcached.
const MAX_LINE: usize = 2048;
/// Most commands waiting for replies on one connection.
const MAX_PENDING: usize = 4096;
/// Most `?` in `db.query.text`.
const MAX_TEXT_ARGS: usize = 16;

/// Commands followed by a data block whose length is their 4th argument
/// (`set <key> <flags> <exptime> <bytes>`).
const STORAGE: [&str; 6] = ["SET", "ADD", "REPLACE", "APPEND", "PREPEND", "CAS"];
/// Commands answered by lines up to `END`.
const UNTIL_END: [&str; 6] = ["GET", "GETS", "GAT", "GATS", "STATS", "LRU_CRAWLER"];

/// Reads lines and skips data blocks, for one direction.
#[derive(Debug, Default)]
struct Lines {
    line: Vec<u8>,
    /// Bytes of a data block (with its CRLF) still to skip.
    skip: u64,
    lost: bool,
    now: Stamp,
}

struct Lost;

impl Lines {
    /// Feeds `chunk`; `line` gets each complete line (CR LF stripped) with
    /// the time it started and returns the data block length that follows
    /// it, if any.
    fn feed(
        &mut self,
        chunk: &Chunk<'_>,
        mut line: impl FnMut(&[u8], Stamp) -> Result<Option<u64>, Lost>,
    ) -> Result<(), Lost> {
        if self.lost {
            if !chunk.data.first().is_some_and(u8::is_ascii_alphanumeric) {
                return Ok(());
            }
            *self = Self::default();
        }
        if self.line.is_empty() {
            self.now = chunk.at();
        }
        let mut data = chunk.data;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                self.line.extend_from_slice(data);
                if self.line.len() > MAX_LINE {
                    return Err(Lost);
                }
                break;
            };
            self.line.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            let full = std::mem::take(&mut self.line);
            let text = full.strip_suffix(b"\r").unwrap_or(&full);
            if let Some(block) = line(text, self.now)? {
                self.skip = block + 2;
            }
            self.now = chunk.at();
        }
        if chunk.uncaptured > 0 {
            if self.skip < chunk.uncaptured as u64 || !self.line.is_empty() {
                return Err(Lost);
            }
            self.skip -= chunk.uncaptured as u64;
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

/// A command waiting for its reply.
#[derive(Debug)]
struct Waiting {
    pending: Pending,
    /// Its reply runs up to `END`.
    until_end: bool,
}

/// One memcached client connection.
#[derive(Debug, Default)]
pub struct MemcachedConn {
    requests: Lines,
    replies: Lines,
    waiting: VecDeque<Waiting>,
    replies_wait_for_request: bool,
}

impl MemcachedConn {
    /// Bytes the client sent.
    pub fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        let waiting = &mut self.waiting;
        let result = self.requests.feed(chunk, |line, start| {
            let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
            let name = words.next().and_then(token).ok_or(Lost)?;
            let args: Vec<&[u8]> = words.collect();
            let block = data_block(&name, &args);
            let noreply = args.last().is_some_and(|a| *a == b"noreply")
                || (name.len() == 2 && name.starts_with('M') && args.iter().any(|a| *a == b"q"));
            if !noreply {
                if waiting.len() >= MAX_PENDING {
                    waiting.pop_front();
                    out.push(DbEvent::Degraded(Degraded::RequestsDropped(1)));
                }
                waiting.push_back(Waiting {
                    until_end: UNTIL_END.contains(&name.as_str()),
                    pending: Pending {
                        request: request_of(name, args.len()),
                        at: start,
                    },
                });
            }
            block
        });
        self.replies_wait_for_request = false;
        if result.is_err() {
            self.requests.lose();
            self.lose(out);
        }
    }

    /// Bytes the client received.
    pub fn on_reply(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>) {
        if self.replies_wait_for_request {
            return;
        }
        let waiting = &mut self.waiting;
        let result = self.replies.feed(chunk, |line, _| {
            let mut words = line.split(|b| *b == b' ');
            let first = words.next().unwrap_or_default();
            let error = matches!(first, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR");
            // Data blocks: `VALUE <key> <flags> <bytes> [cas]`, `VA <bytes> ...`.
            let block = match first {
                b"VALUE" => Some(number(words.nth(2))?),
                b"VA" => Some(number(words.next())?),
                _ => None,
            };
            let Some(front) = waiting.front() else {
                return Ok(block);
            };
            let ends = error || !front.until_end || first == b"END";
            // A `VALUE` line is one of many before `END`; a meta `VA` is
            // the whole reply.
            if ends && first != b"VALUE" {
                let done = waiting.pop_front().expect("just looked");
                let outcome = if error {
                    DbOutcome::Error { code: token(first) }
                } else {
                    DbOutcome::Ok
                };
                out.push(done.pending.finish(DbSystem::Memcached, outcome, chunk));
            }
            Ok(block)
        });
        if result.is_err() {
            self.replies.lose();
            self.lose(out);
        }
    }

    /// The connection closed at `ts_ns`.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<DbEvent>) {
        for w in self.waiting.drain(..) {
            out.push(w.pending.closed(DbSystem::Memcached, ts_ns));
        }
    }

    fn lose(&mut self, out: &mut Vec<DbEvent>) {
        out.push(DbEvent::Degraded(Degraded::LostSync));
        if !self.waiting.is_empty() {
            out.push(DbEvent::Degraded(Degraded::RequestsDropped(
                self.waiting.len(),
            )));
            self.waiting.clear();
        }
        self.replies.lose();
        self.replies_wait_for_request = true;
    }
}

/// Length of the data block a command carries.
fn data_block(name: &str, args: &[&[u8]]) -> Result<Option<u64>, Lost> {
    if STORAGE.contains(&name) {
        return number(args.get(3).copied()).map(Some);
    }
    if name == "MS" {
        return number(args.get(1).copied()).map(Some);
    }
    Ok(None)
}

fn number(word: Option<&[u8]>) -> Result<u64, Lost> {
    std::str::from_utf8(word.ok_or(Lost)?)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n < 1 << 31)
        .ok_or(Lost)
}

/// The command word, lower-cased as memcached spells it, every argument a
/// `?`.
fn request_of(name: String, args: usize) -> DbRequest {
    let op = name.to_ascii_lowercase();
    let mut text = op.clone();
    if args > MAX_TEXT_ARGS {
        text.push_str(&format!(" ?({args})"));
    } else {
        (0..args).for_each(|_| text.push_str(" ?"));
    }
    DbRequest {
        operation: Some(op),
        query_text: Some(text),
        ..DbRequest::default()
    }
}

/// Whether a client's first bytes look like a memcached text command.
pub fn looks_like_command(head: &[u8]) -> bool {
    const COMMANDS: [&[u8]; 14] = [
        b"get ",
        b"gets ",
        b"set ",
        b"add ",
        b"replace ",
        b"append ",
        b"prepend ",
        b"cas ",
        b"delete ",
        b"incr ",
        b"decr ",
        b"touch ",
        b"mg ",
        b"ms ",
    ];
    COMMANDS.iter().any(|c| head.starts_with(c)) && head.contains(&b'\n')
        || head == b"version\r\n"
        || head.starts_with(b"stats")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::db::fixture::{brief, expect, replay_conn, split};

    /// pymemcache 4 against memcached 1.6: storage, multi-get, incr,
    /// delete, a `noreply` set, an unknown command.
    #[test]
    fn pymemcache_fixture() {
        let mut conn = MemcachedConn::default();
        let (ops, other) = replay_conn("memcached/pymemcache.trace", &mut conn);
        assert_eq!(
            brief(&ops),
            expect(&[
                ("set ? ? ? ?", None),
                ("get ?", None),
                ("get ? ?", None),
                ("add ? ? ? ?", None),
                ("incr ? ?", None),
                ("set ? ? ? ?", None),
                ("incr ? ?", None),
                ("delete ?", None),
                ("touch ? ?", None),
                ("bogus", Some("ERROR")),
                ("version", None),
            ])
        );
        assert!(other.is_empty(), "{other:?}");
        assert!(!format!("{ops:?}").contains("session"));
    }

    #[test]
    fn cut_values_and_lost_lines() {
        let mut conn = MemcachedConn::default();
        let mut out = Vec::new();
        let chunk = |data: &'static [u8], uncaptured, ts_ns| Chunk {
            data,
            uncaptured,
            ts_ns,
            tid: 1,
            trace: None,
        };
        conn.on_request(&chunk(b"set k 0 0 100\r\n0123", 98, 1), &mut out);
        conn.on_reply(&chunk(b"STORED\r\n", 0, 2), &mut out);
        conn.on_request(&chunk(b"get k\r\n", 0, 3), &mut out);
        conn.on_reply(&chunk(b"VALUE k 0 100\r\n01", 100, 4), &mut out);
        conn.on_reply(&chunk(b"END\r\n", 0, 4), &mut out);
        conn.on_request(&chunk(b"get k\r\n", 0, 5), &mut out);
        // A reply cut inside its line: lost.
        conn.on_reply(&chunk(b"VALUE k 0 1", 20, 6), &mut out);
        conn.on_request(&chunk(b"mg k v\r\n", 0, 7), &mut out);
        conn.on_reply(&chunk(b"VA 2\r\nab\r\n", 0, 8), &mut out);
        let (ops, other) = split(out);
        assert_eq!(
            brief(&ops),
            expect(&[("set ? ? ? ?", None), ("get ?", None), ("mg ? ?", None)])
        );
        assert_eq!(ops[1].end_ns, 4);
        assert_eq!(
            other,
            vec![
                DbEvent::Degraded(Degraded::LostSync),
                DbEvent::Degraded(Degraded::RequestsDropped(1))
            ]
        );
    }
}
