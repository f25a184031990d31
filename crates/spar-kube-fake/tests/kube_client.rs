//! Drives the fake API server with the real `kube` client and `kube_runtime::watcher`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use spar_kube_fake::{FakeApiServer, ResourceType};

async fn mk_client(server: &FakeApiServer) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn mk_configmap(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }))
    .unwrap()
}

fn mk_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    })
}

fn vs_type() -> ResourceType {
    ResourceType::new("networking.istio.io/v1", "VirtualService", "virtualservices", true).with_status()
}

fn vs_api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The watcher's next item, as a short string (`Init`, `InitApply(a)`, `Apply(a)`, `Err(...)`).
async fn next<K: kube::Resource>(
    stream: &mut (impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> String {
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watcher item within 10s")
        .expect("watcher stream never ends");
    match item {
        Ok(watcher::Event::Init) => "Init".into(),
        Ok(watcher::Event::InitApply(o)) => format!("InitApply({})", o.name_any()),
        Ok(watcher::Event::InitDone) => "InitDone".into(),
        Ok(watcher::Event::Apply(o)) => format!("Apply({})", o.name_any()),
        Ok(watcher::Event::Delete(o)) => format!("Delete({})", o.name_any()),
        Err(e) => format!("Err({e:?})"),
    }
}

/// Skips items until `Init`, then returns the names applied before `InitDone`, and the
/// items skipped before `Init`.
async fn next_relist<K: kube::Resource>(
    stream: &mut (impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> (BTreeSet<String>, Vec<String>) {
    let mut skipped = Vec::new();
    loop {
        let item = next(stream).await;
        if item == "Init" {
            break;
        }
        skipped.push(item);
    }
    let mut names = BTreeSet::new();
    loop {
        let item = next(stream).await;
        if item == "InitDone" {
            return (names, skipped);
        }
        let name = item.strip_prefix("InitApply(").and_then(|s| s.strip_suffix(')'));
        names.insert(name.unwrap_or_else(|| panic!("unexpected {item}")).to_string());
    }
}

#[tokio::test]
async fn configmap_crud_through_kubeconfig() {
    let server = FakeApiServer::start().await.unwrap();
    let client = mk_client(&server).await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let created = api.create(&PostParams::default(), &mk_configmap("a", json!({}))).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    let err = api.create(&PostParams::default(), &mk_configmap("a", json!({}))).await.unwrap_err();
    assert_eq!(api_code(&err), Some(409));

    let got = api.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");
    let mut changed = api.get("a").await.unwrap();
    changed.data = Some([("k".to_string(), "w".to_string())].into());
    let replaced = api.replace("a", &PostParams::default(), &changed).await.unwrap();
    assert_ne!(replaced.resource_version(), created.resource_version());
    assert_eq!(replaced.creation_timestamp(), created.creation_timestamp());
    assert_eq!(replaced.uid(), created.uid());
    assert_eq!(server.get("v1", "ConfigMap", "default", "a").unwrap()["data"]["k"], "w");

    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 1);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(&api.get("a").await.unwrap_err()), Some(404));
    assert!(api.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(server.requests().iter().any(|r| r == "DELETE /api/v1/namespaces/default/configmaps/a"));
}

#[tokio::test]
async fn label_selectors_and_pagination() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(mk_client(&server).await);
    for i in 0..5 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        let cm = mk_configmap(&format!("cm{i}"), json!({"tier": tier, "app": "x"}));
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names =
        |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> { list.items.iter().map(|c| c.name_any()).collect() };
    let lp = ListParams::default().labels("tier=even,app");
    assert_eq!(names(api.list(&lp).await.unwrap()), ["cm0", "cm2", "cm4"]);
    let lp = ListParams::default().labels("tier!=even");
    assert_eq!(names(api.list(&lp).await.unwrap()), ["cm1", "cm3"]);
    let lp = ListParams::default().labels("tier in (odd),!missing");
    assert_eq!(names(api.list(&lp).await.unwrap()), ["cm1", "cm3"]);
    let lp = ListParams::default().fields("metadata.name=cm3");
    assert_eq!(names(api.list(&lp).await.unwrap()), ["cm3"]);
    let err = api.list(&ListParams::default().labels("a in (b")).await.unwrap_err();
    assert_eq!(api_code(&err), Some(400));

    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(2);
    let first_rv = loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        let rv = page.metadata.resource_version.clone().unwrap();
        let token = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        seen.extend(names(page));
        // An object created mid-pagination does not change the pages' resource version.
        server
            .apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "zz-late", "namespace": "other"}}),
            )
            .unwrap();
        match token {
            Some(token) => lp = lp.continue_token(&token),
            None => break rv,
        }
    };
    assert_eq!(seen, ["cm0", "cm1", "cm2", "cm3", "cm4"]);
    assert!(first_rv.parse::<u64>().unwrap() < server.resource_version());
    let err = api.list(&ListParams::default().continue_token("zz")).await.unwrap_err();
    assert_eq!(api_code(&err), Some(400));
}

