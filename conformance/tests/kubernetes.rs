//! Kubernetes end to end: `spar serve --kubernetes` against the in-process fake API server
//! (the real wire protocol: list, watch, 410, status subresource, Lease), real Envoys
//! bootstrapped by `spar bootstrap` (the command injection's init container runs), real
//! traffic. Services, EndpointSlices and Pods come from the API, not from WorkloadEntries.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use spar_conformance::{Envoy, Harness, both_variants_mod, http_request, wait_for};
use spar_kube_fake::{FakeApiServer, ResourceType};

const CONVERGE: Duration = Duration::from_secs(20);

fn install_istio_crds(server: &FakeApiServer) {
    for (api_version, kind, plural) in spar_kube::custom_resource_versions() {
        server.add_resource(ResourceType::new(&api_version, kind.name(), &plural, true).with_status());
    }
}

fn apply(server: &FakeApiServer, obj: Value) -> anyhow::Result<()> {
    server.apply(obj).map(|_| ()).map_err(|e| anyhow::anyhow!(e))
}

fn virtual_service(default_subset: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "backend", "namespace": "default"},
        "spec": {"hosts": ["backend"], "http": [
            {"match": [{"headers": {"x-canary": {"exact": "yes"}}}],
             "route": [{"destination": {"host": "backend", "subset": "v2"}}]},
            {"route": [{"destination": {"host": "backend", "subset": default_subset}}]}
        ]}
    })
}

async fn backend_of(client: &Envoy, headers: &[(&str, &str)]) -> Option<String> {
    let to = SocketAddr::new(client.ip, 9080);
    http_request(to, "GET", "backend", "/", headers).await.ok().and_then(|r| r.backend().map(str::to_string))
}

async fn wait_routed(client: &Envoy, headers: &[(&str, &str)], backend: &str, what: &str) -> anyhow::Result<()> {
    wait_for(CONVERGE, what, || async { backend_of(client, headers).await.as_deref() == Some(backend) }).await
}

async fn kubernetes_source(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("kubernetes", delta)?;
    let server = FakeApiServer::start().await?;
    install_istio_crds(&server);
    let kubeconfig = h.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig())?;

    // What kubectl apply and the Kubernetes controllers would have written.
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend", "namespace": "default"},
            "spec": {"selector": {"app": "backend"}, "clusterIP": "10.96.0.10",
                     "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}}),
    )?;
    let mut endpoints = Vec::new();
    for v in ["v1", "v2"] {
        let name = format!("backend-{v}");
        let ip = h.ip(&name).to_string();
        apply(
            &server,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default",
                    "labels": {"app": "backend", "version": v, "security.istio.io/tlsMode": "istio"}},
                "spec": {"serviceAccountName": "backend", "containers": [{"name": "app", "image": "echo"}]},
                "status": {"phase": "Running", "podIP": ip}}),
        )?;
        endpoints.push(json!({"addresses": [ip], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": name, "namespace": "default"}}));
    }
    apply(
        &server,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "backend-x1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "backend"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 9080}], "endpoints": endpoints}),
    )?;
    let client_ip = h.ip("client").to_string();
    apply(
        &server,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "backend", "namespace": "default"},
            "spec": {"workloadSelector": {"labels": {"app": "backend"}},
                "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                             "defaultEndpoint": "0.0.0.0:8080"}],
                "egress": [{"hosts": ["~/*"]}]}}),
    )?;
    apply(
        &server,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"workloadSelector": {"labels": {"app": "client"}},
                "egress": [{"bind": client_ip, "hosts": ["./*"]}]}}),
    )?;
    // Written in an older served version, as long-lived clusters still have them.
    apply(
        &server,
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "backend", "namespace": "default"},
            "spec": {"host": "backend", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
    )?;
    apply(&server, virtual_service("v1"))?;

    h.spar_args = vec![
        "--kubernetes".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--missing-crd-retry".into(),
        "1s".into(),
    ];
    h.start_spar(&[]).await?;
    for v in ["v1", "v2"] {
        let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        h.start_sidecar(&pod).await?;
    }
    let client_pod = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client_pod).await?;

    // Listed: routes, subsets from pod labels, the header match.
    wait_routed(&client, &[], "backend-v1", "backend to route to v1").await?;
    assert_eq!(backend_of(&client, &[("x-canary", "yes")]).await.as_deref(), Some("backend-v2"));

    // An update converges.
    apply(&server, virtual_service("v2"))?;
    wait_routed(&client, &[], "backend-v2", "the updated VirtualService").await?;

    // A bad object is skipped: good routes stay, and its status says why.
    server.write_object_raw(
        "networking.istio.io/v1",
        "VirtualService",
        "default",
        "broken",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "broken", "namespace": "default"}, "spec": {"hosts": "backend"}}),
    );
    let condition = |name: &str| {
        server
            .get("networking.istio.io/v1", "VirtualService", "default", name)
            .and_then(|o| o.pointer("/status/conditions/0").cloned())
    };
    wait_for(CONVERGE, "the broken object's status", || async {
        condition("broken").is_some_and(|c| c["reason"] == "Invalid")
    })
    .await?;
    let broken = condition("broken").unwrap_or_default();
    assert_eq!(broken["status"], "False");
    assert!(broken["message"].as_str().is_some_and(|m| m.contains("invalid type")), "{broken}");
    wait_for(CONVERGE, "the good object's status", || async {
        condition("backend").is_some_and(|c| c["reason"] == "Applied")
    })
    .await?;
    assert_eq!(backend_of(&client, &[]).await.as_deref(), Some("backend-v2"), "good routes kept");

    // 410 Gone: every watch ends and resumes too late; Spar relists and keeps converging.
    let lists_before = h.spar_log().matches("listed").count();
    server.compact();
    wait_for(CONVERGE, "a relist", || async { h.spar_log().matches("listed").count() > lists_before }).await?;
    apply(&server, virtual_service("v1"))?;
    wait_routed(&client, &[], "backend-v1", "a change after the relist").await?;

    // A delete converges: without the VirtualService, the canary header no longer pins v2.
    server.delete("networking.istio.io/v1", "VirtualService", "default", "backend");
    wait_routed(&client, &[("x-canary", "yes")], "backend-v1", "the VirtualService's removal").await?;

    // An endpoint leaving the EndpointSlice takes its pod out of the load balancer.
    let mut slice = server.get("discovery.k8s.io/v1", "EndpointSlice", "default", "backend-x1").unwrap_or_default();
    if let Some(eps) = slice.get_mut("endpoints").and_then(Value::as_array_mut) {
        eps.retain(|e| e["targetRef"]["name"] != "backend-v1");
    }
    apply(&server, slice)?;
    wait_for(CONVERGE, "v1 out of the endpoints", || async {
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(backend_of(&client, &[]).await);
        }
        seen.iter().all(|b| b.as_deref() == Some("backend-v2"))
    })
    .await?;
    h.check_alive()
}

both_variants_mod!(kubernetes, kubernetes_source);
