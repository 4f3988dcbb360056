//! Userspace side of `agent-ebpf/src/probes/nginx.rs`: a uprobe and a
//! uretprobe on `ngx_chain_writer` in each nginx executable the selected
//! processes run, so the kernel knows which request each upstream send is
//! for and parents it exactly. The executables come from the same scan of
//! `/proc/PID/maps` as the OpenSSL libraries (`openssl`), and like them
//! each file is attached once, for every process that runs it. nginx is
//! not changed in any way; the probes go when the agent stops.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{ProgramError, UProbe, uprobe::UProbeScope},
};

/// The function probed: nginx writes every upstream request through it.
pub const FUNCTION: &str = "ngx_chain_writer";
const PROGRAMS: [&str; 2] = ["nginx_chain_writer_enter", "nginx_chain_writer_exit"];

/// Loads the programs (attached to nothing yet).
pub fn load(ebpf: &mut Ebpf) -> Result<(), ProgramError> {
    for program in PROGRAMS {
        uprobe(ebpf, program)?.load()?;
    }
    Ok(())
}

/// Attaches both programs to `FUNCTION` in the executable at `path`; on
/// failure none stays attached.
pub fn attach(ebpf: &mut Ebpf, path: &Path) -> Result<(), ProgramError> {
    let entry = uprobe(ebpf, PROGRAMS[0])?.attach(FUNCTION, path, UProbeScope::AllProcesses)?;
    let exit = uprobe(ebpf, PROGRAMS[1])
        .and_then(|probe| probe.attach(FUNCTION, path, UProbeScope::AllProcesses));
    if let Err(error) = exit {
        // Detaching a link just made only fails if it is gone already.
        let _ = uprobe(ebpf, PROGRAMS[0]).map(|probe| probe.detach(entry));
        return Err(error);
    }
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, ProgramError> {
    ebpf.program_mut(program)
        .ok_or(ProgramError::InvalidName {
            name: program.to_owned(),
        })?
        .try_into()
}
