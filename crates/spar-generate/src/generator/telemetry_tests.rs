//! Tracing from Telemetry `tracing` and MeshConfig `opentelemetry` providers: which
//! connection managers trace, with what, and what is left out with a warning.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing::http};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::Tracing,
};
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Type;
use prost::Message;
use spar_model::{MeshConfig, OtelHttp, OtelProvider, Proxy, Snapshot, TracingProvider};

use super::tests::decode;
use super::{generate, share_key};
use crate::resources::{ProxyResources, ResourceType};

const COLLECTOR: &str = "otel-collector.observability.svc.cluster.local";
const CLUSTER: &str = "outbound|4317||otel-collector.observability.svc.cluster.local";

/// A client, a backend (inbound 9080) and the collector in `observability`, whose
/// port is named `port_name`.
fn mesh(port_name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: backend}}
spec: {{selector: {{app: backend}}, ports: [{{name: http, port: 9080}}]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend}}
spec: {{address: 10.0.0.2, labels: {{app: backend}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: otel-collector, namespace: observability}}
spec: {{selector: {{app: otel}}, ports: [{{name: "{port_name}", port: 4317}}]}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress: [{{bind: 10.0.0.1, hosts: ["./*", "observability/*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: backend}}
spec:
  workloadSelector: {{labels: {{app: backend}}}}
  ingress: [{{port: {{number: 9080, protocol: HTTP, name: http}}, defaultEndpoint: "0.0.0.0:8080"}}]
  egress: [{{bind: 10.0.0.2, hosts: ["observability/*"]}}]
"#
    )
}

fn otel_mesh() -> MeshConfig {
    let mut m = MeshConfig::default();
    let otel = OtelProvider { service: COLLECTOR.into(), port: 4317, ..Default::default() };
    m.tracing_providers.insert("otel".into(), TracingProvider::OpenTelemetry(otel));
    m.tracing_providers.insert("zipkin".into(), TracingProvider::Unsupported("zipkin".into()));
    m
}

fn snapshot(yaml: &str, mesh: &MeshConfig) -> Snapshot {
    super::tests::snapshot_of(&[yaml], mesh)
}

fn telemetry(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n"
    )
}

fn sidecar(ip: &str, app: &str) -> Proxy {
    let id = format!("sidecar~{ip}~{app}-1.default~default.svc.cluster.local");
    Proxy::from_node(&id, &serde_json::json!({"LABELS": {"app": app}, "INTERCEPTION_MODE": "NONE"})).expect("node")
}

fn hcm_of(r: &ProxyResources, listener: &str) -> HttpConnectionManager {
    let l: Listener = decode(r, ResourceType::Listener, listener);
    let Some(ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else { panic!("typed config") };
    HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM")
}

fn otel_of(t: &Tracing) -> OpenTelemetryConfig {
    let p = t.provider.as_ref().expect("a provider");
    assert_eq!(p.name, "envoy.tracers.opentelemetry");
    let Some(http::ConfigType::TypedConfig(any)) = &p.config_type else { panic!("typed config") };
    assert_eq!(any.type_url, "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig");
    OpenTelemetryConfig::decode(any.value.as_slice()).expect("OpenTelemetryConfig")
}

fn random(t: &Tracing) -> f64 {
    t.random_sampling.as_ref().map_or(-1.0, |p| p.value)
}

/// Client: outbound listener; backend: inbound listener (and its own outbound one).
fn client_and_backend(snap: &Snapshot) -> (ProxyResources, ProxyResources) {
    (generate(snap, &sidecar("10.0.0.1", "client")), generate(snap, &sidecar("10.0.0.2", "backend")))
}

#[test]
fn mesh_wide_telemetry_traces_both_sides_to_the_collector_cluster() {
    let yaml = format!(
        "{}---\n{}",
        mesh("grpc-otlp"),
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 100}]")
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, backend) = client_and_backend(&snap);
    assert!(client.warnings.is_empty() && backend.warnings.is_empty(), "{:?} {:?}", client.warnings, backend.warnings);

    let out = hcm_of(&client, "10.0.0.1_9080").tracing.expect("client side traced");
    assert_eq!(random(&out), 100.0);
    assert_eq!(out.client_sampling.as_ref().map(|p| p.value), Some(100.0));
    assert_eq!(out.overall_sampling.as_ref().map(|p| p.value), Some(100.0));
    assert_eq!(out.spawn_upstream_span, None, "istiod spawns upstream spans on gateways only");
    let otel = otel_of(&out);
    assert_eq!(otel.service_name, "client.default");
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    let Some(TargetSpecifier::EnvoyGrpc(g)) = otel.grpc_service.and_then(|g| g.target_specifier) else {
        panic!("envoy_grpc")
    };
    assert_eq!((g.cluster_name.as_str(), g.authority.as_str()), (CLUSTER, COLLECTOR));
    let tags: Vec<_> = out.custom_tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(
        tags,
        ["istio.canonical_revision", "istio.canonical_service", "istio.cluster_id", "istio.mesh_id", "istio.namespace"]
    );
    // The collector's cluster is there, and HTTP/2 because its port says gRPC.
    let c: Cluster = decode(&client, ResourceType::Cluster, CLUSTER);
    assert!(c.typed_extension_protocol_options.contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));

    let inbound = hcm_of(&backend, "10.0.0.2_9080").tracing.expect("server side traced");
    assert_eq!(otel_of(&inbound).service_name, "backend.default");
    assert_eq!(random(&inbound), 100.0);
}

#[test]
fn without_telemetry_or_default_provider_nothing_traces() {
    let snap = snapshot(&mesh("grpc-otlp"), &otel_mesh());
    let (client, backend) = client_and_backend(&snap);
    assert_eq!(hcm_of(&client, "10.0.0.1_9080").tracing, None);
    assert_eq!(hcm_of(&backend, "10.0.0.2_9080").tracing, None);
}

#[test]
fn default_provider_and_default_sampling_apply_when_telemetry_names_none() {
    let mut m = otel_mesh();
    m.trace_sampling = 7.5;
    m.default_tracing_providers = vec!["otel".into()];
    let snap = snapshot(&mesh("grpc-otlp"), &m);
    let (client, backend) = client_and_backend(&snap);
    assert_eq!(random(&hcm_of(&client, "10.0.0.1_9080").tracing.expect("default provider")), 7.5);
    assert_eq!(random(&hcm_of(&backend, "10.0.0.2_9080").tracing.expect("default provider")), 7.5);

    // A Telemetry that only sets sampling keeps the default provider.
    let yaml = format!(
        "{}---\n{}",
        mesh("grpc-otlp"),
        telemetry("ns", "default", "  tracing: [{randomSamplingPercentage: 50}]")
    );
    let snap = snapshot(&yaml, &m);
    let (client, _) = client_and_backend(&snap);
    assert_eq!(random(&hcm_of(&client, "10.0.0.1_9080").tracing.expect("traced")), 50.0);
}

#[test]
fn workload_over_namespace_over_root_field_by_field_and_by_mode() {
    let yaml = format!(
        "{}---\n{}---\n{}---\n{}",
        mesh("grpc-otlp"),
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 100}]"),
        telemetry(
            "ns",
            "default",
            "  tracing: [{randomSamplingPercentage: 10, customTags: {team: {literal: {value: payments}}, \
             user: {header: {name: x-user, defaultValue: anon}}, pod: {environment: {name: POD_NAME}}}}]"
        ),
        telemetry(
            "backend",
            "default",
            "  selector: {matchLabels: {app: backend}}\n  tracing: [{match: {mode: SERVER}, disableSpanReporting: true}]"
        ),
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, backend) = client_and_backend(&snap);
    let out = hcm_of(&client, "10.0.0.1_9080").tracing.expect("client traced");
    assert_eq!(random(&out), 10.0, "the namespace's sampling over the root's, the root's provider kept");
    let team = out.custom_tags.iter().find(|t| t.tag == "team").and_then(|t| t.r#type.clone());
    assert!(matches!(team, Some(Type::Literal(l)) if l.value == "payments"));
    let user = out.custom_tags.iter().find(|t| t.tag == "user").and_then(|t| t.r#type.clone());
    assert!(matches!(user, Some(Type::RequestHeader(h)) if h.name == "x-user" && h.default_value == "anon"));
    let pod = out.custom_tags.iter().find(|t| t.tag == "pod").and_then(|t| t.r#type.clone());
    assert!(matches!(pod, Some(Type::Environment(e)) if e.name == "POD_NAME"));
    let mut sorted: Vec<_> = out.custom_tags.iter().map(|t| t.tag.clone()).collect();
    sorted.sort();
    assert_eq!(out.custom_tags.iter().map(|t| t.tag.clone()).collect::<Vec<_>>(), sorted, "sorted by tag name");

    assert_eq!(hcm_of(&backend, "10.0.0.2_9080").tracing, None, "the backend's SERVER side reports no spans");
    let backend_out = hcm_of(&backend, "10.0.0.2_4317").tracing.expect("its client side still traces");
    assert_eq!(random(&backend_out), 10.0);
    assert!(backend.warnings.is_empty(), "{:?}", backend.warnings);
}

#[test]
fn zero_percent_still_configures_the_tracer() {
    let yaml = format!(
        "{}---\n{}",
        mesh("grpc-otlp"),
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 0}]")
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, _) = client_and_backend(&snap);
    assert_eq!(random(&hcm_of(&client, "10.0.0.1_9080").tracing.expect("configured")), 0.0);
}

