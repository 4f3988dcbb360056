//! HTTP/1.0 and HTTP/1.1 (RFC 9112) as a pure API over byte slices: message
//! heads, body framing, a cheap detector for the start of a message and a
//! chunked-body scanner.
//!
//! The bytes come from the kernel, which copies only a prefix of what each
//! syscall moved, so everything here works on prefixes: heads can be parsed
//! from the lines that were captured ([`parse_request_prefix`]) and the
//! chunked scanner skips chunk data by count but reports
//! [`Http1Error::LostSync`] when a chunk-size line it needs was not captured,
//! rather than guessing.
//!
//! Only the headers named in [`RequestHead`] and [`ResponseHead`] are copied
//! out of the input: bodies, `Authorization`, `Cookie` and `Set-Cookie`
//! values are never kept. Parsing is deliberately lenient (the agent
//! observes traffic, it does not enforce the RFC): whatever a real server
//! would answer is worth a span.

use std::mem::MaybeUninit;

use compact_str::CompactString;

use crate::model::call::{HttpVersion, RequestInfo};

/// Most header lines a head may have; more is [`Http1Error::Malformed`].
pub const MAX_HEADERS: usize = 128;

/// Longest method [`looks_like_request`] accepts: longer than any registered
/// method (`UPDATEREDIRECTREF` has 17 characters).
const MAX_METHOD_LEN: usize = 20;

/// How every status line starts.
const STATUS_LINE_START: &[u8] = b"HTTP/1.";

/// Longest piece of a header value quoted in an error.
const MAX_QUOTED_VALUE: usize = 32;

/// Why bytes could not be read as HTTP/1.x.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Http1Error {
    /// httparse rejected the head.
    #[error("malformed {message} head")]
    Malformed {
        /// `"request"` or `"response"`.
        message: &'static str,
        /// What httparse found.
        #[source]
        source: httparse::Error,
    },
    /// A `Content-Length` that is not a decimal number, or copies that disagree.
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength {
        /// The start of the offending value.
        value: String,
    },
    /// A request whose `Transfer-Encoding` does not end with `chunked`: its
    /// length cannot be known (RFC 9112 §6.3).
    #[error("request Transfer-Encoding does not end with chunked")]
    UnframedRequestBody,
    /// A chunk-size line that is not hexadecimal.
    #[error("invalid chunk size: unexpected byte {found:#04x}")]
    InvalidChunkSize {
        /// The offending byte.
        found: u8,
    },
    /// A chunk size that does not fit in 64 bits.
    #[error("chunk size overflows 64 bits")]
    ChunkSizeOverflow,
    /// A chunk not followed by CRLF.
    #[error("chunk data not followed by CRLF: found {found:#04x}")]
    MissingChunkEnd {
        /// The byte found instead.
        found: u8,
    },
    /// Chunked framing continues in bytes the kernel did not capture.
    #[error(
        "chunked framing continues at byte {offset} of a {len}-byte segment, past the captured {captured} bytes"
    )]
    LostSync {
        /// Where the framing bytes were needed.
        offset: u64,
        /// Bytes the segment moved.
        len: u64,
        /// Bytes of it captured.
        captured: usize,
    },
    /// A truncated head without even one complete line.
    #[error("no complete line in the captured head")]
    NoCompleteLine,
    /// Bytes where a message should start that do not look like one.
    #[error("bytes where a {message} should start do not look like HTTP/1.x")]
    NotAMessageStart {
        /// `"request"` or `"response"`.
        message: &'static str,
    },
    /// A head still incomplete after `limit` bytes.
    #[error("{message} head longer than {limit} bytes")]
    HeadTooLarge {
        /// `"request"` or `"response"`.
        message: &'static str,
        /// The bound.
        limit: usize,
    },
}

/// Result of parsing a head from the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The head ends within the buffer; the body, if any, starts at `len`.
    Complete {
        /// What the head says.
        head: T,
        /// Bytes of head, including the blank line ending it.
        len: usize,
    },
    /// The buffer ends before the head does.
    Partial,
}

/// The final transfer coding, the only one that decides framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferCoding {
    /// `chunked`.
    Chunked,
    /// Anything else (`gzip`, `identity`, ...).
    Other,
}