#[tokio::test]
async fn pod_watcher_sees_initial_list_then_changes() {
    let server = FakeApiServer::start().await.unwrap();
    let client = mk_client(&server).await;
    server.apply(mk_pod("p1")).unwrap();
    let api: Api<Pod> = Api::default_namespaced(client);
    let mut events = Box::pin(watcher(api.clone(), watcher::Config::default()));
    assert_eq!(next(&mut events).await, "Init");
    assert_eq!(next(&mut events).await, "InitApply(p1)");
    assert_eq!(next(&mut events).await, "InitDone");

    let p2: Pod = serde_json::from_value(mk_pod("p2")).unwrap();
    api.create(&PostParams::default(), &p2).await.unwrap();
    assert_eq!(next(&mut events).await, "Apply(p2)");
    let mut p1 = mk_pod("p1");
    p1["metadata"]["labels"] = json!({"changed": "yes"});
    server.apply(p1).unwrap();
    assert_eq!(next(&mut events).await, "Apply(p1)");
    assert!(server.delete("v1", "Pod", "default", "p1"));
    assert_eq!(next(&mut events).await, "Delete(p1)");
    api.delete("p2", &DeleteParams::default()).await.unwrap();
    assert_eq!(next(&mut events).await, "Delete(p2)");
    let watches = server.requests().into_iter().filter(|r| r.contains("watch=true")).count();
    assert_eq!(watches, 1, "one watch served everything: {:?}", server.requests());
}

