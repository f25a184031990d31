use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route::Action, route_action::ClusterSpecifier};
use prost::Message;
use spar_model::{MeshConfig, Proxy, Snapshot, Store};

use super::generate;
use crate::resources::{ProxyResources, ResourceType};

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: backend}
spec: {selector: {app: backend}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec: {selector: {app: db}, ports: [{name: tcp-db, port: 5432}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v1}
spec: {address: 10.0.0.2, labels: {app: backend, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v2}
spec: {address: 10.0.0.3, labels: {app: backend, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec: {host: backend, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route:
    - {destination: {host: backend, subset: v1}, weight: 80}
    - {destination: {host: backend, subset: v2}, weight: 20}
"#;

const SIDECARS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client}
spec:
  workloadSelector: {labels: {app: client}}
  egress: [{bind: 10.0.0.1, hosts: ["./*", "data/*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: backend}
spec:
  workloadSelector: {labels: {app: backend}}
  ingress:
  - {port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: "0.0.0.0:8080"}
  - {port: {number: 9090, protocol: TCP, name: tcp}, defaultEndpoint: "127.0.0.1:7070"}
"#;

/// The snapshot of `docs` (one file each, `0.yaml`, `1.yaml`, ...) under `mesh`: the one
/// YAML → store → snapshot helper of the generator tests. Every document must parse.
pub(super) fn snapshot_of(docs: &[&str], mesh: &MeshConfig) -> Snapshot {
    let mut store = Store::new();
    for (i, d) in docs.iter().enumerate() {
        let name = format!("{i}.yaml");
        let parsed = spar_api::parse_file(&name, d);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        store.set_unit(&name, parsed);
    }
    Snapshot::build(&store, mesh, 1)
}

fn mk_snapshot(yaml: &str) -> Snapshot {
    snapshot_of(&[yaml], &MeshConfig::default())
}

fn mk_proxy(ip: &str, labels: serde_json::Value, mode: &str) -> Proxy {
    let id = format!("sidecar~{ip}~p.default~default.svc.cluster.local");
    Proxy::from_node(&id, &serde_json::json!({"LABELS": labels, "INTERCEPTION_MODE": mode})).expect("valid node")
}

pub(super) fn decode<M: Message + Default>(r: &ProxyResources, t: ResourceType, name: &str) -> M {
    let e = r
        .of(t)
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| panic!("no {t} named {name}; have {:?}", r.of(t).map(|m| m.keys().collect::<Vec<_>>())));
    M::decode(e.any.value.as_slice()).expect("decodes")
}

pub(super) fn names(r: &ProxyResources, t: ResourceType) -> BTreeSet<String> {
    r.of(t).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn outbound_names_follow_istio_for_bound_listeners() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    let r = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
    assert_eq!(names(&r, ResourceType::Listener), BTreeSet::from(["10.0.0.1_9080".into(), "10.0.0.1_5432".into()]));
    assert_eq!(names(&r, ResourceType::Route), BTreeSet::from(["10.0.0.1:9080".into()]));
    assert_eq!(
        names(&r, ResourceType::Cluster),
        BTreeSet::from([
            "outbound|9080||backend.default.svc.cluster.local".into(),
            "outbound|9080|v1|backend.default.svc.cluster.local".into(),
            "outbound|9080|v2|backend.default.svc.cluster.local".into(),
            "outbound|5432||db.data.svc.cluster.local".into(),
            "PassthroughCluster".into(),
            "BlackHoleCluster".into(),
        ])
    );
    let l: Listener = decode(&r, ResourceType::Listener, "10.0.0.1_9080");
    let filters: Vec<_> = l.filter_chains.iter().flat_map(|c| &c.filters).map(|f| f.name.clone()).collect();
    assert_eq!(filters, ["envoy.filters.network.http_connection_manager"]);
    let tcp: Listener = decode(&r, ResourceType::Listener, "10.0.0.1_5432");
    let Some(ConfigType::TypedConfig(any)) = &tcp.filter_chains[0].filters[0].config_type else {
        panic!("typed config")
    };
    assert!(any.type_url.ends_with("tcp_proxy.v3.TcpProxy"));
}

#[test]
fn capture_mode_uses_wildcard_listeners_and_port_route_names() {
    let snap = mk_snapshot(MESH);
    let r = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({}), "REDIRECT"));
    assert!(names(&r, ResourceType::Listener).contains("0.0.0.0_9080"));
    assert_eq!(names(&r, ResourceType::Route), BTreeSet::from(["9080".into()]));
}

#[test]
fn virtual_service_routes_and_domains() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    let r = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
    let rc: RouteConfiguration = decode(&r, ResourceType::Route, "10.0.0.1:9080");
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.name, "backend.default.svc.cluster.local:9080");
    for d in ["backend.default.svc.cluster.local", "backend", "backend:9080", "backend.default", "backend.default.svc"]
    {
        assert!(vh.domains.iter().any(|x| x == d), "missing domain {d}: {:?}", vh.domains);
    }
    assert_eq!(vh.routes.len(), 2);
    assert_eq!(vh.routes[0].r#match.as_ref().map(|m| m.headers[0].name.as_str()), Some("x-user"));
    let Some(Action::Route(ra)) = &vh.routes[1].action else { panic!("route action") };
    let Some(ClusterSpecifier::WeightedClusters(wc)) = &ra.cluster_specifier else { panic!("weighted") };
    let split: Vec<_> =
        wc.clusters.iter().map(|c| (c.name.as_str(), c.weight.as_ref().map_or(0, |w| w.value))).collect();
    assert_eq!(
        split,
        [
            ("outbound|9080|v1|backend.default.svc.cluster.local", 80),
            ("outbound|9080|v2|backend.default.svc.cluster.local", 20)
        ]
    );
    assert_eq!(ra.timeout.as_ref().map(|t| t.seconds), Some(0), "istiod disables the route timeout");
}

/// The retry policy every route of a virtual host carries alike is given once, on the
/// host; a route with retries off, or with a policy of its own, keeps every route's own.
#[test]
fn a_retry_policy_shared_by_every_route_is_set_on_the_virtual_host() {
    let vh_of = |http: &str| {
        let vs = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n{http}"
        );
        let mesh = MESH
            .split("kind: VirtualService")
            .next()
            .expect("prefix")
            .trim_end_matches("apiVersion: networking.istio.io/v1\n");
        let snap = mk_snapshot(&format!("{mesh}---\n{vs}\n---\n{SIDECARS}"));
        let r = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
        let rc: RouteConfiguration = decode(&r, ResourceType::Route, "10.0.0.1:9080");
        rc.virtual_hosts.into_iter().find(|v| v.name == "backend.default.svc.cluster.local:9080").expect("backend host")
    };
    let per_route = |vh: &envoy_types::pb::envoy::config::route::v3::VirtualHost| -> Vec<Option<u32>> {
        vh.routes
            .iter()
            .map(|r| match &r.action {
                Some(Action::Route(a)) => {
                    a.retry_policy.as_ref().map(|p| p.num_retries.as_ref().map_or(1, |n| n.value))
                }
                _ => panic!("route action"),
            })
            .collect()
    };
    let header = "  - match: [{headers: {x-user: {exact: tester}}}]\n";
    // Istio's default on both routes: once, on the host.
    let vh = vh_of(&format!(
        "{header}    route: [{{destination: {{host: backend, subset: v2}}}}]\n  - route: [{{destination: {{host: backend, subset: v1}}}}]\n"
    ));
    let policy = vh.retry_policy.as_ref().expect("on the virtual host");
    assert_eq!(policy.num_retries.as_ref().map(|n| n.value), Some(2));
    assert_eq!(policy.retry_on, "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
    assert_eq!(per_route(&vh), [None, None]);
    // Retries off on one route: it must not take the host's, so each keeps its own.
    let vh = vh_of(&format!(
        "{header}    retries: {{attempts: 0}}\n    route: [{{destination: {{host: backend, subset: v2}}}}]\n  - route: [{{destination: {{host: backend, subset: v1}}}}]\n"
    ));
    assert_eq!(vh.retry_policy, None);
    assert_eq!(per_route(&vh), [None, Some(2)]);
    // Different policies: each keeps its own.
    let vh = vh_of(&format!(
        "{header}    retries: {{attempts: 5}}\n    route: [{{destination: {{host: backend, subset: v2}}}}]\n  - route: [{{destination: {{host: backend, subset: v1}}}}]\n"
    ));
    assert_eq!(vh.retry_policy, None);
    assert_eq!(per_route(&vh), [Some(5), Some(2)]);
}

#[test]
fn subset_endpoints_are_filtered_by_labels() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    let r = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
    let addrs = |name: &str| -> Vec<String> {
        let cla: ClusterLoadAssignment = decode(&r, ResourceType::Endpoint, name);
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref().map(|a| format!("{a:?}")),
                _ => None,
            })
            .collect()
    };
    assert_eq!(addrs("outbound|9080||backend.default.svc.cluster.local").len(), 2);
    let v1 = addrs("outbound|9080|v1|backend.default.svc.cluster.local");
    assert_eq!(v1.len(), 1);
    assert!(v1[0].contains("10.0.0.2"), "{v1:?}");
}

/// Every HTTP connection manager in `r`'s listeners, with its listener's name.
pub(super) fn every_hcm(
    r: &ProxyResources,
) -> Vec<(
    String,
    envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager,
)> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let mut out = Vec::new();
    for name in names(r, ResourceType::Listener) {
        let l: Listener = decode(r, ResourceType::Listener, &name);
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            for f in &chain.filters {
                if let Some(ConfigType::TypedConfig(any)) = &f.config_type
                    && f.name == "envoy.filters.network.http_connection_manager"
                {
                    out.push((name.clone(), HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM")));
                }
            }
        }
    }
    out
}

/// What istiod sets on every connection manager, checked on all of them.
pub(super) fn assert_istio_hcm_defaults(r: &ProxyResources) {
    let hcms = every_hcm(r);
    assert!(!hcms.is_empty(), "some HTTP listener to check");
    for (listener, h) in hcms {
        let upgrades: Vec<&str> = h.upgrade_configs.iter().map(|u| u.upgrade_type.as_str()).collect();
        assert_eq!(upgrades, ["websocket"], "{listener}: WebSocket allowed, CONNECT not");
        assert_eq!(
            h.stream_idle_timeout.map(|d| (d.seconds, d.nanos)),
            Some((0, 0)),
            "{listener}: no stream idle timeout"
        );
    }
}

#[test]
fn every_sidecar_connection_manager_allows_websocket_upgrades_as_istiod_does() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    let backend =
        generate(&snap, &mk_proxy("10.0.0.2", serde_json::json!({"app": "backend", "version": "v1"}), "NONE"));
    assert!(every_hcm(&backend).iter().any(|(l, _)| l == "10.0.0.2_9080"), "the inbound one is checked");
    assert_istio_hcm_defaults(&backend);
    let client = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
    assert_istio_hcm_defaults(&client);
    let captured = generate(&snap, &mk_proxy("10.0.0.5", serde_json::json!({"app": "other"}), "REDIRECT"));
    assert_istio_hcm_defaults(&captured);
}

