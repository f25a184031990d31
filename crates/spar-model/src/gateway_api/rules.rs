//! One route rule into one Istio route (istiod's `convertHTTPRoute`, `convertGRPCRoute`,
//! `convertTCPRoute`, `convertTLSRoute` and the filters and destinations they build).
//! Istio routes are built as JSON, in the shape of the VirtualService they end up in.

use serde_json::{Map, Value, json};

use super::Ctx;
use super::shape::{BackendRef, Cors, Filter, GrpcMatch, HeaderFilter, HttpMatch, NoMatch, Rule, ValueMatch};
use super::util::{go_duration, proto_duration};

/// Why a rule, or a backend of it, cannot be served (Gateway API's condition reasons).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConfigError {
    /// The reason, as the route's status would give it.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    fn join(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(mut a), Some(b)) => {
                a.message = format!("{}; {}", a.message, b.message);
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }
}

/// A converted rule: the Istio route and, when some backend cannot be used, why.
pub(super) type Converted = Result<(Value, Option<ConfigError>), ConfigError>;

/// What a rule's backends are checked against: the route's kind and namespace, and
/// whether cross-namespace references need a ReferenceGrant (for Gateway parents; mesh
/// parents do not check, as in istiod).
#[derive(Clone, Copy)]
pub(super) struct From<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub enforce_grants: bool,
}

/// An HTTPRoute rule with at most one match (istiod splits rules by match).
pub(super) fn http(
    ctx: &Ctx<'_>,
    from: From<'_>,
    rule: &Rule<HttpMatch>,
    m: Option<&HttpMatch>,
    pos: usize,
) -> Converted {
    let mut out = Map::new();
    out.insert("name".into(), json!(rule_name(from, rule.name.as_deref(), pos)));
    if let Some(m) = m {
        let mut mr = Map::new();
        mr.insert("uri".into(), uri_match(m)?);
        if let Some(h) = value_matches(&m.headers, "header")? {
            mr.insert("headers".into(), h);
        }
        if let Some(q) = value_matches(&m.query_params, "query parameter")? {
            mr.insert("queryParams".into(), q);
        }
        if let Some(method) = &m.method {
            mr.insert("method".into(), json!({ "exact": method }));
        }
        out.insert("match".into(), json!([mr]));
    }
    let mut mirror_error = None;
    let mut redirect = false;
    for f in &rule.filters {
        match f.r#type.as_str() {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => header_filter(&mut out, f)?,
            "RequestRedirect" => {
                redirect = true;
                if let Some(r) = &f.request_redirect {
                    out.insert("redirect".into(), redirect_of(r));
                }
            }
            "RequestMirror" => match mirror(ctx, from, f) {
                Ok(Some(m)) => push(&mut out, "mirrors", m),
                Ok(None) => {}
                Err(e) => mirror_error = Some(e),
            },
            "URLRewrite" => {
                if let Some(rw) = f.url_rewrite.as_ref().and_then(rewrite_of) {
                    out.insert("rewrite".into(), rw);
                }
            }
            "CORS" => {
                if let Some(c) = &f.cors {
                    out.insert("corsPolicy".into(), cors_of(c));
                }
            }
            other => return Err(ConfigError::new("InvalidFilter", format!("unsupported filter type {other:?}"))),
        }
    }
    if let Some(r) = &rule.retry {
        let mut retry_on =
            vec!["connect-failure".to_string(), "refused-stream".into(), "unavailable".into(), "cancelled".into()];
        retry_on.extend(r.codes.iter().map(i64::to_string));
        let attempts = r.attempts.unwrap_or(2);
        let mut retries = json!({ "attempts": attempts });
        if attempts != 0 {
            retries["retryOn"] = json!(retry_on.join(","));
        }
        if let Some(b) = r.backoff.as_deref().and_then(go_duration) {
            retries["backoff"] = json!(proto_duration(b));
        }
        out.insert("retries".into(), retries);
    }
    if let Some(t) = &rule.timeouts {
        if let Some(d) = t.request.as_deref().and_then(go_duration).filter(|d| *d != 0) {
            out.insert("timeout".into(), json!(proto_duration(d)));
        }
        if let Some(d) = t.backend_request.as_deref().and_then(go_duration).filter(|d| *d != 0) {
            match out.get_mut("retries") {
                Some(r) => r["perTryTimeout"] = json!(proto_duration(d)),
                None => {
                    out.insert("timeout".into(), json!(proto_duration(d)));
                }
            }
        }
    }
    if weight_sum(&rule.backend_refs) == 0 && !redirect {
        out.insert("directResponse".into(), json!({ "status": 500 }));
        return Ok((Value::Object(out), mirror_error));
    }
    let (route, backend_error) = http_destinations(ctx, from, &rule.backend_refs)?;
    if let Some(route) = route {
        out.insert("route".into(), route);
    }
    Ok((Value::Object(out), ConfigError::join(backend_error, mirror_error)))
}

