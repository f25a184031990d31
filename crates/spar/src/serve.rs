//! `spar serve`: file source → store → debounced snapshots → ADS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use spar_model::{MeshConfig, Snapshot, Store};
use spar_xds::server::AdsService;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::files::FileSource;

/// How `spar serve` runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Config directories or files.
    pub config: Vec<PathBuf>,
    /// Read configuration from the Kubernetes API too.
    pub kubernetes: Option<KubeConfig>,
    /// Where the admission webhooks listen (HTTPS; needs the CA).
    pub webhook_address: Option<SocketAddr>,
    /// What the injection webhook adds.
    pub inject: crate::inject::InjectConfig,
    /// Where the plaintext xDS server listens.
    pub xds_address: SocketAddr,
    /// Quiet time after the last change before a snapshot is built.
    pub debounce_quiet: Duration,
    /// Longest a change waits for a snapshot while changes keep coming.
    pub debounce_max: Duration,
    /// Age after which an xDS connection is asked to reconnect (istiod's
    /// `keepaliveMaxServerConnectionAge`).
    pub max_connection_age: Duration,
    /// Mesh-wide settings.
    pub mesh: MeshConfig,
    /// The CA and secure port, when enabled.
    pub security: Option<SecurityConfig>,
    /// Debug and metrics endpoint (`None`: off).
    pub debug_address: Option<SocketAddr>,
}

/// The Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// Kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Only namespaces matching one of these label selectors (Istio's discovery selectors).
    pub namespaces: Option<spar_kube::NamespaceSelector>,
    /// How often kinds whose CRD is missing are probed again.
    pub absent_retry: Duration,
    /// Spar's own namespace (its Lease lives there).
    pub namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// Audiences a proxy's service-account token may carry (TokenReview on 15012).
    pub token_audiences: Vec<String>,
    /// Longest lifetime of a pod-bound xDS credential (valid only while its pod exists).
    pub pod_credential_ttl: Duration,
    /// With a CA: take it from Secret `cacerts`, else `istio-ca-secret` (created when
    /// neither exists), into `--ca-dir`, kept current (spar_kube::ca_secret).
    pub ca_secret: bool,
    /// The MeshConfig ConfigMap in `namespace`, watched over `--mesh-config` (`None`: off).
    pub mesh_configmap: Option<crate::mesh::ConfigMapLayer>,
}

/// The CA and the secure xDS port.
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    /// CA directory.
    pub ca_dir: PathBuf,
    /// Secure xDS address (15012).
    pub secure_xds_address: SocketAddr,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Workload certificate lifetime.
    pub workload_cert_ttl: Duration,
}

