//! Python contexts, followed for their trace context (see `pycontext`):
//! a uprobe and a uretprobe on `PyContext_CopyCurrent`, which CPython
//! calls to give each new asyncio task and callback a copy of the current
//! context, in the executable or `libpython` that exports it
//! (`agent/src/probes/python.rs`).
//!
//! The entry runs while the thread holds the GIL, so the interpreter's
//! "thread holding the GIL" pointer is this thread's `PyThreadState`; the
//! agent packs in the attach cookie where that pointer is, relative to
//! the probed function (the uprobe's instruction pointer, so no
//! per-process address is needed), and the offset of the state's
//! `context`:
//! - bits 0-31: the pointer's address minus the function's (signed);
//! - bits 32-47: `offsetof(PyThreadState, context)`.
//!
//! The entry records where the thread's current context lives
//! (`PY_THREADS`); the return gives the copy what the context it copied
//! works for (`PyWork::for_copy`), that context being still the thread's
//! current one (the copy is not entered), or clears what a reused address
//! had. The thread's first copy after it accepted a connection, of the
//! context it accepted it in, works for that connection (`PY_ACCEPTING`).
//! No state is kept between the two: the thread's entry is rewritten only
//! when its state changes.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_attach_cookie},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    maps::{is_target, mark_tls_or_go},
    pycontext::{PY_ACCEPTING, PY_SERVING, PY_THREADS, PyContextKey, PyWork},
    read,
};

#[uprobe]
pub fn python_copy_context_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx);
    0
}

fn enter(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return None;
    }
    // SAFETY: the program's own context, for the attach cookie; a
    // uprobe's context is the user registers.
    let (layout, function) = unsafe { (bpf_get_attach_cookie(ctx.as_ptr()), (*ctx.regs).rip) };
    let holder = function.wrapping_add(layout as u32 as i32 as i64 as u64);
    let tstate = read::user::<u64>(holder).ok()?;
    if tstate == 0 {
        return None;
    }
    let slot = tstate + ((layout >> 32) & 0xffff);
    // SAFETY: plain value lookup.
    if unsafe { PY_THREADS.get(pid_tgid) }.copied() != Some(slot) {
        mark_tls_or_go(tgid);
        let _ = PY_THREADS.insert(pid_tgid, slot, 0);
    }
    Some(())
}

/// The copy works for what the context it copies works for, if anything.
#[uretprobe]
pub fn python_copy_context_exit(ctx: RetProbeContext) -> u32 {
    let _ = exit(&ctx);
    0
}

fn exit(ctx: &RetProbeContext) -> Option<()> {
    let copy: u64 = ctx.ret();
    if copy == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain value lookup, copied out; none unless the entry ran
    // for a target.
    let slot = unsafe { PY_THREADS.get(pid_tgid) }.copied()?;
    let original = read::user::<u64>(slot).ok()?;
    let copy = PyContextKey::of_current(copy);
    // SAFETY: plain value lookups, copied out.
    let accepted = unsafe { PY_ACCEPTING.get(pid_tgid) }.copied();
    if accepted.is_some() {
        let _ = PY_ACCEPTING.remove(pid_tgid);
    }
    let work = match accepted {
        Some(accepting) if accepting.context == original => {
            Some(PyWork::connection(accepting.serial))
        }
        _ if original != 0 => unsafe { PY_SERVING.get(PyContextKey::of_current(original)) }
            .copied()
            .map(PyWork::for_copy),
        _ => None,
    };
    match work {
        Some(work) => {
            let _ = PY_SERVING.insert(copy, work, 0);
        }
        None => {
            if unsafe { PY_SERVING.get(copy) }.is_some() {
                let _ = PY_SERVING.remove(copy);
            }
        }
    }
    Some(())
}
