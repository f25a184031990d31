//! MeshConfig `extensionProviders[]` that AuthorizationPolicy `action: CUSTOM` names:
//! an external authorization service (Envoy's stock `ext_authz` filter), over HTTP
//! (`envoyExtAuthzHttp`) or gRPC (`envoyExtAuthzGrpc`).
//!
//! A provider that cannot be used is kept with the reason, never dropped: the CUSTOM
//! policies naming it must deny what they match (as istiod does), and the reason is
//! what the operator reads.

use std::time::Duration;

/// istiod's timeout for a check when the provider sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One `envoyExtAuthzHttp` or `envoyExtAuthzGrpc` provider, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtAuthzProvider {
    /// `service`: the authorizer's host, or `<namespace>/<host>`.
    pub service: String,
    /// `port`, 1-65535.
    pub port: u16,
    /// `timeout`; [`DEFAULT_TIMEOUT`] when unset.
    pub timeout: Duration,
    /// `failOpen`: let the request through when the authorizer cannot be reached.
    pub fail_open: bool,
    /// `statusOnError`: the status sent when the authorizer cannot be reached.
    pub status_on_error: Option<u16>,
    /// `includeRequestBodyInCheck`.
    pub body: Option<RequestBody>,
    /// HTTP or gRPC, with what only that one has.
    pub api: ExtAuthzApi,
}

/// The protocol of the check, with its own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtAuthzApi {
    /// `envoyExtAuthzHttp`.
    Http(HttpSettings),
    /// `envoyExtAuthzGrpc`.
    Grpc,
}

/// What only `envoyExtAuthzHttp` has. Header names are Istio's patterns: `x*` a prefix,
/// `*x` a suffix, anything else exact; all case-insensitive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `pathPrefix`, starting with `/` when set.
    pub path_prefix: String,
    /// `includeRequestHeadersInCheck` (or the deprecated `includeHeadersInCheck`).
    pub include_request_headers: Vec<String>,
    /// `includeAdditionalHeadersInCheck`, sorted by name.
    pub additional_headers: Vec<(String, String)>,
    /// `headersToUpstreamOnAllow`.
    pub headers_to_upstream_on_allow: Vec<String>,
    /// `headersToDownstreamOnDeny`.
    pub headers_to_downstream_on_deny: Vec<String>,
    /// `headersToDownstreamOnAllow`.
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `includeRequestBodyInCheck`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestBody {
    /// `maxRequestBytes`.
    pub max_request_bytes: u32,
    /// `allowPartialMessage`.
    pub allow_partial_message: bool,
    /// `packAsBytes`.
    pub pack_as_bytes: bool,
}
