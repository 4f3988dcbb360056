//! Userspace side of `agent-ebpf/src/probes/openssl.rs`: uprobes and
//! uretprobes on OpenSSL's `SSL_read`, `SSL_read_ex`, `SSL_write`,
//! `SSL_write_ex` and `SSL_do_handshake`, and a uprobe on `SSL_free`
//! (OpenSSL 1.1.x and 3.x), whose
//! programs report TLS plaintext as socket data events (`source =
//! SOURCE_TLS`; the read return probe tail-calls `tls_capture` for that,
//! through `TLS_TAILS`). Needs uprobes (`CONFIG_UPROBE_EVENTS`); the
//! programs are loaded once, with the others, and attached here to each
//! libssl file the selected processes map, and to each of their executables
//! that exports the functions itself from a statically linked OpenSSL
//! (Node.js does).
//!
//! A uprobe is set on a file, not on a process: once a libssl is attached,
//! every process that maps it, now or later, runs the programs, which keep
//! only the kernel's targets. So each library file is attached once,
//! identified by the device and inode `/proc/PID/maps` shows for it. Those
//! are the identity the kernel's uprobe uses too (for a file on overlayfs,
//! the underlying file's), so two containers sharing an image layer share
//! one attachment and their calls are not reported twice.
//!
//! The same pass puts the `nginx` probes on executables that are nginx,
//! the Go TLS probes (`super::go`) on Go executables, the Python context
//! probes on CPython, and the Node.js context probe on Node executables,
//! whose processes also get the Node context script (`super::node`).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use agent_common::socket_data::TLS_CAPTURE_TAIL;
use aya::{
    Ebpf,
    maps::{MapError, ProgramArray},
    programs::{ProgramError, UProbe, uprobe::UProbeScope},
};
use object::{
    Endianness, SectionIndex,
    elf::{self, FileHeader64, Sym64},
    read::{
        ReadCache, StringTable,
        elf::{FileHeader as _, SectionHeader as _, Sym as _},
    },
};
use tracing::{debug, info, warn};

use super::{
    FeatureState,
    function_probes::FunctionProbes,
    go::GoProbes,
    nginx,
    node::{self, NodeContext},
    python,
};
use crate::{
    model::error::ErrorChain,
    telemetry::{Counter, Gauge, Stats},
};

/// One hooked library function and its programs.
struct Hook {
    function: &'static str,
    entry: &'static str,
    exit: Option<&'static str>,
}

impl Hook {
    /// The programs attached to the function, those of the portable
    /// capture path if `portable`.
    fn programs(&self, portable: bool) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.entry)
            .chain(self.exit)
            .map(move |program| for_capture_path(program, portable))
    }
}

/// Every OpenSSL program the agent loads, on either capture path.
#[cfg(test)]
pub fn program_names() -> impl Iterator<Item = &'static str> {
    [false, true].into_iter().flat_map(|portable| {
        HOOKS
            .iter()
            .flat_map(move |hook| hook.programs(portable))
            .chain([for_capture_path(TLS_CAPTURE, portable)])
    })
}

