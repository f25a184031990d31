//! The delivery cache: what sending a generated layer needs and every stream that sends
//! it shares, derived once per layer and kept in the layer's [`Derived`] slot, by type:
//! the names and their digest (streams whose subscriptions name them all keep one copy),
//! each type's version hash, and the wire blocks that responses being written use.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use spar_generate::resources::{Derived, Encoded, ProxyResources, ResourceType, TypeResources, version_hasher};

use crate::request::names_digest;

/// A layer's names of one type and their digest.
pub(crate) type NamesAndDigest = (Arc<BTreeSet<String>>, u64);

/// What the delivery side derives from one layer.
#[derive(Debug, Default)]
struct LayerCache {
    /// Per type, a hash of the layer's names and versions.
    hashes: OnceLock<BTreeMap<ResourceType, u64>>,
    /// Per type, the names and their order-independent digest ([`names_digest`]).
    names: OnceLock<BTreeMap<ResourceType, NamesAndDigest>>,
    /// Per type, the names' digest and count, without keeping the names.
    digests: OnceLock<BTreeMap<ResourceType, (u64, usize)>>,
    /// Wire blocks by type and form (SotW or delta), held weakly: a block lives while
    /// responses are being written from it (thousands at once in a reconnect storm) and
    /// is let go after, so an idle mesh does not keep a second copy of its config.
    blocks: Mutex<Blocks>,
}

#[derive(Debug, Default)]
struct Blocks {
    held: Vec<(ResourceType, bool, Weak<WireBlock>)>,
    /// (type, form) whose builder declined (too small): a layer does not change, so it
    /// is not asked again.
    declined: Vec<(ResourceType, bool)>,
}

fn cache(slot: &Derived) -> Option<&LayerCache> {
    slot.get_or_default::<LayerCache>()
}

/// Delivery's view of a generated set: what it derives from the shared layer once.
pub(crate) trait Delivery {
    /// The names of `t`'s resources in the shared layer (the base, or the set when it
    /// has none), one copy per layer; and the previous generation's very copy while the
    /// names stay the same, so that streams keep theirs across pushes.
    fn shared_names(&self, t: ResourceType) -> Option<Arc<BTreeSet<String>>> {
        self.shared_names_and_digest(t).map(|(names, _)| names)
    }

    /// [`Self::shared_names`] and their order-independent digest ([`names_digest`]).
    fn shared_names_and_digest(&self, t: ResourceType) -> Option<NamesAndDigest>;

    /// The digest ([`names_digest`]) and the count of `t`'s names in the shared layer,
    /// computed once per layer without keeping a copy of the names (SotW streams match
    /// first requests with it).
    fn shared_names_digest(&self, t: ResourceType) -> Option<(u64, usize)>;

    /// A version for every resource of one type (both layers): changes whenever any of
    /// them does. The shared layer's part is computed once, so asking costs a stream
    /// only its own resources.
    fn type_version(&self, t: ResourceType) -> String;

    /// The shared layer's resources of `t` in one wire block of the given form (`delta`
    /// or SotW): the block a response being written from this layer already holds, or a
    /// new one made by `build` (`None` when `build` declines, which is remembered). The
    /// layer holds it only weakly.
    fn wire_block(
        &self,
        t: ResourceType,
        delta: bool,
        build: impl FnOnce(&TypeResources) -> Option<WireBlock>,
    ) -> Option<Arc<WireBlock>>;

    /// How many wire blocks of the shared layer are alive (tests).
    #[cfg(test)]
    fn wire_blocks_alive(&self) -> usize;
}

fn fresh_names(m: &TypeResources) -> NamesAndDigest {
    (Arc::new(m.keys().cloned().collect()), names_digest(m.keys()))
}

/// A hash of one layer's names and versions of `t`.
fn own_hash(layer: &ProxyResources, t: ResourceType) -> u64 {
    let compute = |m: &TypeResources| {
        // foldhash, as for content versions: SipHash here was 8% of spar's CPU in a
        // delta endpoint wave (every changed layer hashes 8,000 names and versions of a
        // full mesh).
        let mut h = version_hasher();
        for e in m.values() {
            for s in [&e.name, &e.version] {
                h.write_usize(s.len());
                h.write(s.as_bytes());
            }
        }
        h.finish()
    };
    match cache(layer.derived()) {
        Some(c) => {
            let hashes = c.hashes.get_or_init(|| layer.own().map(|(t, m)| (t, compute(m))).collect());
            hashes.get(&t).copied().unwrap_or(0)
        }
        None => layer.own().find(|(o, _)| *o == t).map_or(0, |(_, m)| compute(m)),
    }
}

