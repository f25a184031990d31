//! `spar`: the control plane (`serve`) and the operator's commands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use spar_model::{MeshConfig, ProxyKind};

mod analyze;
mod files;
mod load;
mod serve;

#[derive(Parser, Debug)]
#[command(name = "spar", version, about = "An Envoy xDS control plane for Istio configuration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve xDS to Envoy proxies from a config directory (watched for changes).
    Serve(ServeArgs),
    /// Print an Envoy bootstrap for a sidecar or gateway.
    Bootstrap(BootstrapArgs),
    /// Analyze Istio configuration offline (exit 79 when findings reach --failure-threshold).
    Analyze(analyze::AnalyzeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config directory or file (*.yaml, *.yml; multi-document). Repeatable.
    #[arg(long, short = 'c', required = true)]
    config: Vec<PathBuf>,
    /// Address of the plaintext xDS (ADS) server.
    #[arg(long, default_value = "0.0.0.0:15010", env = "SPAR_XDS_ADDRESS")]
    xds_address: SocketAddr,
    /// Quiet time after the last config change before a new snapshot is built.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_quiet: Duration,
    /// Longest a config change waits for a snapshot while changes keep arriving.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    debounce_max: Duration,
    /// DNS domain of the cluster.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Istio root namespace (mesh-wide Sidecar, DestinationRule defaults).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Mesh-wide outbound traffic policy for hosts not in the registry (a Sidecar's
    /// `outboundTrafficPolicy` overrides it for its workloads).
    #[arg(long, value_enum, default_value = "allow-any")]
    outbound_traffic_policy: OutboundPolicy,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum OutboundPolicy {
    AllowAny,
    RegistryOnly,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
struct BootstrapArgs {
    /// Spar's xDS address, host:port.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: String,
    /// Workload namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Pod (workload) name.
    #[arg(long)]
    name: String,
    /// Workload labels, k=v,k=v.
    #[arg(long, default_value = "")]
    labels: String,
    /// Workload IP.
    #[arg(long)]
    ip: String,
    /// Service account.
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Envoy admin address.
    #[arg(long, default_value = "127.0.0.1")]
    admin_address: String,
    /// Envoy admin port.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Use incremental (delta) xDS.
    #[arg(long)]
    delta: bool,
    /// A gateway (router) instead of a sidecar.
    #[arg(long)]
    router: bool,
    /// INTERCEPTION_MODE (NONE, REDIRECT, TPROXY).
    #[arg(long, default_value = "NONE")]
    interception_mode: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Format,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 100ms, 10s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else { bail!("--labels: {kv:?} is not k=v") };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(a) => std::process::exit(analyze::run(a)),
        Command::Serve(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let cfg = serve::ServeConfig {
                config: a.config,
                xds_address: a.xds_address,
                debounce_quiet: a.debounce_quiet,
                debounce_max: a.debounce_max,
                mesh: MeshConfig {
                    domain: a.domain,
                    root_namespace: a.root_namespace,
                    registry_only: matches!(a.outbound_traffic_policy, OutboundPolicy::RegistryOnly),
                },
            };
            let rt =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            rt.block_on(serve::run(cfg))
        }
        Command::Bootstrap(a) => {
            let params = spar_xds::bootstrap::BootstrapParams {
                kind: if a.router { ProxyKind::Router } else { ProxyKind::Sidecar },
                xds_address: a.xds_address,
                namespace: a.namespace,
                name: a.name,
                labels: parse_labels(&a.labels)?,
                ip: a.ip,
                service_account: a.service_account,
                admin_address: a.admin_address,
                admin_port: a.admin_port,
                delta: a.delta,
                interception_mode: a.interception_mode,
            };
            let b = spar_xds::bootstrap::bootstrap(&params)?;
            let out = match a.output {
                Format::Json => serde_json::to_string_pretty(&b)?,
                Format::Yaml => serde_yaml_ng::to_string(&b)?,
            };
            println!("{out}");
            Ok(())
        }
    }
}
