//! Simulated sidecars: ADS streams that subscribe, decode and ACK the way Envoy does.
//!
//! Each proxy is one task with one ADS stream. It sends the node (id and metadata as a
//! real sidecar's bootstrap has them) on its first request, subscribes to CDS and LDS as
//! wildcards, then to EDS for every EDS cluster it receives and to RDS for every route
//! configuration its listeners name, and answers every response with an ACK (or, on
//! demand, a NACK). Every response is timestamped when it arrives and when it is
//! answered ([`Record`]), so that callers can compute time to full config and
//! change-to-ACK convergence.
//!
//! By default each proxy has its own HTTP/2 connection, as Envoy does; proxies can share
//! connections ([`ClientOptions::streams_per_connection`]). A stream that fails is
//! reopened after a short back-off, like Envoy's ADS retry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node as XdsNode;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as XdsHcm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// Envoy's type URLs, in the order Spar pushes them.
pub mod type_url {
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
}

/// The four xDS types a sidecar needs, as indexes into per-type arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdsType {
    /// Clusters.
    Cds = 0,
    /// Endpoints.
    Eds = 1,
    /// Listeners.
    Lds = 2,
    /// Route configurations.
    Rds = 3,
}

impl XdsType {
    /// All four, in push order.
    pub const ALL: [XdsType; 4] = [XdsType::Cds, XdsType::Eds, XdsType::Lds, XdsType::Rds];

    /// The type URL.
    pub fn url(self) -> &'static str {
        match self {
            XdsType::Cds => type_url::CLUSTER,
            XdsType::Eds => type_url::ENDPOINT,
            XdsType::Lds => type_url::LISTENER,
            XdsType::Rds => type_url::ROUTE,
        }
    }

    /// The type for a type URL, if it is one of the four.
    pub fn from_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.url() == url)
    }

    /// `cds`, `eds`, `lds` or `rds`.
    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cds => "cds",
            XdsType::Eds => "eds",
            XdsType::Lds => "lds",
            XdsType::Rds => "rds",
        }
    }
}

/// One simulated sidecar: the pod it pretends to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    /// Pod IP.
    pub ip: String,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// `REDIRECT`, `TPROXY` or `NONE`.
    pub interception_mode: String,
}

impl ProxySpec {
    /// Istio's node id: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        format!("sidecar~{}~{}.{}~{}.svc.cluster.local", self.ip, self.pod, self.namespace, self.namespace)
    }

    /// The node as a sidecar's bootstrap has it (metadata keys as `spar bootstrap` and
    /// istio-agent write them).
    pub fn node(&self) -> XdsNode {
        let s = |v: &str| Value { kind: Some(Kind::StringValue(v.to_string())) };
        let labels = Struct { fields: self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect() };
        let fields = [
            ("NAMESPACE", s(&self.namespace)),
            ("NAME", s(&self.pod)),
            ("LABELS", Value { kind: Some(Kind::StructValue(labels)) }),
            ("SERVICE_ACCOUNT", s(&self.service_account)),
            ("INSTANCE_IPS", s(&self.ip)),
            ("INTERCEPTION_MODE", s(&self.interception_mode)),
            ("CLUSTER_ID", s("Kubernetes")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        XdsNode {
            id: self.node_id(),
            cluster: format!("{}.{}", self.labels.get("app").map_or("unknown", String::as_str), self.namespace),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }
}

/// How much of each response is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Decode {
    /// Every resource of every type, as Envoy does.
    All,
    /// Only clusters and listeners (what subscribing needs); endpoints and routes are
    /// counted, not decoded. Cheaper for the client when it shares cores with the server.
    Discovery,
}

/// How the simulated proxies connect and behave.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Spar's plaintext xDS address, e.g. `http://127.0.0.1:15010`.
    pub server: String,
    /// Delta (incremental) xDS instead of state of the world.
    pub delta: bool,
    /// ADS streams per HTTP/2 connection (1: one connection per proxy, as Envoy).
    pub streams_per_connection: usize,
    /// Percentage (0-100) of responses answered with a NACK instead of an ACK.
    pub nack_percent: f64,
    /// How much to decode.
    pub decode: Decode,
    /// HTTP/2 initial stream window (bytes).
    pub stream_window: u32,
    /// HTTP/2 initial connection window (bytes).
    pub connection_window: u32,
    /// Bind each connection to one of this many loopback source addresses
    /// (127.0.0.2, 127.0.0.3, ...) when the server is on loopback, so that thousands of
    /// connections do not all share one source address's ports. 0: let the kernel choose.
    pub source_addresses: u8,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:15010".into(),
            delta: false,
            streams_per_connection: 1,
            nack_percent: 0.0,
            decode: Decode::All,
            stream_window: 1 << 20,
            connection_window: 2 << 20,
            source_addresses: 200,
        }
    }
}

