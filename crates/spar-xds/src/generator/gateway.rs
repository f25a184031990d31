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
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use spar_api::istio::gateway::{
    GatewayServers, GatewayServersTls, GatewayServersTlsMaxProtocolVersion, GatewayServersTlsMinProtocolVersion,
    GatewayServersTlsMode as Mode, GatewaySpec,
};
use spar_model::{Config, Protocol, host_matches};

use super::routes::{self, Binding};
use super::{Scope, authz, clusters, credentials, envoy, jwt, l4, mtls};
use crate::resources::{ProxyResources, type_url};
use crate::sds::{DEFAULT_SECRET, ROOT_SECRET};

/// How a server's traffic is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Plain-text HTTP (HTTP, HTTP2, GRPC).
    Http,
    /// TLS terminated here, then HTTP.
    TerminateHttp,
    /// TLS terminated here, then TCP.
    TerminateTcp,
    /// TLS passed through, routed by SNI (VirtualService `tls`).
    Passthrough,
    /// TLS passed through by istiod's mTLS SNI (`outbound_.<port>_.<subset>_.<host>`).
    AutoPassthrough,
    /// Opaque TCP.
    Tcp,
}

impl Class {
    fn of(spec: &GatewayServers) -> Result<Self, String> {
        let protocol = Protocol::parse(&spec.port.protocol);
        // Istio's zero value for `tls.mode` is PASSTHROUGH.
        let mode = spec.tls.as_ref().map(|t| t.mode.clone().unwrap_or(Mode::Passthrough));
        Ok(match (protocol, mode) {
            (p, _) if p.is_http() => Self::Http,
            (Protocol::Https | Protocol::Tls, Some(Mode::Passthrough) | None) => Self::Passthrough,
            (Protocol::Https | Protocol::Tls, Some(Mode::AutoPassthrough)) => Self::AutoPassthrough,
            (Protocol::Https, Some(_)) => Self::TerminateHttp,
            (Protocol::Tls, Some(_)) => Self::TerminateTcp,
            (Protocol::Tcp, _) => Self::Tcp,
            _ => return Err(format!("protocol {:?} is not supported on gateways", spec.port.protocol)),
        })
    }

    /// Servers of these classes can share a port (told apart by SNI).
    fn family(self) -> u8 {
        match self {
            Self::Http => 0,
            Self::Tcp => 2,
            _ => 1,
        }
    }
}

/// One Gateway server as this proxy serves it.
struct Server<'a> {
    gw: &'a Config<GatewaySpec>,
    index: usize,
    spec: &'a GatewayServers,
    /// The server's port number (what VirtualService `port` matches compare with).
    number: u16,
    /// The port the listener binds.
    listen_port: u16,
    bind: String,
    class: Class,
}

impl Server<'_> {
    fn label(&self) -> String {
        let name = self.spec.name.as_deref().map(|n| format!(" {n:?}")).unwrap_or_default();
        format!(
            "{} server {}{name} ({}: port {} {})",
            self.gw.label("Gateway"),
            self.index,
            self.spec.port.name,
            self.number,
            self.spec.port.protocol
        )
    }

    fn binding(&self) -> Binding<'_> {
        Binding::Gateway { namespace: &self.gw.namespace, name: &self.gw.name }
    }

    /// The server's hosts as (namespace filter, host name).
    fn hosts(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.spec.hosts.iter().map(|h| h.split_once('/').unwrap_or(("*", h.as_str())))
    }

    fn namespace_allows(&self, filter: &str, ns: &str) -> bool {
        match filter {
            "*" => true,
            "." => ns == self.gw.namespace,
            other => other == ns,
        }
    }

    /// SNI names for this server's filter chain; empty when a host is `*` (any name).
    fn sni_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self.hosts().map(|(_, h)| h.to_string()).collect();
        if names.contains("*") { Vec::new() } else { names.into_iter().collect() }
    }

    /// The host names a VirtualService in `vs_ns` with `vs_hosts` serves through this
    /// server: for each pair that matches, the more specific of the two (istiod's rule).
    fn intersect(&self, vs_ns: &str, vs_hosts: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (filter, server_host) in self.hosts() {
            if !self.namespace_allows(filter, vs_ns) {
                continue;
            }
            for h in vs_hosts {
                let hit = if host_matches(server_host, h) {
                    Some(h.as_str())
                } else if host_matches(h, server_host) {
                    Some(server_host)
                } else {
                    None
                };
                if let Some(hit) = hit
                    && !out.iter().any(|o| o == hit)
                {
                    out.push(hit.to_string());
                }
            }
        }
        out
    }

    fn https_redirect(&self) -> bool {
        self.spec.tls.as_ref().and_then(|t| t.https_redirect).unwrap_or(false)
    }
}

