//! Gateway conformance: real `spar serve`, real stock Envoys as ingress and egress
//! gateways (node type `router`), real clients and backends. Every case runs over SotW
//! and over delta xDS.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::time::Duration;

use spar_conformance::tls::{Pki, secret_yaml, tls_request, tls_request_as};
use spar_conformance::{Harness, Pod, both_variants_mod, http_request, wait_for};

/// Convergence bound for one config change; generous on purpose (shared machines).
const CONVERGE: Duration = Duration::from_secs(20);

/// Istio's helloworld, httpbin and bookinfo gateway samples, unchanged, on one ingress
/// gateway: three Gateways (ports 80 and 8080, both the pod's 8080 through the
/// ingress Service) merge into one listener and one virtual host.
async fn ingress_samples(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gw-samples", delta)?;
    h.load_case("gateway-samples")?;
    for (fixture, name) in [
        ("samples/helloworld/helloworld.yaml", "helloworld.yaml"),
        ("samples/helloworld/helloworld-gateway.yaml", "helloworld-gateway.yaml"),
        ("samples/httpbin/httpbin.yaml", "httpbin.yaml"),
        ("samples/httpbin/httpbin-gateway.yaml", "httpbin-gateway.yaml"),
        ("samples/bookinfo/platform/kube/bookinfo.yaml", "bookinfo.yaml"),
        ("samples/bookinfo/networking/bookinfo-gateway.yaml", "bookinfo-gateway.yaml"),
    ] {
        h.use_fixture(fixture, name)?;
    }
    h.start_spar(&[]).await?;
    // Backends without sidecars, on their Services' target ports.
    for (name, port) in [("helloworld-v1", 5000), ("httpbin", 8080), ("productpage-v1", 9080)] {
        let ip = h.ip(name);
        h.start_echo(name, SocketAddr::new(ip, port)).await?;
    }
    let ip = h.ip("ingress-gw");
    let gw = h.start_sidecar(&Pod::gateway("ingress-gw", "istio-system", ip, &[("istio", "ingressgateway")])).await?;
    let to = SocketAddr::new(gw.ip, 8080);
    wait_for(CONVERGE, "the ingress gateway to route /productpage", || async {
        http_request(to, "GET", "bookinfo.example.com", "/productpage", &[])
            .await
            .is_ok_and(|r| r.backend() == Some("productpage-v1"))
    })
    .await?;
    for (path, backend) in [
        ("/productpage", "productpage-v1"),
        ("/static/x.css", "productpage-v1"),
        ("/hello", "helloworld-v1"),
        ("/headers", "httpbin"),
    ] {
        let r = http_request(to, "GET", "any.example.com", path, &[]).await?;
        assert_eq!(r.backend(), Some(backend), "{path}: {r:?}");
    }
    // `spar explain` follows the gateway as Envoy does, from the same directory: the
    // Gateway and the VirtualService named, the cluster real requests reach, and a
    // non-zero exit for a request nothing would serve (a port no Gateway opens).
    let explain = |path: &'static str| {
        let (dir, ip) = (h.config_dir(), gw.ip.to_string());
        async move {
            let out = tokio::process::Command::new(spar_conformance::spar_bin()?)
                .args(["explain", "ingress-gw", "--router", "--ip", &ip, "--namespace", "istio-system"])
                .args(["--labels", "istio=ingressgateway", "-o", "json", "--config"])
                .arg(dir)
                .args(["--request", &format!("http://any.example.com{path}")])
                .output()
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            anyhow::Ok((out.status.success(), v))
        }
    };
    let (ok, answer) = explain(":8080/hello").await?;
    assert!(ok, "{answer}");
    assert_eq!(
        answer["explanation"]["clusters"][0]["name"], "outbound|5000||helloworld.default.svc.cluster.local",
        "{answer}"
    );
    let names = |k: &str| answer["policies"][k].to_string();
    assert!(names("gateways").contains("Gateway default/helloworld-gateway"), "{answer}");
    assert!(names("virtual_services").contains("VirtualService default/helloworld"), "{answer}");
    let (ok, answer) = explain(":9999/").await?;
    assert!(!ok && answer["fails"].as_str().is_some_and(|f| f.contains("no listener")), "{answer}");
    let real = http_request(SocketAddr::new(gw.ip, 9999), "GET", "any.example.com", "/", &[]).await;
    assert!(real.is_err(), "nothing listens there: {real:?}");

    // istiod's names: the listener and route config for the pod's port 8080.
    let (_, dump) = gw.admin_get("/config_dump?resource=dynamic_listeners").await?;
    assert!(dump.contains("\"0.0.0.0_8080\"") || dump.contains(&format!("\"{}_8080\"", gw.ip)), "{dump}");
    let (_, routes) = gw.admin_get("/config_dump?resource=dynamic_route_configs").await?;
    assert!(routes.contains("\"http.8080\""), "route config http.8080");
    h.check_alive()
}

