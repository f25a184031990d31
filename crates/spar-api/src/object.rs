//! Typed configuration objects: the kinds Spar reads, their metadata, and their specs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::rbac::v1 as rbacv1;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::origin::Origin;
use crate::{gateway_api, istio};

/// Istio's served versions for networking.istio.io kinds.
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// Istio's served versions for security.istio.io kinds.
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// Gateway API's served versions (experimental channel, as Istio serves it).
const GATEWAY_API_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha2", "v1alpha3"];

/// The name a kind has in YAML: its variant's, unless it says otherwise (`as "Gateway"`
/// for Gateway API's Gateway, whose variant cannot share Istio's name).
macro_rules! yaml_name {
    ($kind:ident) => {
        stringify!($kind)
    };
    ($kind:ident, $yaml:literal) => {
        $yaml
    };
}

macro_rules! kinds {
    ($( $kind:ident $(as $yaml:literal)? => $group:literal, $versions:expr; )*) => {
        /// Every kind Spar reads.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $( #[doc = concat!("`", $group, "` ", stringify!($kind))] $kind, )* }

        impl Kind {
            /// All kinds.
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),*];

            /// The kind for an API group and kind name.
            pub fn lookup(group: &str, kind: &str) -> Option<Kind> {
                match (group, kind) {
                    $( ($group, yaml_name!($kind $(, $yaml)?)) => Some(Kind::$kind), )*
                    _ => None,
                }
            }

            /// API group (empty for the core group).
            pub fn group(self) -> &'static str {
                match self { $( Kind::$kind => $group, )* }
            }

            /// Served versions.
            pub fn versions(self) -> &'static [&'static str] {
                match self { $( Kind::$kind => $versions, )* }
            }

            /// Kind name as written in YAML.
            pub fn name(self) -> &'static str {
                match self { $( Kind::$kind => yaml_name!($kind $(, $yaml)?), )* }
            }
        }
    };
}

kinds! {
    VirtualService => "networking.istio.io", NETWORKING_VERSIONS;
    DestinationRule => "networking.istio.io", NETWORKING_VERSIONS;
    Gateway => "networking.istio.io", NETWORKING_VERSIONS;
    ServiceEntry => "networking.istio.io", NETWORKING_VERSIONS;
    Sidecar => "networking.istio.io", NETWORKING_VERSIONS;
    WorkloadEntry => "networking.istio.io", NETWORKING_VERSIONS;
    WorkloadGroup => "networking.istio.io", NETWORKING_VERSIONS;
    EnvoyFilter => "networking.istio.io", &["v1alpha3"];
    ProxyConfig => "networking.istio.io", &["v1beta1"];
    PeerAuthentication => "security.istio.io", SECURITY_VERSIONS;
    AuthorizationPolicy => "security.istio.io", SECURITY_VERSIONS;
    RequestAuthentication => "security.istio.io", SECURITY_VERSIONS;
    Telemetry => "telemetry.istio.io", &["v1", "v1alpha1"];
    WasmPlugin => "extensions.istio.io", &["v1alpha1"];
    TrafficExtension => "extensions.istio.io", &["v1alpha1"];
    Service => "", &["v1"];
    Endpoints => "", &["v1"];
    EndpointSlice => "discovery.k8s.io", &["v1"];
    Namespace => "", &["v1"];
    Secret => "", &["v1"];
    ConfigMap => "", &["v1"];
    Pod => "", &["v1"];
    Node => "", &["v1"];
    Role => "rbac.authorization.k8s.io", &["v1"];
    ClusterRole => "rbac.authorization.k8s.io", &["v1"];
    RoleBinding => "rbac.authorization.k8s.io", &["v1"];
    ClusterRoleBinding => "rbac.authorization.k8s.io", &["v1"];
    GatewayClass => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    KubernetesGateway as "Gateway" => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    HTTPRoute => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    GRPCRoute => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    TCPRoute => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    TLSRoute => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    ReferenceGrant => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
    BackendTLSPolicy => "gateway.networking.k8s.io", GATEWAY_API_VERSIONS;
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Kind {
    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::GatewayClass
        )
    }
}