#[test]
fn unknown_and_unsupported_providers_are_warnings_and_no_tracing() {
    let yaml = format!(
        "{}---\n{}---\n{}",
        mesh("grpc-otlp"),
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}]}]"),
        telemetry("typo", "default", "  tracing: [{match: {mode: CLIENT}, providers: [{name: otle}]}]"),
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, backend) = client_and_backend(&snap);
    assert_eq!(hcm_of(&client, "10.0.0.1_9080").tracing, None, "an unknown provider turns tracing off");
    let w = client.warnings.join("\n");
    assert!(w.contains("Telemetry default/typo") && w.contains("\"otle\""), "{w}");
    assert!(hcm_of(&backend, "10.0.0.2_9080").tracing.is_some(), "CLIENT only: the server side keeps the root's");
    let d = snap.diagnostics.iter().find(|d| d.resource == "Telemetry default/typo").expect("a diagnostic");
    assert!(d.message.contains("\"otle\""), "{}", d.message);

    let yaml = format!(
        "{}---\n{}",
        mesh("grpc-otlp"),
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: zipkin}]}]")
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, _) = client_and_backend(&snap);
    assert_eq!(hcm_of(&client, "10.0.0.1_9080").tracing, None);
    assert!(client.warnings.iter().any(|w| w.contains("zipkin provider")), "{:?}", client.warnings);
}