#[test]
fn a_route_to_a_cluster_the_proxy_does_not_have_is_a_warning_that_says_why() {
    // The VirtualService's 20% go to subset v3, which the DestinationRule does not define.
    let mesh = MESH.replace(
        "{destination: {host: backend, subset: v2}, weight: 20}",
        "{destination: {host: backend, subset: v3}, weight: 20}",
    );
    let snap = mk_snapshot(&mesh);
    let client = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
    assert_eq!(
        client.warnings,
        ["routes send to cluster outbound|9080|v3|backend.default.svc.cluster.local, which this proxy does not have \
          (subset \"v3\" is not defined by the DestinationRule that applies to backend.default.svc.cluster.local): \
          Envoy answers 503 (NC)"]
    );
    let good = generate(&mk_snapshot(MESH), &mk_proxy("10.0.0.1", serde_json::json!({"app": "client"}), "NONE"));
    assert!(good.warnings.is_empty(), "{:?}", good.warnings);
}

#[test]
fn dynamic_dns_is_a_dynamic_forward_proxy_cluster_fed_by_its_http_filter() {
    let dynamic = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dynamic}
spec:
  hosts: ["*.dyn.example"]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  ports: [{number: 8000, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dynamic}
spec:
  host: "*.dyn.example"
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v1, labels: {version: v1}}]
"#;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, LbPolicy};
    use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{ClusterConfig, cluster_config};
    let snap = mk_snapshot(&format!("{MESH}\n---\n{dynamic}"));
    let r = generate(&snap, &mk_proxy("10.0.0.9", serde_json::json!({"app": "other"}), "NONE"));
    let c: Cluster = decode(&r, ResourceType::Cluster, "outbound|8000||*.dyn.example");
    let Some(ClusterDiscoveryType::ClusterType(t)) = &c.cluster_discovery_type else { panic!("a custom cluster type") };
    assert_eq!(t.name, "envoy.clusters.dynamic_forward_proxy");
    let config = ClusterConfig::decode(t.typed_config.as_ref().expect("config").value.as_slice()).expect("decodes");
    let Some(cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(cache)) =
        config.cluster_implementation_specifier
    else {
        panic!("a DNS cache")
    };
    assert_eq!(cache.name, super::clusters::DYNAMIC_DNS_CACHE);
    assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32, "whatever the DestinationRule says");
    assert!(c.load_assignment.is_none() && c.eds_cluster_config.is_none());
    assert!(
        !names(&r, ResourceType::Cluster).contains("outbound|8000|v1|*.dyn.example"),
        "no subset clusters, as istiod"
    );
    // The filter feeds the cluster's cache, before the router, on every outbound
    // connection manager of this proxy; a proxy that does not see the service has none.
    let hcms = every_hcm(&r);
    assert!(
        hcms.iter().any(|(l, _)| l.ends_with("_8000")),
        "the service's own port: {:?}",
        names(&r, ResourceType::Listener)
    );
    for (listener, h) in hcms {
        let filters: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            filters[filters.len() - 2..],
            ["envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.router"],
            "{listener}"
        );
    }
    let plain = generate(&mk_snapshot(MESH), &mk_proxy("10.0.0.9", serde_json::json!({"app": "other"}), "NONE"));
    for (listener, h) in every_hcm(&plain) {
        assert!(h.http_filters.iter().all(|f| f.name != "envoy.filters.http.dynamic_forward_proxy"), "{listener}");
    }
}

