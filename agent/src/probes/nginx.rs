//! Userspace side of `agent-ebpf/src/probes/nginx.rs`: a uprobe and a
//! uretprobe on `ngx_chain_writer` in each nginx executable the selected
//! processes run, so the kernel knows which request each upstream send is
//! for and parents it exactly. The executables come from the same scan of
//! `/proc/PID/maps` as the OpenSSL libraries (`openssl`), and like them
//! each file is attached once, for every process that runs it. nginx is
//! not changed in any way; the probes go when the agent stops.

use super::function_probes::FunctionProbes;

/// The function probed: nginx writes every upstream request through it.
pub const FUNCTION: &str = "ngx_chain_writer";

/// Its programs.
pub const PROBES: FunctionProbes = FunctionProbes {
    function: FUNCTION,
    entry: "nginx_chain_writer_enter",
    exit: Some("nginx_chain_writer_exit"),
};
