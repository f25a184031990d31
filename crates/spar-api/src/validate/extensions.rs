//! Telemetry and WasmPlugin.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Validator;
use super::syntax::*;

impl Validator<'_> {
    pub(super) fn telemetry(&mut self, spec: &Value) {
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

    pub(super) fn providers(&mut self, path: &str, v: &Value) {
        if let Some((j, _)) = arr(v, "providers").find(|(_, p)| str_of(p, "name").is_none_or(str::is_empty)) {
            self.err(format!("{path}.providers[{j}].name"), "providers.name may not be empty");
        }
    }

    pub(super) fn wasm_plugin(&mut self, spec: &Value) {
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
