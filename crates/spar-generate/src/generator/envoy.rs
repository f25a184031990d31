//! What every generator builds with: istiod's names, the HTTP connection managers
//! and their filters, TCP proxies and listener shells.

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::listener::v3 as xds_listener;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xds_hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as xds_tcp;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::Scope;
pub use super::names::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, outbound_cluster_name};
use super::names::{CORS_FILTER, FAULT_FILTER};
use super::telemetry::Side;

/// istiod's default `connectTimeout` (MeshConfig).
pub(super) const CONNECT_TIMEOUT_SECS: i64 = 10;
/// istiod's default circuit-breaker limits: effectively unlimited.
pub(super) const UNLIMITED: u32 = u32::MAX;

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

pub(super) fn http_filter(name: &str, any: Any) -> xds_hcm::HttpFilter {
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
            CORS_FILTER,
            pack_any(envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default()),
        ),
        http_filter(
            FAULT_FILTER,
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

/// The inbound HTTP connection manager; over mTLS it passes the client's identity on in
/// `x-forwarded-client-cert` (sanitized from what the client sent, then set).
pub(super) fn inbound_hcm(
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

pub(super) fn tcp_proxy(scope: &Scope<'_>, stat_prefix: String, cluster: String) -> xds_listener::Filter {
    let tp = xds_tcp::TcpProxy {
        stat_prefix,
        cluster_specifier: Some(xds_tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster)),
        access_log: scope.access_logs.clone(),
        ..Default::default()
    };
    typed_filter("envoy.filters.network.tcp_proxy", pack_any(tp))
}

/// An outbound listener whose filter chains are `chains`.
pub(super) fn listener_with(
    name: String,
    bind: &str,
    port: u16,
    chains: Vec<xds_listener::FilterChain>,
    bind_to_port: bool,
) -> xds_listener::Listener {
    xds_listener::Listener {
        name,
        address: Some(socket_address(bind, u32::from(port))),
        filter_chains: chains,
        bind_to_port: (!bind_to_port).then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        traffic_direction: xds_core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// An outbound listener with one filter chain holding `filter`.
pub(super) fn listener(
    name: String,
    bind: &str,
    port: u16,
    filter: xds_listener::Filter,
    bind_to_port: bool,
) -> xds_listener::Listener {
    let chain = xds_listener::FilterChain { filters: vec![filter], ..Default::default() };
    listener_with(name, bind, port, vec![chain], bind_to_port)
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
