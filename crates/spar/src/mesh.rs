//! Istio's MeshConfig, in layers:
//!
//! ```text
//!  defaults ◄── --mesh-config FILE (read at start) ◄── ConfigMap `istio`, key `mesh` ◄── flags
//!               (the `mesh` key, or the ConfigMap)      (--kubernetes: watched, live)    (--outbound-traffic-policy)
//! ```
//!
//! Each layer sets only the fields it names. The ConfigMap is read by spar-kube as text and
//! parsed here, with the same code as the file; a change reaches the next snapshot, and an
//! invalid one is logged (with the ConfigMap's name and why) and leaves the mesh as it was.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use spar_kube::meshconfig::MeshText;
use spar_model::{
    EXT_AUTHZ_DEFAULT_TIMEOUT, ExtAuthzApi, ExtAuthzProvider, FileAccessLog, HttpSettings, MeshConfig, OtelHttp,
    OtelProvider, RequestBody, TracingProvider,
};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

/// The MeshConfig fields Spar acts on; the rest is reported as ignored.
const ACTED_ON: [&str; 7] = [
    "rootNamespace",
    "outboundTrafficPolicy",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "extensionProviders",
    "defaultProviders",
];

/// The `defaultConfig` (ProxyConfig) fields Spar acts on; the others are reported as
/// ignored, as `defaultConfig.<field>`.
const DEFAULT_CONFIG_ACTED_ON: [&str; 1] = ["tracing"];

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
    let parsed = MeshConfig::from_yaml(&mesh_text).map_err(anyhow::Error::msg)?;
    from_raw(&parsed.raw, base)
}

/// The MeshConfig ConfigMap layer (`spar serve --kubernetes`).
#[derive(Clone, Debug)]
pub struct ConfigMapLayer {
    /// The ConfigMap's name (`istio`), in Spar's namespace.
    pub name: String,
    /// `--outbound-traffic-policy`, which wins over the ConfigMap as over the file.
    pub registry_only: Option<bool>,
}

/// The mesh for MeshConfig YAML `text` over `base`, then `registry_only` (the flag) over
/// that. Returns the top-level fields that were ignored.
pub fn over(text: &str, base: &MeshConfig, registry_only: Option<bool>) -> anyhow::Result<(MeshConfig, Vec<String>)> {
    let parsed = MeshConfig::from_yaml(text).map_err(anyhow::Error::msg)?;
    let (mut mesh, ignored) = from_raw(&parsed.raw, base.clone())?;
    if let Some(r) = registry_only {
        mesh.registry_only = r;
    }
    Ok((mesh, ignored))
}

impl ConfigMapLayer {
    /// The mesh for what the ConfigMap holds; `None` (logged, naming `configmap`) when
    /// its MeshConfig is invalid.
    fn resolve(&self, text: &MeshText, base: &MeshConfig, configmap: &str) -> Option<MeshConfig> {
        let MeshText::Present(text) = text else { return Some(base.clone()) };
        match over(text, base, self.registry_only) {
            Ok((mesh, ignored)) => {
                if !ignored.is_empty() {
                    warn!(%configmap, fields = ?ignored, "MeshConfig fields Spar does not act on: traffic does not do what they say");
                }
                Some(mesh)
            }
            Err(e) => {
                warn!(%configmap, reason = %format!("{e:#}"), "invalid MeshConfig ignored; the mesh stays as it was");
                None
            }
        }
    }
}

