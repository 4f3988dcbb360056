//! Which container (and which Kubernetes pod) a process runs in, read from
//! its cgroup path in `/proc/<pid>/cgroup`.
//!
//! Container runtimes name the cgroup of each container after its id, and
//! the kubelet names the cgroup of each pod after its uid, so the path alone
//! links a process to its pod without asking the runtime. Shapes handled
//! (cgroup v1 and v2 alike; only the path differs between them):
//!
//! | runtime    | systemd driver                                   | cgroupfs driver              |
//! |------------|--------------------------------------------------|------------------------------|
//! | containerd | `kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` | `kubepods/<qos>/pod<uid>/<id>` |
//! | CRI-O      | `kubepods-<qos>-pod<uid_>.slice/crio-<id>.scope` | `kubepods/<qos>/pod<uid>/crio-<id>` |
//! | Docker     | `kubepods-<qos>-pod<uid_>.slice/docker-<id>.scope` | `kubepods/<qos>/pod<uid>/<id>`, `docker/<id>` |
//!
//! Under the systemd driver the pod uid has `_` for `-`; the guaranteed QoS
//! class has no `<qos>` level; containerd run by systemd may leave the
//! `slice:prefix:id` form unconverted (`...-pod<uid_>.slice:cri-containerd:<id>`,
//! as kind clusters show); an agent in its own cgroup namespace sees other
//! pods' paths with leading `/..` segments. The id is always 64 hex digits.

/// A container, as far as its cgroup path tells.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// Runtime container id (64 lowercase hex digits), as in the pod
    /// status's `containerID` after the `<runtime>://` prefix.
    pub container_id: String,
    /// The Kubernetes pod uid, when the path is a kubelet one.
    pub pod_uid: Option<String>,
}

/// The container of a process, from the text of its `/proc/<pid>/cgroup`.
///
/// cgroup v1 lists one line per hierarchy and they normally agree; the
/// first line that names a container wins. The unified (`0::`) line is
/// tried first because it is the one the kernel keeps on every layout.
pub fn container_of(proc_cgroup: &str) -> Option<ContainerRef> {
    let paths = proc_cgroup.lines().filter_map(|line| {
        // hierarchy-id:controllers:path; the path may itself contain ':'.
        let mut fields = line.splitn(3, ':');
        let hierarchy = fields.next()?;
        fields.next()?;
        Some((hierarchy == "0", fields.next()?))
    });
    let (unified, legacy): (Vec<_>, Vec<_>) = paths.partition(|(unified, _)| *unified);
    unified
        .into_iter()
        .chain(legacy)
        .find_map(|(_, path)| parse_path(path))
}

/// The container named by one cgroup path, if any.
pub fn parse_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The container is the innermost segment that names one: runtimes may
    // nest helper cgroups under it (e.g. systemd inside a container), so
    // search from the leaf up.
    let (index, container_id) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, segment)| container_id(segment).map(|id| (i, id)))?;
    let pod_uid = segments[..=index]
        .iter()
        .rev()
        .find_map(|segment| pod_uid(segment));
    Some(ContainerRef {
        container_id,
        pod_uid,
    })
}

/// Prefixes runtimes put before the id in systemd scope names and CRI-O
/// cgroupfs names. `crio-conmon-` (CRI-O's monitor process, outside the
/// container) is deliberately absent: its id would not parse as 64 hex
/// digits after `crio-`.
const ID_PREFIXES: &[&str] = &[
    "cri-containerd-",
    "crio-",
    "docker-",
    "libpod-",
    "containerd-",
];

fn container_id(segment: &str) -> Option<String> {
    // `<pod slice>:cri-containerd:<id>`: systemd cgroup path left unconverted.
    if let Some((_, id)) = segment.rsplit_once(':') {
        return is_container_id(id).then(|| id.to_owned());
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ID_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then(|| id.to_owned())
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_>.slice` (systemd,
/// possibly followed by the unconverted `:runtime:id` tail).
fn pod_uid(segment: &str) -> Option<String> {
    let segment = segment.split(':').next().unwrap_or(segment);
    let uid = if let Some(slice) = segment.strip_suffix(".slice") {
        let (_, uid) = slice.rsplit_once("-pod")?;
        uid.replace('_', "-")
    } else {
        segment.strip_prefix("pod")?.to_owned()
    };
    is_uid(&uid).then_some(uid)
}

/// A Kubernetes uid: a UUID, 8-4-4-4-12 hex digits.
fn is_uid(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8b1a9c4d2e3f40516273849a0b1c2d3e4f5061728394a5b6c7d8e9f0a1b2c3d4";
    const UID: &str = "0f8e1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    const UID_: &str = "0f8e1b2a_3c4d_4e5f_8a9b_0c1d2e3f4a5b";

    #[test]
    fn parses_every_runtime_and_driver_layout() {
        let table = [
            // containerd, systemd driver, burstable and guaranteed QoS
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            // containerd, cgroupfs driver (k3s and many kubeadm clusters)
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
            // CRI-O, both drivers
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
            ),
            format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            // Docker via cri-dockerd, systemd driver
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
            ),
            // containerd under systemd, path left in slice:prefix:id form (kind)
            format!(
                "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
            ),
            // seen from inside the agent's own cgroup namespace
            format!(
                "/../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            // kubelet running under a kubelet.slice (nested setups)
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            // systemd running inside the container: helpers below the scope
            format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope"
            ),
        ];
        for path in &table {
            assert_eq!(
                parse_path(path),
                Some(ContainerRef {
                    container_id: ID.to_owned(),
                    pod_uid: Some(UID.to_owned()),
                }),
                "{path}"
            );
        }
    }

    #[test]
    fn containers_outside_kubernetes_have_no_pod() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(
                parse_path(&path),
                Some(ContainerRef {
                    container_id: ID.to_owned(),
                    pod_uid: None,
                }),
                "{path}"
            );
        }
    }

    #[test]
    fn host_processes_and_lookalikes_are_not_containers() {
        for path in [
            "/".to_owned(),
            "/user.slice/user-0.slice/session-3.scope".to_owned(),
            "/system.slice/containerd.service".to_owned(),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice"),
            // CRI-O's conmon monitors the container from outside it.
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            // one hex digit short, and not hex
            format!("/kubepods/pod{UID}/{}", &ID[1..]),
            format!("/kubepods/pod{UID}/{}", "z".repeat(64)),
        ] {
            assert_eq!(parse_path(&path), None, "{path}");
        }
    }

    #[test]
    fn reads_v1_and_v2_proc_files() {
        let v2 = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        let v1 = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
             11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        // Hybrid: the unified line has the host's view, v1 lines the pod's.
        let hybrid = format!(
            "12:memory:/kubepods/besteffort/pod{UID}/{ID}\n0::/user.slice/user-0.slice/session-1.scope\n"
        );
        let expected = Some(ContainerRef {
            container_id: ID.to_owned(),
            pod_uid: Some(UID.to_owned()),
        });
        assert_eq!(container_of(&v2), expected);
        assert_eq!(container_of(&v1), expected);
        assert_eq!(container_of(&hybrid), expected);
        assert_eq!(container_of("0::/init.scope\n"), None);
        assert_eq!(container_of("garbage"), None);
    }
}
