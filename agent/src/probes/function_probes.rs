//! A library function probed at entry, and at return if it has a second
//! program (`nginx`, `python`, `node`): loaded once, attached per file, all
//! or none.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};

/// The function and its programs.
pub struct FunctionProbes {
    /// The function, by its symbol.
    pub function: &'static str,
    /// The program run at its entry.
    pub entry: &'static str,
    /// The program run at its return (a uretprobe), if any.
    pub exit: Option<&'static str>,
}

impl FunctionProbes {
    /// Loads the programs (attached to nothing yet).
    pub fn load(&self, ebpf: &mut Ebpf) -> Result<(), ProgramError> {
        for program in std::iter::once(self.entry).chain(self.exit) {
            uprobe(ebpf, program)?.load()?;
        }
        Ok(())
    }

    /// Attaches the programs to the function in the file at `path`, for
    /// every process that maps it, with `cookie` if any; on failure none
    /// stays attached.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        path: &Path,
        cookie: Option<u64>,
    ) -> Result<(), ProgramError> {
        let point = || UProbeAttachPoint {
            location: UProbeAttachLocation::Symbol(self.function),
            cookie,
        };
        let entry = uprobe(ebpf, self.entry)?.attach(point(), path, UProbeScope::AllProcesses)?;
        let Some(exit) = self.exit else {
            return Ok(());
        };
        let exit = uprobe(ebpf, exit)
            .and_then(|probe| probe.attach(point(), path, UProbeScope::AllProcesses));
        if let Err(error) = exit {
            // Detaching a link just made only fails if it is gone already.
            let _ = uprobe(ebpf, self.entry).map(|probe| probe.detach(entry));
            return Err(error);
        }
        Ok(())
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, ProgramError> {
    ebpf.program_mut(program)
        .ok_or(ProgramError::InvalidName {
            name: program.to_owned(),
        })?
        .try_into()
}
