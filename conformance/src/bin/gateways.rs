//! The gateways demo: `spar serve --config examples/gateways` with its CA, an ingress
//! gateway (HTTP redirected to HTTPS, HTTPS with a certificate from a Secret), and an
//! egress gateway through which an app reaches an external HTTPS server, with the
//! egress gateway's access log as the audit trail. All stock Envoy, all real traffic.
//! Everything it starts stops when it ends or is interrupted (Ctrl-C).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use spar_conformance::tls::{Pki, secret_yaml, tls_request};
use spar_conformance::{Harness, Pod, http_request, project_root, wait_for};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 11, last])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    spar_conformance::until_interrupted(run()).await
}

async fn run() -> anyhow::Result<()> {
    // Delta xDS, as `spar bootstrap` defaults to; `--sotw` for state of the world.
    let delta = !std::env::args().any(|a| a == "--sotw");
    let mut h = Harness::new("gateways-demo", delta)?.with_security("1h");
    h.xds = SocketAddr::new(ip(254), 15010);
    let example = project_root().join("examples/gateways");
    // The certificates the operator would keep in Secrets: the ingress's serving
    // certificate, and the CA the external server's certificate comes from.
    let ingress_ca = Pki::new("demo ingress CA")?;
    let internet_ca = Pki::new("demo internet CA")?;
    h.write_config(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret_yaml("istio-system", "web-cert", Some(&ingress_ca.server_cert(&["web.example.com"])?), None),
            secret_yaml("istio-system", "external-ca", None, Some(&internet_ca.ca_pem)),
        ),
    )?;
    h.spar_args = vec!["--mesh-config".into(), example.join("mesh-config.yaml").display().to_string()];
    println!(
        "==> spar serve --config {} --mesh-config {}/mesh-config.yaml (CA on)",
        example.display(),
        example.display()
    );
    h.start_spar(&[example]).await.context("starting spar (is another demo running?)")?;

    h.start_echo("web", SocketAddr::new(ip(2), 9080)).await?;
    h.start_echo_tls("external", SocketAddr::new(ip(5), 9443), internet_ca.server_cert(&["external.example"])?).await?;
    println!("==> backends: web on {}:9080, an external HTTPS server on {}:9443 (its own CA)", ip(2), ip(5));
    let ingress = Pod::gateway("ingress-gw", "istio-system", ip(1), &[("istio", "ingressgateway")]);
    let egress = Pod::gateway("egress-gw", "istio-system", ip(4), &[("istio", "egressgateway")]);
    let app = Pod::new("app-1", ip(3), &[("app", "app")]);
    for pod in [&ingress, &egress, &app] {
        h.start_sidecar(pod).await?;
        let kind = if pod.gateway { "gateway" } else { "sidecar" };
        println!("==> envoy {kind} {} on {} (admin :15000)", pod.name, pod.ip);
    }

    println!("\n==> ingress: http://web.example.com via {}:8080 (server port 80 -> pod port 8080)", ip(1));
    let http = SocketAddr::new(ip(1), 8080);
    let r = http_request(http, "GET", "web.example.com", "/hello", &[]).await?;
    println!("    GET /hello -> {} location: {}", r.status, r.headers.get("location").map_or("-", String::as_str));
    println!("==> ingress: https://web.example.com via {}:8443, verifying the gateway's certificate", ip(1));
    let https = SocketAddr::new(ip(1), 8443);
    wait_for(Duration::from_secs(20), "HTTPS at the ingress gateway", || async {
        tls_request(https, "web.example.com", &ingress_ca.ca_pem, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    for path in ["/hello", "/api/items"] {
        let r = tls_request(https, "web.example.com", &ingress_ca.ca_pem, path).await?;
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let seen = body["path"].as_str().unwrap_or("?").to_string();
        println!("    GET {path} -> {} from {} (backend saw {seen})", r.status, r.backend().unwrap_or("?"));
    }

    println!("\n==> egress: the app calls http://external.example:8000 in plain HTTP");
    let out = SocketAddr::new(ip(3), 8000);
    wait_for(Duration::from_secs(20), "the egress route", || async {
        http_request(out, "GET", "external.example", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let r = http_request(out, "GET", "external.example", "/orders", &[]).await?;
    println!(
        "    GET /orders -> {} from {} (over mTLS to the egress gateway, TLS from there)",
        r.status,
        r.backend().unwrap_or("?")
    );
    let r = http_request(out, "GET", "elsewhere.example", "/", &[]).await?;
    println!("    GET http://elsewhere.example/ -> {} (REGISTRY_ONLY: not in the registry)", r.status);
    let log = h.stdout_path(&egress.name);
    wait_for(Duration::from_secs(5), "the access log", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("/orders"))
    })
    .await?;
    println!("==> the egress gateway's access log (audit trail):");
    for line in std::fs::read_to_string(&log)?.lines().filter(|l| l.contains("/orders")) {
        println!("    {line}");
    }
    println!("\n==> logs and bootstraps: {}", h.dir.display());
    println!("==> done; stopping spar, the Envoys and the backends");
    Ok(())
}
