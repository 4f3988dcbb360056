//! Embeds the kernel object built by `cargo xtask build-ebpf`, so the agent
//! ships as one binary. Without an object (plain `cargo build`/`cargo test`
//! on a machine without the BPF toolchain) the agent still builds; `sonde
//! run` then says how to build the kernel side.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-env-changed=SONDE_EBPF_OBJECT");
    let object = env::var_os("SONDE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/agent-ebpf"));
    println!("cargo:rerun-if-changed={}", object.display());
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(out.join("agent-ebpf.o"), bytes).expect("write OUT_DIR/agent-ebpf.o");
}
