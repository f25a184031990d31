//! Routing conformance: real `spar serve`, real stock Envoys, real HTTP requests; the
//! assertions are on which backend received each request. Every case runs over SotW and
//! over delta xDS.

use std::net::SocketAddr;
use std::time::Duration;

use spar_conformance::{Envoy, Harness, both_variants_mod, http_request, metric_value, spar_metrics, tally, wait_for};

/// Convergence bound for one config change (debounce + push + Envoy apply). Generous on
/// purpose: these machines are shared; speed is measured by benchmarks, not here.
const CONVERGE: Duration = Duration::from_secs(20);

/// Client pod plus backends v1/v2 behind sidecars, as the `header-match`,
/// `weighted-split` and `broken-document` cases describe them.
async fn start_backend_mesh(h: &mut Harness) -> anyhow::Result<Envoy> {
    h.start_spar(&[]).await?;
    for v in ["v1", "v2"] {
        let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        h.start_sidecar(&pod).await?;
    }
    let client = h.pod("client", &[("app", "client")]);
    h.start_sidecar(&client).await
}

fn outbound(client: &Envoy) -> SocketAddr {
    SocketAddr::new(client.ip, 9080)
}

/// Waits until `host` answers through the client's sidecar with `backend`.
async fn wait_routed(client: &Envoy, host: &str, headers: &[(&str, &str)], backend: &str) -> anyhow::Result<()> {
    wait_for(CONVERGE, &format!("{host} to route to {backend}"), || async {
        http_request(outbound(client), "GET", host, "/", headers).await.is_ok_and(|r| r.backend() == Some(backend))
    })
    .await
}

async fn header_match(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("header-match", delta)?;
    h.load_case("header-match")?;
    let client = start_backend_mesh(&mut h).await?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;
    let to = outbound(&client);
    let who = |method: &'static str,
               host: &'static str,
               path: &'static str,
               headers: &'static [(&'static str, &'static str)]| async move {
        http_request(to, method, host, path, headers).await.map(|r| r.backend().unwrap_or("none").to_string())
    };
    assert_eq!(who("GET", "backend", "/", &[("x-canary", "yes")]).await?, "backend-v2", "exact header match");
    assert_eq!(who("GET", "backend", "/", &[("x-canary", "no")]).await?, "backend-v1", "header value differs");
    assert_eq!(who("POST", "backend", "/v2/a", &[]).await?, "backend-v2", "prefix + method");
    assert_eq!(who("GET", "backend", "/v2/a", &[]).await?, "backend-v1", "prefix without the method");
    assert_eq!(who("GET", "backend", "/items/42?debug=1", &[]).await?, "backend-v2", "regex + query");
    assert_eq!(who("GET", "backend", "/items/x?debug=1", &[]).await?, "backend-v1", "regex does not match");
    // Every name istiod puts in the virtual host's domains reaches the service.
    for host in ["backend.default.svc.cluster.local", "backend.default", "backend.default.svc", "backend:9080"] {
        assert_eq!(who("GET", host, "/", &[("x-canary", "yes")]).await?, "backend-v2", "host {host}");
    }
    h.check_alive()
}

