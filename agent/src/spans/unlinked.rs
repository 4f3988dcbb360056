//! Outgoing requests left without a parent while their process was
//! serving: counted, so that links the agent could not make are visible.
//!
//! The kernel gives a call a parent only when it knows which request the
//! calling thread (or goroutine) serves, and counts the calls it leaves
//! unlinked because the thread had several requests in flight
//! (`sonde_links_ambiguous`). It cannot count what it does not see: the
//! requests of an HTTP/2 or gRPC server (it reads no HPACK), or a request
//! handed to another thread. Here, each call that got no parent (and was
//! not counted as ambiguous) waits, by process, for a server request of
//! the same process whose span covers its start; when one ends, the calls
//! it covers are counted once (`sonde_links_unmade_while_serving`). A call
//! whose answer came after the covering request ended (work left running)
//! is not counted; neither is one made while the process served nothing.

use std::collections::VecDeque;

use hashbrown::HashMap;

/// Calls kept per process while they wait for a covering request: the
/// oldest go first. A request covers calls made during it, so the calls it
/// can count are those of its own lifetime; past this many, the counter
/// undercounts, never overcounts.
const WAITING_PER_PROCESS: usize = 256;

/// Unlinked calls by process, waiting for a server request that covers them.
#[derive(Debug, Default)]
pub struct UnlinkedCalls {
    /// Start times (monotonic ns) of each process's unlinked calls.
    waiting: HashMap<u32, VecDeque<u64>>,
}

impl UnlinkedCalls {
    /// Process `pid` made a call at `start_ns` that got no parent.
    pub fn call_without_parent(&mut self, pid: u32, start_ns: u64) {
        let waiting = self.waiting.entry(pid).or_default();
        if waiting.len() == WAITING_PER_PROCESS {
            waiting.pop_front();
        }
        waiting.push_back(start_ns);
    }

    /// Process `pid` finished serving a request that ran from `start_ns`
    /// to `end_ns`: the waiting calls made during it are taken and counted.
    pub fn request_served(&mut self, pid: u32, start_ns: u64, end_ns: u64) -> u64 {
        let Some(waiting) = self.waiting.get_mut(&pid) else {
            return 0;
        };
        let before = waiting.len();
        waiting.retain(|&at| at < start_ns || at > end_ns);
        let covered = (before - waiting.len()) as u64;
        if waiting.is_empty() {
            self.waiting.remove(&pid);
        }
        covered
    }

    /// Process `pid` is gone.
    pub fn forget_pid(&mut self, pid: u32) {
        self.waiting.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_made_during_a_request_are_counted_once() {
        let mut unlinked = UnlinkedCalls::default();
        unlinked.call_without_parent(7, 150);
        unlinked.call_without_parent(7, 180);
        unlinked.call_without_parent(8, 160);
        assert_eq!(unlinked.request_served(7, 100, 200), 2);
        assert_eq!(
            unlinked.request_served(7, 100, 300),
            0,
            "counted by the first request that covers them only"
        );
        assert_eq!(unlinked.request_served(8, 100, 200), 1, "by process");
    }

    #[test]
    fn calls_outside_every_request_are_not_counted() {
        let mut unlinked = UnlinkedCalls::default();
        unlinked.call_without_parent(7, 50);
        unlinked.call_without_parent(7, 250);
        assert_eq!(unlinked.request_served(7, 100, 200), 0);
        assert_eq!(unlinked.request_served(9, 0, 1_000), 0, "another process");
        unlinked.forget_pid(7);
        assert_eq!(unlinked.request_served(7, 0, 1_000), 0, "forgotten");
    }

    #[test]
    fn waiting_calls_are_bounded_per_process() {
        let mut unlinked = UnlinkedCalls::default();
        for at in 0..(WAITING_PER_PROCESS as u64 + 10) {
            unlinked.call_without_parent(7, at);
        }
        assert_eq!(
            unlinked.request_served(7, 0, u64::MAX),
            WAITING_PER_PROCESS as u64,
            "the oldest were let go"
        );
        assert!(unlinked.waiting.is_empty(), "nothing left once all counted");
    }
}
