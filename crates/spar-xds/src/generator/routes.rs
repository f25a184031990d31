//! Route configurations: one virtual host per service, routes from VirtualServices.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use spar_api::istio::virtual_service::{
    VirtualServiceHttp, VirtualServiceHttpMatch, VirtualServiceHttpRouteDestination,
};
use spar_model::{Config, Service, resolve_host, short_forms};

use super::Scope;
use super::envoy::outbound_cluster_name;

/// A string match as Istio writes it (`exact`, `prefix` or `regex`).
fn string_matcher(
    exact: Option<&String>,
    prefix: Option<&String>,
    regex: Option<&String>,
    ignore_case: bool,
) -> Option<xds_matcher::StringMatcher> {
    use xds_matcher::string_matcher::MatchPattern;
    let pattern = if let Some(e) = exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = prefix {
        MatchPattern::Prefix(p.clone())
    } else if let Some(r) = regex {
        MatchPattern::SafeRegex(xds_matcher::RegexMatcher { regex: r.clone(), ..Default::default() })
    } else {
        return None;
    };
    Some(xds_matcher::StringMatcher { match_pattern: Some(pattern), ignore_case })
}

macro_rules! sm {
    ($m:expr) => {
        $m.as_ref().and_then(|m| string_matcher(m.exact.as_ref(), m.prefix.as_ref(), m.regex.as_ref(), false))
    };
}

