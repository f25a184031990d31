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
pub mod gateway_api;
mod host;
mod mesh;
mod proxy;
mod rbac;
mod references;
mod selector;
mod service;
mod snapshot;
mod store;
mod telemetry;

pub use ext_authz::{
    DEFAULT_TIMEOUT as EXT_AUTHZ_DEFAULT_TIMEOUT, ExtAuthzApi, ExtAuthzProvider, HttpSettings, RequestBody,
};
pub use host::{
    matches as host_matches, overlaps as hosts_overlap, resolve as resolve_host,
    resource_name as resource_name_from_host, short_forms, to_fqdn,
};
pub use mesh::{FileAccessLog, MeshConfig, MeshConfigError, OtelHttp, OtelProvider, TracingProvider};
pub use proxy::{ISTIO_VERSION, InterceptionMode, Proxy, ProxyError, ProxyKind};
pub use rbac::SecretReaders;
pub use selector::{LabelSelectorRequirement, label_selector_matches, selects};
pub use service::{Endpoint, Protocol, Resolution, Service, ServicePort, export_allows};
pub use snapshot::{
    BuildOptions, Config, DRY_RUN_ANNOTATION, Diagnostic, EndpointChanges, MtlsMode, Snapshot, gateway_ref_is, go_bool,
};
pub use store::{Duplicate, Store, Unit};
pub use telemetry::{Tracing, TracingSpec};
