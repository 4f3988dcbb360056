//! The programs: one leaf module per hooked kernel or library event, each
//! holding only its hooks. Code several hooks share lives beside this
//! directory (`socket_call`, `capture`, `context`, `tls`, `sock`, `syscall_args`); hooks
//! never import each other. Pure byte scanners are in
//! `agent_common::scan`, unit-tested on the host.

pub mod go_context;
pub mod go_tls;
pub mod inject;
pub mod inject_h2;
pub mod nginx;
pub mod node_context;
pub mod openssl;
pub mod process;
pub mod python_context;
pub mod socket_data;
pub mod socket_state;
pub mod tcp_calls;
