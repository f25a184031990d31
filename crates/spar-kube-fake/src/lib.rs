//! An in-process fake Kubernetes API server for tests.
//!
//! [`FakeApiServer::start`] serves the Kubernetes REST protocol (JSON over plain HTTP/1.1 on
//! `127.0.0.1`) closely enough that the real `kube` client and `kube_runtime::watcher` work
//! against it unchanged. Build a client from [`FakeApiServer::kubeconfig`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = spar_kube_fake::FakeApiServer::start().await?;
//! let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig())?;
//! let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
//! let client = kube::Client::try_from(config)?;
//! # Ok(()) }
//! ```
//!
//! # Faithful to the real API server
//!
//! - URL layout (`/api/v1`, `/apis/{group}/{version}`, namespaced and all-namespace
//!   collections, items, `/status`), discovery (`/version`, `/api`, `/api/v1`, `/apis`,
//!   `/apis/{group}/{version}`; enough for `kube::Discovery::run`) and `Status` error bodies with the usual `code`/`reason` (NotFound,
//!   AlreadyExists, Conflict, Expired, Unauthorized, BadRequest, Invalid, MethodNotAllowed,
//!   UnsupportedMediaType).
//! - Unregistered resource types (a CRD not installed yet) answer 404 on every URL, watches too.
//! - One global, monotonically increasing resource version; objects get `uid`,
//!   `creationTimestamp` (kept on update), `generation` (bumped when anything outside
//!   `metadata`/`status` changes) and a new `resourceVersion` on every change. Writes that change
//!   nothing are no-ops (no new resource version, no watch event). Deleted objects carry a fresh
//!   resource version in the DELETED event.
//! - Lists: sorted by namespace/name, `labelSelector` (`=`, `==`, `!=`, `key`, `!key`, `in`,
//!   `notin`), `fieldSelector`, `limit`/`continue` pagination where every page reports the
//!   resource version of the first page (so a watch from it misses nothing), and 410 Expired for
//!   a continue token older than the last compaction.
//! - Watches: newline-delimited JSON events streamed from the given resource version (history,
//!   then live); `resourceVersion` unset or `"0"` first sends a synthetic ADDED per existing
//!   object; a compacted resource version gets one ERROR event (Status 410 Expired) and the
//!   stream ends; label selector watches see ADDED/DELETED when an object starts/stops matching;
//!   BOOKMARK events about every second and right before `timeoutSeconds` ends the stream when
//!   `allowWatchBookmarks=true`; `sendInitialEvents=true` (kube's opt-in streaming lists) sends
//!   the current objects followed by the `k8s.io/initial-events-end` bookmark. The watcher's
//!   default strategy (paginated list, then watch) needs none of that.
//! - Optimistic concurrency: PUT (and a patch setting `metadata.resourceVersion`) with a stale
//!   resource version is a 409 Conflict; this is what Lease-based leader election relies on.
//! - Status subresource for types registered [`ResourceType::with_status`]: `.../status` only
//!   changes `.status`, the main resource ignores `.status` changes, create drops `.status`.
//! - `TokenReview` answers for tokens registered with [`FakeApiServer::add_token`].
//!
//! # Simplified
//!
//! - No schema validation, defaulting, admission, RBAC, finalizers or graceful deletion:
//!   DELETE removes at once (honouring `preconditions` in the body). Namespaces need not exist.
//!   No DELETE on collections, no `/apis/{group}`, no subresources other than `status`.
//! - Server-side apply (`application/apply-patch+yaml`) and strategic merge patch are applied
//!   as JSON merge patches (lists are replaced, no field ownership, no `managedFields`); apply
//!   bodies must be JSON (which the kube client sends). Apply still creates missing objects and
//!   requires `fieldManager`. JSON patch supports `add`, `remove`, `replace` and `test`.
//! - Lists and gets always serve the current state; `resourceVersion`/`resourceVersionMatch`
//!   are accepted and ignored.
//! - Field selectors accept any dotted path to a scalar, not just the per-kind supported ones.
//! - The watch history keeps the last [`HISTORY_LIMIT`] events; resuming from before them, or
//!   from before [`FakeApiServer::compact`], gets 410 Expired. A watch from a resource version
//!   newer than the current one simply waits for it.
//! - Uids and `generateName` suffixes are unique per server but derived from the resource
//!   version, not random.
//! - Only the admin bearer token authenticates requests; there is no authorization.
//! - Every resource version of a group/resource shares one set of objects; the served
//!   `apiVersion` is rewritten, there is no conversion.

mod discovery;
mod http;
mod patch;
mod request;
mod select;
mod store;
mod watch;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tracing::Instrument;

