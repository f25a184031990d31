//! DestinationRule traffic policies: istiod's merge (DestinationRule, then its port-level
//! settings, then the subset's policy and its port-level settings) and what each field
//! does to an Envoy cluster or route.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3 as xds_cluster;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as xds_upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::envoy::r#type::v3 as xds_type;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use serde::Serialize;
use spar_api::istio::destination_rule::{
    DestinationRuleSpec, DestinationRuleTrafficPolicy as Policy,
    DestinationRuleTrafficPolicyLoadBalancerSimple as Simple, DestinationRuleTrafficPolicyTlsMode as TlsMode,
};
use spar_model::Protocol;

use super::mtls::sds;
use super::route_actions::parse_duration;

/// The same shape under another generated name (subset and port-level policies) as the
/// top-level policy type. Istio's schema repeats the message; the generator repeats the
/// struct.
fn as_policy<T: Serialize>(t: &T) -> Option<Policy> {
    serde_json::to_value(t).ok().and_then(|v| serde_json::from_value(v).ok())
}

/// Fields set in `over` replace those in `base` (istiod's `MergeTrafficPolicy`).
fn overlay(base: &mut Policy, over: Policy) {
    macro_rules! take {
        ($($f:ident),*) => { $( if over.$f.is_some() { base.$f = over.$f; } )* };
    }
    take!(connection_pool, load_balancer, outlier_detection, tls, proxy_protocol, retry_budget, tunnel);
}

fn port_level(p: &Policy, port: u16) -> Option<Policy> {
    p.port_level_settings
        .iter()
        .flatten()
        .find(|s| s.port.as_ref().and_then(|p| p.number) == Some(i64::from(port)))
        .and_then(as_policy)
}

/// The policy that applies to `port` of `subset` ("" for none) under `dr`.
pub fn effective(dr: &DestinationRuleSpec, subset: &str, port: u16) -> Policy {
    let mut out = Policy::default();
    if let Some(top) = &dr.traffic_policy {
        overlay(&mut out, top.clone());
        if let Some(pl) = port_level(top, port) {
            overlay(&mut out, pl);
        }
    }
    if let Some(sp) = dr
        .subsets
        .iter()
        .flatten()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(as_policy)
    {
        overlay(&mut out, sp.clone());
        if let Some(pl) = port_level(&sp, port) {
            overlay(&mut out, pl);
        }
    }
    out
}

fn u32_of(v: Option<i64>) -> Option<UInt32Value> {
    v.and_then(|v| u32::try_from(v).ok()).map(|value| UInt32Value { value })
}

fn dur(s: Option<&String>) -> Option<Duration> {
    s.and_then(|s| parse_duration(s))
}

