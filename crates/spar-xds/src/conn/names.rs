//! The resource names a delta stream subscribed to, kept compact.
//!
//! Envoy's delta EDS subscription names every cluster it was sent: 4,000 names per proxy
//! in a 1k-service full mesh, which as strings per stream were most of the memory of a
//! delta control plane (1 GB at 2k proxies). Those names are, almost always, exactly the
//! names of the load assignments of the shared layer the proxy was generated from. So a
//! set is kept as a shared base (that layer's names, one copy for every stream that uses
//! it, kept across generations while the names do not change) plus the few names added
//! to it and taken from it.

use std::collections::BTreeSet;
use std::sync::Arc;

/// A set of names: `base ∪ plus − minus`, with `plus` disjoint from `base` and `minus`
/// a subset of it.
#[derive(Clone, Debug, Default)]
pub struct Names {
    base: Option<Arc<BTreeSet<String>>>,
    plus: BTreeSet<String>,
    minus: BTreeSet<String>,
    /// A base [`Self::rebase`] found not worth it (its address; only compared).
    declined: Option<usize>,
}

/// Rebase once this many names are kept outside the base.
const REBASE_AT: usize = 32;

impl Names {
    fn in_base(&self, name: &str) -> bool {
        self.base.as_ref().is_some_and(|b| b.contains(name))
    }

    /// Whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.plus.contains(name) || (self.in_base(name) && !self.minus.contains(name))
    }

    /// Adds `name`.
    pub fn insert(&mut self, name: &str) {
        if self.in_base(name) {
            self.minus.remove(name);
        } else if !self.plus.contains(name) {
            self.plus.insert(name.to_string());
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        if self.in_base(name) {
            if !self.minus.contains(name) {
                self.minus.insert(name.to_string());
            }
        } else {
            self.plus.remove(name);
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.len()) - self.minus.len() + self.plus.len()
    }

    /// Every name, in order.
    pub fn iter(&self) -> impl Iterator<Item = &String> + '_ {
        let mut base = self.base.iter().flat_map(|b| b.iter()).filter(|n| !self.minus.contains(*n)).peekable();
        let mut plus = self.plus.iter().peekable();
        std::iter::from_fn(move || match (base.peek(), plus.peek()) {
            (Some(b), Some(p)) => {
                if b < p {
                    base.next()
                } else {
                    plus.next()
                }
            }
            (Some(_), None) => base.next(),
            (None, _) => plus.next(),
        })
    }

    /// Exactly the names of `base`.
    pub fn over(base: Arc<BTreeSet<String>>) -> Self {
        Self { base: Some(base), ..Self::default() }
    }

    /// Whether `base` is this set's base already.
    pub fn is_based_on(&self, base: &Arc<BTreeSet<String>>) -> bool {
        self.base.as_ref().is_some_and(|b| Arc::ptr_eq(b, base))
    }

    /// Whether these are exactly the names of `base` (that very copy, nothing added or
    /// dropped).
    pub fn is_exactly(&self, base: &Arc<BTreeSet<String>>) -> bool {
        self.is_based_on(base) && self.plus.is_empty() && self.minus.is_empty()
    }

    /// Keeps the same names over `base` instead, when that keeps few names outside it
    /// (or no more than now): when the names are `base`'s (as after Envoy subscribed to every
    /// load assignment it was sent), nothing else is kept. A base that does not pay is
    /// remembered and not tried again.
    pub fn rebase(&mut self, base: &Arc<BTreeSet<String>>) {
        if self.is_based_on(base) || self.declined == Some(Arc::as_ptr(base) as usize) {
            return;
        }
        let plus: BTreeSet<String> = self.iter().filter(|n| !base.contains(*n)).cloned().collect();
        let minus: BTreeSet<String> = base.iter().filter(|n| !self.contains(n)).cloned().collect();
        let outside = plus.len() + minus.len();
        if outside > self.plus.len() + self.minus.len() && outside >= REBASE_AT {
            self.declined = Some(Arc::as_ptr(base) as usize);
            return;
        }
        *self = Self { base: Some(Arc::clone(base)), plus, minus, declined: None };
    }

    /// Whether moving to `base` may pay: enough names are kept outside the current base,
    /// or there is a current base and `base` replaces it (the layer's names changed).
    pub fn worth_rebasing(&self, base: &Arc<BTreeSet<String>>) -> bool {
        !self.is_based_on(base) && (self.base.is_some() || self.plus.len() + self.minus.len() >= REBASE_AT)
    }
}

