//! Loads the kernel programs, attaches them, and reads their ring buffers.
//!
//! The object built by `cargo xtask build-ebpf` is embedded in the binary.
//! Kernel struct offsets come from BTF ([`btf`]), tracefs is mounted when
//! missing, and every record is decoded ([`decode`]) before it goes on. The
//! reader never blocks on a slow consumer: a full channel drops the event
//! and counts it.

pub mod btf;
pub mod decode;
pub mod features;
mod function_probes;
pub mod go;
pub mod inject;
pub mod nginx;
pub mod node;
pub mod openssl;
pub mod python;
mod reader;
mod targets;

use std::{
    io,
    path::Path,
    sync::{Arc, Mutex},
};

use agent_common::{KernelConfig, socket_data::MAX_CALL_CAPTURE_BYTES, socket_state::TrackedConn};
use aya::{
    Btf, Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, TracePoint},
};
pub use features::{CaptureHooks, Feature, FeatureReport, FeatureState};
pub use openssl::{FileRole, OpensslProbes, SslLibrary, TlsAttach};
pub use reader::{EventBatch, MAX_BATCH, ReaderChannels, run_reader};
pub use targets::{TargetMap, TargetSet};
use tracing::{debug, info, warn};

use crate::{
    model::error::ErrorChain,
    sampling::HeadSampler,
    telemetry::{Counter, Stats},
};

/// The kernel object, or an empty slice when the agent was built without it.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";
const FORK_FORMAT: &str = "/sys/kernel/tracing/events/sched/sched_process_fork/format";

/// What can stop the probes from loading. Each names what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Built without `cargo xtask build-ebpf`.
    #[error(
        "this agent binary was built without its kernel programs; build it with `cargo xtask build`"
    )]
    NoObject,
    /// tracefs is absent and could not be mounted.
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed (the agent needs root)")]
    Tracefs(#[source] io::Error),
    /// The kernel's BTF could not be read or lacks a needed type.
    #[error(
        "reading kernel BTF (/sys/kernel/btf/vmlinux; needs CONFIG_DEBUG_INFO_BTF): \
         the agent reads kernel struct layouts from it and cannot run without it"
    )]
    Btf(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A tracepoint's format file could not be read or lacks a field.
    #[error("reading {path}: the agent follows forked processes with this tracepoint")]
    TracepointFormat {
        /// The format file.
        path: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Loading the object failed: missing privileges, or the kernel
    /// rejected a program.
    #[error("loading the kernel programs failed; {hint}")]
    Load {
        /// What to do about it, from who the agent runs as.
        hint: LoadHint,
        /// Cause.
        #[source]
        source: aya::EbpfError,
    },
    /// One program could not be loaded or attached.
    #[error("loading or attaching {program} to {hook}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Kernel hook.
        hook: &'static str,
        /// Cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// No capture path loads on this kernel.
    #[error(
        "this kernel offers no hook the agent can capture socket data on \
         (Linux >= 6.2: sock_*_length tracepoints; else fexit on \
         tcp_sendmsg/tcp_recvmsg, which needs BTF and Linux >= 5.5). \
         Tracepoints: {tracepoints}. fexit: {fexit}. Portable fexit: {portable}"
    )]
    NoCapture {
        /// Why the tracepoint path failed.
        tracepoints: String,
        /// Why the fexit path failed.
        fexit: String,
        /// Why the portable fexit path failed.
        portable: String,
    },
    /// A kernel function's parameters are not the ones a program reads.
    #[error("{function} takes ({found}) on this kernel, not what the fexit programs read")]
    Prototype {
        /// Function.
        function: &'static str,
        /// Its parameter names.
        found: String,
    },
    /// No cgroup v2 hierarchy is mounted (needed for injection).
    #[error("no cgroup v2 mount found in /proc/self/mountinfo (injection attaches to a cgroup v2)")]
    NoCgroup2,
    /// The cgroup for injection could not be opened.
    #[error("opening cgroup {path}")]
    Cgroup {
        /// Directory.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A map the programs define is missing or of the wrong type.
    #[error("kernel object has no usable map {0}")]
    Map(&'static str),
}

/// Why loading may have failed, for [`ProbeError::Load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadHint {
    /// Not root: most likely the privileges.
    Privileges,
    /// Root already: the kernel refused a program.
    Rejected,
}

