//! Listeners, clusters and endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::endpoint::v3 as xds_endpoint;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xds_hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as xds_tcp;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as xds_upstream_http;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;
use spar_model::{InterceptionMode, MtlsMode, Protocol, Resolution, Service};

use super::Scope;
use super::telemetry::Side;
use super::{authz, credentials, jwt, mtls, policy, routes};
use crate::resources::{ProxyResources, type_url};

/// istiod's default `connectTimeout` (MeshConfig).
const CONNECT_TIMEOUT_SECS: i64 = 10;
/// istiod's default circuit-breaker limits: effectively unlimited.
const UNLIMITED: u32 = u32::MAX;

/// Where ALLOW_ANY traffic to unknown hosts goes (original destination).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Where refused traffic goes: a cluster with no endpoints.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// istiod's two catch-all clusters.
fn catch_all_clusters(out: &mut ProxyResources) {
    use xds_cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let passthrough = xds_cluster::Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        circuit_breakers: Some(thresholds()),
        ..Default::default()
    };
    out.insert(type_url::CLUSTER, PASSTHROUGH_CLUSTER, &passthrough);
    let blackhole = xds_cluster::Cluster {
        name: BLACKHOLE_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        ..Default::default()
    };
    out.insert(type_url::CLUSTER, BLACKHOLE_CLUSTER, &blackhole);
}

/// `outbound|<port>|<subset>|<host>`.
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

