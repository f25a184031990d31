//! Issue 7 e: real Envoys against a generated mesh. Starts `spar serve` on a scenario
//! directory and N stock Envoy sidecars (the conformance harness, each on its own
//! loopback IP), waits until every Envoy is ready, then changes one endpoint and reads,
//! from each Envoy's admin interface, the counter that says it applied the new endpoints
//! (`cluster.<cluster>.update_success`): change to applied, per Envoy. Reading that
//! counter costs each Envoy tens of milliseconds, so with many Envoys the polling itself
//! slows what it measures; the same changes are also timed, without any polling of the
//! Envoys, by the ACK each Envoy sends once it has applied them (Spar's sync status).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use spar_conformance::{Envoy, Harness, Pod};

use crate::scenario::{Change, Mesh, ScenarioDir};
use crate::stats::Summary;

/// How often each Envoy's counter (and Spar's sync status) is read. The Envoys run with
/// Istio's stats inclusion list, yet a counter query still costs Envoy time that grows
/// with its clusters (about 1 ms at 20 services, 26-55 ms at 1,000): the query time is
/// reported beside the result, and the ACK timing polls no Envoy.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What to run.
#[derive(Clone, Debug)]
pub struct EnvoysOptions {
    /// Services in the mesh.
    pub services: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Envoys to start.
    pub envoys: usize,
    /// Delta xDS instead of SotW.
    pub delta: bool,
    /// Endpoint changes to time, one after the other.
    pub changes: u32,
}

/// Envoy's admin counter `name` (exact), 0 when absent.
async fn counter(envoy: &Envoy, name: &str) -> anyhow::Result<u64> {
    // An anchored regex with the name's special characters escaped, percent-encoded.
    let mut re = String::from("%5E");
    for c in name.chars() {
        match c {
            '.' => re.push_str("%5C."),
            '|' => re.push_str("%5C%7C"),
            c => re.push(c),
        }
    }
    re.push_str("%24");
    let (_, body) = envoy.admin_get(&format!("/stats?filter={re}")).await?;
    Ok(body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok())).unwrap_or(0))
}

/// Each connected proxy's last ACKed EDS version and when (Unix milliseconds), from
/// Spar's sync status (`/debug/syncz`).
async fn eds_acks(h: &Harness) -> anyhow::Result<HashMap<String, (Option<String>, Option<u64>)>> {
    let r = spar_conformance::http_request(h.debug_address(), "GET", "spar", "/debug/syncz", &[]).await?;
    let proxies: serde_json::Value = serde_json::from_str(&r.body).context("/debug/syncz is not JSON")?;
    Ok(proxies
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let eds = &p["types"]["eds"];
            let proxy = p["proxy"].as_str().unwrap_or_default().to_string();
            (proxy, (eds["acked"].as_str().map(String::from), eds["acked_at_ms"].as_u64()))
        })
        .collect())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rss_mb(pid: Option<u32>) -> u64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb / 1024)
}

