//! `spar top`: golden metrics (requests per second, success rate, latency percentiles)
//! per destination service, read straight from the proxies' Envoy statistics, without
//! a Prometheus server (Linkerd's `viz stat`/`top`).
//!
//! ```text
//!  spar /debug/syncz ─► node ids ─► <ip>:15090 ─┐
//!  --envoy-admin ADDR ──────────────► ADDR ─────┴─► GET /stats/prometheus ─► parse: per cluster
//!        upstream_rq{code}, upstream_rq_total, upstream_rq_time buckets
//!  two scrapes --interval apart ─► per proxy and cluster: now - before (a reset counts from 0)
//!        ─► summed per service host (outbound|port|subset|host) and per workload (inbound|port||)
//! ```
//!
//! What Envoy exports, as read from the pinned Envoy: per cluster the counters
//! `envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="..."}`, and
//! `envoy_cluster_upstream_rq_total`, and the histogram `envoy_cluster_upstream_rq_time`
//! (milliseconds, cumulative `_bucket{le}`). Envoy's default tag extraction takes a
//! cluster name only up to its first dot; the rest of the name lands in the metric name:
//! `outbound|9080|v1|backend.default.svc.cluster.local` comes out as
//! `envoy_cluster_default_svc_cluster_local_upstream_rq{envoy_cluster_name="outbound|9080|v1|backend"}`.
//! [`cluster_name`] puts the two halves back together. Histograms reach the admin
//! output when Envoy merges them, at each stats flush (every 5 s by default).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Longest wait for one proxy's stats: a hung proxy is reported, not waited for.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Output of `spar top`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table per frame (the screen is cleared between frames).
    Table,
    /// The frame as JSON (one object per line when refreshing).
    Json,
}

/// `spar top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Spar's debug endpoint, where the connected proxies are listed (`/debug/syncz`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: String,
    /// The port where each proxy serves `/stats/prometheus` on its IP (the node id's),
    /// as `spar bootstrap --prometheus-port` sets it up.
    #[arg(long, default_value_t = 15090)]
    stats_port: u16,
    /// Scrape this Envoy admin address (`host:port`, `/stats/prometheus`) instead of the
    /// control plane's proxies. Repeatable.
    #[arg(long)]
    envoy_admin: Vec<String>,
    /// Time between the two scrapes that make a frame's rates.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    interval: Duration,
    /// Print one frame and exit.
    #[arg(long)]
    once: bool,
    /// Output: `table`, or `json`.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

/// Stats text that is not the Prometheus text format.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    line: usize,
    /// What is wrong.
    why: &'static str,
    /// The line (cut to 120 characters).
    text: String,
}

/// Cumulative histogram buckets: `(upper bound, observations <= bound)`, ascending by
/// bound; `+Inf` is `f64::INFINITY`. A bound absent from one histogram is read as the
/// count at the largest bound it does have below it (a lower bound of the true count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// From buckets in any order (a repeated bound keeps the last count).
    fn from_buckets(mut buckets: Vec<(f64, u64)>) -> Self {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = later.1;
            }
            same
        });
        // Cumulative counts never decrease; bad input is made so rather than trusted.
        let mut max = 0;
        for b in &mut buckets {
            max = max.max(b.1);
            b.1 = max;
        }
        Self { buckets }
    }

    /// Observations at or below `bound`.
    fn count_at(&self, bound: f64) -> u64 {
        self.buckets.iter().take_while(|(b, _)| *b <= bound).last().map_or(0, |(_, c)| *c)
    }

    /// Every observation (the `+Inf` bucket, or the largest one there is).
    fn total(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, c)| *c)
    }

    /// The sum of several histograms, over the union of their bounds.
    fn sum<'a>(all: impl IntoIterator<Item = &'a Histogram> + Clone) -> Self {
        let mut bounds: Vec<f64> = all.clone().into_iter().flat_map(|h| h.buckets.iter().map(|(b, _)| *b)).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let buckets = bounds.iter().map(|&b| (b, all.clone().into_iter().map(|h| h.count_at(b)).sum())).collect();
        Self::from_buckets(buckets)
    }

    /// What was observed after `before` (same series, no reset).
    fn since(&self, before: &Histogram) -> Self {
        Self::from_buckets(self.buckets.iter().map(|&(b, c)| (b, c.saturating_sub(before.count_at(b)))).collect())
    }

    /// The `q` quantile (0 < q <= 1), interpolated linearly within its bucket (from the
    /// bucket below's bound, 0 for the first); in the `+Inf` bucket it is the largest
    /// finite bound. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(bound, count) in &self.buckets {
            if count as f64 >= rank && count > below {
                if bound.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (bound - lower) * (rank - below as f64) / (count - below) as f64);
            }
            lower = bound;
            below = count;
        }
        Some(lower)
    }
}

