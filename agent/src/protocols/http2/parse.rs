//! HTTP/2 framing (RFC 9113) as a pure API over byte slices: the client
//! connection preface, frame headers and the rules each frame type must
//! follow, the payload fields the connection tracker reads (the header block
//! inside HEADERS and PUSH_PROMISE, RST_STREAM and GOAWAY error codes),
//! error-code names, and a test that finds frame boundaries in
//! bytes caught mid-connection.
//!
//! Header blocks are HPACK-compressed; [`super::hpack`] decodes them.

/// What a client sends first on every HTTP/2 connection (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 9;

/// The initial (and most common) SETTINGS_MAX_FRAME_SIZE: frames longer than
/// this are only legal once a peer announced more, which the
/// mid-connection heuristic cannot know, so it does not accept them.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;

/// RST_STREAM/GOAWAY `REFUSED_STREAM`: the stream was not processed.
pub const REFUSED_STREAM: u32 = 0x7;

/// Frame flags (RFC 9113 §6).
pub mod flags {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION: the header block ends here.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE: a pad length byte and padding.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: stream dependency and weight before the header block.
    pub const PRIORITY: u8 = 0x20;
}

/// Frame types (RFC 9113 §6); unknown types must be ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 0x0
    Data,
    /// 0x1
    Headers,
    /// 0x2
    Priority,
    /// 0x3
    RstStream,
    /// 0x4
    Settings,
    /// 0x5
    PushPromise,
    /// 0x6
    Ping,
    /// 0x7
    GoAway,
    /// 0x8
    WindowUpdate,
    /// 0x9
    Continuation,
    /// An extension frame type.
    Unknown(u8),
}

impl FrameType {
    fn from_u8(kind: u8) -> Self {
        match kind {
            0x0 => Self::Data,
            0x1 => Self::Headers,
            0x2 => Self::Priority,
            0x3 => Self::RstStream,
            0x4 => Self::Settings,
            0x5 => Self::PushPromise,
            0x6 => Self::Ping,
            0x7 => Self::GoAway,
            0x8 => Self::WindowUpdate,
            0x9 => Self::Continuation,
            other => Self::Unknown(other),
        }
    }

    /// Flags this type defines; senders leave the others unset.
    fn defined_flags(self) -> u8 {
        use flags::*;
        match self {
            Self::Data => END_STREAM | PADDED,
            Self::Headers => END_STREAM | END_HEADERS | PADDED | PRIORITY,
            Self::Settings | Self::Ping => ACK,
            Self::PushPromise => END_HEADERS | PADDED,
            Self::Continuation => END_HEADERS,
            Self::Priority
            | Self::RstStream
            | Self::GoAway
            | Self::WindowUpdate
            | Self::Unknown(_) => 0,
        }
    }
}

/// Why bytes could not be read as HTTP/2 frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Http2Error {
    /// A frame header that breaks a rule of its type.
    #[error("invalid {kind:?} frame on stream {stream_id} ({len} bytes): {rule}")]
    InvalidFrame {
        /// Frame type.
        kind: FrameType,
        /// Stream.
        stream_id: u32,
        /// Payload length.
        len: u32,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Padding longer than the frame.
    #[error("{kind:?} frame of {len} bytes with {padding} bytes of padding")]
    BadPadding {
        /// Frame type.
        kind: FrameType,
        /// Payload length.
        len: u32,
        /// Declared padding.
        padding: u32,
    },
    /// The client preface was expected and something else came.
    #[error("bytes where the HTTP/2 client preface should be do not match it")]
    NotPreface,
}

/// A frame header (RFC 9113 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: u32,
    /// Type.
    pub kind: FrameType,
    /// Flags.
    pub flags: u8,
    /// Stream id (the reserved bit cleared).
    pub stream_id: u32,
    /// The reserved bit was set (senders must not).
    reserved_bit: bool,
}

