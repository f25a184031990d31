//! `spar`: the control plane (`serve`) and the operator's commands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use spar_model::{MeshConfig, ProxyKind};

/// mimalloc returns freed memory to the system where glibc's malloc keeps it: with
/// thousands of streams writing megabytes of config each, the difference in resident
/// memory is several-fold (see docs/performance.md).
///
/// `--features system-allocator` keeps the system allocator instead, for heap profilers
/// that intercept malloc (heaptrack; see docs/performance.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod accept;
mod analysis;
mod analyze;
mod debug;
mod exchange;
mod explain;
mod files;
mod inject;
mod install;
mod iptables;
mod kubeauth;
mod load;
mod mesh;
mod process;
mod proxyconfig;
mod secure;
mod serve;
mod top;
mod webhook;

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
    /// Set up traffic capture (iptables REDIRECT) in the current network namespace.
    Iptables(IptablesArgs),
    /// Sync status of every connected proxy, per xDS type (from spar's debug endpoint).
    ProxyStatus(ProxyStatusArgs),
    /// A proxy's listeners, routes, clusters, endpoints and certificates as Spar serves them; with
    /// --envoy-admin, compared with the proxy's own config dump (exit 1 when they differ).
    ProxyConfig(proxyconfig::ProxyConfigArgs),
    /// Offline, from a config directory: the config a proxy would get, and for a request
    /// (--request URL, -H) which listener, route, clusters and endpoints it takes and
    /// which Istio resources apply on both ends.
    Explain(explain::ExplainArgs),
    /// Block until every connected proxy has ACKed the current snapshot (or --version);
    /// fail on a NACK or a timeout (for CI and rollouts).
    Wait(WaitArgs),
    /// Analyze Istio configuration offline (exit 79 when findings reach --failure-threshold).
    Analyze(analyze::AnalyzeArgs),
    /// Add stock-Envoy sidecars to the workloads of Kubernetes YAML (istioctl kube-inject).
    Inject(inject::InjectArgs),
    /// Print the manifests that run Spar in a Kubernetes cluster (CRDs, RBAC, Deployment,
    /// Services, webhooks), like istiod's install.
    Install(install::InstallArgs),
    /// Golden metrics per service (requests per second, success rate, latency
    /// percentiles, response codes) from the proxies' own Envoy stats, refreshed like top.
    Top(top::TopArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config directory or file (*.yaml, *.yml; multi-document). Repeatable.
    #[arg(long, short = 'c', required_unless_present = "kubernetes")]
    config: Vec<PathBuf>,
    /// Read Istio resources, Services, EndpointSlices, Pods, Namespaces and Secrets from
    /// the Kubernetes API (watched), with or without --config.
    #[arg(long)]
    kubernetes: bool,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster account).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Only read namespaces matching this label selector (k=v,k!=v,k,!k; repeatable, any
    /// may match), as Istio's discoverySelectors.
    #[arg(long, requires = "kubernetes")]
    discovery_selector: Vec<String>,
    /// Serve the admission webhooks (/inject, /validate) over HTTPS here (needs --ca-dir:
    /// the serving certificate comes from Spar's CA; 15017 in a cluster).
    #[arg(long, requires = "ca_dir")]
    webhook_address: Option<SocketAddr>,
    /// Injection: the Envoy image of the istio-proxy container.
    #[arg(long, default_value = inject::DEFAULT_PROXY_IMAGE)]
    inject_proxy_image: String,
    /// Injection: the image with the spar binary (init containers).
    #[arg(long, default_value = inject::DEFAULT_SPAR_IMAGE)]
    inject_spar_image: String,
    /// Injection: Spar's xDS address as pods resolve it (default: the secure Service
    /// port, or the plaintext one with --inject-xds-plaintext).
    #[arg(long)]
    inject_xds_address: Option<String>,
    /// Injection: proxies connect to the plaintext port (no token exchange, no mTLS).
    #[arg(long)]
    inject_xds_plaintext: bool,
    /// Injection: proxies use state-of-the-world xDS instead of delta (the default).
    #[arg(long)]
    inject_sotw: bool,
    /// How often kinds whose CRD is not installed are looked for again.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    missing_crd_retry: Duration,
    /// Audiences a proxy's service-account token may be for, comma-separated (checked with
    /// a TokenReview on the secure port; `spar` is what injection projects, `istio-ca`
    /// what istio-agent sends).
    #[arg(long, default_value = "spar,istio-ca", value_delimiter = ',')]
    token_audiences: Vec<String>,
    /// Longest lifetime of a pod-bound xDS credential that a token buys from the CSR API
    /// (it is refused as soon as its pod is gone).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pod_credential_ttl: Duration,
    /// Log format on standard error: `text`, or `json` (one object per line, for log
    /// pipelines). Levels and filters come from `RUST_LOG`.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Address of the plaintext xDS (ADS) server.
    #[arg(long, default_value = "0.0.0.0:15010", env = "SPAR_XDS_ADDRESS")]
    xds_address: SocketAddr,
    /// Quiet time after the last config change before a new snapshot is built.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_quiet: Duration,
    /// Longest a config change waits for a snapshot while changes keep arriving.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    debounce_max: Duration,
    /// xDS connections older than this are asked to go (HTTP/2 GOAWAY; one without streams
    /// closes then), and a proxy's stream on it is ended 10 s later, plus or minus 10%, as
    /// istiod's `keepaliveMaxServerConnectionAge` (30m in Istio's charts): proxies
    /// reconnect, spreading over replicas again, and no connection is held forever.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    keepalive_max_server_connection_age: Duration,
    /// DNS domain of the cluster.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Istio root namespace (mesh-wide Sidecar, DestinationRule defaults).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Mesh-wide outbound traffic policy for hosts not in the registry (a Sidecar's
    /// `outboundTrafficPolicy` overrides it for its workloads).
    /// Overrides the MeshConfig's `outboundTrafficPolicy.mode` (`allow-any` by default).
    #[arg(long, value_enum)]
    outbound_traffic_policy: Option<OutboundPolicy>,
    /// Istio MeshConfig file (the `mesh` key of the `istio` ConfigMap, or the ConfigMap):
    /// `rootNamespace`, `outboundTrafficPolicy`, `accessLogFile`/`accessLogFormat`/
    /// `accessLogEncoding` and `extensionProviders` (file access logs). Read at start.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// With --kubernetes: Istio's MeshConfig ConfigMap in Spar's namespace (key `mesh`),
    /// watched: its fields override --mesh-config's, a change reaches the next snapshot,
    /// an invalid one is logged and ignored. `off` disables.
    #[arg(long, default_value = "istio")]
    mesh_configmap: String,
    /// CA directory (Istio `cacerts` layout, or Spar's own root, created when absent).
    /// Enables the secure xDS port, workload certificates over SDS and mutual TLS.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// With --kubernetes and --ca-dir: the CA comes from Secret `cacerts` in Spar's
    /// namespace (a plug-in CA), else `istio-ca-secret` (created with a new root when
    /// neither exists), is written into --ca-dir and kept current, so that every replica
    /// signs with the same root. `false`: --ca-dir alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ca_secret: bool,
    /// Address of the secure xDS port (TLS, client certificate required).
    #[arg(long, default_value = "0.0.0.0:15012")]
    secure_xds_address: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates (rotated after 80% of it).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: Duration,
    /// Metrics and debug endpoint (loopback by default: it shows topology); `off` disables it.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: String,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum OutboundPolicy {
    AllowAny,
    RegistryOnly,
}

