//! AuthorizationPolicy as stock Envoy RBAC filters, translated as istiod's
//! `pilot/pkg/security/authz` builder does: one Envoy policy per rule, named
//! `ns[<ns>]-policy[<name>]-rule[<i>]`; permissions from `to` and the destination-side
//! `when` keys, principals from `from` and the source-side `when` keys; DENY before
//! ALLOW, and an ALLOW policy that applies means everything else is denied.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::rbac::v3 as xds_rbac;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as xds_http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as xds_net_rbac;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use spar_api::istio::authorization_policy::{
    AuthorizationPolicyAction as Action, AuthorizationPolicyRules, AuthorizationPolicyRulesFromSource,
    AuthorizationPolicyRulesToOperation, AuthorizationPolicySpec,
};
use spar_model::{Config, ExtAuthzApi, ExtAuthzProvider, Snapshot};

use super::l4::cidr;
use super::{Scope, ext_authz};

/// One RBAC filter of the workload: the rules it enforces and, for `istio.io/dry-run`
/// policies, shadow rules that are only evaluated and counted.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacFilter {
    /// Enforced rules (none when every policy of the action is a dry run).
    pub rules: Option<xds_rbac::Rbac>,
    /// Dry-run rules: evaluated, logged and counted under `shadow_prefix`, not enforced.
    pub shadow: Option<xds_rbac::Rbac>,
    /// istiod's stat prefix of the shadow rules (`istio_dry_run_allow_`, ...).
    pub shadow_prefix: &'static str,
}

impl RbacFilter {
    /// The Envoy action of the filter.
    pub fn action(&self) -> i32 {
        self.rules.as_ref().or(self.shadow.as_ref()).map_or(0, |r| r.action)
    }
}

/// The CUSTOM policies of one provider on a workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Custom {
    /// Checked by the provider: the policies' rules, as RBAC shadow rules, mark the
    /// requests they match, and the `ext_authz` filter runs for those requests only.
    ExtAuthz {
        /// The provider's name.
        provider: String,
        /// The policies' rules (action DENY, as shadow rules).
        rules: xds_rbac::Rbac,
        /// The provider, with its cluster.
        authz: ResolvedProvider,
    },
    /// The provider cannot be used: every request the policies match is denied.
    Deny {
        /// The provider's name.
        provider: String,
        /// The policies' rules, enforced with action DENY.
        rules: xds_rbac::Rbac,
        /// Why the provider cannot be used.
        reason: String,
    },
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

/// The authorization filters of one workload, in istiod's order: CUSTOM (per provider),
/// then DENY, ALLOW and AUDIT, each only when some policy of that action applies.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkloadRbac {
    /// CUSTOM policies, by provider.
    pub custom: Vec<Custom>,
    /// DENY, ALLOW, AUDIT (LOG) filters, in that order.
    pub configs: Vec<RbacFilter>,
}

impl WorkloadRbac {
    /// Adds to `warnings` (once each) why CUSTOM policies deny what they match: their
    /// provider cannot be used by this proxy. What the operator reads in `proxy-status`.
    pub fn note_denials(&self, warnings: &mut Vec<String>) {
        for c in &self.custom {
            if let Custom::Deny { provider, reason, .. } = c {
                let w = format!(
                    "AuthorizationPolicy CUSTOM provider {provider:?}: {reason}; the requests its policies match are denied"
                );
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
    }
}

/// Policies that apply to a workload in `namespace` with `labels`: the root namespace's
/// (mesh-wide, or by selector in every namespace) and its own namespace's.
pub fn applicable<'a>(
    snap: &'a Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Config<AuthorizationPolicySpec>> {
    snap.for_workload(&snap.authorization_policies, namespace, labels, |s| {
        s.selector.as_ref().and_then(|s| s.match_labels.as_ref())
    })
}

/// The RBAC policy name istiod gives rule `i` of a policy.
fn policy_name(p: &Config<AuthorizationPolicySpec>, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.name)
}

