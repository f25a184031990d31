//! Status of Gateway API objects, written to the cluster as istiod writes it.
//!
//! Each snapshot carries the status Gateway API asks for
//! ([`Snapshot::gateway_api_status`], computed by `spar_model::gateway_api` without times
//! or generations). The Lease holder writes it on the objects it read from Kubernetes,
//! through the status subresource:
//!
//! ```text
//!  snapshot.gateway_api_status ──► desired (per store unit) ──► GET .status ──► merge ──► PATCH .status
//!   (no times, no generations)      only changes go on            (current)     times,     merge patch,
//!                                                                              others'    resourceVersion
//!                                                                              parents    precondition
//! ```
//!
//! [`merge`] is the whole rule, and pure:
//!
//! - Every condition (top level, per listener, per route parent) gets `observedGeneration`
//!   (the spec the status describes) and a `lastTransitionTime`: the existing condition's
//!   when one of the same type has the same `status`, else now (Kubernetes'
//!   `meta.SetStatusCondition`).
//! - A route's `status.parents` is shared by the controllers of its parents. Entries of
//!   controllers Spar is not ([`CONTROLLERS`]) are kept as they are, in front; Spar's
//!   follow, and an entry of Spar's controllers that Spar no longer reports is dropped.
//!   Other top-level fields are kept.
//! - A Gateway's and a GatewayClass's status belongs to their class's controller, Spar: it
//!   is replaced whole (fields Spar does not write any more are removed).
//!
//! The patch carries the `metadata.resourceVersion` it was merged from, so another
//! controller's concurrent write is never lost: a conflict re-reads and merges again.
//! A route Spar reports nothing for (its parents moved to another controller) loses
//! Spar's entries and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Map, Value, json};
use spar_api::Kind;
use spar_model::gateway_api::{GROUP, ISTIO_CONTROLLER, SPAR_CONTROLLER};
use spar_model::{Snapshot, Store};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::source::{KindState, SyncStatus};

/// The controllers whose entries Spar writes (and removes) in a route's `status.parents`.
pub const CONTROLLERS: &[&str] = &[ISTIO_CONTROLLER, SPAR_CONTROLLER];

/// The kinds whose status Spar writes.
pub const KINDS: &[Kind] =
    &[Kind::GatewayClass, Kind::KubernetesGateway, Kind::HTTPRoute, Kind::GRPCRoute, Kind::TCPRoute, Kind::TLSRoute];

/// Route kinds: their status is a list of parents shared with other controllers.
const ROUTE_KINDS: &[Kind] = &[Kind::HTTPRoute, Kind::GRPCRoute, Kind::TCPRoute, Kind::TLSRoute];

/// How often a write that conflicts with another writer is merged again.
const CONFLICT_RETRIES: usize = 3;

/// The status Spar wants an object to have, without times: what decides whether to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The object's kind.
    pub kind: Kind,
    /// Namespace (empty for a GatewayClass).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the status describes.
    pub generation: Option<i64>,
    /// Spar's `.status`, without `lastTransitionTime` and `observedGeneration`.
    pub status: Value,
}

/// What every Gateway API object read from Kubernetes should say, by store unit: the
/// snapshot's status of each, and for a route read from Kubernetes that the snapshot says
/// nothing about, no parents of Spar's.
pub fn desired(store: &Store, snap: &Snapshot) -> BTreeMap<String, Desired> {
    let units = store.units();
    let mut out = BTreeMap::new();
    for (unit, contents) in units {
        let Some((kind, namespace, name)) = crate::status::parse_unit(unit) else { continue };
        if ROUTE_KINDS.contains(&kind) && !contents.objects.is_empty() {
            let status = json!({"parents": []});
            out.insert(unit.to_string(), Desired { kind, namespace, name, generation: contents.generation, status });
        }
    }
    for s in &snap.gateway_api_status {
        let unit = if s.namespace.is_empty() {
            format!("kubernetes/{:?}/{}", s.kind, s.name)
        } else {
            format!("kubernetes/{:?}/{}/{}", s.kind, s.namespace, s.name)
        };
        // Files and other sources have no object to write on.
        let Some(contents) = units.get(unit.as_str()) else { continue };
        let d = Desired {
            kind: s.kind,
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            generation: contents.generation,
            status: s.status.clone(),
        };
        out.insert(unit, d);
    }
    out
}

