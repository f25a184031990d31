use super::*;
use crate::generator::generate;
use crate::generator::tests::{decode as decoded_as, every_hcm, names};
use envoy_types::pb::envoy::config::core::v3::address;

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: backend}
spec: {selector: {app: backend}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {selector: {app: db}, ports: [{name: tcp-db, port: 5432}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v1}
spec: {address: 10.0.0.2, labels: {app: backend, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: backend}
spec:
  workloadSelector: {labels: {app: backend}}
  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: "0.0.0.0:8080"}]
"#;

fn snapshot(filters: &str) -> Snapshot {
    crate::generator::tests::snapshot_of(&[&format!("{MESH}\n---\n{filters}")], &spar_model::MeshConfig::default())
}

fn sidecar(ip: &str, app: &str) -> Proxy {
    let id = format!("sidecar~{ip}~{app}-1.default~default.svc.cluster.local");
    Proxy::from_node(&id, &serde_json::json!({"LABELS": {"app": app}, "INTERCEPTION_MODE": "NONE"})).expect("node")
}

fn client(snap: &Snapshot) -> ProxyResources {
    generate(snap, &sidecar("10.0.0.1", "client"))
}

fn http_filter_names(r: &ProxyResources, listener: &str) -> Vec<String> {
    every_hcm(r)
        .into_iter()
        .find(|(l, _)| l == listener)
        .map(|(_, h)| h.http_filters.iter().map(|f| f.name.clone()).collect())
        .unwrap_or_else(|| panic!("no HCM on {listener}"))
}

const LUA: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 9080
        filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code: {inline_string: "function envoy_on_request(h) h:headers():add('x-lua', 'yes') end"}
"#;

#[test]
fn an_http_filter_is_inserted_before_the_one_the_match_names_on_the_selected_workloads_only() {
    let snap = snapshot(LUA);
    let r = client(&snap);
    let names = http_filter_names(&r, "127.0.0.1_9080");
    assert_eq!(names[names.len() - 2..], ["envoy.filters.http.lua", "envoy.filters.http.router"], "{names:?}");
    let (_, hcm) = every_hcm(&r).into_iter().find(|(l, _)| l == "127.0.0.1_9080").expect("hcm");
    let lua = hcm.http_filters.iter().find(|f| f.name == "envoy.filters.http.lua").expect("lua");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &lua.config_type else { panic!("typed") };
    assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua");
    // Not selected: the backend, and the client's other side.
    let backend = generate(&snap, &sidecar("10.0.0.2", "backend"));
    assert!(every_hcm(&backend).iter().all(|(_, h)| h.http_filters.iter().all(|f| f.name != "envoy.filters.http.lua")));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn a_filter_merge_merges_inside_a_typed_config_of_the_same_type() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: router}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_OUTBOUND, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}}
    patch:
      operation: MERGE
      value:
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          suppress_envoy_headers: true
"#,
    );
    let r = client(&snap);
    let (_, hcm) = every_hcm(&r).into_iter().next().expect("hcm");
    let router = hcm.http_filters.iter().find(|f| f.name == ROUTER).expect("router");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &router.config_type else { panic!("typed") };
    let cfg = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::decode(any.value.as_slice())
        .expect("router config");
    assert!(cfg.suppress_envoy_headers);
}

#[test]
fn network_filters_are_inserted_replaced_and_removed() {
    let patch = |op: &str, value: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: net}}
spec:
  configPatches:
  - applyTo: NETWORK_FILTER
    match: {{context: SIDECAR_OUTBOUND, listener: {{portNumber: 5432, filterChain: {{filter: {{name: envoy.filters.network.tcp_proxy}}}}}}}}
    patch: {{operation: {op}{value}}}
"#
        )
    };
    let rbac = r#", value: {name: envoy.filters.network.rbac, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: x}}"#;
    let filters = |snap: &Snapshot| {
        let l: Listener = decoded_as(&client(snap), ResourceType::Listener, "127.0.0.1_5432");
        l.filter_chains[0].filters.iter().map(|f| f.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        filters(&snapshot(&patch("INSERT_FIRST", rbac))),
        ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    );
    assert_eq!(
        filters(&snapshot(&patch("INSERT_AFTER", rbac))),
        ["envoy.filters.network.tcp_proxy", "envoy.filters.network.rbac"]
    );
    assert_eq!(filters(&snapshot(&patch("REPLACE", rbac))), ["envoy.filters.network.rbac"]);
    assert_eq!(filters(&snapshot(&patch("REMOVE", ""))), Vec::<String>::new());
}

