//! Istio's MeshConfig: the mesh-wide settings, with Istio's defaults, read the same way
//! by `spar serve` (which layers files and a ConfigMap over them) and `spar analyze`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::ext_authz::ExtAuthzProvider;

/// Mesh-wide settings (Istio's MeshConfig, the parts Spar reads).
#[derive(Clone, Debug, PartialEq)]
pub struct MeshConfig {
    /// DNS domain, `cluster.local`.
    pub domain: String,
    /// Root namespace for mesh-wide config, `istio-system`.
    pub root_namespace: String,
    /// `outboundTrafficPolicy.mode`: whether traffic to hosts outside the registry is
    /// let through (`ALLOW_ANY`, Istio's default) or refused (`REGISTRY_ONLY`).
    pub registry_only: bool,
    /// `accessLogFile` (with `accessLogFormat` and `accessLogEncoding`): every proxy
    /// writes an access log there. Off when unset.
    pub access_log: Option<FileAccessLog>,
    /// `extensionProviders[].envoyFileAccessLog`, by provider name, for Telemetry
    /// `accessLogging`. The built-in `envoy` provider (`/dev/stdout`) is always there.
    pub access_log_providers: BTreeMap<String, FileAccessLog>,
    /// `extensionProviders[]` by name, for Telemetry `tracing` (OpenTelemetry ones; the
    /// other kinds are kept to say why they are not served).
    pub tracing_providers: BTreeMap<String, TracingProvider>,
    /// `defaultProviders.tracing`: the provider of Telemetry `tracing` that names none
    /// (the first one only, as in istiod).
    pub default_tracing_providers: Vec<String>,
    /// `defaultConfig.tracing.sampling`: percent of requests traced when no Telemetry
    /// sets `randomSamplingPercentage`; Istio's default is 1.
    pub trace_sampling: f64,
    /// `extensionProviders[]` of kind `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`, by
    /// name, for AuthorizationPolicy `action: CUSTOM`; a provider that cannot be used
    /// is kept with the reason (the policies naming it deny what they match).
    pub authz_providers: BTreeMap<String, Result<ExtAuthzProvider, String>>,
    /// `ingressService`: the Service of the default ingress gateway (`istio-ingressgateway`).
    pub ingress_service: String,
    /// `ingressControllerMode` as written (`STRICT` by default; `OFF` turns the default
    /// ingress off). Any other value is kept as written, as `spar analyze` did.
    pub ingress_controller_mode: String,
    /// The MeshConfig document as [`MeshConfig::from_yaml`] read it (`defaultConfig`,
    /// `extensionProviders`, ...), for readers of fields that have no typed field here
    /// (`spar analyze`). An empty object when the mesh was not read from one document:
    /// `spar serve` layers several and reads only the typed fields.
    pub raw: Value,
}

/// A file access log as MeshConfig describes one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAccessLog {
    /// Path (`/dev/stdout` for the container log).
    pub path: String,
    /// Text format (Envoy command operators); Istio's default format when unset.
    pub format: Option<String>,
    /// JSON lines instead of text; with `json_fields` as the fields when given.
    pub json: bool,
    /// JSON field name to Envoy command operator (`logFormat.labels`).
    pub json_fields: BTreeMap<String, String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            registry_only: false,
            access_log: None,
            access_log_providers: BTreeMap::new(),
            tracing_providers: BTreeMap::new(),
            default_tracing_providers: Vec::new(),
            trace_sampling: 1.0,
            authz_providers: BTreeMap::new(),
            ingress_service: "istio-ingressgateway".into(),
            ingress_controller_mode: "STRICT".into(),
            raw: Value::Object(serde_json::Map::new()),
        }
    }
}

/// Why a MeshConfig document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    /// The text is not YAML.
    #[error(transparent)]
    Yaml(#[from] serde_yaml_ng::Error),
    /// The YAML has no JSON form (a non-string key, ...).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The document is a list or a scalar.
    #[error("a MeshConfig must be a YAML mapping")]
    NotAMapping,
}