pub(super) fn socket_address(ip: &str, port: u32) -> xds_core::Address {
    xds_core::Address {
        address: Some(xds_core::address::Address::SocketAddress(xds_core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(xds_core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

pub(super) fn ads() -> xds_core::ConfigSource {
    xds_core::ConfigSource {
        config_source_specifier: Some(xds_core::config_source::ConfigSourceSpecifier::Ads(
            xds_core::AggregatedConfigSource {},
        )),
        resource_api_version: xds_core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(super) fn typed_filter(name: &str, any: Any) -> xds_listener::Filter {
    xds_listener::Filter { name: name.into(), config_type: Some(xds_listener::filter::ConfigType::TypedConfig(any)) }
}

fn http_filter(name: &str, any: Any) -> xds_hcm::HttpFilter {
    xds_hcm::HttpFilter {
        name: name.into(),
        config_type: Some(xds_hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// The HTTP filter chain istiod builds for sidecars, minus Istio-only filters: CORS and
/// fault (configured per route; inert otherwise), then the router.
pub(super) fn http_filters() -> Vec<xds_hcm::HttpFilter> {
    vec![
        http_filter(
            routes::CORS_FILTER,
            pack_any(envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default()),
        ),
        http_filter(
            routes::FAULT_FILTER,
            pack_any(envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::default()),
        ),
        http_filter("envoy.filters.http.router", pack_any(Router::default())),
    ]
}

/// What istiod sets on every HTTP connection manager it builds (sidecar inbound and
/// outbound, gateways): WebSocket upgrades allowed, HTTP/1.1 and HTTP/2 by sniffing, and
/// no stream idle timeout (a quiet WebSocket or gRPC stream is not cut after Envoy's
/// default 5 minutes). CONNECT is not allowed: istiod only allows it on its HBONE
/// tunnels, and an `Upgrade: h2c` request is left to Envoy, which ignores it.
pub(super) fn istio_hcm_defaults(h: &mut xds_hcm::HttpConnectionManager) {
    h.codec_type = xds_hcm::http_connection_manager::CodecType::Auto as i32;
    h.upgrade_configs = vec![xds_hcm::http_connection_manager::UpgradeConfig {
        upgrade_type: "websocket".into(),
        ..Default::default()
    }];
    h.stream_idle_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 0 });
    h.normalize_path = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
}

fn hcm(
    scope: &Scope<'_>,
    stat_prefix: String,
    route: xds_hcm::http_connection_manager::RouteSpecifier,
) -> xds_listener::Filter {
    let mut filters = http_filters();
    add_dynamic_dns_filter(scope, &mut filters);
    let mut hcm = xds_hcm::HttpConnectionManager {
        stat_prefix,
        route_specifier: Some(route),
        http_filters: filters,
        path_with_escaped_slashes_action: xds_hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged
            as i32,
        access_log: scope.access_logs.clone(),
        ..Default::default()
    };
    istio_hcm_defaults(&mut hcm);
    scope.tracing.apply(Side::Client, &mut hcm);
    typed_filter("envoy.filters.network.http_connection_manager", pack_any(hcm))
}

/// The inbound HTTP connection manager; over mTLS it passes the client's identity on in
/// `x-forwarded-client-cert` (sanitized from what the client sent, then set).
fn inbound_hcm(
    scope: &Scope<'_>,
    stat_prefix: String,
    rc: xds_route::RouteConfiguration,
    tls: bool,
    rbac: Vec<xds_hcm::HttpFilter>,
) -> xds_listener::Filter {
    use xds_hcm::http_connection_manager::{ForwardClientCertDetails, SetCurrentClientCertDetails};
    let mut filters = rbac;
    filters.extend(http_filters());
    let mut h = xds_hcm::HttpConnectionManager {
        stat_prefix,
        route_specifier: Some(xds_hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)),
        http_filters: filters,
        forward_client_cert_details: ForwardClientCertDetails::Sanitize as i32,
        access_log: scope.access_logs.clone(),
        ..Default::default()
    };
    istio_hcm_defaults(&mut h);
    scope.tracing.apply(Side::Server, &mut h);
    if tls {
        h.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
        h.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
            uri: true,
            dns: true,
            subject: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            ..Default::default()
        });
    }
    typed_filter("envoy.filters.network.http_connection_manager", pack_any(h))
}

fn tcp_proxy(scope: &Scope<'_>, stat_prefix: String, cluster: String) -> xds_listener::Filter {
    let tp = xds_tcp::TcpProxy {
        stat_prefix,
        cluster_specifier: Some(xds_tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster)),
        access_log: scope.access_logs.clone(),
        ..Default::default()
    };
    typed_filter("envoy.filters.network.tcp_proxy", pack_any(tp))
}

/// An outbound listener whose filter chains are `chains`.
fn listener_with(
    name: String,
    bind: &str,
    port: u16,
    chains: Vec<xds_listener::FilterChain>,
    bind_to_port: bool,
) -> xds_listener::Listener {
    let placeholder = xds_listener::Filter::default();
    xds_listener::Listener { filter_chains: chains, ..listener(name, bind, port, placeholder, bind_to_port) }
}

fn listener(
    name: String,
    bind: &str,
    port: u16,
    filter: xds_listener::Filter,
    bind_to_port: bool,
) -> xds_listener::Listener {
    xds_listener::Listener {
        name,
        address: Some(socket_address(bind, u32::from(port))),
        filter_chains: vec![xds_listener::FilterChain { filters: vec![filter], ..Default::default() }],
        bind_to_port: (!bind_to_port).then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        traffic_direction: xds_core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// Outbound listeners and their route configurations.
pub fn outbound(scope: &Scope<'_>, out: &mut ProxyResources) {
    let bind_to_port = scope.proxy.interception == InterceptionMode::None;
    let mut taken = BTreeSet::new();
    for egress in &scope.egress {
        // Ports this listener serves, each with the protocol of its first service (by host).
        let mut ports: BTreeMap<u16, Protocol> = BTreeMap::new();
        match egress.port {
            Some((p, proto)) => {
                ports.insert(p, proto);
            }
            None => {
                for s in &egress.services {
                    for p in &s.ports {
                        let protocol = listener_protocol(p.port, p.protocol);
                        ports
                            .entry(p.port)
                            .and_modify(|seen| *seen = port_protocol_conflict(*seen, protocol))
                            .or_insert(protocol);
                    }
                }
            }
        }
        for (port, protocol) in ports {
            let name = format!("{}_{port}", egress.bind);
            if !taken.insert(name.clone()) {
                // istiod keeps the first listener for a bind:port; so do we.
                continue;
            }
            let wildcard = egress.bind == "0.0.0.0" || egress.bind == "::";
            let services: Vec<&Service> =
                egress.services.iter().filter(|s| s.port(port).is_some()).map(|s| s.as_ref()).collect();
            // The port's route configuration, and the connection manager reading it.
            let outbound_hcm = |out: &mut ProxyResources| {
                let route_name = if wildcard { port.to_string() } else { format!("{}:{port}", egress.bind) };
                let rc = routes::route_config(scope, &route_name, port, &services);
                out.insert(type_url::ROUTE, route_name.clone(), &rc);
                let rds = xds_hcm::http_connection_manager::RouteSpecifier::Rds(xds_hcm::Rds {
                    config_source: Some(ads()),
                    route_config_name: route_name,
                });
                hcm(scope, format!("outbound_{}_{port}", egress.bind), rds)
            };
            if protocol.is_http() {
                let http = outbound_hcm(out);
                let l = listener(name.clone(), &egress.bind, port, http, bind_to_port);
                out.insert(type_url::LISTENER, name, &l);
            } else if matches!(protocol, Protocol::Tls | Protocol::Https) {
                // TLS is routed by SNI: a filter chain per VirtualService `tls` match, and
                // one per service host for the rest.
                let chains = tls_chains(scope, port, &services);
                if chains.is_empty() {
                    continue;
                }
                let mut l = listener_with(name.clone(), &egress.bind, port, chains, bind_to_port);
                l.listener_filters = vec![tls_inspector()];
                out.insert(type_url::LISTENER, name, &l);
            } else if protocol == Protocol::Unknown && !services.is_empty() {
                // Detected: HTTP/1.x and h2c by Envoy's http_inspector go through the
                // port's routes (VirtualService `http` rules apply); the rest is TCP.
                let http = outbound_hcm(out);
                let tcp = tcp_port_chains(scope, port, &services, !bind_to_port);
                let mut l = listener_with(name.clone(), &egress.bind, port, sniffed_chains(http, tcp), bind_to_port);
                l.listener_filters = vec![http_inspector()];
                // istiod's default protocolDetectionTimeout (0s): no timeout, so a
                // server-first protocol on an undeclared port waits for the client.
                l.listener_filters_timeout = Some(Duration { seconds: 0, nanos: 0 });
                l.continue_on_listener_filters_timeout = true;
                out.insert(type_url::LISTENER, name, &l);
            } else if !services.is_empty() {
                let chains = tcp_port_chains(scope, port, &services, !bind_to_port);
                let l = listener_with(name.clone(), &egress.bind, port, chains, bind_to_port);
                out.insert(type_url::LISTENER, name, &l);
            }
        }
    }
}

pub(super) fn tls_inspector() -> xds_listener::ListenerFilter {
    xds_listener::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(xds_listener::listener_filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// A `tcp_proxy` to one cluster, or split by weight over several.
pub(super) fn tcp_proxy_to(
    scope: &Scope<'_>,
    stat_prefix: String,
    clusters: Vec<(String, u32)>,
) -> xds_listener::Filter {
    use xds_tcp::tcp_proxy::{ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight};
    let spec = match clusters.as_slice() {
        [(one, _)] => ClusterSpecifier::Cluster(one.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(name, weight)| ClusterWeight { name, weight, ..Default::default() })
                .collect(),
        }),
    };
    let tp = xds_tcp::TcpProxy {
        stat_prefix,
        cluster_specifier: Some(spec),
        access_log: scope.access_logs.clone(),
        ..Default::default()
    };
    typed_filter("envoy.filters.network.tcp_proxy", pack_any(tp))
}

/// A VirtualService `tcp` or `tls` route: the generated types differ, the fields do not.
pub(super) trait L4Route {
    /// (host, port, subset, weight).
    fn parts(&self) -> (&str, Option<i64>, Option<&String>, Option<i32>);
}

impl L4Route for spar_api::istio::virtual_service::VirtualServiceTcpRoute {
    fn parts(&self) -> (&str, Option<i64>, Option<&String>, Option<i32>) {
        let d = &self.destination;
        (d.host.as_str(), d.port.as_ref().and_then(|p| p.number), d.subset.as_ref(), self.weight)
    }
}

impl L4Route for spar_api::istio::virtual_service::VirtualServiceTlsRoute {
    fn parts(&self) -> (&str, Option<i64>, Option<&String>, Option<i32>) {
        let d = &self.destination;
        (d.host.as_str(), d.port.as_ref().and_then(|p| p.number), d.subset.as_ref(), self.weight)
    }
}

/// Weighted clusters for the destinations of `tcp`/`tls` routes.
pub(super) fn l4_destinations(
    scope: &Scope<'_>,
    vs_ns: &str,
    port: u16,
    routes: Option<&Vec<impl L4Route>>,
) -> Vec<(String, u32)> {
    let dests: Vec<_> = routes.into_iter().flatten().map(L4Route::parts).collect();
    let all_unset = dests.iter().all(|d| d.3.unwrap_or(0) == 0);
    dests
        .into_iter()
        .filter_map(|(host, p, subset, weight)| {
            let host = spar_model::resolve_host(host, vs_ns, &scope.snap.mesh.domain);
            let p = p.and_then(|n| u16::try_from(n).ok()).unwrap_or(port);
            let w = if all_unset { 1 } else { u32::try_from(weight.unwrap_or(0)).ok().filter(|w| *w > 0)? };
            Some((scope.route_to(outbound_cluster_name(p, subset.map_or("", String::as_str), &host)), w))
        })
        .collect()
}

/// Whether a `tcp`/`tls` match (of a VirtualService in `vs_ns`) applies to this proxy,
/// listener port and binding.
#[allow(clippy::too_many_arguments)]
pub(super) fn l4_match_applies(
    scope: &Scope<'_>,
    port: u16,
    m_port: Option<i64>,
    labels: Option<&BTreeMap<String, String>>,
    ns: Option<&String>,
    gateways: Option<&Vec<String>>,
    binding: routes::Binding<'_>,
    vs_ns: &str,
) -> bool {
    m_port.is_none_or(|p| p == i64::from(port))
        && labels.into_iter().flatten().all(|(k, v)| scope.proxy.labels.get(k) == Some(v))
        && ns.is_none_or(|ns| *ns == scope.proxy.namespace)
        && binding.admits(gateways, vs_ns)
}

/// `10.0.0.0/8` or a bare address (a /32 or /128).
pub(super) fn cidr(s: &str) -> Option<xds_core::CidrRange> {
    let (ip, len) = s.split_once('/').map_or((s, None), |(a, l)| (a, l.parse::<u32>().ok()));
    let addr: IpAddr = ip.parse().ok()?;
    let len = len.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
    Some(xds_core::CidrRange { address_prefix: addr.to_string(), prefix_len: Some(UInt32Value { value: len }) })
}

/// What a listener on `port` treats `protocol` as: an undeclared protocol is detected,
/// except on the ports istiod never sniffs (SMTP, DNS, MySQL, MongoDB: server-first or
/// not HTTP), which are TCP.
fn listener_protocol(port: u16, protocol: Protocol) -> Protocol {
    match (protocol, port) {
        (Protocol::Unknown, 25 | 53 | 3306 | 27017) => Protocol::Tcp,
        (p, _) => p,
    }
}

/// The protocol of a port two services declare differently, as istiod settles it: HTTP
/// and TCP on one port (or either with an undeclared one) is detected per connection;
/// otherwise the first service's protocol stands.
fn port_protocol_conflict(first: Protocol, other: Protocol) -> Protocol {
    let plain = |p: Protocol| p.is_http() || matches!(p, Protocol::Tcp | Protocol::Unknown);
    if first == other || !plain(first) || !plain(other) || (first.is_http() && other.is_http()) {
        first
    } else {
        Protocol::Unknown
    }
}

/// Envoy's stock HTTP inspector: sets the connection's application protocol to
/// `http/1.0`, `http/1.1` or `h2c` when its first bytes are HTTP.
fn http_inspector() -> xds_listener::ListenerFilter {
    xds_listener::ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(xds_listener::listener_filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector::default(),
        ))),
        ..Default::default()
    }
}

/// A detected port's chains: the HTTP connection manager for connections the inspector
/// found HTTP in (`http/1.1`, `h2c`, as istiod matches them), once per destination the
/// TCP chains match on (the most specific destination wins before the protocol is
/// looked at), then the TCP chains for everything else.
fn sniffed_chains(http: xds_listener::Filter, tcp: Vec<xds_listener::FilterChain>) -> Vec<xds_listener::FilterChain> {
    let mut chains = Vec::new();
    let mut seen = BTreeSet::new();
    for c in &tcp {
        let ranges = c.filter_chain_match.as_ref().map(|m| m.prefix_ranges.clone()).unwrap_or_default();
        if seen.insert(format!("{ranges:?}")) {
            chains.push(xds_listener::FilterChain {
                filter_chain_match: Some(xds_listener::FilterChainMatch {
                    prefix_ranges: ranges,
                    application_protocols: vec!["http/1.1".into(), "h2c".into()],
                    ..Default::default()
                }),
                filters: vec![http.clone()],
                ..Default::default()
            });
        }
    }
    chains.extend(tcp);
    chains
}

/// Filter chains for an opaque TCP port that `services` share. Bound to an address (no
/// capture) the destination is the proxy itself, so the port serves one service, the
/// first by host name. Where traffic is captured, each service with addresses (its
/// virtual IPs, or a headless service's pod addresses) gets its chains matched on the
/// destination the client dialled, as istiod gives each its own `<VIP>_<port>` (or
/// `<podIP>_<port>`) listener; the rest of the port's traffic goes to the first service
/// without addresses, else where unknown destinations go (PassthroughCluster, or
/// BlackHoleCluster under REGISTRY_ONLY).
fn tcp_port_chains(
    scope: &Scope<'_>,
    port: u16,
    services: &[&Service],
    captured: bool,
) -> Vec<xds_listener::FilterChain> {
    if !captured {
        return services.first().map(|svc| tcp_chains(scope, port, svc)).unwrap_or_default();
    }
    let mut chains = Vec::new();
    let mut seen = BTreeSet::new();
    let mut rest = None;
    for svc in services {
        let own = tcp_chains(scope, port, svc);
        let destinations: Vec<xds_core::CidrRange> = if !svc.addresses.is_empty() {
            svc.addresses.iter().filter_map(|a| cidr(a)).collect()
        } else if svc.is_headless() {
            svc.endpoints.iter().filter_map(|e| e.ip()).filter_map(|ip| cidr(&ip.to_string())).collect()
        } else {
            Vec::new()
        };
        if destinations.is_empty() {
            rest.get_or_insert(own);
            continue;
        }
        for mut c in own {
            let m = c.filter_chain_match.get_or_insert_with(Default::default);
            if m.prefix_ranges.is_empty() {
                m.prefix_ranges = destinations.clone();
            }
            // Envoy refuses two chains with the same match; the first service keeps it.
            if seen.insert(format!("{m:?}")) {
                chains.push(c);
            }
        }
    }
    let rest = rest.unwrap_or_else(|| {
        let cluster = if scope.registry_only { BLACKHOLE_CLUSTER } else { PASSTHROUGH_CLUSTER };
        vec![xds_listener::FilterChain {
            filters: vec![tcp_proxy(scope, cluster.into(), cluster.into())],
            ..Default::default()
        }]
    });
    for c in rest {
        if seen.insert(format!("{:?}", c.filter_chain_match.clone().unwrap_or_default())) {
            chains.push(c);
        }
    }
    chains
}

/// Filter chains for an opaque TCP port: the service's VirtualService `tcp` rules in
/// order (a rule with `destinationSubnets` gets its own chain), else its own cluster.
fn tcp_chains(scope: &Scope<'_>, port: u16, svc: &Service) -> Vec<xds_listener::FilterChain> {
    let mut chains = Vec::new();
    let mut default_set = false;
    if let Some(vs) = scope.snap.virtual_services_for(&scope.proxy.namespace, &svc.hostname).next() {
        for rule in vs.spec.tcp.iter().flatten() {
            let dests = l4_destinations(scope, &vs.namespace, port, rule.route.as_ref());
            if dests.is_empty() {
                continue;
            }
            let matches: Vec<_> = rule.r#match.iter().flatten().collect();
            let applicable: Vec<_> = matches
                .iter()
                .filter(|m| {
                    l4_match_applies(
                        scope,
                        port,
                        m.port,
                        m.source_labels.as_ref(),
                        m.source_namespace.as_ref(),
                        m.gateways.as_ref(),
                        routes::Binding::Mesh,
                        &vs.namespace,
                    )
                })
                .collect();
            if !matches.is_empty() && applicable.is_empty() {
                continue;
            }
            let subnets: Vec<_> = applicable
                .iter()
                .flat_map(|m| m.destination_subnets.iter().flatten())
                .filter_map(|s| cidr(s))
                .collect();
            let stat = format!("outbound|{port}||{}", svc.hostname);
            if subnets.is_empty() {
                if !default_set {
                    chains.push(xds_listener::FilterChain {
                        filters: vec![tcp_proxy_to(scope, stat, dests)],
                        ..Default::default()
                    });
                    default_set = true;
                }
            } else {
                chains.insert(
                    0,
                    xds_listener::FilterChain {
                        filter_chain_match: Some(xds_listener::FilterChainMatch {
                            prefix_ranges: subnets,
                            ..Default::default()
                        }),
                        filters: vec![tcp_proxy_to(scope, stat, dests)],
                        ..Default::default()
                    },
                );
            }
        }
    }
    if !default_set {
        let cluster = outbound_cluster_name(port, "", &svc.hostname);
        chains.push(xds_listener::FilterChain {
            filters: vec![tcp_proxy(scope, cluster.clone(), cluster)],
            ..Default::default()
        });
    }
    chains
}

/// Filter chains for a TLS port, by SNI.
fn tls_chains(scope: &Scope<'_>, port: u16, services: &[&Service]) -> Vec<xds_listener::FilterChain> {
    let mut chains = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut chain = |names: Vec<String>,
                     dests: Vec<(String, u32)>,
                     stat: String,
                     dynamic: bool,
                     chains: &mut Vec<xds_listener::FilterChain>| {
        let names: Vec<String> = names.into_iter().filter(|n| taken.insert(n.clone())).collect();
        if names.is_empty() || dests.is_empty() {
            return;
        }
        // DYNAMIC_DNS: the SNI names the host to resolve for the dynamic forward proxy.
        let mut filters = if dynamic { vec![sni_dynamic_dns_filter(port)] } else { Vec::new() };
        filters.push(tcp_proxy_to(scope, stat, dests));
        chains.push(xds_listener::FilterChain {
            filter_chain_match: Some(xds_listener::FilterChainMatch {
                server_names: names,
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters,
            ..Default::default()
        });
    };
    for svc in services {
        let dynamic = svc.resolution == Resolution::DynamicDns;
        let stat = format!("outbound|{port}||{}", svc.hostname);
        let mut routed = false;
        if let Some(vs) = scope.snap.virtual_services_for(&scope.proxy.namespace, &svc.hostname).next() {
            for rule in vs.spec.tls.iter().flatten() {
                let dests = l4_destinations(scope, &vs.namespace, port, rule.route.as_ref());
                for m in &rule.r#match {
                    if l4_match_applies(
                        scope,
                        port,
                        m.port,
                        m.source_labels.as_ref(),
                        m.source_namespace.as_ref(),
                        m.gateways.as_ref(),
                        routes::Binding::Mesh,
                        &vs.namespace,
                    ) {
                        chain(m.sni_hosts.clone(), dests.clone(), stat.clone(), dynamic, &mut chains);
                        routed = true;
                    }
                }
            }
        }
        if !routed {
            chain(
                vec![svc.hostname.clone()],
                vec![(outbound_cluster_name(port, "", &svc.hostname), 1)],
                stat,
                dynamic,
                &mut chains,
            );
        }
    }
    chains
}

fn thresholds() -> xds_cluster::CircuitBreakers {
    let u = |v| Some(UInt32Value { value: v });
    xds_cluster::CircuitBreakers {
        thresholds: vec![xds_cluster::circuit_breakers::Thresholds {
            max_connections: u(UNLIMITED),
            max_pending_requests: u(UNLIMITED),
            max_requests: u(UNLIMITED),
            max_retries: u(UNLIMITED),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn http2_options() -> std::collections::HashMap<String, Any> {
    use xds_upstream_http::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let opts = xds_upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(xds_core::Http2ProtocolOptions::default())),
        })),
        ..Default::default()
    };
    std::collections::HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack_any(opts),
    )])
}

