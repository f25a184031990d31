//! What analyzers read: resources by kind and by key, and the mesh configuration. The
//! context is built once (from files today, from a live cluster later) and is read-only.

use std::collections::BTreeMap;

use serde_json::Value;
use spar_api::istio::authorization_policy::AuthorizationPolicySpec;
use spar_api::istio::destination_rule::DestinationRuleSpec;
use spar_api::istio::gateway::GatewaySpec;
use spar_api::istio::request_authentication::RequestAuthenticationSpec;
use spar_api::istio::service_entry::ServiceEntrySpec;
use spar_api::istio::sidecar::SidecarSpec;
use spar_api::istio::telemetry::TelemetrySpec;
use spar_api::istio::virtual_service::VirtualServiceSpec;
use spar_api::{Object, Origin};
use spar_model::MeshConfig;

use crate::fieldmap::FieldLines;
use crate::message::Subject;

/// The file name given to the default ingress resources.
pub const DEFAULT_RESOURCES_FILE: &str = "internal-ingress";

/// A group and kind, the way analyzers ask for resources (`networking.istio.io`
/// `Gateway` and `gateway.networking.k8s.io` `Gateway` are different kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gk {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
}

/// The kinds analyzers read.
#[allow(missing_docs, reason = "each constant is its kind's name")]
pub mod gk {
    use super::Gk;

    const fn k(group: &'static str, kind: &'static str) -> Gk {
        Gk { group, kind }
    }
    const NET: &str = "networking.istio.io";
    const SEC: &str = "security.istio.io";
    const GW_API: &str = "gateway.networking.k8s.io";
    pub const VIRTUAL_SERVICE: Gk = k(NET, "VirtualService");
    pub const DESTINATION_RULE: Gk = k(NET, "DestinationRule");
    pub const GATEWAY: Gk = k(NET, "Gateway");
    pub const SERVICE_ENTRY: Gk = k(NET, "ServiceEntry");
    pub const SIDECAR: Gk = k(NET, "Sidecar");
    pub const ENVOY_FILTER: Gk = k(NET, "EnvoyFilter");
    pub const WORKLOAD_ENTRY: Gk = k(NET, "WorkloadEntry");
    pub const PROXY_CONFIG: Gk = k(NET, "ProxyConfig");
    pub const AUTHORIZATION_POLICY: Gk = k(SEC, "AuthorizationPolicy");
    pub const REQUEST_AUTHENTICATION: Gk = k(SEC, "RequestAuthentication");
    pub const PEER_AUTHENTICATION: Gk = k(SEC, "PeerAuthentication");
    pub const TELEMETRY: Gk = k("telemetry.istio.io", "Telemetry");
    pub const WASM_PLUGIN: Gk = k("extensions.istio.io", "WasmPlugin");
    pub const K8S_GATEWAY: Gk = k(GW_API, "Gateway");
    pub const HTTP_ROUTE: Gk = k(GW_API, "HTTPRoute");
    pub const GRPC_ROUTE: Gk = k(GW_API, "GRPCRoute");
    pub const SERVICE: Gk = k("", "Service");
    pub const POD: Gk = k("", "Pod");
    pub const NAMESPACE: Gk = k("", "Namespace");
    pub const NODE: Gk = k("", "Node");
    pub const SECRET: Gk = k("", "Secret");
    pub const CONFIG_MAP: Gk = k("", "ConfigMap");
    pub const DEPLOYMENT: Gk = k("apps", "Deployment");
    pub const MUTATING_WEBHOOK: Gk = k("admissionregistration.k8s.io", "MutatingWebhookConfiguration");
    pub const VALIDATING_WEBHOOK: Gk = k("admissionregistration.k8s.io", "ValidatingWebhookConfiguration");
    pub const CRD: Gk = k("apiextensions.k8s.io", "CustomResourceDefinition");
}

/// One resource, whatever its kind: its metadata, the document as written, where it was
/// read, and (for the kinds Spar serves) the typed object.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Group and kind.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// `apiVersion` as written.
    pub api_version: String,
    /// Namespace: as written, else the context's default; empty for cluster-scoped kinds.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The document as JSON.
    pub raw: Value,
    /// Where the document starts.
    pub origin: Origin,
    /// Lines of its fields.
    pub fields: FieldLines,
    /// The typed object, when Spar serves this kind and it parsed.
    pub object: Option<Object>,
    /// Why the typed parse or Spar's validation rejected it (each names the field).
    pub invalid: Vec<String>,
    /// Cluster it came from (multi-cluster analysis); empty for the only cluster.
    pub cluster: String,
}

impl Resource {
    /// Whether it is of kind `k`.
    pub fn is(&self, k: Gk) -> bool {
        self.kind == k.kind && self.group == k.group
    }

    /// The message subject.
    pub fn subject(&self) -> Subject {
        Subject { kind: self.kind.clone(), namespace: self.namespace.clone(), name: self.name.clone() }
    }

    /// `spec`, or null.
    pub fn spec(&self) -> &Value {
        self.raw.get("spec").unwrap_or(&Value::Null)
    }

    /// The line of `path` (`spec.gateways[0]`), else of the document.
    pub fn line_of(&self, path: &str) -> u32 {
        self.fields.get(path).copied().unwrap_or(self.origin.line)
    }

    /// Whether `path` is a field with a known line.
    pub fn has_line(&self, path: &str) -> bool {
        self.fields.contains_key(path)
    }

