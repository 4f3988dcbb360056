//! gRPC header values: `grpc-status`, `grpc-timeout`, `content-type` and
//! the method path: `agent::protocols::grpc::parse`.
#![no_main]

use agent::protocols::grpc::parse::{
    is_grpc_content_type, parse_status, parse_timeout, split_path, status_name,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(code) = parse_status(data) {
        status_name(code);
    }
    parse_timeout(data);
    is_grpc_content_type(data);
    if let Ok(path) = std::str::from_utf8(data) {
        split_path(path);
    }
});
