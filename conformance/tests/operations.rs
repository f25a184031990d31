//! Operator commands against real stock Envoys: `spar top` reads golden metrics from the
//! proxies' own stats. The expected numbers come from Envoy's plain `/stats` (full
//! cluster names, no Prometheus naming) plus the requests the test sends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spar_conformance::{Envoy, Harness, http_request, wait_for};

const CONVERGE: Duration = Duration::from_secs(20);
const HOST: &str = "backend.default.svc.cluster.local";
/// Requests the test sends that the backend answers 200, and 500.
const OK: u64 = 30;
const FAILED: u64 = 7;

/// Client plus backends v1/v2 behind sidecars (the `weighted-split` case: 75/25 over two
/// subsets, so the service's numbers are a sum over clusters), every proxy serving
/// `/stats/prometheus` on its IP's port 15090.
async fn start_mesh(h: &mut Harness) -> anyhow::Result<(Envoy, Vec<Envoy>)> {
    h.start_spar(&[]).await?;
    let mut backends = Vec::new();
    for v in ["v1", "v2"] {
        let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        backends.push(h.start_sidecar(&pod).await?);
    }
    let client = h.pod("client", &[("app", "client")]);
    Ok((h.start_sidecar(&client).await?, backends))
}

/// Requests sent and responses by code, summed over the clusters `want` picks, from
/// Envoy's own `/stats` (`cluster.<name>.upstream_rq_<code>: N`).
async fn envoy_counts(envoy: &Envoy, want: impl Fn(&str) -> bool) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let (_, text) = envoy.admin_get("/stats").await?;
    let (mut total, mut codes) = (0, BTreeMap::new());
    for line in text.lines() {
        let Some((stat, value)) = line.strip_prefix("cluster.").and_then(|l| l.split_once(": ")) else { continue };
        let Some((cluster, counter)) = stat.rsplit_once(".upstream_rq_") else { continue };
        if !want(cluster) {
            continue;
        }
        // (`upstream_rq_time` is a histogram summary, not a number.)
        if counter == "total" {
            total += value.trim().parse::<u64>()?;
        } else if counter.len() == 3 && counter.chars().all(|c| c.is_ascii_digit()) {
            *codes.entry(counter.to_string()).or_insert(0) += value.trim().parse::<u64>()?;
        }
    }
    Ok((total, codes))
}

fn to_backend(cluster: &str) -> bool {
    cluster.starts_with("outbound|") && cluster.ends_with(&format!("|{HOST}"))
}

fn codes_of(json: &serde_json::Value) -> BTreeMap<String, u64> {
    json["codes"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()
}

fn top_cmd(args: &[&str]) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(spar_conformance::spar_bin()?);
    cmd.arg("top").args(args).kill_on_drop(true);
    Ok(cmd)
}