/// Object metadata Spar uses (the full `metadata` stays in [`Object::raw`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Kind.
    pub kind: Kind,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent (as `kubectl apply` does).
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`, for istiod's oldest-first ordering.
    pub creation_timestamp: Option<String>,
}

impl Meta {
    pub(crate) fn from_value(kind: Kind, api_version: String, v: &Value) -> Self {
        let m = v.get("metadata");
        let s = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
        let map = |k: &str| -> BTreeMap<String, String> {
            m.and_then(|m| m.get(k))
                .and_then(Value::as_mapping)
                .map(|mp| {
                    mp.iter()
                        .filter_map(|(k, v)| {
                            let v = match v {
                                Value::String(s) => s.clone(),
                                Value::Bool(b) => b.to_string(),
                                Value::Number(n) => n.to_string(),
                                _ => return None,
                            };
                            Some((k.as_str()?.to_string(), v))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let namespace =
            if kind.is_namespaced() { s("namespace").unwrap_or_else(|| "default".into()) } else { String::new() };
        Self {
            kind,
            api_version,
            name: s("name").unwrap_or_default(),
            namespace,
            labels: map("labels"),
            annotations: map("annotations"),
            creation_timestamp: s("creationTimestamp"),
        }
    }
}

/// Identity of an object in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A typed object with its origin.
#[derive(Clone, Debug)]
pub struct Object {
    /// Metadata.
    pub meta: Meta,
    /// Where it was read.
    pub origin: Origin,
    /// The typed body.
    pub resource: Resource,
    /// The document as written, for field reports and analyzers.
    pub raw: serde_json::Value,
}

impl Object {
    /// The store key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey { kind: self.meta.kind, namespace: self.meta.namespace.clone(), name: self.meta.name.clone() }
    }
}

/// An Istio object's envelope: only `spec` is typed here, metadata is read separately.
#[derive(Deserialize)]
struct Envelope<S> {
    #[serde(default)]
    spec: Option<S>,
}

macro_rules! resources {
    ($( $kind:ident($ty:ty) via $parse:ident; )*) => {
        /// The typed body of an object. Specs are shared: the snapshot and every
        /// generator borrow the same allocation.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Resource { $( #[doc = stringify!($kind)] $kind(Arc<$ty>), )* }

        impl Resource {
            /// Parses `text` (one document) as `kind`.
            pub fn parse(kind: Kind, text: &str) -> Result<Resource, serde_yaml_ng::Error> {
                Ok(match kind { $( Kind::$kind => Resource::$kind(Arc::new($parse::<$ty>(text)?)), )* })
            }

            /// The typed body as JSON: the `spec` of an Istio kind, the whole object of a
            /// Kubernetes kind (what was parsed, for readers that need the document after
            /// [`Object::raw`] was dropped).
            pub fn to_value(&self) -> serde_json::Value {
                match self { $( Resource::$kind(x) => serde_json::to_value(&**x).unwrap_or(serde_json::Value::Null), )* }
            }
        }
    };
}

fn spec<S: serde::de::DeserializeOwned + Default>(text: &str) -> Result<S, serde_yaml_ng::Error> {
    let env: Envelope<S> = serde_yaml_ng::from_str(text)?;
    Ok(env.spec.unwrap_or_default())
}

fn whole<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_yaml_ng::Error> {
    serde_yaml_ng::from_str(text)
}

resources! {
    VirtualService(istio::virtual_service::VirtualServiceSpec) via spec;
    DestinationRule(istio::destination_rule::DestinationRuleSpec) via spec;
    Gateway(istio::gateway::GatewaySpec) via spec;
    ServiceEntry(istio::service_entry::ServiceEntrySpec) via spec;
    Sidecar(istio::sidecar::SidecarSpec) via spec;
    WorkloadEntry(istio::workload_entry::WorkloadEntrySpec) via spec;
    WorkloadGroup(istio::workload_group::WorkloadGroupSpec) via spec;
    EnvoyFilter(istio::envoy_filter::EnvoyFilterSpec) via spec;
    ProxyConfig(istio::proxy_config::ProxyConfigSpec) via spec;
    PeerAuthentication(istio::peer_authentication::PeerAuthenticationSpec) via spec;
    AuthorizationPolicy(istio::authorization_policy::AuthorizationPolicySpec) via spec;
    RequestAuthentication(istio::request_authentication::RequestAuthenticationSpec) via spec;
    Telemetry(istio::telemetry::TelemetrySpec) via spec;
    WasmPlugin(istio::wasm_plugin::WasmPluginSpec) via spec;
    TrafficExtension(istio::traffic_extension::TrafficExtensionSpec) via spec;
    Service(corev1::Service) via whole;
    Endpoints(corev1::Endpoints) via whole;
    EndpointSlice(discoveryv1::EndpointSlice) via whole;
    Namespace(corev1::Namespace) via whole;
    Secret(corev1::Secret) via whole;
    ConfigMap(corev1::ConfigMap) via whole;
    Pod(corev1::Pod) via whole;
    Node(corev1::Node) via whole;
    Role(rbacv1::Role) via whole;
    ClusterRole(rbacv1::ClusterRole) via whole;
    RoleBinding(rbacv1::RoleBinding) via whole;
    ClusterRoleBinding(rbacv1::ClusterRoleBinding) via whole;
    GatewayClass(gateway_api::gateway_class::GatewayClassSpec) via spec;
    KubernetesGateway(gateway_api::gateway::GatewaySpec) via spec;
    HTTPRoute(gateway_api::http_route::HttpRouteSpec) via spec;
    GRPCRoute(gateway_api::grpc_route::GrpcRouteSpec) via spec;
    TCPRoute(gateway_api::tcp_route::TcpRouteSpec) via spec;
    TLSRoute(gateway_api::tls_route::TlsRouteSpec) via spec;
    ReferenceGrant(gateway_api::reference_grant::ReferenceGrantSpec) via spec;
    BackendTLSPolicy(gateway_api::backend_tls_policy::BackendTlsPolicySpec) via spec;
}
