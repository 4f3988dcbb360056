//! Function addresses from a Go binary's `.gopclntab`, the table the Go
//! runtime itself uses for stack traces: unlike the ELF symbol table it
//! survives `-ldflags=-s -w`, so stripped binaries are traced too.
//!
//! Layout (Go >= 1.18, `src/runtime/symtab.go` `pcHeader`, magic
//! 0xfffffff0 for 1.18-1.19, 0xfffffff1 from 1.20): after the magic, two
//! pad bytes, the instruction size quantum and the pointer size come
//! `nfunc`, `nfiles`, `textStart` and the offsets of the function name
//! table and of the function table (`pclnOffset`), each pointer-sized.
//! The function table holds `nfunc` pairs (entry offset from
//! `textStart`, offset of the function's `_func`), then the end of the
//! last function; a `_func` starts with its entry offset and the offset
//! of its name in the name table.

use std::collections::HashMap;

/// Magic numbers of the layouts read here.
const MAGIC_1_18: u32 = 0xffff_fff0;
const MAGIC_1_20: u32 = 0xffff_fff1;

/// Why the table could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    /// Not a layout this reader knows (Go < 1.18, or a future one).
    #[error("unknown .gopclntab layout (magic {0:#x}; Go >= 1.18 is read)")]
    Layout(u32),
    /// An offset points outside the table.
    #[error(".gopclntab is truncated or corrupt")]
    Corrupt,
}

/// Where a function's code is: `[entry, end)`, virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncRange {
    /// First instruction.
    pub entry: u64,
    /// End of the function's code (the next function's entry).
    pub end: u64,
}

/// Finds the functions named in `wanted`. `text_addr` is the address of
/// the `.text` section, used when the table leaves `textStart` to be
/// relocated at load time (position-independent executables).
pub fn find_functions(
    table: &[u8],
    text_addr: u64,
    wanted: &[&str],
) -> Result<HashMap<String, FuncRange>, PclntabError> {
    let magic = u32_at(table, 0)?;
    if magic != MAGIC_1_18 && magic != MAGIC_1_20 {
        return Err(PclntabError::Layout(magic));
    }
    let ptr_size = usize::from(*table.get(7).ok_or(PclntabError::Corrupt)?);
    if ptr_size != 8 {
        return Err(PclntabError::Corrupt);
    }
    let word = |index: usize| u64_at(table, 8 + index * ptr_size);
    let nfunc = usize::try_from(word(0)?).map_err(|_| PclntabError::Corrupt)?;
    let text_start = match word(2)? {
        0 => text_addr,
        start => start,
    };
    let names = offset(word(3)?)?;
    let funcs = offset(word(7)?)?;
    let functab = table.get(funcs..).ok_or(PclntabError::Corrupt)?;
    let mut found = HashMap::new();
    for i in 0..nfunc {
        let entry = u32_at(functab, i * 8)?;
        let func = offset(u64::from(u32_at(functab, i * 8 + 4)?))?;
        let end = u32_at(functab, (i + 1) * 8)?;
        let name_off = offset(u64::from(u32_at(functab, func + 4)?))?;
        let name = c_str(table, names + name_off)?;
        if wanted.iter().any(|w| w.as_bytes() == name) {
            found.insert(
                String::from_utf8_lossy(name).into_owned(),
                FuncRange {
                    entry: text_start + u64::from(entry),
                    end: text_start + u64::from(end),
                },
            );
        }
    }
    Ok(found)
}

fn offset(value: u64) -> Result<usize, PclntabError> {
    usize::try_from(value).map_err(|_| PclntabError::Corrupt)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, PclntabError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(PclntabError::Corrupt)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, PclntabError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(PclntabError::Corrupt)
}

/// The NUL-terminated string at `at`.
fn c_str(bytes: &[u8], at: usize) -> Result<&[u8], PclntabError> {
    let rest = bytes.get(at..).ok_or(PclntabError::Corrupt)?;
    let len = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(PclntabError::Corrupt)?;
    Ok(&rest[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table in the 1.20 layout with two functions.
    fn table(text_start: u64) -> Vec<u8> {
        let mut t = MAGIC_1_20.to_le_bytes().to_vec();
        t.extend([0, 0, 1, 8]);
        let names_at = 8 + 8 * 8;
        let names = b"main.a\0main.b\0";
        let funcs_at = names_at + names.len();
        for word in [2, 0, text_start, names_at as u64, 0, 0, 0, funcs_at as u64] {
            t.extend(word.to_le_bytes());
        }
        t.extend(names);
        // functab: (0x10, func0), (0x40, func1), the end 0x90; then the
        // two _funcs, after its three entries.
        let func0 = 3 * 8;
        for word in [0x10u32, func0, 0x40, func0 + 8, 0x90, 0] {
            t.extend(word.to_le_bytes());
        }
        for (entry, name) in [(0x10u32, 0u32), (0x40, 7)] {
            t.extend(entry.to_le_bytes());
            t.extend(name.to_le_bytes());
        }
        t
    }

    #[test]
    fn finds_functions_by_name() {
        let found = find_functions(&table(0x40_1000), 0, &["main.b", "main.c"]).expect("table");
        assert_eq!(
            found,
            HashMap::from([(
                "main.b".to_owned(),
                FuncRange {
                    entry: 0x40_1040,
                    end: 0x40_1090
                }
            )])
        );
        // textStart left for the loader: the .text address stands for it.
        let found = find_functions(&table(0), 0x1000, &["main.a"]).expect("table");
        assert_eq!(
            found["main.a"],
            FuncRange {
                entry: 0x1010,
                end: 0x1040
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut old = table(0);
        old[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        assert_eq!(
            find_functions(&old, 0, &["main.a"]),
            Err(PclntabError::Layout(0xffff_fffa))
        );
        let whole = table(0);
        assert_eq!(
            find_functions(&whole[..whole.len() - 6], 0, &["main.b"]),
            Err(PclntabError::Corrupt)
        );
    }
}
