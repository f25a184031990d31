//! Sidecar injection analyzers: namespaces not enabled, pods without a proxy, proxy
//! images that differ from the injector's, `image: auto` that nothing will inject.

use std::collections::BTreeMap;

use serde_json::Value;
use spar_model::LabelSelectorRequirement;

use super::{Analyzer, Reporter, arr, containers, st};
use crate::context::{Context, Resource, gk};
use crate::message::go_list;
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "injection.Analyzer",
        description: "Checks conditions related to Istio sidecar injection",
        codes: &[
            code::NAMESPACE_NOT_INJECTED,
            code::POD_MISSING_PROXY,
            code::NAMESPACE_MULTIPLE_INJECTION_LABELS,
            code::NAMESPACE_INJECTION_ENABLED_BY_DEFAULT,
        ],
        default: true,
        run: injection,
    },
    Analyzer {
        name: "injection.ImageAnalyzer",
        description: "Checks the image of auto-injection configured with the running proxies on pods",
        codes: &[code::PODS_ISTIO_PROXY_IMAGE_MISMATCH_IN_NAMESPACE],
        default: true,
        run: images,
    },
    Analyzer {
        name: "injection.ImageAutoAnalyzer",
        description: "Makes sure that Pods and Deployments with `image: auto` are going to be injected",
        codes: &[code::IMAGE_AUTO_WITHOUT_INJECTION_WARNING, code::IMAGE_AUTO_WITHOUT_INJECTION_ERROR],
        default: true,
        run: image_auto,
    },
];

const REV_LABEL: &str = "istio.io/rev";
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

fn injector_configmap_name(revision: &str) -> String {
    if revision.is_empty() || revision == "default" {
        "istio-sidecar-injector".into()
    } else {
        format!("istio-sidecar-injector-{revision}")
    }
}

/// The injector's `values` (a JSON document inside the ConfigMap).
fn injector_values(cm: &Resource) -> Option<Value> {
    let text = cm.raw.pointer("/data/values").and_then(Value::as_str)?;
    serde_json::from_str(text).ok()
}

fn injection(ctx: &Context, r: &mut Reporter<'_>) {
    let mut injected = BTreeMap::new();
    for ns in ctx.of(gk::NAMESPACE) {
        if ns.name == "istio-system" {
            continue;
        }
        let inj = ns.labels.get("istio-injection");
        let rev = ns.labels.get(REV_LABEL);
        let mut labels = Vec::new();
        if let Some(v) = inj {
            labels.push(format!("istio-injection={v}"));
        }
        for l in [REV_LABEL, DATAPLANE_MODE] {
            if let Some(v) = ns.labels.get(l)
                && inj.is_none_or(|i| i == "enabled")
            {
                labels.push(format!("{l}={v}"));
            }
        }
        if labels.len() > 1 {
            r.report(ns, code::NAMESPACE_MULTIPLE_INJECTION_LABELS, vec![go_list(&labels)]);
        }
        if ns.labels.get(DATAPLANE_MODE).is_some_and(|v| v == "ambient") {
            continue;
        }
        let cm_name = injector_configmap_name(rev.map_or("", String::as_str));
        let by_default = ctx
            .of(gk::CONFIG_MAP)
            .find(|cm| cm.name == cm_name)
            .and_then(injector_values)
            .and_then(|v| v.pointer("/sidecarInjectorWebhook/enableNamespacesByDefault").and_then(Value::as_bool))
            .unwrap_or(false);
        if inj.is_none_or(String::is_empty) && rev.is_none() {
            if by_default {
                r.report(ns, code::NAMESPACE_INJECTION_ENABLED_BY_DEFAULT, vec![]);
            } else {
                r.report(ns, code::NAMESPACE_NOT_INJECTED, vec![ns.name.clone(), ns.name.clone()]);
            }
            continue;
        }
        if inj.is_some_and(|v| v == "enabled") {
            injected.insert(ns.name.clone(), ());
        }
    }
    for pod in ctx.of(gk::POD) {
        if !injected.contains_key(&pod.namespace) {
            continue;
        }
        let inject =
            pod.labels.get("sidecar.istio.io/inject").or_else(|| pod.annotations.get("sidecar.istio.io/inject"));
        if inject.is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            continue;
        }
        if pod.spec().get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let image = containers(pod, true).into_iter().find(|c| st(c, "name") == "istio-proxy").map(|c| st(c, "image"));
        if image.is_none_or(str::is_empty) {
            r.report(pod, code::POD_MISSING_PROXY, vec![pod.full_name()]);
        }
    }
}

/// The image type (`distroless`, ...) that applies to `pod`: MeshConfig, then
/// ProxyConfigs (root namespace, namespace, workload), then the pod's annotation.
fn image_type(ctx: &Context, pod: &Resource) -> String {
    let of = |v: &Value| v.pointer("/image/imageType").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut variant = of(ctx.mesh().default_config());
    let root = &ctx.mesh().root_namespace;
    let pcs: Vec<&Resource> = ctx.of(gk::PROXY_CONFIG).collect();
    for pc in pcs.iter().filter(|p| &p.namespace == root) {
        let t = of(pc.spec());
        if !t.is_empty() {
            variant = t;
        }
    }
    for pc in pcs.iter().filter(|p| &p.namespace != root && p.namespace == pod.namespace) {
        if pc.spec().get("selector").is_none() {
            let t = of(pc.spec());
            if !t.is_empty() {
                variant = t;
            }
        }
    }
    for pc in pcs.iter().filter(|p| &p.namespace != root && p.namespace == pod.namespace) {
        if pc.spec().get("selector").is_some() {
            let sel = Resource::string_map(pc.spec().pointer("/selector/matchLabels"));
            let t = of(pc.spec());
            if spar_model::selects(&sel, &pod.labels) && !t.is_empty() {
                variant = t;
            }
        }
    }
    if let Some(a) = pod.annotations.get("proxy.istio.io/config")
        && let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(a)
        && let Ok(v) = serde_json::to_value(v)
    {
        let t = of(&v);
        if !t.is_empty() {
            variant = t;
        }
    }
    if variant == "default" { String::new() } else { variant }
}

