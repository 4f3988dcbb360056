//! The optional persistent export queue (`export.queue_dir`): every batch
//! an exporter forms is a file in the signal's directory before it is
//! sent, and the file goes only once the collector took the batch, or the
//! batch was dropped for a counted reason (the queue's byte bound, oldest
//! first; its age; a permanent refusal). A collector outage that outlives
//! the agent, a restart or a DaemonSet rollout therefore loses nothing that
//! was written: the next agent on the node finds the files and sends them.
//! Delivery is at least once: a batch the collector took just before the
//! agent died is sent again by the next one.
//!
//! A file is `{seq:020}.batch`, written as a temporary file, flushed to the
//! disk (`fsync`), renamed into place and the directory flushed, so a crash
//! leaves either the whole file or a `.tmp` one. Its layout, little endian:
//!
//! ```text
//! magic        8 bytes  "SONDEQ\0\x01"
//! items        u64      spans or data points in the request
//! created_ms   u64      Unix time of the oldest data in it, milliseconds
//! length       u32      payload bytes
//! crc          u32      CRC-32 of items, created_ms, length and payload
//! payload      the encoded Export*ServiceRequest
//! ```
//!
//! A file that is torn, truncated or corrupted (header, length or checksum
//! wrong, or a payload that does not decode) is removed and counted in
//! `sonde_export_queue_files_corrupt`, never retried and never fatal. A
//! write that fails (a full disk) drops that batch, counted and logged,
//! and the exporter goes on: the queue never waits for the disk to have
//! room.
//!
//! The files are written and read on the exporter's task: one write and
//! two `fsync`s per batch (at most one a batch delay, or one per full
//! batch), while the channel in front of the exporter holds what arrives
//! meanwhile.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::model::error::ErrorChain;
use crate::telemetry::{Counter, Gauge, Stats};

const MAGIC: [u8; 8] = *b"SONDEQ\0\x01";
const HEADER_LEN: usize = 32;
const BATCH_SUFFIX: &str = ".batch";
const TEMP_SUFFIX: &str = ".tmp";

/// Where a signal's queue lives and how much of the disk it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskQueueConfig {
    /// The signal's directory (created if missing).
    pub dir: PathBuf,
    /// Bytes of files, all batches included (the ones in flight too);
    /// past it the oldest waiting batches are removed.
    pub max_bytes: u64,
}

/// The counters and gauges of the signal a queue holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueMetrics {
    /// What the items are, for the logs ("spans", "metric points").
    pub(crate) items: &'static str,
    /// Items removed, oldest first, to keep the byte bound.
    pub(crate) dropped_full: Counter,
    /// Items whose batch could not be written.
    pub(crate) dropped_write: Counter,
    /// Items older than the retry budget.
    pub(crate) expired: Counter,
    /// Items found on disk at start.
    pub(crate) recovered: Counter,
    /// Items in waiting files now.
    pub(crate) queued_items: Gauge,
    /// Bytes of every file now.
    pub(crate) queued_bytes: Gauge,
}

/// Why a queue file was not read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Corrupt {
    /// Shorter than the header.
    #[error("{0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// Not a queue file of this format.
    #[error("bad magic number")]
    Magic,
    /// The payload is not as long as the header says.
    #[error("payload of {actual} bytes where the header says {declared}")]
    Length {
        /// From the header.
        declared: u32,
        /// In the file.
        actual: usize,
    },
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload does not decode as the signal's request.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// Left by a write that never finished.
    #[error("unfinished write")]
    Unfinished,
    /// Gone or unreadable since the queue was opened.
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// The header fields of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) items: u64,
    pub(crate) created_ms: u64,
}

/// A file's bytes: header, then payload.
pub(crate) fn encode(header: Header, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut file = Vec::with_capacity(HEADER_LEN + payload.len());
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&header.items.to_le_bytes());
    file.extend_from_slice(&header.created_ms.to_le_bytes());
    file.extend_from_slice(&length.to_le_bytes());
    let crc = checksum(&file[MAGIC.len()..], payload);
    file.extend_from_slice(&crc.to_le_bytes());
    file.extend_from_slice(payload);
    file
}

