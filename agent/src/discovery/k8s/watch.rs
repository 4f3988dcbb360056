//! Keeps the pod store in line with the API server: a list+watch of the
//! pods scheduled on this node (`fieldSelector=spec.nodeName=<node>`, so the
//! agent never holds the rest of the cluster), through `kube`'s runtime
//! watcher, which resumes from the last resourceVersion, re-lists after
//! `410 Gone`, and retries with exponential backoff (0.8 s to 30 s) while
//! the API server is away. The store keeps its last content meanwhile:
//! instrumentation goes on as it was, and a re-list replaces the content
//! in one step when the API server is back.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{KubernetesConfig, Owner, PodMeta, Pods, owner, store};
use crate::telemetry::{Counter, Stats};

/// How long one ReplicaSet lookup may take before the Deployment is
/// derived from names instead.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// ReplicaSet owners remembered; the cache starts over when full (a node
/// has a few hundred pods, so this is never reached in practice).
const MAX_REPLICASETS: usize = 4_096;

/// Why the Kubernetes client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No node name to scope the watch with.
    #[error(
        "kubernetes.node_name is not set and NODE_NAME is empty: the agent watches the pods \
         of its own node only (set NODE_NAME from spec.nodeName with the downward API)"
    )]
    NoNodeName,
    /// `kubernetes.api_url` is not a URL.
    #[error("kubernetes.api_url {url:?} is not a valid URL")]
    ApiUrl {
        /// As configured.
        url: String,
        /// Cause.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// The kubeconfig file could not be read or used.
    #[error("loading kubeconfig {path}")]
    Kubeconfig {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither an in-cluster service account nor a kubeconfig was found.
    #[error(
        "finding the Kubernetes API server (no in-cluster service account and no kubeconfig); \
         set kubernetes.api_url or kubernetes.kubeconfig"
    )]
    Infer {
        /// Cause.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client")]
    Client {
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// The pod watcher: owns the client and writes the store.
pub struct PodWatcher {
    client: Client,
    node_name: String,
    pods: Pods,
    stats: Arc<Stats>,
    annotation_keys: HashSet<String>,
    /// (namespace, ReplicaSet) -> its controller, from the API server.
    replicasets: HashMap<(String, String), Option<Owner>>,
}

impl PodWatcher {
    /// A watcher for this node's pods, writing into `pods`, keeping the
    /// annotations in `annotation_keys`.
    pub async fn new(
        config: &KubernetesConfig,
        pods: Pods,
        stats: Arc<Stats>,
        annotation_keys: HashSet<String>,
    ) -> Result<Self, KubernetesError> {
        let node_name = config
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|name| !name.is_empty())
            .ok_or(KubernetesError::NoNodeName)?;
        let client_config = if let Some(url) = &config.api_url {
            let uri = url.parse().map_err(|source| KubernetesError::ApiUrl {
                url: url.clone(),
                source,
            })?;
            kube::Config::new(uri)
        } else if let Some(path) = &config.kubeconfig {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        } else {
            kube::Config::infer()
                .await
                .map_err(|source| KubernetesError::Infer { source })?
        };
        info!(api = %client_config.cluster_url, node = %node_name, "watching this node's pods");
        let client =
            Client::try_from(client_config).map_err(|source| KubernetesError::Client { source })?;
        Ok(Self {
            client,
            node_name,
            pods,
            stats,
            annotation_keys,
            replicasets: HashMap::new(),
        })
    }

    /// Watches until the task is aborted. `listed` fires after the first
    /// complete list, so the caller can select running pods at start.
    pub async fn run(mut self, listed: oneshot::Sender<()>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut listing: Vec<PodMeta> = Vec::new();
        let mut listed = Some(listed);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(pod)) => {
                    if listing.len() >= store::MAX_PODS {
                        self.stats.add(Counter::K8sPodsDroppedStoreFull, 1);
                    } else if let Some(meta) = self.meta(&pod).await {
                        listing.push(meta);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let count = listing.len();
                    for refused in self.pods.replace(std::mem::take(&mut listing)) {
                        self.refused(&refused);
                    }
                    info!(pods = count, node = %self.node_name, "pod list received");
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                }
                Ok(watcher::Event::Apply(pod)) => {
                    if let Some(meta) = self.meta(&pod).await
                        && let Err(refused) = self.pods.apply(meta)
                    {
                        self.refused(&refused);
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = &pod.metadata.uid {
                        self.pods.delete(uid);
                    }
                }
                Err(error) => {
                    self.stats.add(Counter::K8sWatchErrors, 1);
                    warn!(
                        %error,
                        pods = self.pods.len(),
                        "Kubernetes API: watching pods failed; keeping the pods known so far, retrying with backoff"
                    );
                }
            }
        }
    }

    fn refused(&self, refused: &store::PodStoreFull) {
        self.stats.add(Counter::K8sPodsDroppedStoreFull, 1);
        warn!(error = %refused, "pod not tracked");
    }

    async fn meta(&mut self, pod: &Pod) -> Option<PodMeta> {
        let owners = self.owners(pod).await;
        store::pod_meta(pod, owners, &self.annotation_keys)
    }

    /// The pod's controllers, nearest first.
    async fn owners(&mut self, pod: &Pod) -> Vec<Owner> {
        let references = pod.metadata.owner_references.as_deref().unwrap_or_default();
        let Some(direct) = owner::controller(references) else {
            return Vec::new();
        };
        let parent = match direct.kind.as_str() {
            "ReplicaSet" => {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                let hash = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get("pod-template-hash"))
                    .map(String::as_str);
                self.replicaset_owner(namespace, &direct.name, hash).await
            }
            "Job" => owner::cronjob_from_job(&direct.name),
            _ => None,
        };
        std::iter::once(direct).chain(parent).collect()
    }

    /// The controller of a ReplicaSet (its Deployment), read once and
    /// cached; if the API server cannot answer, derived from the names and
    /// not cached, so the next update of the pod asks again.
    async fn replicaset_owner(
        &mut self,
        namespace: &str,
        name: &str,
        pod_template_hash: Option<&str>,
    ) -> Option<Owner> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(owner) = self.replicasets.get(&key) {
            return owner.clone();
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(replicaset)) => {
                let owner = replicaset.and_then(|rs| {
                    owner::controller(rs.metadata.owner_references.as_deref().unwrap_or_default())
                });
                if self.replicasets.len() >= MAX_REPLICASETS {
                    self.replicasets.clear();
                }
                self.replicasets.insert(key, owner.clone());
                owner
            }
            Ok(Err(error)) => {
                debug!(%error, namespace, replicaset = name, "reading ReplicaSet failed; deriving its Deployment from names");
                owner::deployment_from_hash(name, pod_template_hash)
            }
            Err(_) => {
                debug!(
                    namespace,
                    replicaset = name,
                    "reading ReplicaSet timed out; deriving its Deployment from names"
                );
                owner::deployment_from_hash(name, pod_template_hash)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api_url: &str, node_name: Option<&str>) -> KubernetesConfig {
        KubernetesConfig {
            enabled: true,
            api_url: Some(api_url.to_owned()),
            kubeconfig: None,
            node_name: node_name.map(str::to_owned),
        }
    }

    async fn watcher(config: &KubernetesConfig) -> Result<PodWatcher, KubernetesError> {
        PodWatcher::new(config, Pods::default(), Arc::default(), HashSet::new()).await
    }

    #[tokio::test]
    async fn builds_plain_and_tls_clients_and_names_bad_settings() {
        // Building the client sets up TLS (rustls with ring) without
        // connecting: what an in-cluster https API server needs.
        for url in ["https://10.96.0.1:443", "http://127.0.0.1:8001"] {
            let built = watcher(&config(url, Some("node-a"))).await;
            assert!(built.is_ok(), "{url}: {:?}", built.err());
        }
        assert!(matches!(
            watcher(&config("not a url", Some("node-a"))).await,
            Err(KubernetesError::ApiUrl { .. })
        ));
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(matches!(
                watcher(&config("http://127.0.0.1:8001", None)).await,
                Err(KubernetesError::NoNodeName)
            ));
        }
    }
}
