//! Multi-cluster checks: the same Service must look the same in every cluster
//! (`services.MultiClusterServiceAnalyzer`), and MeshNetworks may only name service
//! registries that exist (`meshnetworks.MeshNetworksAnalyzer`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use spar_api::Origin;

use super::{Analyzer, Reporter, arr, st};
use crate::context::{Context, Resource, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "meshnetworks.MeshNetworksAnalyzer",
        description: "Check the validity of MeshNetworks in the cluster",
        codes: &[code::UNKNOWN_MESH_NETWORKS_SERVICE_REGISTRY],
        default: true,
        run: mesh_networks,
    },
    Analyzer {
        name: "services.MultiClusterServiceAnalyzer",
        description: "Check the validity of services in the multi-cluster environment",
        codes: &[code::MULTI_CLUSTER_INCONSISTENT_SERVICE],
        default: true,
        run: services,
    },
];

/// Registries every control plane knows (Istio's provider IDs).
const BUILTIN_REGISTRIES: &[&str] = &["Mock", "Kubernetes", "External"];

fn mesh_networks(ctx: &Context, r: &mut Reporter<'_>) {
    let Some(networks) = ctx.mesh_networks() else { return };
    // Remote clusters are added by secrets labelled `istio/multiCluster: "true"`, one
    // cluster per key.
    let mut known: BTreeSet<String> = BUILTIN_REGISTRIES.iter().map(|s| (*s).to_string()).collect();
    for s in ctx.of(gk::SECRET).filter(|s| s.labels.get("istio/multiCluster").is_some_and(|v| v == "true")) {
        for field in ["data", "stringData"] {
            if let Some(m) = s.raw.get(field).and_then(Value::as_object) {
                known.extend(m.keys().cloned());
            }
        }
    }
    // MeshNetworks is not a Kubernetes object; it is reported as istioctl names it.
    let subject = Resource {
        group: String::new(),
        kind: "MeshNetworks".into(),
        api_version: String::new(),
        namespace: ctx.mesh().root_namespace.clone(),
        name: "meshnetworks".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        raw: networks.clone(),
        origin: Origin::new("meshNetworks", 0),
        fields: Default::default(),
        object: None,
        invalid: Vec::new(),
        cluster: String::new(),
    };
    let Some(nets) = networks.get("networks").and_then(Value::as_object) else { return };
    for (name, net) in nets {
        for e in arr(net, "endpoints") {
            let reg = st(e, "fromRegistry");
            if !reg.is_empty() && !known.contains(reg) {
                r.report(&subject, code::UNKNOWN_MESH_NETWORKS_SERVICE_REGISTRY, vec![reg.into(), name.clone()]);
            }
        }
    }
}

/// A Service's ports, ordered by name.
fn ports(s: &Resource) -> Vec<&Value> {
    let mut p: Vec<&Value> = arr(s.spec(), "ports").iter().collect();
    p.sort_by_key(|v| st(v, "name").to_string());
    p
}

/// What must agree across clusters: headless or not, type, and ports (by name).
fn services(ctx: &Context, r: &mut Reporter<'_>) {
    let mut by_name: BTreeMap<(String, String), BTreeMap<&str, &Resource>> = BTreeMap::new();
    for s in ctx.of(gk::SERVICE).filter(|s| !s.cluster.is_empty()) {
        by_name.entry((s.namespace.clone(), s.name.clone())).or_default().insert(&s.cluster, s);
    }
    for ((ns, name), clusters) in &by_name {
        if clusters.len() < 2 {
            continue;
        }
        let headless = |s: &Resource| st(s.spec(), "clusterIP") == "None";
        let (first_cluster, first) = clusters.iter().next().map(|(c, s)| (*c, *s)).expect("at least two clusters");
        let mut bad: BTreeSet<&str> = BTreeSet::new();
        let mut reasons: BTreeSet<&str> = BTreeSet::new();
        for (c, s) in clusters {
            if headless(first) != headless(s) {
                bad.extend(clusters.keys());
                reasons.insert("service has mixed mode like headless and clusterIP");
            }
            if st(first.spec(), "type") != st(s.spec(), "type") {
                bad.insert(c);
                reasons.insert("service type is inconsistent");
            }
            if ports(first) != ports(s) {
                bad.insert(c);
                reasons.insert("service ports are inconsistent");
            }
        }
        if bad.is_empty() {
            continue;
        }
        bad.insert(first_cluster);
        let list: Vec<&str> = bad.into_iter().collect();
        let reasons: Vec<&str> = reasons.into_iter().collect();
        r.report(
            first,
            code::MULTI_CLUSTER_INCONSISTENT_SERVICE,
            vec![name.clone(), ns.clone(), format!("[{}]", list.join(" ")), reasons.join("; ")],
        );
    }
}
