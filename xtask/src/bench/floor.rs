//! What `kernel.bpf_stats_enabled` itself adds to each program run: an
//! empty program (`r0 = 0; exit`) on the socket hooks the agent uses, whose
//! measured run time is only the two clock reads the statistics take
//! around every run. The report shows it next to each hook's ns/run and
//! subtracts it where a target is about the programs' own cost.
//!
//! Loaded with the `bpf` syscall directly: two instructions do not need an
//! object file, and a raw tracepoint needs no BTF.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

/// The hooks the floor is measured on: those that run for every socket
/// call on the machine.
const HOOKS: [&str; 2] = ["sock_send_length", "sock_recv_length"];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `mov r0, 0` and `exit`.
const EMPTY_PROGRAM: [u64; 2] = [0xb7, 0x95];

/// The empty program, attached to [`HOOKS`] until dropped.
pub struct Floor {
    program: OwnedFd,
    _links: Vec<OwnedFd>,
}

/// Runs and run time of the empty program so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloorCount {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl FloorCount {
    /// ns per run between two counts, if it ran.
    pub fn ns_per_run_since(self, earlier: FloorCount) -> Option<f64> {
        let runs = self.run_cnt.checked_sub(earlier.run_cnt)?;
        let ns = self.run_time_ns.checked_sub(earlier.run_time_ns)?;
        (runs > 0).then(|| ns as f64 / runs as f64)
    }
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    /// The rest of `union bpf_attr` for this command, zero.
    rest: [u8; 64],
}

#[repr(C)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    pad: u32,
    cookie: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix for `cmd`,
    // whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Floor {
    /// Loads and attaches the empty program.
    pub fn attach() -> Result<Self> {
        let license = c"GPL";
        let mut prog_name = [0u8; 16];
        prog_name[..11].copy_from_slice(b"bench_floor");
        let program = bpf(
            BPF_PROG_LOAD,
            &ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
                insn_cnt: EMPTY_PROGRAM.len() as u32,
                insns: EMPTY_PROGRAM.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: 0,
                log_size: 0,
                log_buf: 0,
                kern_version: 0,
                prog_flags: 0,
                prog_name,
                rest: [0; 64],
            },
        )?;
        let links = HOOKS
            .iter()
            .map(|hook| {
                let name = std::ffi::CString::new(*hook)?;
                bpf(
                    BPF_RAW_TRACEPOINT_OPEN,
                    &RawTracepointAttr {
                        name: name.as_ptr() as u64,
                        prog_fd: program.as_raw_fd() as u32,
                        pad: 0,
                        cookie: 0,
                    },
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            program,
            _links: links,
        })
    }

    /// Its statistics now (from fdinfo, as for the agent's programs).
    pub fn count(&self) -> FloorCount {
        let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", self.program.as_raw_fd()))
            .unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        FloorCount {
            run_cnt: field("run_cnt:"),
            run_time_ns: field("run_time_ns:"),
        }
    }
}
