//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (libFuzzer, with
//! the nightly toolchain the BPF build already uses), built once, then each
//! run for a while (`--seconds`, 60 by default; a longer run is
//! `cargo xtask fuzz --seconds 3600`, one target `cargo xtask fuzz
//! conn_tracker`), with AddressSanitizer on an optimised build.
//!
//! `cargo xtask test` ends with [`smoke`]: every target for a fixed number
//! of executions from a fixed seed, on a debug build without a sanitizer.
//! Fixed, so that CI's verdict depends on the change under test and not on
//! luck; debug, because its build costs a fraction of the sanitizer one
//! and keeps overflow checks; no sanitizer, because the parsers are safe
//! Rust: a panic, a hang or runaway memory is what a short run can find.
//!
//! Each target's corpus lives in fuzz/corpus/<target> (not committed,
//! kept between runs), seeded from the protocol fixtures under
//! agent/tests/fixtures/ (real conversations recorded from real clients
//! and servers) so that a short run starts deep in every protocol; a crash
//! stops the run with the input saved under fuzz/artifacts/<target>/, to
//! be turned into a regression test. The smoke run starts each time from
//! the seeds alone, in target/fuzz-smoke/.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The target names: the files of fuzz/fuzz_targets/ (cargo-fuzz names
/// each `[[bin]]` after its file).
pub fn targets() -> Result<Vec<String>> {
    let dir = cmd::workspace_root().join("fuzz").join("fuzz_targets");
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "rs")
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
        {
            targets.push(stem.to_owned());
        }
    }
    if targets.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    targets.sort();
    Ok(targets)
}

/// `cargo +nightly fuzz <args>` from the workspace root, with the host
/// build's environment removed (cargo-fuzz sets its own flags).
fn cargo_fuzz() -> Command {
    let mut fuzz = Command::new("cargo");
    fuzz.arg("+nightly").arg("fuzz");
    cmd::scrub_host_env(&mut fuzz);
    fuzz.current_dir(cmd::workspace_root());
    fuzz
}

/// How a run builds the targets: `cargo fuzz build` and `run` options.
const FULL_BUILD: &[&str] = &[];
const SMOKE_BUILD: &[&str] = &["--dev", "--sanitizer", "none"];

/// Executions of each target in the smoke run (a few seconds each on the
/// debug build), and its seed.
const SMOKE_RUNS: u64 = 10_000;
const SMOKE_SEED: u64 = 1;

/// Builds every target, then runs each of `targets` for `seconds`; fails
/// at the first crash, leak, timeout or out-of-memory.
pub fn run(targets: &[String], seconds: u64) -> Result<()> {
    let corpora = cmd::workspace_root().join("fuzz").join("corpus");
    fuzz_each(
        targets,
        FULL_BUILD,
        &corpora,
        &[format!("-max_total_time={seconds}")],
    )
}

/// The short, reproducible run of every target that `cargo xtask test`
/// ends with (see the module doc).
pub fn smoke() -> Result<()> {
    let corpora = cmd::target_dir().join("fuzz-smoke");
    if corpora.exists() {
        std::fs::remove_dir_all(&corpora)
            .with_context(|| format!("emptying {}", corpora.display()))?;
    }
    fuzz_each(
        &targets()?,
        SMOKE_BUILD,
        &corpora,
        &[format!("-runs={SMOKE_RUNS}"), format!("-seed={SMOKE_SEED}")],
    )
}

/// Builds every target with `build` options, then runs each of `targets`
/// on its corpus under `corpora` (seeded if empty) until `limits` stop it.
fn fuzz_each(targets: &[String], build: &[&str], corpora: &Path, limits: &[String]) -> Result<()> {
    cmd::run(cargo_fuzz().arg("build").args(build))?;
    for target in targets {
        let corpus = corpora.join(target);
        seed(target, &corpus)?;
        cmd::run(
            cargo_fuzz()
                .args(["run", target])
                .args(build)
                .arg(&corpus)
                .arg("--")
                .args(limits)
                // One input taking a second is a hang here: every parser is
                // linear in its input.
                .arg("-timeout=5")
                .arg("-rss_limit_mb=2048"),
        )
        .with_context(|| format!("fuzz target {target}"))?;
    }
    Ok(())
}

