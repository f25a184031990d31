//! Encoded Envoy resources, as generated for one proxy from one snapshot.
//!
//! A resource is encoded once into an `Any` and given a content version (a hash of
//! its bytes), so that the connection state machine compares versions instead of
//! protos and resends only what changed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The resource types Spar serves, in push order: clusters before the endpoints that
/// warm them, listeners before the routes they reference (Envoy's "make before break"),
/// which is also the order of their type URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
    /// SDS.
    Secret,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [Self; 5] = [Self::Cluster, Self::Endpoint, Self::Listener, Self::Route, Self::Secret];

    /// The type URL on the wire.
    pub const fn url(self) -> &'static str {
        match self {
            Self::Cluster => type_url::CLUSTER,
            Self::Endpoint => type_url::ENDPOINT,
            Self::Listener => type_url::LISTENER,
            Self::Route => type_url::ROUTE,
            Self::Secret => type_url::SECRET,
        }
    }

    /// The type a type URL names, if Spar serves it.
    pub fn from_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.url() == url)
    }

    /// Short name for logs and metrics (`cds`, `eds`, ...).
    pub const fn short(self) -> &'static str {
        match self {
            Self::Cluster => "cds",
            Self::Endpoint => "eds",
            Self::Listener => "lds",
            Self::Route => "rds",
            Self::Secret => "sds",
        }
    }

    /// Position in [`Self::ALL`], for per-type arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether an empty subscription means "everything" (the SotW legacy wildcard).
    pub const fn is_wildcard(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }
}

impl std::fmt::Display for ResourceType {
    /// The short name (`cds`, `eds`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// Envoy's type URLs for the resource types Spar serves, as they appear on the wire.
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

