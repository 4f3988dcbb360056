//! Reading a kernel `struct sock`: what kind of socket it is and its
//! addresses, at the offsets the agent found in the running kernel's BTF
//! (`KernelConfig::off_*`). Shared by the socket hooks.

use agent_common::socket_data::{ConnTuple, FAMILY_INET, FAMILY_INET6};

use aya_ebpf::helpers::bpf_get_socket_cookie;

use crate::{maps::config, read};

const IPPROTO_TCP: u16 = 6;
/// `MSG_PEEK`: a receive that leaves the data queued (read again later).
pub const MSG_PEEK: i32 = 2;

/// The address family of a TCP socket over IPv4 or IPv6; `None` for any
/// other socket.
#[inline(always)]
pub fn tcp_family(sk: *const u8) -> Option<u16> {
    let cfg = config();
    let family = read::kernel::<u16>(sk, cfg.off_skc_family).ok()?;
    let is_tcp = (family == FAMILY_INET || family == FAMILY_INET6)
        && read::kernel::<u16>(sk, cfg.off_sk_protocol).ok()? == IPPROTO_TCP;
    is_tcp.then_some(family)
}

/// The socket's addresses and ports. Inlined: a call returns the tuple
/// through the caller's stack, which then holds it twice, and the capture
/// programs' stack is near the verifier's limit.
#[inline(always)]
pub fn read_tuple(sk: *const u8, family: u16) -> Result<ConnTuple, i64> {
    let cfg = config();
    let mut tuple = ConnTuple {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: read::kernel(sk, cfg.off_skc_num)?,
        remote_port: u16::from_be(read::kernel(sk, cfg.off_skc_dport)?),
        family,
        reserved: 0,
    };
    if family == FAMILY_INET {
        let local: [u8; 4] = read::kernel(sk, cfg.off_skc_rcv_saddr)?;
        let remote: [u8; 4] = read::kernel(sk, cfg.off_skc_daddr)?;
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    } else {
        tuple.local_addr = read::kernel(sk, cfg.off_skc_v6_rcv_saddr)?;
        tuple.remote_addr = read::kernel(sk, cfg.off_skc_v6_daddr)?;
    }
    Ok(tuple)
}

/// The connection's identity in maps and events, for a hook whose first
/// argument is its `struct sock`: the socket's cookie, or with `PORTABLE`
/// (tracing programs may ask for cookies from Linux 5.12 on) the socket's
/// address, unique while it lives: its close is reported
/// (`probes::socket_state`) before its memory can serve another socket.
/// The address is copied out of the hook's arguments (`args`) as a plain
/// number, which older verifiers accept as a map key where they refuse a
/// typed pointer, and salted (`KernelConfig::socket_id_salt`).
#[inline(always)]
pub fn socket_id<const PORTABLE: bool>(args: *const u8, sk: *const u8) -> Option<u64> {
    if PORTABLE {
        let address = read::kernel::<u64>(args, 0).ok()?;
        Some(address ^ config().socket_id_salt)
    } else {
        // SAFETY: `sk` is the hook's typed socket argument.
        Some(unsafe { bpf_get_socket_cookie(sk as *mut _) })
    }
}
