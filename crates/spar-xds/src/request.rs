//! xDS requests read without copying their resource names.
//!
//! Every SotW request repeats the full list of names it subscribes to: an Envoy in a
//! 1,000-service mesh names 4,000 load assignments in each EDS ACK (about 220 KB). Decoded
//! with prost, each ACK is 4,000 `String` allocations that are compared with the last
//! subscription and dropped; at 2,000 proxies one endpoint change made a quarter of the
//! server's CPU that. [`SotwRequest`] decodes the other fields, reads the names in place
//! (the count, the `*` wildcard and a digest of the list as sent) and keeps the request's
//! bytes, so the names are looked at again only when the list differs from the last one,
//! and copied out only when the subscription changed. [`DeltaRequest`] reads the names
//! a delta request subscribes to the same way.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status;
use prost::Message as _;

/// Why a request cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// prost's error for the fields it reads.
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
    /// The bytes are not a well-formed message.
    #[error("{0}")]
    Malformed(String),
}

impl DecodeError {
    fn new(what: impl Into<String>) -> Self {
        Self::Malformed(what.into())
    }
}

/// `resource_names` in `DiscoveryRequest`, and `resource_names_subscribe` in
/// `DeltaDiscoveryRequest`.
const NAMES_FIELD: u64 = 3;

/// Every field of `DiscoveryRequest` but the names (field 3, skipped by prost as
/// unknown) and `resource_locators` (7, which Spar does not serve).
#[derive(Clone, PartialEq, prost::Message)]
struct Head {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, optional, tag = "2")]
    node: Option<Node>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    response_nonce: String,
    #[prost(message, optional, tag = "6")]
    error_detail: Option<Status>,
}

/// A decoded SotW `DiscoveryRequest` whose names stay in the request's bytes.
#[derive(Clone, Debug)]
pub struct SotwRequest {
    /// `version_info`: the version the proxy holds (what it ACKs).
    pub version_info: String,
    /// The node (Envoy sends it on the first request only).
    pub node: Option<Node>,
    /// The resource type.
    pub type_url: String,
    /// The nonce of the response this request answers (empty on the first).
    pub response_nonce: String,
    /// Set on a NACK.
    pub error_detail: Option<Status>,
    /// The subscribed names.
    pub names: Names,
}

/// The `resource_names` of a request, read in place.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// The encoded request (the names are its field 3 entries).
    raw: Bytes,
    /// How many names.
    pub count: usize,
    /// A digest of the names in the order they came: Envoy repeats the same list in the
    /// same order, so this is usually all that needs comparing.
    pub ordered: u64,
    /// Whether one of them is the explicit wildcard `*`.
    pub star: bool,
}

impl Names {
    /// The names, in the order the request lists them. A name that is not UTF-8 can name
    /// no resource, and is left out.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.raw_names().filter_map(|b| std::str::from_utf8(b).ok())
    }

    /// The field 3 entries, walked as [`Names::read`] walks them (which read the whole
    /// request when it was decoded, so it is well formed).
    fn raw_names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
        let mut buf: &[u8] = &self.raw;
        let mut next = move || -> Result<Option<&[u8]>, DecodeError> {
            while !buf.is_empty() {
                let (tag, wire_type) = decode_key(&mut buf)?;
                if u64::from(tag) == NAMES_FIELD && wire_type == WireType::LengthDelimited {
                    return length_delimited(&mut buf).map(Some);
                }
                skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
            }
            Ok(None)
        };
        // Bytes that stop reading end the names (never, for a request that decoded).
        std::iter::from_fn(move || next().ok().flatten())
    }

    /// An order-independent digest of the names: the same names in any order give the
    /// same digest.
    pub fn digest(&self) -> u64 {
        names_digest(self.raw_names())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// An order-independent digest of `names` (the sum of their hashes): the same names in
/// any order give the same digest; a list with a repeat or another name, almost surely
/// another (a proxy that forged a match would only be given the names it matched).
pub fn names_digest<N: AsRef<[u8]>>(names: impl IntoIterator<Item = N>) -> u64 {
    use std::hash::BuildHasher as _;
    names.into_iter().fold(0u64, |acc, n| acc.wrapping_add(HASH.hash_one(n.as_ref())))
}

/// The names' hash: fast, and fixed for the process (digests are compared only with
/// digests made by the same process).
static HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5ba7);

impl SotwRequest {
    /// Decodes an encoded `DiscoveryRequest`, keeping `raw` for the names.
    pub fn decode(raw: Bytes) -> Result<Self, DecodeError> {
        let mut head = Head::default();
        let names = Names::read(raw, &mut head)?;
        Ok(Self {
            version_info: head.version_info,
            node: head.node,
            type_url: head.type_url,
            response_nonce: head.response_nonce,
            error_detail: head.error_detail,
            names,
        })
    }
}

