//! The HTTP surface: authentication, routing, CRUD and list. Watches live in `watch`,
//! discovery and TokenReview in `discovery`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::discovery::{group_list, resource_list, token_review, version};
use crate::patch::{json_patch, merge_patch};
use crate::request::{JSON, Params, Req, Target, content_type, in_scope, json_response, selector, served};
use crate::store::{ApiError, Store, meta_str};
use crate::watch::watch;
use crate::{FakeApiServer, Inner, ResourceType};

const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
const APPLY_PATCH: &str = "application/apply-patch+yaml";
const JSON_PATCH: &str = "application/json-patch+json";

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.to_status())
    }
}

async fn handle(State(srv): State<Arc<Inner>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let target = match uri.query().filter(|q| !q.is_empty()) {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_string(),
    };
    srv.lock().requests.push(format!("{method} {target}"));
    tracing::debug!(%method, %target, "request");
    serve(&srv, &method, &uri, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

fn serve(
    srv: &Arc<Inner>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(FakeApiServer::ADMIN_TOKEN) {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let params = Query::try_from_uri(uri).map(|q| q.0).map_err(|e| ApiError::bad_request(e.body_text()))?;
    let req = Req { params, headers, body };
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let store = || srv.lock();
    let ok = |body: Value| Ok(json_response(200, &body));
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => ok(version()),
        ("GET", ["api"]) => ok(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": srv.addr.to_string()}]})),
        ("GET", ["apis"]) => ok(group_list(&store())),
        ("GET", ["api", version]) => resource_list(&store(), "", version).map(|l| json_response(200, &l)),
        ("GET", ["apis", group, version]) => resource_list(&store(), group, version).map(|l| json_response(200, &l)),
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => token_review(srv, &req),
        (_, ["api", version, rest @ ..]) => resource(srv, method, "", version, rest, &req),
        (_, ["apis", group, version, rest @ ..]) => resource(srv, method, group, version, rest, &req),
        _ => Err(ApiError::no_route()),
    }
}

/// Serves `rest`, the path after `/api/{version}` or `/apis/{group}/{version}`.
fn resource(
    srv: &Arc<Inner>,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    req: &Req<'_>,
) -> Result<Response, ApiError> {
    let (ns, rest) = match rest {
        ["namespaces", _, "status" | "finalize"] => (None, rest),
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(sub.to_string())),
        _ => return Err(ApiError::no_route()),
    };
    let reg = srv.lock().by_plural(group, version, plural).cloned().ok_or_else(ApiError::no_route)?;
    let rt = reg.rt;
    let scope_ok = if rt.namespaced { ns.is_some() || name.is_none() } else { ns.is_none() };
    let sub_ok = sub.as_deref().is_none_or(|s| s == "status" && rt.status_subresource);
    if !scope_ok || !sub_ok {
        return Err(ApiError::no_route());
    }
    let t = Target { rt, reg_id: reg.id, ns, sub };
    match (method.as_str(), name) {
        ("GET", None) if matches!(req.params.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(srv, t, &req.params)
        }
        ("GET", None) => list(srv, &t, &req.params),
        ("POST", None) if t.rt.namespaced && t.ns.is_none() => Err(method_not_allowed()),
        ("POST", None) => create(srv, &t, req.json(&[JSON])?),
        ("GET", Some(name)) => {
            let store = srv.lock();
            let obj = store.get(&t.rt, &t.ns(), name);
            let obj = obj.ok_or_else(|| ApiError::not_found(&t.rt, name))?;
            Ok(json_response(200, &served(obj, &t.rt)))
        }
        ("PUT", Some(name)) => {
            let new = req.json(&[JSON])?;
            let mut store = srv.lock();
            let stored = update(&mut store, &t, name, new)?;
            drop(store);
            srv.notify();
            Ok(json_response(200, &served(&stored, &t.rt)))
        }
        ("PATCH", Some(name)) => patch(srv, &t, name, req),
        ("DELETE", Some(name)) if t.sub.is_none() => delete(srv, &t, name, req.body),
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
}

/// Checks a submitted object against the resource type and the URL namespace.
fn check_object(rt: &ResourceType, obj: &Value, ns: &str) -> Result<(), ApiError> {
    if !obj.is_object() || obj.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("the body must be an object with object metadata"));
    }
    for (field, expected) in [("apiVersion", rt.api_version()), ("kind", rt.kind.clone())] {
        if let Some(given) = obj.get(field).and_then(Value::as_str)
            && given != expected
        {
            return Err(ApiError::bad_request(format!(
                "the {field} in the data ({given}) does not match the expected {field} ({expected})"
            )));
        }
    }
    let given_ns = meta_str(obj, "namespace");
    if rt.namespaced && !given_ns.is_empty() && given_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// Replaces or removes `obj.status`.
fn set_status(obj: &mut Value, status: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match status {
            Some(s) => o.insert("status".into(), s),
            None => o.remove("status"),
        };
    }
}

fn create(srv: &Inner, t: &Target, mut obj: Value) -> Result<Response, ApiError> {
    let ns = t.ns();
    check_object(&t.rt, &obj, &ns)?;
    let mut store = srv.lock();
    let mut name = meta_str(&obj, "name").to_string();
    if name.is_empty() {
        let prefix = meta_str(&obj, "generateName").to_string();
        if prefix.is_empty() {
            return Err(ApiError::invalid("metadata.name: Required value: name or generateName is required"));
        }
        name = (0..)
            .map(|i| store.generate_name(&prefix, i))
            .find(|n| store.get(&t.rt, &ns, n).is_none())
            .unwrap_or_default();
    }
    if store.get(&t.rt, &ns, &name).is_some() {
        let message = format!("{} \"{name}\" already exists", t.rt.qualified());
        return Err(ApiError::new(409, "AlreadyExists", message));
    }
    if t.rt.status_subresource {
        set_status(&mut obj, None);
    }
    let stored = store.commit(&t.rt, &ns, &name, obj);
    drop(store);
    srv.notify();
    Ok(json_response(201, &served(&stored, &t.rt)))
}

/// Writes `new` over the existing object `name`: checks name, namespace and the
/// `metadata.resourceVersion` precondition, and keeps `.status` or everything but `.status`
/// apart for status-subresource types. The caller notifies watchers.
fn update(store: &mut Store, t: &Target, name: &str, new: Value) -> Result<Value, ApiError> {
    let ns = t.ns();
    let cur = store.get(&t.rt, &ns, name).cloned();
    let cur = cur.ok_or_else(|| ApiError::not_found(&t.rt, name))?;
    check_object(&t.rt, &new, &ns)?;
    let given_name = meta_str(&new, "name");
    if !given_name.is_empty() && given_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given_name}) does not match the name on the URL ({name})"
        )));
    }
    let rv = meta_str(&new, "resourceVersion");
    if !rv.is_empty() && rv != meta_str(&cur, "resourceVersion") {
        return Err(ApiError::conflict(&t.rt, name));
    }
    let obj = if t.sub.is_some() {
        let mut obj = cur;
        set_status(&mut obj, new.get("status").cloned());
        obj
    } else if t.rt.status_subresource {
        let mut obj = new;
        set_status(&mut obj, cur.get("status").cloned());
        obj
    } else {
        new
    };
    Ok(store.commit(&t.rt, &ns, name, obj))
}

