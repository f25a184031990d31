//! VirtualService analyzers: gateways, destination hosts and subsets, conflicting mesh
//! hosts, JWT claim routing.
//!
//! They read typed objects (a resource that does not parse as its type is skipped),
//! except where a route's destinations are walked: Istio reports a route with an empty
//! destination (`route: [{}]`, its `virtualServiceDestinationHosts` case), which Spar's
//! typed VirtualService cannot hold (the CRD requires `destination`), so those walk the
//! document.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use spar_api::istio::destination_rule::DestinationRuleSpec;
use spar_api::istio::gateway::GatewaySpec;
use spar_api::istio::request_authentication::RequestAuthenticationSpec;
use spar_api::istio::service_entry::ServiceEntrySpec;
use spar_api::istio::virtual_service::VirtualServiceSpec;
use spar_model::{hosts_overlap, resource_name_from_host, selects, to_fqdn};

use super::{Analyzer, Reporter, arr, short_or_full, st, strs};
use crate::context::{Context, Resource, gk};
use crate::message::go_list;
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "virtualservice.GatewayAnalyzer",
        description: "Checks the gateways associated with each virtual service",
        codes: &[
            code::REFERENCED_RESOURCE_NOT_FOUND,
            code::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
            code::REFERENCED_INTERNAL_GATEWAY,
        ],
        default: true,
        run: gateways,
    },
    Analyzer {
        name: "virtualservice.DestinationHostAnalyzer",
        description: "Checks the destination hosts associated with each virtual service",
        codes: &[
            code::REFERENCED_RESOURCE_NOT_FOUND,
            code::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
            code::INGRESS_ROUTE_RULES_NOT_AFFECTED,
        ],
        default: true,
        run: destination_hosts,
    },
    Analyzer {
        name: "virtualservice.DestinationRuleAnalyzer",
        description: "Checks the destination rules associated with each virtual service",
        codes: &[code::REFERENCED_RESOURCE_NOT_FOUND],
        default: true,
        run: destination_rules,
    },
    Analyzer {
        name: "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        description: "Checks if multiple virtual services associated with the mesh gateway have conflicting hosts",
        codes: &[code::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS],
        default: true,
        run: conflicting_mesh_hosts,
    },
    Analyzer {
        name: "virtualservice.JWTClaimRouteAnalyzer",
        description: "Checks the VirtualService using JWT claim based routing has corresponding RequestAuthentication",
        codes: &[code::JWT_CLAIM_BASED_ROUTING_WITHOUT_REQUEST_AUTH_N],
        default: true,
        run: jwt_claim_route,
    },
];

/// `ns/name`, or `name` without a namespace (Istio's `FullName.String()`).
pub(crate) fn full(ns: &str, name: &str) -> String {
    if ns.is_empty() { name.to_string() } else { format!("{ns}/{name}") }
}

/// Istio's `host.NamesForNamespace`: gateway server hosts visible from `ns`.
pub(crate) fn names_for_namespace(hosts: &[String], ns: &str) -> Vec<String> {
    hosts
        .iter()
        .filter_map(|h| match h.split_once('/') {
            Some((hn, host)) if hn == ns || hn == "*" => Some(host.to_string()),
            Some(_) => None,
            None => Some(h.clone()),
        })
        .collect()
}

/// Server hosts of an Istio Gateway in namespace `gw_ns`, `./` made explicit and `*/`
/// stripped, as Istio's `sanitizeServerHostNamespace`.
pub(crate) fn gateway_hosts(gw_ns: &str, gw: &GatewaySpec) -> Vec<String> {
    let mut out = Vec::new();
    for server in gw.servers.iter().flatten() {
        let mut hosts = server.hosts.clone();
        for i in 0..hosts.len() {
            if let Some((ns, h)) = hosts[i].split_once('/') {
                if ns == "." {
                    hosts[i] = format!("{gw_ns}/{h}");
                } else if ns == "*" {
                    if h == "*" {
                        hosts = vec!["*".to_string()];
                        break;
                    }
                    hosts[i] = h.to_string();
                }
            }
        }
        out.extend(hosts);
    }
    out
}

