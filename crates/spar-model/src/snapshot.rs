//! The immutable snapshot: services by host (from Kubernetes Services with
//! Endpoints/EndpointSlices/WorkloadEntries, and from ServiceEntries), and the Istio
//! routing objects indexed for generators.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use spar_api::istio::authorization_policy::AuthorizationPolicySpec;
use spar_api::istio::destination_rule::DestinationRuleSpec;
use spar_api::istio::gateway::GatewaySpec;
use spar_api::istio::peer_authentication::{
    PeerAuthenticationMtlsMode, PeerAuthenticationPortLevelMtlsMode, PeerAuthenticationSpec,
};
use spar_api::istio::request_authentication::RequestAuthenticationSpec;
use spar_api::istio::sidecar::SidecarSpec;
use spar_api::istio::telemetry::TelemetrySpec;
use spar_api::istio::virtual_service::VirtualServiceSpec;
use spar_api::istio::workload_entry::WorkloadEntrySpec;
use spar_api::{Object, Origin, Resource};

use crate::mesh::{FileAccessLog, MeshConfig};
use crate::rbac::SecretReaders;
use crate::selector::selects;
use crate::service::Service;
use crate::{Proxy, Store, host};
use registry::{REGION_LABEL, Workloads, external_name, kube_service, service_entry_services};

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
    /// Set when translated from Gateway API (istiod's `route-semantics: gateway`): its
    /// routes follow Gateway API's rules where they differ from Istio's, and a Gateway
    /// programs the proxies it names rather than those its `selector` would.
    pub generated: Option<Arc<crate::gateway_api::Generated>>,
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
    /// ReferenceGrants that let Gateways of one namespace use Secrets of another:
    /// (Gateway namespace, Secret namespace, Secret name or all of them).
    pub secret_grants: BTreeSet<(String, String, Option<String>)>,
    /// Secrets by (namespace, name), for `credentialName`.
    pub secrets: BTreeMap<(String, String), Arc<corev1::Secret>>,
    /// ConfigMaps by (namespace, name): CA bundles (`ca.crt`) for `configmap://`
    /// credentials, as Gateway API's client validation names them.
    pub config_maps: BTreeMap<(String, String), Arc<corev1::ConfigMap>>,
    /// Gateways, oldest first.
    pub gateways: Vec<Config<GatewaySpec>>,
    /// Telemetry resources.
    pub telemetries: Vec<Config<TelemetrySpec>>,
    /// EnvoyFilters, in the order istiod applies them: root namespace first, then by
    /// priority, creation time and name.
    pub envoy_filters: Vec<Config<spar_api::istio::envoy_filter::EnvoyFilterSpec>>,
    /// Problems found while building.
    pub diagnostics: Vec<Diagnostic>,
    /// The status of each Gateway API object Spar serves, as Gateway API asks for it
    /// (written by the status writer in Kubernetes; printed by `spar analyze`).
    pub gateway_api_status: Vec<crate::gateway_api::ObjectStatus>,
    /// Label keys any selector that shapes a sidecar's outbound config looks at
    /// (Sidecar and DestinationRule workload selectors, VirtualService `sourceLabels`,
    /// Telemetry selectors). Workloads that agree on these get the same outbound config.
    pub outbound_label_keys: BTreeSet<String>,
    /// When the only difference from the snapshot before (`since.from`) is endpoints of
    /// some services: which ([`BuildOptions::previous`]). Generators then redo only
    /// those services' clusters and load assignments.
    pub since: Option<EndpointChanges>,
    /// Lookup indexes over the lists above, built once per snapshot so that per-proxy
    /// generation does not scan every rule for every service.
    index: Index,
}

