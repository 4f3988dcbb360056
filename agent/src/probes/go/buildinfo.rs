//! The Go version a binary was built with, from its build info: the
//! `.go.buildinfo` section the Go linker writes into every executable
//! (kept by `-ldflags=-s -w`, which drops the symbol table and DWARF).
//!
//! Layout (Go >= 1.18, `src/debug/buildinfo/buildinfo.go`): a 32-byte
//! header, `"\xff Go buildinf:"`, the pointer size, a flags byte whose bit 1
//! says the strings follow inline, then the version and the module info,
//! each as a uvarint length and its bytes. Older linkers put pointers to
//! the strings there instead; those binaries predate the register ABI the
//! probes rely on, so they are reported as Go of an unknown version.

use std::fmt;

/// The build info header's magic.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Header length before the inline strings.
const HEADER_LEN: usize = 32;
/// Flags bit: version and module info follow the header inline.
const FLAG_INLINE: u8 = 0x2;

/// A Go release, `go1.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    /// Minor version (`19` in go1.19.8).
    pub minor: u32,
    /// Patch release (`8` in go1.19.8; 0 for `go1.19`).
    pub patch: u32,
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go1.{}.{}", self.minor, self.patch)
    }
}

impl GoVersion {
    /// Parses `go1.19.8`, `go1.23rc1` (as 1.23.0), `go1.22.12 X:boringcrypto`.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.split_whitespace().next()?.strip_prefix("go1.")?;
        let mut parts = rest.split('.');
        let minor = leading_number(parts.next()?)?;
        let patch = parts.next().and_then(leading_number).unwrap_or(0);
        Some(Self { minor, patch })
    }
}

/// The number a string starts with (`23` of `23rc1`).
fn leading_number(text: &str) -> Option<u32> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// What the build info says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildInfo {
    /// The version string, e.g. `go1.19.8`.
    Version(String),
    /// A Go binary whose build info is in the pre-1.18 layout.
    Old,
}

/// Reads the contents of a `.go.buildinfo` section.
pub fn parse(section: &[u8]) -> Option<BuildInfo> {
    if section.len() < HEADER_LEN || &section[..MAGIC.len()] != MAGIC {
        return None;
    }
    if section[15] & FLAG_INLINE == 0 {
        return Some(BuildInfo::Old);
    }
    let (len, used) = uvarint(&section[HEADER_LEN..])?;
    let start = HEADER_LEN + used;
    let version = section.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    Some(BuildInfo::Version(
        String::from_utf8_lossy(version).into_owned(),
    ))
}

/// A little-endian base-128 varint and the bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(flags: u8, version: &str) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([8, flags]);
        bytes.resize(HEADER_LEN, 0);
        bytes.push(version.len() as u8);
        bytes.extend(version.as_bytes());
        bytes.extend([0x80, 0x01]);
        bytes
    }

    #[test]
    fn reads_the_inline_version() {
        assert_eq!(
            parse(&section(FLAG_INLINE, "go1.19.8")),
            Some(BuildInfo::Version("go1.19.8".into()))
        );
        assert_eq!(parse(&section(0, "go1.16")), Some(BuildInfo::Old));
        assert_eq!(parse(b"not a Go binary at all, 32 bytes long"), None);
        let mut truncated = section(FLAG_INLINE, "go1.19.8");
        truncated.truncate(HEADER_LEN + 4);
        assert_eq!(parse(&truncated), None);
    }

    #[test]
    fn parses_versions() {
        let v = |minor, patch| Some(GoVersion { minor, patch });
        assert_eq!(GoVersion::parse("go1.19.8"), v(19, 8));
        assert_eq!(GoVersion::parse("go1.23.5"), v(23, 5));
        assert_eq!(GoVersion::parse("go1.21"), v(21, 0));
        assert_eq!(GoVersion::parse("go1.23rc1"), v(23, 0));
        assert_eq!(GoVersion::parse("go1.22.12 X:boringcrypto"), v(22, 12));
        assert_eq!(GoVersion::parse("devel go1.24-abc"), None);
        assert_eq!(GoVersion::parse("go2.0"), None);
        assert_eq!(v(19, 8).map(|v| v.to_string()).as_deref(), Some("go1.19.8"));
    }

    #[test]
    fn reads_uvarints() {
        assert_eq!(uvarint(&[0x08]), Some((8, 1)));
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }
}