/// A port whose protocol is detected: HTTP requests go upstream in the protocol the
/// client used (HTTP/1.1 or HTTP/2), as istiod configures such clusters.
fn downstream_protocol_options() -> std::collections::HashMap<String, Any> {
    use xds_upstream_http::http_protocol_options::{UpstreamProtocolOptions, UseDownstreamHttpConfig};
    let opts = xds_upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(xds_core::Http1ProtocolOptions::default()),
                http2_protocol_options: Some(xds_core::Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    std::collections::HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack_any(opts),
    )])
}

fn base_cluster(name: String, protocol: Protocol) -> xds_cluster::Cluster {
    xds_cluster::Cluster {
        name,
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        circuit_breakers: Some(thresholds()),
        typed_extension_protocol_options: if protocol.is_http2() {
            http2_options()
        } else if protocol == Protocol::Unknown {
            downstream_protocol_options()
        } else {
            std::collections::HashMap::new()
        },
        ..Default::default()
    }
}

/// Mutual TLS to mesh workloads, as istiod decides it for a proxy that holds a
/// certificate: DestinationRule `ISTIO_MUTUAL` for every endpoint; no TLS setting (auto
/// mTLS) for the endpoints labelled `tlsMode: istio` only (transport socket match), plain
/// text to the rest; `DISABLE`, `SIMPLE` and `MUTUAL` as written.
fn istio_mtls(
    scope: &Scope<'_>,
    svc: &Service,
    port: u16,
    subset: &str,
    labels: &BTreeMap<String, String>,
    policy: Option<&spar_api::istio::destination_rule::DestinationRuleTrafficPolicy>,
    c: &mut xds_cluster::Cluster,
) {
    use spar_api::istio::destination_rule::DestinationRuleTrafficPolicyTlsMode as Mode;
    let Some(me) = &scope.proxy.identity else { return };
    let mode = policy.and_then(|p| p.tls.as_ref()).and_then(|t| t.mode.clone());
    if svc.mesh_external && mode.is_none() {
        return;
    }
    let td = mtls::trust_domain(me);
    let mut sans: Vec<String> = svc
        .endpoints
        .iter()
        .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)) && !e.service_account.is_empty())
        .map(|e| format!("spiffe://{td}/ns/{}/sa/{}", svc.namespace, e.service_account))
        .collect();
    sans.sort();
    sans.dedup();
    // The DestinationRule's `sni` and `subjectAltNames` replace istiod's defaults (the
    // egress-gateway pattern sends the external host's name as SNI to the gateway).
    let tls = policy.and_then(|p| p.tls.as_ref());
    if let Some(alt) = tls.and_then(|t| t.subject_alt_names.clone()).filter(|v| !v.is_empty()) {
        sans = alt;
    }
    let sni = tls
        .and_then(|t| t.sni.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| mtls::sni(port, subset, &svc.hostname));
    let socket = mtls::upstream(sni, &sans);
    match mode {
        Some(Mode::IstioMutual) => c.transport_socket = Some(socket),
        None => {
            c.transport_socket_matches = vec![
                xds_cluster::cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(tls_mode_metadata()),
                    transport_socket: Some(socket),
                },
                xds_cluster::cluster::TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(envoy_types::pb::google::protobuf::Struct::default()),
                    transport_socket: Some(xds_core::TransportSocket {
                        name: "envoy.transport_sockets.raw_buffer".into(),
                        config_type: Some(xds_core::transport_socket::ConfigType::TypedConfig(pack_any(
                            envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer::default(),
                        ))),
                    }),
                },
            ];
        }
        Some(Mode::Disable | Mode::Simple | Mode::Mutual) => {}
    }
}

