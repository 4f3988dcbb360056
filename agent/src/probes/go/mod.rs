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
//! A Go binary without offsets (no DWARF, a release not in the table) gets
//! no Go probes, a log line and a count (`sonde_go_unsupported`): its
//! processes are traced at the socket level only, never with offsets
//! guessed from another release.

pub mod buildinfo;
pub mod offsets;

use std::{fmt, fs::File, path::Path};

use object::{Object as _, ObjectSection as _, read::ReadCache};
use tracing::{info, warn};

use self::{
    buildinfo::{BuildInfo, GoVersion},
    offsets::GoOffsets,
};
use crate::{
    model::error::ErrorChain,
    telemetry::{Counter, Stats},
};

/// Why a Go executable could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    /// The file could not be read.
    #[error("reading the executable")]
    Read(#[source] std::io::Error),
    /// Not an ELF file the agent can read.
    #[error("reading the executable's ELF sections")]
    Elf(#[source] object::Error),
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
    Ok(Some(GoBinary {
        release,
        offsets,
        dwarf_error,
    }))
}

/// Looks at the executable at `path`, which a selected process runs: if
/// it is Go, logs its release and whether its processes get the Go probes;
/// counts those that cannot (`sonde_go_unsupported`).
pub fn examine(path: &Path, stats: &Stats) -> Option<GoBinary> {
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
            "Go executable"
        ),
        None => {
            stats.add(Counter::GoUnsupported, 1);
            warn!(
                executable = %path.display(),
                go = %binary.release,
                dwarf = binary.dwarf_error.as_deref().unwrap_or(""),
                "Go release without known struct offsets: its processes are traced at the socket level only (no HTTPS plaintext, no goroutine-aware parents)"
            );
        }
    }
    Some(binary)
}

#[cfg(test)]
pub(crate) mod test_binaries {
    //! Go programs built for the tests with the toolchains `cargo xtask
    //! setup` installs (Debian's golang-1.19, backports' 1.22 and 1.23).

    use std::{
        path::{Path, PathBuf},
        process::Command,
        sync::Mutex,
    };

    /// Serialises builds: two `go build`s of one output race.
    static BUILDING: Mutex<()> = Mutex::new(());

    /// tests/apps/go_https, built with Go 1.`minor`, stripped
    /// (`-ldflags=-s -w`) or not; reused across test runs.
    pub fn go_https(minor: u32, stripped: bool) -> PathBuf {
        let _guard = BUILDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let source = root.join("tests/apps/go_https/main.go");
        let dir = std::env::temp_dir().join("sonde-go-unit");
        let out = dir.join(format!(
            "go_https-1.{minor}{}",
            if stripped { "-stripped" } else { "" }
        ));
        let fresh = |out: &Path| {
            let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
            modified(out).is_some_and(|built| modified(&source).is_some_and(|src| built > src))
        };
        if !fresh(&out) {
            let go = format!("/usr/lib/go-1.{minor}/bin/go");
            let mut build = Command::new(&go);
            build
                .args(["build", "-o"])
                .arg(&out)
                .env("GOCACHE", dir.join("cache"))
                .env("GOPATH", dir.join("gopath"))
                .env("GO111MODULE", "off")
                .env("GOFLAGS", "")
                .env("GOTOOLCHAIN", "local");
            if stripped {
                build.arg("-ldflags=-s -w");
            }
            let status = build
                .arg(&source)
                .status()
                .unwrap_or_else(|e| panic!("{go} (cargo xtask setup installs it): {e}"));
            assert!(status.success(), "go build with {go}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
        let go123 = inspect(&go_https(23, false)).expect("readable").expect("Go");
        let table = offsets::known(GoVersion { minor: 23, patch: 5 }).expect("in the table");
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
}
