//! The Kubernetes side of managed Gateway API Gateways, as istiod's gateway deployment
//! controller does it (`pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go` and
//! its `kube-gateway` template): for each Gateway of a class Spar serves with no address,
//! or one IP address, the proxies that serve it.
//!
//! ```text
//!  Gateway ns/web (class istio)          ServiceAccount ns/web-istio
//!    listeners: http 80, https 443  ──►  Deployment     ns/web-istio   pods labelled gateway-name=web:
//!    (no spec.addresses)                                               spar-bootstrap (--router) + istio-proxy (Envoy)
//!                                        Service        ns/web-istio   LoadBalancer, status-port 15021, 80, 443
//!                                        (each owned by the Gateway: Kubernetes deletes them with it)
//! ```
//!
//! The pods carry `gateway.networking.k8s.io/gateway-name: <gateway>`, which is what the
//! Gateway API translation (`spar_model::gateway_api`) programs; they are the injected
//! sidecar's proxy (the same image, bootstrap container, token exchange and volumes,
//! [`crate::inject`]) as a router, with no traffic capture.
//!
//! [`managed`] picks the Gateways from the store and [`render`] makes the three objects;
//! both are pure. [`run`] applies them (server-side apply, only on the Lease holder).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use spar_api::gateway_api::gateway::GatewaySpec;
use spar_api::{Meta, Object, Resource};
use spar_model::gateway_api::{BUILTIN_CLASSES, GATEWAY_NAME_LABEL, is_managed, served_controller};

use crate::inject::{DEFAULT_STATUS_PORT, InjectConfig, InjectError, PROMETHEUS_PORT};

mod apply;
pub use apply::{DeployConfig, run};

/// Label on every object (and pod) Spar deploys for a Gateway: the controller, `/` as
/// `-` (`istio.io-gateway-controller`, `spar-mesh.io-gateway-controller`). An existing
/// object without it is never taken over.
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// Label with the Gateway's class.
pub const CLASS_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
/// Gateway annotation: the Deployment's and Service's name instead of `<name>-<class>`.
pub const NAME_OVERRIDE: &str = "gateway.istio.io/name-override";
/// Gateway annotation: the ServiceAccount's name instead of `<name>-<class>`.
pub const SERVICE_ACCOUNT_OVERRIDE: &str = "gateway.istio.io/service-account";
/// Gateway annotation: the Service's type instead of `LoadBalancer`.
pub const SERVICE_TYPE: &str = "networking.istio.io/service-type";
/// Gateway annotation istiod writes: the version of the controller that manages it.
pub const CONTROLLER_VERSION: &str = "gateway.istio.io/controller-version";
/// istiod's `ControllerVersion`: a Gateway marked with a higher one (or one that is not a
/// number) belongs to a newer controller, which istiod leaves it to; so does Spar.
pub const KNOWN_CONTROLLER_VERSION: u64 = 5;

/// Gateway annotations that configure the controller, not the objects: never copied onto
/// them (the `kube-gateway` template's `omit`).
const NOT_COPIED: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration", NAME_OVERRIDE, SERVICE_ACCOUNT_OVERRIDE, CONTROLLER_VERSION];

/// A Gateway Spar deploys proxies for: what the objects are made from. Equal values
/// render equal objects (except for the Gateway's uid, which a recreated Gateway changes
/// along with its `creationTimestamp`).
#[derive(Clone, Debug, PartialEq)]
pub struct Managed {
    /// The Gateway's metadata.
    pub meta: Meta,
    /// Its spec.
    pub spec: Arc<GatewaySpec>,
    /// The controller of its class, istiod's or Spar's
    /// ([`spar_model::gateway_api::served_controller`]).
    pub controller: &'static str,
}

impl Managed {
    /// `<name>-<class>`, the default name of every object.
    fn default_name(&self) -> String {
        format!("{}-{}", self.meta.name, self.spec.gateway_class_name)
    }

    /// The Deployment's and Service's name.
    pub fn deployment_name(&self) -> String {
        self.meta.annotations.get(NAME_OVERRIDE).cloned().unwrap_or_else(|| self.default_name())
    }

    /// The ServiceAccount's name.
    pub fn service_account(&self) -> String {
        self.meta.annotations.get(SERVICE_ACCOUNT_OVERRIDE).cloned().unwrap_or_else(|| self.default_name())
    }

    /// The value of [`MANAGED_LABEL`].
    pub fn managed_label(&self) -> String {
        self.controller.replace('/', "-")
    }
}

