//! Istio annotations on Kubernetes objects (Namespaces, Services, Pods, Deployments):
//! unknown, misplaced, deprecated or invalid ones (`annotations.K8sAnalyzer`), and those
//! of alpha features (`annotations.AlphaAnalyzer`, off by default as in istioctl).
//!
//! The annotation table is istio/api's `annotation/annotations.yaml` (commit b8f8791d,
//! 2026-07-21), generated into `annotations_gen.rs` by `gen/annotations.py`.

use std::net::IpAddr;

use super::{Analyzer, Reporter};
use crate::annotations_gen::{ANNOTATIONS, AnnotationDef};
use crate::context::{Context, Resource, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "annotations.K8sAnalyzer",
        description: "Checks for misplaced and invalid Istio annotations in Kubernetes resources",
        codes: &[
            code::DEPRECATED_ANNOTATION,
            code::INVALID_ANNOTATION,
            code::MISPLACED_ANNOTATION,
            code::UNKNOWN_ANNOTATION,
        ],
        default: true,
        run: k8s,
    },
    Analyzer {
        name: "annotations.AlphaAnalyzer",
        description: "Checks for alpha Istio annotations in Kubernetes resources",
        codes: &[code::ALPHA_ANNOTATION],
        default: false,
        run: alpha,
    },
];

fn lookup(name: &str) -> Option<&'static AnnotationDef> {
    ANNOTATIONS.binary_search_by(|a| a.name.cmp(name)).ok().map(|i| &ANNOTATIONS[i])
}

/// Annotations Istio's own components write; never reported.
const WRITTEN_BY_ISTIO: &[&str] = &["sidecar.istio.io/status", "gateway.istio.io/controller-version", "istio.io/rev"];

/// Written by the injector when traffic is captured by istio-init; with the CNI plugin
/// (no `istio-init` init container) they are defaults, not choices, so not reported as alpha.
const SET_BY_INJECTION: &[&str] = &[
    "sidecar.istio.io/interceptionMode",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
];

/// An annotation in Istio's namespace (`*istio.io/...`), or the one Kubernetes
/// annotation Istio documents.
fn is_istio(ann: &str) -> bool {
    ann == "kubernetes.io/ingress.class" || ann.split('/').next().is_some_and(|p| p.ends_with("istio.io"))
}

/// The kinds both analyzers read.
fn annotated(ctx: &Context) -> impl Iterator<Item = &Resource> {
    [gk::NAMESPACE, gk::SERVICE, gk::POD, gk::DEPLOYMENT].into_iter().flat_map(|k| ctx.of(k))
}

fn path(ann: &str) -> String {
    format!("metadata.annotations.{ann}")
}

fn k8s(ctx: &Context, r: &mut Reporter<'_>) {
    for res in annotated(ctx) {
        for (ann, value) in &res.annotations {
            if !is_istio(ann) || WRITTEN_BY_ISTIO.contains(&ann.as_str()) {
                continue;
            }
            let Some(def) = lookup(ann) else {
                r.report_at(res, code::UNKNOWN_ANNOTATION, &path(ann), vec![ann.clone()]);
                continue;
            };
            // The deprecated inject annotation next to its replacement label is deliberate.
            let inject_both = ann == "sidecar.istio.io/inject" && res.labels.contains_key(ann);
            if def.deprecated && !inject_both {
                let extra = if ann == "sidecar.istio.io/inject" {
                    " in favor of the \"sidecar.istio.io/inject\" label"
                } else {
                    ""
                };
                r.report_at(res, code::DEPRECATED_ANNOTATION, &path(ann), vec![ann.clone(), extra.into()]);
            }
            if def.kinds.contains(&"Any") {
                continue;
            }
            if !def.kinds.contains(&res.kind.as_str()) {
                r.report_at(res, code::MISPLACED_ANNOTATION, &path(ann), vec![ann.clone(), def.kinds.join(", ")]);
                continue;
            }
            if let Err(problem) = validate(ann, value) {
                r.report_at(res, code::INVALID_ANNOTATION, &path(ann), vec![ann.clone(), problem]);
            }
        }
    }
}

