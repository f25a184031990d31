//! Gateways (proxies of type `router`): the Istio Gateways whose `selector` matches the
//! proxy's labels become listeners, one per server port, as istiod builds them:
//!
//! ```text
//!   Gateway servers, grouped by (bind, port) ─► Listener <bind>_<port>
//!     HTTP/HTTP2/GRPC   ─► one chain, HCM + RDS http.<port>          (VirtualService http)
//!     HTTPS (terminate) ─► a chain per server, by SNI, TLS from SDS,
//!                          HCM + RDS https.<number>.<portName>.<gateway>.<ns>
//!     TLS (terminate)   ─► a chain per server, by SNI, then tcp_proxy (VirtualService tcp)
//!     TLS PASSTHROUGH   ─► a chain per VirtualService tls sniHosts, tcp_proxy
//!     AUTO_PASSTHROUGH  ─► a chain per outbound_.<port>_.<subset>_.<host> SNI
//!     TCP               ─► tcp_proxy (VirtualService tcp)
//! ```
//!
//! The listener port is the server's port mapped through the gateway's Service
//! (`port` → `targetPort`) when the gateway is an endpoint of one, as istiod does. What
//! istiod settles silently (a second server for a port with another protocol, the same
//! host twice on one port, routes shadowed by an older VirtualService's catch-all) is
//! settled the same way here and reported in the proxy's warnings; a server whose
//! credential is missing or invalid is left out alone, with the reason.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xds_hcm;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use spar_model::host_matches;

use super::gateway_servers::{Class, Server, servers, warn};
use super::gateway_tls::server_tls;
use super::routes::{self};
use super::{Scope, authz, clusters, envoy, jwt, l4, mtls};
use crate::resources::{ProxyResources, ResourceType};

/// Listeners and route configurations for a gateway proxy.
pub fn listeners(scope: &Scope<'_>, out: &mut ProxyResources) {
    let all = servers(scope, out);
    // Group by (bind, port), in order of first appearance.
    let mut groups: Vec<((String, u16), Vec<&Server<'_>>)> = Vec::new();
    for s in &all {
        let key = (s.bind.clone(), s.listen_port);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    for ((bind, port), group) in groups {
        let first = group[0];
        let mut kept: Vec<&Server<'_>> = Vec::new();
        for s in group {
            if s.class.family() != first.class.family() {
                warn(
                    out,
                    format!(
                        "{}: port {port} is already served as {} by the older {}; this server is left out",
                        s.label(),
                        first.spec.port.protocol,
                        first.label()
                    ),
                );
                continue;
            }
            if s.class == Class::Tcp && !kept.is_empty() {
                warn(
                    out,
                    format!(
                        "{}: port {port} already has a TCP server ({}); this server is left out",
                        s.label(),
                        first.label()
                    ),
                );
                continue;
            }
            kept.push(s);
        }
        let name = format!("{bind}_{port}");
        let stat = format!("outbound_{bind}_{port}");
        let mut listener = xds_listener::Listener {
            name: name.clone(),
            address: Some(envoy::socket_address(&bind, u32::from(port))),
            traffic_direction: xds_core::TrafficDirection::Outbound as i32,
            ..Default::default()
        };
        match first.class.family() {
            0 => {
                let explicit_bind = kept.iter().find_map(|s| s.spec.bind.clone().filter(|b| !b.is_empty()));
                let route_name = match explicit_bind {
                    Some(b) => format!("http.{port}.{b}"),
                    None => format!("http.{port}"),
                };
                let rc = route_config(scope, &route_name, port, &kept, out);
                out.insert(ResourceType::Route, route_name.clone(), &rc);
                listener.filter_chains = vec![xds_listener::FilterChain {
                    filters: vec![hcm(scope, stat, route_name, false, &mut out.warnings)],
                    ..Default::default()
                }];
            }
            1 => {
                listener.filter_chains = tls_chains(scope, &kept, &stat, out);
                listener.listener_filters = vec![envoy::tls_inspector()];
            }
            _ => {
                let s = kept[0];
                match tcp_destinations(scope, s) {
                    Some(dests) => {
                        let mut filters = network_authz(scope, &mut out.warnings);
                        filters.push(envoy::tcp_proxy_to(scope, stat, dests));
                        listener.filter_chains = vec![xds_listener::FilterChain { filters, ..Default::default() }];
                    }
                    None => warn(out, format!("{}: no VirtualService tcp route is bound to it", s.label())),
                }
            }
        }
        if listener.filter_chains.is_empty() {
            continue;
        }
        out.insert(ResourceType::Listener, name, &listener);
    }
}

/// RBAC network filters for TCP traffic through the gateway (why CUSTOM policies deny,
/// if they do, into `warnings`).
fn network_authz(scope: &Scope<'_>, warnings: &mut Vec<String>) -> Vec<xds_listener::Filter> {
    let policies = authz::applicable(scope.snap, &scope.proxy.namespace, &scope.proxy.labels);
    let td = scope.proxy.identity.as_deref().map_or("cluster.local", mtls::trust_domain);
    let rbac = authz::build(&policies, td, true, &|name| authz::resolve_provider(scope, name));
    rbac.note_denials(warnings);
    authz::network_filters(&rbac)
}

/// The gateway's HTTP connection manager: JWT and RBAC from the policies selecting the
/// gateway, then CORS, fault and the router; the client's address is the connection's
/// (`use_remote_address`), and over TLS the client certificate is passed on.
fn hcm(
    scope: &Scope<'_>,
    stat_prefix: String,
    route_name: String,
    tls: bool,
    warnings: &mut Vec<String>,
) -> xds_listener::Filter {
    use xds_hcm::http_connection_manager::{ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails};
    let policies = authz::applicable(scope.snap, &scope.proxy.namespace, &scope.proxy.labels);
    let td = scope.proxy.identity.as_deref().map_or("cluster.local", mtls::trust_domain);
    let rbac = authz::build(&policies, td, false, &|name| authz::resolve_provider(scope, name));
    rbac.note_denials(warnings);
    let (jwt, _) = jwt::http_filter(&jwt::applicable(scope.snap, &scope.proxy.namespace, &scope.proxy.labels));
    let mut filters = authz::http_filters(&rbac, jwt);
    filters.extend(envoy::http_filters());
    clusters::add_dynamic_dns_filter(scope, &mut filters);
    let mut h = xds_hcm::HttpConnectionManager {
        stat_prefix,
        route_specifier: Some(RouteSpecifier::Rds(xds_hcm::Rds {
            config_source: Some(envoy::ads()),
            route_config_name: route_name,
        })),
        http_filters: filters,
        use_remote_address: Some(BoolValue { value: true }),
        generate_request_id: Some(BoolValue { value: true }),
        access_log: scope.access_logs.clone(),
        forward_client_cert_details: ForwardClientCertDetails::Sanitize as i32,
        ..Default::default()
    };
    envoy::istio_hcm_defaults(&mut h);
    // Gateways trace as clients, as istiod configures them.
    scope.tracing.apply(super::telemetry::Side::Client, &mut h);
    if tls {
        h.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
        h.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
            uri: true,
            dns: true,
            subject: Some(BoolValue { value: true }),
            ..Default::default()
        });
    }
    envoy::typed_filter("envoy.filters.network.http_connection_manager", pack_any(h))
}

