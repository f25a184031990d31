//! Status of Istio resources: whether Spar applied each one, and why not.
//!
//! The leader writes, after each snapshot, a `Reconciled` condition on every Istio object
//! it reads (through the status subresource, a JSON merge patch of `.status` only):
//!
//! | situation | `status` | `reason` | `message` |
//! |---|---|---|---|
//! | applied | `True` | `Applied` | `applied by spar` |
//! | applied, with problems the snapshot reported (a host claimed by an older VirtualService, a duplicate) | `True` | `AppliedWithWarnings` | the problems |
//! | rejected (parse or validation) | `False` | `Invalid` | the reasons, field by field |
//! | accepted by Spar, rejected by a proxy (a NACK traced to it, `spar_xds::rejections`) | `False` | `RejectedByProxy` | the proxy, the type and Envoy's message |
//!
//! Analysis findings (warnings and errors of Istio's analyzers: references to missing
//! objects and the like) are written as istiod's analysis writes them, in
//! `validationMessages`, and turn `Applied` into `AppliedWithWarnings` with their text.
//!
//! `observedGeneration` says which spec the status is about. Only changes are written
//! (what was last written is remembered), and writing it does not come back as a config
//! change: the source drops `.status` before comparing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use spar_api::Kind;
use spar_model::{Snapshot, Store};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::source::{KindState, SyncStatus};

/// One analyzer finding about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `IST0101`.
    pub code: String,
    /// `ReferencedResourceNotFound`.
    pub name: String,
    /// `ERROR` or `WARNING`.
    pub level: String,
    /// The rendered message.
    pub message: String,
}

impl Finding {
    fn to_validation_message(&self) -> Value {
        json!({
            "documentationUrl": format!("https://istio.io/latest/docs/reference/config/analysis/{}/", self.code.to_lowercase()),
            "level": self.level,
            "type": {"code": self.code, "name": self.name},
        })
    }
}

/// Current findings: store unit → findings.
pub type Analysis = Arc<BTreeMap<String, Vec<Finding>>>;

/// The status Spar wants an object to have (without timestamps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The object's kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the status describes.
    pub generation: Option<i64>,
    /// Condition status, `True` or `False`.
    pub reconciled: bool,
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message.
    pub message: String,
    /// Analysis findings (`validationMessages`).
    pub findings: Vec<Finding>,
}

impl Desired {
    /// The `.status` to write.
    pub fn to_status(&self, now: &str) -> Value {
        let mut status = json!({
            "conditions": [{
                "type": "Reconciled",
                "status": if self.reconciled { "True" } else { "False" },
                "reason": self.reason,
                "message": self.message,
                "lastTransitionTime": now,
            }]
        });
        if let Some(g) = self.generation {
            status["observedGeneration"] = json!(g);
        }
        // Always written (empty too), so that fixed findings disappear under a merge patch.
        status["validationMessages"] = self.findings.iter().map(Finding::to_validation_message).collect();
        status
    }
}

/// Current proxy rejections: store unit → what to say.
pub type Rejections = Arc<BTreeMap<String, String>>;

/// What every Istio object read from Kubernetes should say, by store unit.
pub fn desired(
    store: &Store,
    snap: &Snapshot,
    rejected: &BTreeMap<String, String>,
    analysis: &BTreeMap<String, Vec<Finding>>,
) -> BTreeMap<String, Desired> {
    let mut warnings: HashMap<&str, Vec<&str>> = HashMap::new();
    for d in &snap.diagnostics {
        warnings.entry(&d.origin.file).or_default().push(&d.message);
    }
    let mut out = BTreeMap::new();
    for (unit, contents) in store.units() {
        let Some((kind, namespace, name)) = parse_unit(unit) else { continue };
        if !kind.group().ends_with("istio.io") {
            continue;
        }
        let generation = contents.generation;
        let findings = analysis.get(unit.as_ref()).cloned().unwrap_or_default();
        let (reconciled, reason, message) = if !contents.errors.is_empty() {
            let reasons: Vec<&str> = contents.errors.iter().map(|e| e.reason.as_str()).collect();
            (false, "Invalid", format!("rejected by spar: {}", reasons.join("; ")))
        } else if let Some(says) = rejected.get(unit.as_ref()) {
            (false, "RejectedByProxy", says.clone())
        } else if warnings.contains_key(unit.as_ref()) || !findings.is_empty() {
            let mut w: Vec<String> =
                warnings.get(unit.as_ref()).into_iter().flatten().map(|s| (*s).to_string()).collect();
            w.extend(findings.iter().map(|f| format!("{} {}: {}", f.code, f.name, f.message)));
            (true, "AppliedWithWarnings", w.join("; "))
        } else {
            (true, "Applied", "applied by spar".to_string())
        };
        let d = Desired { kind, namespace, name, generation, reconciled, reason, message, findings };
        out.insert(unit.to_string(), d);
    }
    out
}

