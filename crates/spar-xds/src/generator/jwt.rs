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

fn selects(sel: Option<&BTreeMap<String, String>>, labels: &BTreeMap<String, String>) -> bool {
    sel.is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// RequestAuthentications that apply to a workload: root namespace, its namespace, by selector.
pub fn applicable<'a>(
    snap: &'a Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Config<RequestAuthenticationSpec>> {
    let mut out: Vec<_> = snap
        .request_authentications
        .iter()
        .filter(|p| p.namespace == namespace || p.namespace == snap.mesh.root_namespace)
        .filter(|p| selects(p.spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()), labels))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The `jwt_authn` filter, or nothing when no rule applies. Rules with a `jwksUri` but no
/// inline `jwks` are skipped (Spar does not fetch JWKS yet) and reported by the caller's
/// field report.
pub fn http_filter(policies: &[&Config<RequestAuthenticationSpec>]) -> Option<HttpFilter> {
    let mut providers = HashMap::new();
    let mut names = Vec::new();
    for p in policies {
        for (i, rule) in p.spec.jwt_rules.iter().flatten().enumerate() {
            let Some(jwks) = rule.jwks.clone().filter(|j| !j.is_empty()) else { continue };
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
                jwks_source_specifier: Some(xds_jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(
                    xds_core::DataSource {
                        specifier: Some(xds_core::data_source::Specifier::InlineString(jwks)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            };
            providers.insert(name.clone(), provider);
            names.push(name);
        }
    }
    if names.is_empty() {
        return None;
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
    Some(HttpFilter {
        name: "envoy.filters.http.jwt_authn".into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(cfg))),
        ..Default::default()
    })
}
