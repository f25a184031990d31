//! `spar explain` against the real thing: the quickstart (examples/quickstart) served by
//! `spar serve` to stock Envoys, real requests through the frontend's sidecar, and the
//! offline answers of `spar explain` for the same requests from the same directory.
//!
//! The quickstart's workloads have fixed addresses (127.0.10.1-3), so this runs once
//! (SotW): the offline answer does not depend on the xDS variant.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use spar_conformance::{Harness, Pod, http_request, project_root, spar_bin, wait_for};

const FRONTEND: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 1));

async fn explain(args: &[&str]) -> anyhow::Result<Value> {
    let example = project_root().join("examples/quickstart");
    let out = tokio::process::Command::new(spar_bin()?)
        .arg("explain")
        .args(args)
        .arg("--config")
        .arg(&example)
        .args(["-o", "json"])
        .output()
        .await?;
    let answer: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("spar explain {args:?}: not JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    // The exit code says whether the request would be served, for CI.
    if out.status.success() != answer["fails"].is_null() {
        bail!("spar explain {args:?}: exit {} but fails = {}", out.status, answer["fails"]);
    }
    Ok(answer)
}

/// The pods the quickstart's endpoints are (`ip:9080` is the backend sidecar's inbound
/// listener; the echo behind it answers with the pod's name).
fn pod_of(endpoint: &str) -> Option<&'static str> {
    match endpoint {
        "127.0.10.2:9080" => Some("backend-v1"),
        "127.0.10.3:9080" => Some("backend-v2"),
        _ => None,
    }
}

