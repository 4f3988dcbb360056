//! The ring-buffer reader task: decodes every record and hands events on
//! without ever waiting for a consumer.
//!
//! Wakeups: the kernel writes data records without waking the reader
//! (`BPF_RB_NO_WAKEUP`) except the record that takes the backlog past a
//! multiple of [`wakeup_bytes`] (one wakeup per that many bytes); the
//! reader drains the data ring every [`DRAIN_INTERVAL`] and whenever it is
//! woken. A wakeup per record costs the traced thread an irq_work and the
//! agent a context switch per event; this way the agent wakes ~60 times a
//! second under moderate load, once per [`wakeup_bytes`] above it (each
//! drain then wakes the tracker and the exporter in turn: at 5,000 req/s a
//! 4 ms interval cost the agent ~12 us of CPU per request, 16 ms ~7.5 us),
//! and a burst still wakes it well before the ring fills. Records wait at
//! most [`DRAIN_INTERVAL`] while data flows; when drains find nothing the
//! interval doubles up to
//! [`IDLE_DRAIN_INTERVAL`], so an idle agent wakes a few times a second
//! (the first record after a quiet spell waits that long at most: spans
//! are exported later anyway, and the traced process never waits on the
//! reader). Process
//! events (control ring) keep one wakeup per record: they are rare and
//! selection should not wait.
//!
//! Data and close events go to the connection tracker in batches (one
//! channel send per drain, not per event). Their payloads are copied into
//! one shared buffer ([`PAYLOAD_CHUNK`] bytes at a time), not one heap
//! allocation per event.
//!
//! Overflow policy: `reader_to_conn` and `reader_to_discovery` are bounded;
//! when one is full the events are dropped and counted (the kernel keeps
//! writing regardless, so blocking here would only move the loss into the
//! ring buffer, where it is less visible).

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use bytes::BytesMut;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    time::Instant,
};
use tracing::debug;

use super::decode::{KernelEvent, decode};
use crate::telemetry::{Counter, Stats};

/// How often the data ring is drained when the kernel does not wake the
/// reader: how long a record waits at most.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(16);
/// The longest interval between two drains, reached after drains that
/// found nothing.
pub const IDLE_DRAIN_INTERVAL: Duration = Duration::from_millis(256);

/// Events per batch at most: a drain of a full ring is cut into batches of
/// this size, so the tracker starts on the first while the reader decodes
/// the rest.
pub const MAX_BATCH: usize = 512;

/// The buffer event payloads are copied into is allocated this many bytes
/// at a time: a payload is a slice of it, freed with the last of them.
pub const PAYLOAD_CHUNK: usize = 64 * 1024;

/// Data and close events, in ring order, as one channel item.
pub type EventBatch = Vec<KernelEvent>;

/// The backlog (bytes waiting in a data ring of `ring_bytes`) at each
/// multiple of which the kernel wakes the reader: an eighth of the ring,
/// so a burst is read long before the ring fills, and at most 32 KiB
/// (~100 nginx requests), so the agent's work comes in short bursts. On a
/// small node those bursts are what the traced application's latency
/// sees: with 256 KiB (a 16 ms timer's worth at 20,000 req/s, ~1 ms of
/// work) `cargo xtask bench` measured 744-984 µs added to nginx's p99 at
/// 20,000 req/s and 51-58% of its throughput at saturation; with 32 KiB
/// -75-155 µs and 62-68%, for the same agent CPU per request.
pub fn wakeup_bytes(ring_bytes: u32) -> u32 {
    (ring_bytes / 8).min(32 * 1024)
}

/// Where decoded events go.
pub struct ReaderChannels {
    /// Socket data and close events, to the connection tracker.
    pub reader_to_conn: mpsc::Sender<EventBatch>,
    /// Exec, exit and listen events, to discovery.
    pub reader_to_discovery: mpsc::Sender<KernelEvent>,
}

