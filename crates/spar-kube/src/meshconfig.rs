//! Istio's MeshConfig as a cluster holds it: ConfigMap `istio` in the control plane's
//! namespace, key `mesh`, watched.
//!
//! ```text
//!  ConfigMap istio (data.mesh) ──watch──► MeshText::Present(yaml) / Absent ──► the caller parses
//! ```
//!
//! Only the text is published: what it means (and whether it is valid) is decided where
//! MeshConfig is parsed, in `spar`, the same code that reads `--mesh-config`.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

/// Istio's MeshConfig ConfigMap (the default revision's).
pub const NAME: &str = "istio";
/// The key holding the MeshConfig YAML.
pub const KEY: &str = "mesh";

/// The ConfigMap's MeshConfig text, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshText {
    /// Not listed yet.
    Listing,
    /// No such ConfigMap, or it has no [`KEY`].
    Absent,
    /// The [`KEY`] value: MeshConfig YAML, not parsed.
    Present(String),
}

fn text_of(cm: &ConfigMap, name: &str) -> MeshText {
    match cm.data.as_ref().and_then(|d| d.get(KEY)) {
        Some(t) => MeshText::Present(t.clone()),
        None => {
            warn!(configmap = name, "ConfigMap has no `{KEY}` key; using the MeshConfig without it");
            MeshText::Absent
        }
    }
}

/// Watches ConfigMap `namespace/name` and publishes its text on `text` (only changes),
/// until `text` has no receivers.
pub async fn run(client: kube::Client, namespace: String, name: String, text: watch::Sender<MeshText>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let full_name = format!("{namespace}/{name}");
    let mut listing = MeshText::Absent;
    loop {
        let event = tokio::select! {
            ev = events.next() => ev,
            () = text.closed() => return,
        };
        let Some(event) = event else { return };
        let now = match event {
            Ok(watcher::Event::Init) => {
                listing = MeshText::Absent;
                continue;
            }
            Ok(watcher::Event::InitApply(cm)) => {
                listing = text_of(&cm, &full_name);
                continue;
            }
            Ok(watcher::Event::InitDone) => listing.clone(),
            Ok(watcher::Event::Apply(cm)) => text_of(&cm, &full_name),
            Ok(watcher::Event::Delete(_)) => MeshText::Absent,
            Err(e) => {
                warn!(configmap = %full_name, error = %e, "watch failed; retrying with back-off");
                continue;
            }
        };
        text.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            match (&*current, &now) {
                (MeshText::Listing, MeshText::Absent) => info!(configmap = %full_name, "no MeshConfig ConfigMap"),
                (_, MeshText::Absent) => info!(configmap = %full_name, "MeshConfig ConfigMap gone"),
                _ => info!(configmap = %full_name, "MeshConfig ConfigMap read"),
            }
            *current = now;
            true
        });
    }
}