/// A GRPCRoute rule with at most one match.
pub(super) fn grpc(
    ctx: &Ctx<'_>,
    from: From<'_>,
    rule: &Rule<GrpcMatch>,
    m: Option<&GrpcMatch>,
    pos: usize,
) -> Converted {
    let mut out = Map::new();
    out.insert("name".into(), json!(rule_name(from, rule.name.as_deref(), pos)));
    if let Some(m) = m {
        let mut mr = Map::new();
        if let Some(u) = grpc_uri_match(m)? {
            mr.insert("uri".into(), u);
        }
        if let Some(h) = value_matches(&m.headers, "header")? {
            mr.insert("headers".into(), h);
        }
        out.insert("match".into(), json!([mr]));
    }
    for f in &rule.filters {
        match f.r#type.as_str() {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => header_filter(&mut out, f)?,
            "RequestMirror" => {
                if let Some(m) = mirror(ctx, from, f)? {
                    push(&mut out, "mirrors", m);
                }
            }
            other => return Err(ConfigError::new("InvalidFilter", format!("unsupported filter type {other:?}"))),
        }
    }
    if weight_sum(&rule.backend_refs) == 0 {
        out.insert("directResponse".into(), json!({ "status": 500 }));
        return Ok((Value::Object(out), None));
    }
    let (route, backend_error) = http_destinations(ctx, from, &rule.backend_refs)?;
    if let Some(route) = route {
        out.insert("route".into(), route);
    }
    Ok((Value::Object(out), backend_error))
}

/// A TCPRoute rule.
pub(super) fn tcp(ctx: &Ctx<'_>, from: From<'_>, rule: &Rule<NoMatch>) -> Converted {
    if weight_sum(&rule.backend_refs) == 0 {
        return Ok((json!({ "route": [zero_weight()] }), None));
    }
    let (route, err) = l4_destinations(ctx, from, &rule.backend_refs)?;
    Ok((json!({ "route": route }), err))
}

/// A TLSRoute rule, matching the route's hostnames by SNI.
pub(super) fn tls(ctx: &Ctx<'_>, from: From<'_>, rule: &Rule<NoMatch>, hostnames: &[String]) -> Converted {
    if weight_sum(&rule.backend_refs) == 0 {
        return Ok((json!({ "route": [zero_weight()] }), None));
    }
    let sni: Vec<&str> = if hostnames.is_empty() { vec!["*"] } else { hostnames.iter().map(String::as_str).collect() };
    let (route, err) = l4_destinations(ctx, from, &rule.backend_refs)?;
    Ok((json!({ "match": [{ "sniHosts": sni }], "route": route }), err))
}

/// istiod's stand-in for a rule whose backends all weigh 0: a destination that exists
/// nowhere, so the connection is closed.
fn zero_weight() -> Value {
    json!({ "destination": { "host": "internal.cluster.local", "subset": "zero-weight", "port": { "number": 65535 } } })
}

fn rule_name(from: From<'_>, name: Option<&str>, pos: usize) -> String {
    match name {
        Some(n) => n.to_string(),
        None => format!("{}.{}.{pos}", from.namespace, from.name),
    }
}

fn push(out: &mut Map<String, Value>, key: &str, v: Value) {
    match out.entry(key.to_string()).or_insert_with(|| json!([])) {
        Value::Array(a) => a.push(v),
        other => *other = json!([v]),
    }
}

fn weight_sum(refs: &[BackendRef]) -> i64 {
    refs.iter().map(|r| i64::from(r.weight.unwrap_or(1))).sum()
}

