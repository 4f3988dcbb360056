//! `cargo xtask vm`: runs a command (by default the kernel matrix test,
//! tests/tests/kernels.rs) under Debian's own kernels in qemu, with this
//! machine's root filesystem shared read-only, so the agent meets the
//! kernels users' nodes run without a disk image per kernel.
//!
//! - Kernels: Debian's generic `amd64` flavour (the `cloud` one has no 9p)
//!   from bullseye (5.10), bookworm (6.1) and bookworm-backports (6.12),
//!   downloaded once with apt into [`CACHE`] through a private apt
//!   configuration (the machine's own sources stay untouched), never
//!   installed as this machine's kernel.
//! - Boot: an initramfs of static busybox and the virtio/9p modules
//!   (`modprobe --show-depends` against the package's modules) mounts the
//!   host root over 9p and switches to it; the guest script mounts what the
//!   agent needs (proc, sysfs, tmpfs, tracefs, bpffs, cgroup2), runs the
//!   command as root with the output directory (`target/vm/<kernel>`, a
//!   second, writable 9p share) for its log and exit status, and powers off.
//! - qemu runs with software emulation: this machine's KVM does not run
//!   stock kernels. A boot takes ~10 s of wall time, the guest runs a few
//!   times slower than the host.
//! - `cargo xtask test` runs the matrix test as a step ([`suite`]) under the
//!   kernels the table marks `in_suite` (those the agent runs on), one VM
//!   at a time, with the release agent the suite built; `cargo xtask vm`
//!   boots the same kernels by default, or those named.
//!   A failed run prints the end of its console and output logs, so that
//!   CI's log says why.
//! - Downloads are made unattended as root: apt's private lists, one retry
//!   of a failed fetch, the package moved into the cache only once whole;
//!   a lock on the cache keeps concurrent runs from preparing the same
//!   kernel twice.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{build, cmd, setup};

/// Downloaded kernel packages and what is made from them, kept between runs.
const CACHE: &str = "/var/cache/sonde/kernels";
/// Debian mirror and the suites the kernels come from.
const MIRROR: &str = "http://deb.debian.org/debian";
const SUITES: &[&str] = &["bookworm", "bookworm-backports", "bullseye"];
/// Modules the initramfs loads (with their dependencies) to mount the
/// host's root: virtio PCI transport, 9p over virtio, the 9p filesystem.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Seconds a VM may run before it is stopped and counted as failed: a
/// matrix run takes about 2 minutes alone, 4 with another beside it.
const TIMEOUT_SECS: u64 = 600;
/// VMs the suite runs at once. One: a guest keeps about one host core
/// busy, yet two at once on 2 cores took 250 s each where one after the
/// other took 120 s + 90 s (each guest's 2 virtual CPUs waiting for each
/// other on a shared core).
const SUITE_JOBS: usize = 1;
/// Lines of a failed run's console and output logs printed.
const TAIL_LINES: usize = 60;

/// One kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// What the user types (`--kernel 6.1`).
    pub name: &'static str,
    /// Package name pattern (`apt-cache search --names-only`), the
    /// generic amd64 flavour; the newest match is used.
    package: &'static str,
    /// How its downloaded package files start.
    file_prefix: &'static str,
    /// Whether `cargo xtask test` runs the matrix test under it (a kernel
    /// the agent is known to run on); `cargo xtask vm --kernel` boots any.
    in_suite: bool,
    /// Optional features this kernel cannot run, as `sonde check` names
    /// them (comma-separated): the matrix test fails if any other is off.
    expect_off: &'static str,
}

/// The matrix: the oldest LTS kernels managed Kubernetes nodes run, and a
/// current one.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.12",
        package: r"^linux-image-6\.12\.[0-9.]*\+deb12-amd64-unsigned$",
        file_prefix: "linux-image-6.12.",
        in_suite: true,
        expect_off: "",
    },
    Kernel {
        name: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]*-amd64-unsigned$",
        file_prefix: "linux-image-6.1.0-",
        in_suite: true,
        expect_off: "",
    },
    Kernel {
        name: "5.10",
        package: r"^linux-image-5\.10\.0-[0-9]*-amd64-unsigned$",
        file_prefix: "linux-image-5.10.0-",
        in_suite: true,
        // Go's TLS programs walk buffers with bpf_loop (5.17); the Python
        // context probes read their attach cookie (5.15).
        expect_off: "Go,Python context",
    },
];

