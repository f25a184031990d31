//! EnvoyFilter patch analyzers: relative operations without priority, and operations
//! Istio ignores for the `applyTo` they are used with.

use serde_json::Value;

use super::{Analyzer, Reporter, arr, st};
use crate::context::{Context, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[Analyzer {
    name: "envoyfilter.EnvoyPatchAnalyzer",
    description: "Checks an envoyFilters ",
    codes: &[
        code::ENVOY_FILTER_USES_RELATIVE_OPERATION,
        code::ENVOY_FILTER_USES_RELATIVE_OPERATION_WITH_PROXY_VERSION,
        code::ENVOY_FILTER_USES_REPLACE_OPERATION_INCORRECTLY,
        code::ENVOY_FILTER_USES_ADD_OPERATION_INCORRECTLY,
        code::ENVOY_FILTER_USES_REMOVE_OPERATION_INCORRECTLY,
    ],
    default: true,
    run: patches,
}];

fn patches(ctx: &Context, r: &mut Reporter<'_>) {
    // Names of patched filters whose patch is limited to proxy versions, across filters.
    let mut versioned: Vec<String> = Vec::new();
    for ef in ctx.of(gk::ENVOY_FILTER) {
        let spec = ef.spec();
        let priority = spec.get("priority").and_then(Value::as_i64).unwrap_or(0);
        for (i, p) in arr(spec, "configPatches").iter().enumerate() {
            let Some(patch) = p.get("patch").filter(|v| !v.is_null()) else { break };
            let value = patch.get("value").and_then(Value::as_object);
            let instance = match value {
                Some(v) if v.contains_key("name") => v["name"].to_string(),
                Some(_) => p
                    .pointer("/match/listener/filterChain/filter/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
            };
            let apply_to = st(p, "applyTo");
            let path = format!("spec.configPatches[{i}].patch.value");
            let route_level = apply_to == "ROUTE_CONFIGURATION" || apply_to == "HTTP_ROUTE";
            let relative = |r: &mut Reporter<'_>| {
                if priority != 0 {
                    return;
                }
                let c = if versioned.contains(&instance) {
                    code::ENVOY_FILTER_USES_RELATIVE_OPERATION_WITH_PROXY_VERSION
                } else {
                    code::ENVOY_FILTER_USES_RELATIVE_OPERATION
                };
                r.report_at(ef, c, &path, vec![]);
            };
            match st(patch, "operation") {
                "ADD" if route_level => {
                    r.report_at(ef, code::ENVOY_FILTER_USES_ADD_OPERATION_INCORRECTLY, &path, vec![])
                }
                "REMOVE" if route_level => {
                    r.report_at(ef, code::ENVOY_FILTER_USES_REMOVE_OPERATION_INCORRECTLY, &path, vec![]);
                }
                "REMOVE" => relative(r),
                "REPLACE" if !["NETWORK_FILTER", "HTTP_FILTER", "VIRTUAL_HOST"].contains(&apply_to) => {
                    r.report_at(ef, code::ENVOY_FILTER_USES_REPLACE_OPERATION_INCORRECTLY, &path, vec![]);
                }
                "REPLACE" | "INSERT_BEFORE" | "INSERT_AFTER" => relative(r),
                _ => {}
            }
            if p.pointer("/match/proxy/proxyVersion").and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
                versioned.push(instance);
            }
        }
    }
}
