//! Routes into VirtualServices: which parents accept a route (istiod's
//! `extractParentReferenceInfo` and `referenceAllowed`), one VirtualService per parent and
//! host, and HTTP and gRPC routes for the same parent and host merged into one
//! (istiod's `HTTPRouteCollection`, `GRPCRouteCollection`, `TCPRouteCollection`,
//! `TLSRouteCollection` and `mergeHTTPRoutes`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use spar_api::istio::virtual_service::VirtualServiceSpec;
use spar_api::{Object, Resource};

use super::gateways::{Listener, Parents};
use super::rules::{self, ConfigError, Converted, From};
use super::shape::{GrpcMatch, HttpMatch, NoMatch, ParentRef, Route, Rule, reshape};
use super::status::{Attachments, ParentResult};
use super::util::{intersection, subset_of};
use super::{Ctx, GENERATED_SUFFIX, GROUP, Translation};
use crate::host::overlaps;

/// The route kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteKind {
    Http,
    Grpc,
    Tcp,
    Tls,
}

impl RouteKind {
    fn kind(self) -> spar_api::Kind {
        match self {
            Self::Http => spar_api::Kind::HTTPRoute,
            Self::Grpc => spar_api::Kind::GRPCRoute,
            Self::Tcp => spar_api::Kind::TCPRoute,
            Self::Tls => spar_api::Kind::TLSRoute,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
            Self::Tcp => "TCPRoute",
            Self::Tls => "TLSRoute",
        }
    }
}

/// A parent a route names, resolved to one listener (or the mesh), and whether it
/// accepts the route (istiod's `routeParentReference`).
#[derive(Clone, Debug)]
struct RouteParent<'p> {
    /// What a VirtualService's `gateways` names: a listener's Istio Gateway, or `mesh`.
    internal_name: String,
    /// For a Gateway parent: the listener.
    listener: Option<&'p Listener>,
    /// For a mesh parent: the VirtualService hosts (the Service's FQDN or the
    /// ServiceEntry's hosts).
    mesh_hosts: Vec<String>,
    /// The reference as written.
    original: ParentRef,
    /// Hostnames of the Gateway's other listeners on the same port and protocol.
    banned: BTreeSet<String>,
    /// Why the parent refuses the route, with its reason.
    denied: Option<(&'static str, String)>,
}

impl RouteParent<'_> {
    fn is_mesh(&self) -> bool {
        self.internal_name == "mesh"
    }

    /// istiod's `hostnameAllowedByIsolation`: a route host is served by the most specific
    /// listener that covers it, not by a wider one beside it.
    fn allows_host(&self, route_host: &str) -> bool {
        let ours = self.listener.map(|l| l.hostname.as_str()).unwrap_or_default();
        if !ours.is_empty() && !ours.starts_with('*') {
            return true;
        }
        if !ours.is_empty() && !overlaps(route_host, ours) {
            return false;
        }
        !self.banned.iter().any(|other| ours.len() <= other.len() && subset_of(route_host, other))
    }
}

/// The Istio routes for one kind of parent, and why some part cannot be served.
type Converted2 = (Vec<Value>, Option<ConfigError>);

/// Converts one rule with at most one of its matches (its position given).
type RuleFn<'f, M> = dyn Fn(From<'_>, &Rule<M>, Option<&M>, usize) -> Converted + 'f;

/// A VirtualService before HTTP and gRPC routes of the same key are merged.
struct Keyed<'a> {
    key: String,
    obj: &'a Object,
    spec: Value,
}

