//! Traffic-management conformance: VirtualService actions and DestinationRule traffic
//! policies, proven with real requests through stock Envoy. Each case runs over SotW and
//! delta.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spar_conformance::echo::{EchoOptions, EchoState};
use spar_conformance::{Envoy, Harness, HttpResponse, both_variants_mod, http_request, tally, wait_for};

const CONVERGE: Duration = Duration::from_secs(20);

/// The `traffic` case mesh (client + backend v1/v2) plus `routes` as routes.yaml.
struct Mesh {
    h: Harness,
    client: Envoy,
    v1: Arc<EchoState>,
    v2: Arc<EchoState>,
}

impl Mesh {
    async fn start(name: &str, delta: bool, routes: &str, v1: EchoOptions) -> anyhow::Result<Self> {
        let mut h = Harness::new(name, delta)?;
        h.load_case("traffic")?;
        h.write_config("routes.yaml", routes)?;
        if !routes.contains("kind: DestinationRule") {
            // Subsets v1 and v2, no traffic policy.
            h.write_config("destination-rule.yaml", &dr("    {}"))?;
        }
        h.start_spar(&[]).await?;
        let mut states = Vec::new();
        for (v, opts) in [("v1", v1), ("v2", EchoOptions::default())] {
            let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
            states.push(h.start_echo_with(&pod.name, SocketAddr::new(pod.ip, 8080), opts).await?);
            h.start_sidecar(&pod).await?;
        }
        let client = h.pod("client", &[("app", "client")]);
        let client = h.start_sidecar(&client).await?;
        let v2 = states.pop().unwrap_or_default();
        let v1 = states.pop().unwrap_or_default();
        let m = Self { h, client, v1, v2 };
        // Routes are in place once the backend answers through the client's sidecar.
        wait_for(CONVERGE, "routes to converge", || async {
            m.get("/ready-check", &[]).await.is_ok_and(|r| r.status != 404 && r.status != 503)
        })
        .await?;
        Ok(m)
    }

    fn to(&self) -> SocketAddr {
        SocketAddr::new(self.client.ip, 9080)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
        http_request(self.to(), "GET", "backend", path, headers).await
    }
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n{http}"
    )
}

fn dr(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: backend}}\nspec:\n  host: backend\n  trafficPolicy:\n{traffic_policy}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    )
}

fn body_json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_default()
}

async fn redirect_direct_response_rewrite(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: other.example, redirectCode: 302}
  - match: [{uri: {prefix: /static}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v1/, authority: internal.example}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{uri: {prefix: /re/}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/regex/\\1"}}
    route: [{destination: {host: backend, subset: v1}}]
  - route: [{destination: {host: backend, subset: v2}}]
"#);
    let mut m = Mesh::start("redirect", delta, &routes, EchoOptions::default()).await?;
    let r = m.get("/old/page", &[]).await?;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers.get("location").map(String::as_str), Some("http://other.example/new"));
    let r = m.get("/static/x", &[]).await?;
    assert_eq!((r.status, r.body.as_str()), (418, "teapot"));
    let r = m.get("/api/items?q=1", &[]).await?;
    assert_eq!(r.backend(), Some("backend-v1"));
    let seen = body_json(&r);
    assert_eq!(seen["path"], "/v1/items?q=1");
    assert_eq!(seen["headers"]["host"], "internal.example");
    let r = m.get("/re/abc", &[]).await?;
    assert_eq!(body_json(&r)["path"], "/regex/abc");
    assert!(m.v2.received().is_empty() || m.v2.received().iter().all(|q| q.path == "/ready-check"));
    m.h.check_alive()
}

