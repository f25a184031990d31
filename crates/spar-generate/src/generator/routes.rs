//! Route configurations: one virtual host per service, routes from VirtualServices.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use spar_api::istio::virtual_service::{
    VirtualServiceHttp, VirtualServiceHttpMatch, VirtualServiceHttpRouteDestination, VirtualServiceSpec,
};
use spar_model::{Config, Service, resolve_host, short_forms};

use super::Scope;
use super::names::{CORS_FILTER, FAULT_FILTER, PASSTHROUGH_CLUSTER, outbound_cluster_name};
use super::route_actions::{
    cors_config, direct_response_action, fault_config, parse_duration, percent, redirect_action, string_matcher,
};

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

/// Istio's `HTTPMatchRequest` as an Envoy `RouteMatch`. Under Gateway API's semantics
/// (`gateway_api`), a path prefix matches whole path segments (`/get` matches `/get` and
/// `/get/x`, not `/getx`), as istiod's `PathSeparatedPrefix`.
fn route_match(m: &VirtualServiceHttpMatch, gateway_api: bool) -> xds_route::RouteMatch {
    use xds_route::route_match::PathSpecifier;
    let ignore_case = m.ignore_uri_case.unwrap_or(false);
    let path = match &m.uri {
        Some(u) if u.exact.is_some() => PathSpecifier::Path(u.exact.clone().unwrap_or_default()),
        Some(u) if gateway_api && u.prefix.as_deref().is_some_and(|p| p != "/") => {
            let p = u.prefix.as_deref().unwrap_or_default();
            PathSpecifier::PathSeparatedPrefix(p.strip_suffix('/').unwrap_or(p).to_string())
        }
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
    scope.route_to(outbound_cluster_name(port, d.subset.as_deref().unwrap_or(""), &host))
}

/// The consistent-hash policy of the DestinationRule (and subset) a destination uses.
fn hash_policy_for(
    scope: &Scope<'_>,
    vs_ns: &str,
    d: &VirtualServiceHttpRouteDestination,
    listener_port: u16,
) -> Vec<xds_route::route_action::HashPolicy> {
    let host = resolve_host(&d.host, vs_ns, &scope.snap.mesh.domain);
    let Some(svc) = scope.snap.services.get(&host) else { return Vec::new() };
    let Some(dr) = scope.snap.destination_rule_for(&scope.proxy.namespace, &scope.proxy.labels, svc) else {
        return Vec::new();
    };
    let port = d.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok()).unwrap_or(listener_port);
    super::policy::hash_policy(&super::policy::effective(&dr.spec, d.subset.as_deref().unwrap_or(""), port))
}

/// What a VirtualService is being turned into routes for: sidecars (`mesh`) or one
/// Gateway. A match's `gateways` list, when set, must name it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Binding<'a> {
    /// Sidecars.
    Mesh,
    /// The Gateway `namespace/name`.
    Gateway {
        /// Gateway namespace.
        namespace: &'a str,
        /// Gateway name.
        name: &'a str,
    },
}

impl Binding<'_> {
    /// Whether a match's `gateways` (written in namespace `vs_ns`; unset or empty means
    /// the VirtualService's own list, which already bound it) admits this binding.
    pub(super) fn admits(self, gateways: Option<&Vec<String>>, vs_ns: &str) -> bool {
        let Some(list) = gateways.filter(|g| !g.is_empty()) else { return true };
        match self {
            Self::Mesh => list.iter().any(|g| g == "mesh"),
            Self::Gateway { namespace, name } => {
                list.iter().any(|g| g != "mesh" && spar_model::gateway_ref_is(g, vs_ns, namespace, name))
            }
        }
    }
}