async fn run_top(args: &[&str]) -> anyhow::Result<String> {
    let out = top_cmd(args)?.output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "spar top {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

fn service<'a>(frame: &'a serde_json::Value, host: &str) -> anyhow::Result<&'a serde_json::Value> {
    frame["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["host"] == host)
        .ok_or_else(|| anyhow::anyhow!("no row for {host}: {frame:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spar_top() -> anyhow::Result<()> {
    let mut h = Harness::new("top", false)?.with_prometheus(15090);
    h.load_case("weighted-split")?;
    let (client, backends) = start_mesh(&mut h).await?;
    let outbound = SocketAddr::new(client.ip, 9080);
    wait_for(CONVERGE, "backend to answer", || async {
        http_request(outbound, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let (ok, out) = h.spar_wait("20s").await?;
    assert!(ok, "{out}");
    let (total_before, codes_before) = envoy_counts(&client, to_backend).await?;

    // Through the control plane's proxy list: the first scrape, then the traffic, then
    // the second scrape; the interval spans an Envoy stats flush (5 s), so the window's
    // latency histogram has the requests.
    let debug = h.debug_address().to_string();
    let top = top_cmd(&["--debug-address", &debug, "--once", "-o", "json", "--interval", "10s"])?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The first scrape of the client has been answered once its Prometheus listener's
    // cluster (to the admin port) has a completed request.
    wait_for(Duration::from_secs(10), "spar top's first scrape", || async {
        client.stat("cluster.spar_admin.upstream_rq_completed").await.is_ok_and(|n| n >= 1)
    })
    .await?;
    let started = Instant::now();
    for i in 0..OK + FAILED {
        // Interleaved: every fifth request (7 of the first 35) fails.
        let fail = i % 5 == 4;
        let headers: &[(&str, &str)] = if fail { &[("x-echo-status", "500")] } else { &[] };
        let r = http_request(outbound, "GET", "backend", "/", headers).await?;
        assert_eq!(r.status, if fail { 500 } else { 200 }, "request {i}");
    }
    let sent_in = started.elapsed();
    assert!(sent_in < Duration::from_secs(4), "the traffic took {sent_in:?}: too slow for a 10 s window");
    let out = top.wait_with_output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let frame: serde_json::Value = serde_json::from_str(&text)?;

    let mut expected = codes_before.clone();
    *expected.entry("200".into()).or_insert(0) += OK;
    *expected.entry("500".into()).or_insert(0) += FAILED;
    let (total_after, codes_after) = envoy_counts(&client, to_backend).await?;
    // The test's own oracle first: Envoy counted exactly what was sent.
    assert_eq!(codes_after, expected, "Envoy's /stats");
    assert_eq!(total_after, total_before + OK + FAILED, "Envoy's /stats");

    let backend = service(&frame, HOST)?;
    assert_eq!(codes_of(backend), expected, "{frame:#}");
    assert_eq!(backend["requests_total"].as_u64(), Some(total_after), "{frame:#}");
    assert_eq!(frame["proxies"].as_u64(), Some(3), "{frame:#}");
    assert_eq!(backend["proxies"], serde_json::json!(["client.default"]), "{frame:#}");
    // The window held exactly the test's requests.
    let window = frame["window_s"].as_f64().unwrap_or(0.0);
    assert!((9.5..15.0).contains(&window), "{frame:#}");
    let in_window = backend["rps"].as_f64().unwrap_or(0.0) * window;
    assert!((in_window - (OK + FAILED) as f64).abs() < 1e-6, "{in_window} requests in the window: {frame:#}");
    let success = backend["success_rate"].as_f64().unwrap_or(-1.0);
    assert!((success - OK as f64 / (OK + FAILED) as f64).abs() < 1e-9, "{frame:#}");
    let lat = &backend["latency_ms"];
    let (p50, p90, p99) = (lat["p50"].as_f64(), lat["p90"].as_f64(), lat["p99"].as_f64());
    let (Some(p50), Some(p90), Some(p99)) = (p50, p90, p99) else { panic!("no latency: {frame:#}") };
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 < 1000.0, "{frame:#}");
    assert!(frame["unreachable"].as_array().is_some_and(Vec::is_empty), "{frame:#}");
    // Server side: each backend's inbound cluster, as its own Envoy counts it.
    for b in &backends {
        // (`inbound|9080||.external` is the same requests split by origin.)
        let (total, codes) = envoy_counts(b, |c| c.starts_with("inbound|") && !c.contains('.')).await?;
        let row = frame["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["workload"] == format!("{}.default", b.name))
            .ok_or_else(|| anyhow::anyhow!("no workload row for {}: {frame:#}", b.name))?;
        assert_eq!(codes_of(row), codes, "{}: {frame:#}", b.name);
        assert_eq!(row["requests_total"].as_u64(), Some(total), "{}", b.name);
    }
    let failed_on_backends: u64 =
        frame["workloads"].as_array().into_iter().flatten().map(|w| codes_of(w).get("500").copied().unwrap_or(0)).sum();
    assert!(failed_on_backends >= FAILED, "{frame:#}");

    // The table: the service's line with the codes, and a line per workload.
    let table = run_top(&["--debug-address", &debug, "--once", "--interval", "1s"]).await?;
    let codes_text = expected.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join(" ");
    let line = table.lines().find(|l| l.starts_with(HOST)).unwrap_or_default();
    assert!(line.ends_with(&format!(" 1  {codes_text}")), "one proxy, then the codes: {table}");
    assert_eq!(line.split_whitespace().nth(1), Some(total_after.to_string().as_str()), "{table}");
    assert!(table.lines().any(|l| l.starts_with("WORKLOAD (server side)")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("backend-v1.default")), "{table}");

    // Straight from Envoy admin addresses, without the control plane; a proxy that
    // cannot be reached is named, and the rest is still shown.
    let nowhere = SocketAddr::new(h.ip("nowhere"), 15000).to_string();
    let admin = client.admin.to_string();
    let json =
        run_top(&["--envoy-admin", &admin, "--envoy-admin", &nowhere, "--once", "-o", "json", "--interval", "1s"])
            .await?;
    let frame: serde_json::Value = serde_json::from_str(&json)?;
    let backend = service(&frame, HOST)?;
    assert_eq!(codes_of(backend), expected, "{frame:#}");
    assert_eq!(backend["requests_total"].as_u64(), Some(total_after), "{frame:#}");
    assert_eq!(backend["proxies"], serde_json::json!([admin]), "{frame:#}");
    assert_eq!(backend["rps"].as_f64(), Some(0.0), "no traffic in this window: {frame:#}");
    let unreachable = frame["unreachable"].as_array().cloned().unwrap_or_default();
    assert_eq!(unreachable.len(), 1, "{frame:#}");
    assert_eq!(unreachable[0]["proxy"], nowhere.as_str(), "{frame:#}");
    h.check_alive()
}