/// Translates every route.
/// Translates every route; returns how many routes attach to each listener.
pub(super) fn translate(ctx: &Ctx<'_>, parents: &Parents, objects: &[&Object], out: &mut Translation) -> Attachments {
    let mut attached = Attachments::new();
    let known_gateways: BTreeSet<(&str, &str)> = objects
        .iter()
        .filter(|o| matches!(o.resource, Resource::KubernetesGateway(_)))
        .map(|o| (o.meta.namespace.as_str(), o.meta.name.as_str()))
        .collect();
    let mut merged: Vec<Keyed<'_>> = Vec::new();
    for obj in objects {
        let t = Translator { ctx, parents, known_gateways: &known_gateways, obj };
        match &obj.resource {
            Resource::HTTPRoute(spec) => match reshape::<_, Route<HttpMatch>>(&**spec) {
                Some(r) => t.http_like(
                    RouteKind::Http,
                    &r,
                    |f, rule, m, pos| rules::http(ctx, f, rule, m, pos),
                    &mut merged,
                    &mut attached,
                    out,
                ),
                None => t.unreadable(out),
            },
            Resource::GRPCRoute(spec) => match reshape::<_, Route<GrpcMatch>>(&**spec) {
                Some(r) => t.http_like(
                    RouteKind::Grpc,
                    &r,
                    |f, rule, m, pos| rules::grpc(ctx, f, rule, m, pos),
                    &mut merged,
                    &mut attached,
                    out,
                ),
                None => t.unreadable(out),
            },
            Resource::TCPRoute(spec) => match reshape::<_, Route<NoMatch>>(&**spec) {
                Some(r) => t.l4(RouteKind::Tcp, &r, &mut attached, out),
                None => t.unreadable(out),
            },
            Resource::TLSRoute(spec) => match reshape::<_, Route<NoMatch>>(&**spec) {
                Some(r) => t.l4(RouteKind::Tls, &r, &mut attached, out),
                None => t.unreadable(out),
            },
            _ => {}
        }
    }
    merge(merged, out);
    attached
}

/// One route being translated.
struct Translator<'a, 'p> {
    ctx: &'a Ctx<'a>,
    parents: &'p Parents,
    known_gateways: &'a BTreeSet<(&'a str, &'a str)>,
    obj: &'a Object,
}

impl<'a, 'p> Translator<'a, 'p> {
    fn unreadable(&self, out: &mut Translation) {
        out.diagnostics.push(super::diagnostic(self.obj, "could not be read for translation: not served".into()));
    }

    fn warn(&self, out: &mut Translation, message: String) {
        out.diagnostics.push(super::diagnostic(self.obj, message));
    }

