//! The ADS gRPC service: moves messages between tonic streams and [`Connection`].
//!
//! One task per stream. It waits on three things: a request from the proxy, a new
//! snapshot, and shutdown. Snapshots arrive through a `watch` channel, so a proxy that
//! is slow to read coalesces every change it missed into the latest one; the outgoing
//! channel is small and bounded, so a slow proxy never makes the server buffer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use spar_model::{Proxy, Snapshot};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::conn::{Connection, Event, Response, Variant};
use crate::sds::{CertState, Security};
use spar_ca::Identity;
use std::time::{Duration, SystemTime};

/// How often a stream re-checks its certificate even when nothing is due (a safety net:
/// CA changes are announced, and renewals are scheduled).
const IDLE_REFRESH: Duration = Duration::from_secs(60);
use crate::resources::type_url;

/// Responses queued per stream before the task waits for the proxy to read. Small on
/// purpose: coalescing happens in the snapshot `watch`, not in this queue.
const OUTBOUND_QUEUE: usize = 4;

/// Counters the server keeps (exported as metrics by the binary).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open ADS streams.
    pub connected: AtomicU64,
    /// Responses sent.
    pub pushes: AtomicU64,
    /// NACKs received (`pilot_total_xds_rejects`).
    pub rejects: AtomicU64,
}

/// The ADS service.
#[derive(Clone, Debug)]
pub struct AdsService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    security: Option<Arc<Security>>,
}

impl AdsService {
    /// A service that serves proxies from `snapshots` until `shutdown` turns true.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: watch::Receiver<bool>) -> Self {
        Self { snapshots, metrics: Arc::default(), shutdown, security: None }
    }

    /// Issues workload certificates (SDS) to proxies that prove an identity with a
    /// client certificate. Proxies without one still get config, never certificates.
    #[must_use]
    pub fn with_security(mut self, security: Arc<Security>) -> Self {
        self.security = Some(security);
        self
    }

    /// The same service sharing counters, for a second listener.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shared counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The tonic service to add to a router.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

/// A request of either protocol variant.
trait XdsRequest: Send + 'static {
    fn node(&self) -> Option<&Node>;
    fn handle(self, conn: &mut Connection) -> Vec<Response>;
}

impl XdsRequest for DiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn handle(self, conn: &mut Connection) -> Vec<Response> {
        conn.handle_sotw(self)
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn handle(self, conn: &mut Connection) -> Vec<Response> {
        conn.handle_delta(self)
    }
}

/// A response of either variant, unwrapped to the stream's message type.
trait XdsResponse: Send + 'static + Sized {
    fn from_response(r: Response) -> Option<Self>;
}

impl XdsResponse for DiscoveryResponse {
    fn from_response(r: Response) -> Option<Self> {
        match r {
            Response::Sotw(r) => Some(r),
            Response::Delta(_) => None,
        }
    }
}

impl XdsResponse for DeltaDiscoveryResponse {
    fn from_response(r: Response) -> Option<Self> {
        match r {
            Response::Delta(r) => Some(r),
            Response::Sotw(_) => None,
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl AdsService {
    async fn serve<Req: XdsRequest, Resp: XdsResponse>(
        &self,
        variant: Variant,
        request: Request<Streaming<Req>>,
    ) -> Result<tonic::Response<BoxStream<Resp>>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        // The identity a client certificate proves (the secure port verified the chain).
        let proven: Option<Identity> = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| spar_ca::identities_in(c.as_ref())))
            .and_then(|ids| ids.into_iter().next());
        if request.peer_certs().is_some() && proven.is_none() {
            return Err(Status::unauthenticated("client certificate carries no SPIFFE identity"));
        }
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
        let (tx, rx) = mpsc::channel::<Result<Resp, Status>>(OUTBOUND_QUEUE);
        let span = info_span!("ads", proxy = %proxy.id, variant = ?variant, %peer);
        let task = StreamTask {
            proxy: Arc::new(proxy),
            snapshots: self.snapshots.clone(),
            metrics: Arc::clone(&self.metrics),
            shutdown: self.shutdown.clone(),
            security: proven.and_then(|id| self.security.clone().map(|s| (s, id))),
            certs: CertState::default(),
        };
        tokio::spawn(task.run(variant, first, inbound, tx).instrument(span));
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

struct StreamTask {
    proxy: Arc<Proxy>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    /// The CA and the proven identity, for proxies that get certificates.
    security: Option<(Arc<Security>, Identity)>,
    certs: CertState,
}

impl StreamTask {
    async fn run<Req: XdsRequest, Resp: XdsResponse>(
        mut self,
        variant: Variant,
        first: Req,
        mut inbound: Streaming<Req>,
        tx: mpsc::Sender<Result<Resp, Status>>,
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
        let initial = self.resources(&snapshot, &mut refresh_at);
        let mut conn = Connection::new(variant, Arc::new(initial));
        let mut pending = first.handle(&mut conn);
        'stream: loop {
            self.log_events(&mut conn);
            for r in pending.drain(..) {
                let Some(r) = Resp::from_response(r) else { continue };
                if tx.send(Ok(r)).await.is_err() {
                    break 'stream;
                }
                self.metrics.pushes.fetch_add(1, Ordering::Relaxed);
            }
            tokio::select! {
                req = inbound.next() => match req {
                    Some(Ok(req)) => pending = req.handle(&mut conn),
                    Some(Err(e)) => { debug!(error = %e, "stream error"); break; }
                    None => break,
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() { break; }
                    snapshot = self.snapshots.borrow_and_update().clone();
                    let resources = self.resources(&snapshot, &mut refresh_at);
                    pending = conn.on_resources(Arc::new(resources));
                }
                Ok(()) = ca_changes.changed() => {
                    // A new root or intermediate: re-issue now and push the new bundle.
                    let resources = self.resources(&snapshot, &mut refresh_at);
                    pending = conn.on_resources(Arc::new(resources));
                }
                () = tokio::time::sleep(refresh_at.duration_since(SystemTime::now()).unwrap_or_default()) => {
                    // Certificate rotation (or the CA changed): only the secrets differ,
                    // so only SDS is pushed.
                    let resources = self.resources(&snapshot, &mut refresh_at);
                    pending = conn.on_resources(Arc::new(resources));
                }
                _ = self.shutdown.changed() => break,
            }
        }
        self.metrics.connected.fetch_sub(1, Ordering::Relaxed);
        info!("proxy disconnected");
    }

    /// Generated config plus, for a proxy with a proven identity, its secrets.
    fn resources(&mut self, snapshot: &Snapshot, refresh_at: &mut SystemTime) -> crate::ProxyResources {
        let mut r = crate::generate(snapshot, &self.proxy);
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

    fn log_events(&self, conn: &mut Connection) {
        for e in conn.take_events() {
            match e {
                Event::Ack { type_url, version } => {
                    debug!(r#type = type_url::short(&type_url), %version, "ACK");
                }
                Event::Nack { type_url, nack } => {
                    self.metrics.rejects.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        proxy = %self.proxy.id,
                        r#type = type_url::short(&type_url),
                        version = %nack.version,
                        resources = %nack.resources.join(","),
                        error = %nack.message,
                        "NACK: proxy rejected config and keeps its last good version"
                    );
                }
                Event::StaleNonce { type_url } => {
                    debug!(r#type = type_url::short(&type_url), "stale nonce ignored");
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.serve(Variant::Sotw, request).await
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.serve(Variant::Delta, request).await
    }
}