async fn header_manipulation(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - headers:
      request: {set: {x-set: "yes"}, add: {x-added: "1"}, remove: [x-secret]}
      response: {set: {x-resp: "set"}, remove: [x-echo-remove-me]}
    route:
    - destination: {host: backend, subset: v2}
      headers: {request: {set: {x-dest: v2}}, response: {add: {x-dest-resp: v2}}}
"#);
    let mut m = Mesh::start("headers", delta, &routes, EchoOptions::default()).await?;
    let r = m.get("/", &[("x-secret", "hunter2"), ("x-set", "client")]).await?;
    let seen = &body_json(&r)["headers"];
    assert_eq!(seen["x-set"], "yes", "set overwrites: {seen}");
    assert_eq!(seen["x-added"], "1");
    assert_eq!(seen["x-dest"], "v2", "per-destination header");
    assert!(seen.get("x-secret").is_none(), "removed: {seen}");
    assert_eq!(r.headers.get("x-resp").map(String::as_str), Some("set"));
    assert_eq!(r.headers.get("x-dest-resp").map(String::as_str), Some("v2"));
    m.h.check_alive()
}

async fn timeouts_and_retries(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - match: [{uri: {prefix: /slow}}]
    timeout: 300ms
    route: [{destination: {host: backend, subset: v1}}]
  - retries: {attempts: 3, retryOn: "5xx"}
    route: [{destination: {host: backend, subset: v1}}]
"#);
    let mut m = Mesh::start("retries", delta, &routes, EchoOptions::default()).await?;
    let t = Instant::now();
    let r = m.get("/slow", &[("x-echo-delay-ms", "3000")]).await?;
    assert_eq!(r.status, 504, "route timeout");
    assert!(t.elapsed() < Duration::from_millis(2500), "timed out by Envoy, not the backend: {:?}", t.elapsed());
    // Fails twice, then succeeds: the client sees 200 after 3 attempts.
    let r = m.get("/flaky", &[("x-echo-fail", "2"), ("x-echo-key", "a")]).await?;
    assert_eq!(r.status, 200);
    assert_eq!(body_json(&r)["headers"]["x-envoy-attempt-count"], "3");
    // Fails five times: 1 try + 3 retries all fail.
    let r = m.get("/flaky", &[("x-echo-fail", "5"), ("x-echo-key", "b")]).await?;
    assert_eq!(r.status, 503);
    let tries = m.v1.received().iter().filter(|q| q.headers.get("x-echo-key").map(String::as_str) == Some("b")).count();
    assert_eq!(tries, 4);
    m.h.check_alive()
}

/// A retry policy every route of a host shares is set once on the virtual host (Spar's
/// compact form of istiod's per-route policy), and Envoy still retries each route's
/// requests by it.
async fn retries_shared_by_every_route(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - match: [{uri: {prefix: /a}}]
    retries: {attempts: 3, retryOn: "5xx"}
    route: [{destination: {host: backend, subset: v1}}]
  - retries: {attempts: 3, retryOn: "5xx"}
    route: [{destination: {host: backend, subset: v1}}]
"#);
    let mut m = Mesh::start("shared-retries", delta, &routes, EchoOptions::default()).await?;
    // Envoy holds the policy on the virtual host, not on the routes.
    let (_, dump) = m.client.admin_get("/config_dump?resource=dynamic_route_configs").await?;
    let dump: serde_json::Value = serde_json::from_str(&dump)?;
    let hosts = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["route_config"]["virtual_hosts"].as_array().cloned().unwrap_or_default());
    let backend = hosts
        .into_iter()
        .find(|v| v["name"] == "backend.default.svc.cluster.local:9080")
        .ok_or_else(|| anyhow::anyhow!("no backend virtual host in {dump}"))?;
    assert_eq!(backend["retry_policy"]["num_retries"], 3, "{backend}");
    for r in backend["routes"].as_array().into_iter().flatten() {
        assert!(r["route"].get("retry_policy").is_none(), "{r}");
    }
    // Fails twice, then succeeds, on either route.
    for (path, key) in [("/a/flaky", "a"), ("/flaky", "b")] {
        let r = m.get(path, &[("x-echo-fail", "2"), ("x-echo-key", key)]).await?;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(body_json(&r)["headers"]["x-envoy-attempt-count"], "3", "{path}");
    }
    // 1 try + 3 retries, all failing.
    let r = m.get("/a/flaky", &[("x-echo-fail", "5"), ("x-echo-key", "c")]).await?;
    assert_eq!(r.status, 503);
    let tries = m.v1.received().iter().filter(|q| q.headers.get("x-echo-key").map(String::as_str) == Some("c")).count();
    assert_eq!(tries, 4);
    m.h.check_alive()
}