/// The headers that delimit a message, common to requests and responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framing {
    /// `Content-Length`, when present (every copy agrees).
    pub content_length: Option<u64>,
    /// Final coding of `Transfer-Encoding`, when present.
    pub transfer_encoding: Option<TransferCoding>,
    /// The connection stays open after this message: `Connection` has no
    /// `close`, and the version is 1.1 or `keep-alive` was asked for.
    pub keep_alive: bool,
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body: the message ends with its head.
    None,
    /// Exactly this many bytes (never zero: that is [`Body::None`]).
    Length(u64),
    /// A chunked body, ending with a zero-size chunk and the trailers.
    Chunked,
    /// Everything until the connection closes (responses only).
    UntilClose,
    /// The connection stops carrying HTTP after this head (`101 Switching
    /// Protocols`, or a 2xx answer to `CONNECT`).
    Tunnel,
}

impl Body {
    fn from_length(length: u64) -> Self {
        if length == 0 {
            Self::None
        } else {
            Self::Length(length)
        }
    }
}

/// What the agent keeps of a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, target, version and the headers spans use.
    pub info: RequestInfo,
    /// Body framing headers.
    pub framing: Framing,
    /// `Expect: 100-continue`: the body waits for an interim response.
    pub expect_continue: bool,
}

impl RequestHead {
    /// How the body is delimited (RFC 9112 §6.3: `Transfer-Encoding`
    /// overrides `Content-Length`; no framing header means no body).
    pub fn body(&self) -> Result<Body, Http1Error> {
        match self.framing.transfer_encoding {
            Some(TransferCoding::Chunked) => Ok(Body::Chunked),
            Some(TransferCoding::Other) => Err(Http1Error::UnframedRequestBody),
            None => Ok(self
                .framing
                .content_length
                .map_or(Body::None, Body::from_length)),
        }
    }
}

/// What the agent keeps of a response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Protocol version.
    pub version: HttpVersion,
    /// Status code.
    pub status: u16,
    /// Body framing headers.
    pub framing: Framing,
    /// A `101` whose `Upgrade` names `h2c`: HTTP/2 follows on the
    /// connection, and answers the request as its stream 1 (RFC 7540 §3.2).
    pub upgrade_h2c: bool,
}

impl ResponseHead {
    /// An interim (1xx) response, which precedes the final one for the same
    /// request. `101` is final: the connection changes protocol after it.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// How the body is delimited (RFC 9112 §6.3), given the method of the
    /// request it answers (empty when unknown).
    pub fn body(&self, request_method: &str) -> Body {
        let success = (200..300).contains(&self.status);
        if self.status == 101 || (success && request_method == "CONNECT") {
            return Body::Tunnel;
        }
        if request_method == "HEAD"
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Body::None;
        }
        match self.framing.transfer_encoding {
            Some(TransferCoding::Chunked) => Body::Chunked,
            // A response whose length cannot be known ends with the connection.
            Some(TransferCoding::Other) => Body::UntilClose,
            None => self
                .framing
                .content_length
                .map_or(Body::UntilClose, Body::from_length),
        }
    }
}

/// True if `bytes` starts like a request line: an uppercase method token then
/// a space (after the empty lines RFC 9112 §2.2 lets a server skip). A
/// shorter input that could still become one (`GE`) also counts, since heads
/// can be split over syscalls. Methods are case-sensitive and all registered
/// ones are uppercase; accepting any token would take body text for requests.
pub fn looks_like_request(bytes: &[u8]) -> bool {
    let line = skip_empty_lines(bytes);
    if line.is_empty() {
        return false;
    }
    for (i, &b) in line.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        match b {
            b' ' => return i > 0,
            b'A'..=b'Z' | b'-' | b'_' => {}
            _ => return false,
        }
    }
    line.len() <= MAX_METHOD_LEN
}

/// True if `bytes` starts with `HTTP/1.` (after empty lines), or is a
/// shorter input that could still become it.
pub fn looks_like_response(bytes: &[u8]) -> bool {
    let line = skip_empty_lines(bytes);
    if line.is_empty() {
        return false;
    }
    let n = line.len().min(STATUS_LINE_START.len());
    line[..n] == STATUS_LINE_START[..n]
}

