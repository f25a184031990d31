use super::matching::route_matches;
use super::*;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch, header_matcher, query_parameter_matcher, route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};

fn req(path: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        authority: "backend".into(),
        port: 9080,
        path: path.into(),
        method: "GET".into(),
        headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Default::default()
    }
}

fn exact(name: &str, v: &str, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        invert_match: invert,
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(v.into())),
            ignore_case: false,
        })),
        ..Default::default()
    }
}

#[test]
fn header_matching_follows_envoy_for_missing_headers() {
    let m = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
        headers: vec![exact("x-user", "tester", false)],
        ..Default::default()
    };
    assert!(route_matches(&m, &req("/", &[("X-User", "tester")])));
    assert!(!route_matches(&m, &req("/", &[("x-user", "other")])));
    assert!(!route_matches(&m, &req("/", &[])));
    // Inverted: a missing header does not match (Envoy), a different value does.
    let inv = RouteMatch { headers: vec![exact("x-user", "tester", true)], ..m.clone() };
    assert!(route_matches(&inv, &req("/", &[("x-user", "other")])));
    assert!(!route_matches(&inv, &req("/", &[])));
    let absent = HeaderMatcher {
        name: "x-debug".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(false)),
        ..Default::default()
    };
    let m2 = RouteMatch { headers: vec![absent], ..m };
    assert!(route_matches(&m2, &req("/", &[])));
    assert!(!route_matches(&m2, &req("/", &[("x-debug", "1")])));
}

#[test]
fn paths_and_queries() {
    let sep = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::PathSeparatedPrefix("/api".into())),
        ..Default::default()
    };
    assert!(route_matches(&sep, &req("/api", &[])));
    assert!(route_matches(&sep, &req("/api/v1?x=1", &[])));
    assert!(!route_matches(&sep, &req("/apis", &[])));
    let re = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "/v[0-9]+".into(),
                ..Default::default()
            },
        )),
        query_parameters: vec![QueryParameterMatcher {
            name: "debug".into(),
            query_parameter_match_specifier: Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(
                true,
            )),
        }],
        ..Default::default()
    };
    assert!(route_matches(&re, &req("/v2?debug=1", &[])));
    assert!(!route_matches(&re, &req("/v2", &[])));
    assert!(!route_matches(&re, &req("/v2/x?debug", &[])), "regex is a full match");
    let ci = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/API".into())),
        case_sensitive: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    };
    assert!(route_matches(&ci, &req("/api/x", &[])));
}

/// A route without a retry policy of its own is retried by its virtual host's.
#[test]
fn retries_come_from_the_route_or_else_its_virtual_host() {
    use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, RouteAction};
    let policy = |n: u32, on: &str| RetryPolicy {
        retry_on: on.into(),
        num_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: n }),
        ..Default::default()
    };
    let route = |p: Option<RetryPolicy>| Route {
        action: Some(route::Action::Route(RouteAction { retry_policy: p, ..Default::default() })),
        ..Default::default()
    };
    let vh = VirtualHost { retry_policy: Some(policy(2, "connect-failure")), ..Default::default() };
    assert_eq!(settings(&vh, &route(None)), ["retries 2 on connect-failure"]);
    assert_eq!(settings(&vh, &route(Some(policy(5, "5xx")))), ["retries 5 on 5xx"]);
    assert!(settings(&VirtualHost::default(), &route(None)).is_empty());
}

#[test]
fn virtual_host_precedence() {
    let vh = |name: &str, domains: &[&str]| VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| (*d).into()).collect(),
        ..Default::default()
    };
    let rc = RouteConfiguration {
        virtual_hosts: vec![
            vh("any", &["*"]),
            vh("prefix", &["backend*"]),
            vh("suffix", &["*.svc.cluster.local"]),
            vh("longer", &["*.default.svc.cluster.local"]),
            vh("exact", &["backend.default.svc.cluster.local:9080"]),
        ],
        ..Default::default()
    };
    let name = |a: &str| pick_virtual_host(&rc, a).map(|v| v.name.clone());
    assert_eq!(name("backend.default.svc.cluster.local:9080").as_deref(), Some("exact"));
    assert_eq!(name("Backend.Default.svc.cluster.local").as_deref(), Some("longer"));
    assert_eq!(name("x.other.svc.cluster.local").as_deref(), Some("suffix"));
    assert_eq!(name("backend:9080").as_deref(), Some("prefix"));
    assert_eq!(name("example.com").as_deref(), Some("any"));
}

#[test]
fn ports_are_stripped_from_authorities() {
    assert_eq!(strip_port("backend:9080"), "backend");
    assert_eq!(strip_port("backend"), "backend");
    assert_eq!(strip_port("[::1]:80"), "::1");
    assert_eq!(strip_port("::1"), "::1");
    assert_eq!(strip_port("a.example.com:x"), "a.example.com:x");
    let rc = RouteConfiguration {
        ignore_port_in_host_matching: true,
        virtual_hosts: vec![VirtualHost {
            name: "gw".into(),
            domains: vec!["*.example.com".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = Explanation::default();
    let r = Request { authority: "a.example.com:8080".into(), ..req("/", &[]) };
    http(&ProxyResources::default(), &rc, &r, &mut out);
    assert_eq!(out.virtual_host.as_deref(), Some("gw"), "{out:?}");
}

#[test]
fn cidr() {
    let c = CidrRange {
        address_prefix: "10.0.0.0".into(),
        prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 8 }),
    };
    assert_eq!(cidr_contains(&c, IpAddr::from([10, 1, 2, 3])), Some(8));
    assert_eq!(cidr_contains(&c, IpAddr::from([11, 1, 2, 3])), None);
    assert_eq!(cidr_contains(&c, IpAddr::from(std::net::Ipv6Addr::LOCALHOST)), None);
}
