//! The immutable snapshot: services by host (from Kubernetes Services with
//! Endpoints/EndpointSlices/WorkloadEntries, and from ServiceEntries), and the Istio
//! routing objects indexed for generators.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spar_api::istio::authorization_policy::AuthorizationPolicySpec;
use spar_api::istio::destination_rule::DestinationRuleSpec;
use spar_api::istio::gateway::GatewaySpec;
use spar_api::istio::peer_authentication::{
    PeerAuthenticationMtlsMode, PeerAuthenticationPortLevelMtlsMode, PeerAuthenticationSpec,
};
use spar_api::istio::request_authentication::RequestAuthenticationSpec;
use spar_api::istio::service_entry::{ServiceEntryLocation, ServiceEntryResolution, ServiceEntrySpec};
use spar_api::istio::sidecar::SidecarSpec;
use spar_api::istio::telemetry::TelemetrySpec;
use spar_api::istio::virtual_service::VirtualServiceSpec;
use spar_api::istio::workload_entry::WorkloadEntrySpec;
use spar_api::{Object, Origin, Resource};

use crate::ext_authz::ExtAuthzProvider;
use crate::rbac::SecretReaders;
use crate::service::{Endpoint, Protocol, Resolution, Service, ServicePort};
use crate::telemetry::TracingProvider;
use crate::{Proxy, Store, host};

/// Mesh-wide settings (Istio's MeshConfig, the parts Spar reads).
#[derive(Clone, Debug, PartialEq)]
pub struct MeshConfig {
    /// DNS domain, `cluster.local`.
    pub domain: String,
    /// Root namespace for mesh-wide config, `istio-system`.
    pub root_namespace: String,
    /// `outboundTrafficPolicy.mode`: whether traffic to hosts outside the registry is
    /// let through (`ALLOW_ANY`, Istio's default) or refused (`REGISTRY_ONLY`).
    pub registry_only: bool,
    /// `accessLogFile` (with `accessLogFormat` and `accessLogEncoding`): every proxy
    /// writes an access log there. Off when unset.
    pub access_log: Option<FileAccessLog>,
    /// `extensionProviders[].envoyFileAccessLog`, by provider name, for Telemetry
    /// `accessLogging`. The built-in `envoy` provider (`/dev/stdout`) is always there.
    pub access_log_providers: BTreeMap<String, FileAccessLog>,
    /// `extensionProviders[]` by name, for Telemetry `tracing` (OpenTelemetry ones; the
    /// other kinds are kept to say why they are not served).
    pub tracing_providers: BTreeMap<String, TracingProvider>,
    /// `defaultProviders.tracing`: the provider of Telemetry `tracing` that names none
    /// (the first one only, as in istiod).
    pub default_tracing_providers: Vec<String>,
    /// `defaultConfig.tracing.sampling`: percent of requests traced when no Telemetry
    /// sets `randomSamplingPercentage`; Istio's default is 1.
    pub trace_sampling: f64,
    /// `extensionProviders[]` of kind `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`, by
    /// name, for AuthorizationPolicy `action: CUSTOM`; a provider that cannot be used
    /// is kept with the reason (the policies naming it deny what they match).
    pub authz_providers: BTreeMap<String, Result<ExtAuthzProvider, String>>,
}

/// A file access log as MeshConfig describes one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAccessLog {
    /// Path (`/dev/stdout` for the container log).
    pub path: String,
    /// Text format (Envoy command operators); Istio's default format when unset.
    pub format: Option<String>,
    /// JSON lines instead of text; with `json_fields` as the fields when given.
    pub json: bool,
    /// JSON field name to Envoy command operator (`logFormat.labels`).
    pub json_fields: BTreeMap<String, String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            registry_only: false,
            access_log: None,
            access_log_providers: BTreeMap::new(),
            tracing_providers: BTreeMap::new(),
            default_tracing_providers: Vec::new(),
            trace_sampling: 1.0,
            authz_providers: BTreeMap::new(),
        }
    }
}

/// An Istio object in the snapshot: its spec and where it came from.
#[derive(Clone, Debug)]
pub struct Config<S> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Origin, for messages.
    pub origin: Origin,
    /// `metadata.creationTimestamp`, for istiod's oldest-first precedence.
    pub created: Option<String>,
    /// The `istio.io/dry-run` annotation is true (AuthorizationPolicy: evaluated and
    /// logged, not enforced).
    pub dry_run: bool,
    /// The spec, shared with the store.
    pub spec: Arc<S>,
}

impl<S> Config<S> {
    /// `Kind ns/name` style label.
    pub fn label(&self, kind: &str) -> String {
        format!("{kind} {}/{}", self.namespace, self.name)
    }
}

/// Something worth telling the operator about the snapshot (a conflict, a dangling
/// reference, ...), with the object that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where.
    pub origin: Origin,
    /// `Kind ns/name`.
    pub resource: String,
    /// What.
    pub message: String,
}

/// Everything generators need, immutable and shared.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// Mesh settings.
    pub mesh: MeshConfig,
    /// Services by host name.
    pub services: BTreeMap<String, Arc<Service>>,
    /// VirtualServices, oldest first (istiod's precedence order), hosts resolved.
    pub virtual_services: Vec<(Config<VirtualServiceSpec>, Vec<String>)>,
    /// DestinationRules, oldest first, with the resolved host.
    pub destination_rules: Vec<(Config<DestinationRuleSpec>, String)>,
    /// Sidecars.
    pub sidecars: Vec<Config<SidecarSpec>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Config<PeerAuthenticationSpec>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Config<AuthorizationPolicySpec>>,
    /// Which service accounts Kubernetes RBAC lets list Secrets in their namespace (the
    /// question istiod's SDS asks before serving a `credentialName`'s key).
    pub secret_readers: SecretReaders,
    /// RequestAuthentications.
    pub request_authentications: Vec<Config<RequestAuthenticationSpec>>,
    /// Secrets by (namespace, name), for `credentialName`.
    pub secrets: BTreeMap<(String, String), Arc<corev1::Secret>>,
    /// Gateways, oldest first.
    pub gateways: Vec<Config<GatewaySpec>>,
    /// Telemetry resources.
    pub telemetries: Vec<Config<TelemetrySpec>>,
    /// EnvoyFilters, in the order istiod applies them: root namespace first, then by
    /// priority, creation time and name.
    pub envoy_filters: Vec<Config<spar_api::istio::envoy_filter::EnvoyFilterSpec>>,
    /// Problems found while building.
    pub diagnostics: Vec<Diagnostic>,
    /// Label keys any selector that shapes a sidecar's outbound config looks at
    /// (Sidecar and DestinationRule workload selectors, VirtualService `sourceLabels`,
    /// Telemetry selectors). Workloads that agree on these get the same outbound config.
    pub outbound_label_keys: BTreeSet<String>,
    /// When the only difference from the snapshot before (`since.from`) is endpoints of
    /// some services: which ([`Snapshot::note_changes_since`]). Generators then redo only
    /// those services' clusters and load assignments.
    pub since: Option<EndpointChanges>,
    /// Lookup indexes over the lists above, built once per snapshot so that per-proxy
    /// generation does not scan every rule for every service.
    index: Index,
}