    /// Every parent of the route, one per listener it may attach to (istiod's
    /// `extractParentReferenceInfo`), in istiod's order.
    fn parents(
        &self,
        kind: RouteKind,
        refs: &[ParentRef],
        hostnames: &[String],
        out: &mut Translation,
    ) -> Vec<RouteParent<'p>> {
        let ns = self.obj.meta.namespace.as_str();
        let mut result = Vec::new();
        for r in refs {
            let group = r.group.as_deref().unwrap_or(GROUP);
            let pkind = r.kind.as_deref().unwrap_or("Gateway");
            let pns = r.namespace.as_deref().unwrap_or(ns);
            match (group, pkind) {
                (GROUP, "Gateway") => {
                    let Some(listeners) = self.parents.get(&(pns.to_string(), r.name.clone())) else {
                        if !self.known_gateways.contains(&(pns, r.name.as_str())) {
                            self.warn(
                                out,
                                format!("parentRef Gateway {pns}/{}: no such Gateway: not attached", r.name),
                            );
                        }
                        continue;
                    };
                    for l in listeners {
                        let banned = listeners
                            .iter()
                            .filter(|o| o.port == l.port && o.protocol == l.protocol)
                            .map(|o| o.hostname.clone())
                            .filter(|h| *h != l.hostname)
                            .collect();
                        result.push(RouteParent {
                            internal_name: l.internal_name.clone(),
                            listener: Some(l),
                            mesh_hosts: Vec::new(),
                            original: r.clone(),
                            banned,
                            denied: listener_allows(l, kind, r, hostnames, ns),
                        });
                    }
                }
                ("" | "core", "Service") | ("networking.istio.io", "ServiceEntry")
                    if self.ctx.foreign_waypoint(pns, &r.name) =>
                {
                    continue;
                }
                ("" | "core", "Service") => {
                    let found = self.ctx.services.contains_key(&(pns, r.name.as_str()));
                    result.push(RouteParent {
                        internal_name: "mesh".into(),
                        listener: None,
                        mesh_hosts: vec![self.ctx.service_host(&r.name, pns)],
                        original: r.clone(),
                        banned: BTreeSet::new(),
                        denied: (!found)
                            .then(|| ("NoMatchingParent", format!("parent service: {:?} not found", r.name))),
                    });
                }
                ("networking.istio.io", "ServiceEntry") => {
                    let hosts = self.ctx.service_entries.get(&(pns, r.name.as_str()));
                    result.push(RouteParent {
                        internal_name: "mesh".into(),
                        listener: None,
                        mesh_hosts: hosts.cloned().unwrap_or_default(),
                        original: r.clone(),
                        banned: BTreeSet::new(),
                        denied: hosts
                            .is_none()
                            .then(|| ("NoMatchingParent", format!("parent service entry: {:?} not found", r.name))),
                    });
                }
                (g, k) => self.warn(
                    out,
                    format!("parentRef {g}/{k} {pns}/{}: parents of this kind are not supported: not attached", r.name),
                ),
            }
        }
        result.sort_by_key(|p| parent_ref_string(&p.original, ns));
        self.report_denied(&result, out);
        result
    }

    /// Says which parentRefs accept the route on none of their listeners, with the reason
    /// istiod would put in the route's status.
    fn report_denied(&self, parents: &[RouteParent<'_>], out: &mut Translation) {
        let mut by_ref: Vec<(&ParentRef, Vec<&RouteParent<'_>>)> = Vec::new();
        for p in parents {
            match by_ref.iter_mut().find(|(r, _)| **r == p.original) {
                Some((_, list)) => list.push(p),
                None => by_ref.push((&p.original, vec![p])),
            }
        }
        let rank = |reason: &str| match reason {
            "NotAllowedByListeners" => 1,
            "NoMatchingListenerHostname" => 2,
            _ => 4,
        };
        for (r, list) in by_ref {
            if list.iter().any(|p| p.denied.is_none()) {
                continue;
            }
            if let Some((reason, message)) = list.iter().filter_map(|p| p.denied.as_ref()).min_by_key(|(r, _)| rank(r))
            {
                self.warn(
                    out,
                    format!(
                        "parentRef {} {}: not accepted ({reason}): {message}",
                        r.kind.as_deref().unwrap_or("Gateway"),
                        r.name
                    ),
                );
            }
        }
    }

    /// The route's status, and its attachments to listeners (istiod's
    /// `createRouteStatus` and `RouteAttachment`).
    fn report(
        &self,
        kind: RouteKind,
        parents: &[RouteParent<'_>],
        mesh_error: Option<&ConfigError>,
        gw_error: Option<&ConfigError>,
        attached: &mut Attachments,
        out: &mut Translation,
    ) {
        let ns = self.obj.meta.namespace.as_str();
        let mut results = Vec::new();
        let mut controller = super::ISTIO_CONTROLLER;
        for p in parents {
            let error = if p.is_mesh() { mesh_error } else { gw_error };
            results.push(ParentResult {
                original: serde_json::to_value(&p.original).unwrap_or_default(),
                key: parent_ref_string(&p.original, ns),
                denied: p.denied.clone(),
                route_error: error.map(|e| (e.reason, e.message.clone())),
            });
            if let Some(l) = p.listener {
                controller = l.controller;
                if p.denied.is_none() {
                    let gw_ns = p.original.namespace.clone().unwrap_or_else(|| ns.to_string());
                    *attached.entry((gw_ns, p.original.name.clone(), l.section_name.clone())).or_default() += 1;
                }
            }
        }
        if results.is_empty() {
            return;
        }
        out.statuses.push(super::status::route(kind.kind(), self.obj, controller, &results));
    }

    /// Converts every rule (each match of it apart) for one kind of parent; nothing when a
    /// rule cannot be converted at all (istiod then serves none of the route's rules for
    /// that kind of parent).
    fn convert<M>(
        &self,
        kind: RouteKind,
        route: &Route<M>,
        mesh: bool,
        one: &RuleFn<'_, M>,
        out: &mut Translation,
    ) -> Converted2 {
        let from = From {
            kind: kind.name(),
            namespace: &self.obj.meta.namespace,
            name: &self.obj.meta.name,
            enforce_grants: !mesh,
        };
        let mut routes = Vec::new();
        let mut backend_errors = Vec::new();
        for (pos, rule) in route.rules.iter().enumerate() {
            let matches: Vec<Option<&M>> =
                if rule.matches.is_empty() { vec![None] } else { rule.matches.iter().map(Some).collect() };
            for m in matches {
                match one(from, rule, m, pos) {
                    Ok((v, err)) => {
                        routes.push(v);
                        backend_errors.extend(err);
                    }
                    Err(e) => {
                        self.warn(
                            out,
                            format!("not served ({}): {}; none of its rules is served", e.reason, e.message),
                        );
                        return (Vec::new(), Some(e));
                    }
                }
            }
        }
        for e in &backend_errors {
            self.report_backend(e, out);
        }
        // istiod reports the last backend error in the route's status.
        (routes, backend_errors.pop())
    }

    fn report_backend(&self, e: &ConfigError, out: &mut Translation) {
        self.warn(out, format!("{} ({}): requests routed to it are answered 500", e.message, e.reason));
    }

    /// HTTPRoute and GRPCRoute: one VirtualService per accepted parent and host, keyed
    /// for merging with other routes of the same parent and host.
    fn http_like<M>(
        &self,
        kind: RouteKind,
        route: &Route<M>,
        one: impl Fn(From<'_>, &Rule<M>, Option<&M>, usize) -> Converted,
        merged: &mut Vec<Keyed<'a>>,
        attached: &mut Attachments,
        out: &mut Translation,
    ) {
        let parents = self.parents(kind, &route.parent_refs, &route.hostnames, out);
        let accepted = accepted(&parents);
        // Rules are converted for every kind of parent named, accepting or not, so that a
        // refused route's status still says what else is wrong with it (as istiod).
        let need_mesh = parents.iter().any(|p| p.is_mesh());
        let need_gw = parents.iter().any(|p| !p.is_mesh());
        let (mesh_routes, mesh_error) =
            if need_mesh { self.convert(kind, route, true, &one, out) } else { (Vec::new(), None) };
        let (gw_routes, gw_error) =
            if need_gw { self.convert(kind, route, false, &one, out) } else { (Vec::new(), None) };
        self.report(kind, &parents, mesh_error.as_ref(), gw_error.as_ref(), attached, out);
        let ns = &self.obj.meta.namespace;
        for parent in accepted {
            let (key, hosts, routes) = if parent.is_mesh() {
                let mut key = ns.clone();
                let mut routes = mesh_routes.clone();
                if let Some(port) = parent.original.port {
                    routes = routes.into_iter().map(|r| with_port(r, port)).collect();
                    key = format!("{key}/{port}");
                }
                (key, parent.mesh_hosts.clone(), routes)
            } else {
                let hosts = if route.hostnames.is_empty() { vec!["*".to_string()] } else { route.hostnames.clone() };
                (parent.internal_name.clone(), hosts, gw_routes.clone())
            };
            if routes.is_empty() {
                continue;
            }
            for h in hosts {
                if !parent.allows_host(&h) {
                    continue;
                }
                let mut routes = routes.clone();
                sort_http_routes(&mut routes);
                merged.push(Keyed {
                    key: format!("{key}/{h}"),
                    obj: self.obj,
                    spec: json!({ "hosts": [h], "gateways": [parent.internal_name], "http": routes }),
                });
            }
        }
    }

    /// TCPRoute and TLSRoute: one VirtualService per accepted parent and host.
    fn l4(&self, kind: RouteKind, route: &Route<NoMatch>, attached: &mut Attachments, out: &mut Translation) {
        let parents = self.parents(kind, &route.parent_refs, &route.hostnames, out);
        let accepted = accepted(&parents);
        let one = |from: From<'_>, rule: &Rule<NoMatch>, _: Option<&NoMatch>, _: usize| match kind {
            RouteKind::Tls => rules::tls(self.ctx, from, rule, &route.hostnames),
            _ => rules::tcp(self.ctx, from, rule),
        };
        // Rules are converted for every kind of parent named, accepting or not, so that a
        // refused route's status still says what else is wrong with it (as istiod).
        let need_mesh = parents.iter().any(|p| p.is_mesh());
        let need_gw = parents.iter().any(|p| !p.is_mesh());
        let (mesh_routes, mesh_error) =
            if need_mesh { self.convert(kind, route, true, &one, out) } else { (Vec::new(), None) };
        let (gw_routes, gw_error) =
            if need_gw { self.convert(kind, route, false, &one, out) } else { (Vec::new(), None) };
        self.report(kind, &parents, mesh_error.as_ref(), gw_error.as_ref(), attached, out);
        let field = if kind == RouteKind::Tls { "tls" } else { "tcp" };
        let tag = if kind == RouteKind::Tls { "tls" } else { "tcp" };
        let mut count = 0;
        for parent in accepted {
            let (hosts, routes) = if parent.is_mesh() {
                let hosts = parent.mesh_hosts.clone();
                let mut routes = mesh_routes.clone();
                if kind == RouteKind::Tls {
                    routes = routes.into_iter().map(|r| tls_for_mesh(r, parent.original.port, &hosts)).collect();
                } else if let Some(port) = parent.original.port {
                    routes = routes.into_iter().map(|r| with_port(r, port)).collect();
                }
                (hosts, routes)
            } else if kind == RouteKind::Tls {
                let route_hosts =
                    if route.hostnames.is_empty() { vec!["*".to_string()] } else { route.hostnames.clone() };
                match parent.listener.map(|l| l.hostname.as_str()).filter(|h| !h.is_empty()) {
                    Some(lh) => {
                        let hosts = intersection(&route_hosts, &[lh.to_string()]);
                        (hosts, constrain_tls(gw_routes.clone(), lh))
                    }
                    None => (route_hosts, gw_routes.clone()),
                }
            } else {
                (vec!["*".to_string()], gw_routes.clone())
            };
            for h in hosts {
                let mut routes = routes.clone();
                if parent.is_mesh() && kind == RouteKind::Tls {
                    routes = routes.into_iter().map(|r| tls_compatible(r, &h)).collect();
                }
                let name = format!("{}~{tag}~{count}~{GENERATED_SUFFIX}", self.obj.meta.name);
                count += 1;
                let spec = json!({ "hosts": [h], "gateways": [parent.internal_name], field: routes });
                push_vs(self.obj, name, self.obj.meta.namespace.clone(), spec, super::parent_name(self.obj, None), out);
            }
        }
    }
}

/// istiod's `parentRefString`: `group/kind/name/section/port.namespace`.
fn parent_ref_string(o: &ParentRef, route_ns: &str) -> String {
    format!(
        "{}/{}/{}/{}/{}.{}",
        o.group.as_deref().unwrap_or(GROUP),
        o.kind.as_deref().unwrap_or("Gateway"),
        o.name,
        o.section_name.as_deref().unwrap_or_default(),
        o.port.unwrap_or(0),
        o.namespace.as_deref().unwrap_or(route_ns)
    )
}

/// Accepted parents, ordered by their internal name (istiod's `filteredReferences`).
fn accepted<'p>(parents: &[RouteParent<'p>]) -> Vec<RouteParent<'p>> {
    let mut out: Vec<RouteParent<'p>> = parents.iter().filter(|p| p.denied.is_none()).cloned().collect();
    out.sort_by(|a, b| a.internal_name.cmp(&b.internal_name));
    out
}

