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

/// A fake API server with Istio's CRDs, and a kubeconfig for it in the harness directory.
async fn fake_cluster(h: &Harness) -> anyhow::Result<(FakeApiServer, std::path::PathBuf)> {
    let server = FakeApiServer::start().await?;
    install_istio_crds(&server);
    let kubeconfig = h.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig())?;
    Ok((server, kubeconfig))
}

/// The `backend` Service (port 9080) as kubectl would have written it.
fn backend_service(cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend", "namespace": "default"},
        "spec": {"selector": {"app": "backend"}, "clusterIP": cluster_ip,
                 "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}})
}

/// A VirtualService the API server holds but Spar cannot parse (`hosts` is not a list),
/// as a cluster without the CRD's schema would keep it.
fn write_broken_virtual_service(server: &FakeApiServer) {
    server.write_object_raw(
        "networking.istio.io/v1",
        "VirtualService",
        "default",
        "broken",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "broken", "namespace": "default"}, "spec": {"hosts": "backend"}}),
    );
}

/// `spar serve` against the fake API server.
fn kube_args(kubeconfig: &std::path::Path) -> Vec<String> {
    ["--kubernetes", "--kubeconfig", &kubeconfig.display().to_string(), "--missing-crd-retry", "1s"]
        .map(str::to_string)
        .to_vec()
}

/// The `backend` Service's EndpointSlice: one ready endpoint, pod `pod` at `ip`.
fn backend_slice(pod: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "backend-x1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "backend"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 9080}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}]})
}

/// A running pod in `default`, as the API server holds it once scheduled.
fn pod(name: &str, labels: Value, service_account: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"serviceAccountName": service_account, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip}})
}

/// The backend's Sidecar: inbound 9080 to the app on 8080 of the pod's address.
fn backend_sidecar() -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "backend", "namespace": "default"},
        "spec": {"workloadSelector": {"labels": {"app": "backend"}},
            "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                         "defaultEndpoint": "0.0.0.0:8080"}],
            "egress": [{"hosts": ["~/*"]}]}})
}

/// The client's Sidecar, binding its outbound listeners to its own address; with
/// `bad_bind`, also a listener on an address this host lacks (valid Istio config that only
/// Envoy finds wrong: it NACKs).
fn client_sidecar(client_ip: &str, bad_bind: bool) -> Value {
    let mut egress = vec![json!({"bind": client_ip, "hosts": ["./*"]})];
    if bad_bind {
        egress.push(json!({"bind": "192.0.2.1", "port": {"number": 9999, "protocol": "HTTP", "name": "http"},
                           "hosts": ["./*"]}));
    }
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "client", "namespace": "default"},
        "spec": {"workloadSelector": {"labels": {"app": "client"}}, "egress": egress}})
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
    let (server, kubeconfig) = fake_cluster(&h).await?;

    // What kubectl apply and the Kubernetes controllers would have written.
    apply(&server, backend_service("10.96.0.10"))?;
    let mut endpoints = Vec::new();
    for v in ["v1", "v2"] {
        let name = format!("backend-{v}");
        let ip = h.ip(&name).to_string();
        let labels = json!({"app": "backend", "version": v, "security.istio.io/tlsMode": "istio"});
        apply(&server, pod(&name, labels, "backend", &ip))?;
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
    // The client's pod too (the analyzers that run for status check selectors against Pods).
    apply(&server, pod("client", json!({"app": "client"}), "default", &client_ip))?;
    apply(&server, backend_sidecar())?;
    apply(&server, client_sidecar(&client_ip, false))?;
    // Written in an older served version, as long-lived clusters still have them.
    apply(
        &server,
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "backend", "namespace": "default"},
            "spec": {"host": "backend", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
    )?;
    apply(&server, virtual_service("v1"))?;

    h.spar_args = kube_args(&kubeconfig);
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
    write_broken_virtual_service(&server);
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

    // Valid config that the proxy rejects (a bind to an address this host lacks): the NACK
    // is traced to the Sidecar, whose status says so; fixing it clears the status.
    let sidecar_condition = || {
        server
            .get("networking.istio.io/v1", "Sidecar", "default", "client")
            .and_then(|o| o.pointer("/status/conditions/0").cloned())
    };
    apply(&server, client_sidecar(&client_ip, true))?;
    wait_for(CONVERGE, "the rejected Sidecar's status", || async {
        sidecar_condition().is_some_and(|c| c["reason"] == "RejectedByProxy")
    })
    .await?;
    let rejected = sidecar_condition().unwrap_or_default();
    let message = rejected["message"].as_str().unwrap_or_default();
    assert!(message.contains("192.0.2.1") && message.contains(&client_ip) && message.contains("(lds)"), "{rejected}");
    assert_eq!(rejected["status"], "False");
    assert_eq!(condition("backend").map(|c| c["reason"].clone()), Some(json!("Applied")), "only the culprit");
    apply(&server, client_sidecar(&client_ip, false))?;
    wait_for(CONVERGE, "the fixed Sidecar's status", || async {
        sidecar_condition().is_some_and(|c| c["reason"] == "Applied")
    })
    .await?;

    // Istio's analyzers run for status too: a VirtualService bound to a Gateway that does
    // not exist is applied, with the finding where istiod's analysis puts it.
    apply(
        &server,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "edge", "namespace": "default"},
            "spec": {"hosts": ["edge.example.com"], "gateways": ["nowhere"],
                     "http": [{"route": [{"destination": {"host": "backend"}}]}]}}),
    )?;
    let edge_status =
        || server.get("networking.istio.io/v1", "VirtualService", "default", "edge").map(|o| o["status"].clone());
    wait_for(CONVERGE, "the analysis finding in the status", || async {
        edge_status().is_some_and(|s| s["validationMessages"][0]["type"]["code"] == "IST0101")
    })
    .await?;
    let edge = edge_status().unwrap_or_default();
    assert_eq!(edge["validationMessages"][0]["type"]["name"], "ReferencedResourceNotFound", "{edge}");
    assert_eq!(edge["validationMessages"][0]["level"], "ERROR", "{edge}");
    assert_eq!(edge["conditions"][0]["reason"], "AppliedWithWarnings", "{edge}");
    assert!(edge["conditions"][0]["message"].as_str().is_some_and(|m| m.contains("nowhere")), "{edge}");

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