/// The rules of `policies` as RBAC policies by name; `prefix` goes before each name.
fn rbac_policies(
    policies: &[&&Config<AuthorizationPolicySpec>],
    trust_domain: &str,
    tcp: bool,
    action: &Action,
    prefix: &str,
) -> HashMap<String, xds_rbac::Policy> {
    let mut out = HashMap::new();
    for p in policies {
        let rules = p.spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() && *action == Action::Allow {
            // An ALLOW policy without rules allows nothing: istiod spells it out.
            out.insert(
                format!("{prefix}{}", policy_name(p, 0)),
                xds_rbac::Policy {
                    permissions: vec![perm_not(perm(xds_rbac::permission::Rule::Any(true)))],
                    principals: vec![princ_not(princ(xds_rbac::principal::Identifier::Any(true)))],
                    ..Default::default()
                },
            );
        }
        for (i, rule) in rules.iter().enumerate() {
            // For TCP, DENY, AUDIT and CUSTOM widen: what TCP cannot see is left out.
            if let Some(policy) = rule_policy(rule, trust_domain, tcp, *action != Action::Allow, &p.namespace) {
                out.insert(format!("{prefix}{}", policy_name(p, i)), policy);
            }
        }
    }
    out
}

/// Builds the workload's authorization filters; `tcp` drops what a TCP connection cannot
/// match; `resolve` finds the ext_authz provider a CUSTOM policy names, or says why it
/// cannot be used (then the requests the policy matches are denied).
pub fn build(
    policies: &[&Config<AuthorizationPolicySpec>],
    trust_domain: &str,
    tcp: bool,
    resolve: &dyn Fn(&str) -> Result<ResolvedProvider, String>,
) -> WorkloadRbac {
    use xds_rbac::rbac::Action as EnvoyAction;
    let mut out = WorkloadRbac { custom: custom(policies, trust_domain, tcp, resolve), configs: Vec::new() };
    for (action, envoy_action, shadow_prefix) in [
        (Action::Deny, EnvoyAction::Deny, "istio_dry_run_deny_"),
        (Action::Allow, EnvoyAction::Allow, "istio_dry_run_allow_"),
        (Action::Audit, EnvoyAction::Log, ""),
    ] {
        let of_action: Vec<_> =
            policies.iter().filter(|p| p.spec.action.clone().unwrap_or(Action::Allow) == action).collect();
        let (dry, enforced): (Vec<_>, Vec<_>) = of_action.into_iter().partition(|p| p.dry_run);
        let rbac = |ps: &[&&Config<AuthorizationPolicySpec>]| {
            let policies = rbac_policies(ps, trust_domain, tcp, &action, "");
            // DENY/AUDIT with no rules match nothing and need no filter; ALLOW with no
            // rules still applies: it allows nothing.
            (!ps.is_empty() && (action == Action::Allow || !policies.is_empty())).then(|| xds_rbac::Rbac {
                action: envoy_action as i32,
                policies,
                ..Default::default()
            })
        };
        let filter = RbacFilter { rules: rbac(&enforced), shadow: rbac(&dry), shadow_prefix };
        if filter.rules.is_some() || filter.shadow.is_some() {
            out.configs.push(filter);
        }
    }
    out
}

/// The CUSTOM policies, grouped by provider as istiod groups them (validation refuses
/// dry-run CUSTOM policies, as Istio's webhook does). istiod (by default) serves one
/// provider per workload: with several, every CUSTOM policy denies what it matches.
fn custom(
    policies: &[&Config<AuthorizationPolicySpec>],
    trust_domain: &str,
    tcp: bool,
    resolve: &dyn Fn(&str) -> Result<ResolvedProvider, String>,
) -> Vec<Custom> {
    let mut by_provider: BTreeMap<&str, Vec<&&Config<AuthorizationPolicySpec>>> = BTreeMap::new();
    for p in policies.iter().filter(|p| p.spec.action == Some(Action::Custom)) {
        let name = p.spec.provider.as_ref().and_then(|p| p.name.as_deref()).unwrap_or_default();
        by_provider.entry(name).or_default().push(p);
    }
    let several = by_provider.len() > 1;
    let mut out = Vec::new();
    for (name, ps) in by_provider {
        let prefix = format!("istio-ext-authz-{name}-");
        let rules = |suffix: &str| {
            let policies = rbac_policies(&ps, trust_domain, tcp, &Action::Custom, &prefix)
                .into_iter()
                .map(|(k, v)| (format!("{k}{suffix}"), v))
                .collect();
            xds_rbac::Rbac { action: xds_rbac::rbac::Action::Deny as i32, policies, ..Default::default() }
        };
        let resolved = if several {
            Err(format!(
                "CUSTOM policies on this workload name several providers ({name} among them); istiod serves one"
            ))
        } else if name.is_empty() {
            Err("the CUSTOM policy names no provider".to_string())
        } else {
            resolve(name)
        };
        let resolved = resolved.and_then(|r| match (&r.provider.api, tcp) {
            (ExtAuthzApi::Http(_), true) => Err(format!(
                "provider {name} checks HTTP requests and this port carries TCP (istiod skips the check; Spar denies)"
            )),
            _ => Ok(r),
        });
        let r = rules(if resolved.is_ok() { "" } else { BAD_CUSTOM_SUFFIX });
        if r.policies.is_empty() {
            continue; // a CUSTOM policy without rules matches nothing
        }
        out.push(match resolved {
            Ok(authz) => Custom::ExtAuthz { provider: name.to_string(), rules: r, authz },
            Err(reason) => Custom::Deny { provider: name.to_string(), rules: r, reason },
        });
    }
    out
}