async fn weighted_split(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("weighted-split", delta)?;
    h.load_case("weighted-split")?;
    let client = start_backend_mesh(&mut h).await?;
    wait_for(CONVERGE, "backend to answer", || async {
        http_request(outbound(&client), "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let n = 400;
    let counts = tally(outbound(&client), "backend", "/", &[], n).await?;
    let v1 = counts.get("backend-v1").copied().unwrap_or(0);
    let v2 = counts.get("backend-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "every request answered by a backend: {counts:?}");
    // 75/25 over 400 requests: v2 ~ Binomial(400, 0.25), mean 100, sd ~8.7; ±4 sd.
    assert!((65..=135).contains(&v2), "expected about 100 of {n} on v2, got {counts:?}");
    h.check_alive()
}

async fn bookinfo(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("bookinfo", delta)?;
    h.load_case("bookinfo")?;
    h.use_fixture("samples/bookinfo/platform/kube/bookinfo.yaml", "bookinfo.yaml")?;
    h.use_fixture("samples/bookinfo/networking/destination-rule-all.yaml", "destination-rule-all.yaml")?;
    h.use_fixture("samples/bookinfo/networking/virtual-service-all-v1.yaml", "virtual-service.yaml")?;
    h.start_spar(&[]).await?;
    for v in ["v1", "v2", "v3"] {
        let pod = h.pod(&format!("reviews-{v}"), &[("app", "reviews"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        h.start_sidecar(&pod).await?;
    }
    let pp = h.pod("productpage-v1", &[("app", "productpage"), ("version", "v1")]);
    let client = h.start_sidecar(&pp).await?;
    let to = outbound(&client);

    // virtual-service-all-v1: every request to reviews lands on v1.
    wait_routed(&client, "reviews", &[], "reviews-v1").await?;
    let counts = tally(to, "reviews", "/reviews/0", &[], 30).await?;
    assert_eq!(counts.get("reviews-v1"), Some(&30), "{counts:?}");

    // virtual-service-reviews-test-v2: jason sees v2, everyone else v1.
    h.use_fixture("samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml", "virtual-service.yaml")?;
    wait_routed(&client, "reviews", &[("end-user", "jason")], "reviews-v2").await?;
    let counts = tally(to, "reviews", "/", &[("end-user", "jason")], 20).await?;
    assert_eq!(counts.get("reviews-v2"), Some(&20), "{counts:?}");
    let counts = tally(to, "reviews", "/", &[("end-user", "someone")], 20).await?;
    assert_eq!(counts.get("reviews-v1"), Some(&20), "{counts:?}");

    // virtual-service-reviews-50-v3: half v1, half v3, never v2.
    h.use_fixture("samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml", "virtual-service.yaml")?;
    wait_routed(&client, "reviews", &[("end-user", "jason")], "reviews-v3").await?;
    let n = 300;
    let counts = tally(to, "reviews", "/", &[], n).await?;
    let v3 = counts.get("reviews-v3").copied().unwrap_or(0);
    assert_eq!(counts.get("reviews-v1").copied().unwrap_or(0) + v3, n, "{counts:?}");
    // Binomial(300, 0.5): sd ~8.7; ±4 sd around 150.
    assert!((115..=185).contains(&v3), "expected about 150 of {n} on v3: {counts:?}");
    h.check_alive()
}

async fn live_edit(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("live-edit", delta)?;
    h.load_case("weighted-split")?;
    let all_to = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{{destination: {{host: backend, subset: {subset}}}}}]\n"
        )
    };
    h.write_config("routes.yaml", &all_to("v1"))?;
    let client = start_backend_mesh(&mut h).await?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;
    let before = client.stat("server.uptime").await?;
    h.write_config("routes.yaml", &all_to("v2"))?;
    wait_routed(&client, "backend", &[], "backend-v2").await?;
    let counts = tally(outbound(&client), "backend", "/", &[], 20).await?;
    assert_eq!(counts.get("backend-v2"), Some(&20), "{counts:?}");
    // A removed file takes its routes away: the service falls back to its default route.
    std::fs::remove_file(h.config_dir().join("routes.yaml"))?;
    wait_for(CONVERGE, "default route over both versions", || async {
        tally(outbound(&client), "backend", "/", &[], 20).await.is_ok_and(|c| c.len() == 2)
    })
    .await?;
    assert!(client.stat("server.uptime").await? >= before, "Envoy was not restarted");
    assert!(!h.spar_log().contains("panicked"));
    h.check_alive()
}

/// Sums the client's counters whose names match `pattern` (an Envoy stats regex).
async fn counter_sum(envoy: &Envoy, pattern: &str) -> anyhow::Result<u64> {
    let (_, body) = envoy.admin_get(&format!("/stats?filter={pattern}")).await?;
    Ok(body.lines().filter_map(|l| l.rsplit_once(": ").and_then(|(_, v)| v.trim().parse::<u64>().ok())).sum())
}

/// A WorkloadEntry that moves to another address: traffic follows, and the client's
/// Envoy gets the new endpoint by EDS alone (no CDS, LDS or RDS update), as istiod's
/// incremental EDS push does.
async fn endpoint_move(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("endpoint-move", delta)?;
    h.load_case("weighted-split")?;
    h.write_config(
        "routes.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{destination: {host: backend, subset: v1}}]\n",
    )?;
    let client = start_backend_mesh(&mut h).await?;
    // The place v1 moves to: a pod with the same labels, not yet named by any WorkloadEntry.
    let moved = h.pod("backend-v1-moved", &[("app", "backend"), ("version", "v1")]);
    h.start_echo(&moved.name, SocketAddr::new(moved.ip, 8080)).await?;
    h.start_sidecar(&moved).await?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;

    let v1_cluster = r"^cluster\.outbound\|9080\|v1\|backend\.default\.svc\.cluster\.local\.update_success$";
    let others = [
        r"^cluster_manager\.cds\.update_success$",
        r"^listener_manager\.lds\.update_success$",
        r"\.rds\..*\.update_success$",
    ];
    let mut before = Vec::new();
    for p in others {
        let n = counter_sum(&client, p).await?;
        anyhow::ensure!(n > 0, "no update counted by a stat matching {p}: the pattern is stale");
        before.push(n);
    }
    let eds_before = counter_sum(&client, v1_cluster).await?;
    anyhow::ensure!(eds_before > 0, "no update counted by a stat matching {v1_cluster}");

    let case =
        std::fs::read_to_string(spar_conformance::project_root().join("conformance/cases/weighted-split/mesh.yaml"))?;
    let edited = case.replace("${ip:backend-v1}", "${ip:backend-v1-moved}");
    anyhow::ensure!(edited != case, "the case no longer names backend-v1's address");
    let edited = h.render(&edited);
    h.write_config("mesh.yaml", &edited)?;
    wait_routed(&client, "backend", &[], "backend-v1-moved").await?;
    let counts = tally(outbound(&client), "backend", "/", &[], 20).await?;
    assert_eq!(counts.get("backend-v1-moved"), Some(&20), "every request follows the move: {counts:?}");

    assert!(counter_sum(&client, v1_cluster).await? > eds_before, "the v1 cluster's endpoints were updated");
    for (p, b) in others.iter().zip(before) {
        assert_eq!(counter_sum(&client, p).await?, b, "an endpoint move sent an update matching {p}");
    }
    h.check_alive()
}

/// A mesh large enough that each proxy's clusters, endpoints and routes go out as slices
/// of one block serialized per shared layer (`spar_xds_block_responses`), with the
/// proxy's own inbound resources written in between: stock Envoy takes all of it without
/// a NACK, and traffic is routed as in a small mesh.
async fn large_mesh(delta: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    const EXTRA: u64 = 2000;
    let mut h = Harness::new("large-mesh", delta)?;
    h.load_case("weighted-split")?;
    h.write_config(
        "routes.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{destination: {host: backend, subset: v1}}]\n",
    )?;
    // Never called: TEST-NET-1 endpoints only make the config large.
    let mut extra = String::new();
    for i in 0..EXTRA {
        let _ = write!(
            extra,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext-{i}}}\nspec:\n  hosts: [ext-{i}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 192.0.2.{}}}]\n",
            i % 250 + 1
        );
    }
    h.write_config("extra.yaml", &extra)?;
    // A second client with a Sidecar of its own (the same hosts, bound to its own
    // address) has a shared layer apart from the first client's: whichever of the two
    // is generated second takes the other's copy of every cluster and load assignment.
    let sidecar2 = h.render("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: client2}\nspec:\n  workloadSelector: {labels: {app: client2}}\n  egress: [{bind: \"${ip:client2}\", hosts: [\"./*\"]}]\n");
    h.write_config("sidecar-client2.yaml", &sidecar2)?;
    let client = start_backend_mesh(&mut h).await?;
    let pod = h.pod("client2", &[("app", "client2")]);
    let client2 = h.start_sidecar(&pod).await?;
    for c in [&client, &client2] {
        wait_routed(c, "backend", &[], "backend-v1").await?;
        let counts = tally(outbound(c), "backend", "/", &[], 20).await?;
        assert_eq!(counts.get("backend-v1"), Some(&20), "{counts:?}");
        let clusters = c.stat("cluster_manager.active_clusters").await?;
        assert!(clusters > EXTRA, "each client's Envoy holds every cluster: {clusters}");
    }
    let metrics = spar_metrics(h.debug_address()).await?;
    let blocks = metric_value(&metrics, "spar_xds_block_responses").expect("spar exports spar_xds_block_responses");
    assert!(blocks >= 4.0, "each of the 4 proxies was sent at least one type from a block: {blocks}");
    let shared = metric_value(&metrics, "spar_generation_shared_resources")
        .expect("spar exports spar_generation_shared_resources");
    assert!(shared >= 2.0 * EXTRA as f64, "the two layers share the extra clusters and load assignments: {shared}");
    assert_eq!(metric_value(&metrics, "pilot_total_xds_rejects"), Some(0.0), "no NACK");
    h.check_alive()
}