impl LoadHint {
    /// The hint for this process.
    fn current() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            Self::Rejected
        } else {
            Self::Privileges
        }
    }
}

impl std::fmt::Display for LoadHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Privileges => {
                "the agent needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN + \
                 CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH"
            }
            Self::Rejected => {
                "the kernel rejected a program (SONDE_VERIFIER_LOG=1 puts the verifier's log \
                 in this error)"
            }
        })
    }
}

/// Settings for loading the probes.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Bytes captured per send/receive by default (capped at
    /// `MAX_CALL_CAPTURE_BYTES`).
    pub capture_bytes: u32,
    /// Size of the data ring buffer in bytes (a power of two, >= page size).
    pub data_ring_bytes: u32,
    /// Insert `traceparent` into outgoing HTTP/1 and HTTP/2 requests.
    pub inject_traceparent: bool,
    /// cgroup v2 directory whose processes get injection (default: the root).
    pub inject_cgroup: Option<std::path::PathBuf>,
    /// Load the OpenSSL uprobe programs (TLS plaintext).
    pub tls: bool,
    /// Evaluate the Node.js context script in Node processes.
    pub node_inspector: bool,
    /// Head sampler bits and rejection threshold (`HeadSampler::kernel_settings`).
    pub sampling: (u32, u64),
}

impl ProbeConfig {
    /// The settings `config` asks for, sampling as `sampler` does.
    pub fn new(config: &crate::config::AgentConfig, sampler: &HeadSampler) -> Self {
        Self {
            capture_bytes: config.capture.payload_bytes,
            data_ring_bytes: config.capture.ring_buffer_bytes,
            inject_traceparent: config.trace_context.inject,
            inject_cgroup: config.trace_context.inject_cgroup.clone(),
            tls: config.tls.enabled,
            node_inspector: config.trace_context.node_inspector,
            sampling: sampler.kernel_settings(),
        }
    }
}

/// Loaded and attached probes, in the parts the pipeline hands to its
/// stages. Dropping `handle` detaches every program.
pub struct Probes {
    /// Keeps the programs attached; reads the kernel's loss counters.
    pub handle: ProbeHandle,
    /// The kernel's target set.
    pub targets: TargetMap,
    /// Socket data and close events.
    pub data_ring: RingBuf<MapData>,
    /// Process events.
    pub control_ring: RingBuf<MapData>,
    /// The OpenSSL programs, loaded and waiting for libraries; `None` when
    /// TLS capture is off or could not be set up.
    pub openssl: Option<OpensslProbes>,
    /// Per-connection capture settings.
    pub conn_capture: ConnCapture,
    /// The capture hooks and the features this kernel runs.
    pub features: FeatureReport,
}

/// Per-connection capture settings the agent changes as it learns what a
/// connection speaks (the kernel's `TRACKED_CONNS`).
pub struct ConnCapture {
    conns: HashMap<MapData, u64, TrackedConn>,
}

impl ConnCapture {
    /// The kernel copies every byte of the connection's calls (up to
    /// `MAX_CALL_CAPTURE_BYTES` each), not just the configured prefix.
    /// A connection the kernel no longer tracks (closed) is left alone.
    pub fn capture_all(&mut self, cookie: u64) {
        let Ok(mut conn) = self.conns.get(&cookie, 0) else {
            return;
        };
        conn.capture_bytes = MAX_CALL_CAPTURE_BYTES as u32;
        if let Err(error) = self.conns.insert(cookie, conn, 0) {
            debug!(cookie, %error, "could not raise the connection's capture");
        }
    }
}

/// Owns the loaded programs and their links.
pub struct ProbeHandle {
    _ebpf: Arc<Mutex<Ebpf>>,
    drops: PerCpuArray<MapData, u64>,
    inject_stats: PerCpuArray<MapData, u64>,
}