impl MeshConfig {
    /// Reads a MeshConfig YAML document (the `mesh` key of Istio's `istio` ConfigMap)
    /// over Istio's defaults: `rootNamespace`, `ingressService` and
    /// `ingressControllerMode`, and the whole document as [`MeshConfig::raw`]. An empty
    /// document is the defaults. The other typed fields stay at their defaults; `spar
    /// serve` reads them from `raw`, with its layers and checks.
    pub fn from_yaml(text: &str) -> Result<Self, MeshConfigError> {
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
        let raw = match serde_json::to_value(yaml)? {
            Value::Null => Value::Object(serde_json::Map::new()),
            raw @ Value::Object(_) => raw,
            _ => return Err(MeshConfigError::NotAMapping),
        };
        let d = Self::default();
        let s = |k: &str, def: String| raw.get(k).and_then(Value::as_str).map_or(def, str::to_string);
        Ok(Self {
            root_namespace: s("rootNamespace", d.root_namespace),
            ingress_service: s("ingressService", d.ingress_service),
            ingress_controller_mode: s("ingressControllerMode", d.ingress_controller_mode),
            raw,
            ..Self::default()
        })
    }

    /// `defaultConfig` (the mesh's ProxyConfig) in [`MeshConfig::raw`], or null.
    pub fn default_config(&self) -> &Value {
        self.raw.get("defaultConfig").unwrap_or(&Value::Null)
    }

    /// `defaultConfig.proxyMetadata.<key>` in [`MeshConfig::raw`].
    pub fn proxy_metadata(&self, key: &str) -> Option<&str> {
        self.default_config().get("proxyMetadata").and_then(|m| m.get(key)).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_yaml_keeps_istio_defaults_for_what_it_does_not_set() {
        let m = MeshConfig::from_yaml("").expect("an empty document is the defaults");
        assert_eq!(m, MeshConfig::default());
        let m = MeshConfig::from_yaml("rootNamespace: mesh\ningressControllerMode: \"OFF\"\nfoo: 1\n").expect("valid");
        assert_eq!(m.root_namespace, "mesh");
        assert_eq!(m.ingress_controller_mode, "OFF");
        assert_eq!(m.ingress_service, "istio-ingressgateway");
        assert_eq!(m.domain, "cluster.local");
        assert_eq!(m.raw["foo"], 1);
    }

    #[test]
    fn from_yaml_refuses_what_is_not_a_mapping() {
        assert!(matches!(MeshConfig::from_yaml("- a"), Err(MeshConfigError::NotAMapping)));
        assert!(matches!(MeshConfig::from_yaml("a: [b"), Err(MeshConfigError::Yaml(_))));
    }

    #[test]
    fn proxy_metadata_is_read_from_default_config() {
        let m = MeshConfig::from_yaml("defaultConfig:\n  proxyMetadata:\n    A: \"true\"\n").expect("valid");
        assert_eq!(m.proxy_metadata("A"), Some("true"));
        assert_eq!(m.proxy_metadata("B"), None);
    }
}

/// A MeshConfig `extensionProviders[]` entry, as tracing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracingProvider {
    /// `opentelemetry`: OTLP to a collector, over gRPC or HTTP.
    OpenTelemetry(OtelProvider),
    /// Any other kind (`zipkin`, `datadog`, `envoyFileAccessLog`, ...), by its field
    /// name: Spar configures no tracer for it.
    Unsupported(String),
}

/// MeshConfig `extensionProviders[].opentelemetry`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtelProvider {
    /// `service`: the collector's host (`otel-collector.observability.svc.cluster.local`),
    /// or `<namespace>/<host>`.
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `maxTagLength`: the longest path tag; 0 for Envoy's default (256).
    pub max_tag_length: u32,
    /// `http`: OTLP over HTTP instead of gRPC.
    pub http: Option<OtelHttp>,
    /// `grpc.timeout`.
    pub grpc_timeout: Option<Duration>,
    /// `grpc.initialMetadata`, name and value (an `envName` read from Spar's environment).
    pub grpc_initial_metadata: Vec<(String, String)>,
    /// `resourceDetectors.environment`: resource attributes from `OTEL_RESOURCE_ATTRIBUTES`.
    pub environment_detector: bool,
    /// `resourceDetectors.dynatrace`.
    pub dynatrace_detector: bool,
}

/// MeshConfig `extensionProviders[].opentelemetry.http`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtelHttp {
    /// `path` (`/v1/traces`).
    pub path: String,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `headers`, name and value (an `envName` read from Spar's environment).
    pub headers: Vec<(String, String)>,
}
