//! RequestAuthentication as Envoy's stock `jwt_authn` filter: a provider per JWT rule,
//! tokens optional but, when present, valid (istiod's semantics: a request without a
//! token passes with no request principal; one with an invalid token gets 401). Claims
//! land in dynamic metadata under `payload`, where AuthorizationPolicy's
//! `requestPrincipals` and `request.auth.claims` match them.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as xds_jwt;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter::ConfigType,
};
use envoy_types::pb::google::protobuf::Empty;
use spar_api::istio::request_authentication::RequestAuthenticationSpec;
use spar_model::{Config, Snapshot};

/// RequestAuthentications that apply to a workload: root namespace, its namespace, by selector.
pub fn applicable<'a>(
    snap: &'a Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Config<RequestAuthenticationSpec>> {
    snap.for_workload(&snap.request_authentications, namespace, labels, |s| {
        s.selector.as_ref().and_then(|s| s.match_labels.as_ref())
    })
}

/// A `jwksUri` split into what Envoy needs to fetch it: the cluster for its host and
/// whether it is TLS.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct JwksSource {
    /// Cluster name, `jwks|<host>|<port>`.
    pub cluster: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `https`.
    pub tls: bool,
}

/// Parses `http(s)://host[:port]/path`.
pub fn jwks_source(uri: &str) -> Option<JwksSource> {
    let (tls, rest) =
        if let Some(r) = uri.strip_prefix("https://") { (true, r) } else { (false, uri.strip_prefix("http://")?) };
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') => (h.trim_matches(['[', ']']).to_string(), p.parse().ok()?),
        _ => (authority.trim_matches(['[', ']']).to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return None;
    }
    Some(JwksSource { cluster: format!("jwks|{host}|{port}"), host, port, tls })
}

/// The `jwt_authn` filter, or nothing when no rule applies, and the JWKS servers Envoy
/// must be able to reach (inline `jwks` wins over `jwksUri`; a `jwksUri` is fetched by
/// Envoy itself and cached for 5 minutes).
pub fn http_filter(policies: &[&Config<RequestAuthenticationSpec>]) -> (Option<HttpFilter>, Vec<JwksSource>) {
    let mut providers = HashMap::new();
    let mut names = Vec::new();
    let mut sources = Vec::new();
    for p in policies {
        for (i, rule) in p.spec.jwt_rules.iter().flatten().enumerate() {
            let source =
                match (rule.jwks.clone().filter(|j| !j.is_empty()), rule.jwks_uri.as_deref().and_then(jwks_source)) {
                    (Some(jwks), _) => xds_jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(xds_core::DataSource {
                        specifier: Some(xds_core::data_source::Specifier::InlineString(jwks)),
                        ..Default::default()
                    }),
                    (None, Some(src)) => {
                        let spec = xds_jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(xds_jwt::RemoteJwks {
                            http_uri: Some(xds_core::HttpUri {
                                uri: rule.jwks_uri.clone().unwrap_or_default(),
                                timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 5, nanos: 0 }),
                                http_upstream_type: Some(xds_core::http_uri::HttpUpstreamType::Cluster(
                                    src.cluster.clone(),
                                )),
                            }),
                            cache_duration: Some(envoy_types::pb::google::protobuf::Duration {
                                seconds: 300,
                                nanos: 0,
                            }),
                            ..Default::default()
                        });
                        sources.push(src);
                        spec
                    }
                    (None, None) => continue,
                };
            let name = format!("origins-{}-{}-{i}", p.namespace, p.name);
            let mut from_headers: Vec<xds_jwt::JwtHeader> = rule
                .from_headers
                .iter()
                .flatten()
                .map(|h| xds_jwt::JwtHeader {
                    name: h.name.clone(),
                    value_prefix: h.prefix.clone().unwrap_or_default(),
                })
                .collect();
            let from_params = rule.from_params.clone().unwrap_or_default();
            if from_headers.is_empty() && from_params.is_empty() && rule.from_cookies.is_none() {
                // Istio's default location: `Authorization: Bearer <token>`.
                from_headers.push(xds_jwt::JwtHeader { name: "Authorization".into(), value_prefix: "Bearer ".into() });
            }
            let provider = xds_jwt::JwtProvider {
                issuer: rule.issuer.clone().unwrap_or_default(),
                audiences: rule.audiences.clone().unwrap_or_default(),
                forward: rule.forward_original_token.unwrap_or(false),
                from_headers,
                from_params,
                from_cookies: rule.from_cookies.clone().unwrap_or_default(),
                forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
                payload_in_metadata: "payload".into(),
                claim_to_headers: rule
                    .output_claim_to_headers
                    .iter()
                    .flatten()
                    .map(|c| xds_jwt::JwtClaimToHeader {
                        header_name: c.header.clone(),
                        claim_name: c.claim.clone(),
                        ..Default::default()
                    })
                    .collect(),
                jwks_source_specifier: Some(source),
                ..Default::default()
            };
            providers.insert(name.clone(), provider);
            names.push(name);
        }
    }
    if names.is_empty() {
        return (None, sources);
    }
    use xds_jwt::jwt_requirement::RequiresType;
    let mut any: Vec<xds_jwt::JwtRequirement> = names
        .iter()
        .map(|n| xds_jwt::JwtRequirement { requires_type: Some(RequiresType::ProviderName(n.clone())) })
        .collect();
    any.push(xds_jwt::JwtRequirement { requires_type: Some(RequiresType::AllowMissing(Empty {})) });
    let cfg = xds_jwt::JwtAuthentication {
        providers,
        rules: vec![xds_jwt::RequirementRule {
            r#match: Some(xds_route::RouteMatch {
                path_specifier: Some(xds_route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(xds_jwt::requirement_rule::RequirementType::Requires(xds_jwt::JwtRequirement {
                requires_type: Some(RequiresType::RequiresAny(xds_jwt::JwtRequirementOrList { requirements: any })),
            })),
        }],
        ..Default::default()
    };
    let filter = HttpFilter {
        name: "envoy.filters.http.jwt_authn".into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(cfg))),
        ..Default::default()
    };
    sources.sort();
    sources.dedup();
    (Some(filter), sources)
}