async fn broken_document(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("broken-document", delta)?;
    h.load_case("broken-document")?;
    let client = start_backend_mesh(&mut h).await?;
    // The good VirtualService between the broken ones is served.
    wait_routed(&client, "backend", &[], "backend-v2").await?;
    let counts = tally(outbound(&client), "backend", "/", &[], 20).await?;
    assert_eq!(counts.get("backend-v2"), Some(&20), "{counts:?}");
    // Each broken document is reported with its file:line and resource.
    let log = h.spar_log();
    let file = h.config_dir().join("routes.yaml");
    let file = file.to_string_lossy();
    // Type errors point at the offending line, validation errors at the document, and a
    // YAML syntax error at the line where the parser gave up (the end of the document).
    for (line, what) in
        [(10, "VirtualService default/broken-type"), (20, "VirtualService default/broken-regex"), (30, "")]
    {
        let at = format!("{file}:{line} ");
        assert!(
            log.lines().any(|l| l.contains(&at) && l.contains(what) && l.contains("rejected")),
            "no rejection naming {at} {what} in spar's log:\n{log}"
        );
    }
    assert!(log.contains("weight") && log.contains("invalid regular expression"), "{log}");
    h.check_alive()
}

/// The client's Sidecar, optionally with a second egress listener bound to an address
/// this host does not have: valid Istio config that only Envoy can find wrong (the bind
/// fails), the classic "works on my machine" NACK.
fn client_sidecar(h: &mut Harness, bad_bind: bool) -> String {
    let ip = h.ip("client");
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: client}}\nspec:\n  workloadSelector: {{labels: {{app: client}}}}\n  egress:\n  - {{bind: \"{ip}\", hosts: [\"./*\"]}}\n"
    );
    if bad_bind {
        s.push_str("  - {bind: \"192.0.2.1\", port: {number: 9999, protocol: HTTP, name: http}, hosts: [\"./*\"]}\n");
    }
    s
}