#[test]
fn listeners_and_filter_chains_are_added_merged_and_removed() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: listeners}
spec:
  configPatches:
  - applyTo: LISTENER
    match: {context: SIDECAR_OUTBOUND}
    patch:
      operation: ADD
      value:
        name: extra_7000
        address: {socket_address: {address: 127.0.0.1, port_value: 7000}}
        filter_chains: [{filters: [{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: extra, cluster: BlackHoleCluster}}]}]
  - applyTo: LISTENER
    match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 5432}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1024}}
  - applyTo: FILTER_CHAIN
    match: {context: SIDECAR_OUTBOUND, listener: {name: extra_7000}}
    patch: {operation: MERGE, value: {name: merged-chain}}
  - applyTo: LISTENER
    match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 9080}}
    patch: {operation: REMOVE}
"#,
    );
    let r = client(&snap);
    let listeners = names(&r, ResourceType::Listener);
    assert!(listeners.contains("extra_7000") && !listeners.contains("127.0.0.1_9080"), "{listeners:?}");
    let l: Listener = decoded_as(&r, ResourceType::Listener, "127.0.0.1_5432");
    assert_eq!(l.per_connection_buffer_limit_bytes.map(|v| v.value), Some(1024));
    assert!(!l.filter_chains.is_empty(), "a merge keeps what it does not set");
    let extra: Listener = decoded_as(&r, ResourceType::Listener, "extra_7000");
    assert_eq!(extra.filter_chains[0].name, "merged-chain");
    let Some(address::Address::SocketAddress(a)) = extra.address.and_then(|a| a.address) else { panic!("address") };
    assert_eq!(a.address, "127.0.0.1");
}

#[test]
fn route_configurations_virtual_hosts_and_routes_are_patched() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: routes}
spec:
  configPatches:
  - applyTo: ROUTE_CONFIGURATION
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 9080}}
    patch: {operation: MERGE, value: {request_headers_to_add: [{header: {key: x-patched, value: "1"}}]}}
  - applyTo: VIRTUAL_HOST
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 9080}}
    patch:
      operation: ADD
      value: {name: extra, domains: [extra.example], routes: [{match: {prefix: /}, direct_response: {status: 418}}]}
  - applyTo: HTTP_ROUTE
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {name: "backend.default.svc.cluster.local:9080"}}}
    patch:
      operation: INSERT_FIRST
      value: {name: teapot, match: {prefix: /tea}, direct_response: {status: 418}}
  - applyTo: HTTP_ROUTE
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {name: "backend.default.svc.cluster.local:9080", route: {name: default}}}}
    patch: {operation: MERGE, value: {route: {timeout: 3s}}}
"#,
    );
    let r = client(&snap);
    let rc: RouteConfiguration = decoded_as(&r, ResourceType::Route, "127.0.0.1:9080");
    assert_eq!(rc.request_headers_to_add.len(), 1);
    assert!(rc.virtual_hosts.iter().any(|v| v.name == "extra"), "{:?}", rc.virtual_hosts);
    let vh = rc.virtual_hosts.iter().find(|v| v.name == "backend.default.svc.cluster.local:9080").expect("vhost");
    assert_eq!(vh.routes[0].name, "teapot");
    let default = vh.routes.iter().find(|r| r.name == "default").expect("default route");
    let Some(route::Action::Route(ra)) = &default.action else { panic!("a route") };
    assert_eq!(ra.timeout.map(|d| d.seconds), Some(3));
    assert!(ra.cluster_specifier.is_some(), "a merge keeps the cluster");
}

#[test]
fn clusters_are_merged_added_and_removed_by_service_and_port() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: clusters}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: backend.default.svc.cluster.local, portNumber: 9080}}
    patch: {operation: MERGE, value: {connect_timeout: 2s}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: ADD, value: {name: extra, type: STATIC, connect_timeout: 1s}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {name: "outbound|5432||db.default.svc.cluster.local"}}
    patch: {operation: REMOVE}
"#,
    );
    let r = client(&snap);
    let c: Cluster = decoded_as(&r, ResourceType::Cluster, "outbound|9080||backend.default.svc.cluster.local");
    assert_eq!(c.connect_timeout.map(|d| d.seconds), Some(2));
    let clusters = names(&r, ResourceType::Cluster);
    assert!(clusters.contains("extra") && !clusters.contains("outbound|5432||db.default.svc.cluster.local"));
}

#[test]
fn contexts_select_the_inbound_side_the_outbound_side_or_gateways() {
    let inbound = LUA.replace("SIDECAR_OUTBOUND", "SIDECAR_INBOUND").replace("app: client", "app: backend");
    let snap = snapshot(&inbound);
    let backend = generate(&snap, &sidecar("10.0.0.2", "backend"));
    assert!(http_filter_names(&backend, "10.0.0.2_9080").contains(&"envoy.filters.http.lua".to_string()));
    assert!(!http_filter_names(&backend, "127.0.0.1_9080").contains(&"envoy.filters.http.lua".to_string()));
    // The parts generated apart are the whole: the inbound patch is in the workload's part.
    let mut parts = crate::generator::generate_shared(&snap, &sidecar("10.0.0.2", "backend"));
    crate::generator::add_workload_specific(&snap, &sidecar("10.0.0.2", "backend"), &mut parts);
    assert!(
        parts
            .of(ResourceType::Listener)
            .unwrap_or_default()
            .values()
            .eq(backend.of(ResourceType::Listener).unwrap_or_default().values())
    );
    let gateway = LUA.replace("SIDECAR_OUTBOUND", "GATEWAY");
    let r = client(&snapshot(&gateway));
    assert!(!http_filter_names(&r, "127.0.0.1_9080").contains(&"envoy.filters.http.lua".to_string()), "not a gateway");
}