fn header_matcher(name: &str, m: Option<xds_matcher::StringMatcher>, invert: bool) -> xds_route::HeaderMatcher {
    use xds_route::header_matcher::HeaderMatchSpecifier;
    xds_route::HeaderMatcher {
        name: name.to_string(),
        // An empty match (`headers: {x: {}}`) means "present".
        header_match_specifier: Some(match m {
            Some(m) => HeaderMatchSpecifier::StringMatch(m),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        invert_match: invert,
        ..Default::default()
    }
}

/// Istio's `HTTPMatchRequest` as an Envoy `RouteMatch`.
fn route_match(m: &VirtualServiceHttpMatch) -> xds_route::RouteMatch {
    use xds_route::route_match::PathSpecifier;
    let ignore_case = m.ignore_uri_case.unwrap_or(false);
    let path = match &m.uri {
        Some(u) if u.exact.is_some() => PathSpecifier::Path(u.exact.clone().unwrap_or_default()),
        Some(u) if u.prefix.is_some() => PathSpecifier::Prefix(u.prefix.clone().unwrap_or_default()),
        Some(u) if u.regex.is_some() => PathSpecifier::SafeRegex(xds_matcher::RegexMatcher {
            regex: u.regex.clone().unwrap_or_default(),
            ..Default::default()
        }),
        _ => PathSpecifier::Prefix("/".into()),
    };
    let mut headers = Vec::new();
    for (name, hm) in m.headers.iter().flatten() {
        headers.push(header_matcher(
            name,
            string_matcher(hm.exact.as_ref(), hm.prefix.as_ref(), hm.regex.as_ref(), false),
            false,
        ));
    }
    for (name, hm) in m.without_headers.iter().flatten() {
        headers.push(header_matcher(
            name,
            string_matcher(hm.exact.as_ref(), hm.prefix.as_ref(), hm.regex.as_ref(), false),
            true,
        ));
    }
    if let Some(sm) = sm!(m.method) {
        headers.push(header_matcher(":method", Some(sm), false));
    }
    if let Some(sm) = sm!(m.authority) {
        headers.push(header_matcher(":authority", Some(sm), false));
    }
    if let Some(sm) = sm!(m.scheme) {
        headers.push(header_matcher(":scheme", Some(sm), false));
    }
    let query_parameters = m
        .query_params
        .iter()
        .flatten()
        .map(|(name, q)| {
            use xds_route::query_parameter_matcher::QueryParameterMatchSpecifier;
            let spec = match string_matcher(q.exact.as_ref(), q.prefix.as_ref(), q.regex.as_ref(), false) {
                Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            };
            xds_route::QueryParameterMatcher { name: name.clone(), query_parameter_match_specifier: Some(spec) }
        })
        .collect();
    xds_route::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: ignore_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// istiod's default retry policy for sidecar routes.
fn default_retry() -> xds_route::RetryPolicy {
    xds_route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
        num_retries: Some(UInt32Value { value: 2 }),
        host_selection_retry_max_attempts: 5,
        retry_host_predicate: vec![xds_route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(xds_route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(envoy_types::util::pack_any(
                envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate::default(),
            ))),
        }],
        ..Default::default()
    }
}

fn route_action(cluster: xds_route::route_action::ClusterSpecifier) -> xds_route::route::Action {
    xds_route::route::Action::Route(xds_route::RouteAction {
        cluster_specifier: Some(cluster),
        // Istio disables Envoy's 15s default route timeout unless the VirtualService sets one.
        timeout: Some(Duration { seconds: 0, nanos: 0 }),
        retry_policy: Some(default_retry()),
        ..Default::default()
    })
}

/// A catch-all route to one cluster.
pub(super) fn to_cluster_route(name: &str, cluster: &str) -> xds_route::Route {
    xds_route::Route {
        name: name.into(),
        r#match: Some(xds_route::RouteMatch {
            path_specifier: Some(xds_route::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route_action(xds_route::route_action::ClusterSpecifier::Cluster(cluster.into()))),
        ..Default::default()
    }
}

/// The cluster a VirtualService destination names: host resolved in the VirtualService's
/// namespace, port from the destination, else the service's only port, else the
/// listener's port.
fn destination_cluster(
    scope: &Scope<'_>,
    vs_ns: &str,
    d: &VirtualServiceHttpRouteDestination,
    listener_port: u16,
) -> String {
    let host = resolve_host(&d.host, vs_ns, &scope.snap.mesh.domain);
    let port =
        d.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok()).unwrap_or_else(|| {
            match scope.snap.services.get(&host) {
                Some(s) if s.ports.len() == 1 => s.ports[0].port,
                _ => listener_port,
            }
        });
    outbound_cluster_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

/// Whether an `HTTPMatchRequest` applies to this proxy and listener port.
fn match_applies(scope: &Scope<'_>, m: &VirtualServiceHttpMatch, port: u16) -> bool {
    let port_ok = m.port.is_none_or(|p| i64::from(port) == p);
    let gw_ok = m.gateways.as_ref().is_none_or(|g| g.is_empty() || g.iter().any(|g| g == "mesh"));
    let labels_ok = m.source_labels.iter().flatten().all(|(k, v)| scope.proxy.labels.get(k) == Some(v));
    let ns_ok = m.source_namespace.as_ref().is_none_or(|ns| *ns == scope.proxy.namespace);
    port_ok && gw_ok && labels_ok && ns_ok
}

/// Envoy routes for one VirtualService `http` rule.
fn http_routes(scope: &Scope<'_>, vs_ns: &str, rule: &VirtualServiceHttp, port: u16, out: &mut Vec<xds_route::Route>) {
    let dests = rule.route.as_deref().unwrap_or_default();
    if dests.is_empty() {
        // redirect / directResponse / delegate: not translated yet (reported as unacted fields).
        return;
    }
    let cluster = if dests.len() == 1 {
        xds_route::route_action::ClusterSpecifier::Cluster(destination_cluster(
            scope,
            vs_ns,
            &dests[0].destination,
            port,
        ))
    } else {
        // Weights absent everywhere mean an even split.
        let all_unset = dests.iter().all(|d| d.weight.unwrap_or(0) == 0);
        let clusters = dests
            .iter()
            .map(|d| xds_route::weighted_cluster::ClusterWeight {
                name: destination_cluster(scope, vs_ns, &d.destination, port),
                weight: Some(UInt32Value {
                    value: if all_unset { 1 } else { u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0) },
                }),
                ..Default::default()
            })
            .filter(|c| c.weight.as_ref().is_some_and(|w| w.value > 0))
            .collect();
        xds_route::route_action::ClusterSpecifier::WeightedClusters(xds_route::WeightedCluster {
            clusters,
            ..Default::default()
        })
    };
    let mut action = route_action(cluster);
    if let xds_route::route::Action::Route(ra) = &mut action {
        if let Some(t) = rule.timeout.as_deref().and_then(parse_duration) {
            ra.timeout = Some(t);
        }
        if let Some(r) = &rule.retries {
            match r.attempts {
                Some(0) => ra.retry_policy = None,
                attempts => {
                    let mut rp = default_retry();
                    if let Some(a) = attempts {
                        rp.num_retries = Some(UInt32Value { value: u32::try_from(a).unwrap_or(0) });
                    }
                    if let Some(on) = &r.retry_on {
                        rp.retry_on = on.clone();
                    }
                    rp.per_try_timeout = r.per_try_timeout.as_deref().and_then(parse_duration);
                    ra.retry_policy = Some(rp);
                }
            }
        }
    }
    let matches: Vec<Option<&VirtualServiceHttpMatch>> = match rule.r#match.as_deref() {
        None | Some([]) => vec![None],
        Some(ms) => ms.iter().map(Some).collect(),
    };
    for m in matches {
        if m.is_some_and(|m| !match_applies(scope, m, port)) {
            continue;
        }
        let rm = m.map_or_else(
            || xds_route::RouteMatch {
                path_specifier: Some(xds_route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            },
            route_match,
        );
        out.push(xds_route::Route {
            name: rule.name.clone().or_else(|| m.and_then(|m| m.name.clone())).unwrap_or_default(),
            r#match: Some(rm),
            action: Some(action.clone()),
            ..Default::default()
        });
    }
}