/// Watches the MeshConfig ConfigMap `namespace/<layer.name>` and returns the mesh to build
/// snapshots with, once the ConfigMap has been listed: `base` (defaults, `--mesh-config`
/// and flags) with the ConfigMap over it, kept current. Every change of the mesh also
/// sends a unit on `changes`, so that a snapshot is built with it.
pub async fn watch_configmap(
    client: kube::Client,
    namespace: &str,
    layer: ConfigMapLayer,
    base: MeshConfig,
    changes: mpsc::Sender<()>,
) -> watch::Receiver<MeshConfig> {
    let configmap = format!("{namespace}/{}", layer.name);
    let (text_tx, mut text) = watch::channel(MeshText::Listing);
    tokio::spawn(
        spar_kube::meshconfig::run(client, namespace.to_string(), layer.name.clone(), text_tx)
            .instrument(info_span!("mesh-config")),
    );
    info!(%configmap, "waiting for the MeshConfig ConfigMap to be listed");
    let _ = text.wait_for(|t| *t != MeshText::Listing).await;
    let first = layer.resolve(&text.borrow_and_update(), &base, &configmap).unwrap_or_else(|| base.clone());
    let (mesh_tx, mesh_rx) = watch::channel(first);
    tokio::spawn(follow(text, layer, base, configmap, mesh_tx, changes).instrument(info_span!("mesh-config")));
    mesh_rx
}

/// Applies every change of the ConfigMap's text to `mesh`, until nobody reads `mesh`.
async fn follow(
    mut text: watch::Receiver<MeshText>,
    layer: ConfigMapLayer,
    base: MeshConfig,
    configmap: String,
    mesh: watch::Sender<MeshConfig>,
    changes: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            r = text.changed() => if r.is_err() { return },
            () = mesh.closed() => return,
        }
        let Some(next) = layer.resolve(&text.borrow_and_update(), &base, &configmap) else { continue };
        let changed = mesh.send_if_modified(|m| {
            let changed = *m != next;
            *m = next;
            changed
        });
        if changed {
            info!(%configmap, "MeshConfig changed; the next snapshot uses it");
            // A full channel already holds a pending change, which reads the mesh anew.
            let _ = changes.try_send(());
        }
    }
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
        // Explicit, so that a ConfigMap can turn a file's REGISTRY_ONLY back.
        Some("ALLOW_ANY") => mesh.registry_only = false,
        None => {}
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
    read_tracing(raw, &mut mesh)?;
    read_ext_authz(raw, &mut mesh);
    let mut ignored: Vec<String> = raw
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|k| !ACTED_ON.contains(&k.as_str()) && k.as_str() != "defaultConfig")
        .cloned()
        .collect();
    ignored.extend(
        raw.get("defaultConfig")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| !DEFAULT_CONFIG_ACTED_ON.contains(&k.as_str()))
            .map(|k| format!("defaultConfig.{k}")),
    );
    ignored.sort();
    Ok((mesh, ignored))
}

/// `extensionProviders[]` for tracing, `defaultProviders.tracing` and
/// `defaultConfig.tracing.sampling`.
fn read_tracing(raw: &Value, mesh: &mut MeshConfig) -> anyhow::Result<()> {
    for p in raw.get("extensionProviders").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
        let provider = match p.get("opentelemetry") {
            Some(otel) => TracingProvider::OpenTelemetry(
                otel_provider(otel).map_err(|e| anyhow::anyhow!("extensionProviders {name:?}: opentelemetry.{e}"))?,
            ),
            None => {
                let kind = p.as_object().into_iter().flat_map(|m| m.keys()).find(|k| *k != "name");
                TracingProvider::Unsupported(kind.cloned().unwrap_or_else(|| "unknown".into()))
            }
        };
        mesh.tracing_providers.insert(name.to_string(), provider);
    }
    if let Some(list) = raw.pointer("/defaultProviders/tracing") {
        mesh.default_tracing_providers =
            serde_json::from_value(list.clone()).map_err(|e| anyhow::anyhow!("defaultProviders.tracing: {e}"))?;
    }
    if let Some(v) = raw.pointer("/defaultConfig/tracing/sampling") {
        let s = v.as_f64().ok_or_else(|| anyhow::anyhow!("defaultConfig.tracing.sampling: {v} is not a number"))?;
        // As istiod: 0 means unset, and anything above 100 falls back to the default.
        mesh.trace_sampling = if s <= 0.0 || s > 100.0 || !s.is_finite() { 1.0 } else { s };
    }
    Ok(())
}