const KUBE_KINDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: pg-a}
spec: {clusterIP: 10.96.0.1, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: pg-b}
spec: {clusterIP: 10.96.0.2, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: kafka}
spec: {clusterIP: None, selector: {app: kafka}, ports: [{name: tcp-kafka, port: 9092}, {name: http-admin, port: 8080}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: kafka}
subsets: [{addresses: [{ip: 10.1.0.1}, {ip: 10.1.0.2}], ports: [{name: tcp-kafka, port: 9092}, {name: http-admin, port: 8080}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec: {hosts: [api.example.com], resolution: DNS, ports: [{number: 80, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: api-alias}
spec: {type: ExternalName, externalName: api.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: legacy}
spec: {type: ExternalName, externalName: legacy.example.org, ports: [{name: http, port: 8000}]}
"#;

fn chain_ranges(l: &Listener) -> Vec<(Vec<String>, String)> {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy::ClusterSpecifier};
    l.filter_chains
        .iter()
        .map(|c| {
            let ranges = c
                .filter_chain_match
                .iter()
                .flat_map(|m| m.prefix_ranges.iter())
                .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.map_or(0, |l| l.value)))
                .collect();
            let Some(ConfigType::TypedConfig(any)) = &c.filters[0].config_type else { panic!("typed") };
            let tp = TcpProxy::decode(any.value.as_slice()).expect("a TCP proxy");
            let Some(ClusterSpecifier::Cluster(cluster)) = tp.cluster_specifier else { panic!("one cluster") };
            (ranges, cluster)
        })
        .collect()
}

#[test]
fn captured_tcp_ports_are_matched_by_destination_address_per_service_and_headless_pod() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    let snap = mk_snapshot(KUBE_KINDS);
    let captured = generate(&snap, &mk_proxy("10.0.0.5", serde_json::json!({"app": "client"}), "REDIRECT"));
    let l: Listener = decode(&captured, ResourceType::Listener, "0.0.0.0_5432");
    assert_eq!(
        chain_ranges(&l),
        [
            (vec!["10.96.0.1/32".to_string()], "outbound|5432||pg-a.default.svc.cluster.local".to_string()),
            (vec!["10.96.0.2/32".to_string()], "outbound|5432||pg-b.default.svc.cluster.local".to_string()),
            (vec![], "PassthroughCluster".to_string()),
        ],
        "each service by its VIP, unknown destinations passed through"
    );
    let l: Listener = decode(&captured, ResourceType::Listener, "0.0.0.0_9092");
    assert_eq!(
        chain_ranges(&l),
        [
            (
                vec!["10.1.0.1/32".to_string(), "10.1.0.2/32".to_string()],
                "outbound|9092||kafka.default.svc.cluster.local".to_string()
            ),
            (vec![], "PassthroughCluster".to_string()),
        ],
        "a headless service by its pods' addresses"
    );
    let c: Cluster = decode(&captured, ResourceType::Cluster, "outbound|9092||kafka.default.svc.cluster.local");
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        "each connection to the pod the client dialled"
    );
    let rc: RouteConfiguration = decode(&captured, ResourceType::Route, "8080");
    let kafka = rc.virtual_hosts.iter().find(|v| v.name.starts_with("kafka")).expect("kafka's virtual host");
    assert!(kafka.domains.contains(&"*.kafka.default.svc.cluster.local".to_string()), "{:?}", kafka.domains);

    // Without capture there is no dialled address: one service per port, and a headless
    // service is balanced over its pods by EDS (as istiod does for gateways).
    let bound = generate(&snap, &mk_proxy("10.0.0.6", serde_json::json!({"app": "client"}), "NONE"));
    let l: Listener = decode(&bound, ResourceType::Listener, "127.0.0.1_5432");
    assert_eq!(chain_ranges(&l), [(vec![], "outbound|5432||pg-a.default.svc.cluster.local".to_string())]);
    let c: Cluster = decode(&bound, ResourceType::Cluster, "outbound|9092||kafka.default.svc.cluster.local");
    assert_eq!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)));
    let cla: ClusterLoadAssignment =
        decode(&bound, ResourceType::Endpoint, "outbound|9092||kafka.default.svc.cluster.local");
    assert_eq!(cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(), 2);
}