async fn nack(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("nack", delta)?;
    h.load_case("weighted-split")?;
    let to = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{{destination: {{host: backend, subset: {subset}}}}}]\n"
        )
    };
    h.write_config("routes.yaml", &to("v2"))?;
    let client = start_backend_mesh(&mut h).await?;
    wait_routed(&client, "backend", &[], "backend-v2").await?;
    // `spar wait` returns once every proxy ACKed the current snapshot.
    let (ok, out) = h.spar_wait("20s").await?;
    assert!(ok && out.contains("all 3 proxies hold snapshot"), "{out}");

    // Envoy cannot bind the new listener and rejects the update; spar logs the NACK with
    // the proxy, the type, the resources and Envoy's reason, and carries on.
    let sidecar = client_sidecar(&mut h, true);
    h.write_config("sidecar-client.yaml", &sidecar)?;
    wait_for(CONVERGE, "spar to log the NACK", || async { h.spar_log().contains("NACK") }).await?;
    let log = h.spar_log();
    let nack_line = log.lines().find(|l| l.contains("NACK")).unwrap_or_default();
    assert!(
        nack_line.contains(&format!("~{}~", client.ip)) && nack_line.contains("lds"),
        "NACK names the proxy and type: {nack_line}"
    );
    assert!(nack_line.contains("192.0.2.1"), "NACK carries Envoy's error detail: {nack_line}");
    // It says what Envoy did: refused the new listener, applied the rest; and which
    // Istio object produced it.
    assert!(nack_line.contains("Envoy refused 192.0.2.1_9999"), "{nack_line}");
    assert!(nack_line.contains("sidecar-client.yaml:1"), "NACK points at the Sidecar: {nack_line}");
    // The proxy keeps serving with its last good listeners and routes.
    let counts = tally(outbound(&client), "backend", "/", &[], 20).await?;
    assert_eq!(counts.get("backend-v2"), Some(&20), "last good config still applies: {counts:?}");
    // The rejection is visible: proxy-status says NACKED with Envoy's message, and the
    // rejects counter moved.
    let status = h.proxy_status(false).await?;
    let line = status.lines().find(|l| l.contains(&format!("~{}~", client.ip))).unwrap_or_default().to_string();
    assert!(line.contains("NACKED"), "proxy-status shows the NACK:\n{status}");
    assert!(status.contains("lds NACK:") && status.contains("192.0.2.1"), "{status}");
    assert!(status.contains("Envoy refused 192.0.2.1_9999") && status.contains("from "), "{status}");
    let metrics = spar_conformance::http_request(h.debug_address(), "GET", "spar", "/metrics", &[]).await?.body;
    let rejects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pilot_total_xds_rejects "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(rejects >= 1, "{metrics}");
    // `spar wait` fails at once, naming the proxy, the type and Envoy's reason.
    let (ok, out) = h.spar_wait("20s").await?;
    assert!(!ok && out.contains("rejected (NACK)") && out.contains("lds") && out.contains("192.0.2.1"), "{out}");

    // Only the unbindable listener left. Over SotW the update is the whole set again:
    // Envoy refuses the bad listener once more and removes the old one anyway (removals
    // are part of what it applies), and Spar says that listener is gone rather than
    // claiming the last good config is kept. (Over delta the update is the removal
    // alone, which Envoy accepts.) Either way it is gone: the client has no route.
    let ip = h.ip("client");
    let only_bad = client_sidecar(&mut h, true).replace(&format!("  - {{bind: \"{ip}\", hosts: [\"./*\"]}}\n"), "");
    h.write_config("sidecar-client.yaml", &only_bad)?;
    if !delta {
        let gone = format!("removed, so now gone: {ip}_9080");
        wait_for(CONVERGE, "spar to say the listener is gone", || async { h.spar_log().contains(&gone) }).await?;
    }
    wait_for(CONVERGE, "the client's listener to be gone", || async {
        http_request(SocketAddr::new(client.ip, 9080), "GET", "backend", "/", &[]).await.is_err()
    })
    .await?;

    // Spar is not stuck on the rejected version: fixing the Sidecar and changing the
    // routes converges.
    let sidecar = client_sidecar(&mut h, false);
    h.write_config("sidecar-client.yaml", &sidecar)?;
    h.write_config("routes.yaml", &to("v1"))?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;
    let (ok, out) = h.spar_wait("20s").await?;
    assert!(ok, "after the fix every proxy ACKs: {out}");
    // proxy-status: every proxy SYNCED on every type, at the new snapshot.
    let configz = spar_conformance::http_request(h.debug_address(), "GET", "spar", "/debug/configz", &[]).await?;
    let version = serde_json::from_str::<serde_json::Value>(&configz.body)?["snapshot"].as_u64().unwrap_or(0);
    let json: serde_json::Value = serde_json::from_str(&h.proxy_status(true).await?)?;
    let proxies = json.as_array().cloned().unwrap_or_default();
    assert_eq!(proxies.len(), 3, "{json}");
    for p in &proxies {
        assert_eq!(p["snapshot"].as_u64(), Some(version), "at the new snapshot {version}: {p}");
        for (t, st) in p["types"].as_object().into_iter().flatten() {
            assert!(st["sent"].is_string() && st["acked"] == st["sent"], "{t}: {p}");
        }
    }
    let status = h.proxy_status(false).await?;
    for line in status.lines().filter(|l| l.starts_with("sidecar~")) {
        assert!(line.contains("SYNCED") && !line.contains("NACKED") && !line.contains("STALE"), "{status}");
    }
    h.check_alive()
}