/// An ORIGINAL_DST cluster's hosts carry no metadata, so the `tlsMode` transport socket
/// match cannot pick Istio mutual TLS for them: when every endpoint (of the subset) has
/// a sidecar, mutual TLS is the cluster's socket; otherwise plaintext, as a client
/// without auto mTLS would send.
fn original_dst_mtls(svc: &Service, labels: &BTreeMap<String, String>, c: &mut xds_cluster::Cluster) {
    let Some(tls) = c.transport_socket_matches.iter().find(|m| m.name == "tlsMode-istio") else { return };
    let mut endpoints = svc.endpoints.iter().filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
    let mut any = false;
    if endpoints.all(|e| {
        any = true;
        e.istio_mtls
    }) && any
    {
        c.transport_socket = tls.transport_socket.clone();
    }
    c.transport_socket_matches.clear();
}

/// `{tlsMode: istio}`, the transport-socket-match label of endpoints with sidecars.
fn tls_mode_metadata() -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Value, value::Kind};
    envoy_types::pb::google::protobuf::Struct {
        fields: std::collections::HashMap::from([(
            "tlsMode".to_string(),
            Value { kind: Some(Kind::StringValue("istio".into())) },
        )]),
    }
}

/// Endpoints of `svc` for service port `port`, restricted to `labels` (a subset).
fn load_assignment(
    cluster: &str,
    svc: &Service,
    port: u16,
    labels: &BTreeMap<String, String>,
) -> xds_endpoint::ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<xds_endpoint::LbEndpoint>> = BTreeMap::new();
    for ep in &svc.endpoints {
        if !labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)) {
            continue;
        }
        let Some(ep_port) = ep.ports.get(&port).copied() else { continue };
        let health = if ep.ready { xds_core::HealthStatus::Healthy } else { xds_core::HealthStatus::Unhealthy };
        let metadata = ep.istio_mtls.then(|| xds_core::Metadata {
            filter_metadata: std::collections::HashMap::from([(
                "envoy.transport_socket_match".to_string(),
                tls_mode_metadata(),
            )]),
            ..Default::default()
        });
        by_locality.entry(ep.locality.as_str()).or_default().push(xds_endpoint::LbEndpoint {
            host_identifier: Some(xds_endpoint::lb_endpoint::HostIdentifier::Endpoint(xds_endpoint::Endpoint {
                address: Some(socket_address(&ep.address, u32::from(ep_port))),
                ..Default::default()
            })),
            health_status: health as i32,
            load_balancing_weight: Some(UInt32Value { value: ep.weight.max(1) }),
            metadata,
        });
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(loc, lb_endpoints)| {
            let mut parts = loc.splitn(3, '/');
            let locality = xds_core::Locality {
                region: parts.next().unwrap_or_default().into(),
                zone: parts.next().unwrap_or_default().into(),
                sub_zone: parts.next().unwrap_or_default().into(),
            };
            let weight = lb_endpoints.iter().filter_map(|e| e.load_balancing_weight.as_ref()).map(|w| w.value).sum();
            xds_endpoint::LocalityLbEndpoints {
                locality: (!loc.is_empty()).then_some(locality),
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                ..Default::default()
            }
        })
        .collect();
    xds_endpoint::ClusterLoadAssignment { cluster_name: cluster.to_string(), endpoints, ..Default::default() }
}