/// istiod's suffix on the policies of a CUSTOM provider that cannot be used.
const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";

/// Resolves the ext_authz provider `name` for `scope`'s proxy: in MeshConfig, usable,
/// its service in the registry with the port, and visible to the proxy (its cluster
/// exists there).
pub(super) fn resolve_provider(scope: &Scope<'_>, name: &str) -> Result<ResolvedProvider, String> {
    let provider = match scope.snap.mesh.authz_providers.get(name) {
        None => {
            let known: Vec<&String> = scope.snap.mesh.authz_providers.keys().collect();
            return Err(format!(
                "provider {name:?} is not among MeshConfig extensionProviders (ext_authz ones: {known:?})"
            ));
        }
        Some(Err(e)) => return Err(e.clone()),
        Some(Ok(p)) => p,
    };
    let svc = scope
        .snap
        .provider_service(&provider.service)
        .ok_or_else(|| format!("provider {name:?}: service {} is not in the registry", provider.service))?;
    let port = svc
        .port(provider.port)
        .ok_or_else(|| format!("provider {name:?}: service {} has no port {}", provider.service, provider.port))?;
    if matches!(provider.api, ExtAuthzApi::Grpc) && !port.protocol.is_http2() {
        return Err(format!(
            "provider {name:?}: port {} of {} is {}, and the gRPC check needs HTTP/2 (name the port grpc-* or \
             set appProtocol: grpc)",
            provider.port, svc.hostname, port.protocol
        ));
    }
    if !scope.imports(svc) {
        return Err(format!(
            "provider {name:?}: service {} is not visible to this proxy (Sidecar egress or exportTo)",
            provider.service
        ));
    }
    Ok(ResolvedProvider {
        host: svc.hostname.clone(),
        cluster: super::envoy::outbound_cluster_name(provider.port, "", &svc.hostname),
        provider: provider.clone(),
    })
}

type HttpFilter = envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

fn http_filter(name: &str, config: impl prost::Name) -> HttpFilter {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    HttpFilter {
        name: name.into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(config))),
        ..Default::default()
    }
}

/// HTTP filters (before the router), in istiod's order: CUSTOM, then `authn` (the JWT
/// filter, so that DENY/ALLOW see the request principal), then DENY, ALLOW, AUDIT.
pub fn http_filters(rbac: &WorkloadRbac, authn: Option<HttpFilter>) -> Vec<HttpFilter> {
    let mut out = Vec::new();
    for c in &rbac.custom {
        match c {
            Custom::ExtAuthz { provider, rules, authz } => {
                out.push(http_filter(
                    RBAC_HTTP,
                    xds_http_rbac::Rbac {
                        shadow_rules: Some(rules.clone()),
                        shadow_rules_stat_prefix: "istio_ext_authz_".into(),
                        ..Default::default()
                    },
                ));
                out.push(http_filter("envoy.filters.http.ext_authz", ext_authz::http(provider, authz)));
            }
            Custom::Deny { rules, .. } => out
                .push(http_filter(RBAC_HTTP, xds_http_rbac::Rbac { rules: Some(rules.clone()), ..Default::default() })),
        }
    }
    out.extend(authn);
    for r in &rbac.configs {
        out.push(http_filter(
            RBAC_HTTP,
            xds_http_rbac::Rbac {
                rules: r.rules.clone(),
                shadow_rules: r.shadow.clone(),
                shadow_rules_stat_prefix: if r.shadow.is_some() { r.shadow_prefix.into() } else { String::new() },
                ..Default::default()
            },
        ));
    }
    out
}