/// Positions into `virtual_services` and `destination_rules`, by host.
#[derive(Debug, Default)]
struct Index {
    /// VirtualServices by exact (resolved) host; ascending positions = oldest first.
    vs_exact: BTreeMap<String, Vec<usize>>,
    /// VirtualServices with a wildcard host.
    vs_wildcard: Vec<usize>,
    /// DestinationRules by namespace, then exact host.
    dr_exact: BTreeMap<String, BTreeMap<String, Vec<usize>>>,
    /// DestinationRules with a wildcard host, by namespace.
    dr_wildcard: BTreeMap<String, Vec<usize>>,
}

/// Inbound mutual TLS mode (PeerAuthentication).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Plaintext only.
    Disable,
}

impl MtlsMode {
    fn from_mode(m: &PeerAuthenticationMtlsMode) -> Option<Self> {
        match m {
            PeerAuthenticationMtlsMode::Strict => Some(Self::Strict),
            PeerAuthenticationMtlsMode::Permissive => Some(Self::Permissive),
            PeerAuthenticationMtlsMode::Disable => Some(Self::Disable),
            PeerAuthenticationMtlsMode::Unset => None,
        }
    }

    fn from_port_mode(m: &PeerAuthenticationPortLevelMtlsMode) -> Option<Self> {
        match m {
            PeerAuthenticationPortLevelMtlsMode::Strict => Some(Self::Strict),
            PeerAuthenticationPortLevelMtlsMode::Permissive => Some(Self::Permissive),
            PeerAuthenticationPortLevelMtlsMode::Disable => Some(Self::Disable),
            PeerAuthenticationPortLevelMtlsMode::Unset => None,
        }
    }
}

fn config<S>(obj: &Object, spec: &Arc<S>) -> Config<S> {
    Config {
        name: obj.meta.name.clone(),
        namespace: obj.meta.namespace.clone(),
        origin: obj.origin.clone(),
        created: obj.meta.creation_timestamp.clone(),
        dry_run: obj.meta.annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| go_bool(v) == Some(true)),
        spec: Arc::clone(spec),
    }
}

/// The annotation that makes an AuthorizationPolicy a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Go's `strconv.ParseBool`, as istiod reads the dry-run annotation.
pub fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether every label of `selector` is on `labels` (Kubernetes `matchLabels`).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn u16_port(p: i64) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0)
}

impl Snapshot {
    /// Says which AuthorizationPolicies with `action: CUSTOM` cannot be checked: their
    /// provider is missing or unusable, so the requests they match are denied. (A dry-run
    /// CUSTOM policy never gets here: validation refuses it, as Istio's webhook does.)
    fn diagnose_custom_policies(&mut self) {
        use spar_api::istio::authorization_policy::AuthorizationPolicyAction as Action;
        for p in &self.authorization_policies {
            if p.spec.action != Some(Action::Custom) {
                continue;
            }
            let name = p.spec.provider.as_ref().and_then(|p| p.name.as_deref()).unwrap_or_default();
            let message = match self.mesh.authz_providers.get(name) {
                Some(Ok(provider)) => match self.provider_service(&provider.service) {
                    Some(s) if s.port(provider.port).is_some() => continue,
                    Some(_) => format!(
                        "CUSTOM provider {name:?}: service {} has no port {}: every request this policy \
                             matches is denied",
                        provider.service, provider.port
                    ),
                    None => format!(
                        "CUSTOM provider {name:?}: service {} is not in the registry: every request this \
                             policy matches is denied",
                        provider.service
                    ),
                },
                Some(Err(e)) => {
                    format!("CUSTOM provider unusable ({e}): every request this policy matches is denied")
                }
                None => format!(
                    "CUSTOM provider {name:?} is not an ext_authz provider of MeshConfig extensionProviders: every \
                     request this policy matches is denied"
                ),
            };
            self.diagnostics.push(Diagnostic {
                origin: p.origin.clone(),
                resource: p.label("AuthorizationPolicy"),
                message,
            });
        }
    }