/// The port a gateway listens on for server port `number`: the `targetPort` of the
/// Service port `number` of a Service this gateway is an endpoint of, else `number`.
fn listen_port(scope: &Scope<'_>, number: u16) -> u16 {
    let ips: Vec<String> = scope.proxy.ips.iter().map(ToString::to_string).collect();
    for svc in scope.snap.services.values() {
        if svc.port(number).is_none() || !svc.visible_to(&scope.proxy.namespace) {
            continue;
        }
        if let Some(target) =
            svc.endpoints.iter().filter(|e| ips.contains(&e.address)).find_map(|e| e.ports.get(&number).copied())
        {
            return target;
        }
    }
    number
}

fn warn(out: &mut ProxyResources, w: String) {
    if !out.warnings.contains(&w) {
        out.warnings.push(w);
    }
}

/// The servers of every Gateway that selects this proxy, in order (oldest Gateway first).
fn servers<'a>(scope: &Scope<'a>, out: &mut ProxyResources) -> Vec<Server<'a>> {
    let mut servers = Vec::new();
    for gw in scope.snap.gateways_for(scope.proxy) {
        for (index, spec) in gw.spec.servers.iter().flatten().enumerate() {
            let label = || format!("{} server {index}", gw.label("Gateway"));
            let Some(number) = u16::try_from(spec.port.number).ok().filter(|n| *n > 0) else {
                warn(out, format!("{}: port {} is not a port number; left out", label(), spec.port.number));
                continue;
            };
            let class = match Class::of(spec) {
                Ok(c) => c,
                Err(e) => {
                    warn(out, format!("{}: {e}; left out", label()));
                    continue;
                }
            };
            if spec.bind.as_deref().is_some_and(|b| b.starts_with("unix://")) {
                warn(out, format!("{}: Unix domain socket binds are not supported; left out", label()));
                continue;
            }
            let listen_port = spec
                .port
                .target_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or_else(|| listen_port(scope, number));
            let bind = spec
                .bind
                .clone()
                .filter(|b| !b.is_empty())
                .or_else(|| scope.proxy.listen_address.map(|a| a.to_string()))
                .unwrap_or_else(|| "0.0.0.0".into());
            servers.push(Server { gw, index, spec, number, listen_port, bind, class });
        }
    }
    servers
}

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
                out.insert(type_url::ROUTE, route_name.clone(), &rc);
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
        out.insert(type_url::LISTENER, name, &listener);
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
                    out.insert(type_url::ROUTE, route_name.clone(), &rc);
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
/// applies.
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
    }
    None
}

fn tls_version(v: &GatewayServersTlsMinProtocolVersion) -> xds_tls::tls_parameters::TlsProtocol {
    use xds_tls::tls_parameters::TlsProtocol;
    match v {
        GatewayServersTlsMinProtocolVersion::TlsAuto => TlsProtocol::TlsAuto,
        GatewayServersTlsMinProtocolVersion::Tlsv10 => TlsProtocol::TlSv10,
        GatewayServersTlsMinProtocolVersion::Tlsv11 => TlsProtocol::TlSv11,
        GatewayServersTlsMinProtocolVersion::Tlsv12 => TlsProtocol::TlSv12,
        GatewayServersTlsMinProtocolVersion::Tlsv13 => TlsProtocol::TlSv13,
    }
}