/// One Envoy cluster's request counters and latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterStats {
    /// `upstream_rq_total`: requests sent (retries included).
    pub total: u64,
    /// `upstream_rq` by response code.
    pub codes: BTreeMap<u16, u64>,
    /// `upstream_rq_time`, in milliseconds.
    pub latency: Histogram,
}

impl ClusterStats {
    /// What happened between `before` and `self`. When any counter went down the proxy
    /// restarted (or the cluster was re-created) in between: everything it has now
    /// happened since.
    fn since(&self, before: &ClusterStats) -> ClusterStats {
        let reset = self.total < before.total
            || before.codes.iter().any(|(code, n)| self.codes.get(code).copied().unwrap_or(0) < *n)
            || self.latency.total() < before.latency.total();
        if reset {
            return self.clone();
        }
        ClusterStats {
            total: self.total - before.total,
            codes: self
                .codes
                .iter()
                .map(|(code, n)| (*code, n - before.codes.get(code).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency: self.latency.since(&before.latency),
        }
    }

    fn add(&mut self, other: &ClusterStats) {
        self.total += other.total;
        for (code, n) in &other.codes {
            *self.codes.entry(*code).or_insert(0) += n;
        }
    }
}

/// One parsed sample: metric name, labels, value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, names: &[&str]) -> Option<&str> {
        self.labels.iter().find(|(k, _)| names.contains(k)).map(|(_, v)| v.as_str())
    }
}

/// One line of the Prometheus text format: `None` for blank lines and comments.
fn parse_line(line: &str) -> Result<Option<Sample<'_>>, &'static str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=').ok_or("a label without '='")?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err("a bad label name");
            }
            let mut chars = after.trim_start().strip_prefix('"').ok_or("a label value without quotes")?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("an unterminated label value")?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            let quoted = after.trim_start().strip_prefix('"').unwrap_or_default();
            rest = &quoted[end + 1..];
            labels.push((key, value));
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| "a value that is not a number")?;
    if fields.next().is_some_and(|ts| ts.parse::<i64>().is_err()) || fields.next().is_some() {
        return Err("text after the value");
    }
    Ok(Some(Sample { name, labels, value }))
}

/// A cluster's full name from Envoy's Prometheus output: the `envoy_cluster_name` label
/// holds the name up to its first dot and `rest` (the metric name between
/// `envoy_cluster_` and the stat) the remainder, sanitized (every `.` and `-` became
/// `_`). For a Kubernetes host (`<ns>_svc_<domain>`) the namespace gets its dashes back
/// (namespaces have no dots or underscores); elsewhere `_` is read as `.`.
pub fn cluster_name(label: &str, rest: &str) -> String {
    if rest.is_empty() {
        return label.to_string();
    }
    let tail = match rest.rfind("_svc_") {
        Some(i) => format!("{}.svc.{}", rest[..i].replace('_', "-"), rest[i + 5..].replace('_', ".")),
        None => rest.replace('_', "."),
    };
    format!("{label}.{tail}")
}

/// Envoy's `/stats/prometheus` text: the request stats of every cluster, by full
/// cluster name. Other metrics are skipped; a line that is not the text format is an
/// error.
pub fn parse(text: &str) -> Result<BTreeMap<String, ClusterStats>, ParseError> {
    #[derive(Clone, Copy)]
    enum Kind {
        Code,
        Total,
        Bucket,
    }
    let mut clusters: BTreeMap<String, ClusterStats> = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |why| ParseError { line: i + 1, why, text: line.chars().take(120).collect() };
        let Some(s) = parse_line(line).map_err(err)? else { continue };
        let Some(rest) = s.name.strip_prefix("envoy_cluster_") else { continue };
        let (rest, kind) = if let Some(r) = rest.strip_suffix("upstream_rq_time_bucket") {
            (r, Kind::Bucket)
        } else if let Some(r) = rest.strip_suffix("upstream_rq_total") {
            (r, Kind::Total)
        } else if let Some(r) = rest.strip_suffix("upstream_rq") {
            (r, Kind::Code)
        } else {
            continue;
        };
        let Some(rest) = rest.strip_suffix('_').or(rest.is_empty().then_some("")) else { continue };
        // The same requests split by origin (x-envoy-internal) and for canary hosts.
        if matches!(rest.rsplit('_').next(), Some("external" | "internal" | "canary")) {
            continue;
        }
        let Some(label) = s.label(&["envoy_cluster_name", "cluster_name"]) else { continue };
        if !(s.value >= 0.0 && s.value < u64::MAX as f64) {
            return Err(err("a count that is negative or not finite"));
        }
        let count = s.value.round() as u64;
        let name = cluster_name(label, rest);
        match kind {
            Kind::Total => clusters.entry(name).or_default().total = count,
            Kind::Code => {
                let code = s.label(&["envoy_response_code", "response_code"]).and_then(|c| c.parse().ok());
                let Some(code) = code else { return Err(err("upstream_rq without a response code")) };
                clusters.entry(name).or_default().codes.insert(code, count);
            }
            Kind::Bucket => {
                let bound = s.label(&["le"]).and_then(|b| b.parse::<f64>().ok()).filter(|b| !b.is_nan());
                let Some(bound) = bound else { return Err(err("a bucket without a numeric le")) };
                buckets.entry(name.clone()).or_default().push((bound, count));
                clusters.entry(name).or_default();
            }
        }
    }
    for (name, b) in buckets {
        if let Some(c) = clusters.get_mut(&name) {
            c.latency = Histogram::from_buckets(b);
        }
    }
    Ok(clusters)
}

