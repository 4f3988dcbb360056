//! What every database slice shares with the tracker: a [`DbConn`] wraps a
//! protocol's pure connection state ([`DbProtocol`]), feeds it the
//! connection's calls, counts what it gave up on and turns its operations
//! into call records.

use std::fmt::Debug;

use super::{Chunk, DbEvent, DbOp, DbOutcome, Degraded};
use crate::{
    model::{
        call::{Call, ConnInfo, Detail, Outcome, Side},
        db::DbCall,
    },
    probes::decode::{Direction, SocketData},
    protocols::{Ctx, Flow, ProtocolConn},
    telemetry::Counter,
};

/// A database protocol's pure per-connection state (client side).
pub trait DbProtocol: Debug + Send {
    /// Bytes the client sent.
    fn on_request(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>);
    /// Bytes the client received.
    fn on_reply(&mut self, chunk: &Chunk<'_>, out: &mut Vec<DbEvent>);
    /// The connection ended at `ts_ns`: what waits ends too.
    fn on_close(&mut self, ts_ns: u64, out: &mut Vec<DbEvent>);
}

/// Implements [`DbProtocol`] for a connection type with inherent
/// `on_request`, `on_reply` and `on_close` of the same signatures (which
/// the pure tests call directly).
macro_rules! db_protocol {
    ($conn:ty) => {
        impl $crate::protocols::db::DbProtocol for $conn {
            fn on_request(
                &mut self,
                chunk: &$crate::protocols::db::Chunk<'_>,
                out: &mut Vec<$crate::protocols::db::DbEvent>,
            ) {
                <$conn>::on_request(self, chunk, out);
            }
            fn on_reply(
                &mut self,
                chunk: &$crate::protocols::db::Chunk<'_>,
                out: &mut Vec<$crate::protocols::db::DbEvent>,
            ) {
                <$conn>::on_reply(self, chunk, out);
            }
            fn on_close(&mut self, ts_ns: u64, out: &mut Vec<$crate::protocols::db::DbEvent>) {
                <$conn>::on_close(self, ts_ns, out);
            }
        }
    };
}
pub(crate) use db_protocol;

/// A client connection of a database protocol.
#[derive(Debug)]
pub struct DbConn<P> {
    info: ConnInfo,
    protocol: P,
    events: Vec<DbEvent>,
    /// The kernel span id the last operation used: the kernel gives one
    /// per write, and the other commands of a pipelined write need their
    /// own.
    last_kernel_span: Option<[u8; 8]>,
}

impl<P: DbProtocol + 'static> DbConn<P> {
    /// The state of a client connection claimed by a detector.
    pub fn boxed(ev: &SocketData, protocol: P) -> Box<dyn ProtocolConn> {
        Box::new(Self {
            info: ConnInfo {
                pid: ev.pid,
                socket_cookie: ev.socket_cookie,
                local: ev.local,
                remote: ev.remote,
                side: Side::Client,
                tls: ev.tls,
            },
            protocol,
            events: Vec::new(),
            last_kernel_span: None,
        })
    }

    /// Counts what was given up on, records the finished operations.
    fn flush(&mut self, abandoned: bool, ctx: &mut Ctx<'_>) {
        for event in self.events.drain(..) {
            match event {
                DbEvent::Degraded(Degraded::LostSync) => ctx.stats.add(Counter::DbSyncLost, 1),
                DbEvent::Degraded(Degraded::RequestsDropped(n)) => {
                    ctx.stats.add(Counter::DbRequestsDropped, n as u64);
                }
                DbEvent::Op(op) => {
                    let mut trace = op.trace;
                    if let Some(kernel) = trace.as_mut() {
                        if self.last_kernel_span == Some(kernel.span_id) {
                            kernel.span_id = rand::random();
                            kernel.injected = false;
                        }
                        self.last_kernel_span = Some(kernel.span_id);
                    }
                    ctx.out.push(call_of(&self.info, op, trace, abandoned));
                }
            }
        }
    }
}

fn call_of(
    info: &ConnInfo,
    op: DbOp,
    trace: Option<crate::model::call::KernelTrace>,
    abandoned: bool,
) -> Call {
    let outcome = match op.outcome {
        DbOutcome::Ok => Outcome::Succeeded,
        DbOutcome::Error { code } => Outcome::Failed { code },
        DbOutcome::ConnectionClosed if abandoned => Outcome::Abandoned,
        DbOutcome::ConnectionClosed => Outcome::ConnectionClosed,
    };
    Call {
        conn: info.clone(),
        detail: Detail::Db(DbCall {
            system: op.system,
            request: op.request,
        }),
        outcome,
        start_ns: op.start_ns,
        end_ns: op.end_ns,
        request_tid: op.request_tid,
        response_tid: op.response_tid,
        trace,
    }
}

impl<P: DbProtocol + 'static> ProtocolConn for DbConn<P> {
    fn on_data(&mut self, ev: &SocketData, ctx: &mut Ctx<'_>) -> Flow {
        let chunk = Chunk {
            data: &ev.payload,
            uncaptured: (ev.total_len as usize).saturating_sub(ev.payload.len()),
            ts_ns: ev.timestamp_ns,
            tid: ev.tid,
            trace: ev.trace,
        };
        match ev.direction {
            Direction::Egress => self.protocol.on_request(&chunk, &mut self.events),
            Direction::Ingress => self.protocol.on_reply(&chunk, &mut self.events),
        }
        self.flush(false, ctx);
        Flow::Continue
    }

    fn finish(&mut self, unanswered: &Outcome, at_ns: u64, ctx: &mut Ctx<'_>) {
        self.protocol.on_close(at_ns, &mut self.events);
        let abandoned = *unanswered == Outcome::Abandoned;
        if abandoned {
            let waiting = self
                .events
                .iter()
                .filter(|e| matches!(e, DbEvent::Op(_)))
                .count();
            ctx.stats.add(Counter::ExchangesAbandoned, waiting as u64);
        }
        self.flush(abandoned, ctx);
    }

    /// Replies are read by their lengths, message after message: a reply
    /// larger than the default capture would hide the headers after it.
    fn needs_all_bytes(&self) -> bool {
        true
    }
}

/// Whether a detector may claim a connection for a database client: the
/// bytes are the client's (it sent them), on a connection the kernel saw
/// it open or one caught mid-way.
pub fn client_sent(ev: &SocketData, side: Option<Side>) -> bool {
    ev.direction == Direction::Egress && side != Some(Side::Server)
}
