//! The I/O-free ADS connection state machine, shared by SotW and delta.
//!
//! ```text
//!   SotwRequest ───────► Connection::handle_sotw  ──┐
//!   DeltaDiscoveryRequest ► Connection::handle_delta ├──► Vec<Response> (what to send now)
//!   new ProxyResources ─► Connection::on_resources ─┘
//! ```
//!
//! The connection remembers, per type, what the proxy subscribed to, what was last
//! sent (versions and nonce), what was ACKed and the last NACK. It never buffers
//! responses: when new resources arrive it computes what differs from what was sent,
//! so a slow proxy only ever gets the latest state (pushes coalesce) and memory per
//! connection is bounded by one resource set.
//!
//! Protocol reference: <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::layer_cache::Delivery as _;
use crate::request::SotwRequest;
use crate::resources::{Encoded, ProxyResources, ResourceType, content_version, type_url};
use crate::response::{DeltaResponse, Resources, SotwResponse};

mod delta;
mod nack;
mod names;
mod subscribe;
use delta::*;
pub use nack::Nack;
pub(crate) use nack::names;
use nack::record_ack_or_nack;
pub use names::Names;
use names::names_are;
use subscribe::sotw_subscription;

/// Which protocol variant the stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// State of the world: every response carries the full set for its type.
    Sotw,
    /// Incremental: responses carry only changed and removed resources.
    Delta,
}

/// What a proxy asked for, per type.
///
/// See "How the client specifies what resources to return" in the xDS protocol page:
/// an empty first request for LDS/CDS is the legacy wildcard; `*` is the explicit one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every resource of the type.
    pub wildcard: bool,
    /// Explicitly named resources (besides the wildcard).
    pub names: Names,
    /// The proxy named exactly the resources it had been sent (Envoy's EDS and RDS
    /// requests, normally): kept as this flag instead of thousands of names per stream.
    pub all_current: bool,
    /// An order-independent digest and the count of the names of the request that set
    /// `all_current`: every SotW request (every ACK) repeats all names, and an unchanged
    /// list is recognised from these without looking each name up.
    pub names_digest: (u64, usize),
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.all_current || self.names.contains(name)
    }
}

/// Bookkeeping for one type on one connection; also the per-type sync status.
#[derive(Clone, Debug, Default)]
pub struct TypeState {
    /// What the proxy subscribed to.
    pub subscription: Subscription,
    /// Whether the proxy has sent a request for this type at all.
    pub requested: bool,
    /// Version and nonce of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// When the last response was sent.
    pub sent_at: Option<SystemTime>,
    /// The resources of the last response (shared with it, not copied), until ACKed.
    pub sent: Option<Resources>,
    /// What the last SotW response was made from (the resources and the subscription),
    /// so that the next EDS or RDS response carries only what changed. SotW only.
    sent_from: Option<(Arc<ProxyResources>, Subscription)>,
    /// Last version the proxy ACKed.
    pub acked_version: Option<String>,
    /// When it was ACKed.
    pub acked_at: Option<SystemTime>,
    /// The last NACK, cleared by a later ACK.
    pub last_nack: Option<Nack>,
    /// Listeners only: the names the proxy holds as of its last ACK (SotW), to say which
    /// a rejected response removed. A handful per proxy, so kept as names.
    held: Vec<String>,
    /// Listeners only: what the last delta response removed, until ACKed.
    sent_removed: Vec<String>,
    /// Per-resource versions the proxy holds, as far as we know: what we sent, or what it
    /// told us on resume (`initial_resource_versions`). Delta only.
    client_versions: BTreeMap<String, String>,
    /// Named resources the proxy was told do not exist (delta), so it is told once only.
    told_missing: BTreeSet<String>,
    /// Delta: the proxy holds exactly what this generation had of what it wanted then
    /// (with `true` for a wildcard subscription), instead of `client_versions` per
    /// resource. Set after every push; a resume or a re-subscription to a held resource
    /// goes back to `client_versions`.
    synced: Option<(Arc<ProxyResources>, bool)>,
    /// Delta: names subscribed since the last push (not held yet; told once if missing).
    fresh: BTreeSet<String>,
    /// SotW, while `all_current`: the digest of the last request's list in its order and
    /// its length, so that the same list again is recognised at a glance.
    last_names: Option<(u64, usize)>,
}

