//! Schema and semantic validation as analyzers (Istio's `schema.ValidationAnalyzer.<Kind>`):
//! what Spar's parser and `spar_api::validate` reject, plus Istio's warnings about
//! VirtualService rules that can never match.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Analyzer, Reporter, arr, st};
use crate::context::{Context, Gk, gk};
use crate::messages_gen::code;

macro_rules! schema_analyzers {
    ($( $fn:ident => $group:literal, $kind:literal; )*) => {
        $(
            fn $fn(ctx: &Context, r: &mut Reporter<'_>) {
                validate_kind(ctx, r, Gk { group: $group, kind: $kind });
            }
        )*
        pub(super) static ANALYZERS: &[Analyzer] = &[
            $( Analyzer {
                name: concat!("schema.ValidationAnalyzer.", $kind),
                description: concat!("Runs schema validation as an analyzer on '", $kind, "' resources"),
                codes: &[code::SCHEMA_VALIDATION_ERROR, code::VIRTUAL_SERVICE_UNREACHABLE_RULE, code::VIRTUAL_SERVICE_INEFFECTIVE_MATCH],
                default: true,
                run: $fn,
            }, )*
        ];
    };
}

schema_analyzers! {
    virtual_service => "networking.istio.io", "VirtualService";
    destination_rule => "networking.istio.io", "DestinationRule";
    gateway => "networking.istio.io", "Gateway";
    service_entry => "networking.istio.io", "ServiceEntry";
    sidecar => "networking.istio.io", "Sidecar";
    workload_entry => "networking.istio.io", "WorkloadEntry";
    workload_group => "networking.istio.io", "WorkloadGroup";
    envoy_filter => "networking.istio.io", "EnvoyFilter";
    proxy_config => "networking.istio.io", "ProxyConfig";
    peer_authentication => "security.istio.io", "PeerAuthentication";
    authorization_policy => "security.istio.io", "AuthorizationPolicy";
    request_authentication => "security.istio.io", "RequestAuthentication";
    telemetry => "telemetry.istio.io", "Telemetry";
    wasm_plugin => "extensions.istio.io", "WasmPlugin";
}

fn validate_kind(ctx: &Context, r: &mut Reporter<'_>, k: Gk) {
    for res in ctx.of(k) {
        for reason in &res.invalid {
            // Reasons start with the field path (`spec.http[0].route: ...`) when known.
            let path = reason.split_once(": ").map(|(p, _)| p).unwrap_or_default();
            r.report_at(res, code::SCHEMA_VALIDATION_ERROR, path, vec![reason.clone()]);
        }
        if k == gk::VIRTUAL_SERVICE {
            unreachable_rules(res, r);
        }
    }
}

fn route_name(route: &Value, n: usize, http: bool) -> String {
    match st(route, "name") {
        name if http && !name.is_empty() => format!("{name:?}"),
        _ => format!("#{n}"),
    }
}

/// A match without its `name`, serialized, so that equal matches compare equal.
fn match_key(m: &Value) -> String {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("name");
    }
    m.to_string()
}

/// What Istio compares to find a prefix match that covers a later one.
struct PrefixMatch {
    route: String,
    request: String,
    prefix: String,
    port: Option<i64>,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    without: BTreeMap<String, String>,
}

fn exact_or_prefix(v: Option<&Value>) -> String {
    let v = v.unwrap_or(&Value::Null);
    match (st(v, "exact"), st(v, "prefix")) {
        (e, _) if !e.is_empty() => format!("exact:{e}"),
        (_, p) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn string_match_map(m: &Value, k: &str) -> BTreeMap<String, String> {
    m.get(k)
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), exact_or_prefix(Some(v)))).collect())
        .unwrap_or_default()
}

fn prefix_match(route: &str, m: &Value, matchn: usize) -> Option<PrefixMatch> {
    let prefix = m.get("uri").map(|u| st(u, "prefix")).filter(|p| !p.is_empty())?;
    let mut method = exact_or_prefix(m.get("method"));
    if method.is_empty() {
        method = "exact:GET".into();
    }
    Some(PrefixMatch {
        route: route.to_string(),
        request: match st(m, "name") {
            n if !n.is_empty() => format!("{n:?}"),
            _ => format!("#{matchn}"),
        },
        prefix: prefix.to_string(),
        port: m.get("port").and_then(Value::as_i64),
        method,
        authority: exact_or_prefix(m.get("authority")),
        headers: string_match_map(m, "headers"),
        query: string_match_map(m, "queryParams"),
        without: string_match_map(m, "withoutHeaders"),
    })
}

fn map_covered(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|bv| v == bv || v.starts_with(bv.as_str())))
}

/// Whether `a` (earlier) covers `b` (later), as Istio's `coveredValidation`.
fn covered(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && (a.method == b.method || a.method.starts_with(&b.method))
        && (a.authority == b.authority || a.authority.starts_with(&b.authority))
        && map_covered(&a.headers, &b.headers)
        && map_covered(&a.query, &b.query)
        && map_covered(&a.without, &b.without)
}

fn unreachable_rules(vs: &crate::context::Resource, r: &mut Reporter<'_>) {
    for kind in ["http", "tcp", "tls"] {
        let http = kind == "http";
        let routes = arr(vs.spec(), kind);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut empty_seen = false;
        let mut prefixes = Vec::new();
        for (n, route) in routes.iter().enumerate() {
            let name = route_name(route, n, http);
            let path = format!("spec.{kind}[{n}]");
            let matches = arr(route, "match");
            if matches.is_empty() {
                if empty_seen {
                    r.report_at(
                        vs,
                        code::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                        &path,
                        vec![name, "only the last rule can have no matches".into()],
                    );
                }
                empty_seen = true;
                continue;
            }
            let mut dups = 0;
            for (mn, m) in matches.iter().enumerate() {
                if empty_seen {
                    r.report_at(
                        vs,
                        code::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                        &path,
                        vec![name.clone(), "route without matches defined before".into()],
                    );
                    continue;
                }
                let key = match_key(m);
                if let Some(&dup) = seen.get(&key) {
                    let request = match st(m, "name") {
                        x if http && !x.is_empty() => format!("{x:?}"),
                        _ => format!("#{mn}"),
                    };
                    r.report_at(
                        vs,
                        code::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                        &format!("{path}.match[{mn}]"),
                        vec![name.clone(), request, route_name(&routes[dup], dup, http)],
                    );
                    dups += 1;
                    continue;
                }
                seen.insert(key, n);
                if http && let Some(p) = prefix_match(&name, m, mn) {
                    prefixes.push((p, format!("{path}.match[{mn}]")));
                }
            }
            if dups == matches.len() {
                r.report_at(
                    vs,
                    code::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                    &path,
                    vec![name, "all matches used by prior rules".into()],
                );
            }
        }
        if prefixes.len() > 1 {
            for (i, (a, _)) in prefixes.iter().enumerate() {
                for (b, path) in &prefixes[i + 1..] {
                    if b.prefix == a.prefix || !covered(a, b) {
                        continue;
                    }
                    r.report_at(
                        vs,
                        code::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                        path,
                        vec![
                            b.route.clone(),
                            format!("{} of prefix {}", b.request, b.prefix),
                            format!("{} of prefix {} on {}", a.request, a.prefix, a.route),
                        ],
                    );
                }
            }
        }
    }
}
