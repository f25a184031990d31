//! The scale benchmark of issue 7: starts a release `spar serve` on a generated config
//! directory, drives simulated sidecars against it, and prints one table with each
//! number beside its target.
//!
//! ```text
//!   1k services:  spar up, 0 proxies ─► RSS          (b)
//!                 + proxies up to 1k, 2k ─► time to full config, RSS   (b)
//!                 endpoint edit, VirtualService edit ─► write→ACK p50/p99/max,
//!                     debounce apart (from spar's "snapshot built" log line)   (c)
//!                 all proxies drop, all reconnect at once ─► time to full, peak RSS   (d)
//!   10k services: spar up, 1k proxies ─► RSS          (b)
//! ```
//!
//! Memory is read from `/proc/<pid>/status` (`VmRSS`, `VmHWM`, and a 50 ms sampler),
//! CPU from `/proc/<pid>/stat`. A phase stops early, and says so, when spar's RSS passes
//! `--rss-limit-mb` or the phase passes `--timeout`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::client::{ClientOptions, Fleet, lock};
use crate::procfs;
use crate::scenario::{Change, Mesh, ScenarioDir, proxies};
use crate::stats::{Summary, fmt_ms};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The `spar` binary (a release build).
    pub spar: PathBuf,
    /// Scratch directory for scenario directories, spar's log and the results.
    pub workdir: PathBuf,
    /// Services of the main scenario.
    pub services: usize,
    /// Proxy counts to step through on the main scenario (ascending); the last one is
    /// used for convergence and the reconnect storm.
    pub proxies: Vec<usize>,
    /// Services of the large scenario (0: skip it).
    pub big_services: usize,
    /// Proxies connected to the large scenario.
    pub big_proxies: usize,
    /// Namespaces the services are spread over.
    pub namespaces: usize,
    /// Pods per workload (proxies with equal labels).
    pub replicas: usize,
    /// Add a Sidecar per namespace that limits proxies to their namespace.
    pub sidecar_scope: bool,
    /// `spar serve --debounce-quiet`.
    pub debounce: String,
    /// Port of spar's plaintext xDS server (on 127.0.0.1).
    pub port: u16,
    /// Port of spar's debug endpoint (on 127.0.0.1).
    pub debug_port: u16,
    /// Longest a phase may take.
    pub timeout: Duration,
    /// Stop a phase when spar's RSS passes this many MB.
    pub rss_limit_mb: u64,
    /// How the simulated proxies behave.
    pub client: ClientOptions,
}

/// One line of the result table.
#[derive(Clone, Debug)]
struct Row {
    what: String,
    value: String,
    target: String,
    verdict: String,
}

/// `spar serve` started by the benchmark.
struct Server {
    child: Child,
    pid: u32,
    /// "snapshot built" lines: when seen, debounce and build times.
    snapshots: mpsc::UnboundedReceiver<SnapshotBuilt>,
    peak_kib: Arc<AtomicU64>,
    over_limit: Arc<AtomicBool>,
    debug_port: u16,
}

/// One "snapshot built" log line of spar.
#[derive(Clone, Copy, Debug)]
struct SnapshotBuilt {
    seen: Instant,
    debounce_ms: u64,
    build_ms: u64,
}