impl FrameHeader {
    /// Reads the 9-byte header at the start of `bytes`, if that many are there.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let raw: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let stream = u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]);
        Some(Self {
            len: u32::from_be_bytes([0, raw[0], raw[1], raw[2]]),
            kind: FrameType::from_u8(raw[3]),
            flags: raw[4],
            stream_id: stream & 0x7fff_ffff,
            reserved_bit: stream & 0x8000_0000 != 0,
        })
    }

    /// True if `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// True for DATA and HEADERS frames that end their sender's side of the stream.
    pub fn ends_stream(&self) -> bool {
        matches!(self.kind, FrameType::Data | FrameType::Headers) && self.has(flags::END_STREAM)
    }

    /// Checks the rules of the frame's type that a header alone shows
    /// (stream zero or not, fixed lengths). Unknown types pass: peers must
    /// ignore them.
    pub fn validate(&self) -> Result<(), Http2Error> {
        use FrameType::*;
        let on_stream = matches!(
            self.kind,
            Data | Headers | Priority | RstStream | PushPromise | Continuation
        );
        let rule = if on_stream && self.stream_id == 0 {
            Some("needs a stream")
        } else if matches!(self.kind, Settings | Ping | GoAway) && self.stream_id != 0 {
            Some("belongs to stream 0")
        } else {
            match self.kind {
                Priority if self.len != 5 => Some("length must be 5"),
                RstStream | WindowUpdate if self.len != 4 => Some("length must be 4"),
                Ping if self.len != 8 => Some("length must be 8"),
                GoAway if self.len < 8 => Some("length must be at least 8"),
                Settings if !self.len.is_multiple_of(6) => Some("length must be a multiple of 6"),
                Settings if self.has(flags::ACK) && self.len != 0 => {
                    Some("an acknowledgement is empty")
                }
                _ => None,
            }
        };
        match rule {
            Some(rule) => Err(Http2Error::InvalidFrame {
                kind: self.kind,
                stream_id: self.stream_id,
                len: self.len,
                rule,
            }),
            None => Ok(()),
        }
    }

    /// The stricter test for a header found by guessing where frames start:
    /// valid, a known type, only defined flags, the reserved bit clear, and
    /// no longer than the default maximum frame size.
    fn is_plausible(&self) -> bool {
        self.validate().is_ok()
            && !matches!(self.kind, FrameType::Unknown(_))
            && self.flags & !self.kind.defined_flags() == 0
            && !self.reserved_bit
            && self.len <= DEFAULT_MAX_FRAME_SIZE
    }
}

/// True if `captured`, the copied prefix of a `total_len`-byte segment,
/// starts with HTTP/2 frames: every frame header inside the captured bytes
/// passes the strict test, the frames fit in the segment, and when the
/// whole segment was captured they end exactly where it does.
pub fn starts_with_frames(captured: &[u8], total_len: u64) -> bool {
    let mut pos = 0usize;
    let mut headers = 0;
    loop {
        if pos as u64 == total_len {
            return headers > 0;
        }
        let Some(header) = captured.get(pos..).and_then(FrameHeader::parse) else {
            // Bytes left that are not a whole header: fine if the capture
            // cut them, not if that is all there was.
            return headers > 0 && (captured.len() as u64) < total_len;
        };
        if !header.is_plausible() {
            return false;
        }
        headers += 1;
        pos += FRAME_HEADER_LEN + header.len as usize;
        if pos as u64 > total_len {
            return false;
        }
    }
}

/// True if `captured` (the start of a segment) could begin the client
/// preface: all of it when long enough, else as much as there is, at least
/// the `PRI ` that no HTTP/1 method shares.
pub fn starts_with_preface(captured: &[u8]) -> bool {
    let n = captured.len().min(PREFACE.len());
    n >= 4 && captured[..n] == PREFACE[..n]
}

