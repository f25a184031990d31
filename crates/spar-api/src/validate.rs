//! Semantic validation that Istio applies beyond the schema, for the rules that would
//! otherwise produce broken Envoy config or config Istio refuses. A failing object is
//! reported with every reason and skipped; nothing else is affected.
//!
//! The rules are Istio's, from two places:
//! - istiod's validating webhook (`pkg/config/validation` and `.../agent` in istio/istio);
//! - the CRD schema that the Kubernetes API server enforces before istiod sees an object
//!   (`minLength`, `pattern`, and the CEL `x-kubernetes-validations`); these are marked
//!   "(CRD)". Enums and types are already enforced by the typed parse.
//!
//! A document that either refuses is refused: an object the API server refuses is never
//! stored, so istiod never serves it. Deliberate differences are noted at the rule. Not
//! implemented: EnvoyFilter patch values (istiod decodes them into Envoy's protos),
//! inline JWKS contents beyond being JSON, CEL access-log filters, the locality syntax of
//! `localityLbSetting`, and the VirtualService/Gateway/Sidecar rules not listed in their
//! functions. Warnings (accepted with a message) are not reported here.
//!
//! Rules are checked on the document as written (`Object::raw`), so they read the same
//! field names as the Istio documentation. A `null` field is treated as unset, and an
//! empty list as an unset repeated field, as istiod's protobuf decoding does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::object::{Kind, Object};

/// The annotation that turns an AuthorizationPolicy into a dry run.
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Annotations istiod reserves for itself (`pkg/config/constants`): the webhook refuses
/// any object that carries one.
const RESERVED_ANNOTATIONS: &[&str] =
    &["internal.istio.io/webhook-always-reject", "internal.istio.io/parent-namespace", "internal.istio.io/parents"];

/// Checks `obj`; `Err` carries one message per problem, each naming the field.
pub fn validate(obj: &Object) -> Result<(), Vec<String>> {
    let mut v = Validator { errors: Vec::new(), namespace: &obj.meta.namespace, labels: &obj.meta.labels };
    let spec = obj.raw.get("spec").unwrap_or(&Value::Null);
    let kind = obj.meta.kind;
    if kind.group().ends_with("istio.io") {
        v.metadata(kind, spec, &obj.meta.annotations);
    }
    // (CRD) `spec` is required for these kinds.
    let spec_required =
        matches!(kind, Kind::ServiceEntry | Kind::WorkloadEntry | Kind::WorkloadGroup | Kind::WasmPlugin);
    if spec_required && !spec.is_object() {
        v.err("spec", "spec is required");
    }
    match kind {
        Kind::VirtualService => v.virtual_service(spec),
        Kind::DestinationRule => v.destination_rule(spec),
        Kind::ServiceEntry => v.service_entry(spec),
        Kind::WorkloadEntry => v.workload_entry("spec", spec, None, true),
        Kind::WorkloadGroup => v.workload_group(spec),
        Kind::Sidecar => v.sidecar(spec),
        Kind::Gateway => v.gateway(spec),
        Kind::EnvoyFilter => v.envoy_filter(spec),
        Kind::ProxyConfig => v.proxy_config(spec),
        Kind::AuthorizationPolicy => v.authorization_policy(spec),
        Kind::PeerAuthentication => v.peer_authentication(spec),
        Kind::RequestAuthentication => v.request_authentication(spec),
        Kind::Telemetry => v.telemetry(spec),
        Kind::WasmPlugin => v.wasm_plugin(spec),
        _ => {}
    }
    if v.errors.is_empty() { Ok(()) } else { Err(v.errors) }
}

/// Moves the objects of `parsed` that fail [`validate`] to its errors, so that they are
/// reported and skipped while everything else is kept.
pub fn validate_parsed(parsed: &mut crate::Parsed) {
    let objects = std::mem::take(&mut parsed.objects);
    for obj in objects {
        match validate(&obj) {
            Ok(()) => parsed.objects.push(obj),
            Err(reasons) => parsed.errors.push(crate::DocError {
                origin: obj.origin.clone(),
                resource: Some(obj.key().to_string()),
                reason: reasons.join("; "),
            }),
        }
    }
}

struct Validator<'o> {
    errors: Vec<String>,
    /// The object's namespace (`exportTo: [.]` means this one).
    namespace: &'o str,
    /// The object's labels (`istio.io/use-waypoint`).
    labels: &'o BTreeMap<String, String>,
}

fn arr<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = (usize, &'a Value)> + use<'a> {
    v.get(k).and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// A field that is set: present and not `null`.
fn has(v: &Value, k: &str) -> bool {
    v.get(k).is_some_and(|x| !x.is_null())
}

/// A repeated or map field with at least one entry (istiod cannot tell empty from unset).
fn non_empty(v: &Value, k: &str) -> bool {
    match v.get(k) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        _ => false,
    }
}

/// The string items of a list field.
fn strings<'a>(v: &'a Value, k: &str) -> Vec<&'a str> {
    arr(v, k).filter_map(|(_, s)| s.as_str()).collect()
}

fn map_of<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = (&'a String, &'a Value)> + use<'a> {
    v.get(k).and_then(Value::as_object).into_iter().flatten()
}

/// An integer field, also when written as a string (protobuf JSON allows both for 64-bit
/// values).
fn int_of(v: &Value, k: &str) -> Option<i64> {
    match v.get(k)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn float_of(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn bool_of(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// A DNS-1123 label as Istio checks it (`labels.IsDNS1123Label`): 1-63 characters,
/// letters (either case), digits and `-`, starting and ending with a letter or digit.
fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 label that may start with `*` or `*-`, or be `*` (`IsWildcardDNS1123Label`).
fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    is_dns1123_label(rest)
}

/// `agent.ValidateDNS1123Labels`: dot-separated DNS-1123 labels, the last one possibly
/// empty (`istio.io.`), and a top-level domain that is not all digits.
fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts[parts.len() - 1];
    let tld_digits = tld.strip_prefix(['+', '-']).unwrap_or(tld);
    if !tld_digits.is_empty() && tld_digits.len() <= 18 && tld_digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// `agent.ValidateFQDN`.
fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// `agent.ValidateWildcardDomain`: a domain whose first label may be a wildcard label.
fn wildcard_domain(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!("domain name {name:?} invalid (label {first:?} invalid)"));
    }
    rest.map_or(Ok(()), dns1123_labels)
}

/// Kubernetes' qualified name (the part of a label key after the prefix, or a label
/// value): letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit.
fn is_qualified_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `labels.Instance.Validate` for one label.
fn label(key: &str, value: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns1123_label_unbounded));
    if !prefix_ok || !is_qualified_name(name) || name.len() > 63 {
        return Err(format!("invalid label key {key:?}"));
    }
    if !value.is_empty() && !is_qualified_name(value) {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(())
}

/// A DNS-1123 label by pattern only (no length limit), as in a label key's prefix.
fn is_dns1123_label_unbounded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Go's `netip.ParseAddr`: an IPv4 or IPv6 address, IPv6 with an optional zone.
fn is_ip(s: &str) -> bool {
    let addr = match s.split_once('%') {
        Some((a, zone)) if a.contains(':') && !zone.is_empty() => a,
        Some(_) => return false,
        None => s,
    };
    addr.parse::<std::net::IpAddr>().is_ok()
}

/// Go's `netip.ParsePrefix`: an address without a zone, `/`, and a prefix length in range.
fn is_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else { return false };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else { return false };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !bits.is_empty()
        && bits.len() <= 3
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u32>().is_ok_and(|b| b <= max)
}

/// Go's `time.ParseDuration` (how istiod decodes a protobuf Duration from YAML): a sequence
/// of decimal numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`, optionally signed;
/// `0` alone is allowed. Returns nanoseconds.
pub fn go_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac = &r[..n];
            rest = &r[n..];
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let unit: i128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let whole: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut part = whole.checked_mul(unit)?;
        let mut scale = unit;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += i128::from(d - b'0') * scale;
        }
        total = total.checked_add(part)?;
        if total > i128::from(i64::MAX) {
            return None;
        }
    }
    Some(if neg { -total } else { total })
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> bool {
    matches!(s, "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False")
}

/// The scheme of a URL as Go's `net/url` parses it (lower-cased, empty when there is
/// none), or why Go refuses it. `via_request` is `url.ParseRequestURI`, otherwise
/// `url.Parse`. Only the checks that can fail are reproduced.
fn go_url_scheme(raw: &str, via_request: bool) -> Result<String, String> {
    let (raw, fragment) = match raw.split_once('#') {
        Some((u, f)) if !via_request => (u, Some(f)),
        _ => (raw, None),
    };
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("invalid control character in URL".into());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".into());
    }
    if raw == "*" {
        return Ok(String::new());
    }
    // getScheme
    let mut scheme = "";
    let mut rest = raw;
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err("missing protocol scheme".into()),
            b':' => {
                scheme = &raw[..i];
                rest = &raw[i + 1..];
                break;
            }
            _ => break,
        }
    }
    let scheme = scheme.to_ascii_lowercase();
    let rest = if rest.ends_with('?') && rest.matches('?').count() == 1 {
        &rest[..rest.len() - 1]
    } else {
        rest.split_once('?').map_or(rest, |(r, _)| r)
    };
    if !rest.starts_with('/') {
        if !scheme.is_empty() {
            return Ok(scheme); // opaque
        }
        if via_request {
            return Err("invalid URI for request".into());
        }
        if rest.split('/').next().is_some_and(|seg| seg.contains(':')) {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    let mut path = rest;
    if (!scheme.is_empty() || !via_request && !rest.starts_with("///")) && rest.starts_with("//") {
        let authority = &rest[2..];
        let (authority, p) = match authority.find('/') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        };
        path = p;
        go_url_authority(authority)?;
    }
    go_unescape(path, false)?;
    if let Some(f) = fragment {
        go_unescape(f, false)?;
    }
    Ok(scheme)
}

fn go_url_authority(authority: &str) -> Result<(), String> {
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let port_ok = |p: &str| p.is_empty() || p.strip_prefix(':').is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()));
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else { return Err("missing ']' in host".into()) };
        if !port_ok(&host[i + 1..]) {
            return Err(format!("invalid port {:?} after host", &host[i + 1..]));
        }
    } else if let Some(i) = host.rfind(':')
        && !port_ok(&host[i..])
    {
        return Err(format!("invalid port {:?} after host", &host[i..]));
    }
    go_unescape(host, true)?;
    if let Some(u) = userinfo {
        let ok = u.chars().all(|c| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c));
        if !ok {
            return Err("invalid userinfo".into());
        }
        go_unescape(u, false)?;
    }
    Ok(())
}

