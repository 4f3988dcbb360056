//! Where the probes find what they read in a Go program's memory: the
//! socket under a `crypto/tls.Conn` and the goroutine id. From the
//! binary's DWARF when it has any, else from [`KNOWN`], a table per Go
//! release that the unit tests check against the DWARF of real binaries
//! built with each listed toolchain. A release in neither gets no Go
//! probes (its processes are traced at the socket level): wrong offsets
//! would read the wrong memory.
//!
//! The chain the kernel follows from a `*tls.Conn` to its file
//! descriptor: `tls.Conn.conn` (a `net.Conn` interface: type word, then
//! data word, a `*net.TCPConn`) -> `net.TCPConn.conn.fd` (`*net.netFD`) ->
//! `netFD.pfd.Sysfd`.

use std::{borrow::Cow, io::Read as _};

use object::{CompressionFormat, Object as _, ObjectSection as _, ReadRef};

use super::buildinfo::GoVersion;

/// The offsets the kernel programs use, handed to them in the uprobes'
/// attach cookie ([`GoOffsets::cookie`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    /// `crypto/tls.Conn.conn`, the `net.Conn` interface.
    pub tls_conn_conn: u16,
    /// `net.TCPConn.conn` plus `net.conn.fd`: the `*netFD`.
    pub tcp_conn_fd: u16,
    /// `net.netFD.pfd` plus `internal/poll.FD.Sysfd`: the descriptor.
    pub net_fd_sysfd: u16,
    /// `runtime.g.goid`.
    pub g_goid: u16,
}

impl GoOffsets {
    /// The offsets packed 16 bits each, as agent-ebpf's `probes::go_tls`
    /// unpacks them.
    pub fn cookie(&self) -> u64 {
        u64::from(self.tls_conn_conn)
            | (u64::from(self.tcp_conn_fd) << 16)
            | (u64::from(self.net_fd_sysfd) << 32)
            | (u64::from(self.g_goid) << 48)
    }
}

/// Go releases whose offsets were read from their DWARF (see the tests).
/// Patch releases do not change struct layouts, so a minor version stands
/// for all of its patches.
pub const KNOWN: &[(u32, GoOffsets)] = &[
    // Debian bookworm's golang-1.19 (1.19.8).
    (
        19,
        GoOffsets {
            tls_conn_conn: 0,
            tcp_conn_fd: 0,
            net_fd_sysfd: 16,
            g_goid: 152,
        },
    ),
    // bookworm-backports' golang-1.23 (1.23.5): `runtime.g` grew before goid.
    (
        23,
        GoOffsets {
            tls_conn_conn: 0,
            tcp_conn_fd: 0,
            net_fd_sysfd: 16,
            g_goid: 160,
        },
    ),
];

/// The table's offsets for `version`, if it has them.
pub fn known(version: GoVersion) -> Option<GoOffsets> {
    KNOWN
        .iter()
        .find(|(minor, _)| *minor == version.minor)
        .map(|(_, offsets)| *offsets)
}

/// The struct members the offsets come from: (struct, member).
const MEMBERS: [(&str, &str); 6] = [
    ("crypto/tls.Conn", "conn"),
    ("net.TCPConn", "conn"),
    ("net.conn", "fd"),
    ("net.netFD", "pfd"),
    ("internal/poll.FD", "Sysfd"),
    ("runtime.g", "goid"),
];

/// Why DWARF gave no offsets.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    /// The binary has no DWARF (built with `-ldflags=-w`, or stripped).
    #[error("no DWARF")]
    Absent,
    /// A section could not be read or decompressed.
    #[error("reading the DWARF sections: {0}")]
    Section(String),
    /// The DWARF could not be parsed.
    #[error("parsing the DWARF: {0}")]
    Parse(#[from] gimli::Error),
    /// A member the probes need is not described.
    #[error("DWARF does not describe {0}.{1}")]
    Missing(&'static str, &'static str),
}

/// The offsets from the binary's DWARF.
pub fn from_dwarf<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
) -> Result<GoOffsets, DwarfError> {
    if elf.section_by_name(".debug_info").is_none() {
        return Err(DwarfError::Absent);
    }
    let sections = gimli::DwarfSections::load(|id| section(elf, id.name()))?;
    let dwarf = sections.borrow(|data| gimli::EndianSlice::new(data, gimli::LittleEndian));
    let mut found: [Option<u64>; MEMBERS.len()] = [None; MEMBERS.len()];
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        // The struct being walked, if wanted, and its depth.
        let mut current: Option<(&str, isize)> = None;
        while let Some(entry) = entries.next_dfs()? {
            let name = || -> Result<Option<String>, gimli::Error> {
                entry
                    .attr_value(gimli::DW_AT_name)
                    .map(|value| {
                        dwarf
                            .attr_string(&unit, value)
                            .map(|s| s.to_string_lossy().into_owned())
                    })
                    .transpose()
            };
            if current.is_some_and(|(_, depth)| entry.depth() <= depth) {
                current = None;
            }
            if entry.tag() == gimli::DW_TAG_structure_type {
                let name = name()?;
                current = MEMBERS
                    .iter()
                    .find(|(strukt, _)| Some(*strukt) == name.as_deref())
                    .map(|(strukt, _)| (*strukt, entry.depth()));
            } else if entry.tag() == gimli::DW_TAG_member
                && let Some((strukt, depth)) = current
                && entry.depth() == depth + 1
            {
                let member = name()?;
                let at = MEMBERS
                    .iter()
                    .position(|&(s, m)| s == strukt && Some(m) == member.as_deref());
                if let Some(index) = at {
                    found[index] = entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|value| value.udata_value());
                }
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    let get = |index: usize| -> Result<u16, DwarfError> {
        let (strukt, member) = MEMBERS[index];
        found[index]
            .and_then(|at| u16::try_from(at).ok())
            .ok_or(DwarfError::Missing(strukt, member))
    };
    Ok(GoOffsets {
        tls_conn_conn: get(0)?,
        tcp_conn_fd: get(1)? + get(2)?,
        net_fd_sysfd: get(3)? + get(4)?,
        g_goid: get(5)?,
    })
}

/// A DWARF section's bytes, decompressed (the Go linker compresses them
/// with zlib), or none if the binary lacks it.
fn section<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    name: &str,
) -> Result<Cow<'data, [u8]>, DwarfError> {
    let Some(section) = elf.section_by_name(name) else {
        return Ok(Cow::Borrowed(&[]));
    };
    let error = |e: &dyn std::fmt::Display| DwarfError::Section(format!("{name}: {e}"));
    let compressed = section.compressed_data().map_err(|e| error(&e))?;
    match compressed.format {
        CompressionFormat::None => Ok(Cow::Borrowed(compressed.data)),
        CompressionFormat::Zlib => {
            let mut out = Vec::with_capacity(compressed.uncompressed_size.min(1 << 28) as usize);
            flate2::read::ZlibDecoder::new(compressed.data)
                .read_to_end(&mut out)
                .map_err(|e| error(&e))?;
            Ok(Cow::Owned(out))
        }
        other => Err(error(&format!("{other:?} compression"))),
    }
}