/// Where `spar explain` says the request goes: cluster → (weight, pods).
fn destinations(answer: &Value) -> BTreeMap<String, (u64, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for c in answer["explanation"]["clusters"].as_array().into_iter().flatten() {
        let pods: BTreeSet<String> = c["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["address"].as_str())
            .map(|a| pod_of(a).unwrap_or(a).to_string())
            .collect();
        out.insert(c["name"].as_str().unwrap_or_default().to_string(), (c["weight"].as_u64().unwrap_or(0), pods));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_matches_real_requests() -> anyhow::Result<()> {
    let mut h = Harness::new("explain", false)?;
    h.start_spar(&[project_root().join("examples/quickstart")]).await?;
    let pods = [
        Pod::new("backend-v1", IpAddr::from([127, 0, 10, 2]), &[("app", "backend"), ("version", "v1")]),
        Pod::new("backend-v2", IpAddr::from([127, 0, 10, 3]), &[("app", "backend"), ("version", "v2")]),
        Pod::new("frontend-1", FRONTEND, &[("app", "frontend")]),
    ];
    for pod in &pods {
        if pod.name.starts_with("backend") {
            h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        }
        h.start_sidecar(pod).await?;
    }
    let to = SocketAddr::new(FRONTEND, 9080);
    wait_for(Duration::from_secs(20), "routes to reach the frontend's sidecar", || async {
        http_request(to, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;

    // 1. The config: offline rows are the rows the live control plane serves the frontend.
    let offline = explain(&["frontend-1"]).await?;
    let live = tokio::process::Command::new(spar_bin()?)
        .args(["proxy-config", "frontend-1", "--debug-address", &h.debug_address().to_string(), "-o", "json"])
        .output()
        .await?;
    let live: Value = serde_json::from_slice(&live.stdout).context("proxy-config -o json")?;
    assert_eq!(offline["proxy"], live["proxy"], "the same node id");
    for table in ["listeners", "routes", "clusters", "endpoints"] {
        let rows = &offline["config"][table];
        assert!(rows.as_array().is_some_and(|r| !r.is_empty()), "offline {table} are empty: {offline}");
        assert_eq!(rows, &live["config"][table], "{table}: offline explain vs what spar serves");
    }

    // 2. Testers: one cluster, one endpoint; every real request lands there.
    let answer = explain(&["frontend-1", "--request", "http://backend:9080/items/1", "-H", "x-user: tester"]).await?;
    let d = destinations(&answer);
    assert_eq!(answer["explanation"]["route_name"], "testers", "{answer}");
    assert_eq!(
        d.keys().collect::<Vec<_>>(),
        ["outbound|9080|v2|backend.default.svc.cluster.local"],
        "explain: {answer}"
    );
    let expected: BTreeSet<String> = d.values().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(expected, BTreeSet::from(["backend-v2".to_string()]));
    for i in 0..10 {
        let r = http_request(to, "GET", "backend:9080", &format!("/items/{i}"), &[("x-user", "tester")]).await?;
        assert_eq!(r.backend().map(str::to_string).as_ref(), expected.iter().next(), "real request {i}");
    }
    assert_eq!(
        answer["policies"]["virtual_services"][0].as_str().map(|s| s.starts_with("VirtualService default/backend")),
        Some(true),
        "{answer}"
    );
    assert_eq!(
        answer["policies"]["destination_rules"][0].as_str().map(|s| s.starts_with("DestinationRule default/backend")),
        Some(true),
        "{answer}"
    );
    assert_eq!(answer["policies"]["sidecar"].as_str().map(|s| s.starts_with("Sidecar default/frontend")), Some(true));

    // 3. Everyone else: the 80/20 split over v1 and v2; real requests reach only those
    //    backends, and both of them.
    let answer = explain(&["frontend-1", "--request", "http://backend:9080/items/1"]).await?;
    let d = destinations(&answer);
    let weights: Vec<(String, u64)> = d.iter().map(|(c, (w, _))| (c.clone(), *w)).collect();
    assert_eq!(
        weights,
        [
            ("outbound|9080|v1|backend.default.svc.cluster.local".to_string(), 80),
            ("outbound|9080|v2|backend.default.svc.cluster.local".to_string(), 20)
        ],
        "explain: {answer}"
    );
    let expected: BTreeSet<String> = d.values().flat_map(|(_, p)| p.clone()).collect();
    let mut seen = BTreeSet::new();
    for i in 0..80 {
        let r = http_request(to, "GET", "backend:9080", &format!("/items/{i}"), &[]).await?;
        seen.insert(r.backend().unwrap_or("(none)").to_string());
    }
    assert!(seen.is_subset(&expected), "real requests reached {seen:?}, explain said {expected:?}");
    assert_eq!(seen.len(), 2, "80 requests at 80/20 reach both versions: {seen:?}");

    // 3b. A Host whose port is not the listener's: Envoy ignores the port when it picks
    //     the virtual host (Spar sets ignore_port_in_host_matching), and so does explain.
    let answer = explain(&["frontend-1", "--request", "http://backend:9080/", "-H", "host: backend:1234"]).await?;
    assert_eq!(answer["explanation"]["virtual_host"], "backend.default.svc.cluster.local:9080", "{answer}");
    let r = http_request(to, "GET", "backend:1234", "/", &[("x-user", "tester")]).await?;
    assert_eq!(r.backend(), Some("backend-v2"), "Envoy routes it to the backend too");

    // 4. A host the frontend has no route for: explain says 404, and so does Envoy.
    let answer = explain(&["frontend-1", "--request", "http://nowhere.example:9080/"]).await?;
    let real = http_request(to, "GET", "nowhere.example:9080", "/", &[]).await?;
    let outcome = answer["explanation"]["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("no virtual host") && outcome.contains("404"), "explain: {answer}");
    assert_eq!(real.status, 404, "Envoy's answer for a host without a virtual host");
    assert!(answer["fails"].as_str().is_some_and(|f| f.contains("404")), "and it exits non-zero: {answer}");

    // 5. A policy at the destination: an AuthorizationPolicy denying /admin on v2. Envoy
    //    (the backend's sidecar) refuses it, and explain names the policy and its action
    //    for that endpoint only.
    h.write_config(
        "deny-admin.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: backend, version: v2}}\n  action: DENY\n  \
         rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
    )?;
    wait_for(Duration::from_secs(20), "v2's sidecar to deny /admin", || async {
        http_request(to, "GET", "backend:9080", "/admin", &[("x-user", "tester")]).await.is_ok_and(|r| r.status == 403)
    })
    .await?;
    let config = h.config_dir();
    let answer = explain(&[
        "frontend-1",
        "--config",
        config.to_str().unwrap_or_default(),
        "--request",
        "http://backend:9080/admin",
        "-H",
        "x-user: tester",
    ])
    .await?;
    let destinations = answer["policies"]["destinations"].as_array().cloned().unwrap_or_default();
    assert_eq!(destinations.len(), 1, "{answer}");
    let authz: Vec<&str> =
        destinations[0]["authorization_policies"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(
        authz.len() == 1
            && authz[0].starts_with("AuthorizationPolicy default/deny-admin")
            && authz[0].ends_with("DENY"),
        "{answer}"
    );
    assert_eq!(destinations[0]["endpoints"][0], "127.0.10.3:9080", "{answer}");
    // v1 (the 80/20 split's other endpoint) has no policy.
    let answer = explain(&[
        "frontend-1",
        "--config",
        config.to_str().unwrap_or_default(),
        "--request",
        "http://backend:9080/admin",
    ])
    .await?;
    for d in answer["policies"]["destinations"].as_array().into_iter().flatten() {
        let n = d["authorization_policies"].as_array().map_or(0, Vec::len);
        assert_eq!(n, usize::from(d["endpoints"][0] == "127.0.10.3:9080"), "{answer}");
    }
    Ok(())
}
