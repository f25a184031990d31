//! The L4 side shared by sidecars and gateways: VirtualService `tcp` and `tls`
//! destinations and matches, and the filter chains of TCP and TLS ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::google::protobuf::UInt32Value;
use spar_model::{Resolution, Service};

use super::Scope;
use super::clusters::sni_dynamic_dns_filter;
use super::envoy::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, outbound_cluster_name, tcp_proxy, tcp_proxy_to};
use super::routes;

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

/// Filter chains for an opaque TCP port that `services` share. Bound to an address (no
/// capture) the destination is the proxy itself, so the port serves one service, the
/// first by host name. Where traffic is captured, each service with addresses (its
/// virtual IPs, or a headless service's pod addresses) gets its chains matched on the
/// destination the client dialled, as istiod gives each its own `<VIP>_<port>` (or
/// `<podIP>_<port>`) listener; the rest of the port's traffic goes to the first service
/// without addresses, else where unknown destinations go (PassthroughCluster, or
/// BlackHoleCluster under REGISTRY_ONLY).
pub(super) fn tcp_port_chains(
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
pub(super) fn tcp_chains(scope: &Scope<'_>, port: u16, svc: &Service) -> Vec<xds_listener::FilterChain> {
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
pub(super) fn tls_chains(scope: &Scope<'_>, port: u16, services: &[&Service]) -> Vec<xds_listener::FilterChain> {
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
