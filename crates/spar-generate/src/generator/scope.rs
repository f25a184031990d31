//! What one proxy can see: its Sidecar resource, its egress listeners and the services
//! each imports (Sidecar `egress[].hosts`, `exportTo`).

use std::sync::Arc;

use spar_api::istio::sidecar::SidecarSpec;
use spar_model::{Config, InterceptionMode, Protocol, Proxy, ProxyKind, Service, Snapshot, host_matches};

/// One egress listener: where it binds, its port (when the Sidecar fixes one), and the
/// services it imports.
#[derive(Debug)]
pub struct Egress<'a> {
    /// Bind address.
    pub bind: String,
    /// Fixed port and protocol (`egress[].port`).
    pub port: Option<(u16, Protocol)>,
    /// Imported services, by host name.
    pub services: Vec<&'a Arc<Service>>,
}

/// A proxy's view of the snapshot.
#[derive(Debug)]
pub struct Scope<'a> {
    /// The snapshot.
    pub snap: &'a Snapshot,
    /// The proxy.
    pub proxy: &'a Proxy,
    /// The Sidecar resource that applies, if any.
    pub sidecar: Option<&'a Config<SidecarSpec>>,
    /// Egress listeners (one default listener when no Sidecar says otherwise).
    pub egress: Vec<Egress<'a>>,
    /// Every imported service (union over egress listeners).
    pub services: Vec<&'a Arc<Service>>,
    /// Traffic to hosts outside the registry is refused (Sidecar or mesh
    /// `outboundTrafficPolicy: REGISTRY_ONLY`).
    pub registry_only: bool,
    /// Access loggers for every connection manager and TCP proxy (Telemetry, MeshConfig).
    pub access_logs: Vec<envoy_types::pb::envoy::config::accesslog::v3::AccessLog>,
    /// Tracing for the client and server connection managers (Telemetry, MeshConfig),
    /// with the warnings of what was left out.
    pub tracing: super::telemetry::HcmTracing,
    /// The `outbound|...` clusters routes and TCP proxies were pointed at while
    /// generating, checked against the clusters generated ([`Scope::dangling_routes`]).
    pub routed: std::cell::RefCell<std::collections::BTreeSet<String>>,
    /// Some imported service resolves DYNAMIC_DNS: connection managers carry the dynamic
    /// forward proxy's filter (found once here, not per connection manager).
    pub dynamic_dns: bool,
}

/// Whether Sidecar egress host `pattern` (`ns/host`) imports `svc` for a proxy in `proxy_ns`.
fn imports(pattern: &str, svc: &Service, proxy_ns: &str) -> bool {
    let (ns, h) = pattern.split_once('/').unwrap_or(("*", pattern));
    let ns_ok = match ns {
        "*" => true,
        "." => svc.namespace == proxy_ns,
        "~" => false,
        other => svc.namespace == other,
    };
    ns_ok && host_matches(h, &svc.hostname)
}

impl<'a> Scope<'a> {
    /// The scope of `proxy` for its own (inbound) config: the Sidecar, capture, policies
    /// and access logs, without the outbound egress listeners and imported services,
    /// which only the shared part needs (and which cost a pass over every service).
    pub fn workload(snap: &'a Snapshot, proxy: &'a Proxy) -> Self {
        Self::build(snap, proxy, false)
    }

    /// Computes the scope of `proxy`.
    pub fn new(snap: &'a Snapshot, proxy: &'a Proxy) -> Self {
        Self::build(snap, proxy, true)
    }

