//! Workload selector analyzers: Sidecars and Telemetries that select nothing or the same
//! pods, policies whose selector is ineffective on Kubernetes Gateways, Telemetry
//! providers, and Gateway API CRD versions.

use std::collections::BTreeMap;

use serde_json::Value;

use super::gateway::selector_string;
use super::{Analyzer, Reporter, arr};
use crate::context::{Context, Resource, gk};
use crate::message::go_list;
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "sidecar.SelectorAnalyzer",
        description: "Validates that sidecars that define a workload selector match at least one pod, and that there aren't multiple sidecar resources that select overlapping pods",
        codes: &[
            code::REFERENCED_RESOURCE_NOT_FOUND,
            code::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
            code::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
            code::INEFFECTIVE_POLICY,
        ],
        default: true,
        run: sidecar_selectors,
    },
    Analyzer {
        name: "telemetry.SelectorAnalyzer",
        description: "Validates that telemetries that define a selector match at least one pod, and that there aren't multiple telemetry resources that select overlapping pods",
        codes: &[code::REFERENCED_RESOURCE_NOT_FOUND, code::CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS],
        default: true,
        run: telemetry_selectors,
    },
    Analyzer {
        name: "telemetry.DefaultSelectorAnalyzer",
        description: "Validates that there aren't multiple telemetry resources that have no selector",
        codes: &[code::MULTIPLE_TELEMETRIES_WITHOUT_WORKLOAD_SELECTORS],
        default: true,
        run: telemetry_default_selectors,
    },
    Analyzer {
        name: "telemetry.ProviderAnalyzer",
        description: "Validates that providers in telemetry resource is valid",
        codes: &[code::INVALID_TELEMETRY_PROVIDER],
        default: true,
        run: telemetry_providers,
    },
    Analyzer {
        name: "telemetry.LightstepAnalyzer",
        description: "Validates that lightstep provider is still used",
        codes: &[code::DEPRECATED],
        default: true,
        run: telemetry_lightstep,
    },
    Analyzer {
        name: "k8sgateway.SelectorAnalyzer",
        description: "Check that selectors are effective for Kubernetes gateway",
        codes: &[code::INEFFECTIVE_SELECTOR],
        default: true,
        run: k8s_gateway_selectors,
    },
    Analyzer {
        name: "k8sgateway.CRDVersionAnalyzer",
        description: "Checks Gateway API CRDs are at the minimum version required by this Istio version",
        codes: &[code::GATEWAY_APICRD_VERSION_BELOW_MINIMUM],
        default: true,
        run: gateway_api_crd_versions,
    },
];

fn sorted_names(list: &[&Resource]) -> String {
    let mut names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    go_list(&names)
}

/// Istio's ambient redirection annotation on a pod.
fn pod_in_ambient(pod: &Resource) -> bool {
    pod.annotations.get("ambient.istio.io/redirection").is_some_and(|v| v == "enabled")
}

fn namespace_in_ambient(ns: &Resource) -> bool {
    if ns.labels.get("istio-injection").is_some_and(|v| v == "enabled") {
        return false;
    }
    if ns.labels.get("istio.io/rev").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    ns.labels.get("istio.io/dataplane-mode").is_some_and(|v| v == "ambient")
}

