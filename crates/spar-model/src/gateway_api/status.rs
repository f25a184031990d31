//! Status as Gateway API asks for it and istiod writes it: GatewayClass `Accepted`;
//! Gateway `Accepted`, `Programmed` and `ResolvedRefs` with its addresses, and per
//! listener `Accepted`, `Conflicted`, `Programmed` and `ResolvedRefs` with the routes
//! attached; each route's parents with `Accepted` and `ResolvedRefs` (istiod's
//! `reportGatewayStatus`, `ReportListenerCondition` and `createRouteStatus`).
//!
//! Conditions are written without `lastTransitionTime` and `observedGeneration`: the
//! status writer adds them, so that two translations of the same objects are equal.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use spar_api::{Kind, Object};

use super::{Ctx, GROUP};

/// The status of one Gateway API object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStatus {
    /// Kind.
    pub kind: Kind,
    /// Namespace (empty for a GatewayClass).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The `status` to write.
    pub status: Value,
}

/// One condition: its status when nothing is wrong, its reason and message, and the
/// error that turns it over.
#[derive(Clone, Debug)]
pub(super) struct Cond {
    status: bool,
    reason: String,
    message: String,
    error: Option<(String, String)>,
}

impl Cond {
    pub(super) fn ok(reason: &str, message: &str) -> Self {
        Self { status: true, reason: reason.into(), message: message.into(), error: None }
    }

    /// A condition whose good state is `False` (`Conflicted`).
    pub(super) fn ok_false(reason: &str, message: &str) -> Self {
        Self { status: false, reason: reason.into(), message: message.into(), error: None }
    }

    pub(super) fn fail(&mut self, reason: &str, message: impl Into<String>) {
        self.error = Some((reason.into(), message.into()));
    }

    fn to_value(&self, kind: &str) -> Value {
        let (status, reason, message) = match &self.error {
            Some((r, m)) => (!self.status, r.as_str(), m.as_str()),
            None => (self.status, self.reason.as_str(), self.message.as_str()),
        };
        json!({ "type": kind, "status": if status { "True" } else { "False" }, "reason": reason, "message": message })
    }
}

/// Conditions by type, written in type order (as istiod does).
pub(super) type Conds = BTreeMap<&'static str, Cond>;

fn conditions(c: &Conds) -> Value {
    Value::Array(c.iter().map(|(k, v)| v.to_value(k)).collect())
}

/// What the translation of one listener found.
#[derive(Clone, Debug)]
pub(super) struct ListenerReport {
    pub name: String,
    pub supported_kinds: Vec<&'static str>,
    pub conds: Conds,
}

impl ListenerReport {
    /// A listener with nothing wrong yet.
    pub(super) fn new(name: &str, supported_kinds: Vec<&'static str>, kinds_valid: bool) -> Self {
        let mut conds = Conds::new();
        conds.insert("Accepted", Cond::ok("Accepted", "No errors found"));
        conds.insert("Programmed", Cond::ok("Programmed", "No errors found"));
        conds.insert("Conflicted", Cond::ok_false("NoConflicts", "No errors found"));
        conds.insert("ResolvedRefs", Cond::ok("ResolvedRefs", "No errors found"));
        if !kinds_valid {
            conds.insert("ResolvedRefs", Cond::ok_false("InvalidRouteKinds", "Invalid route kinds"));
        }
        Self { name: name.into(), supported_kinds, conds }
    }

    /// A listener that conflicts with an earlier one on its port (istiod's
    /// `ReportListenerConflict`): not accepted, not programmed, conflicted.
    pub(super) fn conflicted(name: &str, supported_kinds: Vec<&'static str>, reason: &str) -> Self {
        let message = "Listener has a conflict with another listener attached to the same Gateway";
        let mut conds = Conds::new();
        let mut failed = |kind: &'static str| {
            let mut c = Cond::ok("", "");
            c.fail(reason, message);
            conds.insert(kind, c);
        };
        failed("Accepted");
        failed("Programmed");
        conds.insert("Conflicted", Cond::ok(reason, message));
        Self { name: name.into(), supported_kinds, conds }
    }

    pub(super) fn fail(&mut self, kind: &'static str, reason: &str, message: impl Into<String>) {
        if let Some(c) = self.conds.get_mut(kind) {
            c.fail(reason, message);
        }
    }
}

/// What the translation of one Gateway found.
#[derive(Debug)]
pub(super) struct GatewayReport<'a> {
    pub obj: &'a Object,
    /// Why the Gateway is not accepted at all (its addresses).
    pub error: Option<(String, String)>,
    /// The Services in front of it (istiod's `gateway-service`).
    pub services: Vec<String>,
    /// The ports of its served listeners.
    pub ports: BTreeSet<i32>,
    pub listeners: Vec<ListenerReport>,
    /// Listeners programmed.
    pub valid: usize,
    /// Listeners written.
    pub total: usize,
    /// Client validation with `AllowInsecureFallback`.
    pub insecure_fallback: bool,
}