const RBAC_HTTP: &str = "envoy.filters.http.rbac";
const RBAC_NETWORK: &str = "envoy.filters.network.rbac";

/// Network filters (before tcp_proxy), in istiod's order: CUSTOM, DENY, ALLOW, AUDIT.
pub fn network_filters(rbac: &WorkloadRbac) -> Vec<envoy_types::pb::envoy::config::listener::v3::Filter> {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, filter::ConfigType};
    let filter = |name: &str, config: xds_net_rbac::Rbac| Filter {
        name: name.into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(config))),
    };
    let mut out = Vec::new();
    for c in &rbac.custom {
        match c {
            Custom::ExtAuthz { provider, rules, authz } => {
                out.push(filter(
                    RBAC_NETWORK,
                    xds_net_rbac::Rbac {
                        shadow_rules: Some(rules.clone()),
                        shadow_rules_stat_prefix: "istio_ext_authz_".into(),
                        stat_prefix: "tcp.".into(),
                        ..Default::default()
                    },
                ));
                out.push(Filter {
                    name: "envoy.filters.network.ext_authz".into(),
                    config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(ext_authz::network(
                        provider, authz,
                    )))),
                });
            }
            Custom::Deny { rules, .. } => out.push(filter(
                RBAC_NETWORK,
                xds_net_rbac::Rbac { rules: Some(rules.clone()), stat_prefix: "tcp.".into(), ..Default::default() },
            )),
        }
    }
    for r in &rbac.configs {
        out.push(filter(
            RBAC_NETWORK,
            xds_net_rbac::Rbac {
                rules: r.rules.clone(),
                shadow_rules: r.shadow.clone(),
                shadow_rules_stat_prefix: if r.shadow.is_some() { r.shadow_prefix.into() } else { String::new() },
                stat_prefix: "tcp.".into(),
                ..Default::default()
            },
        ));
    }
    out
}

/// Istio's string wildcards: `*` anything, `*x` suffix, `x*` prefix, else exact.
fn wildcard(v: &str, ignore_case: bool) -> xds_matcher::StringMatcher {
    use xds_matcher::string_matcher::MatchPattern;
    let pattern = if v == "*" {
        MatchPattern::SafeRegex(xds_matcher::RegexMatcher { regex: ".+".into(), ..Default::default() })
    } else if let Some(s) = v.strip_prefix('*') {
        MatchPattern::Suffix(s.into())
    } else if let Some(p) = v.strip_suffix('*') {
        MatchPattern::Prefix(p.into())
    } else {
        MatchPattern::Exact(v.into())
    };
    xds_matcher::StringMatcher { match_pattern: Some(pattern), ignore_case }
}

fn header(name: &str, v: &str, ignore_case: bool) -> xds_route::HeaderMatcher {
    use xds_route::header_matcher::HeaderMatchSpecifier;
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        HeaderMatchSpecifier::StringMatch(wildcard(v, ignore_case))
    };
    xds_route::HeaderMatcher { name: name.into(), header_match_specifier: Some(spec), ..Default::default() }
}

fn jwt_claim(path: &[&str], value: &str) -> xds_matcher::MetadataMatcher {
    xds_matcher::MetadataMatcher {
        filter: "envoy.filters.http.jwt_authn".into(),
        path: std::iter::once("payload")
            .chain(path.iter().copied())
            .map(|k| xds_matcher::metadata_matcher::PathSegment {
                segment: Some(xds_matcher::metadata_matcher::path_segment::Segment::Key(k.into())),
            })
            .collect(),
        value: Some(xds_matcher::ValueMatcher {
            match_pattern: Some(xds_matcher::value_matcher::MatchPattern::StringMatch(wildcard(value, false))),
        }),
        ..Default::default()
    }
}

