//! Reads kernel struct field offsets from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux).
//!
//! Rust eBPF code has no CO-RE relocations, so the agent looks offsets up
//! here and hands them to the programs in `KernelConfig`. Written here rather
//! than taken from a crate: aya's public `Btf` does not expose member
//! offsets, and `btf-rs` is LGPL. Only what offset lookup needs is parsed:
//! type records are walked to find named structs and their members, including
//! members of anonymous nested structs and unions.

use std::collections::HashMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Why an offset could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// Not a BTF blob, or cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// No struct of that name.
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(String),
    /// No function of that name (not in BTF, or not one the agent asks about).
    #[error("function {0} not found in kernel BTF")]
    NoFunction(String),
    /// The struct has no such member.
    #[error("member {member} not found in struct {strukt}")]
    NoMember {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
    },
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct CompositeType {
    members: Vec<Member>,
}

/// Struct and union layouts of one BTF blob.
#[derive(Debug, Default)]
pub struct KernelBtf {
    /// By type id (only structs and unions are kept).
    composites: HashMap<u32, CompositeType>,
    /// Named structs: name -> type id.
    struct_ids: HashMap<String, u32>,
    /// The functions of [`FUNCTIONS`]: name -> their prototype's type id.
    functions: HashMap<String, u32>,
    /// Parameter names of every function prototype, by type id.
    prototypes: HashMap<u32, Vec<String>>,
}

/// The kernel functions whose prototypes the agent checks before hooking
/// them (their parameters changed across kernel versions), and
/// `kasan_report`, which tells a KASAN kernel (twice the stack size).
pub const FUNCTIONS: &[&str] = &[
    "tcp_sendmsg",
    "tcp_recvmsg",
    "tcp_bpf_sendmsg",
    "kasan_report",
];

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn str_at(strings: &[u8], offset: u32) -> String {
    let rest = strings.get(offset as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

impl KernelBtf {
    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;

        let mut btf = Self::default();
        let mut at = 0;
        let mut type_id = 1u32;
        while at < types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw_offset = u32_at(types, m + 8)?;
                        members.push(Member {
                            name: str_at(strings, u32_at(types, m)?),
                            type_id: u32_at(types, m + 4)?,
                            // With kind_flag the top 8 bits hold a bitfield size.
                            bit_offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                    }
                    if kind == KIND_STRUCT && name_off != 0 {
                        btf.struct_ids
                            .entry(str_at(strings, name_off))
                            .or_insert(type_id);
                    }
                    btf.composites.insert(type_id, CompositeType { members });
                    vlen * 12
                }
                KIND_FUNC => {
                    let name = str_at(strings, name_off);
                    if FUNCTIONS.contains(&name.as_str()) {
                        btf.functions.insert(name, size_or_type);
                    }
                    0
                }
                KIND_FUNC_PROTO => {
                    let params = (0..vlen)
                        .map(|i| Ok(str_at(strings, u32_at(types, at + i * 8)?)))
                        .collect::<Result<Vec<_>, BtfError>>()?;
                    btf.prototypes.insert(type_id, params);
                    vlen * 8
                }
                KIND_ENUM => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => 0,
            };
            at += extra;
            type_id += 1;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in struct `strukt`, looking through anonymous
    /// nested structs and unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .struct_ids
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_bits(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })
    }

    /// Parameter names of function `name` (one of [`FUNCTIONS`]).
    pub fn parameters(&self, name: &str) -> Result<&[String], BtfError> {
        self.functions
            .get(name)
            .and_then(|proto| self.prototypes.get(proto))
            .map(Vec::as_slice)
            .ok_or_else(|| BtfError::NoFunction(name.into()))
    }

    fn find_bits(&self, type_id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let composite = self.composites.get(&type_id)?;
        composite.members.iter().find_map(|m| {
            if m.name == member {
                Some(m.bit_offset)
            } else if m.name.is_empty() {
                self.find_bits(m.type_id, member, depth + 1)
                    .map(|inner| m.bit_offset + inner)
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob with `struct outer { u32 a; union { u16 b; }; u16 c; }`.
    fn sample_blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0".to_vec();
        let name = |s: &str| -> u32 {
            let pos = strings
                .windows(s.len() + 1)
                .position(|w| &w[..s.len()] == s.as_bytes() && w[s.len()] == 0);
            pos.map(|p| p as u32).unwrap_or(0)
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| types.extend_from_slice(&w.to_le_bytes()))
        };
        // [1] int
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // [2] anonymous union { b } at 0
        push(&[0, (KIND_UNION << 24) | 1, 2, name("b"), 1, 0]);
        // [3] struct outer { a @0, anon @32, c @64 }
        push(&[
            name("outer"),
            (KIND_STRUCT << 24) | 3,
            12,
            name("a"),
            1,
            0,
            0,
            2,
            32,
            name("c"),
            1,
            64,
        ]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = KernelBtf::parse(&sample_blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "b"), Ok(4));
        assert_eq!(btf.member_offset("outer", "c"), Ok(8));
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"not btf at all, clearly not").is_err());
        assert!(KernelBtf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut blob = sample_blob();
        blob.truncate(40);
        assert!(KernelBtf::parse(&blob).is_err());
    }

    #[test]
    fn reads_this_kernel_when_available() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let btf = KernelBtf::parse(&data).unwrap();
        // sock_common's first members have had these offsets since Linux 4.x.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr"), Ok(0));
        assert_eq!(btf.member_offset("sock_common", "skc_family"), Ok(16));
        assert!(btf.member_offset("sock", "sk_protocol").unwrap() > 100);
        // This machine's 6.18 (5.19 dropped `nonblock`, 6.x `addr_len`).
        assert_eq!(
            btf.parameters("tcp_recvmsg").unwrap(),
            ["sk", "msg", "len", "flags"]
        );
        assert_eq!(
            btf.parameters("tcp_sendmsg").unwrap(),
            ["sk", "msg", "size"]
        );
        assert_eq!(
            btf.parameters("tcp_close"),
            Err(BtfError::NoFunction("tcp_close".into())),
            "only the functions the agent asks about are kept"
        );
    }
}