/// `cargo xtask vm` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kernels to boot (repeatable): 6.12, 6.1, 5.10. Default: those
    /// `cargo xtask test` boots (`in_suite` in the table of xtask/src/vm.rs).
    #[arg(long = "kernel")]
    kernels: Vec<String>,
    /// VMs run at once (each takes 2 virtual CPUs).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Seconds a VM may run before it is stopped and counted as failed.
    #[arg(long, default_value_t = TIMEOUT_SECS)]
    timeout: u64,
    /// Command to run in each VM, as root, in the workspace root (default:
    /// the kernel matrix test against a release agent).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs the command under each chosen kernel; fails if any run failed.
pub fn run(args: &Args) -> Result<()> {
    ensure!(
        cmd::is_root(),
        "`cargo xtask vm` installs qemu and loads eBPF programs in the VMs: run it as root"
    );
    let kernels = chosen(&args.kernels)?;
    setup::ensure(
        &[setup::Group::KernelMatrix],
        setup::Mode::Install,
        setup::Verbosity::Summary,
    )?;
    let agent = build::agent(build::Profile::Release)?;
    let command = if args.command.is_empty() {
        matrix_test()?
    } else {
        args.command.clone()
    };
    let results = boot_all(
        &kernels,
        &agent,
        &command,
        args.jobs,
        Duration::from_secs(args.timeout),
    )?;
    report(&results)
}

/// The kernel matrix step of `cargo xtask test` (what `cargo xtask vm`
/// runs without options): the matrix test under every kernel in the
/// suite, against `agent` (the suite's release build, not rebuilt), its
/// counts added to `tally`. The suite has installed the tools
/// ([`setup::Group::KernelMatrix`]).
pub fn suite(agent: &Path, tally: &mut cmd::TestTally) -> Result<()> {
    let results = boot_all(
        &chosen(&[])?,
        agent,
        &matrix_test()?,
        SUITE_JOBS,
        Duration::from_secs(TIMEOUT_SECS),
    )?;
    for result in &results {
        *tally += result.tally;
    }
    report(&results)
}

/// The kernels named, or those of the suite.
fn chosen(names: &[String]) -> Result<Vec<Kernel>> {
    if names.is_empty() {
        let left_out: Vec<&str> = KERNELS
            .iter()
            .filter(|k| !k.in_suite)
            .map(|k| k.name)
            .collect();
        if !left_out.is_empty() {
            eprintln!(
                "xtask vm: not in the suite (`cargo xtask vm --kernel` boots them): {}",
                left_out.join(", ")
            );
        }
        return Ok(suite_kernels(KERNELS));
    }
    names
        .iter()
        .map(|name| {
            KERNELS
                .iter()
                .find(|k| k.name == name.as_str())
                .copied()
                .with_context(|| {
                    let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
                    format!("unknown kernel {name}; known: {}", known.join(", "))
                })
        })
        .collect()
}

/// The kernels of `table` that `cargo xtask test` boots, in table order.
fn suite_kernels(table: &[Kernel]) -> Vec<Kernel> {
    table.iter().filter(|k| k.in_suite).copied().collect()
}