/// The ingress Gateway of case `gateway-tls`: HTTPS with a credential, mutual TLS,
/// passthrough by SNI, an HTTPS redirect, TCP, and a server whose credential is missing
/// (left out alone, reported, and served once the Secret appears).
async fn ingress_tls(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gw-tls", delta)?.with_security("1h");
    h.load_case("gateway-tls")?;
    let server_ca = Pki::new("ingress server CA")?;
    let client_ca = Pki::new("ingress client CA")?;
    let passthrough_ca = Pki::new("backend CA")?;
    let secure = server_ca.server_cert(&["secure.example.com", "redirect.example.com"])?;
    let mutual = server_ca.server_cert(&["mutual.example.com"])?;
    h.write_config(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret_yaml("istio-system", "secure-cert", Some(&secure), None),
            secret_yaml("istio-system", "mutual-cert", Some(&mutual), Some(&client_ca.ca_pem)),
        ),
    )?;
    h.start_spar(&[]).await?;
    // web is in the mesh: its sidecar takes mutual TLS only (PeerAuthentication STRICT).
    let web = h.pod("web", &[("app", "web")]);
    let web_seen = h.start_echo("web", SocketAddr::new(web.ip, 18080)).await?;
    h.start_sidecar(&web).await?;
    let tcp = h.ip("tcp-echo");
    h.start_echo("tcp-echo", SocketAddr::new(tcp, 9000)).await?;
    let tls_backend = h.ip("tls-backend");
    h.start_echo_tls(
        "tls-backend",
        SocketAddr::new(tls_backend, 8443),
        passthrough_ca.server_cert(&["passthrough.example.com"])?,
    )
    .await?;
    let ip = h.ip("ingress-gw");
    let gw = h.start_sidecar(&Pod::gateway("ingress-gw", "istio-system", ip, &[("istio", "ingressgateway")])).await?;
    let https = SocketAddr::new(gw.ip, 8443);

    // HTTPS: the client verifies the gateway's certificate from the Secret.
    wait_for(CONVERGE, "HTTPS through the gateway", || async {
        tls_request(https, "secure.example.com", &server_ca.ca_pem, "/").await.is_ok_and(|r| r.backend() == Some("web"))
    })
    .await?;
    // Mutual TLS: refused without a client certificate, served with one from the CA.
    assert!(tls_request(https, "mutual.example.com", &server_ca.ca_pem, "/").await.is_err(), "no client certificate");
    let stranger = Pki::new("someone else")?.client_cert("client.example.com")?;
    assert!(
        tls_request_as(https, "mutual.example.com", &server_ca.ca_pem, Some(&stranger), "/").await.is_err(),
        "client certificate from another CA"
    );
    let client = client_ca.client_cert("client.example.com")?;
    let r = tls_request_as(https, "mutual.example.com", &server_ca.ca_pem, Some(&client), "/").await?;
    assert_eq!(r.backend(), Some("web"));
    // The gateway reached web over mutual TLS with its own identity (web's sidecar says
    // who called in x-forwarded-client-cert).
    let xfcc = web_seen.received().last().and_then(|r| r.headers.get("x-forwarded-client-cert").cloned());
    assert!(
        xfcc.as_deref().is_some_and(|x| x.contains("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway")),
        "gateway identity in XFCC: {xfcc:?}"
    );
    // Passthrough: the backend's own certificate reaches the client (not terminated).
    let r = tls_request(https, "passthrough.example.com", &passthrough_ca.ca_pem, "/").await?;
    assert_eq!(r.backend(), Some("tls-backend"));
    // httpsRedirect on one host; plain HTTP on another.
    let r = http_request(SocketAddr::new(gw.ip, 8080), "GET", "redirect.example.com", "/a?b=1", &[]).await?;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.headers.get("location").map(String::as_str), Some("https://redirect.example.com/a?b=1"));
    let r = http_request(SocketAddr::new(gw.ip, 8080), "GET", "plain.example.com", "/", &[]).await?;
    assert_eq!(r.backend(), Some("web"));
    // TCP.
    let r = http_request(SocketAddr::new(gw.ip, 31400), "GET", "x", "/", &[]).await?;
    assert_eq!(r.backend(), Some("tcp-echo"));

    // The server with the missing credential is left out, with the reason in the log
    // and in the sync status; every other server kept serving (above).
    assert!(tls_request(https, "broken.example.com", &server_ca.ca_pem, "/").await.is_err(), "broken server refused");
    let reason = "credentialName broken-cert: Secret istio-system/broken-cert not found";
    assert!(h.spar_log().contains(reason), "spar log names the server and why:\n{}", h.spar_log());
    let status = h.proxy_status(true).await?;
    assert!(status.contains(reason), "sync status shows it: {status}");
    // The Secret appears: the server is served, the others never stopped.
    h.write_config(
        "broken.yaml",
        &secret_yaml("istio-system", "broken-cert", Some(&server_ca.server_cert(&["broken.example.com"])?), None),
    )?;
    wait_for(CONVERGE, "the repaired server", || async {
        tls_request(https, "broken.example.com", &server_ca.ca_pem, "/").await.is_ok_and(|r| r.backend() == Some("web"))
    })
    .await?;
    let r = tls_request(https, "secure.example.com", &server_ca.ca_pem, "/").await?;
    assert_eq!(r.backend(), Some("web"));
    h.check_alive()
}