// --- permissions (destination side) ---

type Perm = xds_rbac::Permission;
type Princ = xds_rbac::Principal;

fn perm(rule: xds_rbac::permission::Rule) -> Perm {
    Perm { rule: Some(rule) }
}
fn perm_or(v: Vec<Perm>) -> Perm {
    perm(xds_rbac::permission::Rule::OrRules(xds_rbac::permission::Set { rules: v }))
}
fn perm_and(v: Vec<Perm>) -> Perm {
    perm(xds_rbac::permission::Rule::AndRules(xds_rbac::permission::Set { rules: v }))
}
fn perm_not(p: Perm) -> Perm {
    perm(xds_rbac::permission::Rule::NotRule(Box::new(p)))
}
fn princ(id: xds_rbac::principal::Identifier) -> Princ {
    Princ { identifier: Some(id) }
}
fn princ_or(v: Vec<Princ>) -> Princ {
    princ(xds_rbac::principal::Identifier::OrIds(xds_rbac::principal::Set { ids: v }))
}
fn princ_and(v: Vec<Princ>) -> Princ {
    princ(xds_rbac::principal::Identifier::AndIds(xds_rbac::principal::Set { ids: v }))
}
fn princ_not(p: Princ) -> Princ {
    princ(xds_rbac::principal::Identifier::NotId(Box::new(p)))
}

fn port_perm(p: &str) -> Option<Perm> {
    p.parse::<u32>().ok().map(|n| perm(xds_rbac::permission::Rule::DestinationPort(n)))
}

fn path_perm(p: &str) -> Perm {
    use xds_rbac::permission::Rule;
    if p.contains("{*}") || p.contains("{**}") {
        // Istio's path templates: Envoy's URI template matcher.
        let template = p.replace("{**}", "**").replace("{*}", "*");
        let cfg = envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig {
            path_template: template,
        };
        return perm(Rule::UriTemplate(xds_core::TypedExtensionConfig {
            name: "uri-template".into(),
            typed_config: Some(envoy_types::util::pack_any(cfg)),
        }));
    }
    perm(Rule::UrlPath(xds_matcher::PathMatcher {
        rule: Some(xds_matcher::path_matcher::Rule::Path(wildcard(p, false))),
    }))
}

/// `values` as an OR of `f`, or nothing when empty.
fn any_of<T>(values: Option<&Vec<String>>, f: impl Fn(&str) -> Option<T>, or: fn(Vec<T>) -> T) -> Option<T> {
    let v: Vec<T> = values.into_iter().flatten().filter_map(|s| f(s)).collect();
    (!v.is_empty()).then(|| or(v))
}

/// Whether a `when` key is about the destination (permission side).
fn destination_key(key: &str) -> bool {
    matches!(key, "destination.ip" | "destination.port" | "connection.sni")
        || key.starts_with("experimental.envoy.filters")
}

/// `experimental.envoy.filters.<filter>[<key>]`: a match on dynamic metadata, all values
/// in one matcher.
fn experimental_metadata(key: &str, values: &[String]) -> Option<Perm> {
    let rest = key.strip_prefix("experimental.")?;
    let (filter, k) = rest.split_once('[')?;
    let k = k.strip_suffix(']')?;
    let matchers: Vec<xds_matcher::ValueMatcher> = values
        .iter()
        .map(|v| xds_matcher::ValueMatcher {
            match_pattern: Some(xds_matcher::value_matcher::MatchPattern::StringMatch(wildcard(v, false))),
        })
        .collect();
    let value = match matchers.len() {
        0 => return None,
        1 => matchers.into_iter().next(),
        _ => Some(xds_matcher::ValueMatcher {
            match_pattern: Some(xds_matcher::value_matcher::MatchPattern::OrMatch(xds_matcher::OrMatcher {
                value_matchers: matchers,
            })),
        }),
    };
    Some(perm(xds_rbac::permission::Rule::Metadata(xds_matcher::MetadataMatcher {
        filter: filter.into(),
        path: vec![xds_matcher::metadata_matcher::PathSegment {
            segment: Some(xds_matcher::metadata_matcher::path_segment::Segment::Key(k.into())),
        }],
        value,
        ..Default::default()
    })))
}