#[derive(clap::Args, Debug)]
struct WaitArgs {
    /// Spar's debug endpoint.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: String,
    /// Snapshot version to wait for (default: the current one, from /debug/configz).
    #[arg(long)]
    version: Option<u64>,
    /// Give up after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args, Debug)]
struct ProxyStatusArgs {
    /// Spar's debug endpoint.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: String,
    /// Output format (table, or json).
    #[arg(long, short = 'o', default_value = "table")]
    output: String,
}

#[derive(clap::Args, Debug)]
struct IptablesArgs {
    /// uid of the proxy (its traffic is not captured).
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// gid of the proxy.
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    /// Port of the proxy's outbound capture listener (virtualOutbound).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Port of the proxy's inbound capture listener (virtualInbound).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Inbound ports not captured (admin, health, metrics), comma separated.
    #[arg(long, default_value = "15000,15020,15021,15090", value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// `spar serve --log-format`.
#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    /// Use incremental (delta) xDS: the default, as in Istio since 1.22 (kept so that
    /// scripts that ask for it explicitly keep working).
    #[arg(long, conflicts_with = "sotw")]
    delta: bool,
    /// Use state-of-the-world xDS instead of delta.
    #[arg(long)]
    sotw: bool,
    /// A gateway (router) instead of a sidecar.
    #[arg(long)]
    router: bool,
    /// The proxy of Gateway API Gateway NAME (in --namespace): a gateway (router)
    /// labelled `gateway.networking.k8s.io/gateway-name=NAME`, as istiod's deployment
    /// controller labels a managed Gateway's pods.
    #[arg(long, value_name = "NAME")]
    gateway: Option<String>,
    /// Gateways (--router, --gateway): bind listeners on this address instead of
    /// 0.0.0.0 (for several gateways sharing one network namespace). Sets
    /// `SPAR_LISTEN_ADDRESS`.
    #[arg(long)]
    listen_address: Option<std::net::IpAddr>,
    /// Locality, region/zone/subzone (locality-aware load balancing).
    #[arg(long, default_value = "")]
    locality: String,
    /// INTERCEPTION_MODE (NONE, REDIRECT, TPROXY).
    #[arg(long, default_value = "NONE")]
    interception_mode: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Format,
    /// Spar's CA directory: mint an xDS client certificate proving this workload's
    /// namespace and service account, and connect to the secure xDS port with it.
    #[arg(long, conflicts_with = "token_file")]
    ca_dir: Option<PathBuf>,
    /// In a cluster: trade this service-account token (the projected `istio-token`) with
    /// Spar at --xds-address (its secure port) for an xDS client certificate bound to
    /// this pod, and connect with it. Needs --root-cert.
    #[arg(long, requires = "root_cert")]
    token_file: Option<PathBuf>,
    /// Roots that Spar's serving certificate must chain to (with --token-file; the
    /// `istio-ca-root-cert` ConfigMap's root-cert.pem).
    #[arg(long)]
    root_cert: Option<PathBuf>,
    /// The DNS name Spar's serving certificate must carry (with --token-file; default:
    /// the host of --xds-address, or spar.<root namespace>.svc when that is an IP).
    #[arg(long)]
    xds_server_name: Option<String>,
    /// How long to keep trying the token exchange (Spar may be starting too).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    credential_wait: Duration,
    /// Where the credential is written (xds-cert.pem, xds-key.pem, root-cert.pem).
    #[arg(long)]
    credential_dir: Option<PathBuf>,
    /// Lifetime of the xDS credential (minted with --ca-dir, asked for with --token-file:
    /// Spar caps it at its --pod-credential-ttl).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    credential_ttl: Duration,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of the control plane's identity (what the proxy verifies on 15012).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Write the bootstrap to this file (parent directories created) instead of stdout.
    #[arg(long)]
    output_file: Option<PathBuf>,
    /// DNS domain of the cluster (the node id's `<ns>.svc.<domain>`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Serve `GET /healthz/ready` (Envoy's readiness) on this port of --ip (Istio: 15021).
    #[arg(long)]
    health_port: Option<u16>,
    /// Serve `GET /stats/prometheus` on this port of --ip (Istio: 15090).
    #[arg(long)]
    prometheus_port: Option<u16>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 100ms, 10s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unit must be ms, s, m or h")),
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

/// mimalloc keeps the pages a thread freed in that thread's heap until the thread
/// allocates again: when proxies disconnect and the control plane goes quiet, the memory
/// of their streams stays resident. Each runtime worker collects its own heap whenever
/// it goes idle (parks), which returns it: after 2k proxies disconnect, RSS falls to
/// 87 MB instead of staying at 197 MB (docs/performance.md).
#[cfg(not(feature = "system-allocator"))]
mod allocator {
    #[allow(unsafe_code)]
    unsafe extern "C" {
        /// mimalloc's `void mi_collect(bool force)`, from the library the `mimalloc`
        /// crate links.
        fn mi_collect(force: bool);
    }

