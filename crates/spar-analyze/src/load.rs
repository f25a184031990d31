//! Files to resources: every document of every kind (Spar's typed kinds and the
//! Kubernetes kinds analyzers read, such as Pods and Deployments), `List`s expanded,
//! and documents that cannot be read turned into messages.

use serde_json::Value;
use spar_api::document::DocOutcome;
use spar_api::{Origin, parse_document, split_documents, validate};
use spar_model::MeshConfig;

use crate::catalog::message_type;
use crate::context::Resource;
use crate::fieldmap::{self, FieldLines};
use crate::message::{Message, Subject};
use crate::messages_gen::code;

/// How documents are read.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Namespace for namespaced documents that do not name one (istioctl uses the
    /// current namespace, `default`; Istio's analyzer tests use none, so `""`).
    pub default_namespace: String,
    /// Cluster name, for multi-cluster analysis; empty otherwise.
    pub cluster: String,
}

/// Resources read so far and the documents that could not be read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Resources, in input order.
    pub resources: Vec<Resource>,
    /// One message per unreadable document (`IST0106`).
    pub messages: Vec<Message>,
}

/// Kinds without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "GatewayClass",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "APIService",
];

/// Namespaces istioctl leaves out of analysis (Istio's injection-ignored namespaces).
pub const IGNORED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease", "local-path-storage"];

impl Loaded {
    /// Reads every document of `text`, from `file` (`-` for standard input).
    pub fn add_text(&mut self, file: &str, text: &str, opts: &LoadOptions) {
        for doc in split_documents(text) {
            let origin = Origin::new(file, doc.line);
            let yaml: serde_yaml_ng::Value = match serde_yaml_ng::from_str(doc.text) {
                Ok(v) => v,
                Err(_) => {
                    // parse_document reports the same failure with the line in file terms.
                    let (at, reason) = match parse_document(&origin, doc.text) {
                        Err(DocOutcome::Error(e)) => (e.origin, e.reason),
                        _ => (origin.clone(), "the document is not valid YAML".to_string()),
                    };
                    self.unreadable(&at, None, &reason);
                    continue;
                }
            };
            if yaml.is_null() {
                continue;
            }
            let json = match serde_json::to_value(&yaml) {
                Ok(v) => v,
                Err(e) => {
                    self.unreadable(&origin, None, &e.to_string());
                    continue;
                }
            };
            let fields = fieldmap::index(doc.text, doc.line);
            let is_list = json.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List"))
                && json.get("items").is_some_and(Value::is_array);
            if is_list {
                for (i, item) in json["items"].as_array().into_iter().flatten().enumerate() {
                    let prefix = format!("items[{i}]");
                    let at = Origin::new(origin.file.clone(), fields.get(&prefix).copied().unwrap_or(doc.line));
                    let sub: FieldLines = fields
                        .iter()
                        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.strip_prefix('.')?.to_string(), *v)))
                        .collect();
                    let text = serde_yaml_ng::to_string(item).unwrap_or_default();
                    self.add_value(item.clone(), &text, at, sub, opts);
                }
            } else {
                self.add_value(json, doc.text, origin, fields, opts);
            }
        }
    }

    fn unreadable(&mut self, origin: &Origin, subject: Option<Subject>, reason: &str) {
        let kind = message_type(code::SCHEMA_VALIDATION_ERROR).expect("IST0106 is in Istio's table");
        self.messages.push(Message {
            kind,
            text: kind.render(&[reason.to_string()]),
            subject,
            file: origin.file.to_string(),
            line: origin.line,
            analyzer: "loader",
        });
    }

    fn add_value(&mut self, raw: Value, text: &str, origin: Origin, fields: FieldLines, opts: &LoadOptions) {
        let s = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(api_version), Some(kind)) = (s("apiVersion"), s("kind")) else {
            self.unreadable(&origin, None, "not a Kubernetes object: apiVersion and kind are required strings");
            return;
        };
        let meta = raw.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
            String::new()
        } else {
            meta.and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map_or_else(|| opts.default_namespace.clone(), str::to_string)
        };
        let scope = if kind == "Namespace" { name.as_str() } else { namespace.as_str() };
        if IGNORED_NAMESPACES.contains(&scope) {
            return;
        }
        if name.is_empty() {
            let subject = Subject { kind: kind.clone(), namespace, name: String::new() };
            self.unreadable(&origin, Some(subject), "metadata.name is required");
            return;
        }
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        let mut object = None;
        let mut invalid = Vec::new();
        if spar_api::Kind::lookup(&group, &kind).is_some() {
            match parse_document(&origin, text) {
                Ok(Some(obj)) => {
                    if let Err(errs) = validate(&obj) {
                        invalid = errs;
                    }
                    object = Some(obj);
                }
                Ok(None) | Err(DocOutcome::Ignored(_)) => {}
                Err(DocOutcome::Error(e)) => invalid.push(e.reason),
            }
        }
        let map = |k: &str| Resource::string_map(meta.and_then(|m| m.get(k)));
        self.resources.push(Resource {
            group,
            kind,
            api_version,
            namespace,
            name,
            labels: map("labels"),
            annotations: map("annotations"),
            raw,
            origin,
            fields,
            object,
            invalid,
            cluster: opts.cluster.clone(),
        });
    }

    /// Adds what istioctl assumes is installed when analyzing files only: the default
    /// ingress gateway Service and a Pod for it in the root namespace (unless
    /// `ingressControllerMode: OFF`), so that Gateways selecting `istio: ingressgateway`
    /// are not reported as selecting nothing.
    pub fn add_default_resources(&mut self, mesh: &MeshConfig) {
        if mesh.ingress_controller_mode == "OFF" {
            return;
        }
        let text = DEFAULT_INGRESS
            .replace("{namespace}", &mesh.root_namespace)
            .replace("{ingressService}", &mesh.ingress_service);
        let mut defaults = Loaded::default();
        defaults.add_text(DEFAULT_RESOURCES_FILE, &text, &LoadOptions::default());
        for r in defaults.resources {
            let exists = self
                .resources
                .iter()
                .any(|x| x.group == r.group && x.kind == r.kind && x.namespace == r.namespace && x.name == r.name);
            if !exists {
                self.resources.push(r);
            }
        }
    }
}

pub use crate::context::DEFAULT_RESOURCES_FILE;

/// istioctl's default ingress resources (pkg/config/analysis/local/defaults.go).
const DEFAULT_INGRESS: &str = "\
apiVersion: v1
kind: Pod
metadata:
  labels:
    istio: ingressgateway
  name: {ingressService}-dummypod
  namespace: {namespace}
spec:
  containers:
    - name: istio-proxy
---
apiVersion: v1
kind: Service
metadata:
  name: {ingressService}
  namespace: {namespace}
spec:
  ports:
  - name: http2
    port: 80
    protocol: TCP
    targetPort: 80
  - name: https
    port: 443
    protocol: TCP
    targetPort: 443
  - name: tcp
    port: 31400
    protocol: TCP
    targetPort: 31400
  - name: tls
    port: 15443
    protocol: TCP
    targetPort: 15443
  selector:
    istio: ingressgateway
";