/// `spar proxy-config <pod> --envoy-admin`: Spar's view of each proxy equals the proxy's
/// own config dump, table by table; a config Envoy rejected shows as rows only in Spar,
/// and the command says so with its exit code.
async fn proxy_config(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("proxy-config", delta)?;
    h.load_case("weighted-split")?;
    let client = start_backend_mesh(&mut h).await?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;
    let (ok, out) = h.spar_wait("20s").await?;
    assert!(ok, "{out}");
    let debug = h.debug_address();
    let backend_admin = SocketAddr::new(h.ip("backend-v1"), 15000);
    for (pod, admin) in [("client", client.admin), ("backend-v1", backend_admin)] {
        let out = spar_proxy_config(debug, pod, admin, false).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{pod}: {text}{}", String::from_utf8_lossy(&out.stderr));
        for table in ["listeners", "routes", "clusters", "endpoints"] {
            let line = text.lines().find(|l| l.starts_with(&format!("{table}: "))).unwrap_or_default();
            assert!(line.ends_with("identical"), "{pod} {table}: {text}");
        }
        // Not vacuous: both sides have rows of every kind (the backend's inbound side has
        // its routes inline in the listener: no route configurations).
        let json: serde_json::Value =
            serde_json::from_slice(&spar_proxy_config(debug, pod, admin, true).await?.stdout)?;
        let tables: &[&str] = if pod == "client" {
            &["listeners", "routes", "clusters", "endpoints"]
        } else {
            &["listeners", "clusters", "endpoints"]
        };
        for side in ["spar", "envoy"] {
            for table in tables {
                let n = json[side][table].as_array().map_or(0, Vec::len);
                assert!(n > 0, "{pod}: no {table} on the {side} side: {json}");
            }
        }
    }
    // The weighted route reads the same on both sides.
    let json: serde_json::Value =
        serde_json::from_slice(&spar_proxy_config(debug, "client", client.admin, true).await?.stdout)?;
    let targets: Vec<&str> =
        json["envoy"]["routes"].as_array().into_iter().flatten().filter_map(|r| r["target"].as_str()).collect();
    assert!(targets.iter().any(|t| t.starts_with("weighted ")), "{targets:?}");

    // A listener Envoy cannot bind: only in Spar, and the command fails.
    let sidecar = client_sidecar(&mut h, true);
    h.write_config("sidecar-client.yaml", &sidecar)?;
    wait_for(CONVERGE, "spar to log the NACK", || async { h.spar_log().contains("NACK") }).await?;
    let out = spar_proxy_config(debug, "client", client.admin, false).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("  - ") && l.contains("192.0.2.1_9999")), "{text}");
    h.check_alive()
}

