//! Injection of a YAML stream (Istio's `istioctl kube-inject`): every pod template of
//! every document, injected.

use anyhow::Context;
use serde_json::{Value, json};

use super::*;

/// The injected xDS address: `explicit`, else the default of the chosen port.
pub fn xds_address(explicit: Option<&str>, plaintext: bool) -> String {
    let default = if plaintext { DEFAULT_PLAINTEXT_XDS_ADDRESS } else { DEFAULT_XDS_ADDRESS };
    explicit.unwrap_or(default).to_string()
}

/// What [`inject_yaml`] produced.
#[derive(Debug, Default)]
pub struct InjectedYaml {
    /// The documents, injected or as they were, `---`-separated.
    pub yaml: String,
    /// The same documents as JSON.
    pub objects: Vec<Value>,
    /// Skipped workloads and unsupported annotations, `file:line: ...`.
    pub notes: Vec<String>,
    /// Documents that could not be handled, `file:line: ...`.
    pub errors: Vec<String>,
}

/// Injects every workload of a multi-document YAML stream read from `file`. Documents
/// that are not workloads, and workloads that are skipped, are copied as they were
/// (comments included).
pub fn inject_yaml(file: &str, text: &str, cfg: &InjectConfig) -> InjectedYaml {
    let mut out = InjectedYaml::default();
    let mut docs = Vec::new();
    for doc in spar_api::split_documents(text) {
        let origin = spar_api::Origin::new(file, doc.line);
        let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                let at = e
                    .location()
                    .map_or(origin.clone(), |l| origin.at_relative_line(u32::try_from(l.line()).unwrap_or(1)));
                let msg = e.to_string();
                out.errors.push(format!("{at}: {}", msg.split(" at line ").next().unwrap_or(&msg)));
                continue;
            }
        };
        let mut obj: Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(format!("{origin}: {e}"));
                continue;
            }
        };
        let mut ctx = DocContext { origin: origin.to_string(), cfg, notes: &mut out.notes };
        match inject_object(&mut obj, &mut ctx) {
            Ok(true) => match serde_yaml_ng::to_string(&obj) {
                Ok(y) => docs.push(y),
                Err(e) => out.errors.push(format!("{origin}: writing YAML: {e}")),
            },
            Ok(false) => {
                let t = doc.text.trim_start_matches('\n');
                docs.push(if t.ends_with('\n') { t.to_string() } else { format!("{t}\n") });
            }
            Err(e) => out.errors.push(format!("{origin}: {e:#}")),
        }
        out.objects.push(obj);
    }
    out.yaml = docs.join("---\n");
    out
}

struct DocContext<'a> {
    origin: String,
    cfg: &'a InjectConfig,
    notes: &'a mut Vec<String>,
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects one object in place; whether it changed.
fn inject_object(obj: &mut Value, ctx: &mut DocContext<'_>) -> anyhow::Result<bool> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
    let what = match &ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    if kind == "List" || kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array) {
        let mut changed = false;
        if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                changed |= inject_object(item, ctx).with_context(|| format!("{what} item {i}"))?;
            }
        }
        return Ok(changed);
    }
    // The pod to inject, and where its template lives in the workload (None: a Pod).
    let (pod, path, workload) = if kind == "Pod" {
        (obj.clone(), None, None)
    } else if let Some(path) = template_path(&kind) {
        let template = path
            .iter()
            .try_fold(&*obj, |v, k| v.get(*k))
            .filter(|t| t.is_object())
            .with_context(|| format!("{what}: no {}", path.join(".")))?;
        // The template as a pod, in the workload's namespace (for the skip rules).
        let mut pod = json!({
            "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "spec": template.get("spec").cloned().unwrap_or(Value::Null),
        });
        if let Some(ns) = &ns {
            object_at(&mut pod, &["metadata"]).insert("namespace".into(), json!(ns));
        }
        (pod, Some(path), Some(name.as_str()))
    } else {
        return Ok(false);
    };
    match inject_workload(&pod, workload, ctx.cfg).with_context(|| what.clone())? {
        Injection::Skipped(reason) => {
            ctx.notes.push(format!("{}: {what}: not injected: {reason}", ctx.origin));
            Ok(false)
        }
        Injection::Injected(mut injected) => {
            for w in unsupported_annotations(&pod) {
                ctx.notes.push(format!("{}: {what}: {w}", ctx.origin));
            }
            match path {
                None => *obj = injected,
                Some(path) => {
                    if ns.is_some()
                        && let Some(m) = injected.get_mut("metadata").and_then(Value::as_object_mut)
                    {
                        m.remove("namespace");
                    }
                    let template = object_at(obj, path);
                    if let Value::Object(fields) = injected {
                        template.extend(fields);
                    }
                }
            }
            Ok(true)
        }
    }
}
