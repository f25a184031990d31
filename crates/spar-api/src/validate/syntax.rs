//! The syntax rules istiod and Kubernetes check values with: DNS names and labels, IPs
//! and CIDRs, Go durations and URLs, and the value lists of AuthorizationPolicy.

use serde_json::Value;

pub(super) fn arr<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = (usize, &'a Value)> + use<'a> {
    v.get(k).and_then(Value::as_array).into_iter().flatten().enumerate()
}

pub(super) fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// A field that is set: present and not `null`.
pub(super) fn has(v: &Value, k: &str) -> bool {
    v.get(k).is_some_and(|x| !x.is_null())
}

/// A repeated or map field with at least one entry (istiod cannot tell empty from unset).
pub(super) fn non_empty(v: &Value, k: &str) -> bool {
    match v.get(k) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        _ => false,
    }
}

/// The string items of a list field.
pub(super) fn strings<'a>(v: &'a Value, k: &str) -> Vec<&'a str> {
    arr(v, k).filter_map(|(_, s)| s.as_str()).collect()
}

pub(super) fn map_of<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = (&'a String, &'a Value)> + use<'a> {
    v.get(k).and_then(Value::as_object).into_iter().flatten()
}

/// An integer field, also when written as a string (protobuf JSON allows both for 64-bit
/// values).
pub(super) fn int_of(v: &Value, k: &str) -> Option<i64> {
    match v.get(k)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn float_of(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

pub(super) fn bool_of(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// A DNS-1123 label as Istio checks it (`labels.IsDNS1123Label`): 1-63 characters,
/// letters (either case), digits and `-`, starting and ending with a letter or digit.
pub(super) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 label that may start with `*` or `*-`, or be `*` (`IsWildcardDNS1123Label`).
pub(super) fn is_wildcard_dns1123_label(s: &str) -> bool {
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
pub(super) fn dns1123_labels(domain: &str) -> Result<(), String> {
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

pub(super) fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// `agent.ValidateFQDN`.
pub(super) fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// `agent.ValidateWildcardDomain`: a domain whose first label may be a wildcard label.
pub(super) fn wildcard_domain(name: &str) -> Result<(), String> {
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
pub(super) fn is_qualified_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `labels.Instance.Validate` for one label.
pub(super) fn label(key: &str, value: &str) -> Result<(), String> {
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
pub(super) fn is_dns1123_label_unbounded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Go's `netip.ParseAddr`: an IPv4 or IPv6 address, IPv6 with an optional zone.
pub(super) fn is_ip(s: &str) -> bool {
    let addr = match s.split_once('%') {
        Some((a, zone)) if a.contains(':') && !zone.is_empty() => a,
        Some(_) => return false,
        None => s,
    };
    addr.parse::<std::net::IpAddr>().is_ok()
}

/// Go's `netip.ParsePrefix`: an address without a zone, `/`, and a prefix length in range.
pub(super) fn is_cidr(s: &str) -> bool {
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
pub(super) fn go_bool(s: &str) -> bool {
    matches!(s, "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False")
}

/// The scheme of a URL as Go's `net/url` parses it (lower-cased, empty when there is
/// none), or why Go refuses it. `via_request` is `url.ParseRequestURI`, otherwise
/// `url.Parse`. Only the checks that can fail are reproduced.
pub(super) fn go_url_scheme(raw: &str, via_request: bool) -> Result<String, String> {
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

pub(super) fn go_url_authority(authority: &str) -> Result<(), String> {
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
pub(super) fn go_unescape(s: &str, host: bool) -> Result<(), String> {
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
pub(super) fn check_ips(values: &[&str]) -> Result<(), String> {
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
pub(super) fn check_ports(values: &[&str]) -> Result<(), String> {
    for v in values {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u32>().map_or(true, |p| p > 65535) {
            return Err(format!("bad port ({v})"));
        }
    }
    Ok(())
}

/// `security.CheckEmptyValues`.
pub(super) fn check_empty(values: &[&str]) -> Result<(), String> {
    if values.iter().any(|v| v.is_empty()) { Err("empty value not allowed".into()) } else { Ok(()) }
}

/// `security.CheckWildcardValues`: non-empty, at most one `*`, at the start or the end.
pub(super) fn check_wildcards(values: &[&str]) -> Result<(), String> {
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
pub(super) fn check_trust_domains(values: &[&str]) -> Result<(), String> {
    check_wildcards(values)?;
    match values.iter().find(|v| v.contains('/')) {
        Some(v) => Err(format!("trust domain must not contain '/', found {v:?}")),
        None => Ok(()),
    }
}

/// `security.CheckServiceAccount`: at most 16 values, each `sa` or `ns/sa`, no wildcard,
/// at most 320 characters.
pub(super) fn check_service_accounts(values: &[&str]) -> Result<(), String> {
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
pub(super) fn check_path_templates(paths: &[&str]) -> Result<(), String> {
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
pub(super) fn check_condition(key: &str, values: &[&str]) -> Result<(), String> {
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
pub(super) fn protocol(p: &str) -> Option<&'static str> {
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

pub(super) fn protocol_is_http(p: Option<&str>) -> bool {
    matches!(p, Some("HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-Web"))
}

pub(super) fn protocol_is_tls(p: Option<&str>) -> bool {
    matches!(p, Some("HTTPS" | "TLS"))
}

/// Envoy's primality test for Maglev table sizes (`isPrime` in istiod).
pub(super) fn is_prime(x: u64) -> bool {
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
