//! One module per hooked kernel event, mirrored by `agent-common/src/<event>.rs`.

pub mod process;
pub mod socket_data;
pub mod socket_state;
