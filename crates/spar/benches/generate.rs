//! How long Spar takes to turn a mesh into one sidecar's Envoy config, and how that
//! compares with pure protobuf encoding of the same config.
//!
//! For each mesh size (1,000 and 10,000 services; override with
//! `SPAR_BENCH_SERVICES=500,2000`, spread over `SPAR_BENCH_NAMESPACES` namespaces), the
//! synthetic mesh of [`scenario`] is parsed into a store, then for two scenarios:
//!
//! * `full mesh`: a client sidecar in `default` with no Sidecar resource, which sees
//!   every service;
//! * `sidecar: 10 hosts`: the same client scoped by a Sidecar resource to 10 services,
//!
//! it times `Snapshot::build` (median), `spar_xds::generate` for the client (median and
//! p90, after one warm-up run) and the "encode floor": `prost::Message::encode_to_vec`
//! on the generated resources decoded back into their Envoy messages, i.e. what encoding
//! alone costs. It prints one Markdown table, a per-type breakdown, and the peak RSS.
//!
//! ```text
//! cargo bench -p spar --bench generate
//! ```
//!
//! No assertion depends on timing; unexpected resource counts are reported as warnings.

mod scenario;

use std::hint::black_box;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Message;
use spar_model::{MeshConfig, Proxy, Snapshot, Store};
use spar_xds::generator::Scope;
use spar_xds::resources::content_version;
use spar_xds::{ProxyResources, type_url};

use scenario::Mesh;

/// The client whose config is generated: a sidecar in `default` without capture.
const CLIENT_ID: &str = "sidecar~10.0.0.1~client-1.default~default.svc.cluster.local";
/// Services the scoped scenario's Sidecar imports.
const SCOPED_HOSTS: usize = 10;
/// Default mesh sizes.
const DEFAULT_SERVICES: &[usize] = &[1_000, 10_000];
/// Default number of namespaces the services are spread over.
const DEFAULT_NAMESPACES: usize = 4;

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

/// How many times to run a measurement: at least `min`, then more until `budget` of
/// wall time has been spent, at most `max`; `warmup` runs first, untimed.
#[derive(Clone, Copy)]
struct Plan {
    warmup: usize,
    min: usize,
    max: usize,
    budget: Duration,
}

