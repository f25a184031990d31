//! AuthorizationPolicy as stock Envoy RBAC filters, translated as istiod's
//! `pilot/pkg/security/authz` builder does: one Envoy policy per rule, named
//! `ns[<ns>]-policy[<name>]-rule[<i>]`; permissions from `to` and the destination-side
//! `when` keys, principals from `from` and the source-side `when` keys; DENY before
//! ALLOW, and an ALLOW policy that applies means everything else is denied.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::rbac::v3 as xds_rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as xds_http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as xds_net_rbac;
use spar_api::istio::authorization_policy::{AuthorizationPolicyAction as Action, AuthorizationPolicySpec};
use spar_model::{Config, ExtAuthzApi, Snapshot};

use super::authz_rules::{perm, perm_not, princ, princ_not, rule_policy};
use super::{Scope, ext_authz};
pub use ext_authz::ResolvedProvider;

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
        cluster: super::names::outbound_cluster_name(provider.port, "", &svc.hostname),
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