/// Runs until SIGINT/SIGTERM.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let store = Arc::new(Mutex::new(Store::new()));
    let (change_tx, change_rx) = mpsc::channel(1);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The CA's trust bundle, once the CA is loaded (published to every namespace).
    let (bundle_tx, bundle_rx) = watch::channel(String::new());

    let kube = match &cfg.kubernetes {
        Some(k) => {
            let client = spar_kube::client(k.kubeconfig.as_deref()).await?;
            let source = spar_kube::KubeSource::new(
                client.clone(),
                Arc::clone(&store),
                spar_kube::SourceConfig {
                    namespaces: k.namespaces.clone(),
                    absent_retry: k.absent_retry,
                    report: Arc::new(crate::load::report),
                    ..Default::default()
                },
            );
            let status = source.status();
            let auth = crate::kubeauth::token_auth(
                client.clone(),
                k.token_audiences.clone(),
                source.pods(),
                k.pod_credential_ttl,
            );
            tokio::spawn(source.run(change_tx.clone()).instrument(info_span!("kube-source")));
            Some((client, status, auth))
        }
        None => None,
    };
    let (kube_client, kube, token_auth) = match kube {
        Some((c, s, a)) => (Some(c), Some(s), Some(a)),
        None => (None, None, None),
    };
    let mut ads = AdsService::new(snap_rx.clone(), shutdown_rx.clone())
        .with_max_stream_age(cfg.max_connection_age + MAX_CONNECTION_AGE_GRACE);
    if cfg.security.is_some() {
        // Proxies can prove who they are: one that does not is not believed when it
        // NACKs (anyone can reach the plaintext port).
        ads = ads.distrusting_unverified();
    }
    let ads_secure = ads.clone();
    // The wire's budget of bytes in flight and its blocks: one for both ports.
    let wire: Arc<spar_xds::wire::Wire> = Arc::default();
    // Filled once the CA is loaded, for its metrics on the debug endpoint.
    let ca_metrics: Arc<std::sync::OnceLock<Arc<spar_xds::sds::Security>>> = Arc::default();
    if let Some(addr) = cfg.debug_address {
        let state = crate::debug::DebugState {
            metrics: ads.metrics(),
            wire: Arc::clone(&wire),
            sync: ads.sync_registry(),
            cache: ads.cache(),
            store: Arc::clone(&store),
            snapshots: snap_rx.clone(),
            ready: ready_rx,
            kube: kube.clone(),
            security: Arc::clone(&ca_metrics),
        };
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding debug address {addr}"))?;
        info!(address = %listener.local_addr()?, "serving metrics and debug pages");
        let mut shutdown_wait = shutdown_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, crate::debug::router(state))
                .with_graceful_shutdown(async move {
                    let _ = shutdown_wait.wait_for(|s| *s).await;
                })
                .await;
        });
    }

    // Proxies connect only once the sources have synced: an empty first snapshot would
    // take every route away from every proxy that reconnects during a restart.
    if !cfg.config.is_empty() {
        // A mistyped path would serve an empty mesh to every proxy: refuse to start.
        if let Some(missing) = cfg.config.iter().find(|p| !p.exists()) {
            anyhow::bail!("--config {}: no such file or directory", missing.display());
        }
        let mut source = FileSource::new(cfg.config.clone(), Arc::clone(&store));
        source.sync();
        tokio::spawn(source.run(change_tx.clone()).instrument(info_span!("file-source")));
    }
    if let Some(status) = &kube {
        info!("waiting for the Kubernetes caches to sync");
        let started = Instant::now();
        loop {
            tokio::select! {
                () = status.wait_synced() => break,
                () = tokio::time::sleep(Duration::from_secs(10)) => {
                    let waiting: Vec<String> = status.states().into_iter()
                        .filter(|(_, s)| *s == spar_kube::source::KindState::Waiting)
                        .map(|(k, _)| k.to_string()).collect();
                    warn!(waiting = %waiting.join(", "), elapsed_s = started.elapsed().as_secs(), "still waiting for the first list");
                }
                () = shutdown_signal() => return Ok(()),
            }
        }
        info!(
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Kubernetes caches synced"
        );
    }
    if let (Some(client), Some(k), Some(sec)) = (&kube_client, &cfg.kubernetes, &cfg.security)
        && k.ca_secret
    {
        // Every replica signs with the root kept in the cluster (docs/kubernetes.md).
        let ca = spar_kube::ca_secret::CaSecretConfig::new(&k.namespace, &sec.ca_dir, &sec.trust_domain);
        tokio::select! {
            _ = spar_kube::ca_secret::start(client.clone(), ca) => {}
            () = shutdown_signal() => return Ok(()),
        }
    }
    // The mesh snapshots are built with: --mesh-config's, or the ConfigMap's over it, live.
    let mut mesh = watch::channel(cfg.mesh.clone()).1;
    if let (Some(client), Some(k)) = (&kube_client, &cfg.kubernetes)
        && let Some(layer) = &k.mesh_configmap
    {
        let base = cfg.mesh.clone();
        let watched =
            crate::mesh::watch_configmap(client.clone(), &k.namespace, layer.clone(), base, change_tx.clone());
        tokio::select! {
            m = watched => mesh = m,
            () = shutdown_signal() => return Ok(()),
        }
    }
    let first_mesh = mesh.borrow().clone();
    let started = Instant::now();
    let first = build(&store, &first_mesh, 1, None);
    info!(
        version = 1,
        services = first.services.len(),
        build_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "snapshot built (first)"
    );
    let _ = snap_tx.send(Arc::new(first));
    drop(change_tx);
    tokio::spawn(
        debounce(change_rx, mesh, Arc::clone(&store), (cfg.debounce_quiet, cfg.debounce_max), snap_tx)
            .instrument(info_span!("snapshot")),
    );
    let _ = ready_tx.send(true);
    if let (Some(client), Some(status), Some(k)) = (&kube_client, &kube, &cfg.kubernetes) {
        // Singleton duties (status writes) belong to the Lease holder; every replica serves.
        let (leader_tx, leader_rx) = watch::channel(false);
        // Istio's analyzers for status (references to missing objects and the like).
        let (analysis_tx, analysis_rx) = watch::channel(spar_kube::status::Analysis::default());
        tokio::spawn(
            crate::analysis::run(Arc::clone(&store), snap_rx.clone(), leader_rx.clone(), analysis_tx)
                .instrument(info_span!("analysis")),
        );
        let lease = spar_kube::lease::LeaseConfig::new(&k.namespace, &k.identity);
        tokio::spawn(spar_kube::lease::run(client.clone(), lease, leader_tx).instrument(info_span!("lease")));
        tokio::spawn(
            spar_kube::status::run(
                client.clone(),
                Arc::clone(&store),
                Arc::clone(status),
                snap_rx.clone(),
                ads.rejections().subscribe(),
                analysis_rx,
                leader_rx.clone(),
            )
            .instrument(info_span!("status")),
        );
        // Managed Gateway API Gateways get their proxies' Deployment, Service and account.
        let deploy = spar_kube::gateway_deploy::DeployConfig { inject: cfg.inject.clone(), ..Default::default() };
        tokio::spawn(
            spar_kube::gateway_deploy::run(
                client.clone(),
                Arc::clone(&store),
                deploy,
                snap_rx.clone(),
                leader_rx.clone(),
            )
            .instrument(info_span!("gateway-deploy")),
        );
        // Gateway API status (GatewayClasses, Gateways, routes), merged with other controllers'.
        tokio::spawn(
            spar_kube::gateway_status::run(
                client.clone(),
                Arc::clone(&store),
                Arc::clone(status),
                snap_rx.clone(),
                leader_rx.clone(),
            )
            .instrument(info_span!("gateway-status")),
        );
        tokio::spawn(
            spar_kube::rootcert::run(client.clone(), Arc::clone(&store), bundle_rx, snap_rx.clone(), leader_rx)
                .instrument(info_span!("root-cert")),
        );
    }

    let listener = xds_listener(cfg.xds_address).with_context(|| format!("binding xDS address {}", cfg.xds_address))?;
    let bound = listener.local_addr()?;
    info!(address = %bound, "serving xDS (ADS: SotW and delta)");
    // A connection must speak HTTP/2 within the handshake timeout, or it is closed.
    let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::accept::incoming(
        listener,
        "xds",
        crate::accept::HANDSHAKE_TIMEOUT,
        crate::accept::h2_preface,
    ));
    let mut shutdown_wait = shutdown_rx.clone();
    let server = xds_server(cfg.max_connection_age)
        .add_service(spar_xds::wire::AdsServer::new(ads, Arc::clone(&wire)))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown_wait.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(server);
    let secure = match &cfg.security {
        Some(sec) => Some(tokio::spawn(
            serve_secure(
                sec.clone(),
                cfg.mesh.root_namespace.clone(),
                WithCa {
                    webhook: cfg.webhook_address,
                    inject: cfg.inject.clone(),
                    kube_client: kube_client.clone(),
                    bundle: bundle_tx,
                    token_auth,
                    metrics: ca_metrics,
                },
                XdsPort { ads: ads_secure, wire: Arc::clone(&wire), max_connection_age: cfg.max_connection_age },
                shutdown_rx.clone(),
            )
            .await?,
        )),
        None => None,
    };
    shutdown_signal().await;
    info!("shutting down: closing xDS streams");
    let _ = shutdown_tx.send(true);
    // Streams end when the shutdown watch fires; give them a moment to say goodbye.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "xDS server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "xDS server task failed"),
        Err(_) => warn!("xDS server did not stop within 5s"),
    }
    if let Some(s) = secure {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    Ok(())
}