/// `extensionProviders[]` of kind `envoyExtAuthzHttp`/`envoyExtAuthzGrpc`. A provider
/// that cannot be used is kept with the reason, not refused with the whole MeshConfig:
/// the CUSTOM policies naming it then deny what they match (as istiod does).
fn read_ext_authz(raw: &Value, mesh: &mut MeshConfig) {
    mesh.authz_providers.clear();
    for p in raw.get("extensionProviders").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
        let (http, grpc) = (p.get("envoyExtAuthzHttp"), p.get("envoyExtAuthzGrpc"));
        if http.is_none() && grpc.is_none() {
            continue;
        }
        let provider = if mesh.authz_providers.contains_key(name) {
            Err(format!("extensionProviders {name:?}: the name is used twice"))
        } else {
            ext_authz_provider(name, http, grpc).map_err(|e| format!("extensionProviders {name:?}: {e}"))
        };
        mesh.authz_providers.insert(name.to_string(), provider);
    }
}

/// One ext_authz provider, checked as istiod checks it.
fn ext_authz_provider(name: &str, http: Option<&Value>, grpc: Option<&Value>) -> Result<ExtAuthzProvider, String> {
    let dns_label = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !dns_label {
        return Err("the name must be a DNS label (lower-case letters, digits and '-', at most 63)".into());
    }
    let (field, v) = match (http, grpc) {
        (Some(h), None) => ("envoyExtAuthzHttp", h),
        (None, Some(g)) => ("envoyExtAuthzGrpc", g),
        _ => return Err("sets both envoyExtAuthzHttp and envoyExtAuthzGrpc".into()),
    };
    let err = |e: String| format!("{field}.{e}");
    let service = v.get("service").and_then(Value::as_str).filter(|s| !s.is_empty());
    let service = service.ok_or_else(|| err("service: required".into()))?.to_string();
    let port = v.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
    let port = port.ok_or_else(|| err(format!("port: {} is not 1-65535", v.get("port").unwrap_or(&Value::Null))))?;
    let timeout = match v.get("timeout") {
        None => EXT_AUTHZ_DEFAULT_TIMEOUT,
        Some(t) => duration(t).map_err(|e| err(format!("timeout: {e}")))?,
    };
    let status_on_error = match v.get("statusOnError").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| err(format!("statusOnError: {s:?} is not an HTTP status")))?,
        ),
    };
    let body = v.get("includeRequestBodyInCheck").map(|b| RequestBody {
        max_request_bytes: b
            .get("maxRequestBytes")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        allow_partial_message: b.get("allowPartialMessage").and_then(Value::as_bool).unwrap_or(false),
        pack_as_bytes: b.get("packAsBytes").and_then(Value::as_bool).unwrap_or(false),
    });
    let api = if http.is_some() {
        let path_prefix = v.get("pathPrefix").and_then(Value::as_str).unwrap_or_default().to_string();
        if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
            return Err(err(format!("pathPrefix: {path_prefix:?} must start with /")));
        }
        let list = |key: &str| -> Result<Vec<String>, String> {
            let names: Vec<String> = match v.get(key) {
                None => Vec::new(),
                Some(l) => serde_json::from_value(l.clone()).map_err(|e| err(format!("{key}: {e}")))?,
            };
            match names.iter().find(|n| n.is_empty() || *n == "*") {
                Some(bad) => Err(err(format!("{key}: {bad:?} is not a header name or pattern"))),
                None => Ok(names),
            }
        };
        let mut include_request_headers = list("includeRequestHeadersInCheck")?;
        if include_request_headers.is_empty() {
            include_request_headers = list("includeHeadersInCheck")?;
        }
        let additional: BTreeMap<String, String> = match v.get("includeAdditionalHeadersInCheck") {
            None => BTreeMap::new(),
            Some(m) => {
                serde_json::from_value(m.clone()).map_err(|e| err(format!("includeAdditionalHeadersInCheck: {e}")))?
            }
        };
        ExtAuthzApi::Http(HttpSettings {
            path_prefix,
            include_request_headers,
            additional_headers: additional.into_iter().collect(),
            headers_to_upstream_on_allow: list("headersToUpstreamOnAllow")?,
            headers_to_downstream_on_deny: list("headersToDownstreamOnDeny")?,
            headers_to_downstream_on_allow: list("headersToDownstreamOnAllow")?,
        })
    } else {
        ExtAuthzApi::Grpc
    };
    Ok(ExtAuthzProvider {
        service,
        port,
        timeout,
        fail_open: v.get("failOpen").and_then(Value::as_bool).unwrap_or(false),
        status_on_error,
        body,
        api,
    })
}