fn images(ctx: &Context, r: &mut Reporter<'_>) {
    let mut proxy_images = BTreeMap::new();
    for cm in ctx.of(gk::CONFIG_MAP).filter(|c| c.name.starts_with("istio-sidecar-injector")) {
        let image = injector_values(cm).map(|v| {
            let g = v.get("global").unwrap_or(&Value::Null);
            let proxy = g.pointer("/proxy/image").and_then(Value::as_str).unwrap_or_default();
            if proxy.contains('/') { proxy.to_string() } else { format!("{}/{proxy}:{}", st(g, "hub"), st(g, "tag")) }
        });
        proxy_images.insert(cm.name.clone(), image.unwrap_or_default());
    }
    if proxy_images.is_empty() {
        return;
    }
    let mut injected: BTreeMap<String, String> = BTreeMap::new();
    for ns in ctx.of(gk::NAMESPACE) {
        if let Some(rev) = ns.labels.get(REV_LABEL) {
            injected.insert(ns.name.clone(), rev.clone());
        } else if ns.labels.get("istio-injection").is_some_and(|v| v == "enabled") {
            injected.insert(ns.name.clone(), "default".into());
        }
    }
    let mut mismatched: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in ctx.of(gk::POD) {
        let Some(rev) = injected.get(&pod.namespace) else { continue };
        if pod.annotations.get("sidecar.istio.io/proxyImage").is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let cm_name = injector_configmap_name(rev);
        let variant = image_type(ctx, pod);
        for c in containers(pod, true) {
            if st(c, "name") != "istio-proxy" {
                continue;
            }
            let Some(expected) = proxy_images.get(&cm_name) else { break };
            let image = st(c, "image");
            if image != expected && image != format!("{expected}-{variant}") {
                mismatched.entry(pod.namespace.clone()).or_default().push(pod.name.clone());
            }
        }
    }
    for (ns, mut pods) in mismatched {
        pods.sort();
        if let Some(nsr) = ctx.get(gk::NAMESPACE, "", &ns) {
            r.report(nsr, code::PODS_ISTIO_PROXY_IMAGE_MISMATCH_IN_NAMESPACE, vec![go_list(&pods)]);
        }
    }
}

/// A Kubernetes `LabelSelector` written in a webhook (`matchLabels` and
/// `matchExpressions`), matched by spar-model; absent selects all. Label values may be
/// written as numbers or booleans, as elsewhere in analysis.
pub(crate) fn label_selector_matches(selector: Option<&Value>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_null()) else { return true };
    let expressions: Vec<LabelSelectorRequirement> = arr(sel, "matchExpressions")
        .iter()
        .map(|e| LabelSelectorRequirement {
            key: st(e, "key").to_string(),
            operator: st(e, "operator").to_string(),
            values: super::strs(e, "values").into_iter().map(str::to_string).collect(),
        })
        .collect();
    spar_model::label_selector_matches(&Resource::string_map(sel.get("matchLabels")), &expressions, labels)
}

fn has_auto_image(spec: &Value) -> bool {
    arr(spec, "containers").iter().any(|c| st(c, "name") == "istio-proxy" && st(c, "image") == "auto")
}

fn image_auto(ctx: &Context, r: &mut Reporter<'_>) {
    let webhooks: Vec<&Value> = ctx
        .of(gk::MUTATING_WEBHOOK)
        .flat_map(|m| arr(&m.raw, "webhooks"))
        .filter(|w| st(w, "name").ends_with("istio.io"))
        .collect();
    for pod in ctx.of(gk::POD) {
        if has_auto_image(pod.spec()) {
            r.report(pod, code::IMAGE_AUTO_WITHOUT_INJECTION_ERROR, vec!["Pod".into(), pod.name.clone()]);
        }
    }
    for d in ctx.of(gk::DEPLOYMENT) {
        let template = d.spec().get("template").unwrap_or(&Value::Null);
        if !has_auto_image(template.get("spec").unwrap_or(&Value::Null)) {
            continue;
        }
        let ns_name = if d.namespace.is_empty() { "default" } else { d.namespace.as_str() };
        let ns_labels = ctx.get(gk::NAMESPACE, "", ns_name).map(|n| n.labels.clone()).unwrap_or_default();
        let pod_labels = Resource::string_map(template.pointer("/metadata/labels"));
        let injected = webhooks.iter().any(|w| {
            label_selector_matches(w.get("namespaceSelector"), &ns_labels)
                && label_selector_matches(w.get("objectSelector"), &pod_labels)
        });
        if !injected {
            r.report(d, code::IMAGE_AUTO_WITHOUT_INJECTION_WARNING, vec!["Deployment".into(), d.name.clone()]);
        }
    }
}