    /// The typed spec, when the document parsed as Spar's type for its kind (see
    /// [`Typed`]). Analyzers skip a resource without one, as Istio's skip objects that do
    /// not convert; the schema analyzer reports why it did not parse.
    pub fn typed<T: Typed>(&self) -> Option<&T> {
        self.object.as_ref().and_then(|o| T::from_object(&o.resource))
    }

    /// `ns/name`, or `name` without a namespace.
    pub fn full_name(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }

    /// The `spec.selector`-style label map at `v` (string values only).
    pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
        v.and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), scalar(v)?))).collect())
            .unwrap_or_default()
    }
}

/// A scalar as a string (YAML authors write `"1"`, `1` and `true` interchangeably in labels).
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A typed spec analyzers read instead of the document's JSON: its kind, and how to
/// find it in a parsed [`Object`].
pub trait Typed: Sized + 'static {
    /// The kind whose spec this is.
    const GK: Gk;
    /// The spec, when `resource` is of this kind.
    fn from_object(resource: &spar_api::Resource) -> Option<&Self>;
}

macro_rules! typed {
    ($( $ty:ty => $variant:ident, $gk:expr; )*) => {
        $(
            impl Typed for $ty {
                const GK: Gk = $gk;
                fn from_object(resource: &spar_api::Resource) -> Option<&Self> {
                    match resource {
                        spar_api::Resource::$variant(spec) => Some(spec),
                        _ => None,
                    }
                }
            }
        )*
    };
}

typed! {
    VirtualServiceSpec => VirtualService, gk::VIRTUAL_SERVICE;
    DestinationRuleSpec => DestinationRule, gk::DESTINATION_RULE;
    GatewaySpec => Gateway, gk::GATEWAY;
    ServiceEntrySpec => ServiceEntry, gk::SERVICE_ENTRY;
    SidecarSpec => Sidecar, gk::SIDECAR;
    AuthorizationPolicySpec => AuthorizationPolicy, gk::AUTHORIZATION_POLICY;
    RequestAuthenticationSpec => RequestAuthentication, gk::REQUEST_AUTHENTICATION;
    TelemetrySpec => Telemetry, gk::TELEMETRY;
}

/// The read-only view analyzers work on.
#[derive(Debug, Default)]
pub struct Context {
    resources: Vec<Resource>,
    by_kind: BTreeMap<(String, String), Vec<usize>>,
    by_key: BTreeMap<(String, String, String, String), usize>,
    mesh: MeshConfig,
    mesh_networks: Option<Value>,
    strict_selectors: bool,
}

impl Context {
    /// Treats the input as the whole cluster, as istioctl does: selectors that match no
    /// Pod are reported even when the input lists no Pods at all.
    #[must_use]
    pub fn with_strict_selectors(mut self, strict: bool) -> Self {
        self.strict_selectors = strict;
        self
    }

    /// A context over `resources`. The first definition of a key wins for lookups
    /// (later duplicates are still listed by kind and reported by Spar's analyzer).
    pub fn new(resources: Vec<Resource>, mesh: MeshConfig, mesh_networks: Option<Value>) -> Self {
        let mut by_kind: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut by_key = BTreeMap::new();
        for (i, r) in resources.iter().enumerate() {
            by_kind.entry((r.group.clone(), r.kind.clone())).or_default().push(i);
            by_key.entry((r.group.clone(), r.kind.clone(), r.namespace.clone(), r.name.clone())).or_insert(i);
        }
        Self { resources, by_kind, by_key, mesh, mesh_networks, strict_selectors: false }
    }

    /// Every resource.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// Resources of kind `k`, in input order.
    pub fn of(&self, k: Gk) -> impl Iterator<Item = &Resource> + '_ {
        self.by_kind.get(&(k.group.to_string(), k.kind.to_string())).into_iter().flatten().map(|i| &self.resources[*i])
    }

    /// Resources of `T`'s kind that parsed as `T`, with their specs, in input order.
    /// Resources that did not parse are left out (they are still in [`Context::of`]).
    pub fn typed<T: Typed>(&self) -> impl Iterator<Item = (&Resource, &T)> + '_ {
        self.of(T::GK).filter_map(|r| Some((r, r.typed::<T>()?)))
    }

    /// The resource of kind `k` named `ns/name`.
    pub fn get(&self, k: Gk, namespace: &str, name: &str) -> Option<&Resource> {
        self.by_key
            .get(&(k.group.to_string(), k.kind.to_string(), namespace.to_string(), name.to_string()))
            .map(|i| &self.resources[*i])
    }

    /// Whether `ns/name` of kind `k` exists.
    pub fn exists(&self, k: Gk, namespace: &str, name: &str) -> bool {
        self.get(k, namespace, name).is_some()
    }

    /// Mesh settings.
    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    /// Whether the input lists workloads (Pods other than istioctl's default ingress
    /// pod), or strict selectors are on. Checks that say "selects no pods" only run when
    /// it is true: Spar's file mode has no Pods, and reporting every selector as
    /// dangling there would be noise.
    pub fn workloads_known(&self) -> bool {
        self.strict_selectors || self.of(gk::POD).any(|p| &*p.origin.file != DEFAULT_RESOURCES_FILE)
    }

    /// MeshNetworks, when given.
    pub fn mesh_networks(&self) -> Option<&Value> {
        self.mesh_networks.as_ref()
    }
}
