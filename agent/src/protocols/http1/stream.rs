//! One direction of a connection read as a sequence of HTTP/1.x messages.
//!
//! [`MessageStream`] finds where heads start and end, buffers heads split
//! over syscalls (up to a bound), and skips bodies by counting the bytes each
//! syscall moved, captured or not. What a head means (a request to queue, a
//! response to pair) is left to a [`MessageSink`], so requests and responses
//! share the walking.
//!
//! When framing cannot be followed (a head or chunk line was not captured, a
//! body runs until close, bytes make no sense) the stream becomes
//! *unframed*: it skips everything until a segment starts like a new
//! message. The kernel reports syscall boundaries, and messages usually
//! start at one, so that is where resynchronising is worth trying.

use super::parse::{Body, ChunkProgress, ChunkedScanner, Http1Error, Parsed};
use crate::protocols::{Segment, Stamp};

/// What a message means, for one direction.
pub(super) trait MessageSink {
    /// True if `bytes` may start a message in this direction.
    fn is_start(&self, bytes: &[u8]) -> bool;

    /// A message starts; anything still open in the other direction that
    /// only the next message can close gets closed now.
    fn message_start(&mut self);

    /// Parses the head at the start of `bytes`, whose first bytes moved at
    /// `first`. When complete, records the message and says how its body is
    /// framed.
    fn head(&mut self, bytes: &[u8], first: Stamp) -> Result<Parsed<Body>, Http1Error>;

    /// The head continues past what was captured (or past the buffer bound):
    /// records what the complete lines of `captured` say. The body framing
    /// is unknown, unless the head switches protocols ([`Body::Tunnel`]).
    fn truncated_head(&mut self, captured: &[u8], first: Stamp) -> Result<Body, Http1Error>;

    /// Bytes of the current message moved at `at`.
    fn progress(&mut self, _at: Stamp) {}

    /// The current message ended with the bytes moved at `at`.
    fn message_end(&mut self, _at: Stamp) {}

    /// Bytes could not be read as HTTP/1.x.
    fn failed(&mut self, error: Http1Error);
}

#[derive(Debug)]
enum State {
    /// Between messages: the next bytes start one.
    Idle,
    /// In a head that started at `first`; `buf` holds its bytes when it
    /// spans segments (empty while it fits in one).
    Head { buf: Vec<u8>, first: Stamp },
    /// In a body, this many bytes to go.
    Length(u64),
    /// In a chunked body.
    Chunked(ChunkedScanner),
    /// Framing unknown: skip until a segment starts a message.
    Unframed,
    /// No longer HTTP: ignore everything.
    Tunnel,
}

/// One direction's progress through its messages.
#[derive(Debug)]
pub(super) struct MessageStream {
    state: State,
    /// `"request"` or `"response"`, for errors.
    message: &'static str,
    /// See [`MessageStream::switched_at`].
    switched_at: Option<u64>,
}

impl MessageStream {
    /// A stream expecting a message of the given kind.
    pub fn new(message: &'static str) -> Self {
        Self {
            state: State::Idle,
            message,
            switched_at: None,
        }
    }

    /// True when the current message can only be ended by the next one (or
    /// by the connection closing).
    pub fn is_unframed(&self) -> bool {
        matches!(self.state, State::Unframed)
    }

    /// True once a head switched the connection to another protocol.
    pub fn is_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    /// Where, in the segment last fed, the head that switched protocols
    /// ended: the other protocol's bytes start there. `None` if the switch
    /// was not in that segment or its head's end was not captured.
    pub fn switched_at(&self) -> Option<u64> {
        self.switched_at
    }