fn skip_empty_lines(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, Http1Error> {
    // Uninitialised: httparse writes the headers it finds, and zeroing
    // the whole array first cost more than parsing a short head.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len =
        match parser_config().parse_request_with_uninit_headers(&mut request, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(source) => {
                return Err(Http1Error::Malformed {
                    message: "request",
                    source,
                });
            }
        };
    // httparse sets method, path and version before it reports a complete head.
    let version = version(request.version.unwrap_or(1));
    let headers = &*request.headers;
    let head = RequestHead {
        info: RequestInfo {
            method: request.method.unwrap_or_default().into(),
            target: request.path.unwrap_or_default().into(),
            version,
            host: header_string(headers, "host"),
            user_agent: header_string(headers, "user-agent"),
            traceparent: header_string(headers, "traceparent"),
            tracestate: header_string(headers, "tracestate"),
        },
        framing: framing(headers, version)?,
        expect_continue: header(headers, "expect")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue")),
    };
    Ok(Parsed::Complete { head, len })
}

/// Parses the response head at the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Parsed<ResponseHead>, Http1Error> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match parser_config().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(source) => {
            return Err(Http1Error::Malformed {
                message: "response",
                source,
            });
        }
    };
    // httparse sets version and code before it reports a complete head.
    let version = version(response.version.unwrap_or(1));
    let status = response.code.unwrap_or_default();
    let head = ResponseHead {
        version,
        status,
        framing: framing(response.headers, version)?,
        upgrade_h2c: status == 101
            && response.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && std::str::from_utf8(h.value)
                        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("h2c"))
            }),
    };
    Ok(Parsed::Complete { head, len })
}

/// Parses a request head whose end was not captured, from the lines that
/// were: the request line and the complete header lines. Its framing is
/// unknown (the framing headers may be among the lines lost).
pub fn parse_request_prefix(captured: &[u8]) -> Result<RequestHead, Http1Error> {
    parse_prefix(captured, parse_request)
}

/// Parses a response head whose end was not captured; see
/// [`parse_request_prefix`].
pub fn parse_response_prefix(captured: &[u8]) -> Result<ResponseHead, Http1Error> {
    parse_prefix(captured, parse_response)
}

/// Ends the complete lines of `captured` with the blank line that closes a
/// head, so httparse reads what is there.
fn parse_prefix<T>(
    captured: &[u8],
    parse: fn(&[u8]) -> Result<Parsed<T>, Http1Error>,
) -> Result<T, Http1Error> {
    let end = captured
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or(Http1Error::NoCompleteLine)?;
    let mut lines = Vec::with_capacity(end + 3);
    lines.extend_from_slice(&captured[..=end]);
    lines.extend_from_slice(b"\r\n");
    match parse(&lines)? {
        Parsed::Complete { head, .. } => Ok(head),
        // Only empty lines were captured.
        Parsed::Partial => Err(Http1Error::NoCompleteLine),
    }
}

fn parser_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    config
}

/// httparse only accepts minor versions 0 and 1.
fn version(minor: u8) -> HttpVersion {
    if minor == 0 {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    }
}

