//! `spar analyze` on a generated mesh of 10,000 resources (Services, WorkloadEntries,
//! VirtualServices, DestinationRules, Gateways, Sidecars, some deliberately wrong):
//! time per phase and peak memory (VmHWM), as a table.
//!
//!     cargo bench -p spar-analyze
//!
//! Set `SPAR_BENCH_RESOURCES` to change the size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use spar_analyze::{Context, LoadOptions, Loaded, select_analyzers};
use spar_model::MeshConfig;

/// Every `PROBLEM_EVERY`th resource of a kind has something wrong with it.
const PROBLEM_EVERY: usize = 50;

/// The mix, as shares of the total (they add up to 10).
const SHARES: [(&str, usize); 6] = [
    ("Service", 2),
    ("WorkloadEntry", 2),
    ("VirtualService", 2),
    ("DestinationRule", 2),
    ("Gateway", 1),
    ("Sidecar", 1),
];

/// Namespaces the resources are spread over.
const NAMESPACES: usize = 20;

fn mesh_yaml(total: usize) -> (String, BTreeMap<&'static str, usize>) {
    let mut out = String::new();
    let mut counts = BTreeMap::new();
    for (kind, share) in SHARES {
        let n = total * share / 10;
        counts.insert(kind, n);
        for i in 0..n {
            let ns = format!("ns-{}", i % NAMESPACES);
            let bad = i % PROBLEM_EVERY == PROBLEM_EVERY - 1;
            out.push_str("---\n");
            match kind {
                // Problem: an unnamed port (IST0020).
                "Service" => {
                    let port_name = if bad { String::new() } else { "    name: http\n".into() };
                    write!(
                        out,
                        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: {ns}\nspec:\n  \
                         selector:\n    app: app-{i}\n  ports:\n  - port: 8080\n{port_name}"
                    )
                }
                // Problem: none Istio reports; they back the Services.
                "WorkloadEntry" => write!(
                    out,
                    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we-{i}\n  \
                     namespace: {ns}\nspec:\n  address: 10.{}.{}.{}\n  labels:\n    app: app-{i}\n    version: v1\n",
                    i / 65536 % 256,
                    i / 256 % 256,
                    i % 256
                ),
                // Problem: a Gateway that does not exist (IST0101) and a host with no Service.
                "VirtualService" => {
                    let j = i % (total / 10).max(1);
                    let gw = if bad { "missing-gw".to_string() } else { format!("gw-{j}") };
                    let gw_ns = format!("ns-{}", j % NAMESPACES);
                    let dest = if bad { format!("nowhere-{i}") } else { format!("svc-{i}") };
                    write!(
                        out,
                        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs-{i}\n  \
                         namespace: {ns}\nspec:\n  hosts:\n  - app-{i}.gw{j}.example.com\n  gateways:\n  - {gw_ns}/{gw}\n  \
                         http:\n  - route:\n    - destination:\n        host: {dest}\n        port:\n          \
                         number: 8080\n"
                    )
                }
                // Problem: a subset whose labels select no workload.
                "DestinationRule" => {
                    let version = if bad { "v9" } else { "v1" };
                    write!(
                        out,
                        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr-{i}\n  \
                         namespace: {ns}\nspec:\n  host: svc-{i}\n  subsets:\n  - name: v1\n    labels:\n      \
                         version: {version}\n"
                    )
                }
                // Problem: a selector no workload has.
                "Gateway" => {
                    let sel = if bad { "nothing-here" } else { "ingressgateway" };
                    write!(
                        out,
                        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw-{i}\n  \
                         namespace: {ns}\nspec:\n  selector:\n    istio: {sel}\n  servers:\n  - port:\n      \
                         number: 80\n      name: http\n      protocol: HTTP\n    hosts:\n    - \"*.gw{i}.example.com\"\n"
                    )
                }
                // Problem: a workload selector that selects nothing.
                "Sidecar" => {
                    let app = if bad { format!("ghost-{i}") } else { format!("app-{i}") };
                    write!(
                        out,
                        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: sc-{i}\n  \
                         namespace: {ns}\nspec:\n  workloadSelector:\n    labels:\n      app: {app}\n  egress:\n  \
                         - hosts:\n    - \"./*\"\n"
                    )
                }
                _ => unreachable!("a kind of SHARES"),
            }
            .expect("writing to a String cannot fail");
        }
    }
    (out, counts)
}

/// `VmHWM` (peak resident set) from /proc/self/status, in KiB.
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let total: usize = std::env::var("SPAR_BENCH_RESOURCES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let start_hwm = vm_hwm_kib();
    let mut rows: Vec<(String, Duration, Option<u64>)> = Vec::new();

    let t = Instant::now();
    let (yaml, counts) = mesh_yaml(total);
    rows.push((format!("generate {} KiB of YAML", yaml.len() / 1024), t.elapsed(), vm_hwm_kib()));

    let t = Instant::now();
    let mut loaded = Loaded::default();
    loaded.add_text(
        "generated.yaml",
        &yaml,
        &LoadOptions { default_namespace: "default".into(), cluster: String::new() },
    );
    let mesh = MeshConfig::default();
    loaded.add_default_resources(&mesh);
    let resources = loaded.resources.len();
    rows.push((format!("load + typed parse ({resources} resources)"), t.elapsed(), vm_hwm_kib()));

    let t = Instant::now();
    let ctx = Context::new(loaded.resources, mesh, None);
    rows.push(("index (Context::new)".into(), t.elapsed(), vm_hwm_kib()));

    let selected = select_analyzers(&[]).expect("the default analyzers");
    let t = Instant::now();
    let messages = spar_analyze::run(&ctx, &selected);
    rows.push((format!("run {} default analyzers", selected.len()), t.elapsed(), vm_hwm_kib()));

    // The slowest analyzers, each run on its own.
    let mut per: Vec<(&str, Duration)> = selected
        .iter()
        .map(|a| {
            let t = Instant::now();
            let n = spar_analyze::run(&ctx, &[*a]).len();
            std::hint::black_box(n);
            (a.name, t.elapsed())
        })
        .collect();
    per.sort_by_key(|p| std::cmp::Reverse(p.1));

    let total_time: Duration = rows.iter().skip(1).map(|r| r.1).sum();
    let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &messages {
        *by_code.entry(m.code()).or_default() += 1;
    }

    let mix: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!("spar analyze benchmark: {total} generated resources ({})", mix.join(", "));
    println!("every {PROBLEM_EVERY}th resource of a kind is deliberately wrong\n");
    println!("| phase | time | peak RSS (VmHWM) after |");
    println!("|---|---:|---:|");
    println!("| start | | {} |", mib(start_hwm));
    for (name, d, hwm) in &rows {
        println!("| {name} | {} | {} |", ms(*d), mib(*hwm));
    }
    println!("| **load + index + analyze** | **{}** | **{}** |", ms(total_time), mib(vm_hwm_kib()));
    println!("\nslowest analyzers (each run alone):\n");
    println!("| analyzer | time |");
    println!("|---|---:|");
    for (name, d) in per.iter().take(5) {
        println!("| {name} | {} |", ms(*d));
    }
    let found: Vec<String> = by_code.iter().map(|(c, n)| format!("{c}×{n}")).collect();
    println!("\nmessages: {} ({})", messages.len(), found.join(", "));
}
