//! Deprecated fields and kinds, and negative status conditions written back by a
//! control plane (Istio's `deprecation` and `conditions` analyzers).

use serde_json::Value;

use super::{Analyzer, Reporter, arr, st};
use crate::context::{Context, Gk, gk};
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "deprecation.DeprecationAnalyzer",
        description: "Checks for deprecated Istio types and fields",
        codes: &[code::DEPRECATED],
        default: true,
        run: deprecation,
    },
    Analyzer {
        name: "conditions.ConditionAnalyzer",
        description: "Checks for negative status conditions on resources",
        codes: &[code::NEGATIVE_CONDITION_STATUS],
        default: true,
        run: conditions,
    },
];

/// Istio CRDs that were removed (group, kind); a CRD defining one is reported.
const REMOVED_CRDS: &[(&str, &str)] = &[
    ("rbac.istio.io", "ClusterRbacConfig"),
    ("rbac.istio.io", "RbacConfig"),
    ("rbac.istio.io", "ServiceRole"),
    ("rbac.istio.io", "ServiceRoleBinding"),
];

fn deprecation(ctx: &Context, r: &mut Reporter<'_>) {
    for vs in ctx.of(gk::VIRTUAL_SERVICE) {
        for (i, route) in arr(vs.spec(), "http").iter().enumerate() {
            // `fault.delay.percent` (an integer) gave way to `percentage` (a double).
            let percent = route.pointer("/fault/delay/percent").and_then(Value::as_f64).unwrap_or(0.0);
            if percent > 0.0 {
                r.report_at(
                    vs,
                    code::DEPRECATED,
                    &format!("spec.http[{i}].fault.delay.percent"),
                    vec!["HTTPRoute.fault.delay.percent is deprecated; use HTTPRoute.fault.delay.percentage".into()],
                );
            }
        }
    }
    for sc in ctx.of(gk::SIDECAR) {
        if sc.spec().pointer("/outboundTrafficPolicy/egressProxy").is_some_and(|v| !v.is_null()) {
            r.report_at(
                sc,
                code::DEPRECATED,
                "spec.outboundTrafficPolicy.egressProxy",
                vec!["OutboundTrafficPolicy.EgressProxy ignored".into()],
            );
        }
    }
    for crd in ctx.of(gk::CRD) {
        let group = st(crd.spec(), "group");
        let kind = crd.spec().pointer("/names/kind").and_then(Value::as_str).unwrap_or_default();
        if REMOVED_CRDS.contains(&(group, kind)) {
            r.report(crd, code::DEPRECATED, vec![format!("Custom resource type {group} {kind} is removed")]);
        }
    }
}

/// Where each kind keeps its conditions, and which condition types are negative when
/// `False`. Other condition types (another controller's, such as Argo CD's) are left
/// alone.
const NEGATIVE_WHEN_FALSE: &[(Gk, Conditions, &[&str])] = &[
    (gk::SERVICE, Conditions::Status, &["istio.io/WaypointBound"]),
    (gk::SERVICE_ENTRY, Conditions::Status, &["istio.io/WaypointBound"]),
    (gk::AUTHORIZATION_POLICY, Conditions::Status, &["ZtunnelAccepted", "WaypointAccepted"]),
    (gk::K8S_GATEWAY, Conditions::Status, &["Accepted", "Programmed", "ResolvedRefs"]),
    (gk::HTTP_ROUTE, Conditions::Parents, &["Accepted", "Programmed", "ResolvedRefs"]),
    (gk::GRPC_ROUTE, Conditions::Parents, &["Accepted", "Programmed", "ResolvedRefs"]),
];

#[derive(Clone, Copy)]
enum Conditions {
    /// `status.conditions`.
    Status,
    /// `status.parents[].conditions` (Gateway API routes).
    Parents,
}

fn conditions(ctx: &Context, r: &mut Reporter<'_>) {
    for (kind, place, negative) in NEGATIVE_WHEN_FALSE {
        for res in ctx.of(*kind) {
            let status = res.raw.get("status").unwrap_or(&Value::Null);
            let list: Vec<&Value> = match place {
                Conditions::Status => arr(status, "conditions").iter().collect(),
                Conditions::Parents => arr(status, "parents").iter().flat_map(|p| arr(p, "conditions")).collect(),
            };
            for c in list {
                let (ty, reason) = (st(c, "type"), st(c, "reason"));
                let is_false = st(c, "status") == "False" && negative.contains(&ty);
                // A waypoint that accepted only part of a policy says so with status True.
                let partial =
                    *kind == gk::AUTHORIZATION_POLICY && ty == "WaypointAccepted" && reason == "PartiallyInvalid";
                if is_false || partial {
                    r.report(
                        res,
                        code::NEGATIVE_CONDITION_STATUS,
                        vec![ty.to_string(), reason.to_string(), st(c, "message").to_string()],
                    );
                }
            }
        }
    }
}