/// Whether an `HTTPMatchRequest` applies to this proxy and listener port.
fn match_applies(scope: &Scope<'_>, m: &VirtualServiceHttpMatch, port: u16, binding: Binding<'_>, vs_ns: &str) -> bool {
    let port_ok = m.port.is_none_or(|p| i64::from(port) == p);
    let gw_ok = binding.admits(m.gateways.as_ref(), vs_ns);
    let labels_ok = m.source_labels.iter().flatten().all(|(k, v)| scope.proxy.labels.get(k) == Some(v));
    let ns_ok = m.source_namespace.as_ref().is_none_or(|ns| *ns == scope.proxy.namespace);
    port_ok && gw_ok && labels_ok && ns_ok
}

/// Header operations as Istio writes them (`set`, `add`, `remove`).
struct HeaderOps<'a> {
    set: Option<&'a BTreeMap<String, String>>,
    add: Option<&'a BTreeMap<String, String>>,
    remove: Option<&'a Vec<String>>,
}

impl HeaderOps<'_> {
    fn to_add(&self) -> Vec<xds_core::HeaderValueOption> {
        use xds_core::header_value_option::HeaderAppendAction;
        let mk = |(k, v): (&String, &String), action: HeaderAppendAction| xds_core::HeaderValueOption {
            header: Some(xds_core::HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
            append_action: action as i32,
            ..Default::default()
        };
        let set = self.set.into_iter().flatten().map(|kv| mk(kv, HeaderAppendAction::OverwriteIfExistsOrAdd));
        let add = self.add.into_iter().flatten().map(|kv| mk(kv, HeaderAppendAction::AppendIfExistsOrAdd));
        set.chain(add).collect()
    }

    fn to_remove(&self) -> Vec<String> {
        self.remove.cloned().unwrap_or_default()
    }
}

macro_rules! header_ops {
    ($h:expr) => {
        $h.as_ref().map(|h| HeaderOps { set: h.set.as_ref(), add: h.add.as_ref(), remove: h.remove.as_ref() })
    };
}

