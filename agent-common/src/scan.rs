//! Pure byte scanners the kernel programs run on captured bytes: what
//! starts a request or a response, a TLS record, a `traceparent` header
//! and its value. Kept here, free of BPF helpers and raw memory, so they
//! are unit-tested on the host; the kernel side reads the bytes (from user
//! or map memory) and hands them in by value.
//!
//! Written for the BPF verifier as much as for people: no early exits
//! inside fixed-size work (each branch is another path the verifier walks),
//! `#[inline(always)]` so each program gets its own copy.

/// First bytes of the request methods the kernel recognises as a request start.
const METHOD_PREFIXES: [&[u8; 4]; 9] = [
    b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD", b"PATC", b"OPTI", b"CONN", b"TRAC",
];

/// First bytes of the memcached text commands that start a request.
const MEMCACHED_PREFIXES: [&[u8; 4]; 8] = [
    b"get ", b"gets", b"set ", b"add ", b"dele", b"incr", b"decr", b"touc",
];

/// Length of a version 00 `traceparent` value.
pub const TRACEPARENT_VALUE_LEN: usize = 55;

/// Lowercase hex digits, for writing ids.
pub const HEX: &[u8; 16] = b"0123456789abcdef";

/// True if `head` (the first 4 bytes of a message) starts like an HTTP/1
/// request line.
#[inline(always)]
pub fn is_request_start(head: [u8; 4]) -> bool {
    METHOD_PREFIXES.iter().any(|m| **m == head)
}

/// True if `head` (the first 7 bytes of a message) starts an HTTP/1
/// status line (`HTTP/1.`).
#[inline(always)]
pub fn is_response_start(head: [u8; 7]) -> bool {
    head == *b"HTTP/1."
}

/// True if `head` (the first 8 bytes of a write, `len` of them real)
/// starts a database or cache request the agent reads: a Redis command
/// (`*<digit>`), a PostgreSQL `Query`, `Parse` or `Bind` (type byte, then a
/// length under 64 KiB), a MySQL `COM_QUERY`, `COM_STMT_PREPARE` or
/// `COM_STMT_EXECUTE` (3-byte length under 64 KiB, sequence 0, command),
/// or a memcached text command. Such a request on a client connection gets
/// a client span id like an HTTP one, parented to the thread's server
/// request.
#[inline(always)]
pub fn is_db_request_start(head: &[u8; 8], len: u32) -> bool {
    if len < 5 {
        return false;
    }
    let redis = head[0] == b'*' && head[1].is_ascii_digit();
    let postgres = matches!(head[0], b'Q' | b'P' | b'B') && head[1] == 0 && head[2] == 0;
    let mysql = head[2] == 0 && head[3] == 0 && matches!(head[4], 0x03 | 0x16 | 0x17);
    let word = [head[0], head[1], head[2], head[3]];
    let memcached = MEMCACHED_PREFIXES.iter().any(|m| **m == word);
    redis || postgres || mysql || memcached
}

/// True if `head` (`len` bytes) starts a TLS record: content type
/// change_cipher_spec, alert, handshake or application_data, then version
/// 3.1 to 3.4 (the record layer of TLS 1.0 to 1.3).
#[inline(always)]
pub fn is_tls_record(head: &[u8; 8], len: u32) -> bool {
    len >= 5 && (0x14..=0x17).contains(&head[0]) && head[1] == 3 && (1..=4).contains(&head[2])
}

/// True if any byte of `word` is `\n` (the classic has-zero-byte test on
/// `word ^ 0x0a0a...`).
#[inline(always)]
pub fn has_newline(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * u64::from(b'\n'));
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// True if 12 bytes, given as their first 8 and last 4 read little-endian,
/// are `traceparent:` in any case. Setting bit 0x20 lowercases ASCII
/// letters and leaves ':' as it is.
#[inline(always)]
pub fn names_traceparent(head: u64, tail: u32) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let expected_head = u64::from_le_bytes(*b"tracepar");
    let expected_tail = u32::from_le_bytes(*b"ent:");
    ((head | LOWER) ^ expected_head) | u64::from((tail | LOWER as u32) ^ expected_tail) == 0
}

