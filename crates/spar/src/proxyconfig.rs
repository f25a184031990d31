//! `spar proxy-config <proxy> [listeners|routes|clusters|endpoints|secrets|all]`: a proxy's
//! configuration as Spar generates it (from the debug endpoint), as tables; with
//! `--envoy-admin`, beside what that Envoy actually holds (its `/config_dump`), row by
//! row: the exit code says whether they agree.

use std::collections::BTreeSet;

use anyhow::Context;
use spar_generate::summary::ConfigRows;

/// Which tables.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// Every table.
    All,
    /// Listeners.
    Listeners,
    /// Routes of the route configurations.
    Routes,
    /// Clusters.
    Clusters,
    /// Endpoints of the clusters.
    Endpoints,
    /// Certificates of the secrets (SDS): serial, expiry, identity; never keys.
    Secrets,
}

/// `spar proxy-config`.
#[derive(clap::Args, Debug)]
pub struct ProxyConfigArgs {
    /// The proxy: its node id, or a part of it (the pod name).
    proxy: String,
    /// Which table.
    #[arg(value_enum, default_value = "all")]
    table: Table,
    /// Spar's debug endpoint.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: String,
    /// The proxy's Envoy admin (`host:port`): compare Spar's view with the proxy's own
    /// config dump; exit 1 when they differ.
    #[arg(long)]
    envoy_admin: Option<String>,
    /// Output: `table`, or `json` (the rows).
    #[arg(long, short = 'o', default_value = "table")]
    output: String,
}

fn lines(rows: &ConfigRows, table: Table) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    let want = |t: Table| table == Table::All || table == t;
    if want(Table::Listeners) {
        out.push(("listeners", rows.listeners.iter().map(|r| format!("{:<40} {}", r.name, r.address)).collect()));
    }
    if want(Table::Routes) {
        let f = |r: &spar_generate::summary::RouteRow| {
            format!("{:<24} {:<40} {:<24} {}", r.route_config, r.virtual_host, r.matches, r.target)
        };
        out.push(("routes", rows.routes.iter().map(f).collect()));
    }
    if want(Table::Clusters) {
        out.push(("clusters", rows.clusters.iter().map(|r| format!("{:<64} {}", r.name, r.discovery)).collect()));
    }
    if want(Table::Endpoints) {
        out.push(("endpoints", rows.endpoints.iter().map(|r| format!("{:<24} {}", r.address, r.cluster)).collect()));
    }
    if want(Table::Secrets) {
        let f = |r: &spar_generate::summary::SecretRow| {
            format!("{:<24} {:<13} {:<34} {:<32} {}", r.name, r.kind, r.serial, r.not_after, r.identity)
        };
        out.push(("secrets", rows.secrets.iter().map(f).collect()));
    }
    out
}

const HEADERS: [(&str, &str); 5] = [
    ("listeners", "NAME                                     ADDRESS"),
    ("routes", "ROUTE CONFIG             VIRTUAL HOST                             MATCH                    TARGET"),
    ("clusters", "NAME                                                             DISCOVERY"),
    ("endpoints", "ENDPOINT                 CLUSTER"),
    (
        "secrets",
        "NAME                     KIND          SERIAL                             NOT AFTER                        IDENTITY",
    ),
];

/// Prints `table` (or all) of `rows`, each under its header.
pub fn print_tables(rows: &ConfigRows, table: Table) {
    for (name, rows) in lines(rows, table) {
        let header = HEADERS.iter().find(|(n, _)| *n == name).map_or("", |(_, h)| h);
        println!("\n{header}");
        for r in rows {
            println!("{r}");
        }
    }
}

/// Runs the command; `Ok(false)` when Spar's view and Envoy's differ.
pub async fn run(a: &ProxyConfigArgs) -> anyhow::Result<bool> {
    let path = format!("/debug/config_dump?proxy={}", encode(&a.proxy));
    let ours = crate::debug::get_json(&a.debug_address, &path).await?;
    let id = ours["proxy"].as_str().unwrap_or(&a.proxy).to_string();
    let spar: ConfigRows = serde_json::from_value(ours["config"].clone()).context("spar's rows")?;
    let Some(admin) = &a.envoy_admin else {
        if a.output == "json" {
            println!("{}", serde_json::to_string_pretty(&ours)?);
            return Ok(true);
        }
        println!("# {id} (snapshot {})", ours["snapshot"]);
        print_tables(&spar, a.table);
        return Ok(true);
    };
    let dump = crate::debug::get_json(admin, "/config_dump?include_eds").await?;
    let envoy = ConfigRows::of_config_dump(&dump);
    let mut same = true;
    let mut report = Vec::new();
    for ((name, s), (_, e)) in lines(&spar, a.table).into_iter().zip(lines(&envoy, a.table)) {
        let s: BTreeSet<String> = s.into_iter().collect();
        let e: BTreeSet<String> = e.into_iter().collect();
        let only_spar: Vec<&String> = s.difference(&e).collect();
        let only_envoy: Vec<&String> = e.difference(&s).collect();
        if only_spar.is_empty() && only_envoy.is_empty() {
            report.push(format!("{name}: {} rows, identical", s.len()));
            continue;
        }
        same = false;
        report.push(format!(
            "{name}: {} in Spar, {} in Envoy; {} only in Spar (not applied yet, or rejected), {} only in Envoy (stale)",
            s.len(),
            e.len(),
            only_spar.len(),
            only_envoy.len()
        ));
        report.extend(only_spar.iter().map(|r| format!("  - {r}")));
        report.extend(only_envoy.iter().map(|r| format!("  + {r}")));
    }
    if a.output == "json" {
        let out = serde_json::json!({"proxy": id, "same": same, "spar": spar, "envoy": envoy});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("# {id}: Spar (snapshot {}) vs Envoy at {admin}", ours["snapshot"]);
        for line in report {
            println!("{line}");
        }
    }
    Ok(same)
}

/// Percent-encodes a query value (node ids hold `~` and `.`; those are safe, others not).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
