//! Kubernetes metadata for discovery: the pods of this node, kept current by
//! a list+watch on the API server ([`watch`]), indexed by pod uid and
//! container id so that a process found through its cgroup path
//! ([`super::cgroup`]) maps to its pod and container in one lookup.
//!
//! The store is shared: discovery reads it to select processes by pod
//! labels, namespace, owner and container ([`labels`], [`super::rules`]),
//! the process registry reads it to put `k8s.*` attributes on resources,
//! and every change wakes discovery up ([`Pods::subscribe`]) so a label
//! change starts or stops instrumentation without a restart.

pub mod labels;
pub mod owner;
pub mod store;
pub mod watch;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use serde::Deserialize;

pub use self::{
    owner::Owner,
    store::{PodStoreFull, Pods},
    watch::{KubernetesError, PodWatcher},
};

/// The `kubernetes` section of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch the node's pods and enable the pod selectors and `k8s.*`
    /// resource attributes.
    pub enabled: bool,
    /// API server URL (e.g. `http://127.0.0.1:8001` for `kubectl proxy`).
    /// Default: the in-cluster service account, else the kubeconfig.
    pub api_url: Option<String>,
    /// Kubeconfig file to use instead of the default lookup.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name; default: the `NODE_NAME` environment variable
    /// (set from `spec.nodeName` through the downward API).
    pub node_name: Option<String>,
}

/// What the agent keeps of a pod: what selection and resources need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.resourceVersion`: changes with every update of the pod.
    pub resource_version: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    /// Only the annotations some selector looks at: others (such as
    /// `last-applied-configuration`) can be large and are never needed.
    pub annotations: BTreeMap<String, String>,
    /// Controllers, nearest first (`ReplicaSet`, then its `Deployment`).
    pub owners: Vec<Owner>,
    /// Started containers: runtime id (without the `runtime://` prefix)
    /// and name, from the container statuses.
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    /// True if both hold the same content whatever their resourceVersion:
    /// most pod updates (readiness, conditions) change nothing the agent
    /// keeps, and must not re-evaluate selection nor rebuild resources.
    pub fn same_content(&self, other: &PodMeta) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let PodMeta {
            uid,
            namespace,
            name,
            resource_version: _,
            node_name,
            labels,
            annotations,
            owners,
            containers,
        } = self;
        *uid == other.uid
            && *namespace == other.namespace
            && *name == other.name
            && *node_name == other.node_name
            && *labels == other.labels
            && *annotations == other.annotations
            && *owners == other.owners
            && *containers == other.containers
    }

    /// The outermost controller (the Deployment rather than its ReplicaSet).
    pub fn workload(&self) -> Option<&Owner> {
        self.owners.last()
    }

    /// `service.name` per the conventions: the `app.kubernetes.io/name`
    /// label, the `app` label, then the workload's name.
    pub fn service_name(&self) -> Option<&str> {
        self.labels
            .get("app.kubernetes.io/name")
            .or_else(|| self.labels.get("app"))
            .map(String::as_str)
            .or_else(|| self.workload().map(|owner| owner.name.as_str()))
    }
}

/// A process's pod, and its container when the pod status names it yet.
#[derive(Clone, Debug)]
pub struct PodMatch {
    /// The pod.
    pub pod: Arc<PodMeta>,
    /// Container name; `None` while the kubelet has not reported the
    /// container's id (the first second or so of its life).
    pub container: Option<String>,
}

impl PodMatch {
    /// True if both name the same version of the same pod and container:
    /// the store keeps one `Arc` per pod version.
    pub fn same_as(&self, other: &PodMatch) -> bool {
        Arc::ptr_eq(&self.pod, &other.pod) && self.container == other.container
    }

    /// Resource attributes: `k8s.*`, and `service.namespace` from the
    /// namespace as the OpenTelemetry Kubernetes conventions suggest.
    pub fn resource_attributes(&self) -> Vec<(String, String)> {
        let pod = &self.pod;
        let mut attributes = vec![
            ("k8s.namespace.name".to_owned(), pod.namespace.clone()),
            ("k8s.pod.name".to_owned(), pod.name.clone()),
            ("k8s.pod.uid".to_owned(), pod.uid.clone()),
            ("k8s.node.name".to_owned(), pod.node_name.clone()),
            ("service.namespace".to_owned(), pod.namespace.clone()),
        ];
        if let Some(container) = &self.container {
            attributes.push(("k8s.container.name".to_owned(), container.clone()));
        }
        attributes.extend(
            pod.owners
                .iter()
                .filter_map(|owner| Some((owner.attribute_key()?.to_owned(), owner.name.clone()))),
        );
        attributes
    }
}

#[cfg(test)]
mod tests {
    use crate::{config::AgentConfig, discovery::Selectors};

    /// The example users start from must be a valid config.
    #[test]
    fn the_deploy_configmap_holds_a_valid_config() {
        let manifest: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(include_str!("../../../../deploy/sonde/configmap.yaml"))
                .expect("YAML manifest");
        let text = manifest["data"]["sonde.yaml"]
            .as_str()
            .expect("data.sonde.yaml in the ConfigMap");
        let config = AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e:?}"));
        config.validate().expect("valid settings");
        assert!(config.kubernetes.enabled);
        assert_eq!(config.selectors.include.len(), 4);
        let selectors = Selectors::new(&config.selectors).expect("rules compile");
        assert!(selectors.annotation_keys().contains("sonde.dev/ports"));
    }
}
