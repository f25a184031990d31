//! NACKs traced back to the Istio objects that likely caused them, for their status.
//!
//! A NACK names a type, the resources of the rejected response and Envoy's message. The
//! culprits are found from what Spar's generated names encode:
//!
//! | rejected | culprits |
//! |---|---|
//! | listener `<address>_<port>` | Sidecars whose ingress/egress `bind` is that address; Gateways with a server on that port (gateway proxies) |
//! | cluster `outbound\|<port>\|<subset>\|<host>` | the DestinationRule and ServiceEntry of that host |
//! | any | VirtualServices, DestinationRules and ServiceEntries whose host appears in Envoy's message |
//!
//! Only resources named in Envoy's message are considered when it names any (Envoy
//! usually does: "Error adding/updating listener(s) 192.0.2.1_9999: ..."). A proxy's
//! rejection is withdrawn when it ACKs that type again or disconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use spar_model::{Proxy, ProxyKind, Snapshot};
use tokio::sync::watch;

use crate::conn::Nack;
use crate::resources::type_url;

/// Longest Envoy message quoted in a status.
const MAX_MESSAGE: usize = 400;

/// Current rejections: by the store unit (`origin.file`) of each culprit, what it says.
pub type ByUnit = Arc<BTreeMap<String, String>>;

/// Per (stream, type URL): the culprits' units and what to say of them.
type ByStream = BTreeMap<(u64, String), Vec<(String, String)>>;

/// The rejections of every open stream.
#[derive(Debug)]
pub struct Rejections {
    by_stream: Mutex<ByStream>,
    published: watch::Sender<ByUnit>,
}

impl Default for Rejections {
    fn default() -> Self {
        Self { by_stream: Mutex::default(), published: watch::channel(ByUnit::default()).0 }
    }
}

impl Rejections {
    /// Follows the current rejections (unit → message).
    pub fn subscribe(&self) -> watch::Receiver<ByUnit> {
        self.published.subscribe()
    }

    pub(crate) fn record(&self, stream: u64, type_url: &str, proxy: &Proxy, snap: &Snapshot, nack: &Nack) {
        let mut message: String = nack.message.chars().take(MAX_MESSAGE).collect();
        if message.len() < nack.message.len() {
            message.push_str("...");
        }
        let says = format!("rejected by proxy {} ({}): {message}", proxy.id, type_url::short(type_url));
        let units: BTreeSet<String> =
            culprits(snap, proxy, type_url, nack).into_iter().map(|o| o.file.to_string()).collect();
        let entries = units.into_iter().map(|u| (u, says.clone())).collect();
        self.lock().insert((stream, type_url.to_string()), entries);
        self.publish();
    }

    /// Withdraws a stream's rejection of `type_url` (an ACK), or all of them (`None`: the
    /// stream ended).
    pub(crate) fn clear(&self, stream: u64, type_url: Option<&str>) {
        let removed = {
            let mut m = self.lock();
            let before = m.len();
            m.retain(|(s, t), _| *s != stream || type_url.is_some_and(|u| u != t));
            m.len() != before
        };
        if removed {
            self.publish();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByStream> {
        self.by_stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self) {
        let mut out = BTreeMap::new();
        for (unit, says) in self.lock().values().flatten() {
            out.entry(unit.clone()).or_insert_with(|| says.clone());
        }
        self.published.send_if_modified(|cur| {
            let changed = **cur != out;
            if changed {
                *cur = Arc::new(out);
            }
            changed
        });
    }
}

/// Where the objects that likely caused `nack` are defined (file:line; the file is the
/// store unit).
pub fn culprits(snap: &Snapshot, proxy: &Proxy, type_url: &str, nack: &Nack) -> BTreeSet<spar_api::Origin> {
    let named: Vec<&String> = nack.resources.iter().filter(|r| crate::conn::names(&nack.message, r.as_str())).collect();
    let resources: Vec<&String> = if named.is_empty() { nack.resources.iter().collect() } else { named };
    let mut out = BTreeSet::new();
    let mut hosts: BTreeSet<&str> = BTreeSet::new();
    for r in &resources {
        if type_url == type_url::LISTENER {
            let Some((address, port)) = r.rsplit_once('_') else { continue };
            let port: i64 = port.parse().unwrap_or(-1);
            for s in &snap.sidecars {
                let egress = s.spec.egress.iter().flatten().map(|e| e.bind.as_deref());
                let ingress = s.spec.ingress.iter().flatten().map(|i| i.bind.as_deref());
                if egress.chain(ingress).flatten().any(|b| b == address) {
                    out.insert(s.origin.clone());
                }
            }
            if proxy.kind == ProxyKind::Router {
                for g in &snap.gateways {
                    if g.spec.servers.iter().flatten().any(|srv| srv.port.number == port) {
                        out.insert(g.origin.clone());
                    }
                }
            }
        } else if let Some(host) = r.strip_prefix("outbound|").and_then(|rest| rest.rsplit('|').next()) {
            hosts.insert(host);
        }
    }
    for (dr, host) in &snap.destination_rules {
        if hosts.contains(host.as_str()) || mentioned(&nack.message, host) {
            out.insert(dr.origin.clone());
        }
    }
    for (vs, vs_hosts) in &snap.virtual_services {
        if vs_hosts.iter().any(|h| mentioned(&nack.message, h)) {
            out.insert(vs.origin.clone());
        }
    }
    // Services: ServiceEntries among them (Kubernetes Services get no status).
    for svc in snap.services.values() {
        if hosts.contains(svc.hostname.as_str()) || mentioned(&nack.message, &svc.hostname) {
            out.insert(svc.origin.clone());
        }
    }
    out
}

/// Whether `host` appears in `message` as a whole name (not inside a longer one).
fn mentioned(message: &str, host: &str) -> bool {
    if host.len() < 3 || host == "*" {
        return false;
    }
    message.match_indices(host).any(|(i, _)| {
        let before = message[..i].chars().next_back();
        let after = message[i + host.len()..].chars().next();
        // A trailing dot may end a sentence; a leading one would make this a suffix.
        let inside_before = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        let inside_after = after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
        !inside_before && !inside_after
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_as_whole_names() {
        assert!(mentioned(
            "duplicate domain reviews.default.svc.cluster.local in route 9080",
            "reviews.default.svc.cluster.local"
        ));
        assert!(!mentioned(
            "duplicate domain myreviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ));
        assert!(mentioned("bad host reviews: x", "reviews"));
        assert!(!mentioned("bad host reviews-v2: x", "reviews"));
        assert!(!mentioned("anything", "*"));
    }
}
