//! End-to-end on Kubernetes without a cluster: the real agent and its real
//! `kube` client against a stand-in API server that serves real Pod and
//! ReplicaSet JSON (list, then watch streams), real servers placed in
//! cgroups named as containerd and CRI-O name them, and a real OTLP
//! receiver. Checks pod-label selection, the `k8s.*` resource attributes,
//! live label changes in both directions, a pod created after start, and
//! an API server that goes away and comes back. Needs root.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::Agent,
    apps::{Server, curl},
    kube_api::{self, KubeApi},
    pod_cgroup::{Layout, PodCgroup},
    require_e2e,
};

const NODE: &str = "node-a";
const NAMESPACE: &str = "shop";
/// How long a change may take to show: "within seconds".
const LIVE: Duration = Duration::from_secs(10);
/// After the expected spans arrived, how long to watch for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);

/// A pod of the test: its uid, container id and cgroup.
struct TestPod {
    name: &'static str,
    uid: &'static str,
    container_id: String,
    cgroup: PodCgroup,
}

impl TestPod {
    fn new(name: &'static str, uid: &'static str, layout: Layout) -> Self {
        // Ids differ per test run so that a leftover cgroup never collides.
        let container_id = format!(
            "{}{:08x}{}",
            uid.replace('-', ""),
            std::process::id(),
            "0".repeat(24)
        );
        let cgroup = PodCgroup::create(layout, uid, &container_id);
        Self {
            name,
            uid,
            container_id,
            cgroup,
        }
    }

    fn json(&self, labels: Value, replicaset: Option<&str>) -> Value {
        kube_api::pod(
            NAMESPACE,
            self.name,
            self.uid,
            NODE,
            labels,
            replicaset,
            &self.container_id,
        )
    }
}

fn spans_of(receiver: &OtlpReceiver, pid: u32) -> Vec<ReceivedSpan> {
    receiver
        .spans()
        .into_iter()
        .filter(|span| span.pid() == pid)
        .collect()
}

