//! How long Spar takes to turn a mesh into one sidecar's Envoy config, and how that
//! compares with pure protobuf encoding of the same config.
//!
//! For each mesh size (1,000 and 10,000 services; override with
//! `SPAR_BENCH_SERVICES=500,2000`; spread over `SPAR_BENCH_NAMESPACES`, default 10), the
//! synthetic mesh of [`scenario`] plus one Sidecar resource is parsed into a store and
//! `Snapshot::build` is timed (median). On that snapshot, for two client sidecars in
//! `default`:
//!
//! * `full mesh`: `client-1` (`app: client`), which no Sidecar selects: it sees every
//!   service;
//! * `sidecar: 10 hosts`: `scoped-client-1` (`app: scoped-client`), which the Sidecar
//!   scopes to 10 services,
//!
//! it times `spar_generate::generate` (median and p90, after a warm-up run) and the "encode
//! floor": `prost::Message::encode_to_vec` on the generated resources decoded back into
//! their Envoy messages, i.e. what encoding alone costs. It prints one Markdown table, a
//! per-type breakdown, and the peak RSS.
//!
//! ```text
//! cargo bench -p spar --bench generate
//! ```
//!
//! Runs are repeated within a time budget; a measurement whose single run takes many
//! seconds (the 10,000-service snapshot build) runs fewer times, and the run counts are
//! printed. No assertion depends on timing; unexpected resource counts are warnings.

mod scenario;

use std::hint::black_box;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Message;
use spar_generate::ProxyResources;
use spar_generate::generator::Scope;
use spar_generate::resources::{ResourceType, content_version};
use spar_model::{MeshConfig, Proxy, Snapshot, Store};

use scenario::Mesh;

/// The allocator `spar serve` runs with, so that generation and the encode floor are
/// timed as the server does them (glibc's malloc made up a third of the profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The client that sees the whole mesh: a sidecar in `default` without capture.
const CLIENT_ID: &str = "sidecar~10.0.0.1~client-1.default~default.svc.cluster.local";
/// The client the Sidecar resource scopes.
const SCOPED_CLIENT_ID: &str = "sidecar~10.0.0.2~scoped-client-1.default~default.svc.cluster.local";
/// Services the Sidecar resource imports.
const SCOPED_HOSTS: usize = 10;
/// Default mesh sizes.
const DEFAULT_SERVICES: &[usize] = &[1_000, 10_000];
/// Default number of namespaces the services are spread over.
const DEFAULT_NAMESPACES: usize = 10;

/// Wall-clock samples of one measurement.
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted_ms();
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    }

    /// Nearest-rank 90th percentile.
    fn p90(&self) -> f64 {
        let v = self.sorted_ms();
        let rank = (v.len() * 9).div_ceil(10).max(1);
        v[rank - 1]
    }

    fn runs(&self) -> usize {
        self.0.len()
    }
}

/// How many times to run a measurement: one warm-up run, then at least `min` timed
/// runs and more until `budget` of wall time has been spent, at most `max`; but no run
/// is started that would likely end after `limit` (so a measurement whose runs take
/// seconds runs fewer times, at least once). A warm-up run slower than [`SLOW_RUN`] is
/// kept as a sample: at that scale one run is already warm.
#[derive(Clone, Copy)]
struct Plan {
    min: usize,
    max: usize,
    budget: Duration,
    limit: Duration,
}

/// Runs slower than this are not repeated for warming up.
const SLOW_RUN: Duration = Duration::from_millis(500);

/// Runs `f` according to `plan`; returns the samples and the last result.
fn measure<T>(plan: Plan, mut f: impl FnMut() -> T) -> (Samples, T) {
    let start = Instant::now();
    let t = Instant::now();
    let mut out = black_box(f());
    let first = t.elapsed();
    let mut samples = if first >= SLOW_RUN { vec![first] } else { Vec::new() };
    loop {
        let n = samples.len();
        let slowest = samples.iter().max().copied().unwrap_or(first);
        let wanted = n < plan.min || start.elapsed() < plan.budget;
        if n >= plan.max || !wanted || (n > 0 && start.elapsed() + slowest > plan.limit) {
            return (Samples(samples), out);
        }
        drop(out);
        let t = Instant::now();
        out = black_box(f());
        samples.push(t.elapsed());
    }
}

/// A generated resource decoded back into its Envoy message.
enum Decoded {
    Listener(Listener),
    Route(RouteConfiguration),
    Cluster(Cluster),
    Endpoint(ClusterLoadAssignment),
    Secret(Secret),
}

