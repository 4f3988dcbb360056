//! The node-local pod store: pods by uid and by container id, shared by
//! the watcher (writes), discovery and the process registry (read), with a
//! change signal. Bounded: a node runs at most a few hundred pods, so more
//! than [`MAX_PODS`] means a misconfiguration, and extra pods are refused
//! and counted rather than held.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, PoisonError, RwLock},
};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::{Owner, PodMatch, PodMeta};
use crate::discovery::cgroup::ContainerRef;

/// Pods kept at most (the kubelet's own default limit is 110 per node).
pub const MAX_PODS: usize = 2_048;

/// A pod was refused because the store held [`MAX_PODS`] already.
#[derive(Debug, thiserror::Error)]
#[error("pod store full ({MAX_PODS} pods): pod {namespace}/{name} not tracked")]
pub struct PodStoreFull {
    namespace: String,
    name: String,
}

#[derive(Debug, Default)]
struct PodStore {
    by_uid: HashMap<String, Arc<PodMeta>>,
    /// Container id -> (pod uid, container name).
    by_container: HashMap<String, (String, String)>,
}

impl PodStore {
    fn insert(&mut self, meta: PodMeta) -> Result<bool, PodStoreFull> {
        if let Some(old) = self.by_uid.get(&meta.uid) {
            if old.same_content(&meta) {
                return Ok(false);
            }
        } else if self.by_uid.len() >= MAX_PODS {
            return Err(PodStoreFull {
                namespace: meta.namespace,
                name: meta.name,
            });
        }
        self.remove(&meta.uid);
        for (id, name) in &meta.containers {
            self.by_container
                .insert(id.clone(), (meta.uid.clone(), name.clone()));
        }
        self.by_uid.insert(meta.uid.clone(), Arc::new(meta));
        Ok(true)
    }

    fn remove(&mut self, uid: &str) -> bool {
        let Some(old) = self.by_uid.remove(uid) else {
            return false;
        };
        for (id, _) in &old.containers {
            self.by_container.remove(id);
        }
        true
    }
}

/// Handle on the shared store; clones share it.
#[derive(Clone, Debug)]
pub struct Pods {
    store: Arc<RwLock<PodStore>>,
    changed: Arc<watch::Sender<()>>,
}

impl Default for Pods {
    fn default() -> Self {
        Self {
            store: Arc::default(),
            changed: Arc::new(watch::Sender::new(())),
        }
    }
}

impl Pods {
    /// The pod (and container) a process's cgroup names: by container id
    /// first, else by the pod uid in the path (a container the kubelet has
    /// not reported yet).
    pub fn find(&self, container: &ContainerRef) -> Option<PodMatch> {
        let store = self.store.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((uid, name)) = store.by_container.get(&container.container_id) {
            let pod = store.by_uid.get(uid)?;
            return Some(PodMatch {
                pod: Arc::clone(pod),
                container: Some(name.clone()),
            });
        }
        let pod = store.by_uid.get(container.pod_uid.as_ref()?)?;
        Some(PodMatch {
            pod: Arc::clone(pod),
            container: None,
        })
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_uid
            .len()
    }

    /// True if no pod is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver marked changed after every update of the store. Updates
    /// that arrive while the reader is busy coalesce into one.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Adds or updates a pod; an update that changes nothing the agent
    /// keeps is not signalled.
    pub fn apply(&self, meta: PodMeta) -> Result<(), PodStoreFull> {
        let changed = self.write().insert(meta)?;
        if changed {
            self.changed.send_replace(());
        }
        Ok(())
    }

    /// Removes a pod.
    pub fn delete(&self, uid: &str) {
        if self.write().remove(uid) {
            self.changed.send_replace(());
        }
    }