fn alpha(ctx: &Context, r: &mut Reporter<'_>) {
    for res in annotated(ctx) {
        let cni = res.kind == "Pod"
            && !super::arr(res.spec(), "initContainers").iter().any(|c| super::st(c, "name") == "istio-init");
        for ann in res.annotations.keys() {
            if !is_istio(ann) || WRITTEN_BY_ISTIO.contains(&ann.as_str()) {
                continue;
            }
            if cni && SET_BY_INJECTION.contains(&ann.as_str()) {
                continue;
            }
            if lookup(ann).is_some_and(|d| d.alpha) {
                r.report_at(res, code::ALPHA_ANNOTATION, &path(ann), vec![ann.clone()]);
            }
        }
    }
}

/// The injector's checks on annotation values (the ones it rejects a Pod for).
fn validate(ann: &str, value: &str) -> Result<(), String> {
    match ann {
        "readiness.status.sidecar.istio.io/initialDelaySeconds"
        | "readiness.status.sidecar.istio.io/periodSeconds"
        | "readiness.status.sidecar.istio.io/failureThreshold" => {
            value.parse::<u32>().map(drop).map_err(|_| format!("strconv.ParseUint: parsing {value:?}: invalid syntax"))
        }
        "sidecar.istio.io/enableCoreDump" | "prometheus.istio.io/merge-metrics" => bool_value(value),
        "sidecar.istio.io/interceptionMode" => match value {
            "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
            _ => Err(format!("interceptionMode invalid, use REDIRECT,TPROXY,NONE: {value}")),
        },
        "status.sidecar.istio.io/port" => match value.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(()),
            _ => Err(format!("port number {value} must be in the range 1..65535")),
        },
        "traffic.sidecar.istio.io/includeOutboundIPRanges" | "traffic.sidecar.istio.io/excludeOutboundIPRanges" => {
            ip_ranges(value)
        }
        "traffic.sidecar.istio.io/includeInboundPorts"
        | "traffic.sidecar.istio.io/excludeInboundPorts"
        | "traffic.sidecar.istio.io/includeOutboundPorts"
        | "traffic.sidecar.istio.io/excludeOutboundPorts" => ports(value),
        _ => Ok(()),
    }
}

fn bool_value(v: &str) -> Result<(), String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(()),
        _ => Err(format!("strconv.ParseBool: parsing {v:?}: invalid syntax")),
    }
}

/// `*`, or comma-separated CIDRs.
fn ip_ranges(v: &str) -> Result<(), String> {
    if v.trim() == "*" {
        return Ok(());
    }
    for cidr in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let ok = cidr.split_once('/').is_some_and(|(ip, bits)| match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        });
        if !ok {
            return Err(format!("failed parsing cidr '{cidr}'"));
        }
    }
    Ok(())
}

/// `*`, or comma-separated port numbers.
fn ports(v: &str) -> Result<(), String> {
    if v.trim() == "*" {
        return Ok(());
    }
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !p.parse::<u16>().is_ok_and(|n| n > 0) {
            return Err(format!("port number {p} must be in the range 1..65535"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_known() {
        assert!(ANNOTATIONS.windows(2).all(|w| w[0].name < w[1].name));
        assert!(lookup("sidecar.istio.io/inject").is_some_and(|d| d.deprecated));
        assert!(lookup("networking.istio.io/exportThree").is_none());
    }

    #[test]
    fn values() {
        assert!(validate("readiness.status.sidecar.istio.io/periodSeconds", "10").is_ok());
        assert!(validate("readiness.status.sidecar.istio.io/periodSeconds", "bar").is_err());
        assert!(validate("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8, 1.2.3.4/32").is_ok());
        assert!(validate("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0").is_err());
        assert!(validate("traffic.sidecar.istio.io/excludeInboundPorts", "15020,8080").is_ok());
        assert!(validate("traffic.sidecar.istio.io/excludeInboundPorts", "0").is_err());
    }
}
