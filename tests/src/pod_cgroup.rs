//! Real processes in cgroups named as the kubelet and the container
//! runtimes name them, so the agent finds "pods" on a machine that runs no
//! Kubernetes: the directories are created in the cgroup v2 hierarchy
//! (found in /proc/self/mountinfo, wherever it is mounted) and a server
//! joins its cgroup before it execs, as runc puts a container's first
//! process in place.

use std::{fs, io::ErrorKind, path::PathBuf};

use crate::apps::{Server, app_path};

/// How the node's runtime and cgroup driver name a container's cgroup.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// containerd, systemd driver: `kubepods.slice/kubepods-besteffort.slice/
    /// kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`.
    ContainerdSystemd,
    /// CRI-O, cgroupfs driver: `kubepods/burstable/pod<uid>/crio-<id>`.
    CrioCgroupfs,
}

/// A container cgroup; removed (with the parents it created) on drop.
pub struct PodCgroup {
    leaf: PathBuf,
    /// Directories this cgroup created, outermost first.
    created: Vec<PathBuf>,
    root: PathBuf,
}

impl PodCgroup {
    /// Creates the cgroup of container `container_id` of pod `pod_uid`.
    pub fn create(layout: Layout, pod_uid: &str, container_id: &str) -> Self {
        let root = cgroup2_mount();
        let relative: Vec<String> = match layout {
            Layout::ContainerdSystemd => {
                let uid = pod_uid.replace('-', "_");
                vec![
                    "kubepods.slice".into(),
                    "kubepods-besteffort.slice".into(),
                    format!("kubepods-besteffort-pod{uid}.slice"),
                    format!("cri-containerd-{container_id}.scope"),
                ]
            }
            Layout::CrioCgroupfs => vec![
                "kubepods".into(),
                "burstable".into(),
                format!("pod{pod_uid}"),
                format!("crio-{container_id}"),
            ],
        };
        let mut path = root.clone();
        let mut created = Vec::new();
        for segment in relative {
            path.push(segment);
            match fs::create_dir(&path) {
                Ok(()) => created.push(path.clone()),
                Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
                Err(error) => panic!("creating cgroup {}: {error}", path.display()),
            }
        }
        Self {
            leaf: path,
            created,
            root,
        }
    }

    /// The Python HTTP test server, placed in this cgroup before it execs.
    pub fn python_http(&self) -> Server {
        let script = format!(
            "echo $$ > '{}' && exec python3 '{}'",
            self.leaf.join("cgroup.procs").display(),
            app_path("http_server.py").display()
        );
        Server::start("sh", &["-c", &script])
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: move any left over
        // (the servers are normally gone by now) back to the root.
        if let Ok(pids) = fs::read_to_string(self.leaf.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.created.iter().rev() {
            // Parents shared with another live cgroup stay (ENOTEMPTY/EBUSY).
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            // id parent major:minor root mount-point options ... - fstype source options
            let (fields, fs) = line.split_once(" - ")?;
            let mount_point = fields.split_whitespace().nth(4)?;
            (fs.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo")
}
