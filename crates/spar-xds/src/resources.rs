//! Encoded Envoy resources, as generated for one proxy from one snapshot.
//!
//! A resource is encoded once into an `Any` and given a content version (a hash of
//! its bytes), so that the connection state machine compares versions instead of
//! protos and resends only what changed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// Envoy's type URLs for the resource types Spar serves.
pub mod type_url {
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// SDS.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Push order that avoids traffic loss: clusters before the endpoints that warm them,
    /// listeners before the routes they reference (Envoy's "make before break").
    pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

    /// Short name for logs and metrics (`cds`, `eds`, ...).
    pub fn short(type_url: &str) -> &'static str {
        match type_url {
            LISTENER => "lds",
            ROUTE => "rds",
            CLUSTER => "cds",
            ENDPOINT => "eds",
            SECRET => "sds",
            _ => "unknown",
        }
    }

    /// Types whose empty subscription means "everything" (SotW legacy wildcard).
    pub fn is_wildcard_type(type_url: &str) -> bool {
        matches!(type_url, LISTENER | CLUSTER)
    }
}

/// One encoded resource with its content version.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Resource name (listener name, route config name, cluster name, ...).
    pub name: String,
    /// Content version: a hash of the encoded bytes.
    pub version: String,
    /// The resource, packed.
    pub any: Any,
}

impl Encoded {
    /// Encodes `msg` under `name`.
    pub fn new<M: Message + Name>(name: impl Into<String>, msg: &M) -> Self {
        let value = msg.encode_to_vec();
        let version = content_version(&value);
        Self { name: name.into(), version, any: Any { type_url: M::type_url(), value } }
    }
}

/// A stable hex digest of `bytes`, used as a resource version.
pub fn content_version(bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// All resources of one type for one proxy, by name.
pub type TypeResources = BTreeMap<String, Arc<Encoded>>;

/// Everything generated for one proxy from one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyResources {
    /// Version of the snapshot these were generated from.
    pub snapshot_version: u64,
    /// Resources per type URL.
    pub by_type: BTreeMap<&'static str, TypeResources>,
    /// What generation had to leave out for this proxy and why (a Gateway server whose
    /// credential is missing, a conflicting server, shadowed routes), one line each,
    /// naming the resource. Logged when they change and shown in the sync status.
    pub warnings: Vec<String>,
}

impl ProxyResources {
    /// The resources of one type (empty when none were generated).
    pub fn of(&self, type_url: &str) -> Option<&TypeResources> {
        self.by_type.get(type_url)
    }

    /// Adds a resource of type `M`.
    pub fn insert<M: Message + Name>(&mut self, type_url: &'static str, name: impl Into<String>, msg: &M) {
        let e = Encoded::new(name, msg);
        self.by_type.entry(type_url).or_default().insert(e.name.clone(), Arc::new(e));
    }

    /// Total encoded size in bytes, over all types.
    pub fn encoded_len(&self) -> usize {
        self.by_type.values().flat_map(|m| m.values()).map(|e| e.any.value.len()).sum()
    }
}
