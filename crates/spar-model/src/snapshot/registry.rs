//! The service registry: services from Kubernetes Services (with their Endpoints,
//! EndpointSlices, Pods and the WorkloadEntries they select) and from ServiceEntries,
//! as istiod's registries build them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spar_api::Object;
use spar_api::istio::service_entry::{ServiceEntryLocation, ServiceEntryResolution, ServiceEntrySpec};
use spar_api::istio::workload_entry::WorkloadEntrySpec;

use super::{MeshConfig, selects, u16_port};
use crate::service::{Endpoint, Protocol, Resolution, Service, ServicePort};

fn target_port(p: Option<&IntOrString>) -> (Option<u16>, Option<String>) {
    match p {
        Some(IntOrString::Int(n)) => (u16_port(i64::from(*n)), None),
        Some(IntOrString::String(s)) => (None, Some(s.clone())),
        None => (None, None),
    }
}

/// Node label with the region (the zone comes with each EndpointSlice endpoint).
pub(super) const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// What Pods (and their Nodes) say about the endpoints EndpointSlices list: labels,
/// service account, whether the pod has a sidecar that accepts Istio mTLS, locality.
#[derive(Default)]
pub(super) struct Workloads<'a> {
    // Keyed by namespace, then name: lookups borrow the EndpointSlice's strings.
    by_name: BTreeMap<&'a str, BTreeMap<&'a str, PodInfo<'a>>>,
    by_ip: BTreeMap<&'a str, (&'a str, &'a str)>,
    pub(super) node_regions: BTreeMap<String, String>,
}

pub(super) struct PodInfo<'a> {
    labels: &'a BTreeMap<String, String>,
    service_account: &'a str,
    node: Option<&'a str>,
}

impl<'a> Workloads<'a> {
    pub(super) fn add_pod(&mut self, obj: &'a Object, pod: &'a corev1::Pod) {
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
    pub(super) fn pod(&self, ns: &str, ep: &discoveryv1::Endpoint, address: &str) -> Option<&PodInfo<'a>> {
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
    pub(super) fn enrich(&self, ns: &str, slice_ep: &discoveryv1::Endpoint, ep: &mut Endpoint) {
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
pub(super) fn external_name(svc: &corev1::Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    spec.external_name.clone().filter(|n| !n.is_empty()).map(|n| n.trim_end_matches('.').to_string())
}

pub(super) fn kube_service(
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
pub(super) fn workload_endpoint(
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

pub(super) fn service_entry_services(
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

impl super::Snapshot {
    /// Kubernetes ExternalName Services, once every other service is in: one whose
    /// `externalName` is a host of the registry becomes an alias of it (istiod's
    /// behaviour since 1.21: its name routes like the target's); any other becomes a
    /// DNS service resolving the external name on the Service's ports (istiod's
    /// behaviour before 1.21, and what the Service means without a mesh).
    pub(super) fn add_external_names(&mut self, external: &[(&Object, Arc<corev1::Service>, String)]) {
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
}
