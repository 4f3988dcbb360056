//! Head sampling as the kernel decides it (`agent-ebpf/src/context.rs`)
//! and the agent repeats it for the traces it starts itself
//! (`agent::sampling`): one function, so both reach the same decision.
//!
//! The OpenTelemetry SDK specification's `TraceIdRatioBased` compares the
//! trace's randomness value `R`, the 7 rightmost bytes (56 bits) of the trace
//! id read as a big-endian number, with a rejection threshold `T`: sampled
//! when `R >= T`, where `T = (1 - ratio) * 2^56`. `AlwaysOn` is `T = 0`,
//! `AlwaysOff` is `T = 2^56` (no `R` reaches it). `ParentBased` keeps a
//! parent's sampled flag instead.

/// W3C trace flags bit 0: the trace is sampled.
pub const FLAG_SAMPLED: u32 = 1;

/// W3C Trace Context Level 2 trace flags bit 1: the trace id's 56 rightmost
/// bits are random. Set on the traces Sonde starts (its ids are random), as
/// the specification asks of SDKs.
pub const FLAG_RANDOM: u32 = 2;

/// `sampler` bit: a parent's sampled flag decides (the `parentbased_*` samplers).
pub const PARENT_BASED: u32 = 1;

/// `sampler` bit: some services have a ratio of their own (`sampling.rules`),
/// so processes may have a threshold in the kernel's `SAMPLING_THRESHOLDS`.
/// Without it the kernel skips that lookup.
pub const SERVICE_RULES: u32 = 2;

/// `2^56`: the rejection threshold no randomness value reaches (`always_off`).
pub const THRESHOLD_NEVER: u64 = 1 << 56;

/// The randomness value of a trace id: its 7 rightmost bytes, big-endian.
#[inline(always)]
pub fn randomness(trace_id: &[u8; 16]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[1..].copy_from_slice(&trace_id[9..]);
    u64::from_be_bytes(bytes)
}

/// The trace flags of a span on trace `trace_id`: the parent's flags under a
/// parent-based sampler (`parent_flags`, if the span has a parent), else the
/// parent's other bits (for a new trace: [`FLAG_RANDOM`]) with the sampled
/// bit set iff the trace id's randomness reaches `threshold`.
#[inline(always)]
pub fn trace_flags(
    sampler: u32,
    threshold: u64,
    trace_id: &[u8; 16],
    parent_flags: Option<u32>,
) -> u32 {
    match parent_flags {
        Some(flags) if sampler & PARENT_BASED != 0 => flags,
        _ => {
            let sampled = if randomness(trace_id) >= threshold {
                FLAG_SAMPLED
            } else {
                0
            };
            (parent_flags.unwrap_or(FLAG_RANDOM) & !FLAG_SAMPLED) | sampled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_with_randomness(r: u64) -> [u8; 16] {
        let mut id = [0xab; 16];
        id[9..].copy_from_slice(&r.to_be_bytes()[1..]);
        id
    }

    #[test]
    fn randomness_is_the_seven_rightmost_bytes_big_endian() {
        let id = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(randomness(&id), 0x0001_0203_0405_0607);
    }

    #[test]
    fn threshold_compares_at_or_above() {
        let t = 0x00c0_0000_0000_0000; // ratio 0.25
        assert_eq!(trace_flags(0, t, &id_with_randomness(t), Some(0)), 1);
        assert_eq!(trace_flags(0, t, &id_with_randomness(t - 1), Some(0)), 0);
        assert_eq!(trace_flags(0, 0, &id_with_randomness(0), Some(0)), 1);
        let max = THRESHOLD_NEVER - 1;
        let never = trace_flags(0, THRESHOLD_NEVER, &id_with_randomness(max), Some(0));
        assert_eq!(never, 0);
        // A new trace says its id is random.
        assert_eq!(trace_flags(0, t, &id_with_randomness(t), None), 3);
        assert_eq!(trace_flags(0, t, &id_with_randomness(t - 1), None), 2);
    }

    #[test]
    fn parent_flags_decide_only_when_parent_based() {
        let id = id_with_randomness(0);
        assert_eq!(trace_flags(PARENT_BASED, 0, &id, Some(0)), 0);
        assert_eq!(trace_flags(PARENT_BASED, THRESHOLD_NEVER, &id, Some(3)), 3);
        assert_eq!(trace_flags(PARENT_BASED, THRESHOLD_NEVER, &id, None), 2);
        // Not parent-based: the ratio decides, the parent's other bits stay.
        assert_eq!(trace_flags(0, 0, &id, Some(2)), 3);
        assert_eq!(trace_flags(0, THRESHOLD_NEVER, &id, Some(3)), 2);
    }
}
