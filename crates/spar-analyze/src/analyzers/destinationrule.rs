//! DestinationRule analyzers: server certificate verification, subsets that select no pods.

use std::collections::BTreeMap;

use spar_api::istio::destination_rule::{
    DestinationRuleSpec, DestinationRuleTrafficPolicyPortLevelSettingsTlsMode as PortTlsMode,
    DestinationRuleTrafficPolicyTlsMode as TlsMode,
};
use spar_model::selects;

use super::st;
use super::virtualservice::{destination_host, service_entry_host_map};
use super::{Analyzer, Reporter};
use crate::context::{Context, gk};
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

/// The TLS mode that leaves the server unverified (`SIMPLE` or `MUTUAL` without
/// `caCertificates`), if any.
fn unverified(
    mode: &'static str,
    ca: Option<&String>,
    credential: Option<&String>,
    has_selector: bool,
) -> Option<&'static str> {
    let ca = ca.map_or("", String::as_str);
    let credential = credential.map_or("", String::as_str);
    // A credential from a Secret verifies the server only for workload-selected rules.
    (ca.is_empty() && (!has_selector || credential.is_empty())).then_some(mode)
}

fn ca_certificates(ctx: &Context, r: &mut Reporter<'_>) {
    for (dr, spec) in ctx.typed::<DestinationRuleSpec>() {
        let has_selector = spec.workload_selector.is_some();
        let host = spec.host.as_str();
        let policy = spec.traffic_policy.as_ref();
        if let Some(tls) = policy.and_then(|p| p.tls.as_ref())
            && let Some(mode) = match tls.mode {
                Some(TlsMode::Simple) => Some("SIMPLE"),
                Some(TlsMode::Mutual) => Some("MUTUAL"),
                _ => None,
            }
            && let Some(mode) =
                unverified(mode, tls.ca_certificates.as_ref(), tls.credential_name.as_ref(), has_selector)
        {
            r.report_at(
                dr,
                code::NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
                "spec.trafficPolicy.tls.mode",
                vec![dr.full_name(), dr.namespace.clone(), mode.into(), host.into()],
            );
        }
        for (i, p) in policy.and_then(|p| p.port_level_settings.as_ref()).into_iter().flatten().enumerate() {
            if let Some(tls) = p.tls.as_ref()
                && let Some(mode) = match tls.mode {
                    Some(PortTlsMode::Simple) => Some("SIMPLE"),
                    Some(PortTlsMode::Mutual) => Some("MUTUAL"),
                    _ => None,
                }
                && let Some(mode) =
                    unverified(mode, tls.ca_certificates.as_ref(), tls.credential_name.as_ref(), has_selector)
            {
                // Istio prints the PortSelector proto (`number:9443`).
                let port = p.port.as_ref().and_then(|p| p.number).map(|n| format!("number:{n}"));
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
    for (dr, spec) in ctx.typed::<DestinationRuleSpec>() {
        let host = spec.host.as_str();
        let export: Vec<&str> = spec.export_to.iter().flatten().map(String::as_str).collect();
        let Some(entry) = destination_host(&hosts, &dr.namespace, &export, host, &ctx.mesh().domain) else {
            r.report_at(dr, code::UNKNOWN_DESTINATION_RULE_HOST, "spec.host", vec![host.into()]);
            continue;
        };
        if !ctx.workloads_known() {
            continue;
        }
        for (i, s) in spec.subsets.iter().flatten().enumerate() {
            let mut selector = entry.selector.clone();
            selector.extend(s.labels.iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
            if !pods.iter().any(|labels| selects(&selector, labels)) {
                r.report_at(
                    dr,
                    code::DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
                    &format!("spec.subsets[{i}].name"),
                    vec![s.name.clone()],
                );
            }
        }
    }
}
