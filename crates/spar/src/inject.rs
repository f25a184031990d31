//! `spar inject -f FILE` (Istio's `istioctl kube-inject`): the command; the injection
//! itself is `spar_kube::inject`.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
pub use spar_kube::inject::*;

/// `spar inject`: add sidecars to the workloads of Kubernetes YAML, like
/// `istioctl kube-inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Input: multi-document YAML, `-` for standard input.
    #[arg(long = "filename", short = 'f', value_name = "FILE|-")]
    filename: String,
    /// Output file (default: standard output).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Output format: YAML documents (untouched ones copied as written), or JSON (the
    /// object, or a `v1/List` of them when there are several).
    #[arg(long, value_enum, default_value = "yaml")]
    output_format: OutputFormat,
    /// Envoy image of the sidecar (`sidecar.istio.io/proxyImage` overrides it per pod).
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Image with `spar`, for the init containers.
    #[arg(long, default_value = DEFAULT_SPAR_IMAGE)]
    spar_image: String,
    /// Spar's xDS address as pods reach it, host:port (default: its secure Service port,
    /// or the plaintext one with --xds-plaintext).
    #[arg(long)]
    xds_address: Option<String>,
    /// Proxies connect to the plaintext port: no token exchange, no credential, no mTLS.
    #[arg(long)]
    xds_plaintext: bool,
    /// DNS domain of the cluster.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// uid of the proxy.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// gid of the proxy.
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    /// CPU request of the sidecar (`sidecar.istio.io/proxyCPU` overrides it per pod).
    #[arg(long, default_value = "100m")]
    proxy_cpu: String,
    /// Memory request of the sidecar.
    #[arg(long, default_value = "128Mi")]
    proxy_memory: String,
    /// CPU limit of the sidecar.
    #[arg(long, default_value = "2000m")]
    proxy_cpu_limit: String,
    /// Memory limit of the sidecar.
    #[arg(long, default_value = "1Gi")]
    proxy_memory_limit: String,
    /// Envoy log level (`sidecar.istio.io/logLevel` overrides it per pod).
    #[arg(long, default_value = "warning")]
    log_level: String,
    /// Control plane revision recorded in `sidecar.istio.io/status`.
    #[arg(long, default_value = "default")]
    revision: String,
    /// Proxies use incremental (delta) xDS: the default (kept for scripts that ask).
    #[arg(long, conflicts_with = "sotw")]
    delta: bool,
    /// Proxies use state-of-the-world xDS instead of delta.
    #[arg(long)]
    sotw: bool,
}

/// `spar inject --output-format`.
#[derive(Copy, Clone, Debug, clap::ValueEnum)]
pub enum OutputFormat {
    /// Multi-document YAML.
    Yaml,
    /// JSON.
    Json,
}

impl InjectArgs {
    fn config(&self) -> anyhow::Result<InjectConfig> {
        for (flag, q) in [
            ("--proxy-cpu", &self.proxy_cpu),
            ("--proxy-memory", &self.proxy_memory),
            ("--proxy-cpu-limit", &self.proxy_cpu_limit),
            ("--proxy-memory-limit", &self.proxy_memory_limit),
        ] {
            if !q.is_empty() && !is_quantity(q) {
                bail!("{flag} {q:?} is not a Kubernetes quantity (like 100m, 0.5, 128Mi)");
            }
        }
        if !is_log_level(&self.log_level) {
            bail!("--log-level {:?} is not trace, debug, info, warning, error, critical or off", self.log_level);
        }
        let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
        Ok(InjectConfig {
            proxy_image: self.proxy_image.clone(),
            spar_image: self.spar_image.clone(),
            xds_address: xds_address(self.xds_address.as_deref(), self.xds_plaintext),
            plaintext: self.xds_plaintext,
            cluster_domain: self.cluster_domain.clone(),
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            resources: Resources {
                cpu_request: some(&self.proxy_cpu),
                memory_request: some(&self.proxy_memory),
                cpu_limit: some(&self.proxy_cpu_limit),
                memory_limit: some(&self.proxy_memory_limit),
            },
            log_level: self.log_level.clone(),
            revision: self.revision.clone(),
            delta: self.delta || !self.sotw,
        })
    }
}

/// Runs `spar inject`. Nothing is written unless every document could be handled.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let (name, text) = if args.filename == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        ("<stdin>".to_string(), s)
    } else {
        let text = std::fs::read_to_string(&args.filename).with_context(|| format!("reading {}", args.filename))?;
        (args.filename.clone(), text)
    };
    let out = inject_yaml(&name, &text, &cfg);
    for note in &out.notes {
        eprintln!("{note}");
    }
    if !out.errors.is_empty() {
        for e in &out.errors {
            eprintln!("error: {e}");
        }
        bail!("{} document(s) could not be injected; nothing was written", out.errors.len());
    }
    let text = match args.output_format {
        OutputFormat::Yaml => out.yaml,
        OutputFormat::Json => {
            let mut objects = out.objects;
            let v = if objects.len() == 1 {
                objects.remove(0)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            serde_json::to_string_pretty(&v)? + "\n"
        }
    };
    match &args.output {
        Some(p) => std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).context("writing standard output")?;
        }
    }
    Ok(())
}