/// Writes `token` where a projected token volume would hold it; returns the path.
fn token_file(h: &Harness, name: &str, token: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = h.dir.join(format!("{name}.token"));
    std::fs::write(&path, token)?;
    Ok(path)
}

/// Identity in a cluster: each sidecar's init step trades its pod's service-account token
/// (checked by Spar with a TokenReview against the API server) for a pod-bound xDS
/// credential, then Envoy gets its config and its workload certificate on the secure port,
/// and sidecars talk mutual TLS. Tokens that prove nothing, or another identity, buy
/// nothing; a credential whose pod is gone opens no stream.
async fn token_identity(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("kube-token", delta)?.with_security("24h");
    let (server, kubeconfig) = fake_cluster(&h).await?;
    apply(&server, backend_service("10.96.0.11"))?;
    let mut pods = Vec::new();
    for name in ["backend", "client"] {
        let ip = h.ip(name).to_string();
        apply(&server, pod(name, json!({"app": name, "security.istio.io/tlsMode": "istio"}), name, &ip))?;
        let uid = server
            .get("v1", "Pod", "default", name)
            .and_then(|p| p.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| anyhow::anyhow!("the fake gave pod {name} no uid"))?;
        let token = format!("projected-token-of-{name}");
        server.add_pod_token(&token, &format!("system:serviceaccount:default:{name}"), &["spar"], name, &uid);
        pods.push((name, uid, token_file(&h, name, &token)?));
    }
    let backend_ip = h.ip("backend").to_string();
    apply(&server, backend_slice("backend", &backend_ip))?;
    let client_ip = h.ip("client").to_string();
    apply(&server, backend_sidecar())?;
    apply(&server, client_sidecar(&client_ip, false))?;
    // Plaintext is refused: the request below can only succeed over mutual TLS.
    apply(
        &server,
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "default"}, "spec": {"mtls": {"mode": "STRICT"}}}),
    )?;
    h.spar_args = vec!["--kubernetes".into(), "--kubeconfig".into(), kubeconfig.display().to_string()];
    h.start_spar(&[]).await?;

    let mut started = Vec::new();
    for (name, _, token) in &pods {
        let mut pod = h.pod(name, &[("app", name), ("security.istio.io/tlsMode", "istio")]);
        pod.service_account = (*name).to_string();
        if *name == "backend" {
            h.start_echo(name, SocketAddr::new(pod.ip, 8080)).await?;
        }
        let bootstrap = h.bootstrap_with_token(&pod, token, "20s").await?;
        started.push(h.start_envoy_with(&pod, &bootstrap).await?);
    }
    let client = &started[1];
    let to = SocketAddr::new(client.ip, 9080);
    wait_for(CONVERGE, "mTLS from client to backend", || async {
        http_request(to, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let r = http_request(to, "GET", "backend", "/", &[]).await?;
    let body: Value = serde_json::from_str(&r.body).unwrap_or_default();
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default();
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"), "XFCC names the client: {xfcc:?}");
    let (_, certs) = client.admin_get("/certs").await?;
    assert!(certs.contains("spiffe://cluster.local/ns/default/sa/client"), "workload certificate over SDS: {certs}");

    // The credential names its pod and outlives a workload certificate.
    let chain = std::fs::read_to_string(h.dir.join("client-credential/xds-cert.pem"))?;
    let leaf = spar_ca::pem_to_der(&chain).into_iter().next().ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    let bound = spar_ca::pod_binding_in(&leaf).ok_or_else(|| anyhow::anyhow!("the credential names no pod"))?;
    assert_eq!((bound.name.as_str(), bound.uid.as_str()), ("client", pods[1].1.as_str()));

    // A token the API server does not know, and a token for another service account.
    let mut stranger = h.pod("stranger", &[("app", "stranger")]);
    stranger.service_account = "client".into();
    let bogus = token_file(&h, "bogus", "not-a-token")?;
    let err = h.bootstrap_with_token(&stranger, &bogus, "1s").await.expect_err("an unknown token buys nothing");
    assert!(format!("{err:#}").contains("token refused"), "{err:#}");
    stranger.service_account = "backend".into();
    let err =
        h.bootstrap_with_token(&stranger, &pods[1].2, "1s").await.expect_err("the client's token is not backend's");
    assert!(format!("{err:#}").contains("the token proves spiffe://cluster.local/ns/default/sa/client"), "{err:#}");

    // A second copy of the client's credential, then the client pod is deleted (and its
    // token with it): the credential opens no stream any more.
    let mut spare = h.pod("client-spare", &[("app", "client")]);
    spare.service_account = "client".into();
    let spare_bootstrap = h.bootstrap_with_token(&spare, &pods[1].2, "20s").await?;
    server.delete("v1", "Pod", "default", "client");
    server.revoke_token("projected-token-of-client");
    let refused_before = h.spar_log().matches("no longer exists").count();
    let spare = h.start_envoy_with(&spare, &spare_bootstrap).await?;
    wait_for(CONVERGE, "spar to refuse the gone pod's credential", || async {
        h.spar_log().matches("no longer exists").count() > refused_before
    })
    .await?;
    assert_eq!(spare.stat("cluster_manager.active_clusters").await?, 1, "only the static xds-grpc cluster");
    h.check_alive()
}

both_variants_mod!(token, token_identity);

/// `spar serve` as a second replica on its own address, against the same API server.
async fn second_replica(
    h: &mut Harness,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    second_replica_with(h, kubeconfig, &[]).await
}

/// [`second_replica`] with more flags.
async fn second_replica_with(
    h: &mut Harness,
    kubeconfig: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let ip = h.ip("spar-b");
    let xds = SocketAddr::new(ip, 15010);
    let log = std::fs::File::create(h.dir.join("spar-b.log"))?;
    let child = tokio::process::Command::new(spar_conformance::spar_bin()?)
        .args(["serve", "--kubernetes", "--missing-crd-retry", "1s", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--xds-address", &xds.to_string(), "--debug-address", &SocketAddr::new(ip, 15014).to_string()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    wait_for(CONVERGE, "replica B's xDS port", || async { tokio::net::TcpStream::connect(xds).await.is_ok() }).await?;
    Ok((child, xds))
}

/// A sidecar whose bootstrap knows both replicas (as a Service in front of them would):
/// when its stream breaks it reconnects to whichever answers.
async fn sidecar_of_both(h: &mut Harness, pod: &spar_conformance::Pod, b: SocketAddr) -> anyhow::Result<Envoy> {
    let mut bootstrap = h.bootstrap(pod).await?;
    add_xds_endpoint(&mut bootstrap, b)?;
    h.start_envoy_with(pod, &bootstrap).await
}

/// Adds `b` to the endpoints of a bootstrap's `xds-grpc` cluster.
fn add_xds_endpoint(bootstrap: &mut Value, b: SocketAddr) -> anyhow::Result<()> {
    let clusters =
        bootstrap["static_resources"]["clusters"].as_array_mut().ok_or_else(|| anyhow::anyhow!("no clusters"))?;
    let xds = clusters.iter_mut().find(|c| c["name"] == "xds-grpc").ok_or_else(|| anyhow::anyhow!("no xds-grpc"))?;
    let endpoints = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("no xds-grpc endpoints"))?;
    endpoints.push(
        json!({"endpoint": {"address": {"socket_address": {"address": b.ip().to_string(), "port_value": b.port()}}}}),
    );
    Ok(())
}

/// Two replicas against one API server, proxies that know both, the Lease holder killed
/// (SIGKILL) while a client sends requests: no request fails, every proxy is served by
/// the survivor, and the survivor takes the Lease and with it the status writes (a
/// broken object applied after the kill gets its condition).
async fn failover(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("failover", delta)?;
    let (server, kubeconfig) = fake_cluster(&h).await?;
    apply(&server, backend_service("10.96.0.10"))?;
    let ip = h.ip("backend-v1").to_string();
    apply(&server, pod("backend-v1", json!({"app": "backend", "version": "v1"}), "backend", &ip))?;
    apply(&server, backend_slice("backend-v1", &ip))?;
    let client_ip = h.ip("client").to_string();
    apply(&server, pod("client", json!({"app": "client"}), "default", &client_ip))?;
    apply(&server, backend_sidecar())?;
    apply(&server, client_sidecar(&client_ip, false))?;
    h.spar_args = kube_args(&kubeconfig);
    h.start_spar(&[]).await?;
    let (mut b, b_xds) = second_replica(&mut h, &kubeconfig).await?;
    let backend = h.pod("backend-v1", &[("app", "backend"), ("version", "v1")]);
    h.start_echo(&backend.name, SocketAddr::new(backend.ip, 8080)).await?;
    sidecar_of_both(&mut h, &backend, b_xds).await?;
    let client_pod = h.pod("client", &[("app", "client")]);
    let client = sidecar_of_both(&mut h, &client_pod, b_xds).await?;
    wait_routed(&client, &[], "backend-v1", "backend to route to v1").await?;

    let to = SocketAddr::new(client.ip, 9080);
    let Failover { holder, a_led, survivor_debug, traffic } =
        kill_the_leader_under_traffic(&mut h, &server, &mut b, b_xds.ip(), to).await?;
    // The survivor serves both proxies.
    wait_for(Duration::from_secs(30), "both proxies on the survivor", || async {
        http_request(survivor_debug, "GET", "spar", "/debug/syncz", &[])
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<Vec<Value>>(&r.body).ok())
            .is_some_and(|p| p.len() == 2)
    })
    .await?;
    // It takes the Lease (15 s without renewal) and writes status.
    write_broken_virtual_service(&server);
    wait_for(Duration::from_secs(45), "the survivor to write the broken object's status", || async {
        server
            .get("networking.istio.io/v1", "VirtualService", "default", "broken")
            .and_then(|o| o.pointer("/status/conditions/0/reason").cloned())
            .is_some_and(|r| r == "Invalid")
    })
    .await?;
    let new_holder = lease_holder(&server).unwrap_or_default();
    let (sent, failed) = traffic.stop().await?;
    eprintln!(
        "failover: the leader was replica {}; {sent} requests, {} failed; new holder {new_holder}",
        if a_led { "A" } else { "B" },
        failed.len()
    );
    assert_ne!(new_holder, holder, "the Lease moved");
    assert!(failed.is_empty(), "{} of {sent} requests failed: {failed:#?}", failed.len());
    Ok(())
}

both_variants_mod!(replica_failover, failover);

/// The Lease holder as the API server has it: a replica by pod name, else
/// `spar-<host>-<pid>`.
fn lease_holder(server: &FakeApiServer) -> Option<String> {
    server
        .get("coordination.k8s.io/v1", "Lease", "istio-system", "spar-leader")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// Requests to `to` every 20 ms until stopped.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    fn start(to: SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = std::sync::Arc::clone(&stop);
            async move {
                let (mut sent, mut failed) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = http_request(to, "GET", "backend", "/", &[]).await;
                    sent += 1;
                    if !r.as_ref().is_ok_and(|r| r.status == 200) {
                        failed.push(format!("{r:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (sent, failed)
            }
        });
        Self { stop, task }
    }

    /// Stops: how many requests were sent, and each one that failed.
    async fn stop(self) -> anyhow::Result<(usize, Vec<String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

/// What killing the leader left.
struct Failover {
    /// The Lease holder before.
    holder: String,
    /// Whether it was replica A (the harness's Spar).
    a_led: bool,
    /// The survivor's debug endpoint.
    survivor_debug: SocketAddr,
    /// Requests through the client's sidecar, started before the kill.
    traffic: Traffic,
}

/// Once a replica holds the Lease, starts requests to `to` and kills the holder
/// (SIGKILL): replica A (the harness's Spar) or B (`b`, at `b_ip`).
async fn kill_the_leader_under_traffic(
    h: &mut Harness,
    server: &FakeApiServer,
    b: &mut tokio::process::Child,
    b_ip: std::net::IpAddr,
    to: SocketAddr,
) -> anyhow::Result<Failover> {
    wait_for(CONVERGE, "a Lease holder", || async { lease_holder(server).is_some() }).await?;
    let holder = lease_holder(server).unwrap_or_default();
    let a_led = holder.ends_with(&format!("-{}", h.child_pid("spar").unwrap_or_default()));
    let traffic = Traffic::start(to);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let survivor_debug = if a_led {
        h.kill_spar().await?;
        SocketAddr::new(b_ip, 15014)
    } else {
        b.start_kill()?;
        b.wait().await?;
        h.debug_address()
    };
    Ok(Failover { holder, a_led, survivor_debug, traffic })
}

#[path = "kubernetes/ca_failover.rs"]
mod ca_failover;