/// Go's `url.unescape`: `%` must start a two-digit hex escape; in a host, only the
/// characters Go allows there may appear unescaped.
fn go_unescape(s: &str, host: bool) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if i + 2 >= b.len() || !b[i + 1].is_ascii_hexdigit() || !b[i + 2].is_ascii_hexdigit() {
                    return Err(format!("invalid URL escape {:?}", &s[i..(i + 3).min(s.len())]));
                }
                i += 3;
                continue;
            }
            c if host && c < 0x80 => {
                let ok = c.is_ascii_alphanumeric() || b"!$&'()*+,;=:[]<>\"-_.~".contains(&c);
                if !ok {
                    return Err(format!("invalid character {:?} in host name", c as char));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// `security.ValidateIPs`: each value an IP address or a CIDR range.
fn check_ips(values: &[&str]) -> Result<(), String> {
    for v in values {
        if v.contains('/') {
            if !is_cidr(v) {
                return Err(format!("bad CIDR range ({v})"));
            }
        } else if !is_ip(v) {
            return Err(format!("bad IP address ({v})"));
        }
    }
    Ok(())
}

/// `security.ValidatePorts`: each value a decimal port number 0-65535.
fn check_ports(values: &[&str]) -> Result<(), String> {
    for v in values {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u32>().map_or(true, |p| p > 65535) {
            return Err(format!("bad port ({v})"));
        }
    }
    Ok(())
}

/// `security.CheckEmptyValues`.
fn check_empty(values: &[&str]) -> Result<(), String> {
    if values.iter().any(|v| v.is_empty()) { Err("empty value not allowed".into()) } else { Ok(()) }
}

/// `security.CheckWildcardValues`: non-empty, at most one `*`, at the start or the end.
fn check_wildcards(values: &[&str]) -> Result<(), String> {
    check_empty(values)?;
    for v in values {
        let n = v.matches('*').count();
        if n > 1 {
            return Err(format!("at most one wildcard is allowed, found {v:?}"));
        }
        if n == 1 && *v != "*" && !v.starts_with('*') && !v.ends_with('*') {
            return Err(format!("wildcard is only allowed at the start or end, found {v:?}"));
        }
    }
    Ok(())
}

/// `security.CheckTrustDomainValues`.
fn check_trust_domains(values: &[&str]) -> Result<(), String> {
    check_wildcards(values)?;
    match values.iter().find(|v| v.contains('/')) {
        Some(v) => Err(format!("trust domain must not contain '/', found {v:?}")),
        None => Ok(()),
    }
}

/// `security.CheckServiceAccount`: at most 16 values, each `sa` or `ns/sa`, no wildcard,
/// at most 320 characters.
fn check_service_accounts(values: &[&str]) -> Result<(), String> {
    if values.len() > 16 {
        return Err("may not have more than 16 values".into());
    }
    for v in values {
        if v.is_empty() {
            return Err("empty value not allowed".into());
        }
        if v.contains('*') {
            return Err(format!("wildcard not allowed, found {v:?}"));
        }
        if v.matches('/').count() > 1 {
            return Err(format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found {v:?}"));
        }
        if v.len() > 320 {
            return Err(format!("value cannot exceed 320 characters, found {v:?}"));
        }
        if let Some((ns, sa)) = v.split_once('/')
            && (ns.is_empty() || sa.is_empty())
        {
            return Err(format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found {v:?}"));
        }
    }
    Ok(())
}

/// `security.CheckValidPathTemplate`: `{*}` and `{**}` only as whole segments, `{**}`
/// last, and the other segments of a templated path plain URI characters.
fn check_path_templates(paths: &[&str]) -> Result<(), String> {
    for path in paths {
        let templated = path.contains("{*}") || path.contains("{**}");
        let mut match_any = false;
        for glob in path.trim_matches('/').split('/') {
            match glob {
                "{*}" if !match_any => continue,
                "{**}" if !match_any => {
                    match_any = true;
                    continue;
                }
                "{*}" | "{**}" => return Err(format!("invalid path {path:?}: {{**}} is not the last operator")),
                _ => {}
            }
            if glob.contains(['{', '}']) {
                return Err(format!("invalid path {path:?}: '{{' or '}}' beyond a supported path template"));
            }
            let literal =
                !glob.is_empty() && glob.chars().all(|c| c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c));
            if templated && !literal {
                return Err(format!("invalid path {path:?}: segment {glob:?} is not a valid literal"));
            }
        }
    }
    Ok(())
}

/// `security.ValidateAttribute`: the condition keys AuthorizationPolicy knows, and their
/// value formats.
fn check_condition(key: &str, values: &[&str]) -> Result<(), String> {
    check_empty(values)?;
    let map_key = || {
        let ok = key.ends_with(']') && key.find('[').is_some_and(|open| open > 0 && open + 2 < key.len());
        if ok { Ok(()) } else { Err(format!("bad key ({key}): should have format a[b]")) }
    };
    match key {
        k if k.starts_with("request.headers") => map_key(),
        "source.ip" | "remote.ip" | "destination.ip" => check_ips(values),
        "source.serviceAccount" => check_service_accounts(values),
        "source.trustDomain" => check_wildcards(values),
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        k if k.starts_with("request.auth.claims") => map_key(),
        "destination.port" => check_ports(values),
        k if k.starts_with("experimental.envoy.filters.") => map_key(),
        "destination.namespace" => Err(format!("attribute {key} is replaced by the metadata.namespace")),
        k if k.starts_with("destination.labels") => {
            Err(format!("attribute {key} is replaced by the workload selector"))
        }
        "destination.name" | "destination.user" => {
            Err(format!("deprecated attribute {key}: only supported in v1alpha1"))
        }
        _ => Err(format!("unknown attribute: {key}")),
    }
}

/// `protocol.Parse`: the port protocols Istio knows (any case).
fn protocol(p: &str) -> Option<&'static str> {
    Some(match p.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "grpc" => "GRPC",
        "grpc-web" => "GRPC-Web",
        "http" => "HTTP",
        "http_proxy" => "HTTP_PROXY",
        "http2" => "HTTP2",
        "https" => "HTTPS",
        "tls" => "TLS",
        "mongo" => "Mongo",
        "redis" => "Redis",
        "mysql" => "MySQL",
        _ => return None,
    })
}

fn protocol_is_http(p: Option<&str>) -> bool {
    matches!(p, Some("HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-Web"))
}

fn protocol_is_tls(p: Option<&str>) -> bool {
    matches!(p, Some("HTTPS" | "TLS"))
}

/// Envoy's primality test for Maglev table sizes (`isPrime` in istiod).
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) || x.is_multiple_of(3) {
        return false;
    }
    let mut i = 5u64;
    while i * i <= x {
        if x.is_multiple_of(i) || x.is_multiple_of(i + 2) {
            return false;
        }
        i += 6;
    }
    true
}