    /// Walks one segment. Heads are buffered up to `max_head` bytes.
    pub fn feed(&mut self, segment: &Segment<'_>, max_head: usize, sink: &mut impl MessageSink) {
        self.switched_at = None;
        let mut pos = 0u64;
        while pos < segment.len {
            let rest = segment.len - pos;
            let captured = usize::try_from(pos)
                .ok()
                .and_then(|i| segment.payload.get(i..))
                .unwrap_or_default();
            match &mut self.state {
                State::Tunnel => return,
                State::Idle | State::Unframed => {
                    let between_messages = matches!(self.state, State::Idle);
                    // RFC 9112 §2.2: empty lines before a message are to be
                    // ignored (old clients send one after a POST body).
                    if between_messages && !captured.is_empty() && is_blank(captured) {
                        return;
                    }
                    // Resynchronising takes a whole first line: body bytes
                    // that merely begin like one (`OK`) must not open a head.
                    let starts =
                        sink.is_start(captured) && (between_messages || captured.contains(&b'\n'));
                    if !starts {
                        // Uncaptured bytes are the kernel's loss, already
                        // counted there; bytes that make no sense are ours.
                        if between_messages && !captured.is_empty() {
                            sink.failed(Http1Error::NotAMessageStart {
                                message: self.message,
                            });
                        }
                        self.state = State::Unframed;
                        sink.progress(segment.at);
                        return;
                    }
                    sink.message_start();
                    self.state = State::Head {
                        buf: Vec::new(),
                        first: segment.at,
                    };
                }
                State::Head { .. } => {
                    match self.read_head(captured, rest, segment.at, max_head, sink) {
                        Some(consumed) => {
                            pos += consumed;
                            if self.is_tunnel() {
                                self.switched_at = Some(pos);
                            }
                        }
                        None => return,
                    }
                }
                State::Length(remaining) => {
                    let n = (*remaining).min(rest);
                    *remaining -= n;
                    pos += n;
                    sink.progress(segment.at);
                    if *remaining == 0 {
                        sink.message_end(segment.at);
                        self.state = State::Idle;
                    }
                }
                State::Chunked(scanner) => {
                    sink.progress(segment.at);
                    match scanner.scan(captured, rest) {
                        Ok(ChunkProgress::NeedMore) => return,
                        Ok(ChunkProgress::Done { consumed }) => {
                            pos += consumed;
                            sink.message_end(segment.at);
                            self.state = State::Idle;
                        }
                        Err(error) => {
                            // Lost sync is the capture's limit, not a parse failure.
                            if !matches!(error, Http1Error::LostSync { .. }) {
                                sink.failed(error);
                            }
                            self.state = State::Unframed;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Reads head bytes from the start of `captured`, the copied prefix of
    /// the segment's last `rest` bytes. Returns how many of them were head,
    /// or `None` when the rest of the segment is accounted for.
    fn read_head(
        &mut self,
        captured: &[u8],
        rest: u64,
        at: Stamp,
        max_head: usize,
        sink: &mut impl MessageSink,
    ) -> Option<u64> {
        let State::Head { buf, first } = &mut self.state else {
            return None;
        };
        let first = *first;
        let prior = buf.len();
        // A head within one segment is parsed in place, copied only when
        // it continues in the next.
        let parsed = if prior == 0 {
            sink.head(captured, first)
        } else {
            let room = max_head.saturating_sub(prior).min(captured.len());
            buf.extend_from_slice(&captured[..room]);
            sink.head(buf, first)
        };
        match parsed {
            Ok(Parsed::Complete { head: body, len }) => {
                sink.progress(at);
                self.state = after_head(body, at, sink);
                Some(len.saturating_sub(prior) as u64)
            }
            Ok(Parsed::Partial) => {
                let head = if prior == 0 { captured } else { buf.as_slice() };
                let too_large = head.len() >= max_head;
                // The head goes on in bytes the kernel did not copy.
                let truncated = (captured.len() as u64) < rest;
                if !too_large && !truncated {
                    if prior == 0 {
                        *buf = captured.to_vec();
                    }
                    return None;
                }
                let recorded = sink.truncated_head(head, first);
                sink.progress(at);
                self.state = match recorded {
                    Ok(body) => {
                        // Reported once the head is recorded: an HTTP
                        // message, only too long to follow.
                        if too_large {
                            sink.failed(Http1Error::HeadTooLarge {
                                message: self.message,
                                limit: max_head,
                            });
                        }
                        // Whatever else the lost lines said, the body's
                        // end can no longer be found.
                        let body = if body == Body::Tunnel {
                            body
                        } else {
                            Body::UntilClose
                        };
                        after_head(body, at, sink)
                    }
                    Err(error) => {
                        sink.failed(error);
                        State::Unframed
                    }
                };
                None
            }
            Err(error) => {
                sink.failed(error);
                self.state = State::Unframed;
                None
            }
        }
    }
}

/// The state after a head whose body is framed as `body`, which ended at `at`.
fn after_head(body: Body, at: Stamp, sink: &mut impl MessageSink) -> State {
    match body {
        Body::None => {
            sink.message_end(at);
            State::Idle
        }
        Body::Tunnel => {
            sink.message_end(at);
            State::Tunnel
        }
        Body::Length(n) => State::Length(n),
        Body::Chunked => State::Chunked(ChunkedScanner::new()),
        Body::UntilClose => State::Unframed,
    }
}

/// Only CR and LF bytes.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == b'\r' || b == b'\n')
}
