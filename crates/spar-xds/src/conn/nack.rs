//! NACKs: what a proxy refused, and what Envoy did with the rest of the response.

use std::time::SystemTime;

use super::*;

/// The last NACK Envoy sent for a type.
#[derive(Clone, Debug, PartialEq)]
pub struct Nack {
    /// Version the proxy rejected.
    pub version: String,
    /// Nonce of the rejected response.
    pub nonce: String,
    /// Envoy's `error_detail.message`.
    pub message: String,
    /// Resource names that were in the rejected response.
    pub resources: Vec<String>,
    /// Listeners the rejected response removed (Envoy applies removals even when it
    /// refuses other listeners): what the proxy held and the response left out (SotW),
    /// or its `removed_resources` (delta).
    pub removed: Vec<String>,
    /// Where the Istio objects that likely produced the refused resources are
    /// (file:line), filled in by the server, which has the snapshot.
    pub from: Vec<String>,
    /// When the NACK arrived.
    pub at: SystemTime,
}

impl Nack {
    /// The resources Envoy names in its message (it names the ones it refused), each as
    /// a whole name (`10.0.0.1_80` is not in `10.0.0.1_8080`).
    pub fn refused(&self) -> Vec<&str> {
        self.resources.iter().map(String::as_str).filter(|r| names(&self.message, r)).collect()
    }

    /// What Envoy did with the rejected response, in words, as Envoy handles each type:
    /// listeners and clusters are applied one by one (the refused ones keep their
    /// previous version if they had one, new ones are absent, the rest and every
    /// removal take effect); any other type's response is refused as a whole.
    pub fn outcome(&self, type_url: &str) -> String {
        let refused = self.refused();
        let list = |v: &[&str]| if v.is_empty() { "none named".to_string() } else { v.join(",") };
        if type_url == type_url::LISTENER || type_url == type_url::CLUSTER {
            let kind = if type_url == type_url::LISTENER { "listener" } else { "cluster" };
            let mut said = format!(
                "Envoy refused {} ({kind}s it held keep their previous version, new ones are absent) and applied the \
                 other {} of the response",
                list(&refused),
                self.resources.len().saturating_sub(refused.len())
            );
            if !self.removed.is_empty() {
                let removed: Vec<&str> = self.removed.iter().map(String::as_str).collect();
                said.push_str(&format!("; removed, so now gone: {}", removed.join(",")));
            }
            said
        } else {
            format!("Envoy refused the response: it keeps the versions it held of {}", list(&refused))
        }
    }
}

/// Whether `message` names `name` whole: not as part of a longer name.
pub(crate) fn names(message: &str, name: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '|' | '-' | ':');
    !name.is_empty()
        && message.match_indices(name).any(|(i, _)| {
            let before = message[..i].chars().next_back();
            // A trailing dot or colon may end a sentence or start Envoy's reason.
            let after = message[i + name.len()..].chars().next().filter(|c| !matches!(c, '.' | ':'));
            !before.is_some_and(part) && !after.is_some_and(part)
        })
}

pub(super) fn record_ack_or_nack(
    delta: bool,
    state: &mut TypeState,
    type_url: &str,
    version: &str,
    nonce: &str,
    error: Option<&envoy_types::pb::google::rpc::Status>,
    events: &mut Vec<Event>,
) {
    match error {
        Some(err) => {
            let resources: Vec<String> = state.sent.iter().flat_map(|r| r.iter()).map(|e| e.name.clone()).collect();
            let removed = if type_url != type_url::LISTENER {
                Vec::new()
            } else if delta {
                state.sent_removed.clone()
            } else {
                state.held.iter().filter(|h| !resources.contains(h)).cloned().collect()
            };
            let nack = Nack {
                version: state.sent_version.clone().unwrap_or_default(),
                nonce: nonce.to_string(),
                message: err.message.clone(),
                resources,
                removed,
                from: Vec::new(),
                at: SystemTime::now(),
            };
            // What Envoy holds now: what it held less the removed, plus what it took.
            if type_url == type_url::LISTENER {
                let refused: Vec<String> = nack.refused().into_iter().map(str::to_string).collect();
                state.held.retain(|h| !nack.removed.contains(h) && (delta || nack.resources.contains(h)));
                for r in nack.resources.iter().filter(|r| !refused.contains(r)) {
                    if !state.held.contains(r) {
                        state.held.push(r.clone());
                    }
                }
                state.sent_removed.clear();
            }
            state.last_nack = Some(nack.clone());
            events.push(Event::Nack { type_url: type_url.to_string(), nack });
        }
        None => {
            let now = SystemTime::now();
            let latency = state.sent_at.and_then(|t| now.duration_since(t).ok());
            state.acked_version = Some(version.to_string());
            state.acked_at = Some(now);
            state.last_nack = None;
            if type_url == type_url::LISTENER {
                // SotW: the response is the whole set; delta: it added to what was held.
                let sent = state.sent.iter().flat_map(|r| r.iter()).map(|e| e.name.clone());
                if !delta {
                    state.held = sent.collect();
                } else {
                    let removed = std::mem::take(&mut state.sent_removed);
                    state.held.retain(|h| !removed.contains(h));
                    for n in sent {
                        if !state.held.contains(&n) {
                            state.held.push(n);
                        }
                    }
                }
            }
            // Only a NACK of the latest response needs its resources (to name them).
            state.sent = None;
            events.push(Event::Ack { type_url: type_url.to_string(), version: version.to_string(), latency });
        }
    }
}