/// Routes attached to each listener: (namespace, gateway, listener) → count.
pub(super) type Attachments = BTreeMap<(String, String, String), i64>;

/// The GatewayClass's status.
pub(super) fn gateway_class(obj: &Object, controller: &str) -> ObjectStatus {
    let by = if controller == super::SPAR_CONTROLLER { "Spar" } else { "Istio" };
    let mut conds = Conds::new();
    conds.insert("Accepted", Cond::ok("Accepted", &format!("Handled by {by} controller")));
    ObjectStatus {
        kind: Kind::GatewayClass,
        namespace: String::new(),
        name: obj.meta.name.clone(),
        status: json!({ "conditions": conditions(&conds) }),
    }
}

/// A Gateway's status (istiod's `reportGatewayStatus` with `ResolveGatewayInstances`,
/// which Spar answers from the Services it reads: a Service with the listener's port is
/// programmed, as istiod's is when it has endpoints on it).
pub(super) fn gateway(ctx: &Ctx<'_>, g: &GatewayReport<'_>, attached: &Attachments) -> ObjectStatus {
    let ns = g.obj.meta.namespace.as_str();
    let mut conds = Conds::new();
    conds.insert("Accepted", Cond::ok("Accepted", "Resource accepted"));
    conds.insert("Programmed", Cond::ok("Programmed", "Resource programmed"));
    conds.insert("ResolvedRefs", Cond::ok("ResolvedRefs", "All references resolved"));
    if let Some((reason, message)) = &g.error {
        if let Some(c) = conds.get_mut("Accepted") {
            c.fail(reason, message.clone());
        }
    } else if g.total > 0 && g.valid < g.total {
        let accepted = conds.get_mut("Accepted");
        if let Some(c) = accepted {
            if g.valid == 0 {
                c.fail("ListenersNotValid", "None of the Gateway's listeners are valid");
            } else {
                c.reason = "ListenersNotValid".into();
                c.message = "One or more of the Gateway's listeners are invalid".into();
            }
        }
    }
    if g.insecure_fallback {
        conds.insert(
            "InsecureFrontendValidationMode",
            Cond::ok(
                "ConfigurationChanged",
                "Gateway is operating in AllowInsecureFallback mode for frontend validation",
            ),
        );
    }
    let found = resolve(ctx, ns, &g.services, &g.ports);
    if let Some(c) = conds.get_mut("Programmed") {
        if !found.internal.is_empty() {
            c.message = format!("Resource programmed, assigned to service(s) {}", human_join(&found.internal));
        }
        if g.services.is_empty() {
            c.fail("UnsupportedAddress", "Failed to assign to any requested addresses");
        } else if !found.warnings.is_empty() {
            let message = if found.internal.is_empty() {
                format!("Failed to assign to any requested addresses: {}", found.warnings.join("; "))
            } else {
                format!(
                    "Assigned to service(s) {}, but failed to assign to all requested addresses: {}",
                    human_join(&found.internal),
                    found.warnings.join("; ")
                )
            };
            c.fail(if found.unusable { "AddressNotUsable" } else { "AddressNotAssigned" }, message);
        }
    }
    let mut addresses: Vec<String> = found.external.clone();
    if addresses.is_empty() {
        for hostport in &found.internal {
            let host = hostport.rsplit_once(':').map_or(hostport.as_str(), |(h, _)| h);
            if !found.pending.iter().any(|p| p == host) && !addresses.iter().any(|a| a == host) {
                addresses.push(host.to_string());
            }
        }
    }
    let mut status = json!({ "conditions": conditions(&conds) });
    if !addresses.is_empty() {
        status["addresses"] = Value::Array(
            addresses
                .iter()
                .map(|a| {
                    let t = if a.parse::<std::net::IpAddr>().is_ok() { "IPAddress" } else { "Hostname" };
                    json!({ "type": t, "value": a })
                })
                .collect(),
        );
    }
    if !g.listeners.is_empty() {
        status["listeners"] = Value::Array(
            g.listeners
                .iter()
                .map(|l| {
                    let n = attached.get(&(ns.to_string(), g.obj.meta.name.clone(), l.name.clone())).copied();
                    json!({
                        "name": l.name,
                        "attachedRoutes": n.unwrap_or(0),
                        "conditions": conditions(&l.conds),
                        "supportedKinds": l.supported_kinds.iter().map(|k| json!({ "group": GROUP, "kind": k })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        );
    }
    ObjectStatus { kind: Kind::KubernetesGateway, namespace: ns.into(), name: g.obj.meta.name.clone(), status }
}

/// What a Gateway's Services resolve to.
#[derive(Default)]
struct Resolved {
    /// `host:port` of each served port a Service has.
    internal: Vec<String>,
    /// Load balancer addresses.
    external: Vec<String>,
    /// Services whose load balancer address is pending.
    pending: Vec<String>,
    warnings: Vec<String>,
    unusable: bool,
}

fn resolve(ctx: &Ctx<'_>, ns: &str, services: &[String], ports: &BTreeSet<i32>) -> Resolved {
    let mut out = Resolved::default();
    for g in services {
        let svc = g
            .strip_suffix(&format!(".svc.{}", ctx.domain))
            .and_then(|rest| rest.rsplit_once('.'))
            .filter(|(_, svc_ns)| *svc_ns == ns)
            .and_then(|(name, svc_ns)| ctx.services.get(&(svc_ns, name)));
        let (svc_ports, ingress, load_balancer) = match svc {
            Some(svc) => {
                let spec = svc.spec.as_ref();
                let ports: Vec<i32> =
                    spec.and_then(|s| s.ports.as_ref()).into_iter().flatten().map(|p| p.port).collect();
                let ingress: Vec<String> = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                    .collect();
                (ports, ingress, spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
            }
            // A ServiceEntry host in the Gateway's namespace.
            None => match ctx.entry_ports.get(&(ns, g.as_str())) {
                Some(ports) => (ports.clone(), Vec::new(), false),
                None => {
                    out.warnings.push(format!("hostname {g:?} not found"));
                    out.unusable = true;
                    continue;
                }
            },
        };
        for p in ports {
            if svc_ports.contains(p) {
                let hp = format!("{g}:{p}");
                if !out.internal.contains(&hp) {
                    out.internal.push(hp);
                }
                for a in &ingress {
                    if !out.external.contains(a) {
                        out.external.push(a.clone());
                    }
                }
                if ingress.is_empty() && load_balancer && !out.pending.contains(g) {
                    out.warnings.push(format!("address pending for hostname {g:?}"));
                    out.pending.push(g.clone());
                }
            } else {
                out.warnings.push(format!("port {p} not found for hostname {g:?}"));
                out.unusable = true;
            }
        }
    }
    out.internal.sort();
    out
}

/// istiod's `HumanReadableJoin`.
fn human_join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

/// One parentRef's result for a route (istiod's `RouteParentResult`).
#[derive(Clone, Debug)]
pub(super) struct ParentResult {
    /// The reference as written.
    pub original: Value,
    /// Its sort key (istiod's `parentRefString`).
    pub key: String,
    /// Why this listener (or the mesh) refuses the route.
    pub denied: Option<(&'static str, String)>,
    /// Why the route cannot be fully served for this kind of parent.
    pub route_error: Option<(&'static str, String)>,
}

/// A route's status (istiod's `createRouteStatus`): one entry per parentRef, accepted
/// when any of its listeners accepts, else with the most telling refusal.
pub(super) fn route(kind: Kind, obj: &Object, controller: &str, results: &[ParentResult]) -> ObjectStatus {
    let rank = |d: &Option<(&'static str, String)>| match d.as_ref().map(|(r, _)| *r) {
        None => 0,
        Some("NotAllowedByListeners") => 1,
        Some("NoMatchingListenerHostname") => 2,
        Some("ParentRefConflict") => 3,
        Some(_) => 4,
    };
    let mut by_ref: Vec<(String, Vec<&ParentResult>)> = Vec::new();
    for r in results {
        match by_ref.iter_mut().find(|(k, _)| *k == r.key) {
            Some((_, list)) => list.push(r),
            None => by_ref.push((r.key.clone(), vec![r])),
        }
    }
    // istiod appends new parents sorted by their reference, descending.
    by_ref.sort_by(|a, b| b.0.cmp(&a.0));
    let mut parents = Vec::new();
    for (_, list) in by_ref {
        let successes = list.iter().filter(|r| r.denied.is_none()).count();
        let mut report = list[0].clone();
        let mut best = rank(&report.denied);
        for r in &list[1..] {
            let rk = rank(&r.denied);
            if rk < best {
                best = rk;
                report = (*r).clone();
            } else if rk == best {
                match (&mut report.denied, &r.denied) {
                    (None, d) => report.denied = d.clone(),
                    (Some((_, m)), Some((_, more))) => *m = format!("{m}; {more}"),
                    (Some(_), None) => {}
                }
            }
        }
        let message = if successes > 1 {
            format!("Route was valid, bound to {successes} parents")
        } else {
            "Route was valid".into()
        };
        let mut conds = Conds::new();
        conds.insert("Accepted", Cond::ok("Accepted", &message));
        conds.insert("ResolvedRefs", Cond::ok("ResolvedRefs", "All references resolved"));
        if let (Some(c), Some((reason, message))) = (conds.get_mut("ResolvedRefs"), &report.route_error) {
            c.fail(reason, message.clone());
        }
        if let (Some(c), Some((reason, message))) = (conds.get_mut("Accepted"), &report.denied) {
            c.fail(reason, message.clone());
        }
        parents.push(json!({
            "parentRef": report.original,
            "controllerName": controller,
            "conditions": conditions(&conds),
        }));
    }
    ObjectStatus {
        kind,
        namespace: obj.meta.namespace.clone(),
        name: obj.meta.name.clone(),
        status: json!({ "parents": parents }),
    }
}
