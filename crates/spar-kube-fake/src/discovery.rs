//! Discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) and TokenReview.

use axum::response::Response;
use serde_json::{Value, json};

use crate::Inner;
use crate::request::{JSON, Req, json_response};
use crate::store::{ApiError, Store};

pub(crate) fn version() -> Value {
    json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-spar-kube-fake", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

const VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];

/// The registered group/versions, in registration order.
fn group_versions(store: &Store) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for gv in store.types.iter().map(|r| (r.rt.group.clone(), r.rt.version.clone())) {
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

pub(crate) fn group_list(store: &Store) -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for (group, version) in group_versions(store).into_iter().filter(|(g, _)| !g.is_empty()) {
        let entry = json!({"groupVersion": format!("{group}/{version}"), "version": version});
        match groups.iter_mut().find(|g| g["name"] == group.as_str()) {
            Some(g) => g["versions"].as_array_mut().into_iter().for_each(|vs| vs.push(entry.clone())),
            None => groups.push(json!({"name": group, "versions": [entry], "preferredVersion": entry})),
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn resource_list(store: &Store, group: &str, version: &str) -> Result<Value, ApiError> {
    let gv = (group.to_string(), version.to_string());
    if !group_versions(store).contains(&gv) {
        return Err(ApiError::no_route());
    }
    let mut resources = Vec::new();
    for rt in store.types.iter().map(|r| &r.rt) {
        if rt.group != group || rt.version != version {
            continue;
        }
        let (singular, namespaced) = (rt.kind.to_lowercase(), rt.namespaced);
        resources.push(json!({"name": rt.plural, "singularName": singular, "namespaced": namespaced,
                              "kind": rt.kind, "verbs": VERBS}));
        if rt.status_subresource {
            resources.push(json!({"name": format!("{}/status", rt.plural), "singularName": "",
                                  "namespaced": namespaced, "kind": rt.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered from `add_token` registrations.
pub(crate) fn token_review(srv: &Inner, req: &Req<'_>) -> Result<Response, ApiError> {
    let review = req.json(&[JSON])?;
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let token = spec["token"].as_str().unwrap_or("");
    let wanted: Vec<&str> =
        spec["audiences"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let info = srv.lock().tokens.get(token).cloned();
    let status = match info {
        None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
        Some(info) => {
            let audiences: Vec<String> = if wanted.is_empty() {
                info.audiences.clone()
            } else {
                info.audiences.iter().filter(|a| wanted.contains(&a.as_str())).cloned().collect()
            };
            if !wanted.is_empty() && audiences.is_empty() {
                let error =
                    format!("token audiences {:?} is invalid for the target audiences {wanted:?}", info.audiences);
                json!({"authenticated": false, "user": {}, "error": error})
            } else {
                let mut groups = Vec::new();
                let sa = info.username.strip_prefix("system:serviceaccount:");
                if let Some((ns, _)) = sa.and_then(|rest| rest.split_once(':')) {
                    groups.push("system:serviceaccounts".to_string());
                    groups.push(format!("system:serviceaccounts:{ns}"));
                }
                groups.push("system:authenticated".to_string());
                let mut user = json!({"username": info.username, "groups": groups});
                if let Some((name, uid)) = &info.pod {
                    user["extra"] = json!({"authentication.kubernetes.io/pod-name": [name],
                                           "authentication.kubernetes.io/pod-uid": [uid]});
                }
                json!({"authenticated": true, "user": user, "audiences": audiences})
            }
        }
    };
    let out = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                     "metadata": {"creationTimestamp": null}, "spec": spec, "status": status});
    Ok(json_response(201, &out))
}
