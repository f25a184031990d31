//! istiod's names that every generator uses: clusters and the HTTP filters routes
//! configure per route. Nothing here builds a resource.

/// Where ALLOW_ANY traffic to unknown hosts goes (original destination).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Where refused traffic goes: a cluster with no endpoints.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// `outbound|<port>|<subset>|<host>`.
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The HTTP fault filter's name (per-route config key).
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// The CORS filter's name (per-route config key).
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";
