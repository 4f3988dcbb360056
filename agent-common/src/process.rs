//! Process life cycle, from `agent-ebpf/src/probes/process.rs`.

use crate::EventHeader;

/// A process exec'd (any process: userspace matches it against selectors) or
/// a targeted process exited. `header.pid` is the process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    /// `kind` is [`crate::EventKind::ProcessExec`] or [`crate::EventKind::ProcessExit`].
    pub header: EventHeader,
}
