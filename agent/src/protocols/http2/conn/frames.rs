//! One direction of an HTTP/2 connection read as a sequence of frames.
//!
//! Frames arrive split across syscalls (a header in two reads, a payload
//! over many) and only a prefix of each syscall is captured. Frame lengths
//! carry the reader across what was not captured, so a large DATA frame
//! costs nothing; what it cannot cross is a frame header that was not
//! captured. From there the boundaries are lost until a later syscall starts
//! with bytes that pass [`http2::starts_with_frames`] (senders write whole
//! frames, and syscalls usually start at one).

use crate::protocols::{
    Segment,
    http2::parse::{self as http2, FRAME_HEADER_LEN, FrameHeader, FrameType, Http2Error, PREFACE},
};

/// Payload bytes kept of frames whose content matters (RST_STREAM's error
/// code, GOAWAY's last stream and code); header blocks keep up to the
/// configured bound, everything else is skipped by count.
const RST_STREAM_KEPT: usize = 4;
const GOAWAY_KEPT: usize = 8;

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReaderEvent<'a> {
    /// A frame ended in the last segment.
    Frame {
        /// Its header.
        header: FrameHeader,
        /// The start of its payload that matters (see [`keep_limit`]).
        payload: &'a [u8],
        /// False if some of that was not captured.
        complete: bool,
    },
    /// Frame boundaries were lost: bytes that may hold frames were not
    /// captured (`why` is `None`), or made no sense.
    Lost {
        /// What did not make sense.
        why: Option<Http2Error>,
    },
    /// Frames were found again at the start of a segment.
    Resynced,
}

#[derive(Debug)]
enum State {
    /// Expecting the rest of the client preface.
    Preface { matched: usize },
    /// Between frames, `have` bytes of the next header in `buf`.
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// In a payload, `remaining` bytes to go.
    Payload { header: FrameHeader, remaining: u32 },
    /// Boundaries unknown until a segment starts with frames.
    Lost,
}

/// Frames of one direction.
#[derive(Debug)]
pub(super) struct FrameReader {
    state: State,
    /// The kept start of the current frame's payload.
    kept: Vec<u8>,
}

impl FrameReader {
    /// A reader at the start of the client's direction: the preface first.
    pub fn at_preface() -> Self {
        Self::with(State::Preface { matched: 0 })
    }

    /// A reader at a frame boundary.
    pub fn at_frame() -> Self {
        Self::with(State::Header {
            buf: [0; FRAME_HEADER_LEN],
            have: 0,
        })
    }

    /// A reader that does not know where frames are yet.
    pub fn lost() -> Self {
        Self::with(State::Lost)
    }

    fn with(state: State) -> Self {
        Self {
            state,
            kept: Vec::new(),
        }
    }