/// A `RouteAction` for the rule's destinations, with rewrites, timeout, retries and
/// mirrors; `None` when the rule has no destinations. Under Gateway API's semantics a
/// backend that cannot be used (no cluster) answers 500, and a prefix rewritten to `/`
/// removes the matched prefix, as istiod does.
fn forward_action(
    scope: &Scope<'_>,
    vs_ns: &str,
    rule: &VirtualServiceHttp,
    port: u16,
    route: &mut xds_route::Route,
    gateway_api: bool,
) -> Option<xds_route::route::Action> {
    let dests = rule.route.as_deref().unwrap_or_default();
    if dests.is_empty() {
        return None;
    }
    let cluster = if let [only] = dests {
        // A single destination's header operations apply to the whole route.
        if let Some(h) = &only.headers {
            route.request_headers_to_add.extend(header_ops!(h.request).map(|o| o.to_add()).unwrap_or_default());
            route.request_headers_to_remove.extend(header_ops!(h.request).map(|o| o.to_remove()).unwrap_or_default());
            route.response_headers_to_add.extend(header_ops!(h.response).map(|o| o.to_add()).unwrap_or_default());
            route.response_headers_to_remove.extend(header_ops!(h.response).map(|o| o.to_remove()).unwrap_or_default());
        }
        xds_route::route_action::ClusterSpecifier::Cluster(destination_cluster(scope, vs_ns, &only.destination, port))
    } else {
        // Weights absent everywhere mean an even split.
        let all_unset = dests.iter().all(|d| d.weight.unwrap_or(0) == 0);
        let clusters = dests
            .iter()
            .filter_map(|d| {
                let weight =
                    if all_unset { 1 } else { u32::try_from(d.weight.unwrap_or(0)).ok().filter(|w| *w > 0)? };
                let h = d.headers.as_ref();
                Some(xds_route::weighted_cluster::ClusterWeight {
                    name: destination_cluster(scope, vs_ns, &d.destination, port),
                    weight: Some(UInt32Value { value: weight }),
                    request_headers_to_add: h
                        .and_then(|h| header_ops!(h.request))
                        .map(|o| o.to_add())
                        .unwrap_or_default(),
                    request_headers_to_remove: h
                        .and_then(|h| header_ops!(h.request))
                        .map(|o| o.to_remove())
                        .unwrap_or_default(),
                    response_headers_to_add: h
                        .and_then(|h| header_ops!(h.response))
                        .map(|o| o.to_add())
                        .unwrap_or_default(),
                    response_headers_to_remove: h
                        .and_then(|h| header_ops!(h.response))
                        .map(|o| o.to_remove())
                        .unwrap_or_default(),
                    ..Default::default()
                })
            })
            .collect();
        xds_route::route_action::ClusterSpecifier::WeightedClusters(xds_route::WeightedCluster {
            clusters,
            ..Default::default()
        })
    };
    let mut action = route_action(cluster);
    let xds_route::route::Action::Route(ra) = &mut action else { return Some(action) };
    if gateway_api {
        ra.cluster_not_found_response_code =
            xds_route::route_action::ClusterNotFoundResponseCode::InternalServerError as i32;
    }
    // Consistent hashing is configured on the destination's DestinationRule and applied
    // per route, as istiod does (from the first destination).
    ra.hash_policy = hash_policy_for(scope, vs_ns, &dests[0].destination, port);
    if let Some(t) = rule.timeout.as_deref().and_then(parse_duration) {
        ra.timeout = Some(t);
    }
    if let Some(r) = &rule.retries {
        if r.attempts == Some(0) {
            ra.retry_policy = None;
        } else {
            let mut rp = default_retry();
            if let Some(a) = r.attempts {
                rp.num_retries = Some(UInt32Value { value: u32::try_from(a).unwrap_or(0) });
            }
            if let Some(on) = &r.retry_on {
                // Istio lets status codes stand in the list; Envoy wants them apart.
                let (codes, policies): (Vec<&str>, Vec<&str>) =
                    on.split(',').map(str::trim).filter(|s| !s.is_empty()).partition(|s| s.parse::<u32>().is_ok());
                let mut policies = policies.join(",");
                if !codes.is_empty() && !policies.contains("retriable-status-codes") {
                    policies.push_str(if policies.is_empty() {
                        "retriable-status-codes"
                    } else {
                        ",retriable-status-codes"
                    });
                }
                rp.retry_on = policies;
                rp.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
            }
            rp.per_try_timeout = r.per_try_timeout.as_deref().and_then(parse_duration);
            if r.retry_ignore_previous_hosts == Some(false) {
                rp.retry_host_predicate.clear();
            }
            if r.retry_remote_localities == Some(true) {
                // Retries move on to other localities (priorities), as istiod configures it.
                use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
                rp.retry_priority = Some(xds_route::retry_policy::RetryPriority {
                    name: "envoy.retry_priorities.previous_priorities".into(),
                    config_type: Some(xds_route::retry_policy::retry_priority::ConfigType::TypedConfig(pack_any(
                        PreviousPrioritiesConfig { update_frequency: 2 },
                    ))),
                });
            }
            ra.retry_policy = Some(rp);
        }
    }
    if let Some(rw) = &rule.rewrite {
        if let Some(uri) = &rw.uri {
            // Under Gateway API's semantics a `/` after a segment prefix is redone per
            // match (`remove_matched_prefix`).
            ra.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            ra.regex_rewrite = Some(xds_matcher::RegexMatchAndSubstitute {
                pattern: Some(xds_matcher::RegexMatcher {
                    regex: rr.r#match.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                substitution: rr.rewrite.clone().unwrap_or_default(),
            });
        }
        if let Some(a) = &rw.authority {
            ra.host_rewrite_specifier =
                Some(xds_route::route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    let mirror = |host: &str, port_num: Option<i64>, subset: Option<&String>, pct: Option<f64>| {
        let d = VirtualServiceHttpRouteDestination {
            host: host.to_string(),
            port: port_num
                .map(|n| spar_api::istio::virtual_service::VirtualServiceHttpRouteDestinationPort { number: Some(n) }),
            subset: subset.cloned(),
        };
        xds_route::route_action::RequestMirrorPolicy {
            cluster: destination_cluster(scope, vs_ns, &d, port),
            runtime_fraction: Some(xds_core::RuntimeFractionalPercent {
                default_value: Some(percent(pct)),
                ..Default::default()
            }),
            trace_sampled: Some(BoolValue { value: false }),
            ..Default::default()
        }
    };
    if let Some(m) = &rule.mirror {
        let pct = rule.mirror_percentage.as_ref().and_then(|p| p.value).or(rule.mirror_percent.map(|p| p as f64));
        ra.request_mirror_policies.push(mirror(
            &m.host,
            m.port.as_ref().and_then(|p| p.number),
            m.subset.as_ref(),
            pct,
        ));
    }
    for m in rule.mirrors.iter().flatten() {
        let d = &m.destination;
        ra.request_mirror_policies.push(mirror(
            &d.host,
            d.port.as_ref().and_then(|p| p.number),
            d.subset.as_ref(),
            m.percentage.as_ref().and_then(|p| p.value),
        ));
    }
    Some(action)
}

/// Envoy routes for one VirtualService `http` rule.
fn http_routes(
    scope: &Scope<'_>,
    vs_ns: &str,
    rule: &VirtualServiceHttp,
    port: u16,
    binding: Binding<'_>,
    gateway_api: bool,
    out: &mut Vec<xds_route::Route>,
) {
    let matches: Vec<Option<&VirtualServiceHttpMatch>> = match rule.r#match.as_deref() {
        None | Some([]) => vec![None],
        Some(ms) => ms.iter().map(Some).collect(),
    };
    let mut template = xds_route::Route::default();
    let action = if let Some(rd) = &rule.redirect {
        redirect_action(rd, port)
    } else if let Some(d) = &rule.direct_response {
        direct_response_action(d)
    } else {
        match forward_action(scope, vs_ns, rule, port, &mut template, gateway_api) {
            Some(a) => a,
            // delegate: resolved by the caller when supported; nothing to route here.
            None => return,
        }
    };
    finish_route(rule, &mut template);
    let removes_prefix = gateway_api && rule.rewrite.as_ref().and_then(|r| r.uri.as_deref()) == Some("/");
    for m in matches {
        if m.is_some_and(|m| !match_applies(scope, m, port, binding, vs_ns)) {
            continue;
        }
        let rm = m.map_or_else(
            || xds_route::RouteMatch {
                path_specifier: Some(xds_route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            },
            |m| route_match(m, gateway_api),
        );
        let mut r = template.clone();
        r.name = rule.name.clone().or_else(|| m.and_then(|m| m.name.clone())).unwrap_or_default();
        let mut action = action.clone();
        if removes_prefix {
            remove_matched_prefix(&mut action, &rm);
        }
        r.r#match = Some(rm);
        r.action = Some(action);
        out.push(r);
    }
}

/// Gateway API's prefix rewrite to `/` after a segment prefix removes the matched prefix,
/// keeping a `/` when nothing is left (istiod's regex, as Envoy's `prefix_rewrite` would
/// leave `//x`).
fn remove_matched_prefix(action: &mut xds_route::route::Action, rm: &xds_route::RouteMatch) {
    let (xds_route::route::Action::Route(ra), Some(xds_route::route_match::PathSpecifier::PathSeparatedPrefix(prefix))) =
        (action, rm.path_specifier.as_ref())
    else {
        return;
    };
    ra.prefix_rewrite.clear();
    ra.regex_rewrite = Some(xds_matcher::RegexMatchAndSubstitute {
        pattern: Some(xds_matcher::RegexMatcher {
            regex: format!("^{}(/?)(.*)", spar_model::gateway_api::quote_meta(prefix)),
            ..Default::default()
        }),
        substitution: r"/\2".into(),
    });
}

/// The parts of a route that come from the rule alone: header operations, fault
/// injection and CORS.
fn finish_route(rule: &VirtualServiceHttp, template: &mut xds_route::Route) {
    if let Some(ops) = rule.headers.as_ref() {
        template.request_headers_to_add.extend(header_ops!(ops.request).map(|o| o.to_add()).unwrap_or_default());
        template.request_headers_to_remove.extend(header_ops!(ops.request).map(|o| o.to_remove()).unwrap_or_default());
        template.response_headers_to_add.extend(header_ops!(ops.response).map(|o| o.to_add()).unwrap_or_default());
        template
            .response_headers_to_remove
            .extend(header_ops!(ops.response).map(|o| o.to_remove()).unwrap_or_default());
    }
    if let Some(f) = &rule.fault {
        template.typed_per_filter_config.insert(FAULT_FILTER.into(), fault_config(f));
    }
    if let Some(c) = &rule.cors_policy {
        template.typed_per_filter_config.insert(CORS_FILTER.into(), cors_config(c));
    }
}

/// Envoy routes for a VirtualService's `http` rules (delegates expanded) on `port`, as
/// seen by `binding`.
pub(super) fn vs_routes(
    scope: &Scope<'_>,
    vs: &Config<VirtualServiceSpec>,
    port: u16,
    binding: Binding<'_>,
) -> Vec<xds_route::Route> {
    let mut routes = Vec::new();
    let gateway_api = vs.generated.is_some();
    for (ns, rule) in expand_delegates(scope, vs) {
        http_routes(scope, ns, &rule, port, binding, gateway_api, &mut routes);
    }
    routes
}

/// The root VirtualService's `http` rules with each `delegate` replaced by the delegate
/// VirtualService's rules, as istiod merges them: the delegate's matches are ANDed with
/// the root rule's (a field set on both takes the delegate's, narrower, value), and the
/// delegate's actions win, with the root's filling what the delegate leaves unset.
/// Each rule comes with the namespace its hosts resolve in.
fn expand_delegates<'a>(
    scope: &'a Scope<'_>,
    root: &'a Config<VirtualServiceSpec>,
) -> Vec<(&'a str, Cow<'a, VirtualServiceHttp>)> {
    let mut out = Vec::new();
    for rule in root.spec.http.iter().flatten() {
        let Some(d) = &rule.delegate else {
            out.push((root.namespace.as_str(), Cow::Borrowed(rule)));
            continue;
        };
        let ns = d.namespace.clone().unwrap_or_else(|| root.namespace.clone());
        let name = d.name.clone().unwrap_or_default();
        let Some((delegate, _)) = scope.snap.virtual_services.iter().find(|(c, hosts)| {
            c.name == name
                && c.namespace == ns
                && hosts.is_empty()
                && spar_model::export_allows(
                    c.spec.export_to.as_deref().unwrap_or_default(),
                    &c.namespace,
                    &root.namespace,
                )
        }) else {
            continue;
        };
        for drule in delegate.spec.http.iter().flatten() {
            let mut merged = drule.clone();
            merged.r#match = merge_matches(rule.r#match.as_deref(), drule.r#match.as_deref());
            macro_rules! inherit {
                ($($f:ident),*) => { $( if merged.$f.is_none() { merged.$f = rule.$f.clone(); } )* };
            }
            inherit!(timeout, retries, fault, cors_policy, headers, mirror, mirror_percentage, mirrors, rewrite);
            out.push((delegate.namespace.as_str(), Cow::Owned(merged)));
        }
    }
    out
}

fn merge_matches(
    root: Option<&[VirtualServiceHttpMatch]>,
    delegate: Option<&[VirtualServiceHttpMatch]>,
) -> Option<Vec<VirtualServiceHttpMatch>> {
    match (root.filter(|r| !r.is_empty()), delegate.filter(|d| !d.is_empty())) {
        (None, None) => None,
        (Some(r), None) => Some(r.to_vec()),
        (None, Some(d)) => Some(d.to_vec()),
        (Some(r), Some(d)) => {
            let mut out = Vec::new();
            for rm in r {
                for dm in d {
                    let mut m = dm.clone();
                    macro_rules! fill {
                        ($($f:ident),*) => { $( if m.$f.is_none() { m.$f = rm.$f.clone(); } )* };
                    }
                    fill!(
                        uri,
                        scheme,
                        method,
                        authority,
                        port,
                        source_labels,
                        source_namespace,
                        gateways,
                        ignore_uri_case,
                        query_params,
                        without_headers
                    );
                    let mut headers = rm.headers.clone().unwrap_or_default();
                    headers.extend(dm.headers.clone().unwrap_or_default());
                    m.headers = (!headers.is_empty()).then_some(headers);
                    out.push(m);
                }
            }
            Some(out)
        }
    }
}

/// Moves the retry policy that every forwarding route of `vh` carries alike up to `vh`
/// itself. Envoy gives a virtual host's policy to each of its routes that has none of its
/// own, so requests are retried exactly as before; istiod repeats the policy per route,
/// 230-odd bytes each, half of a full mesh's route configuration. Left per route when
/// the forwarding routes differ, or one has none (`retries: {attempts: 0}`): that route
/// would take the host's.
// EnvoyFilter patches, once applied, must come before this: a merge into a route's
// policy would otherwise start from none.
pub(super) fn share_retry_policy(vh: &mut xds_route::VirtualHost) {
    let mut actions = vh.routes.iter().filter_map(|r| match &r.action {
        Some(xds_route::route::Action::Route(a)) => Some(a),
        _ => None,
    });
    let Some(Some(policy)) = actions.next().map(|a| &a.retry_policy) else { return };
    if vh.retry_policy.is_some() || !actions.all(|a| a.retry_policy.as_ref() == Some(policy)) {
        return;
    }
    vh.retry_policy = Some(policy.clone());
    for r in &mut vh.routes {
        if let Some(xds_route::route::Action::Route(a)) = &mut r.action {
            a.retry_policy = None;
        }
    }
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
        // ExternalName Services aliasing this host route as it does (istiod's aliases).
        for alias in &svc.aliases {
            names.extend(short_forms(alias, &scope.proxy.namespace, &scope.snap.mesh.domain));
        }
        names.extend(svc.addresses.iter().cloned());
        // A headless service's pods by name (`web-0.web.ns.svc.cluster.local`, as a
        // StatefulSet's pods are named), each reached at the address the client dialled.
        if svc.is_headless() {
            names.push(format!("*.{}", svc.hostname));
        }
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
        // A VirtualService with no route for this port leaves the service its default
        // route, as in istiod.
        let routes = match vs.map(|vs| vs_routes(scope, vs, port, Binding::Mesh)).filter(|r| !r.is_empty()) {
            Some(routes) => routes,
            None => {
                let mut r = to_cluster_route("default", &outbound_cluster_name(port, "", &svc.hostname));
                if let (Some(xds_route::route::Action::Route(ra)), Some(dr)) = (
                    r.action.as_mut(),
                    scope.snap.destination_rule_for(&scope.proxy.namespace, &scope.proxy.labels, svc),
                ) {
                    ra.hash_policy = super::policy::hash_policy(&super::policy::effective(&dr.spec, "", port));
                }
                vec![r]
            }
        };
        let mut vh = xds_route::VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            include_request_attempt_count: true,
            ..Default::default()
        };
        share_retry_policy(&mut vh);
        vhosts.push(vh);
    }
    // Hosts outside the registry: refused with 502 under REGISTRY_ONLY; passed through
    // under ALLOW_ANY when the proxy captures traffic (without capture there is no
    // original destination to pass through to, so unknown hosts get Envoy's 404).
    if scope.registry_only {
        vhosts.push(xds_route::VirtualHost {
            name: "block_all".into(),
            domains: vec!["*".into()],
            routes: vec![xds_route::Route {
                name: "block_all".into(),
                r#match: Some(xds_route::RouteMatch {
                    path_specifier: Some(xds_route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(xds_route::route::Action::DirectResponse(xds_route::DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        });
    } else if scope.proxy.interception != spar_model::InterceptionMode::None {
        vhosts.push(xds_route::VirtualHost {
            name: "allow_any".into(),
            domains: vec!["*".into()],
            routes: vec![to_cluster_route("allow_any", PASSTHROUGH_CLUSTER)],
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