/// The header and payload of a file's bytes, if they are whole.
pub(crate) fn decode(file: &[u8]) -> Result<(Header, &[u8]), Corrupt> {
    let Some((header, payload)) = file.split_first_chunk::<HEADER_LEN>() else {
        return Err(Corrupt::Short(file.len()));
    };
    if header[..MAGIC.len()] != MAGIC {
        return Err(Corrupt::Magic);
    }
    let field = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mut word = [0; 4];
    word.copy_from_slice(&header[24..28]);
    let declared = u32::from_le_bytes(word);
    word.copy_from_slice(&header[28..32]);
    let crc = u32::from_le_bytes(word);
    if payload.len() != declared as usize {
        return Err(Corrupt::Length {
            declared,
            actual: payload.len(),
        });
    }
    if checksum(&header[MAGIC.len()..28], payload) != crc {
        return Err(Corrupt::Checksum);
    }
    Ok((
        Header {
            items: field(8),
            created_ms: field(16),
        },
        payload,
    ))
}

fn checksum(fields: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(fields);
    hasher.update(payload);
    hasher.finalize()
}

/// A batch's file, waiting or in flight.
#[derive(Debug)]
pub(crate) struct Entry {
    seq: u64,
    /// Spans or data points in it.
    pub(crate) items: u64,
    bytes: u64,
    created_ms: u64,
}

/// Wall-clock milliseconds, read from tokio's clock past one anchor: the
/// ages of files written by an earlier run are wall-clock ones, and the
/// tests run on tokio's paused clock.
#[derive(Debug)]
struct WallClock {
    unix_ms: u64,
    at: Instant,
}

impl WallClock {
    fn new() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Self {
            unix_ms,
            at: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.unix_ms + self.at.elapsed().as_millis() as u64
    }
}

/// One signal's directory of batch files, oldest first.
#[derive(Debug)]
pub(crate) struct DiskQueue {
    dir: PathBuf,
    max_bytes: u64,
    metrics: QueueMetrics,
    waiting: VecDeque<Entry>,
    /// Items in `waiting`.
    items: u64,
    /// Bytes of every file, the ones in flight included.
    bytes: u64,
    next_seq: u64,
    clock: WallClock,
    /// The last write failed: only the first failure of a run of them is
    /// a warning.
    write_failing: bool,
    /// Dropping for the byte bound since the last batch was sent: only the
    /// first drop is a warning.
    overflowing: bool,
}

impl DiskQueue {
    /// Opens (creates) the directory and takes over the files an earlier
    /// run left: whole ones are queued, oldest first, and counted as
    /// recovered; broken ones are removed and counted.
    pub(crate) fn open(
        config: &DiskQueueConfig,
        metrics: QueueMetrics,
        stats: &Stats,
    ) -> io::Result<Self> {
        fs::create_dir_all(&config.dir)?;
        let mut queue = Self {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes.max(1),
            metrics,
            waiting: VecDeque::new(),
            items: 0,
            bytes: 0,
            next_seq: 0,
            clock: WallClock::new(),
            write_failing: false,
            overflowing: false,
        };
        let mut found = Vec::new();
        for dir_entry in fs::read_dir(&config.dir)? {
            let path = dir_entry?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if name.ends_with(TEMP_SUFFIX) {
                queue.discard(&path, &Corrupt::Unfinished, stats);
            } else if let Some(seq) = name
                .strip_suffix(BATCH_SUFFIX)
                .and_then(|seq| seq.parse::<u64>().ok())
            {
                found.push((seq, path));
            }
        }
        found.sort_unstable();
        for (seq, path) in found {
            queue.next_seq = queue.next_seq.max(seq + 1);
            match read(&path) {
                Ok((header, bytes)) => {
                    queue.bytes += bytes;
                    queue.items += header.items;
                    queue.waiting.push_back(Entry {
                        seq,
                        items: header.items,
                        bytes,
                        created_ms: header.created_ms,
                    });
                }
                Err(ReadError::Io(error)) => return Err(error),
                Err(ReadError::Corrupt(corrupt)) => queue.discard(&path, &corrupt, stats),
            }
        }
        if queue.items > 0 {
            stats.add(metrics.recovered, queue.items);
            tracing::info!(
                dir = %queue.dir.display(),
                batches = queue.waiting.len(),
                bytes = queue.bytes,
                "export queue: {} {} left by an earlier run, to be sent",
                queue.items,
                metrics.items,
            );
        }
        // The bound may have been lowered since they were written.
        queue.make_room(0, stats);
        queue.publish(stats);
        Ok(queue)
    }

