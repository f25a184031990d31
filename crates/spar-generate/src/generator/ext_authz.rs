//! AuthorizationPolicy `action: CUSTOM` as Envoy's stock `ext_authz` filters, shaped
//! as istiod's `pilot/pkg/security/authz/builder/extauthz.go` shapes them: the check
//! goes to the provider's cluster (`outbound|<port>||<host>`), and runs only for the
//! requests that the policies' rules matched (the RBAC shadow rules before it write
//! `istio_ext_authz_shadow_effective_policy_id`, which `filter_enabled_metadata` reads).

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as xds_http_authz;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as xds_net_authz;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::envoy::r#type::v3 as xds_type;
use envoy_types::pb::google::protobuf::Duration;
use spar_model::{ExtAuthzApi, ExtAuthzProvider};

/// The RBAC dynamic metadata key that names the CUSTOM rule a request matched.
const SHADOW_KEY: &str = "istio_ext_authz_shadow_effective_policy_id";

fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Runs the filter only for requests whose matched CUSTOM rule belongs to `provider`
/// (the rules are named `istio-ext-authz-<provider>-...`), reading what the RBAC filter
/// `rbac_filter` wrote.
fn enabled_for(provider: &str, rbac_filter: &str) -> xds_matcher::MetadataMatcher {
    use xds_matcher::string_matcher::MatchPattern;
    xds_matcher::MetadataMatcher {
        filter: rbac_filter.into(),
        path: vec![xds_matcher::metadata_matcher::PathSegment {
            segment: Some(xds_matcher::metadata_matcher::path_segment::Segment::Key(SHADOW_KEY.into())),
        }],
        value: Some(xds_matcher::ValueMatcher {
            match_pattern: Some(xds_matcher::value_matcher::MatchPattern::StringMatch(xds_matcher::StringMatcher {
                // The trailing '-' keeps provider `a` from matching provider `a-b`'s rules.
                match_pattern: Some(MatchPattern::Prefix(format!("istio-ext-authz-{provider}-"))),
                ignore_case: false,
            })),
        }),
        ..Default::default()
    }
}

/// Istio's header patterns: `x*` a prefix, `*x` a suffix, else exact; case-insensitive.
fn headers(names: &[String]) -> Option<xds_matcher::ListStringMatcher> {
    use xds_matcher::string_matcher::MatchPattern;
    if names.is_empty() {
        return None;
    }
    let patterns = names
        .iter()
        .map(|n| {
            let pattern = if let Some(p) = n.strip_suffix('*') {
                MatchPattern::Prefix(p.into())
            } else if let Some(s) = n.strip_prefix('*') {
                MatchPattern::Suffix(s.into())
            } else {
                MatchPattern::Exact(n.clone())
            };
            xds_matcher::StringMatcher { match_pattern: Some(pattern), ignore_case: true }
        })
        .collect();
    Some(xds_matcher::ListStringMatcher { patterns })
}

fn grpc_service(authz: &ResolvedProvider) -> xds_core::GrpcService {
    xds_core::GrpcService {
        target_specifier: Some(xds_core::grpc_service::TargetSpecifier::EnvoyGrpc(xds_core::grpc_service::EnvoyGrpc {
            cluster_name: authz.cluster.clone(),
            authority: authz.host.clone(),
            ..Default::default()
        })),
        timeout: Some(duration(authz.provider.timeout)),
        ..Default::default()
    }
}

fn body(p: &ExtAuthzProvider) -> Option<xds_http_authz::BufferSettings> {
    p.body.as_ref().map(|b| xds_http_authz::BufferSettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

/// The HTTP `ext_authz` filter for the CUSTOM policies of `provider`.
pub(super) fn http(provider: &str, authz: &ResolvedProvider) -> xds_http_authz::ExtAuthz {
    use xds_http_authz::ext_authz::Services;
    let p = &authz.provider;
    let mut out = xds_http_authz::ExtAuthz {
        transport_api_version: xds_core::ApiVersion::V3 as i32,
        failure_mode_allow: p.fail_open,
        status_on_error: p.status_on_error.map(|code| xds_type::HttpStatus { code: i32::from(code) }),
        with_request_body: body(p),
        filter_enabled_metadata: Some(enabled_for(provider, "envoy.filters.http.rbac")),
        ..Default::default()
    };
    match &p.api {
        ExtAuthzApi::Grpc => out.services = Some(Services::GrpcService(grpc_service(authz))),
        ExtAuthzApi::Http(h) => {
            out.allowed_headers = headers(&h.include_request_headers);
            let response = (!h.headers_to_upstream_on_allow.is_empty()
                || !h.headers_to_downstream_on_deny.is_empty()
                || !h.headers_to_downstream_on_allow.is_empty())
            .then(|| xds_http_authz::AuthorizationResponse {
                allowed_upstream_headers: headers(&h.headers_to_upstream_on_allow),
                allowed_client_headers: headers(&h.headers_to_downstream_on_deny),
                allowed_client_headers_on_success: headers(&h.headers_to_downstream_on_allow),
                ..Default::default()
            });
            let request = (!h.additional_headers.is_empty()).then(|| xds_http_authz::AuthorizationRequest {
                headers_to_add: h
                    .additional_headers
                    .iter()
                    .map(|(k, v)| xds_core::HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() })
                    .collect(),
                ..Default::default()
            });
            out.services = Some(Services::HttpService(xds_http_authz::HttpService {
                server_uri: Some(xds_core::HttpUri {
                    uri: format!("http://{}", authz.host),
                    timeout: Some(duration(p.timeout)),
                    http_upstream_type: Some(xds_core::http_uri::HttpUpstreamType::Cluster(authz.cluster.clone())),
                }),
                path_prefix: h.path_prefix.clone(),
                authorization_request: request,
                authorization_response: response,
                ..Default::default()
            }));
        }
    }
    out
}

/// The network `ext_authz` filter for the CUSTOM policies of `provider` (gRPC only: an
/// HTTP provider cannot check a TCP connection, and its policies deny instead).
pub(super) fn network(provider: &str, authz: &ResolvedProvider) -> xds_net_authz::ExtAuthz {
    xds_net_authz::ExtAuthz {
        stat_prefix: "tcp.".into(),
        grpc_service: Some(grpc_service(authz)),
        failure_mode_allow: authz.provider.fail_open,
        transport_api_version: xds_core::ApiVersion::V3 as i32,
        filter_enabled_metadata: Some(enabled_for(provider, "envoy.filters.network.rbac")),
        ..Default::default()
    }
}

/// An ext_authz provider as one proxy reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedProvider {
    /// The service's host name.
    pub host: String,
    /// `outbound|<port>||<host>`.
    pub cluster: String,
    /// The provider's settings.
    pub provider: ExtAuthzProvider,
}
