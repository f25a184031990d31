//! The ADS gRPC service: moves messages between tonic streams and [`Connection`].
//!
//! One task per stream. It waits on three things: a request from the proxy, a new
//! snapshot, and shutdown. Snapshots arrive through a `watch` channel, so a proxy that
//! is slow to read coalesces every change it missed into the latest one; the outgoing
//! channel is small and bounded, so a slow proxy never makes the server buffer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::StreamExt;
use spar_model::{Proxy, Snapshot};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status};

/// The requests of one stream, decoded.
pub(crate) type Requests<Req> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Req, Status>> + Send>>;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::conn::{Connection, Event, Response, Variant};
use crate::sds::{CertState, Security};
use spar_ca::Identity;
use std::time::{Duration, Instant, SystemTime};

/// How often a stream re-checks its certificate even when nothing is due (a safety net:
/// CA changes are announced, and renewals are scheduled).
const IDLE_REFRESH: Duration = Duration::from_secs(60);
pub use crate::generation_cache::GenerationCache;
pub use crate::metrics::{Histogram, Metrics, PerType};
use crate::resources::type_url;
pub use crate::sync::{NackInfo, ProxySync, SyncRegistry, TypeSync};

/// Responses queued per stream before the task waits for the proxy to read. Small on
/// purpose: coalescing happens in the snapshot `watch`, not in this queue.
const OUTBOUND_QUEUE: usize = 4;

/// The ADS service.
#[derive(Clone, Debug)]
pub struct AdsService {
    cache: Arc<GenerationCache>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    sync: Arc<SyncRegistry>,
    shutdown: watch::Receiver<bool>,
    security: Option<Arc<Security>>,
    token_auth: Option<crate::auth::TokenAuth>,
    rejections: Arc<crate::rejections::Rejections>,
    /// Spar serves a secure port: a proxy that proves no identity is not believed.
    distrust_unverified: bool,
    /// How long a stream lives before it is ended so that its proxy reconnects
    /// ([`Self::with_max_stream_age`]).
    max_stream_age: Option<Duration>,
}

impl AdsService {
    /// A service that serves proxies from `snapshots` until `shutdown` turns true.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            cache: Arc::default(),
            snapshots,
            metrics: Arc::default(),
            sync: Arc::default(),
            shutdown,
            security: None,
            token_auth: None,
            rejections: Arc::default(),
            distrust_unverified: false,
            max_stream_age: None,
        }
    }

    /// Ends each stream about `age` after it opened (plus or minus 10%, so that the
    /// proxies of one reconnect storm do not all come back at once): the second half of
    /// istiod's `keepaliveMaxServerConnectionAge`. The server sends the connection's
    /// GOAWAY at the age itself; ending the stream after the grace closes the connection,
    /// and the proxy reconnects over a new one (to any replica), its config kept
    /// meanwhile.
    #[must_use]
    pub fn with_max_stream_age(mut self, age: Duration) -> Self {
        self.max_stream_age = Some(age);
        self
    }

    /// Spar also serves a secure port (proxies can prove an identity): the NACKs of a
    /// proxy that proves none are shown, not believed (`ProxySync::unverified`).
    #[must_use]
    pub fn distrusting_unverified(mut self) -> Self {
        self.distrust_unverified = true;
        self
    }

    /// The shared-generation cache (hit and miss counters).
    pub fn cache(&self) -> Arc<GenerationCache> {
        Arc::clone(&self.cache)
    }

    /// Per-proxy sync state (for `/debug/syncz` and `spar proxy-status`).
    pub fn sync_registry(&self) -> Arc<SyncRegistry> {
        Arc::clone(&self.sync)
    }

    /// Issues workload certificates (SDS) to proxies that prove an identity with a
    /// client certificate. Proxies without one still get config, never certificates.
    #[must_use]
    pub fn with_security(mut self, security: Arc<Security>) -> Self {
        self.security = Some(security);
        self
    }

    /// Also accepts service-account tokens as proof on the secure port (Kubernetes), and
    /// refuses pod-bound credentials whose pod is gone.
    #[must_use]
    pub fn with_token_auth(mut self, auth: crate::auth::TokenAuth) -> Self {
        self.token_auth = Some(auth);
        self
    }

    /// NACKs traced to the Istio objects that likely caused them (for their status).
    pub fn rejections(&self) -> Arc<crate::rejections::Rejections> {
        Arc::clone(&self.rejections)
    }

    /// The same service sharing counters and sync state, for a second listener.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, sync: Arc<SyncRegistry>) -> Self {
        self.metrics = metrics;
        self.sync = sync;
        self
    }

    /// Shared counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }
}