/// `program`, or its twin for the portable capture path (kernels without
/// `bpf_loop`, see `CaptureHooks::TcpFexitPortable`): the programs that
/// capture or scan have one each.
fn for_capture_path(program: &'static str, portable: bool) -> &'static str {
    match (program, portable) {
        ("ssl_read_exit", true) => "ssl_read_exit_portable",
        ("ssl_write_exit", true) => "ssl_write_exit_portable",
        (TLS_CAPTURE, true) => "tls_capture_portable",
        (program, _) => program,
    }
}

/// What is attached to each library. `SSL_read_ex` and `SSL_write_ex`
/// share the return program of their older form: the entry programs
/// record where the plaintext goes, and the return is read the same way.
const HOOKS: &[Hook] = &[
    Hook {
        function: "SSL_read",
        entry: "ssl_read_enter",
        exit: Some("ssl_read_exit"),
    },
    Hook {
        function: "SSL_read_ex",
        entry: "ssl_read_ex_enter",
        exit: Some("ssl_read_exit"),
    },
    Hook {
        function: "SSL_write",
        entry: "ssl_write_enter",
        exit: Some("ssl_write_exit"),
    },
    Hook {
        function: "SSL_write_ex",
        entry: "ssl_write_ex_enter",
        exit: Some("ssl_write_exit"),
    },
    Hook {
        function: "SSL_do_handshake",
        entry: "ssl_handshake_enter",
        exit: Some("ssl_handshake_exit"),
    },
    // Unties the freed object (memory-BIO programs tie it by clues that
    // a reused address would not give again).
    Hook {
        function: "SSL_free",
        entry: "ssl_free_enter",
        exit: None,
    },
];

/// The program the read return probe tail-calls to report the plaintext
/// (scanning for `traceparent` and capturing in one program are more than
/// the verifier accepts), and the program array it is called through.
const TLS_CAPTURE: &str = "tls_capture";
const TLS_TAILS: &str = "TLS_TAILS";

/// Why TLS capture could not be set up, or not on one library.
#[derive(Debug, thiserror::Error)]
pub enum OpensslError {
    /// The kernel object lacks a program.
    #[error("the kernel object has no OpenSSL program {program}")]
    Missing {
        /// Program name.
        program: &'static str,
    },
    /// A program could not be loaded.
    #[error("loading the OpenSSL program {program}")]
    Load {
        /// Program name.
        program: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// The kernel object lacks a map.
    #[error("the kernel object has no map {map}")]
    NoMap {
        /// Map name.
        map: &'static str,
    },
    /// The capture program could not be put in its program array.
    #[error("putting {TLS_CAPTURE} in {TLS_TAILS}")]
    Tail(#[source] MapError),
    /// The library file could not be read.
    #[error("reading {path}")]
    Read {
        /// The library, as the agent opened it.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The library is not an ELF file the agent can read symbols from.
    #[error("reading the symbols of {path}")]
    Symbols {
        /// The library.
        path: PathBuf,
        /// Cause.
        #[source]
        source: object::Error,
    },
    /// The library exports none of the traced functions (not OpenSSL's
    /// libssl, or one built without them; for an executable, the common
    /// case, not a failure).
    #[error("{path} defines none of SSL_read, SSL_write, SSL_do_handshake")]
    NoFunctions {
        /// The library.
        path: PathBuf,
    },
    /// A program could not be attached to a function (of the library the
    /// caller names).
    #[error("attaching {program} to {function}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Library function.
        function: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
}

/// Identity of a file: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number (`makedev(major, minor)`).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// A file some process maps that may define OpenSSL's functions: a
/// libssl, or the process's executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslLibrary {
    /// Where the agent opens it: through the process's root
    /// (`/proc/PID/root/...`), so a container's own library is found.
    pub path: PathBuf,
    /// The mapped file, as `/proc/PID/maps` identifies it.
    pub file: FileId,
    /// What the file is to the process.
    pub role: FileRole,
}

/// What a mapped file is to the process that maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    /// A `libssl.so*`.
    Libssl,
    /// Its executable: most define no OpenSSL function, which is then no
    /// failure.
    Executable,
    /// A `libpython3*` (CPython built shared): defines no OpenSSL function,
    /// but may carry the Python context probes (`super::python`).
    Libpython,
}

/// Puts the TLS probes on library files (a trait so that discovery can be
/// tested without a kernel).
pub trait TlsAttach: Send {
    /// Attaches the probes to `library`, which process `pid` maps, for
    /// every process, unless its file was handled already; returns whether
    /// the file carries them (now or from before). Failures are logged and
    /// counted: they cost TLS visibility for that library's users, nothing
    /// else.
    fn attach(&mut self, pid: u32, library: &SslLibrary) -> bool;

    /// Process `pid` exited or is no longer selected.
    fn forget(&mut self, pid: u32);
}

/// The loaded OpenSSL programs and the libraries they are attached to.
pub struct OpensslProbes {
    /// Shared with [`super::ProbeHandle`], which keeps every program alive;
    /// locked only to attach, as libraries are found.
    ebpf: Arc<Mutex<Ebpf>>,
    stats: Arc<Stats>,
    /// Files attached or tried, and whether they carry the probes: each is
    /// handled once, so a library that failed is not retried for every
    /// process that maps it.
    seen: HashMap<FileId, bool>,
    attached: u64,
    /// The nginx programs loaded (else nginx executables are left alone).
    nginx: bool,
    /// Why the Python context programs did not load (else they did).
    python_error: Option<String>,
    /// The Node.js context: its program and script worker, if on.
    node: Result<NodeContext, FeatureState>,
    /// Node executables the Node.js context program is attached to.
    node_files: HashSet<FileId>,
    /// The Go programs, if they loaded (else Go processes are traced at
    /// the socket level only).
    go: Option<GoProbes>,
    /// Why they did not load.
    go_error: Option<String>,
    /// The portable capture path's programs are the ones loaded.
    portable: bool,
}

impl OpensslProbes {
    /// Loads the programs (not attached to anything yet), those of the
    /// portable capture path if `portable`.
    /// `node_inspector`: give Node processes the context script.
    pub fn load(
        ebpf: Arc<Mutex<Ebpf>>,
        stats: Arc<Stats>,
        portable: bool,
        node_inspector: bool,
    ) -> Result<Self, OpensslError> {
        let nginx;
        let python;
        let node;
        let go;
        {
            let mut guard = ebpf.lock().unwrap_or_else(PoisonError::into_inner);
            let mut loaded = HashSet::new();
            for program in HOOKS.iter().flat_map(|hook| hook.programs(portable)) {
                if loaded.insert(program) {
                    uprobe(&mut guard, program)?
                        .load()
                        .map_err(|source| OpensslError::Load { program, source })?;
                }
            }
            link_capture_tail(&mut guard, for_capture_path(TLS_CAPTURE, portable))?;
            nginx = nginx::PROBES
                .load(&mut guard)
                .inspect_err(|error| {
                    warn!(error = %ErrorChain(error), "nginx upstream calls will not get exact parents");
                })
                .is_ok();
            python = python::PROBES
                .load(&mut guard)
                .map_err(|error| ErrorChain(&error).to_string());
            node = if node_inspector {
                node::PROBES
                    .load(&mut guard)
                    .map_err(|error| FeatureState::Off(ErrorChain(&error).to_string()))
                    .and_then(|()| {
                        NodeContext::start(Arc::clone(&stats))
                            .map_err(|error| FeatureState::Off(ErrorChain(&error).to_string()))
                    })
            } else {
                Err(FeatureState::Disabled)
            };
            go = GoProbes::load(&mut guard, Arc::clone(&stats))
                .map_err(|error| ErrorChain(&error).to_string());
        }
        Ok(Self {
            ebpf,
            stats,
            seen: HashMap::new(),
            attached: 0,
            nginx,
            python_error: python.err(),
            node,
            node_files: HashSet::new(),
            go_error: go.as_ref().err().cloned(),
            go: go.ok(),
            portable,
        })
    }

    /// Whether the Python context programs run, for the feature report
    /// (which logs why not).
    pub fn python_state(&self) -> FeatureState {
        match &self.python_error {
            None => FeatureState::On,
            Some(error) => FeatureState::Off(error.clone()),
        }
    }

    /// Whether the Node.js context runs, for the feature report (which
    /// logs why not).
    pub fn node_state(&self) -> FeatureState {
        match &self.node {
            Ok(_) => FeatureState::On,
            Err(state) => state.clone(),
        }
    }

    /// Whether the Go programs run, for the feature report (which logs why
    /// not).
    pub fn go_state(&self) -> FeatureState {
        match &self.go_error {
            None => FeatureState::On,
            Some(error) => FeatureState::Off(error.clone()),
        }
    }

    /// Attaches every hook whose function `library` defines; returns how
    /// many. On any failure the links already made on this library are
    /// detached, so no function is left with its entry program but not its
    /// return one.
    fn try_attach(&mut self, library: &SslLibrary) -> Result<usize, OpensslError> {
        let path = &library.path;
        let defined = defined_functions(path)?;
        if library.role == FileRole::Executable && self.nginx && defined.contains(nginx::FUNCTION) {
            self.attach_nginx(path);
        }
        if self.python_error.is_none() && defined.contains(python::FUNCTION) {
            self.attach_python(path);
        }
        if library.role == FileRole::Executable
            && self.node.is_ok()
            && defined.contains(node::FUNCTION)
            && defined.contains(node::NODE_MARKER)
            && self.attach_node(path)
        {
            self.node_files.insert(library.file);
        }
        let hooks: Vec<&Hook> = HOOKS
            .iter()
            .filter(|hook| defined.contains(hook.function))
            .collect();
        // `SSL_free` alone is no OpenSSL to trace.
        if hooks.iter().all(|hook| hook.exit.is_none()) {
            return Err(OpensslError::NoFunctions { path: path.clone() });
        }
        let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        let mut links = Vec::new();
        for hook in &hooks {
            for program in hook.programs(self.portable) {
                let attached = uprobe(&mut ebpf, program).and_then(|probe| {
                    probe
                        .attach(hook.function, path, UProbeScope::AllProcesses)
                        .map_err(|source| OpensslError::Attach {
                            program,
                            function: hook.function,
                            source,
                        })
                });
                match attached {
                    Ok(link) => links.push((program, link)),
                    Err(error) => {
                        for (program, link) in links {
                            if let Ok(probe) = uprobe(&mut ebpf, program) {
                                // Detaching a link just made only fails if
                                // it is gone already.
                                let _ = probe.detach(link);
                            }
                        }
                        return Err(error);
                    }
                }
            }
        }
        Ok(hooks.len())
    }
}

impl OpensslProbes {
    /// Puts the nginx probes on the nginx executable at `path`; a failure
    /// costs exact parents for its upstream calls (they stay never wrong).
    fn attach_nginx(&self, path: &Path) {
        self.attach_context_probes(
            &nginx::PROBES,
            path,
            None,
            "nginx upstream probes attached",
            "nginx upstream calls of this executable will not get exact parents",
        );
    }

    /// Puts the Node.js context probe on the Node executable at `path`;
    /// whether it is on.
    fn attach_node(&self, path: &Path) -> bool {
        self.attach_context_probes(
            &node::PROBES,
            path,
            None,
            "Node.js context probe attached",
            "this Node.js executable's calls will not get exact parents",
        )
    }

    /// Puts the Python context probes on the interpreter at `path` if its
    /// release is known; else its calls keep the thread rule (never
    /// wrong, less often linked), logged and counted.
    fn attach_python(&self, path: &Path) {
        let lost = "this Python's asyncio calls will not get exact parents";
        let interpreter = match python::inspect(path) {
            Ok(interpreter) => interpreter,
            Err(error) => {
                warn!(file = %path.display(), error = %ErrorChain(&error), "{lost}");
                return;
            }
        };
        let Some(cookie) = interpreter.cookie else {
            self.stats.add(Counter::PythonUnsupported, 1);
            warn!(
                file = %path.display(),
                python = %interpreter.version,
                "CPython release without a known layout: its asyncio calls are parented by thread only"
            );
            return;
        };
        let attached = format!("Python {} context probes attached", interpreter.version);
        self.attach_context_probes(&python::PROBES, path, Some(cookie), &attached, lost);
    }

    /// Puts a runtime's context probes on the file at `path`, logging
    /// `attached`, or `lost` with the error: a failure costs exact parents
    /// for its processes' calls (they stay never wrong). Whether they are
    /// on.
    fn attach_context_probes(
        &self,
        probes: &FunctionProbes,
        path: &Path,
        cookie: Option<u64>,
        attached: &str,
        lost: &str,
    ) -> bool {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        match probes.attach(&mut ebpf, path, cookie) {
            Ok(()) => {
                info!(file = %path.display(), "{attached}");
                true
            }
            Err(error) => {
                warn!(file = %path.display(), error = %ErrorChain(&error), "{lost}");
                false
            }
        }
    }
}

impl TlsAttach for OpensslProbes {
    fn attach(&mut self, pid: u32, library: &SslLibrary) -> bool {
        let carries = self.attach_file(library);
        if self.node_files.contains(&library.file)
            && let Ok(node) = &self.node
        {
            node.install(pid);
        }
        carries
    }

    fn forget(&mut self, pid: u32) {
        if let Ok(node) = &self.node {
            node.forget(pid);
        }
    }
}

impl OpensslProbes {
    /// [`TlsAttach::attach`] for the file, once per file.
    fn attach_file(&mut self, library: &SslLibrary) -> bool {
        if let Some(&carries) = self.seen.get(&library.file) {
            return carries;
        }
        if library.role == FileRole::Executable
            && let Some(go) = &self.go
            && let Some(traced) = go.attach(
                &mut self.ebpf.lock().unwrap_or_else(PoisonError::into_inner),
                &library.path,
            )
        {
            self.seen.insert(library.file, traced);
            return traced;
        }
        let result = self.try_attach(library);
        self.seen.insert(library.file, result.is_ok());
        match result {
            Ok(functions) => {
                self.attached += 1;
                self.stats
                    .set_gauge(Gauge::TlsLibrariesAttached, self.attached);
                info!(library = %library.path.display(), functions, "TLS probes attached");
                true
            }
            Err(OpensslError::NoFunctions { .. }) if library.role != FileRole::Libssl => {
                debug!(file = %library.path.display(), "no OpenSSL of its own");
                false
            }
            Err(error) => {
                self.stats.add(Counter::TlsAttachFailed, 1);
                warn!(
                    library = %library.path.display(),
                    error = %ErrorChain(&error),
                    "TLS traffic of the processes using this library is not traced"
                );
                false
            }
        }
    }
}

/// Loads the capture program and puts it where the read return probe
/// tail-calls it.
fn link_capture_tail(ebpf: &mut Ebpf, program: &'static str) -> Result<(), OpensslError> {
    let load_error = |source| OpensslError::Load { program, source };
    let capture = uprobe(ebpf, program)?;
    capture.load().map_err(load_error)?;
    let fd = capture
        .fd()
        .map_err(load_error)?
        .try_clone()
        .map_err(|e| load_error(ProgramError::IOError(e)))?;
    let mut tails: ProgramArray<_> = ebpf
        .map_mut(TLS_TAILS)
        .ok_or(OpensslError::NoMap { map: TLS_TAILS })?
        .try_into()
        .map_err(OpensslError::Tail)?;
    tails
        .set(TLS_CAPTURE_TAIL, &fd, 0)
        .map_err(OpensslError::Tail)
}

/// A program of the object as a uprobe.
fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, OpensslError> {
    ebpf.program_mut(program)
        .ok_or(OpensslError::Missing { program })?
        .try_into()
        .map_err(|source| OpensslError::Load { program, source })
}

/// The hooked functions (and nginx's, CPython's and libuv's) `path` defines in its dynamic symbol table (what
/// the dynamic linker, and so every caller, resolves them to). Read
/// through a cache of the parts parsed: an executable such as `node` is a
/// hundred megabytes, of which the symbols are a small part.
fn defined_functions(path: &Path) -> Result<HashSet<&'static str>, OpensslError> {
    let file = File::open(path).map_err(|source| OpensslError::Read {
        path: path.to_owned(),
        source,
    })?;
    let data = ReadCache::new(file);
    let exported = exported_functions(&data).map_err(|source| OpensslError::Symbols {
        path: path.to_owned(),
        source,
    })?;
    Ok(HOOKS
        .iter()
        .map(|hook| hook.function)
        .chain([
            nginx::FUNCTION,
            python::FUNCTION,
            node::FUNCTION,
            node::NODE_MARKER,
        ])
        .filter(|function| exported.contains(function.as_bytes()))
        .collect())
}

/// The names of the functions an ELF64 file defines in its dynamic symbol
/// table. The symbols and their names are read whole, one read each:
/// object's symbol iterator would read each name on its own through the
/// cache (`node` defines tens of thousands: as many reads, which takes
/// minutes on a network file system).
fn exported_functions(data: &ReadCache<File>) -> Result<HashSet<&[u8]>, object::Error> {
    let header = FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let Some((_, dynsym)) = sections
        .iter()
        .enumerate()
        .find(|(_, section)| section.sh_type(endian) == elf::SHT_DYNSYM)
    else {
        return Ok(HashSet::new());
    };
    let symbols: &[Sym64<Endianness>] = dynsym.data_as_array(endian, data)?;
    let names = sections
        .section(SectionIndex(dynsym.sh_link(endian) as usize))?
        .data(endian, data)?;
    let names = StringTable::new(names, 0, names.len() as u64);
    Ok(symbols
        .iter()
        .filter(|symbol| {
            symbol.st_shndx(endian) != elf::SHN_UNDEF
                && matches!(symbol.st_type(), elf::STT_FUNC | elf::STT_GNU_IFUNC)
        })
        .filter_map(|symbol| symbol.name(endian, names).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_functions_a_library_defines() {
        // The system's OpenSSL 3 (curl and python3 here link it) and libc.
        let libssl = defined_functions(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"))
            .expect("libssl symbols");
        let all: HashSet<&str> = HOOKS.iter().map(|hook| hook.function).collect();
        let nginx = defined_functions(Path::new("/usr/sbin/nginx")).expect("nginx symbols");
        assert_eq!(
            nginx,
            HashSet::from([nginx::FUNCTION]),
            "nginx links libssl"
        );
        assert_eq!(libssl, all, "OpenSSL 3 defines every hooked function");
        // Node.js (which `cargo xtask setup` installs) carries its own.
        let node = defined_functions(Path::new("/usr/bin/node")).expect("node symbols");
        let mut node_functions = all.clone();
        node_functions.extend([node::FUNCTION, node::NODE_MARKER]);
        assert_eq!(
            node, node_functions,
            "node exports every hooked function, libuv's and N-API's"
        );
        let libc = defined_functions(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"))
            .expect("libc symbols");
        assert!(libc.is_empty(), "{libc:?}");
        assert!(matches!(
            defined_functions(Path::new("/nonexistent/libssl.so.3")),
            Err(OpensslError::Read { .. })
        ));
        assert!(matches!(
            defined_functions(Path::new("/proc/self/status")),
            Err(OpensslError::Symbols { .. })
        ));
    }
}
