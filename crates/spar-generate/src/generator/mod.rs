//! Generators: pure functions `(snapshot, proxy) -> resources`, where Istio's
//! semantics live. Names follow istiod exactly (listeners `<bind>_<port>`, route configs
//! `<port>` or `<bind>:<port>`, virtual hosts `<host>:<port>`, clusters
//! `outbound|<port>|<subset>|<host>` and `inbound|<port>||`), and only stock Envoy
//! extensions are used.
//!
//! ```text
//!   Scope (Sidecar egress/ingress, visible services)
//!     ├─ outbound: per egress listener and port ─► Listener (HCM+RDS | tcp_proxy)
//!     │                                          ─► RouteConfiguration (vhost per service,
//!     │                                              routes from VirtualServices)
//!     ├─ clusters: per service port (+ DestinationRule subsets) ─► Cluster (EDS | DNS)
//!     │                                                         ─► ClusterLoadAssignment
//!     └─ inbound: per Sidecar ingress listener ─► Listener + Cluster inbound|<port>||
//! ```

// JWT claims are matched through RBAC's metadata principal, deprecated upstream in favour
// of a newer matcher but what istiod generates and what Envoy 1.36-1.40 still accept.
pub mod authz;
#[allow(deprecated)]
mod authz_rules;
mod clusters;
mod credentials;
mod envoy;
pub mod envoy_filter;
mod ext_authz;
mod gateway;
mod gateway_servers;
mod gateway_tls;
mod inbound;
pub mod jwt;
mod l4;
mod listeners;
mod mtls;
mod names;
mod policy;
mod route_actions;
mod routes;
mod scope;
mod telemetry;

use spar_model::{Proxy, ProxyKind, Snapshot};

use crate::resources::{ProxyResources, ResourceType};

pub use scope::Scope;

/// Everything a proxy gets from `snapshot`.
pub fn generate(snapshot: &Snapshot, proxy: &Proxy) -> ProxyResources {
    let mut out = generate_shared(snapshot, proxy);
    add_workload_specific(snapshot, proxy, &mut out);
    out
}

/// The part of a proxy's config that does not depend on its own addresses or name
/// (outbound listeners and routes, clusters, endpoints): identical for every replica of a
/// workload, so it can be generated once per snapshot and shared ([`share_key`]).
pub fn generate_shared(snapshot: &Snapshot, proxy: &Proxy) -> ProxyResources {
    let scope = Scope::new(snapshot, proxy);
    let mut out = ProxyResources::new(snapshot.version);
    match proxy.kind {
        ProxyKind::Sidecar => listeners::outbound(&scope, &mut out),
        ProxyKind::Router => gateway::listeners(&scope, &mut out),
    }
    clusters::clusters(&scope, &mut out);
    add_warnings(&scope, &mut out);
    for w in scope.dangling_routes(&out) {
        if !out.warnings.contains(&w) {
            out.warnings.push(w);
        }
    }
    envoy_filter::apply(&scope, envoy_filter::Part::Shared, &mut out);
    out
}

/// [`generate_shared`] for a snapshot whose only change since the one `prev` was
/// generated from is some services' endpoints ([`Snapshot::since`]): `prev` with those
/// services' clusters and load assignments generated again. Listeners and routes do not
/// depend on endpoints; clusters do (subject alternative names from the endpoints'
/// service accounts, the inline endpoints of DNS clusters), so they are redone too.
/// `None` when it does not apply: more changed, `prev` is from another snapshot, or a
/// gateway (whose listeners follow endpoint ports).
pub fn regenerate_shared(
    snapshot: &Snapshot,
    proxy: &Proxy,
    prev: &std::sync::Arc<ProxyResources>,
) -> Option<ProxyResources> {
    let since = snapshot.since.as_ref()?;
    // EnvoyFilters may patch the clusters redone here: generated whole instead.
    if proxy.kind != ProxyKind::Sidecar || prev.snapshot_version != since.from || !snapshot.envoy_filters.is_empty() {
        return None;
    }
    let scope = Scope::new(snapshot, proxy);
    let services: Vec<_> = scope.services.iter().copied().filter(|s| since.hosts.contains(&s.hostname)).collect();
    let mut fresh = ProxyResources::new(snapshot.version);
    clusters::service_clusters(&scope, &services, &mut fresh);
    // `outbound|<port>|<subset>|<host>`: host names have no `|`.
    let touched = |name: &str| {
        name.strip_prefix("outbound|").and_then(|n| n.rsplit('|').next()).is_some_and(|h| since.hosts.contains(h))
    };
    Some(ProxyResources::patched(prev, &[ResourceType::Cluster, ResourceType::Endpoint], touched, fresh))
}