/// Istio's locality-aware load balancing, for a client at `client` (region/zone/subzone):
/// with `distribute`, locality weights from the first rule whose `from` matches; else
/// failover priorities (same subzone, same zone, same region, the `failover` target
/// region, the rest). Istio applies it only with outlier detection, which is how
/// unhealthy localities are left.
fn apply_locality(
    cla: &mut xds_endpoint::ClusterLoadAssignment,
    client: &str,
    setting: Option<&spar_api::istio::destination_rule::DestinationRuleTrafficPolicyLoadBalancerLocalityLbSetting>,
) {
    if client.is_empty() || setting.is_some_and(|s| s.enabled == Some(false)) {
        return;
    }
    let loc_of = |l: &Option<xds_core::Locality>| {
        l.as_ref().map(|l| [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()].join("/")).unwrap_or_default()
    };
    let glob = |pattern: &str, loc: &str| {
        let (p, l): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), loc.split('/').collect());
        p.iter().enumerate().all(|(i, seg)| *seg == "*" || l.get(i).is_some_and(|x| x == seg))
    };
    if let Some(rule) = setting
        .and_then(|s| s.distribute.as_ref())
        .and_then(|d| d.iter().find(|r| r.from.as_deref().is_some_and(|f| glob(f, client))))
    {
        let to = rule.to.clone().unwrap_or_default();
        cla.endpoints.retain_mut(|e| {
            let loc = loc_of(&e.locality);
            match to.iter().find(|(pattern, _)| glob(pattern, &loc)) {
                Some((_, w)) if *w > 0 => {
                    e.load_balancing_weight = Some(UInt32Value { value: u32::try_from(*w).unwrap_or(1) });
                    true
                }
                _ => false,
            }
        });
        return;
    }
    let c: Vec<&str> = client.split('/').collect();
    let failover_to: Vec<String> = setting
        .and_then(|s| s.failover.as_ref())
        .into_iter()
        .flatten()
        .filter(|f| f.from.as_deref() == c.first().copied())
        .filter_map(|f| f.to.clone())
        .collect();
    for e in &mut cla.endpoints {
        let loc = loc_of(&e.locality);
        let l: Vec<&str> = loc.split('/').collect();
        let same = |n: usize| (0..n).all(|i| c.get(i).is_some_and(|x| !x.is_empty() && l.get(i) == Some(x)));
        e.priority = if same(3) {
            0
        } else if same(2) {
            1
        } else if same(1) {
            2
        } else if l.first().is_some_and(|r| failover_to.iter().any(|t| t == r)) {
            3
        } else {
            4
        };
    }
    // Envoy wants priorities without gaps.
    let mut used: Vec<u32> = cla.endpoints.iter().map(|e| e.priority).collect();
    used.sort_unstable();
    used.dedup();
    for e in &mut cla.endpoints {
        e.priority = u32::try_from(used.iter().position(|p| *p == e.priority).unwrap_or(0)).unwrap_or(0);
    }
}

/// Outbound clusters (and their EDS load assignments) for every imported service port,
/// plus one per DestinationRule subset.
pub fn clusters(scope: &Scope<'_>, out: &mut ProxyResources) {
    catch_all_clusters(out);
    service_clusters(scope, &scope.services, out);
}