/// Prepares `kernels`, then boots them `jobs` at a time, each running
/// `command` for at most `timeout`; the results in the order of `kernels`.
fn boot_all(
    kernels: &[Kernel],
    agent: &Path,
    command: &[String],
    jobs: usize,
    timeout: Duration,
) -> Result<Vec<RunResult>> {
    let prepared = {
        let _cache = lock_cache()?;
        let mut lists_updated = false;
        kernels
            .iter()
            .map(|kernel| prepare(kernel, &mut lists_updated))
            .collect::<Result<Vec<_>>>()?
    };

    let mut results = Vec::new();
    let mut running: Vec<(Boot, Child, Instant)> = Vec::new();
    let mut queue = prepared.into_iter();
    loop {
        while running.len() < jobs.max(1) {
            let Some(boot) = queue.next() else { break };
            match start(&boot, agent, command) {
                Ok(child) => running.push((boot, child, Instant::now())),
                Err(err) => {
                    // No VM outlives the run.
                    for (_, mut child, _) in running {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    return Err(err);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let (_, child, started) = &mut running[i];
            let timed_out = started.elapsed() > timeout;
            if timed_out {
                // Killing a VM that just exited on its own fails harmlessly.
                let _ = child.kill();
            }
            if child.try_wait()?.is_some() {
                let (boot, _, started) = running.swap_remove(i);
                results.push(finish(&boot, started.elapsed(), timed_out));
            } else {
                i += 1;
            }
        }
    }
    results.sort_by_key(|result| kernels.iter().position(|k| k.name == result.kernel));
    Ok(results)
}

/// Prints one line per run; fails naming the kernels whose run failed.
fn report(results: &[RunResult]) -> Result<()> {
    eprintln!("\nxtask vm: results");
    let mut failed = Vec::new();
    for result in results {
        eprintln!(
            "  {:<6} {:<28} {:>5.0} s  {}",
            result.kernel,
            result.release,
            result.elapsed.as_secs_f64(),
            result.verdict
        );
        if !result.passed {
            failed.push(result.kernel);
        }
    }
    if !failed.is_empty() {
        bail!("failed under kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// The cache's lock, held while kernels are downloaded and unpacked:
/// another run (another user's `cargo xtask vm`) waits instead of writing
/// the same files.
fn lock_cache() -> Result<fs::File> {
    fs::create_dir_all(CACHE).with_context(|| format!("creating {CACHE}"))?;
    let path = Path::new(CACHE).join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!("xtask vm: waiting for another run's lock on {CACHE}");
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

/// apt with the private configuration under [`CACHE`]: Debian's suites
/// the kernels come from, its own package lists and download directory.
fn apt(program: &str) -> Command {
    let apt_dir = Path::new(CACHE).join("apt");
    let mut command = Command::new(program);
    // Root's cache is closed to apt's download sandbox user.
    command.args(["-o", "APT::Sandbox::User=root"]);
    for (option, value) in [
        ("Dir::Etc::SourceList", apt_dir.join("sources.list")),
        ("Dir::Etc::SourceParts", apt_dir.join("sources.list.d")),
        ("Dir::State::Lists", apt_dir.join("lists")),
        ("Dir::Cache", apt_dir.clone()),
    ] {
        command
            .arg("-o")
            .arg(format!("{option}={}", value.display()));
    }
    command
}

/// Writes the private sources and fetches their package lists.
fn update_lists() -> Result<()> {
    let apt_dir = Path::new(CACHE).join("apt");
    for dir in ["lists/partial", "archives/partial", "sources.list.d"] {
        fs::create_dir_all(apt_dir.join(dir))
            .with_context(|| format!("creating {}", apt_dir.join(dir).display()))?;
    }
    let sources: String = SUITES
        .iter()
        .map(|suite| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {suite} main\n"
            )
        })
        .collect();
    fs::write(apt_dir.join("sources.list"), sources)?;
    // A list that failed to download is an error, not a warning: these
    // lists hold nothing but the kernels.
    cmd::run_retrying(
        apt("apt-get").args(["update", "--error-on=any"]),
        setup::APT_RETRY_PAUSE,
    )
}

/// A kernel ready to boot.
struct Boot {
    kernel: &'static str,
    expect_off: &'static str,
    /// `uname -r` of the packaged kernel.
    release: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// Downloads (once), unpacks and builds the initramfs of `kernel`;
/// `lists_updated` says whether this run has fetched apt's lists already.
/// Each piece is made aside and renamed into place, so that an interrupted
/// run leaves nothing half made for the next to trust.
fn prepare(kernel: &Kernel, lists_updated: &mut bool) -> Result<Boot> {
    let cache = Path::new(CACHE);
    let deb = match cached_deb(cache, kernel)? {
        Some(deb) => deb,
        None => download(cache, kernel, lists_updated).with_context(|| {
            format!(
                "downloading Debian's {} kernel from {MIRROR} into {CACHE} \
                 (the network, or the mirror?)",
                kernel.name
            )
        })?,
    };
    let name = deb.file_name().unwrap_or_default().to_string_lossy();
    // linux-image-<release>-unsigned_<version>_amd64.deb
    let release = name
        .strip_prefix("linux-image-")
        .and_then(|rest| rest.split_once("-unsigned_"))
        .map(|(release, _)| release.to_owned())
        .with_context(|| format!("unexpected package file name {name}"))?;
    let unpacked = cache.join("unpacked");
    let root = unpacked.join(&release);
    if !root.is_dir() {
        let partial = unpacked.join(format!("{release}.partial"));
        if partial.exists() {
            fs::remove_dir_all(&partial)?;
        }
        fs::create_dir_all(&partial)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        cmd::run(Command::new("depmod").arg("-b").arg(&partial).arg(&release))?;
        fs::rename(&partial, &root)?;
    }
    let initrd = root.join("initrd.gz");
    if !initrd.is_file() {
        build_initrd(&root, &release, &initrd)?;
    }
    Ok(Boot {
        kernel: kernel.name,
        expect_off: kernel.expect_off,
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        release,
        initrd,
    })
}

/// Downloads the newest package of `kernel` into `cache`, through a
/// directory of its own so that an interrupted download leaves no `.deb`
/// in the cache.
fn download(cache: &Path, kernel: &Kernel, lists_updated: &mut bool) -> Result<PathBuf> {
    if !*lists_updated {
        update_lists()?;
        *lists_updated = true;
    }
    let package = newest_package(kernel)?;
    let partial = cache.join("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    cmd::run_retrying(
        apt("apt-get")
            .arg("download")
            .arg(&package)
            .current_dir(&partial),
        setup::APT_RETRY_PAUSE,
    )?;
    for entry in fs::read_dir(&partial)? {
        let path = entry?.path();
        if let Some(file) = path.file_name() {
            fs::rename(&path, cache.join(file))?;
        }
    }
    cached_deb(cache, kernel)?
        .with_context(|| format!("apt-get download {package} left no .deb in {CACHE}"))
}

/// The package of `kernel` in the cache, if downloaded before.
fn cached_deb(cache: &Path, kernel: &Kernel) -> Result<Option<PathBuf>> {
    let mut debs: Vec<PathBuf> = fs::read_dir(cache)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            // The generic flavour only (not -cloud-amd64, -rt-amd64).
            name.starts_with(kernel.file_prefix)
                && name.split('_').next().is_some_and(|package| {
                    package.ends_with("-amd64-unsigned")
                        && !package.ends_with("-cloud-amd64-unsigned")
                        && !package.ends_with("-rt-amd64-unsigned")
                })
                && name.ends_with(".deb")
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

/// The newest package matching `kernel.package` in the private lists.
fn newest_package(kernel: &Kernel) -> Result<String> {
    let out = apt("apt-cache")
        .args(["search", "--names-only", kernel.package])
        .output()
        .context("apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    // ABI numbers sort as versions: 6.1.0-9 < 6.1.0-50.
    names.sort_by_key(|name| {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    names
        .pop()
        .with_context(|| format!("no package matches {} in {SUITES:?}", kernel.package))
}

/// An initramfs: static busybox, the boot modules (decompressed: busybox
/// insmod reads plain ELF) in load order, and an init that mounts the
/// host root read-only and runs the script named on the command line.
fn build_initrd(root: &Path, release: &str, initrd: &Path) -> Result<()> {
    let staging = root.join("initrd");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(staging.join("bin"))?;
    fs::create_dir_all(staging.join("modules"))?;
    fs::copy(setup::BUSYBOX, staging.join("bin/busybox"))?;
    let mut modules: Vec<String> = Vec::new();
    for module in BOOT_MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .args(["-S", release, "--show-depends", module])
            .output()
            .context("modprobe --show-depends")?;
        ensure!(
            out.status.success(),
            "modprobe --show-depends {module} for {release}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "insmod /path/x.ko[.xz] " or "builtin x"
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = path.trim().to_owned();
                if !modules.contains(&path) {
                    modules.push(path);
                }
            }
        }
    }
    for (i, path) in modules.iter().enumerate() {
        let file = Path::new(path)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let plain = file.trim_end_matches(".xz");
        let target = staging.join("modules").join(format!("{i:02}-{plain}"));
        if file.ends_with(".xz") {
            let out = Command::new("xz").arg("-dc").arg(path).output()?;
            ensure!(out.status.success(), "xz -dc {path}");
            fs::write(&target, out.stdout)?;
        } else {
            fs::copy(path, &target)?;
        }
    }
    let init = staging.join("init");
    fs::write(&init, INIT)?;
    set_executable(&init)?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1")
        .current_dir(&staging)
        .stderr(Stdio::inherit())
        .output()
        .context("cpio")?;
    ensure!(archive.status.success(), "building the initramfs failed");
    let partial = initrd.with_extension("partial");
    fs::write(&partial, archive.stdout)?;
    fs::rename(&partial, initrd)?;
    Ok(())
}

/// The initramfs init: modules, host root over 9p, then the run's script
/// (`sonde.script=` on the kernel command line).
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /dev /newroot
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in /modules/*; do $B insmod "$m" || echo "sonde-vm: insmod $m failed"; done
script=$($B sed -n 's/.*sonde\.script=\([^ ]*\).*/\1/p' /proc/cmdline)
if ! $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro root /newroot; then
    echo "sonde-vm: mounting the host root failed"
    $B poweroff -f
fi
$B umount /proc
exec $B switch_root /newroot /bin/sh "$script"
"#;

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The guest side of a run: mounts, then the command, its output and exit
/// status in the output directory, then power off.
fn guest_script(out: &Path, agent: &Path, expect_off: &str, command: &[String]) -> String {
    let quoted: Vec<String> = command.iter().map(|arg| shell_quote(arg)).collect();
    format!(
        r#"set -u
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs shm /dev/shm
mount -t devpts devpts /dev/pts
for dir in /tmp /run /var/tmp /root; do mount -t tmpfs tmp "$dir"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out {out}
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
export HOME=/root TMPDIR=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export SONDE_AGENT_BIN={agent} SONDE_E2E_REQUIRED=1 SONDE_EXPECT_OFF={expect_off}
export SONDE_E2E_START_SECS=240
cd {workspace}
uname -r > {out}/release
{command} > {out}/output.log 2>&1
echo $? > {out}/status
sync
echo o > /proc/sysrq-trigger
sleep 30
"#,
        out = shell_quote(&out.display().to_string()),
        agent = shell_quote(&agent.display().to_string()),
        expect_off = shell_quote(expect_off),
        workspace = shell_quote(&cmd::workspace_root().display().to_string()),
        command = quoted.join(" "),
    )
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The output directory of a kernel's run.
fn out_dir(kernel: &str) -> PathBuf {
    cmd::target_dir().join("vm").join(kernel)
}

/// Boots `boot` running `command`.
fn start(boot: &Boot, agent: &Path, command: &[String]) -> Result<Child> {
    let out = out_dir(boot.kernel);
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    let script = out.join("guest.sh");
    fs::write(&script, guest_script(&out, agent, boot.expect_off, command))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "3G",
    ])
    .args(["-nodefaults", "-no-reboot", "-display", "none"])
    .arg("-serial")
    .arg(format!("file:{}", out.join("console.log").display()))
    .arg("-kernel")
    .arg(&boot.vmlinuz)
    .arg("-initrd")
    .arg(&boot.initrd)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 panic=-1 quiet sonde.script={}",
        script.display()
    ))
    .arg("-virtfs")
    .arg("local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap")
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=out,security_model=none,multidevs=remap",
        out.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    eprintln!("xtask vm: {} ({}) booting", boot.kernel, boot.release);
    eprintln!("$ {}", cmd::display(&qemu));
    qemu.spawn().context("starting qemu-system-x86_64")
}

/// How a run ended.
struct RunResult {
    kernel: &'static str,
    release: String,
    elapsed: Duration,
    passed: bool,
    verdict: String,
    /// What it adds to the suite's test counts.
    tally: cmd::TestTally,
}

/// Reads what the guest left in its output directory.
fn finish(boot: &Boot, elapsed: Duration, timed_out: bool) -> RunResult {
    let out = out_dir(boot.kernel);
    let status = fs::read_to_string(out.join("status"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let passed = status == Some(0) && !timed_out;
    let verdict = match (status, timed_out) {
        (_, true) => format!("TIMED OUT (see {})", out.display()),
        (Some(0), _) => "passed".to_owned(),
        (Some(code), _) => format!("FAILED, exit {code} (see {}/output.log)", out.display()),
        (None, _) => format!("FAILED: no exit status (see {}/console.log)", out.display()),
    };
    let log = fs::read_to_string(out.join("output.log")).unwrap_or_default();
    // The `sonde check` report the matrix test printed, once (a failed
    // assertion prints it again).
    let mut shown: Vec<&str> = Vec::new();
    for line in log.lines().filter(|line| {
        [
            "capture ",
            "TLS ",
            "injection ",
            "HTTP/2 injection ",
            "in-kernel context ",
        ]
        .iter()
        .any(|item| line.starts_with(item))
    }) {
        if shown.contains(&line) {
            break;
        }
        shown.push(line);
        eprintln!("  {}: {line}", boot.kernel);
    }
    if !passed {
        // The console says why a guest never ran the command or stopped
        // (a panic, the host root not mounted); the output, why it failed.
        print_tail(boot.kernel, &out.join("console.log"));
        print_tail(boot.kernel, &out.join("output.log"));
    }
    RunResult {
        kernel: boot.kernel,
        release: boot.release.clone(),
        elapsed,
        passed,
        verdict,
        tally: tally(&log, passed),
    }
}

/// Prints the last [`TAIL_LINES`] lines of a run's log.
fn print_tail(kernel: &str, path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let shown = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if shown.is_empty() {
        eprintln!("--- {kernel}: {} is empty ---", path.display());
        return;
    }
    eprintln!(
        "--- {kernel}: {} (last {} of {} lines) ---",
        path.display(),
        shown.len(),
        lines.len()
    );
    for line in shown {
        eprintln!("{line}");
    }
}

/// What a run adds to the suite's test counts: the libtest result lines
/// its command printed, and one failure for a run that failed without
/// reporting one (a guest that did not boot, a timeout, a crash).
fn tally(log: &str, passed: bool) -> cmd::TestTally {
    let mut tally = cmd::TestTally::default();
    for line in log.lines() {
        tally.add_line(line);
    }
    if !passed && tally.failed == 0 {
        tally.failed = 1;
    }
    tally
}

/// Builds the kernel matrix test and returns the command that runs it.
fn matrix_test() -> Result<Vec<String>> {
    let out = cmd::cargo()
        .args([
            "test",
            "--package",
            "sonde-tests",
            "--test",
            "kernels",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the kernel matrix test")?;
    ensure!(
        out.status.success(),
        "building the kernel matrix test failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "kernels")
        .find_map(|message| message["executable"].as_str().map(str::to_owned))
        .map(|executable| vec![executable, "--nocapture".to_owned()])
        .context("cargo did not report the kernel matrix test's executable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_chosen_by_name_or_are_the_suites() {
        let default: Vec<&str> = chosen(&[]).unwrap().iter().map(|k| k.name).collect();
        let suite: Vec<&str> = suite_kernels(KERNELS).iter().map(|k| k.name).collect();
        assert_eq!(default, suite);
        let one = chosen(&["6.1".to_owned()]).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "6.1");
        let error = chosen(&["4.19".to_owned()]).unwrap_err().to_string();
        assert!(error.contains("known: 6.12, 6.1, 5.10"), "{error}");
    }

    fn kernel(name: &'static str, in_suite: bool) -> Kernel {
        Kernel {
            name,
            package: "",
            file_prefix: "",
            in_suite,
            expect_off: "",
        }
    }

    #[test]
    fn the_suite_boots_the_kernels_marked_in_suite_in_table_order() {
        let table = [
            kernel("6.12", true),
            kernel("5.10", false),
            kernel("6.1", true),
        ];
        let names: Vec<&str> = suite_kernels(&table).iter().map(|k| k.name).collect();
        assert_eq!(names, ["6.12", "6.1"]);
        assert!(suite_kernels(&[kernel("5.10", false)]).is_empty());
        // A table with none in the suite would pass the step without a run.
        assert!(!suite_kernels(KERNELS).is_empty());
    }

    #[test]
    fn a_run_counts_its_test_results_and_a_failure_without_any_as_one() {
        let counts = |passed, failed| cmd::TestTally {
            passed,
            failed,
            ignored: 0,
        };
        let ok = "running 1 test\ntest what_this_kernel_must_run ... ok\n\n\
                  test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; \
                  0 filtered out; finished in 77.01s\n";
        assert_eq!(tally(ok, true), counts(1, 0));
        let failed = "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured";
        assert_eq!(tally(failed, false), counts(0, 1));
        // The guest never ran the test, or was stopped before it reported.
        assert_eq!(tally("", false), counts(0, 1));
        assert_eq!(tally("running 1 test\n", false), counts(0, 1));
        // The test passed, then the guest did not power off in time.
        assert_eq!(tally(ok, false), counts(1, 1));
    }

    #[test]
    fn the_guest_script_quotes_the_command_and_reports_its_status() {
        let script = guest_script(
            Path::new("/w/target/vm/6.1"),
            Path::new("/w/target/release/sonde"),
            "injection",
            &["sh".to_owned(), "-c".to_owned(), "echo 'hi'".to_owned()],
        );
        assert!(script.contains(r#"'sh' '-c' 'echo '\''hi'\''' > '/w/target/vm/6.1'/output.log"#));
        assert!(script.contains("echo $? > '/w/target/vm/6.1'/status"));
        assert!(script.contains(
            "export SONDE_AGENT_BIN='/w/target/release/sonde' SONDE_E2E_REQUIRED=1 \
             SONDE_EXPECT_OFF='injection'"
        ));
    }
}
