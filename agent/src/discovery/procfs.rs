//! What discovery reads from /proc: executables, environment, which
//! processes own listening TCP sockets, and which OpenSSL they may use (the
//! libssl files they map, and their executable, which may carry its own,
//! as Node.js does). `root`
//! is a parameter so tests can point it at a fake tree.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use crate::probes::{FileRole, SslLibrary, openssl::FileId};

/// TCP_LISTEN in /proc/net/tcp's `st` column.
const TCP_LISTEN: &str = "0A";

/// A view of a procfs mount.
#[derive(Clone, Debug)]
pub struct Procfs {
    root: PathBuf,
}

impl Default for Procfs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
        }
    }
}

impl Procfs {
    /// A procfs rooted elsewhere (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn pid_path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    /// Every process id (thread-group leaders only, as /proc lists them).
    pub fn pids(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Path of the process's executable.
    pub fn exe(&self, pid: u32) -> Option<PathBuf> {
        fs::read_link(self.pid_path(pid, "exe")).ok()
    }

    /// The process's `comm` (thread name of the main thread, 15 chars max).
    pub fn comm(&self, pid: u32) -> Option<String> {
        let comm = fs::read_to_string(self.pid_path(pid, "comm")).ok()?;
        Some(comm.trim_end().to_owned())
    }

    /// Process start time in clock ticks since boot (field 22 of `stat`):
    /// with the pid, identifies a process across pid reuse.
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        self.stat_field(pid, 22)
    }

    /// Parent process id (field 4 of `stat`).
    pub fn ppid(&self, pid: u32) -> Option<u32> {
        self.stat_field(pid, 4)
    }

    /// The process a task id belongs to (`Tgid` in `status`): the id itself
    /// for a process, its process's for a thread.
    pub fn tgid(&self, id: u32) -> Option<u32> {
        self.status_field(id, "Tgid")?.parse().ok()
    }

    /// The value of field `name` in `status` (`SigCgt`, `Tgid`...).
    pub fn status_field(&self, pid: u32, name: &str) -> Option<String> {
        let status = fs::read_to_string(self.pid_path(pid, "status")).ok()?;
        status.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim().to_owned())
        })
    }

    /// The process's command line, its arguments NUL-separated.
    pub fn cmdline(&self, pid: u32) -> Option<Vec<u8>> {
        fs::read(self.pid_path(pid, "cmdline")).ok()
    }

    /// True while the process (or thread) runs: its /proc entry exists and
    /// it is not a zombie, which has exited but keeps its entry until its
    /// parent reaps it.
    pub fn is_running(&self, pid: u32) -> bool {
        self.stat_field::<char>(pid, 3)
            .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
    }

    /// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`, `n` > 2.
    fn stat_field<T: std::str::FromStr>(&self, pid: u32, n: usize) -> Option<T> {
        let stat = fs::read_to_string(self.pid_path(pid, "stat")).ok()?;
        // The command name (field 2) may contain spaces and parentheses.
        let after_comm = &stat[stat.rfind(')')? + 1..];
        after_comm.split_whitespace().nth(n - 3)?.parse().ok()
    }

    /// One variable of the process's initial environment.
    pub fn env_var(&self, pid: u32, name: &str) -> Option<String> {
        let environ = fs::read(self.pid_path(pid, "environ")).ok()?;
        environ.split(|&b| b == 0).find_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (key, value) = entry.split_once('=')?;
            (key == name && !value.is_empty()).then(|| value.to_owned())
        })
    }

    /// Network namespace identity of a process (`net:[4026531840]`).
    fn net_namespace(&self, pid: u32) -> Option<PathBuf> {
        fs::read_link(self.pid_path(pid, "ns/net")).ok()
    }

    /// The text of `/proc/<pid>/cgroup` (see [`super::cgroup`]).
    pub fn cgroup(&self, pid: u32) -> Option<String> {
        fs::read_to_string(self.pid_path(pid, "cgroup")).ok()
    }

    /// Thread ids of a process (its tasks, the main thread included).
    pub fn tasks(&self, pid: u32) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(self.pid_path(pid, "task")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The files of the process that may carry uprobes: the libssl files
    /// (`libssl.so*`) it maps, its `libpython3*` and its executable, as paths
    /// through its root directory, so that a container's own files (in
    /// another mount namespace) are the ones opened. `None` if the maps
    /// cannot be read (the process is gone).
    pub fn ssl_libraries(&self, pid: u32) -> Option<Vec<SslLibrary>> {
        let maps = fs::read_to_string(self.pid_path(pid, "maps")).ok()?;
        let exe = self.exe(pid);
        Some(parse_ssl_libraries(
            &maps,
            &self.pid_path(pid, "root"),
            exe.as_deref(),
        ))
    }

    /// Socket inodes listening on any of `ports`, with their port, across
    /// every network namespace the processes live in (containers have
    /// their own).
    pub fn listening_inodes(&self, pids: &[u32], ports: &HashSet<u16>) -> HashMap<u64, u16> {
        let mut seen_namespaces = HashSet::new();
        let mut inodes = HashMap::new();
        for &pid in pids {
            if let Some(ns) = self.net_namespace(pid)
                && !seen_namespaces.insert(ns)
            {
                continue;
            }
            for table in ["net/tcp", "net/tcp6"] {
                if let Ok(text) = fs::read_to_string(self.pid_path(pid, table)) {
                    inodes.extend(parse_listening(&text, ports));
                }
            }
        }
        inodes
    }

    /// Processes holding a file descriptor on one of `inodes`, with the
    /// inodes each holds.
    pub fn owners_of(&self, pids: &[u32], inodes: &HashSet<u64>) -> HashMap<u32, HashSet<u64>> {
        let mut owners = HashMap::new();
        if inodes.is_empty() {
            return owners;
        }
        for &pid in pids {
            let Ok(fds) = fs::read_dir(self.pid_path(pid, "fd")) else {
                continue;
            };
            let held: HashSet<u64> = fds
                .filter_map(|fd| socket_inode(&fs::read_link(fd.ok()?.path()).ok()?))
                .filter(|inode| inodes.contains(inode))
                .collect();
            if !held.is_empty() {
                owners.insert(pid, held);
            }
        }
        owners
    }
}