impl TypeState {
    /// Delta: whether the proxy holds `name` under `synced`.
    fn held_in_sync(&self, type_url: &str, name: &str) -> bool {
        let Some((from, wild)) = &self.synced else { return false };
        from.of_url(type_url).is_some_and(|v| v.contains_key(name))
            && (*wild || (self.subscription.names.contains(name) && !self.fresh.contains(name)))
    }

    /// Delta: back from `synced` to per-resource versions.
    fn materialize(&mut self, type_url: &str) {
        let Some((from, _)) = self.synced.clone() else { return };
        for r in from.of_url(type_url).unwrap_or_default().values() {
            if self.held_in_sync(type_url, &r.name) {
                self.client_versions.insert(r.name.clone(), r.version.clone());
            }
        }
        self.synced = None;
    }
}

/// A response to put on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// SotW response.
    Sotw(SotwResponse),
    /// Delta response.
    Delta(DeltaResponse),
}

/// What happened when a request was handled, for logs and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The proxy accepted a response.
    Ack {
        /// Type URL.
        type_url: String,
        /// Version accepted.
        version: String,
        /// Time from the push to its ACK (`pilot_proxy_convergence_time`).
        latency: Option<std::time::Duration>,
    },
    /// The proxy rejected a response.
    Nack {
        /// Type URL.
        type_url: String,
        /// Details.
        nack: Nack,
    },
    /// A request carried a nonce other than the latest one sent; ignored as the
    /// protocol requires.
    StaleNonce {
        /// Type URL.
        type_url: String,
    },
}

/// The state of one ADS stream.
#[derive(Debug)]
pub struct Connection {
    variant: Variant,
    /// Boxed: a B-tree leaf holds room for 11 values, and a `TypeState` is large.
    types: BTreeMap<String, Box<TypeState>>,
    current: Arc<ProxyResources>,
    nonce: u64,
    /// Events produced by the last `handle_*` call (drained by the caller).
    events: Vec<Event>,
}

impl Connection {
    /// A new connection that will serve `current` until told otherwise.
    pub fn new(variant: Variant, current: Arc<ProxyResources>) -> Self {
        Self { variant, types: BTreeMap::new(), current, nonce: 0, events: Vec::new() }
    }

    /// Protocol variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Per-type state, for status pages.
    pub fn types(&self) -> &BTreeMap<String, Box<TypeState>> {
        &self.types
    }

