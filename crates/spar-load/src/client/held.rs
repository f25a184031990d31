//! What a simulated proxy holds, as far as subscribing needs: states that are never
//! changed, only replaced, and shared by the proxies of a thread that reach the same one.

use super::*;

/// What a proxy holds of CDS or LDS, as far as subscribing needs: each resource's name
/// and the names it makes the proxy subscribe to (an EDS cluster: its own name, in EDS;
/// a listener: the route configurations it names, in RDS).
///
/// A state is never changed, only replaced, and may be shared: every proxy of a full
/// mesh is sent the same clusters and listeners. With `--decode discovery`, a proxy that
/// receives from the same state the very bytes another proxy on its thread received
/// takes the state that proxy reached ([`Holdings::step`]) instead of decoding thousands of
/// resources again: decoding them, the maps and their names were a third of the client's
/// CPU and most of its memory in a full-mesh reconnect storm, on the cores it shares with
/// the server it measures.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Unique per state; 0 for holding nothing.
    pub(super) id: u64,
    /// Each resource's name and what it subscribes to.
    pub(super) by_name: BTreeMap<Name, Vec<Name>>,
    /// All they subscribe to.
    pub(super) wanted: Arc<BTreeSet<Name>>,
    /// `wanted` as SotW request field 3 (every ACK repeats it).
    pub(super) wire: Bytes,
}

/// A state and the first resource that could not be decoded on the way to it.
pub(super) type Step = (Arc<Held>, Option<String>);

/// Where a response takes a proxy: the state after, the first resource that could not
/// be read or decoded (a NACK's reason), and the response's sizes.
pub(super) type Outcome<S> = (Arc<S>, Option<String>, Sizes);

/// Per client thread: (state before, what was received) → the outcome, while some
/// proxy holds the state after (the table keeps none alive).
pub(super) type Memo<S> =
    std::cell::RefCell<std::collections::HashMap<(u64, u64), Remembered<S>, foldhash::fast::FixedState>>;
pub(super) type Remembered<S> = (std::sync::Weak<S>, Option<String>, Sizes);

/// The outcome remembered for `key` in `memo`, else `work`'s, remembered. With
/// `--decode discovery`, a proxy that receives from some state the very bytes another
/// proxy on its thread received from it takes that proxy's outcome instead of reading
/// thousands of resources again: every proxy of a full mesh is sent the same clusters,
/// listeners and load assignments.
/// With `--decode all` every proxy does all the work itself.
pub(super) fn remember<S>(
    memo: &'static std::thread::LocalKey<Memo<S>>,
    key: (u64, u64),
    decode: Decode,
    work: impl FnOnce() -> Outcome<S>,
) -> Outcome<S> {
    if decode == Decode::All {
        return work();
    }
    let taken = memo.with_borrow(|m| m.get(&key).and_then(|(s, e, b)| Some((s.upgrade()?, e.clone(), *b))));
    if let Some(outcome) = taken {
        return outcome;
    }
    let outcome = work();
    memo.with_borrow_mut(|m| {
        // Bounded: a storm needs a few states per scope, churn a few more.
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(key, (Arc::downgrade(&outcome.0), outcome.1.clone(), outcome.2));
    });
    outcome
}