impl Names {
    /// Walks an encoded request once: the field 3 entries (`resource_names` in SotW,
    /// `resource_names_subscribe` in delta) are read in place, and prost merges every
    /// other field into `head`.
    ///
    /// The ordered digest hashes each run of consecutive names as it lies in the
    /// request (keys, lengths and names: Envoy sends the list as one run), in one call
    /// per run rather than one per name. The same list in the same layout gives the same
    /// digest; the same list laid out otherwise may not, and is then compared by
    /// [`Names::digest`].
    fn read(raw: Bytes, head: &mut impl prost::Message) -> Result<Self, DecodeError> {
        use std::hash::Hasher as _;
        let mut names = Names::default();
        let mut ordered = std::hash::BuildHasher::build_hasher(&HASH);
        let mut buf: &[u8] = &raw;
        // Where the current run of names starts.
        let mut run: Option<usize> = None;
        while !buf.is_empty() {
            let at = raw.len() - buf.len();
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
            if u64::from(tag) == NAMES_FIELD && wire_type == prost::encoding::WireType::LengthDelimited {
                let name = length_delimited(&mut buf)?;
                names.count += 1;
                names.star |= name == b"*";
                run.get_or_insert(at);
            } else {
                if let Some(start) = run.take() {
                    ordered.write(&raw[start..at]);
                }
                head.merge_field(tag, wire_type, &mut buf, prost::encoding::DecodeContext::default())?;
            }
        }
        if let Some(start) = run {
            ordered.write(&raw[start..]);
        }
        names.ordered = ordered.finish();
        names.raw = raw;
        Ok(names)
    }
}

/// Every field of `DeltaDiscoveryRequest` but the names subscribed to (field 3, skipped
/// by prost as unknown) and the resource locators (8, 9), which Spar does not serve.
#[derive(Clone, PartialEq, prost::Message)]
struct DeltaHead {
    #[prost(message, optional, tag = "1")]
    node: Option<Node>,
    #[prost(string, tag = "2")]
    type_url: String,
    #[prost(string, repeated, tag = "4")]
    resource_names_unsubscribe: Vec<String>,
    #[prost(map = "string, string", tag = "5")]
    initial_resource_versions: std::collections::HashMap<String, String>,
    #[prost(string, tag = "6")]
    response_nonce: String,
    #[prost(message, optional, tag = "7")]
    error_detail: Option<Status>,
}

/// A decoded `DeltaDiscoveryRequest` whose subscribed names stay in the request's bytes:
/// Envoy's first delta EDS request names every load assignment it was sent (4,000 in a
/// 1k-service full mesh), which prost made 4,000 strings per proxy in a reconnect storm,
/// almost always to find them equal to the shared layer's names.
#[derive(Clone, Debug)]
pub struct DeltaRequest {
    /// The node (Envoy sends it on the first request only).
    pub node: Option<Node>,
    /// The resource type.
    pub type_url: String,
    /// `resource_names_subscribe`, read in place.
    pub subscribe: Names,
    /// `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// What the proxy already holds, on a stream's first request (resuming).
    pub initial_resource_versions: std::collections::HashMap<String, String>,
    /// The nonce of the response this request answers (empty if none).
    pub response_nonce: String,
    /// Set on a NACK.
    pub error_detail: Option<Status>,
}

impl DeltaRequest {
    /// Decodes an encoded `DeltaDiscoveryRequest`, keeping `raw` for the names.
    pub fn decode(raw: Bytes) -> Result<Self, DecodeError> {
        let mut head = DeltaHead::default();
        let subscribe = Names::read(raw, &mut head)?;
        Ok(Self {
            node: head.node,
            type_url: head.type_url,
            subscribe,
            unsubscribe: head.resource_names_unsubscribe,
            initial_resource_versions: head.initial_resource_versions,
            response_nonce: head.response_nonce,
            error_detail: head.error_detail,
        })
    }
}

impl From<DeltaDiscoveryRequest> for DeltaRequest {
    /// Through the wire encoding, as the server receives it (tests and tools).
    fn from(req: DeltaDiscoveryRequest) -> Self {
        Self::decode(Bytes::from(req.encode_to_vec())).expect("a prost-encoded request decodes")
    }
}

impl From<DiscoveryRequest> for SotwRequest {
    /// Through the wire encoding, as the server receives it (tests and tools).
    fn from(req: DiscoveryRequest) -> Self {
        Self::decode(Bytes::from(req.encode_to_vec())).expect("a prost-encoded request decodes")
    }
}