async fn spar_proxy_config(
    debug: SocketAddr,
    pod: &str,
    admin: SocketAddr,
    json: bool,
) -> anyhow::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(spar_conformance::spar_bin()?);
    cmd.args(["proxy-config", pod, "--debug-address", &debug.to_string(), "--envoy-admin", &admin.to_string()]);
    if json {
        cmd.args(["-o", "json"]);
    }
    Ok(cmd.output().await?)
}

both_variants_mod!(proxy_config, proxy_config);
both_variants_mod!(header_match, header_match);
both_variants_mod!(weighted_split, weighted_split);
both_variants_mod!(bookinfo, bookinfo);
both_variants_mod!(live_edit, live_edit);
both_variants_mod!(endpoint_move, endpoint_move);
both_variants_mod!(large_mesh, large_mesh);
both_variants_mod!(broken_document, broken_document);
both_variants_mod!(nack, nack);

/// At debug level Spar logs one line per push decision and proxy: what a config change
/// made it send (types and counts), or that nothing the proxy holds changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_decisions_are_logged_at_debug() -> anyhow::Result<()> {
    let mut h = Harness::new("push-log", false)?;
    h.spar_log = Some("info,spar_xds::server=debug".into());
    h.load_case("header-match")?;
    let client = start_backend_mesh(&mut h).await?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;
    let decisions = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    // A change no proxy of `default` can see (exported to another namespace only).
    h.write_config(
        "elsewhere.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: elsewhere, namespace: other}\n\
         spec:\n  hosts: [elsewhere.example]\n  exportTo: [\".\"]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  \
         resolution: DNS\n",
    )?;
    wait_for(CONVERGE, "three 'nothing changed' decisions", || async {
        decisions(&h.spar_log(), "push decision: nothing this proxy holds changed") >= 3
    })
    .await?;
    // A route change: the client gets new routes, and the log says so for it.
    let before = decisions(&h.spar_log(), "push decision: sending what changed");
    h.write_config(
        "routes.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend}\nspec:\n  \
         hosts: [backend]\n  http:\n  - route:\n    - destination: {host: backend, subset: v2}\n",
    )?;
    wait_routed(&client, "backend", &[], "backend-v2").await?;
    let log = h.spar_log();
    let sent: Vec<&str> = log.lines().filter(|l| l.contains("push decision: sending what changed")).collect();
    assert!(sent.len() > before, "{log}");
    let client_line = sent.iter().skip(before).find(|l| l.contains("~client.default~")).copied().unwrap_or_default();
    assert!(client_line.contains("trigger=\"config\"") && client_line.contains("rds:1"), "{client_line:?} in {log}");
    assert!(!log.lines().any(|l| l.contains("push decision") && l.contains(" INFO ")), "debug level only");
    h.check_alive()
}