    /// Replaces the whole content after a (re-)list: pods missing from the
    /// list were deleted while the watch was down. Returns the pods that did
    /// not fit.
    pub fn replace(&self, pods: Vec<PodMeta>) -> Vec<PodStoreFull> {
        let listed: HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        let mut store = self.write();
        let gone: Vec<String> = store
            .by_uid
            .keys()
            .filter(|uid| !listed.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            store.remove(&uid);
        }
        let refused = pods
            .into_iter()
            .filter_map(|meta| store.insert(meta).err())
            .collect();
        drop(store);
        self.changed.send_replace(());
        refused
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodStore> {
        // A panic while holding the lock leaves maps that are still
        // consistent (each insert/remove completes before the next).
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the agent keeps of a pod from the API server, given its resolved
/// owners and the annotation keys selectors look at. `None` for a pod
/// without the metadata every pod has (uid, name, namespace).
pub fn pod_meta(
    pod: &Pod,
    owners: Vec<Owner>,
    annotation_keys: &HashSet<String>,
) -> Option<PodMeta> {
    let metadata = &pod.metadata;
    let annotations: BTreeMap<String, String> = metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| annotation_keys.contains(*key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let containers = pod
        .status
        .iter()
        .flat_map(|status| {
            [
                &status.init_container_statuses,
                &status.container_statuses,
                &status.ephemeral_container_statuses,
            ]
        })
        .flatten()
        .flatten()
        .filter_map(|status| {
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
            let (_, id) = status.container_id.as_deref()?.split_once("://")?;
            Some((id.to_owned(), status.name.clone()))
        })
        .collect();
    Some(PodMeta {
        uid: metadata.uid.clone()?,
        namespace: metadata.namespace.clone()?,
        name: metadata.name.clone()?,
        resource_version: metadata.resource_version.clone().unwrap_or_default(),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone())
            .unwrap_or_default(),
        labels: metadata.labels.clone().unwrap_or_default(),
        annotations,
        owners,
        containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8b1a9c4d2e3f40516273849a0b1c2d3e4f5061728394a5b6c7d8e9f0a1b2c3d4";

    fn pod_json(uid: &str, labels: serde_json::Value, container_id: Option<&str>) -> Pod {
        let statuses = match container_id {
            Some(id) => serde_json::json!([{
                "name": "app", "image": "shop:1", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{id}"),
            }]),
            None => serde_json::json!([]),
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": uid, "resourceVersion": "7",
                "labels": labels,
                "annotations": {"keep": "yes", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "shop:1"}]},
            "status": {"containerStatuses": statuses},
        }))
        .expect("valid Pod JSON")
    }

    fn meta(uid: &str, app: &str, container_id: Option<&str>) -> PodMeta {
        let keys = HashSet::from(["keep".to_owned()]);
        pod_meta(
            &pod_json(uid, serde_json::json!({"app": app}), container_id),
            vec![],
            &keys,
        )
        .expect("complete pod")
    }

    fn container(pod_uid: Option<&str>) -> ContainerRef {
        ContainerRef {
            container_id: ID.to_owned(),
            pod_uid: pod_uid.map(str::to_owned),
        }
    }

    #[test]
    fn converts_api_pods() {
        let m = meta("u1", "web", Some(ID));
        assert_eq!(m.containers, vec![(ID.to_owned(), "app".to_owned())]);
        assert_eq!(m.node_name, "node-a");
        assert_eq!(m.annotations.len(), 1, "only annotations selectors use");
        assert_eq!(m.service_name(), Some("web"));
    }

    #[test]
    fn finds_pods_by_container_then_uid_and_signals_changes() {
        let pods = Pods::default();
        let mut changes = pods.subscribe();
        pods.apply(meta("u1", "web", None)).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        // Container not reported yet: found through the uid, no name.
        let found = pods.find(&container(Some("u1"))).expect("by uid");
        assert_eq!(found.container, None);
        assert!(pods.find(&container(None)).is_none());

        pods.apply(meta("u1", "web", Some(ID))).unwrap();
        let by_id = pods.find(&container(None)).expect("by container id");
        assert_eq!(by_id.container.as_deref(), Some("app"));
        assert!(!by_id.same_as(&found));
        changes.mark_unchanged();
        // The same content in a new version (a readiness change): no
        // signal, same Arc.
        let mut next = meta("u1", "web", Some(ID));
        next.resource_version = "8".into();
        pods.apply(next).unwrap();
        assert!(!changes.has_changed().unwrap());
        assert!(pods.find(&container(None)).unwrap().same_as(&by_id));

        pods.delete("u1");
        assert!(changes.has_changed().unwrap());
        assert!(pods.find(&container(Some("u1"))).is_none());
    }

    #[test]
    fn a_relist_drops_pods_deleted_meanwhile_and_is_bounded() {
        let pods = Pods::default();
        pods.apply(meta("gone", "old", None)).unwrap();
        let refused = pods.replace(vec![meta("u1", "web", Some(ID))]);
        assert!(refused.is_empty());
        assert_eq!(pods.len(), 1);
        let gone = ContainerRef {
            container_id: "0".repeat(64),
            pod_uid: Some("gone".into()),
        };
        assert!(pods.find(&gone).is_none());

        let many: Vec<PodMeta> = (0..MAX_PODS + 3)
            .map(|i| meta(&format!("p{i}"), "x", None))
            .collect();
        assert_eq!(pods.replace(many).len(), 3);
        assert_eq!(pods.len(), MAX_PODS);
        assert!(pods.apply(meta("one-more", "x", None)).is_err());
    }

    /// Pod turnover far past the bound (each pod restarted once with a new
    /// container, then deleted): both indexes shrink with every delete, so
    /// a busy node's churn never accumulates, and a flood without deletes
    /// stops at the bound with each refusal reported.
    #[test]
    fn pod_churn_stays_within_the_bound() {
        const LIVE: usize = 100;
        let pods = Pods::default();
        let id = |n: usize| format!("{n:064x}");
        for i in 0..10 * MAX_PODS {
            pods.apply(meta(&format!("p{i}"), "web", Some(&id(2 * i))))
                .unwrap();
            // Restarted: same pod, new container id.
            pods.apply(meta(&format!("p{i}"), "web", Some(&id(2 * i + 1))))
                .unwrap();
            if i >= LIVE {
                pods.delete(&format!("p{}", i - LIVE));
            }
            let store = pods.store.read().unwrap();
            assert!(store.by_uid.len() <= LIVE + 1, "at pod {i}");
            assert_eq!(store.by_container.len(), store.by_uid.len(), "at pod {i}");
        }
        let refused = (0..2 * MAX_PODS)
            .filter(|i| pods.apply(meta(&format!("flood{i}"), "x", None)).is_err())
            .count();
        assert_eq!(pods.len(), MAX_PODS);
        assert_eq!(refused, 2 * MAX_PODS - (MAX_PODS - LIVE));
    }
}