impl ProbeHandle {
    /// Copies the kernel's counters (summed over CPUs) into `stats`.
    pub fn publish_kernel_counters(&self, stats: &Stats) {
        inject::publish_stats(&self.inject_stats, stats);
        let read = |index: u32| -> u64 {
            self.drops
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        stats.set(
            Counter::KernelDataRingbufFull,
            read(agent_common::drops::DATA_RINGBUF_FULL),
        );
        stats.set(
            Counter::KernelControlRingbufFull,
            read(agent_common::drops::CONTROL_RINGBUF_FULL),
        );
        stats.set(
            Counter::KernelPayloadReadFailed,
            read(agent_common::drops::PAYLOAD_READ_FAILED),
        );
        stats.set(
            Counter::KernelTlsSocketUnknown,
            read(agent_common::drops::TLS_SOCKET_UNKNOWN),
        );
        stats.set(
            Counter::KernelCaptureStepsExhausted,
            read(agent_common::drops::CAPTURE_STEPS_EXHAUSTED),
        );
    }
}

/// One attachment: program name in the object and where it goes.
enum Hook {
    Btf(&'static str),
    Tracepoint(&'static str, &'static str),
    FExit(&'static str),
}

/// What the agent does if the kernel refuses a program.
enum OnRefusal {
    /// Nothing works without it: the error is returned.
    Fail,
    /// The program also serves an optional feature, which goes off; this
    /// program (same hook, without that feature) is attached instead.
    FallBack(Feature, &'static str),
}

/// A program, where it goes, and what to do without it.
type HookSpec = (&'static str, Hook, OnRefusal);

/// Capture on the `sock_*_length` tracepoints (Linux >= 6.2). One program
/// per tracepoint: each run costs every socket call on the machine.
const TRACEPOINT_CAPTURE: &[HookSpec] = &[
    (
        "sock_send_length",
        Hook::Btf("sock_send_length"),
        OnRefusal::Fail,
    ),
    (
        "sock_recv_length",
        Hook::Btf("sock_recv_length"),
        OnRefusal::FallBack(Feature::KernelContext, "sock_recv_length_capture"),
    ),
    SOCKET_STATE,
];

/// Capture on fexit `tcp_sendmsg` / `tcp_recvmsg`, where the tracepoints
/// do not exist.
const FEXIT_CAPTURE: &[HookSpec] = &[
    (
        "tcp_sendmsg_exit",
        Hook::FExit("tcp_sendmsg"),
        OnRefusal::Fail,
    ),
    (
        "tcp_recvmsg_exit",
        Hook::FExit("tcp_recvmsg"),
        OnRefusal::FallBack(Feature::KernelContext, "tcp_recvmsg_capture"),
    ),
    SOCKET_STATE,
];

/// The same hooks with the portable programs (kernels without `bpf_loop`
/// or socket cookies in tracing programs, and the older `tcp_recvmsg`),
/// which identify connections by socket address: their socket state
/// program too.
const PORTABLE_CAPTURE: &[HookSpec] = &[
    (
        "tcp_sendmsg_portable",
        Hook::FExit("tcp_sendmsg"),
        OnRefusal::Fail,
    ),
    (
        "tcp_recvmsg_portable",
        Hook::FExit("tcp_recvmsg"),
        OnRefusal::FallBack(Feature::KernelContext, "tcp_recvmsg_portable_capture"),
    ),
    (
        "inet_sock_set_state_portable",
        Hook::Btf("inet_sock_set_state"),
        OnRefusal::Fail,
    ),
];

/// Connection side and life cycle, with connections identified by cookie.
const SOCKET_STATE: HookSpec = (
    "inet_sock_set_state",
    Hook::Btf("inet_sock_set_state"),
    OnRefusal::Fail,
);

/// `tcp_recvmsg`'s parameters as the fexit programs read them (Linux >= 5.19).
const TCP_RECVMSG_PARAMETERS: [&str; 5] = ["sk", "msg", "len", "flags", "addr_len"];
/// As the portable programs read them (before 5.19).
const TCP_RECVMSG_NONBLOCK_PARAMETERS: [&str; 6] =
    ["sk", "msg", "len", "nonblock", "flags", "addr_len"];
/// `tcp_sendmsg`'s.
const TCP_SENDMSG_PARAMETERS: [&str; 3] = ["sk", "msg", "size"];

/// Every capture path does these the same way.
const COMMON_HOOKS: &[HookSpec] = &[
    (
        "sys_exit_accept",
        Hook::Tracepoint("syscalls", "sys_exit_accept"),
        OnRefusal::Fail,
    ),
    (
        "sys_exit_accept4",
        Hook::Tracepoint("syscalls", "sys_exit_accept4"),
        OnRefusal::Fail,
    ),
    (
        "sched_process_exec",
        Hook::Tracepoint("sched", "sched_process_exec"),
        OnRefusal::Fail,
    ),
    (
        "sched_process_exit",
        Hook::Tracepoint("sched", "sched_process_exit"),
        OnRefusal::Fail,
    ),
    (
        "sched_process_fork",
        Hook::Tracepoint("sched", "sched_process_fork"),
        OnRefusal::Fail,
    ),
];

impl Probes {
    /// Loads the embedded object and attaches every program but the
    /// OpenSSL ones, which are attached per library as they are found.
    pub fn load(config: &ProbeConfig, stats: Arc<Stats>) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        ensure_tracefs()?;
        raise_memlock_limit();
        // The kernel's BTF is parsed three ways (offsets here, aya's loader
        // and aya's `Btf` for BTF programs), each several MiB: one at a time,
        // or together they set the agent's peak RSS.
        let (kernel_config, prototypes, bpf_send_prototype) = {
            let data = std::fs::read("/sys/kernel/btf/vmlinux")
                .map_err(|e| ProbeError::Btf(Box::new(e)))?;
            let kernel_btf =
                btf::KernelBtf::parse(&data).map_err(|e| ProbeError::Btf(Box::new(e)))?;
            (
                kernel_config(config, &kernel_btf)?,
                FexitPrototypes::check(&kernel_btf),
                check_prototype(&kernel_btf, "tcp_bpf_sendmsg", &TCP_SENDMSG_PARAMETERS),
            )
        };
        let mut loader = EbpfLoader::new();
        // `new` parsed its own copy; it is replaced by `btf` below.
        loader.btf(None);
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(Box::new(e)))?;
        if let Some(level) = std::env::var_os("SONDE_VERIFIER_LOG") {
            // The verifier's output in load errors, for kernel-side
            // debugging: each instruction it walked (1), or also the
            // register states at each (2), which overflows the largest log
            // buffer for big programs (kernels before 6.4 then keep the
            // start of the log and lose the error at its end).
            let detail = if level == "2" {
                VerifierLogLevel::VERBOSE
            } else {
                VerifierLogLevel::DEBUG
            };
            loader.verifier_log_level(detail | VerifierLogLevel::STATS);
        }
        let mut ebpf = loader
            .btf(Some(&btf))
            .override_global("CONFIG", &kernel_config, true)
            .map_max_entries("DATA_EVENTS", config.data_ring_bytes)
            .map_max_entries("TARGET_FLAGS", targets::flag_entries())
            .map_max_entries("TLS_OR_GO", targets::flag_entries())
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Load {
                hint: LoadHint::current(),
                source,
            })?;
        let mut features = attach_capture(&mut ebpf, &btf, prototypes)?;
        attach_all(&mut ebpf, COMMON_HOOKS, &btf, &mut features)?;
        attach_injection(&mut ebpf, &btf, config, bpf_send_prototype, &mut features)?;
        let inject_stats = PerCpuArray::try_from(take(&mut ebpf, "INJECT_STATS")?)
            .map_err(|_| ProbeError::Map("INJECT_STATS"))?;
        let targets = TargetMap::new(
            take(&mut ebpf, "TARGETS")?,
            take(&mut ebpf, "TARGET_FLAGS")?,
            take(&mut ebpf, "SAMPLING_THRESHOLDS")?,
        )
        .map_err(|_| ProbeError::Map("TARGETS"))?;
        let data_ring = RingBuf::try_from(take(&mut ebpf, "DATA_EVENTS")?)
            .map_err(|_| ProbeError::Map("DATA_EVENTS"))?;
        let control_ring = RingBuf::try_from(take(&mut ebpf, "CONTROL_EVENTS")?)
            .map_err(|_| ProbeError::Map("CONTROL_EVENTS"))?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, "DROPS")?)
            .map_err(|_| ProbeError::Map("DROPS"))?;
        let conns = HashMap::try_from(take(&mut ebpf, "TRACKED_CONNS")?)
            .map_err(|_| ProbeError::Map("TRACKED_CONNS"))?;
        let ebpf = Arc::new(Mutex::new(ebpf));
        // TLS is an addition to plaintext capture: if its programs cannot be
        // loaded (a kernel that refuses them), the rest still runs.
        let openssl = if config.tls {
            let portable = features.capture == CaptureHooks::TcpFexitPortable;
            let loaded = OpensslProbes::load(
                Arc::clone(&ebpf),
                Arc::clone(&stats),
                portable,
                config.node_inspector,
            );
            match loaded {
                Ok(openssl) => {
                    features.set(Feature::Go, openssl.go_state());
                    features.set(Feature::PythonContext, openssl.python_state());
                    features.set(Feature::NodeContext, openssl.node_state());
                    Some(openssl)
                }
                Err(error) => {
                    let off = FeatureState::Off(ErrorChain(&error).to_string());
                    features.set(Feature::Tls, off.clone());
                    features.set(Feature::Go, off.clone());
                    features.set(Feature::PythonContext, off.clone());
                    features.set(Feature::NodeContext, off);
                    None
                }
            }
        } else {
            for feature in [
                Feature::Tls,
                Feature::Go,
                Feature::PythonContext,
                Feature::NodeContext,
            ] {
                features.set(feature, FeatureState::Disabled);
            }
            None
        };
        features.publish(&stats);
        info!(
            capture_bytes = kernel_config.capture_bytes,
            "kernel programs attached"
        );
        Ok(Self {
            handle: ProbeHandle {
                _ebpf: ebpf,
                drops,
                inject_stats,
            },
            targets,
            data_ring,
            control_ring,
            openssl,
            conn_capture: ConnCapture { conns },
            features,
        })
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Map(name))
}

