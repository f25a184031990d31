//! The inbound side of a sidecar: listeners and clusters for the ports its workload
//! serves, the capture listeners, and the JWKS clusters of RequestAuthentications.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::endpoint::v3 as xds_endpoint;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;
use spar_model::{InterceptionMode, MtlsMode, Protocol};

use super::Scope;
use super::clusters::base_cluster;
use super::envoy::{
    BLACKHOLE_CLUSTER, CONNECT_TIMEOUT_SECS, PASSTHROUGH_CLUSTER, inbound_hcm, listener_with, socket_address,
    tcp_proxy, tls_inspector,
};
use super::{authz, jwt, mtls, policy, routes};
use crate::resources::{ProxyResources, ResourceType};

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
        out.insert(ResourceType::Cluster, cluster_name.clone(), &c);
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
        // Chains told apart by transport protocol (STRICT's single TLS chain too) need
        // the TLS inspector: without it no chain matches and every connection is closed.
        let inspect =
            chains.iter().any(|c| c.filter_chain_match.as_ref().is_some_and(|m| !m.transport_protocol.is_empty()));
        let mut l = listener_with(name.clone(), &bind, port, chains, true);
        if inspect {
            l.listener_filters = vec![tls_inspector()];
        }
        l.traffic_direction = xds_core::TrafficDirection::Inbound as i32;
        out.insert(ResourceType::Listener, name, &l);
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
        out.insert(ResourceType::Cluster, src.cluster, &c);
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
    out.insert(ResourceType::Listener, "virtualOutbound", &vo);
    let passthrough = xds_cluster::Cluster {
        name: INBOUND_PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        ..Default::default()
    };
    out.insert(ResourceType::Cluster, INBOUND_PASSTHROUGH_CLUSTER, &passthrough);
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
    out.insert(ResourceType::Listener, "virtualInbound", &vi);
}
