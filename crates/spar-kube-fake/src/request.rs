//! What the handlers share: a request as they read it, its target resource, the query
//! parameters, label and field selection, and JSON responses.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::ResourceType;
use crate::select::Selector;
use crate::store::{ApiError, meta_str};

pub(crate) const JSON: &str = "application/json";

pub(crate) type Params = HashMap<String, String>;

/// What the handlers read from a request besides its path.
pub(crate) struct Req<'a> {
    pub params: Params,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

impl Req<'_> {
    /// The body as JSON, after checking its content type is one of `allowed`.
    pub fn json(&self, allowed: &[&str]) -> Result<Value, ApiError> {
        parse_json(self.headers, self.body, allowed)
    }
}

pub(crate) fn json_response(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

/// A request for a registered resource, resolved from the URL.
pub(crate) struct Target {
    pub rt: ResourceType,
    pub reg_id: u64,
    /// From the URL; `None` for cluster-scoped kinds and all-namespace collections.
    pub ns: Option<String>,
    /// `Some("status")` for the status subresource.
    pub sub: Option<String>,
}

impl Target {
    pub(crate) fn ns(&self) -> String {
        self.ns.clone().unwrap_or_default()
    }
}

/// A copy of a stored object as served through `rt` (its `apiVersion` and `kind`).
pub(crate) fn served(obj: &Value, rt: &ResourceType) -> Value {
    let mut obj = obj.clone();
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), rt.api_version().into());
        o.insert("kind".into(), rt.kind.clone().into());
    }
    obj
}

pub(crate) fn selector(params: &Params) -> Result<Selector, ApiError> {
    let get = |k: &str| params.get(k).map(String::as_str);
    Selector::parse(get("labelSelector"), get("fieldSelector")).map_err(ApiError::bad_request)
}

/// Whether `obj` is in the URL's namespace (if any) and matches the selector.
pub(crate) fn in_scope(ns: Option<&str>, selector: &Selector, obj: &Value) -> bool {
    ns.is_none_or(|ns| meta_str(obj, "namespace") == ns) && selector.matches(obj)
}

/// The request body as JSON, after checking its content type is one of `allowed`.
pub(crate) fn parse_json(headers: &HeaderMap, body: &Bytes, allowed: &[&str]) -> Result<Value, ApiError> {
    let mime = content_type(headers);
    if !allowed.contains(&mime) {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                allowed.join(", ")
            ),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON ({mime}): {e}")))
}

/// The media type of the request body, without parameters.
pub(crate) fn content_type(headers: &HeaderMap) -> &str {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    value.unwrap_or("").split(';').next().unwrap_or("").trim()
}