fn when_perm(key: &str, v: &str) -> Option<Perm> {
    use xds_rbac::permission::Rule;
    match key {
        "destination.ip" => cidr(v).map(|c| perm(Rule::DestinationIp(c))),
        "destination.port" => port_perm(v),
        "connection.sni" => Some(perm(Rule::RequestedServerName(wildcard(v, false)))),
        _ => None,
    }
}

fn when_princ(key: &str, v: &str, td: &str) -> Option<Princ> {
    use xds_rbac::principal::Identifier as Id;
    if let Some(h) = key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')) {
        return Some(princ(Id::Header(header(h, v, false))));
    }
    if let Some(claim) = key.strip_prefix("request.auth.claims[").and_then(|k| k.strip_suffix(']')) {
        let path: Vec<&str> = claim.split("][").collect();
        return Some(princ(Id::Metadata(jwt_claim(&path, v))));
    }
    match key {
        "source.ip" => cidr(v).map(|c| princ(Id::DirectRemoteIp(c))),
        "remote.ip" => cidr(v).map(|c| princ(Id::RemoteIp(c))),
        "source.namespace" => Some(namespace_princ(v)),
        "source.principal" => Some(principal_princ(v, td)),
        "request.auth.principal" => Some(request_principal(v)),
        "request.auth.audiences" => Some(princ(Id::Metadata(jwt_claim(&["aud"], v)))),
        "request.auth.presenter" => Some(princ(Id::Metadata(jwt_claim(&["azp"], v)))),
        _ => None,
    }
}

fn regex_matcher(regex: String) -> xds_matcher::StringMatcher {
    xds_matcher::StringMatcher {
        match_pattern: Some(xds_matcher::string_matcher::MatchPattern::SafeRegex(xds_matcher::RegexMatcher {
            regex,
            ..Default::default()
        })),
        ignore_case: false,
    }
}

fn authenticated(m: xds_matcher::StringMatcher) -> Princ {
    princ(xds_rbac::principal::Identifier::Authenticated(xds_rbac::principal::Authenticated {
        principal_name: Some(m),
    }))
}

/// A principal (`<trust domain>/ns/<ns>/sa/<sa>`, wildcards allowed at either end) as
/// a match on the peer certificate's SPIFFE URI.
fn principal_princ(p: &str, _td: &str) -> Princ {
    use xds_matcher::string_matcher::MatchPattern;
    let m = if p == "*" {
        regex_matcher(".+".into())
    } else if let Some(rest) = p.strip_prefix('*') {
        regex_matcher(format!("spiffe://.*{}", regex_escape(rest)))
    } else if let Some(prefix) = p.strip_suffix('*') {
        xds_matcher::StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{prefix}"))),
            ignore_case: false,
        }
    } else {
        xds_matcher::StringMatcher {
            match_pattern: Some(MatchPattern::Exact(format!("spiffe://{p}"))),
            ignore_case: false,
        }
    };
    authenticated(m)
}

/// `*` in a pattern as `.*`, everything else literal.
fn glob_regex(v: &str) -> String {
    v.split('*').map(regex_escape).collect::<Vec<_>>().join(".*")
}

/// `trustDomains`: the peer's SPIFFE URI is in that trust domain (`*` wildcards at
/// either end of the domain, as validation allows).
fn trust_domain_princ(td: &str) -> Princ {
    if !td.contains('*') {
        return authenticated(xds_matcher::StringMatcher {
            match_pattern: Some(xds_matcher::string_matcher::MatchPattern::Prefix(format!("spiffe://{td}/"))),
            ignore_case: false,
        });
    }
    let domain = td.split('*').map(regex_escape).collect::<Vec<_>>().join("[^/]*");
    authenticated(regex_matcher(format!("spiffe://{domain}/.*")))
}

fn namespace_princ(ns: &str) -> Princ {
    authenticated(regex_matcher(format!(".*/ns/{}/.*", glob_regex(ns))))
}