/// `spar proxy-status` reports every proxy SYNCED once it has ACKed what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_shows_synced_proxies() -> anyhow::Result<()> {
    let mut h = Harness::new("proxy-status", false)?;
    h.load_case("header-match")?;
    let client = start_backend_mesh(&mut h).await?;
    wait_routed(&client, "backend", &[], "backend-v1").await?;
    wait_for(CONVERGE, "all proxies SYNCED", || async {
        h.proxy_status(false).await.is_ok_and(|s| {
            let rows: Vec<&str> = s.lines().skip(1).filter(|l| l.starts_with("sidecar~")).collect();
            rows.len() == 3
                && rows.iter().all(|l| l.contains("SYNCED") && !l.contains("STALE") && !l.contains("NACKED"))
        })
    })
    .await?;
    let json: serde_json::Value = serde_json::from_str(&h.proxy_status(true).await?)?;
    assert_eq!(json.as_array().map(Vec::len), Some(3));
    // istiod's metric names, with what happened: pushes per type and push-to-ACK times.
    let metrics = spar_conformance::spar_metrics(h.debug_address()).await?;
    let value = |series: &str| spar_conformance::metric_value(&metrics, series).unwrap_or(0.0);
    assert!(value("pilot_xds") >= 3.0, "{metrics}");
    assert!(value("pilot_xds_pushes{type=\"cds\"}") >= 3.0, "{metrics}");
    assert!(value("pilot_proxy_convergence_time_count") >= 3.0, "{metrics}");
    assert!(value("process_resident_memory_bytes") > 1e6, "{metrics}");
    // Push time: one observation per response, per type, in a well-formed histogram.
    for t in ["cds", "eds", "lds", "rds", "sds"] {
        spar_conformance::check_histogram(&metrics, "pilot_xds_push_time", &format!("type=\"{t}\""))?;
    }
    let cds = spar_conformance::check_histogram(&metrics, "pilot_xds_push_time", "type=\"cds\"")?;
    assert!(cds >= 3.0, "each of the 3 proxies was sent clusters: {metrics}");
    assert!(value("pilot_xds_push_time_sum{type=\"cds\"}") > 0.0, "{metrics}");
    spar_conformance::check_histogram(&metrics, "pilot_proxy_convergence_time", "")?;
    // No CA here, so no CA metrics (istiod without its CA has none either).
    assert!(!metrics.contains("citadel_server_"), "{metrics}");
    // Every series the Grafana dashboard in deploy/ queries is one Spar exports; the CA's
    // (citadel_) are checked where Spar runs its CA (security.rs, mtls_by_default).
    let queried = spar_conformance::dashboard_series()?;
    assert!(queried.len() >= 10, "the dashboard queries metrics: {queried:?}");
    for name in queried.iter().filter(|n| !n.starts_with("citadel_")) {
        assert!(
            spar_conformance::exports(&metrics, name),
            "the dashboard queries {name}, which /metrics does not export:\n{metrics}"
        );
    }
    // `-o yaml` lists the same proxies as `-o json`.
    let yaml = h.proxy_status_as("yaml").await?;
    let mut from_yaml = yaml_proxies(&yaml)?;
    let mut from_json: Vec<String> =
        json.as_array().into_iter().flatten().filter_map(|p| p["proxy"].as_str().map(str::to_string)).collect();
    from_yaml.sort();
    from_json.sort();
    assert_eq!(from_yaml, from_json, "{yaml}");
    h.check_alive()
}

