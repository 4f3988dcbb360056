//! The ring-buffer reader task: wakes when the kernel has written, decodes
//! every record, and hands events on without ever waiting for a consumer.
//!
//! Overflow policy: `reader_to_conn` and `reader_to_discovery` are bounded;
//! when one is full the event is dropped and counted (the kernel keeps
//! writing regardless, so blocking here would only move the loss into the
//! ring buffer, where it is less visible).

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tracing::debug;

use super::decode::{KernelEvent, decode};
use crate::telemetry::{Counter, Stats};

/// Where decoded events go.
pub struct ReaderChannels {
    /// Socket data and close events, to the connection tracker.
    pub reader_to_conn: mpsc::Sender<KernelEvent>,
    /// Exec and exit events, to discovery.
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            guard = data.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &channels, &stats);
                guard.clear_ready();
            }
            guard = control.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &channels, &stats);
                guard.clear_ready();
            }
        }
    }
    // Whatever the kernel wrote before shutdown still goes on.
    drain(data.get_mut(), &channels, &stats);
    drain(control.get_mut(), &channels, &stats);
    Ok(())
}

fn watch(ring: RingBuf<MapData>) -> std::io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until
    // it is dropped, which is after the AsyncFd (it lives inside it).
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

fn drain(ring: &mut RingBuf<MapData>, channels: &ReaderChannels, stats: &Stats) {
    while let Some(record) = ring.next() {
        stats.add(Counter::EventsReceived, 1);
        let event = match decode(&record) {
            Ok(event) => event,
            Err(error) => {
                debug!(%error, "undecodable kernel record");
                stats.add(Counter::EventsUndecodable, 1);
                continue;
            }
        };
        let channel = match event {
            KernelEvent::Data(_) | KernelEvent::Close(_) => &channels.reader_to_conn,
            KernelEvent::Exec { .. } | KernelEvent::Exit { .. } => &channels.reader_to_discovery,
        };
        if channel.try_send(event).is_err() {
            stats.add(Counter::EventsDroppedChannelFull, 1);
        }
    }
}
