//! Userspace side of `agent-ebpf/src/probes/python_context.rs`: a uprobe
//! and a uretprobe on CPython's `PyContext_CopyCurrent`, so the kernel
//! knows which request each asyncio task and callback works for
//! (`agent-ebpf/src/pycontext.rs`) and parents an event loop's calls
//! exactly. They go on the file that exports the function: the
//! executable (Debian's stripped `python3.11`, static builds) or the
//! `libpython3.X.so` it maps (pyenv and python.org shared builds), found
//! by the same scan of `/proc/PID/maps` as the OpenSSL libraries, each
//! file once for every process that runs it. Python is not changed in any
//! way; the probes go when the agent stops.
//!
//! The kernel reads two internals of the interpreter, whose places depend
//! on the release ([`LAYOUTS`], measured on each release named there):
//! the pointer to the thread state holding the GIL, inside `_PyRuntime`,
//! and `PyThreadState.context`. A release not in the table gets no
//! probes, a log line and a count (`sonde_python_unsupported`): its calls
//! keep the thread rule (never a wrong parent), never offsets guessed
//! from another release.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, read::ReadCache};

use super::function_probes::FunctionProbes;

/// The function probed: CPython copies the current context through it for
/// each new task and callback.
pub const FUNCTION: &str = "PyContext_CopyCurrent";

/// Its programs (attached with the cookie [`inspect`] gives).
pub const PROBES: FunctionProbes = FunctionProbes {
    function: FUNCTION,
    entry: "python_copy_context_enter",
    exit: Some("python_copy_context_exit"),
};
/// The interpreter's global state.
const RUNTIME: &str = "_PyRuntime";
/// `PY_VERSION_HEX` (CPython >= 3.11).
const VERSION: &str = "Py_Version";

/// A CPython release, as `PY_VERSION_HEX` orders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyVersion {
    /// 3.
    pub major: u8,
    /// Minor release.
    pub minor: u8,
    /// Patch release, if known (the file name gives none).
    pub micro: Option<u8>,
}

impl std::fmt::Display for PyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        match self.micro {
            Some(micro) => write!(f, ".{micro}"),
            None => Ok(()),
        }
    }
}

/// Where a release keeps what the kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset in `_PyRuntime` of a pointer to the `PyThreadState` holding
    /// the GIL (`gilstate.tstate_current` up to 3.11, the main
    /// interpreter's GIL `last_holder` from 3.12).
    pub gil_holder: u64,
    /// `offsetof(PyThreadState, context)`.
    pub context: u64,
}

/// A CPython 3 release (or minor series) whose layout is known.
pub struct KnownRelease {
    /// Minor release.
    pub minor: u8,
    /// Patch release; `None` for the whole minor series.
    pub micro: Option<u8>,
    /// Where it keeps what the kernel reads.
    pub layout: Layout,
}

/// Releases whose layout is known. Measured on each release named in the
/// comment, by finding with `ctypes` the word of `_PyRuntime` that holds
/// each of several threads' `PyThreadState` while it runs, and the word
/// of the state that holds the context a `Context.run` entered
/// (`tests/apps/python_layout.py` checks the table against the
/// interpreters installed). Up to 3.11 `_PyRuntimeState` keeps these in
/// fields whose place bug-fix releases leave alone; from 3.12 the holder
/// sits after the embedded main interpreter, whose size changes more
/// freely, so only the measured releases are listed.
pub const LAYOUTS: [KnownRelease; 5] = [
    // 3.9.18
    KnownRelease {
        minor: 9,
        micro: None,
        layout: Layout {
            gil_holder: 568,
            context: 240,
        },
    },
    // 3.10.13
    KnownRelease {
        minor: 10,
        micro: None,
        layout: Layout {
            gil_holder: 568,
            context: 240,
        },
    },
    // 3.11.2 (Debian 12, stripped), 3.11.7 (pyenv)
    KnownRelease {
        minor: 11,
        micro: None,
        layout: Layout {
            gil_holder: 576,
            context: 224,
        },
    },
    KnownRelease {
        minor: 12,
        micro: Some(1),
        layout: Layout {
            gil_holder: 77_440,
            context: 208,
        },
    },
    KnownRelease {
        minor: 13,
        micro: Some(0),
        layout: Layout {
            gil_holder: 96_112,
            context: 208,
        },
    },
];

