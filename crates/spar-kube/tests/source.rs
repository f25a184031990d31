//! The Kubernetes source against the in-process fake API server: the real kube client and
//! kube-runtime watchers, over HTTP, through list, watch, 410 and relist.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use spar_api::Kind;
use spar_kube::{KubeSource, NamespaceSelector, SourceConfig, SyncStatus};
use spar_kube_fake::{FakeApiServer, ResourceType};
use spar_model::Store;
use tokio::sync::mpsc;

/// Registers Istio's CRDs (every served version), except `skip`.
fn install_crds(server: &FakeApiServer, skip: &[Kind]) {
    for kind in spar_kube::custom_kinds().filter(|k| !skip.contains(k)) {
        for v in kind.versions() {
            server.add_resource(
                ResourceType::new(&format!("{}/{v}", kind.group()), kind.name(), &spar_kube::plural(kind), true)
                    .with_status(),
            );
        }
    }
}

async fn client(server: &FakeApiServer) -> kube::Client {
    let dir = std::env::temp_dir().join(format!("spar-kube-test-{}-{}", std::process::id(), server.url().len()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("kubeconfig-{}", server.url().rsplit(':').next().unwrap_or("0")));
    std::fs::write(&path, server.kubeconfig()).expect("kubeconfig");
    spar_kube::client(Some(&path)).await.expect("client")
}

struct Running {
    store: Arc<Mutex<Store>>,
    status: Arc<SyncStatus>,
    _changes: mpsc::Receiver<()>,
}

async fn start(server: &FakeApiServer, cfg: SourceConfig) -> Running {
    let store = Arc::new(Mutex::new(Store::new()));
    let source = KubeSource::new(client(server).await, Arc::clone(&store), cfg);
    let status = source.status();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(source.run(tx));
    tokio::time::timeout(Duration::from_secs(20), status.wait_synced()).await.expect("caches sync");
    Running { store, status, _changes: rx }
}

fn names(store: &Mutex<Store>, kind: Kind) -> Vec<String> {
    let store = store.lock().expect("store");
    let (objects, _) = store.objects();
    objects.iter().filter(|o| o.meta.kind == kind).map(|o| format!("{}/{}", o.meta.namespace, o.meta.name)).collect()
}

fn errors(store: &Mutex<Store>) -> Vec<String> {
    store.lock().expect("store").errors().map(ToString::to_string).collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn vs(name: &str, host: &str) -> serde_json::Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_watches_and_relists_into_the_store() {
    let server = FakeApiServer::start().await.expect("fake API server");
    install_crds(&server, &[Kind::WasmPlugin]);
    server.apply(vs("reviews", "reviews")).expect("vs");
    // Written in an older served version: the source reads it all the same.
    let mut old = vs("ratings", "ratings");
    old["apiVersion"] = json!("networking.istio.io/v1alpha3");
    server.apply(old).expect("v1alpha3 vs");
    server
        .apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 9080}]}}))
        .expect("service");
    server
        .apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reviews-1", "namespace": "default",
            "labels": {"app": "reviews"}}, "spec": {"containers": [{"name": "app", "image": "x"}]},
            "status": {"podIP": "10.0.0.7"}}))
        .expect("pod");

    let running = start(&server, SourceConfig { absent_retry: Duration::from_millis(300), ..Default::default() }).await;
    let store = &running.store;
    assert_eq!(names(store, Kind::VirtualService), ["default/ratings", "default/reviews"]);
    assert_eq!(names(store, Kind::Service), ["default/reviews"]);
    assert_eq!(names(store, Kind::Pod), ["default/reviews-1"]);
    let states = running.status.states();
    assert_eq!(states[&Kind::WasmPlugin], spar_kube::source::KindState::Absent, "missing CRD does not block");
    assert!(
        matches!(&states[&Kind::VirtualService], spar_kube::source::KindState::Synced { version } if version == "v1")
    );

    // Updates and deletes converge.
    server.apply(vs("details", "details")).expect("vs");
    eventually("a new VirtualService", || names(store, Kind::VirtualService).len() == 3).await;
    server.delete("networking.istio.io/v1", "VirtualService", "default", "ratings");
    eventually("a deleted VirtualService", || !names(store, Kind::VirtualService).contains(&"default/ratings".into()))
        .await;

    // A bad object is skipped and reported by name; the rest stay.
    server.write_object_raw(
        "networking.istio.io/v1",
        "VirtualService",
        "default",
        "broken",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "broken", "namespace": "default"}, "spec": {"hosts": "not-a-list"}}),
    );
    eventually("the broken object reported", || {
        errors(store).iter().any(|e| e.contains("VirtualService default/broken"))
    })
    .await;
    assert_eq!(names(store, Kind::VirtualService), ["default/details", "default/reviews"]);

    // 410 Gone: watches end, resuming fails, the source relists, and what was deleted
    // meanwhile is gone from the store.
    let lists_before =
        server.requests().iter().filter(|r| r.contains("virtualservices") && !r.contains("watch")).count();
    server.compact();
    server.delete("networking.istio.io/v1", "VirtualService", "default", "details");
    server.apply(vs("productpage", "productpage")).expect("vs");
    eventually("relisted state", || names(store, Kind::VirtualService) == ["default/productpage", "default/reviews"])
        .await;
    eventually("a relist", || {
        server.requests().iter().filter(|r| r.contains("virtualservices") && !r.contains("watch")).count()
            > lists_before
    })
    .await;

    // A CRD installed later is picked up.
    let wasm = Kind::WasmPlugin;
    server.add_resource(
        ResourceType::new(&format!("{}/v1alpha1", wasm.group()), wasm.name(), &spar_kube::plural(wasm), true)
            .with_status(),
    );
    server
        .apply(json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "w", "namespace": "default"}, "spec": {"url": "oci://x"}}))
        .expect("wasm");
    eventually("a kind whose CRD appeared", || names(store, Kind::WasmPlugin) == ["default/w"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_selectors_limit_namespaces() {
    let server = FakeApiServer::start().await.expect("fake API server");
    install_crds(&server, &[]);
    for (ns, labels) in [("shop", json!({"mesh": "on"})), ("lab", json!({}))] {
        server
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}))
            .expect("ns");
        let mut v = vs("web", "web");
        v["metadata"]["namespace"] = json!(ns);
        server.apply(v).expect("vs");
    }
    let cfg = SourceConfig {
        namespaces: Some(NamespaceSelector::parse(&["mesh=on".into()]).expect("selector")),
        ..Default::default()
    };
    let running = start(&server, cfg).await;
    let store = &running.store;
    assert_eq!(names(store, Kind::VirtualService), ["shop/web"]);
    // A namespace joining the selection brings its objects in.
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab", "labels": {"mesh": "on"}}}))
        .expect("ns");
    eventually("lab selected", || names(store, Kind::VirtualService) == ["lab/web", "shop/web"]).await;
    // And leaving it takes them away.
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {}}}))
        .expect("ns");
    eventually("shop deselected", || names(store, Kind::VirtualService) == ["lab/web"]).await;
}