    /// Reads one segment; header-block payloads are kept up to
    /// `max_block_bytes`.
    pub fn feed(
        &mut self,
        segment: &Segment<'_>,
        max_block_bytes: usize,
        handle: &mut impl FnMut(ReaderEvent<'_>),
    ) {
        let len = segment.len;
        let mut pos = 0u64;
        while pos < len {
            let captured = usize::try_from(pos)
                .ok()
                .and_then(|i| segment.payload.get(i..))
                .unwrap_or_default();
            let rest = len - pos;
            match &mut self.state {
                State::Preface { matched } => {
                    let n = (PREFACE.len() - *matched).min(clamp(rest));
                    let got = captured.len().min(n);
                    if captured[..got] != PREFACE[*matched..*matched + got] {
                        self.lose(Some(Http2Error::NotPreface), handle);
                        return;
                    }
                    *matched += n;
                    pos += n as u64;
                    if *matched == PREFACE.len() {
                        *self = Self::at_frame();
                    }
                }
                State::Header { buf, have } => {
                    let got = captured.len().min(FRAME_HEADER_LEN - *have);
                    buf[*have..*have + got].copy_from_slice(&captured[..got]);
                    *have += got;
                    pos += got as u64;
                    if *have < FRAME_HEADER_LEN {
                        if pos < len {
                            // The rest of the header was not captured.
                            self.lose(None, handle);
                            return;
                        }
                        // It goes on in the next segment.
                        return;
                    }
                    let Some(header) = FrameHeader::parse(buf.as_slice()) else {
                        return;
                    };
                    if let Err(error) = header.validate() {
                        self.lose(Some(error), handle);
                        return;
                    }
                    self.kept.clear();
                    if header.len == 0 {
                        self.state = State::Header {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                        self.emit(header, max_block_bytes, handle);
                    } else {
                        self.state = State::Payload {
                            header,
                            remaining: header.len,
                        };
                    }
                }
                State::Payload { header, remaining } => {
                    let header = *header;
                    let n = u64::from(*remaining).min(rest);
                    let offset = (header.len - *remaining) as usize;
                    let limit = keep_limit(header.kind, max_block_bytes);
                    // Only a contiguous start is useful: after a byte that
                    // was not captured, later ones cannot be placed.
                    if offset < limit && self.kept.len() == offset {
                        let want = (limit - offset).min(clamp(n));
                        self.kept
                            .extend_from_slice(&captured[..captured.len().min(want)]);
                    }
                    *remaining -= n as u32;
                    pos += n;
                    if *remaining == 0 {
                        self.state = State::Header {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                        self.emit(header, max_block_bytes, handle);
                    }
                }
                State::Lost => {
                    if pos == 0 && http2::starts_with_frames(captured, len) {
                        *self = Self::at_frame();
                        handle(ReaderEvent::Resynced);
                        continue;
                    }
                    return;
                }
            }
        }
    }

    fn emit(
        &self,
        header: FrameHeader,
        max_block_bytes: usize,
        handle: &mut impl FnMut(ReaderEvent<'_>),
    ) {
        let limit = keep_limit(header.kind, max_block_bytes);
        let is_block = limit == max_block_bytes;
        let complete = self.kept.len() == limit.min(header.len as usize)
            && !(is_block && header.len as usize > limit);
        handle(ReaderEvent::Frame {
            header,
            payload: &self.kept,
            complete,
        });
    }

    fn lose(&mut self, why: Option<Http2Error>, handle: &mut impl FnMut(ReaderEvent<'_>)) {
        self.state = State::Lost;
        self.kept.clear();
        handle(ReaderEvent::Lost { why });
    }
}

/// Payload bytes kept for a frame type.
fn keep_limit(kind: FrameType, max_block_bytes: usize) -> usize {
    match kind {
        FrameType::Headers | FrameType::PushPromise | FrameType::Continuation => max_block_bytes,
        FrameType::RstStream => RST_STREAM_KEPT,
        FrameType::GoAway => GOAWAY_KEPT,
        _ => 0,
    }
}

/// A byte count no larger than `usize` can hold.
fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Stamp;

    /// Feeds `(captured, total_len)` segments and lists what came out as
    /// `(type, stream, kept payload, complete)`, `"lost"` or `"resynced"`.
    fn read(
        reader: &mut FrameReader,
        segments: &[(&[u8], usize)],
    ) -> Vec<(String, u32, Vec<u8>, bool)> {
        let mut out = Vec::new();
        for &(payload, len) in segments {
            let segment = Segment {
                payload,
                len: len as u64,
                at: Stamp {
                    ns: 1,
                    tid: 1,
                    trace: None,
                },
            };
            reader.feed(&segment, 64, &mut |event| {
                out.push(match event {
                    ReaderEvent::Frame {
                        header,
                        payload,
                        complete,
                    } => (
                        format!("{:?}", header.kind),
                        header.stream_id,
                        payload.to_vec(),
                        complete,
                    ),
                    ReaderEvent::Lost { .. } => ("lost".into(), 0, vec![], false),
                    ReaderEvent::Resynced => ("resynced".into(), 0, vec![], false),
                });
            });
        }
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        wire.extend(frame(0x1, 0x4, 1, b"\x82\x86\x84"));
        wire.extend(frame(0x0, 0x1, 1, &[7; 30]));
        wire.extend(frame(0x3, 0, 3, &[0, 0, 0, 8]));
        for cut in [1, 5, 24, 30, 33, 40, 50] {
            let mut reader = FrameReader::at_preface();
            let events = read(
                &mut reader,
                &[(&wire[..cut], cut), (&wire[cut..], wire.len() - cut)],
            );
            let kinds: Vec<_> = events.iter().map(|e| (e.0.as_str(), e.1)).collect();
            assert_eq!(
                kinds,
                [
                    ("Settings", 0),
                    ("Headers", 1),
                    ("Data", 1),
                    ("RstStream", 3)
                ],
                "cut at {cut}"
            );
            assert_eq!(events[1].2, b"\x82\x86\x84");
            assert_eq!(events[2].2, b"", "DATA payloads are not kept");
            assert_eq!(events[3].2, [0, 0, 0, 8]);
            assert!(events.iter().all(|e| e.3));
        }
    }

    #[test]
    fn uncaptured_payload_is_skipped_by_length() {
        let mut wire = frame(0x0, 0, 1, &[0; 5000]);
        let headers = frame(0x1, 0x5, 1, b"\x88");
        wire.extend(&headers);
        let mut reader = FrameReader::at_frame();
        // 100 bytes of the first 3000 captured, then the rest of the DATA
        // frame and the next frame in a second syscall.
        let events = read(
            &mut reader,
            &[(&wire[..100], 3000), (&wire[3000..], wire.len() - 3000)],
        );
        assert_eq!(
            events.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["Data", "Headers"]
        );
        // Only the DATA frame was cut: the HEADERS frame is whole.
        assert!(events[1].3);
    }

    #[test]
    fn a_header_past_the_capture_loses_sync_until_a_segment_starts_with_frames() {
        let mut wire = frame(0x1, 0x4, 1, b"\x82\x86\x84");
        wire.extend(frame(0x1, 0x4, 3, b"\x82\x86\x84"));
        let mut reader = FrameReader::at_frame();
        let next = frame(0x1, 0x4, 5, b"\x82\x86\x84\x41\x01a");
        // Captured: the first frame and 2 bytes of the second.
        let events = read(
            &mut reader,
            &[
                (&wire[..14], wire.len()),
                (b"\x00garbage", 8),
                (&next, next.len()),
            ],
        );
        let kinds: Vec<_> = events.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            kinds,
            [("Headers", 1), ("lost", 0), ("resynced", 0), ("Headers", 5)]
        );
    }

    #[test]
    fn cut_header_blocks_are_marked_incomplete() {
        let block = [0x82u8; 40];
        let wire = frame(0x1, 0x4, 1, &block);
        let mut reader = FrameReader::at_frame();
        let events = read(&mut reader, &[(&wire[..30], wire.len())]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].2.len(), 21);
        assert!(!events[0].3);
        // Longer than the bound: kept up to it, incomplete.
        let wire = frame(0x1, 0x4, 3, &[0x82; 100]);
        let events = read(&mut reader, &[(&wire, wire.len())]);
        assert_eq!((events[0].2.len(), events[0].3), (64, false));
    }

    #[test]
    fn invalid_frames_and_wrong_prefaces_lose_sync() {
        let mut reader = FrameReader::at_frame();
        let bad = frame(0x3, 0, 0, &[0, 0, 0, 8]);
        let events = read(&mut reader, &[(&bad, bad.len())]);
        assert_eq!(events[0].0, "lost");
        let mut reader = FrameReader::at_preface();
        let events = read(&mut reader, &[(b"GET / HTTP/1.1\r\n\r\n", 18)]);
        assert_eq!(events[0].0, "lost");
    }
}
