//! Reading responses as the simulated proxies do: the response heads without their
//! resources, each resource's fields picked out of its bytes when used, and the names
//! interned per client thread.

use super::*;

/// A resource name. Every simulated proxy sees the same names (thousands each in a
/// full mesh), so they are interned: one allocation per name and client thread,
/// which lets one machine simulate a thousand proxies of a 10k-service mesh.
pub(super) type Name = Arc<str>;

/// A hash set with a fast hash: the client hashes thousands of names per proxy and
/// shares the cores with the server it measures.
pub(super) type FastSet<T> = std::collections::HashSet<T, foldhash::fast::FixedState>;

/// A name's 64-bit hash (two of a proxy's few thousand names colliding is about one
/// chance in 10^12).
pub(super) fn name_hash(name: impl AsRef<[u8]>) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0x5ba7).hash_one(name.as_ref())
}

pub(super) fn intern(name: &str) -> Name {
    // One table per thread: proxies on different threads then never touch the same
    // reference counts (thousands of names per proxy; the contention was a tenth of the
    // client's CPU in a full-mesh storm). A name costs one allocation per thread.
    thread_local! {
        static LOCAL: std::cell::RefCell<FastSet<Name>> = std::cell::RefCell::default();
    }
    LOCAL.with_borrow_mut(|local| {
        if let Some(n) = local.get(name) {
            return Arc::clone(n);
        }
        let n: Name = Arc::from(name);
        local.insert(Arc::clone(&n));
        n
    })
}

/// The two fields of a Cluster that subscribing needs (prost skips the others), for
/// `--decode discovery`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ClusterHead {
    #[prost(string, tag = "1")]
    pub(super) name: String,
    /// `type` in the `cluster_discovery_type` oneof.
    #[prost(int32, optional, tag = "2")]
    pub(super) discovery: Option<i32>,
}

/// `DiscoveryResponse` without its resources (prost skips them): what every proxy reads
/// of every reply. The resources are read ([`Listed`]) only by a proxy that cannot take
/// another's reading of the same bytes ([`remember`]).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SotwHead {
    #[prost(string, tag = "1")]
    pub(super) version_info: String,
    #[prost(string, tag = "4")]
    pub(super) type_url: String,
    #[prost(string, tag = "5")]
    pub(super) nonce: String,
}

/// `DeltaDiscoveryResponse` without its resources, as [`SotwHead`].
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct DeltaHead {
    #[prost(string, tag = "1")]
    pub(super) system_version_info: String,
    #[prost(string, tag = "4")]
    pub(super) type_url: String,
    #[prost(string, tag = "5")]
    pub(super) nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub(super) removed_resources: Vec<String>,
}

/// The resources of either response (field 2 of both), each a slice of the received
/// message (a SotW `Any`, or a delta `Resource`), its fields picked out when used
/// ([`fields`]). prost's own types copy every `Any` into a vector of their own (a fifth
/// of the client's CPU in a full-mesh storm), and decoding each resource as a message of
/// its own was a quarter.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Listed {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub(super) resources: Vec<Bytes>,
}

/// A reply's resources, listed on first use.
pub(super) struct Lazily {
    pub(super) body: std::cell::Cell<Option<crate::grpc::Chunks>>,
    pub(super) listed: std::cell::OnceCell<Result<Vec<Bytes>, String>>,
}

impl Lazily {
    pub(super) fn new(body: crate::grpc::Chunks) -> Self {
        Self { body: std::cell::Cell::new(Some(body)), listed: std::cell::OnceCell::new() }
    }

    /// The resources, or why they cannot be listed.
    pub(super) fn get(&self) -> Result<&[Bytes], &str> {
        let listed = self.listed.get_or_init(|| {
            let body = self.body.take().unwrap_or_default();
            Listed::decode(body).map(|l| l.resources).map_err(|e| e.to_string())
        });
        listed.as_deref().map_err(String::as_str)
    }
}

/// The length-delimited fields `tags` of an encoded message, in one walk that skips
/// the others (the last of each, as protobuf reads a field sent twice).
pub(super) fn fields<const N: usize>(mut buf: &[u8], tags: [u32; N]) -> Result<[Option<&[u8]>; N], String> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut found = [None; N];
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match tags.iter().position(|t| *t == tag) {
            Some(i) if wire_type == WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                let (field, rest) = usize::try_from(len)
                    .ok()
                    .and_then(|len| buf.split_at_checked(len))
                    .ok_or_else(|| format!("field {tag} runs past the message"))?;
                found[i] = Some(field);
                buf = rest;
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(|e| e.to_string())?,
        }
    }
    Ok(found)
}

/// A delta `Resource`'s name and the value of its `Any` (`None`: no resource, as for a
/// heartbeat or a name that does not exist).
pub(super) fn delta_resource(raw: &[u8]) -> Result<(&[u8], Option<&[u8]>), String> {
    let [name, any] = fields(raw, [3, 2])?;
    let value = match any {
        Some(any) => Some(fields(any, [2])?[0].unwrap_or_default()),
        None => None,
    };
    Ok((name.unwrap_or_default(), value))
}