    /// The resources currently served.
    pub fn current(&self) -> &Arc<ProxyResources> {
        &self.current
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Handles a SotW request and returns what to send.
    pub fn handle_sotw(&mut self, req: impl Into<SotwRequest>) -> Vec<Response> {
        let req: SotwRequest = req.into();
        let type_url = req.type_url;
        let state = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && state.sent_nonce.as_deref() != Some(&req.response_nonce) {
            self.events.push(Event::StaleNonce { type_url });
            return Vec::new();
        }
        let first = !state.requested;
        state.requested = true;
        if !req.response_nonce.is_empty() {
            record_ack_or_nack(
                false,
                state,
                &type_url,
                &req.version_info,
                &req.response_nonce,
                req.error_detail.as_ref(),
                &mut self.events,
            );
        }
        // In SotW every request carries the full list of names it wants.
        let names = &req.names;
        let wildcard = names.star || (names.is_empty() && type_url::is_wildcard_type(&type_url));
        let new_sub = sotw_subscription(state, names, wildcard, &self.current, &type_url);
        state.last_names = new_sub.all_current.then_some((names.ordered, names.count));
        let changed = state.subscription != new_sub;
        state.subscription = new_sub;
        if first || changed {
            // Force a response: a first request is always answered, and a changed
            // subscription is answered with the full new set.
            state.sent_version = None;
        }
        self.sotw_push(&type_url).into_iter().collect()
    }

    /// Records where the Istio objects behind the last NACK of `type_url` are defined.
    pub fn note_nack_origins(&mut self, type_url: &str, from: Vec<String>) {
        if let Some(n) = self.types.get_mut(type_url).and_then(|s| s.last_nack.as_mut()) {
            n.from = from;
        }
    }

    /// Handles a delta request and returns what to send.
    pub fn handle_delta(&mut self, req: impl Into<crate::request::DeltaRequest>) -> Vec<Response> {
        let req: crate::request::DeltaRequest = req.into();
        let type_url = req.type_url.clone();
        let state = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            if state.sent_nonce.as_deref() != Some(&req.response_nonce) {
                // A stale ACK/NACK; subscription changes in it still count (Envoy may batch them).
                self.events.push(Event::StaleNonce { type_url: type_url.clone() });
            } else {
                let version = state.sent_version.clone().unwrap_or_default();
                record_ack_or_nack(
                    true,
                    state,
                    &type_url,
                    &version,
                    &req.response_nonce,
                    req.error_detail.as_ref(),
                    &mut self.events,
                );
            }
        }
        let first = !state.requested;
        state.requested = true;
        if first {
            // Resume: the proxy tells us what it already holds, on its first request only.
            state.client_versions = req.initial_resource_versions.into_iter().collect();
            if req.subscribe.is_empty() && type_url::is_wildcard_type(&type_url) {
                state.subscription.wildcard = true;
            }
        }
        // Envoy's first EDS request names every load assignment it was sent: when those
        // are exactly the shared layer's, the subscription is that layer's copy of them.
        let mut subscribe = Some(&req.subscribe);
        if first
            && state.subscription.names.is_empty()
            && let Some((base, digest)) =
                ResourceType::from_url(&type_url).and_then(|t| self.current.shared_names_and_digest(t))
            && names_are(&req.subscribe, &base, digest)
        {
            state.subscription.names = Names::over(base);
            subscribe = None;
        }
        for name in subscribe.into_iter().flat_map(crate::request::Names::iter) {
            if name == "*" {
                if !state.subscription.wildcard {
                    state.materialize(&type_url);
                }
                state.subscription.wildcard = true;
            } else {
                if state.held_in_sync(&type_url, name) {
                    state.materialize(&type_url);
                }
                state.subscription.names.insert(name);
                state.fresh.insert(name.to_string());
                // A (re)subscription must be answered even when the client claims to
                // hold the resource already: it may have dropped it.
                if !first {
                    state.client_versions.remove(name);
                }
                state.told_missing.remove(name);
            }
        }
        for name in &req.unsubscribe {
            if name == "*" {
                state.materialize(&type_url);
                state.subscription.wildcard = false;
            } else {
                state.subscription.names.remove(name);
                state.fresh.remove(name);
            }
            if !state.subscription.wants(name) {
                state.client_versions.remove(name);
                state.told_missing.remove(name);
            }
        }
        self.delta_push(&type_url).into_iter().collect()
    }

    /// New resources for this proxy: returns the responses that bring it up to date,
    /// in make-before-break order.
    pub fn on_resources(&mut self, current: Arc<ProxyResources>) -> Vec<Response> {
        self.current = current;
        let mut out = Vec::new();
        let mut order: Vec<String> = ResourceType::ALL.iter().map(|t| t.url().to_string()).collect();
        order.extend(self.types.keys().filter(|k| ResourceType::from_url(k).is_none()).cloned());
        let (mut clusters_pushed, mut listeners_pushed) = (false, false);
        for t in order {
            if !self.types.get(&t).is_some_and(|s| s.requested) {
                continue;
            }
            let r = match self.variant {
                Variant::Sotw => {
                    // Updated clusters wait for their endpoints, and updated listeners
                    // re-read their routes: after either, the dependent type goes whole.
                    let whole =
                        (t == type_url::ENDPOINT && clusters_pushed) || (t == type_url::ROUTE && listeners_pushed);
                    self.sotw_push_with(&t, whole)
                }
                Variant::Delta => self.delta_push(&t),
            };
            clusters_pushed |= r.is_some() && t == type_url::CLUSTER;
            listeners_pushed |= r.is_some() && t == type_url::LISTENER;
            out.extend(r);
        }
        out
    }