impl Validator<'_> {
    fn err(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    fn check(&mut self, path: impl std::fmt::Display, r: Result<(), String>) {
        if let Err(e) = r {
            self.err(path, e);
        }
    }

    /// The annotations the webhook checks on every Istio object (`validateMetadata`).
    fn metadata(&mut self, kind: Kind, spec: &Value, annotations: &BTreeMap<String, String>) {
        let path = "metadata.annotations";
        if let Some(value) = annotations.get(DRY_RUN_ANNOTATION) {
            if kind != Kind::AuthorizationPolicy {
                self.err(path, format!("{DRY_RUN_ANNOTATION} is only supported on AuthorizationPolicy"));
            } else {
                match str_of(spec, "action").unwrap_or("ALLOW") {
                    "ALLOW" | "DENY" if !go_bool(value) => {
                        self.err(path, format!("{DRY_RUN_ANNOTATION} must be true or false, not {value:?}"))
                    }
                    "ALLOW" | "DENY" => {}
                    action => {
                        self.err(path, format!("{DRY_RUN_ANNOTATION} only supports action ALLOW or DENY, not {action}"))
                    }
                }
            }
        }
        for a in RESERVED_ANNOTATIONS {
            if annotations.contains_key(*a) {
                self.err(path, format!("{a} is reserved for istiod and may not be set"));
            }
        }
    }

    /// `labels.Instance.Validate` on a map of labels.
    fn labels(&mut self, path: &str, map: Option<&Value>) {
        for (k, v) in map.and_then(Value::as_object).into_iter().flatten() {
            self.check(path, label(k, v.as_str().unwrap_or_default()));
        }
    }

    /// A `selector: {matchLabels: ...}` (`validateWorkloadSelector`): no empty key and no
    /// `*` in keys or values.
    fn selector(&mut self, path: &str, sel: Option<&Value>, labels_key: &str) {
        let Some(sel) = sel else { return };
        for (k, v) in map_of(sel, labels_key) {
            let v = v.as_str().unwrap_or_default();
            if k.is_empty() {
                self.err(format!("{path}.{labels_key}"), "key must not be empty");
            }
            if k.contains('*') || v.contains('*') {
                self.err(format!("{path}.{labels_key}"), format!("wildcard is not supported in selector: \"{k}={v}\""));
            }
        }
    }

    /// `selector`, `targetRef` and `targetRefs` of the policy kinds: at most one of them,
    /// and references only to local Services, ServiceEntries, Gateways and GatewayClasses
    /// (`validateOneOfSelectorType`, `validatePolicyTargetReference`).
    fn policy_targets(&mut self, spec: &Value) {
        let set = [has(spec, "selector"), has(spec, "targetRef"), non_empty(spec, "targetRefs")];
        if set.iter().filter(|s| **s).count() > 1 {
            self.err("spec", "only one of targetRefs or selector can be set");
        }
        self.selector("spec.selector", spec.get("selector"), "matchLabels");
        if let Some(r) = spec.get("targetRef").filter(|r| !r.is_null()) {
            self.target_ref("spec.targetRef", r);
        }
        for (i, r) in arr(spec, "targetRefs") {
            self.target_ref(&format!("spec.targetRefs[{i}]"), r);
        }
    }

    fn target_ref(&mut self, path: &str, r: &Value) {
        if str_of(r, "name").is_none_or(str::is_empty) {
            self.err(format!("{path}.name"), "name is required");
        }
        if str_of(r, "namespace").is_some_and(|n| !n.is_empty()) {
            self.err(format!("{path}.namespace"), "cross namespace referencing is not supported");
        }
        let group = match str_of(r, "group").unwrap_or_default() {
            "" => "core",
            g => g,
        };
        let kind = str_of(r, "kind").unwrap_or_default();
        let allowed = matches!(
            (group, kind),
            ("core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        );
        if !allowed {
            self.err(
                path,
                format!(
                    "targetRef must be a Service, ServiceEntry, Gateway (gateway.networking.k8s.io) or GatewayClass, not {}/{kind}",
                    str_of(r, "group").unwrap_or_default()
                ),
            );
        }
    }

    /// A protobuf Duration as istiod reads it: Go duration syntax, and with
    /// `agent.ValidateDuration` at least 1ms and a whole number of milliseconds.
    fn duration(&mut self, path: &str, v: Option<&Value>) -> Option<i128> {
        let v = v.filter(|v| !v.is_null())?;
        let Some(d) = v.as_str().and_then(go_duration) else {
            self.err(path, format!("{v} is not a duration (such as 5s or 100ms)"));
            return None;
        };
        if d < 1_000_000 {
            self.err(path, "duration must be at least 1ms");
        } else if d % 1_000_000 != 0 {
            self.err(path, "only durations to ms precision are supported");
        }
        Some(d)
    }

    /// A duration that must parse, without istiod's range check (fields the webhook does
    /// not check but the CRD bounds at 1ms, and fields where 0 disables).
    fn duration_syntax(&mut self, path: &str, v: Option<&Value>) -> Option<i128> {
        let v = v.filter(|v| !v.is_null())?;
        let d = v.as_str().and_then(go_duration);
        if d.is_none() {
            self.err(path, format!("{v} is not a duration (such as 5s or 100ms)"));
        }
        d
    }

    fn percent(&mut self, path: &str, v: Option<i64>) {
        if let Some(p) = v
            && !(0..=100).contains(&p)
        {
            self.err(path, format!("percentage {p} is not in range 0..100"));
        }
    }

    /// `validateExportTo`: no duplicates (`.` counts as this namespace), each entry `.`,
    /// `*`, a namespace name, or `~` for ServiceEntry; `*` and `~` alone.
    fn export_to(&mut self, spec: &Value, service_entry: bool, dr_with_selector: bool) {
        let path = "spec.exportTo";
        let entries = strings(spec, "exportTo");
        if entries.is_empty() {
            return;
        }
        let mut seen = BTreeSet::new();
        for e in &entries {
            let key = if *e == "." { self.namespace } else { e };
            if seen.contains(key) {
                if key != *e {
                    self.err(path, format!("duplicate entries in exportTo: . and current namespace {key}"));
                } else {
                    self.err(path, format!("duplicate entries in exportTo for entry {e}"));
                }
                continue;
            }
            let ok = match key {
                "~" => service_entry,
                "." | "*" => true,
                ns => is_dns1123_label(ns),
            };
            if ok {
                seen.insert(key);
            } else if key == "~" {
                self.err(path, "exportTo ~ (none) is not allowed for Istio configuration objects");
            } else {
                self.err(path, format!("{e:?}: only ., *, or a valid DNS 1123 label is allowed as exportTo entry"));
            }
        }
        if dr_with_selector && !seen.is_empty() {
            if !seen.contains(self.namespace) {
                self.err(path, "destination rule with workload selector cannot have exportTo beyond current namespace");
            } else if seen.len() > 1 {
                self.err(path, "destination rule with workload selector cannot have multiple entries in exportTo");
            }
        }
        if seen.contains("*") && entries.len() > 1 {
            self.err(path, "cannot have both public (*) and non-public exportTo values for a resource");
        }
        if seen.contains("~") && entries.len() > 1 {
            self.err(path, "cannot export service entry to no one (~) and someone");
        }
    }

    /// A host as written in config: a DNS name, optionally with a leading `*` label,
    /// or a short name; `ns/` prefixes are handled by the callers that allow them.
    fn host(&mut self, path: &str, h: &str, allow_wildcard: bool) {
        if h.is_empty() {
            return self.err(path, "host must not be empty");
        }
        if h == "*" {
            if !allow_wildcard {
                self.err(path, "wildcard host '*' is not allowed here");
            }
            return;
        }
        // Istio allows `*.example.com` and the partial form `*example.com`.
        let body = match h.strip_prefix('*') {
            Some(rest) if allow_wildcard => rest.strip_prefix('.').unwrap_or(rest),
            Some(_) => return self.err(path, format!("wildcard host {h:?} is not allowed here")),
            None => h,
        };
        if h.len() > 255 {
            return self.err(path, format!("host {h:?} is longer than 255 characters"));
        }
        for label in body.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return self.err(path, format!("{h:?} is not a valid host name (label {label:?})"));
            }
        }
    }

    fn regex(&mut self, path: &str, m: &Value) {
        if let Some(r) = str_of(m, "regex")
            && let Err(e) = regex::Regex::new(r)
        {
            let reason = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
            self.err(format!("{path}.regex"), format!("invalid regular expression {r:?}: {reason}"));
        }
        if let Some(obj) = m.as_object() {
            let set = ["exact", "prefix", "regex"].iter().filter(|k| obj.contains_key(**k)).count();
            if set > 1 {
                self.err(path, "only one of exact, prefix or regex may be set");
            }
        }
    }

    fn port_number(&mut self, path: &str, v: Option<&Value>, required: bool) {
        match v.and_then(Value::as_u64) {
            Some(p) if (1..=65535).contains(&p) => {}
            Some(p) => self.err(path, format!("port {p} is out of range 1-65535")),
            None if required => self.err(path, "port number is required"),
            None => {}
        }
    }

    fn destination(&mut self, path: &str, d: &Value) {
        match d.get("destination") {
            None => self.err(path, "destination is required"),
            Some(dest) => {
                match str_of(dest, "host") {
                    Some(h) => self.host(&format!("{path}.destination.host"), h, false),
                    None => self.err(format!("{path}.destination.host"), "host is required"),
                }
                if let Some(p) = dest.get("port") {
                    self.port_number(&format!("{path}.destination.port.number"), p.get("number"), false);
                }
            }
        }
        if let Some(w) = d.get("weight").and_then(Value::as_i64)
            && w < 0
        {
            self.err(format!("{path}.weight"), "weight must not be negative");
        }
    }

    fn virtual_service(&mut self, spec: &Value) {
        let hosts: Vec<_> = arr(spec, "hosts").collect();
        for (i, h) in &hosts {
            match h.as_str() {
                Some(h) => self.host(&format!("spec.hosts[{i}]"), h, true),
                None => self.err(format!("spec.hosts[{i}]"), "must be a string"),
            }
        }
        for (i, g) in arr(spec, "gateways") {
            if g.as_str().is_some_and(str::is_empty) {
                self.err(format!("spec.gateways[{i}]"), "gateway name must not be empty");
            }
        }
        let routes = ["http", "tcp", "tls"].iter().map(|k| arr(spec, k).count()).sum::<usize>();
        if routes == 0 {
            self.err("spec", "http, tcp or tls must provide at least one route");
        }
        for (i, r) in arr(spec, "http") {
            let p = format!("spec.http[{i}]");
            let has_route = r.get("route").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            let actions = [
                has_route,
                r.get("redirect").is_some(),
                r.get("directResponse").is_some(),
                r.get("delegate").is_some(),
            ];
            if actions.iter().filter(|a| **a).count() == 0 {
                self.err(&p, "one of route, redirect, directResponse or delegate is required");
            }
            if has_route && r.get("redirect").is_some() {
                self.err(&p, "route and redirect cannot both be set");
            }
            if r.get("delegate").is_some() && !hosts.is_empty() && has_route {
                self.err(&p, "delegate and route cannot both be set");
            }
            for (j, d) in arr(r, "route") {
                self.destination(&format!("{p}.route[{j}]"), d);
            }
            for (j, m) in arr(r, "match") {
                let mp = format!("{p}.match[{j}]");
                for k in ["uri", "scheme", "method", "authority"] {
                    if let Some(sm) = m.get(k) {
                        self.regex(&format!("{mp}.{k}"), sm);
                    }
                }
                for k in ["headers", "queryParams", "withoutHeaders"] {
                    if let Some(map) = m.get(k).and_then(Value::as_object) {
                        for (name, sm) in map {
                            if name.is_empty() {
                                self.err(format!("{mp}.{k}"), "header name must not be empty");
                            }
                            self.regex(&format!("{mp}.{k}.{name}"), sm);
                        }
                    }
                }
                if m.get("port").is_some() {
                    self.port_number(&format!("{mp}.port"), m.get("port"), false);
                }
            }
        }
        for k in ["tcp", "tls"] {
            for (i, r) in arr(spec, k) {
                for (j, d) in arr(r, "route") {
                    self.destination(&format!("spec.{k}[{i}].route[{j}]"), d);
                }
            }
        }
    }

    fn destination_rule(&mut self, spec: &Value) {
        match str_of(spec, "host") {
            Some(h) => self.check("spec.host", wildcard_domain(h)),
            None => self.err("spec.host", "host is required"),
        }
        self.traffic_policy("spec.trafficPolicy", spec.get("trafficPolicy"));
        let mut names = BTreeSet::new();
        for (i, s) in arr(spec, "subsets") {
            let p = format!("spec.subsets[{i}]");
            match str_of(s, "name") {
                None | Some("") => self.err(format!("{p}.name"), "subset name is required"),
                Some(n) => {
                    if !names.insert(n.to_string()) {
                        self.err(format!("{p}.name"), format!("duplicate subset name {n:?}"));
                    }
                    if !is_dns1123_label(n) {
                        self.err(format!("{p}.name"), format!("subset name {n:?} is not a DNS-1123 label"));
                    }
                }
            }
            self.labels(&format!("{p}.labels"), s.get("labels"));
            self.traffic_policy(&format!("{p}.trafficPolicy"), s.get("trafficPolicy"));
        }
        let selector = spec.get("workloadSelector").filter(|s| !s.is_null());
        self.export_to(spec, false, selector.is_some());
        self.selector("spec.workloadSelector", selector, "matchLabels");
    }

    /// `validateTrafficPolicy`, except `localityLbSetting` and `zoneAwareLbSetting`
    /// (their locality syntax is not checked here) and one rule: istiod refuses an empty
    /// policy (`trafficPolicy: {}`, "traffic policy must have at least one field"), which
    /// Spar accepts as no policy, since it changes nothing (conformance/tests/traffic.rs
    /// writes one).
    fn traffic_policy(&mut self, path: &str, tp: Option<&Value>) {
        let Some(tp) = tp.filter(|t| !t.is_null()) else { return };
        if has(tp, "tunnel") && has(tp, "proxyProtocol") {
            return self.err(path, "tunnel and proxyProtocol must not be set together");
        }
        self.port_policy(path, tp);
        if let Some(t) = tp.get("tunnel").filter(|t| !t.is_null()) {
            let p = format!("{path}.tunnel");
            if let Some(proto) = str_of(t, "protocol")
                && !matches!(proto, "" | "CONNECT" | "POST")
            {
                self.err(format!("{p}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
            }
            let target = str_of(t, "targetHost").unwrap_or_default();
            if fqdn(target).is_err() && !is_ip(target) {
                self.err(format!("{p}.targetHost"), format!("{target:?} must be a valid FQDN or IP address"));
            }
            self.port_number(&format!("{p}.targetPort"), Some(t.get("targetPort").unwrap_or(&Value::Null)), true);
        }
        for (i, pl) in arr(tp, "portLevelSettings") {
            let p = format!("{path}.portLevelSettings[{i}]");
            if !has(pl, "port") {
                self.err(format!("{p}.port"), "port is required");
            }
            if !["outlierDetection", "connectionPool", "loadBalancer", "tls"].iter().any(|f| has(pl, f)) {
                self.err(&p, "port traffic policy must have at least one field");
            } else {
                self.port_policy(&p, pl);
            }
        }
    }

    /// The parts of a traffic policy that a port-level policy has too.
    fn port_policy(&mut self, path: &str, tp: &Value) {
        let outlier = tp.get("outlierDetection").filter(|o| !o.is_null());
        if let Some(o) = outlier {
            let p = format!("{path}.outlierDetection");
            self.duration(&format!("{p}.baseEjectionTime"), o.get("baseEjectionTime"));
            self.duration(&format!("{p}.interval"), o.get("interval"));
            if !bool_of(o, "splitExternalLocalOriginErrors")
                && int_of(o, "consecutiveLocalOriginFailures").unwrap_or(0) > 0
            {
                self.err(
                    format!("{p}.consecutiveLocalOriginFailures"),
                    "consecutive local origin failures is specified, but splitExternalLocalOriginErrors is false",
                );
            }
            self.percent(&format!("{p}.maxEjectionPercent"), int_of(o, "maxEjectionPercent"));
            self.percent(&format!("{p}.minHealthPercent"), int_of(o, "minHealthPercent"));
        }
        if let Some(cp) = tp.get("connectionPool").filter(|c| !c.is_null()) {
            self.connection_pool(&format!("{path}.connectionPool"), cp);
        }
        if let Some(lb) = tp.get("loadBalancer").filter(|l| !l.is_null()) {
            self.load_balancer(&format!("{path}.loadBalancer"), lb);
        }
        if let Some(tls) = tp.get("tls").filter(|t| !t.is_null()) {
            self.client_tls(&format!("{path}.tls"), tls);
        }
    }

    fn connection_pool(&mut self, path: &str, cp: &Value) {
        if !has(cp, "http") && !has(cp, "tcp") {
            return self.err(path, "connection pool must have at least one field");
        }
        if let Some(h) = cp.get("http").filter(|h| !h.is_null()) {
            let p = format!("{path}.http");
            for f in [
                "http1MaxPendingRequests",
                "http2MaxRequests",
                "maxRequestsPerConnection",
                "maxRetries",
                "maxConcurrentStreams",
            ] {
                if int_of(h, f).is_some_and(|n| n < 0) {
                    self.err(format!("{p}.{f}"), "must be non-negative");
                }
            }
            self.duration(&format!("{p}.idleTimeout"), h.get("idleTimeout"));
            if str_of(h, "h2UpgradePolicy") == Some("UPGRADE") && bool_of(h, "useClientProtocol") {
                self.err(&p, "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE");
            }
            if let Some(ka) = h.get("http2KeepAlive").filter(|k| !k.is_null()) {
                for f in ["interval", "timeout"] {
                    let fp = format!("{p}.http2KeepAlive.{f}");
                    if has(ka, f) {
                        self.duration(&fp, ka.get(f));
                    } else {
                        self.err(fp, format!("http2 keepalive {f} is required"));
                    }
                }
            }
        }
        if let Some(t) = cp.get("tcp").filter(|t| !t.is_null()) {
            let p = format!("{path}.tcp");
            if int_of(t, "maxConnections").is_some_and(|n| n < 0) {
                self.err(format!("{p}.maxConnections"), "must be non-negative");
            }
            self.duration(&format!("{p}.connectTimeout"), t.get("connectTimeout"));
            self.duration(&format!("{p}.maxConnectionDuration"), t.get("maxConnectionDuration"));
            // 0s (anything under 1ms) disables the idle timeout.
            let idle = format!("{p}.idleTimeout");
            if self.duration_syntax(&idle, t.get("idleTimeout")).is_some_and(|d| d >= 1_000_000) {
                self.duration(&idle, t.get("idleTimeout"));
            }
            if let Some(ka) = t.get("tcpKeepalive").filter(|k| !k.is_null()) {
                self.duration(&format!("{p}.tcpKeepalive.time"), ka.get("time"));
                self.duration(&format!("{p}.tcpKeepalive.interval"), ka.get("interval"));
            }
        }
    }

    fn load_balancer(&mut self, path: &str, lb: &Value) {
        if let Some(ch) = lb.get("consistentHash").filter(|c| !c.is_null()) {
            let p = format!("{path}.consistentHash");
            if let Some(cookie) = ch.get("httpCookie").filter(|c| !c.is_null()) {
                if str_of(cookie, "name").is_none_or(str::is_empty) {
                    self.err(format!("{p}.httpCookie.name"), "name required for httpCookie");
                }
                let mut names = BTreeSet::new();
                for (i, a) in arr(cookie, "attributes") {
                    let ap = format!("{p}.httpCookie.attributes[{i}].name");
                    match str_of(a, "name").unwrap_or_default() {
                        "" => self.err(ap, "cookie attribute name cannot be empty"),
                        n if !names.insert(n) => self.err(ap, format!("duplicate cookie attribute name: {n}")),
                        _ => {}
                    }
                }
            }
            let ring = int_of(ch, "minimumRingSize").unwrap_or(0);
            if ring != 0 && (has(ch, "maglev") || has(ch, "ringHash")) {
                self.err(&p, "only one of minimumRingSize or maglev/ringHash can be specified");
            }
            if let Some(m) = ch.get("maglev").filter(|m| !m.is_null()) {
                let size = int_of(m, "tableSize").unwrap_or(0).max(0) as u64;
                let tp = format!("{p}.maglev.tableSize");
                if size == 0 {
                    self.err(&tp, "tableSize must be set for maglev");
                }
                if size >= 5_000_011 {
                    self.err(&tp, "tableSize must be less than 5000011 for maglev");
                } else if !is_prime(size) {
                    self.err(&tp, "tableSize must be a prime number for maglev");
                }
            }
        }
        if has(lb, "localityLbSetting") && has(lb, "zoneAwareLbSetting") {
            self.err(path, "only one of localityLbSetting and zoneAwareLbSetting can be set");
        }
        if let Some(w) = lb.get("warmup").filter(|w| !w.is_null()) {
            let p = format!("{path}.warmup");
            if has(w, "duration") {
                self.duration(&format!("{p}.duration"), w.get("duration"));
            } else {
                self.err(format!("{p}.duration"), "duration is required");
            }
            // The webhook bounds it above, the CRD below.
            if let Some(m) = float_of(w, "minimumPercent")
                && !(0.0..=100.0).contains(&m)
            {
                self.err(format!("{p}.minimumPercent"), format!("{m} is not in range 0..100"));
            }
            if let Some(a) = float_of(w, "aggression")
                && a <= 0.0
            {
                self.err(format!("{p}.aggression"), "aggression should be greater than 0");
            }
        }
    }

    /// `agent.ValidateTLS` (without the `configmap://` credential namespace check).
    fn client_tls(&mut self, path: &str, tls: &Value) {
        let mode = str_of(tls, "mode").unwrap_or("DISABLE");
        let set = |k: &str| str_of(tls, k).is_some_and(|s| !s.is_empty());
        let sans = tls.get("subjectAltNames").is_some_and(Value::is_array);
        if bool_of(tls, "insecureSkipVerify") {
            if mode == "SIMPLE" && (set("caCertificates") || set("credentialName") || sans) {
                self.err(
                    path,
                    "cannot specify caCertificates or credentialName or subjectAltNames when insecureSkipVerify is true",
                );
            }
            if mode == "MUTUAL" && (set("caCertificates") || sans) {
                self.err(path, "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true");
            }
        }
        if matches!(mode, "SIMPLE" | "MUTUAL") && set("credentialName") {
            if set("clientCertificate") || set("caCertificates") || set("privateKey") || set("caCrl") {
                self.err(
                    path,
                    "cannot specify client certificates or CA certificate or CA CRL if credentialName is set",
                );
            }
            return;
        }
        if mode == "MUTUAL" {
            if !set("clientCertificate") {
                self.err(format!("{path}.clientCertificate"), "client certificate required for mutual tls");
            }
            if !set("privateKey") {
                self.err(format!("{path}.privateKey"), "private key required for mutual tls");
            }
        }
    }

    fn service_entry(&mut self, spec: &Value) {
        let hosts: Vec<_> = arr(spec, "hosts").filter_map(|(_, h)| h.as_str()).collect();
        if hosts.is_empty() {
            self.err("spec.hosts", "at least one host is required");
        }
        for (i, h) in hosts.iter().enumerate() {
            if *h == "*" {
                self.err(format!("spec.hosts[{i}]"), "hostname cannot be wildcard");
            } else {
                self.check(format!("spec.hosts[{i}]"), wildcard_domain(h));
            }
        }
        // `workloadSelector.labels` (`ValidateAlphaWorkloadSelector`).
        let selector = spec.get("workloadSelector").filter(|s| !s.is_null());
        self.selector("spec.workloadSelector", selector, "labels");
        if selector.is_some() && has(spec, "endpoints") {
            self.err("spec", "only one of workloadSelector or endpoints may be set");
        }
        let addresses = strings(spec, "addresses");
        for (i, a) in addresses.iter().enumerate() {
            let ok = if a.matches('/').count() == 1 { is_cidr(a) } else { is_ip(a) };
            if !ok {
                self.err(format!("spec.addresses[{i}]"), format!("{a:?} is not a valid IP address or CIDR block"));
            }
        }
        let resolution = str_of(spec, "resolution").unwrap_or("NONE");
        if addresses.iter().any(|a| a.contains('/')) && !matches!(resolution, "NONE" | "STATIC") {
            self.err("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types");
        }
        let mut port_names = BTreeSet::new();
        let mut port_numbers = BTreeSet::new();
        let mut protocols = Vec::new();
        for (i, p) in arr(spec, "ports") {
            let pp = format!("spec.ports[{i}]");
            self.port_number(&format!("{pp}.number"), p.get("number"), true);
            if let Some(n) = p.get("number").and_then(Value::as_u64)
                && !port_numbers.insert(n)
            {
                self.err(format!("{pp}.number"), format!("port number {n} is already defined"));
            }
            if p.get("targetPort").is_some_and(|t| t.as_u64() != Some(0)) {
                self.port_number(&format!("{pp}.targetPort"), p.get("targetPort"), false);
            }
            let name = str_of(p, "name").unwrap_or_default();
            if !port_names.insert(name.to_string()) {
                self.err(format!("{pp}.name"), format!("duplicate port name {name:?}"));
            }
            if !is_dns1123_label(name) {
                self.err(format!("{pp}.name"), format!("invalid port name {name:?}"));
            }
            let proto = str_of(p, "protocol").unwrap_or_default();
            if !proto.is_empty() && protocol(proto).is_none() {
                self.err(format!("{pp}.protocol"), format!("unsupported protocol {proto:?}"));
            }
            protocols.push(protocol(proto));
        }
        let endpoints: Vec<_> = arr(spec, "endpoints").collect();
        match resolution {
            "NONE" if !endpoints.is_empty() => {
                self.err("spec.endpoints", "endpoints cannot be set with resolution NONE")
            }
            "STATIC" => {
                for (i, e) in &endpoints {
                    self.workload_entry(&format!("spec.endpoints[{i}]"), e, Some(&port_names), false);
                }
            }
            "DNS" | "DNS_ROUND_ROBIN" => {
                if endpoints.is_empty()
                    && let Some((i, e)) = hosts.iter().enumerate().find_map(|(i, h)| fqdn(h).err().map(|e| (i, e)))
                {
                    self.err(
                        format!("spec.hosts[{i}]"),
                        format!("hosts must be FQDNs if no endpoints are provided for resolution {resolution}: {e}"),
                    );
                }
                if resolution == "DNS_ROUND_ROBIN" && endpoints.len() > 1 {
                    self.err("spec.endpoints", "there must be 0 or 1 endpoint with resolution DNS_ROUND_ROBIN");
                }
                for (i, e) in &endpoints {
                    let p = format!("spec.endpoints[{i}]");
                    let addr = str_of(e, "address").unwrap_or_default();
                    if !is_ip(addr) && fqdn(addr).is_err() {
                        self.err(format!("{p}.address"), format!("{addr:?} is not a valid FQDN or IP address"));
                    }
                    self.labels(&format!("{p}.labels"), e.get("labels"));
                    self.endpoint_ports(&p, e, Some(&port_names));
                }
            }
            "DYNAMIC_DNS" => {
                for (i, h) in hosts.iter().enumerate() {
                    if !h.starts_with('*') {
                        self.err(format!("spec.hosts[{i}]"), "host must be wildcarded with resolution DYNAMIC_DNS");
                    }
                }
                if !addresses.is_empty() {
                    self.err("spec.addresses", "addresses cannot be set with resolution DYNAMIC_DNS");
                }
                if !endpoints.is_empty() {
                    self.err("spec.endpoints", "endpoints cannot be set with resolution DYNAMIC_DNS");
                }
                for (i, proto) in protocols.iter().enumerate() {
                    if !matches!(proto, Some("HTTP" | "TLS" | "GRPC" | "HTTP2")) {
                        self.err(
                            format!("spec.ports[{i}].protocol"),
                            "only HTTP, TLS, GRPC and HTTP2 are supported with resolution DYNAMIC_DNS",
                        );
                    }
                }
                let waypoint = self.labels.get("istio.io/use-waypoint");
                if str_of(spec, "location") == Some("MESH_INTERNAL")
                    && waypoint.is_some_and(|w| !w.is_empty() && !w.eq_ignore_ascii_case("none"))
                {
                    self.err(
                        "spec.location",
                        "location MESH_INTERNAL with resolution DYNAMIC_DNS is not supported when using waypoints",
                    );
                }
            }
            _ => {}
        }
        // Plain TCP cannot tell several hosts apart, unless they are ignored (NONE).
        if resolution != "NONE"
            && hosts.len() > 1
            && let Some(i) = protocols.iter().position(|p| !protocol_is_http(*p) && !protocol_is_tls(*p))
        {
            self.err(format!("spec.ports[{i}]"), "multiple hosts provided with non-HTTP, non-TLS ports");
        }
        self.export_to(spec, true, false);
    }

    /// `validateWorkloadEntry`: a WorkloadEntry spec, or a ServiceEntry endpoint (with the
    /// ServiceEntry's port names; for STATIC resolution, FQDN addresses are refused).
    fn workload_entry(&mut self, path: &str, we: &Value, service_ports: Option<&BTreeSet<String>>, allow_fqdn: bool) {
        let addr = str_of(we, "address").unwrap_or_default();
        if addr.is_empty() && str_of(we, "network").is_none_or(str::is_empty) {
            return self.err(format!("{path}.address"), "address is required unless network is set");
        }
        if let Some(uds) = addr.strip_prefix("unix://") {
            if uds.is_empty() {
                self.err(format!("{path}.address"), "unix address must not be empty");
            } else if !uds.starts_with('@') && (!uds.starts_with('/') || uds.ends_with('/')) {
                self.err(format!("{path}.address"), format!("{uds:?} is not an absolute path to a file"));
            }
            if non_empty(we, "ports") {
                self.err(format!("{path}.ports"), format!("unix endpoint {addr} must not include ports"));
            }
            if service_ports.is_some_and(|p| p.len() != 1) {
                self.err(path, "exactly 1 service port required for unix endpoints");
            }
        } else if !addr.is_empty() && !is_ip(addr) {
            if !allow_fqdn {
                self.err(format!("{path}.address"), format!("{addr:?} must be an IP address with resolution STATIC"));
            } else if fqdn(addr).is_err() {
                self.err(format!("{path}.address"), format!("{addr:?} is not a valid FQDN or IP address"));
            }
        }
        self.endpoint_ports(path, we, service_ports);
        self.labels(&format!("{path}.labels"), we.get("labels"));
    }

    fn endpoint_ports(&mut self, path: &str, we: &Value, service_ports: Option<&BTreeSet<String>>) {
        for (name, p) in map_of(we, "ports") {
            let pp = format!("{path}.ports.{name}");
            if service_ports.is_some_and(|s| !s.contains(name)) {
                self.err(&pp, format!("endpoint port {name:?} is not defined by the service entry"));
            }
            if !is_dns1123_label(name) {
                self.err(&pp, format!("invalid port name {name:?}"));
            }
            self.port_number(&pp, Some(p), true);
        }
    }

    fn workload_group(&mut self, spec: &Value) {
        if !has(spec, "template") {
            self.err("spec.template", "template is required");
        }
        if let Some(m) = spec.get("metadata") {
            self.labels("spec.metadata.labels", m.get("labels"));
        }
        let Some(probe) = spec.get("probe").filter(|p| !p.is_null()) else { return };
        let p = "spec.probe";
        for f in ["periodSeconds", "initialDelaySeconds", "timeoutSeconds", "successThreshold", "failureThreshold"] {
            if int_of(probe, f).is_some_and(|n| n < 0) {
                self.err(format!("{p}.{f}"), "must be non-negative");
            }
        }
        // istiod's webhook knows these three methods only (not grpc) and needs one.
        if let Some(h) = probe.get("httpGet").filter(|h| !h.is_null()) {
            self.port_number(&format!("{p}.httpGet.port"), Some(h.get("port").unwrap_or(&Value::Null)), true);
            if let Some(s) = str_of(h, "scheme")
                && !matches!(s, "" | "HTTP" | "HTTPS")
            {
                self.err(format!("{p}.httpGet.scheme"), "scheme must be one of HTTPS, HTTP");
            }
            for (i, hd) in arr(h, "httpHeaders") {
                let name = str_of(hd, "name").unwrap_or_default();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    self.err(
                        format!("{p}.httpGet.httpHeaders[{i}].name"),
                        format!("{name:?} is not a valid header name"),
                    );
                }
            }
        } else if let Some(t) = probe.get("tcpSocket").filter(|t| !t.is_null()) {
            self.port_number(&format!("{p}.tcpSocket.port"), Some(t.get("port").unwrap_or(&Value::Null)), true);
        } else if let Some(e) = probe.get("exec").filter(|e| !e.is_null()) {
            if !non_empty(e, "command") {
                self.err(format!("{p}.exec.command"), "exec.command is required");
            }
        } else {
            self.err(p, "one of httpGet, tcpSocket or exec is required");
        }
    }

    fn sidecar(&mut self, spec: &Value) {
        let has_any = ["egress", "ingress", "outboundTrafficPolicy", "inboundConnectionPool"]
            .iter()
            .any(|k| spec.get(*k).is_some());
        if !has_any {
            self.err("spec", "sidecar: empty configuration provided");
        }
        for (i, e) in arr(spec, "egress") {
            let p = format!("spec.egress[{i}]");
            let hosts: Vec<_> = arr(e, "hosts").collect();
            if hosts.is_empty() {
                self.err(format!("{p}.hosts"), "egress listener must have at least one host");
            }
            for (j, h) in hosts {
                let h = h.as_str().unwrap_or_default();
                match h.split_once('/') {
                    Some((ns, host)) if !ns.is_empty() => {
                        if host != "*" {
                            self.host(&format!("{p}.hosts[{j}]"), host, true);
                        }
                    }
                    _ => self.err(
                        format!("{p}.hosts[{j}]"),
                        format!("{h:?} must be namespace/host (use */ for any namespace, ./ for this one)"),
                    ),
                }
            }
            if let Some(port) = e.get("port") {
                self.port_number(&format!("{p}.port.number"), port.get("number"), false);
            }
        }
        for (i, ing) in arr(spec, "ingress") {
            let p = format!("spec.ingress[{i}]");
            self.port_number(&format!("{p}.port.number"), ing.get("port").and_then(|p| p.get("number")), true);
            if let Some(ep) = str_of(ing, "defaultEndpoint")
                && !ep.starts_with("unix://")
            {
                let ok = ep.rsplit_once(':').is_some_and(|(h, port)| {
                    port.parse::<u16>().is_ok() && h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok()
                });
                if !ok {
                    self.err(
                        format!("{p}.defaultEndpoint"),
                        format!("{ep:?} must be IP:PORT (127.0.0.1:PORT, 0.0.0.0:PORT, ...) or unix:///path"),
                    );
                }
            }
        }
    }

    fn gateway(&mut self, spec: &Value) {
        for (i, s) in arr(spec, "servers") {
            let p = format!("spec.servers[{i}]");
            if s.get("port").is_none() {
                self.err(format!("{p}.port"), "port is required");
            }
            if arr(s, "hosts").count() == 0 {
                self.err(format!("{p}.hosts"), "at least one host is required");
            }
        }
    }

    fn envoy_filter(&mut self, spec: &Value) {
        // `workloadSelector.labels` (`ValidateAlphaWorkloadSelector`).
        let selector = spec.get("workloadSelector").filter(|s| !s.is_null());
        self.selector("spec.workloadSelector", selector, "labels");
        // (CRD) at most one of workloadSelector and targetRefs.
        if selector.is_some() && non_empty(spec, "targetRefs") {
            self.err("spec", "only one of targetRefs or workloadSelector can be set");
        }
        // (CRD) the webhook does not check EnvoyFilter references, whatever their kind.
        for (i, r) in arr(spec, "targetRefs") {
            let p = format!("spec.targetRefs[{i}]");
            if str_of(r, "name").is_none_or(str::is_empty) {
                self.err(format!("{p}.name"), "name is required");
            }
            if str_of(r, "namespace").is_some_and(|n| !n.is_empty()) {
                self.err(format!("{p}.namespace"), "cross namespace referencing is not supported");
            }
            let kind = str_of(r, "kind").unwrap_or_default();
            let kind_ok = kind.starts_with(|c: char| c.is_ascii_alphabetic())
                && kind.len() <= 63
                && !kind.ends_with('-')
                && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !kind_ok {
                self.err(format!("{p}.kind"), format!("{kind:?} is not a valid kind"));
            }
        }
        for (i, cp) in arr(spec, "configPatches") {
            let p = format!("spec.configPatches[{i}]");
            if cp.is_null() {
                self.err(&p, "null config patch");
                continue;
            }
            let m = cp.get("match").filter(|m| !m.is_null());
            let context = m.and_then(|m| str_of(m, "context")).unwrap_or("ANY");
            if let Some(m) = m {
                let mp = format!("{p}.match");
                // (CRD) a waypoint match exactly when the context is WAYPOINT, and at most
                // one object type.
                if (context == "WAYPOINT") != has(m, "waypoint") {
                    self.err(&mp, "only support waypointMatch when context is WAYPOINT");
                }
                let types = ["listener", "routeConfiguration", "cluster", "waypoint"];
                if types.iter().filter(|t| has(m, t)).count() > 1 {
                    self.err(&mp, "only one of listener, routeConfiguration, cluster or waypoint may be set");
                }
                if let Some(w) = m.get("waypoint").filter(|w| !w.is_null())
                    && w.get("portNumber").is_some()
                {
                    self.port_number(&format!("{mp}.waypoint.portNumber"), w.get("portNumber"), false);
                }
            }
            // The webhook does not check waypoint patches further.
            if context == "WAYPOINT" {
                continue;
            }
            let apply_to = str_of(cp, "applyTo").unwrap_or("INVALID");
            if apply_to == "INVALID" {
                self.err(format!("{p}.applyTo"), "applyTo is required");
                continue;
            }
            let Some(patch) = cp.get("patch").filter(|p| !p.is_null()) else {
                self.err(format!("{p}.patch"), "patch is required");
                continue;
            };
            let op = str_of(patch, "operation").unwrap_or("INVALID");
            if op == "INVALID" {
                self.err(format!("{p}.patch.operation"), "patch operation is required");
                continue;
            }
            if op != "REMOVE" && !has(patch, "value") {
                self.err(format!("{p}.patch.value"), "patch value is required for operations other than REMOVE");
                continue;
            }
            let Some(m) = m else { continue };
            let mp = format!("{p}.match");
            if let Some(version) = m.get("proxy").and_then(|px| str_of(px, "proxyVersion"))
                && !version.is_empty()
                && version.len() <= 1024
                && let Err(e) = regex::Regex::new(version)
            {
                let reason =
                    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
                self.err(format!("{mp}.proxy.proxyVersion"), format!("invalid regular expression: {reason}"));
                continue;
            }
            let object_types = ["listener", "routeConfiguration", "cluster", "waypoint"].iter().any(|t| has(m, t));
            if !object_types {
                continue;
            }
            match apply_to {
                "LISTENER" | "FILTER_CHAIN" | "NETWORK_FILTER" | "HTTP_FILTER" => {
                    let Some(l) = m.get("listener").filter(|l| !l.is_null()) else {
                        self.err(&mp, format!("applyTo {apply_to} needs a listener match"));
                        continue;
                    };
                    let Some(f) = l.get("filterChain").and_then(|fc| fc.get("filter")).filter(|f| !f.is_null()) else {
                        continue;
                    };
                    let fp = format!("{mp}.listener.filterChain.filter");
                    let name = str_of(f, "name").unwrap_or_default();
                    if name.is_empty() {
                        self.err(format!("{fp}.name"), "filter match has no name to match on");
                    } else if let Some(sub) = f.get("subFilter").filter(|s| !s.is_null()) {
                        if apply_to != "HTTP_FILTER" {
                            self.err(
                                format!("{fp}.subFilter"),
                                "subFilter match can be used with applyTo HTTP_FILTER only",
                            );
                        } else if name != "envoy.filters.network.http_connection_manager"
                            && name != "envoy.http_connection_manager"
                        {
                            self.err(
                                format!("{fp}.subFilter"),
                                "subFilter match requires filter match with envoy.filters.network.http_connection_manager",
                            );
                        } else if str_of(sub, "name").is_none_or(str::is_empty) {
                            self.err(format!("{fp}.subFilter.name"), "subFilter match has no name to match on");
                        }
                    }
                }
                "ROUTE_CONFIGURATION" | "VIRTUAL_HOST" | "HTTP_ROUTE" if !has(m, "routeConfiguration") => {
                    self.err(&mp, format!("applyTo {apply_to} needs a routeConfiguration match"));
                }
                "CLUSTER" if !has(m, "cluster") => self.err(&mp, "applyTo CLUSTER needs a cluster match"),
                _ => {}
            }
        }
    }

    fn proxy_config(&mut self, spec: &Value) {
        self.selector("spec.selector", spec.get("selector"), "matchLabels");
        if int_of(spec, "concurrency").is_some_and(|c| c < 0) {
            self.err("spec.concurrency", "concurrency must be greater than or equal to 0");
        }
    }

    fn authorization_policy(&mut self, spec: &Value) {
        self.policy_targets(spec);
        let action = str_of(spec, "action").unwrap_or("ALLOW");
        let rules = non_empty(spec, "rules");
        if action == "CUSTOM" {
            if !rules {
                self.err("spec.rules", "CUSTOM action without rules is meaningless as it will never be triggered; add an empty rule {} to trigger it for every request");
            } else if spec.get("provider").and_then(|p| str_of(p, "name")).is_none_or(str::is_empty) {
                self.err("spec.provider.name", "provider.name must not be empty with action CUSTOM");
            }
            for (i, rule) in arr(spec, "rules") {
                for (j, from) in arr(rule, "from") {
                    let Some(src) = from.get("source") else { continue };
                    for f in [
                        "namespaces",
                        "notNamespaces",
                        "serviceAccounts",
                        "notServiceAccounts",
                        "trustDomains",
                        "notTrustDomains",
                        "principals",
                        "notPrincipals",
                        "requestPrincipals",
                        "notRequestPrincipals",
                    ] {
                        if non_empty(src, f) {
                            self.err(
                                format!("spec.rules[{i}].from[{j}].source.{f}"),
                                "not supported with action CUSTOM",
                            );
                        }
                    }
                }
                for (j, when) in arr(rule, "when") {
                    let key = str_of(when, "key").unwrap_or_default();
                    let custom_unsupported = matches!(
                        key,
                        "source.namespace" | "source.serviceAccount" | "source.trustDomain" | "source.principal"
                    ) || key.starts_with("request.auth.");
                    if custom_unsupported {
                        self.err(
                            format!("spec.rules[{i}].when[{j}].key"),
                            format!("{key} is not supported with action CUSTOM"),
                        );
                    }
                }
            }
        }
        if has(spec, "provider") && action != "CUSTOM" {
            self.err("spec.provider", format!("provider must not be set with action {action}"));
        }
        if action == "DENY" && !rules {
            self.err("spec.rules", "DENY action without rules is meaningless as it will never be triggered; add an empty rule {} to trigger it for every request");
        }
        for (i, rule) in arr(spec, "rules") {
            let rp = format!("spec.rules[{i}]");
            if !rule.is_object() {
                self.err(&rp, "rule must be an object");
                continue;
            }
            for (j, from) in arr(rule, "from") {
                let fp = format!("{rp}.from[{j}].source");
                let Some(src) = from.get("source").filter(|s| !s.is_null()) else {
                    self.err(fp, "from.source must be set");
                    continue;
                };
                self.source(&fp, src);
            }
            for (j, to) in arr(rule, "to") {
                let tp = format!("{rp}.to[{j}].operation");
                let Some(op) = to.get("operation").filter(|o| !o.is_null()) else {
                    self.err(tp, "to.operation must be set");
                    continue;
                };
                self.operation(&tp, op);
            }
            for (j, when) in arr(rule, "when") {
                let wp = format!("{rp}.when[{j}]");
                let key = str_of(when, "key").unwrap_or_default();
                if key.is_empty() {
                    self.err(format!("{wp}.key"), "key must not be empty");
                } else if !non_empty(when, "values") && !non_empty(when, "notValues") {
                    self.err(&wp, format!("at least one of values or notValues must be set for key {key}"));
                } else {
                    self.check(format!("{wp}.values"), check_condition(key, &strings(when, "values")));
                    self.check(format!("{wp}.notValues"), check_condition(key, &strings(when, "notValues")));
                }
            }
        }
    }

    fn source(&mut self, path: &str, src: &Value) {
        let any = |fields: &[&str]| fields.iter().any(|f| non_empty(src, f));
        if any(&["principals", "notPrincipals", "namespaces", "notNamespaces"])
            && any(&["serviceAccounts", "notServiceAccounts"])
        {
            self.err(path, "cannot set serviceAccounts with namespaces or principals");
        }
        let all = [
            "principals",
            "notPrincipals",
            "requestPrincipals",
            "notRequestPrincipals",
            "namespaces",
            "notNamespaces",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "serviceAccounts",
            "notServiceAccounts",
            "trustDomains",
            "notTrustDomains",
        ];
        if !any(&all) {
            self.err(path, "from.source must not be empty");
        }
        for f in all {
            let values = strings(src, f);
            let r = match f {
                "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                    check_empty(&values).and_then(|()| check_ips(&values))
                }
                "serviceAccounts" | "notServiceAccounts" => check_service_accounts(&values),
                "trustDomains" | "notTrustDomains" => check_trust_domains(&values),
                _ => check_empty(&values),
            };
            self.check(format!("{path}.{f}"), r);
        }
    }

    fn operation(&mut self, path: &str, op: &Value) {
        let all = ["ports", "methods", "paths", "hosts", "notPorts", "notMethods", "notPaths", "notHosts"];
        if !all.iter().any(|f| non_empty(op, f)) {
            self.err(path, "to.operation must not be empty");
        }
        for f in all {
            let values = strings(op, f);
            let r = match f {
                "ports" | "notPorts" => check_ports(&values).and_then(|()| check_empty(&values)),
                "paths" | "notPaths" => check_empty(&values).and_then(|()| check_path_templates(&values)),
                _ => check_empty(&values),
            };
            self.check(format!("{path}.{f}"), r);
        }
    }

    fn peer_authentication(&mut self, spec: &Value) {
        let labels = spec.get("selector").is_some_and(|s| non_empty(s, "matchLabels"));
        if !labels && non_empty(spec, "portLevelMtls") {
            self.err("spec.portLevelMtls", "portLevelMtls requires a selector with matchLabels");
        }
        match spec.get("portLevelMtls") {
            Some(Value::Object(ports)) if ports.is_empty() => {
                self.err("spec.portLevelMtls", "portLevelMtls, if set, must have at least one entry");
            }
            Some(Value::Object(ports)) => {
                for port in ports.keys() {
                    if !port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
                        self.err(format!("spec.portLevelMtls.{port}"), "port must be a number between 1-65535");
                    }
                }
            }
            _ => {}
        }
        self.selector("spec.selector", spec.get("selector"), "matchLabels");
    }

    fn request_authentication(&mut self, spec: &Value) {
        self.policy_targets(spec);
        for (i, rule) in arr(spec, "jwtRules") {
            let p = format!("spec.jwtRules[{i}]");
            if !rule.is_object() {
                // (CRD) istiod would read it as an empty rule, which has no issuer.
                self.err(&p, "jwt rule must be an object with an issuer or jwksUri");
                continue;
            }
            for (j, a) in arr(rule, "audiences") {
                if a.as_str().is_some_and(str::is_empty) {
                    self.err(format!("{p}.audiences[{j}]"), "audience must be a non-empty string");
                }
            }
            let jwks_uri = str_of(rule, "jwksUri").or_else(|| str_of(rule, "jwks_uri")).unwrap_or_default();
            if str_of(rule, "issuer").unwrap_or_default().is_empty() && jwks_uri.is_empty() {
                self.err(format!("{p}.issuer"), "issuer or jwksUri must be a non-empty string");
            }
            // (CRD) at most one source of keys.
            if ["jwksUri", "jwks_uri", "jwks"].iter().filter(|k| has(rule, k)).count() > 1 {
                self.err(&p, "only one of jwks or jwksUri can be set");
            }
            if !jwks_uri.is_empty() {
                match go_url_scheme(jwks_uri, false) {
                    Ok(s) if s == "http" || s == "https" => {}
                    Ok(s) => {
                        self.err(format!("{p}.jwksUri"), format!("URI scheme {s:?} is not supported (http or https)"))
                    }
                    Err(e) => self.err(format!("{p}.jwksUri"), format!("{jwks_uri:?} is not a URL: {e}")),
                }
            }
            if let Some(jwks) = str_of(rule, "jwks").filter(|j| !j.is_empty())
                && serde_json::from_str::<Value>(jwks).is_err()
            {
                self.err(format!("{p}.jwks"), "jwks parse error: not JSON");
            }
            for (j, h) in arr(rule, "fromHeaders") {
                if str_of(h, "name").is_none_or(str::is_empty) {
                    self.err(format!("{p}.fromHeaders[{j}].name"), "header name must be a non-empty string");
                }
            }
            for k in ["fromParams", "fromCookies", "spaceDelimitedClaims"] {
                for (j, v) in arr(rule, k) {
                    // (CRD for spaceDelimitedClaims) no empty names.
                    if v.as_str().is_some_and(str::is_empty) {
                        self.err(format!("{p}.{k}[{j}]"), "must be a non-empty string");
                    }
                }
            }
            for (j, c) in arr(rule, "outputClaimToHeaders") {
                let cp = format!("{p}.outputClaimToHeaders[{j}]");
                let claim = str_of(c, "claim").unwrap_or_default();
                let header = str_of(c, "header").unwrap_or_default();
                if claim.is_empty() || header.is_empty() {
                    self.err(&cp, "header and claim must be non-empty strings");
                } else if !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    self.err(format!("{cp}.header"), format!("{header:?} is not a valid header name"));
                }
            }
            self.duration(&format!("{p}.timeout"), rule.get("timeout"));
        }
    }

    fn telemetry(&mut self, spec: &Value) {
        self.policy_targets(spec);
        for (i, m) in arr(spec, "metrics") {
            let p = format!("spec.metrics[{i}]");
            self.providers(&p, m);
            // (CRD) at least 1ms.
            if let Some(d) = self.duration_syntax(&format!("{p}.reportingInterval"), m.get("reportingInterval"))
                && d < 1_000_000
            {
                self.err(format!("{p}.reportingInterval"), "must be a valid duration greater than 1ms");
            }
            for (j, o) in arr(m, "overrides") {
                let op = format!("{p}.overrides[{j}]");
                if o.is_null() {
                    self.err(&op, "override may not be null");
                    continue;
                }
                for (tag, t) in map_of(o, "tagOverrides") {
                    let tp = format!("{op}.tagOverrides.{tag}");
                    if t.is_null() {
                        self.err(&tp, "tag override may not be null");
                        continue;
                    }
                    let value = str_of(t, "value").unwrap_or_default();
                    match str_of(t, "operation").unwrap_or("UPSERT") {
                        "UPSERT" if value.is_empty() => {
                            self.err(format!("{tp}.value"), "value must be set when operation is UPSERT")
                        }
                        // The webhook's reading; the CRD also refuses `value: ""`.
                        "REMOVE" if !value.is_empty() => {
                            self.err(format!("{tp}.value"), "value may only be set when operation is UPSERT")
                        }
                        _ => {}
                    }
                }
                if let Some(mm) = o.get("match")
                    && str_of(mm, "customMetric") == Some("")
                {
                    self.err(format!("{op}.match.customMetric"), "customMetric may not be empty");
                }
            }
        }
        for (i, t) in arr(spec, "tracing") {
            let p = format!("spec.tracing[{i}]");
            self.providers(&p, t);
            if let Some(r) = float_of(t, "randomSamplingPercentage")
                && !(0.0..=100.0).contains(&r)
            {
                self.err(
                    format!("{p}.randomSamplingPercentage"),
                    "randomSamplingPercentage must be in range [0.0, 100.0]",
                );
            }
            for (name, tag) in map_of(t, "customTags") {
                let tp = format!("{p}.customTags.{name}");
                if name.is_empty() {
                    self.err(&tp, "tag name may not be empty");
                }
                if tag.is_null() {
                    self.err(&tp, "tag may not be null");
                    continue;
                }
                for (kind, field) in [("literal", "value"), ("header", "name"), ("environment", "name")] {
                    if let Some(k) = tag.get(kind).filter(|k| !k.is_null())
                        && str_of(k, field).unwrap_or_default().is_empty()
                    {
                        self.err(format!("{tp}.{kind}.{field}"), format!("{kind} tag {field} may not be empty"));
                    }
                }
            }
        }
        for (i, a) in arr(spec, "accessLogging") {
            self.providers(&format!("spec.accessLogging[{i}]"), a);
        }
    }

    fn providers(&mut self, path: &str, v: &Value) {
        if let Some((j, _)) = arr(v, "providers").find(|(_, p)| str_of(p, "name").is_none_or(str::is_empty)) {
            self.err(format!("{path}.providers[{j}].name"), "providers.name may not be empty");
        }
    }

    fn wasm_plugin(&mut self, spec: &Value) {
        if !spec.is_object() {
            return;
        }
        self.policy_targets(spec);
        let url = str_of(spec, "url").unwrap_or_default();
        if url.is_empty() {
            self.err("spec.url", "url is required");
        } else {
            // istiod's `strictParseURL`: as a request URI (and a URL), else with `http://`.
            let scheme = go_url_scheme(url, true).and_then(|s| go_url_scheme(url, false).map(|_| s)).or_else(|e| {
                let with_http = format!("http://{url}");
                go_url_scheme(&with_http, true).and_then(|s| go_url_scheme(&with_http, false).map(|_| s)).map_err(|_| e)
            });
            match scheme {
                Ok(s) if matches!(s.as_str(), "" | "file" | "http" | "https" | "oci") => {}
                Ok(s) => {
                    self.err("spec.url", format!("url must have schema one of [http, https, file, oci], not {s:?}"))
                }
                Err(e) => self.err("spec.url", format!("failed to parse url: {e}")),
            }
        }
        if let Some(sha) = str_of(spec, "sha256")
            && !sha.is_empty()
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            self.err("spec.sha256", "sha256 must match [a-f0-9]{64}");
        }
        // The webhook bounds their length; (CRD) and an empty value is refused.
        for (field, max) in [("imagePullSecret", 253), ("pluginName", 256)] {
            if let Some(v) = str_of(spec, field)
                && (v.is_empty() || v.len() > max)
            {
                self.err(format!("spec.{field}"), format!("{field} must be 1-{max} characters long"));
            }
        }
        let mut names = BTreeSet::new();
        for (i, e) in arr(spec.get("vmConfig").unwrap_or(&Value::Null), "env") {
            let p = format!("spec.vmConfig.env[{i}]");
            let name = str_of(e, "name").unwrap_or_default();
            if name.is_empty() || name.len() > 256 {
                self.err(format!("{p}.name"), "env name must be 1-256 characters long");
            } else if !names.insert(name) {
                self.err(format!("{p}.name"), format!("duplicate env {name:?}"));
            }
            if str_of(e, "valueFrom").unwrap_or("INLINE") != "INLINE"
                && !str_of(e, "value").unwrap_or_default().is_empty()
            {
                self.err(format!("{p}.value"), "value may only be set when valueFrom is INLINE");
            }
        }
        for (i, m) in arr(spec, "match") {
            for (j, port) in arr(m, "ports") {
                self.port_number(
                    &format!("spec.match[{i}].ports[{j}].number"),
                    Some(port.get("number").unwrap_or(&Value::Null)),
                    true,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons `validate` gives for the single document `yaml`.
    fn errors(yaml: &str) -> Vec<String> {
        let parsed = crate::parse_file("mem.yaml", yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 1);
        validate(&parsed.objects[0]).err().unwrap_or_default()
    }

    fn mk(api_version: &str, kind: &str, spec: &str) -> String {
        format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec:\n{spec}")
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("5s"), Some(5_000_000_000));
        assert_eq!(go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(go_duration(".5ms"), Some(500_000));
        assert_eq!(go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(go_duration("-1s"), Some(-1_000_000_000));
        assert_eq!(go_duration("0"), Some(0));
        for bad in ["", "5", "apple", "1m1", "s", "1.s.", "5 s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn go_urls() {
        assert_eq!(go_url_scheme("http://test", true).as_deref(), Ok("http"));
        assert_eq!(go_url_scheme("file:///opt/filters/openid.wasm", true).as_deref(), Ok("file"));
        assert_eq!(go_url_scheme("oci://ghcr.io/a/b:1.0", true).as_deref(), Ok("oci"));
        assert_eq!(go_url_scheme("HTTPS://Example.com/jwks", false).as_deref(), Ok("https"));
        assert_eq!(go_url_scheme("http://[::1]:8080/x#y", false).as_deref(), Ok("http"));
        // No scheme: `localhost` is read as one, as Go does.
        assert_eq!(go_url_scheme("localhost:5000/foo", true).as_deref(), Ok("localhost"));
        assert!(go_url_scheme("test", true).is_err(), "a request URI needs a scheme or a path");
        assert!(go_url_scheme("http://#%blah$#@", true).is_err(), "'#' in userinfo");
        assert!(go_url_scheme("http://a b/", false).is_err(), "space in host");
        assert!(go_url_scheme("http://host:port/", false).is_err(), "port not a number");
        assert!(go_url_scheme("http://host/%zz", false).is_err(), "bad escape");
        assert!(go_url_scheme("ht\u{8}tp://host/", false).is_err(), "control character");
    }

    #[test]
    fn host_names_and_labels() {
        for ok in ["example.com", "example.com.", "*.example.com", "*x", "*", "reviews", "a-b.c"] {
            assert_eq!(wildcard_domain(ok), Ok(()), "{ok}");
        }
        for bad in ["", "foo.*.com", "10.0.0.1", "a_b.com", "-a.com", "a..b"] {
            assert!(wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(fqdn("*.example.com").is_err());
        assert_eq!(label("app.kubernetes.io/name", "x"), Ok(()));
        assert_eq!(label("foo", ""), Ok(()));
        assert!(label("a/b/c", "x").is_err());
        assert!(label("foo", "-bar").is_err());
        assert!(label("", "x").is_err());
        assert!(is_ip("fe80::1%eth0") && is_ip("::ffff:1.2.3.4") && !is_ip("1.2.3.4%eth0") && !is_ip("1.2.3"));
        assert!(is_cidr("5.6.0.0/16") && is_cidr("2001:db8::/32") && !is_cidr("1.2.3.4/99") && !is_cidr("1.2.3.4/"));
    }

    #[test]
    fn authorization_paths_and_conditions() {
        assert_eq!(check_path_templates(&["/exact", "*/suffix", "/path/{*}", "/{**}/path"]), Ok(()));
        assert!(check_path_templates(&["/{**}/{*}"]).is_err(), "{{**}} must be last");
        assert!(check_path_templates(&["/a{b}/{*}"]).is_err());
        assert!(check_condition("request.headers[X]", &["a"]).is_ok());
        assert!(check_condition("request.headers", &["a"]).is_err());
        assert!(check_condition("destination.port", &["99999"]).is_err());
        assert!(check_condition("destination.labels[app]", &["a"]).is_err());
        assert!(check_condition("source.color", &["a"]).is_err());
    }

    #[test]
    fn authorization_policy_actions() {
        let ap = |spec: &str| errors(&mk("security.istio.io/v1", "AuthorizationPolicy", spec));
        assert!(ap("  action: ALLOW\n").is_empty(), "ALLOW without rules denies everything, and is valid");
        assert!(ap("  action: DENY\n")[0].starts_with("spec.rules:"));
        assert!(ap("  action: CUSTOM\n  rules: [{}]\n")[0].starts_with("spec.provider.name:"));
        assert!(ap("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n").is_empty());
        assert!(ap("  provider: {name: ext}\n  rules: [{}]\n")[0].starts_with("spec.provider:"));
        let e = ap(
            "  rules:\n  - to: [{operation: {ports: ['80', x]}}]\n    when: [{key: request.auth.claims, values: [a]}]\n",
        );
        // The key is checked for values and notValues alike, as istiod does.
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("spec.rules[0].to[0].operation.ports:")
                && e[1].starts_with("spec.rules[0].when[0].values:")
        );
    }

    #[test]
    fn dry_run_annotation_only_on_authorization_policy() {
        let ann = "  annotations: {istio.io/dry-run: \"true\"}\n";
        let ap = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\n{ann}spec:\n  action: DENY\n  rules: [{{}}]\n"
        );
        assert!(errors(&ap).is_empty());
        let pa = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\n{ann}spec: {{}}\n"
        );
        assert!(errors(&pa)[0].starts_with("metadata.annotations:"));
    }

    #[test]
    fn service_entry_ports_and_hosts() {
        let se = |spec: &str| errors(&mk("networking.istio.io/v1", "ServiceEntry", spec));
        let two_hosts = "  hosts: [a.example.com, b.example.com]\n  resolution: DNS\n";
        assert!(se(&format!("{two_hosts}  ports: [{{name: http, number: 80, protocol: HTTP}}]\n")).is_empty());
        let e = se(&format!("{two_hosts}  ports: [{{name: tcp, number: 80, protocol: TCP}}]\n"));
        assert!(e[0].contains("multiple hosts provided with non-HTTP, non-TLS ports"), "{e:?}");
        let e = se(
            "  hosts: [a.example.com]\n  resolution: STATIC\n  ports: [{name: http, number: 80}]\n  endpoints: [{address: 1.1.1.1, ports: {grpc: 81}}]\n",
        );
        assert!(e[0].starts_with("spec.endpoints[0].ports.grpc:"), "{e:?}");
        let e =
            se("  hosts: [a.example.com]\n  ports: [{name: http, number: 80, protocol: HTTP3}]\n  exportTo: [ns, .]\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("spec.ports[0].protocol:") && e[1].starts_with("spec.exportTo:"));
    }

    #[test]
    fn destination_rule_traffic_policy() {
        let dr = |spec: &str| errors(&mk("networking.istio.io/v1", "DestinationRule", spec));
        assert!(
            dr("  host: ratings.prod.svc.cluster.local.\n  subsets: [{name: v1, labels: {version: v1}}]\n").is_empty()
        );
        assert!(dr("  host: r\n  trafficPolicy: {}\n").is_empty(), "istiod refuses it; Spar tolerates it");
        assert!(
            dr("  host: r\n  trafficPolicy: {connectionPool: {}}\n")[0]
                .starts_with("spec.trafficPolicy.connectionPool:")
        );
        assert!(dr("  host: r\n  subsets: [{name: v1.0}]\n")[0].starts_with("spec.subsets[0].name:"));
        let e = dr(
            "  host: r\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 100us}}\n    loadBalancer: {consistentHash: {maglev: {tableSize: 100}}}\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        let e = dr("  host: r\n  trafficPolicy: {tls: {mode: MUTUAL}}\n");
        assert_eq!(e.len(), 2, "client certificate and key: {e:?}");
        assert!(dr("  host: r\n  trafficPolicy: {tls: {mode: MUTUAL, credentialName: c}}\n").is_empty());
    }

    #[test]
    fn istiod_webhook_quirks_are_kept() {
        // A tag override without an operation is an UPSERT, which needs a value.
        let t = mk("telemetry.istio.io/v1", "Telemetry", "  metrics: [{overrides: [{tagOverrides: {foo: {}}}]}]\n");
        assert!(errors(&t)[0].ends_with("value must be set when operation is UPSERT"));
        // The webhook knows httpGet, tcpSocket and exec probes only.
        let wg = mk("networking.istio.io/v1", "WorkloadGroup", "  template: {}\n  probe: {grpc: {port: 8080}}\n");
        assert!(errors(&wg)[0].starts_with("spec.probe:"));
        // A WasmPlugin URL without a scheme is fetched over HTTP, unless Go reads a scheme in it.
        let wasm = |url: &str| errors(&mk("extensions.istio.io/v1alpha1", "WasmPlugin", &format!("  url: {url:?}\n")));
        assert!(wasm("ghcr.io/istio/plugin:1.0").is_empty());
        assert!(wasm("localhost:5000/plugin")[0].contains("\"localhost\""));
    }

    /// The one valid document of Istio's corpus that the YAML parser refuses unquoted
    /// (docs/compatibility.md) passes validation once quoted.
    #[test]
    fn quoted_service_entry_of_the_valid_corpus() {
        let spec = "  hosts: [\"example.com\"]\n  workloadSelector:\n    labels:\n      foo: bar\n  addresses: [1.2.3.4, \"001:db8::\"]\n  exportTo: [foo, .]\n  location: MESH_EXTERNAL\n  ports:\n    - name: foo\n      protocol: HTTP\n      number: 1234\n      targetPort: 2345\n  subjectAltNames: [sa]\n  resolution: DNS\n";
        assert_eq!(errors(&mk("networking.istio.io/v1", "ServiceEntry", spec)), Vec::<String>::new());
    }

    #[test]
    fn envoy_filter_matches() {
        let ef = |patch: &str| {
            errors(&mk("networking.istio.io/v1alpha3", "EnvoyFilter", &format!("  configPatches:\n  - {patch}\n")))
        };
        let sub = "listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}";
        assert!(ef(&format!("{{applyTo: HTTP_FILTER, match: {{{sub}}}, patch: {{operation: REMOVE}}}}")).is_empty());
        let e = ef(&format!("{{applyTo: NETWORK_FILTER, match: {{{sub}}}, patch: {{operation: REMOVE}}}}"));
        assert!(e[0].contains("subFilter match can be used with applyTo HTTP_FILTER only"), "{e:?}");
        let e = ef("{applyTo: CLUSTER, match: {listener: {}}, patch: {operation: MERGE, value: {}}}");
        assert!(e[0].contains("needs a cluster match"), "{e:?}");
        let e = ef("{applyTo: CLUSTER, patch: {operation: ADD}}");
        assert!(e[0].starts_with("spec.configPatches[0].patch.value:"), "{e:?}");
    }
}
