//! Delivery: the ADS server that sends what `spar-generate` makes to Envoy.
//!
//! ```text
//!   Snapshot ─► generation_cache (one shared layer per share key) ─► ProxyResources
//!                                                                        │
//!   Envoy ◄─ wire (encoded blocks, limits) ◄─ server (one task per stream) ◄─ conn::Connection
//!                                                                       (I/O-free, SotW and delta)
//! ```
//!
//! What sending a layer needs (names, digests, version hashes, wire blocks) is derived
//! once per layer by [`layer_cache`].

pub mod auth;
pub mod conn;
pub mod csr;
mod generation_cache;
pub mod layer_cache;
mod metrics;
pub mod node;
pub mod rejections;
pub mod request;
pub mod response;
pub mod sds;
pub mod server;
mod sync;
pub mod wire;

use spar_generate::resources;

pub use response::Resources;
pub use spar_generate::{Encoded, ProxyResources, ResourceType, type_url};