/// Attaches the injection programs if asked to and the capture path allows,
/// recording in `features` why not; fails only for a cgroup the user named
/// that cannot be used.
fn attach_injection(
    ebpf: &mut Ebpf,
    btf: &Btf,
    config: &ProbeConfig,
    bpf_send_prototype: Result<(), ProbeError>,
    features: &mut FeatureReport,
) -> Result<(), ProbeError> {
    let off = |features: &mut FeatureReport, state: FeatureState| {
        features.set(Feature::Injection, state.clone());
        features.set(Feature::Http2Injection, state);
    };
    if !config.inject_traceparent {
        off(features, FeatureState::Disabled);
        return Ok(());
    }
    // On the fexit paths a socket in injection's sockhash sends through
    // tcp_bpf_sendmsg, not tcp_sendmsg: without a capture program there
    // too, injection stays off rather than lose every request such a
    // socket sends.
    let programs = match features.capture {
        CaptureHooks::SockLengthTracepoints => &inject::WITH_TRACEPOINTS,
        CaptureHooks::TcpFexit => &inject::WITH_FEXIT,
        CaptureHooks::TcpFexitPortable => &inject::WITH_PORTABLE,
    };
    let injected_sends = match programs.sockmap_sends {
        None => Ok(()),
        Some(program) => bpf_send_prototype
            .and_then(|()| attach(ebpf, program, &Hook::FExit("tcp_bpf_sendmsg"), btf)),
    };
    if let Err(error) = injected_sends {
        off(features, FeatureState::Off(ErrorChain(&error).to_string()));
        return Ok(());
    }
    match inject::attach(ebpf, config.inject_cgroup.clone(), programs) {
        Ok(http2) => features.set(Feature::Http2Injection, http2),
        // Injection is an extra (no cgroup v2, no sock_ops or sk_msg):
        // without it the agent still traces. A cgroup the user named is a
        // setting to fix, though.
        Err(error) if config.inject_cgroup.is_none() => {
            off(features, FeatureState::Off(ErrorChain(&error).to_string()));
        }
        Err(error) => return Err(error),
    }
    Ok(())
}

