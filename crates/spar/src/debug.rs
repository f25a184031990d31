//! The debug and metrics endpoint (default `127.0.0.1:15014`, loopback because it shows
//! topology): Prometheus metrics under istiod's names, health, per-proxy sync status and
//! the config store.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use spar_model::{Snapshot, Store};
use spar_xds::sds::{Security, SignError};
use spar_xds::server::{Histogram, Metrics, SyncRegistry};
use tokio::sync::watch;

/// What the endpoint reads.
#[derive(Clone)]
pub struct DebugState {
    /// ADS counters.
    pub metrics: Arc<Metrics>,
    /// The wire's block counters.
    pub wire: Arc<spar_xds::wire::Wire>,
    /// Per-proxy sync status.
    pub sync: Arc<SyncRegistry>,
    /// Shared-generation cache counters.
    pub cache: Arc<spar_xds::server::GenerationCache>,
    /// The config store.
    pub store: Arc<Mutex<Store>>,
    /// The current snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// True once the sources have synced and the first snapshot is built.
    pub ready: watch::Receiver<bool>,
    /// The Kubernetes source's per-kind state, when it runs.
    pub kube: Option<Arc<spar_kube::SyncStatus>>,
    /// The CA, once loaded (never, without one): its `citadel_server_*` metrics.
    pub security: Arc<std::sync::OnceLock<Arc<Security>>>,
}

/// The router.
pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/healthz", get(|| async { "ok" }))
        .route("/debug/syncz", get(syncz))
        .route("/debug/configz", get(configz))
        .route("/debug/config_dump", get(config_dump))
        .with_state(state)
}

/// 200 once serving; 503 before, naming the kinds whose first list is still pending.
async fn ready(State(s): State<DebugState>) -> impl IntoResponse {
    if *s.ready.borrow() {
        return (StatusCode::OK, "ok".to_string());
    }
    let waiting: Vec<String> = s
        .kube
        .iter()
        .flat_map(|k| k.states())
        .filter(|(_, st)| *st == spar_kube::source::KindState::Waiting)
        .map(|(k, _)| k.to_string())
        .collect();
    let why = if waiting.is_empty() {
        "building the first snapshot".into()
    } else {
        format!("waiting for {}", waiting.join(", "))
    };
    (StatusCode::SERVICE_UNAVAILABLE, why)
}