/// istiod's `referenceAllowed` for a Gateway listener: the port and section the
/// reference names, the hostnames, the namespaces and the kinds the listener allows.
fn listener_allows(
    l: &Listener,
    kind: RouteKind,
    r: &ParentRef,
    hostnames: &[String],
    route_ns: &str,
) -> Option<(&'static str, String)> {
    if let Some(p) = r.port.filter(|p| *p != 0 && *p != l.port) {
        return Some(("NoMatchingParent", format!("port {p} not found")));
    }
    if let Some(s) = r.section_name.as_deref().filter(|s| !s.is_empty() && *s != l.section_name) {
        return Some(("NoMatchingParent", format!("sectionName {s:?} not found")));
    }
    let star = ["*".to_string()];
    let route_hosts = if hostnames.is_empty() { &star[..] } else { hostnames };
    if !l.hostnames.is_empty() {
        let mut matched = false;
        let mut host_matched = false;
        'out: for rh in route_hosts {
            for ph in &l.hostnames {
                let (pns, phost) = ph.split_once('/').unwrap_or(("*", ph));
                let hm = overlaps(phost, rh);
                host_matched |= hm;
                if hm && (pns == "*" || pns == route_ns) {
                    matched = true;
                    break 'out;
                }
            }
        }
        if !matched {
            return Some(if host_matched {
                (
                    "NotAllowedByListeners",
                    format!(
                        "hostnames matched parent hostname {:?}, but namespace {route_ns:?} is not allowed by the parent",
                        l.hostname
                    ),
                )
            } else {
                ("NoMatchingListenerHostname", format!("no hostnames matched parent hostname {:?}", l.hostname))
            });
        }
    }
    if !l.allowed_kinds.contains(&kind.name()) {
        return Some(("NotAllowedByListeners", format!("kind {GROUP}/v1/{} is not allowed", kind.name())));
    }
    None
}