/// The strings of an optional list, as `&str`s.
fn strings(v: Option<&Vec<String>>) -> Vec<&str> {
    v.into_iter().flatten().map(String::as_str).collect()
}

fn gateways(ctx: &Context, r: &mut Reporter<'_>) {
    for (vs, spec) in ctx.typed::<VirtualServiceSpec>() {
        let vs_hosts = strings(spec.hosts.as_ref());
        for (i, gw_name) in strings(spec.gateways.as_ref()).into_iter().enumerate() {
            if gw_name == "mesh" {
                continue;
            }
            let path = format!("spec.gateways[{i}]");
            let bare = gw_name.split_once('/').map_or(gw_name, |(_, n)| n);
            if bare.contains("~istio-autogenerated-k8s-gateway~") {
                r.report_at(vs, code::REFERENCED_INTERNAL_GATEWAY, &path, vec![vs.full_name(), gw_name.into()]);
                continue;
            }
            let (ns, name) = short_or_full(&vs.namespace, gw_name);
            let istio_gw = ctx.get(gk::GATEWAY, &ns, &name);
            let k8s_gw = if istio_gw.is_none() { ctx.get(gk::K8S_GATEWAY, &ns, &name) } else { None };
            if istio_gw.is_none() && k8s_gw.is_none() {
                r.report_at(vs, code::REFERENCED_RESOURCE_NOT_FOUND, &path, vec!["gateway".into(), gw_name.into()]);
            }
            let matched = match k8s_gw {
                Some(k) => {
                    let listeners = arr(k.spec(), "listeners");
                    listeners.iter().any(|l| st(l, "hostname").is_empty())
                        || listeners.iter().any(|l| vs_hosts.iter().any(|h| hosts_overlap(st(l, "hostname"), h)))
                }
                None => {
                    let hosts: Vec<String> = ctx
                        .typed::<GatewaySpec>()
                        .filter(|(g, _)| g.namespace == ns && g.name == name)
                        .flat_map(|(g, spec)| gateway_hosts(&g.namespace, spec))
                        .collect();
                    names_for_namespace(&hosts, &vs.namespace)
                        .iter()
                        .any(|gh| vs_hosts.iter().any(|h| hosts_overlap(gh, h)))
                }
            };
            if !matched {
                r.report_at(
                    vs,
                    code::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                    &path,
                    vec![go_list(&vs_hosts), vs.full_name(), full(&ns, &name)],
                );
            }
        }
    }
}

/// A route destination with where it is written.
pub(crate) struct Dest<'v> {
    /// The field path of its host.
    pub path: String,
    /// The `destination` object.
    pub dest: &'v Value,
}

/// Route destinations in Istio's order (tcp, tls, http).
pub(crate) fn route_destinations(spec: &Value) -> Vec<Dest<'_>> {
    let mut out = Vec::new();
    for rule in ["tcp", "tls", "http"] {
        for (i, route) in arr(spec, rule).iter().enumerate() {
            for (j, d) in arr(route, "route").iter().enumerate() {
                out.push(Dest {
                    path: format!("spec.{rule}[{i}].route[{j}].destination.host"),
                    dest: d.get("destination").unwrap_or(&Value::Null),
                });
            }
        }
    }
    out
}

/// `mirror` and `mirrors[]` destinations of HTTP routes.
pub(crate) fn mirror_destinations(spec: &Value) -> Vec<Dest<'_>> {
    let mut out = Vec::new();
    for (i, route) in arr(spec, "http").iter().enumerate() {
        if let Some(m) = route.get("mirror").filter(|m| m.is_object()) {
            out.push(Dest { path: format!("spec.http[{i}].mirror.host"), dest: m });
        }
        for (j, m) in arr(route, "mirrors").iter().enumerate() {
            out.push(Dest {
                path: format!("spec.http[{i}].mirrors[{j}].destination.host"),
                dest: m.get("destination").unwrap_or(&Value::Null),
            });
        }
    }
    out
}