    /// Builds a snapshot from everything in `store`.
    pub fn build(store: &Store, mesh: &MeshConfig, version: u64) -> Snapshot {
        let (objects, dups) = store.objects();
        let mut snap = Snapshot { version, mesh: mesh.clone(), ..Default::default() };
        for d in dups {
            snap.diagnostics.push(Diagnostic {
                origin: d.dropped.clone(),
                resource: d.key.to_string(),
                message: format!("duplicate definition ignored; the one at {} is used", d.kept),
            });
        }
        let mut workload_entries = Vec::new();
        let mut k8s_services = Vec::new();
        let mut endpoints: BTreeMap<(String, String), &corev1::Endpoints> = BTreeMap::new();
        let mut slices: BTreeMap<(String, String), Vec<&discoveryv1::EndpointSlice>> = BTreeMap::new();
        let mut service_entries = Vec::new();
        let mut workloads = Workloads::default();
        let (mut roles, mut cluster_roles, mut role_bindings, mut cluster_role_bindings) =
            (BTreeMap::new(), BTreeMap::new(), Vec::new(), Vec::new());
        for obj in &objects {
            match &obj.resource {
                Resource::VirtualService(s) => {
                    let hosts =
                        s.hosts.iter().flatten().map(|h| host::resolve(h, &obj.meta.namespace, &mesh.domain)).collect();
                    snap.virtual_services.push((config(obj, s), hosts));
                }
                Resource::DestinationRule(s) => {
                    let h = host::resolve(&s.host, &obj.meta.namespace, &mesh.domain);
                    snap.destination_rules.push((config(obj, s), h));
                }
                Resource::Sidecar(s) => snap.sidecars.push(config(obj, s)),
                Resource::Gateway(s) => snap.gateways.push(config(obj, s)),
                Resource::Telemetry(s) => snap.telemetries.push(config(obj, s)),
                Resource::EnvoyFilter(s) => snap.envoy_filters.push(config(obj, s)),
                Resource::PeerAuthentication(s) => snap.peer_authentications.push(config(obj, s)),
                Resource::AuthorizationPolicy(s) => snap.authorization_policies.push(config(obj, s)),
                Resource::RequestAuthentication(s) => snap.request_authentications.push(config(obj, s)),
                Resource::Secret(s) => {
                    snap.secrets.insert((obj.meta.namespace.clone(), obj.meta.name.clone()), Arc::clone(s));
                }
                Resource::WorkloadEntry(s) => workload_entries.push((*obj, Arc::clone(s))),
                Resource::ServiceEntry(s) => service_entries.push((*obj, Arc::clone(s))),
                Resource::Service(s) => k8s_services.push((*obj, Arc::clone(s))),
                Resource::Endpoints(e) => {
                    endpoints.insert((obj.meta.namespace.clone(), obj.meta.name.clone()), e);
                }
                Resource::EndpointSlice(e) => {
                    if let Some(svc) = obj.meta.labels.get("kubernetes.io/service-name") {
                        slices.entry((obj.meta.namespace.clone(), svc.clone())).or_default().push(e);
                    }
                }
                Resource::Pod(p) => workloads.add_pod(obj, p),
                Resource::Role(r) => {
                    roles.insert((obj.meta.namespace.clone(), obj.meta.name.clone()), &**r);
                }
                Resource::ClusterRole(r) => {
                    cluster_roles.insert(obj.meta.name.clone(), &**r);
                }
                Resource::RoleBinding(b) => role_bindings.push((obj.meta.namespace.clone(), &**b)),
                Resource::ClusterRoleBinding(b) => cluster_role_bindings.push(&**b),
                Resource::Node(n) => {
                    workloads.node_regions.insert(
                        obj.meta.name.clone(),
                        n.metadata.labels.as_ref().and_then(|l| l.get(REGION_LABEL)).cloned().unwrap_or_default(),
                    );
                }
                _ => {}
            }
        }
        let oldest_first = |a: &Option<String>, an: (&str, &str), b: &Option<String>, bn: (&str, &str)| {
            // Objects without a timestamp (files) sort by namespace/name, after timed ones.
            (a.is_none(), a, an).cmp(&(b.is_none(), b, bn))
        };
        snap.virtual_services.sort_by(|(a, _), (b, _)| {
            oldest_first(&a.created, (&a.namespace, &a.name), &b.created, (&b.namespace, &b.name))
        });
        snap.destination_rules.sort_by(|(a, _), (b, _)| {
            oldest_first(&a.created, (&a.namespace, &a.name), &b.created, (&b.namespace, &b.name))
        });
        snap.gateways
            .sort_by(|a, b| oldest_first(&a.created, (&a.namespace, &a.name), &b.created, (&b.namespace, &b.name)));

        snap.secret_readers = SecretReaders::from_rbac(&roles, &cluster_roles, &role_bindings, &cluster_role_bindings);

        // istiod gives each host to the oldest VirtualService bound to sidecars; later ones
        // lose it silently. Spar says so.
        let mut claimed: BTreeMap<(String, &str), &Config<VirtualServiceSpec>> = BTreeMap::new();
        for (vs, hosts) in &snap.virtual_services {
            let mesh_bound = vs.spec.gateways.as_ref().is_none_or(|g| g.is_empty() || g.iter().any(|g| g == "mesh"));
            if !mesh_bound {
                continue;
            }
            for h in hosts {
                let scope = if vs.spec.export_to.as_ref().is_some_and(|e| e.iter().any(|x| x == ".")) {
                    vs.namespace.as_str()
                } else {
                    "*"
                };
                match claimed.get(&(h.clone(), scope)) {
                    Some(first) => snap.diagnostics.push(Diagnostic {
                        origin: vs.origin.clone(),
                        resource: vs.label("VirtualService"),
                        message: format!(
                            "host {h} is also claimed by the older {} ({}); sidecars use that one for this host",
                            first.label("VirtualService"),
                            first.origin
                        ),
                    }),
                    None => {
                        claimed.insert((h.clone(), scope), vs);
                    }
                }
            }
        }
        // WorkloadEntries by namespace: services only ever select in their own.
        let mut entries_by_ns: BTreeMap<&str, Vec<(&Object, Arc<WorkloadEntrySpec>)>> = BTreeMap::new();
        for (o, we) in &workload_entries {
            entries_by_ns.entry(o.meta.namespace.as_str()).or_default().push((*o, Arc::clone(we)));
        }
        let none = Vec::new();
        let mut external_names = Vec::new();
        for (obj, svc) in &k8s_services {
            if let Some(target) = external_name(svc) {
                external_names.push((*obj, Arc::clone(svc), target));
                continue;
            }
            let key = (obj.meta.namespace.clone(), obj.meta.name.clone());
            let wes = entries_by_ns.get(obj.meta.namespace.as_str()).unwrap_or(&none);
            let s = kube_service(
                obj,
                svc,
                endpoints.get(&key).copied(),
                slices.get(&key).map(Vec::as_slice),
                wes,
                &workloads,
                mesh,
            );
            snap.insert_service(s);
        }
        for (obj, se) in &service_entries {
            let wes = entries_by_ns.get(obj.meta.namespace.as_str()).unwrap_or(&none);
            for s in service_entry_services(obj, se, wes) {
                snap.insert_service(s);
            }
        }
        snap.add_external_names(&external_names);
        let root = snap.mesh.root_namespace.clone();
        snap.envoy_filters.sort_by(|a, b| {
            (a.namespace != root, a.spec.priority.unwrap_or(0), &a.created, &a.namespace, &a.name).cmp(&(
                b.namespace != root,
                b.spec.priority.unwrap_or(0),
                &b.created,
                &b.namespace,
                &b.name,
            ))
        });
        snap.build_index();
        snap.outbound_label_keys = snap.collect_outbound_label_keys();
        let tracing = snap.tracing_diagnostics();
        snap.diagnostics.extend(tracing);
        snap.diagnose_custom_policies();
        snap.diagnose_dangling_routes();
        snap
    }