/// A request of either protocol variant.
pub(crate) trait XdsRequest: Send + 'static {
    fn node(&self) -> Option<&Node>;
    fn handle(self, conn: &mut Connection) -> Vec<Response>;
}

impl XdsRequest for crate::request::SotwRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn handle(self, conn: &mut Connection) -> Vec<Response> {
        conn.handle_sotw(self)
    }
}

impl XdsRequest for crate::request::DeltaRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn handle(self, conn: &mut Connection) -> Vec<Response> {
        conn.handle_delta(self)
    }
}

/// A response of either variant, unwrapped to the stream's message type.
pub(crate) trait XdsResponse: Send + 'static + Sized {
    fn from_response(r: Response) -> Option<Self>;
    fn type_url(&self) -> &str;
}

impl XdsResponse for crate::response::SotwResponse {
    fn from_response(r: Response) -> Option<Self> {
        match r {
            Response::Sotw(r) => Some(r),
            Response::Delta(_) => None,
        }
    }
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

impl XdsResponse for crate::response::DeltaResponse {
    fn from_response(r: Response) -> Option<Self> {
        match r {
            Response::Delta(r) => Some(r),
            Response::Sotw(_) => None,
        }
    }
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

impl AdsService {
    pub(crate) async fn serve<Req: XdsRequest, Resp: XdsResponse>(
        &self,
        variant: Variant,
        request: Request<Requests<Req>>,
    ) -> Result<mpsc::Receiver<crate::response::Outbound<Resp>>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        // The identity the caller proves: a client certificate (the secure port verified the
        // chain) or, on TLS, a reviewed service-account token.
        let trust_domain = self.security.as_ref().map(|s| s.ca().trust_domain().to_string()).unwrap_or_default();
        let proven: Option<Identity> =
            crate::auth::authenticate(crate::auth::Presented::of(&request), self.token_auth.as_ref(), &trust_domain)
                .await
                .inspect_err(|e| {
                    warn!(%peer, error = %e.message(), "refused on the secure xDS port");
                })?
                .map(|c| c.identity);
        let mut inbound = request.into_inner();
        // The node is on the first message (Envoy sets set_node_on_first_message_only).
        let first = match inbound.next().await {
            Some(Ok(req)) => req,
            Some(Err(e)) => return Err(e),
            None => return Err(Status::cancelled("stream closed before the first request")),
        };
        let node = first.node().ok_or_else(|| Status::invalid_argument("first request carries no node"))?;
        let mut proxy = crate::node::to_proxy(node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(id) = &proven {
            // The claim in the node metadata must be the proven identity, or nothing is served.
            if id.namespace != proxy.namespace || id.service_account != proxy.service_account {
                warn!(proxy = %proxy.id, proven = %id, claimed_namespace = %proxy.namespace, claimed_service_account = %proxy.service_account, %peer, "refused: node metadata claims another identity");
                return Err(Status::permission_denied(format!(
                    "node claims namespace {:?} and service account {:?} but the client certificate proves {id}",
                    proxy.namespace, proxy.service_account
                )));
            }
            proxy.identity = Some(id.to_string());
        }
        let proven_missing = proxy.identity.is_none();
        let (tx, rx) = mpsc::channel::<crate::response::Outbound<Resp>>(OUTBOUND_QUEUE);
        let span = info_span!("ads", proxy = %proxy.id, variant = ?variant, %peer);
        let task = StreamTask {
            cache: Arc::clone(&self.cache),
            proxy: Arc::new(proxy),
            snapshots: self.snapshots.clone(),
            metrics: Arc::clone(&self.metrics),
            sync: Arc::clone(&self.sync),
            rejections: Arc::clone(&self.rejections),
            shutdown: self.shutdown.clone(),
            security: proven.and_then(|id| self.security.clone().map(|s| (s, id))),
            certs: CertState::default(),
            warnings: Vec::new(),
            unverified: self.distrust_unverified && proven_missing,
            max_age: self.max_stream_age.map(jittered),
        };
        tokio::spawn(task.run(variant, first, inbound, tx).instrument(span));
        Ok(rx)
    }
}

/// One debug line per push decision (the stream's span names the proxy): what a change
/// (`trigger`) made Spar send, per type with the resource counts, or that nothing this
/// proxy holds changed and nothing was sent.
fn log_push_decision(trigger: &'static str, snapshot: u64, pending: &[crate::conn::Response]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if pending.is_empty() {
        debug!(trigger, snapshot, "push decision: nothing this proxy holds changed; nothing sent");
        return;
    }
    let parts: Vec<String> = pending
        .iter()
        .map(|r| match r {
            crate::conn::Response::Sotw(s) => {
                format!("{}:{}", type_url::short(&s.type_url), s.resources.len())
            }
            crate::conn::Response::Delta(d) => {
                format!("{}:+{}-{}", type_url::short(&d.type_url), d.resources.len(), d.removed_resources.len())
            }
        })
        .collect();
    debug!(trigger, snapshot, pushed = %parts.join(" "), "push decision: sending what changed");
}

struct StreamTask {
    cache: Arc<GenerationCache>,
    proxy: Arc<Proxy>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    sync: Arc<SyncRegistry>,
    rejections: Arc<crate::rejections::Rejections>,
    shutdown: watch::Receiver<bool>,
    /// The CA and the proven identity, for proxies that get certificates.
    security: Option<(Arc<Security>, Identity)>,
    certs: CertState,
    /// The warnings of the last generated config (logged when they change).
    warnings: Vec<String>,
    /// The proxy proved no identity while Spar serves a secure port (its NACKs are not
    /// believed).
    unverified: bool,
    /// When the stream is ended so that the proxy reconnects (`None`: never).
    max_age: Option<Duration>,
}

/// `age` plus or minus up to 10%, as grpc-go jitters istiod's max connection age.
fn jittered(age: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let r = foldhash::fast::RandomState::default().hash_one(seed);
    // A fraction in [-0.1, 0.1).
    let f = (r % 2001) as f64 / 10_000.0 - 0.1;
    age.mul_f64(1.0 + f)
}

impl StreamTask {
    async fn run<Req: XdsRequest, Resp: XdsResponse>(
        mut self,
        variant: Variant,
        first: Req,
        mut inbound: Requests<Req>,
        tx: mpsc::Sender<crate::response::Outbound<Resp>>,
    ) {
        self.metrics.connected.fetch_add(1, Ordering::Relaxed);
        info!("proxy connected");
        let mut snapshot = self.snapshots.borrow_and_update().clone();
        let mut ca_changes = match &self.security {
            Some((security, _)) => security.ca_changes(),
            // Nothing will ever be announced to a proxy without a certificate.
            None => tokio::sync::watch::channel(0).1,
        };
        let mut refresh_at = SystemTime::now() + IDLE_REFRESH;
        // When the stream decided to send what `pending` holds (pilot_xds_push_time).
        let mut decided_at = Instant::now();
        let initial = self.resources(&snapshot, None, &mut refresh_at);
        let mut conn = Connection::new(variant, Arc::new(initial));
        let mut pending = first.handle(&mut conn);
        let sync_id = self.sync.next.fetch_add(1, Ordering::Relaxed);
        // Pending forever without an age limit.
        let max_age = self.max_age;
        let aged = async move {
            match max_age {
                Some(age) => tokio::time::sleep(age).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(aged);
        'stream: loop {
            self.log_events(&mut conn, sync_id, &snapshot);
            for r in pending.drain(..) {
                let Some(r) = Resp::from_response(r) else { continue };
                let kind = r.type_url().to_string();
                if tx.send(Box::new(Ok(r))).await.is_err() {
                    break 'stream;
                }
                self.metrics.record_push(&kind, decided_at);
            }
            self.sync.update(sync_id, &conn, &self.proxy, self.unverified, snapshot.version, &self.warnings);
            tokio::select! {
                req = inbound.next() => match req {
                    Some(Ok(req)) => {
                        decided_at = Instant::now();
                        pending = req.handle(&mut conn);
                    }
                    Some(Err(e)) => { debug!(error = %e, "stream error"); break; }
                    None => break,
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() { break; }
                    decided_at = Instant::now();
                    snapshot = self.snapshots.borrow_and_update().clone();
                    let resources = self.resources(&snapshot, Some(conn.current()), &mut refresh_at);
                    pending = conn.on_resources(Arc::new(resources));
                    log_push_decision("config", snapshot.version, &pending);
                }
                Ok(()) = ca_changes.changed() => {
                    // A new root or intermediate: re-issue now and push the new bundle.
                    decided_at = Instant::now();
                    let resources = self.resources(&snapshot, None, &mut refresh_at);
                    pending = conn.on_resources(Arc::new(resources));
                    log_push_decision("ca", snapshot.version, &pending);
                }
                () = tokio::time::sleep(refresh_at.duration_since(SystemTime::now()).unwrap_or_default()) => {
                    // Certificate rotation (or the CA changed): only the secrets differ,
                    // so only SDS is pushed.
                    decided_at = Instant::now();
                    let resources = self.resources(&snapshot, None, &mut refresh_at);
                    pending = conn.on_resources(Arc::new(resources));
                    log_push_decision("certificate", snapshot.version, &pending);
                }
                _ = self.shutdown.changed() => break,
                // The connection's age limit and grace have passed: the stream ends
                // (status OK) and the proxy reconnects, keeping its config meanwhile.
                () = &mut aged => {
                    info!("stream reached its age limit; the proxy will reconnect");
                    break;
                }
            }
        }
        self.metrics.connected.fetch_sub(1, Ordering::Relaxed);
        self.sync.remove(sync_id);
        self.rejections.clear(sync_id, None);
        info!("proxy disconnected");
    }

    /// Generated config plus, for a proxy with a proven identity, its secrets.
    /// `prev` is what the stream serves now: its own layer is kept when only endpoints
    /// elsewhere changed.
    fn resources(
        &mut self,
        snapshot: &Snapshot,
        prev: Option<&Arc<crate::ProxyResources>>,
        refresh_at: &mut SystemTime,
    ) -> crate::ProxyResources {
        let shared = self.cache.shared(snapshot, &self.proxy);
        let mut r = match prev {
            Some(p)
                if p.is_layered()
                    && spar_generate::generator::workload_specific_unchanged(
                        snapshot,
                        &self.proxy,
                        p.snapshot_version,
                    ) =>
            {
                p.own_layer_over(shared)
            }
            _ => {
                let mut r = crate::ProxyResources::layered(shared);
                spar_generate::generator::add_workload_specific(snapshot, &self.proxy, &mut r);
                r
            }
        };
        if r.warnings != self.warnings {
            for w in r.warnings.iter().filter(|w| !self.warnings.contains(w)) {
                warn!(snapshot = snapshot.version, "config left out: {w}");
            }
            self.warnings.clone_from(&r.warnings);
        }
        *refresh_at = SystemTime::now() + IDLE_REFRESH;
        if let Some((security, id)) = &self.security {
            match self.certs.ensure(security, id) {
                Ok(at) => *refresh_at = at.min(SystemTime::now() + IDLE_REFRESH),
                Err(e) => warn!(identity = %id, error = %e, "cannot issue a workload certificate; retrying"),
            }
            self.certs.add_secrets(&mut r);
        }
        r
    }

    fn log_events(&self, conn: &mut Connection, stream: u64, snapshot: &Snapshot) {
        for e in conn.take_events() {
            match e {
                Event::Ack { type_url, version, latency } => {
                    if let Some(l) = latency {
                        self.metrics.convergence.observe(l);
                    }
                    debug!(r#type = type_url::short(&type_url), %version, "ACK");
                    self.rejections.clear(stream, Some(&type_url));
                }
                Event::Nack { type_url, nack } if self.unverified => {
                    // Anyone can open a plaintext stream and NACK with text of their
                    // choosing: shown in proxy-status as such, believed nowhere else.
                    let message: String = nack.message.chars().take(200).collect();
                    warn!(
                        proxy = %self.proxy.id,
                        r#type = type_url::short(&type_url),
                        version = %nack.version,
                        error = %message,
                        "NACK from a proxy that proved no identity: not counted and not reported on any resource"
                    );
                }
                Event::Nack { type_url, nack } => {
                    self.metrics.rejects.fetch_add(1, Ordering::Relaxed);
                    let from: Vec<String> = crate::rejections::culprits(snapshot, &self.proxy, &type_url, &nack)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    let outcome = nack.outcome(&type_url);
                    warn!(
                        proxy = %self.proxy.id,
                        r#type = type_url::short(&type_url),
                        version = %nack.version,
                        refused = %nack.refused().join(","),
                        from = %from.join(","),
                        error = %nack.message,
                        "NACK: {outcome}"
                    );
                    conn.note_nack_origins(&type_url, from);
                    self.rejections.record(stream, &type_url, &self.proxy, snapshot, &nack);
                }
                Event::StaleNonce { type_url } => {
                    debug!(r#type = type_url::short(&type_url), "stale nonce ignored");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceType;

    #[test]
    fn histogram_is_cumulative_and_inf_is_the_count() {
        let h = Histogram::new(Histogram::PUSH_TIME_BOUNDS);
        for ms in [0, 1, 5, 50, 2_000, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let (buckets, count, sum) = h.cumulative();
        assert_eq!(buckets.len(), Histogram::PUSH_TIME_BOUNDS.len());
        // 0 and 1 ms are <= 0.001 (the bound is inclusive), 5 ms <= 0.01, 50 ms <= 0.1,
        // 2 s <= 3, and 60 s is above every bound: only in the count.
        let at = |b: f64| buckets.iter().find(|(bound, _)| (*bound - b).abs() < 1e-9).map(|(_, n)| *n);
        assert_eq!(at(0.001), Some(2));
        assert_eq!(at(0.01), Some(3));
        assert_eq!(at(0.1), Some(4));
        assert_eq!(at(1.0), Some(4));
        assert_eq!(at(3.0), Some(5));
        assert_eq!(at(30.0), Some(5));
        assert_eq!(count, 6);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert!((sum - 62.056).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn push_time_is_recorded_per_type_with_each_push() {
        let m = Metrics::default();
        let cds = ResourceType::Cluster;
        let decided = Instant::now().checked_sub(Duration::from_millis(20)).unwrap_or_else(Instant::now);
        m.record_push(type_url::CLUSTER, decided);
        m.record_push(type_url::CLUSTER, Instant::now());
        m.record_push("type.googleapis.com/unknown", Instant::now());
        assert_eq!(m.pushes.load(Ordering::Relaxed), 3);
        assert_eq!(m.pushes_by_type[cds].load(Ordering::Relaxed), 2);
        let (buckets, count, sum) = m.push_time[cds].cumulative();
        assert_eq!(count, 2, "one observation per response");
        assert!(sum >= 0.02, "the 20 ms since the decision are counted: {sum}");
        assert_eq!(buckets.last().map(|b| b.1), Some(2));
        for (t, h) in m.push_time.iter().filter(|(t, _)| *t != cds) {
            assert_eq!(h.cumulative().1, 0, "type {t:?}");
        }
    }
}