/// `opentelemetry: {service, port, maxTagLength, http, grpc, resourceDetectors}`; an
/// error names the field.
fn otel_provider(v: &Value) -> Result<OtelProvider, String> {
    let service = v.get("service").and_then(Value::as_str).filter(|s| !s.is_empty());
    let service = service.ok_or("service: required")?.to_string();
    let port = v.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
    let port = port.ok_or("port: required, 1-65535")?;
    let max_tag_length = match v.get("maxTagLength") {
        None => 0,
        Some(m) => m.as_u64().and_then(|m| u32::try_from(m).ok()).ok_or("maxTagLength: not a number")?,
    };
    let http = match v.get("http") {
        None => None,
        Some(h) => Some(OtelHttp {
            path: h.get("path").and_then(Value::as_str).unwrap_or_default().to_string(),
            timeout: h.get("timeout").map(|t| duration(t).map_err(|e| format!("http.timeout: {e}"))).transpose()?,
            headers: headers(h.get("headers")).map_err(|e| format!("http.headers: {e}"))?,
        }),
    };
    let grpc = v.get("grpc");
    let grpc_timeout = grpc
        .and_then(|g| g.get("timeout"))
        .map(|t| duration(t).map_err(|e| format!("grpc.timeout: {e}")))
        .transpose()?;
    let grpc_initial_metadata =
        headers(grpc.and_then(|g| g.get("initialMetadata"))).map_err(|e| format!("grpc.initialMetadata: {e}"))?;
    let detectors = v.get("resourceDetectors");
    Ok(OtelProvider {
        service,
        port,
        max_tag_length,
        http,
        grpc_timeout,
        grpc_initial_metadata,
        environment_detector: detectors.and_then(|d| d.get("environment")).is_some(),
        dynatrace_detector: detectors.and_then(|d| d.get("dynatrace")).is_some(),
    })
}