/// libssl and libpython mappings in a `/proc/PID/maps` text, and the
/// mapping of the executable `exe` (as `/proc/PID/exe` names it), one per
/// file, with paths under `root`.
fn parse_ssl_libraries(maps: &str, root: &Path, exe: Option<&Path>) -> Vec<SslLibrary> {
    let mut found: Vec<SslLibrary> = Vec::new();
    for line in maps.lines() {
        // "start-end perms offset major:minor inode      /path", the path
        // padded with spaces (and possibly containing some).
        let mut fields = line.splitn(6, ' ');
        let (Some(dev), Some(inode), Some(path)) = (
            fields.nth(3),
            fields.next(),
            fields.next().map(str::trim_start),
        ) else {
            continue;
        };
        // A library replaced on disk since it was mapped (an upgrade) is
        // " (deleted)": its path now names another file.
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        let role = if exe == Some(Path::new(path)) {
            FileRole::Executable
        } else if name.starts_with("libssl.so") {
            // `libssl3.so` is NSS's, not OpenSSL's.
            FileRole::Libssl
        } else if name.starts_with("libpython3") {
            FileRole::Libpython
        } else {
            continue;
        };
        let Some(file) = file_id(dev, inode) else {
            continue;
        };
        if found.iter().all(|library| library.file != file) {
            found.push(SslLibrary {
                path: root.join(path.trim_start_matches('/')),
                file,
                role,
            });
        }
    }
    found
}