/// A response's resources (or why they cannot be listed), each as `item` reads it:
/// `Ok(None)` leaves it out.
pub(super) fn read<'a>(
    kind: XdsType,
    resources: Result<&'a [Bytes], &str>,
    item: impl Fn(&'a [u8]) -> Result<Option<(&'a [u8], &'a [u8])>, String>,
) -> Read<'a> {
    let mut error = resources.err().map(|e| format!("{}: {e}", kind.short()));
    let resources = resources.unwrap_or_default();
    let items: Vec<(&[u8], &[u8])> = resources
        .iter()
        .filter_map(|r| {
            item(r).unwrap_or_else(|e| {
                error.get_or_insert(format!("{}: {e}", kind.short()));
                None
            })
        })
        .collect();
    let sizes = Sizes { resources: resources.len(), bytes: items.iter().map(|(_, v)| v.len()).sum() };
    Read { items, error, sizes }
}

/// A SotW response's resources: each `Any`'s value, unnamed.
pub(super) fn read_sotw<'a>(kind: XdsType, resources: Result<&'a [Bytes], &str>) -> Read<'a> {
    read(kind, resources, |any| Ok(Some((&b""[..], fields(any, [2])?[0].unwrap_or_default()))))
}

/// A delta response's resources: each one's name and its `Any`'s value (a resource
/// without one, as for a heartbeat, is left out).
pub(super) fn read_delta<'a>(kind: XdsType, resources: Result<&'a [Bytes], &str>) -> Read<'a> {
    read(kind, resources, |r| delta_resource(r).map(|(name, value)| Some((name, value?))))
}

/// A cluster's or listener's name and what it subscribes to.
pub(super) fn resource(kind: XdsType, name: &[u8], value: &[u8], decode: Decode) -> Result<(Name, Vec<Name>), String> {
    let name = std::str::from_utf8(name).map_err(|_| "a resource name that is not UTF-8".to_string())?;
    let named = |decoded: &str| intern(if name.is_empty() { decoded } else { name });
    match kind {
        XdsType::Cds if decode == Decode::All => {
            let c = XdsCluster::decode(value).map_err(|e| format!("cluster {name}: {e}"))?;
            let eds = matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
            let n = named(&c.name);
            Ok((n.clone(), if eds { vec![n] } else { Vec::new() }))
        }
        XdsType::Cds => {
            let c = ClusterHead::decode(value).map_err(|e| format!("cluster {name}: {e}"))?;
            let n = named(&c.name);
            Ok((n.clone(), if c.discovery == Some(DiscoveryType::Eds as i32) { vec![n] } else { Vec::new() }))
        }
        XdsType::Lds => {
            let l = XdsListener::decode(value).map_err(|e| format!("listener {name}: {e}"))?;
            let mut routes = Vec::new();
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                for f in &chain.filters {
                    if let Some(ConfigType::TypedConfig(tc)) = &f.config_type
                        && tc.type_url.ends_with("HttpConnectionManager")
                    {
                        let hcm = XdsHcm::decode(tc.value.as_slice()).map_err(|e| format!("listener {name}: {e}"))?;
                        if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                            routes.push(intern(&rds.route_config_name));
                        }
                    }
                }
            }
            Ok((named(&l.name), routes))
        }
        XdsType::Eds | XdsType::Rds => Err(format!("{} is not held by name", kind.short())),
    }
}

/// Decodes an endpoint or route resource as Envoy would (`--decode all` only).
pub(super) fn check(kind: XdsType, name: &[u8], value: &[u8]) -> Result<(), String> {
    let name = String::from_utf8_lossy(name);
    match kind {
        XdsType::Eds => XdsLoadAssignment::decode(value).map(drop).map_err(|e| format!("endpoints {name}: {e}")),
        XdsType::Rds => XdsRouteConfiguration::decode(value).map(drop).map_err(|e| format!("routes {name}: {e}")),
        XdsType::Cds | XdsType::Lds => Ok(()),
    }
}

/// Whether two subscriptions are the same names (usually the same allocation).
pub(super) fn same(a: &Arc<BTreeSet<Name>>, b: &Arc<BTreeSet<Name>>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// A response's resources as (name, encoded resource); the name is empty where the
/// response does not give it (SotW).
pub(super) type Items<'a> = [(&'a [u8], &'a [u8])];

/// A response's resources as read for one proxy: (name, value) each, the first that
/// could not be read, and their count and size.
pub(super) struct Read<'a> {
    pub(super) items: Vec<(&'a [u8], &'a [u8])>,
    pub(super) error: Option<String>,
    pub(super) sizes: Sizes,
}

/// How many resources a response carried, and the bytes of their values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Sizes {
    pub(super) resources: usize,
    pub(super) bytes: usize,
}
