//! Small wrappers over the probe-read helpers.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_user};

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn kernel<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(i64::from)
}

/// Reads a `T` at `addr` in the current process's memory.
#[inline(always)]
pub fn user<T>(addr: u64) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_user faults safely on a bad address.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(i64::from)
}
