//! AuthorizationPolicy rules as Envoy RBAC: sources as principals, operations and
//! conditions as permissions, with istiod's matchers (wildcards, path templates, SPIFFE
//! identities, JWT claims).

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::rbac::v3 as xds_rbac;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use spar_api::istio::authorization_policy::{
    AuthorizationPolicyRules, AuthorizationPolicyRulesFromSource, AuthorizationPolicyRulesToOperation,
};

use super::l4::cidr;

/// Istio's string wildcards: `*` anything, `*x` suffix, `x*` prefix, else exact.
pub(super) fn wildcard(v: &str, ignore_case: bool) -> xds_matcher::StringMatcher {
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

pub(super) fn header(name: &str, v: &str, ignore_case: bool) -> xds_route::HeaderMatcher {
    use xds_route::header_matcher::HeaderMatchSpecifier;
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        HeaderMatchSpecifier::StringMatch(wildcard(v, ignore_case))
    };
    xds_route::HeaderMatcher { name: name.into(), header_match_specifier: Some(spec), ..Default::default() }
}

pub(super) fn jwt_claim(path: &[&str], value: &str) -> xds_matcher::MetadataMatcher {
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

pub(super) type Perm = xds_rbac::Permission;
pub(super) type Princ = xds_rbac::Principal;

pub(super) fn perm(rule: xds_rbac::permission::Rule) -> Perm {
    Perm { rule: Some(rule) }
}
pub(super) fn perm_or(v: Vec<Perm>) -> Perm {
    perm(xds_rbac::permission::Rule::OrRules(xds_rbac::permission::Set { rules: v }))
}
pub(super) fn perm_and(v: Vec<Perm>) -> Perm {
    perm(xds_rbac::permission::Rule::AndRules(xds_rbac::permission::Set { rules: v }))
}
pub(super) fn perm_not(p: Perm) -> Perm {
    perm(xds_rbac::permission::Rule::NotRule(Box::new(p)))
}
pub(super) fn princ(id: xds_rbac::principal::Identifier) -> Princ {
    Princ { identifier: Some(id) }
}
pub(super) fn princ_or(v: Vec<Princ>) -> Princ {
    princ(xds_rbac::principal::Identifier::OrIds(xds_rbac::principal::Set { ids: v }))
}
pub(super) fn princ_and(v: Vec<Princ>) -> Princ {
    princ(xds_rbac::principal::Identifier::AndIds(xds_rbac::principal::Set { ids: v }))
}
pub(super) fn princ_not(p: Princ) -> Princ {
    princ(xds_rbac::principal::Identifier::NotId(Box::new(p)))
}

pub(super) fn port_perm(p: &str) -> Option<Perm> {
    p.parse::<u32>().ok().map(|n| perm(xds_rbac::permission::Rule::DestinationPort(n)))
}

pub(super) fn path_perm(p: &str) -> Perm {
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
pub(super) fn any_of<T>(values: Option<&Vec<String>>, f: impl Fn(&str) -> Option<T>, or: fn(Vec<T>) -> T) -> Option<T> {
    let v: Vec<T> = values.into_iter().flatten().filter_map(|s| f(s)).collect();
    (!v.is_empty()).then(|| or(v))
}

/// Whether a `when` key is about the destination (permission side).
pub(super) fn destination_key(key: &str) -> bool {
    matches!(key, "destination.ip" | "destination.port" | "connection.sni")
        || key.starts_with("experimental.envoy.filters")
}

/// `experimental.envoy.filters.<filter>[<key>]`: a match on dynamic metadata, all values
/// in one matcher.
pub(super) fn experimental_metadata(key: &str, values: &[String]) -> Option<Perm> {
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

pub(super) fn when_perm(key: &str, v: &str) -> Option<Perm> {
    use xds_rbac::permission::Rule;
    match key {
        "destination.ip" => cidr(v).map(|c| perm(Rule::DestinationIp(c))),
        "destination.port" => port_perm(v),
        "connection.sni" => Some(perm(Rule::RequestedServerName(wildcard(v, false)))),
        _ => None,
    }
}

pub(super) fn when_princ(key: &str, v: &str, td: &str) -> Option<Princ> {
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

pub(super) fn regex_matcher(regex: String) -> xds_matcher::StringMatcher {
    xds_matcher::StringMatcher {
        match_pattern: Some(xds_matcher::string_matcher::MatchPattern::SafeRegex(xds_matcher::RegexMatcher {
            regex,
            ..Default::default()
        })),
        ignore_case: false,
    }
}

pub(super) fn authenticated(m: xds_matcher::StringMatcher) -> Princ {
    princ(xds_rbac::principal::Identifier::Authenticated(xds_rbac::principal::Authenticated {
        principal_name: Some(m),
    }))
}

/// A principal (`<trust domain>/ns/<ns>/sa/<sa>`, wildcards allowed at either end) as
/// a match on the peer certificate's SPIFFE URI.
pub(super) fn principal_princ(p: &str, _td: &str) -> Princ {
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
pub(super) fn glob_regex(v: &str) -> String {
    v.split('*').map(regex_escape).collect::<Vec<_>>().join(".*")
}

/// `trustDomains`: the peer's SPIFFE URI is in that trust domain (`*` wildcards at
/// either end of the domain, as validation allows).
pub(super) fn trust_domain_princ(td: &str) -> Princ {
    if !td.contains('*') {
        return authenticated(xds_matcher::StringMatcher {
            match_pattern: Some(xds_matcher::string_matcher::MatchPattern::Prefix(format!("spiffe://{td}/"))),
            ignore_case: false,
        });
    }
    let domain = td.split('*').map(regex_escape).collect::<Vec<_>>().join("[^/]*");
    authenticated(regex_matcher(format!("spiffe://{domain}/.*")))
}

pub(super) fn namespace_princ(ns: &str) -> Princ {
    authenticated(regex_matcher(format!(".*/ns/{}/.*", glob_regex(ns))))
}

/// `serviceAccounts`: `ns/sa`, or `sa` in the policy's namespace.
pub(super) fn service_account_princ(v: &str, policy_ns: &str) -> Princ {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    authenticated(regex_matcher(format!("spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?", regex_escape(ns), regex_escape(sa))))
}

pub(super) fn regex_escape(s: &str) -> String {
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
pub(super) fn request_principal(v: &str) -> Princ {
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

pub(super) fn ip_princ(v: &str, remote: bool) -> Option<Princ> {
    use xds_rbac::principal::Identifier as Id;
    cidr(v).map(|c| princ(if remote { Id::RemoteIp(c) } else { Id::DirectRemoteIp(c) }))
}

pub(super) fn source_princ(s: &AuthorizationPolicyRulesFromSource, td: &str, tcp: bool, policy_ns: &str) -> Vec<Princ> {
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

pub(super) fn operation_perm(o: &AuthorizationPolicyRulesToOperation, tcp: bool) -> Vec<Perm> {
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
pub(super) fn http_only(rule: &AuthorizationPolicyRules) -> bool {
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
pub(super) fn rule_policy(
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