/// What else needs the CA: the webhooks (their serving certificate, the caBundle kept
/// in the cluster), the published trust bundle, and in a cluster the token check.
struct WithCa {
    webhook: Option<SocketAddr>,
    inject: crate::inject::InjectConfig,
    kube_client: Option<kube::Client>,
    bundle: watch::Sender<String>,
    token_auth: Option<spar_xds::auth::TokenAuth>,
    /// Where the debug endpoint finds the CA for its metrics.
    metrics: Arc<std::sync::OnceLock<Arc<spar_xds::sds::Security>>>,
}

/// What the secure port serves besides the CA's services: the ADS service, the process's
/// wire, and the connection age limit both ports share.
struct XdsPort {
    ads: AdsService,
    wire: Arc<spar_xds::wire::Wire>,
    max_connection_age: Duration,
}

/// Starts the secure xDS port; returns the server future to spawn.
async fn serve_secure(
    sec: SecurityConfig,
    root_namespace: String,
    with_ca: WithCa,
    port: XdsPort,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let XdsPort { ads, wire, max_connection_age } = port;
    let WithCa { webhook, inject, kube_client, bundle, token_auth, metrics } = with_ca;
    let ca = spar_ca::Ca::load_or_create(&sec.ca_dir, &sec.trust_domain)
        .with_context(|| format!("loading the CA from {}", sec.ca_dir.display()))?;
    bundle.send_replace(ca.trust_bundle_pem().to_string());
    let mut webhook_tls = None;
    if let Some(addr) = webhook {
        let (tls_tx, tls_rx) = watch::channel(crate::webhook::tls_config(&ca, &root_namespace)?);
        webhook_tls = Some(tls_tx);
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding webhook address {addr}"))?;
        tokio::spawn(
            crate::webhook::serve(listener, tls_rx, inject, shutdown.clone()).instrument(info_span!("webhook")),
        );
        if let Some(client) = kube_client {
            let bundle = bundle.subscribe();
            let names = spar_kube::webhooks::WebhookNames::default();
            let every = Duration::from_secs(60);
            tokio::spawn(
                spar_kube::webhooks::keep_ca_bundle(client, names, bundle, every).instrument(info_span!("webhook")),
            );
        }
    }
    let me = crate::secure::control_plane_identity(&sec.trust_domain, &root_namespace);
    let client_certs =
        if token_auth.is_some() { crate::secure::ClientCerts::Optional } else { crate::secure::ClientCerts::Required };
    let (tls, refresh_at) = crate::secure::server_config(&ca, &me, client_certs)?;
    let security = std::sync::Arc::new(spar_xds::sds::Security::new(ca, sec.workload_cert_ttl));
    let _ = metrics.set(Arc::clone(&security));
    if let Some(tls_tx) = webhook_tls {
        let renew = crate::webhook::renew(Arc::clone(&security), root_namespace.clone(), bundle.subscribe(), tls_tx);
        tokio::spawn(renew.instrument(info_span!("webhook")));
    }
    let (cfg_tx, cfg_rx) = watch::channel(tls);
    tokio::spawn(
        crate::secure::maintain(
            sec.ca_dir.clone(),
            sec.trust_domain.clone(),
            (me, client_certs),
            std::sync::Arc::clone(&security),
            bundle,
            cfg_tx,
            refresh_at,
        )
        .instrument(info_span!("ca")),
    );
    let listener = xds_listener(sec.secure_xds_address)
        .with_context(|| format!("binding secure xDS address {}", sec.secure_xds_address))?;
    info!(address = %listener.local_addr()?, ca_dir = %sec.ca_dir.display(), "serving xDS over mutual TLS (workload certificates over SDS)");
    let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::secure::incoming(listener, cfg_rx));
    let mut csr = spar_xds::csr::CertificateService::new(std::sync::Arc::clone(&security));
    let mut ads = ads.with_security(security);
    if let Some(auth) = token_auth {
        info!("proxies may prove their identity with a service-account token (TokenReview) on the secure port");
        csr = csr.with_token_auth(auth.clone());
        ads = ads.with_token_auth(auth);
    }
    let mut shutdown_wait = shutdown;
    Ok(async move {
        let r = xds_server(max_connection_age)
            .add_service(spar_xds::wire::AdsServer::new(ads, wire))
            .add_service(csr)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown_wait.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "secure xDS server ended with an error");
        }
    })
}