/// Runs `f` according to `plan`; returns the samples and the last result.
fn measure<T>(plan: Plan, mut f: impl FnMut() -> T) -> (Samples, T) {
    for _ in 0..plan.warmup {
        black_box(f());
    }
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let t = Instant::now();
        let out = black_box(f());
        samples.push(t.elapsed());
        if samples.len() >= plan.max || (samples.len() >= plan.min && start.elapsed() >= plan.budget) {
            return (Samples(samples), out);
        }
        drop(out);
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
    fn decode(type_url: &str, bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match type_url {
            type_url::LISTENER => Decoded::Listener(Listener::decode(bytes)?),
            type_url::ROUTE => Decoded::Route(RouteConfiguration::decode(bytes)?),
            type_url::CLUSTER => Decoded::Cluster(Cluster::decode(bytes)?),
            type_url::ENDPOINT => Decoded::Endpoint(ClusterLoadAssignment::decode(bytes)?),
            type_url::SECRET => Decoded::Secret(Secret::decode(bytes)?),
            other => panic!("generator produced an unknown type {other}"),
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

/// One row of the results.
struct Row {
    scenario: String,
    services: usize,
    build: Samples,
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

fn client() -> Proxy {
    let meta = serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "client"}, "INSTANCE_IPS": "10.0.0.1", "INTERCEPTION_MODE": "NONE"});
    Proxy::from_node(CLIENT_ID, &meta).expect("the client's node id and metadata are valid")
}

/// Times snapshot build, generation, and the encode floor for `store`.
fn run_scenario(name: &str, services: usize, store: &Store, proxy: &Proxy, expect_services: usize) -> Row {
    let big = services >= 5_000;
    let build_plan = Plan { warmup: 0, min: 3, max: 11, budget: Duration::from_secs(if big { 6 } else { 2 }) };
    let gen_plan = Plan { warmup: 1, min: 10, max: 101, budget: Duration::from_secs(if big { 8 } else { 3 }) };

    let mesh = MeshConfig::default();
    let (build, snapshot) = measure(build_plan, || Snapshot::build(store, &mesh, 1));
    if !snapshot.diagnostics.is_empty() {
        eprintln!(
            "warning: {name}/{services}: {} snapshot diagnostics, first: {:?}",
            snapshot.diagnostics.len(),
            snapshot.diagnostics[0]
        );
    }
    let (generate, resources): (Samples, ProxyResources) = measure(gen_plan, || spar_xds::generate(&snapshot, proxy));
    let (scope, _) = measure(gen_plan, || Scope::new(&snapshot, proxy).services.len());

    // The encode floor: the same messages, encoded again, nothing else.
    let mut decoded = Vec::new();
    let mut by_type = Vec::new();
    for t in type_url::PUSH_ORDER {
        let Some(of_type) = resources.of(t) else { continue };
        let bytes = of_type.values().map(|e| e.any.value.len()).sum();
        by_type.push((type_url::short(t), of_type.len(), bytes));
        for e in of_type.values() {
            decoded.push(Decoded::decode(t, &e.any.value).expect("generated resources decode"));
        }
    }
    let (encode, reencoded) = measure(gen_plan, || decoded.iter().map(|d| d.encode().len()).sum::<usize>());
    if reencoded != resources.encoded_len() {
        eprintln!(
            "warning: {name}/{services}: re-encoding gave {reencoded} bytes, generation {}",
            resources.encoded_len()
        );
    }
    // Versioning: hashing every resource's bytes, as `Encoded::new` does.
    let all: Vec<&[u8]> = resources.by_type.values().flat_map(|m| m.values()).map(|e| e.any.value.as_slice()).collect();
    let (hash, _) = measure(gen_plan, || all.iter().map(|b| content_version(b).len()).sum::<usize>());

    let (mut virtual_hosts, mut routes) = (0, 0);
    for d in &decoded {
        if let Decoded::Route(rc) = d {
            virtual_hosts += rc.virtual_hosts.len();
            routes += rc.virtual_hosts.iter().map(|v| v.routes.len()).sum::<usize>();
        }
    }
    let row = Row {
        scenario: name.to_string(),
        services,
        build,
        generate,
        encode,
        scope,
        hash,
        bytes: resources.encoded_len(),
        by_type,
        virtual_hosts,
        routes,
    };
    // Each imported service: a cluster and a load assignment for the service and for each subset.
    let per_service = 1 + scenario::VERSIONS.len();
    if row.count("cds") != expect_services * per_service
        || row.count("eds") != expect_services * per_service
        || virtual_hosts != expect_services
    {
        eprintln!(
            "warning: {name}/{services}: expected {expect_services} services in scope, got {} clusters, {} load assignments, {virtual_hosts} virtual hosts",
            row.count("cds"),
            row.count("eds")
        );
    }
    row
}

fn env_list(name: &str) -> Option<Vec<usize>> {
    let v = std::env::var(name).ok()?;
    let list: Vec<usize> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('_', "").parse().expect("a comma-separated list of numbers"))
        .collect();
    (!list.is_empty()).then_some(list)
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown (no /proc/self/status)".into())
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let sizes = env_list("SPAR_BENCH_SERVICES").unwrap_or_else(|| DEFAULT_SERVICES.to_vec());
    let namespaces = env_list("SPAR_BENCH_NAMESPACES").and_then(|v| v.first().copied()).unwrap_or(DEFAULT_NAMESPACES);
    let proxy = client();
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
        if !parsed.errors.is_empty() || !parsed.ignored.is_empty() {
            eprintln!(
                "warning: {n} services: {} documents failed, {} ignored; first: {:?}",
                parsed.errors.len(),
                parsed.ignored.len(),
                parsed.errors.first()
            );
        }
        notes.push(format!(
            "{n} services over {} namespaces: {} objects, {:.1} MB of YAML generated in {gen_ms:.0} ms, parsed in {parse_ms:.0} ms",
            mesh.namespaces.len(),
            thousands(parsed.objects.len()),
            text.len() as f64 / 1e6
        ));
        drop(text);
        let mut store = Store::new();
        store.set_unit("mesh.yaml", parsed);
        rows.push(run_scenario("full mesh", n, &store, &proxy, n));

        let (sidecar, scoped) = mesh.sidecar_yaml(&proxy.namespace, SCOPED_HOSTS);
        store.set_unit("sidecar.yaml", spar_api::parse_file("sidecar.yaml", &sidecar));
        rows.push(run_scenario(&format!("sidecar: {SCOPED_HOSTS} hosts"), n, &store, &proxy, scoped));
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
            r.build.median(),
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
            r.build.runs(),
            r.generate.runs(),
        );
    }
    println!();
    for n in &notes {
        println!("- {n}");
    }
    println!("- client: {CLIENT_ID} (INTERCEPTION_MODE=NONE); scoped Sidecar imports {SCOPED_HOSTS} `./<fqdn>` hosts");
    println!("- total bench time: {:.1} s", started.elapsed().as_secs_f64());
    println!("- peak RSS (VmHWM): {}", peak_rss());
}