#[test]
fn external_name_services_are_aliases_of_registry_hosts_or_dns_services() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    let snap = mk_snapshot(KUBE_KINDS);
    let r = generate(&snap, &mk_proxy("10.0.0.6", serde_json::json!({"app": "client"}), "NONE"));
    // api-alias names api.example.com, a registry host: its names route as that host.
    let rc: RouteConfiguration = decode(&r, ResourceType::Route, "127.0.0.1:80");
    let api = rc.virtual_hosts.iter().find(|v| v.domains.contains(&"api.example.com".to_string())).expect("api");
    for d in ["api-alias", "api-alias.default.svc.cluster.local", "api-alias:80"] {
        assert!(api.domains.contains(&d.to_string()), "{d} in {:?}", api.domains);
    }
    assert!(
        !names(&r, ResourceType::Cluster).iter().any(|c| c.contains("api-alias")),
        "an alias has no cluster of its own"
    );
    // legacy names a host outside the registry: a DNS service on its own ports.
    let c: Cluster = decode(&r, ResourceType::Cluster, "outbound|8000||legacy.default.svc.cluster.local");
    assert_eq!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)));
    assert!(format!("{:?}", c.load_assignment).contains("legacy.example.org"), "{:?}", c.load_assignment);
}

#[test]
fn sidecar_ingress_builds_inbound_listeners_and_clusters() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    let r = generate(&snap, &mk_proxy("10.0.0.2", serde_json::json!({"app": "backend", "version": "v1"}), "NONE"));
    assert!(
        names(&r, ResourceType::Listener)
            .is_superset(&BTreeSet::from(["10.0.0.2_9080".into(), "10.0.0.2_9090".into()]))
    );
    let c: Cluster = decode(&r, ResourceType::Cluster, "inbound|9080||");
    let ep = format!("{:?}", c.load_assignment);
    assert!(ep.contains("10.0.0.2") && ep.contains("8080"), "0.0.0.0:PORT forwards to the instance IP: {ep}");
    let c: Cluster = decode(&r, ResourceType::Cluster, "inbound|9090||");
    let ep = format!("{:?}", c.load_assignment);
    assert!(ep.contains("127.0.0.1") && ep.contains("7070"), "127.0.0.1:PORT forwards to loopback: {ep}");
}