/// The Gateways among `objects` that Spar deploys, by namespace and name: of a class whose
/// controller is istiod's or Spar's (a GatewayClass object, else the built-in `istio` and
/// `spar`), managed ([`is_managed`]), and not claimed by a newer istiod
/// ([`CONTROLLER_VERSION`]).
pub fn managed(objects: &[&Object]) -> Vec<Managed> {
    let mut classes: BTreeMap<&str, &str> = BUILTIN_CLASSES.iter().copied().collect();
    for o in objects {
        if let Resource::GatewayClass(c) = &o.resource {
            classes.insert(&o.meta.name, &c.controller_name);
        }
    }
    let mut out: Vec<Managed> = objects
        .iter()
        .filter_map(|o| {
            let Resource::KubernetesGateway(spec) = &o.resource else { return None };
            let controller = classes.get(spec.gateway_class_name.as_str()).and_then(|c| served_controller(c))?;
            let newer = o
                .meta
                .annotations
                .get(CONTROLLER_VERSION)
                .is_some_and(|v| v.parse::<u64>().map_or(true, |n| n > KNOWN_CONTROLLER_VERSION));
            (is_managed(spec) && !newer).then(|| Managed { meta: o.meta.clone(), spec: Arc::clone(spec), controller })
        })
        .collect();
    out.sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    out
}

/// The objects of one Gateway, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// `v1/ServiceAccount`.
    pub service_account: Value,
    /// `apps/v1/Deployment`.
    pub deployment: Value,
    /// `v1/Service`.
    pub service: Value,
}

impl Rendered {
    /// ServiceAccount, Deployment, Service: the pods need the account, the Service the pods.
    pub fn objects(&self) -> [&Value; 3] {
        [&self.service_account, &self.deployment, &self.service]
    }
}

/// Why a Gateway's objects cannot be made. Not retried until the Gateway changes.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A `sidecar.istio.io/*` annotation on the Gateway (read as injection reads a pod's).
    #[error(transparent)]
    Annotation(#[from] InjectError),
    /// [`SERVICE_TYPE`] is not a Service type Spar can make.
    #[error("annotation {SERVICE_TYPE}: {0:?} is not ClusterIP, NodePort or LoadBalancer")]
    ServiceType(String),
}

/// The ServiceAccount, Deployment and Service of `gw`, whose `metadata.uid` is `uid`
/// (their owner reference; a wrong one would have Kubernetes delete them). Pure.
pub fn render(gw: &Managed, uid: &str, cfg: &InjectConfig) -> Result<Rendered, RenderError> {
    let name = &gw.meta.name;
    let namespace = &gw.meta.namespace;
    let class = &gw.spec.gateway_class_name;
    let deployment_name = gw.deployment_name();
    let service_account = gw.service_account();
    let service_type = match gw.meta.annotations.get(SERVICE_TYPE).map(String::as_str) {
        None => "LoadBalancer",
        Some(t @ ("ClusterIP" | "NodePort" | "LoadBalancer")) => t,
        Some(other) => return Err(RenderError::ServiceType(other.to_string())),
    };

    let (infra_labels, mut infra_annotations) = infrastructure(gw);
    infra_annotations.retain(|k, _| !NOT_COPIED.contains(&k.as_str()));
    // Later entries win, as in the template's `toJsonMap`.
    let own = [
        (GATEWAY_NAME_LABEL.to_string(), name.clone()),
        (CLASS_NAME_LABEL.to_string(), class.clone()),
        (MANAGED_LABEL.to_string(), gw.managed_label()),
    ];
    let labels: Map<String, Value> =
        infra_labels.iter().map(|(k, v)| (k.clone(), json!(v))).chain(own_json(&own)).collect();
    let annotations: Map<String, Value> = infra_annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let meta = |object_name: &str| {
        let mut m = json!({
            "name": object_name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "name": name,
                "uid": uid,
                "controller": true,
            }],
        });
        if !annotations.is_empty() {
            m["annotations"] = json!(annotations);
        }
        m
    };

    let pod_labels: Map<String, Value> = [
        ("sidecar.istio.io/inject".to_string(), "false".to_string()),
        ("service.istio.io/canonical-name".to_string(), deployment_name.clone()),
        ("service.istio.io/canonical-revision".to_string(), "latest".to_string()),
    ]
    .into_iter()
    .chain(infra_labels.clone())
    .map(|(k, v)| (k, json!(v)))
    .chain(own_json(&own))
    .collect();
    let mut pod_annotations = annotations.clone();
    pod_annotations.insert("istio.io/rev".into(), json!(cfg.revision));
    pod_annotations.insert("prometheus.io/path".into(), json!("/stats/prometheus"));
    pod_annotations.insert("prometheus.io/port".into(), json!(PROMETHEUS_PORT.to_string()));
    pod_annotations.insert("prometheus.io/scrape".into(), json!("true"));

    let gateway_annotations: Map<String, Value> =
        gw.meta.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let pod = crate::inject::router_pod(&gateway_annotations, &pod_labels, cfg)?;
    let mut proxy = pod.proxy;
    if let (Some(port), Some(ports)) = (pod.status_port, proxy["ports"].as_array_mut()) {
        ports.push(json!({"containerPort": port, "name": "status-port", "protocol": "TCP"}));
    }

    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(&deployment_name),
        "spec": {
            // No replicas: left to the operator (`kubectl scale`) or an autoscaler.
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": {
                    // Envoy runs as 1337 and binds the listeners' ports, 80 and 443 too.
                    "securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
                    "serviceAccountName": service_account,
                    "initContainers": [pod.bootstrap],
                    "containers": [proxy],
                    "volumes": pod.volumes,
                },
            },
        },
    });

    let mut service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&deployment_name),
        "spec": {
            "ipFamilyPolicy": "PreferDualStack",
            "ports": service_ports(&gw.spec),
            "selector": {GATEWAY_NAME_LABEL: name},
            "type": service_type,
        },
    });
    if service_type == "LoadBalancer"
        && let Some(ip) = gw.spec.addresses.as_deref().and_then(<[_]>::first).and_then(|a| a.value.as_deref())
    {
        service["spec"]["loadBalancerIP"] = json!(ip);
    }

    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(&service_account),
    });
    Ok(Rendered { service_account, deployment, service })
}