impl Decoded {
    fn decode(t: ResourceType, bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match t {
            ResourceType::Listener => Decoded::Listener(Listener::decode(bytes)?),
            ResourceType::Route => Decoded::Route(RouteConfiguration::decode(bytes)?),
            ResourceType::Cluster => Decoded::Cluster(Cluster::decode(bytes)?),
            ResourceType::Endpoint => Decoded::Endpoint(ClusterLoadAssignment::decode(bytes)?),
            ResourceType::Secret => Decoded::Secret(Secret::decode(bytes)?),
        })
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Decoded::Listener(m) => m.encode_to_vec(),
            Decoded::Route(m) => m.encode_to_vec(),
            Decoded::Cluster(m) => m.encode_to_vec(),
            Decoded::Endpoint(m) => m.encode_to_vec(),
            Decoded::Secret(m) => m.encode_to_vec(),
        }
    }
}

/// One row of the results: one client on one snapshot.
struct Row {
    scenario: &'static str,
    services: usize,
    /// Snapshot build time (median, ms) and runs; the same snapshot for both clients.
    build_ms: f64,
    build_runs: usize,
    generate: Samples,
    encode: Samples,
    scope: Samples,
    hash: Samples,
    bytes: usize,
    /// `(short type, count, bytes)` per type, in push order.
    by_type: Vec<(&'static str, usize, usize)>,
    virtual_hosts: usize,
    routes: usize,
}

impl Row {
    fn count(&self, short: &str) -> usize {
        self.by_type.iter().find(|(t, _, _)| *t == short).map_or(0, |(_, n, _)| *n)
    }
}

fn proxy(id: &str, app: &str, ip: &str) -> Proxy {
    let meta = serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": app}, "INSTANCE_IPS": ip, "INTERCEPTION_MODE": "NONE"});
    Proxy::from_node(id, &meta).expect("the client's node id and metadata are valid")
}

/// Times generation for `proxy` and the encode floor of what it gets; `expect_services`
/// is how many services should be in its scope.
fn run_client(
    scenario: &'static str,
    services: usize,
    snapshot: &Snapshot,
    build: &Samples,
    proxy: &Proxy,
    expect_services: usize,
) -> Row {
    let gen_plan = Plan { min: 3, max: 101, budget: Duration::from_secs(3), limit: Duration::from_secs(40) };
    // Scope, encoding and hashing alone: cheap, a second is plenty.
    let part_plan = Plan { min: 5, max: 101, budget: Duration::from_secs(1), limit: Duration::from_secs(5) };

    let (generate, resources): (Samples, ProxyResources) =
        measure(gen_plan, || spar_generate::generate(snapshot, proxy));
    let (scope, _) = measure(part_plan, || Scope::new(snapshot, proxy).services.len());

    // The encode floor: the same messages, encoded again, nothing else.
    let mut decoded = Vec::new();
    let mut by_type = Vec::new();
    for t in ResourceType::ALL {
        let Some(of_type) = resources.of(t) else { continue };
        let bytes = of_type.values().map(|e| e.any.value.len()).sum();
        by_type.push((t.short(), of_type.len(), bytes));
        for e in of_type.values() {
            decoded.push(Decoded::decode(t, &e.any.value).expect("generated resources decode"));
        }
    }
    let (encode, reencoded) = measure(part_plan, || decoded.iter().map(|d| d.encode().len()).sum::<usize>());
    if reencoded != resources.encoded_len() {
        eprintln!(
            "warning: {scenario}/{services}: re-encoding gave {reencoded} bytes, generation {}",
            resources.encoded_len()
        );
    }
    // Versioning: hashing every resource's bytes, as `Encoded::new` does.
    let all: Vec<&[u8]> = resources.all().map(|e| e.any.value.as_slice()).collect();
    let (hash, _) = measure(part_plan, || all.iter().map(|b| content_version(b).len()).sum::<usize>());

    let (mut virtual_hosts, mut routes) = (0, 0);
    for d in &decoded {
        if let Decoded::Route(rc) = d {
            virtual_hosts += rc.virtual_hosts.len();
            routes += rc.virtual_hosts.iter().map(|v| v.routes.len()).sum::<usize>();
        }
    }
    // Each imported service: a cluster and a load assignment for the service and for
    // each subset (besides PassthroughCluster, BlackHoleCluster and the like).
    let per_service = 1 + scenario::VERSIONS.len();
    let outbound =
        resources.of(ResourceType::Cluster).map_or(0, |m| m.keys().filter(|k| k.starts_with("outbound|")).count());
    let eds = resources.of(ResourceType::Endpoint).map_or(0, |m| m.len());
    if outbound != expect_services * per_service
        || eds != expect_services * per_service
        || virtual_hosts != expect_services
    {
        eprintln!(
            "warning: {scenario}/{services}: expected {expect_services} services in scope, got {outbound} outbound clusters, {eds} load assignments, {virtual_hosts} virtual hosts"
        );
    }
    Row {
        scenario,
        services,
        build_ms: build.median(),
        build_runs: build.runs(),
        generate,
        encode,
        scope,
        hash,
        bytes: resources.encoded_len(),
        by_type,
        virtual_hosts,
        routes,
    }
}

fn env_list(name: &str) -> Option<Vec<usize>> {
    let v = std::env::var(name).ok()?;
    let list: Vec<usize> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}: {s:?} is not a number")))
        .collect();
    (!list.is_empty()).then_some(list)
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "unknown (no /proc/self/status)".into())
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let sizes = env_list("SPAR_BENCH_SERVICES").unwrap_or_else(|| DEFAULT_SERVICES.to_vec());
    let namespaces = env_list("SPAR_BENCH_NAMESPACES").and_then(|v| v.first().copied()).unwrap_or(DEFAULT_NAMESPACES);
    let client = proxy(CLIENT_ID, "client", "10.0.0.1");
    let scoped_client = proxy(SCOPED_CLIENT_ID, "scoped-client", "10.0.0.2");
    let build_plan = Plan { min: 3, max: 11, budget: Duration::from_secs(2), limit: Duration::from_secs(20) };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &n in &sizes {
        let mesh = Mesh::new(n, namespaces);
        let t = Instant::now();
        let text = mesh.yaml();
        let gen_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let parsed = spar_api::parse_file("mesh.yaml", &text);
        let parse_ms = t.elapsed().as_secs_f64() * 1e3;
        let (sidecar, scoped) = mesh.sidecar_yaml(&scoped_client.namespace, "scoped-client", SCOPED_HOSTS);
        let parsed_sidecar = spar_api::parse_file("sidecar.yaml", &sidecar);
        for p in [&parsed, &parsed_sidecar] {
            if !p.errors.is_empty() || !p.ignored.is_empty() {
                eprintln!(
                    "warning: {n} services: {} documents failed, {} ignored; first: {:?}",
                    p.errors.len(),
                    p.ignored.len(),
                    p.errors.first()
                );
            }
        }
        notes.push(format!(
            "{n} services over {} namespaces: {} objects, {:.1} MB of YAML generated in {gen_ms:.0} ms, parsed in {parse_ms:.0} ms",
            mesh.namespaces.len(),
            thousands(parsed.objects.len() + parsed_sidecar.objects.len()),
            text.len() as f64 / 1e6
        ));
        drop(text);
        let mut store = Store::new();
        store.set_unit("mesh.yaml", parsed);
        store.set_unit("sidecar.yaml", parsed_sidecar);

        let mesh_config = MeshConfig::default();
        let (build, snapshot) = measure(build_plan, || Snapshot::build(&store, &mesh_config, 1));
        if let Some(d) = snapshot.diagnostics.first() {
            eprintln!("warning: {n} services: {} snapshot diagnostics, first: {d:?}", snapshot.diagnostics.len());
        }
        rows.push(run_client("full mesh", n, &snapshot, &build, &client, n));
        rows.push(run_client("sidecar: 10 hosts", n, &snapshot, &build, &scoped_client, scoped));
    }

    println!(
        "| scenario | services | snapshot build (ms) | generate per proxy (ms, median / p90) | encode floor (ms) | bytes per proxy | resources (listeners / routes / clusters / endpoints) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.2} / {:.2} | {:.2} | {} | {} / {} / {} / {} |",
            r.scenario,
            thousands(r.services),
            r.build_ms,
            r.generate.median(),
            r.generate.p90(),
            r.encode.median(),
            thousands(r.bytes),
            r.count("lds"),
            r.count("rds"),
            thousands(r.count("cds")),
            thousands(r.count("eds")),
        );
    }

    println!();
    println!("Per type (count / bytes), and where generation time goes (medians, ms):");
    println!();
    println!(
        "| scenario | services | cds | eds | lds | rds (virtual hosts, routes) | scope | encode | version hash | rest of generate | runs (build / generate) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let ty = |short: &str| {
            r.by_type
                .iter()
                .find(|(t, _, _)| *t == short)
                .map_or_else(|| "0".to_string(), |(_, n, b)| format!("{} / {}", thousands(*n), thousands(*b)))
        };
        let rest = r.generate.median() - r.scope.median() - r.encode.median() - r.hash.median();
        println!(
            "| {} | {} | {} | {} | {} | {} ({}, {}) | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} |",
            r.scenario,
            thousands(r.services),
            ty("cds"),
            ty("eds"),
            ty("lds"),
            ty("rds"),
            thousands(r.virtual_hosts),
            thousands(r.routes),
            r.scope.median(),
            r.encode.median(),
            r.hash.median(),
            rest,
            r.build_runs,
            r.generate.runs(),
        );
    }
    println!();
    for n in &notes {
        println!("- {n}");
    }
    println!("- one snapshot per size serves both rows: {CLIENT_ID} (app: client) sees the whole mesh;");
    println!(
        "  {SCOPED_CLIENT_ID} (app: scoped-client) is selected by a Sidecar importing {SCOPED_HOSTS} `./<fqdn>` hosts"
    );
    println!("- total bench time: {:.1} s", started.elapsed().as_secs_f64());
    println!("- peak RSS (VmHWM): {}", peak_rss());
}
