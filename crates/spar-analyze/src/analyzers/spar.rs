//! Spar's own analyzers, for configuration that is accepted and then silently has no
//! effect, which istioctl does not report.

use std::collections::BTreeMap;

use super::virtualservice::{gateway_hosts, names_for_namespace};
use spar_api::istio::gateway::GatewaySpec;
use spar_model::hosts_overlap;

use super::{Analyzer, Reporter, short_or_full, strs};
use crate::context::{Context, Resource, gk};

/// `SPAR0002` ConfigurationDropped.
pub const CONFIGURATION_DROPPED: &str = "SPAR0002";
/// `SPAR0003` DuplicateResource.
pub const DUPLICATE_RESOURCE: &str = "SPAR0003";
/// `SPAR0004` CustomProviderUnusable.
pub const CUSTOM_PROVIDER_UNUSABLE: &str = "SPAR0004";
/// `SPAR0006` GatewayAPINotServed.
pub const GATEWAY_API_NOT_SERVED: &str = "SPAR0006";

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "spar.DroppedConfigAnalyzer",
        description: "Finds VirtualServices that no proxy will receive: bound only to Gateways that do not exist, or whose hosts match no server of the Gateways they bind to",
        codes: &[CONFIGURATION_DROPPED],
        default: true,
        run: dropped_virtual_services,
    },
    Analyzer {
        name: "spar.DuplicateResourceAnalyzer",
        description: "Finds resources defined more than once in the input; only the first definition is used",
        codes: &[DUPLICATE_RESOURCE],
        default: true,
        run: duplicates,
    },
    Analyzer {
        name: "spar.CustomAuthorizationAnalyzer",
        description: "Finds AuthorizationPolicies with action CUSTOM whose provider is not an ext_authz provider of MeshConfig extensionProviders: the requests they match are denied",
        codes: &[CUSTOM_PROVIDER_UNUSABLE],
        default: true,
        run: custom_providers,
    },
    Analyzer {
        name: "spar.GatewayAPIAnalyzer",
        description: "Translates Gateway API resources as spar serve does (into Istio Gateways and VirtualServices, as istiod) and reports what is not served: refused parents, unusable backends, listeners that cannot be programmed, unsupported filters",
        codes: &[GATEWAY_API_NOT_SERVED],
        default: true,
        run: gateway_api,
    },
];

/// What `spar serve`'s translation of Gateway API says, on the resource that says it.
fn gateway_api(ctx: &Context, r: &mut Reporter<'_>) {
    let objects: Vec<&spar_api::Object> = ctx.resources().iter().filter_map(|res| res.object.as_ref()).collect();
    if !objects.iter().any(|o| o.meta.kind.group() == spar_model::gateway_api::GROUP) {
        return;
    }
    let translated = spar_model::gateway_api::translate(&objects, &ctx.mesh().domain);
    for d in translated.diagnostics {
        let Some(res) = ctx.resources().iter().find(|res| res.object.as_ref().is_some_and(|o| o.origin == d.origin))
        else {
            continue;
        };
        r.report(res, GATEWAY_API_NOT_SERVED, vec![d.message]);
    }
}

/// CUSTOM policies need an `envoyExtAuthzHttp`/`envoyExtAuthzGrpc` provider by the name
/// they give; without one, Spar (as istiod) denies every request they match.
fn custom_providers(ctx: &Context, r: &mut Reporter<'_>) {
    let providers = ctx.mesh().raw.get("extensionProviders").and_then(serde_json::Value::as_array);
    let ext_authz = |name: &str| {
        providers.into_iter().flatten().any(|p| {
            p.get("name").and_then(serde_json::Value::as_str) == Some(name)
                && (p.get("envoyExtAuthzHttp").is_some() || p.get("envoyExtAuthzGrpc").is_some())
        })
    };
    for ap in ctx.of(gk::AUTHORIZATION_POLICY) {
        let spec = ap.spec();
        if spec.get("action").and_then(serde_json::Value::as_str) != Some("CUSTOM") {
            continue;
        }
        let name = spec.pointer("/provider/name").and_then(serde_json::Value::as_str).unwrap_or_default();
        if name.is_empty() {
            r.report_at(ap, CUSTOM_PROVIDER_UNUSABLE, "spec.action", vec!["the policy names no provider".into()]);
        } else if !ext_authz(name) {
            let reason = format!("provider {name:?} is not an ext_authz provider of MeshConfig extensionProviders");
            r.report_at(ap, CUSTOM_PROVIDER_UNUSABLE, "spec.provider.name", vec![reason]);
        }
    }
}

fn dropped_virtual_services(ctx: &Context, r: &mut Reporter<'_>) {
    for vs in ctx.of(gk::VIRTUAL_SERVICE) {
        let spec = vs.spec();
        let gateways = strs(spec, "gateways");
        if gateways.is_empty() || gateways.contains(&"mesh") {
            continue;
        }
        let hosts = strs(spec, "hosts");
        let mut missing = Vec::new();
        let mut unmatched = Vec::new();
        let mut effective = false;
        for g in &gateways {
            let (ns, name) = short_or_full(&vs.namespace, g);
            if let Some(gw) = ctx.get(gk::GATEWAY, &ns, &name) {
                // A Gateway that does not parse serves nothing (spar serve drops it too).
                let server_hosts = gw
                    .typed::<GatewaySpec>()
                    .map(|spec| names_for_namespace(&gateway_hosts(&gw.namespace, spec), &vs.namespace))
                    .unwrap_or_default();
                if server_hosts.iter().any(|sh| hosts.iter().any(|h| hosts_overlap(sh, h))) {
                    effective = true;
                } else {
                    unmatched.push(g.to_string());
                }
            } else if ctx.get(gk::K8S_GATEWAY, &ns, &name).is_some() {
                // Gateway API listeners: Istio's GatewayAnalyzer checks hostnames; assume bound.
                effective = true;
            } else {
                missing.push(g.to_string());
            }
        }
        if effective {
            continue;
        }
        let mut reasons = Vec::new();
        if !missing.is_empty() {
            reasons.push(format!("the gateways {} do not exist", missing.join(", ")));
        }
        if !unmatched.is_empty() {
            reasons.push(format!(
                "its hosts ({}) match no server host of the gateways {}",
                hosts.join(", "),
                unmatched.join(", ")
            ));
        }
        let reason = format!("it binds only to gateways and no proxy will receive its routes: {}", reasons.join("; "));
        r.report_at(vs, CONFIGURATION_DROPPED, "spec.gateways", vec![reason]);
    }
}

fn duplicates(ctx: &Context, r: &mut Reporter<'_>) {
    let mut first: BTreeMap<(&str, &str, &str, &str, &str), &Resource> = BTreeMap::new();
    for res in ctx.resources() {
        let key =
            (res.cluster.as_str(), res.group.as_str(), res.kind.as_str(), res.namespace.as_str(), res.name.as_str());
        match first.get(&key) {
            None => {
                first.insert(key, res);
            }
            Some(kept) => {
                let label = res.subject().label();
                r.report(res, DUPLICATE_RESOURCE, vec![label, kept.origin.to_string()]);
            }
        }
    }
}