/// The bytes of a length-delimited field whose key was just read.
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = prost::encoding::decode_varint(buf)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::new("length overflows"))?;
    let (field, rest) = buf.split_at_checked(len).ok_or_else(|| DecodeError::new("message truncated"))?;
    *buf = rest;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node { id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(), ..Default::default() }),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "7".into(),
            error_detail: Some(Status { code: 3, message: "bad".into(), details: vec![] }),
            resource_locators: vec![],
        }
    }

    #[test]
    fn every_field_reads_as_prost_reads_it() {
        let prost = request(&["b", "a", "c"]);
        let r = SotwRequest::from(prost.clone());
        assert_eq!(r.version_info, prost.version_info);
        assert_eq!(r.node, prost.node);
        assert_eq!(r.type_url, prost.type_url);
        assert_eq!(r.response_nonce, prost.response_nonce);
        assert_eq!(r.error_detail, prost.error_detail);
        assert_eq!(r.names.iter().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(r.names.count, 3);
        assert!(!r.names.star);
    }

    #[test]
    fn every_delta_field_reads_as_prost_reads_it() {
        let prost = DeltaDiscoveryRequest {
            node: Some(Node { id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(), ..Default::default() }),
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            resource_names_subscribe: vec!["b".into(), "*".into(), "a".into()],
            resource_names_unsubscribe: vec!["c".into()],
            initial_resource_versions: [("a".to_string(), "1".to_string())].into(),
            response_nonce: "7".into(),
            error_detail: Some(Status { code: 3, message: "bad".into(), details: vec![] }),
            ..Default::default()
        };
        let r = DeltaRequest::from(prost.clone());
        assert_eq!(r.node, prost.node);
        assert_eq!(r.type_url, prost.type_url);
        assert_eq!(r.subscribe.iter().collect::<Vec<_>>(), ["b", "*", "a"]);
        assert!(r.subscribe.star && r.subscribe.count == 3);
        assert_eq!(r.unsubscribe, prost.resource_names_unsubscribe);
        assert_eq!(r.initial_resource_versions, prost.initial_resource_versions);
        assert_eq!(r.response_nonce, prost.response_nonce);
        assert_eq!(r.error_detail, prost.error_detail);
        let none = DeltaRequest::from(DeltaDiscoveryRequest::default());
        assert!(none.subscribe.is_empty());
        assert!(DeltaRequest::decode(Bytes::from_static(&[0x1a, 0x05, b'a'])).is_err(), "a name cut short");
    }

    #[test]
    fn digests_see_any_difference_and_one_ignores_order() {
        let names = |n: &[&str]| SotwRequest::from(request(n)).names;
        assert_eq!(names(&["a", "b", "c"]).digest(), names(&["c", "a", "b"]).digest());
        assert_ne!(names(&["a", "b", "c"]).ordered, names(&["c", "a", "b"]).ordered);
        assert_eq!(names(&["a", "b", "c"]).ordered, names(&["a", "b", "c"]).ordered);
        for (x, y) in
            [(&["a", "b", "c"][..], &["a", "b", "d"][..]), (&["a", "b"], &["a", "b", "c"]), (&["ab"], &["a", "b"])]
        {
            assert_ne!(names(x).digest(), names(y).digest(), "{x:?} {y:?}");
            assert_ne!(names(x).ordered, names(y).ordered, "{x:?} {y:?}");
        }
    }

    #[test]
    fn names_between_other_fields_are_read_in_one_walk() {
        // Protobuf fields may come in any order: names, the type, more names, a field 3
        // of another wire type (not a name), the nonce.
        let mut raw = Vec::new();
        prost::encoding::string::encode(3, &"a".to_string(), &mut raw);
        prost::encoding::string::encode(4, &"t".to_string(), &mut raw);
        prost::encoding::string::encode(3, &"*".to_string(), &mut raw);
        prost::encoding::string::encode(3, &"b".to_string(), &mut raw);
        prost::encoding::uint64::encode(3, &7, &mut raw);
        prost::encoding::string::encode(5, &"n".to_string(), &mut raw);
        let r = SotwRequest::decode(Bytes::from(raw.clone())).expect("decodes");
        assert_eq!((r.type_url.as_str(), r.response_nonce.as_str()), ("t", "n"));
        assert_eq!(r.names.iter().collect::<Vec<_>>(), ["a", "*", "b"]);
        assert!(r.names.star && r.names.count == 3);
        assert_eq!(r.names.digest(), SotwRequest::from(request(&["b", "*", "a"])).names.digest());
        let again = SotwRequest::decode(Bytes::from(raw)).expect("decodes");
        assert_eq!(again.names.ordered, r.names.ordered, "the same bytes, the same ordered digest");
        let d = DeltaRequest::decode(Bytes::from(
            DeltaDiscoveryRequest {
                resource_names_subscribe: vec!["x".into()],
                response_nonce: "9".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ))
        .expect("decodes");
        assert_eq!((d.subscribe.count, d.response_nonce.as_str()), (1, "9"));
    }

    #[test]
    fn the_wildcard_and_no_names_are_seen() {
        assert!(SotwRequest::from(request(&["*", "a"])).names.star);
        let empty = SotwRequest::from(request(&[]));
        assert!(empty.names.is_empty());
        assert_eq!(empty.names.iter().count(), 0);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let mut raw = request(&["a", "b"]).encode_to_vec();
        // A name that is not UTF-8 names nothing: left out.
        let at = raw.windows(3).position(|w| w == [0x1a, 1, b'a']).expect("the name's field");
        raw[at + 2] = 0xff;
        let r = SotwRequest::decode(Bytes::from(raw.clone())).expect("decodes");
        assert_eq!(r.names.iter().collect::<Vec<_>>(), ["b"]);
        // Truncated in the middle of a field, and a reserved wire type.
        let whole = request(&["abc"]).encode_to_vec();
        assert!(SotwRequest::decode(Bytes::copy_from_slice(&whole[..whole.len() - 1])).is_err());
        assert!(SotwRequest::decode(Bytes::from_static(&[0x1f])).is_err());
    }
}
