//! Access logs, as Istio configures them (MeshConfig `accessLogFile`, Telemetry
//! `accessLogging` with file providers), with Envoy's stock file access logger; and
//! tracing (Telemetry `tracing` with MeshConfig `opentelemetry` providers), with Envoy's
//! stock OpenTelemetry tracer sending OTLP to the collector's outbound cluster.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::accesslog::v3 as xds_accesslog;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::trace::v3 as xds_trace;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as xds_file;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xds_hcm;
use envoy_types::pb::envoy::extensions::request_id::uuid::v3 as xds_uuid;
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3 as xds_detectors;
use envoy_types::pb::envoy::r#type::tracing::v3 as xds_tracing;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, Struct, UInt32Value, Value, value::Kind};
use envoy_types::util::pack_any;
use spar_model::{FileAccessLog, Protocol, Proxy, ProxyKind, Service, TracingSpec};

use super::Scope;

/// Istio's default text format (`EnvoyTextLogFormat`).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
\"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% \
%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON fields (`EnvoyJSONLogFormatIstio`).
const ISTIO_JSON_FIELDS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
];

fn envoy_access_log(f: &FileAccessLog) -> xds_accesslog::AccessLog {
    use xds_core::substitution_format_string::Format;
    let format = if f.json {
        let fields: HashMap<String, Value> = if f.json_fields.is_empty() {
            ISTIO_JSON_FIELDS.iter().map(|(k, v)| ((*k).to_string(), string_value(v))).collect()
        } else {
            f.json_fields.iter().map(|(k, v)| (k.clone(), string_value(v))).collect()
        };
        Format::JsonFormat(Struct { fields })
    } else {
        let mut text = f.format.clone().unwrap_or_else(|| ISTIO_TEXT_FORMAT.to_string());
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Format::TextFormatSource(xds_core::DataSource {
            specifier: Some(xds_core::data_source::Specifier::InlineString(text)),
            ..Default::default()
        })
    };
    let file = xds_file::FileAccessLog {
        path: f.path.clone(),
        access_log_format: Some(xds_file::file_access_log::AccessLogFormat::LogFormat(
            xds_core::SubstitutionFormatString { format: Some(format), ..Default::default() },
        )),
    };
    xds_accesslog::AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(xds_accesslog::access_log::ConfigType::TypedConfig(pack_any(file))),
        ..Default::default()
    }
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_string())) }
}

/// The access loggers for every HTTP connection manager and TCP proxy of this proxy.
pub(super) fn access_logs(scope: &Scope<'_>) -> Vec<xds_accesslog::AccessLog> {
    scope.snap.access_logs(&scope.proxy.namespace, &scope.proxy.labels).iter().map(envoy_access_log).collect()
}

/// A proxy's tracing, ready for its connection managers: what the client side
/// (outbound listeners, gateways) and the server side (inbound) get, the collector
/// clusters that must speak HTTP/2, and why tracing was left out where it was.
#[derive(Debug, Default)]
pub struct HcmTracing {
    client: Option<(xds_hcm::http_connection_manager::Tracing, Option<xds_hcm::RequestIdExtension>)>,
    server: Option<(xds_hcm::http_connection_manager::Tracing, Option<xds_hcm::RequestIdExtension>)>,
    /// Outbound clusters that carry OTLP over gRPC and so need HTTP/2 to the collector.
    pub grpc_clusters: BTreeSet<String>,
    /// One line each, naming the resource at fault.
    pub warnings: Vec<String>,
}

/// Which connection managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Outbound listeners and gateways (Telemetry `match.mode: CLIENT`).
    Client,
    /// Inbound listeners (`SERVER`).
    Server,
}

impl HcmTracing {
    /// Sets the tracing of `side` on `hcm` (nothing when that side is not traced).
    pub fn apply(&self, side: Side, hcm: &mut xds_hcm::HttpConnectionManager) {
        let t = match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        if let Some((tracing, request_id)) = t {
            hcm.tracing = Some(tracing.clone());
            hcm.request_id_extension.clone_from(request_id);
        }
    }

    /// Whether `side` is traced.
    pub fn traces(&self, side: Side) -> bool {
        match side {
            Side::Client => self.client.is_some(),
            Side::Server => self.server.is_some(),
        }
    }
}