    /// Kubernetes ExternalName Services, once every other service is in: one whose
    /// `externalName` is a host of the registry becomes an alias of it (istiod's
    /// behaviour since 1.21: its name routes like the target's); any other becomes a
    /// DNS service resolving the external name on the Service's ports (istiod's
    /// behaviour before 1.21, and what the Service means without a mesh).
    fn add_external_names(&mut self, external: &[(&Object, Arc<corev1::Service>, String)]) {
        for (obj, svc, target) in external {
            let hostname = format!("{}.{}.svc.{}", obj.meta.name, obj.meta.namespace, self.mesh.domain);
            if let Some(t) = self.services.get_mut(target) {
                let t = Arc::make_mut(t);
                if !t.aliases.contains(&hostname) {
                    t.aliases.push(hostname);
                }
                continue;
            }
            let spec = svc.spec.clone().unwrap_or_default();
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.name.clone().unwrap_or_default();
                    Some(ServicePort {
                        protocol: Protocol::from_port(&name, p.app_protocol.as_deref()),
                        port: u16_port(i64::from(p.port))?,
                        target_port: target_port(p.target_port.as_ref()).0,
                        name,
                    })
                })
                .collect();
            let endpoint = dns_endpoint(target, &ports, &obj.origin);
            self.insert_service(Service {
                hostname,
                namespace: obj.meta.namespace.clone(),
                name: obj.meta.name.clone(),
                addresses: Vec::new(),
                ports,
                endpoints: vec![endpoint],
                resolution: Resolution::Dns,
                mesh_external: true,
                export_to: export_to_annotation(obj),
                aliases: Vec::new(),
                origin: obj.origin.clone(),
            });
        }
    }

    fn insert_service(&mut self, s: Service) {
        if let Some(existing) = self.services.get(&s.hostname) {
            self.diagnostics.push(Diagnostic {
                origin: s.origin.clone(),
                resource: format!("{} {}/{}", "Service", s.namespace, s.name),
                message: format!(
                    "host {} is already defined at {}; this definition is ignored",
                    s.hostname, existing.origin
                ),
            });
            return;
        }
        self.services.insert(s.hostname.clone(), Arc::new(s));
    }

    /// The Gateways whose `selector` matches a gateway proxy's labels (an empty selector
    /// matches every gateway proxy, as in istiod), oldest first. Sidecars get none.
    pub fn gateways_for<'a>(&'a self, proxy: &'a Proxy) -> impl Iterator<Item = &'a Config<GatewaySpec>> + 'a {
        let router = proxy.kind == crate::ProxyKind::Router;
        self.gateways
            .iter()
            .filter(move |g| router && g.spec.selector.as_ref().is_none_or(|sel| selects(sel, &proxy.labels)))
    }

    /// VirtualServices bound to Gateway `gw_ns/gw_name` (their `gateways` names it as
    /// `ns/name`, or as `name` from the same namespace) and visible from `proxy_ns`, with
    /// their resolved hosts, oldest first.
    pub fn virtual_services_for_gateway<'a>(
        &'a self,
        proxy_ns: &'a str,
        gw_ns: &'a str,
        gw_name: &'a str,
    ) -> impl Iterator<Item = (&'a Config<VirtualServiceSpec>, &'a [String])> + 'a {
        self.virtual_services.iter().filter_map(move |(c, hosts)| {
            let bound = c.spec.gateways.iter().flatten().any(|g| gateway_ref_is(g, &c.namespace, gw_ns, gw_name));
            let visible = crate::export_allows(c.spec.export_to.as_deref().unwrap_or_default(), &c.namespace, proxy_ns);
            (bound && visible).then_some((c, hosts.as_slice()))
        })
    }

    /// The access logs of a workload in `namespace` with `labels`: from the Telemetry
    /// resources' `accessLogging` (workload selector over namespace over root
    /// namespace, the most specific level that says anything winning, `disabled` turning
    /// logging off), else MeshConfig's `accessLogFile`. Providers Spar cannot serve
    /// (not file access logs) are skipped.
    pub fn access_logs(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<FileAccessLog> {
        let logging = |t: &&Config<TelemetrySpec>| t.spec.access_logging.as_ref().is_some_and(|l| !l.is_empty());
        let no_selector = |t: &&Config<TelemetrySpec>| {
            t.spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()).is_none_or(BTreeMap::is_empty)
        };
        let workload = self.telemetries.iter().filter(|t| t.namespace == namespace).filter(logging).find(|t| {
            t.spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|l| !l.is_empty() && selects(l, labels))
        });
        let ns_level =
            || self.telemetries.iter().filter(|t| t.namespace == namespace).filter(logging).find(no_selector);
        let root = || {
            self.telemetries
                .iter()
                .filter(|t| t.namespace == self.mesh.root_namespace)
                .filter(logging)
                .find(no_selector)
        };
        let Some(t) = workload.or_else(ns_level).or_else(root) else {
            return self.mesh.access_log.iter().cloned().collect();
        };
        let mut out = Vec::new();
        for entry in t.spec.access_logging.iter().flatten() {
            if entry.disabled == Some(true) {
                return Vec::new();
            }
            for p in entry.providers.iter().flatten() {
                let found = self.mesh.access_log_providers.get(&p.name).cloned().or_else(|| {
                    (p.name == "envoy").then(|| FileAccessLog { path: "/dev/stdout".into(), ..Default::default() })
                });
                if let Some(f) = found.filter(|f| !out.contains(f)) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// The service a MeshConfig extension provider names (`service: [<namespace>/]<host>`,
    /// as istiod reads it for tracing collectors and ext_authz servers).
    pub fn provider_service(&self, service: &str) -> Option<&Arc<Service>> {
        let (ns, host) = match service.split_once('/') {
            Some((ns, host)) => (Some(ns), host),
            None => (None, service),
        };
        self.services.get(host).filter(|s| ns.is_none_or(|ns| s.namespace == ns))
    }

    /// The Sidecar that applies to `proxy`: one in its namespace whose selector matches
    /// its labels, else its namespace's selector-less one, else the root namespace's.
    pub fn sidecar_for<'a>(&'a self, proxy: &'a Proxy) -> Option<&'a Config<SidecarSpec>> {
        fn in_ns<'a>(
            sidecars: &'a [Config<SidecarSpec>],
            ns: &'a str,
        ) -> impl Iterator<Item = &'a Config<SidecarSpec>> + 'a {
            sidecars.iter().filter(move |s| s.namespace == ns)
        }
        let selected = in_ns(&self.sidecars, &proxy.namespace).find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .and_then(|w| w.labels.as_ref())
                .is_some_and(|l| !l.is_empty() && selects(l, &proxy.labels))
        });
        let no_selector = |s: &&Config<SidecarSpec>| {
            s.spec.workload_selector.as_ref().and_then(|w| w.labels.as_ref()).is_none_or(BTreeMap::is_empty)
        };
        selected
            .or_else(|| in_ns(&self.sidecars, &proxy.namespace).find(no_selector))
            .or_else(|| in_ns(&self.sidecars, &self.mesh.root_namespace).find(no_selector))
    }

    /// The mutual TLS mode for inbound traffic on `port` of a workload in `namespace` with
    /// `labels`: istiod's precedence is workload (selector) over namespace over mesh (root
    /// namespace), `UNSET` inheriting from the level above, port-level settings of the
    /// workload policy winning for their port; PERMISSIVE when nothing says otherwise.
    pub fn mtls_mode(&self, namespace: &str, labels: &BTreeMap<String, String>, port: u16) -> MtlsMode {
        fn oldest(it: Vec<&Config<PeerAuthenticationSpec>>) -> Option<&Config<PeerAuthenticationSpec>> {
            it.into_iter().min_by(|a, b| {
                (a.created.is_none(), &a.created, &a.name).cmp(&(b.created.is_none(), &b.created, &b.name))
            })
        }
        let no_selector = |c: &&Config<PeerAuthenticationSpec>| {
            c.spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()).is_none_or(BTreeMap::is_empty)
        };
        let mesh = oldest(
            self.peer_authentications
                .iter()
                .filter(|c| c.namespace == self.mesh.root_namespace)
                .filter(no_selector)
                .collect(),
        );
        let ns =
            oldest(self.peer_authentications.iter().filter(|c| c.namespace == namespace).filter(no_selector).collect());
        let workload = oldest(
            self.peer_authentications
                .iter()
                .filter(|c| c.namespace == namespace)
                .filter(|c| {
                    c.spec
                        .selector
                        .as_ref()
                        .and_then(|s| s.match_labels.as_ref())
                        .is_some_and(|l| !l.is_empty() && selects(l, labels))
                })
                .collect(),
        );
        let level = |c: Option<&Config<PeerAuthenticationSpec>>| {
            c.and_then(|c| c.spec.mtls.as_ref()).and_then(|m| m.mode.as_ref()).and_then(MtlsMode::from_mode)
        };
        let mut mode = level(mesh).unwrap_or(MtlsMode::Permissive);
        if let Some(m) = level(ns) {
            mode = m;
        }
        if let Some(m) = level(workload) {
            mode = m;
        }
        if let Some(pl) = workload.and_then(|w| w.spec.port_level_mtls.as_ref()).and_then(|m| m.get(&port.to_string()))
            && let Some(m) = pl.mode.as_ref().and_then(MtlsMode::from_port_mode)
        {
            mode = m;
        }
        mode
    }

    /// The DestinationRule for `host` as seen from `proxy_ns`: istiod's lookup order is
    /// the client's namespace, then the service's namespace, then the root namespace;
    /// within one namespace an exact host beats a wildcard, then the oldest wins.
    pub fn destination_rule_for(
        &self,
        proxy_ns: &str,
        proxy_labels: &BTreeMap<String, String>,
        service: &Service,
    ) -> Option<&Config<DestinationRuleSpec>> {
        let visible = |c: &Config<DestinationRuleSpec>| {
            crate::export_allows(c.spec.export_to.as_deref().unwrap_or_default(), &c.namespace, proxy_ns)
        };
        // A rule with a workloadSelector applies only to the matching workloads of its own
        // namespace, and wins over the namespace's selector-less rule for them.
        fn selector(c: &Config<DestinationRuleSpec>) -> Option<&BTreeMap<String, String>> {
            c.spec.workload_selector.as_ref().and_then(|w| w.match_labels.as_ref()).filter(|l| !l.is_empty())
        }
        let rank = |c: &Config<DestinationRuleSpec>| match selector(c) {
            None => Some(1),
            Some(sel) => (c.namespace == proxy_ns && selects(sel, proxy_labels)).then_some(0),
        };
        let find_in = |ns: &str| {
            let exact = self.index.dr_exact.get(ns).and_then(|m| m.get(&service.hostname)).into_iter().flatten();
            if let Some((c, _)) = exact
                .map(|i| &self.destination_rules[*i].0)
                .filter(|c| visible(c))
                .filter_map(|c| rank(c).map(|r| (c, r)))
                .min_by_key(|(_, r)| *r)
            {
                return Some(c);
            }
            // The most specific (longest) matching wildcard; the oldest among equals.
            let mut best: Option<(&Config<DestinationRuleSpec>, (u8, usize))> = None;
            for i in self.index.dr_wildcard.get(ns).into_iter().flatten() {
                let (c, h) = &self.destination_rules[*i];
                let Some(r) = rank(c) else { continue };
                let key = (1 - r, h.len());
                if visible(c) && host::matches(h, &service.hostname) && best.is_none_or(|(_, k)| key > k) {
                    best = Some((c, key));
                }
            }
            best.map(|(c, _)| c)
        };
        find_in(proxy_ns).or_else(|| find_in(&service.namespace)).or_else(|| find_in(&self.mesh.root_namespace))
    }

    /// The policies of `list` that apply to a workload in `namespace` with `labels`:
    /// those of the root namespace (mesh-wide, or by selector in every namespace) and of
    /// its own namespace, selector-less or selecting it; ordered by namespace and name.
    pub fn for_workload<'a, S>(
        &self,
        list: &'a [Config<S>],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        selector: impl Fn(&S) -> Option<&BTreeMap<String, String>>,
    ) -> Vec<&'a Config<S>> {
        let mut out: Vec<&Config<S>> = list
            .iter()
            .filter(|p| p.namespace == namespace || p.namespace == self.mesh.root_namespace)
            .filter(|p| selector(&p.spec).is_none_or(|sel| selects(sel, labels)))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    fn collect_outbound_label_keys(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let mut add =
            |m: Option<&BTreeMap<String, String>>| keys.extend(m.into_iter().flatten().map(|(k, _)| k.clone()));
        for s in &self.sidecars {
            add(s.spec.workload_selector.as_ref().and_then(|w| w.labels.as_ref()));
        }
        for (dr, _) in &self.destination_rules {
            add(dr.spec.workload_selector.as_ref().and_then(|w| w.match_labels.as_ref()));
        }
        for t in &self.telemetries {
            add(t.spec.selector.as_ref().and_then(|w| w.match_labels.as_ref()));
        }
        for f in &self.envoy_filters {
            add(f.spec.workload_selector.as_ref().and_then(|w| w.labels.as_ref()));
        }
        for (vs, _) in &self.virtual_services {
            for m in vs.spec.http.iter().flatten().flat_map(|r| r.r#match.iter().flatten()) {
                add(m.source_labels.as_ref());
            }
            for m in vs.spec.tcp.iter().flatten().flat_map(|r| r.r#match.iter().flatten()) {
                add(m.source_labels.as_ref());
            }
            for m in vs.spec.tls.iter().flatten().flat_map(|r| r.r#match.iter()) {
                add(m.source_labels.as_ref());
            }
        }
        keys
    }

    fn build_index(&mut self) {
        let mut idx = Index::default();
        for (i, (_, hosts)) in self.virtual_services.iter().enumerate() {
            for h in hosts {
                if h.starts_with('*') {
                    if idx.vs_wildcard.last() != Some(&i) {
                        idx.vs_wildcard.push(i);
                    }
                } else {
                    let v = idx.vs_exact.entry(h.clone()).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
            }
        }
        for (i, (c, h)) in self.destination_rules.iter().enumerate() {
            if h.starts_with('*') {
                idx.dr_wildcard.entry(c.namespace.clone()).or_default().push(i);
            } else {
                idx.dr_exact.entry(c.namespace.clone()).or_default().entry(h.clone()).or_default().push(i);
            }
        }
        self.index = idx;
    }

    /// VirtualServices visible from `proxy_ns` that bind to sidecars (`mesh`) and whose
    /// hosts match `hostname`, oldest first.
    pub fn virtual_services_for<'a>(
        &'a self,
        proxy_ns: &'a str,
        hostname: &'a str,
    ) -> impl Iterator<Item = &'a Config<VirtualServiceSpec>> + 'a {
        let exact = self.index.vs_exact.get(hostname).map(Vec::as_slice).unwrap_or_default();
        let wild = self
            .index
            .vs_wildcard
            .iter()
            .filter(move |i| self.virtual_services[**i].1.iter().any(|h| host::matches(h, hostname)));
        // Oldest first: merge the two ascending position lists.
        let mut positions: Vec<usize> = exact.iter().copied().chain(wild.copied()).collect();
        positions.sort_unstable();
        positions.dedup();
        positions.into_iter().filter_map(move |i| {
            let c = &self.virtual_services[i].0;
            let visible = crate::export_allows(c.spec.export_to.as_deref().unwrap_or_default(), &c.namespace, proxy_ns);
            let mesh_bound = c.spec.gateways.as_ref().is_none_or(|g| g.is_empty() || g.iter().any(|g| g == "mesh"));
            (visible && mesh_bound).then_some(c)
        })
    }
}