/// Whether the kernel's TCP functions take the arguments each set of fexit
/// programs reads.
struct FexitPrototypes {
    /// `FEXIT_CAPTURE`'s (Linux >= 5.19).
    current: Result<(), ProbeError>,
    /// `PORTABLE_CAPTURE`'s (before 5.19).
    portable: Result<(), ProbeError>,
}

impl FexitPrototypes {
    fn check(kernel_btf: &btf::KernelBtf) -> Self {
        let with_recvmsg = |parameters: &[&str]| {
            check_prototype(kernel_btf, "tcp_sendmsg", &TCP_SENDMSG_PARAMETERS)
                .and_then(|()| check_prototype(kernel_btf, "tcp_recvmsg", parameters))
        };
        Self {
            current: with_recvmsg(&TCP_RECVMSG_PARAMETERS),
            portable: with_recvmsg(&TCP_RECVMSG_NONBLOCK_PARAMETERS),
        }
    }
}

/// Attaches the capture programs the kernel offers, by trying them in order
/// of preference: the `sock_*_length` tracepoints, else fexit on the TCP
/// send and receive functions, else the portable fexit programs. A path
/// that fails is detached again
/// before the next is tried, so no call is reported twice.
fn attach_capture(
    ebpf: &mut Ebpf,
    btf: &Btf,
    prototypes: FexitPrototypes,
) -> Result<FeatureReport, ProbeError> {
    let mut features = FeatureReport::new(CaptureHooks::SockLengthTracepoints);
    let tracepoints = match attach_all(ebpf, TRACEPOINT_CAPTURE, btf, &mut features) {
        Ok(()) => return Ok(features),
        Err(error) => {
            unload(ebpf, TRACEPOINT_CAPTURE);
            error
        }
    };
    debug!(error = %ErrorChain(&tracepoints), "no sock_*_length tracepoints, trying fexit");
    let mut features = FeatureReport::new(CaptureHooks::TcpFexit);
    let fexit = match prototypes
        .current
        .and_then(|()| attach_all(ebpf, FEXIT_CAPTURE, btf, &mut features))
    {
        Ok(()) => return Ok(features),
        Err(error) => {
            unload(ebpf, FEXIT_CAPTURE);
            error
        }
    };
    debug!(error = %ErrorChain(&fexit), "fexit programs refused, trying the portable ones");
    let mut features = FeatureReport::new(CaptureHooks::TcpFexitPortable);
    match prototypes
        .portable
        .and_then(|()| attach_all(ebpf, PORTABLE_CAPTURE, btf, &mut features))
    {
        Ok(()) => Ok(features),
        Err(portable) => {
            unload(ebpf, PORTABLE_CAPTURE);
            Err(ProbeError::NoCapture {
                tracepoints: ErrorChain(&tracepoints).to_string(),
                fexit: ErrorChain(&fexit).to_string(),
                portable: ErrorChain(&portable).to_string(),
            })
        }
    }
}

