//! The object store: one global resource version, objects per group/resource, a bounded event
//! history for watch resumption, and the server-managed metadata rules of every write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::ResourceType;

/// How many events the store keeps for watch resumption; older ones count as compacted.
pub const HISTORY_LIMIT: usize = 10_000;

/// Objects are stored per group and plural (not per version), like the real API server, so a
/// resource served in several versions shares one set of objects.
pub(crate) type GroupResource = (String, String);

/// `(namespace, name)`; the namespace is `""` for cluster-scoped objects. Sorting by it gives the
/// same list order as the real API server (etcd key order).
pub(crate) type ObjectKey = (String, String);

/// A Kubernetes API error, rendered as a `Status` object by the HTTP layer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified()))
    }

    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        let qualified = rt.qualified();
        let message = format!(
            "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        );
        Self::new(409, "Conflict", message)
    }

    /// The `Status` object the real API server sends for this error.
    pub fn to_status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// The kind of change a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, kept for watchers. `old` is the previous state of a modified object, so label
/// selector watches can turn "stopped matching" into DELETED like the real API server.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub gr: GroupResource,
    pub kind: EventType,
    pub object: Value,
    pub old: Option<Value>,
}

/// A registered resource type; `id` changes whenever the registration does, which ends the
/// watches opened against the previous one.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub rt: ResourceType,
    pub id: u64,
}

/// What `add_token` registered for a TokenReview answer.
#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    pub username: String,
    pub audiences: Vec<String>,
    /// `(name, uid)` of the pod a projected token is bound to.
    pub pod: Option<(String, String)>,
}

/// All mutable state of the fake API server, behind one mutex.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// The global resource version (the last one handed out).
    pub rv: u64,
    /// A watch or continue token at a resource version below this gets 410 Gone.
    pub expired_below: u64,
    /// Bumped by `compact()`; watches opened before end.
    pub compactions: u64,
    /// Source of registration ids.
    next_id: u64,
    pub types: Vec<Registered>,
    pub objects: HashMap<GroupResource, BTreeMap<ObjectKey, Value>>,
    pub history: VecDeque<Event>,
    pub tokens: HashMap<String, TokenInfo>,
    pub requests: Vec<String>,
}

impl Store {
    /// The registration serving `group/version` `plural` over HTTP.
    pub fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<&Registered> {
        let rt = |r: &&Registered| r.rt.group == group && r.rt.version == version && r.rt.plural == plural;
        self.types.iter().find(rt)
    }