/// Runs the benchmark and prints its table.
pub async fn run(opts: &EnvoysOptions) -> anyhow::Result<String> {
    let mut h = Harness::new("envoy-scale", opts.delta)?;
    let mesh = Mesh::new(opts.services, opts.namespaces);
    let scenario = ScenarioDir::write(&h.dir.join("mesh"), mesh.clone(), false)?;
    h.start_spar(std::slice::from_ref(&scenario.dir)).await?;
    // Service 1's cluster, as every Envoy (full mesh) holds it.
    let host = format!("svc-1.{}.svc.cluster.local", mesh.namespaces[1 % mesh.namespaces.len()]);
    let cluster = format!("outbound|9080||{host}");
    let stat = format!("cluster.{cluster}.update_success");
    let start = Instant::now();
    let mut envoys = Vec::new();
    for i in 0..opts.envoys {
        let ns = mesh.namespaces[i % mesh.namespaces.len()].clone();
        let ip = h.ip(&format!("envoy-{i}"));
        let app = format!("client-{i}");
        let mut pod = Pod::new(&format!("envoy-{i}"), ip, &[("app", app.as_str())]);
        pod.namespace = ns;
        let mut b = h.bootstrap(&pod).await?;
        // Istio's default stats inclusion list (its bootstrap keeps Envoy from creating
        // ~100 stats per cluster), plus the one cluster this benchmark reads.
        b["stats_config"] = serde_json::json!({"stats_matcher": {"inclusion_list": {"patterns": [
            {"prefix": "cluster_manager"}, {"prefix": "listener_manager"}, {"prefix": "server"},
            {"prefix": "cluster.xds-grpc"}, {"prefix": format!("cluster.{cluster}.")},
        ]}}});
        envoys.push(h.start_envoy_with(&pod, &b).await?);
    }
    for e in &envoys {
        spar_conformance::wait_for(Duration::from_secs(300), &format!("{} to be ready", e.name), || async {
            e.admin_get("/ready").await.is_ok_and(|(s, _)| s == 200)
        })
        .await?;
    }
    let ready = start.elapsed();
    // First the changes timed by the Envoys' ACKs, with no Envoy polled.
    let mut acked = Vec::new();
    for generation in 1..=opts.changes {
        let before = eds_acks(&h).await?;
        let wall = unix_ms();
        let t0 = Instant::now();
        scenario.apply(Change::Endpoint { service: 1, generation })?;
        loop {
            let now = eds_acks(&h).await?;
            let done: Vec<u64> = now
                .iter()
                .filter(|(p, (version, _))| before.get(*p).is_none_or(|(was, _)| was != version))
                .filter_map(|(_, (_, at))| *at)
                .collect();
            if done.len() >= opts.envoys {
                acked.extend(done.iter().map(|at| Duration::from_millis(at.saturating_sub(wall))));
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "not every Envoy ACKed the change within 60 s");
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    // Then as many changes timed by each Envoy's counter.
    let mut applied = Vec::new();
    for generation in opts.changes + 1..=2 * opts.changes {
        let mut before = Vec::new();
        for e in &envoys {
            before.push(counter(e, &stat).await?);
        }
        let t0 = Instant::now();
        scenario.apply(Change::Endpoint { service: 1, generation })?;
        // One poller per Envoy, concurrently: a stats query walks Envoy's ~100k stats, so
        // polling them one after the other would measure the polling.
        let mut pollers = Vec::new();
        for (e, b) in envoys.iter().cloned().zip(before) {
            let stat = stat.clone();
            pollers.push(tokio::spawn(async move {
                loop {
                    if t0.elapsed() > Duration::from_secs(60) {
                        return None;
                    }
                    let asked = t0.elapsed();
                    if counter(&e, &stat).await.is_ok_and(|n| n > b) {
                        // Applied at the latest when the counter was read; the time the
                        // query was sent is the fairer bound (a query walks all stats).
                        return Some(asked);
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }));
        }
        let mut done = Vec::new();
        for p in pollers {
            done.push(p.await.ok().flatten());
        }
        anyhow::ensure!(done.iter().all(Option::is_some), "not every Envoy applied the change within 60 s");
        applied.extend(done.into_iter().flatten());
    }
    // What one counter query costs (measured with nothing else going on).
    let mut query = Vec::new();
    for e in &envoys {
        let t = Instant::now();
        counter(e, &stat).await?;
        query.push(t.elapsed());
    }
    let spar_rss = rss_mb(h.child_pid("spar"));
    let envoy_rss: Vec<u64> = envoys.iter().map(|e| rss_mb(h.child_pid(&e.name))).collect();
    let config = envoys.first().map(|e| e.admin_get("/config_dump")).context("no Envoy")?.await?.1.len();
    use std::fmt::Write as _;
    let mut t = String::from("| measurement | result |\n|---|---|\n");
    writeln!(
        t,
        "| {} real Envoys ({}) × {} services: all ready (config applied, listeners up) | {:.1} s |",
        opts.envoys,
        if opts.delta { "delta" } else { "SotW" },
        opts.services,
        ready.as_secs_f64()
    )?;
    writeln!(
        t,
        "| one endpoint change → applied by every Envoy (`{stat}` incremented), file write → applied, p50 / p99 / max over {} changes × {} Envoys | {} |",
        opts.changes,
        opts.envoys,
        Summary::of(&applied).display()
    )?;
    writeln!(
        t,
        "| one endpoint change → ACKed by every Envoy (EDS, Spar's sync status; Envoy ACKs once it has applied it; no Envoy polled), file write → ACK, p50 / p99 / max over {} changes × {} Envoys | {} |",
        opts.changes,
        opts.envoys,
        Summary::of(&acked).display()
    )?;
    writeln!(
        t,
        "|   (both include Spar's debounce, 100 ms quiet; for the counter, each Envoy read every {} ms; one counter query takes {} ) | |",
        POLL_EVERY.as_millis(),
        Summary::of(&query).display()
    )?;
    writeln!(t, "| spar RSS | {spar_rss} MB |")?;
    writeln!(
        t,
        "| Envoy RSS, each (min / max) | {} / {} MB |",
        envoy_rss.iter().min().copied().unwrap_or(0),
        envoy_rss.iter().max().copied().unwrap_or(0)
    )?;
    writeln!(t, "| Envoy config dump, bytes | {config} |")?;
    h.check_alive()?;
    Ok(t)
}