/// istiod's `createURIMatch`: path prefixes lose a trailing `/` (Envoy then matches
/// whole segments, see `gateway_semantics` in the route generator).
fn uri_match(m: &HttpMatch) -> Result<Value, ConfigError> {
    let (kind, value) = match &m.path {
        Some(p) => (p.r#type.as_deref().unwrap_or("PathPrefix"), p.value.as_deref().unwrap_or("/")),
        None => ("PathPrefix", "/"),
    };
    Ok(match kind {
        "PathPrefix" => {
            let v = if value == "/" { value } else { value.strip_suffix('/').unwrap_or(value) };
            json!({ "prefix": v })
        }
        "Exact" => json!({ "exact": value }),
        "RegularExpression" => json!({ "regex": value }),
        other => {
            return Err(ConfigError::new(
                "InvalidConfiguration",
                format!("unknown type: {other:?} is not supported Path match type"),
            ));
        }
    })
}

/// istiod's `createGRPCURIMatch`.
fn grpc_uri_match(m: &GrpcMatch) -> Result<Option<Value>, ConfigError> {
    let Some(method) = &m.method else { return Ok(None) };
    let (svc, meth) = (method.service.as_deref(), method.method.as_deref());
    let regex = match method.r#type.as_deref().unwrap_or("Exact") {
        "Exact" => match (svc, meth) {
            (Some(s), None) => return Ok(Some(json!({ "prefix": format!("/{s}/") }))),
            (None, Some(me)) => format!("/[^/]+/{me}"),
            (Some(s), Some(me)) => return Ok(Some(json!({ "exact": format!("/{s}/{me}") }))),
            (None, None) => {
                return Err(ConfigError::new("InvalidConfiguration", "gRPC match must have method or service defined"));
            }
        },
        "RegularExpression" => match (svc, meth) {
            (Some(s), None) => format!("/{s}/.+"),
            (None, Some(me)) => format!("/[^/]+/{me}"),
            (Some(s), Some(me)) => format!("/{s}/{me}"),
            (None, None) => {
                return Err(ConfigError::new("InvalidConfiguration", "gRPC match must have method or service defined"));
            }
        },
        other => {
            return Err(ConfigError::new(
                "InvalidConfiguration",
                format!("unknown type: {other:?} is not supported Path match type"),
            ));
        }
    };
    Ok(Some(json!({ "regex": regex })))
}

/// Header or query parameter matches, keyed by name (the last of a repeated name wins, as
/// in istiod's map).
fn value_matches(list: &[ValueMatch], what: &str) -> Result<Option<Value>, ConfigError> {
    let mut out = Map::new();
    for v in list {
        let m = match v.r#type.as_deref().unwrap_or("Exact") {
            "Exact" => json!({ "exact": v.value }),
            "RegularExpression" => json!({ "regex": v.value }),
            other => {
                return Err(ConfigError::new(
                    "InvalidConfiguration",
                    format!("unknown type: {other:?} is not supported {what} match type"),
                ));
            }
        };
        out.insert(v.name.clone(), m);
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

/// A request or response header modifier into `headers.request`/`headers.response`.
fn header_filter(out: &mut Map<String, Value>, f: &Filter) -> Result<(), ConfigError> {
    let (which, h) = match f.r#type.as_str() {
        "RequestHeaderModifier" => ("request", f.request_header_modifier.as_ref()),
        _ => ("response", f.response_header_modifier.as_ref()),
    };
    let Some(h) = h else { return Ok(()) };
    let ops = header_ops(h)?;
    let headers = out.entry("headers").or_insert_with(|| json!({}));
    headers[which] = ops;
    Ok(())
}

/// istiod's `createHeadersFilter`: names lower-cased, the first of a repeated name kept.
fn header_ops(h: &HeaderFilter) -> Result<Value, ConfigError> {
    for x in h.set.iter().chain(&h.add) {
        if !x.value.bytes().all(|c| c == 0x09 || (c >= 0x20 && c != 0x7f)) {
            return Err(ConfigError::new(
                "InvalidFilter",
                format!("header {:?} value contains invalid characters", x.name),
            ));
        }
    }
    let map = |list: &[super::shape::Header]| -> Option<Value> {
        let mut m = Map::new();
        for x in list {
            m.entry(x.name.to_lowercase()).or_insert_with(|| json!(x.value));
        }
        (!m.is_empty()).then_some(Value::Object(m))
    };
    let mut out = Map::new();
    if let Some(a) = map(&h.add) {
        out.insert("add".into(), a);
    }
    if !h.remove.is_empty() {
        out.insert("remove".into(), json!(h.remove));
    }
    if let Some(s) = map(&h.set) {
        out.insert("set".into(), s);
    }
    Ok(Value::Object(out))
}