/// A service a host can resolve to: its ports (Istio's `InitServiceEntryHostMap`).
#[derive(Clone, Debug)]
pub(crate) struct HostEntry {
    pub ports: Vec<i64>,
    /// A ServiceEntry's `workloadSelector.labels` (empty for Services).
    pub selector: BTreeMap<String, String>,
}

/// Hosts of ServiceEntries and Services, keyed by `scope/fqdn` (scope `*` for all
/// namespaces).
pub(crate) fn service_entry_host_map(ctx: &Context) -> BTreeMap<String, HostEntry> {
    let mut out = BTreeMap::new();
    let domain = &ctx.mesh().domain;
    let key = |scope: &str, ns: &str, host: &str| format!("{scope}/{}", to_fqdn(host, ns, domain));
    for (se, spec) in ctx.typed::<ServiceEntrySpec>() {
        let entry = HostEntry {
            ports: spec.ports.iter().flatten().map(|p| p.number).collect(),
            selector: spec.workload_selector.as_ref().and_then(|w| w.labels.clone()).unwrap_or_default(),
        };
        let export = strings(spec.export_to.as_ref());
        for h in &spec.hosts {
            if export.is_empty() || export.contains(&"*") {
                out.insert(key("*", &se.namespace, h), entry.clone());
                continue;
            }
            for e in &export {
                let scope = if *e == "." { se.namespace.as_str() } else { e };
                out.insert(key(scope, &se.namespace, h), entry.clone());
            }
        }
    }
    for svc in ctx.of(gk::SERVICE) {
        let entry = HostEntry {
            ports: arr(svc.spec(), "ports").iter().filter_map(|p| p.get("port")?.as_i64()).collect(),
            selector: BTreeMap::new(),
        };
        let scopes: Vec<String> = match svc.annotations.get("networking.istio.io/exportTo") {
            None => vec!["*".into()],
            Some(a) if a.is_empty() => vec!["*".into()],
            Some(a) => a
                .split(',')
                .map(str::trim)
                .map(|s| if s == "." { svc.namespace.clone() } else { s.to_string() })
                .collect(),
        };
        for s in scopes {
            out.insert(key(&s, &svc.namespace, &svc.name), entry.clone());
        }
    }
    out
}

/// Istio's `GetDestinationHost`: the entry a destination host resolves to from `ns`.
pub(crate) fn destination_host<'m>(
    map: &'m BTreeMap<String, HostEntry>,
    ns: &str,
    export_to: &[&str],
    host: &str,
    domain: &str,
) -> Option<&'m HostEntry> {
    let f = to_fqdn(host, ns, domain);
    if let Some(e) = map.get(&format!("*/{f}")) {
        return Some(e);
    }
    if export_to.is_empty() {
        if let Some(e) = map.get(&format!("{ns}/{f}")) {
            return Some(e);
        }
    } else {
        for e in export_to {
            let scope = if *e == "." { ns } else { e };
            if let Some(x) = map.get(&format!("{scope}/{f}")) {
                return Some(x);
            }
        }
    }
    let bare = host.strip_prefix('*').unwrap_or(host);
    map.iter().find_map(|(k, e)| {
        let (scope, se_host) = k.split_once('/')?;
        let suffix = se_host.strip_prefix('*')?;
        (scope == "*" || scope == ns).then_some(())?;
        bare.ends_with(suffix).then_some(e)
    })
}