/// The parent a `traceparent` value names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The caller's span id.
    pub span_id: [u8; 8],
    /// W3C trace flags.
    pub trace_flags: u32,
}

/// Parses a `traceparent` value (its 55 characters and the byte after),
/// per W3C: lowercase hex, non-zero ids, version != ff, version 00 exactly
/// 55 characters (ended by CR, space or tab), later versions may append
/// `-` fields.
///
/// Branch-free over the 50 hex digits: every early exit would be another
/// verifier path through the rest of the program.
#[inline(always)]
pub fn parse_traceparent_value(text: &[u8; TRACEPARENT_VALUE_LEN + 1]) -> Option<TraceParent> {
    let mut invalid: u32 = 0;
    let version = hex_pair(text[0], text[1], &mut invalid);
    let (trace_id, any_trace) = hex_id::<16>(text, 3, &mut invalid);
    let (span_id, any_span) = hex_id::<8>(text, 36, &mut invalid);
    let parent = TraceParent {
        trace_id,
        span_id,
        trace_flags: u32::from(hex_pair(text[53], text[54], &mut invalid)),
    };
    let dashes =
        u32::from(text[2] ^ b'-') | u32::from(text[35] ^ b'-') | u32::from(text[52] ^ b'-');
    if invalid != 0 || dashes != 0 || any_trace == 0 || any_span == 0 || version == 0xff {
        return None;
    }
    let terminator = text[TRACEPARENT_VALUE_LEN];
    let ends_value = terminator == b'\r' || terminator == b' ' || terminator == b'\t';
    // Version 00 is exactly 55 characters; later versions may append fields.
    if !ends_value && (version == 0 || terminator != b'-') {
        return None;
    }
    Some(parent)
}

/// Decodes `N` bytes of hex starting at `text[at]`; also returns the OR of
/// the bytes (zero for an all-zero id, which W3C rejects).
#[inline(always)]
fn hex_id<const N: usize>(
    text: &[u8; TRACEPARENT_VALUE_LEN + 1],
    at: usize,
    invalid: &mut u32,
) -> ([u8; N], u8) {
    let mut id = [0u8; N];
    let mut any = 0u8;
    let mut i = 0;
    while i < N {
        id[i] = hex_pair(text[at + 2 * i], text[at + 1 + 2 * i], invalid);
        any |= id[i];
        i += 1;
    }
    (id, any)
}

/// All ones if `value` is in `low..=high`, else zero, without a branch.
#[inline(always)]
fn in_range_mask(value: i32, low: i32, high: i32) -> i32 {
    // Negative (sign bit set) exactly when value < low or value > high.
    !(((value - low) | (high - value)) >> 31)
}

/// Value of a lowercase hex digit; sets `invalid` for anything else.
#[inline(always)]
fn hex_digit(c: u8, invalid: &mut u32) -> u8 {
    let c = i32::from(c);
    let digit = in_range_mask(c, i32::from(b'0'), i32::from(b'9'));
    let letter = in_range_mask(c, i32::from(b'a'), i32::from(b'f'));
    *invalid |= (!(digit | letter) & 1) as u32;
    (((c - i32::from(b'0')) & digit) | ((c - i32::from(b'a') + 10) & letter)) as u8
}