#[test]
fn sidecar_egress_hosts_limit_what_a_proxy_receives() {
    let scoped = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["data/*"]}]
"#;
    let snap = mk_snapshot(&format!("{MESH}\n---\n{scoped}"));
    let r = generate(&snap, &mk_proxy("10.0.0.1", serde_json::json!({}), "NONE"));
    assert_eq!(
        names(&r, ResourceType::Cluster),
        BTreeSet::from([
            "outbound|5432||db.data.svc.cluster.local".into(),
            "PassthroughCluster".into(),
            "BlackHoleCluster".into()
        ])
    );
    assert!(names(&r, ResourceType::Route).is_empty());
}

#[test]
fn generated_config_uses_only_stock_envoy_extensions() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    for (ip, labels) in
        [("10.0.0.1", serde_json::json!({"app": "client"})), ("10.0.0.2", serde_json::json!({"app": "backend"}))]
    {
        let r = generate(&snap, &mk_proxy(ip, labels, "NONE"));
        for res in r.all() {
            let text = String::from_utf8_lossy(&res.any.value);
            assert!(!text.contains("istio."), "{} mentions an Istio-only extension", res.name);
        }
    }
}

#[test]
fn shared_plus_specific_is_the_whole_config() {
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    let p = mk_proxy("10.0.0.2", serde_json::json!({"app": "backend", "version": "v1"}), "NONE");
    let mut split = super::generate_shared(&snap, &p);
    super::add_workload_specific(&snap, &p, &mut split);
    assert_eq!(split, generate(&snap, &p));
    let other = mk_proxy("10.0.0.9", serde_json::json!({"app": "backend", "version": "v1"}), "NONE");
    assert_eq!(super::share_key(&snap, &p), super::share_key(&snap, &other), "replicas share");
    assert_eq!(super::generate_shared(&snap, &p), super::generate_shared(&snap, &other));
    // The layered form (shared base, own resources on top) is the same config.
    let mut layered = crate::ProxyResources::layered(std::sync::Arc::new(super::generate_shared(&snap, &p)));
    super::add_workload_specific(&snap, &p, &mut layered);
    let whole = generate(&snap, &p);
    assert_eq!(layered.types(), whole.types());
    for t in whole.types() {
        let names = |r: &crate::ProxyResources| -> Vec<(String, String)> {
            r.of(t).map(|v| v.values().map(|e| (e.name.clone(), e.version.clone())).collect()).unwrap_or_default()
        };
        assert_eq!(names(&layered), names(&whole), "{t}");
    }
}