/// Who sent a recorded chunk.
#[derive(Clone, Copy)]
enum From {
    Client,
    Server,
}

/// Writes the fixtures' conversations into an empty corpus, in the
/// target's input format; a corpus that has inputs is left as it is.
fn seed(target: &str, corpus: &Path) -> Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    if std::fs::read_dir(corpus)?.next().is_some() {
        return Ok(());
    }
    let fixtures = cmd::workspace_root()
        .join("agent")
        .join("tests")
        .join("fixtures");
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for protocol in ["http1", "http2", "postgres", "mysql", "redis", "memcached"] {
        let dir = fixtures.join(protocol);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .to_owned();
            let bytes = std::fs::read(&path)?;
            let chunks = if name.ends_with(".trace") {
                trace_chunks(&String::from_utf8_lossy(&bytes))
            } else if name.ends_with(".h2.bin") {
                h2_chunks(&bytes)
            } else if name.ends_with(".request.bin") {
                vec![(From::Client, bytes)]
            } else if name.ends_with(".response.bin") {
                vec![(From::Server, bytes)]
            } else {
                continue;
            };
            if let Some(input) = for_target(target, &chunks) {
                seeds.push((name, input));
            }
        }
    }
    for (name, input) in seeds {
        std::fs::write(corpus.join(format!("fixture-{name}")), input)?;
    }
    Ok(())
}

/// A conversation as one input of `target`, if the target reads such
/// bytes.
fn for_target(target: &str, chunks: &[(From, Vec<u8>)]) -> Option<Vec<u8>> {
    match target {
        // Events of one client connection (see fuzz_targets/conn_tracker.rs):
        // role client, a send for the client's bytes, a receive for the
        // server's.
        "conn_tracker" => Some(
            chunks
                .iter()
                .flat_map(|(from, bytes)| {
                    let control = match from {
                        From::Client => 0b010,
                        From::Server => 0b011,
                    };
                    bytes.chunks(usize::from(u16::MAX)).flat_map(move |piece| {
                        let len = (piece.len() as u16).to_le_bytes();
                        [control, len[0], len[1]]
                            .into_iter()
                            .chain(piece.iter().copied())
                    })
                })
                .collect(),
        ),
        "http1" => chunks.first().map(|(_, bytes)| bytes.clone()),
        // The server's frames (the client's start with the preface).
        "http2_frames" => {
            let frames: Vec<u8> = chunks
                .iter()
                .filter(|(from, _)| matches!(from, From::Server))
                .flat_map(|(_, bytes)| bytes.iter().copied())
                .collect();
            (!frames.is_empty()).then_some(frames)
        }
        _ => None,
    }
}

/// `> hex` / `< hex` lines (agent/tests/fixtures/record.py).
fn trace_chunks(text: &str) -> Vec<(From, Vec<u8>)> {
    text.lines()
        .filter_map(|line| {
            let (mark, hex) = line.split_once(' ')?;
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((
                if mark == ">" {
                    From::Client
                } else {
                    From::Server
                },
                bytes,
            ))
        })
        .collect()
}

/// `C`/`S`, a big-endian u32 length, the bytes
/// (agent/tests/fixtures/http2/capture.py).
fn h2_chunks(mut bytes: &[u8]) -> Vec<(From, Vec<u8>)> {
    let mut chunks = Vec::new();
    while let [side, a, b, c, d, rest @ ..] = bytes {
        let len = (u32::from_be_bytes([*a, *b, *c, *d]) as usize).min(rest.len());
        let from = if *side == b'C' {
            From::Client
        } else {
            From::Server
        };
        chunks.push((from, rest[..len].to_vec()));
        bytes = &rest[len..];
    }
    chunks
}