/// The first value of a header (names are case-insensitive).
fn header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn header_string(headers: &[httparse::Header<'_>], name: &str) -> Option<CompactString> {
    header(headers, name).map(crate::protocols::lossy_text)
}

/// Comma-separated list elements, trimmed, empty ones dropped (RFC 9110 §5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

fn framing(headers: &[httparse::Header<'_>], version: HttpVersion) -> Result<Framing, Http1Error> {
    let mut content_length = None;
    let mut transfer_encoding = None;
    let (mut close, mut keep_alive) = (false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // Repeated copies (or `42, 42`) are fine as long as they agree (RFC 9110 §8.6).
            for element in h.value.split(|&b| b == b',') {
                let length = parse_decimal(element.trim_ascii())
                    .filter(|n| content_length.is_none_or(|previous| previous == *n))
                    .ok_or_else(|| Http1Error::InvalidContentLength {
                        value: quote(h.value),
                    })?;
                content_length = Some(length);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Codings may be spread over several lines; the last one decides.
            if let Some(last) = list_elements(h.value).last() {
                let coding = last
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                transfer_encoding = Some(if coding.eq_ignore_ascii_case(b"chunked") {
                    TransferCoding::Chunked
                } else {
                    TransferCoding::Other
                });
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for option in list_elements(h.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    Ok(Framing {
        content_length,
        transfer_encoding,
        keep_alive: !close && (version == HttpVersion::Http11 || keep_alive),
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn quote(value: &[u8]) -> String {
    String::from_utf8_lossy(&value[..value.len().min(MAX_QUOTED_VALUE)]).into_owned()
}

/// Where a [`ChunkedScanner`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// In the hex digits of a chunk size (`digits` read so far).
    Size { size: u64, digits: u8 },
    /// After the size: whitespace or `;extensions` up to the line end.
    Extension { size: u64 },
    /// Seen the CR ending a chunk-size line.
    SizeLf { size: u64 },
    /// In chunk data.
    Data { remaining: u64 },
    /// After chunk data, expecting CR (or a bare LF).
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer line, or of the blank line ending the body.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Seen the CR of the blank line ending the body.
    TrailerLf,
    /// The body ended.
    Done,
}

/// Progress of a [`ChunkedScanner`] after a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkProgress {
    /// The body continues in later segments.
    NeedMore,
    /// The body ended after `consumed` bytes of this segment; the rest
    /// belongs to the next message.
    Done {
        /// Bytes of the segment that were body.
        consumed: u64,
    },
}

/// Walks a chunked body (RFC 9112 §7.1) segment by segment, without
/// buffering: it needs the bytes of chunk-size lines, CRLFs and trailers,
/// but skips chunk data by count, captured or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedScanner {
    state: ChunkState,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: ChunkState::Size { size: 0, digits: 0 },
        }
    }
}

impl ChunkedScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Walks the next `len` bytes of the body, of which `captured` is the
    /// prefix that was copied. Fails with [`Http1Error::LostSync`] when the
    /// framing continues past `captured`; the scanner is then of no further
    /// use.
    pub fn scan(&mut self, captured: &[u8], len: u64) -> Result<ChunkProgress, Http1Error> {
        let mut offset = 0u64;
        while offset < len && self.state != ChunkState::Done {
            if let ChunkState::Data { remaining } = self.state {
                let n = remaining.min(len - offset);
                offset += n;
                self.state = if n == remaining {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data {
                        remaining: remaining - n,
                    }
                };
                continue;
            }
            let byte = usize::try_from(offset)
                .ok()
                .and_then(|i| captured.get(i))
                .copied();
            let Some(byte) = byte else {
                return Err(Http1Error::LostSync {
                    offset,
                    len,
                    captured: captured.len(),
                });
            };
            self.state = self.step(byte)?;
            offset += 1;
        }
        Ok(if self.state == ChunkState::Done {
            ChunkProgress::Done { consumed: offset }
        } else {
            ChunkProgress::NeedMore
        })
    }

    /// The state after `byte`. Bare LFs are accepted as line ends, like
    /// httparse does for heads.
    fn step(&self, byte: u8) -> Result<ChunkState, Http1Error> {
        use ChunkState::*;
        let line_end = |size: u64| {
            if size == 0 {
                TrailerStart
            } else {
                Data { remaining: size }
            }
        };
        Ok(match (self.state, byte) {
            (Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(Http1Error::ChunkSizeOverflow);
                }
                let digit = (b as char).to_digit(16).map(u64::from).unwrap_or_default();
                Size {
                    size: (size << 4) | digit,
                    digits: digits + 1,
                }
            }
            (Size { digits: 0, .. }, found) => return Err(Http1Error::InvalidChunkSize { found }),
            (Size { size, .. }, b';' | b' ' | b'\t') => Extension { size },
            (Size { size, .. } | Extension { size }, b'\r') => SizeLf { size },
            (Size { size, .. } | Extension { size } | SizeLf { size }, b'\n') => line_end(size),
            (Size { .. } | SizeLf { .. }, found) => {
                return Err(Http1Error::InvalidChunkSize { found });
            }
            (Extension { size }, _) => Extension { size },
            (DataCr, b'\r') => DataLf,
            (DataCr | DataLf, b'\n') => Size { size: 0, digits: 0 },
            (DataCr | DataLf, found) => return Err(Http1Error::MissingChunkEnd { found }),
            (TrailerStart, b'\r') => TrailerLf,
            (TrailerStart | TrailerLf, b'\n') => Done,
            (TrailerStart | TrailerLine, b) => {
                if b == b'\n' {
                    TrailerStart
                } else {
                    TrailerLine
                }
            }
            // A lone CR at the start of a line: treat the line as a trailer.
            (TrailerLf, _) => TrailerLine,
            (Data { .. } | Done, _) => self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> (RequestHead, usize) {
        match parse_request(bytes) {
            Ok(Parsed::Complete { head, len }) => (head, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn response(bytes: &[u8]) -> (ResponseHead, usize) {
        match parse_response(bytes) {
            Ok(Parsed::Complete { head, len }) => (head, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn request_heads() {
        struct Case {
            input: &'static [u8],
            method: &'static str,
            target: &'static str,
            version: HttpVersion,
            host: Option<&'static str>,
            body: Result<Body, Http1Error>,
        }
        let cases = [
            Case {
                input: b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                method: "GET",
                target: "/",
                version: HttpVersion::Http11,
                host: Some("a"),
                body: Ok(Body::None),
            },
            Case {
                input: b"GET /x?y=1 HTTP/1.0\r\n\r\n",
                method: "GET",
                target: "/x?y=1",
                version: HttpVersion::Http10,
                host: None,
                body: Ok(Body::None),
            },
            Case {
                input: b"POST /p HTTP/1.1\r\nhOsT: b:8080\r\nContent-Length: 12\r\n\r\n",
                method: "POST",
                target: "/p",
                version: HttpVersion::Http11,
                host: Some("b:8080"),
                body: Ok(Body::Length(12)),
            },
            Case {
                input: b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                method: "POST",
                target: "/",
                version: HttpVersion::Http11,
                host: None,
                body: Ok(Body::None),
            },
            Case {
                input: b"PUT / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
                method: "PUT",
                target: "/",
                version: HttpVersion::Http11,
                host: None,
                body: Ok(Body::Length(5)),
            },
            // Transfer-Encoding overrides Content-Length.
            Case {
                input: b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3\r\n\r\n",
                method: "POST",
                target: "/",
                version: HttpVersion::Http11,
                host: None,
                body: Ok(Body::Chunked),
            },
            Case {
                input: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                method: "POST",
                target: "/",
                version: HttpVersion::Http11,
                host: None,
                body: Err(Http1Error::UnframedRequestBody),
            },
            // Leading empty lines, several spaces, bare LFs, absolute form.
            Case {
                input: b"\r\n\nCONNECT  example.com:443  HTTP/1.1\nHost: example.com:443\n\n",
                method: "CONNECT",
                target: "example.com:443",
                version: HttpVersion::Http11,
                host: Some("example.com:443"),
                body: Ok(Body::None),
            },
            Case {
                input: b"GET http://h/p HTTP/1.1\r\nbad header\r\nHost: h\r\n\r\n",
                method: "GET",
                target: "http://h/p",
                version: HttpVersion::Http11,
                host: Some("h"),
                body: Ok(Body::None),
            },
            Case {
                input: b"PURGE /cache HTTP/1.1\r\n\r\n",
                method: "PURGE",
                target: "/cache",
                version: HttpVersion::Http11,
                host: None,
                body: Ok(Body::None),
            },
        ];
        for case in cases {
            let (head, len) = request(case.input);
            let input = String::from_utf8_lossy(case.input);
            assert_eq!(len, case.input.len(), "{input}");
            assert_eq!(head.info.method, case.method, "{input}");
            assert_eq!(head.info.target, case.target, "{input}");
            assert_eq!(head.info.version, case.version, "{input}");
            assert_eq!(head.info.host.as_deref(), case.host, "{input}");
            assert_eq!(head.body(), case.body, "{input}");
        }
    }

    #[test]
    fn request_header_values() {
        let (head, _) = request(
            b"GET / HTTP/1.1\r\nUser-Agent: curl/8.0\r\nTRACEPARENT: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
              tracestate: k=v\r\nExpect:  100-Continue \r\nConnection: close\r\nHost: first\r\nHost: second\r\n\r\n",
        );
        assert_eq!(head.info.user_agent.as_deref(), Some("curl/8.0"));
        assert_eq!(
            head.info.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(head.info.tracestate.as_deref(), Some("k=v"));
        assert_eq!(head.info.host.as_deref(), Some("first"));
        assert!(head.expect_continue);
        assert!(!head.framing.keep_alive);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let cases: [(&[u8], bool); 5] = [
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: upgrade\r\n\r\n", false),
        ];
        for (input, keep_alive) in cases {
            assert_eq!(
                request(input).0.framing.keep_alive,
                keep_alive,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn secrets_are_not_kept() {
        let (head, _) = request(
            b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cr3t-token\r\nCookie: session=s3cr3t-cookie\r\n\r\n",
        );
        let kept = format!("{head:?}");
        assert!(!kept.contains("s3cr3t"), "{kept}");
        let (head, _) =
            response(b"HTTP/1.1 200 OK\r\nSet-Cookie: id=s3cr3t\r\nContent-Length: 0\r\n\r\n");
        let kept = format!("{head:?}");
        assert!(!kept.contains("s3cr3t"), "{kept}");
    }

    #[test]
    fn partial_and_malformed_requests() {
        let partial: [&[u8]; 5] = [
            b"",
            b"GE",
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        ];
        for input in partial {
            assert_eq!(
                parse_request(input),
                Ok(Parsed::Partial),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let malformed: [&[u8]; 5] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ];
        for input in malformed {
            assert!(
                matches!(
                    parse_request(input),
                    Err(Http1Error::Malformed {
                        message: "request",
                        ..
                    })
                ),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let bad_lengths: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        ];
        for input in bad_lengths {
            assert!(
                matches!(
                    parse_request(input),
                    Err(Http1Error::InvalidContentLength { .. })
                ),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn too_many_headers_is_malformed() {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&input),
            Err(Http1Error::Malformed {
                message: "request",
                source: httparse::Error::TooManyHeaders
            })
        );
    }

    #[test]
    fn response_body_framing() {
        let cases: [(&[u8], &str, Body); 16] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                "GET",
                Body::Length(5),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "GET",
                Body::None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                "HEAD",
                Body::None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HEAD",
                Body::None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                "GET",
                Body::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "GET",
                Body::UntilClose,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", "GET", Body::UntilClose),
            (b"HTTP/1.0 200 OK\r\n\r\n", "GET", Body::UntilClose),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                "",
                Body::Length(3),
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE", Body::None),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                "GET",
                Body::None,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", "POST", Body::None),
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
                "GET",
                Body::None,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                "GET",
                Body::Tunnel,
            ),
            (
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                "CONNECT",
                Body::Tunnel,
            ),
            (
                b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n",
                "CONNECT",
                Body::None,
            ),
        ];
        for (input, method, body) in cases {
            let (head, len) = response(input);
            assert_eq!(len, input.len());
            assert_eq!(
                head.body(method),
                body,
                "{method} {}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn response_heads() {
        let (head, _) = response(b"HTTP/1.0 404 File not found\r\nConnection: close\r\n\r\n");
        assert_eq!(
            (head.version, head.status, head.framing.keep_alive),
            (HttpVersion::Http10, 404, false)
        );
        // No reason phrase, obsolete line folding, space before the colon.
        let (head, _) = response(b"HTTP/1.1 500\r\nX-Long: a\r\n b\r\nContent-Length : 2\r\n\r\n");
        assert_eq!((head.status, head.framing.content_length), (500, Some(2)));
        let interim = [
            (100, true),
            (102, true),
            (103, true),
            (101, false),
            (200, false),
        ];
        for (status, is_interim) in interim {
            let line = format!("HTTP/1.1 {status} X\r\n\r\n");
            assert_eq!(
                response(line.as_bytes()).0.is_interim(),
                is_interim,
                "{status}"
            );
        }
        assert_eq!(parse_response(b"HTTP/1.1 20"), Ok(Parsed::Partial));
        assert!(matches!(
            parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(Http1Error::Malformed { .. })
        ));
        assert!(matches!(
            parse_response(b"HTTP/3 200\r\n\r\n"),
            Err(Http1Error::Malformed { .. })
        ));
    }

    #[test]
    fn head_prefixes() {
        let captured =
            b"GET /big HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nCookie: a=aaaaaaaaaaaaaaaaaaa";
        let head = parse_request_prefix(captured).expect("prefix parses");
        assert_eq!(
            (
                head.info.method.as_str(),
                head.info.target.as_str(),
                head.info.host.as_deref()
            ),
            ("GET", "/big", Some("h"))
        );
        assert_eq!(head.info.user_agent.as_deref(), Some("ua"));
        let head =
            parse_response_prefix(b"HTTP/1.1 503 Busy\r\nContent-Secur").expect("prefix parses");
        assert_eq!(head.status, 503);
        assert_eq!(
            parse_request_prefix(b"GET /only-part-of-the-line"),
            Err(Http1Error::NoCompleteLine)
        );
        assert_eq!(
            parse_request_prefix(b"\r\n"),
            Err(Http1Error::NoCompleteLine)
        );
        assert!(matches!(
            parse_request_prefix(b"\x16\x03\x01\n"),
            Err(Http1Error::Malformed { .. })
        ));
    }

    #[test]
    fn detectors() {
        let cases: [(&[u8], bool, bool); 17] = [
            (b"GET / HTTP/1.1\r\n", true, false),
            (b"M-SEARCH * HTTP/1.1\r\n", true, false),
            (b"\r\nPOST /x", true, false),
            (b"GE", true, false),
            (b"HTTP/1.1 200 OK\r\n", false, true),
            (b"HTTP/1.0 404", false, true),
            (b"HTT", true, true),
            (b"HTTP/2 200", false, false),
            (b"get / HTTP/1.1", false, false),
            (b" / HTTP/1.1", false, false),
            (
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
                false,
                false,
            ),
            (b"\x17\x03\x03\x00\x20", false, false),
            (b"PRI * HTTP/2.0\r\n", true, false),
            (b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", false, false),
            (b"{\"json\": 1}", false, false),
            (b"", false, false),
            (b"\r\n", false, false),
        ];
        for (input, request, response) in cases {
            let shown = String::from_utf8_lossy(input);
            assert_eq!(looks_like_request(input), request, "request? {shown:?}");
            assert_eq!(looks_like_response(input), response, "response? {shown:?}");
        }
    }

    type Progress = Result<ChunkProgress, Http1Error>;

    /// Feeds `segments` (fully captured) to a fresh scanner; returns the
    /// progress after each.
    fn scan_all(segments: &[&[u8]]) -> Vec<Progress> {
        let mut scanner = ChunkedScanner::new();
        segments
            .iter()
            .map(|s| scanner.scan(s, s.len() as u64))
            .collect()
    }

    #[test]
    fn chunked_bodies() {
        use ChunkProgress::{Done, NeedMore};
        let cases: [(&[&[u8]], Vec<Progress>); 10] = [
            (&[b"0\r\n\r\n"], vec![Ok(Done { consumed: 5 })]),
            (
                &[b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1"],
                vec![Ok(Done { consumed: 15 })],
            ),
            (
                &[b"5\r\nhel", b"lo\r\n0\r", b"\n\r\n"],
                vec![Ok(NeedMore), Ok(NeedMore), Ok(Done { consumed: 3 })],
            ),
            (
                &[b"A;name=val\r\n0123456789\r\n0\r\n\r\n"],
                vec![Ok(Done { consumed: 29 })],
            ),
            (&[b"1f  \r\n"], vec![Ok(NeedMore)]),
            (
                &[b"3\nabc\n0\nTrailer: x\nOther: y\r\n\n"],
                vec![Ok(Done { consumed: 30 })],
            ),
            (
                &[b"0\r\nExpires: never\r\n\r\n"],
                vec![Ok(Done { consumed: 21 })],
            ),
            (
                &[b"x\r\n"],
                vec![Err(Http1Error::InvalidChunkSize { found: b'x' })],
            ),
            (
                &[b"3\r\nabcd"],
                vec![Err(Http1Error::MissingChunkEnd { found: b'd' })],
            ),
            (
                &[b"11111111111111111\r\n"],
                vec![Err(Http1Error::ChunkSizeOverflow)],
            ),
        ];
        for (segments, expected) in cases {
            assert_eq!(scan_all(segments), expected, "{segments:?}");
        }
    }

    #[test]
    fn chunked_body_split_anywhere() {
        let body = b"4;ext\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX: y\r\n\r\n";
        for split in 0..=body.len() {
            for second in split..=body.len() {
                let parts = [&body[..split], &body[split..second], &body[second..]];
                let progress = scan_all(&parts);
                let done = progress
                    .iter()
                    .position(|p| matches!(p, Ok(ChunkProgress::Done { .. })));
                let last = parts
                    .iter()
                    .rposition(|p| !p.is_empty())
                    .unwrap_or_default();
                assert_eq!(done, Some(last), "split at {split}/{second}: {progress:?}");
            }
        }
    }

    #[test]
    fn chunk_data_is_skipped_uncaptured_but_lines_are_not() {
        // 0x400 bytes of data, only 10 captured: skipped by count, and the
        // next size line sits in the next (captured) segment.
        let mut scanner = ChunkedScanner::new();
        assert_eq!(
            scanner.scan(b"400\r\n01234", 5 + 0x400),
            Ok(ChunkProgress::NeedMore)
        );
        assert_eq!(
            scanner.scan(b"\r\n0\r\n\r\n", 7),
            Ok(ChunkProgress::Done { consumed: 7 })
        );
        // The size line after the data was not captured: lost, not guessed.
        let mut scanner = ChunkedScanner::new();
        assert_eq!(
            scanner.scan(b"2\r\nab", 20),
            Err(Http1Error::LostSync {
                offset: 5,
                len: 20,
                captured: 5
            })
        );
    }

    #[test]
    fn no_panics_on_arbitrary_bytes() {
        // xorshift64: deterministic noise, biased towards HTTP-ish bytes.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let alphabet = b"GET HTTP/1.1\r\n:0123456789abcdefABCDEF;, chunked\x00\x16\xff";
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..next(96))
                .map(|_| alphabet[next(alphabet.len())])
                .collect();
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes);
            let _ = parse_request_prefix(&bytes);
            let _ = parse_response_prefix(&bytes);
            let _ = looks_like_request(&bytes);
            let _ = looks_like_response(&bytes);
            let _ = ChunkedScanner::new().scan(&bytes, next(200) as u64);
        }
    }

    mod fixtures {
        //! Bytes captured from curl and Python's http.server (see
        //! `agent/tests/fixtures/http1/capture.py`).

        use super::*;

        macro_rules! fixture {
            ($name:literal) => {
                (
                    &include_bytes!(concat!(
                        "../../../tests/fixtures/http1/",
                        $name,
                        ".request.bin"
                    ))[..],
                    &include_bytes!(concat!(
                        "../../../tests/fixtures/http1/",
                        $name,
                        ".response.bin"
                    ))[..],
                )
            };
        }

        /// Parses one request and its response, checks both heads end where
        /// the framing says and returns them.
        fn exchange(
            request_bytes: &[u8],
            response_bytes: &[u8],
        ) -> (RequestHead, ResponseHead, Body) {
            assert!(looks_like_request(request_bytes));
            assert!(looks_like_response(response_bytes));
            let (request, request_len) = super::request(request_bytes);
            assert_eq!(request.body(), Ok(Body::None));
            assert_eq!(request_len, request_bytes.len());
            let (response, response_len) = super::response(response_bytes);
            let body = response.body(&request.info.method);
            if let Body::Length(n) = body {
                assert_eq!(response_len as u64 + n, response_bytes.len() as u64);
            }
            (request, response, body)
        }

        #[test]
        fn python_http_server_get() {
            let (request, response) = fixture!("simple_get");
            let (request, response, body) = exchange(request, response);
            assert_eq!(
                (request.info.method.as_str(), request.info.target.as_str()),
                ("GET", "/hello.txt")
            );
            assert_eq!(request.info.user_agent.as_deref(), Some("curl/7.88.1"));
            assert!(
                request
                    .info
                    .host
                    .is_some_and(|h| h.starts_with("127.0.0.1:"))
            );
            assert_eq!(
                (response.version, response.status, body),
                (HttpVersion::Http10, 200, Body::Length(30))
            );
            assert!(!response.framing.keep_alive);
        }

        #[test]
        fn python_http_server_head() {
            let (request, response) = fixture!("simple_head");
            let (request, response, body) = exchange(request, response);
            assert_eq!(request.info.method, "HEAD");
            assert_eq!(
                (response.status, response.framing.content_length, body),
                (200, Some(30), Body::None)
            );
        }

        #[test]
        fn python_http_server_404() {
            let (request, response) = fixture!("simple_404");
            let (_, response, body) = exchange(request, response);
            assert_eq!((response.status, body), (404, Body::Length(335)));
        }

        #[test]
        fn http10_close_delimited() {
            let (request, response) = fixture!("http10_close");
            let (request, response, body) = exchange(request, response);
            assert_eq!(request.info.version, HttpVersion::Http10);
            assert_eq!(
                (response.version, body),
                (HttpVersion::Http10, Body::UntilClose)
            );
        }

        #[test]
        fn chunked_response() {
            let (request, response_bytes) = fixture!("chunked");
            let (_, response, body) = exchange(request, response_bytes);
            assert_eq!((response.status, body), (200, Body::Chunked));
            let (_, head_len) = super::response(response_bytes);
            let chunks = &response_bytes[head_len..];
            assert_eq!(
                ChunkedScanner::new().scan(chunks, chunks.len() as u64),
                Ok(ChunkProgress::Done {
                    consumed: chunks.len() as u64
                })
            );
        }

        #[test]
        fn keep_alive_pair() {
            let (requests, responses) = fixture!("keepalive");
            let (first, len) = super::request(requests);
            let (second, rest) = super::request(&requests[len..]);
            assert_eq!(len + rest, requests.len());
            assert_eq!(
                (first.info.target.as_str(), second.info.target.as_str()),
                ("/a", "/b?x=1")
            );
            let (response, len) = super::response(responses);
            let Body::Length(n) = response.body("GET") else {
                panic!("{response:?}")
            };
            let next = len + usize::try_from(n).expect("small");
            let (response, _) = super::response(&responses[next..]);
            assert_eq!((response.status, response.framing.keep_alive), (200, true));
        }

        #[test]
        fn expect_continue() {
            let (request_bytes, responses) = fixture!("expect_continue");
            let (request, len) = super::request(request_bytes);
            assert!(request.expect_continue);
            assert_eq!(request.body(), Ok(Body::Length(300)));
            assert_eq!(len + 300, request_bytes.len());
            assert_eq!(
                request.info.traceparent.as_deref(),
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            );
            let (interim, len) = super::response(responses);
            assert!(interim.is_interim());
            assert_eq!(interim.body("POST"), Body::None);
            let (last, _) = super::response(&responses[len..]);
            assert_eq!((last.status, last.body("POST")), (201, Body::Length(14)));
        }
    }
}