/// Istio durations: `1s`, `500ms`, `1m`, `1h`, `1.5s`.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let (num, mult_ns): (&str, f64) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix("us").or_else(|| s.strip_suffix("µs")) {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e9)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e9)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e9)
    } else {
        return None;
    };
    let total = num.parse::<f64>().ok()? * mult_ns;
    if !total.is_finite() || total < 0.0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // bounded above
    let ns = total.min(1e18) as u64;
    Some(Duration { seconds: i64::try_from(ns / 1_000_000_000).ok()?, nanos: i32::try_from(ns % 1_000_000_000).ok()? })
}

/// The route configuration `name` for listener port `port`: a virtual host
/// `<host>:<port>` per HTTP service with that port. Domains already used by an earlier
/// virtual host are left out (Envoy rejects duplicates).
pub fn route_config(scope: &Scope<'_>, name: &str, port: u16, services: &[&Service]) -> xds_route::RouteConfiguration {
    let mut used = BTreeSet::new();
    let mut vhosts = Vec::new();
    for svc in services {
        let mut domains = Vec::new();
        let mut names = short_forms(&svc.hostname, &scope.proxy.namespace, &scope.snap.mesh.domain);
        names.extend(svc.addresses.iter().cloned());
        for n in names {
            for d in [n.clone(), format!("{n}:{port}")] {
                if used.insert(d.clone()) {
                    domains.push(d);
                }
            }
        }
        if domains.is_empty() {
            continue;
        }
        let vs: Option<&Config<_>> = scope.snap.virtual_services_for(&scope.proxy.namespace, &svc.hostname).next();
        let routes = match vs {
            Some(vs) => {
                let mut routes = Vec::new();
                for rule in vs.spec.http.iter().flatten() {
                    http_routes(scope, &vs.namespace, rule, port, &mut routes);
                }
                routes
            }
            None => vec![to_cluster_route("default", &outbound_cluster_name(port, "", &svc.hostname))],
        };
        vhosts.push(xds_route::VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    xds_route::RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: Some(BoolValue { value: false }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}
