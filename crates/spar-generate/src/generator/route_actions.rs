//! What a VirtualService rule turns into besides forwarding: fault injection and CORS
//! (per-route filter configs), redirects and direct responses.

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as xds_fault_common;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as xds_cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as xds_fault;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::envoy::r#type::v3 as xds_type;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration};
use envoy_types::util::pack_any;
use spar_api::istio::virtual_service::{
    VirtualServiceHttpCorsPolicy, VirtualServiceHttpCorsPolicyUnmatchedPreflights, VirtualServiceHttpDirectResponse,
    VirtualServiceHttpFault, VirtualServiceHttpRedirect,
};

/// Istio percentages (0-100, fractional) as Envoy's per-million fraction.
pub(super) fn percent(value: Option<f64>) -> xds_type::FractionalPercent {
    let v = value.unwrap_or(100.0).clamp(0.0, 100.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=1e6
    let numerator = (v * 10_000.0).round() as u32;
    xds_type::FractionalPercent {
        numerator,
        denominator: xds_type::fractional_percent::DenominatorType::Million as i32,
    }
}

/// gRPC status names Istio accepts in `fault.abort.grpcStatus`.
pub(super) fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).and_then(|i| u32::try_from(i).ok()).or_else(|| name.parse().ok())
}

pub(super) fn fault_config(f: &VirtualServiceHttpFault) -> Any {
    use xds_fault::fault_abort::ErrorType;
    use xds_fault_common::fault_delay::FaultDelaySecifier;
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = parse_duration(d.fixed_delay.as_deref()?)?;
        let pct = d.percentage.as_ref().and_then(|p| p.value).or(d.percent.map(f64::from));
        Some(xds_fault_common::FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(fixed)),
            percentage: Some(percent(pct)),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error_type = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(s), _) => ErrorType::HttpStatus(u32::try_from(s).ok()?),
            (None, Some(g)) => ErrorType::GrpcStatus(grpc_code(g)?),
            _ => return None,
        };
        Some(xds_fault::FaultAbort {
            error_type: Some(error_type),
            percentage: Some(percent(a.percentage.as_ref().and_then(|p| p.value))),
            ..Default::default()
        })
    });
    pack_any(xds_fault::HttpFault { delay, abort, ..Default::default() })
}

pub(super) fn cors_config(c: &VirtualServiceHttpCorsPolicy) -> Any {
    let mut origins: Vec<xds_matcher::StringMatcher> = c
        .allow_origins
        .iter()
        .flatten()
        .filter_map(|o| string_matcher(o.exact.as_ref(), o.prefix.as_ref(), o.regex.as_ref(), false))
        .collect();
    // The deprecated `allowOrigin` list is exact origins.
    origins.extend(c.allow_origin.iter().flatten().filter_map(|o| string_matcher(Some(o), None, None, false)));
    let join = |v: &Option<Vec<String>>| v.as_deref().unwrap_or_default().join(",");
    let max_age = c.max_age.as_deref().and_then(parse_duration).map(|d| d.seconds.to_string()).unwrap_or_default();
    pack_any(xds_cors::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: join(&c.allow_methods),
        allow_headers: join(&c.allow_headers),
        expose_headers: join(&c.expose_headers),
        max_age,
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        forward_not_matching_preflights: c
            .unmatched_preflights
            .as_ref()
            .map(|u| BoolValue { value: !matches!(u, VirtualServiceHttpCorsPolicyUnmatchedPreflights::Ignore) }),
        ..Default::default()
    })
}

/// A redirect on listener port `port`. `derivePort: FROM_REQUEST_PORT` redirects to the
/// port the request came to, which is the listener's (istiod does the same: Envoy cannot
/// derive it); `FROM_PROTOCOL_DEFAULT` leaves the port out, so the scheme's default applies.
pub(super) fn redirect_action(r: &VirtualServiceHttpRedirect, port: u16) -> xds_route::route::Action {
    use spar_api::istio::virtual_service::VirtualServiceHttpRedirectDerivePort as Derive;
    use xds_route::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let code = match r.redirect_code.unwrap_or(301) {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    let path = r
        .uri
        .clone()
        .map(PathRewriteSpecifier::PathRedirect)
        .or_else(|| r.prefix_rewrite.clone().map(PathRewriteSpecifier::PrefixRewrite));
    xds_route::route::Action::Redirect(xds_route::RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: match (r.port, &r.derive_port) {
            (Some(p), _) => u32::try_from(p).unwrap_or(0),
            (None, Some(Derive::FromRequestPort)) => u32::from(port),
            (None, _) => 0,
        },
        response_code: code as i32,
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: path,
        ..Default::default()
    })
}

pub(super) fn direct_response_action(d: &VirtualServiceHttpDirectResponse) -> xds_route::route::Action {
    use xds_core::data_source::Specifier;
    let body = d.body.as_ref().and_then(|b| match (&b.string, &b.bytes) {
        (Some(s), _) => Some(Specifier::InlineString(s.clone())),
        (None, Some(b64)) => decode_base64(b64).map(Specifier::InlineBytes),
        _ => None,
    });
    xds_route::route::Action::DirectResponse(xds_route::DirectResponseAction {
        status: u32::try_from(d.status).unwrap_or(200),
        body: body.map(|s| xds_core::DataSource { specifier: Some(s), ..Default::default() }),
        ..Default::default()
    })
}

/// Istio's `bytes` fields: standard base64 (line breaks allowed, as YAML folds them).
pub(super) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).ok()
}

/// A string match as Istio writes it (`exact`, `prefix` or `regex`).
pub(super) fn string_matcher(
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