/// What a cluster's traffic is counted under.
#[derive(Debug, PartialEq, Eq)]
enum Side<'a> {
    /// Client side: the destination service host.
    Outbound(&'a str),
    /// Server side: the workload the proxy fronts.
    Inbound,
}

fn side(cluster: &str) -> Option<Side<'_>> {
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => Some(Side::Outbound(host)),
        (Some("inbound"), Some(_), Some(_), Some(_)) => Some(Side::Inbound),
        _ => None,
    }
}

/// One proxy's stats at one moment.
#[derive(Clone, Debug)]
pub struct ProxyStats {
    /// The proxy's name (`pod.namespace`, or the admin address).
    pub proxy: String,
    /// Its clusters.
    pub clusters: BTreeMap<String, ClusterStats>,
}

/// Every proxy's stats at one moment, and the proxies that could not be read.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// When.
    pub at: Instant,
    /// Proxies read.
    pub proxies: Vec<ProxyStats>,
    /// `(proxy, why)` for each proxy that could not be read.
    pub failed: Vec<(String, String)>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The golden metrics of one service or workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Golden {
    /// Requests since the proxies started (`upstream_rq_total`).
    pub requests_total: u64,
    /// Responses by status code since the proxies started.
    pub codes: BTreeMap<String, u64>,
    /// Requests per second over the window.
    pub rps: f64,
    /// Responses that were not 5xx over all responses, in the window; `None` without
    /// responses.
    pub success_rate: Option<f64>,
    /// Latency percentiles over the window's observations; `None` without any.
    pub latency_ms: Option<Latency>,
}

/// A destination service, as its clients saw it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceRow {
    /// Service host.
    pub host: String,
    /// Metrics.
    #[serde(flatten)]
    pub golden: Golden,
    /// Proxies that sent it requests.
    pub proxies: Vec<String>,
}

/// A workload, as its own proxy saw its inbound requests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkloadRow {
    /// The proxy (`pod.namespace`).
    pub workload: String,
    /// Metrics.
    #[serde(flatten)]
    pub golden: Golden,
}

/// A proxy that could not be read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Unreachable {
    /// The proxy.
    pub proxy: String,
    /// Why.
    pub error: String,
}

/// One screen of `spar top`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Frame {
    /// Seconds between the two scrapes.
    pub window_s: f64,
    /// Proxies read.
    pub proxies: usize,
    /// Client side, per destination service host: busiest first.
    pub services: Vec<ServiceRow>,
    /// Server side, per workload (inbound clusters): busiest first.
    pub workloads: Vec<WorkloadRow>,
    /// Proxies whose stats could not be read.
    pub unreachable: Vec<Unreachable>,
}

/// Totals, window deltas and window histograms of a group of clusters.
#[derive(Default)]
struct Acc {
    totals: ClusterStats,
    window: ClusterStats,
    histograms: Vec<Histogram>,
    proxies: BTreeSet<String>,
}

impl Acc {
    fn golden(&self, window_s: f64) -> Golden {
        let answered: u64 = self.window.codes.values().sum();
        let failed: u64 = self.window.codes.iter().filter(|(c, _)| (500..600).contains(*c)).map(|(_, n)| n).sum();
        let latency = Histogram::sum(&self.histograms);
        let latency_ms = match (latency.quantile(0.5), latency.quantile(0.9), latency.quantile(0.99)) {
            (Some(p50), Some(p90), Some(p99)) => Some(Latency { p50, p90, p99 }),
            _ => None,
        };
        Golden {
            requests_total: self.totals.total,
            codes: self.totals.codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            rps: if window_s > 0.0 { self.window.total as f64 / window_s } else { 0.0 },
            success_rate: (answered > 0).then(|| (answered - failed) as f64 / answered as f64),
            latency_ms,
        }
    }
}

