use super::*;
use crate::{Protocol, Resolution};

fn mk_store(yaml: &str) -> Store {
    let mut store = Store::new();
    let parsed = spar_api::parse_file("mesh.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    store.set_unit("mesh.yaml", parsed);
    store
}

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9081}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v1}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 127.0.0.12, labels: {app: reviews, version: v2}, ports: {http: 7000}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: default}
spec: {address: 127.0.0.13, labels: {app: ratings}}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: prod}
spec:
  ports: [{name: grpc-api, port: 9090}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: ratings, namespace: prod}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]
  ports: [{name: grpc-api, port: 9091}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

#[test]
fn services_from_kubernetes_workload_entries_and_service_entries() {
    let snap = Snapshot::build(&mk_store(MESH), &MeshConfig::default(), 1);
    let reviews = &snap.services["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.endpoints.len(), 2, "WorkloadEntries selected by the Service selector");
    let v1 = reviews.endpoints.iter().find(|e| e.address == "127.0.0.11").expect("v1 endpoint");
    assert_eq!(v1.ports[&9080], 9081, "targetPort used when the WorkloadEntry names no port");
    let v2 = reviews.endpoints.iter().find(|e| e.address == "127.0.0.12").expect("v2 endpoint");
    assert_eq!(v2.ports[&9080], 7000, "WorkloadEntry ports by service port name");
    assert_eq!(v2.labels["version"], "v2");

    let ratings = &snap.services["ratings.prod.svc.cluster.local"];
    assert_eq!(ratings.ports[0].protocol, Protocol::Grpc);
    assert_eq!(ratings.endpoints.iter().map(|e| e.ports[&9090]).collect::<Vec<_>>(), [9091, 9091]);

    let ext = &snap.services["api.example.com"];
    assert!(ext.mesh_external);
    assert_eq!(ext.resolution, Resolution::Dns);
    assert_eq!(ext.endpoints[0].address, "api.example.com");
}

#[test]
fn destination_rule_lookup_order() {
    let yaml = format!(
        "{MESH}\n---\n{}",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec: {host: "*.svc.cluster.local"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: local, namespace: default}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
"#
    );
    let snap = Snapshot::build(&mk_store(&yaml), &MeshConfig::default(), 1);
    let reviews = &snap.services["reviews.default.svc.cluster.local"];
    assert_eq!(snap.destination_rule_for("default", &BTreeMap::new(), reviews).map(|c| c.name.as_str()), Some("local"));
    let ratings = &snap.services["ratings.prod.svc.cluster.local"];
    assert_eq!(snap.destination_rule_for("prod", &BTreeMap::new(), ratings).map(|c| c.name.as_str()), Some("root"));
}

#[test]
fn destination_rule_workload_selector() {
    let yaml = format!(
        "{MESH}\n---\n{}",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: default}
spec: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: for-canary, namespace: default}
spec: {host: reviews, workloadSelector: {matchLabels: {track: canary}}}
"#
    );
    let snap = Snapshot::build(&mk_store(&yaml), &MeshConfig::default(), 1);
    let reviews = &snap.services["reviews.default.svc.cluster.local"];
    let canary = BTreeMap::from([("track".to_string(), "canary".to_string())]);
    assert_eq!(snap.destination_rule_for("default", &canary, reviews).map(|c| c.name.as_str()), Some("for-canary"));
    assert_eq!(snap.destination_rule_for("default", &BTreeMap::new(), reviews).map(|c| c.name.as_str()), Some("all"));
    assert_eq!(
        snap.destination_rule_for("prod", &canary, reviews).map(|c| c.name.as_str()),
        Some("all"),
        "selector rules stay in their namespace"
    );
}

#[test]
fn duplicate_hosts_are_reported_not_fatal() {
    let yaml = format!(
        "{MESH}\n---\n{}",
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext2, namespace: default}
spec: {hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: DNS}
"#
    );
    let snap = Snapshot::build(&mk_store(&yaml), &MeshConfig::default(), 1);
    assert_eq!(snap.services["api.example.com"].name, "ext");
    assert!(snap.diagnostics.iter().any(|d| d.message.contains("already defined")), "{:?}", snap.diagnostics);
}