#[test]
fn workloads_share_outbound_config_unless_a_selector_tells_them_apart() {
    let snap = mk_snapshot(MESH);
    let a = mk_proxy("10.0.0.2", serde_json::json!({"app": "a", "pod-template-hash": "x1"}), "NONE");
    let b = mk_proxy("10.0.0.3", serde_json::json!({"app": "b", "pod-template-hash": "y2"}), "NONE");
    assert_eq!(super::share_key(&snap, &a), super::share_key(&snap, &b), "no selector looks at these labels");
    assert_eq!(super::generate_shared(&snap, &a), super::generate_shared(&snap, &b));
    // A Sidecar selecting app=client makes `app` count.
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}"));
    assert!(snap.outbound_label_keys.contains("app"));
    assert_ne!(super::share_key(&snap, &a), super::share_key(&snap, &b));
}

#[test]
fn strict_inbound_listener_inspects_tls() {
    // STRICT leaves one chain matching transport protocol "tls": without the TLS
    // inspector no connection would match it.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: all}\nspec: {mtls: {mode: STRICT}}\n";
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}\n---\n{strict}"));
    let r = generate(&snap, &mk_proxy("10.0.0.2", serde_json::json!({"app": "backend", "version": "v1"}), "NONE"));
    let l: Listener = decode(&r, ResourceType::Listener, "10.0.0.2_9080");
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(
        l.listener_filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["envoy.filters.listener.tls_inspector"]
    );
}

