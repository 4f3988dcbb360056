//! HTTP/2 client connections as the injection programs see them: which
//! messages `probes::inject` hands to `probes::inject_h2`.

use agent_common::socket_data::{ConnTuple, FAMILY_INET, FAMILY_INET6};
use aya_ebpf::{helpers::generated::bpf_msg_pull_data, programs::SkMsgContext};

use crate::maps::H2_CONNS;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: [u8; 24] = *b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection's [`ConnTuple`] from a context pointer whose struct has
/// the address fields sk_msg_md and bpf_sock_ops share. One volatile
/// 4-byte load per field: the verifier refuses the wider context loads the
/// compiler would otherwise merge neighbouring fields into.
macro_rules! context_tuple {
    ($ctx:expr) => {{
        let ctx = $ctx;
        let field = |f: *const u32| core::ptr::read_volatile(f);
        let six = |p: *const u32| {
            [
                field(p),
                field(p.wrapping_add(1)),
                field(p.wrapping_add(2)),
                field(p.wrapping_add(3)),
            ]
        };
        $crate::http2::tuple(
            field(core::ptr::addr_of!((*ctx).family)),
            (
                field(core::ptr::addr_of!((*ctx).local_ip4)),
                six(core::ptr::addr_of!((*ctx).local_ip6).cast::<u32>()),
            ),
            (
                field(core::ptr::addr_of!((*ctx).remote_ip4)),
                six(core::ptr::addr_of!((*ctx).remote_ip6).cast::<u32>()),
            ),
            field(core::ptr::addr_of!((*ctx).local_port)),
            field(core::ptr::addr_of!((*ctx).remote_port)),
        )
    }};
}
pub(crate) use context_tuple;

/// The message's connection, by its addresses: sk_msg programs cannot
/// read the socket cookie. `probes::inject`'s sock_ops program removes
/// the entry of an earlier connection with the same addresses when a new
/// one is established, so each connection starts fresh.
#[inline(always)]
pub fn conn_key(ctx: &SkMsgContext) -> ConnTuple {
    let md = ctx.msg;
    // SAFETY: `md` is the kernel's sk_msg_md.
    unsafe { context_tuple!(md) }
}

/// A [`ConnTuple`] from the fields sk_msg and sock_ops contexts share:
/// IPv4 and IPv6 addresses in network byte order, the local port in host
/// byte order, the remote port in network byte order (in the upper or
/// lower 16 bits, depending on the kernel).
#[inline(always)]
pub fn tuple(
    family: u32,
    local: (u32, [u32; 4]),
    remote: (u32, [u32; 4]),
    local_port: u32,
    remote_port: u32,
) -> ConnTuple {
    let address = |(ip4, ip6): (u32, [u32; 4])| {
        let mut out = [0u8; 16];
        if family == u32::from(FAMILY_INET6) {
            let mut i = 0;
            while i < 4 {
                out[i * 4..i * 4 + 4].copy_from_slice(&ip6[i].to_le_bytes());
                i += 1;
            }
        } else {
            out[..4].copy_from_slice(&ip4.to_le_bytes());
        }
        out
    };
    let remote_port = if remote_port > 0xffff {
        remote_port >> 16
    } else {
        remote_port
    };
    ConnTuple {
        local_addr: address(local),
        remote_addr: address(remote),
        local_port: local_port as u16,
        remote_port: u16::from_be(remote_port as u16),
        family: if family == u32::from(FAMILY_INET6) {
            FAMILY_INET6
        } else {
            FAMILY_INET
        },
        reserved: 0,
    }
}

/// True if `probes::inject_h2` follows the connection's frames.
#[inline(always)]
pub fn is_followed(key: &ConnTuple) -> bool {
    // SAFETY: plain value lookup.
    unsafe { H2_CONNS.get(key) }.is_some()
}

/// True if the message starts with the whole client preface.
#[inline(always)]
pub fn starts_with_preface(ctx: &SkMsgContext) -> bool {
    let len = PREFACE.len() as u32;
    // SAFETY: valid context; the range is within the message.
    if ctx.size() < len || unsafe { bpf_msg_pull_data(ctx.msg, 0, len, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + PREFACE.len() > ctx.data_end() {
        return false;
    }
    // SAFETY: bounds checked against data_end just above.
    let words = unsafe { core::ptr::read_unaligned(data as *const [u64; 3]) };
    // Word by word: an array comparison would call memcmp, which BPF lacks.
    let preface = [
        u64::from_le_bytes(PREFACE_WORDS[0]),
        u64::from_le_bytes(PREFACE_WORDS[1]),
        u64::from_le_bytes(PREFACE_WORDS[2]),
    ];
    words[0] == preface[0] && words[1] == preface[1] && words[2] == preface[2]
}

/// [`PREFACE`] in 8-byte words.
const PREFACE_WORDS: [[u8; 8]; 3] = [*b"PRI * HT", *b"TP/2.0\r\n", *b"\r\nSM\r\n\r\n"];