impl Delivery for ProxyResources {
    fn shared_names_and_digest(&self, t: ResourceType) -> Option<NamesAndDigest> {
        let layer = self.shared_layer();
        let own = || layer.own().find(|(o, _)| *o == t).map(|(_, m)| m);
        let Some(c) = cache(layer.derived()) else { return own().map(fresh_names) };
        let names = c.names.get_or_init(|| {
            let prev = layer.generated_over();
            let prev_names = prev.as_deref().and_then(|p| cache(p.derived())).and_then(|c| c.names.get());
            layer
                .own()
                .map(|(t, m)| {
                    let same = prev_names
                        .and_then(|p| p.get(&t))
                        .filter(|(p, _)| p.len() == m.len() && p.iter().eq(m.keys()))
                        .map(|(p, d)| (Arc::clone(p), *d));
                    (t, same.unwrap_or_else(|| fresh_names(m)))
                })
                .collect()
        });
        names.get(&t).cloned()
    }

    fn shared_names_digest(&self, t: ResourceType) -> Option<(u64, usize)> {
        let layer = self.shared_layer();
        let compute = |m: &TypeResources| (names_digest(m.keys()), m.len());
        let Some(c) = cache(layer.derived()) else {
            return layer.own().find(|(o, _)| *o == t).map(|(_, m)| compute(m));
        };
        if let Some((names, digest)) = c.names.get().and_then(|n| n.get(&t)) {
            return Some((*digest, names.len()));
        }
        let digests = c.digests.get_or_init(|| layer.own().map(|(t, m)| (t, compute(m))).collect());
        digests.get(&t).copied()
    }

    fn type_version(&self, t: ResourceType) -> String {
        let own = own_hash(self, t);
        if self.is_layered() {
            let mut h = version_hasher();
            h.write_u64(own_hash(self.shared_layer(), t));
            h.write_u64(own);
            format!("{:016x}", h.finish())
        } else {
            format!("{own:016x}")
        }
    }

    fn wire_block(
        &self,
        t: ResourceType,
        delta: bool,
        build: impl FnOnce(&TypeResources) -> Option<WireBlock>,
    ) -> Option<Arc<WireBlock>> {
        let layer = self.shared_layer();
        let (resources, _) = layer.layers(t);
        let resources = resources?;
        // Without the cache (never in practice), no block: responses encode per resource.
        let c = cache(layer.derived())?;
        let mut blocks = c.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        if blocks.declined.contains(&(t, delta)) {
            return None;
        }
        let held = blocks.held.iter().find(|(ht, d, _)| *ht == t && *d == delta);
        if let Some(b) = held.and_then(|(_, _, w)| w.upgrade()) {
            return Some(b);
        }
        let Some(block) = build(resources).map(Arc::new) else {
            blocks.declined.push((t, delta));
            return None;
        };
        blocks.held.retain(|(ht, d, w)| w.strong_count() > 0 && !(*ht == t && *d == delta));
        blocks.held.push((t, delta, Arc::downgrade(&block)));
        Some(block)
    }

    #[cfg(test)]
    fn wire_blocks_alive(&self) -> usize {
        cache(self.shared_layer().derived()).map_or(0, |c| {
            let blocks = c.blocks.lock().unwrap_or_else(PoisonError::into_inner);
            blocks.held.iter().filter(|(_, _, w)| w.strong_count() > 0).count()
        })
    }
}

/// A shared layer's resources of one type serialized back to back in one wire form, in
/// name order. Every response of the whole type from that layer hands HTTP/2 slices of
/// it (which go to the socket as they are) instead of copying each resource per stream.
/// Kept by the delivery cache; made by the wire (`WireBlock::build`).
#[derive(Debug)]
pub(crate) struct WireBlock {
    pub(crate) bytes: bytes::Bytes,
    /// The resources, and where each one's bytes end.
    pub(crate) ends: Vec<(Arc<Encoded>, usize)>,
}