#[test]
fn a_collector_the_proxy_cannot_see_leaves_tracing_out() {
    let root = telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}]}]");
    // The backend's Sidecar imports nothing.
    let yaml =
        format!("{}---\n{root}", mesh("grpc-otlp").replace(r#"hosts: ["observability/*"]"#, r#"hosts: ["~/*"]"#));
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, backend) = client_and_backend(&snap);
    assert!(hcm_of(&client, "10.0.0.1_9080").tracing.is_some());
    assert_eq!(hcm_of(&backend, "10.0.0.2_9080").tracing, None);
    assert!(backend.warnings.iter().any(|w| w.contains("not visible to this proxy")), "{:?}", backend.warnings);

    // Not in the registry at all, or without the port.
    for (service, port, what) in
        [("nowhere.example.com", 4317, "not in the registry"), (COLLECTOR, 9999, "no port 9999")]
    {
        let mut m = MeshConfig::default();
        let otel = OtelProvider { service: service.into(), port, ..Default::default() };
        m.tracing_providers.insert("otel".into(), TracingProvider::OpenTelemetry(otel));
        let snap = snapshot(&format!("{}---\n{root}", mesh("grpc-otlp")), &m);
        let (client, _) = client_and_backend(&snap);
        assert_eq!(hcm_of(&client, "10.0.0.1_9080").tracing, None);
        assert!(client.warnings.iter().any(|w| w.contains(what)), "{:?}", client.warnings);
    }
}

#[test]
fn grpc_export_needs_http2_to_the_collector() {
    let root = telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}]}]");
    // An unnamed (sniffed, in Istio) port: the cluster is made HTTP/2.
    let snap = snapshot(&format!("{}---\n{root}", mesh("otlp")), &otel_mesh());
    let (client, _) = client_and_backend(&snap);
    assert!(hcm_of(&client, "10.0.0.1_9080").tracing.is_some());
    let c: Cluster = decode(&client, ResourceType::Cluster, CLUSTER);
    assert!(c.typed_extension_protocol_options.contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));
    // A port that says HTTP/1.1: left out, with the reason.
    let snap = snapshot(&format!("{}---\n{root}", mesh("http-otlp")), &otel_mesh());
    let (client, _) = client_and_backend(&snap);
    assert_eq!(hcm_of(&client, "10.0.0.1_9080").tracing, None);
    assert!(client.warnings.iter().any(|w| w.contains("needs HTTP/2")), "{:?}", client.warnings);
}