/// Applies `policy` to `cluster` for a port speaking `protocol`.
pub fn apply(policy: &Policy, cluster: &mut xds_cluster::Cluster, protocol: Protocol, host: &str) {
    use xds_cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy};
    if let Some(lb) = &policy.load_balancer {
        match lb.simple {
            Some(Simple::LeastConn | Simple::LeastRequest) => cluster.lb_policy = LbPolicy::LeastRequest as i32,
            Some(Simple::Random) => cluster.lb_policy = LbPolicy::Random as i32,
            Some(Simple::Passthrough) => {
                cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32));
                cluster.lb_policy = LbPolicy::ClusterProvided as i32;
                cluster.eds_cluster_config = None;
                cluster.load_assignment = None;
            }
            Some(Simple::RoundRobin | Simple::Unspecified) | None => {}
        }
        if let Some(ch) = &lb.consistent_hash {
            if let Some(m) = &ch.maglev {
                cluster.lb_policy = LbPolicy::Maglev as i32;
                cluster.lb_config = Some(LbConfig::MaglevLbConfig(xds_cluster::cluster::MaglevLbConfig {
                    table_size: m.table_size.and_then(|t| u64::try_from(t).ok()).map(|value| UInt64Value { value }),
                }));
            } else {
                let min = ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).or(ch.minimum_ring_size);
                cluster.lb_policy = LbPolicy::RingHash as i32;
                cluster.lb_config = Some(LbConfig::RingHashLbConfig(xds_cluster::cluster::RingHashLbConfig {
                    minimum_ring_size: min.and_then(|t| u64::try_from(t).ok()).map(|value| UInt64Value { value }),
                    ..Default::default()
                }));
            }
        }
    }
    let mut http_opts: Option<xds_core::HttpProtocolOptions> = None;
    let mut upgrade_h2 = protocol.is_http2();
    if let Some(cp) = &policy.connection_pool {
        let th = cluster
            .circuit_breakers
            .get_or_insert_with(Default::default)
            .thresholds
            .first_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut th = th;
        if let Some(tcp) = &cp.tcp {
            if let Some(v) = u32_of(tcp.max_connections.map(i64::from)) {
                th.max_connections = Some(v);
            }
            if let Some(t) = dur(tcp.connect_timeout.as_ref()) {
                cluster.connect_timeout = Some(t);
            }
            if let Some(k) = &tcp.tcp_keepalive {
                let secs = |s: Option<&String>| {
                    dur(s).and_then(|d| u32::try_from(d.seconds).ok()).map(|value| UInt32Value { value })
                };
                cluster.upstream_connection_options = Some(xds_cluster::UpstreamConnectionOptions {
                    tcp_keepalive: Some(xds_core::TcpKeepalive {
                        keepalive_probes: u32_of(k.probes),
                        keepalive_time: secs(k.time.as_ref()),
                        keepalive_interval: secs(k.interval.as_ref()),
                    }),
                    ..Default::default()
                });
            }
            if let Some(d) = dur(tcp.max_connection_duration.as_ref()) {
                http_opts.get_or_insert_with(Default::default).max_connection_duration = Some(d);
            }
            if let Some(d) = dur(tcp.idle_timeout.as_ref()) {
                http_opts.get_or_insert_with(Default::default).idle_timeout = Some(d);
            }
        }
        if let Some(http) = &cp.http {
            if let Some(v) = u32_of(http.http1_max_pending_requests.map(i64::from)) {
                th.max_pending_requests = Some(v);
            }
            if let Some(v) = u32_of(http.http2_max_requests.map(i64::from)) {
                th.max_requests = Some(v);
            }
            if let Some(v) = u32_of(http.max_retries.map(i64::from)) {
                th.max_retries = Some(v);
            }
            if let Some(v) = u32_of(http.max_requests_per_connection.map(i64::from)) {
                http_opts.get_or_insert_with(Default::default).max_requests_per_connection = Some(v);
            }
            if let Some(d) = dur(http.idle_timeout.as_ref()) {
                http_opts.get_or_insert_with(Default::default).idle_timeout = Some(d);
            }
            use spar_api::istio::destination_rule::DestinationRuleTrafficPolicyConnectionPoolHttpH2UpgradePolicy as H2;
            if matches!(http.h2_upgrade_policy, Some(H2::Upgrade)) && protocol.is_http() {
                upgrade_h2 = true;
            }
        }
        if let Some(cb) = cluster.circuit_breakers.as_mut() {
            cb.thresholds.insert(0, th);
            cb.thresholds.truncate(1);
        }
    }
    if protocol.is_http() && (http_opts.is_some() || upgrade_h2) {
        use xds_upstream_http::http_protocol_options::{
            ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
        };
        let protocol_config = if upgrade_h2 {
            ProtocolConfig::Http2ProtocolOptions(xds_core::Http2ProtocolOptions::default())
        } else {
            ProtocolConfig::HttpProtocolOptions(xds_core::Http1ProtocolOptions::default())
        };
        let opts = xds_upstream_http::HttpProtocolOptions {
            common_http_protocol_options: http_opts,
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(protocol_config),
            })),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options =
            HashMap::from([("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(), pack_any(opts))]);
    }
    if let Some(od) = &policy.outlier_detection {
        // Istio: consecutive5xxErrors (or the deprecated consecutiveErrors) enforce at
        // 100%; gateway errors likewise; success-rate ejection is off.
        let five_xx = od.consecutive5xx_errors.or(od.consecutive_errors.map(i64::from));
        let enforce = |v: Option<i64>| Some(UInt32Value { value: if v.unwrap_or(0) > 0 { 100 } else { 0 } });
        cluster.outlier_detection = Some(xds_cluster::OutlierDetection {
            consecutive_5xx: u32_of(five_xx),
            enforcing_consecutive_5xx: enforce(five_xx),
            consecutive_gateway_failure: u32_of(od.consecutive_gateway_errors),
            enforcing_consecutive_gateway_failure: enforce(od.consecutive_gateway_errors),
            interval: dur(od.interval.as_ref()),
            base_ejection_time: dur(od.base_ejection_time.as_ref()),
            max_ejection_percent: u32_of(od.max_ejection_percent.map(i64::from)),
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            split_external_local_origin_errors: od.split_external_local_origin_errors.unwrap_or(false),
            consecutive_local_origin_failure: u32_of(od.consecutive_local_origin_failures),
            ..Default::default()
        });
        if let Some(p) = od.min_health_percent {
            cluster.common_lb_config.get_or_insert_with(Default::default).healthy_panic_threshold =
                Some(xds_type::Percent { value: f64::from(p) });
        }
    }
    if let Some(tls) = &policy.tls {
        match tls.mode {
            Some(TlsMode::Simple | TlsMode::Mutual) => {
                // istiod's defaults for origination: SNI is the destination host, and
                // the server's certificate must name it (VERIFY_CERTIFICATE_AT_CLIENT),
                // checked against the system's roots when no CA is given.
                let concrete_host = (!host.contains('*')).then_some(host);
                let sni =
                    tls.sni.clone().filter(|s| !s.is_empty()).or(concrete_host.map(str::to_string)).unwrap_or_default();
                let mut san_names: Vec<String> = tls.subject_alt_names.clone().unwrap_or_default();
                if san_names.is_empty() {
                    san_names.extend(tls.sni.clone().filter(|s| !s.is_empty()).or(concrete_host.map(str::to_string)));
                }
                let file = |f: &Option<String>| {
                    f.as_ref().filter(|s| !s.is_empty()).map(|p| xds_core::DataSource {
                        specifier: Some(xds_core::data_source::Specifier::Filename(p.clone())),
                        ..Default::default()
                    })
                };
                let mut common = xds_tls::CommonTlsContext::default();
                if let Some(name) = tls.credential_name.as_ref().filter(|n| !n.is_empty()) {
                    // Certificates from a Secret, over SDS (`kubernetes://<name>` and its CA
                    // part `kubernetes://<name>-cacert`, istiod's names).
                    let name = super::credentials::resource_name(name);
                    if matches!(tls.mode, Some(TlsMode::Mutual)) {
                        common.tls_certificate_sds_secret_configs.push(sds(&name));
                    }
                    if !tls.insecure_skip_verify.unwrap_or(false) {
                        common.validation_context_type =
                            Some(xds_tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                                xds_tls::common_tls_context::CombinedCertificateValidationContext {
                                    default_validation_context: Some(xds_tls::CertificateValidationContext {
                                        match_typed_subject_alt_names: dns_sans(&san_names),
                                        ..Default::default()
                                    }),
                                    validation_context_sds_secret_config: Some(sds(&format!("{name}-cacert"))),
                                    ..Default::default()
                                },
                            ));
                    }
                    let ctx =
                        xds_tls::UpstreamTlsContext { common_tls_context: Some(common), sni, ..Default::default() };
                    cluster.transport_socket = Some(transport_socket(pack_any(ctx)));
                    return;
                }
                if matches!(tls.mode, Some(TlsMode::Mutual)) {
                    common.tls_certificates.push(xds_tls::TlsCertificate {
                        certificate_chain: file(&tls.client_certificate),
                        private_key: file(&tls.private_key),
                        ..Default::default()
                    });
                }
                if !tls.insecure_skip_verify.unwrap_or(false) {
                    let ca =
                        tls.ca_certificates.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| SYSTEM_ROOTS.into());
                    common.validation_context_type =
                        Some(xds_tls::common_tls_context::ValidationContextType::ValidationContext(
                            xds_tls::CertificateValidationContext {
                                trusted_ca: file(&Some(ca)),
                                crl: file(&tls.ca_crl),
                                match_typed_subject_alt_names: dns_sans(&san_names),
                                ..Default::default()
                            },
                        ));
                }
                let ctx = xds_tls::UpstreamTlsContext { common_tls_context: Some(common), sni, ..Default::default() };
                cluster.transport_socket = Some(transport_socket(pack_any(ctx)));
            }
            Some(TlsMode::Disable) | None => {}
            // Spar's CA and SDS (ISTIO_MUTUAL) come with the identity work.
            Some(TlsMode::IstioMutual) => {}
        }
    }
}