/// The outbound clusters of `services` (every port, every DestinationRule subset) and
/// the load assignments of those discovered by EDS.
pub fn service_clusters(scope: &Scope<'_>, services: &[&std::sync::Arc<Service>], out: &mut ProxyResources) {
    for svc in services {
        let dr = scope.snap.destination_rule_for(&scope.proxy.namespace, &scope.proxy.labels, svc);
        let mut subsets: Vec<(String, BTreeMap<String, String>)> = vec![(String::new(), BTreeMap::new())];
        for s in dr.iter().flat_map(|dr| dr.spec.subsets.iter().flatten()) {
            subsets.push((s.name.clone(), s.labels.clone().unwrap_or_default()));
        }
        for port in &svc.ports {
            for (subset, labels) in &subsets {
                let name = outbound_cluster_name(port.port, subset, &svc.hostname);
                let mut c = base_cluster(name.clone(), port.protocol);
                if scope.tracing.grpc_clusters.contains(&name) {
                    // The tracer's OTLP/gRPC export needs HTTP/2 to the collector.
                    c.typed_extension_protocol_options = http2_options();
                }
                // A headless service is reached at the address the client dialled
                // (ORIGINAL_DST) where traffic is captured; a gateway, or a sidecar
                // without capture, has no such address and balances over the
                // endpoints, as istiod does for gateways.
                let by_eds = svc.resolution == Resolution::Static
                    || (svc.is_headless()
                        && (scope.proxy.kind == spar_model::ProxyKind::Router
                            || scope.proxy.interception == InterceptionMode::None));
                match svc.resolution {
                    Resolution::Static | Resolution::Passthrough if by_eds => {
                        c.cluster_discovery_type = Some(xds_cluster::cluster::ClusterDiscoveryType::Type(
                            xds_cluster::cluster::DiscoveryType::Eds as i32,
                        ));
                        // No `service_name`: Envoy asks EDS for the cluster's own name
                        // then, which is what istiod spells out again (50-odd bytes per
                        // cluster, 200 KB of a 1k-service mesh's CDS per proxy).
                        c.eds_cluster_config = Some(xds_cluster::cluster::EdsClusterConfig {
                            eds_config: Some(ads()),
                            service_name: String::new(),
                        });
                    }
                    Resolution::Dns | Resolution::DnsRoundRobin => {
                        let t = if svc.resolution == Resolution::Dns {
                            xds_cluster::cluster::DiscoveryType::StrictDns
                        } else {
                            xds_cluster::cluster::DiscoveryType::LogicalDns
                        };
                        c.cluster_discovery_type = Some(xds_cluster::cluster::ClusterDiscoveryType::Type(t as i32));
                        c.dns_lookup_family = xds_cluster::cluster::DnsLookupFamily::V4Preferred as i32;
                        c.load_assignment = Some(load_assignment(&name, svc, port.port, labels));
                    }
                    Resolution::Static | Resolution::Passthrough => {
                        c.cluster_discovery_type = Some(xds_cluster::cluster::ClusterDiscoveryType::Type(
                            xds_cluster::cluster::DiscoveryType::OriginalDst as i32,
                        ));
                        c.lb_policy = xds_cluster::cluster::LbPolicy::ClusterProvided as i32;
                    }
                    Resolution::DynamicDns => {
                        // As istiod: no subset clusters (the hosts are whatever requests name).
                        if !subset.is_empty() {
                            continue;
                        }
                        c.cluster_discovery_type = Some(dynamic_dns_cluster_type());
                    }
                }
                let mut effective = dr.map(|dr| policy::effective(&dr.spec, subset, port.port));
                if let Some(p) = effective.as_mut() {
                    if let Some(tls) = p.tls.as_mut()
                        && let Some(name) = tls.credential_name.clone().filter(|n| !n.is_empty())
                    {
                        use spar_api::istio::destination_rule::DestinationRuleTrafficPolicyTlsMode as Mode;
                        let needs = credentials::Needs {
                            key_pair: matches!(tls.mode, Some(Mode::Mutual)),
                            ca: !tls.insecure_skip_verify.unwrap_or(false),
                        };
                        if let Err(e) = credentials::load(scope, &name, needs, None, out) {
                            // Without the Secret the cluster uses the certificate paths (or
                            // the system's roots) rather than wait for secrets that will
                            // never come. istiod applies credentialName at sidecars only for
                            // a DestinationRule with a workloadSelector, so that is when a
                            // sidecar hears about it; gateways always do.
                            tls.credential_name = None;
                            let selected = dr.is_some_and(|d| d.spec.workload_selector.is_some());
                            if let Some(dr) = dr
                                && (scope.proxy.kind == spar_model::ProxyKind::Router || selected)
                            {
                                let w = format!("{}: credentialName {name}: {e}", dr.label("DestinationRule"));
                                if !out.warnings.contains(&w) {
                                    out.warnings.push(w);
                                }
                            }
                        }
                    }
                    policy::apply(p, &mut c, port.protocol, &svc.hostname);
                }
                if svc.resolution == Resolution::DynamicDns {
                    // Envoy refuses a dynamic forward proxy cluster balanced any other way.
                    c.lb_policy = xds_cluster::cluster::LbPolicy::ClusterProvided as i32;
                }
                istio_mtls(scope, svc, port.port, subset, labels, effective.as_ref(), &mut c);
                if svc.is_headless() && !by_eds {
                    original_dst_mtls(svc, labels, &mut c);
                }
                if c.eds_cluster_config.is_some() {
                    let mut cla = load_assignment(&name, svc, port.port, labels);
                    if let Some(p) = effective.as_ref().filter(|p| p.outlier_detection.is_some()) {
                        apply_locality(
                            &mut cla,
                            &scope.proxy.locality,
                            p.load_balancer.as_ref().and_then(|lb| lb.locality_lb_setting.as_ref()),
                        );
                    }
                    out.insert(type_url::ENDPOINT, name.clone(), &cla);
                }
                out.insert(type_url::CLUSTER, name, &c);
            }
        }
    }
}

/// The DNS cache every dynamic forward proxy cluster and filter of a proxy shares: the
/// cluster and the filter that feeds it must name the same cache with the same settings.
pub(super) const DYNAMIC_DNS_CACHE: &str = "outbound_dynamic_dns_cache";

fn dynamic_dns_cache() -> envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig {
    envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig {
        name: DYNAMIC_DNS_CACHE.into(),
        dns_lookup_family: xds_cluster::cluster::DnsLookupFamily::V4Preferred as i32,
        ..Default::default()
    }
}

/// ServiceEntry `resolution: DYNAMIC_DNS`: Envoy's dynamic forward proxy cluster, which
/// resolves each request's host (set by [`dynamic_dns_filter`]) when it is made.
fn dynamic_dns_cluster_type() -> xds_cluster::cluster::ClusterDiscoveryType {
    use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{ClusterConfig, cluster_config};
    xds_cluster::cluster::ClusterDiscoveryType::ClusterType(xds_cluster::cluster::CustomClusterType {
        name: "envoy.clusters.dynamic_forward_proxy".into(),
        typed_config: Some(pack_any(ClusterConfig {
            cluster_implementation_specifier: Some(cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(
                dynamic_dns_cache(),
            )),
            ..Default::default()
        })),
    })
}

/// Puts [`dynamic_dns_filter`] before the router of `filters` when the proxy sees a
/// DYNAMIC_DNS service (only then: other proxies' connection managers stay as they were).
pub(super) fn add_dynamic_dns_filter(scope: &Scope<'_>, filters: &mut Vec<xds_hcm::HttpFilter>) {
    if scope.services.iter().any(|s| s.resolution == Resolution::DynamicDns) {
        let router = filters.len().saturating_sub(1);
        filters.insert(router, dynamic_dns_filter());
    }
}

