//! Which fields of each kind Spar acts on today; everything else is parsed, kept and
//! reported by [`unacted_fields`]. Keep this list in step with the generators and with
//! docs/compatibility.md.

use spar_api::{Kind, Object};

/// Field paths (or prefixes) Spar translates, per kind.
pub fn acted_on(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::VirtualService => &[
            "spec.hosts",
            "spec.gateways",
            "spec.exportTo",
            "spec.http[].name",
            "spec.http[].match[].uri",
            "spec.http[].match[].scheme",
            "spec.http[].match[].method",
            "spec.http[].match[].authority",
            "spec.http[].match[].headers",
            "spec.http[].match[].withoutHeaders",
            "spec.http[].match[].queryParams",
            "spec.http[].match[].ignoreUriCase",
            "spec.http[].match[].port",
            "spec.http[].match[].sourceLabels",
            "spec.http[].match[].sourceNamespace",
            "spec.http[].match[].gateways",
            "spec.http[].match[].name",
            "spec.http[].route[].destination",
            "spec.http[].route[].weight",
            "spec.http[].timeout",
            "spec.http[].retries.attempts",
            "spec.http[].retries.perTryTimeout",
            "spec.http[].retries.retryOn",
        ],
        Kind::DestinationRule => &["spec.host", "spec.exportTo", "spec.subsets[].name", "spec.subsets[].labels"],
        Kind::ServiceEntry => &[
            "spec.hosts",
            "spec.addresses",
            "spec.ports",
            "spec.location",
            "spec.resolution",
            "spec.endpoints",
            "spec.workloadSelector",
            "spec.exportTo",
        ],
        Kind::WorkloadEntry => {
            &["spec.address", "spec.labels", "spec.ports", "spec.serviceAccount", "spec.locality", "spec.weight"]
        }
        Kind::Sidecar => &[
            "spec.workloadSelector",
            "spec.egress[].hosts",
            "spec.egress[].bind",
            "spec.egress[].port",
            "spec.egress[].captureMode",
            "spec.ingress[].port",
            "spec.ingress[].bind",
            "spec.ingress[].defaultEndpoint",
            "spec.ingress[].captureMode",
        ],
        // Kubernetes kinds: everything Spar needs is read; nothing to report.
        Kind::Service | Kind::Endpoints | Kind::EndpointSlice | Kind::Namespace | Kind::Secret => &["spec"],
        _ => &[],
    }
}

/// Fields set on `obj` that Spar parsed and keeps but does not translate yet.
pub fn unacted_fields(obj: &Object) -> Vec<String> {
    let acted = acted_on(obj.meta.kind);
    if acted == ["spec"] {
        return Vec::new();
    }
    spar_api::fields::unacted(&obj.raw, acted)
}
