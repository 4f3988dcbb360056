//! (in progress)
pub mod decode;