pub use store::HISTORY_LIMIT;
use store::{Store, TokenInfo};

/// A resource type the server serves, like a built-in kind or an installed CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version within the group, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `VirtualService`.
    pub kind: String,
    /// Lower-case plural used in URLs, e.g. `virtualservices`.
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `.status` is a subresource (`.../{name}/status`).
    pub status_subresource: bool,
}

impl ResourceType {
    /// A resource type from an `apiVersion` (`"v1"` or `"networking.istio.io/v1"`), kind,
    /// plural and scope, without a status subresource.
    pub fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            status_subresource: false,
        }
    }

    /// The same type with a status subresource.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// The `apiVersion` of its objects: `version` for core, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group` (or `plural` for core), as used in error messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    fn gr(&self) -> store::GroupResource {
        (self.group.clone(), self.plural.clone())
    }
}

/// The kinds [`FakeApiServer::start`] registers.
fn builtin_types() -> Vec<ResourceType> {
    let t = ResourceType::new;
    vec![
        t("v1", "Namespace", "namespaces", false).with_status(),
        t("v1", "Service", "services", true).with_status(),
        t("v1", "Pod", "pods", true).with_status(),
        t("v1", "Secret", "secrets", true),
        t("v1", "ConfigMap", "configmaps", true),
        t("v1", "Node", "nodes", false).with_status(),
        t("v1", "Endpoints", "endpoints", true),
        t("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", true),
        t("coordination.k8s.io/v1", "Lease", "leases", true),
        t("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", false),
        t(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            false,
        ),
    ]
}

/// State shared by the handle, the HTTP handlers and the watch tasks.
pub(crate) struct Inner {
    store: Mutex<Store>,
    /// Bumped after every change, so watch tasks wake up and look at the store.
    changes: tokio::sync::watch::Sender<u64>,
    addr: SocketAddr,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // The store stays consistent across a panic in a test thread; keep serving.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// A running fake API server. Cloning gives another handle to the same server; the server runs
/// until the tokio runtime that started it shuts down.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("url", &self.url()).finish()
    }
}

impl FakeApiServer {
    /// The bearer token every request must carry (`Authorization: Bearer ...`), else 401.
    pub const ADMIN_TOKEN: &'static str = "spar-kube-fake-admin-token";