/// Whether `reference` (a VirtualService `gateways` entry, `name` or `ns/name`, written in
/// namespace `from_ns`) names Gateway `gw_ns/gw_name`.
pub fn gateway_ref_is(reference: &str, from_ns: &str, gw_ns: &str, gw_name: &str) -> bool {
    match reference.split_once('/') {
        Some((ns, name)) => ns == gw_ns && name == gw_name,
        // The legacy FQDN form (`name.ns.svc.cluster.local`), as istiod still reads it.
        None => match reference.split_once('.') {
            Some((name, rest)) => rest.split('.').next() == Some(gw_ns) && name == gw_name,
            None => from_ns == gw_ns && reference == gw_name,
        },
    }
}

fn target_port(p: Option<&IntOrString>) -> (Option<u16>, Option<String>) {
    match p {
        Some(IntOrString::Int(n)) => (u16_port(i64::from(*n)), None),
        Some(IntOrString::String(s)) => (None, Some(s.clone())),
        None => (None, None),
    }
}

/// Node label with the region (the zone comes with each EndpointSlice endpoint).
const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// What Pods (and their Nodes) say about the endpoints EndpointSlices list: labels,
/// service account, whether the pod has a sidecar that accepts Istio mTLS, locality.
#[derive(Default)]
struct Workloads<'a> {
    // Keyed by namespace, then name: lookups borrow the EndpointSlice's strings.
    by_name: BTreeMap<&'a str, BTreeMap<&'a str, PodInfo<'a>>>,
    by_ip: BTreeMap<&'a str, (&'a str, &'a str)>,
    node_regions: BTreeMap<String, String>,
}