/// `fd:01` and `1234` (hex major:minor, decimal inode) -> a [`FileId`].
fn file_id(dev: &str, inode: &str) -> Option<FileId> {
    let (major, minor) = dev.split_once(':')?;
    Some(FileId {
        dev: libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        ino: inode.parse().ok()?,
    })
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Inodes of LISTEN sockets on `ports` in a /proc/net/tcp{,6} table.
fn parse_listening(table: &str, ports: &HashSet<u16>) -> HashMap<u64, u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != TCP_LISTEN {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            ports.contains(&port).then_some((inode.parse().ok()?, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 40003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_listening_sockets_on_selected_ports() {
        let ports = HashSet::from([8080]);
        let found = parse_listening(TCP_TABLE, &ports);
        // Port 8080 = 0x1F90; the ESTABLISHED row on 8080 is not a listener.
        assert_eq!(found, HashMap::from([(40001, 8080)]));
        assert!(parse_listening("garbage\nmore garbage here", &ports).is_empty());
    }

    #[test]
    fn finds_libssl_and_libpython_mappings() {
        let maps = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fd:01 1311                       /usr/bin/python3.11
7f1a2b000000-7f1a2b020000 r--p 00000000 fd:01 2049                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1a2b020000-7f1a2b080000 r-xp 00020000 fd:01 2049                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1a2c000000-7f1a2c010000 r--p 00000000 00:2e 77                         /opt/app dir/lib/libssl.so.1.1
7f1a2d000000-7f1a2d010000 r--p 00000000 fd:01 3001                       /usr/lib/x86_64-linux-gnu/libssl3.so
7f1a2e000000-7f1a2e010000 r--p 00000000 fd:01 3002                       /usr/lib/old/libssl.so.1.1 (deleted)
7f1a2f000000-7f1a2f010000 rw-p 00000000 00:00 0 
7f1a30000000-7f1a30100000 r--p 00000000 fd:01 4001                       /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";
        let root = Path::new("/proc/42/root");
        let libssl = SslLibrary {
            path: "/proc/42/root/usr/lib/x86_64-linux-gnu/libssl.so.3".into(),
            file: FileId {
                dev: libc::makedev(0xfd, 1),
                ino: 2049,
            },
            role: FileRole::Libssl,
        };
        let old_libssl = SslLibrary {
            path: "/proc/42/root/opt/app dir/lib/libssl.so.1.1".into(),
            file: FileId {
                dev: libc::makedev(0, 0x2e),
                ino: 77,
            },
            role: FileRole::Libssl,
        };
        let libpython = SslLibrary {
            path: "/proc/42/root/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0".into(),
            file: FileId {
                dev: libc::makedev(0xfd, 1),
                ino: 4001,
            },
            role: FileRole::Libpython,
        };
        assert_eq!(
            parse_ssl_libraries(maps, root, None),
            [libssl.clone(), old_libssl.clone(), libpython.clone()],
            "one entry per file; NSS's libssl3.so, deleted files and anonymous maps left out"
        );
        let python = SslLibrary {
            path: "/proc/42/root/usr/bin/python3.11".into(),
            file: FileId {
                dev: libc::makedev(0xfd, 1),
                ino: 1311,
            },
            role: FileRole::Executable,
        };
        assert_eq!(
            parse_ssl_libraries(maps, root, Some(Path::new("/usr/bin/python3.11"))),
            [python, libssl, old_libssl, libpython],
            "the executable too, which may carry its own OpenSSL"
        );
        assert!(parse_ssl_libraries("garbage\n\n", root, None).is_empty());
    }

    #[test]
    fn maps_identify_files_as_stat_does() {
        // The identity from maps is the one `stat` gives for an ordinary
        // (not overlay) file: this test binary, mapped by itself.
        use std::os::unix::fs::MetadataExt as _;
        let exe = std::env::current_exe().expect("test binary");
        let meta = fs::metadata(&exe).expect("stat");
        let maps = fs::read_to_string("/proc/self/maps").expect("maps");
        let line = maps
            .lines()
            .find(|line| line.ends_with(exe.to_str().expect("utf-8")))
            .expect("the test binary is mapped");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            file_id(fields[3], fields[4]),
            Some(FileId {
                dev: meta.dev(),
                ino: meta.ino()
            })
        );
    }

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(Path::new("socket:[40001]")), Some(40001));
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        assert_eq!(socket_inode(Path::new("pipe:[12]")), None);
    }

    #[test]
    fn reads_this_process() {
        let procfs = Procfs::default();
        let me = std::process::id();
        assert!(procfs.pids().contains(&me));
        assert!(procfs.exe(me).is_some());
        assert!(procfs.start_time(me).is_some());
        assert_eq!(
            procfs.ppid(me),
            Some(std::os::unix::process::parent_id()),
            "field 4 of stat"
        );
        assert!(procfs.comm(me).is_some());
        assert_eq!(procfs.tgid(me), Some(me));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            // Alive until the test has looked at it.
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(procfs.tgid(tid), Some(me), "thread {tid}");
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(procfs.env_var(me, "SONDE_SURELY_UNSET_VARIABLE"), None);
    }

    #[test]
    fn finds_the_owner_of_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let procfs = Procfs::default();
        let me = std::process::id();
        let inodes = procfs.listening_inodes(&[me], &HashSet::from([port]));
        assert_eq!(inodes.len(), 1, "our listener on port {port}");
        assert_eq!(inodes.values().next(), Some(&port));
        let inodes: HashSet<u64> = inodes.into_keys().collect();
        assert_eq!(
            procfs.owners_of(&[me], &inodes),
            HashMap::from([(me, inodes.clone())])
        );
        assert!(procfs.tasks(me).contains(&me));
        assert!(procfs.cgroup(me).is_some_and(|text| text.contains(':')));
    }
}
