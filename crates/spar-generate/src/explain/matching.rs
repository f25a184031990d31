//! Envoy's route matching, as explain follows it: path, headers (with Envoy's rules for
//! missing headers and inverted matches) and query parameters; and how a match reads.

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch, header_matcher, query_parameter_matcher, route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};

use super::Request;

pub(super) fn route_matches(m: &RouteMatch, req: &Request) -> bool {
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let path = req.path_only();
    let (p, want_cmp) = if case_sensitive { (path.to_string(), true) } else { (path.to_ascii_lowercase(), false) };
    let fold = |s: &str| if want_cmp { s.to_string() } else { s.to_ascii_lowercase() };
    let path_ok = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(x)) => p.starts_with(&fold(x)),
        Some(route_match::PathSpecifier::Path(x)) => p == fold(x),
        Some(route_match::PathSpecifier::SafeRegex(re)) => full_regex(&re.regex, path),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(x)) => {
            let x = fold(x);
            p == x || p.strip_prefix(&x).is_some_and(|rest| rest.starts_with('/'))
        }
        Some(_) => false,
        None => true,
    };
    path_ok
        && m.headers.iter().all(|h| header_matches(h, req))
        && m.query_parameters.iter().all(|q| query_matches(q, req))
        && m.grpc.is_none()
        && m.dynamic_metadata.is_empty()
}

pub(super) fn full_regex(re: &str, value: &str) -> bool {
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(value))
}

pub(super) fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let (v, fold) = if m.ignore_case { (value.to_ascii_lowercase(), true) } else { (value.to_string(), false) };
    let f = |s: &str| if fold { s.to_ascii_lowercase() } else { s.to_string() };
    match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(x)) => v == f(x),
        Some(string_matcher::MatchPattern::Prefix(x)) => v.starts_with(&f(x)),
        Some(string_matcher::MatchPattern::Suffix(x)) => v.ends_with(&f(x)),
        Some(string_matcher::MatchPattern::Contains(x)) => v.contains(&f(x)),
        Some(string_matcher::MatchPattern::SafeRegex(re)) => full_regex(&re.regex, value),
        _ => false,
    }
}

/// Envoy's `HeaderUtility::matchHeaders`: a missing header matches only `present_match:
/// false` (or, inverted, `present_match: true`), unless it is treated as empty. The
/// deprecated matchers are still honoured by Envoy, so they are read too.
#[allow(deprecated)]
pub(super) fn header_matches(h: &HeaderMatcher, req: &Request) -> bool {
    use header_matcher::HeaderMatchSpecifier as S;
    let value = req.header(&h.name.to_ascii_lowercase());
    let present_type = matches!(h.header_match_specifier, Some(S::PresentMatch(_)));
    let present_want = matches!(h.header_match_specifier, Some(S::PresentMatch(true)));
    let Some(v) = value.or_else(|| h.treat_missing_header_as_empty.then(String::new)) else {
        return if h.invert_match { present_type && present_want } else { present_type && !present_want };
    };
    let hit = match &h.header_match_specifier {
        Some(S::ExactMatch(x)) => v == *x,
        Some(S::SafeRegexMatch(re)) => full_regex(&re.regex, &v),
        Some(S::RangeMatch(r)) => v.parse::<i64>().is_ok_and(|n| n >= r.start && n < r.end),
        Some(S::PresentMatch(p)) => *p,
        Some(S::PrefixMatch(x)) => v.starts_with(x.as_str()),
        Some(S::SuffixMatch(x)) => v.ends_with(x.as_str()),
        Some(S::ContainsMatch(x)) => v.contains(x.as_str()),
        Some(S::StringMatch(sm)) => string_matches(sm, &v),
        None => true,
    };
    hit != h.invert_match
}

pub(super) fn query_matches(q: &QueryParameterMatcher, req: &Request) -> bool {
    let query = req.query();
    let value = query.iter().find(|(k, _)| *k == q.name).map(|(_, v)| v.as_str());
    match (&q.query_parameter_match_specifier, value) {
        (Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(p)), v) => v.is_some() == *p,
        (Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm)), Some(v)) => {
            string_matches(sm, v)
        }
        (None, v) => v.is_some(),
        _ => false,
    }
}

pub(super) fn describe_string(m: &StringMatcher) -> String {
    let ic = if m.ignore_case { " (ignore case)" } else { "" };
    let s = match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(x)) => format!("exact {x}"),
        Some(string_matcher::MatchPattern::Prefix(x)) => format!("prefix {x}"),
        Some(string_matcher::MatchPattern::Suffix(x)) => format!("suffix {x}"),
        Some(string_matcher::MatchPattern::Contains(x)) => format!("contains {x}"),
        Some(string_matcher::MatchPattern::SafeRegex(re)) => format!("regex {}", re.regex),
        _ => "other".into(),
    };
    format!("{s}{ic}")
}

/// A matched route's conditions, one phrase each.
#[allow(deprecated)]
pub fn describe_match(m: &RouteMatch) -> String {
    use header_matcher::HeaderMatchSpecifier as S;
    let mut parts = Vec::new();
    match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => parts.push(format!("prefix {p}")),
        Some(route_match::PathSpecifier::Path(p)) => parts.push(format!("path {p}")),
        Some(route_match::PathSpecifier::SafeRegex(re)) => parts.push(format!("path regex {}", re.regex)),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => parts.push(format!("path_separated_prefix {p}")),
        _ => {}
    }
    for h in &m.headers {
        let what = match &h.header_match_specifier {
            Some(S::ExactMatch(x)) => format!("exact {x}"),
            Some(S::SafeRegexMatch(re)) => format!("regex {}", re.regex),
            Some(S::PresentMatch(p)) => if *p { "present" } else { "absent" }.to_string(),
            Some(S::PrefixMatch(x)) => format!("prefix {x}"),
            Some(S::SuffixMatch(x)) => format!("suffix {x}"),
            Some(S::ContainsMatch(x)) => format!("contains {x}"),
            Some(S::StringMatch(sm)) => describe_string(sm),
            Some(S::RangeMatch(r)) => format!("in [{}, {})", r.start, r.end),
            None => "any".into(),
        };
        let not = if h.invert_match { "not " } else { "" };
        parts.push(format!("header {} {not}{what}", h.name));
    }
    for q in &m.query_parameters {
        let what = match &q.query_parameter_match_specifier {
            Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm)) => describe_string(sm),
            _ => "present".into(),
        };
        parts.push(format!("query {} {what}", q.name));
    }
    parts.join(" and ")
}
