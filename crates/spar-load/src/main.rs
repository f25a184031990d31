//! `spar-load`: simulated sidecars, synthetic meshes and the scale benchmark for Spar.
//!
//! ```text
//! spar-load scenario --services 1000 --out DIR [--sidecar-scope]      # a config directory
//! spar-load change --dir DIR endpoint --service 0 --generation 2      # edit it
//! spar-load run --server http://127.0.0.1:15010 --proxies 2000 [--delta] [--watch]
//! spar-load bench                                                     # issue 7's table
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use spar_load::client::{self, ClientOptions, Decode, Fleet, XdsType};
use spar_load::scenario::{self, Change, Mesh, ScenarioDir};
use spar_load::stats::Summary;
use spar_load::{bench, procfs};
use tracing::info;

/// The client shares the cores with the server it measures: with glibc's malloc, half of
/// its CPU went to malloc and free (perf), time taken from Spar.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "spar-load",
    version,
    about = "Load harness for Spar: simulated sidecars, synthetic meshes, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs simulated sidecars against a Spar server; reports time to full config and,
    /// with --watch, change-to-ACK times for every later push.
    Run(RunArgs),
    /// Writes a synthetic mesh as a config directory (one file per service).
    Scenario(ScenarioArgs),
    /// Edits a scenario directory: one endpoint, one VirtualService, or a burst of
    /// endpoint churn.
    Change(ChangeArgs),
    /// Starts `spar serve` on generated meshes, drives simulated sidecars against it and
    /// prints one table of RSS, convergence and reconnect-storm numbers beside their targets.
    Bench(BenchArgs),
    /// Issue 7 e: real Envoys (from the project's .venv) against a generated mesh; time
    /// from one endpoint change to every Envoy having applied it, read from Envoy's stats.
    Envoys(EnvoysArgs),
}

#[derive(clap::Args, Debug)]
struct EnvoysArgs {
    /// Services in the mesh (every Envoy sees all of them).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Envoys to start (about 30-60 MB each at 1,000 services).
    #[arg(long, default_value_t = 20)]
    envoys: usize,
    /// Delta xDS instead of SotW.
    #[arg(long)]
    delta: bool,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 5)]
    changes: u32,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// Incremental (delta) xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// ADS streams per HTTP/2 connection (1: a connection per proxy, as Envoy).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Percentage of responses to NACK instead of ACK.
    #[arg(long, default_value_t = 0.0)]
    nack_percent: f64,
    /// How much of each response to decode.
    #[arg(long, value_enum, default_value = "all")]
    decode: Decode,
    /// HTTP/2 initial stream window, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    stream_window: u32,
    /// HTTP/2 initial connection window, bytes.
    #[arg(long, default_value_t = 2 << 20)]
    connection_window: u32,
    /// Spread connections over this many loopback source addresses (127.0.0.2, ...)
    /// when the server is on loopback; 0 lets the kernel choose.
    #[arg(long, default_value_t = 200)]
    source_addresses: u8,
}