#[test]
fn http_export_uses_the_http_service() {
    let mut m = MeshConfig::default();
    let otel = OtelProvider {
        service: format!("observability/{COLLECTOR}"),
        port: 4317,
        max_tag_length: 64,
        http: Some(OtelHttp { path: "v1/traces".into(), timeout: None, headers: vec![("x-key".into(), "k".into())] }),
        environment_detector: true,
        ..Default::default()
    };
    m.tracing_providers.insert("otel-http".into(), TracingProvider::OpenTelemetry(otel));
    let root =
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: OTEL-HTTP}], enableIstioTags: false}]");
    // An HTTP/1.1 port is fine for OTLP/HTTP.
    let snap = snapshot(&format!("{}---\n{root}", mesh("http-otlp")), &m);
    let (client, _) = client_and_backend(&snap);
    assert!(client.warnings.is_empty(), "{:?}", client.warnings);
    let t = hcm_of(&client, "10.0.0.1_9080").tracing.expect("traced (provider names are case-insensitive)");
    assert_eq!(t.max_path_tag_length.map(|v| v.value), Some(64));
    assert!(t.custom_tags.is_empty(), "enableIstioTags: false");
    let otel = otel_of(&t);
    assert!(otel.grpc_service.is_none());
    let svc = otel.http_service.expect("http_service");
    let uri = svc.http_uri.expect("uri");
    assert_eq!(uri.uri, format!("http://{COLLECTOR}/v1/traces"));
    assert_eq!(uri.timeout.map(|d| d.seconds), Some(5), "Istio's default timeout");
    use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
    assert_eq!(uri.http_upstream_type, Some(HttpUpstreamType::Cluster(CLUSTER.into())));
    assert_eq!(svc.request_headers_to_add.len(), 1);
    assert_eq!(otel.resource_detectors.len(), 1);
    let c: Cluster = decode(&client, ResourceType::Cluster, CLUSTER);
    assert!(c.typed_extension_protocol_options.is_empty(), "OTLP/HTTP does not force HTTP/2");
}

#[test]
fn use_request_id_for_trace_sampling_false_sets_the_uuid_extension() {
    let yaml = format!(
        "{}---\n{}",
        mesh("grpc-otlp"),
        telemetry(
            "mesh",
            "istio-system",
            "  tracing: [{providers: [{name: otel}], useRequestIdForTraceSampling: false}]"
        )
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let (client, _) = client_and_backend(&snap);
    let hcm = hcm_of(&client, "10.0.0.1_9080");
    let ext = hcm.request_id_extension.and_then(|e| e.typed_config).expect("request id extension");
    assert!(ext.type_url.ends_with("UuidRequestIdConfig"));
}

#[test]
fn gateways_trace_as_clients_and_spawn_upstream_spans() {
    let gw = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;
    let yaml = format!(
        "{}---\n{gw}---\n{}",
        mesh("grpc-otlp"),
        telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 100}]")
    );
    let snap = snapshot(&yaml, &otel_mesh());
    let id = "router~10.0.0.9~ingress-1.istio-system~istio-system.svc.cluster.local";
    let labels = serde_json::json!({"LABELS": {"istio": "ingressgateway", "app": "istio-ingressgateway"}});
    let r = generate(&snap, &Proxy::from_node(id, &labels).expect("node"));
    let listeners: Vec<String> = r.of(ResourceType::Listener).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let l = listeners.first().unwrap_or_else(|| panic!("a gateway listener; warnings {:?}", r.warnings));
    let t = hcm_of(&r, l).tracing.expect("gateway traced");
    assert_eq!(t.spawn_upstream_span.map(|b| b.value), Some(true));
    assert_eq!(otel_of(&t).service_name, "istio-ingressgateway.istio-system");
}

#[test]
fn with_tracing_workloads_of_different_apps_stop_sharing_outbound_config() {
    let a = sidecar("10.0.0.1", "client");
    let b = sidecar("10.0.0.3", "reports");
    // Sidecars selecting on another label, so that `app` alone tells the two apart.
    let neutral = mesh("grpc-otlp")
        .replace("workloadSelector: {labels: {app: client}}", "workloadSelector: {labels: {role: x}}")
        .replace("workloadSelector: {labels: {app: backend}}", "workloadSelector: {labels: {role: y}}");
    let plain_neutral = snapshot(&neutral, &otel_mesh());
    assert_eq!(share_key(&plain_neutral, &a), share_key(&plain_neutral, &b), "no tracing: shared");
    let traced = snapshot(
        &format!("{neutral}---\n{}", telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}]}]")),
        &otel_mesh(),
    );
    assert_ne!(share_key(&traced, &a), share_key(&traced, &b), "spans name their service");
    let a2 = sidecar("10.0.0.4", "client");
    assert_eq!(share_key(&traced, &a), share_key(&traced, &a2), "replicas still share");
    // Server-side tracing only: the shared (outbound) config has no spans to name.
    let server_only = snapshot(
        &format!(
            "{neutral}---\n{}",
            telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}], match: {mode: SERVER}}]")
        ),
        &otel_mesh(),
    );
    assert_eq!(share_key(&server_only, &a), share_key(&server_only, &b), "server-side tracing: shared");
}