/// Reads both rings until `shutdown` resolves.
pub async fn run_reader(
    data_ring: RingBuf<MapData>,
    control_ring: RingBuf<MapData>,
    channels: ReaderChannels,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut data = watch(data_ring)?;
    let mut control = watch(control_ring)?;
    let mut payloads = BytesMut::new();
    let mut interval = DRAIN_INTERVAL;
    // A deadline, not a sleep restarted at every loop: control events must
    // not postpone the data drain.
    let mut next_drain = Instant::now() + interval;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(next_drain) => {
                let drained = drain(data.get_mut(), &channels, &stats, &mut payloads);
                interval = next_interval(interval, drained);
                next_drain = Instant::now() + interval;
            }
            guard = data.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &channels, &stats, &mut payloads);
                guard.clear_ready();
                interval = DRAIN_INTERVAL;
                next_drain = Instant::now() + interval;
            }
            guard = control.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &channels, &stats, &mut payloads);
                guard.clear_ready();
            }
        }
    }
    // Whatever the kernel wrote before shutdown still goes on.
    drain(data.get_mut(), &channels, &stats, &mut payloads);
    drain(control.get_mut(), &channels, &stats, &mut payloads);
    Ok(())
}

fn watch(ring: RingBuf<MapData>) -> std::io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until
    // it is dropped, which is after the AsyncFd (it lives inside it).
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// The interval after a timer drain that read `drained` records: the
/// shortest while data flows, doubling while there is none.
fn next_interval(interval: Duration, drained: u64) -> Duration {
    if drained > 0 {
        DRAIN_INTERVAL
    } else {
        (interval * 2).min(IDLE_DRAIN_INTERVAL)
    }
}

/// Reads every record in `ring`, payloads into `payloads`; counters are
/// added once per drain. Returns how many records it read.
fn drain(
    ring: &mut RingBuf<MapData>,
    channels: &ReaderChannels,
    stats: &Stats,
    payloads: &mut BytesMut,
) -> u64 {
    let mut batch = EventBatch::new();
    let (mut received, mut undecodable, mut dropped) = (0, 0, 0);
    while let Some(record) = ring.next() {
        received += 1;
        if payloads.capacity() < record.len() {
            payloads.reserve(PAYLOAD_CHUNK.max(record.len()));
        }
        let event = match decode(&record, payloads) {
            Ok(event) => event,
            Err(error) => {
                debug!(%error, "undecodable kernel record");
                undecodable += 1;
                continue;
            }
        };
        match event {
            KernelEvent::Data(_) | KernelEvent::Close(_) | KernelEvent::Http2Injected(_) => {
                if batch.capacity() == 0 {
                    batch.reserve_exact(MAX_BATCH);
                }
                batch.push(event);
                if batch.len() == MAX_BATCH {
                    dropped += send(&channels.reader_to_conn, std::mem::take(&mut batch));
                }
            }
            KernelEvent::Exec { .. } | KernelEvent::Exit { .. } | KernelEvent::Listen { .. } => {
                if channels.reader_to_discovery.try_send(event).is_err() {
                    dropped += 1;
                }
            }
        }
    }
    if !batch.is_empty() {
        dropped += send(&channels.reader_to_conn, batch);
    }
    for (counter, value) in [
        (Counter::EventsReceived, received),
        (Counter::EventsUndecodable, undecodable),
        (Counter::EventsDroppedChannelFull, dropped),
    ] {
        if value > 0 {
            stats.add(counter, value);
        }
    }
    received
}

/// Sends a batch; returns how many events were lost (all, if the channel
/// is full).
fn send(channel: &mpsc::Sender<EventBatch>, batch: EventBatch) -> u64 {
    let len = batch.len() as u64;
    if channel.try_send(batch).is_err() {
        len
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::{DRAIN_INTERVAL, IDLE_DRAIN_INTERVAL, next_interval, wakeup_bytes};

    #[test]
    fn wakeup_threshold_scales_with_the_ring_and_is_capped() {
        assert_eq!(wakeup_bytes(64 * 1024), 8 * 1024);
        assert_eq!(wakeup_bytes(8 * 1024 * 1024), 32 * 1024);
    }

    #[test]
    fn drain_interval_backs_off_when_idle_and_resets_on_data() {
        let mut interval = DRAIN_INTERVAL;
        for _ in 0..20 {
            interval = next_interval(interval, 0);
        }
        assert_eq!(interval, IDLE_DRAIN_INTERVAL);
        assert_eq!(next_interval(interval, 3), DRAIN_INTERVAL);
        assert_eq!(next_interval(DRAIN_INTERVAL, 0), DRAIN_INTERVAL * 2);
    }
}
