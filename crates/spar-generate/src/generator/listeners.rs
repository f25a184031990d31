//! Outbound listeners: one per egress listener and port, HTTP through the port's
//! routes, TLS by SNI, TCP by destination, and undeclared protocols detected.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xds_hcm;
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;
use spar_model::{InterceptionMode, Protocol, Service};

use super::Scope;
use super::clusters::add_dynamic_dns_filter;
use super::envoy::{ads, http_filters, istio_hcm_defaults, listener, listener_with, tls_inspector, typed_filter};
use super::l4::{tcp_port_chains, tls_chains};
use super::routes;
use super::telemetry::Side;
use crate::resources::{ProxyResources, ResourceType};

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
                out.insert(ResourceType::Route, route_name.clone(), &rc);
                let rds = xds_hcm::http_connection_manager::RouteSpecifier::Rds(xds_hcm::Rds {
                    config_source: Some(ads()),
                    route_config_name: route_name,
                });
                hcm(scope, format!("outbound_{}_{port}", egress.bind), rds)
            };
            if protocol.is_http() {
                let http = outbound_hcm(out);
                let l = listener(name.clone(), &egress.bind, port, http, bind_to_port);
                out.insert(ResourceType::Listener, name, &l);
            } else if matches!(protocol, Protocol::Tls | Protocol::Https) {
                // TLS is routed by SNI: a filter chain per VirtualService `tls` match, and
                // one per service host for the rest.
                let chains = tls_chains(scope, port, &services);
                if chains.is_empty() {
                    continue;
                }
                let mut l = listener_with(name.clone(), &egress.bind, port, chains, bind_to_port);
                l.listener_filters = vec![tls_inspector()];
                out.insert(ResourceType::Listener, name, &l);
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
                out.insert(ResourceType::Listener, name, &l);
            } else if !services.is_empty() {
                let chains = tcp_port_chains(scope, port, &services, !bind_to_port);
                let l = listener_with(name.clone(), &egress.bind, port, chains, bind_to_port);
                out.insert(ResourceType::Listener, name, &l);
            }
        }
    }
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

/// The outbound HTTP connection manager: istiod's defaults, the dynamic forward proxy's
/// filter when the proxy sees a DYNAMIC_DNS service, tracing as a client.
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
