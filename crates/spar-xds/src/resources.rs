//! Encoded Envoy resources, as generated for one proxy from one snapshot.
//!
//! A resource is encoded once into an `Any` and given a content version (a hash of
//! its bytes), so that the connection state machine compares versions instead of
//! protos and resends only what changed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher as _, Hasher as _};
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

/// A stable hex digest of `bytes`, used as a resource version: the same across restarts
/// (a proxy resuming a delta stream with a restarted Spar is not sent what it holds).
/// foldhash with a fixed seed rather than SipHash: every generated resource is hashed,
/// and SipHash was 3.5% of generating a full-mesh proxy's config.
pub fn content_version(bytes: &[u8]) -> String {
    format!("{:016x}", VERSION_HASH.hash_one(bytes))
}

static VERSION_HASH: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(0x5ba7_7e55);

/// All resources of one type for one proxy, by name.
pub type TypeResources = BTreeMap<String, Arc<Encoded>>;

/// Everything generated for one proxy from one snapshot.
///
/// Two layers: an optional shared base (the part every replica of a workload gets, one
/// copy per snapshot for all of them) and the proxy's own resources on top (inbound
/// listeners and clusters, certificates). A name in the own layer hides the same name
/// in the base. Looking at a type gives a merged [`TypeView`]; nothing is copied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyResources {
    /// Version of the snapshot these were generated from.
    pub snapshot_version: u64,
    base: Option<Arc<ProxyResources>>,
    by_type: BTreeMap<&'static str, TypeResources>,
    /// Per type, a hash of the own layer's names and versions, computed once (a shared
    /// base is hashed once for all the streams that use it).
    hashes: std::sync::OnceLock<BTreeMap<&'static str, u64>>,
    /// What generation had to leave out for this proxy and why (a Gateway server whose
    /// credential is missing, a conflicting server, shadowed routes), one line each,
    /// naming the resource. Logged when they change and shown in the sync status.
    pub warnings: Vec<String>,
    /// For a shared layer generated over the previous snapshot's copy: what differs
    /// from that copy ([`Self::reuse_unchanged`]).
    changes: Changes,
    /// The names of each type, computed once ([`Self::shared_names`]).
    names: LayerNames,
    /// The names' digest and count per type, without the names ([`Self::shared_names_digest`]).
    digests: LayerDigests,
    /// Each type serialized back to back, while responses being written use it
    /// ([`Self::wire_block`]).
    blocks: Blocks,
}

/// A layer's wire blocks by type and form (SotW or delta), held weakly: a block lives
/// while responses are being written from it (thousands at once in a reconnect storm)
/// and is let go after, so an idle mesh does not keep a second copy of its config.
#[derive(Debug, Default)]
struct Blocks(std::sync::Mutex<BlockCache>);

