//! The security kinds: AuthorizationPolicy, PeerAuthentication, RequestAuthentication.

use serde_json::Value;

use super::Validator;
use super::syntax::*;

impl Validator<'_> {
    pub(super) fn authorization_policy(&mut self, spec: &Value) {
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

    pub(super) fn source(&mut self, path: &str, src: &Value) {
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

    pub(super) fn operation(&mut self, path: &str, op: &Value) {
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

    pub(super) fn peer_authentication(&mut self, spec: &Value) {
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

    pub(super) fn request_authentication(&mut self, spec: &Value) {
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
}