/// Pods each selector-bearing resource selects (same namespace), reporting the ones that
/// select none. Returns pod key → resources.
fn select_pods<'c>(
    ctx: &'c Context,
    r: &mut Reporter<'_>,
    resources: &[(&'c Resource, BTreeMap<String, String>)],
) -> BTreeMap<(String, String), (&'c Resource, Vec<&'c Resource>)> {
    let mut out: BTreeMap<(String, String), (&Resource, Vec<&Resource>)> = BTreeMap::new();
    for (res, sel) in resources {
        let mut found = false;
        for pod in ctx.of(gk::POD).filter(|p| p.namespace == res.namespace) {
            if spar_model::selects(sel, &pod.labels) {
                found = true;
                out.entry((pod.namespace.clone(), pod.name.clone())).or_insert((pod, Vec::new())).1.push(res);
            }
        }
        if !found && ctx.workloads_known() {
            let sel_path = sel.keys().next().map(|k| {
                if res.kind == "Telemetry" {
                    format!("spec.selector.matchLabels.{k}")
                } else {
                    format!("spec.workloadSelector.labels.{k}")
                }
            });
            r.report_at(
                res,
                code::REFERENCED_RESOURCE_NOT_FOUND,
                &sel_path.unwrap_or_default(),
                vec!["selector".into(), selector_string(sel)],
            );
        }
    }
    out
}

fn sidecar_selectors(ctx: &Context, r: &mut Reporter<'_>) {
    let mut with_selector = Vec::new();
    let mut without: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for sc in ctx.of(gk::SIDECAR) {
        let sel = Resource::string_map(sc.spec().pointer("/workloadSelector/labels"));
        if sel.is_empty() {
            without.entry(sc.namespace.clone()).or_default().push(sc);
        } else {
            with_selector.push((sc, sel));
        }
    }
    let pods = select_pods(ctx, r, &with_selector);
    let mut reported = std::collections::BTreeSet::new();
    for ((ns, pod_name), (pod, list)) in &pods {
        let ambient = pod_in_ambient(pod);
        if list.len() == 1 && !ambient {
            continue;
        }
        let names = sorted_names(list);
        for sc in list {
            if ambient {
                if reported.insert(sc.full_name()) {
                    r.report(
                        sc,
                        code::INEFFECTIVE_POLICY,
                        vec!["selected workload is in ambient mode, the policy has no impact".into()],
                    );
                }
                continue;
            }
            r.report(
                sc,
                code::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                vec![names.clone(), ns.clone(), pod_name.clone()],
            );
        }
    }
    for (ns, list) in &without {
        if ctx.get(gk::NAMESPACE, "", ns).is_some_and(namespace_in_ambient) {
            for sc in list {
                if reported.insert(sc.full_name()) {
                    r.report(
                        sc,
                        code::INEFFECTIVE_POLICY,
                        vec!["namespace is in ambient mode, the policy has no impact".into()],
                    );
                }
            }
            continue;
        }
        if list.len() > 1 {
            let names = sorted_names(list);
            for sc in list {
                r.report(sc, code::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS, vec![names.clone(), ns.clone()]);
            }
        }
    }
}

fn telemetry_selectors(ctx: &Context, r: &mut Reporter<'_>) {
    let with_selector: Vec<_> = ctx
        .of(gk::TELEMETRY)
        .map(|t| (t, Resource::string_map(t.spec().pointer("/selector/matchLabels"))))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let pods = select_pods(ctx, r, &with_selector);
    for ((ns, pod_name), (_, list)) in &pods {
        if list.len() < 2 {
            continue;
        }
        let names = sorted_names(list);
        for t in list {
            r.report(
                t,
                code::CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS,
                vec![names.clone(), ns.clone(), pod_name.clone()],
            );
        }
    }
}

fn telemetry_default_selectors(ctx: &Context, r: &mut Reporter<'_>) {
    let mut by_ns: BTreeMap<&str, Vec<&Resource>> = BTreeMap::new();
    for t in ctx.of(gk::TELEMETRY) {
        if t.spec().get("selector").is_none_or(Value::is_null) {
            by_ns.entry(t.namespace.as_str()).or_default().push(t);
        }
    }
    for (ns, list) in by_ns {
        if list.len() > 1 {
            let names = sorted_names(&list);
            for t in &list {
                r.report(t, code::MULTIPLE_TELEMETRIES_WITHOUT_WORKLOAD_SELECTORS, vec![names.clone(), ns.to_string()]);
            }
        }
    }
}

fn telemetry_providers(ctx: &Context, r: &mut Reporter<'_>) {
    let defaults = ctx.mesh().raw.pointer("/defaultProviders/accessLogging").and_then(Value::as_array);
    if defaults.is_some_and(|d| !d.is_empty()) {
        return;
    }
    for t in ctx.of(gk::TELEMETRY) {
        for (i, l) in arr(t.spec(), "accessLogging").iter().enumerate() {
            if l.get("disabled").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if arr(l, "providers").is_empty() {
                r.report_at(
                    t,
                    code::INVALID_TELEMETRY_PROVIDER,
                    &format!("spec.accessLogging[{i}]"),
                    vec![t.name.clone(), t.namespace.clone()],
                );
            }
        }
    }
}

fn telemetry_lightstep(ctx: &Context, r: &mut Reporter<'_>) {
    let lightstep: Vec<&str> = arr(&ctx.mesh().raw, "extensionProviders")
        .iter()
        .filter(|p| p.get("lightstep").is_some())
        .filter_map(|p| p.get("name").and_then(Value::as_str))
        .collect();
    if lightstep.is_empty() {
        return;
    }
    for t in ctx.of(gk::TELEMETRY) {
        for tracing in arr(t.spec(), "tracing") {
            for p in arr(tracing, "providers") {
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                if lightstep.contains(&name) {
                    r.report(
                        t,
                        code::DEPRECATED,
                        vec![format!(
                            "The Lightstep provider {name} is deprecated, please migrate to OpenTelemetry provider."
                        )],
                    );
                }
            }
        }
    }
}

const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

fn k8s_gateway_selectors(ctx: &Context, r: &mut Reporter<'_>) {
    let policies = [gk::AUTHORIZATION_POLICY, gk::REQUEST_AUTHENTICATION, gk::TELEMETRY, gk::WASM_PLUGIN];
    for k in policies {
        for p in ctx.of(k) {
            let spec = p.spec();
            if spec.get("targetRef").is_some_and(|t| !t.is_null()) || spec.get("selector").is_none_or(Value::is_null) {
                continue;
            }
            let sel = Resource::string_map(spec.pointer("/selector/matchLabels"));
            for pod in ctx.of(gk::POD).filter(|pod| pod.namespace == p.namespace) {
                if let Some(gw) = pod.labels.get(GATEWAY_NAME_LABEL)
                    && spar_model::selects(&sel, &pod.labels)
                {
                    r.report(p, code::INEFFECTIVE_SELECTOR, vec![gw.clone()]);
                }
            }
        }
    }
}

/// Gateway API CRDs and the oldest bundle version Istio processes.
const MINIMUM_CRD_VERSIONS: &[(&str, (u64, u64, u64))] = &[
    ("grpcroutes.gateway.networking.k8s.io", (1, 1, 0)),
    ("backendtlspolicies.gateway.networking.k8s.io", (1, 4, 0)),
    ("tlsroutes.gateway.networking.k8s.io", (1, 5, 0)),
    ("tcproutes.gateway.networking.k8s.io", (1, 6, 0)),
];

fn parse_semver(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(str::parse::<u64>);
    Some((it.next()?.ok()?, it.next().unwrap_or(Ok(0)).ok()?, it.next().unwrap_or(Ok(0)).ok()?))
}

fn gateway_api_crd_versions(ctx: &Context, r: &mut Reporter<'_>) {
    for crd in ctx.of(gk::CRD) {
        let Some((_, min)) = MINIMUM_CRD_VERSIONS.iter().find(|(n, _)| *n == crd.name) else { continue };
        let Some(bv) = crd.annotations.get("gateway.networking.k8s.io/bundle-version") else { continue };
        let Some(installed) = parse_semver(bv) else { continue };
        if installed < *min {
            r.report(
                crd,
                code::GATEWAY_APICRD_VERSION_BELOW_MINIMUM,
                vec![
                    crd.name.clone(),
                    bv.trim_start_matches('v').to_string(),
                    format!("{}.{}.{}", min.0, min.1, min.2),
                ],
            );
        }
    }
}