/// istiod's `augmentPortMatch`: every match (or a new one) restricted to `port`.
fn with_port(mut r: Value, port: i32) -> Value {
    match r.get_mut("match").and_then(Value::as_array_mut) {
        Some(ms) if !ms.is_empty() => {
            for m in ms {
                m["port"] = json!(port);
            }
        }
        _ => r["match"] = json!([{ "port": port }]),
    }
    r
}

/// istiod's `augmentTLSPortMatch`: a catch-all SNI becomes the parent's hosts, and the
/// parent's port, when named, is matched.
fn tls_for_mesh(mut r: Value, port: Option<i32>, hosts: &[String]) -> Value {
    if let Some(ms) = r.get_mut("match").and_then(Value::as_array_mut) {
        if ms.len() == 1 && ms[0]["sniHosts"] == json!(["*"]) {
            ms[0]["sniHosts"] = json!(hosts);
        }
        if let Some(p) = port {
            for m in ms.iter_mut() {
                m["port"] = json!(p);
            }
        }
    }
    r
}

/// istiod's `compatibleRoutesForHost`: a route with several SNI hosts keeps, in the
/// VirtualService for `host`, only those `host` matches.
fn tls_compatible(mut r: Value, host: &str) -> Value {
    if let Some(ms) = r.get_mut("match").and_then(Value::as_array_mut)
        && ms.len() == 1
        && let Some(sni) = ms[0]["sniHosts"].as_array().filter(|s| s.len() > 1)
    {
        let kept: Vec<Value> = sni.iter().filter(|h| h.as_str().is_some_and(|h| overlaps(host, h))).cloned().collect();
        ms[0]["sniHosts"] = Value::Array(kept);
    }
    r
}