#[tokio::test]
async fn compact_forces_a_relist() {
    let server = FakeApiServer::start().await.unwrap();
    let client = mk_client(&server).await;
    for name in ["a", "b"] {
        server.apply(mk_pod(name)).unwrap();
    }
    // One object per page: the relist walks continue tokens.
    let config = watcher::Config::default().page_size(1);
    let mut events = Box::pin(watcher(Api::<Pod>::all(client), config));
    let (names, _) = next_relist(&mut events).await;
    assert_eq!(names, BTreeSet::from(["a".to_string(), "b".to_string()]));
    server.apply(mk_pod("c")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(c)");

    // The watcher is not polled while its stream is cut and "b" goes away.
    server.compact();
    assert!(server.delete("v1", "Pod", "default", "b"));
    let (names, skipped) = next_relist(&mut events).await;
    assert_eq!(names, BTreeSet::from(["a".to_string(), "c".to_string()]));
    assert!(skipped.iter().any(|s| s.contains("code: 410")), "the resumed watch got 410 Gone: {skipped:?}");
    server.apply(mk_pod("d")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(d)");
    let lists = server.requests().into_iter().filter(|r| r.contains("continue=")).count();
    assert_eq!(lists, 2, "each of the two relists fetched a second page");
}

#[tokio::test]
async fn streaming_list_watcher() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(mk_pod("a")).unwrap();
    let api: Api<Pod> = Api::default_namespaced(mk_client(&server).await);
    let mut events = Box::pin(watcher(api, watcher::Config::default().streaming_lists()));
    let (names, _) = next_relist(&mut events).await;
    assert_eq!(names, BTreeSet::from(["a".to_string()]));
    server.apply(mk_pod("b")).unwrap();
    assert_eq!(next(&mut events).await, "Apply(b)");
    assert!(server.requests().iter().all(|r| r.contains("watch=true")), "no list calls");
}

/// Sends a raw request with the admin token; returns the status code and the JSON body.
async fn raw(client: &Client, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.as_bytes().to_vec().into())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_edge_cases() {
    let server = FakeApiServer::start().await.unwrap();
    let client = mk_client(&server).await;
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"gen-"}}"#;
    let (code, created) = raw(&client, "POST", "/api/v1/namespaces/ns1/configmaps", "application/json", cm).await;
    assert_eq!(code, 201);
    let name = created["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(created["metadata"]["namespace"], "ns1");

    let path = format!("/api/v1/namespaces/ns1/configmaps/{name}");
    let (code, status) = raw(&client, "PATCH", &path, "text/plain", "{}").await;
    assert_eq!((code, status["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let (code, status) = raw(&client, "PUT", &path, "application/json", "{not json").await;
    assert_eq!((code, status["kind"].as_str()), (400, Some("Status")));
    let wrong_ns = r#"{"metadata":{"name":"x","namespace":"other"}}"#;
    let (code, _) = raw(&client, "POST", "/api/v1/namespaces/ns1/configmaps", "application/json", wrong_ns).await;
    assert_eq!(code, 400);
    let (code, _) = raw(&client, "POST", "/api/v1/configmaps", "application/json", cm).await;
    assert_eq!(code, 405);
    let (code, _) = raw(&client, "GET", "/api/v1/namespaces/ns1/nodes", "application/json", "").await;
    assert_eq!(code, 404, "nodes are cluster-scoped");
    let (code, _) = raw(&client, "GET", &format!("{path}/status"), "application/json", "").await;
    assert_eq!(code, 404, "configmaps have no status subresource");
    let (code, _) = raw(&client, "GET", "/apis/example.com/v1", "application/json", "").await;
    assert_eq!(code, 404);

    let ns = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ns1"}}"#;
    let (code, _) = raw(&client, "POST", "/api/v1/namespaces", "application/json", ns).await;
    assert_eq!(code, 201);
    let phase = r#"{"status":{"phase":"Active"}}"#;
    let (code, got) =
        raw(&client, "PATCH", "/api/v1/namespaces/ns1/status", "application/merge-patch+json", phase).await;
    assert_eq!((code, got["status"]["phase"].as_str()), (200, Some("Active")));

    let precondition = r#"{"preconditions":{"uid":"not-the-uid"}}"#;
    let (code, status) = raw(&client, "DELETE", &path, "application/json", precondition).await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
    let (code, deleted) = raw(&client, "DELETE", &path, "application/json", "").await;
    assert_eq!((code, deleted["metadata"]["name"].as_str()), (200, Some(name)));
    assert!(server.get("v1", "ConfigMap", "ns1", name).is_none());
}

#[tokio::test]
async fn unregistered_resource_is_404_until_added() {
    let server = FakeApiServer::start().await.unwrap();
    let client = mk_client(&server).await;
    let api = vs_api(&client);
    assert_eq!(api_code(&api.get("x").await.unwrap_err()), Some(404));
    let err = api.watch(&WatchParams::default(), "0").await.err().unwrap();
    assert_eq!(api_code(&err), Some(404));
    assert!(
        server
            .apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"}}))
            .is_err()
    );

    let mut events = Box::pin(watcher(api.clone(), watcher::Config::default()));
    assert_eq!(next(&mut events).await, "Init");
    let err = next(&mut events).await;
    assert!(err.starts_with("Err(") && err.contains("code: 404"), "{err}");

    server.add_resource(vs_type());
    server
        .apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"}}))
        .unwrap();
    let (names, _) = next_relist(&mut events).await;
    assert_eq!(names, BTreeSet::from(["x".to_string()]));

    server
        .apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "y"}}))
        .unwrap();
    assert_eq!(next(&mut events).await, "Apply(y)");

    // Deleting the CRD deletes its objects and ends the watch; its URLs are 404 again.
    server.remove_resource("networking.istio.io", "v1", "virtualservices");
    assert_eq!(next(&mut events).await, "Delete(x)");
    assert_eq!(next(&mut events).await, "Delete(y)");
    let err = next(&mut events).await;
    assert!(err.contains("code: 404"), "{err}");
    assert_eq!(api_code(&api.list(&ListParams::default()).await.unwrap_err()), Some(404));
}

