//! Types shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, free of `bool` and of implicit
//! padding, so the byte layout the kernel writes is the layout userspace
//! reads. Each event starts with an [`EventHeader`]; userspace checks the
//! kind and the size before it trusts the rest (see `agent::probes::decode`).
#![no_std]
#![deny(missing_docs)]

pub mod config;
pub mod drops;
pub mod event;
pub mod process;
pub mod sampling;
pub mod scan;
pub mod socket_data;
pub mod socket_state;
pub mod trace_context;

pub use config::KernelConfig;
pub use event::{EventHeader, EventKind};
