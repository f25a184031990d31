//! The quickstart: `spar serve --config examples/quickstart`, three stock Envoy sidecars
//! bootstrapped by `spar bootstrap`, two echo backends, and requests through the
//! frontend's sidecar showing where each one went. Everything it starts stops when it
//! ends or is interrupted (Ctrl-C).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use spar_conformance::{Harness, Pod, http_request, project_root, wait_for};

const FRONTEND: [u8; 4] = [127, 0, 10, 1];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    spar_conformance::until_interrupted(run()).await
}

async fn run() -> anyhow::Result<()> {
    // Delta xDS, as `spar bootstrap` defaults to; `--sotw` for state of the world.
    let delta = !std::env::args().any(|a| a == "--sotw");
    let mut h = Harness::new("quickstart", delta)?;
    h.xds = SocketAddr::new(IpAddr::from([127, 0, 10, 254]), 15010);
    let example = project_root().join("examples/quickstart");
    println!("==> spar serve --config {} --xds-address {}", example.display(), h.xds);
    h.start_spar(&[example]).await.with_context(|| "starting spar (is another quickstart running?)")?;

    let pods = [
        Pod::new("backend-v1", IpAddr::from([127, 0, 10, 2]), &[("app", "backend"), ("version", "v1")]),
        Pod::new("backend-v2", IpAddr::from([127, 0, 10, 3]), &[("app", "backend"), ("version", "v2")]),
        Pod::new("frontend-1", IpAddr::from(FRONTEND), &[("app", "frontend")]),
    ];
    for pod in &pods {
        if pod.name.starts_with("backend") {
            h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
            println!("==> backend {} listening on {}:8080", pod.name, pod.ip);
        }
        h.start_sidecar(pod).await?;
        println!(
            "==> envoy sidecar for {} (admin {}:15000, {} xDS)",
            pod.name,
            pod.ip,
            if delta { "delta" } else { "SotW" }
        );
    }
    let to = SocketAddr::new(IpAddr::from(FRONTEND), 9080);
    wait_for(Duration::from_secs(20), "routes to reach the frontend's sidecar", || async {
        http_request(to, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;

    println!("\n==> 20 requests from frontend-1 to http://backend:9080 (VirtualService: 80% v1, 20% v2)");
    let mut tally = BTreeMap::new();
    for i in 1..=20 {
        let r = http_request(to, "GET", "backend", &format!("/items/{i}"), &[]).await?;
        let who = r.backend().unwrap_or("(no backend)").to_string();
        println!("    GET /items/{i:<2} -> {who} ({})", r.status);
        *tally.entry(who).or_insert(0) += 1;
    }
    println!("\n==> 5 requests with header x-user: tester (VirtualService: always v2)");
    for i in 1..=5 {
        let r = http_request(to, "GET", "backend", &format!("/items/{i}"), &[("x-user", "tester")]).await?;
        println!("    GET /items/{i} x-user=tester -> {} ({})", r.backend().unwrap_or("(no backend)"), r.status);
    }
    println!("\n==> split of the 20 plain requests: {tally:?}");
    println!("==> logs and bootstraps: {}", h.dir.display());
    println!("==> done; stopping spar, the Envoys and the backends");
    Ok(())
}
