//! One module per hooked kernel event, mirrored by `agent-common/src/<event>.rs`.

pub mod capture;
pub mod inject;
pub mod nginx;
pub mod openssl;
pub mod process;
pub mod socket_data;
pub mod socket_state;
pub mod syscall_args;
pub mod trace_context;