/// `[{name, value | envName}]`; an `envName` is read from Spar's own environment, as
/// istiod reads its own (unset: empty).
fn headers(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for h in v.and_then(Value::as_array).into_iter().flatten() {
        let name = h.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or("name: required")?;
        let value = match (h.get("value").and_then(Value::as_str), h.get("envName").and_then(Value::as_str)) {
            (Some(v), _) => v.to_string(),
            (None, Some(env)) => std::env::var(env).unwrap_or_default(),
            (None, None) => String::new(),
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// A MeshConfig duration (a protobuf Duration written as Go's `time.ParseDuration` reads
/// it, as istiod does: `5s`, `1m30s`, `250ms`); negative durations are refused.
fn duration(v: &Value) -> Result<std::time::Duration, String> {
    let s = v.as_str().ok_or_else(|| format!("{v} is not a duration string"))?;
    spar_api::validate::go_duration(s)
        .and_then(|ns| u64::try_from(ns).ok())
        .map(std::time::Duration::from_nanos)
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 5s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_does() {
        let d = |s: &str| duration(&serde_json::json!(s));
        assert_eq!(d("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(d("0.5s"), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(d("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert!(d("-1s").is_err());
        assert!(d("5").is_err());
        assert!(duration(&serde_json::json!(5)).is_err());
    }

    #[test]
    fn reads_access_logs_and_policy() {
        let raw = serde_json::json!({
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
            "accessLogFile": "/dev/stdout",
            "extensionProviders": [
                {"name": "audit", "envoyFileAccessLog": {"path": "/var/log/audit.log", "logFormat": {"labels": {"host": "%REQ(:AUTHORITY)%"}}}},
                {"name": "otel", "opentelemetry": {"service": "x", "port": 4317}},
            ],
            "defaultConfig": {"concurrency": 2},
        });
        let (m, ignored) = from_raw(&raw, MeshConfig::default()).expect("valid");
        assert!(m.registry_only);
        assert_eq!(m.access_log.as_ref().map(|a| a.path.as_str()), Some("/dev/stdout"));
        let audit = &m.access_log_providers["audit"];
        assert!(audit.json);
        assert_eq!(audit.json_fields["host"], "%REQ(:AUTHORITY)%");
        assert!(!m.access_log_providers.contains_key("otel"));
        assert_eq!(ignored, ["defaultConfig.concurrency"]);
    }

    #[test]
    fn reads_tracing_providers_and_defaults() {
        let raw = serde_json::json!({
            "extensionProviders": [
                {"name": "otel", "opentelemetry": {"service": "otel-collector.observability.svc.cluster.local",
                    "port": 4317, "maxTagLength": 99, "resourceDetectors": {"environment": {}},
                    "grpc": {"timeout": "2s", "initialMetadata": [{"name": "x-token", "value": "t"}]}}},
                {"name": "otel-http", "opentelemetry": {"service": "observability/otel", "port": 4318,
                    "http": {"path": "/v1/traces", "timeout": "500ms", "headers": [{"name": "x-h", "value": "v"}]}}},
                {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
            ],
            "defaultProviders": {"tracing": ["otel"]},
            "defaultConfig": {"tracing": {"sampling": 25.5}},
        });
        let (m, ignored) = from_raw(&raw, MeshConfig::default()).expect("valid");
        assert!(ignored.is_empty(), "{ignored:?}");
        let TracingProvider::OpenTelemetry(otel) = &m.tracing_providers["otel"] else { panic!("otel") };
        assert_eq!(
            (otel.service.as_str(), otel.port, otel.max_tag_length),
            ("otel-collector.observability.svc.cluster.local", 4317, 99)
        );
        assert_eq!(otel.grpc_timeout, Some(std::time::Duration::from_secs(2)));
        assert_eq!(otel.grpc_initial_metadata, [("x-token".to_string(), "t".to_string())]);
        assert!(otel.environment_detector && !otel.dynatrace_detector && otel.http.is_none());
        let TracingProvider::OpenTelemetry(h) = &m.tracing_providers["otel-http"] else { panic!("otel-http") };
        let http = h.http.as_ref().expect("http");
        assert_eq!((http.path.as_str(), http.timeout), ("/v1/traces", Some(std::time::Duration::from_millis(500))));
        assert_eq!(m.tracing_providers["zipkin"], TracingProvider::Unsupported("zipkin".into()));
        assert_eq!(m.default_tracing_providers, ["otel"]);
        assert!((m.trace_sampling - 25.5).abs() < f64::EPSILON);
        assert!((MeshConfig::default().trace_sampling - 1.0).abs() < f64::EPSILON, "Istio's default, 1%");

        // As istiod: above 100 falls back to 1%.
        let (m, _) =
            from_raw(&serde_json::json!({"defaultConfig": {"tracing": {"sampling": 150}}}), MeshConfig::default())
                .expect("valid");
        assert!((m.trace_sampling - 1.0).abs() < f64::EPSILON);
        for bad in [
            serde_json::json!({"extensionProviders": [{"name": "o", "opentelemetry": {"port": 4317}}]}),
            serde_json::json!({"extensionProviders": [{"name": "o", "opentelemetry": {"service": "s", "port": 70000}}]}),
            serde_json::json!({"extensionProviders": [{"name": "o", "opentelemetry": {"service": "s", "port": 1, "http": {"timeout": "soon"}}}]}),
            serde_json::json!({"defaultConfig": {"tracing": {"sampling": "all"}}}),
        ] {
            assert!(from_raw(&bad, MeshConfig::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let raw = serde_json::json!({"outboundTrafficPolicy": {"mode": "SOMETIMES"}});
        assert!(from_raw(&raw, MeshConfig::default()).is_err());
    }

    #[test]
    fn the_configmap_overrides_the_file_and_the_flag_overrides_both() {
        let file = MeshConfig { registry_only: true, root_namespace: "mesh".into(), ..Default::default() };
        let (m, _) = over("outboundTrafficPolicy: {mode: ALLOW_ANY}\n", &file, None).expect("valid");
        assert!(!m.registry_only, "the ConfigMap's field wins");
        assert_eq!(m.root_namespace, "mesh", "fields it does not name stay the file's");
        let (m, _) = over("outboundTrafficPolicy: {mode: ALLOW_ANY}\n", &file, Some(true)).expect("valid");
        assert!(m.registry_only, "--outbound-traffic-policy wins");
        let (m, _) = over("", &file, None).expect("an empty MeshConfig is valid");
        assert_eq!(m, file);
        assert!(over("- a list\n", &file, None).is_err());
    }

    /// The ConfigMap watched through the fake API server: a change reaches the mesh that
    /// snapshots are built with, an invalid one changes nothing, a deletion goes back to
    /// the base.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn configmap_changes_reach_the_next_snapshot() {
        use std::time::Duration;
        let server = spar_kube_fake::FakeApiServer::start().await.expect("fake API server");
        let kubeconfig = std::env::temp_dir().join(format!("spar-mesh-kubeconfig-{}", std::process::id()));
        std::fs::write(&kubeconfig, server.kubeconfig()).expect("kubeconfig");
        let client = spar_kube::client(Some(&kubeconfig)).await.expect("client");
        let configmap = |mesh: &str| {
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio", "namespace": "istio-system"}, "data": {"mesh": mesh}})
        };
        server.apply(configmap("accessLogFile: /dev/stdout\n")).expect("ConfigMap");
        let base = MeshConfig { domain: "example.org".into(), ..Default::default() };
        let (changes_tx, mut changes) = mpsc::channel(1);
        let layer = ConfigMapLayer { name: "istio".into(), registry_only: None };
        let mesh = tokio::time::timeout(
            Duration::from_secs(20),
            watch_configmap(client, "istio-system", layer, base.clone(), changes_tx),
        )
        .await
        .expect("listed");
        let snapshot = |version| {
            let mesh = mesh.borrow().clone();
            spar_model::Snapshot::build(&spar_model::Store::new(), &mesh, version)
        };
        let first = snapshot(1);
        assert_eq!(
            first.mesh.access_log.as_ref().map(|a| a.path.as_str()),
            Some("/dev/stdout"),
            "read before the first snapshot"
        );
        assert!(!first.mesh.registry_only);
        assert_eq!(first.mesh.domain, "example.org", "over the base");

        let next_change = async |changes: &mut mpsc::Receiver<()>| {
            tokio::time::timeout(Duration::from_secs(20), changes.recv()).await.expect("a change").expect("open");
        };
        server.apply(configmap("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")).expect("update");
        next_change(&mut changes).await;
        let next = snapshot(2);
        assert!(next.mesh.registry_only, "the next snapshot is REGISTRY_ONLY");
        assert_eq!(next.mesh.access_log, None, "a layer over the base, not over the previous ConfigMap");

        // Invalid: no change, the mesh stays.
        server.apply(configmap("outboundTrafficPolicy:\n  mode: SOMETIMES\n")).expect("invalid");
        server.apply(configmap("outboundTrafficPolicy: [\n")).expect("not YAML");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(changes.try_recv().is_err(), "an invalid MeshConfig is no change");
        assert!(snapshot(3).mesh.registry_only);

        // Gone: back to the base.
        server.delete("v1", "ConfigMap", "istio-system", "istio");
        next_change(&mut changes).await;
        assert_eq!(snapshot(4).mesh, base);
    }
}
