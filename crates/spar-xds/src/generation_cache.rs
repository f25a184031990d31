//! The shared generation cache: one generated and encoded copy of the shared part of the
//! config per snapshot and share key, made once while other streams of the key wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use spar_generate::generator::ShareKey;
use spar_model::{Proxy, Snapshot};

/// Shared config per (snapshot, share key): replicas of a workload reuse one generated
/// and encoded copy instead of building their own. Cleared when the snapshot changes.
///
/// Each key is generated once: when a new snapshot reaches thousands of streams at once,
/// the first stream of a key generates and the others of that key wait for its result
/// instead of generating the same config again (at 2k full-mesh proxies that duplicate
/// work was hundreds of generations per snapshot).
#[derive(Debug, Default)]
pub struct GenerationCache {
    inner: Mutex<(u64, std::collections::HashMap<ShareKey, Arc<SharedCell>>)>,
    /// The previous snapshot's entries: new generations reuse their unchanged resources.
    previous: Mutex<std::collections::HashMap<ShareKey, Arc<SharedCell>>>,
    /// Lookups served from the cache (or by waiting for another stream's generation).
    pub hits: AtomicU64,
    /// Lookups that generated.
    pub misses: AtomicU64,
    /// Resources a generated layer took from another key's layer instead of keeping its
    /// own copy.
    pub shared_resources: AtomicU64,
}

type SharedCell = std::sync::OnceLock<Arc<crate::ProxyResources>>;

impl GenerationCache {
    /// The shared part of `proxy`'s config from `snapshot`, generated at most once per key.
    pub fn shared(&self, snapshot: &Snapshot, proxy: &Proxy) -> Arc<crate::ProxyResources> {
        let key = spar_generate::generator::share_key(snapshot, proxy);
        let cell = match self.inner.lock() {
            Ok(mut g) if g.0 <= snapshot.version => {
                if g.0 != snapshot.version {
                    let old = std::mem::take(&mut g.1);
                    if let Ok(mut p) = self.previous.lock() {
                        *p = old;
                    }
                    g.0 = snapshot.version;
                }
                Some(Arc::clone(g.1.entry(key.clone()).or_default()))
            }
            // A stream still on an older snapshot than the cache (or a poisoned lock):
            // generate without caching.
            _ => None,
        };
        let generate = || {
            self.misses.fetch_add(1, Ordering::Relaxed);
            let prev = self.previous.lock().ok().and_then(|p| p.get(&key).and_then(|c| c.get().cloned()));
            // Only endpoints changed: redo the clusters and load assignments they touch.
            if let Some(mut patched) =
                prev.as_ref().and_then(|p| spar_generate::generator::regenerate_shared(snapshot, proxy, p))
            {
                self.share_with_sibling(&mut patched, &key);
                return Arc::new(patched);
            }
            let mut generated = spar_generate::generator::generate_shared(snapshot, proxy);
            if let Some(prev) = prev {
                generated.reuse_unchanged(&prev);
            }
            self.share_with_sibling(&mut generated, &key);
            Arc::new(generated)
        };
        let Some(cell) = cell else { return generate() };
        if let Some(r) = cell.get() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Arc::clone(r);
        }
        // Generated outside the map's lock; streams of other keys keep going meanwhile,
        // streams of this key wait here for the one generation.
        let mut generated_here = false;
        let r = cell.get_or_init(|| {
            generated_here = true;
            generate()
        });
        if !generated_here {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        Arc::clone(r)
    }

    /// Shares `layer`'s resources with another key's layer of the same snapshot already
    /// generated: one copy of the clusters and load assignments that every namespace of
    /// a mesh sees alike, instead of one per namespace. Of the layers there, the largest
    /// of the same proxy kind is taken (a Sidecar-scoped workload's few clusters would
    /// share little); one walk over both, once per generation.
    fn share_with_sibling(&self, layer: &mut crate::ProxyResources, key: &ShareKey) {
        let sibling = self.inner.lock().ok().and_then(|g| {
            if g.0 != layer.snapshot_version {
                return None;
            }
            g.1.iter()
                .filter(|(k, _)| *k != key)
                .filter_map(|(k, c)| Some((k.kind == key.kind, c.get()?)))
                .max_by_key(|(same_kind, r)| (*same_kind, r.resource_count()))
                .map(|(_, r)| Arc::clone(r))
        });
        if let Some(sibling) = sibling {
            self.shared_resources.fetch_add(layer.share_with(&sibling) as u64, Ordering::Relaxed);
        }
    }
}