    /// The SotW response for `type_url` if what the proxy should hold differs from what
    /// was last sent.
    fn sotw_push(&mut self, type_url: &str) -> Option<Response> {
        self.sotw_push_with(type_url, true)
    }

    /// [`Self::sotw_push`]; unless `whole`, an EDS or RDS response carries only the
    /// resources that changed since the last one (the protocol requires the whole set
    /// for listeners and clusters only; Envoy applies the others per resource).
    fn sotw_push_with(&mut self, type_url: &str, whole: bool) -> Option<Response> {
        let current = Arc::clone(&self.current);
        let all = current.of_url(type_url).unwrap_or_default();
        let state = self.types.get(type_url)?;
        let sub = &state.subscription;
        let everything = sub.wildcard || sub.all_current;
        let version = if everything {
            type_version(&current, type_url)
        } else {
            set_version(all.values().filter(|r| sub.wants(&r.name)).map(|r| (&r.name, &r.version)))
        };
        if state.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let incremental = !whole && !type_url::is_wildcard_type(type_url);
        // The common case of a push (an endpoint moved, a proxy that holds every
        // resource of the type): the shared layer already knows what changed since the
        // one this proxy was sent.
        if incremental
            && everything
            && let Some((prev, prev_sub)) = &state.sent_from
            && prev_sub == sub
            && let Some(changes) = ResourceType::from_url(type_url).and_then(|t| current.changed_since(prev, t))
        {
            let selected = Resources::List(changes.changed.as_slice().into());
            return Some(self.record_sotw_send(type_url, version, selected, &current));
        }
        if everything && !(incremental && state.sent_from.is_some()) {
            // Every resource of the type: the generation's, without a list per stream.
            if all.is_empty() && !sub.wildcard && state.sent_version.is_some() {
                return None;
            }
            let resources = Resources::whole(&current, type_url);
            return Some(self.record_sotw_send(type_url, version, resources, &current));
        }
        let mut selected: Vec<&Arc<Encoded>> = all.values().filter(|r| sub.wants(&r.name)).collect();
        // Named types with nothing to say and nothing said yet: stay silent, as Envoy
        // waits for the resources it named and an empty response would not help it.
        if selected.is_empty() && !sub.wildcard && state.sent_version.is_some() {
            return None;
        }
        if incremental && let Some((prev, prev_sub)) = &state.sent_from {
            // Both lists are in name order: walk them together. Resources that did not
            // change are usually the very same allocation (the generation cache reuses
            // them), so most steps are a pointer comparison.
            let mut before = prev.of_url(type_url).unwrap_or_default().values().peekable();
            selected.retain(|r| {
                if !prev_sub.wants(&r.name) {
                    return true;
                }
                while let Some(p) = before.peek() {
                    if Arc::ptr_eq(p, r) {
                        before.next();
                        return false;
                    }
                    match p.name.cmp(&r.name) {
                        std::cmp::Ordering::Less => {
                            before.next();
                        }
                        std::cmp::Ordering::Equal => {
                            let changed = p.version != r.version;
                            before.next();
                            return changed;
                        }
                        std::cmp::Ordering::Greater => return true,
                    }
                }
                true
            });
        }
        let resources = Resources::of(selected.into_iter().cloned().collect(), &current, type_url);
        Some(self.record_sotw_send(type_url, version, resources, &current))
    }

    /// Records a SotW response as sent and returns it.
    fn record_sotw_send(
        &mut self,
        type_url: &str,
        version: String,
        resources: Resources,
        current: &Arc<ProxyResources>,
    ) -> Response {
        let nonce = self.next_nonce();
        if let Some(state) = self.types.get_mut(type_url) {
            state.sent_version = Some(version.clone());
            state.sent_nonce = Some(nonce.clone());
            state.sent_at = Some(SystemTime::now());
            // Only EDS and RDS diff against it; keeping it for listeners and clusters
            // would pin old generations for nothing.
            state.sent_from =
                (!type_url::is_wildcard_type(type_url)).then(|| (Arc::clone(current), state.subscription.clone()));
            state.sent = Some(resources.clone());
        }
        Response::Sotw(SotwResponse { version_info: version, resources, type_url: type_url.to_string(), nonce })
    }