/// The frame between two scrapes. A proxy absent from `before` counts in the totals but
/// not in the window (its starting point is unknown); a cluster absent from `before`
/// is new, so all of it is in the window.
pub fn frame(before: &Scrape, now: &Scrape) -> Frame {
    let window_s = now.at.saturating_duration_since(before.at).as_secs_f64();
    let mut services: BTreeMap<String, Acc> = BTreeMap::new();
    let mut workloads: BTreeMap<String, Acc> = BTreeMap::new();
    let empty = ClusterStats::default();
    for p in &now.proxies {
        let base = before.proxies.iter().find(|b| b.proxy == p.proxy);
        for (cluster, stats) in &p.clusters {
            let acc = match side(cluster) {
                Some(Side::Outbound(host)) => services.entry(host.to_string()).or_default(),
                Some(Side::Inbound) => workloads.entry(p.proxy.clone()).or_default(),
                None => continue,
            };
            acc.totals.add(stats);
            if stats.total > 0 {
                acc.proxies.insert(p.proxy.clone());
            }
            if let Some(base) = base {
                let delta = stats.since(base.clusters.get(cluster).unwrap_or(&empty));
                acc.window.add(&delta);
                acc.histograms.push(delta.latency);
            }
        }
    }
    let busy = |a: &Acc| a.totals.total > 0 || a.window.total > 0;
    let mut services: Vec<ServiceRow> = services
        .into_iter()
        .filter(|(_, a)| busy(a))
        .map(|(host, a)| ServiceRow { golden: a.golden(window_s), proxies: a.proxies.into_iter().collect(), host })
        .collect();
    services.sort_by(|a, b| order(&a.golden, &b.golden).then_with(|| a.host.cmp(&b.host)));
    let mut workloads: Vec<WorkloadRow> = workloads
        .into_iter()
        .filter(|(_, a)| busy(a))
        .map(|(workload, a)| WorkloadRow { golden: a.golden(window_s), workload })
        .collect();
    workloads.sort_by(|a, b| order(&a.golden, &b.golden).then_with(|| a.workload.cmp(&b.workload)));
    Frame {
        window_s,
        proxies: now.proxies.len(),
        services,
        workloads,
        unreachable: now
            .failed
            .iter()
            .map(|(proxy, error)| Unreachable { proxy: proxy.clone(), error: error.clone() })
            .collect(),
    }
}

/// Busiest first: by requests per second, then by total.
fn order(a: &Golden, b: &Golden) -> std::cmp::Ordering {
    b.rps.total_cmp(&a.rps).then_with(|| b.requests_total.cmp(&a.requests_total))
}

/// A proxy's name and stats address from its node id
/// (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, read as the server reads it):
/// `(pod.ns, ip:port)`.
fn target_of(node_id: &str, port: u16) -> (String, Result<String, String>) {
    match spar_model::Proxy::from_node(node_id, &serde_json::Value::Null) {
        Ok(p) => {
            let addr = p.ips.first().map(|ip| std::net::SocketAddr::new(*ip, port).to_string());
            (format!("{}.{}", p.name, p.namespace), addr.ok_or_else(|| format!("no IP in node id {node_id:?}")))
        }
        Err(e) => (node_id.to_string(), Err(e.to_string())),
    }
}

/// Who to scrape: `(proxy, address)`, or `(proxy, why not)`.
async fn targets(a: &TopArgs) -> anyhow::Result<Vec<(String, Result<String, String>)>> {
    if !a.envoy_admin.is_empty() {
        return Ok(a.envoy_admin.iter().map(|addr| (addr.clone(), Ok(addr.clone()))).collect());
    }
    let proxies = crate::debug::get_json(&a.debug_address, "/debug/syncz").await?;
    let ids: BTreeSet<&str> = proxies.as_array().into_iter().flatten().filter_map(|p| p["proxy"].as_str()).collect();
    Ok(ids.into_iter().map(|id| target_of(id, a.stats_port)).collect())
}

