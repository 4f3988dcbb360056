//! Where the data of a socket syscall lives in user memory, from the
//! calling thread's saved registers: the `sock_*_length` tracepoints carry
//! the byte count but not the buffer.
//! x86_64 only: syscall numbers and the `pt_regs` layout are its user ABI.

use aya_ebpf::helpers::{
    bpf_get_current_task_btf, bpf_task_pt_regs,
    generated::{bpf_get_current_task, bpf_probe_read_user},
};

use crate::{maps::config, read};

// x86_64 syscall numbers and `struct pt_regs` offsets (both are user ABI).
const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_READV: u64 = 19;
const SYS_WRITEV: u64 = 20;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_SENDMSG: u64 = 46;
const SYS_RECVMSG: u64 = 47;
const PT_REGS_DX: usize = 96;
const PT_REGS_SI: usize = 104;
const PT_REGS_DI: usize = 112;
const PT_REGS_ORIG_AX: usize = 120;
const PT_REGS_SIZE: u64 = 168;
// struct user_msghdr: msg_iov at 16, msg_iovlen right after it at 24.
const MSGHDR_IOV: u64 = 16;

/// Where the data of a call lives in user memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UserData {
    /// A single buffer (read/write/sendto/recvfrom, OpenSSL), or 0 for an
    /// iovec array.
    pub buffer: u64,
    /// User address of the iovec array (0 with a single buffer).
    pub iovecs: u64,
    /// Entries in the iovec array.
    pub iovec_count: u64,
}

impl UserData {
    /// One buffer.
    pub fn single(buffer: u64) -> Self {
        Self {
            buffer,
            iovecs: 0,
            iovec_count: 0,
        }
    }

    /// Address and length of the first buffer the data went to or came from.
    pub fn first_segment(&self) -> Option<(u64, u64)> {
        if self.buffer != 0 {
            return Some((self.buffer, u64::MAX));
        }
        if self.iovec_count == 0 {
            return None;
        }
        let [start, len] = read::user::<[u64; 2]>(self.iovecs).ok()?;
        Some((start, len))
    }
}

/// The current socket syscall's file descriptor and data.
pub struct SyscallArgs {
    /// File descriptor (every socket syscall's first argument).
    pub fd: u32,
    /// Where the data is.
    pub data: UserData,
}

impl SyscallArgs {
    /// The arguments of the socket syscall the current thread is in, from
    /// its saved registers: through `bpf_task_pt_regs`, or with
    /// `PORTABLE` (kernels before 5.15 lack that helper) at the top of the
    /// task's kernel stack, where x86_64 saves them on syscall entry.
    #[inline(always)]
    pub fn current<const PORTABLE: bool>() -> Option<Self> {
        let regs = if PORTABLE {
            SavedRegisters::from_stack()?
        } else {
            SavedRegisters::from_task()
        };
        let fd = regs.di as u32;
        match regs.orig_ax {
            SYS_READ | SYS_WRITE | SYS_SENDTO | SYS_RECVFROM => Some(Self {
                fd,
                data: UserData::single(regs.si),
            }),
            SYS_READV | SYS_WRITEV => Some(Self {
                fd,
                data: UserData {
                    buffer: 0,
                    iovecs: regs.si,
                    iovec_count: regs.dx,
                },
            }),
            SYS_SENDMSG | SYS_RECVMSG => Some(Self {
                fd,
                data: {
                    // msg_iov and msg_iovlen are adjacent: one read. If it
                    // fails the call has no data to copy (its length is
                    // still reported).
                    let [iovecs, iovec_count] =
                        read::user::<[u64; 2]>(regs.si + MSGHDR_IOV).unwrap_or([0, 0]);
                    UserData {
                        buffer: 0,
                        iovecs,
                        iovec_count,
                    }
                },
            }),
            _ => None,
        }
    }
}

/// The saved user registers a socket syscall's arguments are in, in
/// `struct pt_regs` order from `dx` (offset 96) to `orig_ax` (120).
#[repr(C)]
struct SavedRegisters {
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
}

impl SavedRegisters {
    /// Through `bpf_task_pt_regs`, a typed (BTF) kernel pointer: the
    /// verifier lets the program load a `pt_regs` field from it directly
    /// (a faulting load is fixed up, as in a probe read), where
    /// `bpf_probe_read_kernel` costs a helper call per register.
    #[inline(always)]
    fn from_task() -> Self {
        let regs = task_registers();
        let register = |offset: usize| {
            // SAFETY: `offset` is a field of `struct pt_regs`; see above.
            unsafe { core::ptr::read_volatile(regs.wrapping_add(offset).cast::<u64>()) }
        };
        Self {
            dx: register(PT_REGS_DX),
            si: register(PT_REGS_SI),
            di: register(PT_REGS_DI),
            orig_ax: register(PT_REGS_ORIG_AX),
        }
    }

    /// From the top of the kernel stack ([`stack_registers`]): one read.
    #[inline(always)]
    fn from_stack() -> Option<Self> {
        read::kernel::<Self>(stack_registers()?, PT_REGS_DX as u32).ok()
    }
}

/// The current task's saved user registers (`struct pt_regs`, saved at
/// its syscall or a uprobe's trap), to read with probe reads: see
/// [`SyscallArgs::current`] for `PORTABLE`.
#[inline(always)]
pub fn user_registers<const PORTABLE: bool>() -> Option<*const u8> {
    if PORTABLE {
        stack_registers()
    } else {
        Some(task_registers())
    }
}

/// `bpf_task_pt_regs` of the current task (Linux >= 5.15).
#[inline(always)]
fn task_registers() -> *const u8 {
    // SAFETY: helpers valid in tracing programs; the task is `current`.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 }
}

/// Where x86_64's `task_pt_regs` finds the saved registers: the last
/// `struct pt_regs` of the task's kernel stack (`task->stack +
/// THREAD_SIZE`; no padding on x86_64 without FRED, which the kernels
/// that need this predate).
#[inline(always)]
fn stack_registers() -> Option<*const u8> {
    let cfg = config();
    // SAFETY: no preconditions; the task is `current`.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let stack = read::kernel::<u64>(task, cfg.off_task_stack).ok()?;
    Some((stack + u64::from(cfg.thread_size) - PT_REGS_SIZE) as *const u8)
}

/// The first bytes of the call's data, enough to tell a request or a
/// response start: up to 8 bytes of its first buffer, and how many.
#[inline(always)]
pub fn head_of(data: Option<&UserData>, total: u32) -> ([u8; 8], u32) {
    let mut head = [0; 8];
    let Some((start, len)) = data.and_then(UserData::first_segment) else {
        return (head, 0);
    };
    let want = core::cmp::min(core::cmp::min(len, u64::from(total)), 8) as u32;
    // SAFETY: `head` holds 8 >= want bytes.
    let rc = unsafe { bpf_probe_read_user(head.as_mut_ptr().cast(), want, start as *const _) };
    (head, if rc == 0 { want } else { 0 })
}