struct PodInfo<'a> {
    labels: &'a BTreeMap<String, String>,
    service_account: &'a str,
    node: Option<&'a str>,
}

impl<'a> Workloads<'a> {
    fn add_pod(&mut self, obj: &'a Object, pod: &'a corev1::Pod) {
        let key = (obj.meta.namespace.as_str(), obj.meta.name.as_str());
        let spec = pod.spec.as_ref();
        // Host-network pods share the node's IP: they cannot be told apart by address.
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            return;
        }
        self.by_name.entry(key.0).or_default().insert(
            key.1,
            PodInfo {
                labels: &obj.meta.labels,
                service_account: spec.and_then(|s| s.service_account_name.as_deref()).unwrap_or("default"),
                node: spec.and_then(|s| s.node_name.as_deref()),
            },
        );
        let status = pod.status.as_ref();
        for ip in status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .chain(status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|i| i.ip.as_str()))
        {
            self.by_ip.insert(ip, key);
        }
    }

    /// The pod behind an EndpointSlice endpoint: its `targetRef`, else its address.
    fn pod(&self, ns: &str, ep: &discoveryv1::Endpoint, address: &str) -> Option<&PodInfo<'a>> {
        let by_ref = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| self.by_name.get(r.namespace.as_deref().unwrap_or(ns))?.get(r.name.as_deref()?));
        by_ref.or_else(|| self.by_ip.get(address).and_then(|(ns, name)| self.by_name.get(ns)?.get(name)))
    }

    /// Fills in what the pod knows; the locality is Istio's: the pod's `istio-locality`
    /// label (`region.zone.subzone`), else the node's region, the endpoint's zone and the
    /// node's `topology.istio.io/subzone`.
    fn enrich(&self, ns: &str, slice_ep: &discoveryv1::Endpoint, ep: &mut Endpoint) {
        let Some(pod) = self.pod(ns, slice_ep, &ep.address) else { return };
        ep.labels = pod.labels.clone();
        ep.service_account = pod.service_account.to_string();
        ep.istio_mtls = pod.labels.get("security.istio.io/tlsMode").is_some_and(|m| m == "istio");
        if let Some(l) = pod.labels.get("istio-locality") {
            ep.locality = l.replace('.', "/");
        } else {
            let region = pod.node.and_then(|n| self.node_regions.get(n)).map_or("", String::as_str);
            let subzone = pod.labels.get("topology.istio.io/subzone").map_or("", String::as_str);
            if !region.is_empty() || !subzone.is_empty() {
                ep.locality = format!("{region}/{}/{subzone}", ep.locality).trim_end_matches('/').to_string();
            }
        }
    }
}

