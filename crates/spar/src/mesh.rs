//! `spar serve --mesh-config FILE`: Istio's MeshConfig (the `mesh` key of the `istio`
//! ConfigMap, or that ConfigMap itself), read once at start.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use spar_model::{FileAccessLog, MeshConfig};

/// The MeshConfig fields Spar acts on; the rest is reported as ignored.
const ACTED_ON: [&str; 6] = [
    "rootNamespace",
    "outboundTrafficPolicy",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "extensionProviders",
];

/// Reads a MeshConfig file into `base` (whose domain and defaults stay unless the file
/// says otherwise). Returns the top-level fields that were ignored.
pub fn load(path: &Path, base: MeshConfig) -> anyhow::Result<(MeshConfig, Vec<String>)> {
    let text = std::fs::read_to_string(path)?;
    let doc: Value = serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)?)?;
    // A ConfigMap carries the MeshConfig as YAML text under `data.mesh`.
    let mesh_text = match doc.pointer("/data/mesh").and_then(Value::as_str) {
        Some(t) if doc.get("kind").and_then(Value::as_str) == Some("ConfigMap") => t.to_string(),
        _ => text,
    };
    let parsed = spar_analyze::context::MeshConfig::from_yaml(&mesh_text).map_err(anyhow::Error::msg)?;
    from_raw(&parsed.raw, base)
}

fn access_log(path: &str, format: Option<&str>, json: bool, fields: BTreeMap<String, String>) -> FileAccessLog {
    FileAccessLog { path: path.to_string(), format: format.map(str::to_string), json, json_fields: fields }
}

fn from_raw(raw: &Value, mut mesh: MeshConfig) -> anyhow::Result<(MeshConfig, Vec<String>)> {
    let s = |p: &str| raw.pointer(p).and_then(Value::as_str);
    if let Some(ns) = s("/rootNamespace") {
        mesh.root_namespace = ns.to_string();
    }
    match s("/outboundTrafficPolicy/mode") {
        Some("REGISTRY_ONLY") => mesh.registry_only = true,
        Some("ALLOW_ANY") | None => {}
        Some(other) => anyhow::bail!("outboundTrafficPolicy.mode {other:?} is not ALLOW_ANY or REGISTRY_ONLY"),
    }
    if let Some(path) = s("/accessLogFile").filter(|p| !p.is_empty()) {
        let json = match s("/accessLogEncoding") {
            Some("JSON") => true,
            Some("TEXT") | None => false,
            Some(other) => anyhow::bail!("accessLogEncoding {other:?} is not TEXT or JSON"),
        };
        let format = s("/accessLogFormat").filter(|f| !f.is_empty());
        // With JSON encoding, accessLogFormat is a JSON object of field -> operator.
        let fields = match (json, format) {
            (true, Some(f)) => serde_json::from_str(f).map_err(|e| anyhow::anyhow!("accessLogFormat: {e}"))?,
            _ => BTreeMap::new(),
        };
        mesh.access_log = Some(access_log(path, if json { None } else { format }, json, fields));
    }
    for p in raw.get("extensionProviders").and_then(Value::as_array).into_iter().flatten() {
        let (Some(name), Some(file)) = (p.get("name").and_then(Value::as_str), p.get("envoyFileAccessLog")) else {
            continue;
        };
        let path = file.get("path").and_then(Value::as_str).unwrap_or("/dev/stdout");
        let text = file.pointer("/logFormat/text").and_then(Value::as_str);
        let labels: Option<BTreeMap<String, String>> =
            file.pointer("/logFormat/labels").map(|l| serde_json::from_value(l.clone())).transpose()?;
        let json = labels.is_some();
        mesh.access_log_providers.insert(name.to_string(), access_log(path, text, json, labels.unwrap_or_default()));
    }
    let ignored = raw
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|k| !ACTED_ON.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok((mesh, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_access_logs_and_policy() {
        let raw = serde_json::json!({
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
            "accessLogFile": "/dev/stdout",
            "extensionProviders": [
                {"name": "audit", "envoyFileAccessLog": {"path": "/var/log/audit.log", "logFormat": {"labels": {"host": "%REQ(:AUTHORITY)%"}}}},
                {"name": "otel", "opentelemetry": {"service": "x", "port": 4317}},
            ],
            "defaultConfig": {},
        });
        let (m, ignored) = from_raw(&raw, MeshConfig::default()).expect("valid");
        assert!(m.registry_only);
        assert_eq!(m.access_log.as_ref().map(|a| a.path.as_str()), Some("/dev/stdout"));
        let audit = &m.access_log_providers["audit"];
        assert!(audit.json);
        assert_eq!(audit.json_fields["host"], "%REQ(:AUTHORITY)%");
        assert!(!m.access_log_providers.contains_key("otel"));
        assert_eq!(ignored, ["defaultConfig"]);
    }

    #[test]
    fn bad_values_are_errors() {
        let raw = serde_json::json!({"outboundTrafficPolicy": {"mode": "SOMETIMES"}});
        assert!(from_raw(&raw, MeshConfig::default()).is_err());
    }
}
