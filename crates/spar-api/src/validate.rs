//! Semantic validation that Istio applies beyond the schema, for the rules that would
//! otherwise produce broken Envoy config or config Istio refuses. A failing object is
//! reported with every reason and skipped; nothing else is affected.
//!
//! The rules are Istio's, from two places:
//! - istiod's validating webhook (`pkg/config/validation` and `.../agent` in istio/istio);
//! - the CRD schema that the Kubernetes API server enforces before istiod sees an object
//!   (`minLength`, `pattern`, and the CEL `x-kubernetes-validations`); these are marked
//!   "(CRD)". Enums and types are already enforced by the typed parse.
//!
//! A document that either refuses is refused: an object the API server refuses is never
//! stored, so istiod never serves it. Deliberate differences are noted at the rule.
//! EnvoyFilter patch values are checked against Envoy's schema by the generator, which
//! holds Envoy's descriptors (`spar_generate::generator::envoy_filter`, `SPAR0005`), not here:
//! such an object is kept and the patch left out. Not implemented: inline JWKS contents beyond being JSON, CEL access-log filters, the locality syntax of
//! `localityLbSetting`, and the VirtualService/Gateway/Sidecar rules not listed in their
//! functions. Warnings (accepted with a message) are not reported here.
//!
//! Rules are checked on the document as written (`Object::raw`), so they read the same
//! field names as the Istio documentation. A `null` field is treated as unset, and an
//! empty list as an unset repeated field, as istiod's protobuf decoding does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::object::{Kind, Object};
pub use syntax::go_duration;
use syntax::*;
// One module per group of kinds (`networking`, `security`, `extensions`), each adding
// its kinds' rules to `Validator`; `syntax` holds the value rules they share.

/// The annotation that turns an AuthorizationPolicy into a dry run.
pub(super) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Annotations istiod reserves for itself (`pkg/config/constants`): the webhook refuses
/// any object that carries one.
const RESERVED_ANNOTATIONS: &[&str] =
    &["internal.istio.io/webhook-always-reject", "internal.istio.io/parent-namespace", "internal.istio.io/parents"];

/// Checks `obj`; `Err` carries one message per problem, each naming the field.
pub fn validate(obj: &Object) -> Result<(), Vec<String>> {
    let mut v = Validator { errors: Vec::new(), namespace: &obj.meta.namespace, labels: &obj.meta.labels };
    let spec = obj.raw.get("spec").unwrap_or(&Value::Null);
    let kind = obj.meta.kind;
    if kind.group().ends_with("istio.io") {
        v.metadata(kind, spec, &obj.meta.annotations);
    }
    // (CRD) `spec` is required for these kinds.
    let spec_required =
        matches!(kind, Kind::ServiceEntry | Kind::WorkloadEntry | Kind::WorkloadGroup | Kind::WasmPlugin);
    if spec_required && !spec.is_object() {
        v.err("spec", "spec is required");
    }
    match kind {
        Kind::VirtualService => v.virtual_service(spec),
        Kind::DestinationRule => v.destination_rule(spec),
        Kind::ServiceEntry => v.service_entry(spec),
        Kind::WorkloadEntry => v.workload_entry("spec", spec, None, true),
        Kind::WorkloadGroup => v.workload_group(spec),
        Kind::Sidecar => v.sidecar(spec),
        Kind::Gateway => v.gateway(spec),
        Kind::EnvoyFilter => v.envoy_filter(spec),
        Kind::ProxyConfig => v.proxy_config(spec),
        Kind::AuthorizationPolicy => v.authorization_policy(spec),
        Kind::PeerAuthentication => v.peer_authentication(spec),
        Kind::RequestAuthentication => v.request_authentication(spec),
        Kind::Telemetry => v.telemetry(spec),
        Kind::WasmPlugin => v.wasm_plugin(spec),
        _ => {}
    }
    if v.errors.is_empty() { Ok(()) } else { Err(v.errors) }
}

/// Moves the objects of `parsed` that fail [`validate`] to its errors, so that they are
/// reported and skipped while everything else is kept.
pub fn validate_parsed(parsed: &mut crate::Parsed) {
    let objects = std::mem::take(&mut parsed.objects);
    for obj in objects {
        match validate(&obj) {
            Ok(()) => parsed.objects.push(obj),
            Err(reasons) => parsed.errors.push(crate::DocError {
                origin: obj.origin.clone(),
                resource: Some(obj.key().to_string()),
                reason: reasons.join("; "),
            }),
        }
    }
}

struct Validator<'o> {
    errors: Vec<String>,
    /// The object's namespace (`exportTo: [.]` means this one).
    namespace: &'o str,
    /// The object's labels (`istio.io/use-waypoint`).
    labels: &'o BTreeMap<String, String>,
}