    /// The delta response for `type_url`: resources whose version differs from what the
    /// proxy holds, and removals.
    fn delta_push(&mut self, type_url: &str) -> Option<Response> {
        let current = Arc::clone(&self.current);
        let all = current.of_url(type_url).unwrap_or_default();
        let state = self.types.get_mut(type_url)?;
        // A first push of everything the proxy sees (CDS and LDS, and Envoy's first EDS
        // request naming every load assignment): the whole type, without a walk.
        let whole = state.synced.is_none() && state.client_versions.is_empty() && wants_all(state, &current, type_url);
        let (resources, mut removed) = if whole {
            (Vec::new(), Vec::new())
        } else if let Some(changes) = delta_known_changes(state, &current, type_url) {
            let wants = |n: &str| state.subscription.wants(n);
            (
                changes.changed.iter().filter(|e| wants(&e.name)).cloned().collect(),
                changes.removed.iter().filter(|n| wants(n)).cloned().collect(),
            )
        } else if state.synced.is_some() {
            delta_diff_synced(state, type_url, all)
        } else {
            delta_diff_versions(state, all)
        };
        // Named subscriptions to resources that do not exist are answered with a removal
        // once, so Envoy stops waiting for them (only new names need looking at).
        let candidates: Vec<String> = if whole {
            Vec::new()
        } else if state.synced.is_some() {
            state.fresh.iter().filter(|n| !all.contains_key(n)).cloned().collect()
        } else {
            absent(state.subscription.names.iter(), all)
        };
        let already: std::collections::HashSet<String> = removed.iter().cloned().collect();
        for n in candidates {
            if !state.client_versions.contains_key(&n) && !state.told_missing.contains(&n) && !already.contains(&n) {
                removed.push(n);
            }
        }
        for n in &removed {
            if state.subscription.names.contains(n) {
                state.told_missing.insert(n.clone());
            }
        }
        // Now the proxy holds exactly what it wants of the current generation.
        state.client_versions.clear();
        state.fresh.clear();
        state.synced = Some((Arc::clone(&current), state.subscription.wildcard));
        // Names subscribed one by one are kept as the shared layer's names instead.
        if let Some(base) = ResourceType::from_url(type_url).and_then(|t| current.shared_names(t))
            && state.subscription.names.worth_rebasing(&base)
        {
            state.subscription.names.rebase(&base);
        }
        let resources =
            if whole { Resources::whole(&current, type_url) } else { Resources::of(resources, &current, type_url) };
        // Nothing to send is still an answer the first time: Envoy's initial fetch of a
        // type waits for one response, so a gateway that no Gateway selects yet (and a
        // sidecar with no services) would otherwise never become ready.
        let first = state.sent_nonce.is_none();
        if resources.is_empty() && removed.is_empty() && !first {
            return None;
        }
        let nonce = self.next_nonce();
        let state = self.types.get_mut(type_url)?;
        let version = type_version(&current, type_url);
        state.sent_version = Some(version.clone());
        state.sent_nonce = Some(nonce.clone());
        state.sent_at = Some(SystemTime::now());
        state.sent = Some(resources.clone());
        if type_url == type_url::LISTENER {
            state.sent_removed.clone_from(&removed);
        }
        Some(Response::Delta(DeltaResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
        }))
    }
}

/// The version of a set of resources: the snapshot it came from is not part of it, so
/// an unchanged set keeps its version across snapshots and is not resent.
fn set_version<'a>(items: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut buf = Vec::new();
    for (n, v) in items {
        buf.extend_from_slice(n.as_bytes());
        buf.push(0);
        buf.extend_from_slice(v.as_bytes());
        buf.push(0);
    }
    content_version(&buf)
}

#[cfg(test)]
mod tests;

/// The version of every resource of `type_url` the proxy should hold; a type Spar does
/// not serve has none, and one fixed version.
fn type_version(current: &ProxyResources, type_url: &str) -> String {
    ResourceType::from_url(type_url).map_or_else(|| format!("{:016x}", 0), |t| current.type_version(t))
}