    /// For the runtime's `on_thread_park`: collect this thread's heap.
    pub fn collect_when_idle() {
        // SAFETY: `mi_collect` has no preconditions, may be called from any thread at
        // any time, and only returns this thread's free memory to the system.
        #[allow(unsafe_code)]
        unsafe {
            mi_collect(false);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(a) => std::process::exit(analyze::run(a)),
        Command::Inject(a) => inject::run(a),
        Command::Install(a) => install::run(a),
        Command::Serve(a) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
            let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
            match a.log_format {
                // One JSON object per line: timestamp, level, target, fields, span.
                LogFormat::Json => logs.json().flatten_event(true).init(),
                LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
            }
            let kubernetes = if a.kubernetes {
                let namespaces = if a.discovery_selector.is_empty() {
                    None
                } else {
                    Some(
                        spar_kube::NamespaceSelector::parse(&a.discovery_selector)
                            .map_err(|e| anyhow::anyhow!("--discovery-selector {e}"))?,
                    )
                };
                Some(serve::KubeConfig {
                    kubeconfig: a.kubeconfig,
                    namespaces,
                    absent_retry: a.missing_crd_retry,
                    namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| a.root_namespace.clone()),
                    identity: std::env::var("POD_NAME").unwrap_or_else(|_| {
                        format!("spar-{}-{}", std::env::var("HOSTNAME").unwrap_or_default(), std::process::id())
                    }),
                    token_audiences: a.token_audiences,
                    pod_credential_ttl: a.pod_credential_ttl,
                    ca_secret: a.ca_secret,
                    mesh_configmap: (a.mesh_configmap != "off").then(|| mesh::ConfigMapLayer {
                        name: a.mesh_configmap.clone(),
                        registry_only: a.outbound_traffic_policy.map(|p| matches!(p, OutboundPolicy::RegistryOnly)),
                    }),
                })
            } else {
                None
            };
            let cfg = serve::ServeConfig {
                config: a.config,
                kubernetes,
                webhook_address: a.webhook_address,
                inject: inject::InjectConfig {
                    proxy_image: a.inject_proxy_image,
                    spar_image: a.inject_spar_image,
                    xds_address: inject::xds_address(a.inject_xds_address.as_deref(), a.inject_xds_plaintext),
                    plaintext: a.inject_xds_plaintext,
                    cluster_domain: a.domain.clone(),
                    delta: !a.inject_sotw,
                    ..Default::default()
                },
                xds_address: a.xds_address,
                debounce_quiet: a.debounce_quiet,
                debounce_max: a.debounce_max,
                max_connection_age: a.keepalive_max_server_connection_age,
                mesh: {
                    let base = MeshConfig { domain: a.domain, root_namespace: a.root_namespace, ..Default::default() };
                    let mut mesh = match &a.mesh_config {
                        Some(p) => {
                            let (m, ignored) =
                                mesh::load(p, base).with_context(|| format!("--mesh-config {}", p.display()))?;
                            if !ignored.is_empty() {
                                tracing::warn!(file = %p.display(), fields = ?ignored, "MeshConfig fields Spar does not act on: traffic does not do what they say");
                            }
                            m
                        }
                        None => base,
                    };
                    if let Some(p) = a.outbound_traffic_policy {
                        mesh.registry_only = matches!(p, OutboundPolicy::RegistryOnly);
                    }
                    mesh
                },
                debug_address: if a.debug_address == "off" {
                    None
                } else {
                    Some(a.debug_address.parse().with_context(|| format!("--debug-address {:?}", a.debug_address))?)
                },
                security: a.ca_dir.map(|dir| serve::SecurityConfig {
                    ca_dir: dir,
                    secure_xds_address: a.secure_xds_address,
                    trust_domain: a.trust_domain,
                    workload_cert_ttl: a.workload_cert_ttl,
                }),
            };
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            #[cfg(not(feature = "system-allocator"))]
            rt.on_thread_park(allocator::collect_when_idle);
            #[cfg(target_os = "linux")]
            process::no_transparent_huge_pages();
            #[cfg(target_os = "linux")]
            process::raise_open_file_limit();
            let rt = rt.build().context("starting the runtime")?;
            rt.block_on(serve::run(cfg))
        }
        Command::Wait(a) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(debug::wait(&a.debug_address, a.version, a.timeout))
        }
        Command::ProxyStatus(a) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(debug::proxy_status(&a.debug_address, a.output.parse::<debug::StatusFormat>()?))
        }
        Command::Explain(a) => explain::run(&a),
        Command::ProxyConfig(a) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if !rt.block_on(proxyconfig::run(&a))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Top(a) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(top::run(&a))
        }
        Command::Iptables(a) => iptables::run(
            &iptables::Capture {
                proxy_uid: a.proxy_uid,
                proxy_gid: a.proxy_gid,
                outbound_port: a.outbound_port,
                inbound_port: a.inbound_port,
                exclude_inbound_ports: a.exclude_inbound_ports,
            },
            a.dry_run,
        ),
        Command::Bootstrap(a) => {
            if a.listen_address.is_some() && !a.router && a.gateway.is_none() {
                bail!("--listen-address is for gateways: add --router or --gateway");
            }
            let mut labels = parse_labels(&a.labels)?;
            if let Some(gw) = &a.gateway {
                labels.insert(spar_model::gateway_api::GATEWAY_NAME_LABEL.to_string(), gw.clone());
            }
            let params = spar_generate::bootstrap::BootstrapParams {
                kind: if a.router || a.gateway.is_some() { ProxyKind::Router } else { ProxyKind::Sidecar },
                xds_address: a.xds_address,
                namespace: a.namespace,
                name: a.name,
                labels,
                ip: a.ip,
                service_account: a.service_account,
                admin_address: a.admin_address,
                admin_port: a.admin_port,
                delta: a.delta || !a.sotw,
                interception_mode: a.interception_mode,
                locality: a.locality,
                listen_address: a.listen_address,
            };
            let mut b = spar_generate::bootstrap::bootstrap(&params)?;
            if a.cluster_domain != "cluster.local"
                && let Some(id) = b["node"]["id"].as_str().and_then(|id| id.strip_suffix(".cluster.local"))
            {
                b["node"]["id"] = format!("{id}.{}", a.cluster_domain).into();
            }
            let admin = (params.admin_address.as_str(), params.admin_port);
            inject::add_probe_listeners(&mut b, &params.ip, admin, a.health_port, a.prometheus_port);
            let id = spar_ca::Identity::new(&a.trust_domain, &params.namespace, &params.service_account);
            let credential_dir =
                a.credential_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}-credential", params.name)));
            let credential = if let Some(ca_dir) = &a.ca_dir {
                let ca = spar_ca::Ca::load_or_create(ca_dir, &a.trust_domain)?;
                let issued = ca.issue(&id, a.credential_ttl)?;
                Some((issued.chain_pem, issued.key_pem, ca.trust_bundle_pem().to_string()))
            } else if let (Some(token_file), Some(root_cert)) = (&a.token_file, &a.root_cert) {
                let root_pem = std::fs::read_to_string(root_cert)
                    .with_context(|| format!("reading the root certificate {}", root_cert.display()))?;
                let host = params.xds_address.rsplit_once(':').map_or(params.xds_address.as_str(), |(h, _)| h);
                let server_name = a.xds_server_name.clone().unwrap_or_else(|| {
                    if host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok() {
                        format!("spar.{}.svc", a.root_namespace)
                    } else {
                        host.to_string()
                    }
                });
                let ex = exchange::Exchange {
                    address: &params.xds_address,
                    server_name: &server_name,
                    root_pem: &root_pem,
                    identity: &id,
                    ttl: a.credential_ttl,
                    wait: a.credential_wait,
                };
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let c = rt.block_on(exchange::fetch(&ex, token_file))?;
                Some((c.chain_pem, c.key_pem, root_pem))
            } else {
                None
            };
            if let Some((chain_pem, key_pem, root_pem)) = credential {
                let (cert, key, root) = exchange::write_credential(&credential_dir, &chain_pem, &key_pem, &root_pem)?;
                let cp = secure::control_plane_identity(&a.trust_domain, &a.root_namespace);
                spar_generate::bootstrap::secure_xds(&mut b, &cert, &key, &root, &cp.to_string());
            }
            let out = match a.output {
                Format::Json => serde_json::to_string_pretty(&b)?,
                Format::Yaml => serde_yaml_ng::to_string(&b)?,
            };
            match &a.output_file {
                Some(p) => {
                    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                    }
                    std::fs::write(p, out + "\n").with_context(|| format!("writing {}", p.display()))?;
                }
                None => println!("{out}"),
            }
            Ok(())
        }
    }
}