impl Layout {
    /// The layout of `version`, if known.
    pub fn of(version: PyVersion) -> Option<Self> {
        LAYOUTS
            .iter()
            .find(|known| {
                version.major == 3
                    && known.minor == version.minor
                    && known.micro.is_none_or(|micro| version.micro == Some(micro))
            })
            .map(|known| known.layout)
    }
}

/// What the agent found in a file that exports [`FUNCTION`].
#[derive(Debug)]
pub struct Interpreter {
    /// Its release.
    pub version: PyVersion,
    /// The attach cookie (see `agent-ebpf/src/probes/python_context.rs`),
    /// if the release's layout is known.
    pub cookie: Option<u64>,
}

/// Why a file's interpreter could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    /// The file could not be read.
    #[error("reading {0}")]
    Read(String, #[source] std::io::Error),
    /// Not an ELF file the agent can read symbols from.
    #[error("reading the symbols")]
    Symbols(#[source] object::Error),
    /// A symbol the kernel needs is missing.
    #[error("no {0} in the dynamic symbol table")]
    Missing(&'static str),
    /// No release in the file or its name.
    #[error("no CPython release in the file or its name")]
    NoVersion,
    /// The GIL holder is too far from the function for the cookie.
    #[error("{RUNTIME} is too far from {FUNCTION}")]
    TooFar,
}

/// Reads the release and the cookie of the interpreter in the file at
/// `path`, which exports [`FUNCTION`].
pub fn inspect(path: &Path) -> Result<Interpreter, PythonError> {
    let file =
        File::open(path).map_err(|error| PythonError::Read(path.display().to_string(), error))?;
    let data = ReadCache::new(file);
    let elf = object::File::parse(&data).map_err(PythonError::Symbols)?;
    let address = |name: &'static str| {
        elf.dynamic_symbols()
            .find(|symbol| symbol.name_bytes() == Ok(name.as_bytes()) && !symbol.is_undefined())
            .map(|symbol| symbol.address())
            .ok_or(PythonError::Missing(name))
    };
    let function = address(FUNCTION)?;
    let runtime = address(RUNTIME)?;
    let version = match address(VERSION) {
        Ok(at) => read_version_hex(&elf, at),
        Err(_) => None,
    }
    .or_else(|| version_from_name(path))
    .ok_or(PythonError::NoVersion)?;
    let cookie = match Layout::of(version) {
        Some(layout) => Some(cookie(function, runtime, layout)?),
        None => None,
    };
    Ok(Interpreter { version, cookie })
}

/// The attach cookie: the GIL holder's address relative to the function
/// (bits 0-31, signed), the context's offset (bits 32-47).
fn cookie(function: u64, runtime: u64, layout: Layout) -> Result<u64, PythonError> {
    let delta = i32::try_from((runtime + layout.gil_holder) as i64 - function as i64)
        .map_err(|_| PythonError::TooFar)?;
    Ok(u64::from(delta as u32) | (layout.context << 32))
}

/// `Py_Version`, the `PY_VERSION_HEX` the file was built as.
fn read_version_hex<'a>(elf: &object::File<'a, &'a ReadCache<File>>, at: u64) -> Option<PyVersion> {
    let section = elf
        .sections()
        .find(|section| (section.address()..section.address() + section.size()).contains(&at))?;
    let bytes = section.data_range(at, 4).ok()??;
    let hex = u32::from_le_bytes(bytes.try_into().ok()?);
    Some(PyVersion {
        major: (hex >> 24) as u8,
        minor: (hex >> 16) as u8,
        micro: Some((hex >> 8) as u8),
    })
}