/// Connections a listener queues before they are accepted. When thousands of proxies
/// reconnect at once (a control-plane restart), tokio's default of 1,024 overflows and
/// the kernel resets connections that Envoy then retries with back-off. The kernel caps
/// it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 8192;

/// HTTP/2 receive window per xDS stream (and 4x per connection), bytes: room for a
/// whole EDS request of a 1k-service full mesh (4,000 names, 220 KB). With 64 KiB such
/// a request took four round trips to the proxy, and in a reconnect storm of 2k proxies
/// each waited with its first 64 KiB held here: peak RSS 315-350 MB against 165-175 MB
/// with this window (`spar-load`'s storm, docs/performance.md).
const RECEIVE_WINDOW: u32 = 256 * 1024;

fn xds_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The HTTP/2 settings both xDS ports share, as istiod's gRPC server has them.
fn xds_server(max_connection_age: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        // A proxy's large request (EDS names every cluster) arrives in one flight and is
        // read as it comes, within a budget (spar_xds::wire).
        .initial_stream_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW * 4)
        .max_concurrent_streams(Some(MAX_STREAMS))
        // istiod's keepalive: a ping after 30 s of silence, the connection closed when
        // no answer comes within 10 s.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // istiod's MaxServerConnectionAge: a GOAWAY at the age, which closes a connection
        // without streams at once. A proxy's stream is ended by its task after the grace
        // (`AdsService::with_max_stream_age`), which closes the connection: tonic's own
        // grace would close it without the GOAWAY.
        .max_connection_age(max_connection_age)
}

