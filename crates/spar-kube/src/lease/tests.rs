use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::*;

fn cfg(identity: &str) -> LeaseConfig {
    LeaseConfig::new("istio-system", identity)
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("a valid time")
}

fn written(d: Decision) -> LeaseSpec {
    match d {
        Decision::Create(s) | Decision::Write(s) => s,
        Decision::Follow(h) => panic!("expected a write, got a follow of {h}"),
    }
}

#[test]
fn the_first_replica_creates_the_lease_and_holds_it() {
    let spec = written(decide(None, &cfg("spar-a"), at(0)));
    assert_eq!(spec.holder_identity.as_deref(), Some("spar-a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.renew_time, Some(MicroTime(at(0))));
}

#[test]
fn the_holder_renews_without_a_transition() {
    let held = written(decide(None, &cfg("spar-a"), at(0)));
    let renewed = written(decide(Some(&held), &cfg("spar-a"), at(5)));
    assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
    assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))), "still the first acquisition");
    assert_eq!(renewed.lease_transitions, Some(0));
}

#[test]
fn another_replica_follows_until_the_lease_expires_then_takes_it_over() {
    let held = written(decide(None, &cfg("spar-a"), at(0)));
    for t in [1, 10, 15] {
        assert_eq!(decide(Some(&held), &cfg("spar-b"), at(t)), Decision::Follow("spar-a".into()), "at {t} s");
    }
    let taken = written(decide(Some(&held), &cfg("spar-b"), at(16)));
    assert_eq!(taken.holder_identity.as_deref(), Some("spar-b"));
    assert_eq!(taken.acquire_time, Some(MicroTime(at(16))));
    assert_eq!(taken.lease_transitions, Some(1));
}

#[test]
fn the_lease_duration_written_by_the_holder_is_the_one_that_counts() {
    // The holder was configured with 60 s; a follower configured with 15 s waits 60 s.
    let mut held = written(decide(None, &cfg("spar-a"), at(0)));
    held.lease_duration_seconds = Some(60);
    assert_eq!(decide(Some(&held), &cfg("spar-b"), at(30)), Decision::Follow("spar-a".into()));
    assert!(matches!(decide(Some(&held), &cfg("spar-b"), at(61)), Decision::Write(_)));
}

#[test]
fn an_unheld_or_never_renewed_lease_is_taken_at_once() {
    let unheld = LeaseSpec::default();
    assert_eq!(written(decide(Some(&unheld), &cfg("spar-b"), at(0))).holder_identity.as_deref(), Some("spar-b"));
    let never = LeaseSpec { holder_identity: Some("spar-a".into()), ..Default::default() };
    assert_eq!(written(decide(Some(&never), &cfg("spar-b"), at(0))).holder_identity.as_deref(), Some("spar-b"));
}

/// On tokio's paused clock: a leader that cannot renew steps down one renewal period
/// before its lease could expire in the others' eyes, never after.
#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let cfg = cfg("spar-a");
    let renewed = tokio::time::Instant::now();
    assert!(must_step_down(&cfg, None, renewed), "never renewed: not a leader to keep");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(!must_step_down(&cfg, Some(renewed), tokio::time::Instant::now()), "one missed renewal");
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(!must_step_down(&cfg, Some(renewed), tokio::time::Instant::now()));
    tokio::time::advance(Duration::from_millis(1)).await;
    let now = tokio::time::Instant::now();
    assert!(must_step_down(&cfg, Some(renewed), now), "10 s: one renewal period before the 15 s expiry");
    assert!(now - renewed < cfg.duration, "before the others may take over");
}