fn patch(srv: &Inner, t: &Target, name: &str, req: &Req<'_>) -> Result<Response, ApiError> {
    let kinds = [MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH, JSON_PATCH];
    let patch = req.json(&kinds)?;
    let kind = content_type(req.headers);
    if kind == APPLY_PATCH && req.params.get("fieldManager").is_none_or(String::is_empty) {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: \
             is required for apply patch",
        ));
    }
    let mut store = srv.lock();
    let Some(mut doc) = store.get(&t.rt, &t.ns(), name).cloned() else {
        if kind == APPLY_PATCH && t.sub.is_none() {
            // Server-side apply creates missing objects.
            drop(store);
            let mut obj = json!({"metadata": {"name": name}});
            merge_patch(&mut obj, &patch);
            if meta_str(&obj, "name") != name {
                return Err(ApiError::bad_request("the name in the body does not match the URL"));
            }
            return create(srv, t, obj);
        }
        return Err(ApiError::not_found(&t.rt, name));
    };
    // As the API server converts the stored object to the request's version before
    // patching (all versions share one schema here, so only apiVersion changes).
    doc = served(&doc, &t.rt);
    if kind == JSON_PATCH {
        json_patch(&mut doc, &patch).map_err(ApiError::invalid)?;
    } else {
        merge_patch(&mut doc, &patch);
    }
    let stored = update(&mut store, t, name, doc)?;
    drop(store);
    srv.notify();
    Ok(json_response(200, &served(&stored, &t.rt)))
}

fn delete(srv: &Inner, t: &Target, name: &str, body: &Bytes) -> Result<Response, ApiError> {
    let options: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let mut store = srv.lock();
    let ns = t.ns();
    let cur = store.get(&t.rt, &ns, name);
    let cur = cur.ok_or_else(|| ApiError::not_found(&t.rt, name))?;
    for field in ["resourceVersion", "uid"] {
        if let Some(want) = options["preconditions"][field].as_str()
            && want != meta_str(cur, field)
        {
            return Err(ApiError::conflict(&t.rt, name));
        }
    }
    let removed = store.remove(&t.rt, &ns, name).unwrap_or_default();
    drop(store);
    srv.notify();
    Ok(json_response(200, &served(&removed, &t.rt)))
}

fn list(srv: &Inner, t: &Target, params: &Params) -> Result<Response, ApiError> {
    let selector = selector(params)?;
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l.parse::<usize>().map_err(|_| ApiError::bad_request("invalid limit"))?,
        None => 0,
    };
    let store = srv.lock();
    let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            if rv < store.expired_below {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list \
                     result. You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some(key))
        }
        None => (store.rv, None),
    };
    let mut items = Vec::new();
    let (mut remaining, mut last_key) = (0u64, None);
    let objects = store.objects.get(&t.rt.gr()).into_iter().flatten();
    for (key, obj) in objects {
        if after.as_ref().is_some_and(|after| key <= after) || !in_scope(t.ns.as_deref(), &selector, obj) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            remaining += 1;
        } else {
            items.push(served(obj, &t.rt));
            last_key = Some(key);
        }
    }
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), list_rv.to_string().into());
    if let (true, Some((ns, name))) = (remaining > 0, last_key) {
        meta.insert("continue".into(), encode_continue(list_rv, ns, name).into());
        meta.insert("remainingItemCount".into(), remaining.into());
    }
    let kind = format!("{}List", t.rt.kind);
    let list = json!({"kind": kind, "apiVersion": t.rt.api_version(), "metadata": meta, "items": items});
    Ok(json_response(200, &list))
}

/// An opaque continue token: the list's resource version and the last key served, hex-encoded.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let raw = format!("{rv}/{ns}/{name}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let raw = String::from_utf8(bytes).ok()?;
    let mut parts = raw.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
}
