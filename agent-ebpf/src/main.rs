//! Sonde's kernel programs. Built by `cargo xtask build-ebpf` for
//! `bpfel-unknown-none`; the agent embeds the object and loads it with aya.
//!
//! Hooks:
//! - `probes::socket_data`: tp_btf `sock:sock_send_length` / `sock_recv_length`
//!   (Linux >= 6.2), which fire only for socket I/O, so untargeted processes
//!   pay nothing for file or pipe I/O; where they do not exist,
//!   `probes::tcp_calls`: fexit `tcp_sendmsg` / `tcp_recvmsg` (also socket
//!   I/O only). The agent picks by what loads.
//! - `probes::socket_state`: tp_btf `sock:inet_sock_set_state` (connect, close)
//!   and `syscalls:sys_exit_accept{,4}` (accepted sockets).
//! - `probes::process`: `sched:sched_process_{exec,exit,fork}` for live selection.
//!
//! Layout: `probes/` holds the hooks, one leaf file per event; the code
//! they share sits beside it, layered so nothing imports in a circle:
//! `read`, `maps` < `syscall_args`, `sock`, `goroutine`, `pycontext`, `nodecontext`, `http2` < `context`, `go` < `tls` <
//! `capture` < `socket_call`.
#![no_std]
#![no_main]

mod capture;
mod context;
mod go;
mod goroutine;
mod http2;
mod maps;
mod nodecontext;
mod probes;
mod pycontext;
mod read;
mod sock;
mod socket_call;
mod syscall_args;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic, so this is never
    // executed; an infinite loop is the conventional body.
    loop {}
}
