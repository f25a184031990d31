//! Istio's analyzers over what Spar serves, for status: references to missing objects
//! (a Gateway, a subset, a Secret...), conflicts and the rest of what `spar analyze`
//! finds, as istiod's analysis writes it (`status.validationMessages`).
//!
//! The Lease holder runs the default analyzers over the store's objects after a snapshot,
//! at most once per [`EVERY`] (analysis is whole-mesh work), and publishes the warnings
//! and errors by store unit; the status writer puts them on the objects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spar_analyze::{Context, Level, Resource};
use spar_kube::status::{Analysis, Finding};
use spar_model::{Snapshot, Store};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Least time between two analyses.
pub const EVERY: Duration = Duration::from_secs(2);

/// The store's objects as the analyzers read them (copied: analysis runs without the
/// store's lock).
pub fn resources(store: &Store) -> Vec<Resource> {
    let (objects, _) = store.objects();
    objects
        .into_iter()
        .map(|o| {
            // The store keeps objects typed only: the document is rebuilt from them.
            let body = o.resource.to_value();
            let raw = if o.meta.kind.group().ends_with("istio.io") {
                serde_json::json!({
                    "apiVersion": o.meta.api_version,
                    "kind": o.meta.kind.name(),
                    "metadata": {"name": o.meta.name, "namespace": o.meta.namespace,
                                 "labels": o.meta.labels, "annotations": o.meta.annotations},
                    "spec": body,
                })
            } else {
                body
            };
            Resource {
                group: o.meta.kind.group().to_string(),
                kind: o.meta.kind.name().to_string(),
                api_version: o.meta.api_version.clone(),
                namespace: o.meta.namespace.clone(),
                name: o.meta.name.clone(),
                labels: o.meta.labels.clone(),
                annotations: o.meta.annotations.clone(),
                raw,
                origin: o.origin.clone(),
                fields: BTreeMap::default(),
                object: Some(o.clone()),
                invalid: Vec::new(),
                cluster: String::new(),
            }
        })
        .collect()
}

/// The findings over `resources` (warnings and errors only), by the store unit they are
/// about.
pub fn analyze(resources: Vec<Resource>, root_namespace: &str) -> BTreeMap<String, Vec<Finding>> {
    let mesh = match spar_model::MeshConfig::from_yaml(&format!("rootNamespace: {root_namespace}\n")) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "analysis: cannot read the mesh config; using the defaults");
            spar_model::MeshConfig::default()
        }
    };
    let ctx = Context::new(resources, mesh, None);
    let selected = spar_analyze::select_analyzers(&[]).unwrap_or_default();
    let mut out: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    // Fields Spar parses and does not act on: an error on the object, as `spar analyze`
    // reports them (SPAR0001), since traffic does not do what they say.
    if let Some(kind) = spar_analyze::message_type("SPAR0001") {
        for r in ctx.resources() {
            let Some(obj) = &r.object else { continue };
            for field in spar_generate::support::unacted_fields_in(obj.meta.kind, &r.raw) {
                out.entry(r.origin.file.to_string()).or_default().push(Finding {
                    code: kind.code.to_string(),
                    name: kind.name.to_string(),
                    level: kind.level.as_str().to_uppercase(),
                    message: kind.render(&[field]),
                });
            }
        }
    }
    // EnvoyFilter patches Spar cannot apply (SPAR0005): left out of every proxy.
    if let Some(kind) = spar_analyze::message_type("SPAR0005") {
        for r in ctx.resources() {
            let Some(spar_api::Object { resource: spar_api::Resource::EnvoyFilter(spec), .. }) = r.object.as_ref()
            else {
                continue;
            };
            for (i, p) in spec.config_patches.iter().flatten().enumerate() {
                let Err(reason) = spar_generate::generator::envoy_filter::check(p) else { continue };
                out.entry(r.origin.file.to_string()).or_default().push(Finding {
                    code: kind.code.to_string(),
                    name: kind.name.to_string(),
                    level: kind.level.as_str().to_uppercase(),
                    message: kind.render(&[format!("spec.configPatches[{i}]"), reason.to_string()]),
                });
            }
        }
    }
    for m in spar_analyze::run(&ctx, &selected) {
        if m.level() < Level::Warning || m.file.is_empty() {
            continue;
        }
        out.entry(m.file.clone()).or_default().push(Finding {
            code: m.code().to_string(),
            name: m.kind.name.to_string(),
            // The proto enum's names, as istiod writes them.
            level: m.level().as_str().to_uppercase(),
            message: m.text.clone(),
        });
    }
    out
}

/// Publishes the findings while `leader` says this replica leads (the status writer's
/// input), re-analyzing after snapshots, at most once per [`EVERY`].
pub async fn run(
    store: Arc<Mutex<Store>>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
    out: watch::Sender<Analysis>,
) {
    loop {
        if *leader.borrow_and_update() {
            let root = snapshots.borrow_and_update().mesh.root_namespace.clone();
            let started = Instant::now();
            let resources = {
                let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                resources(&store)
            };
            let findings = match tokio::task::spawn_blocking(move || analyze(resources, &root)).await {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "analysis for status failed");
                    BTreeMap::new()
                }
            };
            debug!(
                objects_with_findings = findings.len(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "analysis for status"
            );
            out.send_if_modified(|cur| {
                let changed = **cur != findings;
                if changed {
                    *cur = Arc::new(findings);
                }
                changed
            });
            tokio::time::sleep(EVERY).await;
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the cluster's objects say and Spar does not do reaches their status as an
    /// error, as `spar analyze` reports it (the store keeps no document text: the fields
    /// are read from the typed object).
    #[test]
    fn fields_not_acted_on_are_errors_in_status() {
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: metrics, namespace: default}\n\
                    spec:\n  metrics: [{providers: [{name: prometheus}]}]\n";
        let mut store = Store::new();
        store.set_unit("kubernetes/Telemetry/default/metrics", spar_api::parse_file("metrics", yaml));
        let findings = analyze(resources(&store), "istio-system");
        let f = findings.values().flatten().find(|f| f.code == "SPAR0001").expect("a SPAR0001 finding");
        assert_eq!(f.level, "ERROR");
        assert!(f.message.contains("Field spec.metrics "), "{}", f.message);
    }

    #[test]
    fn envoy_filter_patches_spar_cannot_apply_are_errors_in_status() {
        let yaml = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: lua, namespace: default}\n\
                    spec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch: {operation: INSERT_BEFORE, value: {name: lua, typo: 1}}\n";
        let mut store = Store::new();
        store.set_unit("kubernetes/EnvoyFilter/default/lua", spar_api::parse_file("lua", yaml));
        let findings = analyze(resources(&store), "istio-system");
        let f = findings.values().flatten().find(|f| f.code == "SPAR0005").expect("a SPAR0005 finding");
        assert_eq!(f.level, "ERROR");
        assert!(f.message.contains("spec.configPatches[0]") && f.message.contains("typo"), "{}", f.message);
        assert!(!findings.values().flatten().any(|f| f.code == "SPAR0001"), "EnvoyFilter's fields are acted on");
    }
}