/// The network filter that resolves a TLS connection's SNI (on `port`) for a dynamic
/// forward proxy cluster, as istiod does for DYNAMIC_DNS TLS ports.
fn sni_dynamic_dns_filter(port: u16) -> xds_listener::Filter {
    use envoy_types::pb::envoy::extensions::filters::network::sni_dynamic_forward_proxy::v3::{
        FilterConfig, filter_config,
    };
    typed_filter(
        "envoy.filters.network.sni_dynamic_forward_proxy",
        pack_any(FilterConfig {
            dns_cache_config: Some(dynamic_dns_cache()),
            port_specifier: Some(filter_config::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        }),
    )
}

/// The HTTP filter that resolves the host of requests routed to a dynamic forward proxy
/// cluster (it lets requests to other clusters pass untouched).
pub(super) fn dynamic_dns_filter() -> xds_hcm::HttpFilter {
    use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::{FilterConfig, filter_config};
    http_filter(
        "envoy.filters.http.dynamic_forward_proxy",
        pack_any(FilterConfig {
            implementation_specifier: Some(filter_config::ImplementationSpecifier::DnsCacheConfig(dynamic_dns_cache())),
            ..Default::default()
        }),
    )
}

/// Where a Sidecar `defaultEndpoint` sends traffic: `127.0.0.1:PORT` and `[::1]:PORT`
/// to loopback, `0.0.0.0:PORT` and `[::]:PORT` to the workload's own IP.
fn default_endpoint(ep: &str, instance_ip: Option<IpAddr>) -> Option<(String, u16)> {
    let (host, port) = ep.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_matches(['[', ']']);
    let ip: IpAddr = host.parse().ok()?;
    let ip = if ip.is_unspecified() { instance_ip.unwrap_or(ip) } else { ip };
    Some((ip.to_string(), port))
}

/// One inbound port: what the proxy accepts and where it forwards.
struct InboundPort {
    port: u16,
    protocol: Protocol,
    /// Bind address (NONE mode).
    bind: String,
    endpoint: (String, u16),
}

/// Inbound ports: the Sidecar's `ingress` listeners when it has some; else, when traffic
/// is captured, every port of every service this workload is an endpoint of (forwarded
/// to the workload's own IP on that port, as istiod does since 1.10).
fn inbound_ports(scope: &Scope<'_>) -> Vec<InboundPort> {
    let instance_ip = scope.proxy.ips.first().copied();
    let mut out = Vec::new();
    for ing in scope.sidecar.iter().flat_map(|s| s.spec.ingress.iter().flatten()) {
        let Some(port) = u16::try_from(ing.port.number.unwrap_or_default()).ok().filter(|p| *p > 0) else { continue };
        let protocol = ing
            .port
            .protocol
            .as_deref()
            .map_or_else(|| Protocol::from_port(ing.port.name.as_deref().unwrap_or(""), None), Protocol::parse);
        let Some(endpoint) = ing.default_endpoint.as_deref().and_then(|e| default_endpoint(e, instance_ip)) else {
            continue;
        };
        let bind = ing
            .bind
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| instance_ip.map(|i| i.to_string()))
            .unwrap_or_else(|| "0.0.0.0".into());
        out.push(InboundPort { port, protocol, bind, endpoint });
    }
    if !out.is_empty() || scope.proxy.interception == InterceptionMode::None {
        return out;
    }
    let Some(ip) = instance_ip else { return out };
    let ip_s = ip.to_string();
    let mut seen = BTreeSet::new();
    for svc in scope.snap.services.values() {
        for ep in svc.endpoints.iter().filter(|e| e.address == ip_s) {
            for sp in &svc.ports {
                let Some(target) = ep.ports.get(&sp.port).copied() else { continue };
                if seen.insert(target) {
                    out.push(InboundPort {
                        port: target,
                        protocol: sp.protocol,
                        bind: "0.0.0.0".into(),
                        endpoint: (ip_s.clone(), target),
                    });
                }
            }
        }
    }
    out
}

