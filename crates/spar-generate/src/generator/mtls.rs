//! Istio mutual TLS between sidecars, with stock Envoy: certificates come over SDS
//! (`default`, `ROOTCA`), clients verify the server's SPIFFE identity, servers require a
//! client certificate and pass the client's identity on in `x-forwarded-client-cert`.

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use crate::secret_names::{DEFAULT_SECRET, ROOT_SECRET};

/// An SDS reference to `name` over the proxy's ADS stream.
pub(super) fn sds(name: &str) -> xds_tls::SdsSecretConfig {
    xds_tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(xds_core::ConfigSource {
            config_source_specifier: Some(xds_core::config_source::ConfigSourceSpecifier::Ads(
                xds_core::AggregatedConfigSource {},
            )),
            resource_api_version: xds_core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn common(sans: &[String]) -> xds_tls::CommonTlsContext {
    let matchers = sans
        .iter()
        .map(|s| xds_tls::SubjectAltNameMatcher {
            san_type: xds_tls::subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(xds_matcher::StringMatcher {
                match_pattern: Some(xds_matcher::string_matcher::MatchPattern::Exact(s.clone())),
                ignore_case: false,
            }),
            ..Default::default()
        })
        .collect();
    xds_tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(DEFAULT_SECRET)],
        validation_context_type: Some(xds_tls::common_tls_context::ValidationContextType::CombinedValidationContext(
            xds_tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(xds_tls::CertificateValidationContext {
                    match_typed_subject_alt_names: matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn socket(any: envoy_types::pb::google::protobuf::Any) -> xds_core::TransportSocket {
    xds_core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(xds_core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

/// Client side: SNI `outbound_.<port>_.<subset>_.<host>` as istiod sets it, and the
/// server must prove one of `sans` (the SPIFFE identities of the service's workloads).
pub fn upstream(sni: String, sans: &[String]) -> xds_core::TransportSocket {
    socket(pack_any(xds_tls::UpstreamTlsContext { common_tls_context: Some(common(sans)), sni, ..Default::default() }))
}

/// Server side: a client certificate from the mesh's CA is required.
pub fn downstream() -> xds_core::TransportSocket {
    socket(pack_any(xds_tls::DownstreamTlsContext {
        common_tls_context: Some(common(&[])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }))
}

/// The SNI istiod gives mesh mTLS connections.
pub fn sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The trust domain of a SPIFFE id.
pub fn trust_domain(spiffe: &str) -> &str {
    spiffe.strip_prefix("spiffe://").and_then(|r| r.split('/').next()).unwrap_or("cluster.local")
}