impl Server {
    async fn start(opts: &BenchOptions, dir: &ScenarioDir, log_name: &str) -> anyhow::Result<Self> {
        let log_path = opts.workdir.join(log_name);
        let mut child = Command::new(&opts.spar)
            .arg("serve")
            .arg("--config")
            .arg(&dir.dir)
            .args(["--xds-address", &format!("127.0.0.1:{}", opts.port)])
            .args(["--debug-address", &format!("127.0.0.1:{}", opts.debug_port)])
            .args(["--debounce-quiet", &opts.debounce])
            .env("RUST_LOG", "info,spar_xds::server=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", opts.spar.display()))?;
        let pid = child.id().context("spar exited at once")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, snapshots) = mpsc::unbounded_channel();
        let mut log = tokio::fs::File::create(&log_path).await?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let seen = Instant::now();
                if line.contains("snapshot built") {
                    let field = |k: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(k))
                            .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    let _ = tx.send(SnapshotBuilt {
                        seen,
                        debounce_ms: field("debounce_ms="),
                        build_ms: field("build_ms="),
                    });
                }
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
            }
        });
        let peak_kib = Arc::new(AtomicU64::new(0));
        let over_limit = Arc::new(AtomicBool::new(false));
        {
            let (peak, over) = (Arc::clone(&peak_kib), Arc::clone(&over_limit));
            let limit_kib = opts.rss_limit_mb * 1_000_000 / 1024;
            tokio::spawn(async move {
                while let Ok(m) = procfs::memory(pid) {
                    peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                    if m.rss_kib > limit_kib {
                        over.store(true, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        let mut server = Self { child, pid, snapshots, peak_kib, over_limit, debug_port: opts.debug_port };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("spar exited ({status}) before serving; see {}", log_path.display());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", opts.port)).await.is_ok() {
                break;
            }
            if started.elapsed() > opts.timeout {
                bail!("spar did not listen on port {} within {:?}", opts.port, opts.timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!(pid, ready_ms = started.elapsed().as_millis() as u64, "spar is serving");
        Ok(server)
    }

    fn memory(&self) -> procfs::Memory {
        procfs::memory(self.pid).unwrap_or_default()
    }

    /// RSS once it has settled: freed memory goes back to the system over a few seconds
    /// after a burst (the allocator's delayed purge, workers collecting when idle), so
    /// samples are taken every half second until the last 4 s brought it down by less
    /// than 1% (at most `limit`; it falls in steps with plateaus of about 2 s). Also
    /// returns the RSS at the start and how long it took.
    async fn settled_memory(&self, limit: Duration) -> (procfs::Memory, procfs::Memory, Duration) {
        let start = Instant::now();
        let first = self.memory();
        let mut samples = vec![first];
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            samples.push(self.memory());
            let n = samples.len();
            if n >= 9 && samples[n - 1].rss_kib as f64 >= samples[n - 9].rss_kib as f64 * 0.99 {
                break;
            }
            if start.elapsed() >= limit {
                break;
            }
        }
        (samples[samples.len() - 1], first, start.elapsed())
    }

    fn cpu(&self) -> Duration {
        procfs::cpu_time(self.pid).unwrap_or_default()
    }

    /// Resets the peak RSS (kernel `VmHWM` and the sampler's).
    fn reset_peak(&self) {
        if let Err(e) = procfs::reset_peak(self.pid) {
            warn!(error = %e, "cannot reset VmHWM; the peak includes earlier phases");
        }
        self.peak_kib.store(self.memory().rss_kib, Ordering::Relaxed);
    }

    /// The larger of the sampled peak and `VmHWM`, in MB.
    fn peak_mb(&self) -> f64 {
        let m = self.memory();
        let kib = self.peak_kib.load(Ordering::Relaxed).max(m.hwm_kib);
        kib as f64 * 1024.0 / 1e6
    }

    fn trouble(&mut self) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(format!("spar exited ({status})"));
        }
        if self.over_limit.load(Ordering::Relaxed) {
            return Some("spar's RSS passed --rss-limit-mb".into());
        }
        None
    }

    /// The metrics lines whose names start with one of `prefixes`.
    async fn metrics(&self, prefixes: &[&str]) -> Vec<String> {
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.debug_port)).await?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            anyhow::Ok(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(5), fetch).await.ok().and_then(Result::ok);
        body.unwrap_or_default()
            .lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .map(str::to_string)
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// What happened after one change.
#[derive(Debug)]
struct Convergence {
    /// Write → each affected proxy's last ACK (pushes per type in client::XdsType order).
    total: Summary,
    /// Debounce start (build start) → each proxy's last ACK.
    after_debounce: Summary,
    snapshot: Option<SnapshotBuilt>,
    /// Write → spar noticed the file (ms).
    detect_ms: f64,
    acked: usize,
    expected: usize,
    pushes: [usize; 4],
}

/// Runs the benchmark and returns the table (Markdown).
pub async fn run(opts: &BenchOptions) -> anyhow::Result<String> {
    std::fs::create_dir_all(&opts.workdir)?;
    let max_proxies = opts.proxies.iter().copied().max().unwrap_or(0).max(opts.big_proxies) as u64;
    let nofile = procfs::ensure_nofile(max_proxies * 2 + 256);
    info!(nofile, "open-file limit (client and spar)");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let client = Arc::new(opts.client.clone());
    let client_cpu0 = procfs::cpu_time(std::process::id()).unwrap_or_default();

    // Main scenario.
    let s = opts.services;
    let dir =
        ScenarioDir::write(&opts.workdir.join(format!("mesh-{s}")), Mesh::new(s, opts.namespaces), opts.sidecar_scope)?;
    let mut server = Server::start(opts, &dir, &format!("spar-{s}.log")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m0 = server.memory();
    rows.push(row(format!("RSS, {} svc × 0 proxies", k(s)), format!("{:.0} MB", m0.rss_mb()), "", ""));
    let mut fleets: Vec<Fleet> = Vec::new();
    let mut connected = 0;
    let mut steady_mb = 0.0;
    let mut ok_main = true;
    for &n in &opts.proxies {
        if n <= connected {
            continue;
        }
        let cpu0 = server.cpu();
        let specs = proxies(&dir.mesh, connected, n - connected, opts.replicas, "REDIRECT");
        info!(from = connected, to = n, "connecting proxies");
        let fleet = Fleet::start(&client, specs, connected)?;
        let done = wait_full(&mut server, &[&fleet], opts.timeout).await;
        let took = done.as_ref().map(|t| t.duration_since(fleet.started));
        let cpu = server.cpu().saturating_sub(cpu0);
        fleets.push(fleet);
        connected = n;
        let refs: Vec<&Fleet> = fleets.iter().collect();
        let (full, total) = full_of(&refs);
        match took {
            Ok(d) => {
                let (m, at_full, settle) = server.settled_memory(Duration::from_secs(20)).await;
                steady_mb = m.rss_mb();
                let (target, verdict) = if n == 2000 && s == 1000 {
                    ("≤ 150 MB".to_string(), verdict(m.rss_mb() <= 150.0))
                } else {
                    (String::new(), String::new())
                };
                rows.push(row(
                    format!("RSS, {} svc × {} proxies", k(s), k(n)),
                    format!(
                        "{:.0} MB (settled {:.1} s after the last ACK; {:.0} MB at it; peak {:.0} MB)",
                        m.rss_mb(),
                        settle.as_secs_f64(),
                        at_full.rss_mb(),
                        server.peak_mb()
                    ),
                    &target,
                    &verdict,
                ));
                rows.push(row(
                    format!(
                        "  proxies {}..{} to full config (CDS, EDS, LDS, RDS ACKed)",
                        connected_before(n, &opts.proxies),
                        n
                    ),
                    format!("{:.1} s (spar CPU {:.1} s)", d.as_secs_f64(), cpu.as_secs_f64()),
                    "",
                    "",
                ));
            }
            Err(why) => {
                ok_main = false;
                rows.push(row(
                    format!("RSS, {} svc × {} proxies", k(s), k(n)),
                    format!(
                        "not reached: {why}; {full}/{total} full; RSS {:.0} MB, peak {:.0} MB",
                        server.memory().rss_mb(),
                        server.peak_mb()
                    ),
                    if n == 2000 && s == 1000 { "≤ 150 MB" } else { "" },
                    "MISSED",
                ));
                break;
            }
        }
    }
    notes.extend(server.metrics(&["spar_generation_cache", "pilot_xds_pushes", "pilot_xds "]).await);
    for f in &fleets {
        let errors = f.errors();
        if !errors.is_empty() {
            notes.push(format!("connecting: stream errors (retried): {errors:?}"));
        }
    }
    bytes_note(&fleets, &mut notes);

    // (c) Convergence.
    if ok_main && connected > 0 {
        let changes = [
            ("one endpoint change", Change::Endpoint { service: 0, generation: 1 }),
            ("one VirtualService change", Change::VirtualService { service: 0, generation: 1 }),
        ];
        for (what, change) in changes {
            let cpu0 = server.cpu();
            let c = converge(&mut server, &fleets, &dir, change, opts).await?;
            let cpu = server.cpu().saturating_sub(cpu0);
            let label = if c.expected == connected {
                format!("{what} → ACKed by all {} proxies ({} svc)", k(connected), k(s))
            } else {
                format!("{what} → ACKed by the {} proxies that see it, of {} ({} svc)", c.expected, k(connected), k(s))
            };
            let complete = c.acked == c.expected;
            rows.push(row(
                format!("{label}: file write → last ACK, p50 / p99 / max"),
                format!(
                    "{}{}",
                    c.total.display(),
                    if complete { String::new() } else { format!(" ({} of {} ACKed)", c.acked, c.expected) }
                ),
                "",
                "",
            ));
            let (db, build) = c.snapshot.map_or((f64::NAN, f64::NAN), |b| (b.debounce_ms as f64, b.build_ms as f64));
            rows.push(row(
                "  of which: file event noticed / debounce / snapshot build".to_string(),
                format!("{} / {} / {} ms", fmt_ms(c.detect_ms), fmt_ms(db), fmt_ms(build)),
                &format!("debounce quiet {}", opts.debounce),
                "",
            ));
            let is_endpoint = matches!(change, Change::Endpoint { .. });
            rows.push(row(
                "  after the debounce (build start → last ACK), p50 / p99 / max".to_string(),
                c.after_debounce.display(),
                if is_endpoint { "p99 ≤ 300 ms" } else { "" },
                &if is_endpoint { verdict(complete && c.after_debounce.p99 <= 300.0) } else { String::new() },
            ));
            notes.push(format!(
                "{what}: pushes cds/eds/lds/rds = {:?}; {} of {} proxies ACKed; spar CPU {:.1} s",
                c.pushes,
                c.acked,
                c.expected,
                cpu.as_secs_f64()
            ));
        }
    }

    // (d) Reconnect storm.
    if ok_main && connected > 0 {
        info!(proxies = connected, "reconnect storm: dropping every proxy");
        for f in fleets.drain(..) {
            f.stop().await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = server.memory();
        server.reset_peak();
        let cpu0 = server.cpu();
        let specs = proxies(&dir.mesh, 0, connected, opts.replicas, "REDIRECT");
        let fleet = Fleet::start(&client, specs, 0)?;
        let done = wait_full(&mut server, &[&fleet], opts.timeout).await;
        let cpu = server.cpu().saturating_sub(cpu0);
        let peak = server.peak_mb();
        let (full, total) = full_of(&[&fleet]);
        match done {
            Ok(t) => {
                let d = t.duration_since(fleet.started).as_secs_f64();
                rows.push(row(
                    format!("reconnect storm: {} proxies at once → all hold full config", k(connected)),
                    format!("{d:.1} s (spar CPU {:.1} s)", cpu.as_secs_f64()),
                    "≤ 10 s",
                    &verdict(d <= 10.0),
                ));
            }
            Err(why) => rows.push(row(
                format!("reconnect storm: {} proxies at once → all hold full config", k(connected)),
                format!("not reached: {why}; {full}/{total} full"),
                "≤ 10 s",
                "MISSED",
            )),
        }
        rows.push(row(
            "  storm peak RSS / steady state".to_string(),
            format!(
                "{peak:.0} MB / {steady_mb:.0} MB = {:.2}× (RSS before the storm {:.0} MB)",
                peak / steady_mb.max(1.0),
                before.rss_mb()
            ),
            "≤ 2×",
            &verdict(peak <= 2.0 * steady_mb),
        ));
        let errors = fleet.errors();
        if !errors.is_empty() {
            notes.push(format!("storm: stream errors (retried): {errors:?}"));
        }
        fleet.stop().await;
    } else {
        for f in fleets.drain(..) {
            f.stop().await;
        }
    }
    server.stop().await;

    // (b) The large scenario.
    if opts.big_services > 0 && opts.big_proxies > 0 {
        let bs = opts.big_services;
        let big = ScenarioDir::write(
            &opts.workdir.join(format!("mesh-{bs}")),
            Mesh::new(bs, opts.namespaces),
            opts.sidecar_scope,
        )?;
        let mut server = Server::start(opts, &big, &format!("spar-{bs}.log")).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        rows.push(row(
            format!("RSS, {} svc × 0 proxies", k(bs)),
            format!("{:.0} MB", server.memory().rss_mb()),
            "",
            "",
        ));
        let cpu0 = server.cpu();
        let n = opts.big_proxies;
        let fleet = Fleet::start(&client, proxies(&big.mesh, 0, n, opts.replicas, "REDIRECT"), 0)?;
        let done = wait_full(&mut server, &[&fleet], opts.timeout).await;
        let cpu = server.cpu().saturating_sub(cpu0);
        let (full, total) = full_of(&[&fleet]);
        match done {
            Ok(t) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                rows.push(row(
                    format!("RSS, {} svc × {} proxies", k(bs), k(n)),
                    format!(
                        "{:.0} MB (peak {:.0} MB); all full after {:.1} s, spar CPU {:.1} s",
                        server.memory().rss_mb(),
                        server.peak_mb(),
                        t.duration_since(fleet.started).as_secs_f64(),
                        cpu.as_secs_f64()
                    ),
                    "",
                    "",
                ));
            }
            Err(why) => rows.push(row(
                format!("RSS, {} svc × {} proxies", k(bs), k(n)),
                format!(
                    "not reached: {why}; {full}/{total} full; RSS {:.0} MB, peak {:.0} MB",
                    server.memory().rss_mb(),
                    server.peak_mb()
                ),
                "",
                "",
            )),
        }
        notes.extend(server.metrics(&["spar_generation_cache"]).await.into_iter().map(|l| format!("{bs} svc: {l}")));
        bytes_note(&[fleet], &mut notes);
        server.stop().await;
    }

    let client_cpu = procfs::cpu_time(std::process::id()).unwrap_or_default().saturating_sub(client_cpu0);
    notes.push(format!(
        "spar-load client CPU over the whole run: {:.1} s (it shares the 2 cores with spar)",
        client_cpu.as_secs_f64()
    ));
    let mut out = String::new();
    let _ = writeln!(out, "| measurement | result | target | met? |");
    let _ = writeln!(out, "|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(out, "| {} | {} | {} | {} |", r.what, r.value, r.target, r.verdict);
    }
    let _ = writeln!(out);
    for n in &notes {
        let _ = writeln!(out, "- {n}");
    }
    std::fs::write(opts.workdir.join("results.md"), &out)?;
    Ok(out)
}

fn row(what: String, value: String, target: &str, verdict: &str) -> Row {
    Row { what, value, target: target.to_string(), verdict: verdict.to_string() }
}

fn verdict(met: bool) -> String {
    if met { "met".into() } else { "MISSED".into() }
}

/// `1k`, `2k`, `10k`, or the number.
fn k(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() }
}

fn connected_before(n: usize, steps: &[usize]) -> usize {
    steps.iter().copied().filter(|&s| s < n).max().unwrap_or(0) + 1
}

fn full_of(fleets: &[&Fleet]) -> (usize, usize) {
    (fleets.iter().map(|f| f.full_count()).sum(), fleets.iter().map(|f| f.stats.len()).sum())
}

/// Bytes and resources the first proxy received in its first full config.
fn bytes_note(fleets: &[Fleet], notes: &mut Vec<String>) {
    let Some(s) = fleets.first().and_then(|f| f.stats.first()) else { return };
    let s = lock(s);
    let mut per_type = [(0usize, 0usize); 4];
    for r in &s.log {
        let e = &mut per_type[r.kind as usize];
        if e.0 == 0 {
            *e = (r.resources, r.bytes);
        }
    }
    let total: usize = per_type.iter().map(|e| e.1).sum();
    notes.push(format!(
        "config per proxy (first response per type, proxy 0): {} bytes; cds/eds/lds/rds resources {:?}",
        total,
        per_type.map(|e| e.0)
    ));
}

/// Waits until every proxy of `fleets` holds full config; returns when the last did.
async fn wait_full(server: &mut Server, fleets: &[&Fleet], timeout: Duration) -> Result<Instant, String> {
    let start = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let mut last: Option<Instant> = None;
        let mut missing = 0;
        for f in fleets {
            for s in &f.stats {
                match lock(s).full_at {
                    Some(t) => last = Some(last.map_or(t, |l: Instant| l.max(t))),
                    None => missing += 1,
                }
            }
        }
        if missing == 0 {
            return last.ok_or_else(|| "no proxies".to_string());
        }
        if let Some(t) = server.trouble() {
            return Err(t);
        }
        if start.elapsed() > timeout {
            return Err(format!("timeout after {timeout:?}"));
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            let total: usize = fleets.iter().map(|f| f.stats.len()).sum();
            info!(full = total - missing, total, rss_mb = server.memory().rss_mb() as u64, "waiting for full config");
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies `change` and measures, per affected proxy, the time from the write to its
/// last ACK of a response that arrived after the write.
async fn converge(
    server: &mut Server,
    fleets: &[Fleet],
    dir: &ScenarioDir,
    change: Change,
    opts: &BenchOptions,
) -> anyhow::Result<Convergence> {
    // Quiet first, so nothing from earlier phases is counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while server.snapshots.try_recv().is_ok() {}
    let service = match change {
        Change::Endpoint { service, .. } | Change::VirtualService { service, .. } => service,
    };
    let ns = dir.mesh.namespace(service).to_string();
    let stats: Vec<_> = fleets.iter().flat_map(|f| f.stats.iter()).collect();
    let marks: Vec<usize> = stats.iter().map(|s| lock(s).log.len()).collect();
    // With Sidecar scoping, only proxies of the service's namespace see it.
    let affected: Vec<bool> = if dir.sidecar_scope {
        let all_specs = proxies(&dir.mesh, 0, stats.len(), opts.replicas, "REDIRECT");
        all_specs.iter().map(|p| p.namespace == ns).collect()
    } else {
        vec![true; stats.len()]
    };
    let expected = affected.iter().filter(|a| **a).count();
    info!(?change, expected, "applying change");
    let t0 = Instant::now();
    dir.apply(change)?;
    let mut quiet_since: Option<(usize, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut acked = 0;
        let mut records = 0;
        for (i, s) in stats.iter().enumerate() {
            let s = lock(s);
            records += s.log.len();
            if affected[i] && s.log.get(marks[i]..).unwrap_or_default().iter().any(|r| r.acked) {
                acked += 1;
            }
        }
        // Done when every affected proxy ACKed something new and nothing more arrived
        // for a second (a change may take several pushes per proxy).
        match quiet_since {
            Some((n, since)) if n == records => {
                if acked >= expected && since.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
            _ => quiet_since = Some((records, Instant::now())),
        }
        if let Some(t) = server.trouble() {
            warn!(trouble = %t, "convergence stopped early");
            break;
        }
        if t0.elapsed() > opts.timeout {
            warn!("convergence: timeout");
            break;
        }
    }
    let snapshot = server.snapshots.try_recv().ok().filter(|b| b.seen >= t0);
    let build_start = snapshot.map(|b| b.seen - Duration::from_millis(b.build_ms));
    let detect_ms = snapshot.map_or(f64::NAN, |b| {
        (b.seen.saturating_duration_since(t0).as_secs_f64() * 1e3) - (b.build_ms + b.debounce_ms) as f64
    });
    let mut totals = Vec::new();
    let mut afters = Vec::new();
    let mut pushes = [0usize; 4];
    for (i, s) in stats.iter().enumerate() {
        let s = lock(s);
        let new = s.log.get(marks[i]..).unwrap_or_default();
        for r in new {
            pushes[r.kind as usize] += 1;
        }
        if let Some(last) = new.iter().filter(|r| r.acked).map(|r| r.answered).max() {
            totals.push(last.duration_since(t0));
            if let Some(b) = build_start {
                afters.push(last.saturating_duration_since(b));
            }
        }
    }
    Ok(Convergence {
        total: Summary::of(&totals),
        after_debounce: Summary::of(&afters),
        snapshot,
        detect_ms,
        acked: totals.len(),
        expected,
        pushes,
    })
}