impl Validator<'_> {
    pub(super) fn err(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    pub(super) fn check(&mut self, path: impl std::fmt::Display, r: Result<(), String>) {
        if let Err(e) = r {
            self.err(path, e);
        }
    }

    /// The annotations the webhook checks on every Istio object (`validateMetadata`).
    pub(super) fn metadata(&mut self, kind: Kind, spec: &Value, annotations: &BTreeMap<String, String>) {
        let path = "metadata.annotations";
        if let Some(value) = annotations.get(DRY_RUN_ANNOTATION) {
            if kind != Kind::AuthorizationPolicy {
                self.err(path, format!("{DRY_RUN_ANNOTATION} is only supported on AuthorizationPolicy"));
            } else {
                match str_of(spec, "action").unwrap_or("ALLOW") {
                    "ALLOW" | "DENY" if !go_bool(value) => {
                        self.err(path, format!("{DRY_RUN_ANNOTATION} must be true or false, not {value:?}"))
                    }
                    "ALLOW" | "DENY" => {}
                    action => {
                        self.err(path, format!("{DRY_RUN_ANNOTATION} only supports action ALLOW or DENY, not {action}"))
                    }
                }
            }
        }
        for a in RESERVED_ANNOTATIONS {
            if annotations.contains_key(*a) {
                self.err(path, format!("{a} is reserved for istiod and may not be set"));
            }
        }
    }

    /// `labels.Instance.Validate` on a map of labels.
    pub(super) fn labels(&mut self, path: &str, map: Option<&Value>) {
        for (k, v) in map.and_then(Value::as_object).into_iter().flatten() {
            self.check(path, label(k, v.as_str().unwrap_or_default()));
        }
    }

    /// A `selector: {matchLabels: ...}` (`validateWorkloadSelector`): no empty key and no
    /// `*` in keys or values.
    pub(super) fn selector(&mut self, path: &str, sel: Option<&Value>, labels_key: &str) {
        let Some(sel) = sel else { return };
        for (k, v) in map_of(sel, labels_key) {
            let v = v.as_str().unwrap_or_default();
            if k.is_empty() {
                self.err(format!("{path}.{labels_key}"), "key must not be empty");
            }
            if k.contains('*') || v.contains('*') {
                self.err(format!("{path}.{labels_key}"), format!("wildcard is not supported in selector: \"{k}={v}\""));
            }
        }
    }

    /// `selector`, `targetRef` and `targetRefs` of the policy kinds: at most one of them,
    /// and references only to local Services, ServiceEntries, Gateways and GatewayClasses
    /// (`validateOneOfSelectorType`, `validatePolicyTargetReference`).
    pub(super) fn policy_targets(&mut self, spec: &Value) {
        let set = [has(spec, "selector"), has(spec, "targetRef"), non_empty(spec, "targetRefs")];
        if set.iter().filter(|s| **s).count() > 1 {
            self.err("spec", "only one of targetRefs or selector can be set");
        }
        self.selector("spec.selector", spec.get("selector"), "matchLabels");
        if let Some(r) = spec.get("targetRef").filter(|r| !r.is_null()) {
            self.target_ref("spec.targetRef", r);
        }
        for (i, r) in arr(spec, "targetRefs") {
            self.target_ref(&format!("spec.targetRefs[{i}]"), r);
        }
    }

    pub(super) fn target_ref(&mut self, path: &str, r: &Value) {
        if str_of(r, "name").is_none_or(str::is_empty) {
            self.err(format!("{path}.name"), "name is required");
        }
        if str_of(r, "namespace").is_some_and(|n| !n.is_empty()) {
            self.err(format!("{path}.namespace"), "cross namespace referencing is not supported");
        }
        let group = match str_of(r, "group").unwrap_or_default() {
            "" => "core",
            g => g,
        };
        let kind = str_of(r, "kind").unwrap_or_default();
        let allowed = matches!(
            (group, kind),
            ("core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        );
        if !allowed {
            self.err(
                path,
                format!(
                    "targetRef must be a Service, ServiceEntry, Gateway (gateway.networking.k8s.io) or GatewayClass, not {}/{kind}",
                    str_of(r, "group").unwrap_or_default()
                ),
            );
        }
    }

    /// A protobuf Duration as istiod reads it: Go duration syntax, and with
    /// `agent.ValidateDuration` at least 1ms and a whole number of milliseconds.
    pub(super) fn duration(&mut self, path: &str, v: Option<&Value>) -> Option<i128> {
        let v = v.filter(|v| !v.is_null())?;
        let Some(d) = v.as_str().and_then(go_duration) else {
            self.err(path, format!("{v} is not a duration (such as 5s or 100ms)"));
            return None;
        };
        if d < 1_000_000 {
            self.err(path, "duration must be at least 1ms");
        } else if d % 1_000_000 != 0 {
            self.err(path, "only durations to ms precision are supported");
        }
        Some(d)
    }

    /// A duration that must parse, without istiod's range check (fields the webhook does
    /// not check but the CRD bounds at 1ms, and fields where 0 disables).
    pub(super) fn duration_syntax(&mut self, path: &str, v: Option<&Value>) -> Option<i128> {
        let v = v.filter(|v| !v.is_null())?;
        let d = v.as_str().and_then(go_duration);
        if d.is_none() {
            self.err(path, format!("{v} is not a duration (such as 5s or 100ms)"));
        }
        d
    }

    pub(super) fn percent(&mut self, path: &str, v: Option<i64>) {
        if let Some(p) = v
            && !(0..=100).contains(&p)
        {
            self.err(path, format!("percentage {p} is not in range 0..100"));
        }
    }

    /// `validateExportTo`: no duplicates (`.` counts as this namespace), each entry `.`,
    /// `*`, a namespace name, or `~` for ServiceEntry; `*` and `~` alone.
    pub(super) fn export_to(&mut self, spec: &Value, service_entry: bool, dr_with_selector: bool) {
        let path = "spec.exportTo";
        let entries = strings(spec, "exportTo");
        if entries.is_empty() {
            return;
        }
        let mut seen = BTreeSet::new();
        for e in &entries {
            let key = if *e == "." { self.namespace } else { e };
            if seen.contains(key) {
                if key != *e {
                    self.err(path, format!("duplicate entries in exportTo: . and current namespace {key}"));
                } else {
                    self.err(path, format!("duplicate entries in exportTo for entry {e}"));
                }
                continue;
            }
            let ok = match key {
                "~" => service_entry,
                "." | "*" => true,
                ns => is_dns1123_label(ns),
            };
            if ok {
                seen.insert(key);
            } else if key == "~" {
                self.err(path, "exportTo ~ (none) is not allowed for Istio configuration objects");
            } else {
                self.err(path, format!("{e:?}: only ., *, or a valid DNS 1123 label is allowed as exportTo entry"));
            }
        }
        if dr_with_selector && !seen.is_empty() {
            if !seen.contains(self.namespace) {
                self.err(path, "destination rule with workload selector cannot have exportTo beyond current namespace");
            } else if seen.len() > 1 {
                self.err(path, "destination rule with workload selector cannot have multiple entries in exportTo");
            }
        }
        if seen.contains("*") && entries.len() > 1 {
            self.err(path, "cannot have both public (*) and non-public exportTo values for a resource");
        }
        if seen.contains("~") && entries.len() > 1 {
            self.err(path, "cannot export service entry to no one (~) and someone");
        }
    }

    /// A host as written in config: a DNS name, optionally with a leading `*` label,
    /// or a short name; `ns/` prefixes are handled by the callers that allow them.
    pub(super) fn host(&mut self, path: &str, h: &str, allow_wildcard: bool) {
        if h.is_empty() {
            return self.err(path, "host must not be empty");
        }
        if h == "*" {
            if !allow_wildcard {
                self.err(path, "wildcard host '*' is not allowed here");
            }
            return;
        }
        // Istio allows `*.example.com` and the partial form `*example.com`.
        let body = match h.strip_prefix('*') {
            Some(rest) if allow_wildcard => rest.strip_prefix('.').unwrap_or(rest),
            Some(_) => return self.err(path, format!("wildcard host {h:?} is not allowed here")),
            None => h,
        };
        if h.len() > 255 {
            return self.err(path, format!("host {h:?} is longer than 255 characters"));
        }
        for label in body.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return self.err(path, format!("{h:?} is not a valid host name (label {label:?})"));
            }
        }
    }

    pub(super) fn regex(&mut self, path: &str, m: &Value) {
        if let Some(r) = str_of(m, "regex")
            && let Err(e) = regex::Regex::new(r)
        {
            let reason = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
            self.err(format!("{path}.regex"), format!("invalid regular expression {r:?}: {reason}"));
        }
        if let Some(obj) = m.as_object() {
            let set = ["exact", "prefix", "regex"].iter().filter(|k| obj.contains_key(**k)).count();
            if set > 1 {
                self.err(path, "only one of exact, prefix or regex may be set");
            }
        }
    }

    pub(super) fn port_number(&mut self, path: &str, v: Option<&Value>, required: bool) {
        match v.and_then(Value::as_u64) {
            Some(p) if (1..=65535).contains(&p) => {}
            Some(p) => self.err(path, format!("port {p} is out of range 1-65535")),
            None if required => self.err(path, "port number is required"),
            None => {}
        }
    }

    pub(super) fn destination(&mut self, path: &str, d: &Value) {
        match d.get("destination") {
            None => self.err(path, "destination is required"),
            Some(dest) => {
                match str_of(dest, "host") {
                    Some(h) => self.host(&format!("{path}.destination.host"), h, false),
                    None => self.err(format!("{path}.destination.host"), "host is required"),
                }
                if let Some(p) = dest.get("port") {
                    self.port_number(&format!("{path}.destination.port.number"), p.get("number"), false);
                }
            }
        }
        if let Some(w) = d.get("weight").and_then(Value::as_i64)
            && w < 0
        {
            self.err(format!("{path}.weight"), "weight must not be negative");
        }
    }
}

mod extensions;
mod networking;
mod security;
mod syntax;

#[cfg(test)]
mod tests;