#[inline(always)]
fn hex_pair(high: u8, low: u8, invalid: &mut u32) -> u8 {
    (hex_digit(high, invalid) << 4) | hex_digit(low, invalid)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn head8(bytes: &[u8]) -> ([u8; 8], u32) {
        let mut head = [0u8; 8];
        let len = bytes.len().min(8);
        head[..len].copy_from_slice(&bytes[..len]);
        (head, len as u32)
    }

    fn words(name: &[u8; 12]) -> (u64, u32) {
        (
            u64::from_le_bytes(name[..8].try_into().unwrap()),
            u32::from_le_bytes(name[8..].try_into().unwrap()),
        )
    }

    fn value(text: &str, terminator: u8) -> [u8; TRACEPARENT_VALUE_LEN + 1] {
        let mut out = [b'x'; TRACEPARENT_VALUE_LEN + 1];
        out[..TRACEPARENT_VALUE_LEN].copy_from_slice(text.as_bytes());
        out[TRACEPARENT_VALUE_LEN] = terminator;
        out
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn request_and_response_starts() {
        for method in [&b"GET "[..], b"POST", b"PUT ", b"DELE", b"HEAD", b"OPTI"] {
            assert!(is_request_start(method.try_into().unwrap()));
        }
        assert!(!is_request_start(*b"get "));
        assert!(!is_request_start(*b"HTTP"));
        assert!(is_response_start(*b"HTTP/1."));
        assert!(!is_response_start(*b"HTTP/2."));
    }

    #[test]
    fn database_requests() {
        let redis = head8(b"*1\r\n$4\r\n");
        assert!(is_db_request_start(&redis.0, redis.1));
        let pg_query = head8(&[b'Q', 0, 0, 0, 13, b'S', b'E', b'L']);
        assert!(is_db_request_start(&pg_query.0, pg_query.1));
        let mysql_query = head8(&[9, 0, 0, 0, 0x03, b'S', b'E', b'L']);
        assert!(is_db_request_start(&mysql_query.0, mysql_query.1));
        let memcached = head8(b"get key\r");
        assert!(is_db_request_start(&memcached.0, memcached.1));
        let http = head8(b"GET / HT");
        assert!(!is_db_request_start(&http.0, http.1));
        // Too short to tell.
        let short = head8(b"*1\r\n");
        assert!(!is_db_request_start(&short.0, short.1));
    }

    #[test]
    fn tls_records() {
        let hello = head8(&[0x16, 3, 1, 0, 0xf0, 1, 0, 0]);
        assert!(is_tls_record(&hello.0, hello.1));
        let data = head8(&[0x17, 3, 3, 0, 0x20]);
        assert!(is_tls_record(&data.0, data.1));
        let ssl3 = head8(&[0x16, 3, 0, 0, 0xf0]);
        assert!(!is_tls_record(&ssl3.0, ssl3.1));
        let http = head8(b"GET / HT");
        assert!(!is_tls_record(&http.0, http.1));
        assert!(!is_tls_record(&hello.0, 4));
    }

    #[test]
    fn newlines_in_words() {
        assert!(has_newline(u64::from_le_bytes(*b"abc\ndefg")));
        assert!(has_newline(u64::from_le_bytes(*b"abcdefg\n")));
        assert!(!has_newline(u64::from_le_bytes(*b"abcdefgh")));
        // 0x0b and 0x8a are not newlines (borrow and high-bit cases).
        assert!(!has_newline(u64::from_le_bytes([
            0x0b, 0x8a, 0, 0, 0, 0, 0, 0
        ])));
    }

    #[test]
    fn traceparent_name_any_case() {
        let (h, t) = words(b"traceparent:");
        assert!(names_traceparent(h, t));
        let (h, t) = words(b"TraceParent:");
        assert!(names_traceparent(h, t));
        let (h, t) = words(b"tracestate: ");
        assert!(!names_traceparent(h, t));
        let (h, t) = words(b"traceparent ");
        assert!(!names_traceparent(h, t));
    }

    #[test]
    fn traceparent_values() {
        let parent = parse_traceparent_value(&value(VALID, b'\r')).unwrap();
        assert_eq!(parent.trace_id[0], 0x4b);
        assert_eq!(parent.trace_id[15], 0x36);
        assert_eq!(
            parent.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parent.trace_flags, 1);
        // Version 00 must end after 55 characters.
        assert!(parse_traceparent_value(&value(VALID, b'-')).is_none());
        // A later version may append fields.
        let v1 = VALID.replacen("00", "01", 1);
        assert!(parse_traceparent_value(&value(&v1, b'-')).is_some());
        // Version ff, uppercase hex, zero ids, missing dashes are invalid.
        let ff = VALID.replacen("00", "ff", 1);
        assert!(parse_traceparent_value(&value(&ff, b'\r')).is_none());
        assert!(parse_traceparent_value(&value(&VALID.to_uppercase(), b'\r')).is_none());
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert!(parse_traceparent_value(&value(zero_trace, b'\r')).is_none());
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert!(parse_traceparent_value(&value(zero_span, b'\r')).is_none());
        let no_dash = VALID.replacen('-', "_", 1);
        assert!(parse_traceparent_value(&value(&no_dash, b'\r')).is_none());
    }
}