/// One response a proxy received and how it answered.
#[derive(Clone, Debug)]
pub struct Record {
    /// Type.
    pub kind: XdsType,
    /// `version_info` (SotW) or `system_version_info` (delta).
    pub version: String,
    /// When the response was read off the stream.
    pub received: Instant,
    /// When the ACK or NACK was handed to the stream.
    pub answered: Instant,
    /// ACK (true) or NACK (false).
    pub acked: bool,
    /// Resources in the response.
    pub resources: usize,
    /// Encoded bytes of those resources.
    pub bytes: usize,
}

/// What one proxy has seen so far.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// When the proxy's first stream was opened.
    pub started: Option<Instant>,
    /// When the proxy first held full config: CDS and LDS answered, and EDS and RDS
    /// answered for everything it subscribed to.
    pub full_at: Option<Instant>,
    /// Every response, in order.
    pub log: Vec<Record>,
    /// Resources held per type ([`XdsType`] order).
    pub held: [usize; 4],
    /// Streams that failed and were reopened.
    pub reconnects: u32,
    /// The last stream error.
    pub error: Option<String>,
}

/// A proxy's stats, shared between its task and the caller.
pub type SharedStats = Arc<Mutex<ProxyStats>>;

/// Locks a proxy's stats (a panicking holder cannot leave them inconsistent in a way that
/// matters for measurements).
pub fn lock(stats: &SharedStats) -> MutexGuard<'_, ProxyStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A set of running simulated proxies.
#[derive(Debug)]
pub struct Fleet {
    /// Per proxy, in the order given.
    pub stats: Vec<SharedStats>,
    /// When the fleet was started.
    pub started: Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Starts one task per proxy; all connect at once.
    pub fn start(opts: &Arc<ClientOptions>, specs: Vec<ProxySpec>, first_index: usize) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let per_conn = opts.streams_per_connection.max(1);
        let loopback = opts.server.contains("://127.") || opts.server.contains("://localhost");
        let mut channel: Option<Channel> = None;
        let mut stats = Vec::with_capacity(specs.len());
        let mut tasks = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let index = first_index + i;
            if i % per_conn == 0 || channel.is_none() {
                let ep = Endpoint::from_shared(opts.server.clone())?
                    .initial_stream_window_size(Some(opts.stream_window))
                    .initial_connection_window_size(Some(opts.connection_window))
                    .connect_timeout(Duration::from_secs(20));
                let local = (loopback && opts.source_addresses > 0).then(|| {
                    let conn = index / per_conn;
                    let host = 2 + (conn % usize::from(opts.source_addresses)) as u8;
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0)
                });
                // Connections read in large pieces (`bigread`), from their source address.
                let connector = tower::service_fn(move |uri: http::Uri| async move {
                    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
                    let port = uri.port_u16().unwrap_or(80);
                    // Each address of the host in turn (`localhost` may be ::1 first), of
                    // the source address's family when there is one.
                    let mut last = std::io::Error::other(format!("{host} has no address"));
                    for server in tokio::net::lookup_host((host, port)).await? {
                        if local.is_some_and(|l| l.is_ipv4() != server.is_ipv4()) {
                            continue;
                        }
                        match crate::bigread::connect(server, local).await {
                            Ok(tcp) => return Ok(hyper_util::rt::TokioIo::new(tcp)),
                            Err(e) => last = e,
                        }
                    }
                    Err(last)
                });
                channel = Some(ep.connect_with_connector_lazy(connector));
            }
            let Some(ch) = channel.clone() else { continue };
            let s: SharedStats = Arc::default();
            stats.push(Arc::clone(&s));
            let proxy = Proxy { spec, opts: Arc::clone(opts), stats: s, rng: Rng::new(index as u64) };
            tasks.push(tokio::spawn(proxy.run(ch, stop_rx.clone())));
        }
        Ok(Self { stats, started: Instant::now(), stop, tasks })
    }

    /// How many proxies hold full config.
    pub fn full_count(&self) -> usize {
        self.stats.iter().filter(|s| lock(s).full_at.is_some()).count()
    }

    /// Waits until every proxy holds full config, or `timeout`; returns when the last
    /// one got there (`None` on timeout).
    pub async fn wait_full(&self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let last =
                self.stats.iter().map(|s| lock(s).full_at).try_fold(self.started, |acc, t| t.map(|t| acc.max(t)));
            if last.is_some() {
                return last;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every stream and connection and waits for the tasks to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Number of responses recorded over all proxies (changes whenever anything arrives).
    pub fn record_count(&self) -> usize {
        self.stats.iter().map(|s| lock(s).log.len()).sum()
    }

    /// Errors so far, with how many proxies had each (the most common first).
    pub fn errors(&self) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for s in &self.stats {
            if let Some(e) = &lock(s).error {
                *m.entry(e.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

/// A tiny deterministic generator (xorshift64*) for NACK decisions.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 100).
    fn percent(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

/// A request: its fields but the names, and the names (field 3: `resource_names` in
/// SotW, `resource_names_subscribe` in delta) as encoded once per subscription.
/// Protobuf fields may come in any order.
#[derive(Clone, Debug, Default)]
struct Ask<M> {
    head: M,
    names: Bytes,
}

/// A SotW request.
type SotwAsk = Ask<DiscoveryRequest>;
/// A delta request.
type DeltaAsk = Ask<DeltaDiscoveryRequest>;

impl From<DeltaDiscoveryRequest> for DeltaAsk {
    fn from(head: DeltaDiscoveryRequest) -> Self {
        Self { head, names: Bytes::new() }
    }
}

/// The ADS methods, called with the light response types.
const SOTW_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl<M: Message + 'static> crate::grpc::Wire for Ask<M> {
    /// Every SotW ACK repeats the names (220 KB in a full mesh), and a delta proxy's
    /// first EDS subscription names as many: encoded once per subscription (shared by the
    /// proxies that hold the same clusters), copied into each request.
    fn wire(&self) -> Bytes {
        crate::grpc::prefixed(&self.head, &self.names)
    }
}

/// One simulated proxy.
struct Proxy {
    spec: ProxySpec,
    opts: Arc<ClientOptions>,
    stats: SharedStats,
    rng: Rng,
}

fn nack_status(message: String) -> RpcStatus {
    RpcStatus { code: 3, message, details: Vec::new() }
}

impl Proxy {
    async fn run(mut self, channel: Channel, mut stop: watch::Receiver<bool>) {
        lock(&self.stats).started = Some(Instant::now());
        let mut backoff = Duration::from_millis(250);
        loop {
            let result = tokio::select! {
                r = self.stream(channel.clone()) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let msg = match result {
                Ok(()) => "stream closed by the server".to_string(),
                Err(e) => format!("{e:#}"),
            };
            {
                let mut s = lock(&self.stats);
                s.reconnects += 1;
                s.error = Some(msg);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn stream(&mut self, channel: Channel) -> anyhow::Result<()> {
        if self.opts.delta { self.stream_delta(channel).await } else { self.stream_sotw(channel).await }
    }

    fn decide_ack(&mut self) -> bool {
        self.opts.nack_percent <= 0.0 || self.rng.percent() >= self.opts.nack_percent
    }

    fn record(&self, h: &Holdings, rec: Record) {
        let mut s = lock(&self.stats);
        s.held = [h.cds.by_name.len(), h.answered_for[0].1, h.lds.by_name.len(), h.answered_for[1].1];
        s.log.push(rec);
        if s.full_at.is_none() && h.is_full() {
            s.full_at = Some(Instant::now());
        }
    }

    async fn stream_sotw(&mut self, channel: Channel) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<SotwAsk>(16);
        let mut h = Holdings::default();
        let ask = |head: DiscoveryRequest| SotwAsk { head, names: Bytes::new() };
        tx.send(ask(DiscoveryRequest {
            node: Some(self.spec.node()),
            type_url: type_url::CLUSTER.into(),
            ..Default::default()
        }))
        .await?;
        tx.send(ask(DiscoveryRequest { type_url: type_url::LISTENER.into(), ..Default::default() })).await?;
        let mut inbound = crate::grpc::open(channel, SOTW_METHOD, rx).await?;
        while let Some(body) = inbound.body().await? {
            let received = Instant::now();
            let content = body.content_hash();
            let SotwHead { version_info, type_url, nonce } = SotwHead::decode(body.clone())?;
            let resources = Lazily::new(body);
            let Some(kind) = XdsType::from_url(&type_url) else {
                // A type we never asked for (SDS without certificates, say): ACK and move on.
                tx.send(ask(DiscoveryRequest { version_info, response_nonce: nonce, type_url, ..Default::default() }))
                    .await?;
                continue;
            };
            let k = kind as usize;
            h.nonce[k] = nonce.clone();
            // State of the world: the response replaces what the proxy held of its type.
            // An `Any` that cannot be read or decoded is a NACK's reason.
            let (error, sizes) =
                h.step(kind, false, content, || read_sotw(kind, resources.get()), &[], self.opts.decode);
            let ack = error.is_none() && self.decide_ack();
            // New subscriptions first (Envoy subscribes to the EDS of new clusters while
            // it warms them), then the ACK or NACK.
            for (held, sub) in [(XdsType::Cds, XdsType::Eds), (XdsType::Lds, XdsType::Rds)] {
                let i = usize::from(sub == XdsType::Rds);
                if kind == held && h.wants_other(i) {
                    h.subscribe(i);
                    h.answered[sub as usize] = false;
                    tx.send(self.sotw_request(&h, sub)).await?;
                }
            }
            if ack {
                h.acked_version[k] = version_info.clone();
            }
            let mut req = self.sotw_request(&h, kind);
            if !ack {
                req.head.error_detail = Some(nack_status(error.unwrap_or_else(|| "spar-load: NACK on demand".into())));
            }
            tx.send(req).await?;
            h.answered[k] = true;
            match kind {
                XdsType::Eds => h.answered_for[0] = (h.sub_generation[0], h.eds_sub.len()),
                XdsType::Rds => h.answered_for[1] = (h.sub_generation[1], h.rds_sub.len()),
                _ => {}
            }
            let rec = Record {
                kind,
                version: version_info,
                received,
                answered: Instant::now(),
                acked: ack,
                resources: sizes.resources,
                bytes: sizes.bytes,
            };
            self.record(&h, rec);
        }
        Ok(())
    }

    /// A SotW request for `kind` carrying the current subscription, the last ACKed
    /// version and the last nonce (an ACK when that nonce is the latest response's).
    fn sotw_request(&self, h: &Holdings, kind: XdsType) -> SotwAsk {
        let k = kind as usize;
        let names = match kind {
            XdsType::Eds => h.sub_wire[0].clone(),
            XdsType::Rds => h.sub_wire[1].clone(),
            XdsType::Cds | XdsType::Lds => Bytes::new(),
        };
        let head = DiscoveryRequest {
            version_info: h.acked_version[k].clone(),
            response_nonce: h.nonce[k].clone(),
            type_url: kind.url().into(),
            ..Default::default()
        };
        SotwAsk { head, names }
    }

    async fn stream_delta(&mut self, channel: Channel) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<DeltaAsk>(16);
        let mut h = Holdings::default();
        tx.send(
            DeltaDiscoveryRequest {
                node: Some(self.spec.node()),
                type_url: type_url::CLUSTER.into(),
                ..Default::default()
            }
            .into(),
        )
        .await?;
        tx.send(DeltaDiscoveryRequest { type_url: type_url::LISTENER.into(), ..Default::default() }.into()).await?;
        let mut inbound = crate::grpc::open(channel, DELTA_METHOD, rx).await?;
        while let Some(body) = inbound.body().await? {
            let received = Instant::now();
            let content = body.content_hash();
            let DeltaHead { system_version_info, type_url, nonce, removed_resources } =
                DeltaHead::decode(body.clone())?;
            let resources = Lazily::new(body);
            let Some(kind) = XdsType::from_url(&type_url) else {
                tx.send(DeltaDiscoveryRequest { response_nonce: nonce, type_url, ..Default::default() }.into()).await?;
                continue;
            };
            let k = kind as usize;
            // A resource that cannot be read or decoded is a NACK's reason.
            let (error, sizes) =
                h.step(kind, true, content, || read_delta(kind, resources.get()), &removed_resources, self.opts.decode);
            let ack = error.is_none() && self.decide_ack();
            for (held, sub) in [(XdsType::Cds, XdsType::Eds), (XdsType::Lds, XdsType::Rds)] {
                let i = usize::from(sub == XdsType::Rds);
                if kind == held && h.wants_other(i) {
                    let (old, new) = if i == 0 { (&h.eds_sub, &h.cds) } else { (&h.rds_sub, &h.lds) };
                    tx.send(delta_subscription(sub, old, new)).await?;
                    h.subscribe(i);
                    h.answered[sub as usize] = false;
                }
            }
            let mut req = DeltaDiscoveryRequest { response_nonce: nonce, type_url, ..Default::default() };
            if !ack {
                req.error_detail = Some(nack_status(error.unwrap_or_else(|| "spar-load: NACK on demand".into())));
            }
            tx.send(req.into()).await?;
            // Delta: the proxy holds full config of a type once it holds every name it
            // subscribed to (the server tells it which do not exist by removing them).
            // Once answered, a response that removes nothing keeps it so: no walk over
            // every subscribed name per push (that walk, not Spar, set the pace).
            let still = h.answered[k] && removed_resources.is_empty();
            match kind {
                XdsType::Eds if still => {}
                XdsType::Rds if still => {}
                XdsType::Eds | XdsType::Rds => {
                    let i = usize::from(kind == XdsType::Rds);
                    let (sub, held) = if i == 0 { (&h.eds_sub, &h.eds_held) } else { (&h.rds_sub, &h.rds_held) };
                    let all = sub.iter().all(|n| {
                        held.names.contains(&name_hash(n.as_bytes())) || removed_resources.iter().any(|r| **r == **n)
                    });
                    h.answered_for[i] =
                        if all { (h.sub_generation[i], sub.len()) } else { (u64::MAX, held.names.len()) };
                    h.answered[k] = all;
                }
                XdsType::Cds | XdsType::Lds => h.answered[k] = true,
            }
            let rec = Record {
                kind,
                version: system_version_info,
                received,
                answered: Instant::now(),
                acked: ack,
                resources: sizes.resources,
                bytes: sizes.bytes,
            };
            self.record(&h, rec);
        }
        Ok(())
    }
}

/// A delta request that moves the subscription of `kind` from `old` to what `new`
/// holds wants: from nothing, `new`'s names as encoded once for every proxy holding it.
fn delta_subscription(kind: XdsType, old: &BTreeSet<Name>, new: &Held) -> DeltaAsk {
    let head = DeltaDiscoveryRequest { type_url: kind.url().into(), ..Default::default() };
    if old.is_empty() {
        return Ask { head, names: new.wire.clone() };
    }
    DeltaAsk::from(DeltaDiscoveryRequest {
        resource_names_subscribe: new.wanted.difference(old).map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: old.difference(&new.wanted).map(|n| n.to_string()).collect(),
        ..head
    })
}

mod held;
mod read;
#[cfg(test)]
mod tests;

use held::*;
use read::*;