    /// Short name for logs and metrics (`cds`, `eds`, ...; `unknown` for a type Spar
    /// does not serve).
    pub fn short(type_url: &str) -> &'static str {
        super::ResourceType::from_url(type_url).map_or("unknown", super::ResourceType::short)
    }

    /// Types whose empty subscription means "everything" (SotW legacy wildcard).
    pub fn is_wildcard_type(type_url: &str) -> bool {
        super::ResourceType::from_url(type_url).is_some_and(super::ResourceType::is_wildcard)
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

/// A hasher for version digests made of content versions (a type's version over all its
/// resources), with the seed content versions use.
pub fn version_hasher() -> impl std::hash::Hasher {
    VERSION_HASH.build_hasher()
}

/// All resources of one type for one proxy, by name.
pub type TypeResources = BTreeMap<String, Arc<Encoded>>;

/// Everything generated for one proxy from one snapshot: plain data.
///
/// Two layers: an optional shared base (the part every replica of a workload gets, one
/// copy per snapshot for all of them) and the proxy's own resources on top (inbound
/// listeners and clusters, certificates). A name in the own layer hides the same name
/// in the base. Looking at a type gives a merged [`TypeView`]; nothing is copied.
///
/// Two things ride along that are not content, and neither takes part in equality:
/// what a shared layer changed against the generation it was made over (recorded by
/// [`Self::reuse_unchanged`] and [`Self::patched`], read by [`Self::changed_since`]), and
/// one [`Derived`] slot where the delivery side keeps what it computes from the layer.
#[derive(Clone, Debug, Default)]
pub struct ProxyResources {
    /// Version of the snapshot these were generated from.
    pub snapshot_version: u64,
    base: Option<Arc<ProxyResources>>,
    by_type: BTreeMap<ResourceType, TypeResources>,
    /// What generation had to leave out for this proxy and why (a Gateway server whose
    /// credential is missing, a conflicting server, shadowed routes), one line each,
    /// naming the resource. Logged when they change and shown in the sync status.
    pub warnings: Vec<String>,
    /// For a shared layer generated over the previous snapshot's copy: what differs
    /// from that copy ([`Self::reuse_unchanged`]).
    changes: Changes,
    /// What the delivery side derived from this layer; emptied by every change.
    derived: Derived,
}

impl PartialEq for ProxyResources {
    /// The same content: snapshot, layers, resources and warnings. What was derived
    /// from the content, and the generation it was compared with, do not count.
    fn eq(&self, other: &Self) -> bool {
        self.snapshot_version == other.snapshot_version
            && self.base == other.base
            && self.by_type == other.by_type
            && self.warnings == other.warnings
    }
}

/// A slot for data derived from one layer by another crate (the delivery side keeps the
/// layer's names, digests, hashes and wire blocks there), made on first use and shared
/// by every user of the layer. The generator does not know its type. A copy starts
/// empty, as does a layer that changes.
#[derive(Default)]
pub struct Derived(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Derived {
    /// The derived data, made with `T::default()` on first use; `None` when the slot
    /// already holds another type (one user per process: the delivery side).
    pub fn get_or_default<T: Default + Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get_or_init(|| Box::new(T::default())).downcast_ref()
    }
}

impl Clone for Derived {
    /// Derived data is not copied: a copy derives its own.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Derived(..)" } else { "Derived(empty)" })
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
    by_type: BTreeMap<ResourceType, TypeChanges>,
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

    /// The shared layer: this set's base, or this set when it has none.
    pub fn shared_layer(&self) -> &ProxyResources {
        self.base.as_deref().unwrap_or(self)
    }

    /// This set's own layer (the same allocations) and warnings over another shared
    /// `base`: for a proxy whose own resources did not change while its shared layer did.
    pub fn own_layer_over(&self, base: Arc<ProxyResources>) -> Self {
        let mut r = Self::layered(base);
        r.by_type = self.by_type.clone();
        r.warnings = self.warnings.clone();
        r
    }

    /// What this layer recorded as changed of `t` (tests).
    pub fn recorded_changes(&self, t: ResourceType) -> Vec<Arc<Encoded>> {
        self.changes.by_type.get(&t).map(|c| c.changed.clone()).unwrap_or_default()
    }

    /// The shared layer under this set, if it is layered.
    pub fn base(&self) -> Option<&Arc<ProxyResources>> {
        self.base.as_ref()
    }

    /// This set in one layer: the same resources, the own ones winning.
    pub fn flattened(&self) -> ProxyResources {
        let mut by_type: BTreeMap<ResourceType, TypeResources> = BTreeMap::new();
        for t in self.types() {
            if let Some(v) = self.of(t) {
                by_type.insert(t, v.values().map(|e| (e.name.clone(), Arc::clone(e))).collect());
            }
        }
        Self { snapshot_version: self.snapshot_version, by_type, warnings: self.warnings.clone(), ..Default::default() }
    }

    /// The types that have resources, in either layer, in push order.
    pub fn types(&self) -> Vec<ResourceType> {
        let mut out: Vec<ResourceType> = self.by_type.keys().copied().collect();
        if let Some(b) = &self.base {
            out.extend(b.by_type.keys().copied());
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The resources of one type, both layers merged (`None` when there are none).
    pub fn of(&self, t: ResourceType) -> Option<TypeView<'_>> {
        let own = self.by_type.get(&t);
        let base = self.base.as_deref().and_then(|b| b.by_type.get(&t));
        (own.is_some() || base.is_some()).then_some(TypeView { base, own })
    }

    /// [`Self::of`] by type URL, as a request names it (`None` for a type Spar does not
    /// serve).
    pub fn of_url(&self, type_url: &str) -> Option<TypeView<'_>> {
        self.of(ResourceType::from_url(type_url)?)
    }

    /// Removes `name` of `t` from this set's own layer (a shared base layer is not
    /// changed); whether it was there.
    pub fn remove(&mut self, t: ResourceType, name: &str) -> bool {
        let removed = self.by_type.get_mut(&t).is_some_and(|m| m.remove(name).is_some());
        if removed {
            self.derived = Derived::default();
        }
        removed
    }

    /// Adds a resource of type `M` to the own layer.
    pub fn insert<M: Message + Name>(&mut self, t: ResourceType, name: impl Into<String>, msg: &M) {
        let e = Encoded::new(name, msg);
        self.by_type.entry(t).or_default().insert(e.name.clone(), Arc::new(e));
        self.derived = Derived::default();
    }

    /// What the delivery side derived from this layer (its own layer only).
    pub fn derived(&self) -> &Derived {
        &self.derived
    }

    /// Replaces each own resource that `prev` holds unchanged (same name and version) by
    /// `prev`'s allocation, so that consecutive generations share what did not change
    /// and comparing them is mostly comparing pointers; and records what did change
    /// ([`Self::changed_since`]).
    pub fn reuse_unchanged(&mut self, prev: &Arc<ProxyResources>) {
        let mut by_type: BTreeMap<ResourceType, TypeChanges> = BTreeMap::new();
        for (t, mine) in &mut self.by_type {
            let theirs = prev.by_type.get(t);
            for (name, e) in mine.iter_mut() {
                match theirs.and_then(|m| m.get(name)) {
                    Some(old) if old.version == e.version => *e = Arc::clone(old),
                    _ => by_type.entry(*t).or_default().changed.push(Arc::clone(e)),
                }
            }
        }
        for (t, theirs) in &prev.by_type {
            let mine = self.by_type.get(t);
            for name in theirs.keys().filter(|n| mine.is_none_or(|m| !m.contains_key(*n))) {
                by_type.entry(*t).or_default().removed.push(name.clone());
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
        types: &[ResourceType],
        touched: impl Fn(&str) -> bool,
        fresh: ProxyResources,
    ) -> ProxyResources {
        let mut by_type = prev.by_type.clone();
        let mut changes: BTreeMap<ResourceType, TypeChanges> = BTreeMap::new();
        for &t in types {
            let now = by_type.entry(t).or_default();
            let new = fresh.by_type.get(&t);
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
                by_type.remove(&t);
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
            by_type,
            warnings,
            changes: Changes { from: Arc::downgrade(prev), by_type: changes },
            ..Default::default()
        }
    }

    /// What of `t` differs from what `prev` held, when that is known without comparing
    /// every resource: `prev` is this very set (nothing), or both are layered and this
    /// one's shared layer was generated over `prev`'s ([`Self::reuse_unchanged`]); then
    /// the shared layer's list is taken as it is and only the own layers (a proxy's few
    /// inbound resources) are compared.
    pub fn changed_since(&self, prev: &ProxyResources, t: ResourceType) -> Option<Cow<'_, TypeChanges>> {
        if std::ptr::eq(self, prev) {
            return Some(Cow::Borrowed(&NO_CHANGES));
        }
        let (base, prev_base) = (self.base.as_ref()?, prev.base.as_ref()?);
        if !std::ptr::eq(base.changes.from.as_ptr(), Arc::as_ptr(prev_base)) {
            return None;
        }
        let shared = base.changes.by_type.get(&t).unwrap_or(&NO_CHANGES);
        let (own, prev_own) = (self.by_type.get(&t), prev.by_type.get(&t));
        if own.is_none_or(BTreeMap::is_empty) && prev_own.is_none_or(BTreeMap::is_empty) {
            return Some(Cow::Borrowed(shared));
        }
        // Own resources hide shared ones of the same name: the shared list minus what
        // the own layer hides, plus what differs among the names either own layer has.
        let (now, before) = (self.of(t).unwrap_or_default(), prev.of(t).unwrap_or_default());
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

    /// The layer this shared layer was generated over, while it is alive.
    pub fn generated_over(&self) -> Option<Arc<ProxyResources>> {
        self.changes.from.upgrade()
    }

    /// The shared layer's resources of `t` (the base, or this set when it has none) and
    /// the own resources over it (none when this set has no base).
    pub fn layers(&self, t: ResourceType) -> (Option<&TypeResources>, Option<&TypeResources>) {
        match &self.base {
            Some(b) => (b.by_type.get(&t), self.by_type.get(&t)),
            None => (self.by_type.get(&t), None),
        }
    }

    /// This layer's own resources of each type (not the base's).
    pub fn own(&self) -> impl Iterator<Item = (ResourceType, &TypeResources)> + '_ {
        self.by_type.iter().map(|(t, m)| (*t, m))
    }

    /// Every resource, all types, both layers.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Encoded>> + '_ {
        self.types().into_iter().filter_map(|t| self.of(t)).flat_map(|v| v.values())
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
