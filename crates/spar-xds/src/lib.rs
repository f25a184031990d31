//! Envoy resources from Spar's snapshot, and the ADS server that delivers them.
//!
//! ```text
//!   Snapshot ─┬─► gen::generate(snapshot, proxy) ─► ProxyResources (encoded once, versioned)
//!             │                                            │
//!             └─ watch ─► server (one task per stream) ─► conn::Connection (I/O-free) ─► Envoy
//! ```

pub mod auth;
pub mod bootstrap;
pub mod conn;
pub mod csr;
pub mod explain;
mod generation_cache;
pub mod generator;
mod metrics;
pub mod node;
pub mod rejections;
pub mod request;
pub mod resources;
pub mod sds;
pub mod server;
pub mod summary;
pub mod support;
mod sync;
pub mod wire;

pub use generator::generate;
pub use resources::{Encoded, ProxyResources, type_url};
