//! Leader election on a `coordination.k8s.io/v1` Lease, for the singleton duties (status
//! writes); every replica serves xDS either way.
//!
//! The holder renews every [`LeaseConfig::renew_every`]; another replica takes the lease
//! over once `renewTime + leaseDurationSeconds` has passed. Every write carries the
//! resourceVersion it read, so two replicas racing for an expired lease cannot both win:
//! the API server refuses the second with 409 Conflict. A leader that cannot renew steps
//! down before its lease can expire, so two leaders never overlap.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// Which lease, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the lease (Spar's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica (the pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews (and others look).
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Istio-like defaults: 15 s lease, renewed every 5 s.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: "spar-leader".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// What one attempt concluded.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Leading,
    Following(String),
}

/// Campaigns for the lease until `leader` has no receivers; `leader` says whether this
/// replica holds it.
pub async fn run(client: kube::Client, cfg: LeaseConfig, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let mut following: Option<String> = None;
    loop {
        match attempt(&api, &cfg).await {
            Ok(Outcome::Leading) => {
                last_renewal = Some(tokio::time::Instant::now());
                if !*leader.borrow() {
                    info!(lease = %cfg.name, identity = %cfg.identity, "became leader (status writes)");
                    let _ = leader.send(true);
                }
                following = None;
            }
            Ok(Outcome::Following(holder)) => {
                if *leader.borrow() {
                    warn!(lease = %cfg.name, %holder, "lost the lease");
                    let _ = leader.send(false);
                }
                if following.as_ref() != Some(&holder) {
                    info!(lease = %cfg.name, %holder, "following");
                    following = Some(holder);
                }
            }
            Err(e) => {
                warn!(lease = %cfg.name, error = %e, "lease renewal failed");
                if *leader.borrow() && must_step_down(&cfg, last_renewal, tokio::time::Instant::now()) {
                    warn!(lease = %cfg.name, "stepping down: cannot renew");
                    let _ = leader.send(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.renew_every) => {}
            () = leader.closed() => return,
        }
    }
}

/// Whether a leader whose last renewal was at `last_renewal` must step down at `now`:
/// before its lease could expire in the others' eyes (one renewal period early).
fn must_step_down(cfg: &LeaseConfig, last_renewal: Option<tokio::time::Instant>, now: tokio::time::Instant) -> bool {
    let deadline = cfg.duration.saturating_sub(cfg.renew_every);
    last_renewal.is_none_or(|t| now.saturating_duration_since(t) >= deadline)
}

/// What one attempt writes, from the lease as read (`None`: there is none) at `now`.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Create the lease, held by this replica.
    Create(LeaseSpec),
    /// Another replica holds an unexpired lease.
    Follow(String),
    /// Write this spec over the one read (a renewal, or a takeover of an expired or
    /// unheld lease), compared on the resourceVersion read.
    Write(LeaseSpec),
}

fn decide(read: Option<&LeaseSpec>, cfg: &LeaseConfig, now: Timestamp) -> Decision {
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(read) = read else {
        return Decision::Create(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..Default::default()
        });
    };
    let mut spec = read.clone();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let held_for = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
    let expired = spec.renew_time.as_ref().is_none_or(|t| t.0 + SignedDuration::from_secs(held_for) < now);
    if holder != cfg.identity && !holder.is_empty() && !expired {
        return Decision::Follow(holder);
    }
    if holder != cfg.identity {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(secs);
    Decision::Write(spec)
}

async fn attempt(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Outcome, kube::Error> {
    let read = api.get_opt(&cfg.name).await?;
    // A lease object without a spec reads as an empty one.
    let empty = LeaseSpec::default();
    let spec = read.as_ref().map(|l| l.spec.as_ref().unwrap_or(&empty));
    match decide(spec, cfg, Timestamp::now()) {
        Decision::Follow(holder) => Ok(Outcome::Following(holder)),
        Decision::Create(spec) => {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() }, spec: Some(spec) };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following(String::from("(another replica)"))),
                Err(e) => Err(e),
            }
        }
        Decision::Write(spec) => {
            let holder = read.as_ref().and_then(|l| l.spec.as_ref()?.holder_identity.clone()).unwrap_or_default();
            let mut lease = read.unwrap_or_default();
            lease.spec = Some(spec);
            // The resourceVersion read above makes this a compare-and-swap.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following(holder)),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests;
