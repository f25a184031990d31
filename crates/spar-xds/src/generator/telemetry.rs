//! Access logs, as Istio configures them (MeshConfig `accessLogFile`, Telemetry
//! `accessLogging` with file providers), with Envoy's stock file access logger.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::accesslog::v3 as xds_accesslog;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as xds_file;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::util::pack_any;
use spar_model::FileAccessLog;

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
