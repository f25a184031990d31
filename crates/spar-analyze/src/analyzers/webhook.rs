//! Admission webhooks: Istio's injector webhooks must not overlap and must reach a
//! Service that exists (`webhook.Analyzer`), and webhooks pointing at an external
//! control plane must carry a usable URL (`externalcontrolplane.ExternalControlPlaneAnalyzer`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::injection::label_selector_matches;
use super::{Analyzer, Reporter, arr, st};
use crate::context::{Context, Resource, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "webhook.Analyzer",
        description: "Checks the validity of Istio webhooks",
        codes: &[code::INVALID_WEBHOOK],
        default: true,
        run: webhooks,
    },
    Analyzer {
        name: "externalcontrolplane.ExternalControlPlaneAnalyzer",
        description: "Checks that the remote IstioOperator resources reference an external control plane",
        codes: &[code::INVALID_EXTERNAL_CONTROL_PLANE_CONFIG, code::EXTERNAL_CONTROL_PLANE_ADDRESS_IS_NOT_A_HOSTNAME],
        default: true,
        run: external_control_plane,
    },
];

const REV: &str = "istio.io/rev";

/// Revisions a webhook configuration serves: its `istio.io/rev` label and the values
/// its selectors match `istio.io/rev` against.
fn revisions(cfg: &Resource) -> BTreeSet<String> {
    let mut revs: BTreeSet<String> = cfg.labels.get(REV).cloned().into_iter().collect();
    for hook in arr(&cfg.raw, "webhooks") {
        for sel in ["namespaceSelector", "objectSelector"] {
            let Some(sel) = hook.get(sel) else { continue };
            if let Some(v) = sel.pointer("/matchLabels/istio.io~1rev").and_then(crate::context::scalar) {
                revs.insert(v);
            }
            for e in arr(sel, "matchExpressions").iter().filter(|e| st(e, "key") == REV) {
                revs.extend(super::strs(e, "values").into_iter().map(str::to_string));
            }
        }
    }
    revs
}

fn label_sets(key: &str, on: &str, off: &str, revs: &BTreeSet<String>) -> Vec<BTreeMap<String, String>> {
    let base = || -> Vec<BTreeMap<String, String>> {
        vec![BTreeMap::new(), BTreeMap::from([(key.into(), on.into())]), BTreeMap::from([(key.into(), off.into())])]
    };
    let mut out = base();
    for rev in revs {
        out.extend(base().into_iter().map(|mut m| {
            m.insert(REV.into(), rev.clone());
            m
        }));
    }
    out
}

fn webhooks(ctx: &Context, r: &mut Reporter<'_>) {
    // Istio's injector webhooks: configurations serving a revision, or with a webhook
    // named `*istio.io`.
    let mut hooks: Vec<(&Resource, String, &Value)> = Vec::new();
    let mut revs = BTreeSet::new();
    for cfg in ctx.of(gk::MUTATING_WEBHOOK) {
        let cfg_revs = revisions(cfg);
        let istio = arr(&cfg.raw, "webhooks").iter().any(|h| st(h, "name").ends_with("istio.io"));
        if cfg_revs.is_empty() && !istio {
            continue;
        }
        for h in arr(&cfg.raw, "webhooks") {
            hooks.push((cfg, format!("{}/{}", cfg.full_name(), st(h, "name")), h));
        }
        revs.extend(cfg_revs);
    }

    // Every namespace and pod labelling a user may write must select at most one webhook.
    let namespaces = label_sets("istio-injection", "enabled", "disabled", &revs);
    let objects = label_sets("sidecar.istio.io/inject", "true", "false", &revs);
    for nl in &namespaces {
        for ol in &objects {
            let matches: BTreeMap<&str, &Resource> = hooks
                .iter()
                .filter(|(_, _, h)| {
                    label_selector_matches(h.get("namespaceSelector"), nl)
                        && label_selector_matches(h.get("objectSelector"), ol)
                })
                .map(|(cfg, id, _)| (id.as_str(), *cfg))
                .collect();
            if matches.len() < 2 {
                continue;
            }
            for (id, cfg) in &matches {
                let others: Vec<&str> = matches.keys().copied().filter(|o| o != id).collect();
                r.report(
                    cfg,
                    code::INVALID_WEBHOOK,
                    vec![format!(
                        "Webhook overlaps with others: [{}]. This may cause injection to occur twice.",
                        others.join(" ")
                    )],
                );
            }
        }
    }

    for (cfg, _, h) in &hooks {
        let Some(svc) = h.pointer("/clientConfig/service").filter(|v| !v.is_null()) else { continue };
        let (ns, name) = (st(svc, "namespace"), st(svc, "name"));
        if !ctx.exists(gk::SERVICE, ns, name) {
            r.report(
                cfg,
                code::INVALID_WEBHOOK,
                vec![format!("Injector refers to a control plane service that does not exist: {ns}/{name}.")],
            );
        }
    }
}

fn external_control_plane(ctx: &Context, r: &mut Reporter<'_>) {
    let validating = ctx
        .of(gk::VALIDATING_WEBHOOK)
        .filter(|c| c.name == "istiod-default-validator" || c.name.starts_with("istio-validator"));
    let mutating = ctx.of(gk::MUTATING_WEBHOOK).filter(|c| c.name.starts_with("istio-sidecar-injector"));
    for cfg in validating.chain(mutating) {
        for (i, h) in arr(&cfg.raw, "webhooks").iter().enumerate() {
            let hook = st(h, "name").to_string();
            let path = format!("webhooks[{i}].clientConfig");
            match h.pointer("/clientConfig/url").and_then(Value::as_str).filter(|u| !u.is_empty()) {
                Some(url) => match url_host(url) {
                    None => r.report_at(
                        cfg,
                        code::INVALID_EXTERNAL_CONTROL_PLANE_CONFIG,
                        &path,
                        vec![url.into(), hook, "was provided in an invalid format".into()],
                    ),
                    Some(host) if host.parse::<std::net::IpAddr>().is_ok() => r.report_at(
                        cfg,
                        code::EXTERNAL_CONTROL_PLANE_ADDRESS_IS_NOT_A_HOSTNAME,
                        &path,
                        vec![url.into(), hook],
                    ),
                    // Istio also resolves the host name; analysis here stays offline
                    // and deterministic, so a name is accepted as written.
                    Some(_) => {}
                },
                None if h.pointer("/clientConfig/service").is_none_or(Value::is_null) => r.report_at(
                    cfg,
                    code::INVALID_EXTERNAL_CONTROL_PLANE_CONFIG,
                    &path,
                    vec![String::new(), hook, "is blank".into()],
                ),
                None => {}
            }
        }
    }
}

/// The host of an absolute URL (`scheme://[user@]host[:port][/...]`), IPv6 brackets removed.
fn url_host(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        hostport.split_once(':').map_or(hostport, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("https://test.com:15017/validate"), Some("test.com"));
        assert_eq!(url_host("https://1.1.1.1:5100/inject"), Some("1.1.1.1"));
        assert_eq!(url_host("https://[::1]:443/x"), Some("::1"));
        assert_eq!(url_host("not a url"), None);
    }
}
