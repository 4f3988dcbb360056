//! Go programs for the Go tests, built at test time by
//! tests/apps/go_build.sh with the toolchains `cargo xtask setup`
//! installs (standard library and Debian's Go packages: no network).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
};

use crate::apps::app_path;

/// Serialises builds: two `go build`s of one output race.
static BUILDING: Mutex<()> = Mutex::new(());

/// tests/apps/`app` built with Go 1.`minor`, stripped (`-ldflags=-s -w`:
/// no symbol table, no DWARF) or not; reused while newer than its source.
pub fn build(app: &str, minor: u32, stripped: bool) -> PathBuf {
    let _guard = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
    let strip = if stripped { "stripped" } else { "full" };
    let out = std::env::temp_dir()
        .join("sonde-go-e2e")
        .join(format!("{app}-1.{minor}-{strip}"));
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if modified(&out) <= modified(&app_path(app).join("main.go")) {
        let status = Command::new(app_path("go_build.sh"))
            .args([app, &minor.to_string(), strip])
            .arg(&out)
            .status()
            .expect("running go_build.sh");
        assert!(status.success(), "building {app} with Go 1.{minor}");
    }
    out
}