/// Sends a request every 300 ms until the server's spans reach `count`.
async fn traffic_until_spans(receiver: &OtlpReceiver, server: &Server, count: usize, what: &str) {
    let started = Instant::now();
    while spans_of(receiver, server.pid()).len() < count {
        assert!(
            started.elapsed() < LIVE,
            "{what}: no spans from pid {} within {LIVE:?}",
            server.pid()
        );
        curl(&["-o", "/dev/null", &server.url("/status/200")]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the agent logs that it stopped instrumenting `pid`.
async fn wait_until_dropped(agent: &Agent, pid: u32, within: Duration, what: &str) {
    let started = Instant::now();
    let line = format!("pid={pid} ");
    while !agent
        .plain_log()
        .lines()
        .any(|l| l.contains("no longer instrumenting") && l.contains(&line))
    {
        assert!(
            started.elapsed() < within,
            "{what}: pid {pid} still instrumented after {within:?}; log:\n{}",
            agent.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests made to `server` from now on give no spans. Judged by the
/// spans' start times, not by a count: spans of requests made before may
/// still be on their way on a loaded machine.
async fn assert_not_traced(receiver: &OtlpReceiver, server: &Server, what: &str) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &server.url("/status/200")]);
    }
    tokio::time::sleep(SETTLE * 2).await;
    let new: Vec<ReceivedSpan> = spans_of(receiver, server.pid())
        .into_iter()
        .filter(|span| span.start_unix_ns >= since)
        .collect();
    assert!(new.is_empty(), "{what}: unexpected spans {new:#?}");
}

fn resource_str<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.resource
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("resource attribute {key} missing in {span:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_label_selection_metadata_and_live_changes() {
    require_e2e!();
    let receiver = OtlpReceiver::start().await;
    let mut api = KubeApi::start().await;

    let web = TestPod::new(
        "storefront-5d8f7c9b4-x2x9z",
        "7c1e2a3b-4d5e-4f60-8172-93a4b5c6d7e8",
        Layout::ContainerdSystemd,
    );
    let db = TestPod::new(
        "db-0",
        "8d2f3b4c-5e6f-4071-8283-a4b5c6d7e8f9",
        Layout::CrioCgroupfs,
    );
    api.add_replicaset(kube_api::replicaset(
        NAMESPACE,
        "storefront-5d8f7c9b4",
        "storefront",
    ));
    api.add_pod(web.json(
        json!({"app": "web", "app.kubernetes.io/name": "storefront", "pod-template-hash": "5d8f7c9b4"}),
        Some("storefront-5d8f7c9b4"),
    ));
    api.add_pod(db.json(json!({"app": "db"}), None));
    // Same labels on another node: the field selector must keep it away.
    api.add_pod(kube_api::pod(
        NAMESPACE,
        "web-elsewhere",
        "9e3a4c5d-6f70-4182-9394-b5c6d7e8f9a0",
        "node-b",
        json!({"app": "web"}),
        None,
        &"f".repeat(64),
    ));
    let web_server = web.cgroup.python_http();
    let db_server = db.cgroup.python_http();

    let config = std::env::temp_dir().join(format!("sonde-k8s-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "kubernetes:\n  enabled: true\n  api_url: {}\n  node_name: {NODE}\n\
             selectors:\n  include:\n  - namespaces: [{NAMESPACE}]\n    pod_labels:\n\
             \x20     matchExpressions: [{{key: app, operator: In, values: [web]}}]\n",
            api.url()
        ),
    )
    .expect("writing the agent config");
    let agent = Agent::start(
        &["--config", config.to_str().expect("utf-8 path")],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    let _ = std::fs::remove_file(&config);

    // Only the pod matching the label selector is traced, with its metadata.
    for _ in 0..2 {
        curl(&["-o", "/dev/null", &web_server.url("/status/200")]);
        curl(&["-o", "/dev/null", &db_server.url("/status/200")]);
    }
    traffic_until_spans(&receiver, &web_server, 2, "selected pod").await;
    tokio::time::sleep(SETTLE).await;
    assert!(
        spans_of(&receiver, db_server.pid()).is_empty(),
        "the db pod does not match the selector"
    );
    let span = &spans_of(&receiver, web_server.pid())[0];
    let expected = BTreeMap::from([
        ("service.name", "storefront"),
        ("service.namespace", NAMESPACE),
        ("k8s.namespace.name", NAMESPACE),
        ("k8s.pod.name", web.name),
        ("k8s.pod.uid", web.uid),
        ("k8s.container.name", "app"),
        ("k8s.node.name", NODE),
        ("k8s.replicaset.name", "storefront-5d8f7c9b4"),
        ("k8s.deployment.name", "storefront"),
    ]);
    for (key, value) in expected {
        assert_eq!(resource_str(span, key), value, "{key}");
    }

    // A label change that makes a pod match starts its instrumentation.
    api.set_pod_labels(NAMESPACE, db.name, json!({"app": "web"}));
    traffic_until_spans(&receiver, &db_server, 1, "label now matches").await;
    let db_span = &spans_of(&receiver, db_server.pid())[0];
    assert_eq!(resource_str(db_span, "k8s.pod.name"), "db-0");
    assert_eq!(
        resource_str(db_span, "service.name"),
        "web",
        "from the app label"
    );

    // ...and one that makes it stop matching stops it.
    api.set_pod_labels(NAMESPACE, db.name, json!({"app": "db"}));
    wait_until_dropped(&agent, db_server.pid(), LIVE, "label no longer matches").await;
    assert_not_traced(&receiver, &db_server, "after the label change").await;

    // A matching pod that starts later is traced from its first requests.
    let late = TestPod::new(
        "storefront-5d8f7c9b4-p8k2m",
        "a04b5d6e-7081-4293-a4a5-c6d7e8f9a0b1",
        Layout::ContainerdSystemd,
    );
    api.add_pod(late.json(
        json!({"app": "web", "pod-template-hash": "5d8f7c9b4"}),
        Some("storefront-5d8f7c9b4"),
    ));
    let late_server = late.cgroup.python_http();
    traffic_until_spans(&receiver, &late_server, 1, "pod started after the agent").await;
    let late_span = &spans_of(&receiver, late_server.pid())[0];
    assert_eq!(
        resource_str(late_span, "service.name"),
        "web",
        "the app label"
    );
    assert_eq!(resource_str(late_span, "k8s.deployment.name"), "storefront");
    assert_eq!(resource_str(late_span, "k8s.pod.name"), late.name);

    // The API server goes away: instrumentation goes on as it was.
    api.stop();
    let before = spans_of(&receiver, web_server.pid()).len();
    traffic_until_spans(&receiver, &web_server, before + 1, "API server away").await;
    // A change made meanwhile arrives once it is back (watch resumed).
    api.set_pod_labels(NAMESPACE, web.name, json!({"app": "web-canary"}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.restart().await;
    wait_until_dropped(
        &agent,
        web_server.pid(),
        Duration::from_secs(40),
        "after the API server came back",
    )
    .await;
    assert_not_traced(&receiver, &web_server, "after the resumed watch").await;
    assert!(
        agent.log_text().contains("retrying with backoff"),
        "the outage is logged"
    );

    // The agent asked for this node's pods only, and read the ReplicaSet.
    let requests = api.requests();
    let pod_requests: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods"))
        .collect();
    assert!(
        pod_requests.iter().any(|r| r.contains("watch=true")),
        "{requests:#?}"
    );
    assert!(
        pod_requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r == "/apis/apps/v1/namespaces/shop/replicasets/storefront-5d8f7c9b4"),
        "{requests:#?}"
    );
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.resource.get("k8s.pod.name") != Some(&json!("web-elsewhere"))),
        "a pod of another node"
    );
    assert_eq!(agent.stop(), 0);
    drop((web_server, db_server, late_server));
}