/// istiod's `constrainTLSRoutesToListenerHost`: SNI hosts narrowed to the listener's
/// hostname; routes left with none are dropped.
fn constrain_tls(routes: Vec<Value>, listener_host: &str) -> Vec<Value> {
    let lh = [listener_host.to_string()];
    routes
        .into_iter()
        .filter_map(|mut r| {
            let ms = r.get_mut("match").and_then(Value::as_array_mut)?;
            if ms.is_empty() {
                return Some(r);
            }
            let mut any = false;
            for m in ms.iter_mut() {
                let sni: Vec<String> = m["sniHosts"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|h| h.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let narrowed = intersection(&sni, &lh);
                any |= !narrowed.is_empty();
                m["sniHosts"] = json!(narrowed);
            }
            any.then_some(r)
        })
        .collect()
}

/// istiod's `sortHTTPRoutes` (stable): exact paths, then prefixes, then regexes, longer
/// first; then those with a method, more headers, more query parameters; routes
/// without a match last.
fn sort_http_routes(routes: &mut [Value]) {
    fn rank(m: &Value) -> (i32, usize) {
        let uri = &m["uri"];
        for (k, r) in [("exact", 3), ("prefix", 2), ("regex", 1)] {
            if let Some(s) = uri[k].as_str() {
                return (r, s.len());
            }
        }
        (-1, 0)
    }
    let key = |r: &Value| -> Option<(i32, usize, bool, usize, usize)> {
        let m = r["match"].as_array().and_then(|a| a.first())?;
        let (rk, len) = rank(m);
        let count = |k: &str| m[k].as_object().map_or(0, |o| o.len());
        Some((rk, len, !m["method"].is_null(), count("headers"), count("queryParams")))
    };
    routes.sort_by(|a, b| match (key(a), key(b)) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => y.cmp(&x),
    });
}

