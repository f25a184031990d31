//! What a SotW request subscribes to. Every SotW request (every ACK) repeats the whole
//! list of names, thousands for EDS in a full mesh; the cases that recur are recognised
//! by digest behind one call ([`sotw_subscription`]), so that the state machine's ACK
//! and nonce logic does not carry them.

use std::collections::BTreeSet;

use super::*;

/// What a SotW request's `names` subscribe to, given what the stream held before. Every
/// SotW request (every ACK) repeats the whole list, thousands of names for EDS in a full
/// mesh, so the usual cases are recognised without reading a name: the very list of the
/// last request, the same names in another order (by digest), or exactly the shared
/// layer's names (by its digest); only a new list is sorted and compared.
pub(super) fn sotw_subscription(
    state: &TypeState,
    names: &crate::request::Names,
    wildcard: bool,
    current: &ProxyResources,
    type_url: &str,
) -> Subscription {
    let all_current = state.subscription.all_current && !wildcard;
    if all_current && state.last_names == Some((names.ordered, names.count)) {
        // The very list of the last request (Envoy repeats it in the same order):
        // unchanged, without looking at a name.
        state.subscription.clone()
    } else if all_current && state.subscription.names_digest == (names.digest(), names.count) {
        // The same names as the request that made it "all current", in another order.
        state.subscription.clone()
    } else if let Some(digest) = layers_names_digest(current, type_url, names).filter(|_| !wildcard) {
        // Envoy's first EDS request names every load assignment it was sent: exactly
        // the shared layer's, compared by digest (no sort, no string read).
        Subscription {
            wildcard: false,
            names: Names::default(),
            all_current: true,
            names_digest: (digest, names.count),
        }
    } else {
        // Sorted, both lists are compared in one walk (Envoy's EDS request names
        // thousands of clusters: no string made and no lookup per name).
        let mut sorted: Vec<&str> = names.iter().filter(|n| *n != "*").collect();
        sorted.sort_unstable();
        sorted.dedup();
        let all_current = !wildcard
            && !sorted.is_empty()
            && current
                .of_url(type_url)
                .is_some_and(|v| v.len() == sorted.len() && v.keys().map(String::as_str).eq(sorted.iter().copied()));
        if all_current {
            let names_digest = (names.digest(), names.count);
            Subscription { wildcard: false, names: Names::default(), all_current: true, names_digest }
        } else {
            let list: BTreeSet<String> = sorted.into_iter().map(str::to_string).collect();
            Subscription { wildcard, names: list.into(), all_current: false, names_digest: (0, 0) }
        }
    }
}

/// The digest of `names` when they are exactly `current`'s resources of `type_url` and
/// those are the shared layer's: the same count and the same digest.
fn layers_names_digest(current: &ProxyResources, type_url: &str, names: &crate::request::Names) -> Option<u64> {
    let t = ResourceType::from_url(type_url)?;
    let (digest, count) = current.shared_names_digest(t)?;
    (names.count == count && current.of(t).is_some_and(|v| v.len() == count) && names.digest() == digest)
        .then_some(digest)
}