/// istiod's `MaxServerConnectionAgeGrace`: how long a proxy's stream outlives its
/// connection's GOAWAY.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);

/// Concurrent streams a client may open on one connection (advertised in HTTP/2
/// SETTINGS). Envoy opens one ADS stream per connection (plus a CSR call at times); a
/// client opening hundreds is not a proxy.
const MAX_STREAMS: u32 = 32;

/// The checks a snapshot's build runs that spar-model cannot: EnvoyFilter values against
/// Envoy's schema, which the generator holds.
pub(crate) const SNAPSHOT_CHECKS: &[fn(&Snapshot) -> Vec<spar_model::Diagnostic>] =
    &[spar_generate::generator::envoy_filter::diagnostics];

fn build(store: &Mutex<Store>, mesh: &MeshConfig, version: u64, previous: Option<&Snapshot>) -> Snapshot {
    let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let options = spar_model::BuildOptions { previous, checks: SNAPSHOT_CHECKS };
    let snap = Snapshot::build_with(&store, mesh, version, options);
    for d in &snap.diagnostics {
        warn!(origin = %d.origin, resource = %d.resource, "{}", d.message);
    }
    snap
}

/// Builds a snapshot once changes have been quiet for `quiet`, or once `max` has passed
/// since the first unbuilt change (`(quiet, max)`: `--debounce-quiet`, `--debounce-max`).
async fn debounce(
    mut changes: mpsc::Receiver<()>,
    mesh: watch::Receiver<MeshConfig>,
    store: Arc<Mutex<Store>>,
    (quiet, max): (Duration, Duration),
    snap_tx: watch::Sender<Arc<Snapshot>>,
) {
    let mut version = 1;
    while changes.recv().await.is_some() {
        let first = Instant::now();
        let mut last = first;
        loop {
            let deadline = (last + quiet).min(first + max);
            tokio::select! {
                more = changes.recv() => match more {
                    Some(()) => last = Instant::now(),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        version += 1;
        let started = Instant::now();
        let mesh_now = mesh.borrow().clone();
        let prev = Arc::clone(&snap_tx.borrow());
        let snap = build(&store, &mesh_now, version, Some(&prev));
        drop(prev);
        info!(
            version,
            services = snap.services.len(),
            debounce_ms = u64::try_from(started.duration_since(first).as_millis()).unwrap_or(u64::MAX),
            build_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            endpoints_only = snap.since.as_ref().map(|c| c.hosts.len()),
            "snapshot built"
        );
        if snap_tx.send(Arc::new(snap)).is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The debounce task on a paused clock, fed by `changes`; what it publishes.
    fn debounce_task() -> (mpsc::Sender<()>, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = mpsc::channel(64);
        let (_mesh_tx, mesh_rx) = watch::channel(MeshConfig::default());
        let store = Arc::new(Mutex::new(Store::new()));
        let first = Arc::new(Snapshot::build(&Store::new(), &MeshConfig::default(), 1));
        let (snap_tx, snap_rx) = watch::channel(first);
        let window = (Duration::from_millis(100), Duration::from_secs(10));
        tokio::spawn(async move {
            let _mesh_tx = _mesh_tx;
            debounce(rx, mesh_rx, store, window, snap_tx).await;
        });
        (tx, snap_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_is_built_once_changes_have_been_quiet_for_the_quiet_time() {
        let (changes, mut snaps) = debounce_task();
        changes.send(()).await.expect("send");
        tokio::time::sleep(Duration::from_millis(90)).await;
        assert!(!snaps.has_changed().expect("open"), "90 ms after the change: still waiting");
        // Another change restarts the quiet time.
        changes.send(()).await.expect("send");
        tokio::time::sleep(Duration::from_millis(90)).await;
        assert!(!snaps.has_changed().expect("open"), "90 ms after the second change: still waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(snaps.has_changed().expect("open"), "quiet for 100 ms: built");
        assert_eq!(snaps.borrow_and_update().version, 2, "one snapshot for both changes");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_that_never_stop_still_get_a_snapshot_after_the_max_time() {
        let (changes, snaps) = debounce_task();
        let start = tokio::time::Instant::now();
        // A change every 50 ms: never quiet for 100 ms.
        while !snaps.has_changed().expect("open") {
            changes.send(()).await.expect("send");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_millis(10_050),
            "built at the 10 s bound, not before and not much after: {waited:?}"
        );
    }
}
