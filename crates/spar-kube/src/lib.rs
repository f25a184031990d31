//! The Kubernetes source: every kind Spar serves, watched through kube-runtime and kept
//! in the same [`spar_model::Store`] the file source feeds.
//!
//! ```text
//!  API server ──list/watch (one watcher per kind)──► trim ──► parse + validate ──► Store unit
//!                Init … InitApply … InitDone = a reset      (spar-api, the same     `kubernetes/<Kind>/<ns>/<name>`
//!                Apply / Delete = one unit changed           code as files)
//! ```
//!
//! The glue is deliberately thin: Istio semantics live in the model and the generators,
//! and this crate only moves objects. Each Kubernetes object is one store unit, so a bad
//! object only ever removes itself, exactly like a bad document in a file.

pub mod ca_secret;
pub mod gateway_deploy;
pub mod gateway_status;
pub mod inject;
pub mod install;
pub mod lease;
pub mod meshconfig;
pub mod rootcert;
pub mod source;
pub mod status;
pub mod tokenreview;
pub mod webhooks;

pub use source::{KubeSource, NamespaceSelector, PodIndex, SourceConfig, SyncStatus};
pub use tokenreview::{ReviewedToken, TokenReviewer};

use spar_api::Kind;

/// The lower-case plural of a kind in API paths (`virtualservices`, `telemetries`), as
/// the API server and kube's discovery spell it.
pub fn plural(kind: Kind) -> String {
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        kind.group(),
        kind.versions()[0],
        kind.name(),
    ));
    ar.plural
}

/// Kinds that come from CustomResourceDefinitions (Istio's), as opposed to built-ins.
pub fn custom_kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL.iter().copied().filter(|k| k.group().ends_with("istio.io"))
}

/// `(apiVersion, kind, plural)` of every served version of every custom kind: what a
/// cluster with Istio's CRDs installed serves.
pub fn custom_resource_versions() -> impl Iterator<Item = (String, Kind, String)> {
    custom_kinds().flat_map(|k| k.versions().iter().map(move |v| (format!("{}/{v}", k.group()), k, plural(k))))
}

/// A client from the usual places: `KUBECONFIG` / `~/.kube/config`, else the in-cluster
/// service account. `kubeconfig` overrides both.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not running in a cluster")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}