#[test]
fn proxy_version_namespace_and_order_decide_what_applies() {
    // Another namespace's EnvoyFilter never applies; the root namespace's applies to all.
    let elsewhere = LUA.replace("metadata: {name: lua}", "metadata: {name: lua, namespace: other}");
    assert!(
        !http_filter_names(&client(&snapshot(&elsewhere)), "127.0.0.1_9080").contains(&"envoy.filters.http.lua".into())
    );
    let root = LUA.replace("metadata: {name: lua}", "metadata: {name: lua, namespace: istio-system}");
    assert!(http_filter_names(&client(&snapshot(&root)), "127.0.0.1_9080").contains(&"envoy.filters.http.lua".into()));
    // proxyVersion is a regex on the version the proxy reports (Spar's own: ISTIO_VERSION).
    let versioned = |v: &str| {
        LUA.replace(
            "context: SIDECAR_OUTBOUND",
            &format!("context: SIDECAR_OUTBOUND\n      proxy: {{proxyVersion: '{v}'}}"),
        )
    };
    assert!(
        http_filter_names(&client(&snapshot(&versioned(r"^1\.2\d.*"))), "127.0.0.1_9080")
            .contains(&"envoy.filters.http.lua".into())
    );
    assert!(
        !http_filter_names(&client(&snapshot(&versioned(r"^1\.9\..*"))), "127.0.0.1_9080")
            .contains(&"envoy.filters.http.lua".into())
    );
}

#[test]
fn a_value_envoys_schema_refuses_is_left_out_and_said() {
    let bad = LUA.replace("default_source_code:", "no_such_field: 1\n          default_source_code:");
    let r = client(&snapshot(&bad));
    assert!(!http_filter_names(&r, "127.0.0.1_9080").contains(&"envoy.filters.http.lua".into()));
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("EnvoyFilter default/lua") && r.warnings[0].contains("configPatches[0]"),
        "{:?}",
        r.warnings
    );
    assert!(r.warnings[0].contains("no_such_field"), "{:?}", r.warnings);
    let unsupported = LUA.replace("applyTo: HTTP_FILTER", "applyTo: EXTENSION_CONFIG");
    let r = client(&snapshot(&unsupported));
    assert!(
        r.warnings.iter().any(|w| w.contains("EXTENSION_CONFIG") || w.contains("ExtensionConfig")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn envoy_filters_spar_cannot_apply_are_diagnosed_once_per_snapshot() {
    let bad = LUA.replace("default_source_code:", "no_such_field: 1\n          default_source_code:");
    let unsupported = LUA
        .replace("metadata: {name: lua}", "metadata: {name: meta}")
        .replace("context: SIDECAR_OUTBOUND", "context: SIDECAR_OUTBOUND\n      proxy: {metadata: {A: b}}");
    let snap = snapshot(&format!("{bad}\n---\n{unsupported}\n---\n{}", LUA.replace("name: lua}", "name: good}")));
    let said: Vec<(String, String)> = diagnostics(&snap).into_iter().map(|d| (d.resource, d.message)).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[0].0, "EnvoyFilter default/lua");
    assert!(said[0].1.starts_with("configPatches[0]: not a valid") && said[0].1.contains("no_such_field"), "{said:?}");
    assert_eq!(
        said[1],
        (
            "EnvoyFilter default/meta".into(),
            "configPatches[0]: match.proxy.metadata is not supported: not applied".into()
        )
    );
}

#[test]
fn envoys_descriptors_know_the_messages_spar_generates_and_the_usual_extensions() {
    let pool = POOL.as_ref().expect("envoy-api.desc decodes");
    for name in [
        Listener::full_name(),
        Cluster::full_name(),
        RouteConfiguration::full_name(),
        HttpConnectionManager::full_name(),
        envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua::full_name(),
        envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit::full_name(),
        envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz::full_name(),
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::full_name(),
    ] {
        assert!(pool.get_message_by_name(&name).is_some(), "{name}");
    }
    // What Spar generates reads back through the descriptors as the same message.
    let r = client(&snapshot(""));
    for e in r.of(ResourceType::Listener).expect("listeners").values() {
        let desc = pool.get_message_by_name(&Listener::full_name()).expect("Listener");
        let dynamic = DynamicMessage::decode(desc, e.any.value.as_slice()).expect("decodes");
        assert_eq!(dynamic.encode_to_vec(), e.any.value, "{}", e.name);
    }
}