async fn fault_injection(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{headers: {x-fault: {exact: delay}}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: backend, subset: v1}}]
  - route: [{destination: {host: backend, subset: v1}}]
"#);
    let mut m = Mesh::start("fault", delta, &routes, EchoOptions::default()).await?;
    let before = m.v1.received().len();
    let r = m.get("/", &[("x-fault", "abort")]).await?;
    assert_eq!(r.status, 418);
    assert_eq!(m.v1.received().len(), before, "aborted requests never reach the backend");
    let t = Instant::now();
    let r = m.get("/", &[("x-fault", "delay")]).await?;
    assert_eq!(r.status, 200);
    // Envoy's timers are coarse (a few ms); an undelayed request takes about 1 ms.
    assert!(t.elapsed() >= Duration::from_millis(350), "delayed: {:?}", t.elapsed());
    m.h.check_alive()
}

async fn mirroring(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - route: [{destination: {host: backend, subset: v1}}]
    mirror: {host: backend, subset: v2}
    mirrorPercentage: {value: 100}
"#);
    let mut m = Mesh::start("mirror", delta, &routes, EchoOptions::default()).await?;
    let r = m.get("/mirrored/1", &[]).await?;
    assert_eq!(r.backend(), Some("backend-v1"));
    wait_for(Duration::from_secs(5), "the mirror to receive the request", || async {
        m.v2.received().iter().any(|q| q.path == "/mirrored/1")
    })
    .await?;
    let shadow = m.v2.received().into_iter().find(|q| q.path == "/mirrored/1").map(|q| q.headers).unwrap_or_default();
    assert_eq!(shadow.get("host").map(String::as_str), Some("backend-shadow"), "Envoy marks shadowed requests");
    m.h.check_alive()
}

async fn cors_preflight(delta: bool) -> anyhow::Result<()> {
    let routes = vs(r#"  - corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 24h
    route: [{destination: {host: backend, subset: v1}}]
"#);
    let mut m = Mesh::start("cors", delta, &routes, EchoOptions::default()).await?;
    let pre = |origin: &'static str| {
        let to = m.to();
        async move {
            http_request(
                to,
                "OPTIONS",
                "backend",
                "/",
                &[("origin", origin), ("access-control-request-method", "POST")],
            )
            .await
        }
    };
    let r = pre("https://example.com").await?;
    assert_eq!(r.headers.get("access-control-allow-origin").map(String::as_str), Some("https://example.com"), "{r:?}");
    assert!(r.headers.get("access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert_eq!(r.headers.get("access-control-max-age").map(String::as_str), Some("86400"));
    let r = pre("https://evil.example").await?;
    assert!(!r.headers.contains_key("access-control-allow-origin"), "{r:?}");
    m.h.check_alive()
}

async fn consistent_hash(delta: bool) -> anyhow::Result<()> {
    let routes = dr("    loadBalancer: {consistentHash: {httpHeaderName: x-user}}");
    let mut m = Mesh::start("hash", delta, &routes, EchoOptions::default()).await?;
    for user in ["alice", "bob", "carol"] {
        let counts = tally(m.to(), "backend", "/", &[("x-user", user)], 20).await?;
        assert_eq!(counts.len(), 1, "{user} sticks to one backend: {counts:?}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        if let Some(b) = m.get("/", &[("x-user", &user)]).await?.backend() {
            seen.insert(b.to_string());
        }
    }
    assert_eq!(seen.len(), 2, "different users spread over both backends: {seen:?}");
    m.h.check_alive()
}

async fn outlier_ejection(delta: bool) -> anyhow::Result<()> {
    let routes = dr(
        "    outlierDetection: {consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 100}",
    );
    // v1 always answers 500.
    let mut m = Mesh::start("outlier", delta, &routes, EchoOptions { status: Some(500) }).await?;
    wait_for(CONVERGE, "the failing endpoint to be ejected", || async {
        tally(m.to(), "backend", "/", &[], 10).await.is_ok_and(|c| c.get("backend-v2") == Some(&10))
    })
    .await?;
    let counts = tally(m.to(), "backend", "/", &[], 30).await?;
    assert_eq!(counts.get("backend-v2"), Some(&30), "{counts:?}");
    assert!(
        m.client
            .stat("cluster.outbound|9080||backend.default.svc.cluster.local.outlier_detection.ejections_active")
            .await?
            >= 1
    );
    m.h.check_alive()
}

async fn connection_pool_overflow(delta: bool) -> anyhow::Result<()> {
    let routes = format!(
        "{}---\n{}",
        dr(
            "    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}"
        ),
        vs("  - retries: {attempts: 0}\n    route: [{destination: {host: backend, subset: v1}}]\n")
    );
    let mut m = Mesh::start("pool", delta, &routes, EchoOptions::default()).await?;
    let to = m.to();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            http_request(to, "GET", "backend", "/", &[("x-echo-delay-ms", "700")]).await
        }));
    }
    let mut overflowed = 0;
    let mut ok = 0;
    for t in tasks {
        let r = t.await??;
        if r.status == 503 && r.headers.contains_key("x-envoy-overloaded") {
            overflowed += 1;
        } else if r.status == 200 {
            ok += 1;
        }
    }
    assert!(
        ok >= 1 && overflowed >= 1,
        "expected some requests served and some rejected by the pool: ok={ok} overflowed={overflowed}"
    );
    m.h.check_alive()
}

