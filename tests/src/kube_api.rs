//! A stand-in for the Kubernetes API server, for the agent's real `kube`
//! client: it serves Pod lists and watches on `/api/v1/pods` (honouring the
//! `spec.nodeName` field selector, with `resourceVersion`s, and watch
//! streams as chunked JSON lines of `WatchEvent`s, resumable from a
//! resourceVersion) and ReplicaSets on
//! `/apis/apps/v1/namespaces/{ns}/replicasets/{name}`, from real object
//! JSON. Tests change pods through it (each change is a `MODIFIED` event
//! with a new resourceVersion) and can take it away and bring it back on
//! the same port, as an API server restart would.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::{JoinHandle, JoinSet},
};

type Body = BoxBody<Bytes, Infallible>;

/// One change, as a watch stream reports it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct State {
    resource_version: u64,
    /// Pods by (namespace, name).
    pods: BTreeMap<(String, String), Value>,
    /// ReplicaSets by (namespace, name).
    replicasets: BTreeMap<(String, String), Value>,
    /// Every pod change since start: watches resume from any version.
    history: Vec<Change>,
    /// Path and query of every request, in order.
    requests: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stand-in; it stops serving when dropped.
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop, owning every connection: aborting it is the API
    /// server going away (connections reset, new ones refused).
    server: Option<JoinHandle<()>>,
}

impl KubeApi {
    /// Serves on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("binding the Kubernetes API stand-in: {error}"));
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let mut api = Self {
            addr,
            shared,
            server: None,
        };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        self.server = Some(tokio::spawn(async move {
            // Owned by this task: aborting it drops the set, which aborts
            // every connection, open watches included.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let response = handle(&shared, request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// `http://127.0.0.1:PORT`, for the agent's `kubernetes.api_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Takes the API server away: open watches are cut, connections refused.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Brings it back on the same port, with everything that changed
    /// meanwhile in its watch history.
    pub async fn restart(&mut self) {
        self.stop();
        // The aborted task drops its listener when the runtime next gets to
        // it: retry briefly while the port is still held.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(error) => panic!("re-binding {}: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Adds a pod (an `ADDED` event).
    pub fn add_pod(&self, pod: Value) {
        self.record("ADDED", pod);
    }

    /// Replaces a pod's labels (a `MODIFIED` event).
    pub fn set_pod_labels(&self, namespace: &str, name: &str, labels: Value) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut pod = self
            .shared
            .lock()
            .pods
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"));
        pod["metadata"]["labels"] = labels;
        self.record("MODIFIED", pod);
    }

    /// Adds a ReplicaSet (served by `get`, not watched).
    pub fn add_replicaset(&self, replicaset: Value) {
        let mut state = self.shared.lock();
        state.replicasets.insert(key_of(&replicaset), replicaset);
    }

    /// Path and query of every request served so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    fn record(&self, kind: &'static str, mut object: Value) {
        let mut state = self.shared.lock();
        state.resource_version += 1;
        let resource_version = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        state.pods.insert(key_of(&object), object.clone());
        state.history.push(Change {
            resource_version,
            kind,
            object,
        });
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key_of(object: &Value) -> (String, String) {
    let field = |name: &str| {
        object["metadata"][name]
            .as_str()
            .unwrap_or_else(|| panic!("object without metadata.{name}: {object}"))
            .to_owned()
    };
    (field("namespace"), field("name"))
}

fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((decode(key), decode(value)))
        })
        .collect();
    shared.lock().requests.push(request.uri().to_string());
    let node = match query.get("fieldSelector").map(String::as_str) {
        None => None,
        Some(selector) => match selector.strip_prefix("spec.nodeName=") {
            Some(node) => Some(node.to_owned()),
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "unsupported field selector",
                );
            }
        },
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "pods"] if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let since = query
                .get("resourceVersion")
                .and_then(|rv| rv.parse().ok())
                .unwrap_or(0);
            watch_pods(Arc::clone(shared), node, since)
        }
        ["api", "v1", "pods"] => list_pods(shared, node.as_deref()),
        [
            "apis",
            "apps",
            "v1",
            "namespaces",
            namespace,
            "replicasets",
            name,
        ] => {
            let key = ((*namespace).to_owned(), (*name).to_owned());
            match shared.lock().replicasets.get(&key) {
                Some(replicaset) => json_response(StatusCode::OK, replicaset),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("replicasets.apps \"{name}\" not found"),
                ),
            }
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn on_node(pod: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|node| pod["spec"]["nodeName"] == node)
}

fn list_pods(shared: &Shared, node: Option<&str>) -> Response<Body> {
    let state = shared.lock();
    let items: Vec<Value> = state
        .pods
        .values()
        .filter(|pod| on_node(pod, node))
        .map(|pod| {
            // Items of a list carry no kind/apiVersion, as the API server sends them.
            let mut item = pod.clone();
            if let Some(object) = item.as_object_mut() {
                object.remove("kind");
                object.remove("apiVersion");
            }
            item
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": state.resource_version.to_string()},
            "items": items,
        }),
    )
}

/// A watch: the changes after `since`, then each new one as it happens, as
/// one JSON `WatchEvent` per line of a chunked response.
fn watch_pods(shared: Arc<Shared>, node: Option<String>, since: u64) -> Response<Body> {
    let (lines_tx, lines_rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut sent = since;
        loop {
            // Register for the next change before reading, so none is missed.
            let changed = shared.changed.notified();
            let pending: Vec<Change> = shared
                .lock()
                .history
                .iter()
                .filter(|change| change.resource_version > sent)
                .cloned()
                .collect();
            for change in pending {
                sent = change.resource_version;
                if !on_node(&change.object, node.as_deref()) {
                    continue;
                }
                let mut line = json!({"type": change.kind, "object": change.object}).to_string();
                line.push('\n');
                if lines_tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            // A client that went away ends the stream at the next change
            // or as soon as its end of the channel is gone.
            tokio::select! {
                () = changed => {}
                () = lines_tx.closed() => return,
            }
        }
    });
    let frames = futures_util::stream::unfold(lines_rx, |mut lines| async move {
        let line = lines.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), lines))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::from(body.to_string()).boxed());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `metav1.Status` error, as the API server answers failures.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

/// Percent-decoding of a query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Pod as the API server returns it: running on `node`, owned by
/// `replicaset` when given, with one started container `app` whose
/// containerd id is `container_id`.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    labels: Value,
    replicaset: Option<&str>,
    container_id: &str,
) -> Value {
    let owners = match replicaset {
        Some(rs) => json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
            "uid": format!("{uid}-rs"), "controller": true, "blockOwnerDeletion": true,
        }]),
        None => json!([]),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"},
            "ownerReferences": owners,
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.example/shop:1.4", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": {
            "phase": "Running",
            "qosClass": "BestEffort",
            "podIP": "10.244.1.17",
            "startTime": "2026-11-26T10:00:01Z",
            "containerStatuses": [{
                "name": "app",
                "containerID": format!("containerd://{container_id}"),
                "image": "registry.example/shop:1.4",
                "imageID": "registry.example/shop@sha256:0123",
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-26T10:00:02Z"}},
            }],
        },
    })
}

/// A ReplicaSet owned by the Deployment `deployment`.
pub fn replicaset(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("{name}-uid"),
            "resourceVersion": "1",
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                "uid": format!("{deployment}-uid"), "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": deployment}}},
    })
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_query_components() {
        assert_eq!(decode("spec.nodeName%3Dnode-a"), "spec.nodeName=node-a");
        assert_eq!(decode("a+b%2Cc"), "a b,c");
        assert_eq!(decode("100%"), "100%");
    }
}
