//! Envoy resources from Spar's snapshot: pure functions, no I/O.
//!
//! ```text
//!   Snapshot × Proxy ─► generator::generate ─► ProxyResources (plain data: encoded
//!                        = generate_shared        resources by ResourceType and name,
//!                        + add_workload_specific  a shared layer and the proxy's own)
//!
//!   ProxyResources ─► explain (where a request goes) · summary (proxy-config rows)
//! ```
//!
//! Delivery (subscriptions, the connection state machine, the wire) is `spar-xds`; it
//! reads [`ProxyResources`] and keeps what it derives from a layer in the layer's
//! [`resources::Derived`] slot.

pub mod bootstrap;
pub mod explain;
pub mod generator;
pub mod resources;
pub mod summary;
pub mod support;

pub use generator::generate;
pub use resources::{Encoded, ProxyResources, ResourceType, type_url};

/// Names of the SDS secrets every proxy is sent (Istio's): its workload certificate and
/// the mesh's root of trust.
pub mod secret_names {
    /// The workload certificate and key (Istio's `default`).
    pub const DEFAULT_SECRET: &str = "default";
    /// The root certificate bundle (Istio's `ROOTCA`).
    pub const ROOT_SECRET: &str = "ROOTCA";
}