fn destination_hosts(ctx: &Context, r: &mut Reporter<'_>) {
    let hosts = service_entry_host_map(ctx);
    // VirtualServices routing to a subset of one of their own hosts.
    let mut subset_dests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for vs in ctx.of(gk::VIRTUAL_SERVICE) {
        let vs_hosts = strs(vs.spec(), "hosts");
        for route in arr(vs.spec(), "http") {
            for d in arr(route, "route") {
                let dest = d.get("destination").unwrap_or(&Value::Null);
                if !st(dest, "subset").is_empty() && vs_hosts.contains(&st(dest, "host")) {
                    subset_dests.entry(vs.full_name()).or_default().push(st(dest, "host").to_string());
                }
            }
        }
    }
    for vs in ctx.of(gk::VIRTUAL_SERVICE) {
        let spec = vs.spec();
        let export = strs(spec, "exportTo");
        for (d, what) in route_destinations(spec)
            .into_iter()
            .map(|d| (d, "host"))
            .chain(mirror_destinations(spec).into_iter().map(|d| (d, "mirror host")))
        {
            let host = st(d.dest, "host");
            let Some(entry) = destination_host(&hosts, &vs.namespace, &export, host, &ctx.mesh().domain) else {
                r.report_at(vs, code::REFERENCED_RESOURCE_NOT_FOUND, &d.path, vec![what.into(), host.into()]);
                continue;
            };
            match d.dest.get("port").and_then(|p| p.get("number")).and_then(Value::as_i64) {
                None if entry.ports.len() > 1 => {
                    let ports: Vec<String> = entry.ports.iter().map(i64::to_string).collect();
                    r.report_at(
                        vs,
                        code::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
                        &d.path,
                        vec![host.into(), go_list(&ports)],
                    );
                }
                None => {}
                Some(p) if !entry.ports.contains(&p) => r.report_at(
                    vs,
                    code::REFERENCED_RESOURCE_NOT_FOUND,
                    &d.path,
                    vec!["host:port".into(), format!("{host}:{p}")],
                ),
                Some(_) => {}
            }
        }
        // Subsets have no effect on ingress routes to the same host without one.
        if arr(spec, "gateways").is_empty() {
            continue;
        }
        for (i, route) in arr(spec, "http").iter().enumerate() {
            for (j, d) in arr(route, "route").iter().enumerate() {
                let dest = d.get("destination").unwrap_or(&Value::Null);
                if !st(dest, "subset").is_empty() {
                    continue;
                }
                for (other, dests) in &subset_dests {
                    for h in dests {
                        if h == st(dest, "host") {
                            r.report_at(
                                vs,
                                code::INGRESS_ROUTE_RULES_NOT_AFFECTED,
                                &format!("spec.http[{i}].route[{j}].destination.host"),
                                vec![other.clone(), vs.full_name()],
                            );
                        }
                    }
                }
            }
        }
    }
}

fn destination_rules(ctx: &Context, r: &mut Reporter<'_>) {
    let domain = &ctx.mesh().domain;
    let mut subsets: BTreeSet<((String, String), String)> = BTreeSet::new();
    for (dr, spec) in ctx.typed::<DestinationRuleSpec>() {
        let host = resource_name_from_host(&spec.host, &dr.namespace, domain);
        for s in spec.subsets.iter().flatten() {
            subsets.insert((host.clone(), s.name.clone()));
        }
    }
    for vs in ctx.of(gk::VIRTUAL_SERVICE) {
        let spec = vs.spec();
        for (d, what) in route_destinations(spec)
            .into_iter()
            .map(|d| (d, "host+subset in destinationrule"))
            .chain(mirror_destinations(spec).into_iter().map(|d| (d, "mirror+subset in destinationrule")))
        {
            let subset = st(d.dest, "subset");
            if subset.is_empty() {
                continue;
            }
            let host = st(d.dest, "host");
            if !subsets.contains(&(resource_name_from_host(host, &vs.namespace, domain), subset.to_string())) {
                r.report_at(
                    vs,
                    code::REFERENCED_RESOURCE_NOT_FOUND,
                    &d.path,
                    vec![what.into(), format!("{host}+{subset}")],
                );
            }
        }
    }
}