/// What a snapshot is built with besides the store and the mesh.
#[derive(Clone, Copy, Default)]
pub struct BuildOptions<'a> {
    /// The snapshot before this one: its endpoint-only changes are recorded (`since`).
    pub previous: Option<&'a Snapshot>,
    /// Checks only other crates can make (EnvoyFilter values against Envoy's schema),
    /// run on the built snapshot; their diagnostics are the snapshot's.
    pub checks: &'a [fn(&Snapshot) -> Vec<Diagnostic>],
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("previous", &self.previous.map(|p| p.version))
            .field("checks", &self.checks.len())
            .finish()
    }
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
        generated: None,
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
        Self::build_with(store, mesh, version, BuildOptions::default())
    }

    /// [`Self::build`], also recording what changed since `options.previous` and the
    /// diagnostics of `options.checks`: everything a snapshot holds is set while it is
    /// built, never after.
    pub fn build_with(store: &Store, mesh: &MeshConfig, version: u64, options: BuildOptions<'_>) -> Snapshot {
        let mut snap = Self::assemble(store, mesh, version);
        for check in options.checks {
            let found = check(&snap);
            snap.diagnostics.extend(found);
        }
        if let Some(prev) = options.previous {
            snap.since = snap.changes_since(prev);
        }
        snap
    }

    fn assemble(store: &Store, mesh: &MeshConfig, version: u64) -> Snapshot {
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
                Resource::ConfigMap(c) => {
                    snap.config_maps.insert((obj.meta.namespace.clone(), obj.meta.name.clone()), Arc::clone(c));
                }
                Resource::ReferenceGrant(g) => {
                    let gateway_api = crate::gateway_api::GROUP;
                    let to_secrets = g.to.iter().filter(|t| t.group.is_empty() && t.kind == "Secret");
                    for to in to_secrets {
                        for from in g.from.iter().filter(|f| f.group == gateway_api && f.kind == "Gateway") {
                            snap.secret_grants.insert((
                                from.namespace.clone(),
                                obj.meta.namespace.clone(),
                                to.name.clone(),
                            ));
                        }
                    }
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
        // Gateway API, as istiod serves it: translated into Istio Gateways and
        // VirtualServices, served like the rest.
        let translated = crate::gateway_api::translate(&objects, &mesh.domain);
        snap.gateways.extend(translated.gateways);
        for vs in translated.virtual_services {
            let hosts = vs.spec.hosts.iter().flatten().map(|h| host::resolve(h, &vs.namespace, &mesh.domain)).collect();
            snap.virtual_services.push((vs, hosts));
        }
        snap.diagnostics.extend(translated.diagnostics);
        snap.gateway_api_status = translated.statuses;
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

    pub(super) fn insert_service(&mut self, s: Service) {
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

    /// Whether a ReferenceGrant lets Gateways of `gateway_ns` use Secret `ns/name`.
    pub fn secret_granted(&self, gateway_ns: &str, ns: &str, name: &str) -> bool {
        self.secret_grants.contains(&(gateway_ns.to_string(), ns.to_string(), None))
            || self.secret_grants.contains(&(gateway_ns.to_string(), ns.to_string(), Some(name.to_string())))
    }

    /// The Gateways whose `selector` matches a gateway proxy's labels (an empty selector
    /// matches every gateway proxy, as in istiod), oldest first. Sidecars get none.
    /// A Gateway translated from Gateway API programs the proxies behind its Service
    /// instead (their namespace and labels).
    pub fn gateways_for<'a>(&'a self, proxy: &'a Proxy) -> impl Iterator<Item = &'a Config<GatewaySpec>> + 'a {
        let router = proxy.kind == crate::ProxyKind::Router;
        self.gateways.iter().filter(move |g| {
            router
                && match g.generated.as_ref().and_then(|t| t.proxies.as_ref()) {
                    Some(p) => p.namespace == proxy.namespace && selects(&p.labels, &proxy.labels),
                    None => {
                        g.generated.is_none() && g.spec.selector.as_ref().is_none_or(|sel| selects(sel, &proxy.labels))
                    }
                }
        })
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
    /// hosts match `hostname`, oldest first (Gateway API routes of the proxy's own
    /// namespace before all).
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
        // Gateway API routes (GAMMA) apply to a Service from its own namespace (the
        // producer's) or from the client's (the consumer's, which comes first), as in
        // istiod.
        let consumer = |c: &Config<VirtualServiceSpec>| c.generated.is_some() && c.namespace == proxy_ns;
        if positions.iter().any(|i| consumer(&self.virtual_services[*i].0)) {
            positions.sort_by_key(|i| !consumer(&self.virtual_services[*i].0));
        }
        positions.into_iter().filter_map(move |i| {
            let c = &self.virtual_services[i].0;
            let visible = match &c.generated {
                Some(_) => {
                    c.namespace == proxy_ns || self.services.get(hostname).is_some_and(|s| s.namespace == c.namespace)
                }
                None => crate::export_allows(c.spec.export_to.as_deref().unwrap_or_default(), &c.namespace, proxy_ns),
            };
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

mod changes;
mod registry;
pub use changes::EndpointChanges;

#[cfg(test)]
mod tests;
