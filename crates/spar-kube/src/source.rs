//! One kube-runtime watcher per kind, feeding the store.
//!
//! - **Versions.** Each kind is watched in the first of its served versions (Istio's
//!   `v1`, then `v1beta1`, `v1alpha3`, ...) that the API server answers for; the API
//!   server converts, so every object is seen whichever version it was written in.
//! - **Missing CRDs** are tolerated: the kind counts as absent (not blocking readiness)
//!   and is probed again every [`SourceConfig::absent_retry`]; it is watched as soon as
//!   its CRD appears, and its objects are dropped if the CRD goes away.
//! - **Relists are resets.** `Init … InitDone` (the first list, and every relist after a
//!   410 Gone) replaces everything the kind had in the store in one step; objects deleted
//!   while the watch was down disappear.
//! - **Bad objects** become store errors (reported, skipped, and shown on the debug
//!   pages); they never stop the watch or touch other objects.
//! - **Namespace selection** ([`NamespaceSelector`], Istio's discovery selectors): objects
//!   in namespaces that do not match are not kept. When a namespace starts or stops
//!   matching, every watcher relists.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use spar_api::document::DocOutcome;
use spar_api::{DocError, Kind, Origin, Parsed};
use spar_model::Store;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// What the source watches and how.
#[derive(Clone)]
pub struct SourceConfig {
    /// Kinds to watch (default: every kind Spar reads except the legacy `Endpoints`,
    /// which EndpointSlices replace).
    pub kinds: Vec<Kind>,
    /// Only keep objects in matching namespaces (`None`: every namespace).
    pub namespaces: Option<NamespaceSelector>,
    /// How often a kind whose CRD is missing is probed again.
    pub absent_retry: Duration,
    /// Called with what each object produced (for the same log lines as files).
    pub report: Arc<dyn Fn(&Parsed) + Send + Sync>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kinds: Kind::ALL.iter().copied().filter(|k| *k != Kind::Endpoints).collect(),
            namespaces: None,
            absent_retry: Duration::from_secs(10),
            report: Arc::new(|_| {}),
        }
    }
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("kinds", &self.kinds)
            .field("namespaces", &self.namespaces)
            .field("absent_retry", &self.absent_retry)
            .finish_non_exhaustive()
    }
}

/// Istio's `discoverySelectors`: a namespace is selected when any selector matches it;
/// a selector matches when all its requirements do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceSelector {
    any_of: Vec<Vec<Requirement>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// Why a namespace selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A part that is none of `k=v`, `k!=v`, `k`, `!k`.
    #[error("{selector:?}: {part:?} is not a label requirement (k=v, k!=v, k or !k)")]
    NotARequirement {
        /// The selector.
        selector: String,
        /// The part that does not parse.
        part: String,
    },
    /// A selector without requirements.
    #[error("{0:?}: empty selector")]
    Empty(String),
}

impl NamespaceSelector {
    /// Parses label selectors, one per string: `k=v`, `k!=v`, `k`, `!k`, comma-separated.
    pub fn parse(selectors: &[String]) -> Result<Self, SelectorError> {
        let mut any_of = Vec::new();
        for s in selectors {
            let mut all = Vec::new();
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let req = if let Some((k, v)) = part.split_once("!=") {
                    Requirement::NotEquals(k.trim().into(), v.trim().into())
                } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                    Requirement::Equals(k.trim().into(), v.trim().into())
                } else if let Some(k) = part.strip_prefix('!') {
                    Requirement::Absent(k.trim().into())
                } else {
                    Requirement::Exists(part.into())
                };
                let key = match &req {
                    Requirement::Equals(k, _)
                    | Requirement::NotEquals(k, _)
                    | Requirement::Exists(k)
                    | Requirement::Absent(k) => k,
                };
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(SelectorError::NotARequirement { selector: s.clone(), part: part.to_string() });
                }
                all.push(req);
            }
            if all.is_empty() {
                return Err(SelectorError::Empty(s.clone()));
            }
            any_of.push(all);
        }
        Ok(Self { any_of })
    }

    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.any_of.iter().any(|all| {
            all.iter().all(|r| match r {
                Requirement::Equals(k, v) => labels.get(k) == Some(v),
                Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::Absent(k) => !labels.contains_key(k),
            })
        })
    }
}

/// Where one kind's watch is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KindState {
    /// Not listed yet.
    Waiting,
    /// Listed and watched, in this version.
    Synced {
        /// The served version in use.
        version: String,
    },
    /// No served version (the CRD is not installed); probed again later.
    Absent,
}

