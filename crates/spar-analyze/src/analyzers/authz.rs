//! Security analyzers: AuthorizationPolicies that select nothing or name unknown
//! namespaces; RequestAuthentications without JWKS fetch restrictions on istiod.

use std::collections::BTreeMap;

use serde_json::Value;
use spar_api::istio::authorization_policy::AuthorizationPolicySpec;
use spar_model::selects;

use super::gateway::selector_string;
use super::{Analyzer, Reporter, arr, pod_in_mesh, st};
use crate::context::{Context, Resource, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "auth.AuthorizationPoliciesAnalyzer",
        description: "Checks the validity of authorization policies",
        codes: &[code::NO_MATCHING_WORKLOADS_FOUND, code::REFERENCED_RESOURCE_NOT_FOUND],
        default: true,
        run: authorization_policies,
    },
    Analyzer {
        name: "authn.BlockedCIDRsAnalyzer",
        description: "Checks that BLOCKED_CIDRS_IN_JWKS_URIS is configured on istiod when RequestAuthentication resources exist",
        codes: &[code::JWKS_URI_FETCH_UNRESTRICTED],
        default: true,
        run: blocked_cidrs,
    },
];

fn namespace_match(ns: &str, exp: &str) -> bool {
    if exp == "*" {
        return true;
    }
    if let Some(suffix) = exp.strip_prefix('*') {
        return ns.ends_with(suffix);
    }
    if let Some(prefix) = exp.strip_suffix('*') {
        return ns.starts_with(prefix);
    }
    ns.eq_ignore_ascii_case(exp)
}

fn authorization_policies(ctx: &Context, r: &mut Reporter<'_>) {
    // Labels of pods in the mesh (or in ambient mode), by namespace.
    let mut pods: BTreeMap<&str, Vec<&BTreeMap<String, String>>> = BTreeMap::new();
    for pod in ctx.of(gk::POD) {
        let e = pods.entry(pod.namespace.as_str()).or_default();
        if pod_in_mesh(ctx, pod) {
            e.push(&pod.labels);
        }
        if pod.annotations.get("ambient.istio.io/redirection").is_some_and(|v| v == "enabled") {
            e.push(&pod.labels);
        }
    }
    let root = ctx.mesh().root_namespace.as_str();
    for (ap, spec) in ctx.typed::<AuthorizationPolicySpec>() {
        let has_selector = spec.selector.is_some();
        let sel = spec.selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
        let in_ns = pods.get(ap.namespace.as_str()).map(Vec::as_slice).unwrap_or_default();
        if !ctx.workloads_known() {
            // No Pods in the input: nothing to say about what the policy selects.
        } else if ap.namespace == root {
            if has_selector && !pods.values().flatten().any(|l| selects(&sel, l)) {
                r.report(ap, code::NO_MATCHING_WORKLOADS_FOUND, vec![selector_string(&sel)]);
            }
        } else if !has_selector {
            if in_ns.is_empty() {
                r.report(ap, code::NO_MATCHING_WORKLOADS_FOUND, vec![String::new()]);
            }
        } else if !in_ns.iter().any(|l| selects(&sel, l)) {
            r.report(ap, code::NO_MATCHING_WORKLOADS_FOUND, vec![selector_string(&sel)]);
        }
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            for (j, from) in rule.from.iter().flatten().enumerate() {
                let Some(source) = &from.source else { continue };
                for (field, list) in [("namespaces", &source.namespaces), ("notNamespaces", &source.not_namespaces)] {
                    for (k, ns) in list.iter().flatten().enumerate() {
                        if !ctx.of(gk::NAMESPACE).any(|n| namespace_match(&n.name, ns)) {
                            r.report_at(
                                ap,
                                code::REFERENCED_RESOURCE_NOT_FOUND,
                                &format!("spec.rules[{i}].from[{j}].source.{field}[{k}]"),
                                vec!["namespace".into(), ns.clone()],
                            );
                        }
                    }
                }
            }
        }
    }
}

fn blocked_cidrs(ctx: &Context, r: &mut Reporter<'_>) {
    let names: Vec<String> = ctx.of(gk::REQUEST_AUTHENTICATION).map(Resource::full_name).collect();
    if names.is_empty() {
        return;
    }
    for d in ctx.of(gk::DEPLOYMENT) {
        if d.labels.get("app").is_none_or(|a| a != "istiod") {
            continue;
        }
        let containers = d.spec().pointer("/template/spec/containers").unwrap_or(&Value::Null);
        let configured = containers
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| arr(c, "env"))
            .any(|e| st(e, "name") == "BLOCKED_CIDRS_IN_JWKS_URIS" && !st(e, "value").is_empty());
        if configured {
            continue;
        }
        let shown = if names.len() <= 5 {
            names.join(", ")
        } else {
            format!("{}, and {} more", names[..5].join(", "), names.len() - 5)
        };
        r.report(d, code::JWKS_URI_FETCH_UNRESTRICTED, vec![names.len().to_string(), shown]);
    }
}