async fn metrics(State(s): State<DebugState>) -> impl IntoResponse {
    let snap = s.snapshots.borrow().clone();
    let rejected = s.store.lock().map(|st| st.errors().count()).unwrap_or(0);
    let mut out = String::new();
    fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    metric(
        &mut out,
        "pilot_xds",
        "gauge",
        "Connected xDS clients.",
        s.metrics.connected.load(Ordering::Relaxed).to_string(),
    );
    let _ = writeln!(out, "# HELP pilot_xds_pushes xDS responses sent, by type.\n# TYPE pilot_xds_pushes counter");
    for (t, n) in s.metrics.pushes_by_type.iter() {
        let _ = writeln!(out, "pilot_xds_pushes{{type=\"{}\"}} {}", t.short(), n.load(Ordering::Relaxed));
    }
    histogram(
        &mut out,
        "pilot_proxy_convergence_time",
        "Seconds from a push to the proxy's ACK.",
        &[("", &s.metrics.convergence)],
    );
    let push_time: Vec<(String, &Histogram)> =
        s.metrics.push_time.iter().map(|(t, h)| (format!("type=\"{}\"", t.short()), h)).collect();
    let push_time: Vec<(&str, &Histogram)> = push_time.iter().map(|(l, h)| (l.as_str(), *h)).collect();
    histogram(
        &mut out,
        "pilot_xds_push_time",
        "Seconds from a proxy's stream deciding to respond to the response being handed to the stream, by type.",
        &push_time,
    );
    metric(
        &mut out,
        "spar_xds_pushes_total",
        "counter",
        "xDS responses sent, all types.",
        s.metrics.pushes.load(Ordering::Relaxed).to_string(),
    );
    metric(
        &mut out,
        "pilot_total_xds_rejects",
        "counter",
        "xDS responses rejected (NACKed) by proxies.",
        s.metrics.rejects.load(Ordering::Relaxed).to_string(),
    );
    metric(&mut out, "pilot_services", "gauge", "Services known.", snap.services.len().to_string());
    metric(&mut out, "pilot_virt_services", "gauge", "VirtualServices known.", snap.virtual_services.len().to_string());
    metric(
        &mut out,
        "spar_xds_block_responses",
        "counter",
        "Whole-type responses written as slices of a shared layer's serialized block instead of copied per proxy.",
        s.wire.block_responses.load(Ordering::Relaxed).to_string(),
    );
    metric(
        &mut out,
        "spar_xds_block_builds",
        "counter",
        "Shared layers' blocks serialized (a block lives while responses from it are written).",
        s.wire.block_builds.load(Ordering::Relaxed).to_string(),
    );
    metric(
        &mut out,
        "spar_generation_cache_hits",
        "counter",
        "Proxies served config generated for another replica.",
        s.cache.hits.load(Ordering::Relaxed).to_string(),
    );
    metric(
        &mut out,
        "spar_generation_cache_misses",
        "counter",
        "Config generations (one per snapshot and workload).",
        s.cache.misses.load(Ordering::Relaxed).to_string(),
    );
    metric(
        &mut out,
        "spar_generation_shared_resources",
        "counter",
        "Generated resources that reuse another workload's identical copy.",
        s.cache.shared_resources.load(Ordering::Relaxed).to_string(),
    );
    metric(&mut out, "spar_snapshot_version", "gauge", "Version of the current snapshot.", snap.version.to_string());
    metric(
        &mut out,
        "spar_config_rejected_documents",
        "gauge",
        "Config documents rejected (parse or validation).",
        rejected.to_string(),
    );
    metric(
        &mut out,
        "spar_snapshot_diagnostics",
        "gauge",
        "Conflicts and dangling references in the current snapshot.",
        snap.diagnostics.len().to_string(),
    );
    if let Some(security) = s.security.get() {
        ca_metrics(&mut out, security, &mut metric);
    }
    process_metrics(&mut out, &mut metric);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// A Prometheus histogram with one series per label set (`""` for none): cumulative
/// buckets, `+Inf` (the count), sum and count.
fn histogram(out: &mut String, name: &str, help: &str, series: &[(&str, &Histogram)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, h) in series {
        let (buckets, count, sum) = h.cumulative();
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{labels} {sum}\n{name}_count{labels} {count}");
    }
}

/// istiod's `citadel_server_*` metrics, exported only when Spar runs a CA (as istiod
/// does: without its CA it has none), with every counter present from the start. The
/// expiry gauges are read from the current CA, so they follow a reload.
fn ca_metrics(out: &mut String, security: &Security, metric: &mut impl FnMut(&mut String, &str, &str, &str, String)) {
    let m = &security.metrics;
    let counters = [
        (
            "citadel_server_csr_count",
            "Certificate requests received: CSRs on the CSR API and workload certificates issued over SDS.",
            &m.csr,
        ),
        ("citadel_server_success_cert_issuance_count", "Certificates issued.", &m.success),
        ("citadel_server_authentication_failure_count", "CSR API calls that proved no identity.", &m.authn_failures),
        ("citadel_server_csr_parsing_err_count", "CSRs that do not parse.", &m.csr_parsing_errors),
    ];
    for (name, help, v) in counters {
        metric(out, name, "counter", help, v.load(Ordering::Relaxed).to_string());
    }
    let _ = writeln!(
        out,
        "# HELP citadel_server_csr_sign_err_count Certificate signing failures, by error type.\n# TYPE citadel_server_csr_sign_err_count counter"
    );
    for e in SignError::ALL {
        let n = m.sign_errors[e as usize].load(Ordering::Relaxed);
        let _ = writeln!(out, "citadel_server_csr_sign_err_count{{error=\"{}\"}} {n}", e.label());
    }
    let ca = security.ca();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let expiries = [
        ("root_cert", "the first trusted root (root-cert.pem)", ca.root_expiry_unix()),
        ("cert_chain", "the signing intermediate (cacerts' ca-cert.pem)", ca.intermediate_expiry_unix()),
    ];
    for (what, help, at) in expiries {
        let Some(at) = at else { continue };
        metric(
            out,
            &format!("citadel_server_{what}_expiry_timestamp"),
            "gauge",
            &format!("Unix time, in seconds, when {help} expires."),
            at.to_string(),
        );
        metric(
            out,
            &format!("citadel_server_{what}_expiry_seconds"),
            "gauge",
            &format!("Seconds until {help} expires (negative once expired)."),
            at.saturating_sub(now).to_string(),
        );
    }
}

/// The process's own resident memory and CPU time under the names Prometheus client
/// libraries use (Linux `/proc/self`; absent elsewhere).
fn process_metrics(out: &mut String, metric: &mut impl FnMut(&mut String, &str, &str, &str, String)) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()));
    if let Some(kb) = rss_kb {
        metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (kb * 1024).to_string(),
        );
    }
    // utime and stime are fields 14 and 15, after the parenthesised command name; in clock
    // ticks, which are 100 per second on Linux.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    });
    if let Some(t) = ticks {
        let secs = format!("{:.2}", t as f64 / 100.0);
        metric(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", secs);
    }
}