fn own_json(own: &[(String, String)]) -> impl Iterator<Item = (String, Value)> + '_ {
    own.iter().map(|(k, v)| (k.clone(), json!(v)))
}

/// istiod's `extractInfrastructureLabels`/`Annotations`: `spec.infrastructure.labels`
/// (and `annotations`) when set, without keys under `gateway.networking.k8s.io/`; else
/// the Gateway's own labels (annotations).
fn infrastructure(gw: &Managed) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let infra = gw.spec.infrastructure.as_ref();
    let pick = |set: Option<&BTreeMap<String, String>>, own: &BTreeMap<String, String>| match set {
        Some(m) => m
            .iter()
            .filter(|(k, _)| !k.starts_with("gateway.networking.k8s.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => own.clone(),
    };
    (
        pick(infra.and_then(|i| i.labels.as_ref()), &gw.meta.labels),
        pick(infra.and_then(|i| i.annotations.as_ref()), &gw.meta.annotations),
    )
}

/// istiod's `extractServicePorts`: `status-port` (15021), then one port per distinct
/// listener port, named after the first listener on it (`.` as `-`, at most 63
/// characters, made unique with the port number), `appProtocol` the protocol in lower case.
fn service_ports(spec: &GatewaySpec) -> Vec<Value> {
    let mut used = vec!["status-port".to_string()];
    let mut ports = vec![json!({
        "name": "status-port", "port": DEFAULT_STATUS_PORT, "protocol": "TCP", "appProtocol": "tcp",
    })];
    let mut seen = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        if seen.contains(&l.port) {
            continue;
        }
        seen.push(l.port);
        let protocol = l.protocol.to_lowercase();
        let mut name = truncate(&l.name.replace('.', "-"), 63).to_string();
        if name.is_empty() {
            name = format!("{protocol}-{i}");
        }
        let name = unique_port_name(&name, l.port, &mut used);
        ports.push(json!({"name": name, "port": l.port, "protocol": "TCP", "appProtocol": protocol}));
    }
    ports
}

/// istiod's `uniquePortName`: `name` cut to 63 characters, with `-<port>` (then `x`s)
/// added until no other port has it.
fn unique_port_name(name: &str, port: i32, used: &mut Vec<String>) -> String {
    let name = truncate(name, 63);
    let mut candidate = name.to_string();
    let mut suffix = format!("-{port}");
    while used.contains(&candidate) {
        candidate = format!("{}{suffix}", truncate(name, 63usize.saturating_sub(suffix.len())));
        suffix.push('x');
    }
    used.push(candidate.clone());
    candidate
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
