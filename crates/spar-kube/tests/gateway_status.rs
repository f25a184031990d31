//! Gateway API status against the in-process fake API server: the Kubernetes source reads
//! a GatewayClass, a Gateway and an HTTPRoute into the store, a snapshot is built from
//! it, and the Lease holder writes each one's status through the real kube client, next
//! to what another controller wrote on the route.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use spar_api::Kind;
use spar_kube::{KubeSource, SourceConfig};
use spar_kube_fake::{FakeApiServer, ResourceType};
use spar_model::{MeshConfig, Snapshot, Store};
use tokio::sync::{mpsc, watch};

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const THEIRS: &str = "example.com/gateway-controller";

async fn client(server: &FakeApiServer) -> kube::Client {
    common::client(server, "gw-status").await
}

use common::eventually;

/// Another controller's entry in the route's parents, written before Spar runs.
fn mk_their_parent() -> Value {
    json!({
        "parentRef": {"name": "their-gateway"},
        "controllerName": THEIRS,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
            "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}],
    })
}

fn objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": GATEWAY_API, "kind": "GatewayClass", "metadata": {"name": "istio"},
            "spec": {"controllerName": "istio.io/gateway-controller"}}),
        json!({"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
        json!({"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "web"}, {"name": "their-gateway"}],
                "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]},
            "status": {"parents": [mk_their_parent()]}}),
    ]
}

struct Cluster {
    server: FakeApiServer,
    store: Arc<Mutex<Store>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    leader: watch::Sender<bool>,
    _changes: mpsc::Receiver<()>,
}

impl Cluster {
    fn status(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let obj = self.server.get(GATEWAY_API, kind, namespace, name).expect("object");
        obj.get("status").cloned().unwrap_or(Value::Null)
    }

    fn resource_version(&self, kind: &str, namespace: &str, name: &str) -> Value {
        self.server.get(GATEWAY_API, kind, namespace, name).expect("object")["metadata"]["resourceVersion"].clone()
    }

    /// A snapshot of what the store holds now, as `spar serve` builds after a change.
    fn snapshot(&self) {
        let store = self.store.lock().expect("store");
        let version = self.snapshots.borrow().version + 1;
        self.snapshots.send_replace(Arc::new(Snapshot::build(&store, &MeshConfig::default(), version)));
    }
}

/// The fake with Gateway API's kinds (status subresources), the source reading them, a
/// snapshot of what it read, and the writer running as a follower.
async fn start() -> Cluster {
    let server = FakeApiServer::start().await.expect("fake API server");
    let t = ResourceType::new;
    server.add_resource(t(GATEWAY_API, "GatewayClass", "gatewayclasses", false).with_status());
    server.add_resource(t(GATEWAY_API, "Gateway", "gateways", true).with_status());
    server.add_resource(t(GATEWAY_API, "HTTPRoute", "httproutes", true).with_status());
    for o in objects() {
        server.apply(o).expect("object");
    }
    let store = Arc::new(Mutex::new(Store::new()));
    let kinds = vec![Kind::GatewayClass, Kind::KubernetesGateway, Kind::HTTPRoute];
    let source =
        KubeSource::new(client(&server).await, Arc::clone(&store), SourceConfig { kinds, ..Default::default() });
    let sync = source.status();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(source.run(tx));
    tokio::time::timeout(Duration::from_secs(20), sync.wait_synced()).await.expect("caches sync");
    let (snapshots, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (leader, leader_rx) = watch::channel(false);
    tokio::spawn(spar_kube::gateway_status::run(client(&server).await, Arc::clone(&store), sync, snap_rx, leader_rx));
    let c = Cluster { server, store, snapshots, leader, _changes: rx };
    c.snapshot();
    c
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    conditions.as_array().into_iter().flatten().find(|c| c["type"] == kind).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_gateway_and_route_status_next_to_another_controllers_parent() {
    let c = start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.status("Gateway", "shop", "web"), Value::Null, "followers write nothing");
    assert_eq!(c.status("HTTPRoute", "shop", "reviews"), json!({"parents": [mk_their_parent()]}));

    c.leader.send_replace(true);
    eventually("the Gateway's status", || c.status("Gateway", "shop", "web").get("conditions").is_some()).await;
    let gateway = c.status("Gateway", "shop", "web");
    let accepted = condition(&gateway["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True", "{gateway}");
    assert_eq!(accepted["observedGeneration"], 1, "{gateway}");
    assert!(accepted["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{gateway}");
    let listener = &gateway["listeners"][0];
    assert_eq!(listener["name"], "http");
    assert_eq!(listener["attachedRoutes"], 1, "{gateway}");
    assert_eq!(condition(&listener["conditions"], "Accepted")["observedGeneration"], 1, "{gateway}");

    eventually("the class's status", || c.status("GatewayClass", "", "istio").get("conditions").is_some()).await;
    let class = c.status("GatewayClass", "", "istio");
    assert_eq!(condition(&class["conditions"], "Accepted")["status"], "True", "{class}");

    eventually("the route's status", || {
        c.status("HTTPRoute", "shop", "reviews")["parents"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    let route = c.status("HTTPRoute", "shop", "reviews");
    let parents = route["parents"].as_array().expect("parents");
    assert_eq!(parents[0], mk_their_parent(), "another controller's parent is kept as it was, in front");
    assert_eq!(parents[1]["controllerName"], "istio.io/gateway-controller");
    assert_eq!(parents[1]["parentRef"], json!({"name": "web"}));
    let accepted = condition(&parents[1]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True", "{route}");
    assert_eq!(accepted["observedGeneration"], 1, "{route}");

    // A new leader with nothing new to say writes nothing (times stay).
    let before = c.resource_version("Gateway", "shop", "web");
    c.leader.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.leader.send_replace(true);
    c.snapshot();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.resource_version("Gateway", "shop", "web"), before, "unchanged status is not written");
    assert_eq!(c.status("Gateway", "shop", "web"), gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_leaves_spars_gateways_keeps_only_the_other_controllers_parent() {
    let c = start().await;
    c.leader.send_replace(true);
    eventually("the route's status", || {
        c.status("HTTPRoute", "shop", "reviews")["parents"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;

    // The route now names only the other controller's Gateway: Spar takes back its entry.
    let mut route = c.server.get(GATEWAY_API, "HTTPRoute", "shop", "reviews").expect("route");
    route["spec"]["parentRefs"] = json!([{"name": "their-gateway"}]);
    c.server.apply(route).expect("route");
    eventually("Spar's parent removed", || {
        c.snapshot();
        c.status("HTTPRoute", "shop", "reviews") == json!({"parents": [mk_their_parent()]})
    })
    .await;
    // Not the leader: nothing changes any more.
    c.leader.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = c.resource_version("HTTPRoute", "shop", "reviews");
    let mut route = c.server.get(GATEWAY_API, "HTTPRoute", "shop", "reviews").expect("route");
    route["spec"]["parentRefs"] = json!([{"name": "web"}, {"name": "their-gateway"}]);
    c.server.apply(route).expect("route back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.snapshot();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let route = c.status("HTTPRoute", "shop", "reviews");
    assert_eq!(route["parents"].as_array().map(Vec::len), Some(1), "a follower writes nothing: {route}");
    assert_ne!(c.resource_version("HTTPRoute", "shop", "reviews"), before, "the spec did change");
}
