//! (in progress)
pub mod exchange;