/// The `.status` to write, from the object's `current` one and Spar's `desired` one
/// (a route's when it has `parents`): conditions stamped with `generation` and their
/// transition times, a route's parents of controllers other than `controllers` kept in
/// front. Pure; `now` is an RFC 3339 time.
pub fn merge(current: &Value, desired: &Value, controllers: &[&str], generation: Option<i64>, now: &str) -> Value {
    let Some(parents) = desired.get("parents").and_then(Value::as_array) else {
        // A Gateway's or GatewayClass's: Spar's alone.
        return stamp(desired, Some(current), generation, now);
    };
    let mut out = current.as_object().cloned().unwrap_or_default();
    let old: &[Value] = current.get("parents").and_then(Value::as_array).map_or(&[], Vec::as_slice);
    let ours = |p: &Value| p.get("controllerName").and_then(Value::as_str).is_some_and(|c| controllers.contains(&c));
    let mut merged: Vec<Value> = old.iter().filter(|p| !ours(p)).cloned().collect();
    for p in parents {
        let before = old.iter().find(|o| {
            ours(o)
                && o.get("controllerName") == p.get("controllerName")
                && same_parent_ref(&o["parentRef"], &p["parentRef"])
        });
        merged.push(stamp(p, before, generation, now));
    }
    if merged.is_empty() && !out.contains_key("parents") {
        // Nothing of Spar's to say, and nothing to take back.
    } else {
        out.insert("parents".into(), Value::Array(merged));
    }
    for (k, v) in desired.as_object().into_iter().flatten() {
        if k != "parents" {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// `want` with its `conditions` (and each listener's, matched by name) stamped against
/// `before`, what the object says now.
fn stamp(want: &Value, before: Option<&Value>, generation: Option<i64>, now: &str) -> Value {
    let mut out = want.clone();
    if let Some(conds) = out.get_mut("conditions").and_then(Value::as_array_mut) {
        let old = before.and_then(|b| b.get("conditions")).and_then(Value::as_array);
        for c in conds.iter_mut() {
            stamp_condition(c, old.map_or(&[][..], Vec::as_slice), generation, now);
        }
    }
    if let Some(listeners) = out.get_mut("listeners").and_then(Value::as_array_mut) {
        let old = before.and_then(|b| b.get("listeners")).and_then(Value::as_array);
        for l in listeners.iter_mut() {
            let prev = old.into_iter().flatten().find(|o| o.get("name").is_some() && o.get("name") == l.get("name"));
            *l = stamp(l, prev, generation, now);
        }
    }
    out
}

/// `meta.SetStatusCondition`'s rule: the time of the condition of the same type when its
/// status is the same, else now.
fn stamp_condition(c: &mut Value, old: &[Value], generation: Option<i64>, now: &str) {
    let Some(obj) = c.as_object_mut() else { return };
    let time = old
        .iter()
        .find(|o| o.get("type").is_some() && o.get("type") == obj.get("type"))
        .filter(|o| o.get("status") == obj.get("status"))
        .and_then(|o| o.get("lastTransitionTime"))
        .and_then(Value::as_str)
        .unwrap_or(now);
    obj.insert("lastTransitionTime".into(), json!(time));
    if let Some(g) = generation {
        obj.insert("observedGeneration".into(), json!(g));
    }
}

/// Whether two `parentRef`s name the same parent, with the API server's defaults (group
/// `gateway.networking.k8s.io`, kind `Gateway`) for what one leaves out.
fn same_parent_ref(a: &Value, b: &Value) -> bool {
    let field = |v: &Value, k: &str| v.get(k).filter(|x| !x.is_null()).cloned();
    let or = |v: Option<Value>, d: &str| v.unwrap_or_else(|| json!(d));
    or(field(a, "group"), GROUP) == or(field(b, "group"), GROUP)
        && or(field(a, "kind"), "Gateway") == or(field(b, "kind"), "Gateway")
        && ["name", "namespace", "sectionName", "port"].iter().all(|k| field(a, k) == field(b, k))
}

/// The merge patch that makes `.status` `merged` where it was `current`: the fields no
/// longer there set to `null` (a merge patch keeps what it does not mention; arrays it
/// replaces whole), and the resource version read as a precondition.
fn patch_body(current: &Value, merged: &Value, resource_version: Option<&str>) -> Value {
    let mut status = merged.clone();
    if let (Some(cur), Some(s)) = (current.as_object(), status.as_object_mut()) {
        for k in cur.keys() {
            if !s.contains_key(k) {
                s.insert(k.clone(), Value::Null);
            }
        }
    }
    let mut patch = json!({"status": status});
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    patch
}

/// Writes Gateway API status while `leader` says this replica leads; stops when
/// `snapshots` closes.
pub async fn run(
    client: kube::Client,
    store: Arc<Mutex<Store>>,
    sync: Arc<SyncStatus>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut written: HashMap<String, Desired> = HashMap::new();
    loop {
        if *leader.borrow_and_update() {
            let snap = snapshots.borrow_and_update().clone();
            let want = {
                let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                desired(&store, &snap)
            };
            let versions = sync.states();
            written.retain(|unit, _| want.contains_key(unit));
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            for (unit, d) in want {
                if written.get(&unit) == Some(&d) {
                    continue;
                }
                let Some(KindState::Synced { version }) = versions.get(&d.kind) else { continue };
                match write(&client, &d, version, &now).await {
                    Ok(changed) => {
                        debug!(%unit, changed, "gateway API status written");
                        written.insert(unit, d);
                    }
                    // Deleted meanwhile: nothing to say.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => warn!(%unit, error = %e, "cannot write status; will retry after the next change"),
                }
            }
        } else {
            // Whoever leads next writes everything it believes; so will we when we lead again.
            written.clear();
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

/// Reads the object's status, merges and patches it when that changes anything. Returns
/// whether it patched.
async fn write(client: &kube::Client, d: &Desired, version: &str, now: &str) -> Result<bool, kube::Error> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(d.kind.group(), version, d.kind.name()));
    let api: Api<DynamicObject> = if d.kind.is_namespaced() {
        Api::namespaced_with(client.clone(), &d.namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let mut attempt = 0;
    loop {
        let obj = api.get_status(&d.name).await?;
        let current =
            obj.data.get("status").cloned().filter(Value::is_object).unwrap_or_else(|| Value::Object(Map::new()));
        let merged = merge(&current, &d.status, CONTROLLERS, d.generation, now);
        if merged == current {
            return Ok(false);
        }
        let patch = patch_body(&current, &merged, obj.metadata.resource_version.as_deref());
        match api.patch_status(&d.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(true),
            // Someone wrote in between (another controller's parent): merge with theirs.
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_RETRIES => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-06-01T12:00:00Z";
    const BEFORE: &str = "2025-01-01T00:00:00Z";

    fn mk_cond(kind: &str, status: &str) -> Value {
        json!({"type": kind, "status": status, "reason": kind, "message": "m"})
    }

    fn mk_parent(controller: &str, gateway: &str, conditions: Value) -> Value {
        json!({"parentRef": {"name": gateway}, "controllerName": controller, "conditions": conditions})
    }

    fn with_time(mut c: Value, time: &str, generation: i64) -> Value {
        c["lastTransitionTime"] = json!(time);
        c["observedGeneration"] = json!(generation);
        c
    }

    #[test]
    fn another_controllers_parent_is_kept_in_front_and_spars_stale_ones_dropped() {
        let theirs = mk_parent(
            "example.com/gateway-controller",
            "other",
            json!([with_time(mk_cond("Accepted", "True"), BEFORE, 1)]),
        );
        let stale = mk_parent(SPAR_CONTROLLER, "gone", json!([with_time(mk_cond("Accepted", "True"), BEFORE, 1)]));
        let current = json!({"parents": [stale, theirs.clone()]});
        let desired = json!({"parents": [mk_parent(ISTIO_CONTROLLER, "web", json!([mk_cond("Accepted", "True")]))]});
        let merged = merge(&current, &desired, CONTROLLERS, Some(2), NOW);
        let ours = mk_parent(ISTIO_CONTROLLER, "web", json!([with_time(mk_cond("Accepted", "True"), NOW, 2)]));
        assert_eq!(merged, json!({"parents": [theirs, ours]}));
    }

    #[test]
    fn a_route_spar_reports_nothing_for_loses_only_spars_parents() {
        let theirs = mk_parent("example.com/gateway-controller", "other", json!([]));
        let current = json!({"parents": [mk_parent(ISTIO_CONTROLLER, "web", json!([])), theirs.clone()]});
        assert_eq!(merge(&current, &json!({"parents": []}), CONTROLLERS, Some(1), NOW), json!({"parents": [theirs]}));
        // No status at all stays none: nothing to write.
        assert_eq!(merge(&json!({}), &json!({"parents": []}), CONTROLLERS, Some(1), NOW), json!({}));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_time_and_a_changed_status_gets_now() {
        let current = json!({"conditions": [
            with_time(mk_cond("Accepted", "True"), BEFORE, 1),
            with_time(mk_cond("Programmed", "True"), BEFORE, 1),
        ]});
        let mut accepted = mk_cond("Accepted", "True");
        accepted["message"] = json!("a new message is no transition");
        let desired =
            json!({"conditions": [accepted.clone(), mk_cond("Programmed", "False"), mk_cond("ResolvedRefs", "True")]});
        let merged = merge(&current, &desired, CONTROLLERS, Some(2), NOW);
        assert_eq!(
            merged["conditions"],
            json!([
                with_time(accepted, BEFORE, 2),
                with_time(mk_cond("Programmed", "False"), NOW, 2),
                with_time(mk_cond("ResolvedRefs", "True"), NOW, 2),
            ])
        );
    }

    #[test]
    fn a_route_parents_conditions_keep_their_times_when_the_same_parent_is_reported_again() {
        // The API server defaulted group and kind; Spar writes the reference as written.
        let mut before = mk_parent(ISTIO_CONTROLLER, "web", json!([with_time(mk_cond("Accepted", "True"), BEFORE, 1)]));
        before["parentRef"] = json!({"group": GROUP, "kind": "Gateway", "name": "web"});
        let desired = json!({"parents": [mk_parent(ISTIO_CONTROLLER, "web", json!([mk_cond("Accepted", "True")]))]});
        let merged = merge(&json!({"parents": [before]}), &desired, CONTROLLERS, Some(1), NOW);
        assert_eq!(merged["parents"][0]["conditions"][0]["lastTransitionTime"], BEFORE);
        // Another section of the same Gateway is another parent.
        let mut other = desired.clone();
        other["parents"][0]["parentRef"]["sectionName"] = json!("https");
        let merged = merge(&merged, &other, CONTROLLERS, Some(1), NOW);
        assert_eq!(merged["parents"][0]["conditions"][0]["lastTransitionTime"], NOW);
    }

    #[test]
    fn observed_generation_is_set_on_every_condition_listeners_too() {
        let desired = json!({
            "conditions": [mk_cond("Accepted", "True")],
            "listeners": [{"name": "http", "attachedRoutes": 1, "conditions": [mk_cond("Programmed", "True")]}],
        });
        let current = json!({"listeners": [{"name": "http", "conditions": [with_time(mk_cond("Programmed", "True"), BEFORE, 6)]}]});
        let merged = merge(&current, &desired, CONTROLLERS, Some(7), NOW);
        assert_eq!(merged["conditions"][0]["observedGeneration"], 7);
        assert_eq!(merged["listeners"][0]["conditions"][0], with_time(mk_cond("Programmed", "True"), BEFORE, 7));
        assert_eq!(merged["listeners"][0]["attachedRoutes"], 1);
        // Unknown generation: none claimed.
        let merged = merge(&json!({}), &desired, CONTROLLERS, None, NOW);
        assert!(merged["conditions"][0].get("observedGeneration").is_none());
    }

    #[test]
    fn a_gateways_status_is_replaced_whole_and_the_patch_removes_what_is_gone() {
        let current = json!({"addresses": [{"type": "IPAddress", "value": "10.0.0.1"}], "conditions": [], "foo": 1});
        let desired = json!({"conditions": [mk_cond("Accepted", "True")]});
        let merged = merge(&current, &desired, CONTROLLERS, Some(1), NOW);
        assert_eq!(merged, json!({"conditions": [with_time(mk_cond("Accepted", "True"), NOW, 1)]}));
        let patch = patch_body(&current, &merged, Some("42"));
        assert_eq!(patch["status"]["addresses"], Value::Null);
        assert_eq!(patch["status"]["foo"], Value::Null);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn a_status_merged_again_with_nothing_new_is_the_same() {
        let desired = json!({"parents": [mk_parent(SPAR_CONTROLLER, "web", json!([mk_cond("Accepted", "True")]))]});
        let once = merge(&json!({}), &desired, CONTROLLERS, Some(3), BEFORE);
        assert_eq!(merge(&once, &desired, CONTROLLERS, Some(3), NOW), once, "nothing to write");
    }
}