    /// Wall-clock milliseconds now.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Nothing waits on disk (files in flight aside).
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Items in waiting files.
    pub(crate) fn items(&self) -> u64 {
        self.items
    }

    /// Sets the queue's gauges.
    pub(crate) fn publish(&self, stats: &Stats) {
        stats.set_gauge(self.metrics.queued_items, self.items);
        stats.set_gauge(self.metrics.queued_bytes, self.bytes);
    }

    /// Writes a batch of `items` whose oldest data is from `created_ms`,
    /// after removing the oldest files it needs room for. A failed write
    /// drops the batch, counted.
    pub(crate) fn push(
        &mut self,
        request: &impl prost::Message,
        items: u64,
        created_ms: u64,
        stats: &Stats,
    ) {
        let file = encode(Header { items, created_ms }, &request.encode_to_vec());
        let bytes = file.len() as u64;
        self.make_room(bytes, stats);
        let seq = self.next_seq;
        self.next_seq += 1;
        match self.write(seq, &file) {
            Ok(()) => {
                if self.write_failing {
                    tracing::info!(dir = %self.dir.display(), "export queue: writing again");
                }
                self.write_failing = false;
                self.bytes += bytes;
                self.items += items;
                self.waiting.push_back(Entry {
                    seq,
                    items,
                    bytes,
                    created_ms,
                });
            }
            Err(error) => {
                stats.add(self.metrics.dropped_write, items);
                if !self.write_failing {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %ErrorChain(&error),
                        "export queue: a batch of {items} {} could not be written and is dropped; \
                         so are the next ones until a write succeeds (see {})",
                        self.metrics.items,
                        self.metrics.dropped_write.name(),
                    );
                }
                self.write_failing = true;
            }
        }
    }

    fn write(&self, seq: u64, file: &[u8]) -> io::Result<()> {
        let temp = self.dir.join(format!("{seq:020}{TEMP_SUFFIX}"));
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .and_then(|mut out| {
                out.write_all(file)?;
                out.sync_all()
            })
            .and_then(|()| fs::rename(&temp, self.path(seq)))
            // The rename itself outlives a crash once the directory is
            // flushed.
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if written.is_err() {
            // Whatever part of it exists: nothing reads a temp file.
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// The oldest waiting batch, read and decoded; broken files on the way
    /// are removed and counted.
    pub(crate) fn next<R: prost::Message + Default>(
        &mut self,
        stats: &Stats,
    ) -> Option<(Entry, R)> {
        while let Some(entry) = self.waiting.pop_front() {
            self.items -= entry.items;
            let path = self.path(entry.seq);
            let decoded = match fs::read(&path) {
                Ok(file) => decode(&file).and_then(|(_, payload)| {
                    R::decode(payload).map_err(|error| Corrupt::Decode(error.to_string()))
                }),
                Err(error) => Err(Corrupt::Unreadable(ErrorChain(&error).to_string())),
            };
            match decoded {
                Ok(request) => return Some((entry, request)),
                Err(corrupt) => {
                    self.bytes -= entry.bytes;
                    self.discard(&path, &corrupt, stats);
                }
            }
        }
        None
    }

    /// A batch back from a retryable failure: it waits again in its place.
    pub(crate) fn requeue(&mut self, entry: Entry) {
        let at = self
            .waiting
            .partition_point(|queued| queued.seq < entry.seq);
        self.items += entry.items;
        self.waiting.insert(at, entry);
    }

    /// A batch that is done with (sent, or refused for good).
    pub(crate) fn remove(&mut self, entry: Entry) {
        self.overflowing = false;
        self.bytes -= entry.bytes;
        self.unlink(entry.seq);
    }

    /// Removes the waiting batches older than `max_age`.
    pub(crate) fn expire(&mut self, max_age: Duration, stats: &Stats) {
        let cutoff = self.now_ms().saturating_sub(max_age.as_millis() as u64);
        let mut expired = 0;
        while let Some(oldest) = self.waiting.front()
            && oldest.created_ms <= cutoff
        {
            expired += oldest.items;
            self.drop_oldest();
        }
        if expired > 0 {
            stats.add(self.metrics.expired, expired);
            tracing::warn!(
                ?max_age,
                "export queue: {expired} {} older than the retry budget dropped (see {})",
                self.metrics.items,
                self.metrics.expired.name(),
            );
        }
    }

    /// Removes the oldest waiting files until `bytes` more fit.
    fn make_room(&mut self, bytes: u64, stats: &Stats) {
        while self.bytes + bytes > self.max_bytes && !self.waiting.is_empty() {
            let items = self.drop_oldest();
            stats.add(self.metrics.dropped_full, items);
            if !self.overflowing {
                tracing::warn!(
                    dir = %self.dir.display(),
                    max_bytes = self.max_bytes,
                    "export queue directory full, dropping the oldest {} (see {})",
                    self.metrics.items,
                    self.metrics.dropped_full.name(),
                );
            }
            self.overflowing = true;
        }
    }

    /// Removes the oldest waiting file; returns its items.
    fn drop_oldest(&mut self) -> u64 {
        let Some(oldest) = self.waiting.pop_front() else {
            return 0;
        };
        self.items -= oldest.items;
        self.bytes -= oldest.bytes;
        self.unlink(oldest.seq);
        oldest.items
    }

    fn discard(&self, path: &Path, corrupt: &Corrupt, stats: &Stats) {
        stats.add(Counter::ExportQueueFilesCorrupt, 1);
        tracing::warn!(
            path = %path.display(),
            reason = %corrupt,
            "export queue: broken file removed, its data is lost (see {})",
            Counter::ExportQueueFilesCorrupt.name(),
        );
        remove_logged(path);
    }

    fn unlink(&self, seq: u64) {
        remove_logged(&self.path(seq));
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{BATCH_SUFFIX}"))
    }
}

/// Removes a file; one that cannot be removed is only logged: it is read
/// again (and sent, or found broken) at the next start.
fn remove_logged(path: &Path) {
    if let Err(error) = fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(
            path = %path.display(),
            error = %ErrorChain(&error),
            "export queue: file could not be removed"
        );
    }
}

