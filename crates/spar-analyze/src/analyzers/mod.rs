//! The analyzers: each reads the [`Context`] and reports messages. Names, and the codes
//! each can emit, are Istio's (`virtualservice.GatewayAnalyzer`, ...), so that
//! `--analyzer` and suppressions written for istioctl keep working; Spar's own
//! analyzers are named `spar.*`.

use serde_json::Value;

use crate::catalog::message_type;
use crate::context::{Context, Resource};
use crate::message::Message;

pub(crate) mod annotations;
mod authz;
mod destinationrule;
mod envoyfilter;
mod gateway;
mod injection;
mod misc;
mod multicluster;
mod schema;
mod selectors;
mod service;
mod spar;
mod virtualservice;
mod webhook;

/// The annotation that silences codes on one resource (comma-separated, `*` for all).
pub const SUPPRESS_ANNOTATION: &str = "galley.istio.io/analyze-suppress";

/// One analyzer.
#[derive(Debug)]
pub struct Analyzer {
    /// Istio's name (`virtualservice.GatewayAnalyzer`), or `spar.*`.
    pub name: &'static str,
    /// What it checks.
    pub description: &'static str,
    /// The codes it can emit.
    pub codes: &'static [&'static str],
    /// Whether it runs by default (Istio leaves alpha analyzers out of its default set).
    pub default: bool,
    /// The check.
    pub run: fn(&Context, &mut Reporter<'_>),
}

/// Every analyzer Spar implements, in a stable order.
pub fn all() -> Vec<&'static Analyzer> {
    let groups: &[&[Analyzer]] = &[
        annotations::ANALYZERS,
        authz::ANALYZERS,
        destinationrule::ANALYZERS,
        envoyfilter::ANALYZERS,
        gateway::ANALYZERS,
        injection::ANALYZERS,
        misc::ANALYZERS,
        multicluster::ANALYZERS,
        schema::ANALYZERS,
        selectors::ANALYZERS,
        service::ANALYZERS,
        virtualservice::ANALYZERS,
        webhook::ANALYZERS,
        spar::ANALYZERS,
    ];
    groups.iter().flat_map(|g| g.iter()).collect()
}

/// Finds an analyzer by name.
pub fn by_name(name: &str) -> Option<&'static Analyzer> {
    all().into_iter().find(|a| a.name == name)
}

/// Collects what one analyzer reports, honouring the suppress annotation.
#[derive(Debug)]
pub struct Reporter<'a> {
    analyzer: &'static str,
    out: &'a mut Vec<Message>,
}

impl<'a> Reporter<'a> {
    /// A reporter for `analyzer` writing into `out`.
    pub fn new(analyzer: &'static str, out: &'a mut Vec<Message>) -> Self {
        Self { analyzer, out }
    }

    /// Reports `code` on `r` at the document's line.
    pub fn report(&mut self, r: &Resource, code: &str, args: Vec<String>) {
        self.report_at(r, code, "", args);
    }

    /// Reports `code` on `r`, at the line of field `path` when known.
    pub fn report_at(&mut self, r: &Resource, code: &str, path: &str, args: Vec<String>) {
        let Some(kind) = message_type(code) else {
            debug_assert!(false, "unknown message code {code}");
            return;
        };
        if suppressed_by_annotation(r, code) {
            return;
        }
        self.out.push(Message {
            kind,
            text: kind.render(&args),
            subject: Some(r.subject()),
            file: r.origin.file.to_string(),
            line: if path.is_empty() { r.origin.line } else { r.line_of(path) },
            analyzer: self.analyzer,
        });
    }
}

/// Whether `r` carries the suppress annotation for `code` (or `*`).
pub fn suppressed_by_annotation(r: &Resource, code: &str) -> bool {
    r.annotations
        .get(SUPPRESS_ANNOTATION)
        .is_some_and(|v| v.split(',').map(str::trim).any(|c| c == "*" || c.eq_ignore_ascii_case(code)))
}

// Small JSON helpers shared by the analyzers.

/// The array at `v[k]`, empty when absent.
pub(crate) fn arr<'v>(v: &'v Value, k: &str) -> &'v [Value] {
    v.get(k).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The string at `v[k]`, empty when absent.
pub(crate) fn st<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The strings of the array at `v[k]`.
pub(crate) fn strs<'v>(v: &'v Value, k: &str) -> Vec<&'v str> {
    arr(v, k).iter().filter_map(Value::as_str).collect()
}

/// The containers (and init containers) of a Pod, Deployment (or other workload with a
/// pod template), as JSON values.
pub(crate) fn containers(r: &Resource, with_init: bool) -> Vec<&Value> {
    let spec = if r.kind == "Pod" { r.spec() } else { r.spec().pointer("/template/spec").unwrap_or(&Value::Null) };
    let mut out: Vec<&Value> = arr(spec, "containers").iter().collect();
    if with_init {
        out.extend(arr(spec, "initContainers"));
    }
    out
}

/// Istio's `PodInMesh`: an `istio-proxy` container with an image, else the
/// `sidecar.istio.io/inject` label or annotation, else the namespace's
/// `istio-injection=enabled` label.
pub(crate) fn pod_in_mesh(ctx: &Context, pod: &Resource) -> bool {
    if containers(pod, true).iter().any(|c| st(c, "name") == "istio-proxy" && !st(c, "image").is_empty()) {
        return true;
    }
    for m in [&pod.labels, &pod.annotations] {
        if let Some(v) = m.get("sidecar.istio.io/inject") {
            return v == "true";
        }
    }
    ctx.get(crate::context::gk::NAMESPACE, "", &pod.namespace)
        .is_some_and(|ns| ns.labels.get("istio-injection").is_some_and(|v| v == "enabled"))
}

/// `ns/name` from a reference written `name` or `ns/name` in namespace `ns`.
pub(crate) fn short_or_full(ns: &str, reference: &str) -> (String, String) {
    match reference.split_once('/') {
        Some((n, name)) => (n.to_string(), name.to_string()),
        None => (ns.to_string(), reference.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_codes_known() {
        let all = all();
        let mut names: Vec<_> = all.iter().map(|a| a.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate analyzer names");
        for a in all {
            assert!(!a.description.is_empty());
            for c in a.codes {
                assert!(message_type(c).is_some(), "{}: unknown code {c}", a.name);
            }
        }
    }
}