#[test]
fn an_endpoint_change_regenerates_only_the_clusters_and_endpoints_it_touches() {
    let dns = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  endpoints: [{address: a.example.com}]\n";
    let build_after = |yaml: &str, version, previous: Option<&Snapshot>| {
        let mut store = Store::new();
        store.set_unit("t.yaml", spar_api::parse_file("t.yaml", yaml));
        let options = spar_model::BuildOptions { previous, ..Default::default() };
        Snapshot::build_with(&store, &MeshConfig::default(), version, options)
    };
    let build = |yaml: &str, version| build_after(yaml, version, None);
    let text = format!("{MESH}\n---\n{dns}");
    let before = build(&text, 1);
    let moved = text.replace("10.0.0.2", "10.0.0.7").replace("a.example.com", "b.example.com");
    let after = build_after(&moved, 2, Some(&before));
    let p = mk_proxy("10.0.0.9", serde_json::json!({"app": "client"}), "NONE");
    let prev = std::sync::Arc::new(super::generate_shared(&before, &p));
    let patched = super::regenerate_shared(&after, &p, &prev).expect("only endpoints changed");
    assert_eq!(patched, super::generate_shared(&after, &p), "the same as generating it all");

    // What changed is known without comparing: the DNS cluster (its endpoints are inline)
    // and the load assignments of the moved endpoint; v2's subset did not change.
    let patched = std::sync::Arc::new(patched);
    let (now, was) = (ProxyResources::layered(patched), ProxyResources::layered(std::sync::Arc::clone(&prev)));
    let changed = |t: ResourceType| -> Vec<String> {
        let c = now.changed_since(&was, t).expect("known");
        assert!(c.removed.is_empty());
        c.changed.iter().map(|e| e.name.clone()).collect()
    };
    assert_eq!(changed(ResourceType::Cluster), ["outbound|443||api.example.com"]);
    assert_eq!(
        changed(ResourceType::Endpoint),
        // In name order ('|' sorts after 'v').
        ["outbound|9080|v1|backend.default.svc.cluster.local", "outbound|9080||backend.default.svc.cluster.local"]
    );
    assert!(changed(ResourceType::Listener).is_empty() && changed(ResourceType::Route).is_empty());

    // A workload whose own address did not change keeps its own (inbound) layer; the one
    // whose endpoint moved away gets its inbound side generated again.
    let whole = |snap: &Snapshot, p: &Proxy, base: &Snapshot| {
        let mut r = ProxyResources::layered(std::sync::Arc::new(super::generate_shared(base, p)));
        super::add_workload_specific(snap, p, &mut r);
        r
    };
    let listing = |r: &ProxyResources| -> Vec<(String, String)> {
        r.all().map(|e| (e.name.clone(), e.version.clone())).collect()
    };
    let v2 = mk_proxy("10.0.0.3", serde_json::json!({"app": "backend", "version": "v2"}), "REDIRECT");
    assert!(super::workload_specific_unchanged(&after, &v2, 1));
    let kept = whole(&before, &v2, &before).own_layer_over(std::sync::Arc::new(super::generate_shared(&after, &v2)));
    assert_eq!(listing(&kept), listing(&whole(&after, &v2, &after)));
    assert!(kept.of(ResourceType::Listener).is_some_and(|l| l.contains_key("virtualInbound")), "has an inbound side");
    let v1 = mk_proxy("10.0.0.2", serde_json::json!({"app": "backend", "version": "v1"}), "REDIRECT");
    assert!(!super::workload_specific_unchanged(&after, &v1, 1), "its endpoint moved away");
    assert_ne!(listing(&whole(&before, &v1, &after)), listing(&whole(&after, &v1, &after)), "and that shows");
    assert!(!super::workload_specific_unchanged(&after, &v2, 7), "from another snapshot");

    // Anything more than endpoints, a generation from another snapshot, or a gateway:
    // generated in full.
    let rerouted =
        build_after(&moved.replace("weight: 80", "weight: 70").replace("weight: 20", "weight: 30"), 2, Some(&before));
    assert!(super::regenerate_shared(&rerouted, &p, &prev).is_none());
    let later = build_after(&moved, 3, Some(&after));
    assert!(super::regenerate_shared(&later, &p, &prev).is_none(), "prev is from snapshot 1, not 2");
    let gw = Proxy::from_node("router~10.0.0.5~gw.default~default.svc.cluster.local", &serde_json::json!({}))
        .expect("valid node");
    let gw_prev = std::sync::Arc::new(super::generate_shared(&before, &gw));
    assert!(super::regenerate_shared(&after, &gw, &gw_prev).is_none());
}