/// Istio's egress-gateway pattern, unchanged in shape: a meshed client speaks plain HTTP
/// to an external host; its sidecar sends the request over mutual TLS to the egress
/// gateway, which originates TLS to the external server (its own CA, from a Secret) and
/// logs the call. The mesh is REGISTRY_ONLY: hosts outside the registry are refused.
async fn egress_gateway(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gw-egress", delta)?.with_security("1h");
    h.load_case("gateway-egress")?;
    let external_ca = Pki::new("the internet's CA")?;
    h.write_config("external-ca.yaml", &secret_yaml("istio-system", "external-ca", None, Some(&external_ca.ca_pem)))?;
    // Istio's external-service samples, unchanged, beside the pattern: the client's
    // sidecar must accept them (they route nowhere here: no Internet).
    for f in ["github.yaml", "pypi.yaml", "aptget.yaml"] {
        h.use_fixture(&format!("samples/external/{f}"), &format!("external-{f}"))?;
    }
    let mesh = h.dir.join("mesh.yaml");
    std::fs::write(&mesh, "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")?;
    h.spar_args = vec!["--mesh-config".into(), mesh.display().to_string()];
    h.start_spar(&[]).await?;
    let ext = h.ip("external");
    let external = h
        .start_echo_tls("external", SocketAddr::new(ext, 9443), external_ca.server_cert(&["external.example"])?)
        .await?;
    let ip = h.ip("egress-gw");
    let gw_pod = Pod::gateway("egress-gw", "istio-system", ip, &[("istio", "egressgateway")]);
    h.start_sidecar(&gw_pod).await?;
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let out = SocketAddr::new(client.ip, 8000);
    wait_for(CONVERGE, "the external host through the egress gateway", || async {
        http_request(out, "GET", "external.example", "/status", &[])
            .await
            .is_ok_and(|r| r.backend() == Some("external"))
    })
    .await?;
    let r = http_request(out, "GET", "external.example", "/audit-me", &[]).await?;
    assert_eq!((r.status, r.backend()), (200, Some("external")));
    // The external server saw TLS (it serves nothing else) and the original request.
    assert!(external.received().iter().any(|x| x.path == "/audit-me"));
    // A host outside the registry is refused by the client's sidecar (REGISTRY_ONLY).
    let r = http_request(out, "GET", "elsewhere.example", "/", &[]).await?;
    assert_eq!(r.status, 502, "direct egress blocked: {r:?}");
    // The audit trail: the egress gateway's access log records the call.
    let log_path = h.stdout_path(&gw_pod.name);
    wait_for(CONVERGE, "the egress gateway's access log line", || async {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("/audit-me"))
    })
    .await?;
    // The external samples are in the client's config, and nothing was rejected.
    let (_, listeners) = client.admin_get("/config_dump?resource=dynamic_listeners").await?;
    for host in ["github.com", "pypi.org", "files.pythonhosted.org"] {
        assert!(listeners.contains(&format!("\"{host}\"")), "SNI chain for {host}");
    }
    let (_, clusters) = client.admin_get("/config_dump?resource=dynamic_active_clusters").await?;
    assert!(clusters.contains("outbound|80||deb.debian.org"), "aptget sample cluster");
    let status = h.proxy_status(true).await?;
    let parsed: serde_json::Value = serde_json::from_str(&status)?;
    let nacks: Vec<&serde_json::Value> = parsed
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["types"].as_object().into_iter().flat_map(|t| t.values()))
        .map(|t| &t["nack"])
        .filter(|n| !n.is_null())
        .collect();
    assert!(nacks.is_empty(), "no proxy rejected anything: {status}");
    let log = std::fs::read_to_string(&log_path)?;
    let line = log.lines().find(|l| l.contains("/audit-me")).unwrap_or_default();
    assert!(line.contains("\"GET /audit-me HTTP/2\" 200"), "the sidecar speaks HTTP/2 to the gateway: {line}");
    assert!(line.contains("outbound|9443||external.example"), "names the external cluster: {line}");
    assert!(line.contains("\"external.example\""), "names the external host: {line}");
    h.check_alive()
}