both_variants_mod!(redirect_direct_response_rewrite, redirect_direct_response_rewrite);
both_variants_mod!(header_manipulation, header_manipulation);
both_variants_mod!(timeouts_and_retries, timeouts_and_retries);
both_variants_mod!(retries_shared_by_every_route, retries_shared_by_every_route);
both_variants_mod!(fault_injection, fault_injection);
both_variants_mod!(mirroring, mirroring);
both_variants_mod!(cors_preflight, cors_preflight);
both_variants_mod!(consistent_hash, consistent_hash);
both_variants_mod!(outlier_ejection, outlier_ejection);
both_variants_mod!(connection_pool_overflow, connection_pool_overflow);

/// Opaque TCP through `tcp_proxy` on both sides, split by a VirtualService `tcp` rule
/// (HTTP requests are used as the payload only to learn which backend answered).
async fn tcp_routing(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("tcp", delta)?;
    h.load_case("tcp")?;
    h.start_spar(&[]).await?;
    for v in ["v1", "v2"] {
        let pod = h.pod(&format!("echo-{v}"), &[("app", "echo"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        h.start_sidecar(&pod).await?;
    }
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let to = SocketAddr::new(client.ip, 9000);
    wait_for(CONVERGE, "TCP routes", || async {
        http_request(to, "GET", "any", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let n = 200;
    let counts = tally(to, "any", "/", &[], n).await?;
    let v2 = counts.get("echo-v2").copied().unwrap_or(0);
    assert_eq!(counts.get("echo-v1").copied().unwrap_or(0) + v2, n, "{counts:?}");
    // Binomial(200, 0.8): mean 160, sd ~5.7; ±4 sd.
    assert!((137..=183).contains(&v2), "expected about 160 of {n} on v2: {counts:?}");
    h.check_alive()
}

both_variants_mod!(tcp, tcp_routing);

/// REGISTRY_ONLY: hosts outside the registry are refused (502 from `block_all`) while
/// registered services keep working.
async fn registry_only(delta: bool) -> anyhow::Result<()> {
    let routes = vs("  - route: [{destination: {host: backend, subset: v1}}]\n");
    let mut m = Mesh::start("registry-only", delta, &routes, EchoOptions::default()).await?;
    let ip = m.client.ip;
    m.h.write_config(
        "sidecar-client.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: client}}\nspec:\n  workloadSelector: {{labels: {{app: client}}}}\n  egress: [{{bind: \"{ip}\", hosts: [\"./*\"]}}]\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
        ),
    )?;
    wait_for(CONVERGE, "unknown hosts to be refused", || async {
        http_request(m.to(), "GET", "unknown.example.com", "/", &[]).await.is_ok_and(|r| r.status == 502)
    })
    .await?;
    assert_eq!(m.get("/", &[]).await?.backend(), Some("backend-v1"), "registered services still work");
    m.h.check_alive()
}

/// A Sidecar's egress hosts shrink what a proxy receives: with 40 services in the mesh,
/// a client that imports only `./backend` holds a handful of clusters.
async fn sidecar_scoping(delta: bool) -> anyhow::Result<()> {
    let mut extra = String::new();
    for i in 0..40 {
        extra.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"));
    }
    let mut m = Mesh::start("scoping", delta, &extra, EchoOptions::default()).await?;
    let full = m.client.stat("cluster_manager.active_clusters").await?;
    let ip = m.client.ip;
    m.h.write_config(
        "sidecar-client.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: client}}\nspec:\n  workloadSelector: {{labels: {{app: client}}}}\n  egress: [{{bind: \"{ip}\", hosts: [\"./backend.default.svc.cluster.local\"]}}]\n"
        ),
    )?;
    let client = m.client.clone();
    wait_for(CONVERGE, "the scoped config", || async {
        client.stat("cluster_manager.active_clusters").await.is_ok_and(|n| n < 10)
    })
    .await?;
    let scoped = client.stat("cluster_manager.active_clusters").await?;
    assert!(full >= 40 + 3 && scoped < 10, "clusters: {full} unscoped, {scoped} scoped");
    assert_eq!(m.get("/", &[]).await?.status, 200, "the imported service still works");
    m.h.check_alive()
}

both_variants_mod!(registry, registry_only);
both_variants_mod!(scoping, sidecar_scoping);

/// TLS to external services: passed through and routed by SNI, and originated by the
/// sidecar for plain-HTTP clients (DestinationRule `tls.mode: SIMPLE`, CA from a file).
async fn tls_sni_and_origination(delta: bool) -> anyhow::Result<()> {
    use spar_conformance::tls::{Pki, tls_request};
    let mut h = Harness::new("tls", delta)?;
    h.load_case("tls")?;
    let pki = Pki::new("conformance CA")?;
    let ca_file = pki.write_ca(&h.dir, "ca.pem")?;
    h.write_config(
        "origination.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.example.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: \"{}\", sni: secure.example.com}}\n",
            ca_file.display()
        ),
    )?;
    h.start_spar(&[]).await?;
    let a = h.ip("tls-a");
    let b = h.ip("tls-b");
    h.start_echo_tls("tls-a", SocketAddr::new(a, 8443), pki.server_cert(&["a.example.com", "secure.example.com"])?)
        .await?;
    h.start_echo_tls("tls-b", SocketAddr::new(b, 8443), pki.server_cert(&["b.example.com"])?).await?;
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let tls_port = SocketAddr::new(client.ip, 9443);
    wait_for(CONVERGE, "SNI routes", || async {
        tls_request(tls_port, "a.example.com", &pki.ca_pem, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    for (sni, who) in [("a.example.com", "tls-a"), ("b.example.com", "tls-b"), ("a.example.com", "tls-a")] {
        let r = tls_request(tls_port, sni, &pki.ca_pem, "/").await?;
        assert_eq!(r.backend(), Some(who), "SNI {sni}");
    }
    // Plain HTTP in, TLS out: the backend only speaks TLS.
    let http_port = SocketAddr::new(client.ip, 9081);
    wait_for(CONVERGE, "TLS origination", || async {
        http_request(http_port, "GET", "secure.example.com", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let r = http_request(http_port, "GET", "secure.example.com", "/originated", &[]).await?;
    assert_eq!((r.status, r.backend()), (200, Some("tls-a")));
    assert_eq!(body_json(&r)["path"], "/originated");
    // With a CA that did not sign the server's certificate, the handshake fails.
    let other = Pki::new("another CA")?;
    let other_ca = other.write_ca(&h.dir, "other-ca.pem")?;
    h.write_config(
        "origination.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.example.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: \"{}\", sni: secure.example.com}}\n",
            other_ca.display()
        ),
    )?;
    wait_for(CONVERGE, "verification against the wrong CA to fail", || async {
        http_request(http_port, "GET", "secure.example.com", "/", &[]).await.is_ok_and(|r| r.status == 503)
    })
    .await?;
    h.check_alive()
}

both_variants_mod!(tls, tls_sni_and_origination);

/// Delegation: the root VirtualService hands `/v2` to a delegate whose rules apply under
/// the root's match.
async fn delegate_virtual_service(delta: bool) -> anyhow::Result<()> {
    let routes = format!(
        "{}---\n{}",
        vs(r#"  - match: [{uri: {prefix: /v2}}]
    delegate: {name: backend-v2-routes}
  - route: [{destination: {host: backend, subset: v1}}]
"#),
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-v2-routes}
spec:
  http:
  - match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route: [{destination: {host: backend, subset: v1}, headers: {request: {set: {x-delegated: "yes"}}}}]
"#
    );
    let mut m = Mesh::start("delegate", delta, &routes, EchoOptions::default()).await?;
    assert_eq!(m.get("/v2/a", &[("x-user", "tester")]).await?.backend(), Some("backend-v2"));
    let r = m.get("/v2/a", &[]).await?;
    assert_eq!(
        (r.backend(), &body_json(&r)["headers"]["x-delegated"]),
        (Some("backend-v1"), &serde_json::json!("yes"))
    );
    let r = m.get("/other", &[("x-user", "tester")]).await?;
    assert_eq!(r.backend(), Some("backend-v1"), "the delegate's match applies only under /v2");
    assert!(body_json(&r)["headers"].get("x-delegated").is_none());
    m.h.check_alive()
}

both_variants_mod!(delegate, delegate_virtual_service);

/// Istio's helloworld, httpbin and tcp-echo Services unchanged, plus helloworld's
/// gateway-bound VirtualService (which must not change sidecar routing).
async fn istio_samples(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("samples", delta)?;
    h.load_case("samples")?;
    h.use_fixture("samples/helloworld/helloworld.yaml", "helloworld.yaml")?;
    h.use_fixture("samples/helloworld/helloworld-gateway.yaml", "helloworld-gateway.yaml")?;
    h.use_fixture("samples/httpbin/httpbin.yaml", "httpbin.yaml")?;
    h.use_fixture("samples/tcp-echo/tcp-echo-services.yaml", "tcp-echo-services.yaml")?;
    h.start_spar(&[]).await?;
    for (name, labels, app_port) in [
        ("helloworld-v1", [("app", "helloworld"), ("version", "v1")], 8080),
        ("helloworld-v2", [("app", "helloworld"), ("version", "v2")], 8080),
        ("httpbin", [("app", "httpbin"), ("version", "v1")], 18080),
        ("tcp-echo", [("app", "tcp-echo"), ("version", "v1")], 8080),
    ] {
        let pod = h.pod(name, &labels);
        h.start_echo(name, SocketAddr::new(pod.ip, app_port)).await?;
        h.start_sidecar(&pod).await?;
    }
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let hello = SocketAddr::new(client.ip, 5000);
    wait_for(CONVERGE, "helloworld", || async {
        http_request(hello, "GET", "helloworld", "/hello", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let counts = tally(hello, "helloworld", "/hello", &[], 40).await?;
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["helloworld-v1", "helloworld-v2"],
        "both versions serve: {counts:?}"
    );
    let r = http_request(SocketAddr::new(client.ip, 8000), "GET", "httpbin:8000", "/headers", &[]).await?;
    assert_eq!(r.backend(), Some("httpbin"), "httpbin through targetPort 8080");
    let r = http_request(SocketAddr::new(client.ip, 9000), "GET", "x", "/", &[]).await?;
    assert_eq!(r.backend(), Some("tcp-echo"), "tcp-echo over TCP");
    h.check_alive()
}

both_variants_mod!(samples, istio_samples);

/// Locality-aware load balancing (DestinationRule with outlier detection): a client in
/// r1/z1 stays in its zone while the local endpoint is healthy and fails over to the
/// other region when it is ejected.
async fn locality_failover(delta: bool) -> anyhow::Result<()> {
    for local_fails in [false, true] {
        let mut h = Harness::new(if local_fails { "locality-failover" } else { "locality" }, delta)?;
        let (v1, v2) = (h.ip("backend-v1"), h.ip("backend-v2"));
        // The case's client Sidecar; the mesh below replaces its mesh.yaml.
        h.load_case("traffic")?;
        h.write_config(
            "mesh.yaml",
            &format!(
                r#"apiVersion: v1
kind: Service
metadata: {{name: backend}}
spec: {{selector: {{app: backend}}, ports: [{{name: http, port: 9080}}]}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-v1}}
spec: {{address: "{v1}", labels: {{app: backend, version: v1}}, locality: r1/z1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-v2}}
spec: {{address: "{v2}", labels: {{app: backend, version: v2}}, locality: r2/z2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: backend}}
spec:
  workloadSelector: {{labels: {{app: backend}}}}
  ingress: [{{port: {{number: 9080, protocol: HTTP, name: http}}, defaultEndpoint: "0.0.0.0:8080"}}]
  egress: [{{hosts: ["~/*"]}}]
"#
            ),
        )?;
        h.start_spar(&[]).await?;
        for (v, ip) in [("v1", v1), ("v2", v2)] {
            let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
            let status = (local_fails && v == "v1").then_some(500);
            h.start_echo_with(&pod.name, SocketAddr::new(ip, 8080), EchoOptions { status }).await?;
            h.start_sidecar(&pod).await?;
        }
        let mut client = h.pod("client", &[("app", "client")]);
        client.locality = "r1/z1".into();
        let client = h.start_sidecar(&client).await?;
        let to = SocketAddr::new(client.ip, 9080);
        let want = if local_fails { "backend-v2" } else { "backend-v1" };
        wait_for(CONVERGE, &format!("all traffic on {want}"), || async {
            tally(to, "backend", "/", &[], 10).await.is_ok_and(|c| c.get(want) == Some(&10))
        })
        .await?;
        let counts = tally(to, "backend", "/", &[], 40).await?;
        assert_eq!(counts.get(want), Some(&40), "local_fails={local_fails}: {counts:?}");
        h.check_alive()?;
    }
    Ok(())
}

both_variants_mod!(locality, locality_failover);

/// A DestinationRule with a workloadSelector applies to the workloads it selects (here:
/// the client, for which subset `v1` means version v2), ahead of the namespace's rule.
async fn destination_rule_workload_selector(delta: bool) -> anyhow::Result<()> {
    let routes = format!(
        "{}---\n{}---\n{}",
        vs("  - route: [{destination: {host: backend, subset: v1}}]\n"),
        dr("    {}"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend-for-client}\nspec:\n  host: backend\n  workloadSelector: {matchLabels: {app: client}}\n  subsets:\n  - {name: v1, labels: {version: v2}}\n"
    );
    let mut m = Mesh::start("dr-selector", delta, &routes, EchoOptions::default()).await?;
    let counts = tally(m.to(), "backend", "/", &[], 10).await?;
    assert_eq!(counts.get("backend-v2"), Some(&10), "the selected client uses its own rule: {counts:?}");
    // Another workload in the namespace gets the namespace's rule.
    let other = m.h.pod("other", &[("app", "other")]);
    m.h.write_config(
        "sidecar-other.yaml",
        &format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: other}}\nspec:\n  workloadSelector: {{labels: {{app: other}}}}\n  egress: [{{bind: \"{}\", hosts: [\"./*\"]}}]\n", other.ip),
    )?;
    let other = m.h.start_sidecar(&other).await?;
    let to = SocketAddr::new(other.ip, 9080);
    wait_for(CONVERGE, "the other workload's routes", || async {
        http_request(to, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let counts = tally(to, "backend", "/", &[], 10).await?;
    assert_eq!(counts.get("backend-v1"), Some(&10), "{counts:?}");
    m.h.check_alive()
}

both_variants_mod!(dr_workload_selector, destination_rule_workload_selector);