/// Whether `list` (in any order, repeats allowed) names exactly `set`, whose
/// [`crate::request::names_digest`] is `digest`. A list as long as the set (Envoy's,
/// which has no repeats) is compared by digest alone: no sort, and none of the set's
/// strings read (at 2k proxies × 4,000 names that walk was 4% of a reconnect storm).
pub fn names_are(list: &crate::request::Names, set: &BTreeSet<String>, digest: u64) -> bool {
    if list.count == set.len() {
        return list.digest() == digest;
    }
    if list.count < set.len() {
        return false;
    }
    let mut v: Vec<&str> = list.iter().collect();
    v.sort_unstable();
    v.dedup();
    v.len() == set.len() && v.iter().zip(set).all(|(a, b)| *a == b.as_str())
}

impl From<BTreeSet<String>> for Names {
    fn from(plus: BTreeSet<String>) -> Self {
        Self { plus, ..Self::default() }
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Names {}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_set_over_a_base_behaves_as_the_plain_set() {
        let base = Arc::new(set(&["b", "d", "f"]));
        let mut n = Names::default();
        for x in ["a", "b", "d", "f", "g"] {
            n.insert(x);
        }
        assert!(n.worth_rebasing(&base) || n.plus.len() < REBASE_AT);
        n.rebase(&base);
        assert!(n.is_based_on(&base));
        assert_eq!((n.plus.len(), n.minus.len()), (2, 0), "only what the base lacks");
        n.remove("d");
        n.remove("a");
        n.insert("c");
        n.insert("d");
        n.remove("f");
        n.remove("zz");
        let want = set(&["b", "c", "d", "g"]);
        assert_eq!(n.iter().cloned().collect::<BTreeSet<_>>(), want);
        assert_eq!(n.iter().cloned().collect::<Vec<_>>(), want.iter().cloned().collect::<Vec<_>>(), "in order");
        assert_eq!(n.len(), 4);
        assert!(n.contains("d") && !n.contains("f") && !n.contains("a"));
        // Equality is of the names, whatever the base.
        let mut plain = Names::default();
        for x in &want {
            plain.insert(x);
        }
        assert_eq!(n, plain);
        // Rebasing onto the very names keeps nothing beside them.
        let exact = Arc::new(want);
        n.rebase(&exact);
        assert_eq!((n.plus.len(), n.minus.len(), n.len()), (0, 0, 4));
        assert!(Names::default().is_empty() && !n.is_empty());
        // A request's list names a set in any order, repeats allowed; nothing more or less.
        let list = |v: &[&str]| {
            let req = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
                resource_names_subscribe: v.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            crate::request::DeltaRequest::from(req).subscribe
        };
        let digest = crate::request::names_digest(base.iter());
        assert!(names_are(&list(&["f", "b", "d", "b"]), &base, digest));
        assert!(names_are(&list(&["d", "f", "b"]), &base, digest));
        assert!(!names_are(&list(&["f", "b"]), &base, digest));
        assert!(!names_are(&list(&["f", "b", "b"]), &base, digest), "a repeat in place of a name");
        assert!(!names_are(&list(&["f", "b", "x"]), &base, digest));
        assert!(!names_are(&list(&["f", "b", "d", "*"]), &base, digest));
        assert!(!names_are(&list(&["f", "b", "x", "d"]), &base, digest));
        // A base that would keep many more names outside it is declined.
        let mut few = Names::from(set(&["x"]));
        let big = Arc::new((0..100).map(|i| i.to_string()).collect::<BTreeSet<_>>());
        few.rebase(&big);
        assert!(!few.is_based_on(&big) && few.contains("x") && few.len() == 1);
    }
}