/// Every proxy becomes ready with nothing to serve, as under istiod: a gateway that no
/// Gateway selects yet and a sidecar with no services. Envoy's initial fetch of each
/// type waits for one answer, so an empty one must be sent (over delta it once was
/// not, and a gateway deployed before its routes never became ready). The Gateway
/// written afterwards is then served.
async fn ready_with_nothing_to_serve(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("gw-empty", delta)?;
    h.load_case("gateway-samples")?;
    h.use_fixture("samples/helloworld/helloworld.yaml", "helloworld.yaml")?;
    // A sidecar whose Sidecar resource lets it see no service at all.
    h.write_config(
        "lonely.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: lonely}\nspec:\n  \
         workloadSelector: {labels: {app: lonely}}\n  egress: [{hosts: [\"./nothing.example\"]}]\n",
    )?;
    h.start_spar(&[]).await?;
    let ip = h.ip("helloworld-v1");
    h.start_echo("helloworld-v1", SocketAddr::new(ip, 5000)).await?;
    let lonely = h.pod("lonely", &[("app", "lonely")]);
    h.start_sidecar(&lonely).await.context("a sidecar with no services is ready")?;
    let ip = h.ip("ingress-gw");
    let gw = Pod::gateway("ingress-gw", "istio-system", ip, &[("istio", "ingressgateway")]);
    let gw = h.start_sidecar(&gw).await.context("a gateway that no Gateway selects is ready")?;
    let (_, listeners) = gw.admin_get("/config_dump?resource=dynamic_listeners").await?;
    assert!(!listeners.contains("0.0.0.0_8080"), "no Gateway, no listener: {listeners}");

    h.use_fixture("samples/helloworld/helloworld-gateway.yaml", "helloworld-gateway.yaml")?;
    let to = SocketAddr::new(gw.ip, 8080);
    wait_for(CONVERGE, "the Gateway written afterwards to route /hello", || async {
        http_request(to, "GET", "any.example.com", "/hello", &[])
            .await
            .is_ok_and(|r| r.backend() == Some("helloworld-v1"))
    })
    .await?;
    h.check_alive()
}

both_variants_mod!(samples, ingress_samples);
both_variants_mod!(ready_empty, ready_with_nothing_to_serve);
both_variants_mod!(tls, ingress_tls);
both_variants_mod!(egress, egress_gateway);