/// A new state's number (0 is holding nothing).
pub(super) fn next_id() -> u64 {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Held {
    /// The state after a CDS or LDS response: only its resources when `replace` (SotW),
    /// else these added or updated and `removed` taken out (delta).
    pub(super) fn apply(
        &self,
        kind: XdsType,
        replace: bool,
        items: &Items<'_>,
        removed: &[String],
        decode: Decode,
    ) -> Step {
        let mut by_name = if replace { BTreeMap::new() } else { self.by_name.clone() };
        for name in removed {
            by_name.remove(name.as_str());
        }
        let mut error = None;
        for (name, value) in items {
            match resource(kind, name, value, decode) {
                Ok((name, subscribes)) => {
                    by_name.insert(name, subscribes);
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let wanted: BTreeSet<Name> = by_name.values().flatten().cloned().collect();
        let wanted = if wanted == *self.wanted { Arc::clone(&self.wanted) } else { Arc::new(wanted) };
        let mut wire = Vec::new();
        for n in wanted.iter() {
            prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut wire);
            prost::encoding::encode_varint(n.len() as u64, &mut wire);
            wire.extend_from_slice(n.as_bytes());
        }
        (Arc::new(Held { id: next_id(), by_name, wanted, wire: wire.into() }), error)
    }
}

/// The EDS or RDS names a delta proxy holds, as 64-bit hashes (thousands per proxy),
/// for removals and for knowing when it holds all it subscribed to. Shared like
/// [`Held`]. A SotW proxy keeps an empty one: its responses replace what it held, and
/// nothing needs the names, but it still shares the reading of what it receives.
#[derive(Debug, Default)]
pub(super) struct NamesHeld {
    /// Unique per state; 0 for holding nothing.
    pub(super) id: u64,
    pub(super) names: FastSet<u64>,
}

impl NamesHeld {
    /// The state after an EDS or RDS response: the names it brings added and `removed`
    /// taken out when `track` (delta), none kept otherwise.
    pub(super) fn apply(
        &self,
        kind: XdsType,
        track: bool,
        read: Read<'_>,
        removed: &[String],
        decode: Decode,
    ) -> Outcome<Self> {
        let Read { items, mut error, sizes } = read;
        let mut names = if track { self.names.clone() } else { FastSet::default() };
        for (name, value) in &items {
            if track {
                names.insert(name_hash(name));
            }
            if decode == Decode::All
                && let Err(e) = check(kind, name, value)
            {
                error.get_or_insert(e);
            }
        }
        if track {
            for name in removed {
                names.remove(&name_hash(name));
            }
        }
        (Arc::new(Self { id: next_id(), names }), error, sizes)
    }
}

/// What a proxy holds, as far as subscribing needs to know.
#[derive(Debug, Default)]
pub(super) struct Holdings {
    /// Clusters and listeners.
    pub(super) cds: Arc<Held>,
    pub(super) lds: Arc<Held>,
    /// EDS and RDS names held (delta), or the last response's reading shared (SotW).
    pub(super) eds_held: Arc<NamesHeld>,
    pub(super) rds_held: Arc<NamesHeld>,
    /// EDS and RDS names subscribed to.
    pub(super) eds_sub: Arc<BTreeSet<Name>>,
    pub(super) rds_sub: Arc<BTreeSet<Name>>,
    /// Whether each type's latest response (for the current subscription) was answered.
    pub(super) answered: [bool; 4],
    /// (subscription generation, resources held) when the last EDS and RDS responses
    /// were answered: full once that generation is the current one. A generation instead
    /// of a copy of the names keeps the client cheap at thousands of names per proxy.
    pub(super) answered_for: [(u64, usize); 2],
    /// Bumped whenever the EDS or RDS subscription changes.
    pub(super) sub_generation: [u64; 2],
    /// SotW: the EDS (0) and RDS (1) subscriptions' names as request field 3 (every ACK
    /// repeats them: thousands in a full mesh).
    pub(super) sub_wire: [Bytes; 2],
    /// Last ACKed version and last nonce per type (SotW).
    pub(super) acked_version: [String; 4],
    pub(super) nonce: [String; 4],
}

impl Holdings {
    /// Takes the state after a response that hashes to `content` (the whole message,
    /// [`crate::grpc::Chunks::content_hash`]), read by `read` if it has to be; `delta`
    /// adds to and removes from what was held, SotW replaces it. Returns the first
    /// resource that could not be read or decoded, and the response's sizes.
    pub(super) fn step<'a>(
        &mut self,
        kind: XdsType,
        delta: bool,
        content: u64,
        read: impl FnOnce() -> Read<'a>,
        removed: &[String],
        decode: Decode,
    ) -> (Option<String>, Sizes) {
        thread_local! {
            static HELD: Memo<Held> = std::cell::RefCell::default();
            static NAMES: Memo<NamesHeld> = std::cell::RefCell::default();
        }
        match kind {
            XdsType::Cds | XdsType::Lds => {
                let held = if kind == XdsType::Cds { &mut self.cds } else { &mut self.lds };
                // SotW replaces what was held: the state before does not matter.
                let key = (if delta { held.id } else { 0 }, content);
                let (next, error, sizes) = remember(&HELD, key, decode, || {
                    let Read { items, error, sizes } = read();
                    let (next, e) = held.apply(kind, !delta, &items, removed, decode);
                    (next, error.or(e), sizes)
                });
                *held = next;
                (error, sizes)
            }
            XdsType::Eds | XdsType::Rds => {
                let held = if kind == XdsType::Eds { &mut self.eds_held } else { &mut self.rds_held };
                let key = (if delta { held.id } else { 0 }, content);
                let (next, error, sizes) =
                    remember(&NAMES, key, decode, || held.apply(kind, delta, read(), removed, decode));
                *held = next;
                (error, sizes)
            }
        }
    }

    /// Whether what the clusters (0) or listeners (1) held subscribe to differs from the
    /// EDS (0) or RDS (1) subscription.
    pub(super) fn wants_other(&self, i: usize) -> bool {
        if i == 0 { !same(&self.cds.wanted, &self.eds_sub) } else { !same(&self.lds.wanted, &self.rds_sub) }
    }

    /// Subscribes EDS (0) or RDS (1) to what the clusters or listeners held want.
    pub(super) fn subscribe(&mut self, i: usize) {
        let held = if i == 0 { &self.cds } else { &self.lds };
        self.sub_wire[i] = held.wire.clone();
        let wanted = Arc::clone(&held.wanted);
        if i == 0 {
            self.eds_sub = wanted;
        } else {
            self.rds_sub = wanted;
        }
        self.sub_generation[i] += 1;
    }

    pub(super) fn is_full(&self) -> bool {
        self.answered[XdsType::Cds as usize]
            && self.answered[XdsType::Lds as usize]
            && (self.eds_sub.is_empty()
                || (self.answered[XdsType::Eds as usize] && self.answered_for[0].0 == self.sub_generation[0]))
            && (self.rds_sub.is_empty()
                || (self.answered[XdsType::Rds as usize] && self.answered_for[1].0 == self.sub_generation[1]))
    }
}
