//! Managed Gateways against the in-process fake API server: the Kubernetes source reads
//! Gateways and GatewayClasses into the store, and the Lease holder applies each managed
//! Gateway's ServiceAccount, Deployment and Service through the real kube client.
//!
//! The fake has no garbage collector: that Kubernetes deletes the objects with their
//! Gateway rests on their owner references (checked here, uid included). What is tested
//! is that Spar stops applying them once the Gateway is gone or another controller's.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use spar_api::{Kind, Resource};
use spar_kube::gateway_deploy::DeployConfig;
use spar_kube::{KubeSource, SourceConfig};
use spar_kube_fake::{FakeApiServer, ResourceType};
use spar_model::{Snapshot, Store};
use tokio::sync::{mpsc, watch};

async fn client(server: &FakeApiServer) -> kube::Client {
    common::client(server, "gw-deploy").await
}

use common::eventually;

fn mk_gateway(name: &str, class: &str, extra: Value) -> Value {
    let mut spec = json!({
        "gatewayClassName": class,
        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}, {"name": "https", "port": 443, "protocol": "HTTPS"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

/// The class of Gateway `shop/name` in the store, if it is there.
fn stored_class(store: &Mutex<Store>, name: &str) -> Option<String> {
    let store = store.lock().expect("store");
    let (objects, _) = store.objects();
    objects.iter().find(|o| o.meta.kind == Kind::KubernetesGateway && o.meta.name == name).and_then(|o| {
        match &o.resource {
            Resource::KubernetesGateway(g) => Some(g.gateway_class_name.clone()),
            _ => None,
        }
    })
}

struct Cluster {
    server: FakeApiServer,
    store: Arc<Mutex<Store>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    leader: watch::Sender<bool>,
    _changes: mpsc::Receiver<()>,
}

impl Cluster {
    fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value> {
        self.server.get(api_version, kind, "shop", name)
    }

    fn deployment(&self, name: &str) -> Option<Value> {
        self.get("apps/v1", "Deployment", name)
    }

    fn service(&self, name: &str) -> Option<Value> {
        self.get("v1", "Service", name)
    }

    /// A new snapshot: what `spar serve` sends after the store changed.
    fn snapshot(&self) {
        self.snapshots.send_replace(Arc::new(Snapshot::default()));
    }
}

/// The fake with Gateway API's two kinds and the three the deployer writes, the source
/// reading Gateways and GatewayClasses, and the deployer running as a follower.
async fn start(objects: &[Value]) -> Cluster {
    let server = FakeApiServer::start().await.expect("fake API server");
    let t = ResourceType::new;
    server.add_resource(t("gateway.networking.k8s.io/v1", "Gateway", "gateways", true).with_status());
    server.add_resource(t("gateway.networking.k8s.io/v1", "GatewayClass", "gatewayclasses", false).with_status());
    server.add_resource(t("apps/v1", "Deployment", "deployments", true).with_status());
    server.add_resource(t("v1", "ServiceAccount", "serviceaccounts", true));
    for o in objects {
        server.apply(o.clone()).expect("object");
    }
    let store = Arc::new(Mutex::new(Store::new()));
    let cfg = SourceConfig { kinds: vec![Kind::KubernetesGateway, Kind::GatewayClass], ..Default::default() };
    let source = KubeSource::new(client(&server).await, Arc::clone(&store), cfg);
    let status = source.status();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(source.run(tx));
    tokio::time::timeout(Duration::from_secs(20), status.wait_synced()).await.expect("caches sync");
    let (snapshots, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (leader, leader_rx) = watch::channel(false);
    // A short resync, so that repairs show within the test.
    let deploy = DeployConfig { resync: Duration::from_millis(300), ..Default::default() };
    tokio::spawn(spar_kube::gateway_deploy::run(client(&server).await, Arc::clone(&store), deploy, snap_rx, leader_rx));
    Cluster { server, store, snapshots, leader, _changes: rx }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_deploys_each_managed_gateway_and_only_those() {
    let others = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "other"}, "spec": {"controllerName": "example.com/gateway-controller"}});
    // Someone's own Service, where Gateway `taken` would put its own.
    let theirs = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken-istio", "namespace": "shop"},
        "spec": {"ports": [{"name": "web", "port": 8080}]}});
    let c = start(&[
        others,
        theirs,
        mk_gateway("web", "istio", json!({})),
        mk_gateway("edge", "spar", json!({"addresses": [{"type": "IPAddress", "value": "203.0.113.7"}]})),
        mk_gateway("foreign", "other", json!({})),
        mk_gateway("byo", "istio", json!({"addresses": [{"type": "Hostname", "value": "my-proxies"}]})),
        mk_gateway("taken", "istio", json!({})),
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.deployment("web-istio").is_none(), "followers apply nothing");

    c.leader.send_replace(true);
    eventually("web's objects", || {
        c.deployment("web-istio").is_some()
            && c.service("web-istio").is_some()
            && c.get("v1", "ServiceAccount", "web-istio").is_some()
    })
    .await;
    let gateway = c.get("gateway.networking.k8s.io/v1", "Gateway", "web").expect("gateway");
    let owner = json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "web",
        "uid": gateway["metadata"]["uid"], "controller": true}]);
    for (api_version, kind) in [("v1", "ServiceAccount"), ("apps/v1", "Deployment"), ("v1", "Service")] {
        let obj = c.get(api_version, kind, "web-istio").expect("object");
        assert_eq!(obj["metadata"]["ownerReferences"], owner, "{kind}: deleted with the Gateway it names by uid");
        assert_eq!(obj["metadata"]["labels"]["gateway.istio.io/managed"], "istio.io-gateway-controller", "{kind}");
    }
    let deployment = c.deployment("web-istio").expect("deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"], "web");
    assert_eq!(pod["spec"]["serviceAccountName"], "web-istio");
    assert_eq!(pod["spec"]["containers"][0]["name"], "istio-proxy");
    assert_eq!(pod["spec"]["initContainers"][0]["args"][1], "--router");
    let service = c.service("web-istio").expect("service");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["selector"], json!({"gateway.networking.k8s.io/gateway-name": "web"}));
    let ports: Vec<i64> =
        service["spec"]["ports"].as_array().expect("ports").iter().filter_map(|p| p["port"].as_i64()).collect();
    assert_eq!(ports, [15021, 80, 443]);

    // Class spar: Spar's controller; one IP address: the load balancer's.
    eventually("edge's objects", || c.service("edge-spar").is_some()).await;
    let edge = c.service("edge-spar").expect("edge");
    assert_eq!(edge["metadata"]["labels"]["gateway.istio.io/managed"], "spar-mesh.io-gateway-controller");
    assert_eq!(edge["spec"]["loadBalancerIP"], "203.0.113.7");

    // Someone else's Service is left as it was; what is free is still made.
    eventually("taken's deployment", || c.deployment("taken-istio").is_some()).await;
    let theirs = c.service("taken-istio").expect("their service");
    assert!(theirs["metadata"].get("labels").is_none(), "{theirs}");
    assert_eq!(theirs["spec"]["ports"], json!([{"name": "web", "port": 8080}]));

    // Another controller's class, a Hostname address: not Spar's to deploy.
    assert!(c.deployment("foreign-other").is_none() && c.service("foreign-other").is_none());
    assert!(c.deployment("byo-istio").is_none() && c.service("byo-istio").is_none());
    let created: Vec<String> = c
        .server
        .list("apps/v1", "Deployment")
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(created, ["edge-spar", "taken-istio", "web-istio"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_applied_drift_is_repaired_and_spar_lets_go_of_gateways_it_no_longer_manages() {
    let others = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "other"}, "spec": {"controllerName": "example.com/gateway-controller"}});
    let c = start(&[others, mk_gateway("web", "istio", json!({})), mk_gateway("edge", "istio", json!({}))]).await;
    c.leader.send_replace(true);
    eventually("both deployed", || c.deployment("web-istio").is_some() && c.deployment("edge-istio").is_some()).await;

    // A new listener port reaches the Service.
    let mut web = mk_gateway("web", "istio", json!({}));
    web["spec"]["listeners"]
        .as_array_mut()
        .expect("listeners")
        .push(json!({"name": "tcp", "port": 5432, "protocol": "TCP"}));
    c.server.apply(web).expect("web");
    eventually("the new port", || {
        c.snapshot();
        c.service("web-istio").is_some_and(|s| s["spec"]["ports"].as_array().is_some_and(|p| p.len() == 4))
    })
    .await;

    // A deleted Deployment comes back (the next resync at the latest).
    assert!(c.server.delete("apps/v1", "Deployment", "shop", "web-istio"));
    eventually("web's deployment back", || c.deployment("web-istio").is_some()).await;

    // Not the leader any more: nothing is applied.
    c.leader.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(c.server.delete("apps/v1", "Deployment", "shop", "web-istio"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.deployment("web-istio").is_none(), "a follower repairs nothing");
    c.leader.send_replace(true);
    eventually("the new leader applies", || c.deployment("web-istio").is_some()).await;

    // The class goes to another controller: Spar stops applying (the objects stay until
    // the Gateway goes, as with istiod).
    c.server.apply(mk_gateway("edge", "other", json!({}))).expect("edge");
    eventually("the store sees the new class", || stored_class(&c.store, "edge").as_deref() == Some("other")).await;
    c.snapshot();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.server.delete("apps/v1", "Deployment", "shop", "edge-istio"));
    c.snapshot();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.deployment("edge-istio").is_none(), "another controller's Gateway is not deployed");

    // The Gateway is deleted: Kubernetes' garbage collector deletes what it owns (done by
    // hand here); Spar does not bring it back.
    assert!(c.server.delete("gateway.networking.k8s.io/v1", "Gateway", "shop", "web"));
    eventually("the store loses the Gateway", || stored_class(&c.store, "web").is_none()).await;
    c.snapshot();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (api_version, kind) in [("v1", "ServiceAccount"), ("apps/v1", "Deployment"), ("v1", "Service")] {
        assert!(c.server.delete(api_version, kind, "shop", "web-istio"), "{kind}");
    }
    c.snapshot();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.deployment("web-istio").is_none() && c.service("web-istio").is_none(), "not recreated");
}
