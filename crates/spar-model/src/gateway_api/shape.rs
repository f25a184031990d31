//! One reading of the shapes Gateway API's route kinds share.
//!
//! The generated types (`spar_api::gateway_api`) repeat every nested shape once per
//! place it appears: a header modifier is one type in an HTTPRoute rule, another in its
//! backendRefs, and two more in a GRPCRoute. The translator reads each route through
//! the shapes below instead (the typed spec, written back as JSON and read into these),
//! so that each rule of istiod's conversion is written once.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A typed spec read into one of the shapes below; `None` when it does not fit (a bug in
/// a shape, never a user's mistake: the typed spec was already read from the user's
/// document).
pub(super) fn reshape<T: serde::Serialize, U: DeserializeOwned>(typed: &T) -> Option<U> {
    serde_json::to_value(typed).ok().and_then(|v| serde_json::from_value(v).ok())
}

/// Any route kind: its parents, hostnames and rules; `M` is the kind's match (none for
/// TCPRoute and TLSRoute).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Route<M> {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default = "Vec::new")]
    pub rules: Vec<Rule<M>>,
}

/// A `parentRefs` entry (written back as it was, in route status).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ParentRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A rule of any route kind.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Rule<M> {
    pub name: Option<String>,
    #[serde(default = "Vec::new")]
    pub matches: Vec<M>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<Timeouts>,
    pub retry: Option<Retry>,
}

/// TCPRoute and TLSRoute rules have no matches.
#[derive(Clone, Debug, Deserialize)]
pub(super) enum NoMatch {}

/// An HTTPRoute match.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HttpMatch {
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

/// An HTTPRoute path match.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct PathMatch {
    pub r#type: Option<String>,
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct ValueMatch {
    pub name: String,
    pub value: String,
    pub r#type: Option<String>,
}

/// A GRPCRoute match.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct GrpcMatch {
    pub method: Option<GrpcMethod>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// A GRPCRoute method match.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct GrpcMethod {
    pub service: Option<String>,
    pub method: Option<String>,
    pub r#type: Option<String>,
}

/// A filter of a rule or of a backendRef.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Filter {
    pub r#type: String,
    pub request_header_modifier: Option<HeaderFilter>,
    pub response_header_modifier: Option<HeaderFilter>,
    pub request_redirect: Option<Redirect>,
    pub url_rewrite: Option<Rewrite>,
    pub request_mirror: Option<Mirror>,
    pub cors: Option<Cors>,
}

/// A header modifier.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct HeaderFilter {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Header {
    pub name: String,
    pub value: String,
}

/// `RequestRedirect`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<i32>,
    pub status_code: Option<i64>,
}

/// `URLRewrite`.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// A redirect's or rewrite's path.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PathModifier {
    pub r#type: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

/// `RequestMirror`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Mirror {
    pub backend_ref: BackendRef,
    pub percent: Option<i32>,
    pub fraction: Option<Fraction>,
}

/// A mirror's fraction.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Fraction {
    pub numerator: i32,
    pub denominator: Option<i32>,
}

/// `CORS`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Cors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    pub max_age: Option<i64>,
}

/// A backendRef (also a mirror's).
#[derive(Clone, Debug, Deserialize)]
pub(super) struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
    pub weight: Option<i32>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// `timeouts`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Timeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

/// `retry`.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Retry {
    pub attempts: Option<i64>,
    pub backoff: Option<String>,
    #[serde(default)]
    pub codes: Vec<i64>,
}

/// A Gateway's `tls.frontend`: client certificate validation, by default and per port.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Frontend {
    pub default: FrontendTls,
    #[serde(default)]
    pub per_port: Vec<FrontendPort>,
}

/// `tls.frontend.perPort` entry.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct FrontendPort {
    pub port: i32,
    pub tls: FrontendTls,
}

/// Client certificate validation.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct FrontendTls {
    pub validation: Option<FrontendValidation>,
}

/// `validation`: CA certificates and the mode.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FrontendValidation {
    #[serde(default)]
    pub ca_certificate_refs: Vec<ObjectRef>,
    pub mode: Option<String>,
}

/// A reference to an object by group, kind, name and namespace.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct ObjectRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}