fn tls_max_version(v: &GatewayServersTlsMaxProtocolVersion) -> xds_tls::tls_parameters::TlsProtocol {
    use xds_tls::tls_parameters::TlsProtocol;
    match v {
        GatewayServersTlsMaxProtocolVersion::TlsAuto => TlsProtocol::TlsAuto,
        GatewayServersTlsMaxProtocolVersion::Tlsv10 => TlsProtocol::TlSv10,
        GatewayServersTlsMaxProtocolVersion::Tlsv11 => TlsProtocol::TlSv11,
        GatewayServersTlsMaxProtocolVersion::Tlsv12 => TlsProtocol::TlSv12,
        GatewayServersTlsMaxProtocolVersion::Tlsv13 => TlsProtocol::TlSv13,
    }
}

/// `minProtocolVersion` (TLS 1.2 unless set, istiod's gateway default),
/// `maxProtocolVersion`, `cipherSuites`, `ecdhCurves`.
fn tls_params(tls: &GatewayServersTls) -> xds_tls::TlsParameters {
    use xds_tls::tls_parameters::TlsProtocol;
    xds_tls::TlsParameters {
        tls_minimum_protocol_version: tls.min_protocol_version.as_ref().map_or(TlsProtocol::TlSv12, tls_version) as i32,
        tls_maximum_protocol_version: tls.max_protocol_version.as_ref().map_or(TlsProtocol::TlsAuto, tls_max_version)
            as i32,
        cipher_suites: tls.cipher_suites.clone().unwrap_or_default(),
        ecdh_curves: tls.ecdh_curves.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Client-certificate checks of a mutual TLS server: `subjectAltNames` (DNS or URI),
/// `verifyCertificateHash`, `verifyCertificateSpki`.
fn client_checks(tls: &GatewayServersTls) -> xds_tls::CertificateValidationContext {
    use xds_tls::subject_alt_name_matcher::SanType;
    let matchers = tls
        .subject_alt_names
        .iter()
        .flatten()
        .flat_map(|n| {
            [SanType::Dns, SanType::Uri].map(|t| xds_tls::SubjectAltNameMatcher {
                san_type: t as i32,
                matcher: Some(xds_matcher::StringMatcher {
                    match_pattern: Some(xds_matcher::string_matcher::MatchPattern::Exact(n.clone())),
                    ignore_case: false,
                }),
                ..Default::default()
            })
        })
        .collect();
    xds_tls::CertificateValidationContext {
        match_typed_subject_alt_names: matchers,
        verify_certificate_hash: tls.verify_certificate_hash.clone().unwrap_or_default(),
        verify_certificate_spki: tls.verify_certificate_spki.clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn file(path: &str) -> Option<xds_core::DataSource> {
    Some(xds_core::DataSource {
        specifier: Some(xds_core::data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// The server side of a terminating TLS server; the error says why it cannot be served.
fn server_tls(
    scope: &Scope<'_>,
    s: &Server<'_>,
    out: &mut ProxyResources,
) -> Result<xds_core::TransportSocket, String> {
    use xds_tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    let tls = s.spec.tls.as_ref().ok_or("no tls settings")?;
    let mode = tls.mode.clone().unwrap_or(Mode::Passthrough);
    let mut common = xds_tls::CommonTlsContext {
        tls_params: Some(tls_params(tls)),
        alpn_protocols: if s.class == Class::TerminateHttp { vec!["h2".into(), "http/1.1".into()] } else { Vec::new() },
        ..Default::default()
    };
    let require_client = match mode {
        Mode::IstioMutual => {
            if scope.proxy.identity.is_none() {
                return Err("ISTIO_MUTUAL needs the gateway's own workload certificate, and the gateway has not \
                            proven its identity (connect it to the secure xDS port)"
                    .into());
            }
            common.tls_certificate_sds_secret_configs = vec![mtls::sds(DEFAULT_SECRET)];
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                    default_validation_context: Some(client_checks(tls)),
                    validation_context_sds_secret_config: Some(mtls::sds(ROOT_SECRET)),
                    ..Default::default()
                }));
            true
        }
        Mode::Simple | Mode::Mutual | Mode::OptionalMutual => {
            let mutual = mode != Mode::Simple;
            let ca_file = tls.ca_certificates.clone().filter(|c| !c.is_empty());
            let creds: Vec<&String> = match (&tls.credential_names, &tls.credential_name) {
                (Some(names), _) if !names.is_empty() => names.iter().collect(),
                (_, Some(n)) if !n.is_empty() => vec![n],
                _ => Vec::new(),
            };
            if !creds.is_empty() {
                let mut ca_sds = None;
                for (i, cred) in creds.iter().enumerate() {
                    // The CA comes with the first credential (or `caCertCredentialName`).
                    let want_ca = mutual && i == 0 && ca_file.is_none() && tls.ca_cert_credential_name.is_none();
                    let loaded = credentials::load(
                        scope,
                        cred,
                        credentials::Needs { key_pair: true, ca: want_ca },
                        Some(&s.gw.namespace),
                        out,
                    )
                    .map_err(|e| format!("credentialName {cred}: {e}"))?;
                    common.tls_certificate_sds_secret_configs.extend(loaded.key_pair.as_deref().map(mtls::sds));
                    ca_sds = ca_sds.or(loaded.ca);
                }
                if mutual && let Some(ca_cred) = tls.ca_cert_credential_name.as_deref().filter(|c| !c.is_empty()) {
                    let loaded = credentials::load(
                        scope,
                        ca_cred,
                        credentials::Needs { key_pair: false, ca: true },
                        Some(&s.gw.namespace),
                        out,
                    )
                    .map_err(|e| format!("caCertCredentialName {ca_cred}: {e}"))?;
                    ca_sds = loaded.ca;
                }
                if mutual {
                    common.validation_context_type = Some(match (ca_sds, &ca_file) {
                        (Some(ca), _) => {
                            ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                                default_validation_context: Some(client_checks(tls)),
                                validation_context_sds_secret_config: Some(mtls::sds(&ca)),
                                ..Default::default()
                            })
                        }
                        (None, Some(f)) => {
                            ValidationContextType::ValidationContext(xds_tls::CertificateValidationContext {
                                trusted_ca: file(f),
                                ..client_checks(tls)
                            })
                        }
                        (None, None) => return Err(format!("{mode:?} needs a CA certificate for clients")),
                    });
                }
            } else if let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) {
                // Files on the gateway's own file system (mounted Secrets).
                common.tls_certificates = vec![xds_tls::TlsCertificate {
                    certificate_chain: file(cert),
                    private_key: file(key),
                    ..Default::default()
                }];
                if mutual {
                    let f = ca_file.ok_or("MUTUAL needs caCertificates with serverCertificate/privateKey")?;
                    common.validation_context_type =
                        Some(ValidationContextType::ValidationContext(xds_tls::CertificateValidationContext {
                            trusted_ca: file(&f),
                            crl: tls.ca_crl.as_deref().and_then(file),
                            ..client_checks(tls)
                        }));
                }
            } else if let Some(list) = tls.tls_certificates.as_ref().filter(|l| !l.is_empty()) {
                for c in list {
                    let (Some(cert), Some(key)) = (&c.server_certificate, &c.private_key) else {
                        return Err("a tlsCertificates entry lacks serverCertificate or privateKey".into());
                    };
                    common.tls_certificates.push(xds_tls::TlsCertificate {
                        certificate_chain: file(cert),
                        private_key: file(key),
                        ..Default::default()
                    });
                }
            } else {
                return Err("no credentialName and no serverCertificate/privateKey".into());
            }
            mode == Mode::Mutual
        }
        Mode::Passthrough | Mode::AutoPassthrough => return Err("passthrough servers do not terminate TLS".into()),
    };
    let ctx = xds_tls::DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: require_client }),
        ..Default::default()
    };
    Ok(xds_core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(xds_core::transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    })
}