/// Where the header block fragment lies in a HEADERS or PUSH_PROMISE
/// payload of `header.len` bytes, after the pad length, priority fields or
/// promised stream id, and before the padding. `first_byte` is the payload's
/// first byte (the pad length when PADDED), if captured.
pub fn fragment_range(
    header: &FrameHeader,
    first_byte: Option<u8>,
) -> Result<std::ops::Range<u32>, Http2Error> {
    let padded = header.has(flags::PADDED)
        && matches!(header.kind, FrameType::Headers | FrameType::PushPromise);
    let mut start = u32::from(padded);
    match header.kind {
        FrameType::Headers if header.has(flags::PRIORITY) => start += 5,
        FrameType::PushPromise => start += 4,
        _ => {}
    }
    let padding = match (padded, first_byte) {
        (false, _) => 0,
        (true, Some(pad)) => u32::from(pad),
        // The pad length was not captured: neither was anything after it.
        (true, None) => 0,
    };
    let end = header
        .len
        .checked_sub(padding)
        .filter(|end| *end >= start)
        .ok_or(Http2Error::BadPadding {
            kind: header.kind,
            len: header.len,
            padding,
        })?;
    Ok(start..end)
}

/// The error code of a RST_STREAM payload.
pub fn rst_stream_code(payload: &[u8]) -> Option<u32> {
    read_u32(payload, 0)
}

/// `(last stream id, error code)` of a GOAWAY payload.
pub fn goaway(payload: &[u8]) -> Option<(u32, u32)> {
    Some((read_u32(payload, 0)? & 0x7fff_ffff, read_u32(payload, 4)?))
}