fn conflicting_mesh_hosts(ctx: &Context, r: &mut Reporter<'_>) {
    // scope/fqdn -> VirtualServices bound to the mesh gateway.
    let domain = &ctx.mesh().domain;
    let mut by_host: BTreeMap<(String, String), Vec<&Resource>> = BTreeMap::new();
    for (vs, spec) in ctx.typed::<VirtualServiceSpec>() {
        let gws = strings(spec.gateways.as_ref());
        if !(gws.is_empty() || gws.contains(&"mesh")) {
            continue;
        }
        let export = strings(spec.export_to.as_ref());
        let scopes: BTreeSet<String> = if export.is_empty() || export.contains(&"*") {
            ["*".to_string()].into()
        } else {
            export.iter().map(|e| if *e == "." { vs.namespace.clone() } else { e.to_string() }).collect()
        };
        for scope in scopes {
            for h in spec.hosts.iter().flatten() {
                by_host.entry((scope.clone(), to_fqdn(h, &vs.namespace, domain))).or_default().push(vs);
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host), list) in &by_host {
        let mut list = list.clone();
        if scope != "*" {
            for ((s, h), others) in &by_host {
                if s == "*" && hosts_overlap(host, h) {
                    list.extend(others.iter().copied());
                }
            }
        }
        if list.len() < 2 {
            continue;
        }
        let mut names: Vec<String> = list.iter().map(|v| v.full_name()).collect();
        names.sort();
        let names = names.join(",");
        for vs in list {
            if reported.insert(vs.full_name()) {
                r.report_at(
                    vs,
                    code::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                    "metadata.name",
                    vec![names.clone(), format!("{scope}/{host}")],
                );
            }
        }
    }
}

/// Whether a header name routes on a JWT claim (`@request.auth.claims.x` or `[x]`).
fn is_claim_header(name: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    if !name.to_ascii_lowercase().starts_with(PREFIX) {
        return false;
    }
    let rest = &name[PREFIX.len()..];
    (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

fn jwt_claim_route(ctx: &Context, r: &mut Reporter<'_>) {
    let empty = BTreeMap::new();
    let mut ra_by_ns: BTreeMap<&str, Vec<&BTreeMap<String, String>>> = BTreeMap::new();
    for (ra, spec) in ctx.typed::<RequestAuthenticationSpec>() {
        let sel = spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()).unwrap_or(&empty);
        ra_by_ns.entry(ra.namespace.as_str()).or_default().push(sel);
    }
    for (vs, spec) in ctx.typed::<VirtualServiceSpec>() {
        let key = spec.http.iter().flatten().flat_map(|h| h.r#match.iter().flatten()).find_map(|m| {
            let mut headers = m.headers.iter().flat_map(|h| h.keys());
            let mut without = m.without_headers.iter().flat_map(|h| h.keys());
            headers.find(|h| is_claim_header(h)).or_else(|| without.find(|h| is_claim_header(h))).cloned()
        });
        let Some(key) = key else { continue };
        for gw_name in strings(spec.gateways.as_ref()) {
            if gw_name == "mesh" {
                continue;
            }
            let (ns, name) = short_or_full(&vs.namespace, gw_name);
            let Some(gw) = ctx.get(gk::GATEWAY, &ns, &name).and_then(Resource::typed::<GatewaySpec>) else {
                continue;
            };
            let selector = gw.selector.clone().unwrap_or_default();
            for pod in ctx.of(gk::POD) {
                if !selects(&selector, &pod.labels) {
                    continue;
                }
                let sels = ra_by_ns
                    .get("istio-system")
                    .into_iter()
                    .flatten()
                    .chain(ra_by_ns.get(pod.namespace.as_str()).into_iter().flatten());
                let covered = sels.clone().any(|s| selects(s, &pod.labels));
                if !covered {
                    r.report(
                        vs,
                        code::JWT_CLAIM_BASED_ROUTING_WITHOUT_REQUEST_AUTH_N,
                        vec![key.clone(), full(&ns, &name), pod.name.clone()],
                    );
                }
            }
        }
    }
}
