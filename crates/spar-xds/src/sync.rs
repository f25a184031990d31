//! Per-stream sync state for `proxy-status`, `spar wait` and `/debug/syncz`: what each
//! connected proxy was sent, what it ACKed or NACKed, and the resources it holds.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use spar_model::Proxy;

use crate::conn::{Connection, Variant};
use crate::resources::type_url;

/// Sync state of one type on one stream, for `proxy-status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TypeSync {
    /// Version last sent.
    pub sent: Option<String>,
    /// Nonce last sent.
    pub nonce: Option<String>,
    /// Seconds since the epoch of the last push.
    pub sent_at: Option<u64>,
    /// Version last ACKed.
    pub acked: Option<String>,
    /// Seconds since the epoch of the last ACK.
    pub acked_at: Option<u64>,
    /// The same in milliseconds (Envoy ACKs once it has applied a response: benchmarks
    /// time convergence by it).
    pub acked_at_ms: Option<u64>,
    /// The last NACK: version, Envoy's message, when.
    pub nack: Option<NackInfo>,
}

/// A NACK as shown by `proxy-status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NackInfo {
    /// Rejected version.
    pub version: String,
    /// Envoy's error detail.
    pub message: String,
    /// What Envoy did with the response ([`crate::conn::Nack::outcome`]).
    pub outcome: String,
    /// Where the Istio objects that likely produced the refused resources are (file:line).
    pub from: Vec<String>,
    /// Seconds since the epoch.
    pub at: u64,
}

/// One connected proxy's sync state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxySync {
    /// Node id.
    pub proxy: String,
    /// `sotw` or `delta`.
    pub variant: String,
    /// Proven identity, if any.
    pub identity: Option<String>,
    /// The proxy proved no identity while Spar serves a secure port: anyone could have
    /// opened this stream, so its NACKs are shown but not believed (no reject count, no
    /// status condition, not waited for by `spar wait`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
    /// Snapshot version last generated for it.
    pub snapshot: u64,
    /// Per type (lds, rds, cds, eds, sds).
    pub types: BTreeMap<String, TypeSync>,
    /// What generation left out of this proxy's config and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The proxy as its node metadata describes it (for `spar proxy-config`).
    #[serde(skip)]
    pub node: Option<Arc<Proxy>>,
    /// What the stream serves the proxy now (generated config and its secrets), for
    /// `spar proxy-config`; shared with the stream, not a copy.
    #[serde(skip)]
    pub resources: Option<Arc<crate::ProxyResources>>,
}

/// Every open stream's sync state, kept current by the stream tasks.
#[derive(Debug, Default)]
pub struct SyncRegistry {
    streams: Mutex<BTreeMap<u64, ProxySync>>,
    pub(crate) next: AtomicU64,
}

impl SyncRegistry {
    /// A copy of every stream's state.
    pub fn snapshot(&self) -> Vec<ProxySync> {
        self.streams.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Brings a stream's entry up to date. Called after every request and push, so an
    /// existing entry is updated in place (a string is copied only when it changed, into
    /// the one it replaces) rather than rebuilt: rebuilding was tens of allocations per
    /// ACK, 8-11% of the server's CPU while 2,000 proxies ACKed an endpoint change.
    pub(crate) fn update(
        &self,
        id: u64,
        conn: &Connection,
        proxy: &Arc<Proxy>,
        unverified: bool,
        snapshot: u64,
        warnings: &[String],
    ) {
        let since_epoch = |t: Option<SystemTime>| t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        let secs = |t: Option<SystemTime>| since_epoch(t).map(|d| d.as_secs());
        let millis = |t: Option<SystemTime>| since_epoch(t).and_then(|d| u64::try_from(d.as_millis()).ok());
        let Ok(mut streams) = self.streams.lock() else { return };
        let entry = streams.entry(id).or_insert_with(|| ProxySync {
            proxy: proxy.id.clone(),
            variant: match conn.variant() {
                Variant::Sotw => "sotw".into(),
                Variant::Delta => "delta".into(),
            },
            identity: proxy.identity.clone(),
            unverified,
            snapshot,
            types: BTreeMap::new(),
            warnings: Vec::new(),
            node: Some(Arc::clone(proxy)),
            resources: None,
        });
        entry.snapshot = snapshot;
        if entry.warnings != warnings {
            entry.warnings = warnings.to_vec();
        }
        // What the stream served before may be the last reference to it: dropped below,
        // once the lock is let go.
        let mut before = None;
        if !entry.resources.as_ref().is_some_and(|r| Arc::ptr_eq(r, conn.current())) {
            before = entry.resources.replace(Arc::clone(conn.current()));
        }
        for (t, st) in conn.types() {
            let short = type_url::short(t);
            if !entry.types.contains_key(short) {
                entry.types.insert(short.to_string(), TypeSync::default());
            }
            let Some(sync) = entry.types.get_mut(short) else { continue };
            let copy = |shown: &mut Option<String>, now: &Option<String>| {
                if shown != now {
                    shown.clone_from(now);
                }
            };
            copy(&mut sync.sent, &st.sent_version);
            copy(&mut sync.nonce, &st.sent_nonce);
            copy(&mut sync.acked, &st.acked_version);
            sync.sent_at = secs(st.sent_at);
            sync.acked_at = secs(st.acked_at);
            sync.acked_at_ms = millis(st.acked_at);
            match (&mut sync.nack, &st.last_nack) {
                (Some(shown), Some(n)) if shown.version == n.version && shown.at == secs(Some(n.at)).unwrap_or(0) => {
                    if shown.from != n.from {
                        shown.from.clone_from(&n.from);
                    }
                }
                (shown, n) => {
                    *shown = n.as_ref().map(|n| NackInfo {
                        version: n.version.clone(),
                        message: n.message.clone(),
                        outcome: n.outcome(t),
                        from: n.from.clone(),
                        at: secs(Some(n.at)).unwrap_or(0),
                    });
                }
            }
        }
        drop(streams);
        drop(before);
    }

    pub(crate) fn remove(&self, id: u64) {
        // Dropped once the lock is let go (it may hold the stream's last config).
        let gone = self.streams.lock().ok().and_then(|mut m| m.remove(&id));
        drop(gone);
    }
}
