//! Gateway API conformance: real `spar serve`, a real stock Envoy programmed by a
//! Gateway API Gateway (the pod labelled with the Gateway's name, as istiod's deployment
//! controller labels it), real sidecars for GAMMA, real backends. Every case runs over
//! SotW and over delta xDS.

use std::net::SocketAddr;
use std::time::Duration;

use spar_conformance::tls::{Pki, secret_yaml, tls_request};
use spar_conformance::{Envoy, Harness, Pod, both_variants_mod, http_request, tally, wait_for};

/// Convergence bound for one config change; generous on purpose (shared machines).
const CONVERGE: Duration = Duration::from_secs(20);

/// The label istiod's gateway deployment controller gives a Gateway's pods.
const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// Spar and the three backends of `conformance/cases/gateway-api`, and the Gateway's pod.
async fn start_gateway(
    h: &mut Harness,
) -> anyhow::Result<(Envoy, [std::sync::Arc<spar_conformance::echo::EchoState>; 3])> {
    h.load_case("gateway-api")?;
    h.start_spar(&[]).await?;
    let mut states = Vec::new();
    for name in ["echo-v1", "echo-v2", "other"] {
        let ip = h.ip(name);
        states.push(h.start_echo(name, SocketAddr::new(ip, 8080)).await?);
    }
    let ip = h.ip("gw");
    let gw = h.start_sidecar(&Pod::gateway("gw", "infra", ip, &[(GATEWAY_NAME, "gw")])).await?;
    let states: [_; 3] = states.try_into().map_err(|_| anyhow::anyhow!("three backends"))?;
    Ok((gw, states))
}

/// An HTTPRoute on a Gateway's HTTP listener: path, header and segment-wise prefix
/// matches, header modifiers, redirect, prefix rewrite, weights, an unlisted host, and a
/// backend in another namespace refused (500) until a ReferenceGrant allows it; a
/// TCPRoute on the TCP listener.
async fn http_route(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gwapi-http", delta)?;
    let (gw, [v1, v2, _other]) = start_gateway(&mut h).await?;
    let to = SocketAddr::new(gw.ip, 8080);
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        http_request(to, "GET", "web.example.com", path, headers).await
    };
    wait_for(CONVERGE, "the Gateway to route web.example.com", || async {
        get("/", &[]).await.is_ok_and(|r| r.backend() == Some("echo-v1"))
    })
    .await?;

    let r = get("/v2/a", &[("x-drop", "1")]).await?;
    assert_eq!(r.backend(), Some("echo-v2"), "PathPrefix /v2: {r:?}");
    assert_eq!(r.headers.get("x-served-by").map(String::as_str), Some("v2"), "response header set: {r:?}");
    let seen = v2.received().pop().ok_or_else(|| anyhow::anyhow!("echo-v2 saw nothing"))?;
    assert_eq!(seen.headers.get("x-added").map(String::as_str), Some("yes"), "request header added: {seen:?}");
    assert!(!seen.headers.contains_key("x-drop"), "request header removed: {seen:?}");
    // Gateway API prefixes match whole path segments.
    assert_eq!(get("/v2", &[]).await?.backend(), Some("echo-v2"), "/v2 itself");
    assert_eq!(get("/v2x", &[]).await?.backend(), Some("echo-v1"), "/v2x is not under /v2");

    assert_eq!(get("/", &[("x-canary", "yes")]).await?.backend(), Some("echo-v2"), "header match");

    let r = get("/old", &[]).await?;
    assert_eq!(r.status, 301, "redirect: {r:?}");
    assert_eq!(r.headers.get("location").map(String::as_str), Some("https://new.example.com/old"), "{r:?}");

    assert_eq!(get("/strip/a/b", &[]).await?.backend(), Some("echo-v1"));
    let seen = v1.received().pop().ok_or_else(|| anyhow::anyhow!("echo-v1 saw nothing"))?;
    assert_eq!(seen.path, "/a/b", "ReplacePrefixMatch / removes the prefix");
    assert_eq!(get("/strip", &[]).await?.backend(), Some("echo-v1"));
    assert_eq!(v1.received().pop().map(|r| r.path), Some("/".to_string()), "nothing left is /");

    let split = tally(to, "web.example.com", "/split", &[], 40).await?;
    assert!(split.get("echo-v1").is_some_and(|n| *n >= 5), "weights 1:1 reach v1: {split:?}");
    assert!(split.get("echo-v2").is_some_and(|n| *n >= 5), "weights 1:1 reach v2: {split:?}");

    let r = http_request(to, "GET", "nope.example.com", "/", &[]).await?;
    assert_eq!(r.status, 404, "a host no route names: {r:?}");

    // Another namespace's Service: not without a ReferenceGrant (500, as the spec says
    // for a backend that cannot be used), then allowed.
    let r = get("/other", &[]).await?;
    assert_eq!(r.status, 500, "backend in another namespace without a grant: {r:?}");
    h.write_config(
        "grant.yaml",
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: web, namespace: other}\n\
         spec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]\n  \
         to: [{group: \"\", kind: Service}]\n",
    )?;
    wait_for(CONVERGE, "the ReferenceGrant to let /other through", || async {
        get("/other", &[]).await.is_ok_and(|r| r.backend() == Some("other"))
    })
    .await?;

    // The TCP listener forwards bytes to echo-v2 (HTTP over it, to see who answers).
    let tcp = SocketAddr::new(gw.ip, 9000);
    wait_for(CONVERGE, "the TCPRoute to reach echo-v2", || async {
        http_request(tcp, "GET", "anything", "/", &[]).await.is_ok_and(|r| r.backend() == Some("echo-v2"))
    })
    .await?;
    h.check_alive()
}