/// A dry-run ALLOW policy is on the workload's inbound listener as shadow rules only.
#[test]
fn a_dry_run_policy_is_shadow_rules_on_the_inbound_listener() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: only-allowed\n  \
                  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  selector: {matchLabels: {app: backend}}\n  \
                  action: ALLOW\n  rules: [{to: [{operation: {paths: [\"/allowed\"]}}]}]\n";
    let snap = mk_snapshot(&format!("{MESH}\n---\n{SIDECARS}\n---\n{policy}"));
    assert!(snap.authorization_policies.iter().all(|p| p.dry_run), "the annotation is read");
    let r = generate(&snap, &mk_proxy("10.0.0.5", serde_json::json!({"app": "backend"}), "NONE"));
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter,
    };
    let l: Listener = decode(&r, ResourceType::Listener, "10.0.0.5_9080");
    let rbac: Vec<Rbac> = l
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => HttpConnectionManager::decode(a.value.as_slice()).ok(),
            _ => None,
        })
        .flat_map(|h| h.http_filters)
        .filter(|f| f.name == "envoy.filters.http.rbac")
        .filter_map(|f| match f.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => Rbac::decode(a.value.as_slice()).ok(),
            _ => None,
        })
        .collect();
    assert!(!rbac.is_empty(), "an RBAC filter on every chain");
    for r in &rbac {
        assert!(r.rules.is_none(), "nothing enforced");
        assert!(r.shadow_rules.is_some() && r.shadow_rules_stat_prefix == "istio_dry_run_allow_", "{r:?}");
    }
}