/// The system's trusted roots (Debian's bundle, as in Istio's proxy image).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// SAN matchers for DNS names.
fn dns_sans(names: &[String]) -> Vec<xds_tls::SubjectAltNameMatcher> {
    names
        .iter()
        .map(|s| xds_tls::SubjectAltNameMatcher {
            san_type: xds_tls::subject_alt_name_matcher::SanType::Dns as i32,
            matcher: Some(xds_matcher::StringMatcher {
                match_pattern: Some(xds_matcher::string_matcher::MatchPattern::Exact(s.clone())),
                ignore_case: false,
            }),
            ..Default::default()
        })
        .collect()
}

fn transport_socket(any: Any) -> xds_core::TransportSocket {
    xds_core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(xds_core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

/// The route hash policy for a consistent-hash load balancer.
pub fn hash_policy(policy: &Policy) -> Vec<xds_route::route_action::HashPolicy> {
    use xds_route::route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter};
    let Some(ch) = policy.load_balancer.as_ref().and_then(|lb| lb.consistent_hash.as_ref()) else { return Vec::new() };
    let spec = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(Header { header_name: h.clone(), ..Default::default() })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: dur(c.ttl.as_ref()),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return Vec::new();
    };
    vec![xds_route::route_action::HashPolicy { policy_specifier: Some(spec), terminal: false }]
}