/// A Kubernetes Service's `networking.istio.io/exportTo` annotation, as a list.
fn export_to_annotation(obj: &Object) -> Vec<String> {
    obj.meta
        .annotations
        .get("networking.istio.io/exportTo")
        .map(|s| s.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

/// The one endpoint of a DNS service: the host name Envoy resolves, on every port.
fn dns_endpoint(host: &str, ports: &[ServicePort], origin: &spar_api::Origin) -> Endpoint {
    Endpoint {
        address: host.to_string(),
        ports: ports.iter().map(|p| (p.port, p.target_port.unwrap_or(p.port))).collect(),
        labels: BTreeMap::new(),
        service_account: String::new(),
        locality: String::new(),
        weight: 0,
        ready: true,
        istio_mtls: false,
        origin: origin.clone(),
    }
}

/// The `externalName` of a Kubernetes Service of type ExternalName.
fn external_name(svc: &corev1::Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    spec.external_name.clone().filter(|n| !n.is_empty()).map(|n| n.trim_end_matches('.').to_string())
}

fn kube_service(
    obj: &Object,
    svc: &corev1::Service,
    endpoints: Option<&corev1::Endpoints>,
    slices: Option<&[&discoveryv1::EndpointSlice]>,
    workload_entries: &[(&Object, Arc<WorkloadEntrySpec>)],
    workloads: &Workloads<'_>,
    mesh: &MeshConfig,
) -> Service {
    let ns = &obj.meta.namespace;
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    let mut named_targets = BTreeMap::new();
    for p in spec.ports.iter().flatten() {
        let Some(port) = u16_port(i64::from(p.port)) else { continue };
        let name = p.name.clone().unwrap_or_default();
        let (num, named) = target_port(p.target_port.as_ref());
        if let Some(n) = named {
            named_targets.insert(port, n);
        }
        ports.push(ServicePort {
            protocol: Protocol::from_port(&name, p.app_protocol.as_deref()),
            name,
            port,
            target_port: num,
        });
    }
    ports.sort_by_key(|p| p.port);
    let mut eps = Vec::new();
    let origin_of = |o: &Object| o.origin.clone();
    // Endpoints: subsets of addresses × ports, ports matched to service ports by name.
    if let Some(e) = endpoints {
        for subset in e.subsets.iter().flatten() {
            let mut port_map = BTreeMap::new();
            for sp in &ports {
                let found = subset.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == sp.name || subset.ports.as_ref().is_some_and(|v| v.len() == 1)
                });
                if let Some(p) = found.and_then(|p| u16_port(i64::from(p.port))) {
                    port_map.insert(sp.port, p);
                }
            }
            let ready = subset.addresses.iter().flatten().map(|a| (a, true));
            let not_ready = subset.not_ready_addresses.iter().flatten().map(|a| (a, false));
            for (a, ready) in ready.chain(not_ready) {
                eps.push(Endpoint {
                    address: a.ip.clone(),
                    ports: port_map.clone(),
                    labels: BTreeMap::new(),
                    service_account: String::new(),
                    locality: String::new(),
                    weight: 0,
                    ready,
                    istio_mtls: false,
                    origin: origin_of(obj),
                });
            }
        }
    }
    for slice in slices.into_iter().flatten() {
        let mut port_map = BTreeMap::new();
        for sp in &ports {
            let found = slice.ports.iter().flatten().find(|p| p.name.clone().unwrap_or_default() == sp.name);
            if let Some(p) = found.and_then(|p| p.port).and_then(|p| u16_port(i64::from(p))) {
                port_map.insert(sp.port, p);
            }
        }
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for a in &ep.addresses {
                if eps.iter().any(|e: &Endpoint| &e.address == a) {
                    continue;
                }
                let mut endpoint = Endpoint {
                    address: a.clone(),
                    ports: port_map.clone(),
                    labels: BTreeMap::new(),
                    service_account: String::new(),
                    locality: ep.zone.clone().unwrap_or_default(),
                    weight: 0,
                    ready,
                    istio_mtls: false,
                    origin: origin_of(obj),
                };
                workloads.enrich(ns, ep, &mut endpoint);
                eps.push(endpoint);
            }
        }
    }
    // WorkloadEntries in the namespace selected by the Service's selector (istiod does
    // this so that VMs can back Kubernetes Services); they carry labels for subsets.
    if let Some(sel) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
        for (we_obj, we) in workload_entries.iter().filter(|(o, _)| &o.meta.namespace == ns) {
            let labels = we.labels.as_ref().unwrap_or(&we_obj.meta.labels);
            if !selects(sel, labels) {
                continue;
            }
            eps.push(workload_endpoint(we_obj, we, labels.clone(), &ports, &named_targets));
        }
    }
    Service {
        hostname: format!("{}.{ns}.svc.{}", obj.meta.name, mesh.domain),
        namespace: ns.clone(),
        name: obj.meta.name.clone(),
        addresses: spec.cluster_ip.iter().filter(|ip| ip.as_str() != "None" && !ip.is_empty()).cloned().collect(),
        ports,
        endpoints: eps,
        // Headless: no virtual IP; each endpoint is reached by its own address.
        resolution: if spec.cluster_ip.as_deref() == Some("None") {
            Resolution::Passthrough
        } else {
            Resolution::Static
        },
        mesh_external: false,
        export_to: export_to_annotation(obj),
        aliases: Vec::new(),
        origin: obj.origin.clone(),
    }
}

