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
#[allow(deprecated)]
pub mod authz;
mod envoy;
mod jwt;
mod mtls;
mod policy;
mod routes;
mod scope;

use spar_model::{Proxy, Snapshot};

use crate::resources::ProxyResources;

pub use scope::Scope;

/// Everything a proxy gets from `snapshot`.
pub fn generate(snapshot: &Snapshot, proxy: &Proxy) -> ProxyResources {
    let scope = Scope::new(snapshot, proxy);
    let mut out = ProxyResources { snapshot_version: snapshot.version, ..Default::default() };
    envoy::outbound(&scope, &mut out);
    envoy::clusters(&scope, &mut out);
    envoy::inbound(&scope, &mut out);
    out
}

#[cfg(test)]
mod tests;
