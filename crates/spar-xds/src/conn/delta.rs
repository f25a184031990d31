//! The delta side's diffs: what a proxy holds against what it should, by generation
//! (`synced`), by per-resource versions, or from what the shared layer says changed.

use std::sync::Arc;

use super::*;

/// The resources of a name-ordered list whose names are in `names`, by walking both.
pub(super) fn in_names<'a>(
    it: impl Iterator<Item = &'a Arc<Encoded>> + 'a,
    names: &'a Names,
) -> impl Iterator<Item = &'a Arc<Encoded>> + 'a {
    let mut ns = names.iter().peekable();
    it.filter(move |e| {
        while let Some(n) = ns.peek() {
            match n.as_str().cmp(e.name.as_str()) {
                std::cmp::Ordering::Less => {
                    ns.next();
                }
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Greater => return false,
            }
        }
        false
    })
}

/// Delta: what changed since the generation the proxy was brought up to, when the
/// shared layer knows it ([`ProxyResources::changed_since`]) and the proxy asked for
/// nothing new since.
pub(super) fn delta_known_changes<'a>(
    state: &TypeState,
    current: &'a ProxyResources,
    type_url: &str,
) -> Option<std::borrow::Cow<'a, crate::resources::TypeChanges>> {
    let (from, wild) = state.synced.as_ref()?;
    if !state.fresh.is_empty() || !state.client_versions.is_empty() || *wild != state.subscription.wildcard {
        return None;
    }
    current.changed_since(from, ResourceType::from_url(type_url)?)
}

/// Delta: whether the proxy wants every resource of the type in `current`, and nothing
/// else: a wildcard, or exactly the shared layer's names when the proxy's own layer has
/// none besides them.
pub(super) fn wants_all(state: &TypeState, current: &ProxyResources, type_url: &str) -> bool {
    let sub = &state.subscription;
    if sub.wildcard {
        return sub.names.is_empty();
    }
    let Some(t) = ResourceType::from_url(type_url) else { return false };
    current.shared_names(t).is_some_and(|base| {
        sub.names.is_exactly(&base) && current.layers(t).1.is_none_or(|own| own.keys().all(|n| base.contains(n)))
    })
}

/// The names of an ordered list that `all` has no resource of, by walking both.
pub(super) fn absent<'a>(names: impl Iterator<Item = &'a String>, all: crate::resources::TypeView<'_>) -> Vec<String> {
    let mut have = all.keys().peekable();
    let mut out = Vec::new();
    for n in names {
        while have.next_if(|h| *h < n).is_some() {}
        if have.peek() != Some(&n) {
            out.push(n.clone());
        }
    }
    out
}

/// Delta changes against per-resource versions (the first push, or after a resume).
pub(super) fn delta_diff_versions(
    state: &TypeState,
    all: crate::resources::TypeView<'_>,
) -> (Vec<Arc<Encoded>>, Vec<String>) {
    let mut resources: Vec<Arc<Encoded>> = Vec::new();
    let sub = &state.subscription;
    let wanted: Box<dyn Iterator<Item = &Arc<Encoded>>> =
        if sub.wildcard { Box::new(all.values()) } else { Box::new(in_names(all.values(), &sub.names)) };
    for r in wanted {
        if state.client_versions.get(&r.name) != Some(&r.version) {
            resources.push(Arc::clone(r));
        }
    }
    let removed: Vec<String> = state
        .client_versions
        .keys()
        .filter(|n| !all.contains_key(n) || !state.subscription.wants(n))
        .cloned()
        .collect();
    (resources, removed)
}

/// Delta changes against the generation the proxy was last brought up to: both lists in
/// name order, walked together; unchanged resources are usually the same allocation.
pub(super) fn delta_diff_synced(
    state: &TypeState,
    type_url: &str,
    all: crate::resources::TypeView<'_>,
) -> (Vec<Arc<Encoded>>, Vec<String>) {
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    let Some((from, wild)) = &state.synced else { return (resources, removed) };
    let names = &state.subscription.names;
    let before = from.of_url(type_url).unwrap_or_default().values();
    let held: Box<dyn Iterator<Item = &Arc<Encoded>>> = if *wild {
        Box::new(before)
    } else {
        Box::new(in_names(before, names).filter(|p| state.fresh.is_empty() || !state.fresh.contains(&p.name)))
    };
    let mut held = held.peekable();
    let now: Box<dyn Iterator<Item = &Arc<Encoded>>> =
        if state.subscription.wildcard { Box::new(all.values()) } else { Box::new(in_names(all.values(), names)) };
    let mut now = now.peekable();
    loop {
        match (held.peek(), now.peek()) {
            (None, None) => break,
            (Some(p), None) => {
                removed.push(p.name.clone());
                held.next();
            }
            (None, Some(c)) => {
                resources.push(Arc::clone(c));
                now.next();
            }
            (Some(p), Some(c)) => {
                if Arc::ptr_eq(p, c) {
                    held.next();
                    now.next();
                    continue;
                }
                match p.name.cmp(&c.name) {
                    std::cmp::Ordering::Less => {
                        removed.push(p.name.clone());
                        held.next();
                    }
                    std::cmp::Ordering::Greater => {
                        resources.push(Arc::clone(c));
                        now.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if p.version != c.version {
                            resources.push(Arc::clone(c));
                        }
                        held.next();
                        now.next();
                    }
                }
            }
        }
    }
    (resources, removed)
}