#[test]
fn endpoint_slice_endpoints_take_labels_identity_and_locality_from_their_pods() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.1.0.1]
  zone: us-east-1a
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: [10.1.0.2]
- addresses: [10.1.0.3]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web, version: v1, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: web-sa, nodeName: node-a, containers: []}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: shop
  labels: {app: web, version: v2, istio-locality: eu-west.eu-west-1b}
spec: {containers: []}
status: {podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/region: us-east-1}}
"#;
    let snap = Snapshot::build(&mk_store(yaml), &MeshConfig::default(), 1);
    let web = &snap.services["web.shop.svc.cluster.local"];
    let ep = |ip: &str| web.endpoints.iter().find(|e| e.address == ip).expect("endpoint");
    let one = ep("10.1.0.1");
    assert_eq!(one.labels["version"], "v1", "by targetRef");
    assert_eq!(one.service_account, "web-sa");
    assert!(one.istio_mtls, "tlsMode label of an injected pod");
    assert_eq!(one.locality, "us-east-1/us-east-1a", "node region + slice zone");
    let two = ep("10.1.0.2");
    assert_eq!(two.labels["version"], "v2", "by pod IP when the slice has no targetRef");
    assert_eq!(two.service_account, "default");
    assert!(!two.istio_mtls, "no sidecar label: plaintext");
    assert_eq!(two.locality, "eu-west/eu-west-1b", "istio-locality label wins");
    let three = ep("10.1.0.3");
    assert!(three.labels.is_empty() && three.service_account.is_empty(), "no pod known: nothing invented");
}

#[test]
fn endpoint_only_changes_name_the_services_and_anything_else_is_a_full_change() {
    let build = |yaml: &str, v| Snapshot::build(&mk_store(yaml), &MeshConfig::default(), v);
    let before = build(MESH, 1);
    // The same documents again: nothing changed.
    assert_eq!(build(MESH, 2).endpoint_changes_since(&before), Some(BTreeSet::new()));
    // A WorkloadEntry moves: only reviews' endpoints.
    let moved = build(&MESH.replace("127.0.0.11", "127.0.0.21"), 2);
    let reviews: BTreeSet<String> = ["reviews.default.svc.cluster.local".to_string()].into();
    assert_eq!(moved.endpoint_changes_since(&before), Some(reviews.clone()));
    let options = BuildOptions { previous: Some(&before), ..Default::default() };
    let noted =
        Snapshot::build_with(&mk_store(&MESH.replace("127.0.0.11", "127.0.0.21")), &MeshConfig::default(), 2, options);
    let addresses = ["127.0.0.11".to_string(), "127.0.0.21".to_string()].into();
    assert_eq!(noted.since, Some(EndpointChanges { from: 1, hosts: reviews, addresses }));
    // Kubernetes Endpoints gain an address: only ratings.
    let grown = build(&MESH.replace("{ip: 10.0.0.2}", "{ip: 10.0.0.2}, {ip: 10.0.0.3}"), 2);
    assert_eq!(
        grown.endpoint_changes_since(&before).map(|h| h.into_iter().collect::<Vec<_>>()),
        Some(vec!["ratings.prod.svc.cluster.local".to_string()])
    );
    // A service port, a new routing object or a removed service is more than endpoints.
    let port = build(&MESH.replace("port: 9080, targetPort", "port: 9088, targetPort"), 2);
    assert_eq!(port.endpoint_changes_since(&before), None);
    let dr = format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec: {{host: reviews}}\n"
    );
    assert_eq!(build(&dr, 2).endpoint_changes_since(&before), None);
    let fewer = MESH.split("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry").next().unwrap_or_default();
    assert_eq!(build(fewer, 2).endpoint_changes_since(&before), None);
}