/// The `proxy` of each item of `spar proxy-status -o yaml`: a block sequence (`- ` at
/// column 0) of mappings, each with one `proxy:` key at the item's indentation. Fails on
/// anything else (JSON, the table, an item without a proxy or with two). The full YAML
/// round trip is a unit test of the renderer (crates/spar/src/debug.rs).
fn yaml_proxies(yaml: &str) -> anyhow::Result<Vec<String>> {
    let mut items: Vec<Vec<String>> = Vec::new();
    for line in yaml.lines().filter(|l| !l.trim().is_empty()) {
        let key = if let Some(rest) = line.strip_prefix("- ") {
            items.push(Vec::new());
            rest
        } else if let Some(rest) = line.strip_prefix("  ") {
            anyhow::ensure!(!items.is_empty(), "indented line before the first item: {line:?}\n{yaml}");
            rest
        } else {
            anyhow::bail!("not a YAML block sequence of mappings: {line:?}\n{yaml}");
        };
        if let (Some(v), Some(item)) = (key.strip_prefix("proxy: "), items.last_mut()) {
            item.push(v.trim().trim_matches(|c| c == '\'' || c == '"').to_string());
        }
    }
    items
        .into_iter()
        .map(|mut p| match (p.pop(), p.is_empty()) {
            (Some(proxy), true) => Ok(proxy),
            _ => anyhow::bail!("an item without exactly one proxy key\n{yaml}"),
        })
        .collect()
}
