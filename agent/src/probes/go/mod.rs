//! Go programs: Go links its own TLS (`crypto/tls`), so the plaintext of
//! a Go service's HTTPS is read from `crypto/tls.(*Conn).Read` and `Write`
//! with uprobes on the executable (`agent-ebpf/src/probes/go_tls.rs`).
//!
//! For each executable a selected process runs, [`inspect`] reads:
//! - the Go version, from the build info ([`buildinfo`]);
//! - the functions' code, from `.gopclntab` ([`pclntab`]), which stripped
//!   binaries keep, and their `RET` instructions ([`rets`]): return values
//!   are read there, not with uretprobes, which break on Go's moving stacks;
//! - the struct offsets the kernel follows from a `*tls.Conn` to its
//!   socket, from DWARF or the table of known releases ([`offsets`]).
//!
//! - the goroutine functions (`runtime.newproc1`, net/http's client
//!   connection), whose probes give Go's client calls the request their
//!   goroutine works for as parent (`agent-ebpf/src/probes/go_context.rs`);
//!   they read registers only, so every release from Go 1.18 gets them.
//!
//! A Go binary without offsets (no DWARF, a release not in the table) gets
//! no TLS probes, a log line and a count (`sonde_go_unsupported`): its
//! HTTPS is not traced, never with offsets guessed from another release.

pub mod buildinfo;
pub mod offsets;
pub mod pclntab;
mod rets;

use std::{fmt, fs::File, path::Path};

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use object::{Object as _, ObjectSection as _, read::ReadCache};
use tracing::{info, warn};

use self::{
    buildinfo::{BuildInfo, GoVersion},
    offsets::GoOffsets,
    pclntab::PclntabError,
};
use crate::{
    model::error::ErrorChain,
    telemetry::{Counter, Stats},
};