#[tokio::test]
async fn custom_resource_round_trip_and_status_subresource() {
    let server = FakeApiServer::start().await.unwrap();
    server.add_resource(vs_type());
    let api = vs_api(&mk_client(&server).await);
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let mut vs = DynamicObject::new("reviews", &ApiResource::from_gvk(&gvk)).within("default");
    vs.data = json!({"spec": {"hosts": ["reviews"]}, "status": {"ignored": true}});
    let created = api.create(&PostParams::default(), &vs).await.unwrap();
    assert_eq!(created.data["spec"]["hosts"][0], "reviews");
    assert!(created.data.get("status").is_none(), "create drops .status");
    assert_eq!(created.metadata.generation, Some(1));

    let status =
        json!({"status": {"conditions": [{"type": "Reconciled", "status": "True"}]}, "spec": {"hosts": ["evil"]}});
    let patched = api.patch_status("reviews", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert_eq!(patched.data["status"]["conditions"][0]["type"], "Reconciled");
    assert_eq!(patched.data["spec"]["hosts"][0], "reviews", "status patch only changes status");
    assert_eq!(patched.metadata.generation, Some(1));
    assert_ne!(patched.resource_version(), created.resource_version());

    let main = json!({"spec": {"hosts": ["reviews", "ratings"]}, "status": {"conditions": []}});
    let patched = api.patch("reviews", &PatchParams::default(), &Patch::Merge(&main)).await.unwrap();
    assert_eq!(patched.data["spec"]["hosts"][1], "ratings");
    assert_eq!(patched.data["status"]["conditions"][0]["type"], "Reconciled", "main patch ignores status");
    assert_eq!(patched.metadata.generation, Some(2));
    let stored = server.get("networking.istio.io/v1", "VirtualService", "default", "reviews").unwrap();
    assert_eq!(stored["status"]["conditions"][0]["status"], "True");

    // Server-side apply (a merge patch here) creates; JSON patch edits.
    let ssa = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "applied"}, "spec": {"hosts": ["a"]}});
    let applied = api.patch("applied", &PatchParams::apply("test"), &Patch::Apply(&ssa)).await.unwrap();
    assert_eq!(applied.data["spec"]["hosts"][0], "a");
    let ops = serde_json::from_value(json!([{"op": "add", "path": "/spec/hosts/-", "value": "b"}])).unwrap();
    let edited = api.patch("applied", &PatchParams::default(), &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(edited.data["spec"]["hosts"], json!(["a", "b"]));
    let ops = serde_json::from_value(json!([{"op": "test", "path": "/spec/hosts/0", "value": "z"}])).unwrap();
    let err = api.patch("applied", &PatchParams::default(), &Patch::Json::<()>(ops)).await.unwrap_err();
    assert_eq!(api_code(&err), Some(422));
}