/// Whether what [`add_workload_specific`] makes for `proxy` from `snapshot` is what it
/// made from the snapshot numbered `prev`: only endpoints changed in between, and none at
/// the proxy's own addresses (a sidecar's inbound side reads endpoints only to find the
/// services and ports its own address serves). Gateways are always generated again.
pub fn workload_specific_unchanged(snapshot: &Snapshot, proxy: &Proxy, prev: u64) -> bool {
    let Some(since) = &snapshot.since else { return false };
    since.from == prev
        && proxy.kind == ProxyKind::Sidecar
        && proxy.ips.iter().all(|ip| !since.addresses.contains(&ip.to_string()))
}

/// The scope's warnings (tracing left out) into the proxy's, once each.
fn add_warnings(scope: &Scope<'_>, out: &mut ProxyResources) {
    for w in &scope.tracing.warnings {
        if !out.warnings.contains(w) {
            out.warnings.push(w.clone());
        }
    }
}

/// Adds what is specific to this proxy instance (inbound listeners and clusters, which
/// bind or point at its own IP) to the shared part.
pub fn add_workload_specific(snapshot: &Snapshot, proxy: &Proxy, out: &mut ProxyResources) {
    let scope = Scope::workload(snapshot, proxy);
    match proxy.kind {
        ProxyKind::Sidecar => inbound::inbound(&scope, out),
        // Gateways have no inbound side; they may validate JWTs.
        ProxyKind::Router => inbound::jwks_clusters(&scope, out),
    }
    add_warnings(&scope, out);
    envoy_filter::apply(&scope, envoy_filter::Part::Inbound, out);
}

/// Everything [`generate_shared`] reads from the proxy: proxies with equal keys get equal
/// shared config from the same snapshot. For sidecars only the labels some selector looks
/// at count (`Snapshot::outbound_label_keys`), and of the proven identity only its trust
/// domain, so that all workloads of a namespace usually share one copy; gateways keep
/// every label (Gateway selectors, policies) and their addresses (port mapping).
pub fn share_key(snapshot: &Snapshot, proxy: &Proxy) -> ShareKey {
    let router = proxy.kind == ProxyKind::Router;
    let labels = proxy
        .labels
        .iter()
        .filter(|(k, _)| router || snapshot.outbound_label_keys.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Outbound spans carry the workload's service name and canonical labels: they tell
    // workloads apart only when this proxy's client side traces.
    let traced = snapshot.tracing_configured() && snapshot.tracing(&proxy.namespace, &proxy.labels).client.is_some();
    let label = |k: &str| proxy.labels.get(k).cloned().unwrap_or_default();
    ShareKey {
        kind: proxy.kind,
        namespace: proxy.namespace.clone(),
        interception: proxy.interception,
        locality: proxy.locality.clone(),
        trust_domain: proxy.identity.as_deref().map(|i| mtls::trust_domain(i).to_string()),
        listen_address: proxy.listen_address,
        labels,
        ips: if router { proxy.ips.clone() } else { Vec::new() },
        // EnvoyFilter `match.proxy.proxyVersion` reads the version the proxy reports.
        istio_version: (!snapshot.envoy_filters.is_empty()).then(|| proxy.istio_version.clone()),
        trace: traced.then(|| {
            [
                telemetry::service_name(proxy).to_string(),
                label("service.istio.io/canonical-name"),
                label("service.istio.io/canonical-revision"),
            ]
        }),
    }
}

/// What a proxy's shared config depends on ([`share_key`]): proxies with equal keys
/// share one generated copy per snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShareKey {
    /// Sidecar or router: layers of the same kind share the most with each other.
    pub kind: ProxyKind,
    namespace: String,
    interception: spar_model::InterceptionMode,
    locality: String,
    /// The trust domain of the proven identity, if any.
    trust_domain: Option<String>,
    listen_address: Option<std::net::IpAddr>,
    /// The labels some selector looks at (a router's: all of them).
    labels: Vec<(String, String)>,
    /// A router's addresses (port mapping); none for a sidecar.
    ips: Vec<std::net::IpAddr>,
    /// When EnvoyFilters exist: the version the proxy reports.
    istio_version: Option<String>,
    /// When the client side traces: service name, canonical name and revision.
    trace: Option<[String; 3]>,
}

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod telemetry_tests;
#[cfg(test)]
mod tests;