/// `serviceAccounts`: `ns/sa`, or `sa` in the policy's namespace.
fn service_account_princ(v: &str, policy_ns: &str) -> Princ {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    authenticated(regex_matcher(format!("spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?", regex_escape(ns), regex_escape(sa))))
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// `iss/sub` of a JWT, each matched in the jwt_authn filter's metadata. A leading `*`
/// matches any issuer and a subject by suffix; a trailing `*` an issuer by prefix and any
/// subject, as istiod does.
fn request_principal(v: &str) -> Princ {
    use xds_rbac::principal::Identifier as Id;
    let (iss, sub) = if v == "*" {
        ("*".to_string(), "*".to_string())
    } else if v.starts_with('*') {
        ("*".to_string(), v.to_string())
    } else if v.ends_with('*') {
        (v.to_string(), "*".to_string())
    } else {
        // The issuer is usually a URL: the subject is what follows the last slash.
        let (i, s) = v.rsplit_once('/').unwrap_or((v, ""));
        (i.to_string(), s.to_string())
    };
    princ_and(vec![princ(Id::Metadata(jwt_claim(&["iss"], &iss))), princ(Id::Metadata(jwt_claim(&["sub"], &sub)))])
}

fn ip_princ(v: &str, remote: bool) -> Option<Princ> {
    use xds_rbac::principal::Identifier as Id;
    cidr(v).map(|c| princ(if remote { Id::RemoteIp(c) } else { Id::DirectRemoteIp(c) }))
}

fn source_princ(s: &AuthorizationPolicyRulesFromSource, td: &str, tcp: bool, policy_ns: &str) -> Vec<Princ> {
    let mut ands = Vec::new();
    let mut add = |p: Option<Princ>, negate: bool| {
        if let Some(p) = p {
            ands.push(if negate { princ_not(p) } else { p });
        }
    };
    add(any_of(s.service_accounts.as_ref(), |v| Some(service_account_princ(v, policy_ns)), princ_or), false);
    add(any_of(s.not_service_accounts.as_ref(), |v| Some(service_account_princ(v, policy_ns)), princ_or), true);
    add(any_of(s.principals.as_ref(), |v| Some(principal_princ(v, td)), princ_or), false);
    add(any_of(s.not_principals.as_ref(), |v| Some(principal_princ(v, td)), princ_or), true);
    if !tcp {
        add(any_of(s.request_principals.as_ref(), |v| Some(request_principal(v)), princ_or), false);
        add(any_of(s.not_request_principals.as_ref(), |v| Some(request_principal(v)), princ_or), true);
    }
    add(any_of(s.namespaces.as_ref(), |v| Some(namespace_princ(v)), princ_or), false);
    add(any_of(s.not_namespaces.as_ref(), |v| Some(namespace_princ(v)), princ_or), true);
    add(any_of(s.trust_domains.as_ref(), |v| Some(trust_domain_princ(v)), princ_or), false);
    add(any_of(s.not_trust_domains.as_ref(), |v| Some(trust_domain_princ(v)), princ_or), true);
    add(any_of(s.ip_blocks.as_ref(), |v| ip_princ(v, false), princ_or), false);
    add(any_of(s.not_ip_blocks.as_ref(), |v| ip_princ(v, false), princ_or), true);
    add(any_of(s.remote_ip_blocks.as_ref(), |v| ip_princ(v, true), princ_or), false);
    add(any_of(s.not_remote_ip_blocks.as_ref(), |v| ip_princ(v, true), princ_or), true);
    ands
}

fn operation_perm(o: &AuthorizationPolicyRulesToOperation, tcp: bool) -> Vec<Perm> {
    use xds_rbac::permission::Rule;
    let mut ands = Vec::new();
    let mut add = |p: Option<Perm>, negate: bool| {
        if let Some(p) = p {
            ands.push(if negate { perm_not(p) } else { p });
        }
    };
    if !tcp {
        add(any_of(o.hosts.as_ref(), |v| Some(perm(Rule::Header(header(":authority", v, true)))), perm_or), false);
        add(any_of(o.not_hosts.as_ref(), |v| Some(perm(Rule::Header(header(":authority", v, true)))), perm_or), true);
        add(any_of(o.methods.as_ref(), |v| Some(perm(Rule::Header(header(":method", v, false)))), perm_or), false);
        add(any_of(o.not_methods.as_ref(), |v| Some(perm(Rule::Header(header(":method", v, false)))), perm_or), true);
        add(any_of(o.paths.as_ref(), |v| Some(path_perm(v)), perm_or), false);
        add(any_of(o.not_paths.as_ref(), |v| Some(path_perm(v)), perm_or), true);
    }
    add(any_of(o.ports.as_ref(), port_perm, perm_or), false);
    add(any_of(o.not_ports.as_ref(), port_perm, perm_or), true);
    ands
}

/// Whether a rule uses anything only HTTP can match.
fn http_only(rule: &AuthorizationPolicyRules) -> bool {
    let src = rule
        .from
        .iter()
        .flatten()
        .filter_map(|f| f.source.as_ref())
        .any(|s| s.request_principals.is_some() || s.not_request_principals.is_some());
    let op = rule.to.iter().flatten().filter_map(|t| t.operation.as_ref()).any(|o| {
        o.hosts.is_some()
            || o.not_hosts.is_some()
            || o.methods.is_some()
            || o.not_methods.is_some()
            || o.paths.is_some()
            || o.not_paths.is_some()
    });
    let when = rule.when.iter().flatten().any(|w| w.key.starts_with("request."));
    src || op || when
}

/// One Envoy policy for one Istio rule. For TCP, an ALLOW rule needing HTTP attributes
/// matches nothing (dropped); a DENY rule keeps only what TCP can match (broader deny),
/// as istiod does.
fn rule_policy(
    rule: &AuthorizationPolicyRules,
    td: &str,
    tcp: bool,
    deny: bool,
    policy_ns: &str,
) -> Option<xds_rbac::Policy> {
    if tcp && !deny && http_only(rule) {
        return None;
    }
    let mut perm_conds = Vec::new();
    let mut princ_conds = Vec::new();
    for w in rule.when.iter().flatten() {
        if tcp && w.key.starts_with("request.") {
            continue;
        }
        if w.key.starts_with("experimental.envoy.filters") {
            if let Some(p) = experimental_metadata(&w.key, w.values.as_deref().unwrap_or_default()) {
                perm_conds.push(p);
            }
            if let Some(p) = experimental_metadata(&w.key, w.not_values.as_deref().unwrap_or_default()) {
                perm_conds.push(perm_not(p));
            }
        } else if destination_key(&w.key) {
            if let Some(p) = any_of(w.values.as_ref(), |v| when_perm(&w.key, v), perm_or) {
                perm_conds.push(p);
            }
            if let Some(p) = any_of(w.not_values.as_ref(), |v| when_perm(&w.key, v), perm_or) {
                perm_conds.push(perm_not(p));
            }
        } else {
            if let Some(p) = any_of(w.values.as_ref(), |v| when_princ(&w.key, v, td), princ_or) {
                princ_conds.push(p);
            }
            if let Some(p) = any_of(w.not_values.as_ref(), |v| when_princ(&w.key, v, td), princ_or) {
                princ_conds.push(princ_not(p));
            }
        }
    }
    let tos: Vec<_> = rule.to.iter().flatten().filter_map(|t| t.operation.as_ref()).collect();
    let permissions = if tos.is_empty() {
        let mut v = perm_conds.clone();
        if v.is_empty() {
            v.push(perm(xds_rbac::permission::Rule::Any(true)));
        }
        vec![perm_and(v)]
    } else {
        tos.iter()
            .map(|o| {
                let mut v = operation_perm(o, tcp);
                v.extend(perm_conds.iter().cloned());
                if v.is_empty() {
                    v.push(perm(xds_rbac::permission::Rule::Any(true)));
                }
                perm_and(v)
            })
            .collect()
    };
    let froms: Vec<_> = rule.from.iter().flatten().filter_map(|f| f.source.as_ref()).collect();
    let principals = if froms.is_empty() {
        let mut v = princ_conds.clone();
        if v.is_empty() {
            v.push(princ(xds_rbac::principal::Identifier::Any(true)));
        }
        vec![princ_and(v)]
    } else {
        froms
            .iter()
            .map(|s| {
                let mut v = source_princ(s, td, tcp, policy_ns);
                v.extend(princ_conds.iter().cloned());
                if v.is_empty() {
                    v.push(princ(xds_rbac::principal::Identifier::Any(true)));
                }
                princ_and(v)
            })
            .collect()
    };
    Some(xds_rbac::Policy { permissions, principals, ..Default::default() })
}