/// The fexit programs read `function`'s arguments by position.
fn check_prototype(
    kernel_btf: &btf::KernelBtf,
    function: &'static str,
    expected: &[&str],
) -> Result<(), ProbeError> {
    let found = kernel_btf
        .parameters(function)
        .map_err(|e| ProbeError::Btf(Box::new(e)))?;
    if found != expected {
        return Err(ProbeError::Prototype {
            function,
            found: found.join(", "),
        });
    }
    Ok(())
}

/// Attaches `hooks` in order; a program serving an optional feature that
/// fails turns that feature off in `features` and its fallback is
/// attached; any other failure is returned.
fn attach_all(
    ebpf: &mut Ebpf,
    hooks: &[HookSpec],
    btf: &Btf,
    features: &mut FeatureReport,
) -> Result<(), ProbeError> {
    for (program, hook, on_refusal) in hooks {
        match (attach(ebpf, program, hook, btf), on_refusal) {
            (Ok(()), _) => {}
            (Err(error), OnRefusal::FallBack(feature, fallback)) => {
                features.set(*feature, FeatureState::Off(ErrorChain(&error).to_string()));
                attach(ebpf, fallback, hook, btf)?;
            }
            (Err(error), OnRefusal::Fail) => return Err(error),
        }
    }
    Ok(())
}

