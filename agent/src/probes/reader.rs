//! The ring-buffer reader task: decodes every record and hands events on
//! without ever waiting for a consumer.
//!
//! Wakeups: the reader paces itself. It drains the data ring on a timer
//! whose interval follows the data rate, so a drain finds about
//! [`DRAIN_TARGET_BYTES`] (~100 nginx requests) while data flows: every
//! [`MIN_DRAIN_INTERVAL`] at saturation, every ~10 ms at 5,000 nginx
//! req/s, at most every [`DRAIN_INTERVAL`] under light load, doubling
//! up to [`IDLE_DRAIN_INTERVAL`] while drains find
//! nothing (an idle agent wakes a few times a second; the first record
//! after a quiet spell waits that long at most: spans are exported later
//! anyway, and the traced process never waits on the reader). The kernel
//! writes data records without waking the reader (`BPF_RB_NO_WAKEUP`)
//! except the record that takes the backlog past a multiple of
//! [`wakeup_bytes`]: a guard for bursts the timer has not caught up with,
//! which steady load never reaches. A kernel wakeup costs the traced
//! thread an irq_work (a self-IPI, a VM exit on a virtual machine): at
//! nginx saturation, waking every 32 KiB of backlog put ~9% of the
//! programs' time in `native_write_msr`. The timer costs the agent the
//! same context switch and the traced threads nothing. Short drains
//! matter on a small node: the agent's work comes in bursts, and the
//! traced application's latency sees them (draining 256 KiB at a time
//! added 744-984 µs to nginx's p99 at 20,000 req/s, 32 KiB -75-155 µs).
//! Process events (control ring) keep one wakeup per record: they are
//! rare and selection should not wait.
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

/// Bytes a drain should find while data flows: the timer interval follows
/// the rate to keep drains near this size.
pub const DRAIN_TARGET_BYTES: u64 = 32 * 1024;
/// The shortest interval between two timer drains (tokio's timer wheel
/// has millisecond slots).
pub const MIN_DRAIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest interval between two drains while data flows: how long a
/// record waits at most under light load. Each drain wakes the reader,
/// tracker and exporter with cold caches: at 1,000 FastAPI req/s, 64 ms
/// instead of 16 cost the agent 12-16 µs of CPU per request instead of
/// 18-20 (alternating runs).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(64);
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
/// at most 256 KiB. Only a burst faster than the drain timer's pace gets
/// there (see the module doc), and it is read long before the ring fills.
pub fn wakeup_bytes(ring_bytes: u32) -> u32 {
    (ring_bytes / 8).min(256 * 1024)
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
    let mut last_drain = Instant::now();
    // A deadline, not a sleep restarted at every loop: control events must
    // not postpone the data drain.
    let mut next_drain = last_drain + interval;
    tokio::pin!(shutdown);
    loop {
        let woken = tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(next_drain) => false,
            guard = data.readable_mut() => {
                guard?.clear_ready();
                true
            }
            guard = control.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &channels, &stats, &mut payloads);
                guard.clear_ready();
                continue;
            }
        };
        let drained = drain(data.get_mut(), &channels, &stats, &mut payloads);
        let now = Instant::now();
        interval = next_interval(interval, now - last_drain, drained, woken);
        last_drain = now;
        next_drain = now + interval;
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

/// The interval to the next timer drain, after one that found `drained`
/// bytes `elapsed` after the one before (`woken`: the kernel asked for it,
/// a burst): the time the current rate takes to bring
/// [`DRAIN_TARGET_BYTES`], between [`MIN_DRAIN_INTERVAL`] and
/// [`DRAIN_INTERVAL`]; doubling, up to [`IDLE_DRAIN_INTERVAL`], while
/// drains find nothing.
fn next_interval(interval: Duration, elapsed: Duration, drained: u64, woken: bool) -> Duration {
    if drained == 0 {
        return if woken {
            interval
        } else {
            (interval * 2).min(IDLE_DRAIN_INTERVAL)
        };
    }
    let paced = elapsed.mul_f64(DRAIN_TARGET_BYTES as f64 / drained as f64);
    paced.clamp(MIN_DRAIN_INTERVAL, DRAIN_INTERVAL)
}

/// Reads every record in `ring`, payloads into `payloads`; counters are
/// added once per drain. Returns how many bytes of records it read.
fn drain(
    ring: &mut RingBuf<MapData>,
    channels: &ReaderChannels,
    stats: &Stats,
    payloads: &mut BytesMut,
) -> u64 {
    let mut batch = EventBatch::new();
    let (mut received, mut undecodable, mut dropped, mut bytes) = (0, 0, 0, 0);
    while let Some(record) = ring.next() {
        received += 1;
        bytes += record.len() as u64;
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
    bytes
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
    use std::time::Duration;

    use super::{
        DRAIN_INTERVAL, DRAIN_TARGET_BYTES, IDLE_DRAIN_INTERVAL, MIN_DRAIN_INTERVAL, next_interval,
        wakeup_bytes,
    };

    #[test]
    fn wakeup_threshold_scales_with_the_ring_and_is_capped() {
        assert_eq!(wakeup_bytes(64 * 1024), 8 * 1024);
        assert_eq!(wakeup_bytes(8 * 1024 * 1024), 256 * 1024);
    }

    #[test]
    fn drain_interval_backs_off_when_idle() {
        let mut interval = DRAIN_INTERVAL;
        for _ in 0..20 {
            interval = next_interval(interval, interval, 0, false);
        }
        assert_eq!(interval, IDLE_DRAIN_INTERVAL);
        assert_eq!(
            next_interval(DRAIN_INTERVAL, DRAIN_INTERVAL, 0, false),
            DRAIN_INTERVAL * 2
        );
        // A wakeup that found the ring drained already changes nothing.
        assert_eq!(
            next_interval(DRAIN_INTERVAL, Duration::from_millis(3), 0, true),
            DRAIN_INTERVAL
        );
    }

    #[test]
    fn drain_interval_follows_the_data_rate() {
        let ms = Duration::from_millis;
        // Half the target in 4 ms: 8 ms brings the target.
        assert_eq!(
            next_interval(ms(4), ms(4), DRAIN_TARGET_BYTES / 2, false),
            ms(8)
        );
        // Four times the target in 4 ms (a wakeup): the shortest interval.
        assert_eq!(
            next_interval(ms(4), ms(4), DRAIN_TARGET_BYTES * 4, true),
            MIN_DRAIN_INTERVAL
        );
        // Data after an idle spell: at most the interval of moderate load.
        assert_eq!(
            next_interval(IDLE_DRAIN_INTERVAL, IDLE_DRAIN_INTERVAL, 100, false),
            DRAIN_INTERVAL
        );
        assert_eq!(
            next_interval(ms(1), ms(1), DRAIN_TARGET_BYTES * 100, false),
            MIN_DRAIN_INTERVAL
        );
    }
}