/// The service name spans carry, as Istio's default `tracingServiceName`
/// (`APP_LABEL_AND_NAMESPACE`): the `app` label, else the workload's name (istio-agent's
/// `WORKLOAD_NAME`; here the canonical service name the injector derives from it), else
/// `istio-proxy`, as istio-agent's `serviceClusterOrDefault`; then `.<namespace>`.
pub fn service_name(proxy: &Proxy) -> String {
    let app = proxy
        .labels
        .get("app")
        .or_else(|| proxy.labels.get(CANONICAL_NAME))
        .filter(|a| !a.is_empty())
        .map_or("istio-proxy", String::as_str);
    format!("{app}.{}", proxy.namespace)
}

const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// Istio's default OTLP/HTTP timeout when the provider sets none (Envoy needs one).
const DEFAULT_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The tracing of `scope`'s proxy, from the snapshot's Telemetries and MeshConfig.
/// `imports` says whether the proxy sees a service (its outbound cluster exists).
pub(super) fn tracing(scope: &Scope<'_>, imports: impl Fn(&Service) -> bool) -> HcmTracing {
    let t = scope.snap.tracing(&scope.proxy.namespace, &scope.proxy.labels);
    let mut out = HcmTracing { warnings: t.warnings, ..Default::default() };
    let router = scope.proxy.kind == ProxyKind::Router;
    // Gateways have no inbound side.
    let server = if router { &None } else { &t.server };
    for (side, spec) in [(Side::Client, &t.client), (Side::Server, server)] {
        let Some(spec) = spec else { continue };
        match collector(scope, spec, &imports) {
            Ok((host, cluster, protocol)) => {
                let grpc = spec.provider.http.is_none();
                if grpc && !protocol.is_http2() {
                    if protocol == Protocol::Unknown {
                        // Istio sniffs an unnamed port and Envoy's gRPC client speaks
                        // HTTP/2; Spar has no sniffing, so the cluster is made HTTP/2.
                        out.grpc_clusters.insert(cluster.clone());
                    } else {
                        let w = format!(
                            "MeshConfig extensionProviders {:?}: port {} of {host} is {protocol}, but OTLP over \
                             gRPC needs HTTP/2 (name the port grpc-* or set appProtocol: grpc); tracing is left out",
                            spec.provider_name, spec.provider.port
                        );
                        if !out.warnings.contains(&w) {
                            out.warnings.push(w);
                        }
                        continue;
                    }
                }
                let hcm = hcm_tracing(scope, spec, &host, &cluster, router);
                let request_id = (!spec.use_request_id_for_trace_sampling).then(|| xds_hcm::RequestIdExtension {
                    typed_config: Some(pack_any(xds_uuid::UuidRequestIdConfig {
                        use_request_id_for_trace_sampling: Some(BoolValue { value: false }),
                        ..Default::default()
                    })),
                });
                match side {
                    Side::Client => out.client = Some((hcm, request_id)),
                    Side::Server => out.server = Some((hcm, request_id)),
                }
            }
            Err(w) => {
                if !out.warnings.contains(&w) {
                    out.warnings.push(w);
                }
            }
        }
    }
    out
}

/// The collector's host, outbound cluster and port protocol, if the proxy sees it.
fn collector(
    scope: &Scope<'_>,
    spec: &TracingSpec,
    imports: &impl Fn(&Service) -> bool,
) -> Result<(String, String, Protocol), String> {
    let p = &spec.provider;
    let who = format!("MeshConfig extensionProviders {:?}", spec.provider_name);
    let svc = scope
        .snap
        .provider_service(&p.service)
        .ok_or_else(|| format!("{who}: service {} is not in the registry; tracing is left out", p.service))?;
    if !imports(svc) {
        return Err(format!(
            "{who}: service {} is not visible to this proxy (Sidecar egress or exportTo); tracing is left out",
            p.service
        ));
    }
    let port = svc
        .port(p.port)
        .ok_or_else(|| format!("{who}: service {} has no port {}; tracing is left out", p.service, p.port))?;
    Ok((svc.hostname.clone(), super::names::outbound_cluster_name(p.port, "", &svc.hostname), port.protocol))
}

fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn hcm_tracing(
    scope: &Scope<'_>,
    spec: &TracingSpec,
    host: &str,
    cluster: &str,
    router: bool,
) -> xds_hcm::http_connection_manager::Tracing {
    let p = &spec.provider;
    let mut otel = xds_trace::OpenTelemetryConfig { service_name: service_name(scope.proxy), ..Default::default() };
    match &p.http {
        Some(http) => {
            let path = if http.path.is_empty() { "/v1/traces" } else { http.path.as_str() };
            let sep = if path.starts_with('/') { "" } else { "/" };
            otel.http_service = Some(xds_core::HttpService {
                http_uri: Some(xds_core::HttpUri {
                    uri: format!("http://{host}{sep}{path}"),
                    timeout: Some(duration(http.timeout.unwrap_or(DEFAULT_HTTP_TIMEOUT))),
                    http_upstream_type: Some(xds_core::http_uri::HttpUpstreamType::Cluster(cluster.to_string())),
                }),
                request_headers_to_add: http
                    .headers
                    .iter()
                    .map(|(k, v)| xds_core::HeaderValueOption {
                        header: Some(xds_core::HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
                        append_action: xds_core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
        None => {
            otel.grpc_service = Some(xds_core::GrpcService {
                target_specifier: Some(xds_core::grpc_service::TargetSpecifier::EnvoyGrpc(
                    xds_core::grpc_service::EnvoyGrpc {
                        cluster_name: cluster.to_string(),
                        authority: host.to_string(),
                        ..Default::default()
                    },
                )),
                timeout: p.grpc_timeout.map(duration),
                initial_metadata: p
                    .grpc_initial_metadata
                    .iter()
                    .map(|(k, v)| xds_core::HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() })
                    .collect(),
                ..Default::default()
            });
        }
    }
    if p.environment_detector {
        otel.resource_detectors.push(xds_core::TypedExtensionConfig {
            name: "envoy.tracers.opentelemetry.resource_detectors.environment".into(),
            typed_config: Some(pack_any(xds_detectors::EnvironmentResourceDetectorConfig {})),
        });
    }
    if p.dynatrace_detector {
        otel.resource_detectors.push(xds_core::TypedExtensionConfig {
            name: "envoy.tracers.opentelemetry.resource_detectors.dynatrace".into(),
            typed_config: Some(pack_any(xds_detectors::DynatraceResourceDetectorConfig {})),
        });
    }
    let percent = |value| Some(Percent { value });
    xds_hcm::http_connection_manager::Tracing {
        client_sampling: percent(100.0),
        random_sampling: percent(spec.sampling),
        overall_sampling: percent(100.0),
        max_path_tag_length: (p.max_tag_length > 0).then_some(UInt32Value { value: p.max_tag_length }),
        custom_tags: custom_tags(scope.proxy, spec),
        provider: Some(xds_trace::tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(xds_trace::tracing::http::ConfigType::TypedConfig(pack_any(otel))),
        }),
        // istiod spawns an upstream span on gateways only (PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY).
        spawn_upstream_span: router.then_some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// Istio's service tags (unless `enableIstioTags: false`) and the Telemetry's
/// `customTags`, sorted by tag name as istiod sorts them.
fn custom_tags(proxy: &Proxy, spec: &TracingSpec) -> Vec<xds_tracing::CustomTag> {
    use xds_tracing::custom_tag::{Environment, Header, Literal, Type};
    let literal = |tag: &str, value: &str| xds_tracing::CustomTag {
        tag: tag.to_string(),
        r#type: Some(Type::Literal(Literal { value: value.to_string() })),
    };
    let mut tags = Vec::new();
    if spec.istio_tags {
        let label = |k: &str, default: &'static str| {
            proxy.labels.get(k).filter(|v| !v.is_empty()).map_or(default, String::as_str).to_string()
        };
        tags.push(literal("istio.canonical_revision", &label(CANONICAL_REVISION, "latest")));
        tags.push(literal("istio.canonical_service", &label(CANONICAL_NAME, "unknown")));
        tags.push(literal("istio.mesh_id", "unknown"));
        tags.push(literal("istio.namespace", &proxy.namespace));
        tags.push(literal("istio.cluster_id", "unknown"));
    }
    for (name, t) in &spec.custom_tags {
        let r#type = if let Some(l) = &t.literal {
            Type::Literal(Literal { value: l.value.clone() })
        } else if let Some(e) = &t.environment {
            Type::Environment(Environment {
                name: e.name.clone(),
                default_value: e.default_value.clone().unwrap_or_default(),
            })
        } else if let Some(h) = &t.header {
            Type::RequestHeader(Header {
                name: h.name.clone(),
                default_value: h.default_value.clone().unwrap_or_default(),
            })
        } else if let Some(f) = &t.formatter {
            Type::Value(f.value.clone())
        } else {
            continue;
        };
        tags.push(xds_tracing::CustomTag { tag: name.clone(), r#type: Some(r#type) });
    }
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    tags
}