/// A virtual host being built: its host name, the host, the VirtualServices (namespace,
/// name) merged into it, and the label of the first.
type MergedHost = (String, xds_route::VirtualHost, BTreeSet<(String, String)>, String);

fn is_catch_all(r: &xds_route::Route) -> bool {
    r.r#match.as_ref().is_some_and(|m| {
        matches!(&m.path_specifier, Some(xds_route::route_match::PathSpecifier::Prefix(p)) if p == "/")
            && m.headers.is_empty()
            && m.query_parameters.is_empty()
    })
}

/// The route configuration for HTTP `servers` sharing a listener: a virtual host per host
/// name the bound VirtualServices serve through them. Routes of several VirtualServices
/// for one host are appended in age order, as istiod merges them.
fn route_config(
    scope: &Scope<'_>,
    name: &str,
    port: u16,
    servers: &[&Server<'_>],
    out: &mut ProxyResources,
) -> xds_route::RouteConfiguration {
    let mut vhosts: Vec<MergedHost> = Vec::new();
    for s in servers {
        for (vs, vs_hosts) in
            scope.snap.virtual_services_for_gateway(&scope.proxy.namespace, &s.gw.namespace, &s.gw.name)
        {
            if vs.spec.http.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            let hosts = s.intersect(&vs.namespace, vs_hosts);
            if hosts.is_empty() {
                continue;
            }
            let routes = routes::vs_routes(scope, vs, s.number, s.binding());
            if routes.is_empty() {
                continue;
            }
            let key = (vs.namespace.clone(), vs.name.clone());
            for h in hosts {
                match vhosts.iter_mut().find(|(host, ..)| *host == h) {
                    Some((_, vh, merged, first)) => {
                        if !merged.insert(key.clone()) {
                            continue;
                        }
                        if vh.routes.last().is_some_and(is_catch_all) {
                            warn(
                                out,
                                format!(
                                    "{}: its routes for host {h} on port {} come after the catch-all route of the older {first} and are never used",
                                    vs.label("VirtualService"),
                                    s.number
                                ),
                            );
                        }
                        vh.routes.extend(routes.iter().cloned());
                        if s.https_redirect() {
                            vh.require_tls = xds_route::virtual_host::TlsRequirementType::All as i32;
                        }
                    }
                    None => {
                        let domains = if h == "*" { vec![h.clone()] } else { vec![h.clone(), format!("{h}:*")] };
                        let vh = xds_route::VirtualHost {
                            name: format!("{h}:{}", s.number),
                            domains,
                            routes: routes.clone(),
                            require_tls: if s.https_redirect() {
                                xds_route::virtual_host::TlsRequirementType::All as i32
                            } else {
                                0
                            },
                            include_request_attempt_count: true,
                            ..Default::default()
                        };
                        vhosts.push((h, vh, BTreeSet::from([key.clone()]), vs.label("VirtualService")));
                    }
                }
            }
        }
    }
    let mut virtual_hosts: Vec<xds_route::VirtualHost> = vhosts
        .into_iter()
        .map(|(_, mut vh, ..)| {
            routes::share_retry_policy(&mut vh);
            vh
        })
        .collect();
    if virtual_hosts.is_empty() {
        // Nothing bound: every request gets 404, as from istiod's blackhole host.
        virtual_hosts.push(xds_route::VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            routes: vec![xds_route::Route {
                name: "default".into(),
                r#match: Some(xds_route::RouteMatch {
                    path_specifier: Some(xds_route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(xds_route::route::Action::DirectResponse(xds_route::DirectResponseAction {
                    status: 404,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    xds_route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// Filter chains for the TLS servers of one listener, each by SNI. A name already used
/// by an earlier server on the listener is not used again (Envoy would reject the
/// listener); a server left with no names is reported.
fn tls_chains(
    scope: &Scope<'_>,
    servers: &[&Server<'_>],
    stat: &str,
    out: &mut ProxyResources,
) -> Vec<xds_listener::FilterChain> {
    let mut chains = Vec::new();
    // Names taken on this listener ("" = the chain without server names) and by whom.
    let mut taken: Vec<(String, String)> = Vec::new();
    let mut claim = |names: Vec<String>, who: &str, out: &mut ProxyResources| -> Option<Vec<String>> {
        let wanted = if names.is_empty() { vec![String::new()] } else { names };
        let (dup, free): (Vec<String>, Vec<String>) =
            wanted.into_iter().partition(|n| taken.iter().any(|(t, _)| t == n));
        for d in &dup {
            let owner = taken.iter().find(|(t, _)| t == d).map(|(_, o)| o.clone()).unwrap_or_default();
            let host = if d.is_empty() { "*" } else { d.as_str() };
            warn(
                out,
                format!("{who}: host {host} is already served on this port by {owner}; left out for this server"),
            );
        }
        if free.is_empty() {
            return None;
        }
        taken.extend(free.iter().map(|n| (n.clone(), who.to_string())));
        Some(free.into_iter().filter(|n| !n.is_empty()).collect())
    };
    for s in servers {
        let label = s.label();
        match s.class {
            Class::TerminateHttp | Class::TerminateTcp => {
                let socket = match server_tls(scope, s, out) {
                    Ok(t) => t,
                    Err(e) => {
                        warn(out, format!("{label}: {e}; this server is left out, the others keep serving"));
                        continue;
                    }
                };
                let filters = if s.class == Class::TerminateHttp {
                    let route_name = format!(
                        "https.{}.{}.{}.{}{}",
                        s.number,
                        s.spec.port.name,
                        s.gw.name,
                        s.gw.namespace,
                        s.spec.bind.as_deref().filter(|b| !b.is_empty()).map(|b| format!(".{b}")).unwrap_or_default()
                    );
                    let rc = route_config(scope, &route_name, s.listen_port, &[*s], out);
                    out.insert(ResourceType::Route, route_name.clone(), &rc);
                    vec![hcm(scope, stat.to_string(), route_name, true, &mut out.warnings)]
                } else {
                    let Some(dests) = tcp_destinations(scope, s) else {
                        warn(out, format!("{label}: no VirtualService tcp route is bound to it"));
                        continue;
                    };
                    let mut f = network_authz(scope, &mut out.warnings);
                    f.push(envoy::tcp_proxy_to(scope, stat.to_string(), dests));
                    f
                };
                let Some(names) = claim(s.sni_names(), &label, out) else { continue };
                chains.push(xds_listener::FilterChain {
                    name: label.clone(),
                    filter_chain_match: Some(xds_listener::FilterChainMatch {
                        server_names: names,
                        ..Default::default()
                    }),
                    filters,
                    transport_socket: Some(socket),
                    ..Default::default()
                });
            }
            Class::Passthrough => {
                let mut routed = false;
                for (vs, _) in
                    scope.snap.virtual_services_for_gateway(&scope.proxy.namespace, &s.gw.namespace, &s.gw.name)
                {
                    for rule in vs.spec.tls.iter().flatten() {
                        let dests = l4::l4_destinations(scope, &vs.namespace, s.number, rule.route.as_ref());
                        if dests.is_empty() {
                            continue;
                        }
                        for m in &rule.r#match {
                            if !l4::l4_match_applies(
                                scope,
                                s.number,
                                m.port,
                                m.source_labels.as_ref(),
                                m.source_namespace.as_ref(),
                                m.gateways.as_ref(),
                                s.binding(),
                                &vs.namespace,
                            ) {
                                continue;
                            }
                            let names = s.intersect(&vs.namespace, &m.sni_hosts);
                            if names.is_empty() {
                                continue;
                            }
                            routed = true;
                            let names: Vec<String> = if names.iter().any(|n| n == "*") { Vec::new() } else { names };
                            let Some(names) = claim(names, &label, out) else { continue };
                            chains.push(xds_listener::FilterChain {
                                name: format!("{label} {}", vs.label("VirtualService")),
                                filter_chain_match: Some(xds_listener::FilterChainMatch {
                                    server_names: names,
                                    ..Default::default()
                                }),
                                filters: vec![envoy::tcp_proxy_to(scope, stat.to_string(), dests.clone())],
                                ..Default::default()
                            });
                        }
                    }
                }
                if !routed {
                    warn(out, format!("{label}: no VirtualService tls route matches its hosts"));
                }
            }
            Class::AutoPassthrough => {
                for svc in &scope.services {
                    if !s.hosts().any(|(f, h)| s.namespace_allows(f, &svc.namespace) && host_matches(h, &svc.hostname))
                    {
                        continue;
                    }
                    let dr = scope.snap.destination_rule_for(&scope.proxy.namespace, &scope.proxy.labels, svc);
                    let mut subsets = vec![String::new()];
                    subsets.extend(dr.iter().flat_map(|d| d.spec.subsets.iter().flatten()).map(|s| s.name.clone()));
                    for p in &svc.ports {
                        for subset in &subsets {
                            let sni = mtls::sni(p.port, subset, &svc.hostname);
                            let cluster = envoy::outbound_cluster_name(p.port, subset, &svc.hostname);
                            let Some(names) = claim(vec![sni], &label, out) else { continue };
                            chains.push(xds_listener::FilterChain {
                                filter_chain_match: Some(xds_listener::FilterChainMatch {
                                    server_names: names,
                                    ..Default::default()
                                }),
                                filters: vec![envoy::tcp_proxy_to(scope, cluster.clone(), vec![(cluster, 1)])],
                                ..Default::default()
                            });
                        }
                    }
                }
            }
            Class::Http | Class::Tcp => {}
        }
    }
    chains
}

/// Where a TCP server (or a TLS server terminated here) sends connections: the first
/// `tcp` rule of a bound VirtualService whose hosts meet the server's and whose match
/// applies (or, for a VirtualService made from a TLSRoute, its first `tls` rule whose SNI
/// hosts meet the server's).
fn tcp_destinations(scope: &Scope<'_>, s: &Server<'_>) -> Option<Vec<(String, u32)>> {
    for (vs, vs_hosts) in scope.snap.virtual_services_for_gateway(&scope.proxy.namespace, &s.gw.namespace, &s.gw.name) {
        if s.intersect(&vs.namespace, vs_hosts).is_empty() {
            continue;
        }
        for rule in vs.spec.tcp.iter().flatten() {
            let applies = rule.r#match.as_ref().is_none_or(|ms| {
                ms.is_empty()
                    || ms.iter().any(|m| {
                        l4::l4_match_applies(
                            scope,
                            s.number,
                            m.port,
                            m.source_labels.as_ref(),
                            m.source_namespace.as_ref(),
                            m.gateways.as_ref(),
                            s.binding(),
                            &vs.namespace,
                        )
                    })
            });
            if !applies {
                continue;
            }
            let dests = l4::l4_destinations(scope, &vs.namespace, s.number, rule.route.as_ref());
            if !dests.is_empty() {
                return Some(dests);
            }
        }
        // A TLSRoute on a listener that terminates TLS: its `tls` rules say where the
        // decrypted bytes go, by the SNI the server already matched (istiod's
        // `buildGatewayNetworkFiltersFromTCPRoutes`).
        let from_tls_route = vs.generated.as_ref().is_some_and(|g| g.parents.starts_with("TLSRoute/"));
        for rule in vs.spec.tls.iter().flatten().filter(|_| from_tls_route) {
            let applies = rule.r#match.iter().any(|m| {
                m.port.is_none_or(|p| p == i64::from(s.number)) && !s.intersect(&vs.namespace, &m.sni_hosts).is_empty()
            });
            if !applies {
                continue;
            }
            let dests = l4::l4_destinations(scope, &vs.namespace, s.number, rule.route.as_ref());
            if !dests.is_empty() {
                return Some(dests);
            }
        }
    }
    None
}
