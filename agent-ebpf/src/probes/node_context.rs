//! Node.js requests, followed for their trace context (see `nodecontext`):
//! a uprobe on libuv's `uv_os_getenv(name, buffer, size)`, in the `node`
//! executable that links libuv in (`agent/src/probes/node`). Node calls it
//! for every lookup of `process.env`; the agent's script in the process
//! looks up names starting with `__sonde_` to talk to this probe (never
//! set, so the lookup finds nothing and the process sees no change). Other
//! names cost the probe a string read and a compare.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes},
    macros::uprobe,
    programs::ProbeContext,
};

use crate::{maps::is_target, nodecontext};

/// Every message's first bytes.
const PREFIX: &[u8; 8] = b"__sonde_";
/// Longest message: prefix, kind, two numbers of 8 hex digits, NUL.
const MESSAGE_BYTES: usize = 32;

#[uprobe]
pub fn node_getenv(ctx: ProbeContext) -> u32 {
    let _ = message(&ctx);
    0
}

fn message(ctx: &ProbeContext) -> Option<()> {
    if !is_target((bpf_get_current_pid_tgid() >> 32) as u32) {
        return None;
    }
    let name: *const u8 = ctx.arg(0)?;
    let mut bytes = [0u8; MESSAGE_BYTES];
    // SAFETY: the helper faults safely on a bad address and stops at NUL.
    unsafe { bpf_probe_read_user_str_bytes(name, &mut bytes) }.ok()?;
    // One word compare (a slice compare would call `memcmp`, which BPF
    // does not have).
    // SAFETY: `bytes` holds more than 8 bytes.
    let head: u64 = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if head != u64::from_ne_bytes(*PREFIX) {
        return None;
    }
    match bytes[8] {
        b's' => nodecontext::serve(hex8(&bytes, 9)?, hex8(&bytes, 17)?),
        b'b' => nodecontext::begin_write(hex8(&bytes, 9)?),
        b'e' => nodecontext::end_write(),
        _ => {}
    }
    Some(())
}

/// The number written as 8 lower-case hex digits at `at`.
#[inline(always)]
fn hex8(bytes: &[u8; MESSAGE_BYTES], at: usize) -> Option<u32> {
    let mut value = 0u32;
    for &byte in bytes.iter().skip(at).take(8) {
        let digit = match byte {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u32::from(digit);
    }
    Some(value)
}