/// Sync state of every watched kind; the source is synced when no kind is waiting.
#[derive(Debug)]
pub struct SyncStatus {
    states: Mutex<BTreeMap<Kind, KindState>>,
    changed: watch::Sender<u64>,
}

impl SyncStatus {
    fn new(kinds: &[Kind]) -> Self {
        Self {
            states: Mutex::new(kinds.iter().map(|k| (*k, KindState::Waiting)).collect()),
            changed: watch::channel(0).0,
        }
    }

    fn set(&self, kind: Kind, state: KindState) {
        let changed = lock(&self.states).insert(kind, state.clone()).as_ref() != Some(&state);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Every kind's state.
    pub fn states(&self) -> BTreeMap<Kind, KindState> {
        lock(&self.states).clone()
    }

    /// Whether every kind has been listed (or found absent).
    pub fn synced(&self) -> bool {
        lock(&self.states).values().all(|s| *s != KindState::Waiting)
    }

    fn kind_synced(&self, kind: Kind) -> bool {
        lock(&self.states).get(&kind).is_some_and(|s| *s != KindState::Waiting)
    }

    /// Waits until [`Self::synced`].
    pub async fn wait_synced(&self) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|_| self.synced()).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Kubernetes source.
pub struct KubeSource {
    shared: Arc<Shared>,
}

struct Shared {
    client: kube::Client,
    store: Arc<Mutex<Store>>,
    cfg: SourceConfig,
    status: Arc<SyncStatus>,
    /// Selected namespaces, when a selector is set.
    selected: RwLock<BTreeSet<String>>,
    /// Bumped when the selected namespaces change: every watcher relists.
    generation: watch::Sender<u64>,
    /// Which pods exist, by UID (pod-bound proxy credentials are refused once theirs is gone).
    pods: Arc<PodIndex>,
}

/// The UIDs of the pods the source has seen (in selected namespaces).
#[derive(Debug, Default)]
pub struct PodIndex {
    uids: RwLock<HashMap<(String, String), String>>,
}

impl PodIndex {
    /// The UID of pod `namespace/name`, if it exists.
    pub fn uid(&self, namespace: &str, name: &str) -> Option<String> {
        let uids = self.uids.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        uids.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), String>> {
        self.uids.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn pod_key(obj: &DynamicObject) -> Option<((String, String), String)> {
    let m = &obj.metadata;
    Some(((m.namespace.clone()?, m.name.clone()?), m.uid.clone()?))
}

impl KubeSource {
    /// A source reading through `client` into `store`.
    pub fn new(client: kube::Client, store: Arc<Mutex<Store>>, mut cfg: SourceConfig) -> Self {
        if cfg.namespaces.is_some() && !cfg.kinds.contains(&Kind::Namespace) {
            cfg.kinds.push(Kind::Namespace);
        }
        let status = Arc::new(SyncStatus::new(&cfg.kinds));
        let shared = Shared {
            client,
            store,
            cfg,
            status,
            selected: RwLock::new(BTreeSet::new()),
            generation: watch::channel(0).0,
            pods: Arc::default(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// The sync state, for readiness and debug pages.
    pub fn status(&self) -> Arc<SyncStatus> {
        Arc::clone(&self.shared.status)
    }

    /// The pods seen so far (filled when Pods are among the kinds).
    pub fn pods(&self) -> Arc<PodIndex> {
        Arc::clone(&self.shared.pods)
    }

    /// Watches every kind until `changes` is closed; sends a unit on `changes` after
    /// every change to the store.
    pub async fn run(self, changes: mpsc::Sender<()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for kind in self.shared.cfg.kinds.clone() {
            tasks.spawn(watch_kind(Arc::clone(&self.shared), kind, changes.clone()));
        }
        changes.closed().await;
        tasks.shutdown().await;
    }
}

/// The store unit of one object. Kinds are named by their variant, which is unique where
/// YAML names are not (Istio's Gateway and Gateway API's, `KubernetesGateway`).
fn unit_name(kind: Kind, ns: &str, name: &str) -> String {
    if ns.is_empty() { format!("kubernetes/{kind:?}/{name}") } else { format!("kubernetes/{kind:?}/{ns}/{name}") }
}

fn api_resource(kind: Kind, version: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(kind.group(), version, kind.name()))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The first served version of `kind`, `None` when none is (CRD missing).
async fn served_version(client: &kube::Client, kind: Kind) -> Result<Option<&'static str>, kube::Error> {
    for v in kind.versions() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind, v));
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(Some(v)),
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

async fn watch_kind(shared: Arc<Shared>, kind: Kind, changes: mpsc::Sender<()>) {
    let mut generation = shared.generation.subscribe();
    // With a namespace selector, everything else waits for the namespaces.
    if shared.cfg.namespaces.is_some() && kind != Kind::Namespace {
        let mut rx = shared.status.changed.subscribe();
        let _ = rx.wait_for(|_| shared.status.kind_synced(Kind::Namespace)).await;
    }
    let mut known: HashSet<String> = HashSet::new();
    let mut failures = 0u32;
    loop {
        let version = match served_version(&shared.client, kind).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                if shared.status.states().get(&kind) != Some(&KindState::Absent) {
                    info!(%kind, versions = ?kind.versions(), "kind not served by the API server (CRD missing?); probing again later");
                }
                if !known.is_empty() {
                    let mut store = lock(&shared.store);
                    for unit in known.drain() {
                        store.remove_unit(&unit);
                    }
                    drop(store);
                    signal(&changes);
                }
                shared.status.set(kind, KindState::Absent);
                if sleep_or_closed(shared.cfg.absent_retry, &changes).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(%kind, error = %e, failures, "cannot reach the API server; retrying");
                }
                if sleep_or_closed(Duration::from_secs(u64::from(failures.min(10))), &changes).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        let ar = api_resource(kind, version);
        let api: Api<DynamicObject> = Api::all_with(shared.client.clone(), &ar);
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut buffer: Vec<(String, Parsed)> = Vec::new();
        let mut pod_buffer: HashMap<(String, String), String> = HashMap::new();
        loop {
            let event = tokio::select! {
                ev = stream.next() => ev,
                _ = generation.changed() => {
                    debug!(%kind, "namespace selection changed; relisting");
                    break;
                }
                () = changes.closed() => return,
            };
            let Some(event) = event else { break };
            match event {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    pod_buffer.clear();
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    let pod = if kind == Kind::Pod { pod_key(&obj) } else { None };
                    if let Some(entry) = shared.ingest(kind, &ar, obj) {
                        buffer.push(entry);
                        pod_buffer.extend(pod);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let mut store = lock(&shared.store);
                    let fresh: HashSet<String> = buffer.iter().map(|(u, _)| u.clone()).collect();
                    for gone in known.difference(&fresh) {
                        store.remove_unit(gone);
                    }
                    for (unit, parsed) in buffer.drain(..) {
                        store.set_unit(&unit, parsed);
                    }
                    drop(store);
                    known = fresh;
                    if kind == Kind::Pod {
                        *shared.pods.write() = std::mem::take(&mut pod_buffer);
                    }
                    if kind == Kind::Namespace {
                        shared.reselect();
                    }
                    info!(%kind, version, objects = known.len(), "listed");
                    shared.status.set(kind, KindState::Synced { version: version.to_string() });
                    signal(&changes);
                }
                Ok(watcher::Event::Apply(obj)) => {
                    let (ns, name) = (obj.metadata.namespace.clone(), obj.metadata.name.clone());
                    let pod = if kind == Kind::Pod { pod_key(&obj) } else { None };
                    let changed = match shared.ingest(kind, &ar, obj) {
                        Some((unit, parsed)) => {
                            if let Some((key, uid)) = pod {
                                shared.pods.write().insert(key, uid);
                            }
                            known.insert(unit.clone());
                            lock(&shared.store).set_unit(&unit, parsed)
                        }
                        // Not (or no longer) in a selected namespace.
                        None => {
                            if let Some((key, _)) = pod {
                                shared.pods.write().remove(&key);
                            }
                            let unit = unit_name(kind, ns.as_deref().unwrap_or(""), name.as_deref().unwrap_or(""));
                            known.remove(&unit) && lock(&shared.store).remove_unit(&unit)
                        }
                    };
                    if kind == Kind::Namespace {
                        shared.reselect();
                    }
                    if changed {
                        signal(&changes);
                    }
                }
                Ok(watcher::Event::Delete(obj)) => {
                    if let Some((key, _)) = pod_key(&obj).filter(|_| kind == Kind::Pod) {
                        shared.pods.write().remove(&key);
                    }
                    let unit = unit_name(
                        kind,
                        obj.metadata.namespace.as_deref().unwrap_or(""),
                        obj.metadata.name.as_deref().unwrap_or(""),
                    );
                    known.remove(&unit);
                    let changed = lock(&shared.store).remove_unit(&unit);
                    if kind == Kind::Namespace {
                        shared.reselect();
                    }
                    if changed {
                        signal(&changes);
                    }
                }
                Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) if is_not_found(&e) => {
                    info!(%kind, version, "no longer served (CRD removed?)");
                    break;
                }
                Err(e) => warn!(%kind, error = %e, "watch failed; retrying with back-off"),
            }
        }
    }
}

/// Sleeps; returns true when the receiver went away meanwhile.
async fn sleep_or_closed(d: Duration, changes: &mpsc::Sender<()>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = changes.closed() => true,
    }
}

fn signal(changes: &mpsc::Sender<()>) {
    // A full channel already holds a pending change: the debounce reads the whole store.
    let _ = changes.try_send(());
}

impl Shared {
    /// Turns a watched object into its store unit; `None` when its namespace is not selected.
    fn ingest(&self, kind: Kind, ar: &ApiResource, obj: DynamicObject) -> Option<(String, Parsed)> {
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        if self.cfg.namespaces.is_some()
            && kind != Kind::Namespace
            && !self.selected.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&ns)
        {
            return None;
        }
        let unit = unit_name(kind, &ns, &name);
        let mut value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(e) => {
                let error = DocError {
                    origin: Origin::new(unit.as_str(), 0),
                    resource: Some(format!("{kind} {ns}/{name}")),
                    reason: format!("cannot read the object: {e}"),
                };
                return Some((unit, Parsed { errors: vec![error], ..Default::default() }));
            }
        };
        if let Some(o) = value.as_object_mut() {
            // List items carry no apiVersion/kind; the watch knows them.
            o.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
            o.insert("kind".into(), Value::String(ar.kind.clone()));
        }
        trim(kind, &mut value);
        let parsed = parse(&unit, &value);
        (self.cfg.report)(&parsed);
        Some((unit, parsed))
    }

    /// Recomputes the selected namespaces from the store's Namespace objects; relists
    /// every other kind when the selection changed after the first list.
    fn reselect(&self) {
        let Some(selector) = &self.cfg.namespaces else { return };
        let selected: BTreeSet<String> = {
            let store = lock(&self.store);
            let (objects, _) = store.objects();
            objects
                .iter()
                .filter(|o| o.meta.kind == Kind::Namespace && selector.matches(&o.meta.labels))
                .map(|o| o.meta.name.clone())
                .collect()
        };
        let mut current = self.selected.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != selected {
            info!(namespaces = ?selected, "selected namespaces");
            *current = selected;
            drop(current);
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

/// Parses and validates one object, exactly as a document of a file.
fn parse(unit: &str, value: &Value) -> Parsed {
    let origin = Origin::new(unit, 0);
    let mut parsed =
        Parsed { generation: value.pointer("/metadata/generation").and_then(Value::as_i64), ..Default::default() };
    let text = value.to_string();
    match spar_api::parse_document(&origin, &text) {
        Ok(Some(obj)) => parsed.objects.push(obj),
        Ok(None) => {}
        Err(DocOutcome::Ignored(what)) => parsed.ignored.push((origin, what)),
        Err(DocOutcome::Error(e)) => parsed.errors.push(e),
    }
    spar_api::validate_parsed(&mut parsed);
    parsed
}

/// Drops what Spar never reads, so that memory holds config, not bookkeeping, and so
/// that status writes and resourceVersion bumps are not seen as config changes.
fn trim(kind: Kind, v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        // `generation` stays: it changes with the spec only, and status reports it.
        for k in ["managedFields", "resourceVersion", "ownerReferences", "finalizers", "selfLink"] {
            meta.remove(k);
        }
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            ann.remove("kubectl.kubernetes.io/last-applied-configuration");
            if kind == Kind::Pod {
                ann.retain(|k, _| k.contains("istio.io"));
            }
        }
    }
    match kind {
        Kind::Pod => {
            let pick = |v: Option<&Value>, keys: &[&str]| -> Value {
                let mut out = serde_json::Map::new();
                if let Some(m) = v.and_then(Value::as_object) {
                    for k in keys {
                        if let Some(x) = m.get(*k) {
                            out.insert((*k).to_string(), x.clone());
                        }
                    }
                }
                Value::Object(out)
            };
            let mut spec = pick(obj.get("spec"), &["serviceAccountName", "nodeName", "hostNetwork"]);
            if let Some(s) = spec.as_object_mut() {
                s.insert("containers".into(), Value::Array(Vec::new()));
            }
            let status = pick(obj.get("status"), &["podIP", "podIPs", "phase"]);
            obj.insert("spec".into(), spec);
            obj.insert("status".into(), status);
        }
        Kind::Node => {
            obj.remove("spec");
            obj.remove("status");
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.retain(|k, _| k == "name" || k == "labels");
            }
        }
        // A ConfigMap keeps only a CA bundle (`ca.crt`), the one thing Spar reads of it
        // (Gateway API's client validation): a cluster's ConfigMaps can be large.
        Kind::ConfigMap => {
            let ca = obj.get("data").and_then(|d| d.get("ca.crt")).cloned();
            obj.remove("data");
            obj.remove("binaryData");
            if let Some(ca) = ca {
                obj.insert("data".into(), serde_json::json!({ "ca.crt": ca }));
            }
        }
        // A Service keeps its load balancer's addresses: a Gateway API Gateway reports
        // them (istiod's ClusterExternalAddresses). They change rarely.
        Kind::Service => {
            let lb = obj.get("status").and_then(|s| s.get("loadBalancer")).cloned();
            obj.remove("status");
            if let Some(lb) = lb.filter(|lb| lb.get("ingress").is_some()) {
                obj.insert("status".into(), serde_json::json!({ "loadBalancer": lb }));
            }
        }
        _ => {
            obj.remove("status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_map_keeps_only_its_ca_bundle() {
        let mut v = serde_json::json!({
            "metadata": {"name": "ca", "namespace": "infra"},
            "data": {"ca.crt": "PEM", "dashboard.json": "{...}"},
            "binaryData": {"blob": "AAAA"},
        });
        trim(Kind::ConfigMap, &mut v);
        assert_eq!(v["data"], serde_json::json!({"ca.crt": "PEM"}));
        assert!(v.get("binaryData").is_none(), "{v}");
    }

    #[test]
    fn a_service_keeps_only_its_load_balancer_addresses_of_its_status() {
        let mut v = serde_json::json!({
            "metadata": {"name": "gw", "namespace": "infra", "resourceVersion": "7"},
            "spec": {"ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}, "conditions": [{"type": "x"}]},
        });
        trim(Kind::Service, &mut v);
        assert_eq!(v["status"], serde_json::json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}));
        let mut pending = serde_json::json!({"metadata": {"name": "gw"}, "status": {"loadBalancer": {}}});
        trim(Kind::Service, &mut pending);
        assert!(pending.get("status").is_none(), "{pending}");
    }

    #[test]
    fn namespace_selectors() {
        let sel =
            NamespaceSelector::parse(&["env=prod,team".into(), "istio-injection=enabled".into()]).expect("parses");
        let labels = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(sel.matches(&labels(&[("env", "prod"), ("team", "a")])));
        assert!(!sel.matches(&labels(&[("env", "prod")])), "all requirements of one selector");
        assert!(sel.matches(&labels(&[("istio-injection", "enabled")])), "any selector");
        let neg = NamespaceSelector::parse(&["env!=dev,!legacy".into()]).expect("parses");
        assert!(neg.matches(&labels(&[])));
        assert!(!neg.matches(&labels(&[("legacy", "")])));
        assert!(!neg.matches(&labels(&[("env", "dev")])));
        assert!(NamespaceSelector::parse(&[String::new()]).is_err());
        assert!(NamespaceSelector::parse(&["a b=c".into()]).is_err());
    }

    #[test]
    fn pods_are_trimmed_to_what_endpoints_need() {
        let mut pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}, "resourceVersion": "7",
                "managedFields": [{}], "annotations": {"sidecar.istio.io/status": "{}", "other": "x"}},
            "spec": {"serviceAccountName": "sa", "nodeName": "n", "containers": [{"name": "app", "image": "i"}]},
            "status": {"podIP": "10.0.0.1", "conditions": [{}]}
        });
        trim(Kind::Pod, &mut pod);
        assert_eq!(
            pod,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"},
                    "annotations": {"sidecar.istio.io/status": "{}"}},
                "spec": {"serviceAccountName": "sa", "nodeName": "n", "containers": []},
                "status": {"podIP": "10.0.0.1"}
            })
        );
        let parsed = parse("kubernetes/Pod/ns/p", &pod);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 1);
    }

    #[test]
    fn status_and_bookkeeping_are_not_config() {
        let vs = |rv: &str, status: &str| {
            let mut v = serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "r", "namespace": "default", "resourceVersion": rv},
                "spec": {"hosts": ["r"]},
                "status": {"observedGeneration": status}
            });
            trim(Kind::VirtualService, &mut v);
            v
        };
        assert_eq!(vs("1", "a"), vs("2", "b"));
    }

    #[test]
    fn invalid_objects_become_errors_naming_the_object() {
        let v = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"hosts": "not-a-list"}
        });
        let parsed = parse("kubernetes/VirtualService/default/bad", &v);
        assert!(parsed.objects.is_empty());
        let e = &parsed.errors[0];
        assert_eq!(e.origin.to_string(), "kubernetes/VirtualService/default/bad");
        assert_eq!(e.resource.as_deref(), Some("VirtualService default/bad"));
    }
}
