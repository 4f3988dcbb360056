//! One span stream to several consumers (the OTLP exporter and the terminal
//! printer), without letting a slow consumer hold up the others.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::model::span::SpanBatch;
use crate::telemetry::{Counter, Stats};

/// One consumer of the fan-out.
#[derive(Debug)]
pub struct FanOutput {
    /// Its channel.
    pub tx: mpsc::Sender<SpanBatch>,
    /// Counted for each span dropped because that channel was full.
    pub when_full: Counter,
}

/// Copies every batch of spans from `rx` to each output.
///
/// Overflow policy: drop newest, per output. A full output loses the batch
/// (its spans counted under its `when_full`) while the others still get it; nothing
/// upstream ever waits. An output whose receiver is gone is removed; the
/// task ends when `rx` closes or no output is left.
pub async fn fan_out(
    mut rx: mpsc::Receiver<SpanBatch>,
    mut outputs: Vec<FanOutput>,
    stats: Arc<Stats>,
) {
    while !outputs.is_empty() {
        let Some(spans) = rx.recv().await else {
            return;
        };
        outputs.retain(|output| match output.tx.try_send(spans.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(lost)) => {
                stats.add(output.when_full, lost.len() as u64);
                true
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!(counter = output.when_full.name(), "span consumer stopped");
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{resource, span};

    #[tokio::test]
    async fn every_output_gets_every_span_it_has_room_for() {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(8);
        let (roomy_tx, mut roomy) = mpsc::channel(8);
        let (tight_tx, mut tight) = mpsc::channel(1);
        let task = tokio::spawn(fan_out(
            rx,
            vec![
                FanOutput {
                    tx: roomy_tx,
                    when_full: Counter::SpansDroppedQueueFull,
                },
                // Another counter than the first output's, to tell them apart.
                FanOutput {
                    tx: tight_tx,
                    when_full: Counter::SpansDroppedRateCap,
                },
            ],
            Arc::clone(&stats),
        ));
        for names in [&["a", "b"][..], &["c"], &["d"]] {
            let spans = names
                .iter()
                .map(|name| span(&resource("pid:1:1", "api"), name))
                .collect();
            let sent = tx.send(spans).await;
            assert!(sent.is_ok(), "{sent:?}");
        }
        drop(tx);
        let joined = task.await;
        assert!(joined.is_ok(), "{joined:?}");

        let names = |rx: &mut mpsc::Receiver<SpanBatch>| {
            let mut names = Vec::new();
            while let Ok(spans) = rx.try_recv() {
                names.extend(spans.into_iter().map(|span| span.name));
            }
            names
        };
        assert_eq!(names(&mut roomy), ["a", "b", "c", "d"]);
        assert_eq!(names(&mut tight), ["a", "b"], "newest dropped when full");
        assert_eq!(stats.get(Counter::SpansDroppedRateCap), 2);
        assert_eq!(stats.get(Counter::SpansDroppedQueueFull), 0);
    }

    #[tokio::test]
    async fn a_closed_output_is_dropped_and_the_last_one_ends_the_task() {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(8);
        let (out_tx, out_rx) = mpsc::channel(8);
        drop(out_rx);
        let task = tokio::spawn(fan_out(
            rx,
            vec![FanOutput {
                tx: out_tx,
                when_full: Counter::SpansDroppedQueueFull,
            }],
            stats,
        ));
        let sent = tx.send(vec![span(&resource("pid:1:1", "api"), "a")]).await;
        assert!(sent.is_ok(), "{sent:?}");
        let joined = task.await;
        assert!(joined.is_ok(), "{joined:?}");
        assert!(tx.is_closed(), "upstream sees the fan-out gone");
    }
}