/// `kubernetes/<Kind>/<ns>/<name>` (or `kubernetes/<Kind>/<name>`), the kind named by its
/// variant as the source writes it.
pub(crate) fn parse_unit(unit: &str) -> Option<(Kind, String, String)> {
    let rest = unit.strip_prefix("kubernetes/")?;
    let mut parts = rest.splitn(3, '/');
    let kind_name = parts.next()?;
    let kind = *Kind::ALL.iter().find(|k| format!("{k:?}") == kind_name)?;
    let a = parts.next()?.to_string();
    match parts.next() {
        Some(name) => Some((kind, a, name.to_string())),
        None => Some((kind, String::new(), a)),
    }
}

/// Writes status while `leader` says this replica leads; stops when `snapshots` closes.
/// `rejections` are the NACKs of this replica's proxies traced to objects.
pub async fn run(
    client: kube::Client,
    store: Arc<Mutex<Store>>,
    sync: Arc<SyncStatus>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut rejections: watch::Receiver<Rejections>,
    mut analysis: watch::Receiver<Analysis>,
    mut leader: watch::Receiver<bool>,
) {
    let mut written: HashMap<String, Desired> = HashMap::new();
    loop {
        if *leader.borrow_and_update() {
            let snap = snapshots.borrow_and_update().clone();
            let rejected = rejections.borrow_and_update().clone();
            let findings = analysis.borrow_and_update().clone();
            let want = {
                let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                desired(&store, &snap, &rejected, &findings)
            };
            let versions = sync.states();
            written.retain(|unit, _| want.contains_key(unit));
            let now = Timestamp::now().to_string();
            for (unit, d) in want {
                if written.get(&unit) == Some(&d) {
                    continue;
                }
                let Some(KindState::Synced { version }) = versions.get(&d.kind) else { continue };
                match write(&client, &d, version, &now).await {
                    Ok(()) => {
                        debug!(%unit, reason = d.reason, "status written");
                        written.insert(unit, d);
                    }
                    // Deleted meanwhile: nothing to say.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => warn!(%unit, error = %e, "cannot write status; will retry after the next change"),
                }
            }
        } else {
            // Whoever leads next writes everything it believes; so will we when we lead again.
            written.clear();
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            r = rejections.changed() => if r.is_err() { return },
            r = analysis.changed() => if r.is_err() { return },
        }
    }
}

async fn write(client: &kube::Client, d: &Desired, version: &str, now: &str) -> Result<(), kube::Error> {
    let ar =
        kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(d.kind.group(), version, d.kind.name()));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &d.namespace, &ar);
    let patch = json!({"status": d.to_status(now)});
    api.patch_status(&d.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_name_kind_namespace_and_name() {
        assert_eq!(
            parse_unit("kubernetes/VirtualService/default/reviews"),
            Some((Kind::VirtualService, "default".into(), "reviews".into()))
        );
        assert_eq!(parse_unit("kubernetes/Namespace/shop"), Some((Kind::Namespace, String::new(), "shop".into())));
        assert_eq!(parse_unit("mesh.yaml"), None);
        assert_eq!(parse_unit("kubernetes/Nope/a/b"), None);
    }
}