/// The name of an HTTP/2 error code (RFC 9113 §7), for `error.type`.
pub fn error_code_name(code: u32) -> Option<&'static str> {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES.get(usize::try_from(code).ok()?).copied()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header's 9 bytes.
    fn header(len: u32, kind: u8, flags: u8, stream_id: u32) -> [u8; 9] {
        let len = len.to_be_bytes();
        let stream = stream_id.to_be_bytes();
        [
            len[1], len[2], len[3], kind, flags, stream[0], stream[1], stream[2], stream[3],
        ]
    }

    #[test]
    fn parses_frame_headers() {
        let parsed = FrameHeader::parse(&header(0x01_02_03, 0x1, 0x25, 0x8000_0007)).unwrap();
        assert_eq!(parsed.len, 0x01_02_03);
        assert_eq!(parsed.kind, FrameType::Headers);
        assert_eq!(parsed.stream_id, 7, "reserved bit cleared");
        assert!(parsed.has(flags::END_STREAM) && parsed.has(flags::END_HEADERS));
        assert!(parsed.ends_stream());
        assert!(!parsed.is_plausible(), "reserved bit and length");
        assert_eq!(FrameHeader::parse(&[0; 8]), None);
        let ping_ack = FrameHeader::parse(&header(8, 0x6, flags::ACK, 0)).unwrap();
        assert!(!ping_ack.ends_stream(), "ACK shares END_STREAM's bit");
    }

    #[test]
    fn frame_rules_by_type() {
        // (len, type, flags, stream, valid)
        let cases = [
            (10, 0x0, 0x1, 1, true),
            (10, 0x0, 0x1, 0, false),
            (5, 0x2, 0, 3, true),
            (4, 0x2, 0, 3, false),
            (4, 0x3, 0, 3, true),
            (8, 0x3, 0, 3, false),
            (12, 0x4, 0, 0, true),
            (0, 0x4, flags::ACK, 0, true),
            (6, 0x4, flags::ACK, 0, false),
            (7, 0x4, 0, 0, false),
            (6, 0x4, 0, 1, false),
            (8, 0x6, 0, 0, true),
            (8, 0x7, 0, 0, true),
            (7, 0x7, 0, 0, false),
            (4, 0x8, 0, 0, true),
            (4, 0x8, 0, 5, true),
            (3, 0x9, 0x4, 0, false),
            (1000, 0xfa, 0xff, 0, true),
        ];
        for (len, kind, flags, stream, valid) in cases {
            let parsed = FrameHeader::parse(&header(len, kind, flags, stream)).unwrap();
            assert_eq!(parsed.validate().is_ok(), valid, "{parsed:?}");
        }
    }

    #[test]
    fn finds_frames_at_a_segment_start() {
        let settings = header(6, 0x4, 0, 0);
        let mut two = settings.to_vec();
        two.extend_from_slice(&[0, 4, 0, 0, 0xff, 0xff]);
        two.extend_from_slice(&header(4, 0x8, 0, 0));
        two.extend_from_slice(&[0, 0, 1, 0]);
        assert!(starts_with_frames(&two, two.len() as u64));
        // Frames must end where the segment does.
        let mut extra = two.clone();
        extra.push(0);
        assert!(!starts_with_frames(&extra, extra.len() as u64));
        assert!(
            starts_with_frames(&two, two.len() as u64 + 1),
            "cut after a frame"
        );
        assert!(!starts_with_frames(
            &two[..two.len() - 1],
            two.len() as u64 - 1
        ));
        // Cut by the capture: judged by the headers that were captured.
        assert!(starts_with_frames(&two[..20], 5000));
        assert!(starts_with_frames(&two[..12], 5000));
        assert!(starts_with_frames(&header(3000, 0x0, 0, 1), 5000));
        assert!(
            !starts_with_frames(&header(3000, 0x0, 0, 1), 2000),
            "longer than the segment"
        );
        // Text, TLS and undefined flags are not frames.
        assert!(!starts_with_frames(b"GET / HTTP/1.1\r\n\r\n", 18));
        assert!(!starts_with_frames(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            11
        ));
        assert!(!starts_with_frames(&header(0, 0x4, 0x2, 0), 9));
        assert!(starts_with_frames(&header(0, 0x4, 0x1, 0), 9));
        assert!(!starts_with_frames(&[], 0));
    }

    #[test]
    fn preface_detection() {
        assert!(starts_with_preface(PREFACE));
        assert!(starts_with_preface(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"
        ));
        assert!(starts_with_preface(b"PRI * HT"));
        assert!(!starts_with_preface(b"PRI"));
        assert!(!starts_with_preface(b"PRI * HTTP/1.1\r\n"));
        assert!(!starts_with_preface(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn header_block_fragments() {
        let plain = FrameHeader::parse(&header(20, 0x1, flags::END_HEADERS, 1)).unwrap();
        assert_eq!(fragment_range(&plain, Some(0x82)), Ok(0..20));
        let padded =
            FrameHeader::parse(&header(20, 0x1, flags::PADDED | flags::PRIORITY, 1)).unwrap();
        assert_eq!(fragment_range(&padded, Some(4)), Ok(6..16));
        assert!(matches!(
            fragment_range(&padded, Some(19)),
            Err(Http2Error::BadPadding { padding: 19, .. })
        ));
        let promise = FrameHeader::parse(&header(10, 0x5, flags::END_HEADERS, 1)).unwrap();
        assert_eq!(fragment_range(&promise, Some(0)), Ok(4..10));
        let continuation = FrameHeader::parse(&header(7, 0x9, flags::PADDED, 1)).unwrap();
        assert_eq!(
            fragment_range(&continuation, Some(3)),
            Ok(0..7),
            "CONTINUATION has no padding"
        );
    }

    #[test]
    fn control_payloads() {
        assert_eq!(rst_stream_code(&[0, 0, 0, 8]), Some(8));
        assert_eq!(rst_stream_code(&[0, 0]), None);
        assert_eq!(goaway(&[0x80, 0, 0, 5, 0, 0, 0, 2, b'x']), Some((5, 2)));
        assert_eq!(error_code_name(8), Some("CANCEL"));
        assert_eq!(error_code_name(REFUSED_STREAM), Some("REFUSED_STREAM"));
        assert_eq!(error_code_name(0x42), None);
    }
}