/// A CUSTOM policy whose provider cannot be used says so, naming the policy: the
/// requests it matches are denied (the generator's side), and this is the why.
#[test]
fn custom_policies_without_a_usable_provider_are_diagnosed() {
    use crate::{ExtAuthzApi, ExtAuthzProvider};
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: authz, namespace: default}\nspec: {ports: [{name: http, port: 8000}]}\n---\n\
                apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\n\
                spec:\n  action: CUSTOM\n  provider: {name: PROVIDER}\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n";
    let mut mesh = MeshConfig::default();
    let provider = |service: &str, port| ExtAuthzProvider {
        service: service.into(),
        port,
        timeout: std::time::Duration::from_secs(1),
        fail_open: false,
        status_on_error: None,
        body: None,
        api: ExtAuthzApi::Grpc,
    };
    mesh.authz_providers.insert("good".into(), Ok(provider("authz.default.svc.cluster.local", 8000)));
    mesh.authz_providers.insert("no-port".into(), Ok(provider("authz.default.svc.cluster.local", 9000)));
    mesh.authz_providers.insert("no-service".into(), Ok(provider("gone.default.svc.cluster.local", 8000)));
    mesh.authz_providers.insert("invalid".into(), Err("extensionProviders \"invalid\": port: 0".into()));
    for (name, want) in [
        ("good", None),
        ("no-port", Some("has no port 9000")),
        ("no-service", Some("not in the registry")),
        ("invalid", Some("port: 0")),
        ("missing", Some("is not an ext_authz provider")),
    ] {
        let snap = Snapshot::build(&mk_store(&yaml.replace("PROVIDER", name)), &mesh, 1);
        let said: Vec<&str> = snap
            .diagnostics
            .iter()
            .filter(|d| d.resource == "AuthorizationPolicy default/p")
            .map(|d| d.message.as_str())
            .collect();
        match want {
            None => assert!(said.is_empty(), "{name}: {said:?}"),
            Some(w) => {
                assert!(said.len() == 1 && said[0].contains(w) && said[0].contains("denied"), "{name}: {said:?}")
            }
        }
    }
}

#[test]
fn routes_to_a_missing_host_port_or_subset_are_diagnosed_with_the_virtual_service() {
    let yaml = format!(
        r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wild, namespace: default}}
spec: {{hosts: ["*.wild.example"], resolution: NONE, ports: [{{number: 80, name: http}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec: {{host: reviews, subsets: [{{name: v1, labels: {{version: v1}}}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: good, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: v1, port: {{number: 9080}}}}}}]
    mirror: {{host: a.wild.example}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bad, namespace: default}}
spec:
  hosts: [reviews.example]
  http:
  - match: [{{uri: {{prefix: /a}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - match: [{{uri: {{prefix: /b}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - route:
    - {{destination: {{host: nowhere}}}}
    - {{destination: {{host: reviews, port: {{number: 1}}}}}}
  tcp:
  - route: [{{destination: {{host: ratings.prod.svc.cluster.local, subset: v9}}}}]
"#
    );
    let snap = Snapshot::build(&mk_store(&yaml), &MeshConfig::default(), 1);
    let said: Vec<(&str, &str)> = snap
        .diagnostics
        .iter()
        .filter(|d| d.resource.starts_with("VirtualService"))
        .map(|d| (d.resource.as_str(), d.message.as_str()))
        .collect();
    let nc = ": Envoy answers these requests 503 (NC, no cluster)";
    assert_eq!(
        said,
        [
            (
                "VirtualService default/bad",
                &*format!(
                    "http route to subset \"v3\" of host reviews.default.svc.cluster.local, which no DestinationRule defines{nc}"
                )
            ),
            (
                "VirtualService default/bad",
                &*format!(
                    "http route to host nowhere.default.svc.cluster.local, which is not in the service registry{nc}"
                )
            ),
            (
                "VirtualService default/bad",
                &*format!("http route to port 1 of host reviews.default.svc.cluster.local, which has no such port{nc}")
            ),
            (
                "VirtualService default/bad",
                &*format!(
                    "tcp route to subset \"v9\" of host ratings.prod.svc.cluster.local, which no DestinationRule defines{nc}"
                )
            ),
        ],
        "once per problem, in order; the good VirtualService (a defined subset, a wildcard host) says nothing"
    );
    let bad = snap.diagnostics.iter().find(|d| d.resource == "VirtualService default/bad").expect("a diagnostic");
    assert_eq!(&*bad.origin.file, "mesh.yaml");
    assert!(bad.origin.line > 1, "the VirtualService's own line: {}", bad.origin);
}