impl ClientArgs {
    fn options(&self, server: String) -> ClientOptions {
        ClientOptions {
            server,
            delta: self.delta,
            streams_per_connection: self.streams_per_connection.max(1),
            nack_percent: self.nack_percent.clamp(0.0, 100.0),
            decode: self.decode,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            source_addresses: self.source_addresses,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Spar's plaintext xDS address.
    #[arg(long, default_value = "http://127.0.0.1:15010")]
    server: String,
    /// Number of simulated sidecars.
    #[arg(long, default_value_t = 100)]
    proxies: usize,
    /// A scenario directory the proxies belong to (its services and namespaces);
    /// otherwise --services and --namespaces.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Services of the mesh the proxies belong to (labels app=svc-<i>).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Namespaces of that mesh.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Pods per workload (proxies with equal labels).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// INTERCEPTION_MODE metadata: REDIRECT, TPROXY or NONE.
    #[arg(long, default_value = "REDIRECT")]
    interception_mode: String,
    /// Longest to wait for every proxy to hold full config.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep running and report every later push: per (type, version), how long from the
    /// trigger to each proxy's ACK. A line on stdin marks the trigger instant (empty: now;
    /// or a Unix time in milliseconds); without one, the first proxy's receipt is used.
    #[arg(long)]
    watch: bool,
}

#[derive(clap::Args, Debug)]
struct ScenarioArgs {
    /// Number of services.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Namespaces to spread them over (`default`, `ns-1`, ...).
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Add a Sidecar per namespace that limits its proxies to the namespace.
    #[arg(long)]
    sidecar_scope: bool,
    /// Output directory (replaced if it is an earlier scenario directory).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ChangeKind {
    /// Move the v1 WorkloadEntry of one service to a new address.
    Endpoint,
    /// Change the weights of one service's VirtualService.
    VirtualService,
    /// Endpoint changes to --count services, --interval apart.
    Churn,
}

#[derive(clap::Args, Debug)]
struct ChangeArgs {
    /// The scenario directory.
    #[arg(long)]
    dir: PathBuf,
    /// What to change.
    #[arg(value_enum)]
    kind: ChangeKind,
    /// Service index (the first one for churn).
    #[arg(long, default_value_t = 0)]
    service: usize,
    /// Distinguishes successive edits of the same service (new address or weights).
    #[arg(long, default_value_t = 1)]
    generation: u32,
    /// Services changed by a churn burst.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Time between churn edits.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    interval: Duration,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The spar binary (build it with `cargo build --release -p spar`).
    #[arg(long, default_value = "target/release/spar")]
    spar: PathBuf,
    /// Scratch directory (scenario directories, spar logs, results.md).
    #[arg(long, default_value = ".tmp/spar-load-bench")]
    workdir: PathBuf,
    /// Services of the main scenario.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Proxy counts to step through (ascending); the last is used for convergence and
    /// the reconnect storm.
    #[arg(long, default_value = "1000,2000", value_delimiter = ',')]
    proxies: Vec<usize>,
    /// Services of the large scenario (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    big_services: usize,
    /// Proxies on the large scenario.
    #[arg(long, default_value_t = 1000)]
    big_proxies: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Pods per workload.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Add a Sidecar per namespace that limits its proxies to the namespace.
    #[arg(long)]
    sidecar_scope: bool,
    /// spar's debounce quiet time (`spar serve --debounce-quiet`).
    #[arg(long, default_value = "100ms")]
    debounce: String,
    /// spar's xDS port (127.0.0.1).
    #[arg(long, default_value_t = 25010)]
    port: u16,
    /// spar's debug port (127.0.0.1).
    #[arg(long, default_value_t = 25014)]
    debug_port: u16,
    /// Longest one phase may take.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop a phase when spar's RSS passes this (MB).
    #[arg(long, default_value_t = 6000)]
    rss_limit_mb: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (like 100ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Cmd::Envoys(a) => {
            let opts = spar_load::envoys::EnvoysOptions {
                services: a.services,
                namespaces: a.namespaces,
                envoys: a.envoys,
                delta: a.delta,
                changes: a.changes,
            };
            print!("{}", spar_load::envoys::run(&opts).await?);
            Ok(())
        }
        Cmd::Scenario(a) => {
            let s = ScenarioDir::write(&a.out, Mesh::new(a.services, a.namespaces), a.sidecar_scope)?;
            println!(
                "wrote {} services over {} namespaces to {}",
                a.services,
                s.mesh.namespaces.len(),
                a.out.display()
            );
            Ok(())
        }
        Cmd::Change(a) => change(a).await,
        Cmd::Run(a) => run(a).await,
        Cmd::Bench(a) => {
            let opts = bench::BenchOptions {
                spar: a.spar,
                workdir: a.workdir,
                services: a.services,
                proxies: a.proxies,
                big_services: a.big_services,
                big_proxies: a.big_proxies,
                namespaces: a.namespaces,
                replicas: a.replicas,
                sidecar_scope: a.sidecar_scope,
                debounce: a.debounce,
                port: a.port,
                debug_port: a.debug_port,
                timeout: a.timeout,
                rss_limit_mb: a.rss_limit_mb,
                client: a.client.options(format!("http://127.0.0.1:{}", a.port)),
            };
            let table = bench::run(&opts).await?;
            println!("{table}");
            Ok(())
        }
    }
}

async fn change(a: ChangeArgs) -> anyhow::Result<()> {
    let dir = ScenarioDir::open(&a.dir)?;
    match a.kind {
        ChangeKind::Endpoint => dir.apply(Change::Endpoint { service: a.service, generation: a.generation })?,
        ChangeKind::VirtualService => {
            dir.apply(Change::VirtualService { service: a.service, generation: a.generation })?;
        }
        ChangeKind::Churn => {
            let services = dir.mesh.services.max(1);
            for n in 0..a.count {
                let service = (a.service + n) % services;
                dir.apply(Change::Endpoint { service, generation: a.generation })?;
                tokio::time::sleep(a.interval).await;
            }
        }
    }
    Ok(())
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let mesh = match &a.scenario {
        Some(dir) => ScenarioDir::open(dir)?.mesh,
        None => Mesh::new(a.services, a.namespaces),
    };
    let nofile = procfs::ensure_nofile(a.proxies as u64 + 256);
    info!(nofile, proxies = a.proxies, "open-file limit");
    let opts = Arc::new(a.client.options(a.server.clone()));
    let specs = scenario::proxies(&mesh, 0, a.proxies, a.replicas, &a.interception_mode);
    let fleet = Fleet::start(&opts, specs, 0)?;
    let done = loop {
        if let Some(t) = fleet.wait_full(Duration::from_secs(5)).await {
            break Some(t);
        }
        info!(full = fleet.full_count(), total = a.proxies, errors = ?fleet.errors(), "waiting for full config");
        if fleet.started.elapsed() > a.timeout {
            break None;
        }
    };
    match done {
        Some(t) => {
            let per: Vec<Duration> = fleet
                .stats
                .iter()
                .filter_map(|s| {
                    let s = client::lock(s);
                    s.full_at.zip(s.started).map(|(f, st)| f.duration_since(st))
                })
                .collect();
            println!(
                "{} proxies hold full config (CDS, EDS, LDS, RDS) after {:.2} s; per proxy p50 / p99 / max: {}",
                a.proxies,
                t.duration_since(fleet.started).as_secs_f64(),
                Summary::of(&per).display()
            );
        }
        None => println!(
            "timeout: {} of {} proxies hold full config; errors: {:?}",
            fleet.full_count(),
            a.proxies,
            fleet.errors()
        ),
    }
    if a.watch {
        watch(&fleet).await?;
    }
    fleet.stop().await;
    Ok(())
}

/// Reports each wave of pushes once it has been quiet for a second.
async fn watch(fleet: &Fleet) -> anyhow::Result<()> {
    println!("watching; a line on stdin marks a trigger (empty: now; or Unix ms); Ctrl-C ends");
    // Stdin is read on a plain thread (tokio's stdin needs a feature the workspace does not enable).
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut trigger: Option<Instant> = None;
    let mut marks: Vec<usize> = fleet.stats.iter().map(|s| client::lock(s).log.len()).collect();
    let mut last_count = fleet.record_count();
    let mut last_change = Instant::now();
    let mut active = false;
    loop {
        tokio::select! {
            Some(l) = lines.recv() => {
                trigger = Some(trigger_instant(l.trim()));
                println!("trigger marked");
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let c = fleet.record_count();
                if c != last_count {
                    (last_count, last_change, active) = (c, Instant::now(), true);
                } else if active && last_change.elapsed() > Duration::from_secs(1) {
                    report_wave(fleet, &marks, trigger.take());
                    marks = fleet.stats.iter().map(|s| client::lock(s).log.len()).collect();
                    active = false;
                }
            }
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; return Ok(()); }
        }
    }
}

fn trigger_instant(line: &str) -> Instant {
    let now = Instant::now();
    let Ok(ms) = line.parse::<u128>() else { return now };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let ago = Duration::from_millis(u64::try_from(now_ms.saturating_sub(ms)).unwrap_or(0));
    now.checked_sub(ago).unwrap_or(now)
}

fn report_wave(fleet: &Fleet, marks: &[usize], trigger: Option<Instant>) {
    let mut groups: std::collections::BTreeMap<(XdsType, String), Vec<Instant>> = Default::default();
    let mut last_per_proxy = Vec::new();
    let mut first_seen: Option<Instant> = None;
    let mut nacks = 0;
    for (i, s) in fleet.stats.iter().enumerate() {
        let s = client::lock(s);
        let new = s.log.get(marks.get(i).copied().unwrap_or(0)..).unwrap_or_default();
        for r in new {
            first_seen = Some(first_seen.map_or(r.received, |f: Instant| f.min(r.received)));
            if r.acked {
                groups.entry((r.kind, r.version.clone())).or_default().push(r.answered);
            } else {
                nacks += 1;
            }
        }
        if let Some(last) = new.iter().filter(|r| r.acked).map(|r| r.answered).max() {
            last_per_proxy.push(last);
        }
    }
    let Some(t0) = trigger.or(first_seen) else { return };
    let from = if trigger.is_some() { "trigger" } else { "first receipt" };
    let since = |v: &[Instant]| Summary::of(&v.iter().map(|t| t.saturating_duration_since(t0)).collect::<Vec<_>>());
    println!(
        "push wave: {} proxies ACKed, {nacks} NACKs; from {from} to each proxy's last ACK p50 / p99 / max: {}",
        last_per_proxy.len(),
        since(&last_per_proxy).display()
    );
    for ((kind, version), acks) in &groups {
        println!("  {} {version}: {} ACKs, {}", kind.short(), acks.len(), since(acks).display());
    }
}