/// Inbound listeners and clusters. Without capture (`INTERCEPTION_MODE=NONE`) each port
/// is its own listener on the workload's IP (or `ingress[].bind`); with capture, each
/// port is a set of filter chains (by destination port) of `virtualInbound` (15006),
/// beside `virtualOutbound` (15001) and the passthrough chains.
pub fn inbound(scope: &Scope<'_>, out: &mut ProxyResources) {
    let capture = scope.proxy.interception != InterceptionMode::None;
    let mut virtual_chains = Vec::new();
    for ip in inbound_ports(scope) {
        let InboundPort { port, protocol, bind, endpoint: (ep_ip, ep_port) } = ip;
        let cluster_name = format!("inbound|{port}||");
        let mut c = base_cluster(cluster_name.clone(), protocol);
        c.cluster_discovery_type =
            Some(xds_cluster::cluster::ClusterDiscoveryType::Type(xds_cluster::cluster::DiscoveryType::Static as i32));
        c.load_assignment = Some(xds_endpoint::ClusterLoadAssignment {
            cluster_name: cluster_name.clone(),
            endpoints: vec![xds_endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![xds_endpoint::LbEndpoint {
                    host_identifier: Some(xds_endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        xds_endpoint::Endpoint {
                            address: Some(socket_address(&ep_ip, u32::from(ep_port))),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        if capture {
            // From 127.0.0.6, which the capture rules let through: the proxy reaching its
            // own workload's IP over lo would otherwise be captured again (istiod does the same).
            c.upstream_bind_config = Some(xds_core::BindConfig {
                source_address: Some(xds_core::SocketAddress {
                    address: "127.0.0.6".into(),
                    port_specifier: Some(xds_core::socket_address::PortSpecifier::PortValue(0)),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        out.insert(type_url::CLUSTER, cluster_name.clone(), &c);
        let stat = if capture { format!("inbound_0.0.0.0_{port}") } else { format!("inbound_{bind}_{port}") };
        let mut chains = inbound_chains(scope, port, protocol, &cluster_name, &stat, &mut out.warnings);
        if capture {
            for ch in &mut chains {
                ch.filter_chain_match.get_or_insert_with(Default::default).destination_port =
                    Some(UInt32Value { value: u32::from(port) });
            }
            virtual_chains.extend(chains);
            continue;
        }
        let name = format!("{bind}_{port}");
        let mut l = listener(name.clone(), &bind, port, tcp_proxy(scope, String::new(), String::new()), true);
        // Chains told apart by transport protocol (STRICT's single TLS chain too) need
        // the TLS inspector: without it no chain matches and every connection is closed.
        if chains.iter().any(|c| c.filter_chain_match.as_ref().is_some_and(|m| !m.transport_protocol.is_empty())) {
            l.listener_filters = vec![tls_inspector()];
        }
        l.filter_chains = chains;
        l.traffic_direction = xds_core::TrafficDirection::Inbound as i32;
        out.insert(type_url::LISTENER, name, &l);
    }
    if capture && scope.proxy.kind == spar_model::ProxyKind::Sidecar {
        capture_listeners(scope, virtual_chains, out);
    }
    jwks_clusters(scope, out);
}

/// Clusters for the JWKS servers of the RequestAuthentications that apply (`jwksUri`).
pub(super) fn jwks_clusters(scope: &Scope<'_>, out: &mut ProxyResources) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
    use xds_cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let (_, sources) = jwt::http_filter(&jwt::applicable(scope.snap, &scope.proxy.namespace, &scope.proxy.labels));
    for src in sources {
        let is_ip = src.host.parse::<IpAddr>().is_ok();
        let mut c = base_cluster(src.cluster.clone(), Protocol::Http);
        let kind = if is_ip { DiscoveryType::Static } else { DiscoveryType::StrictDns };
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(kind as i32));
        c.load_assignment = Some(xds_endpoint::ClusterLoadAssignment {
            cluster_name: src.cluster.clone(),
            endpoints: vec![xds_endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![xds_endpoint::LbEndpoint {
                    host_identifier: Some(xds_endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        xds_endpoint::Endpoint {
                            address: Some(socket_address(&src.host, u32::from(src.port))),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        if src.tls {
            // Verified against the system's trust store, as any HTTPS client would.
            let validation = xds_tls::CertificateValidationContext {
                trusted_ca: Some(xds_core::DataSource {
                    specifier: Some(xds_core::data_source::Specifier::Filename(policy::SYSTEM_ROOTS.into())),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let ctx = xds_tls::UpstreamTlsContext {
                sni: src.host.clone(),
                common_tls_context: Some(xds_tls::CommonTlsContext {
                    validation_context_type: Some(
                        xds_tls::common_tls_context::ValidationContextType::ValidationContext(validation),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            };
            c.transport_socket = Some(xds_core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(xds_core::transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
            });
        }
        out.insert(type_url::CLUSTER, src.cluster, &c);
    }
}

/// Inbound filter chains for one port, per PeerAuthentication: STRICT takes mutual TLS
/// only, PERMISSIVE both (told apart by the TLS inspector), DISABLE plain text only. A
/// proxy without a certificate cannot terminate mTLS, so it serves plain text unless
/// STRICT says otherwise.
fn inbound_chains(
    scope: &Scope<'_>,
    port: u16,
    protocol: Protocol,
    cluster_name: &str,
    stat: &str,
    warnings: &mut Vec<String>,
) -> Vec<xds_listener::FilterChain> {
    let mode = scope.snap.mtls_mode(&scope.proxy.namespace, &scope.proxy.labels, port);
    let policies = authz::applicable(scope.snap, &scope.proxy.namespace, &scope.proxy.labels);
    let td = scope.proxy.identity.as_deref().map_or("cluster.local", mtls::trust_domain);
    let rbac = authz::build(&policies, td, !protocol.is_http(), &|name| authz::resolve_provider(scope, name));
    rbac.note_denials(warnings);
    let (jwt, _) = jwt::http_filter(&jwt::applicable(scope.snap, &scope.proxy.namespace, &scope.proxy.labels));
    let make_filter = |tls: bool| {
        if protocol.is_http() {
            let rc = xds_route::RouteConfiguration {
                name: cluster_name.to_string(),
                virtual_hosts: vec![xds_route::VirtualHost {
                    name: format!("inbound|http|{port}"),
                    domains: vec!["*".into()],
                    routes: vec![routes::to_cluster_route("default", cluster_name)],
                    ..Default::default()
                }],
                validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
                ..Default::default()
            };
            // CUSTOM, then JWT validation, so that DENY and ALLOW see the request
            // principal and claims (istiod's order).
            let auth = authz::http_filters(&rbac, jwt.clone());
            vec![inbound_hcm(scope, stat.to_string(), rc, tls, auth)]
        } else {
            let mut filters = authz::network_filters(&rbac);
            filters.push(tcp_proxy(scope, cluster_name.to_string(), cluster_name.to_string()));
            filters
        }
    };
    let has_cert = scope.proxy.identity.is_some();
    let tls_chain = || xds_listener::FilterChain {
        name: format!("{port}_mtls"),
        filter_chain_match: Some(xds_listener::FilterChainMatch {
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        filters: make_filter(true),
        transport_socket: Some(mtls::downstream()),
        ..Default::default()
    };
    let plain_chain = || xds_listener::FilterChain {
        name: format!("{port}_plaintext"),
        filter_chain_match: Some(xds_listener::FilterChainMatch {
            transport_protocol: "raw_buffer".into(),
            ..Default::default()
        }),
        filters: make_filter(false),
        ..Default::default()
    };
    match mode {
        MtlsMode::Strict => vec![tls_chain()],
        MtlsMode::Permissive if has_cert => vec![tls_chain(), plain_chain()],
        MtlsMode::Permissive | MtlsMode::Disable => {
            let mut c = plain_chain();
            c.filter_chain_match = None;
            vec![c]
        }
    }
}

/// Where inbound traffic to ports no service declares goes (original destination).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";

/// `virtualOutbound` (15001: captured outbound connections are handed to the listener for
/// their original destination, else passed through or refused) and `virtualInbound`
/// (15006: captured inbound connections, by destination port).
fn capture_listeners(scope: &Scope<'_>, mut inbound_chains: Vec<xds_listener::FilterChain>, out: &mut ProxyResources) {
    use xds_cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let original_dst = xds_listener::ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(xds_listener::listener_filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst::default(),
        ))),
        ..Default::default()
    };
    let catch_all = if scope.registry_only { BLACKHOLE_CLUSTER } else { PASSTHROUGH_CLUSTER };
    let vo = xds_listener::Listener {
        name: "virtualOutbound".into(),
        address: Some(socket_address("0.0.0.0", 15001)),
        use_original_dst: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        filter_chains: vec![xds_listener::FilterChain {
            name: "virtualOutbound-catchall-tcp".into(),
            filters: vec![tcp_proxy(scope, catch_all.into(), catch_all.into())],
            ..Default::default()
        }],
        traffic_direction: xds_core::TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    out.insert(type_url::LISTENER, "virtualOutbound", &vo);
    let passthrough = xds_cluster::Cluster {
        name: INBOUND_PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        ..Default::default()
    };
    out.insert(type_url::CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, &passthrough);
    // Ports no service declares are passed through as TCP (PERMISSIVE) or, under a
    // STRICT mesh or namespace policy, accepted only over mTLS.
    inbound_chains.push(xds_listener::FilterChain {
        name: "virtualInbound-catchall".into(),
        filters: vec![tcp_proxy(scope, INBOUND_PASSTHROUGH_CLUSTER.into(), INBOUND_PASSTHROUGH_CLUSTER.into())],
        ..Default::default()
    });
    let vi = xds_listener::Listener {
        name: "virtualInbound".into(),
        address: Some(socket_address("0.0.0.0", 15006)),
        listener_filters: vec![original_dst, tls_inspector()],
        filter_chains: inbound_chains,
        traffic_direction: xds_core::TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    out.insert(type_url::LISTENER, "virtualInbound", &vi);
}