    fn build(snap: &'a Snapshot, proxy: &'a Proxy, outbound: bool) -> Self {
        let visible: Vec<&Arc<Service>> = if outbound {
            snap.services.values().filter(|s| s.visible_to(&proxy.namespace)).collect()
        } else {
            Vec::new()
        };
        // Sidecar resources scope sidecars; gateways see every service visible to them.
        let sidecar = if proxy.kind == ProxyKind::Router { None } else { snap.sidecar_for(proxy) };
        // Without capture, listeners bind where the Sidecar says, else on loopback as istiod does.
        let default_bind = if proxy.interception == InterceptionMode::None { "127.0.0.1" } else { "0.0.0.0" };
        let mut egress = Vec::new();
        for e in sidecar.iter().flat_map(|s| s.spec.egress.iter().flatten()) {
            let port = e.port.as_ref().and_then(|p| {
                let n = u16::try_from(p.number?).ok()?;
                let proto = p
                    .protocol
                    .as_deref()
                    .map_or_else(|| Protocol::from_port(p.name.as_deref().unwrap_or(""), None), Protocol::parse);
                Some((n, proto))
            });
            let services =
                visible.iter().copied().filter(|s| e.hosts.iter().any(|h| imports(h, s, &proxy.namespace))).collect();
            egress.push(Egress {
                bind: e.bind.clone().filter(|b| !b.is_empty()).unwrap_or_else(|| default_bind.into()),
                port,
                services,
            });
        }
        if !outbound {
            egress.clear();
        } else if egress.is_empty() {
            egress.push(Egress { bind: default_bind.into(), port: None, services: visible.clone() });
        }
        let mut services: Vec<&Arc<Service>> = egress.iter().flat_map(|e| e.services.iter().copied()).collect();
        services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        services.dedup_by(|a, b| a.hostname == b.hostname);
        use spar_api::istio::sidecar::SidecarOutboundTrafficPolicyMode as Mode;
        let registry_only =
            match sidecar.and_then(|s| s.spec.outbound_traffic_policy.as_ref()).and_then(|p| p.mode.as_ref()) {
                Some(Mode::RegistryOnly) => true,
                Some(Mode::AllowAny) => false,
                None => snap.mesh.registry_only,
            };
        let mut scope = Self {
            snap,
            proxy,
            sidecar,
            egress,
            services,
            registry_only,
            access_logs: Vec::new(),
            tracing: Default::default(),
            routed: Default::default(),
            dynamic_dns: false,
        };
        scope.dynamic_dns = scope.services.iter().any(|s| s.resolution == spar_model::Resolution::DynamicDns);
        scope.access_logs = super::telemetry::access_logs(&scope);
        scope.tracing = super::telemetry::tracing(&scope, |svc| scope.imports(svc));
        scope
    }

    /// Records that a route or TCP proxy sends to cluster `name`; returns it.
    pub fn route_to(&self, name: String) -> String {
        self.routed.borrow_mut().insert(name.clone());
        name
    }

    /// A warning for each cluster a route sends to that `out` does not have, saying why:
    /// Envoy answers those requests 503 (`NC`). The VirtualService itself is named, with
    /// its file:line, by the snapshot's diagnostics.
    pub fn dangling_routes(&self, out: &crate::resources::ProxyResources) -> Vec<String> {
        let clusters = out.of(crate::ResourceType::Cluster);
        let mut warnings = Vec::new();
        for name in self.routed.borrow().iter() {
            if clusters.is_some_and(|c| c.contains_key(name)) {
                continue;
            }
            let mut parts = name.splitn(4, '|').skip(1);
            let (port, subset, host) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let why = match self.snap.services.get(host) {
                None => format!("{host} is not in the service registry"),
                Some(svc) if !self.imports(svc) => {
                    format!("{host} is not visible to this proxy (Sidecar egress hosts or exportTo)")
                }
                Some(svc) if port.parse().ok().and_then(|p| svc.port(p)).is_none() => {
                    format!("{host} has no port {port}")
                }
                Some(_) if !subset.is_empty() => {
                    format!("subset {subset:?} is not defined by the DestinationRule that applies to {host}")
                }
                Some(_) => "it was not generated".to_string(),
            };
            warnings.push(format!(
                "routes send to cluster {name}, which this proxy does not have ({why}): Envoy answers 503 (NC)"
            ));
        }
        warnings
    }

    /// Whether the proxy imports `svc` (so that its outbound clusters exist): visible to
    /// the proxy's namespace, and named by an egress listener of its Sidecar if it has
    /// some. The same answer whether or not this scope lists the outbound services.
    pub fn imports(&self, svc: &Service) -> bool {
        if !svc.visible_to(&self.proxy.namespace) {
            return false;
        }
        let mut egress = self.sidecar.iter().flat_map(|s| s.spec.egress.iter().flatten()).peekable();
        egress.peek().is_none() || egress.any(|e| e.hosts.iter().any(|h| imports(h, svc, &self.proxy.namespace)))
    }
}