/// istiod's `createRedirectFilter`.
fn redirect_of(r: &super::shape::Redirect) -> Value {
    let mut out = Map::new();
    // The CRD's default, which the API server fills in; a file gets no defaulting.
    out.insert("redirectCode".into(), json!(r.status_code.unwrap_or(302)));
    if let Some(h) = &r.hostname {
        out.insert("authority".into(), json!(h));
    }
    if let Some(s) = &r.scheme {
        out.insert("scheme".into(), json!(s));
    }
    match r.port {
        Some(p) => out.insert("port".into(), json!(p)),
        None if r.scheme.is_some() => out.insert("derivePort".into(), json!("FROM_PROTOCOL_DEFAULT")),
        None => out.insert("derivePort".into(), json!("FROM_REQUEST_PORT")),
    };
    if let Some(p) = &r.path {
        match p.r#type.as_str() {
            "ReplaceFullPath" => {
                out.insert("uri".into(), json!(p.replace_full_path.clone().unwrap_or_default()));
            }
            "ReplacePrefixMatch" => {
                out.insert("prefixRewrite".into(), json!(p.replace_prefix_match.clone().unwrap_or_default()));
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// istiod's `createRewriteFilter`.
fn rewrite_of(r: &super::shape::Rewrite) -> Option<Value> {
    let mut out = Map::new();
    if let Some(p) = &r.path {
        match p.r#type.as_str() {
            "ReplacePrefixMatch" => {
                let v = p.replace_prefix_match.as_deref().unwrap_or_default();
                let v = v.strip_suffix('/').unwrap_or(v);
                out.insert("uri".into(), json!(if v.is_empty() { "/" } else { v }));
            }
            "ReplaceFullPath" => {
                out.insert(
                    "uriRegexRewrite".into(),
                    json!({ "match": "/.*", "rewrite": p.replace_full_path.clone().unwrap_or_default() }),
                );
            }
            _ => {}
        }
    }
    if let Some(h) = &r.hostname {
        out.insert("authority".into(), json!(h));
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// istiod's `createCorsFilter`.
fn cors_of(c: &Cors) -> Value {
    let mut origins = Vec::new();
    for o in c.allow_origins.iter().filter(|o| !o.is_empty()) {
        if o == "*" {
            origins.push(json!({ "regex": r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+$" }));
        } else if !o.contains('*') {
            origins.push(json!({ "exact": o }));
        } else if o.matches('*').count() == 1 && o.ends_with('*') {
            origins.push(json!({ "prefix": o.trim_end_matches('*') }));
        } else {
            let pattern = super::quote_meta(o).replace(r"\*", ".*");
            origins.push(json!({ "regex": format!("^{pattern}$") }));
        }
    }
    let mut out = Map::new();
    if !origins.is_empty() {
        out.insert("allowOrigins".into(), json!(origins));
    }
    if c.allow_credentials == Some(true) {
        out.insert("allowCredentials".into(), json!(true));
    }
    for (k, v) in
        [("allowMethods", &c.allow_methods), ("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)]
    {
        if !v.is_empty() {
            out.insert(k.into(), json!(v));
        }
    }
    if let Some(age) = c.max_age.filter(|a| *a > 0) {
        out.insert("maxAge".into(), json!(format!("{age}s")));
    }
    out.insert("unmatchedPreflights".into(), json!("IGNORE"));
    Value::Object(out)
}

/// istiod's `createMirrorFilter`: `None` when the filter carries no mirror.
fn mirror(ctx: &Ctx<'_>, from: From<'_>, f: &Filter) -> Result<Option<Value>, ConfigError> {
    let Some(m) = &f.request_mirror else { return Ok(None) };
    let mut r = m.backend_ref.clone();
    r.weight = Some(1);
    let (dest, err) = destination(ctx, from, &r)?;
    if let Some(e) = err {
        return Err(e);
    }
    let mut out = json!({ "destination": dest });
    if let Some(fr) = &m.fraction {
        let den = f64::from(fr.denominator.unwrap_or(100));
        out["percentage"] = json!({ "value": 100.0 * f64::from(fr.numerator) / den });
    } else if let Some(p) = m.percent {
        out["percentage"] = json!({ "value": f64::from(p) });
    }
    Ok(Some(out))
}

/// Backends with weight above 0, and their weights (a single backend's weight is left
/// out, as istiod does).
fn weighted(refs: &[BackendRef]) -> Vec<(&BackendRef, i32)> {
    let kept: Vec<(&BackendRef, i32)> =
        refs.iter().map(|r| (r, r.weight.unwrap_or(1))).filter(|(_, w)| *w != 0).collect();
    if kept.len() == 1 { vec![(kept[0].0, 0)] } else { kept }
}

/// istiod's `buildHTTPDestination`/`buildGRPCDestination`.
fn http_destinations(
    ctx: &Ctx<'_>,
    from: From<'_>,
    refs: &[BackendRef],
) -> Result<(Option<Value>, Option<ConfigError>), ConfigError> {
    if refs.is_empty() {
        return Ok((None, None));
    }
    let mut out = Vec::new();
    let mut invalid = None;
    for (r, weight) in weighted(refs) {
        let (dest, err) = destination(ctx, from, r)?;
        if err.is_some() {
            invalid = err;
        }
        let mut rd = json!({ "destination": dest });
        if weight != 0 {
            rd["weight"] = json!(weight);
        }
        let mut rd_map = match rd {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for f in &r.filters {
            match f.r#type.as_str() {
                "RequestHeaderModifier" | "ResponseHeaderModifier" => header_filter(&mut rd_map, f)?,
                other => {
                    return Err(ConfigError::new("InvalidFilter", format!("unsupported filter type {other:?}")));
                }
            }
        }
        out.push(Value::Object(rd_map));
    }
    Ok((Some(Value::Array(out)), invalid))
}

/// istiod's `buildTCPDestination`.
fn l4_destinations(
    ctx: &Ctx<'_>,
    from: From<'_>,
    refs: &[BackendRef],
) -> Result<(Value, Option<ConfigError>), ConfigError> {
    let mut out = Vec::new();
    let mut invalid = None;
    for (r, weight) in weighted(refs) {
        let (dest, err) = destination(ctx, from, r)?;
        if err.is_some() {
            invalid = err;
        }
        let mut rd = json!({ "destination": dest });
        if weight != 0 {
            rd["weight"] = json!(weight);
        }
        out.push(rd);
    }
    Ok((Value::Array(out), invalid))
}

/// The destination of a backend that cannot be used: istiod's empty `Destination`, with
/// the empty host Spar's type requires. It names no cluster, so Envoy answers 500.
fn no_destination() -> Value {
    json!({ "host": "" })
}

/// istiod's `buildDestination`: the destination a backendRef names, and why it cannot be
/// used when it cannot (the destination is then empty: no cluster, 500 in Envoy).
fn destination(ctx: &Ctx<'_>, from: From<'_>, to: &BackendRef) -> Result<(Value, Option<ConfigError>), ConfigError> {
    let group = to.group.as_deref().unwrap_or("");
    let kind = to.kind.as_deref().unwrap_or("Service");
    if from.enforce_grants
        && let Some(to_ns) = to.namespace.as_deref()
        && to_ns != from.namespace
        && !ctx.granted(from.kind, from.namespace, group, kind, &to.name, to_ns)
    {
        return Ok((
            no_destination(),
            Some(ConfigError::new(
                "RefNotPermitted",
                format!(
                    "backendRef {}/{to_ns} not accessible to a {} in namespace {:?} (missing a ReferenceGrant?)",
                    to.name, from.kind, from.namespace
                ),
            )),
        ));
    }
    let ns = to.namespace.as_deref().unwrap_or(from.namespace);
    let mut invalid = None;
    let host = match (group, kind) {
        ("", "Service") | ("multicluster.x-k8s.io", "ServiceImport") => {
            if group.is_empty() && to.name.contains('.') {
                return Err(ConfigError::new(
                    "InvalidDestination",
                    "service name invalid; the name of the Service must be used, not the hostname.",
                ));
            }
            let host = ctx.service_host(&to.name, ns);
            if !ctx.services.contains_key(&(ns, to.name.as_str())) {
                invalid = Some(ConfigError::new("BackendNotFound", format!("backend({host}) not found")));
            }
            host
        }
        ("networking.istio.io", "Hostname") => {
            if to.namespace.is_some() {
                return Err(ConfigError::new("InvalidDestination", "namespace may not be set with Hostname type"));
            }
            if !ctx.hosts.contains(&to.name) {
                invalid = Some(ConfigError::new("BackendNotFound", format!("backend({}) not found", to.name)));
            }
            to.name.clone()
        }
        _ => {
            return Ok((
                no_destination(),
                Some(ConfigError::new(
                    "InvalidKind",
                    format!("referencing unsupported backendRef: group {group:?} kind {kind:?}"),
                )),
            ));
        }
    };
    let Some(port) = to.port else {
        return Err(ConfigError::new("InvalidDestination", "port is required in backendRef"));
    };
    Ok((json!({ "host": host, "port": { "number": port } }), invalid))
}
