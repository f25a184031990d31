//! `spar install`: the command; the manifests are `spar_kube::install`.

use std::path::PathBuf;

use anyhow::Context;
use spar_kube::inject::DEFAULT_SPAR_IMAGE;
pub use spar_kube::install::*;

/// `spar install`: render the manifests that run Spar in a cluster.
#[derive(clap::Args, Debug)]
#[command(after_help = CACERTS_HELP)]
pub struct InstallArgs {
    /// Namespace of the control plane (and Istio's root namespace).
    #[arg(long, short = 'n', default_value = "istio-system")]
    pub namespace: String,
    /// Image with the `spar` binary (the control plane, and the injected init containers).
    #[arg(long, default_value = DEFAULT_SPAR_IMAGE)]
    pub image: String,
    /// Envoy image of injected sidecars (default: the Envoy version Spar is tested with).
    #[arg(long)]
    pub proxy_image: Option<String>,
    /// Control plane replicas (a PodDisruptionBudget keeps one up when there are two or more).
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Revision (`istio.io/rev`): namespaces labelled `istio.io/rev=<revision>` are injected;
    /// the `default` revision also serves `istio-injection=enabled` and `spar.io/inject=enabled`.
    #[arg(long, default_value = "default")]
    pub revision: String,
    /// SPIFFE trust domain (of the generated root, and `spar serve --trust-domain`).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Also render Secret `cacerts` with a new self-signed root (private key included).
    #[arg(long)]
    pub generate_ca: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `spar install`.
pub fn run(a: InstallArgs) -> anyhow::Result<()> {
    let ca = if a.generate_ca {
        Some(spar_ca::Ca::new_root_pem(&a.trust_domain).context("generating the CA root")?)
    } else {
        None
    };
    let opts = Options {
        namespace: a.namespace,
        image: a.image,
        proxy_image: a.proxy_image,
        replicas: a.replicas,
        revision: a.revision,
        trust_domain: a.trust_domain,
        ca,
    };
    let text = render(&opts)?;
    match &a.output {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(text.as_bytes()).context("writing to standard output")
        }
    }
}
