//! Semantic validation that Istio applies beyond the schema (istiod's
//! `pkg/config/validation`), for the rules that would otherwise produce broken Envoy
//! config. A failing object is reported with every reason and skipped; nothing else is
//! affected.
//!
//! Rules are checked on the document as written (`Object::raw`), so they read the same
//! field names as the Istio documentation.

use serde_json::Value;

use crate::object::{Kind, Object};

/// Checks `obj`; `Err` carries one message per problem, each naming the field.
pub fn validate(obj: &Object) -> Result<(), Vec<String>> {
    let mut v = Validator::default();
    let spec = obj.raw.get("spec").unwrap_or(&Value::Null);
    match obj.meta.kind {
        Kind::VirtualService => v.virtual_service(spec),
        Kind::DestinationRule => v.destination_rule(spec),
        Kind::ServiceEntry => v.service_entry(spec),
        Kind::WorkloadEntry => v.workload_entry("spec", spec),
        Kind::Sidecar => v.sidecar(spec),
        Kind::Gateway => v.gateway(spec),
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

#[derive(Default)]
struct Validator {
    errors: Vec<String>,
}

fn arr<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = (usize, &'a Value)> + use<'a> {
    v.get(k).and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

impl Validator {
    fn err(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
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
            Some(h) => self.host("spec.host", h, true),
            None => self.err("spec.host", "host is required"),
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in arr(spec, "subsets") {
            match str_of(s, "name") {
                None | Some("") => self.err(format!("spec.subsets[{i}].name"), "subset name is required"),
                Some(n) => {
                    if !names.insert(n.to_string()) {
                        self.err(format!("spec.subsets[{i}].name"), format!("duplicate subset name {n:?}"));
                    }
                }
            }
        }
    }

    fn service_entry(&mut self, spec: &Value) {
        let hosts: Vec<_> = arr(spec, "hosts").filter_map(|(_, h)| h.as_str()).collect();
        if hosts.is_empty() {
            self.err("spec.hosts", "at least one host is required");
        }
        for (i, h) in hosts.iter().enumerate() {
            self.host(&format!("spec.hosts[{i}]"), h, true);
        }
        let resolution = str_of(spec, "resolution").unwrap_or("NONE");
        let mut port_names = std::collections::BTreeSet::new();
        for (i, p) in arr(spec, "ports") {
            self.port_number(&format!("spec.ports[{i}].number"), p.get("number"), true);
            if let Some(n) = str_of(p, "name")
                && !port_names.insert(n.to_string())
            {
                self.err(format!("spec.ports[{i}].name"), format!("duplicate port name {n:?}"));
            }
        }
        if spec.get("workloadSelector").is_some() && spec.get("endpoints").is_some() {
            self.err("spec", "only one of workloadSelector or endpoints may be set");
        }
        for (i, e) in arr(spec, "endpoints") {
            let p = format!("spec.endpoints[{i}]");
            if resolution == "STATIC"
                && let Some(a) = str_of(e, "address")
                && a.parse::<std::net::IpAddr>().is_err()
                && !a.starts_with("unix://")
            {
                self.err(format!("{p}.address"), format!("{a:?} must be an IP address with resolution STATIC"));
            }
            self.workload_entry(&p, e);
        }
        if (resolution == "DNS" || resolution == "DNS_ROUND_ROBIN") && spec.get("endpoints").is_none() {
            for (i, h) in hosts.iter().enumerate() {
                if h.starts_with('*') {
                    self.err(format!("spec.hosts[{i}]"), "wildcard hosts need endpoints with resolution DNS");
                }
            }
        }
        if resolution == "NONE" && arr(spec, "endpoints").count() != 0 {
            self.err("spec.endpoints", "endpoints cannot be set with resolution NONE");
        }
    }

    fn workload_entry(&mut self, path: &str, spec: &Value) {
        if let Some(ports) = spec.get("ports").and_then(Value::as_object) {
            for (name, p) in ports {
                self.port_number(&format!("{path}.ports.{name}"), Some(p), true);
            }
        }
        if path == "spec" && str_of(spec, "address").is_none_or(str::is_empty) && str_of(spec, "network").is_none() {
            self.err("spec.address", "address is required unless network is set");
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
}
