//! DestinationRule analyzers: server certificate verification, subsets that select no pods.

use std::collections::BTreeMap;

use serde_json::Value;

use super::virtualservice::{destination_host, service_entry_host_map};
use super::{Analyzer, Reporter, arr, selects, st, strs};
use crate::context::{Context, Resource, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "destinationrule.CaCertificateAnalyzer",
        description: "Checks if caCertificates is set when TLS mode is SIMPLE/MUTUAL",
        codes: &[
            code::NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
            code::NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL,
        ],
        default: true,
        run: ca_certificates,
    },
    Analyzer {
        name: "destinationrule.SubsetSelectPodAnalyzer",
        description: "Checks that the subsets of a DestinationRule select pods of its host",
        codes: &[code::DESTINATION_RULE_SUBSET_NOT_SELECT_PODS, code::UNKNOWN_DESTINATION_RULE_HOST],
        default: true,
        run: subsets_select_pods,
    },
];

fn unverified(tls: &Value, has_selector: bool) -> Option<&str> {
    let mode = st(tls, "mode");
    if mode != "SIMPLE" && mode != "MUTUAL" {
        return None;
    }
    let ca = st(tls, "caCertificates");
    let credential = st(tls, "credentialName");
    // A credential from a Secret verifies the server only for workload-selected rules.
    (ca.is_empty() && (!has_selector || credential.is_empty())).then_some(mode)
}

fn ca_certificates(ctx: &Context, r: &mut Reporter<'_>) {
    for dr in ctx.of(gk::DESTINATION_RULE) {
        let spec = dr.spec();
        let has_selector = spec.get("workloadSelector").is_some_and(|w| !w.is_null());
        let host = st(spec, "host");
        let policy = spec.get("trafficPolicy").unwrap_or(&Value::Null);
        if let Some(tls) = policy.get("tls")
            && let Some(mode) = unverified(tls, has_selector)
        {
            r.report_at(
                dr,
                code::NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
                "spec.trafficPolicy.tls.mode",
                vec![dr.full_name(), dr.namespace.clone(), mode.into(), host.into()],
            );
        }
        for (i, p) in arr(policy, "portLevelSettings").iter().enumerate() {
            if let Some(tls) = p.get("tls")
                && let Some(mode) = unverified(tls, has_selector)
            {
                // Istio prints the PortSelector proto (`number:9443`).
                let port = p.pointer("/port/number").and_then(Value::as_i64).map(|n| format!("number:{n}"));
                r.report_at(
                    dr,
                    code::NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL,
                    &format!("spec.trafficPolicy.portLevelSettings[{i}].tls.mode"),
                    vec![dr.full_name(), dr.namespace.clone(), mode.into(), host.into(), port.unwrap_or_default()],
                );
            }
        }
    }
}

fn subsets_select_pods(ctx: &Context, r: &mut Reporter<'_>) {
    let hosts = service_entry_host_map(ctx);
    // Pod labels as Istio augments them for endpoints: locality from the node, hostname.
    let pods: Vec<BTreeMap<String, String>> = ctx
        .of(gk::POD)
        .map(|p| {
            let mut labels = p.labels.clone();
            let node_name = st(p.spec(), "nodeName");
            if let Some(node) = ctx.get(gk::NODE, "", node_name) {
                for (k, key) in [
                    ("topology.kubernetes.io/region", "topology.kubernetes.io/region"),
                    ("topology.kubernetes.io/zone", "topology.kubernetes.io/zone"),
                    ("topology.istio.io/subzone", "topology.istio.io/subzone"),
                ] {
                    if let Some(v) = node.labels.get(key).filter(|v| !v.is_empty()) {
                        labels.insert(k.to_string(), v.clone());
                    }
                }
            }
            if !node_name.is_empty() {
                labels.insert("kubernetes.io/hostname".into(), node_name.to_string());
            }
            labels
        })
        .collect();
    for dr in ctx.of(gk::DESTINATION_RULE) {
        let spec = dr.spec();
        let host = st(spec, "host");
        let Some(entry) = destination_host(&hosts, &dr.namespace, &strs(spec, "exportTo"), host) else {
            r.report_at(dr, code::UNKNOWN_DESTINATION_RULE_HOST, "spec.host", vec![host.into()]);
            continue;
        };
        if !ctx.workloads_known() {
            continue;
        }
        for (i, s) in arr(spec, "subsets").iter().enumerate() {
            let mut selector = entry.selector.clone();
            selector.extend(Resource::string_map(s.get("labels")));
            if !pods.iter().any(|labels| selects(&selector, labels)) {
                r.report_at(
                    dr,
                    code::DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
                    &format!("spec.subsets[{i}].name"),
                    vec![st(s, "name").into()],
                );
            }
        }
    }
}
