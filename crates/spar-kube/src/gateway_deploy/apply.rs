//! Applying what [`super::render`] makes: a singleton duty, like status writes, so only
//! the Lease holder applies.
//!
//! - **When.** On every snapshot (the store changed: a Gateway or GatewayClass may have),
//!   on becoming leader, and every [`DeployConfig::resync`] (a Deployment someone deleted
//!   or edited comes back, as istiod's watch on its children brings it back). A Gateway
//!   whose inputs did not change since it was applied is not applied again in between.
//! - **How.** Server-side apply, forced, with the class's controller as field manager
//!   (`istio.io/gateway-controller` is istiod's own, so objects istiod made are taken over
//!   field by field, and fields Spar does not set are dropped). An existing object without
//!   [`super::MANAGED_LABEL`] is someone else's and is left alone (istiod's `canManage`).
//! - **Stopping.** A Gateway that is deleted, no longer managed or whose class another
//!   controller owns is no longer applied; nothing is deleted. Kubernetes' garbage
//!   collector deletes the objects of a deleted Gateway (their owner reference); those of
//!   a Gateway that changed class stay until the Gateway goes, as with istiod.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;
use spar_api::Kind;
use spar_model::{Snapshot, Store};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{MANAGED_LABEL, Managed, managed, render};
use crate::inject::InjectConfig;

/// What [`run`] deploys with.
#[derive(Clone, Debug)]
pub struct DeployConfig {
    /// The proxy, as injection makes it (image, bootstrap image, xDS address, resources).
    pub inject: InjectConfig,
    /// How often everything is applied again even when nothing changed, to repair drift.
    pub resync: Duration,
}

impl Default for DeployConfig {
    fn default() -> Self {
        // kube-runtime controllers' habit: an idle resync in minutes, not seconds.
        Self { inject: InjectConfig::default(), resync: Duration::from_secs(300) }
    }
}

/// What became of one Gateway.
enum Outcome {
    /// Applied (or deliberately left alone): not again until it changes.
    Done,
    /// The Gateway is gone from the API server; the store will follow.
    Gone,
}

/// Deploys every managed Gateway of the store ([`managed`]) while `leader` says this
/// replica leads; stops when `snapshots` closes. Only Gateways read from Kubernetes are
/// deployed (a Gateway in a `--config` file has no object to own anything).
pub async fn run(
    client: kube::Client,
    store: Arc<Mutex<Store>>,
    cfg: DeployConfig,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut applied: BTreeMap<(String, String), Managed> = BTreeMap::new();
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        let _ = snapshots.borrow_and_update();
        if *leader.borrow_and_update() {
            let want = {
                let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (objects, _) = store.objects();
                let objects: Vec<_> = objects
                    .into_iter()
                    .filter(|o| o.meta.kind != Kind::KubernetesGateway || o.origin.file.starts_with("kubernetes/"))
                    .collect();
                managed(&objects)
            };
            applied.retain(|(ns, name), _| {
                let keep = want.iter().any(|g| &g.meta.namespace == ns && &g.meta.name == name);
                if !keep {
                    info!(gateway = %format!("{ns}/{name}"), "gateway no longer managed: its objects are no longer applied");
                }
                keep
            });
            for gw in want {
                let key = (gw.meta.namespace.clone(), gw.meta.name.clone());
                if applied.get(&key) == Some(&gw) {
                    continue;
                }
                match reconcile(&client, &gw, &cfg.inject).await {
                    Ok(Outcome::Done) => {
                        applied.insert(key, gw);
                    }
                    Ok(Outcome::Gone) => {}
                    Err(e) => warn!(
                        gateway = %format!("{}/{}", key.0, key.1), error = %e,
                        "cannot deploy the gateway; retrying after the next change"
                    ),
                }
            }
        } else {
            // Whoever leads applies everything; so will we when we lead again.
            applied.clear();
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = resync.tick() => applied.clear(),
        }
    }
}

fn api(client: &kube::Client, api_version: &str, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), namespace, &ar)
}

async fn reconcile(client: &kube::Client, gw: &Managed, inject: &InjectConfig) -> Result<Outcome, kube::Error> {
    let (ns, name) = (&gw.meta.namespace, &gw.meta.name);
    let gateway = api(client, "gateway.networking.k8s.io/v1", "Gateway", ns).get_opt(name).await?;
    let Some(uid) = gateway.and_then(|g| g.metadata.uid) else {
        debug!(gateway = %format!("{ns}/{name}"), "gateway gone before it was deployed");
        return Ok(Outcome::Gone);
    };
    let rendered = match render(gw, &uid, inject) {
        Ok(r) => r,
        Err(e) => {
            // Not a passing failure: said once, tried again when the Gateway changes.
            warn!(gateway = %format!("{ns}/{name}"), error = %e, "gateway not deployed");
            return Ok(Outcome::Done);
        }
    };
    let params = PatchParams::apply(gw.controller).force();
    for obj in rendered.objects() {
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let (kind, object_name) = (s("/kind"), s("/metadata/name"));
        let api = api(client, s("/apiVersion"), kind, ns);
        if let Some(existing) = api.get_opt(object_name).await?
            && !existing.metadata.labels.as_ref().is_some_and(|l| l.contains_key(MANAGED_LABEL))
        {
            warn!(
                gateway = %format!("{ns}/{name}"), %kind, name = %object_name,
                "not taken over: the {kind} exists without the {MANAGED_LABEL} label (someone else's)"
            );
            continue;
        }
        api.patch(object_name, &params, &Patch::Apply(obj)).await?;
    }
    info!(gateway = %format!("{ns}/{name}"), deployment = %gw.deployment_name(), "gateway deployed");
    Ok(Outcome::Done)
}