enum ReadError {
    Io(io::Error),
    Corrupt(Corrupt),
}

/// A file's header and size, its checksum verified.
fn read(path: &Path) -> Result<(Header, u64), ReadError> {
    let file = fs::read(path).map_err(ReadError::Io)?;
    let (header, _) = decode(&file).map_err(ReadError::Corrupt)?;
    Ok((header, file.len() as u64))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use prost::Message as _;

    use super::*;
    use crate::export::otlp::SPAN_QUEUE;
    use crate::test_support::TestDir;

    /// A request told apart by its schema URL.
    fn request(tag: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                schema_url: tag.to_owned(),
                ..Default::default()
            }],
        }
    }

    fn tag(request: &ExportTraceServiceRequest) -> &str {
        &request.resource_spans[0].schema_url
    }

    fn open(dir: &TestDir, max_bytes: u64, stats: &Stats) -> DiskQueue {
        let config = DiskQueueConfig {
            dir: dir.path().to_owned(),
            max_bytes,
        };
        DiskQueue::open(&config, SPAN_QUEUE, stats)
            .unwrap_or_else(|error| panic!("opening {}: {error}", dir.path().display()))
    }

    fn next_tag(queue: &mut DiskQueue, stats: &Stats) -> Option<(Entry, String)> {
        queue
            .next::<ExportTraceServiceRequest>(stats)
            .map(|(entry, request)| (entry, tag(&request).to_owned()))
    }

    #[test]
    fn a_file_decodes_to_what_was_encoded() {
        let header = Header {
            items: 7,
            created_ms: 1_700_000_000_123,
        };
        let file = encode(header, b"payload");
        assert_eq!(file.len(), HEADER_LEN + 7);
        assert_eq!(decode(&file), Ok((header, &b"payload"[..])));
        assert_eq!(decode(&encode(header, b"")), Ok((header, &b""[..])));
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_caught() {
        let file = encode(
            Header {
                items: 3,
                created_ms: 42,
            },
            b"some spans",
        );
        for len in 0..file.len() {
            assert!(decode(&file[..len]).is_err(), "truncated to {len}");
        }
        for byte in 0..file.len() {
            for bit in 0..8 {
                let mut flipped = file.clone();
                flipped[byte] ^= 1 << bit;
                assert!(decode(&flipped).is_err(), "bit {bit} of byte {byte}");
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(Corrupt::Length {
                declared: 10,
                actual: 11
            })
        );
        assert_eq!(decode(&file[..10]), Err(Corrupt::Short(10)));
        assert_eq!(decode(&[0; 40]), Err(Corrupt::Magic));
    }

    #[tokio::test]
    async fn batches_outlive_the_queue_and_come_back_oldest_first() {
        let dir = TestDir::new("disk-queue-reopen");
        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        let now = queue.now_ms();
        queue.push(&request("a"), 2, now, &stats);
        queue.push(&request("b"), 3, now, &stats);
        assert_eq!(stats.gauge(Gauge::ExportQueueDiskSpans), 0, "not published");
        queue.publish(&stats);
        assert_eq!(stats.gauge(Gauge::ExportQueueDiskSpans), 5);
        // "a" is in flight when the agent stops: its file stays.
        let (in_flight, a) = next_tag(&mut queue, &stats).expect("a batch");
        assert_eq!((a.as_str(), in_flight.items), ("a", 2));
        drop(queue);

        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        assert_eq!(stats.get(Counter::SpansRecovered), 5);
        assert_eq!(stats.gauge(Gauge::ExportQueueDiskSpans), 5);
        let (sent, a) = next_tag(&mut queue, &stats).expect("a batch");
        assert_eq!(a, "a");
        queue.remove(sent);
        let (failed, b) = next_tag(&mut queue, &stats).expect("b batch");
        assert_eq!(b, "b");
        queue.push(&request("c"), 1, queue.now_ms(), &stats);
        // A retried batch goes back before the newer one.
        queue.requeue(failed);
        assert_eq!(queue.items(), 4);
        let mut order = Vec::new();
        while let Some((entry, tag)) = next_tag(&mut queue, &stats) {
            queue.remove(entry);
            order.push(tag);
        }
        assert_eq!(order, ["b", "c"]);
        assert!(dir.files().is_empty(), "{:?}", dir.files());
        assert_eq!(stats.get(Counter::ExportQueueFilesCorrupt), 0);
    }

    #[tokio::test]
    async fn broken_files_are_removed_and_counted_never_fatal() {
        let dir = TestDir::new("disk-queue-corrupt");
        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        for name in ["good-1", "flipped", "truncated", "garbage", "good-2"] {
            queue.push(&request(name), 1, queue.now_ms(), &stats);
        }
        drop(queue);
        let path = |seq: u64| dir.path().join(format!("{seq:020}.batch"));
        let mut flipped = fs::read(path(1)).expect("file 1");
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        fs::write(path(1), flipped).expect("write 1");
        let whole = fs::read(path(2)).expect("file 2");
        fs::write(path(2), &whole[..whole.len() / 2]).expect("write 2");
        // Whole, checksum right, but not a request: a bug or another format.
        fs::write(
            path(3),
            encode(
                Header {
                    items: 1,
                    created_ms: 0,
                },
                &[0xff; 9],
            ),
        )
        .expect("write 3");
        // A write the previous run never finished, and a file of someone
        // else's that is left alone.
        fs::write(dir.path().join("00000000000000000009.tmp"), b"half").expect("tmp");
        fs::write(dir.path().join("README"), b"not ours").expect("other");

        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        // Flipped, truncated and unfinished at open; garbage once read.
        assert_eq!(stats.get(Counter::ExportQueueFilesCorrupt), 3);
        let mut tags = Vec::new();
        while let Some((entry, tag)) = next_tag(&mut queue, &stats) {
            queue.remove(entry);
            tags.push(tag);
        }
        assert_eq!(tags, ["good-1", "good-2"]);
        assert_eq!(stats.get(Counter::ExportQueueFilesCorrupt), 4);
        assert_eq!(dir.files(), ["README"]);
        // Numbering goes on past the files seen, so nothing is overwritten.
        queue.push(&request("next"), 1, queue.now_ms(), &stats);
        assert_eq!(dir.files(), ["00000000000000000005.batch", "README"]);
    }

    #[tokio::test]
    async fn the_byte_bound_drops_the_oldest_waiting_batches() {
        let dir = TestDir::new("disk-queue-bound");
        let stats = Stats::default();
        let file_len = encode(
            Header {
                items: 0,
                created_ms: 0,
            },
            &request("a").encode_to_vec(),
        )
        .len() as u64;
        let mut queue = open(&dir, 3 * file_len, &stats);
        let now = queue.now_ms();
        queue.push(&request("a"), 10, now, &stats);
        let (in_flight, _) = next_tag(&mut queue, &stats).expect("a");
        for name in ["b", "c", "d"] {
            queue.push(&request(name), 1, now, &stats);
        }
        // "a" is in flight and counts against the bound, but only waiting
        // batches are dropped: "b" made room for "d".
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 1);
        assert_eq!(queue.items(), 2);
        queue.remove(in_flight);
        queue.publish(&stats);
        assert_eq!(stats.gauge(Gauge::ExportQueueDiskBytes), 2 * file_len);
        drop(queue);

        // Reopened with a lower bound: the oldest go.
        let stats = Stats::default();
        let mut queue = open(&dir, file_len, &stats);
        assert_eq!(stats.get(Counter::SpansRecovered), 2);
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 1);
        assert_eq!(
            next_tag(&mut queue, &stats).map(|(_, tag)| tag).as_deref(),
            Some("d")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_older_than_the_budget_expire_across_restarts() {
        let dir = TestDir::new("disk-queue-expire");
        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        let now = queue.now_ms();
        queue.push(&request("old"), 4, now - 60_000, &stats);
        queue.push(&request("new"), 1, now, &stats);
        drop(queue);
        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        queue.expire(Duration::from_secs(30), &stats);
        assert_eq!(stats.get(Counter::SpansDroppedExpired), 4);
        tokio::time::advance(Duration::from_secs(29)).await;
        queue.expire(Duration::from_secs(30), &stats);
        assert_eq!(queue.items(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        queue.expire(Duration::from_secs(30), &stats);
        assert_eq!(stats.get(Counter::SpansDroppedExpired), 5);
        assert!(queue.is_empty());
        assert!(dir.files().is_empty(), "{:?}", dir.files());
    }

    #[tokio::test]
    async fn a_failed_write_drops_the_batch_and_the_queue_goes_on() {
        let dir = TestDir::new("disk-queue-write-fails");
        let stats = Stats::default();
        let mut queue = open(&dir, 1 << 20, &stats);
        // The directory disappears under the queue: every write fails.
        fs::remove_dir_all(dir.path()).expect("remove dir");
        queue.push(&request("lost"), 3, queue.now_ms(), &stats);
        assert_eq!(stats.get(Counter::SpansDroppedQueueWrite), 3);
        assert!(queue.is_empty());
        fs::create_dir_all(dir.path()).expect("recreate dir");
        queue.push(&request("kept"), 1, queue.now_ms(), &stats);
        assert_eq!(queue.items(), 1);
        assert_eq!(stats.get(Counter::SpansDroppedQueueWrite), 3);
        assert_eq!(dir.files().len(), 1, "{:?}", dir.files());
    }
}