/// A probed function: name, entry program, and the program put on each
/// of its `RET`s (none: entry only).
type Function = (&'static str, &'static str, Option<&'static str>);

/// The `crypto/tls` functions (agent-ebpf/src/probes/go_tls.rs).
const FUNCTIONS: [Function; 3] = [
    // Marks the process as a Go TLS user before its connection's first
    // record moves (see agent-ebpf/src/go.rs).
    (
        "crypto/tls.(*Conn).handshakeContext",
        "go_tls_handshake_enter",
        None,
    ),
    (
        "crypto/tls.(*Conn).Read",
        "go_tls_read_enter",
        Some("go_tls_read_return"),
    ),
    // What `Write` sends, at the entry of the function it hands its
    // plaintext to after the handshake: see go_tls.rs for why not at
    // `Write`'s RETs.
    (
        "crypto/tls.(*Conn).writeRecordLocked",
        "go_tls_write_record_enter",
        None,
    ),
];

/// The functions that follow goroutines for their trace context
/// (agent-ebpf/src/probes/go_context.rs): `runtime.newproc1`, in every Go
/// program, and net/http's client, in those that link it.
const CONTEXT_FUNCTIONS: [Function; 3] = [
    (
        "runtime.newproc1",
        "go_newproc_enter",
        Some("go_newproc_return"),
    ),
    (
        "net/http.(*persistConn).roundTrip",
        "go_round_trip_enter",
        None,
    ),
    (
        "net/http.(*persistConn).writeLoop",
        "go_write_loop_enter",
        None,
    ),
];

/// The program the read `RET` probe tail-calls, and its program array.
const CAPTURE: &str = "go_tls_capture";
const TAILS: &str = "GO_TLS_TAILS";

/// Why a Go executable could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    /// The file could not be read.
    #[error("reading the executable")]
    Read(#[source] std::io::Error),
    /// Not an ELF file the agent can read.
    #[error("reading the executable's ELF sections")]
    Elf(#[source] object::Error),
    /// The function table could not be read.
    #[error("reading .gopclntab")]
    Pclntab(#[source] PclntabError),
    /// A function's code is not in the file.
    #[error("the code of {0} is not in the file")]
    NoCode(&'static str),
    /// The kernel object lacks a program or map.
    #[error("the kernel object has no {0}")]
    Missing(&'static str),
    /// A program could not be loaded or attached.
    #[error("loading or attaching {program}")]
    Program {
        /// Program name.
        program: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// The capture program could not be put in its program array.
    #[error("putting {CAPTURE} in {TAILS}")]
    Tail(#[source] aya::maps::MapError),
}

/// One uprobe: a program and where in the file it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoProbe {
    /// Program name.
    pub program: &'static str,
    /// File offset of the instruction.
    pub file_offset: u64,
}

/// The Go version a binary names, as far as it can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// A release `go1.N.P`.
    Known(GoVersion),
    /// Build info in a form this agent does not read (before Go 1.18, or
    /// a development build): its text, if any.
    Other(String),
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Known(version) => version.fmt(f),
            Self::Other(text) if text.is_empty() => f.write_str("a Go release before go1.18"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

/// Where a binary's struct offsets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetsFrom {
    /// Its own DWARF.
    Dwarf,
    /// The table of releases the project verified ([`offsets::KNOWN`]).
    Table,
}

/// What the Go probes need from one executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoBinary {
    /// The Go release it was built with.
    pub release: Release,
    /// Its struct offsets and their origin; `None` if neither its DWARF
    /// nor the table has them.
    pub offsets: Option<(GoOffsets, OffsetsFrom)>,
    /// Why DWARF gave none, if it did not (for the log).
    pub dwarf_error: Option<String>,
    /// Where the TLS probes go; empty if it does not use `crypto/tls`.
    pub probes: Vec<GoProbe>,
    /// Where the goroutine probes go; empty for releases before Go 1.18
    /// (whose register ABI the kernel side does not assume).
    pub context_probes: Vec<GoProbe>,
}

/// Reads what the Go probes need from the executable at `path`; `None` if
/// it is not a Go program.
pub fn inspect(path: &Path) -> Result<Option<GoBinary>, GoError> {
    let file = File::open(path).map_err(GoError::Read)?;
    let data = ReadCache::new(file);
    let elf = object::File::parse(&data).map_err(GoError::Elf)?;
    let Some(info) = elf.section_by_name(".go.buildinfo") else {
        return Ok(None);
    };
    let info = info.data().map_err(GoError::Elf)?;
    let release = match buildinfo::parse(info) {
        None => return Ok(None),
        Some(BuildInfo::Old) => Release::Other(String::new()),
        Some(BuildInfo::Version(text)) => match GoVersion::parse(&text) {
            Some(version) => Release::Known(version),
            None => Release::Other(text),
        },
    };
    let (offsets, dwarf_error) = match offsets::from_dwarf(&elf) {
        Ok(offsets) => (Some((offsets, OffsetsFrom::Dwarf)), None),
        Err(error) => {
            let table = match release {
                Release::Known(version) => offsets::known(version),
                Release::Other(_) => None,
            };
            (
                table.map(|offsets| (offsets, OffsetsFrom::Table)),
                Some(error.to_string()),
            )
        }
    };
    let table = elf
        .section_by_name(".gopclntab")
        .ok_or(GoError::Pclntab(PclntabError::Corrupt))?;
    let table = table.data().map_err(GoError::Elf)?;
    let text = elf
        .section_by_name(".text")
        .ok_or(GoError::NoCode(FUNCTIONS[0].0))?;
    let names: Vec<&str> = FUNCTIONS
        .iter()
        .chain(&CONTEXT_FUNCTIONS)
        .map(|(name, _, _)| *name)
        .collect();
    let found = pclntab::find_functions(table, text.address(), &names).map_err(GoError::Pclntab)?;
    // The linker drops what a program does not use: no TLS probes without
    // crypto/tls, no client probes without net/http's client.
    let probes = probes_of(&text, &found, &FUNCTIONS)?;
    let context_probes = match release {
        Release::Known(_) => {
            let (runtime, client) = CONTEXT_FUNCTIONS.split_at(1);
            let mut probes = probes_of(&text, &found, runtime)?;
            probes.extend(probes_of(&text, &found, client)?);
            probes
        }
        Release::Other(_) => Vec::new(),
    };
    Ok(Some(GoBinary {
        release,
        offsets,
        dwarf_error,
        probes,
        context_probes,
    }))
}

/// Where the probes of `functions` go in `text`: each function's entry
/// and, for those with a return program, each `RET`. Empty unless
/// `found` has all of them.
fn probes_of<'data, R: object::ReadRef<'data>>(
    text: &object::Section<'data, '_, R>,
    found: &std::collections::HashMap<String, pclntab::FuncRange>,
    functions: &[Function],
) -> Result<Vec<GoProbe>, GoError> {
    if !functions
        .iter()
        .all(|(name, _, _)| found.contains_key(*name))
    {
        return Ok(Vec::new());
    }
    let (text_offset, _) = text.file_range().ok_or(GoError::NoCode(FUNCTIONS[0].0))?;
    let file_offset = |address: u64| address - text.address() + text_offset;
    let mut probes = Vec::new();
    for &(name, entry, ret) in functions {
        let range = found[name];
        probes.push(GoProbe {
            program: entry,
            file_offset: file_offset(range.entry),
        });
        if let Some(ret) = ret {
            let code = text
                .data_range(range.entry, range.end - range.entry)
                .map_err(GoError::Elf)?
                .ok_or(GoError::NoCode(name))?;
            probes.extend(
                rets::ret_addresses(code, range.entry)
                    .into_iter()
                    .map(|address| GoProbe {
                        program: ret,
                        file_offset: file_offset(address),
                    }),
            );
        }
    }
    Ok(probes)
}

/// The loaded Go TLS programs.
pub struct GoProbes {
    stats: std::sync::Arc<Stats>,
}

impl GoProbes {
    /// Loads the programs (attached to nothing yet) and links the capture
    /// tail call.
    pub fn load(ebpf: &mut Ebpf, stats: std::sync::Arc<Stats>) -> Result<Self, GoError> {
        let programs = FUNCTIONS
            .iter()
            .chain(&CONTEXT_FUNCTIONS)
            .flat_map(|(_, entry, ret)| std::iter::once(*entry).chain(*ret))
            .chain([CAPTURE]);
        for program in programs {
            uprobe(ebpf, program)?
                .load()
                .map_err(|source| GoError::Program { program, source })?;
        }
        let program_error = |source| GoError::Program {
            program: CAPTURE,
            source,
        };
        let fd = uprobe(ebpf, CAPTURE)?
            .fd()
            .map_err(program_error)?
            .try_clone()
            .map_err(|e| program_error(ProgramError::IOError(e)))?;
        let mut tails: ProgramArray<_> = ebpf
            .map_mut(TAILS)
            .ok_or(GoError::Missing(TAILS))?
            .try_into()
            .map_err(GoError::Tail)?;
        tails.set(0, &fd, 0).map_err(GoError::Tail)?;
        Ok(Self { stats })
    }

    /// Puts the probes on the executable at `path` if it is Go and its
    /// offsets are known: `None` if it is not Go, else whether its TLS is
    /// traced. Logs the release either way; counts the unsupported.
    pub fn attach(&self, ebpf: &mut Ebpf, path: &Path) -> Option<bool> {
        let binary = examine(path, &self.stats)?;
        if !binary.context_probes.is_empty() {
            match attach_all(ebpf, path, &binary.context_probes, 0) {
                Ok(()) => info!(
                    executable = %path.display(),
                    probes = binary.context_probes.len(),
                    "Go goroutine probes attached"
                ),
                Err(error) => {
                    self.stats.add(Counter::TlsAttachFailed, 1);
                    warn!(
                        executable = %path.display(),
                        error = %ErrorChain(&error),
                        "this Go executable's client calls get no parents"
                    );
                }
            }
        }
        let Some((offsets, _)) = binary.offsets else {
            return Some(false);
        };
        if binary.probes.is_empty() {
            info!(executable = %path.display(), "Go executable without crypto/tls");
            return Some(false);
        }
        match attach_all(ebpf, path, &binary.probes, offsets.cookie()) {
            Ok(()) => {
                info!(
                    executable = %path.display(),
                    go = %binary.release,
                    probes = binary.probes.len(),
                    "Go TLS probes attached"
                );
                Some(true)
            }
            Err(error) => {
                self.stats.add(Counter::TlsAttachFailed, 1);
                warn!(
                    executable = %path.display(),
                    error = %ErrorChain(&error),
                    "the HTTPS of this Go executable's processes is not traced"
                );
                Some(false)
            }
        }
    }
}

/// Attaches every probe, or none: on a failure the ones made are detached.
/// `cookie` is each uprobe's attach cookie.
fn attach_all(
    ebpf: &mut Ebpf,
    path: &Path,
    probes: &[GoProbe],
    cookie: u64,
) -> Result<(), GoError> {
    let mut links = Vec::new();
    for probe in probes {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
            cookie: Some(cookie),
        };
        let attached = uprobe(ebpf, probe.program).and_then(|program| {
            program
                .attach(point, path, UProbeScope::AllProcesses)
                .map_err(|source| GoError::Program {
                    program: probe.program,
                    source,
                })
        });
        match attached {
            Ok(link) => links.push((probe.program, link)),
            Err(error) => {
                for (program, link) in links {
                    if let Ok(program) = uprobe(ebpf, program) {
                        // Only fails if the link is gone already.
                        let _ = program.detach(link);
                    }
                }
                return Err(error);
            }
        }
    }
    Ok(())
}

/// A program of the object as a uprobe.
fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, GoError> {
    ebpf.program_mut(program)
        .ok_or(GoError::Missing(program))?
        .try_into()
        .map_err(|source| GoError::Program { program, source })
}

/// Looks at the executable at `path`, which a selected process runs: if
/// it is Go, logs its release and whether its processes get the Go probes;
/// counts those that cannot (`sonde_go_unsupported`).
fn examine(path: &Path, stats: &Stats) -> Option<GoBinary> {
    let binary = match inspect(path) {
        Ok(binary) => binary?,
        Err(error) => {
            warn!(executable = %path.display(), error = %ErrorChain(&error), "could not tell whether this executable is a Go program");
            return None;
        }
    };
    match binary.offsets {
        Some((_, from)) => info!(
            executable = %path.display(),
            go = %binary.release,
            offsets = ?from,
            "Go executable: struct offsets known"
        ),
        None => {
            stats.add(Counter::GoUnsupported, 1);
            warn!(
                executable = %path.display(),
                go = %binary.release,
                dwarf = binary.dwarf_error.as_deref().unwrap_or(""),
                "Go release without known struct offsets: its processes' HTTPS is not traced (plain HTTP is, at the socket level)"
            );
        }
    }
    Some(binary)
}

#[cfg(test)]
mod test_binaries {
    //! Go programs built for the tests by tests/apps/go_build.sh with the
    //! toolchains `cargo xtask setup` installs.

    use std::{
        path::{Path, PathBuf},
        process::Command,
        sync::{Mutex, PoisonError},
    };

    /// Serialises builds: two `go build`s of one output race.
    static BUILDING: Mutex<()> = Mutex::new(());

    /// tests/apps/go_https, built with Go 1.`minor`, stripped
    /// (`-ldflags=-s -w`) or not; reused while newer than its source.
    pub fn go_https(minor: u32, stripped: bool) -> PathBuf {
        let _guard = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
        let apps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/apps");
        let strip = if stripped { "stripped" } else { "full" };
        let out = std::env::temp_dir()
            .join("sonde-go-unit")
            .join(format!("go_https-1.{minor}-{strip}"));
        let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
        if modified(&out) <= modified(&apps.join("go_https/main.go")) {
            let status = Command::new(apps.join("go_build.sh"))
                .args(["go_https", &minor.to_string(), strip])
                .arg(&out)
                .status()
                .expect("running build.sh");
            assert!(status.success(), "building go_https with Go 1.{minor}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use object::ObjectSymbol as _;

    use super::{test_binaries::go_https, *};

    #[test]
    fn reads_version_and_offsets_of_go_binaries() {
        let v = |minor, patch| Release::Known(GoVersion { minor, patch });
        let go119 = inspect(&go_https(19, false))
            .expect("readable")
            .expect("a Go binary");
        assert_eq!(go119.release, v(19, 8));
        assert_eq!(
            go119.offsets,
            Some((
                offsets::known(GoVersion {
                    minor: 19,
                    patch: 8
                })
                .expect("in the table"),
                OffsetsFrom::Dwarf
            )),
            "DWARF agrees with the table"
        );
        let go123 = inspect(&go_https(23, false))
            .expect("readable")
            .expect("Go");
        let table = offsets::known(GoVersion {
            minor: 23,
            patch: 5,
        })
        .expect("in the table");
        assert_eq!(go123.offsets, Some((table, OffsetsFrom::Dwarf)));
        // Stripped: no DWARF, the table.
        let stripped = inspect(&go_https(23, true)).expect("readable").expect("Go");
        assert_eq!(stripped.release, v(23, 5));
        assert_eq!(stripped.offsets, Some((table, OffsetsFrom::Table)));
        assert_eq!(stripped.dwarf_error.as_deref(), Some("no DWARF"));
        // A release the table lacks, stripped: no offsets at all.
        let unknown = inspect(&go_https(22, true)).expect("readable").expect("Go");
        assert_eq!(unknown.release, v(22, 12));
        assert_eq!(unknown.offsets, None);
        // Not Go.
        assert_eq!(inspect(Path::new("/usr/bin/curl")).expect("readable"), None);
    }

    /// The probes sit where the symbol table puts the functions, the
    /// return probes on `RET` opcodes; a stripped build gets the same.
    #[test]
    fn places_probes_from_pclntab_where_the_symbols_say() {
        let path = go_https(19, false);
        let binary = inspect(&path).expect("readable").expect("Go");
        let data = std::fs::read(&path).expect("read");
        let elf = object::File::parse(&*data).expect("ELF");
        let text = elf.section_by_name(".text").expect(".text");
        let (text_offset, _) = text.file_range().expect("in the file");
        for (name, entry, ret) in FUNCTIONS.into_iter().chain(CONTEXT_FUNCTIONS) {
            let all = binary.probes.iter().chain(&binary.context_probes);
            let symbol = elf
                .symbols()
                .find(|s| s.name() == Ok(name))
                .unwrap_or_else(|| panic!("{name} in the symbol table"));
            let offset = symbol.address() - text.address() + text_offset;
            assert!(
                all.clone().any(|p| *p
                    == GoProbe {
                        program: entry,
                        file_offset: offset
                    }),
                "{name} entry: {binary:?}"
            );
            if let Some(ret) = ret {
                let rets: Vec<u64> = all
                    .filter(|p| p.program == ret)
                    .map(|p| p.file_offset)
                    .collect();
                assert!(!rets.is_empty(), "{name} returns");
                for at in rets {
                    assert!(at > offset && at < offset + symbol.size(), "{name}");
                    assert_eq!(data[at as usize], 0xc3, "{name}: RET at {at:#x}");
                }
            }
        }
        let stripped = inspect(&go_https(23, true)).expect("readable").expect("Go");
        let full = inspect(&go_https(23, false))
            .expect("readable")
            .expect("Go");
        assert_eq!(stripped.probes, full.probes);
        assert_eq!(stripped.context_probes, full.context_probes);
        assert!(!stripped.probes.is_empty());
        assert_eq!(stripped.context_probes.len(), 4, "{stripped:?}");
    }
}
