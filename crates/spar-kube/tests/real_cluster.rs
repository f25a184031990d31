//! The Kubernetes glue against a real API server. Ignored by default: no cluster can run
//! on CI machines, and the fake API server (tests/source.rs, conformance/tests/kubernetes.rs)
//! covers the same paths there.
//!
//! To run against kind (or any cluster your kubeconfig points at, with cluster-admin):
//!
//! ```text
//! kind create cluster --name spar
//! cargo run --bin spar -- install | kubectl apply --server-side -f -   # CRDs, RBAC, Spar
//! cargo test -p spar-kube --test real_cluster -- --ignored --nocapture
//! ```
//!
//! Each test works in a namespace of its own (`spar-e2e-<pid>`) and deletes it at the end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;
use spar_api::Kind;
use spar_kube::{KubeSource, SourceConfig, TokenReviewer};
use spar_model::Store;

fn namespace() -> String {
    format!("spar-e2e-{}", std::process::id())
}

async fn setup() -> (kube::Client, String) {
    let client = spar_kube::client(None).await.expect("a kubeconfig for a real cluster (see the module docs)");
    let ns = namespace();
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
    let _ = api.create(&PostParams::default(), &obj).await;
    (client, ns)
}

async fn teardown(client: &kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(ns, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster with Istio's CRDs; see the module docs"]
async fn source_sees_what_kubectl_applies() {
    let (client, ns) = setup().await;
    let store = Arc::new(Mutex::new(Store::new()));
    let source = KubeSource::new(client.clone(), Arc::clone(&store), SourceConfig::default());
    let status = source.status();
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(source.run(tx));
    tokio::time::timeout(Duration::from_secs(60), status.wait_synced()).await.expect("caches sync");

    let (api_version, plural) = spar_kube::custom_resource_versions()
        .find(|(v, k, _)| *k == Kind::VirtualService && v.ends_with("/v1"))
        .map(|(v, _, p)| (v, p))
        .expect("VirtualService v1");
    let ar = kube::api::ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version,
        kind: "VirtualService".into(),
        plural,
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let vs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": ns},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
    }))
    .expect("vs");
    api.create(&PostParams::default(), &vs).await.expect("create the VirtualService");
    let mut seen = false;
    for _ in 0..100 {
        seen = {
            let store = store.lock().expect("store");
            store.objects().0.iter().any(|o| o.meta.kind == Kind::VirtualService && o.meta.namespace == ns)
        };
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    teardown(&client, &ns).await;
    assert!(seen, "the VirtualService reached the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster; see the module docs"]
async fn token_review_names_the_service_account() {
    let (client, ns) = setup().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "reviews"}})).expect("sa");
    let _ = sas.create(&PostParams::default(), &sa).await;
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec!["spar".into()], expiration_seconds: Some(600), ..Default::default() },
        ..Default::default()
    };
    let issued = sas.create_token_request("reviews", &PostParams::default(), &request).await.expect("TokenRequest");
    let token = issued.status.map(|s| s.token).expect("a token");
    let reviewer = TokenReviewer::new(client.clone(), vec!["spar".into()]);
    let reviewed = reviewer.review(&token).await;
    let other_audience = TokenReviewer::new(client.clone(), vec!["not-spar".into()]).review(&token).await;
    teardown(&client, &ns).await;
    let reviewed = reviewed.expect("the token is good");
    assert_eq!((reviewed.namespace.as_str(), reviewed.service_account.as_str()), (ns.as_str(), "reviews"));
    assert!(other_audience.is_err(), "a token for another audience is refused");
}