#[derive(Debug, Default)]
struct BlockCache {
    blocks: Vec<(&'static str, bool, std::sync::Weak<crate::wire::WireBlock>)>,
    /// (type, form) whose builder declined (too small): a layer does not change, so it
    /// is not asked again.
    declined: Vec<(&'static str, bool)>,
}

impl Clone for Blocks {
    /// Derived data: a copy starts without blocks.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Blocks {
    /// Derived data, as [`Changes`].
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A layer's names per type, shared by the streams whose subscriptions name them all,
/// with their order-independent digest ([`crate::request::names_digest`]).
#[derive(Clone, Debug, Default)]
struct LayerNames(std::sync::OnceLock<BTreeMap<&'static str, NamesAndDigest>>);

/// A layer's names of one type and their digest.
type NamesAndDigest = (Arc<std::collections::BTreeSet<String>>, u64);

impl PartialEq for LayerNames {
    /// Derived data, as [`Changes`].
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A layer's names' digest and count per type.
#[derive(Clone, Debug, Default)]
struct LayerDigests(std::sync::OnceLock<BTreeMap<&'static str, (u64, usize)>>);

impl PartialEq for LayerDigests {
    /// Derived data, as [`Changes`].
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a shared layer changed against the one it was generated over: computed once
/// per generation, so the thousands of streams that move from one to the other send
/// what changed without each walking every resource.
#[derive(Clone, Debug, Default)]
struct Changes {
    /// The layer these are relative to (a weak reference keeps its address unique).
    from: std::sync::Weak<ProxyResources>,
    /// Per type, what is new, differs or is gone.
    by_type: BTreeMap<&'static str, TypeChanges>,
}

/// The changes of one type between two generations of a shared layer.
#[derive(Clone, Debug, Default)]
pub struct TypeChanges {
    /// Resources that are new or differ, in name order.
    pub changed: Vec<Arc<Encoded>>,
    /// Names that are gone, in order.
    pub removed: Vec<String>,
}

/// Nothing changed.
static NO_CHANGES: TypeChanges = TypeChanges { changed: Vec::new(), removed: Vec::new() };

impl PartialEq for Changes {
    /// Derived data: two sets of resources are equal whatever they were derived from.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ProxyResources {
    /// An empty set for snapshot `version`.
    pub fn new(snapshot_version: u64) -> Self {
        Self { snapshot_version, ..Default::default() }
    }

    /// Resources on top of a shared `base` (which must itself have no base; a layered
    /// base is flattened first).
    pub fn layered(base: Arc<ProxyResources>) -> Self {
        let base = if base.base.is_some() { Arc::new(base.flattened()) } else { base };
        Self {
            snapshot_version: base.snapshot_version,
            warnings: base.warnings.clone(),
            base: Some(base),
            ..Default::default()
        }
    }

    /// How many resources this layer holds (its own; a shared layer has no other).
    pub fn resource_count(&self) -> usize {
        self.by_type.values().map(BTreeMap::len).sum()
    }

    /// Whether this set is an own layer over a shared one.
    pub fn is_layered(&self) -> bool {
        self.base.is_some()
    }

    /// This set's own layer (the same allocations) and warnings over another shared
    /// `base`: for a proxy whose own resources did not change while its shared layer did.
    pub fn own_layer_over(&self, base: Arc<ProxyResources>) -> Self {
        let mut r = Self::layered(base);
        r.by_type = self.by_type.clone();
        r.warnings = self.warnings.clone();
        r
    }

    /// What this layer recorded as changed of `type_url` (tests).
    #[cfg(test)]
    pub(crate) fn changed_since_for_tests(&self, type_url: &str) -> Vec<Arc<Encoded>> {
        self.changes.by_type.get(type_url).map(|c| c.changed.clone()).unwrap_or_default()
    }

    /// The shared layer under this set (tests).
    #[cfg(test)]
    pub(crate) fn layers_base(&self) -> &Arc<ProxyResources> {
        self.base.as_ref().expect("a layered set")
    }

    /// How many wire blocks of the shared layer are alive (tests).
    #[cfg(test)]
    pub(crate) fn wire_blocks_alive(&self) -> usize {
        let layer = self.base.as_deref().unwrap_or(self);
        let cache = layer.blocks.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.blocks.iter().filter(|(_, _, w)| w.strong_count() > 0).count()
    }

    pub(crate) fn flattened(&self) -> ProxyResources {
        let mut by_type: BTreeMap<&'static str, TypeResources> = BTreeMap::new();
        for t in self.type_urls() {
            if let Some(v) = self.of(t) {
                by_type.insert(t, v.values().map(|e| (e.name.clone(), Arc::clone(e))).collect());
            }
        }
        Self {
            snapshot_version: self.snapshot_version,
            base: None,
            by_type,
            warnings: self.warnings.clone(),
            ..Default::default()
        }
    }

    /// The type URLs that have resources, in either layer.
    pub fn type_urls(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self.by_type.keys().copied().collect();
        if let Some(b) = &self.base {
            out.extend(b.by_type.keys().copied());
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The resources of one type, both layers merged (`None` when there are none).
    pub fn of(&self, type_url: &str) -> Option<TypeView<'_>> {
        let own = self.by_type.get(type_url);
        let base = self.base.as_deref().and_then(|b| b.by_type.get(type_url));
        (own.is_some() || base.is_some()).then_some(TypeView { base, own })
    }

    /// Removes `name` of `type_url` from this set's own layer (a shared base layer is
    /// not changed); whether it was there.
    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        let removed = self.by_type.get_mut(type_url).is_some_and(|m| m.remove(name).is_some());
        if removed {
            self.hashes = std::sync::OnceLock::new();
        }
        removed
    }

    /// Adds a resource of type `M` to the own layer.
    pub fn insert<M: Message + Name>(&mut self, type_url: &'static str, name: impl Into<String>, msg: &M) {
        let e = Encoded::new(name, msg);
        self.by_type.entry(type_url).or_default().insert(e.name.clone(), Arc::new(e));
        self.hashes = std::sync::OnceLock::new();
    }

    /// Replaces each own resource that `prev` holds unchanged (same name and version) by
    /// `prev`'s allocation, so that consecutive generations share what did not change
    /// and comparing them is mostly comparing pointers; and records what did change
    /// ([`Self::changed_since`]).
    pub fn reuse_unchanged(&mut self, prev: &Arc<ProxyResources>) {
        let mut by_type: BTreeMap<&'static str, TypeChanges> = BTreeMap::new();
        for (t, mine) in &mut self.by_type {
            let theirs = prev.by_type.get(t);
            for (name, e) in mine.iter_mut() {
                match theirs.and_then(|m| m.get(name)) {
                    Some(old) if old.version == e.version => *e = Arc::clone(old),
                    _ => by_type.entry(t).or_default().changed.push(Arc::clone(e)),
                }
            }
        }
        for (t, theirs) in &prev.by_type {
            let mine = self.by_type.get(t);
            for name in theirs.keys().filter(|n| mine.is_none_or(|m| !m.contains_key(*n))) {
                by_type.entry(t).or_default().removed.push(name.clone());
            }
        }
        self.changes = Changes { from: Arc::downgrade(prev), by_type };
    }

    /// Replaces each own resource that `other` (another shared layer of the same
    /// snapshot, e.g. another namespace's) holds with the same name and version by
    /// `other`'s allocation: the layers of a mesh's namespaces mostly hold the same
    /// clusters and load assignments, and keep one copy of each. What changed is
    /// unaffected (its entries are swapped too). Returns how many were shared.
    pub fn share_with(&mut self, other: &ProxyResources) -> usize {
        let mut shared = 0;
        for (t, mine) in &mut self.by_type {
            let Some(theirs) = other.by_type.get(t) else { continue };
            let changed = self.changes.by_type.get_mut(t);
            let mut changed = changed.map(|c| &mut c.changed[..]).unwrap_or_default();
            let mut theirs = theirs.iter().peekable();
            for (name, e) in mine.iter_mut() {
                while theirs.next_if(|(n, _)| *n < name).is_some() {}
                let Some((_, same)) = theirs.next_if(|(n, _)| *n == name) else { continue };
                if Arc::ptr_eq(same, e) || same.version != e.version {
                    continue;
                }
                // `changed` is in name order: swap this entry there too.
                let at = changed.partition_point(|c| c.name < *name);
                if let Some(c) = changed.get_mut(at).filter(|c| Arc::ptr_eq(c, e)) {
                    *c = Arc::clone(same);
                }
                changed = &mut std::mem::take(&mut changed)[at..];
                *e = Arc::clone(same);
                shared += 1;
            }
        }
        shared
    }

    /// A shared layer made from `prev` (a shared layer of an earlier snapshot): of the
    /// `types` listed, the resources `touched` names are replaced by `fresh`'s (gone when
    /// `fresh` has none of that name); everything else is `prev`'s, the same allocations.
    /// What changed is recorded as [`Self::reuse_unchanged`] would, without comparing the
    /// untouched resources. `fresh` carries the snapshot version and any new warnings.
    pub fn patched(
        prev: &Arc<ProxyResources>,
        types: &[&'static str],
        touched: impl Fn(&str) -> bool,
        fresh: ProxyResources,
    ) -> ProxyResources {
        let mut by_type = prev.by_type.clone();
        let mut changes: BTreeMap<&'static str, TypeChanges> = BTreeMap::new();
        for &t in types {
            let now = by_type.entry(t).or_default();
            let new = fresh.by_type.get(t);
            let gone: Vec<String> =
                now.keys().filter(|n| touched(n) && new.is_none_or(|m| !m.contains_key(*n))).cloned().collect();
            for name in gone {
                now.remove(&name);
                changes.entry(t).or_default().removed.push(name);
            }
            for (name, e) in new.into_iter().flatten() {
                if now.get(name).is_none_or(|old| old.version != e.version) {
                    now.insert(name.clone(), Arc::clone(e));
                    changes.entry(t).or_default().changed.push(Arc::clone(e));
                }
            }
            if now.is_empty() {
                by_type.remove(t);
            }
        }
        let mut warnings = prev.warnings.clone();
        for w in fresh.warnings {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        Self {
            snapshot_version: fresh.snapshot_version,
            base: None,
            by_type,
            hashes: std::sync::OnceLock::new(),
            warnings,
            changes: Changes { from: Arc::downgrade(prev), by_type: changes },
            names: LayerNames::default(),
            digests: LayerDigests::default(),
            blocks: Blocks::default(),
        }
    }

    /// What of `type_url` differs from what `prev` held, when that is known without
    /// comparing every resource: `prev` is this very set (nothing), or both are layered
    /// and this one's shared layer was generated over `prev`'s
    /// ([`Self::reuse_unchanged`]); then the shared layer's list is taken as it is and
    /// only the own layers (a proxy's few inbound resources) are compared.
    pub fn changed_since(&self, prev: &ProxyResources, type_url: &str) -> Option<Cow<'_, TypeChanges>> {
        if std::ptr::eq(self, prev) {
            return Some(Cow::Borrowed(&NO_CHANGES));
        }
        let (base, prev_base) = (self.base.as_ref()?, prev.base.as_ref()?);
        if !std::ptr::eq(base.changes.from.as_ptr(), Arc::as_ptr(prev_base)) {
            return None;
        }
        let shared = base.changes.by_type.get(type_url).unwrap_or(&NO_CHANGES);
        let (own, prev_own) = (self.by_type.get(type_url), prev.by_type.get(type_url));
        if own.is_none_or(BTreeMap::is_empty) && prev_own.is_none_or(BTreeMap::is_empty) {
            return Some(Cow::Borrowed(shared));
        }
        // Own resources hide shared ones of the same name: the shared list minus what
        // the own layer hides, plus what differs among the names either own layer has.
        let (now, before) = (self.of(type_url).unwrap_or_default(), prev.of(type_url).unwrap_or_default());
        let hidden = |n: &str| own.is_some_and(|o| o.contains_key(n));
        let mut changed: Vec<Arc<Encoded>> = shared.changed.iter().filter(|e| !hidden(&e.name)).cloned().collect();
        let mut removed: Vec<String> = shared.removed.iter().filter(|n| !hidden(n)).cloned().collect();
        let own_names: std::collections::BTreeSet<&String> =
            own.into_iter().chain(prev_own).flat_map(BTreeMap::keys).collect();
        for name in own_names {
            match (before.get(name), now.get(name)) {
                (Some(p), Some(e)) if Arc::ptr_eq(p, e) || p.version == e.version => {}
                (_, Some(e)) => changed.push(Arc::clone(e)),
                (Some(_), None) => removed.push(name.clone()),
                (None, None) => {}
            }
        }
        changed.sort_by(|a, b| a.name.cmp(&b.name));
        changed.dedup_by(|a, b| a.name == b.name);
        removed.sort();
        removed.dedup();
        Some(Cow::Owned(TypeChanges { changed, removed }))
    }

    /// The names of `type_url`'s resources in the shared layer (this set's base, or this
    /// set when it has none), one copy per layer; and the previous generation's very
    /// copy while the names stay the same, so that streams keep theirs across pushes.
    pub fn shared_names(&self, type_url: &str) -> Option<Arc<std::collections::BTreeSet<String>>> {
        self.shared_names_and_digest(type_url).map(|(names, _)| names)
    }

    /// [`Self::shared_names`] and their order-independent digest, computed once per layer
    /// ([`crate::request::names_digest`]).
    pub fn shared_names_and_digest(&self, type_url: &str) -> Option<NamesAndDigest> {
        let layer = self.base.as_deref().unwrap_or(self);
        let names = layer.names.0.get_or_init(|| {
            let prev = layer.changes.from.upgrade();
            let prev_names = prev.as_ref().and_then(|p| p.names.0.get());
            layer
                .by_type
                .iter()
                .map(|(t, m)| {
                    let same = prev_names
                        .and_then(|p| p.get(t))
                        .filter(|(p, _)| p.len() == m.len() && p.iter().eq(m.keys()))
                        .map(|(p, d)| (Arc::clone(p), *d));
                    let fresh = || (Arc::new(m.keys().cloned().collect()), crate::request::names_digest(m.keys()));
                    (*t, same.unwrap_or_else(fresh))
                })
                .collect()
        });
        names.get(type_url).cloned()
    }

    /// The order-independent digest ([`crate::request::names_digest`]) and the count of
    /// `type_url`'s names in the shared layer, computed once per layer without keeping a
    /// copy of the names (SotW streams match first requests with it).
    pub fn shared_names_digest(&self, type_url: &str) -> Option<(u64, usize)> {
        let layer = self.base.as_deref().unwrap_or(self);
        if let Some((names, digest)) = layer.names.0.get().and_then(|n| n.get(type_url)) {
            return Some((*digest, names.len()));
        }
        let digests = layer.digests.0.get_or_init(|| {
            layer.by_type.iter().map(|(t, m)| (*t, (crate::request::names_digest(m.keys()), m.len()))).collect()
        });
        digests.get(type_url).copied()
    }

    fn own_hash(&self, type_url: &str) -> u64 {
        let hashes = self.hashes.get_or_init(|| {
            self.by_type
                .iter()
                .map(|(t, m)| {
                    // foldhash, as for content versions: SipHash here was 8% of spar's
                    // CPU in a delta endpoint wave (every changed layer hashes 8,000
                    // names and versions of a full mesh).
                    let mut h = VERSION_HASH.build_hasher();
                    for e in m.values() {
                        for s in [&e.name, &e.version] {
                            h.write_usize(s.len());
                            h.write(s.as_bytes());
                        }
                    }
                    (*t, h.finish())
                })
                .collect()
        });
        hashes.get(type_url).copied().unwrap_or(0)
    }

    /// A version for every resource of one type (both layers): changes whenever any of
    /// them does. The shared layer's part is computed once, so asking costs a stream
    /// only its own resources.
    pub fn type_version(&self, type_url: &str) -> String {
        let own = self.own_hash(type_url);
        match &self.base {
            Some(b) => {
                let mut h = VERSION_HASH.build_hasher();
                h.write_u64(b.own_hash(type_url));
                h.write_u64(own);
                format!("{:016x}", h.finish())
            }
            None => format!("{own:016x}"),
        }
    }

    /// The shared layer of `type_url` (the base, or this set when it has none) and the
    /// own resources over it (none when this set has no base).
    pub(crate) fn layers(&self, type_url: &str) -> (Option<&TypeResources>, Option<&TypeResources>) {
        match &self.base {
            Some(b) => (b.by_type.get(type_url), self.by_type.get(type_url)),
            None => (self.by_type.get(type_url), None),
        }
    }

    /// The shared layer's resources of `type_url` in one wire block of the given form
    /// (`delta` or SotW): the block a response being written from this layer already
    /// holds, or a new one made by `build` (`None` when `build` declines, which is
    /// remembered). The layer holds it only weakly.
    pub(crate) fn wire_block(
        &self,
        type_url: &'static str,
        delta: bool,
        build: impl FnOnce(&TypeResources) -> Option<crate::wire::WireBlock>,
    ) -> Option<Arc<crate::wire::WireBlock>> {
        let layer = self.base.as_deref().unwrap_or(self);
        let resources = layer.by_type.get(type_url)?;
        let mut cache = layer.blocks.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.declined.contains(&(type_url, delta)) {
            return None;
        }
        let held = cache.blocks.iter().find(|(t, d, _)| *t == type_url && *d == delta);
        if let Some(b) = held.and_then(|(_, _, w)| w.upgrade()) {
            return Some(b);
        }
        let Some(block) = build(resources).map(Arc::new) else {
            cache.declined.push((type_url, delta));
            return None;
        };
        cache.blocks.retain(|(t, d, w)| w.strong_count() > 0 && !(*t == type_url && *d == delta));
        cache.blocks.push((type_url, delta, Arc::downgrade(&block)));
        Some(block)
    }

    /// Every resource, all types, both layers.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Encoded>> + '_ {
        self.type_urls().into_iter().filter_map(|t| self.of(t)).flat_map(|v| v.values())
    }

    /// Total encoded size in bytes, over all types.
    pub fn encoded_len(&self) -> usize {
        self.all().map(|e| e.any.value.len()).sum()
    }
}

/// The resources of one type as a proxy sees them: its own layer over the shared one,
/// in name order.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeView<'a> {
    base: Option<&'a TypeResources>,
    own: Option<&'a TypeResources>,
}

impl<'a> TypeView<'a> {
    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&'a Arc<Encoded>> {
        self.own.and_then(|o| o.get(name)).or_else(|| self.base.and_then(|b| b.get(name)))
    }

    /// Whether there is a resource called `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every resource, by name (the own layer winning).
    pub fn values(self) -> impl Iterator<Item = &'a Arc<Encoded>> + 'a {
        let range = |m: Option<&'a TypeResources>| m.into_iter().flat_map(BTreeMap::values);
        let mut own = range(self.own).peekable();
        let mut base = range(self.base).peekable();
        std::iter::from_fn(move || match (own.peek(), base.peek()) {
            (Some(o), Some(b)) => match o.name.cmp(&b.name) {
                std::cmp::Ordering::Less => own.next(),
                std::cmp::Ordering::Greater => base.next(),
                std::cmp::Ordering::Equal => {
                    base.next();
                    own.next()
                }
            },
            (Some(_), None) => own.next(),
            (None, _) => base.next(),
        })
    }

    /// Every name, in order.
    pub fn keys(self) -> impl Iterator<Item = &'a String> + 'a {
        self.values().map(|e| &e.name)
    }

    /// How many resources: the two layers' sizes less the own names that hide shared
    /// ones (an own layer is a few resources; no walk over the shared thousands).
    pub fn len(&self) -> usize {
        let (own, base) = (self.own.map_or(0, BTreeMap::len), self.base.map_or(0, BTreeMap::len));
        let hidden = match (self.own, self.base) {
            (Some(o), Some(b)) => o.keys().filter(|k| b.contains_key(*k)).count(),
            _ => 0,
        };
        own + base - hidden
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values().next().is_none()
    }
}

/// The resources of a response: a list, or every resource of one type of a generation
/// (a stream's first response, every CDS and LDS response) without a list per stream.
#[derive(Clone, Debug)]
pub enum Resources {
    /// These resources.
    List(Arc<[Arc<Encoded>]>),
    /// Every resource of the type in the set (both layers).
    Whole(Arc<ProxyResources>, &'static str),
}

impl Resources {
    /// `selected`, or the whole type of `from` when that is what it is.
    pub fn of(selected: Vec<Arc<Encoded>>, from: &Arc<ProxyResources>, type_url: &str) -> Self {
        let all = from.of(type_url).unwrap_or_default();
        match type_url::PUSH_ORDER.iter().find(|t| **t == type_url) {
            Some(t) if !selected.is_empty() && selected.len() == all.len() => Self::Whole(Arc::clone(from), t),
            _ => Self::List(selected.into()),
        }
    }

    /// Every resource of `type_url` in `from` (an empty list when there are none).
    pub fn whole(from: &Arc<ProxyResources>, type_url: &str) -> Self {
        match type_url::PUSH_ORDER.iter().find(|t| **t == type_url) {
            Some(t) if from.of(type_url).is_some_and(|v| !v.is_empty()) => Self::Whole(Arc::clone(from), t),
            _ => Self::List(from.of(type_url).map(|v| v.values().cloned().collect()).unwrap_or_default()),
        }
    }

    /// Every resource, in order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Arc<Encoded>> + '_> {
        match self {
            Self::List(l) => Box::new(l.iter()),
            Self::Whole(from, t) => Box::new(from.of(t).unwrap_or_default().values()),
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            Self::List(l) => l.len(),
            Self::Whole(from, t) => from.of(t).map_or(0, |v| v.len()),
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