/// `python3.10`, `libpython3.9.so.1.0` -> 3.10, 3.9.
fn version_from_name(path: &Path) -> Option<PyVersion> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("lib")
        .unwrap_or(name)
        .strip_prefix("python")?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(PyVersion {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        micro: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debians_stripped_interpreter() {
        // Debian 12's python3.11: stripped, but the dynamic symbols stay.
        let python = inspect(Path::new("/usr/bin/python3.11")).expect("python3.11");
        assert_eq!((python.version.major, python.version.minor), (3, 11));
        assert!(python.version.micro.is_some(), "from Py_Version");
        let cookie = python.cookie.expect("3.11 is known");
        assert_eq!(cookie >> 32, 224, "PyThreadState.context");
    }

    /// Interpreters on this machine: Debian's and pyenv's, with their
    /// release as they report it.
    fn installed_interpreters() -> Vec<(std::path::PathBuf, PyVersion)> {
        let pyenv = std::env::var_os("PYENV_ROOT")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::home_dir().map(|home| home.join(".pyenv")))
            .map(|root| root.join("versions"));
        let mut candidates: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/bin")
            .into_iter()
            .flatten()
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| version_from_name(path).is_some())
            .collect();
        if let Some(Ok(versions)) = pyenv.map(std::fs::read_dir) {
            candidates.extend(versions.filter_map(|v| Some(v.ok()?.path().join("bin/python3"))));
        }
        candidates
            .into_iter()
            .filter_map(|python| {
                let out = std::process::Command::new(&python)
                    .args(["-c", "import sys; print(*sys.version_info[:3])"])
                    .output()
                    .ok()?;
                let text = String::from_utf8(out.stdout).ok()?;
                let mut parts = text.split_whitespace().map(|part| part.parse::<u8>());
                let (Some(Ok(major)), Some(Ok(minor)), Some(Ok(micro))) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return None;
                };
                let micro = Some(micro);
                Some((
                    python,
                    PyVersion {
                        major,
                        minor,
                        micro,
                    },
                ))
            })
            .collect()
    }

    #[test]
    fn layouts_hold_in_the_interpreters_installed() {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/apps/python_layout.py"
        );
        let mut checked = Vec::new();
        for (python, version) in installed_interpreters() {
            let Some(layout) = Layout::of(version) else {
                continue;
            };
            let out = std::process::Command::new(&python)
                .args([
                    script,
                    &layout.gil_holder.to_string(),
                    &layout.context.to_string(),
                ])
                .output()
                .expect("run the layout check");
            assert!(
                out.status.success(),
                "{} ({version}): {}{}",
                python.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked.push(version.to_string());
        }
        eprintln!("layouts checked in: {checked:?}");
        // Debian 12's python3.11 is on every machine the tests run on.
        assert!(
            checked.iter().any(|v| v.starts_with("3.11.")),
            "{checked:?}"
        );
    }

    #[test]
    fn releases_come_from_names_before_3_11() {
        let version = |name: &str| version_from_name(Path::new(name));
        assert_eq!(
            version("/opt/py/lib/libpython3.9.so.1.0"),
            Some(PyVersion {
                major: 3,
                minor: 9,
                micro: None
            })
        );
        assert_eq!(version("/usr/bin/python3.10").map(|v| v.minor), Some(10));
        assert_eq!(version("/usr/bin/node"), None);
        assert_eq!(version("/usr/bin/python3"), None, "no minor: unknown");
    }

    #[test]
    fn only_measured_releases_have_layouts() {
        let release = |minor, micro| PyVersion {
            major: 3,
            minor,
            micro,
        };
        assert!(Layout::of(release(11, None)).is_some());
        assert!(Layout::of(release(11, Some(9))).is_some());
        assert!(Layout::of(release(12, Some(1))).is_some());
        assert!(Layout::of(release(12, Some(3))).is_none());
        assert!(Layout::of(release(12, None)).is_none());
        assert!(Layout::of(release(8, None)).is_none());
        assert!(Layout::of(release(14, Some(0))).is_none());
    }

    #[test]
    fn cookie_packs_a_signed_distance_and_the_context_offset() {
        let layout = Layout {
            gil_holder: 8,
            context: 224,
        };
        assert_eq!(
            cookie(0x1000, 0x2000, layout).unwrap(),
            0x1008 | (224 << 32)
        );
        let below = cookie(0x2000, 0x1000, layout).unwrap();
        assert_eq!(below as u32 as i32, -0xff8);
        assert!(matches!(
            cookie(0, 1 << 40, layout),
            Err(PythonError::TooFar)
        ));
    }
}