/// GAMMA: an HTTPRoute whose parent is a Service routes sidecar traffic to it, for
/// clients in every namespace (the route is in the Service's own namespace).
async fn gamma(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gwapi-gamma", delta)?;
    h.load_case("gateway-api")?;
    h.write_config(
        "gamma.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: canary, namespace: default}\n\
         spec:\n  parentRefs: [{group: \"\", kind: Service, name: echo-v1, port: 8080}]\n  rules:\n  \
         - matches: [{headers: [{name: x-canary, value: \"yes\"}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  \
         - backendRefs: [{name: echo-v1, port: 8080}]\n",
    )?;
    // Without traffic capture, the client's sidecar listens on its own address.
    let sidecar = h.render(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: client}\nspec:\n  \
         workloadSelector: {labels: {app: client}}\n  egress: [{bind: \"${ip:client}\", hosts: [\"./*\"]}]\n",
    );
    h.write_config("sidecar-client.yaml", &sidecar)?;
    h.start_spar(&[]).await?;
    for name in ["echo-v1", "echo-v2"] {
        let ip = h.ip(name);
        h.start_echo(name, SocketAddr::new(ip, 8080)).await?;
    }
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let to = SocketAddr::new(client.ip, 8080);
    wait_for(CONVERGE, "the sidecar to route echo-v1's canary to echo-v2", || async {
        http_request(to, "GET", "echo-v1", "/", &[("x-canary", "yes")])
            .await
            .is_ok_and(|r| r.backend() == Some("echo-v2"))
    })
    .await?;
    assert_eq!(http_request(to, "GET", "echo-v1", "/", &[]).await?.backend(), Some("echo-v1"), "no header: v1");
    assert_eq!(
        http_request(to, "GET", "echo-v1.default.svc.cluster.local", "/", &[("x-canary", "yes")]).await?.backend(),
        Some("echo-v2"),
        "the FQDN too"
    );
    // Removing the route gives the Service back its plain route.
    std::fs::remove_file(h.config_dir().join("gamma.yaml"))?;
    wait_for(CONVERGE, "the route's removal to reach the sidecar", || async {
        http_request(to, "GET", "echo-v1", "/", &[("x-canary", "yes")])
            .await
            .is_ok_and(|r| r.backend() == Some("echo-v1"))
    })
    .await?;
    h.check_alive()
}

/// The TLS listeners of a Gateway: HTTPS terminated with a certificate from a Secret of
/// another namespace, which is not served (the listener is not programmed) until a
/// ReferenceGrant lets the Gateway's namespace use it; TLS passthrough by SNI with a
/// TLSRoute, the backend's own certificate reaching the client.
async fn tls_listeners(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gwapi-tls", delta)?.with_security("1h");
    h.load_case("gateway-api")?;
    let server_ca = Pki::new("gateway API server CA")?;
    let backend_ca = Pki::new("passthrough backend CA")?;
    let secure = server_ca.server_cert(&["secure.example.com"])?;
    h.write_config("secret.yaml", &secret_yaml("certs", "secure-cert", Some(&secure), None))?;
    let tls = h.render(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls-gw, namespace: infra}\n\
         spec:\n  gatewayClassName: istio\n  listeners:\n  \
         - {name: https, port: 8443, protocol: HTTPS, hostname: secure.example.com, allowedRoutes: {namespaces: {from: All}},\n     \
         tls: {mode: Terminate, certificateRefs: [{name: secure-cert, namespace: certs}]}}\n  \
         - {name: passthrough, port: 9443, protocol: TLS, hostname: passthrough.example.com, allowedRoutes: {namespaces: {from: All}},\n     \
         tls: {mode: Passthrough}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: secure, namespace: default}\n\
         spec:\n  parentRefs: [{name: tls-gw, namespace: infra}]\n  rules: [{backendRefs: [{name: echo-v1, port: 8080}]}]\n\
         ---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: pass, namespace: default}\n\
         spec:\n  parentRefs: [{name: tls-gw, namespace: infra}]\n  hostnames: [passthrough.example.com]\n  \
         rules: [{backendRefs: [{name: tls-backend, port: 8443}]}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: tls-backend, namespace: default}\n\
         spec: {selector: {app: tls-backend}, ports: [{name: tls, port: 8443}]}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: tls-backend, namespace: default}\n\
         spec: {address: \"${ip:tls-backend}\", labels: {app: tls-backend}}\n",
    );
    h.write_config("tls-gateway.yaml", &tls)?;
    h.start_spar(&[]).await?;
    let ip = h.ip("echo-v1");
    h.start_echo("echo-v1", SocketAddr::new(ip, 8080)).await?;
    let ip = h.ip("tls-backend");
    h.start_echo_tls("tls-backend", SocketAddr::new(ip, 8443), backend_ca.server_cert(&["passthrough.example.com"])?)
        .await?;
    let ip = h.ip("tls-gw");
    let gw = h.start_sidecar(&Pod::gateway("tls-gw", "infra", ip, &[(GATEWAY_NAME, "tls-gw")])).await?;

    // Passthrough: the backend's certificate, not the gateway's.
    let passthrough = SocketAddr::new(gw.ip, 9443);
    wait_for(CONVERGE, "TLS passthrough to the backend", || async {
        tls_request(passthrough, "passthrough.example.com", &backend_ca.ca_pem, "/")
            .await
            .is_ok_and(|r| r.backend() == Some("tls-backend"))
    })
    .await?;
    // Another namespace's certificate without a grant: not served.
    let https = SocketAddr::new(gw.ip, 8443);
    assert!(
        tls_request(https, "secure.example.com", &server_ca.ca_pem, "/").await.is_err(),
        "no ReferenceGrant: the HTTPS listener is not programmed"
    );
    assert!(h.spar_log().contains("not accessible to a Gateway"), "the refusal is logged");
    h.write_config(
        "grant.yaml",
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: certs, namespace: certs}\n\
         spec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]\n  \
         to: [{group: \"\", kind: Secret, name: secure-cert}]\n",
    )?;
    wait_for(CONVERGE, "HTTPS with the granted certificate", || async {
        tls_request(https, "secure.example.com", &server_ca.ca_pem, "/")
            .await
            .is_ok_and(|r| r.backend() == Some("echo-v1"))
    })
    .await?;
    h.check_alive()
}

both_variants_mod!(http, http_route);
both_variants_mod!(tls, tls_listeners);
both_variants_mod!(mesh, gamma);