/// Merges the HTTP and gRPC VirtualServices of one key (parent and host): the oldest
/// route's VirtualService takes the others' routes, sorted again, and is named by the
/// key (istiod's `mergeHTTPRoutes`).
fn merge(keyed: Vec<Keyed<'_>>, out: &mut Translation) {
    let mut groups: BTreeMap<String, Vec<Keyed<'_>>> = BTreeMap::new();
    for k in keyed {
        groups.entry(k.key.clone()).or_default().push(k);
    }
    for (key, mut group) in groups {
        group.sort_by(|a, b| {
            let ka = (
                a.obj.meta.creation_timestamp.is_none(),
                &a.obj.meta.creation_timestamp,
                &a.obj.meta.namespace,
                &a.obj.meta.name,
            );
            let kb = (
                b.obj.meta.creation_timestamp.is_none(),
                &b.obj.meta.creation_timestamp,
                &b.obj.meta.namespace,
                &b.obj.meta.name,
            );
            ka.cmp(&kb)
        });
        let base = group[0].obj;
        let mut spec = group[0].spec.clone();
        let mut parents = vec![super::parent_name(base, None)];
        for k in &group[1..] {
            let more = k.spec["http"].as_array().cloned().unwrap_or_default();
            if let Some(routes) = spec["http"].as_array_mut() {
                routes.extend(more);
            }
            parents.push(super::parent_name(k.obj, None));
        }
        if let Some(routes) = spec["http"].as_array_mut() {
            sort_http_routes(routes);
        }
        push_vs(base, key.replace('/', "~"), base.meta.namespace.clone(), spec, parents.join(","), out);
    }
}

fn push_vs(obj: &Object, name: String, namespace: String, spec: Value, parents: String, out: &mut Translation) {
    match serde_json::from_value::<VirtualServiceSpec>(spec) {
        Ok(s) => out.virtual_services.push(super::generated(obj, name, namespace, s, parents, None)),
        Err(e) => out.diagnostics.push(super::diagnostic(obj, format!("not translated: {e}"))),
    }
}
