//! What a response carries: plain data made by the connection state machine and
//! written by the wire. Resources are shared with the generated config (an `Arc` each,
//! or a whole type of a generation), never copied per stream.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
use tonic::Status;

use crate::resources::{Encoded, ProxyResources, ResourceType};

/// A state-of-the-world response.
#[derive(Clone, Debug, PartialEq)]
pub struct SotwResponse {
    /// `version_info`.
    pub version_info: String,
    /// The resources, shared with the generated config.
    pub resources: Resources,
    /// `type_url`.
    pub type_url: String,
    /// `nonce`.
    pub nonce: String,
}

/// An incremental response.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaResponse {
    /// `system_version_info`.
    pub system_version_info: String,
    /// Changed resources (name, version and the resource come from each [`Encoded`]).
    pub resources: Resources,
    /// `type_url`.
    pub type_url: String,
    /// `removed_resources`.
    pub removed_resources: Vec<String>,
    /// `nonce`.
    pub nonce: String,
}

impl SotwResponse {
    /// The same response as prost's message (tests, tools).
    pub fn to_prost(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.any.clone()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl DeltaResponse {
    /// The same response as prost's message (tests, tools).
    pub fn to_prost(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

/// What a stream task hands its response body: boxed, because tokio's channel allocates
/// its slots in blocks of 32 whatever the capacity, and an unboxed response and `Status`
/// made that block about 3 KB per stream.
pub type Outbound<M> = Box<Result<M, Status>>;

/// The resources of a response: a list, or every resource of one type of a generation
/// (a stream's first response, every CDS and LDS response) without a list per stream.
#[derive(Clone, Debug)]
pub enum Resources {
    /// These resources.
    List(Arc<[Arc<Encoded>]>),
    /// Every resource of the type in the set (both layers).
    Whole(Arc<ProxyResources>, ResourceType),
}

impl Resources {
    /// `selected`, or the whole type of `from` when that is what it is.
    pub fn of(selected: Vec<Arc<Encoded>>, from: &Arc<ProxyResources>, type_url: &str) -> Self {
        match ResourceType::from_url(type_url) {
            Some(t) if !selected.is_empty() && selected.len() == from.of(t).map_or(0, |v| v.len()) => {
                Self::Whole(Arc::clone(from), t)
            }
            _ => Self::List(selected.into()),
        }
    }

    /// Every resource of `type_url` in `from` (an empty list when there are none).
    pub fn whole(from: &Arc<ProxyResources>, type_url: &str) -> Self {
        match ResourceType::from_url(type_url) {
            Some(t) if from.of(t).is_some_and(|v| !v.is_empty()) => Self::Whole(Arc::clone(from), t),
            _ => Self::List(Arc::from(Vec::new())),
        }
    }

    /// Every resource, in order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Arc<Encoded>> + '_> {
        match self {
            Self::List(l) => Box::new(l.iter()),
            Self::Whole(from, t) => Box::new(from.of(*t).unwrap_or_default().values()),
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            Self::List(l) => l.len(),
            Self::Whole(from, t) => from.of(*t).map_or(0, |v| v.len()),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self::List(Arc::from(Vec::new()))
    }
}

impl From<Vec<Arc<Encoded>>> for Resources {
    fn from(v: Vec<Arc<Encoded>>) -> Self {
        Self::List(v.into())
    }
}

impl PartialEq for Resources {
    /// The same resources, however held.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
