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
    for (api_version, kind, plural) in spar_kube::custom_resource_versions().filter(|(_, k, _)| !skip.contains(k)) {
        server.add_resource(ResourceType::new(&api_version, kind.name(), &plural, true).with_status());
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

    // 410 Gone: watches end, resuming from the old resourceVersion fails, and the source
    // relists; later changes keep converging. (That a relist drops what disappeared
    // meanwhile is what `discovery_selectors_limit_namespaces` checks deterministically.)
    let lists = || server.requests().iter().filter(|r| r.contains("virtualservices") && !r.contains("watch")).count();
    let lists_before = lists();
    server.compact();
    eventually("a relist after 410", || lists() > lists_before).await;
    server.delete("networking.istio.io/v1", "VirtualService", "default", "details");
    server.apply(vs("productpage", "productpage")).expect("vs");
    eventually("changes after the relist", || {
        names(store, Kind::VirtualService) == ["default/productpage", "default/reviews"]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_successor_after_expiry() {
    use spar_kube::lease::{LeaseConfig, run};
    let server = FakeApiServer::start().await.expect("fake API server");
    let c = client(&server).await;
    let cfg = |id: &str| LeaseConfig {
        duration: Duration::from_millis(1500),
        renew_every: Duration::from_millis(200),
        ..LeaseConfig::new("istio-system", id)
    };
    let (a_tx, a_rx) = tokio::sync::watch::channel(false);
    let (b_tx, b_rx) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(run(c.clone(), cfg("spar-a"), a_tx));
    eventually("a leads", || *a_rx.borrow()).await;
    tokio::spawn(run(c.clone(), cfg("spar-b"), b_tx));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(*a_rx.borrow() && !*b_rx.borrow(), "exactly one leader while the holder renews");
    // The holder dies without releasing: the other takes over once the lease expired.
    a.abort();
    eventually("b takes over", || *b_rx.borrow()).await;
    let lease = server.get("coordination.k8s.io/v1", "Lease", "istio-system", "spar-leader").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "spar-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_whether_each_resource_was_applied_and_why_not() {
    let server = FakeApiServer::start().await.expect("fake API server");
    install_crds(&server, &[]);
    // The host the VirtualServices route to exists: a route to a missing host is a
    // warning of its own (a dangling reference).
    server
        .apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 9080}]}}))
        .expect("service");
    server.apply(vs("reviews", "reviews")).expect("vs");
    // A second VirtualService for the same host: applied, but sidecars use the older one.
    let mut dup = vs("reviews-too", "reviews");
    dup["metadata"]["creationTimestamp"] = json!("2030-01-01T00:00:00Z");
    server.apply(dup).expect("vs");
    server.write_object_raw(
        "networking.istio.io/v1",
        "VirtualService",
        "default",
        "broken",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "broken", "namespace": "default", "generation": 4},
            "spec": {"hosts": "x"}}),
    );
    let running = start(&server, SourceConfig::default()).await;
    let snap = {
        let store = running.store.lock().expect("store");
        Arc::new(spar_model::Snapshot::build(&store, &spar_model::MeshConfig::default(), 1))
    };
    let (_snap_tx, snap_rx) = tokio::sync::watch::channel(snap);
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let (_rejections_tx, rejections_rx) = tokio::sync::watch::channel(spar_kube::status::Rejections::default());
    let (_analysis_tx, analysis_rx) = tokio::sync::watch::channel(spar_kube::status::Analysis::default());
    tokio::spawn(spar_kube::status::run(
        client(&server).await,
        Arc::clone(&running.store),
        Arc::clone(&running.status),
        snap_rx,
        rejections_rx,
        analysis_rx,
        leader_rx,
    ));
    let condition = |name: &str| {
        server
            .get("networking.istio.io/v1", "VirtualService", "default", name)
            .and_then(|o| o.pointer("/status/conditions/0").cloned())
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(condition("reviews"), None, "followers do not write status");
    leader_tx.send(true).expect("leader");
    eventually("status written", || condition("broken").is_some() && condition("reviews-too").is_some()).await;
    let broken = condition("broken").expect("broken");
    assert_eq!(broken["status"], "False");
    assert_eq!(broken["reason"], "Invalid");
    assert!(broken["message"].as_str().is_some_and(|m| m.contains("invalid type")), "{broken}");
    let ok = condition("reviews").expect("reviews");
    assert_eq!((ok["status"].as_str(), ok["reason"].as_str()), (Some("True"), Some("Applied")));
    let warned = condition("reviews-too").expect("reviews-too");
    assert_eq!(warned["reason"], "AppliedWithWarnings");
    assert!(warned["message"].as_str().is_some_and(|m| m.contains("older")), "{warned}");
    let broken_obj = server.get("networking.istio.io/v1", "VirtualService", "default", "broken").expect("broken");
    assert_eq!(broken_obj["status"]["observedGeneration"], broken_obj["metadata"]["generation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_ca_bundles_are_patched_once() {
    use spar_kube::webhooks::{WebhookNames, patch_once};
    let server = FakeApiServer::start().await.expect("fake API server");
    let hook = |kind: &str, name: &str| {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name},
            "webhooks": [
                {"name": "a.spar.io", "clientConfig": {"service": {"name": "spar", "namespace": "istio-system", "path": "/x"}},
                 "sideEffects": "None", "admissionReviewVersions": ["v1"]},
                {"name": "b.spar.io", "clientConfig": {"service": {"name": "spar", "namespace": "istio-system", "path": "/x"}},
                 "sideEffects": "None", "admissionReviewVersions": ["v1"]}]})
    };
    server.apply(hook("MutatingWebhookConfiguration", "spar-sidecar-injector")).expect("mutating");
    server.apply(hook("ValidatingWebhookConfiguration", "spar-validator")).expect("validating");
    let c = client(&server).await;
    let names = WebhookNames::default();
    assert_eq!(patch_once(&c, &names, b"ROOT PEM").await.expect("patch"), 2);
    assert_eq!(patch_once(&c, &names, b"ROOT PEM").await.expect("patch"), 0, "no write when current");
    let m = server.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "spar-sidecar-injector");
    let m = m.expect("mutating");
    // base64 of "ROOT PEM", on every webhook of the configuration
    assert_eq!(m["webhooks"][0]["clientConfig"]["caBundle"], "Uk9PVCBQRU0=");
    assert_eq!(m["webhooks"][1]["clientConfig"]["caBundle"], "Uk9PVCBQRU0=");

    // The keeper follows a new bundle (a root rotation) at once, not at its next check.
    let (bundle_tx, bundle_rx) = tokio::sync::watch::channel("ROOT PEM".to_string());
    let every = Duration::from_secs(3600);
    tokio::spawn(spar_kube::webhooks::keep_ca_bundle(c.clone(), names, bundle_rx, every));
    bundle_tx.send_replace("ROOT PEM 2".to_string());
    let bundle_of = |kind: &str, name: &str| {
        server
            .get("admissionregistration.k8s.io/v1", kind, "", name)
            .map(|o| o["webhooks"][1]["clientConfig"]["caBundle"].clone())
    };
    eventually("both caBundles follow the rotation", || {
        // base64 of "ROOT PEM 2"
        bundle_of("MutatingWebhookConfiguration", "spar-sidecar-injector") == Some(json!("Uk9PVCBQRU0gMg=="))
            && bundle_of("ValidatingWebhookConfiguration", "spar-validator") == Some(json!("Uk9PVCBQRU0gMg=="))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_the_root_certificate_in_every_namespace() {
    let server = FakeApiServer::start().await.expect("fake API server");
    for ns in ["shop", "lab"] {
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).expect("ns");
    }
    let running = start(&server, SourceConfig::default()).await;
    let (_bundle_tx, bundle_rx) = tokio::sync::watch::channel("ROOT-1".to_string());
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(spar_model::Snapshot::default()));
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    tokio::spawn(spar_kube::rootcert::run(
        client(&server).await,
        Arc::clone(&running.store),
        bundle_rx,
        snap_rx,
        leader_rx,
    ));
    let root = |ns: &str| {
        server
            .get("v1", "ConfigMap", ns, "istio-ca-root-cert")
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(str::to_string))
    };
    eventually("both namespaces", || root("shop").as_deref() == Some("ROOT-1") && root("lab").is_some()).await;
    // A namespace created later gets it on the next snapshot.
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "new"}})).expect("ns");
    eventually("the namespace in the store", || names(&running.store, Kind::Namespace).contains(&"/new".to_string()))
        .await;
    snap_tx.send(Arc::new(spar_model::Snapshot::default())).expect("snapshot");
    eventually("the new namespace", || root("new").as_deref() == Some("ROOT-1")).await;
    drop(leader_tx);
}
