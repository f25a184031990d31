//! The trust bundle in every namespace, as Istio publishes it: ConfigMap
//! `istio-ca-root-cert` with key `root-cert.pem`. Workloads and tools that verify mesh
//! certificates read it there. A singleton duty: only the Lease holder writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use spar_api::Kind;
use spar_model::{Snapshot, Store};
use tokio::sync::watch;
use tracing::{info, warn};

/// The ConfigMap's name.
pub const NAME: &str = "istio-ca-root-cert";
/// The key holding the PEM bundle.
pub const KEY: &str = "root-cert.pem";

/// Keeps the ConfigMap current in every namespace the store knows, while leading; runs
/// again on every snapshot (new namespaces) and bundle change (root rotation).
pub async fn run(
    client: kube::Client,
    store: Arc<Mutex<Store>>,
    mut bundle: watch::Receiver<String>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut done: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let pem = bundle.borrow_and_update().clone();
        let _ = snapshots.borrow_and_update();
        if !*leader.borrow_and_update() {
            done.clear();
        } else if !pem.is_empty() {
            let namespaces: BTreeSet<String> = {
                let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (objects, _) = store.objects();
                objects.iter().filter(|o| o.meta.kind == Kind::Namespace).map(|o| o.meta.name.clone()).collect()
            };
            done.retain(|ns, _| namespaces.contains(ns));
            for ns in namespaces {
                if done.get(&ns) == Some(&pem) {
                    continue;
                }
                match publish(&client, &ns, &pem).await {
                    Ok(()) => {
                        done.insert(ns, pem.clone());
                    }
                    Err(e) => {
                        warn!(namespace = %ns, error = %e, "cannot publish {NAME}; retrying after the next change")
                    }
                }
            }
            info!(namespaces = done.len(), "{NAME} published");
        }
        tokio::select! {
            r = bundle.changed() => if r.is_err() { return },
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

async fn publish(client: &kube::Client, namespace: &str, pem: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some([("istio.io/config".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        data: Some([(KEY.to_string(), pem.to_string())].into()),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&cm).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    api.patch(NAME, &PatchParams::apply("spar").force(), &Patch::Apply(&value)).await.map(|_| ())
}