    /// The registration for an `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Registered> {
        self.types.iter().find(|r| r.rt.api_version() == api_version && r.rt.kind == kind)
    }

    /// Registers a resource type, replacing one with the same group/version/plural (which gets a
    /// new id, ending its watches, unless nothing changed).
    pub fn register(&mut self, rt: ResourceType) {
        if self.types.iter().any(|r| r.rt == rt) {
            return;
        }
        self.types.retain(|r| !(r.rt.group == rt.group && r.rt.version == rt.version && r.rt.plural == rt.plural));
        self.next_id += 1;
        self.types.push(Registered { rt, id: self.next_id });
    }

    /// Unregisters one version of a resource; when no version is left, deletes all its objects
    /// (recording DELETED events, as a CRD deletion does).
    pub fn unregister(&mut self, group: &str, version: &str, plural: &str) {
        let Some(removed) = self.by_plural(group, version, plural).map(|r| r.rt.clone()) else {
            return;
        };
        self.types.retain(|r| !(r.rt.group == group && r.rt.version == version && r.rt.plural == plural));
        if !self.types.iter().any(|r| r.rt.gr() == removed.gr()) {
            let keys: Vec<ObjectKey> =
                self.objects.get(&removed.gr()).into_iter().flat_map(|m| m.keys().cloned()).collect();
            for (ns, name) in keys {
                self.remove(&removed, &ns, &name);
            }
        }
    }

    /// The stored object, if any.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&rt.gr())?.get(&(ns.to_string(), name.to_string()))
    }

    /// Stores `obj` as the new state of `ns/name` after setting the server-managed metadata
    /// (uid, creationTimestamp, generation, resourceVersion), and records ADDED or MODIFIED.
    /// A write that changes nothing is a no-op (no new resourceVersion, no event), as in
    /// Kubernetes. Returns the stored object.
    pub fn commit(&mut self, rt: &ResourceType, ns: &str, name: &str, mut obj: Value) -> Value {
        let old = self.get(rt, ns, name).cloned();
        let generation = match &old {
            Some(o) if spec_of(o) == spec_of(&obj) => o["metadata"]["generation"].as_u64().unwrap_or(1),
            Some(o) => o["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
            None => 1,
        };
        let kept = |field: &str| old.as_ref().map(|o| o["metadata"][field].clone()).filter(|v| !v.is_null());
        // Unique per server: the resource version the object is created at.
        let uid = kept("uid").unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", self.rv + 1).into());
        let created = kept("creationTimestamp").unwrap_or_else(|| now_rfc3339().into());
        let old_rv = kept("resourceVersion").unwrap_or(Value::Null);
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), rt.api_version().into());
            o.insert("kind".into(), rt.kind.clone().into());
        }
        if let Some(meta) = meta_mut(&mut obj) {
            meta.insert("name".into(), name.into());
            if rt.namespaced {
                meta.insert("namespace".into(), ns.into());
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), uid);
            meta.insert("creationTimestamp".into(), created);
            meta.insert("generation".into(), generation.into());
            meta.insert("resourceVersion".into(), old_rv);
        }
        if old.as_ref() == Some(&obj) {
            return obj;
        }
        self.commit_raw(rt, ns, name, obj)
    }

    /// Stores `obj` without any checks (only `metadata.resourceVersion` is set, when `obj` has
    /// an object `metadata`), recording ADDED or MODIFIED. Returns the stored object.
    pub fn commit_raw(&mut self, rt: &ResourceType, ns: &str, name: &str, mut obj: Value) -> Value {
        self.stamp(&mut obj);
        let key = (ns.to_string(), name.to_string());
        let old = self.objects.entry(rt.gr()).or_default().insert(key, obj.clone());
        let kind = if old.is_some() { EventType::Modified } else { EventType::Added };
        self.record(rt.gr(), kind, obj.clone(), old);
        obj
    }

    /// Deletes an object, recording DELETED with a fresh resourceVersion on it.
    pub fn remove(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects.get_mut(&rt.gr())?.remove(&(ns.to_string(), name.to_string()))?;
        self.stamp(&mut obj);
        self.record(rt.gr(), EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    /// Forgets all history and ends every open watch; watches and continue tokens from before
    /// now get 410 Gone afterwards. Bumps the resource version so later lists can be watched.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.expired_below = self.rv;
        self.compactions += 1;
    }

    /// A fresh name for `generateName`: the prefix plus five characters that are unique per
    /// server (derived from the next resource version and `attempt`) though not random.
    pub fn generate_name(&self, prefix: &str, attempt: u64) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = (self.rv + 1 + (attempt << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let mut name = prefix.to_string();
        for _ in 0..5 {
            name.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
            n /= ALPHABET.len() as u64;
        }
        name
    }

    /// Gives `obj` the next resource version.
    fn stamp(&mut self, obj: &mut Value) {
        self.rv += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), self.rv.to_string().into());
        }
    }

    /// Records the change stamped last; drops the oldest entries beyond [`HISTORY_LIMIT`].
    fn record(&mut self, gr: GroupResource, kind: EventType, object: Value, old: Option<Value>) {
        self.history.push_back(Event { rv: self.rv, gr, kind, object, old });
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                // Resuming from `dropped.rv` still works; from anything older it would miss it.
                self.expired_below = self.expired_below.max(dropped.rv);
            }
        }
    }
}

/// `obj.metadata` as a mutable map, created when missing (and replaced when not a map).
/// `None` only when `obj` itself is not a JSON object.
pub(crate) fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = obj.as_object_mut()?.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

/// A string field of `obj.metadata`, `""` when missing.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

/// Everything but metadata and status: a change to it bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Map<String, Value> {
    let mut out = obj.as_object().cloned().unwrap_or_default();
    for field in ["metadata", "status", "apiVersion", "kind"] {
        out.remove(field);
    }
    out
}

/// The current UTC time as RFC 3339 with second precision, like Kubernetes timestamps.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