/// An endpoint from a WorkloadEntry: its `ports` map names service ports (by name) to
/// endpoint ports; unnamed ones use the service's target port, else the port itself.
fn workload_endpoint(
    obj: &Object,
    we: &WorkloadEntrySpec,
    labels: BTreeMap<String, String>,
    ports: &[ServicePort],
    named_targets: &BTreeMap<u16, String>,
) -> Endpoint {
    let mut port_map = BTreeMap::new();
    for sp in ports {
        let by_name = we.ports.as_ref().and_then(|m| m.get(&sp.name)).and_then(|p| u16_port(*p));
        let by_target_name = named_targets
            .get(&sp.port)
            .and_then(|n| we.ports.as_ref().and_then(|m| m.get(n)))
            .and_then(|p| u16_port(*p));
        port_map.insert(sp.port, by_name.or(by_target_name).or(sp.target_port).unwrap_or(sp.port));
    }
    // istiod's rule for WorkloadEntries: the `security.istio.io/tlsMode` label if present,
    // else Istio mTLS when a service account is set.
    let istio_mtls = match labels.get("security.istio.io/tlsMode") {
        Some(mode) => mode == "istio",
        None => we.service_account.as_deref().is_some_and(|sa| !sa.is_empty()),
    };
    Endpoint {
        address: we.address.clone().unwrap_or_default(),
        ports: port_map,
        labels,
        service_account: we.service_account.clone().unwrap_or_default(),
        locality: we.locality.clone().unwrap_or_default(),
        weight: we.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
        ready: true,
        istio_mtls,
        origin: obj.origin.clone(),
    }
}

fn service_entry_services(
    obj: &Object,
    se: &ServiceEntrySpec,
    workload_entries: &[(&Object, Arc<WorkloadEntrySpec>)],
) -> Vec<Service> {
    let ns = &obj.meta.namespace;
    let mut ports: Vec<ServicePort> = se
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone(),
                port: u16_port(p.number)?,
                protocol: p.protocol.as_deref().map_or_else(|| Protocol::from_port(&p.name, None), Protocol::parse),
                target_port: p.target_port.and_then(u16_port),
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    let resolution = match se.resolution {
        None | Some(ServiceEntryResolution::None) => Resolution::Passthrough,
        Some(ServiceEntryResolution::Static) => Resolution::Static,
        Some(ServiceEntryResolution::Dns) => Resolution::Dns,
        Some(ServiceEntryResolution::DynamicDns) => Resolution::DynamicDns,
        Some(ServiceEntryResolution::DnsRoundRobin) => Resolution::DnsRoundRobin,
    };
    let mut eps = Vec::new();
    for e in se.endpoints.iter().flatten() {
        let as_we = WorkloadEntrySpec {
            address: e.address.clone(),
            labels: e.labels.clone(),
            locality: e.locality.clone(),
            network: e.network.clone(),
            ports: e.ports.clone(),
            service_account: e.service_account.clone(),
            weight: e.weight,
        };
        eps.push(workload_endpoint(obj, &as_we, e.labels.clone().unwrap_or_default(), &ports, &BTreeMap::new()));
    }
    if let Some(sel) = se.workload_selector.as_ref().and_then(|w| w.labels.as_ref()) {
        for (we_obj, we) in workload_entries.iter().filter(|(o, _)| &o.meta.namespace == ns) {
            let labels = we.labels.as_ref().unwrap_or(&we_obj.meta.labels);
            if selects(sel, labels) {
                eps.push(workload_endpoint(we_obj, we, labels.clone(), &ports, &BTreeMap::new()));
            }
        }
    }
    let mut seen = BTreeSet::new();
    se.hosts
        .iter()
        .filter(|h| seen.insert(h.to_string()))
        .map(|h| {
            let mut endpoints = eps.clone();
            // DNS resolution without endpoints resolves the host itself.
            if endpoints.is_empty()
                && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && !h.starts_with('*')
            {
                endpoints.push(dns_endpoint(h, &ports, &obj.origin));
            }
            Service {
                hostname: h.clone(),
                namespace: ns.clone(),
                name: obj.meta.name.clone(),
                addresses: se.addresses.clone().unwrap_or_default(),
                ports: ports.clone(),
                endpoints,
                resolution,
                mesh_external: matches!(se.location, Some(ServiceEntryLocation::MeshExternal)),
                export_to: se.export_to.clone().unwrap_or_default(),
                aliases: Vec::new(),
                origin: obj.origin.clone(),
            }
        })
        .collect()
}

mod changes;
pub use changes::EndpointChanges;

#[cfg(test)]
mod tests;