#[tokio::test]
async fn status_patch_through_another_served_version() {
    let server = FakeApiServer::start().await.unwrap();
    server.add_resource(vs_type());
    server.add_resource(
        ResourceType::new("networking.istio.io/v1beta1", "VirtualService", "virtualservices", true).with_status(),
    );
    let old = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "old", "namespace": "default"}, "spec": {"hosts": ["old"]}});
    server.apply(old).unwrap();
    let status = json!({"status": {"conditions": [{"type": "Reconciled", "status": "True"}]}});
    let api = vs_api(&mk_client(&server).await);
    let patched = api.patch_status("old", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert_eq!(patched.types.map(|t| t.api_version).as_deref(), Some("networking.istio.io/v1"));
    assert_eq!(patched.data["status"]["conditions"][0]["type"], "Reconciled");
}

#[tokio::test]
async fn token_review_names_the_pod_of_a_bound_token() {
    let server = FakeApiServer::start().await.unwrap();
    server.add_pod_token("bound", "system:serviceaccount:shop:cart", &["spar"], "cart-1", "uid-1");
    let api: Api<TokenReview> = Api::all(mk_client(&server).await);
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some("bound".into()), audiences: Some(vec!["spar".into()]) },
        ..Default::default()
    };
    let user = api.create(&PostParams::default(), &review).await.unwrap().status.unwrap().user.unwrap();
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["cart-1"]);
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], ["uid-1"]);
    server.revoke_token("bound");
    let status = api.create(&PostParams::default(), &review).await.unwrap().status.unwrap();
    assert_eq!(status.authenticated, Some(false), "a revoked token no longer authenticates");
}

#[tokio::test]
async fn token_review() {
    let server = FakeApiServer::start().await.unwrap();
    server.add_token("good", "system:serviceaccount:bookinfo:reviews", &["istio-ca"]);
    let api: Api<TokenReview> = Api::all(mk_client(&server).await);
    let review = |token: &str, audiences: Option<Vec<String>>| TokenReview {
        spec: TokenReviewSpec { token: Some(token.into()), audiences },
        ..Default::default()
    };
    let ok = api.create(&PostParams::default(), &review("good", Some(vec!["istio-ca".into()]))).await.unwrap();
    let status = ok.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    let user = status.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:bookinfo:reviews"));
    let groups = user.groups.unwrap();
    assert_eq!(groups, ["system:serviceaccounts", "system:serviceaccounts:bookinfo", "system:authenticated"]);
    assert_eq!(status.audiences.unwrap(), ["istio-ca"]);

    let any = api.create(&PostParams::default(), &review("good", None)).await.unwrap();
    assert_eq!(any.status.unwrap().authenticated, Some(true));
    let bad = api.create(&PostParams::default(), &review("bad", None)).await.unwrap();
    let status = bad.status.unwrap();
    assert_eq!(status.authenticated, Some(false));
    assert!(status.error.is_some());
    let wrong = review("good", Some(vec!["other".into()]));
    let wrong = api.create(&PostParams::default(), &wrong).await.unwrap();
    assert_eq!(wrong.status.unwrap().authenticated, Some(false));
}

#[tokio::test]
async fn lease_optimistic_concurrency() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(mk_client(&server).await, "istio-system");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "spar-leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    api.create(&PostParams::default(), &lease).await.unwrap();
    let seen = api.get("spar-leader").await.unwrap();

    let mut mine = seen.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let won = api.replace("spar-leader", &PostParams::default(), &mine).await.unwrap();
    assert_eq!(won.spec.unwrap().holder_identity.as_deref(), Some("b"));

    let mut theirs = seen;
    theirs.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = api.replace("spar-leader", &PostParams::default(), &theirs).await.unwrap_err();
    assert_eq!(api_code(&err), Some(409));
    let kube::Error::Api(status) = err else { unreachable!() };
    assert_eq!(status.reason, "Conflict");
    let held = api.get("spar-leader").await.unwrap();
    assert_eq!(held.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test]
