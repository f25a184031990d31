//! Spar's domain model: the config store, the service registry built from it, and the
//! immutable snapshot that generators read.
//!
//! ```text
//!   sources ──► Store (objects per unit, with origins and errors)
//!                 │  Snapshot::build (after the debounce)
//!                 ▼
//!   Snapshot (Arc-shared, immutable): services by host, VirtualServices,
//!   DestinationRules, Sidecars, diagnostics ──► generators (per proxy)
//! ```

mod ext_authz;
mod host;
mod proxy;
mod rbac;
mod references;
mod service;
mod snapshot;
mod store;
mod telemetry;

pub use ext_authz::{
    DEFAULT_TIMEOUT as EXT_AUTHZ_DEFAULT_TIMEOUT, ExtAuthzApi, ExtAuthzProvider, HttpSettings, RequestBody,
};
pub use host::{matches as host_matches, resolve as resolve_host, short_forms};
pub use proxy::{ISTIO_VERSION, InterceptionMode, Proxy, ProxyError, ProxyKind};
pub use rbac::SecretReaders;
pub use service::{Endpoint, Protocol, Resolution, Service, ServicePort, export_allows};
pub use snapshot::{
    Config, DRY_RUN_ANNOTATION, Diagnostic, EndpointChanges, FileAccessLog, MeshConfig, MtlsMode, Snapshot,
    gateway_ref_is, go_bool, selects,
};
pub use store::{Duplicate, Store, Unit};
pub use telemetry::{OtelHttp, OtelProvider, Tracing, TracingProvider, TracingSpec};
