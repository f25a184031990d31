//! Outbound clusters and their load assignments: one per service port and
//! DestinationRule subset, with istiod's discovery types, mutual TLS and localities, and
//! the catch-all clusters; for DYNAMIC_DNS, the dynamic forward proxy cluster and the
//! filters that feed it its hosts.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::endpoint::v3 as xds_endpoint;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xds_hcm;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as xds_upstream_http;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;
use spar_model::{InterceptionMode, Protocol, Resolution, Service};

use super::Scope;
use super::envoy::{
    BLACKHOLE_CLUSTER, CONNECT_TIMEOUT_SECS, PASSTHROUGH_CLUSTER, UNLIMITED, ads, http_filter, outbound_cluster_name,
    socket_address, typed_filter,
};
use super::{credentials, mtls, policy};
use crate::resources::{ProxyResources, ResourceType};

/// istiod's two catch-all clusters.
pub(super) fn catch_all_clusters(out: &mut ProxyResources) {
    use xds_cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let passthrough = xds_cluster::Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        circuit_breakers: Some(thresholds()),
        ..Default::default()
    };
    out.insert(ResourceType::Cluster, PASSTHROUGH_CLUSTER, &passthrough);
    let blackhole = xds_cluster::Cluster {
        name: BLACKHOLE_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(Duration { seconds: CONNECT_TIMEOUT_SECS, nanos: 0 }),
        ..Default::default()
    };
    out.insert(ResourceType::Cluster, BLACKHOLE_CLUSTER, &blackhole);
}

pub(super) fn thresholds() -> xds_cluster::CircuitBreakers {
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

pub(super) fn http2_options() -> std::collections::HashMap<String, Any> {
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

pub(super) fn base_cluster(name: String, protocol: Protocol) -> xds_cluster::Cluster {
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
                    out.insert(ResourceType::Endpoint, name.clone(), &cla);
                }
                out.insert(ResourceType::Cluster, name, &c);
            }
        }
    }
}

/// The DNS cache every dynamic forward proxy cluster and filter of a proxy shares: the
/// cluster and the filter that feeds it must name the same cache with the same settings.
pub(super) const DYNAMIC_DNS_CACHE: &str = "outbound_dynamic_dns_cache";

pub(super) fn dynamic_dns_cache()
-> envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig {
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
    if scope.dynamic_dns {
        let router = filters.len().saturating_sub(1);
        filters.insert(router, dynamic_dns_filter());
    }
}

/// The network filter that resolves a TLS connection's SNI (on `port`) for a dynamic
/// forward proxy cluster, as istiod does for DYNAMIC_DNS TLS ports.
pub(super) fn sni_dynamic_dns_filter(port: u16) -> xds_listener::Filter {
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