/// Detaches and unloads `hooks`' programs and fallbacks (those never
/// loaded are skipped).
fn unload(ebpf: &mut Ebpf, hooks: &[HookSpec]) {
    for (program, hook, on_refusal) in hooks {
        let fallback = match on_refusal {
            OnRefusal::FallBack(_, fallback) => Some(*fallback),
            OnRefusal::Fail => None,
        };
        for program in std::iter::once(*program).chain(fallback) {
            let Some(prog) = ebpf.program_mut(program) else {
                continue;
            };
            // Unloading fails only for a program that was not loaded.
            let _ = match hook {
                Hook::Btf(_) => {
                    <&mut BtfTracePoint>::try_from(prog).and_then(BtfTracePoint::unload)
                }
                Hook::Tracepoint(..) => {
                    <&mut TracePoint>::try_from(prog).and_then(TracePoint::unload)
                }
                Hook::FExit(_) => <&mut FExit>::try_from(prog).and_then(FExit::unload),
            };
        }
    }
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    hook: &Hook,
    btf: &Btf,
) -> Result<(), ProbeError> {
    let attach_error = |hook: &'static str| {
        move |source| ProbeError::Attach {
            program,
            hook,
            source,
        }
    };
    let prog = ebpf.program_mut(program).ok_or(ProbeError::Map(program))?;
    match *hook {
        Hook::Btf(tracepoint) => {
            let prog: &mut BtfTracePoint = prog.try_into().map_err(attach_error(tracepoint))?;
            prog.load(tracepoint, btf)
                .map_err(attach_error(tracepoint))?;
            prog.attach().map_err(attach_error(tracepoint))?;
        }
        Hook::Tracepoint(category, name) => {
            let prog: &mut TracePoint = prog.try_into().map_err(attach_error(name))?;
            prog.load().map_err(attach_error(name))?;
            prog.attach(category, name).map_err(attach_error(name))?;
        }
        Hook::FExit(function) => {
            let prog: &mut FExit = prog.try_into().map_err(attach_error(function))?;
            prog.load(function, btf).map_err(attach_error(function))?;
            prog.attach().map_err(attach_error(function))?;
        }
    }
    Ok(())
}

/// Mounts tracefs if it is not there: tracepoint attachment needs it, and
/// many hosts do not mount it at boot.
fn ensure_tracefs() -> Result<(), ProbeError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount has no other preconditions.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs(io::Error::last_os_error()));
    }
    info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use the
/// memory cgroup, so failing to raise it is only worth a warning.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        warn!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK (fine on Linux >= 5.11)");
    }
}

/// Offsets for this kernel, from BTF and the fork tracepoint's format file.
fn kernel_config(config: &ProbeConfig, btf: &btf::KernelBtf) -> Result<KernelConfig, ProbeError> {
    let offset = |strukt: &str, member: &str| {
        btf.member_offset(strukt, member)
            .map_err(|e| ProbeError::Btf(Box::new(e)))
    };
    let format =
        std::fs::read_to_string(FORK_FORMAT).map_err(|source| ProbeError::TracepointFormat {
            path: FORK_FORMAT,
            source,
        })?;
    Ok(KernelConfig {
        capture_bytes: config.capture_bytes.min(MAX_CALL_CAPTURE_BYTES as u32),
        off_skc_family: offset("sock_common", "skc_family")?,
        off_skc_daddr: offset("sock_common", "skc_daddr")?,
        off_skc_rcv_saddr: offset("sock_common", "skc_rcv_saddr")?,
        off_skc_dport: offset("sock_common", "skc_dport")?,
        off_skc_num: offset("sock_common", "skc_num")?,
        off_skc_v6_daddr: offset("sock_common", "skc_v6_daddr")?,
        off_skc_v6_rcv_saddr: offset("sock_common", "skc_v6_rcv_saddr")?,
        off_sk_protocol: offset("sock", "sk_protocol")?,
        off_fork_child_pid: field_offset(&format, "child_pid").ok_or_else(|| {
            ProbeError::TracepointFormat {
                path: FORK_FORMAT,
                source: io::Error::new(io::ErrorKind::InvalidData, "no child_pid field"),
            }
        })?,
        inject_traceparent: u32::from(config.inject_traceparent),
        sampler: config.sampling.0,
        sample_threshold: config.sampling.1,
        wakeup_bytes: reader::wakeup_bytes(config.data_ring_bytes),
        off_sk_user_data: offset("sock", "sk_user_data")?,
        off_task_stack: offset("task_struct", "stack")?,
        // x86_64's THREAD_SIZE: 16 KiB, doubled by KASAN.
        thread_size: if btf.parameters("kasan_report").is_ok() {
            32 << 10
        } else {
            16 << 10
        },
        socket_id_salt: rand::random(),
    })
}