/// Reads every target's stats, concurrently.
async fn scrape(targets: Vec<(String, Result<String, String>)>) -> Scrape {
    let mut tasks = tokio::task::JoinSet::new();
    let mut failed = Vec::new();
    for (proxy, addr) in targets {
        match addr {
            Err(why) => failed.push((proxy, why)),
            Ok(addr) => {
                tasks.spawn(async move {
                    let got = tokio::time::timeout(SCRAPE_TIMEOUT, crate::debug::get_text(&addr, "/stats/prometheus"))
                        .await
                        .map_err(|_| format!("{addr}: no answer within {SCRAPE_TIMEOUT:?}"))
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .and_then(|text| parse(&text).map_err(|e| format!("{addr}: bad stats: {e}")));
                    (proxy, got)
                });
            }
        }
    }
    let mut proxies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((proxy, Ok(clusters))) => proxies.push(ProxyStats { proxy, clusters }),
            Ok((proxy, Err(why))) => failed.push((proxy, why)),
            Err(e) => failed.push(("?".into(), format!("scrape task failed: {e}"))),
        }
    }
    proxies.sort_by(|a, b| a.proxy.cmp(&b.proxy));
    failed.sort();
    Scrape { at: Instant::now(), proxies, failed }
}

/// `spar top`: scrapes, waits `--interval`, scrapes again and prints the frame; again
/// and again until interrupted, or once with `--once`.
pub async fn run(a: &TopArgs) -> anyhow::Result<()> {
    let mut before = scrape(targets(a).await?).await;
    // Envoy merges latency histograms at each stats flush (5 s by default): a window
    // without a flush shows the last latency seen for a service still taking traffic.
    let mut last_latency: BTreeMap<String, Latency> = BTreeMap::new();
    loop {
        tokio::time::sleep(a.interval).await;
        let now = scrape(targets(a).await?).await;
        let mut f = frame(&before, &now);
        for s in &mut f.services {
            match s.golden.latency_ms {
                Some(l) => {
                    last_latency.insert(s.host.clone(), l);
                }
                None if s.golden.rps > 0.0 => s.golden.latency_ms = last_latency.get(&s.host).copied(),
                None => {}
            }
        }
        match (a.output, a.once) {
            (Output::Json, true) => println!("{}", serde_json::to_string_pretty(&f)?),
            (Output::Json, false) => println!("{}", serde_json::to_string(&f)?),
            (Output::Table, once) => {
                if !once {
                    // Clear the screen and go home, like top.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render(&f));
            }
        }
        if a.once {
            return Ok(());
        }
        before = now;
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}ms")
    } else if v < 100.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.0}ms")
    }
}

/// One table line; `proxies` is the PROXIES column (services only).
fn row(name: &str, width: usize, g: &Golden, proxies: Option<usize>) -> String {
    let codes = g.codes.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join(" ");
    let success = g.success_rate.map_or_else(|| "-".to_string(), |r| format!("{:.2}%", r * 100.0));
    let lat = |f: fn(&Latency) -> f64| g.latency_ms.as_ref().map_or_else(|| "-".to_string(), |l| ms(f(l)));
    let proxies = proxies.map(|n| format!(" {n:>7}")).unwrap_or_default();
    format!(
        "{name:<width$} {:>9} {:>8.2} {:>8} {:>8} {:>8} {:>8}{proxies}  {codes}",
        g.requests_total,
        g.rps,
        success,
        lat(|l| l.p50),
        lat(|l| l.p90),
        lat(|l| l.p99),
    )
}

/// The frame as text.
pub fn render(f: &Frame) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} proxies, window {:.1}s; REQUESTS and CODES since each proxy started, the rest over the window",
        f.proxies, f.window_s
    );
    let head = |first: &str, width: usize, proxies: &str| {
        format!(
            "{first:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}{proxies}  CODES",
            "REQUESTS", "RPS", "SUCCESS", "P50", "P90", "P99"
        )
    };
    let width = f.services.iter().map(|s| s.host.len()).max().unwrap_or(0).max(32);
    let _ = writeln!(out, "\n{}", head("SERVICE (client side)", width, " PROXIES"));
    for s in &f.services {
        let _ = writeln!(out, "{}", row(&s.host, width, &s.golden, Some(s.proxies.len())));
    }
    if f.services.is_empty() {
        let _ = writeln!(out, "(no requests to any service yet)");
    }
    if !f.workloads.is_empty() {
        let width = f.workloads.iter().map(|w| w.workload.len()).max().unwrap_or(0).max(32);
        let _ = writeln!(out, "\n{}", head("WORKLOAD (server side)", width, ""));
        for w in &f.workloads {
            let _ = writeln!(out, "{}", row(&w.workload, width, &w.golden, None));
        }
    }
    for u in &f.unreachable {
        let _ = writeln!(out, "\nnot read: {}: {}", u.proxy, u.error);
    }
    out
}

#[cfg(test)]
mod tests;