async fn requests_need_the_admin_token() {
    let server = FakeApiServer::start().await.unwrap();
    let client = Client::try_from(Config::new(server.url().parse().unwrap())).unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), Some(401));
    assert_eq!(server.requests(), ["GET /api/v1/namespaces/default/configmaps"]);
}

#[tokio::test]
async fn discovery_and_version() {
    let server = FakeApiServer::start().await.unwrap();
    server.add_resource(vs_type());
    let client = mk_client(&server).await;
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap();
    assert_eq!(ar.plural, "virtualservices");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(sub, _)| sub.plural == "virtualservices/status" || sub.plural == "status"));
    let lease = GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease");
    assert!(discovery.resolve_gvk(&lease).is_some());
    assert!(discovery.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Node")).is_some());
}

#[tokio::test]
async fn raw_watch_bookmarks_timeout_and_gone() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(mk_pod("p")).unwrap();
    let api: Api<Pod> = Api::default_namespaced(mk_client(&server).await);

    let started = std::time::Instant::now();
    let stream = api.watch(&WatchParams::default().timeout(2), "0").await.unwrap();
    let events: Vec<_> = stream.collect().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(&events[0], Ok(WatchEvent::Added(p)) if p.name_any() == "p"));
    let bookmarks = events.iter().filter(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))).count();
    assert!(bookmarks >= 2, "periodic and final bookmarks: {events:?}");

    let rv = api.get("p").await.unwrap().resource_version().unwrap();
    server.compact();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the stream ends after 410");
}

#[tokio::test]
async fn label_selector_watch_sees_objects_leave() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Pod> = Api::default_namespaced(mk_client(&server).await);
    let mut pod = mk_pod("p");
    pod["metadata"]["labels"] = json!({"app": "web"});
    server.apply(pod.clone()).unwrap();
    let config = watcher::Config::default().labels("app=web");
    let mut events = Box::pin(watcher(api, config));
    let (names, _) = next_relist(&mut events).await;
    assert_eq!(names.len(), 1);
    pod["metadata"]["labels"] = json!({"app": "db"});
    server.apply(pod.clone()).unwrap();
    assert_eq!(next(&mut events).await, "Delete(p)");
    pod["metadata"]["labels"] = json!({"app": "web"});
    server.apply(pod).unwrap();
    assert_eq!(next(&mut events).await, "Apply(p)");
}

#[tokio::test]
async fn raw_objects_reach_clients_unchecked() {
    let server = FakeApiServer::start().await.unwrap();
    let client = mk_client(&server).await;
    let raw =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "default"}, "spec": "oops"});
    server.write_object_raw("v1", "Pod", "default", "bad", raw);
    let typed: Api<Pod> = Api::default_namespaced(client.clone());
    assert!(typed.list(&ListParams::default()).await.is_err());
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Pod"));
    let dynamic: Api<DynamicObject> = Api::default_namespaced_with(client, &ar);
    let list = dynamic.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items[0].data["spec"], "oops");
    assert!(list.items[0].resource_version().is_some());
}

#[tokio::test]
async fn identical_writes_are_no_ops() {
    let server = FakeApiServer::start().await.unwrap();
    let first = server.apply(mk_pod("p")).unwrap();
    let second = server.apply(mk_pod("p")).unwrap();
    assert_eq!(first["metadata"]["resourceVersion"], second["metadata"]["resourceVersion"]);
    let mut changed = mk_pod("p");
    changed["spec"]["nodeName"] = json!("n1");
    let third = server.apply(changed).unwrap();
    assert_ne!(first["metadata"]["resourceVersion"], third["metadata"]["resourceVersion"]);
    assert_eq!(third["metadata"]["generation"], 2);
    assert_eq!(third["metadata"]["uid"], first["metadata"]["uid"]);
    assert_eq!(server.list("v1", "Pod").len(), 1);
}