/// Offset of `field` in a tracepoint format file
/// (`field:pid_t child_pid;\toffset:20;\tsize:4;...`).
fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let declaration = line.trim().strip_prefix("field:")?.split(';').next()?;
        if declaration.split_whitespace().last()? != field {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::ErrorChain;

    /// What a user reads for a kernel feature that is missing names the
    /// feature, what degrades, and what to do.
    /// Every program the agent may attach, on any capture path, fallbacks
    /// included, is in the kernel object: a misspelt name would only show
    /// on the kernels that need that path.
    #[test]
    fn every_program_named_is_in_the_object() {
        if EBPF_OBJECT.is_empty() {
            eprintln!("skipped: built without the kernel object");
            return;
        }
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("kernel object");
        let capture_paths = [
            TRACEPOINT_CAPTURE,
            FEXIT_CAPTURE,
            PORTABLE_CAPTURE,
            COMMON_HOOKS,
        ];
        let hooks = capture_paths.iter().flat_map(|hooks| hooks.iter());
        let mut names: Vec<&str> = hooks
            .flat_map(|(program, _, on_refusal)| {
                let fallback = match on_refusal {
                    OnRefusal::FallBack(_, fallback) => Some(*fallback),
                    OnRefusal::Fail => None,
                };
                std::iter::once(*program).chain(fallback)
            })
            .collect();
        names.extend(openssl::program_names());
        names.extend(inject::program_names());
        for name in names {
            assert!(
                object.programs.contains_key(name),
                "{name} is not in the kernel object"
            );
        }
    }

    #[test]
    fn errors_name_the_feature_and_what_degrades() {
        let no_btf = ProbeError::Btf(Box::new(io::Error::from(io::ErrorKind::NotFound)));
        let text = ErrorChain(&no_btf).to_string();
        assert!(text.contains("/sys/kernel/btf/vmlinux"), "{text}");
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF"), "{text}");
        assert!(text.contains("cannot run without it"), "{text}");

        let text = ErrorChain(&ProbeError::NoCgroup2).to_string();
        assert!(text.contains("no cgroup v2 mount found"), "{text}");

        let format = ProbeError::TracepointFormat {
            path: FORK_FORMAT,
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let text = ErrorChain(&format).to_string();
        assert!(text.contains("sched_process_fork/format"), "{text}");
        assert!(text.contains("forked processes"), "{text}");
        assert!(!text.contains("BTF"), "not blamed on BTF: {text}");
    }

    /// Root is told about the verifier, anyone else about privileges.
    #[test]
    fn load_failures_hint_at_the_likely_cause() {
        let privileges = LoadHint::Privileges.to_string();
        assert!(
            privileges.contains("needs root, or CAP_BPF"),
            "{privileges}"
        );
        let rejected = LoadHint::Rejected.to_string();
        assert!(rejected.contains("SONDE_VERIFIER_LOG=1"), "{rejected}");
        assert!(!rejected.contains("root"), "{rejected}");
    }

    #[test]
    fn reads_tracepoint_field_offsets() {
        let format = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                      \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                      \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(format, "child_pid"), Some(20));
        assert_eq!(field_offset(format, "parent_pid"), Some(12));
        assert_eq!(field_offset(format, "pid"), None);
        assert_eq!(field_offset("garbage", "child_pid"), None);
    }
}