async fn syncz(State(s): State<DebugState>) -> impl IntoResponse {
    axum::Json(s.sync.snapshot())
}

async fn configz(State(s): State<DebugState>) -> impl IntoResponse {
    let Ok(store) = s.store.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable").into_response();
    };
    let units: Vec<serde_json::Value> = store
        .units()
        .iter()
        .map(|(name, unit)| {
            serde_json::json!({
                "file": &**name,
                "objects": unit.objects.iter().map(|o| serde_json::json!({"resource": o.key().to_string(), "origin": o.origin.to_string()})).collect::<Vec<_>>(),
                "rejected": unit.errors.iter().map(|e| serde_json::json!({"origin": e.origin.to_string(), "resource": e.resource, "reason": e.reason})).collect::<Vec<_>>(),
                "ignored": unit.ignored.iter().map(|(o, what)| serde_json::json!({"origin": o.to_string(), "resource": what})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let snap = s.snapshots.borrow().clone();
    let diagnostics: Vec<_> = snap
        .diagnostics
        .iter()
        .map(|d| serde_json::json!({"origin": d.origin.to_string(), "resource": d.resource, "message": d.message}))
        .collect();
    axum::Json(serde_json::json!({"snapshot": snap.version, "units": units, "diagnostics": diagnostics}))
        .into_response()
}

/// `?proxy=` of `/debug/config_dump`.
#[derive(serde::Deserialize)]
struct ProxyQuery {
    proxy: String,
}

/// The configuration Spar serves one connected proxy (generated from the snapshot its
/// stream last processed, with its secrets), as rows (`spar proxy-config`). `proxy` is a
/// node id or a part of one (a pod name).
async fn config_dump(
    State(s): State<DebugState>,
    axum::extract::Query(q): axum::extract::Query<ProxyQuery>,
) -> impl IntoResponse {
    let streams = s.sync.snapshot();
    let exact: Vec<_> = streams.iter().filter(|p| p.proxy == q.proxy).collect();
    let found = if exact.is_empty() { streams.iter().filter(|p| p.proxy.contains(&q.proxy)).collect() } else { exact };
    let mut ids: Vec<&str> = found.iter().map(|p| p.proxy.as_str()).collect();
    ids.dedup();
    let (Some(p), 1) = (found.first(), ids.len()) else {
        let why = if ids.is_empty() {
            format!("no connected proxy matches {:?}", q.proxy)
        } else {
            format!("{:?} matches several proxies: {}", q.proxy, ids.join(", "))
        };
        return (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": why}))).into_response();
    };
    let Some(resources) = p.resources.clone() else {
        return (StatusCode::NOT_FOUND, "proxy resources unavailable").into_response();
    };
    let rows = spar_generate::summary::ConfigRows::of_resources(&resources);
    axum::Json(serde_json::json!({"proxy": p.proxy, "snapshot": resources.snapshot_version, "config": rows}))
        .into_response()
}

/// GET `path` from `address` (spar's debug endpoint, or an Envoy admin) and parse the
/// JSON body (HTTP/1.1, `Connection: close`; a chunked body is decoded).
pub(crate) async fn get_json(address: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, ok, body) = http_get(address, path).await?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("{address}{path}: not JSON ({e}): {status}"))?;
    if !ok {
        anyhow::bail!("{address}{path}: {}", json["error"].as_str().unwrap_or(&status));
    }
    Ok(json)
}

/// GET `path` from `address` and return the body as text (e.g. an Envoy's
/// `/stats/prometheus`); a status other than 2xx is an error naming it.
pub(crate) async fn get_text(address: &str, path: &str) -> anyhow::Result<String> {
    let (status, ok, body) = http_get(address, path).await?;
    if !ok {
        anyhow::bail!("{address}{path}: {status}");
    }
    String::from_utf8(body).map_err(|_| anyhow::anyhow!("{address}{path}: the body is not UTF-8"))
}

/// One HTTP/1.1 GET on hyper's client: the status line, whether the status is 2xx, and
/// the body.
async fn http_get(address: &str, path: &str) -> anyhow::Result<(String, bool, Vec<u8>)> {
    use http_body_util::{BodyExt, Empty};
    let tcp =
        tokio::net::TcpStream::connect(address).await.map_err(|e| anyhow::anyhow!("cannot reach {address}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    // The connection is driven beside the request and ends with it.
    let driver = tokio::spawn(conn);
    let request =
        hyper::Request::get(path).header(hyper::header::HOST, address).body(Empty::<hyper::body::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let (version, status) = (response.version(), response.status());
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    driver.abort();
    Ok((format!("{version:?} {status}"), status.is_success(), body))
}

/// `spar wait`: blocks until every connected proxy has ACKed what it was sent from
/// snapshot `version` (default: the current one) or later. Fails, naming the proxy, the
/// type and Envoy's message, when a proxy NACKed it, and on `timeout`.
pub async fn wait(address: &str, version: Option<u64>, timeout: std::time::Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let target = match version {
        Some(v) => v,
        None => get_json(address, "/debug/configz").await?["snapshot"].as_u64().unwrap_or(0),
    };
    loop {
        let proxies = get_json(address, "/debug/syncz").await?;
        let proxies = proxies.as_array().cloned().unwrap_or_default();
        let mut pending = Vec::new();
        let mut nacked = Vec::new();
        // Proxies that proved no identity while Spar has a secure port could be anyone:
        // they neither hold the wait up nor fail it.
        let (unverified, proxies): (Vec<_>, Vec<_>) = proxies.iter().partition(|p| p["unverified"] == true);
        for p in &proxies {
            let name = p["proxy"].as_str().unwrap_or("?");
            if p["snapshot"].as_u64().unwrap_or(0) < target {
                pending.push(format!("{name}: not yet given snapshot {target}"));
                continue;
            }
            for (t, st) in p["types"].as_object().into_iter().flatten() {
                if st["sent"].is_null() {
                    continue;
                }
                if !st["nack"].is_null() && st["nack"]["version"] == st["sent"] {
                    nacked.push(format!("{name} {t}: {}", st["nack"]["message"].as_str().unwrap_or("")));
                } else if st["acked"] != st["sent"] {
                    pending.push(format!("{name} {t}: sent, not ACKed yet"));
                }
            }
        }
        if !nacked.is_empty() {
            anyhow::bail!("snapshot {target} was rejected (NACK):\n  {}", nacked.join("\n  "));
        }
        if pending.is_empty() {
            let skipped = if unverified.is_empty() {
                String::new()
            } else {
                format!(" ({} proxies that proved no identity not counted)", unverified.len())
            };
            println!("all {} proxies hold snapshot {target} or later{skipped}", proxies.len());
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for snapshot {target}; still waiting for:\n  {}",
                pending.join("\n  ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What `spar proxy-status -o` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    /// One row per proxy, a column per type (the default).
    Table,
    /// `/debug/syncz` as a JSON array.
    Json,
    /// The same as YAML.
    Yaml,
}

impl std::str::FromStr for StatusFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "table" | "" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            "yaml" => Ok(Self::Yaml),
            other => anyhow::bail!("unknown output format {other:?}: table, json or yaml"),
        }
    }
}

/// `true` is JSON, `false` the table (what callers that only knew those two pass).
impl From<bool> for StatusFormat {
    fn from(json: bool) -> Self {
        if json { Self::Json } else { Self::Table }
    }
}

/// The proxies as JSON or YAML (`None` for the table).
fn render_proxies(proxies: &[serde_json::Value], format: StatusFormat) -> anyhow::Result<Option<String>> {
    Ok(match format {
        StatusFormat::Table => None,
        StatusFormat::Json => Some(serde_json::to_string_pretty(proxies)?),
        StatusFormat::Yaml => Some(serde_yaml_ng::to_string(proxies)?),
    })
}

/// `spar proxy-status`.
pub async fn proxy_status(address: &str, format: impl Into<StatusFormat>) -> anyhow::Result<()> {
    let proxies: Vec<serde_json::Value> =
        get_json(address, "/debug/syncz").await?.as_array().cloned().unwrap_or_default();
    if let Some(text) = render_proxies(&proxies, format.into())? {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    println!("{:<64} {:<6} {:<16} {:<16} {:<16} {:<16} {:<16}", "NAME", "XDS", "CDS", "LDS", "EDS", "RDS", "SDS");
    for p in &proxies {
        let col = |t: &str| -> String {
            let st = &p["types"][t];
            if st.is_null() || st["sent"].is_null() {
                return "-".into();
            }
            let age = |k: &str| st[k].as_u64().map(|t| format!(" {}s", now.saturating_sub(t))).unwrap_or_default();
            if st["nack"]["version"] == st["sent"] && !st["nack"].is_null() {
                let mark = if p["unverified"] == true { "*" } else { "" };
                format!("NACKED{mark}{}", age("sent_at"))
            } else if st["acked"] == st["sent"] {
                format!("SYNCED{}", age("acked_at"))
            } else {
                format!("STALE{}", age("sent_at"))
            }
        };
        println!(
            "{:<64} {:<6} {:<16} {:<16} {:<16} {:<16} {:<16}",
            p["proxy"].as_str().unwrap_or("?"),
            p["variant"].as_str().unwrap_or("?"),
            col("cds"),
            col("lds"),
            col("eds"),
            col("rds"),
            col("sds")
        );
        for (t, st) in p["types"].as_object().into_iter().flatten() {
            if let Some(msg) = st["nack"]["message"].as_str() {
                if p["unverified"] == true {
                    let msg: String = msg.chars().take(200).collect();
                    println!("    {t} NACK* (from a proxy that proved no identity; not believed): {msg}");
                } else {
                    println!("    {t} NACK: {msg}");
                    if let Some(outcome) = st["nack"]["outcome"].as_str() {
                        println!("      {outcome}");
                    }
                    let from: Vec<&str> =
                        st["nack"]["from"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
                    if !from.is_empty() {
                        println!("      from {}", from.join(", "));
                    }
                }
            }
        }
        for w in p["warnings"].as_array().into_iter().flatten().filter_map(|w| w.as_str()) {
            println!("    left out: {w}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn proxy_status_yaml_is_the_json_in_yaml() {
        use super::{StatusFormat, render_proxies};
        let proxies = vec![serde_json::json!({
            "proxy": "sidecar~10.0.0.1~client.default~default.svc.cluster.local",
            "variant": "sotw",
            "identity": null,
            "snapshot": 3,
            "types": {"cds": {"sent": "3", "acked": "3", "nack": null}, "lds": {"sent": "3", "nack": {"version": "3", "message": "bad: \"x\"", "at": 1}}},
        })];
        let yaml = render_proxies(&proxies, StatusFormat::Yaml).expect("yaml").expect("text");
        let back: Vec<serde_json::Value> = serde_yaml_ng::from_str(&yaml).expect("parses");
        assert_eq!(back, proxies, "{yaml}");
        let json = render_proxies(&proxies, StatusFormat::Json).expect("json").expect("text");
        assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&json).expect("parses"), proxies);
        assert_eq!(render_proxies(&proxies, StatusFormat::Table).expect("table"), None);
        assert_eq!("yaml".parse::<StatusFormat>().ok(), Some(StatusFormat::Yaml));
        assert_eq!("json".parse::<StatusFormat>().ok(), Some(StatusFormat::Json));
        assert_eq!("table".parse::<StatusFormat>().ok(), Some(StatusFormat::Table));
        assert!("xml".parse::<StatusFormat>().is_err());
        assert_eq!(StatusFormat::from(true), StatusFormat::Json);
        assert_eq!(StatusFormat::from(false), StatusFormat::Table);
    }

    #[test]
    fn histograms_render_per_label_set() {
        use spar_xds::server::Histogram;
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(std::time::Duration::from_millis(50));
        h.observe(std::time::Duration::from_secs(5));
        let none = Histogram::new(&[0.1, 1.0]);
        let mut out = String::new();
        super::histogram(&mut out, "x", "Help.", &[("type=\"cds\"", &h), ("type=\"eds\"", &none)]);
        let expected = "# HELP x Help.\n# TYPE x histogram\n\
            x_bucket{type=\"cds\",le=\"0.1\"} 1\nx_bucket{type=\"cds\",le=\"1\"} 1\nx_bucket{type=\"cds\",le=\"+Inf\"} 2\n\
            x_sum{type=\"cds\"} 5.05\nx_count{type=\"cds\"} 2\n\
            x_bucket{type=\"eds\",le=\"0.1\"} 0\nx_bucket{type=\"eds\",le=\"1\"} 0\nx_bucket{type=\"eds\",le=\"+Inf\"} 0\n\
            x_sum{type=\"eds\"} 0\nx_count{type=\"eds\"} 0\n";
        assert_eq!(out, expected);
        let mut out = String::new();
        super::histogram(&mut out, "y", "Help.", &[("", &none)]);
        assert!(out.contains("y_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"), "{out}");
    }

    #[test]
    fn ca_metrics_start_at_zero_and_show_the_root_expiry() {
        use std::fmt::Write as _;
        let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
        let ca = spar_ca::Ca::from_pem("cluster.local", &cert, &key, &cert, &cert).expect("ca");
        let expiry = ca.root_expiry_unix().expect("the root parses");
        let security = spar_xds::sds::Security::new(ca, std::time::Duration::from_secs(3600));
        let mut out = String::new();
        super::ca_metrics(&mut out, &security, &mut |out: &mut String, name: &str, _: &str, _: &str, v: String| {
            let _ = writeln!(out, "{name} {v}");
        });
        for zero in [
            "citadel_server_csr_count 0",
            "citadel_server_success_cert_issuance_count 0",
            "citadel_server_authentication_failure_count 0",
            "citadel_server_csr_sign_err_count{error=\"CSR_ERROR\"} 0",
            "citadel_server_csr_sign_err_count{error=\"CERT_GEN_ERROR\"} 0",
        ] {
            assert!(out.lines().any(|l| l == zero), "{zero} in {out}");
        }
        assert!(out.lines().any(|l| l == format!("citadel_server_root_cert_expiry_timestamp {expiry}")), "{out}");
        assert!(!out.contains("cert_chain"), "a self-signed root has no chain to expire: {out}");
    }

    /// A one-shot HTTP server answering `response` (raw bytes) to one request.
    async fn answer_once(response: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_whole_and_an_error_status_is_an_error_naming_it() {
        let addr = answer_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(super::get_text(&addr, "/x").await.expect("200"), "{\"a\":1}");
        let addr = answer_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let e = super::get_text(&addr, "/ready").await.expect_err("503");
        assert!(e.to_string().ends_with("/ready: HTTP/1.1 503 Service Unavailable"), "{e}");
    }
}