    /// Binds `127.0.0.1:0`, serves in a spawned tokio task, and registers the built-in kinds:
    /// v1 Namespace, Service, Pod, Node (these four with status), Secret, ConfigMap, Endpoints;
    /// discovery.k8s.io/v1 EndpointSlice; coordination.k8s.io/v1 Lease;
    /// admissionregistration.k8s.io/v1 Mutating/ValidatingWebhookConfiguration.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let inner =
            Arc::new(Inner { store: Mutex::new(Store::default()), changes: tokio::sync::watch::channel(0).0, addr });
        for rt in builtin_types() {
            inner.lock().register(rt);
        }
        let app = http::router(inner.clone());
        let span = tracing::info_span!("kube_fake", %addr);
        tokio::spawn(
            async move {
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::warn!(%error, "fake API server stopped");
                }
            }
            .instrument(span),
        );
        Ok(FakeApiServer { inner })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig (YAML) whose current context points at [`url`](Self::url) with
    /// [`ADMIN_TOKEN`](Self::ADMIN_TOKEN) and namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: spar-kube-fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: admin\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: spar-kube-fake\n  context:\n    cluster: spar-kube-fake\n    user: admin\n    namespace: default\n\
             current-context: spar-kube-fake\n",
            url = self.url(),
            token = Self::ADMIN_TOKEN,
        )
    }

    /// Registers a resource type (e.g. installs a CRD). Registering the same
    /// group/version/plural again replaces it (ending its open watches if it changed).
    pub fn add_resource(&self, r: ResourceType) {
        self.inner.lock().register(r);
        self.inner.notify();
    }

    /// Unregisters one version of a resource (e.g. deletes a CRD): its open watches end and its
    /// URLs answer 404. When no version of the group/resource is left, its objects are deleted
    /// (DELETED events are recorded, so a watch resumed after re-registering sees them).
    pub fn remove_resource(&self, group: &str, version: &str, plural: &str) {
        self.inner.lock().unregister(group, version, plural);
        self.inner.notify();
    }

    /// Creates or replaces an object, found by `apiVersion`, `kind`, `metadata.namespace`
    /// (default `"default"` for namespaced kinds, ignored otherwise) and `metadata.name`.
    /// Everything is taken as given (including `.status`), then `uid`, `resourceVersion`,
    /// `creationTimestamp` and `generation` are set; emits ADDED or MODIFIED (nothing when the
    /// object is unchanged). Returns the stored object, or an error when the kind is not
    /// registered or the object has no name.
    pub fn apply(&self, obj: serde_json::Value) -> Result<serde_json::Value, String> {
        let field = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let mut store = self.inner.lock();
        let rt = store
            .by_kind(api_version, kind)
            .map(|r| r.rt.clone())
            .ok_or_else(|| format!("kind {kind:?} of {api_version:?} is not registered"))?;
        let name = store::meta_str(&obj, "name").to_string();
        if name.is_empty() {
            return Err("metadata.name is required".into());
        }
        let ns = namespace_for(&rt, store::meta_str(&obj, "namespace"));
        let stored = store.commit(&rt, &ns, &name, obj);
        drop(store);
        self.inner.notify();
        Ok(stored)
    }

    /// Deletes an object (the namespace is ignored for cluster-scoped kinds); emits DELETED with
    /// a fresh resourceVersion on the object. Returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let mut store = self.inner.lock();
        let Some(rt) = store.by_kind(api_version, kind).map(|r| r.rt.clone()) else {
            return false;
        };
        let existed = store.remove(&rt, &namespace_for(&rt, namespace), name).is_some();
        drop(store);
        self.inner.notify();
        existed
    }

    /// The stored object, if the kind is registered and the object exists.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.inner.lock();
        let rt = &store.by_kind(api_version, kind)?.rt;
        store.get(rt, &namespace_for(rt, namespace), name).cloned()
    }

    /// All stored objects of a kind, in every namespace, sorted by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let store = self.inner.lock();
        let Some(rt) = store.by_kind(api_version, kind) else {
            return Vec::new();
        };
        store.objects.get(&rt.rt.gr()).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Forgets all watch history up to now and ends every open watch stream. Clients that
    /// re-watch from a resource version they saw before get a 410 Expired ERROR event and must
    /// relist (the kube watcher does so, emitting a fresh `Init ... InitDone`). This also bumps
    /// the global resource version, so lists made afterwards can be watched from.
    pub fn compact(&self) {
        self.inner.lock().compact();
        self.inner.notify();
    }

    /// Makes TokenReview authenticate `token` as `username` (e.g.
    /// `system:serviceaccount:ns:sa`) for the given audiences.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str]) {
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        let info = TokenInfo { username: username.to_string(), audiences, pod: None };
        self.inner.lock().tokens.insert(token.to_string(), info);
    }

    /// Like [`FakeApiServer::add_token`] for a projected token bound to a pod: the review's
    /// `user.extra` names the pod (`authentication.kubernetes.io/pod-name`, `pod-uid`), as
    /// the real API server's does.
    pub fn add_pod_token(&self, token: &str, username: &str, audiences: &[&str], pod_name: &str, pod_uid: &str) {
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        let pod = Some((pod_name.to_string(), pod_uid.to_string()));
        let info = TokenInfo { username: username.to_string(), audiences, pod };
        self.inner.lock().tokens.insert(token.to_string(), info);
    }

    /// Makes `token` fail every later TokenReview (a deleted service account or pod).
    pub fn revoke_token(&self, token: &str) {
        self.inner.lock().tokens.remove(token);
    }

    /// Every request so far as `"METHOD path?query"`, the query exactly as sent (URL-encoded)
    /// and left out with its `?` when empty, e.g. `"GET /api/v1/namespaces/default/pods"` or
    /// `"GET /api/v1/pods?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=5"`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// Stores `raw` as the object `namespace/name` of a registered kind WITHOUT any checks or
    /// server-managed fields (only `metadata.resourceVersion` is set, when `raw.metadata` is an
    /// object), e.g. to inject objects clients fail to deserialize. Emits ADDED or MODIFIED.
    /// Does nothing (but log a warning) when the kind is not registered.
    pub fn write_object_raw(&self, api_version: &str, kind: &str, namespace: &str, name: &str, raw: Value) {
        let mut store = self.inner.lock();
        let Some(rt) = store.by_kind(api_version, kind).map(|r| r.rt.clone()) else {
            tracing::warn!(api_version, kind, "write_object_raw: kind not registered");
            return;
        };
        store.commit_raw(&rt, &namespace_for(&rt, namespace), name, raw);
        drop(store);
        self.inner.notify();
    }

    /// The current global resource version.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }
}

/// The storage namespace: `""` for cluster-scoped kinds, `"default"` when namespaced and unset.
fn namespace_for(rt: &ResourceType, ns: &str) -> String {
    match (rt.namespaced, ns) {
        (false, _) => String::new(),
        (true, "") => "default".to_string(),
        (true, ns) => ns.to_string(),
    }
}
