//! The ADS server end to end over gRPC on 127.0.0.1:0, with a fake Envoy that controls
//! when it reads: a proxy that stops reading gets the latest state when it resumes, not a
//! backlog of every version it missed.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;
use spar_generate::{ResourceType, type_url};
use spar_model::{MeshConfig, Snapshot, Store};
use spar_xds::server::AdsService;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

fn mk_snapshot(services: usize, version: u64) -> Arc<Snapshot> {
    let mut yaml = String::new();
    for i in 0..services {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
        ));
    }
    let mut store = Store::new();
    store.set_unit("mem", spar_api::parse_file("mem", &yaml));
    Arc::new(Snapshot::build(&store, &MeshConfig::default(), version))
}

/// Names of the outbound clusters in a response (the catch-all clusters aside).
fn outbound_names(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<String> {
    resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).map(|c| c.name).unwrap_or_default())
        .filter(|n| n.starts_with("outbound|"))
        .collect()
}

fn mk_node() -> Node {
    mk_node_at("10.0.0.1")
}

fn mk_node_at(ip: &str) -> Node {
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
    Node {
        id: format!("sidecar~{ip}~client-{ip}.default~default.svc.cluster.local"),
        metadata: Some(Struct {
            fields: [("NAMESPACE".to_string(), s("default")), ("INTERCEPTION_MODE".to_string(), s("NONE"))]
                .into_iter()
                .collect(),
        }),
        ..Default::default()
    }
}

async fn start(snapshots: watch::Receiver<Arc<Snapshot>>) -> (String, watch::Sender<bool>) {
    let (url, tx, _) = start_service(snapshots).await;
    (url, tx)
}

async fn start_service(snapshots: watch::Receiver<Arc<Snapshot>>) -> (String, watch::Sender<bool>, AdsService) {
    start_configured(snapshots, |ads| ads).await
}

/// Serves an `AdsService` (as `configure` sets it up) on 127.0.0.1:0.
async fn start_configured(
    snapshots: watch::Receiver<Arc<Snapshot>>,
    configure: impl FnOnce(AdsService) -> AdsService,
) -> (String, watch::Sender<bool>, AdsService) {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ads = configure(AdsService::new(snapshots, shutdown_rx));
    let svc = spar_xds::wire::AdsServer::new(ads.clone(), Arc::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), shutdown_tx, ads)
}

/// A SotW stream subscribed to every cluster: its request sender, the responses after the
/// first, and the first.
async fn cds_stream(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Node,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
    envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
) {
    let (req_tx, req_rx) = mpsc::channel(8);
    req_tx
        .send(DiscoveryRequest { node: Some(node), type_url: type_url::CLUSTER.into(), ..Default::default() })
        .await
        .expect("send");
    let mut responses =
        client.stream_aggregated_resources(ReceiverStream::new(req_rx)).await.expect("stream").into_inner();
    let first = responses.message().await.expect("read").expect("first response");
    (req_tx, responses, first)
}

/// Replicas of one workload (same namespace and labels, different IPs) share one
/// generated copy of their outbound config per snapshot.
#[tokio::test]
async fn replicas_share_generated_config() {
    let (_snap_tx, snap_rx) = watch::channel(mk_snapshot(50, 1));
    let (url, _shutdown, ads) = start_service(snap_rx).await;
    let mut streams = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.clone()).await.expect("connect");
        let (req_tx, req_rx) = mpsc::channel(8);
        req_tx
            .send(DiscoveryRequest {
                node: Some(mk_node_at(ip)),
                type_url: type_url::CLUSTER.into(),
                ..Default::default()
            })
            .await
            .expect("send");
        let mut responses =
            client.stream_aggregated_resources(ReceiverStream::new(req_rx)).await.expect("stream").into_inner();
        let first = responses.message().await.expect("read").expect("first");
        assert_eq!(outbound_names(&first.resources).len(), 50);
        streams.push((req_tx, responses));
    }
    let cache = ads.cache();
    assert_eq!(cache.misses.load(std::sync::atomic::Ordering::Relaxed), 1, "generated once");
    assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), 2, "shared by the other two replicas");
}

/// When a snapshot reaches many streams of one workload at the same instant, one of them
/// generates and the others wait for its copy instead of generating it again.
#[test]
fn concurrent_lookups_of_one_key_generate_once() {
    let snapshot = mk_snapshot(200, 1);
    let cache = spar_xds::server::GenerationCache::default();
    let threads = 8;
    let start = std::sync::Barrier::new(threads);
    let copies: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (cache, start, snapshot) = (&cache, &start, &snapshot);
                s.spawn(move || {
                    let proxy = spar_xds::node::to_proxy(&mk_node_at(&format!("10.0.0.{}", i + 1))).expect("proxy");
                    start.wait();
                    cache.shared(snapshot, &proxy)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect()
    });
    assert_eq!(cache.misses.load(std::sync::atomic::Ordering::Relaxed), 1, "generated once");
    assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), threads as u64 - 1);
    assert!(copies.iter().all(|c| Arc::ptr_eq(c, &copies[0])), "every stream holds the one copy");
    // The next snapshot generates again (once), reusing what did not change.
    let next = mk_snapshot(200, 2);
    let proxy = spar_xds::node::to_proxy(&mk_node_at("10.0.0.1")).expect("proxy");
    let again = cache.shared(&next, &proxy);
    assert!(!Arc::ptr_eq(&again, &copies[0]));
    assert_eq!(cache.misses.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// Proxies of two namespaces get a shared layer each (namespaces see the mesh
/// differently), but the clusters and load assignments both layers hold alike are one
/// copy.
#[test]
fn namespaces_layers_share_their_identical_resources() {
    let snapshot = mk_snapshot(100, 1);
    let cache = spar_xds::server::GenerationCache::default();
    let in_ns = |ns: &str| {
        let mut node = mk_node_at("10.0.0.1");
        node.id = format!("sidecar~10.0.0.1~client.{ns}~{ns}.svc.cluster.local");
        let fields = &mut node.metadata.as_mut().expect("metadata").fields;
        fields.insert("NAMESPACE".into(), Value { kind: Some(Kind::StringValue(ns.into())) });
        spar_xds::node::to_proxy(&node).expect("proxy")
    };
    let (a, b) = (cache.shared(&snapshot, &in_ns("one")), cache.shared(&snapshot, &in_ns("two")));
    assert!(!Arc::ptr_eq(&a, &b), "a layer per namespace");
    assert_eq!(cache.misses.load(std::sync::atomic::Ordering::Relaxed), 2);
    for t in [ResourceType::Cluster, ResourceType::Endpoint] {
        let (ra, rb) = (a.of(t).expect("some"), b.of(t).expect("some"));
        assert!(ra.len() >= 100, "{t}: {}", ra.len());
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.values().zip(rb.values()) {
            assert!(Arc::ptr_eq(x, y), "{t} {}: one copy", x.name);
        }
    }
    assert!(cache.shared_resources.load(std::sync::atomic::Ordering::Relaxed) >= 200);
}

#[tokio::test]
async fn slow_sotw_proxy_gets_the_latest_version_not_a_backlog() {
    let (snap_tx, snap_rx) = watch::channel(mk_snapshot(1, 1));
    let (url, _shutdown) = start(snap_rx).await;
    // Small HTTP/2 windows: a proxy that stops reading pushes back on the server quickly,
    // as a slow Envoy would.
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .expect("connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (req_tx, mut responses, first) = cds_stream(&mut client, mk_node()).await;
    assert_eq!(outbound_names(&first.resources).len(), 1);
    req_tx
        .send(DiscoveryRequest {
            type_url: type_url::CLUSTER.into(),
            version_info: first.version_info.clone(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .expect("ack");

    // 200 new versions while the proxy does not read.
    for v in 2..=200u64 {
        snap_tx.send(mk_snapshot(usize::try_from(v).expect("small"), v)).expect("publish");
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Reading now yields far fewer responses than versions (what the transport and the
    // small outbound queue held, then the latest), the last one with all 200 clusters.
    let mut got = Vec::new();
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(500), responses.message()).await {
        got.push(r);
    }
    assert!(!got.is_empty(), "no push after changes");
    assert!(got.len() < 60, "expected coalesced pushes, got {} for 199 versions", got.len());
    let last = got.last().expect("non-empty");
    let names = outbound_names(&last.resources);
    assert_eq!(names.len(), 200, "the latest version arrives");
    assert!(names.contains(&"outbound|80||svc-199.default.svc.cluster.local".to_string()));
}

#[tokio::test]
async fn delta_stream_sends_changes_only() {
    let (snap_tx, snap_rx) = watch::channel(mk_snapshot(3, 1));
    let (url, _shutdown) = start(snap_rx).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await.expect("connect");
    let (req_tx, req_rx) = mpsc::channel(8);
    req_tx
        .send(DeltaDiscoveryRequest { node: Some(mk_node()), type_url: type_url::CLUSTER.into(), ..Default::default() })
        .await
        .expect("send");
    let mut responses =
        client.delta_aggregated_resources(ReceiverStream::new(req_rx)).await.expect("stream").into_inner();
    let first = responses.message().await.expect("read").expect("first");
    assert_eq!(first.resources.iter().filter(|r| r.name.starts_with("outbound|")).count(), 3);
    req_tx
        .send(DeltaDiscoveryRequest {
            type_url: type_url::CLUSTER.into(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .expect("ack");
    snap_tx.send(mk_snapshot(4, 2)).expect("publish");
    let second = responses.message().await.expect("read").expect("second");
    assert_eq!(
        second.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["outbound|80||svc-3.default.svc.cluster.local"]
    );
    snap_tx.send(mk_snapshot(2, 3)).expect("publish");
    let third = responses.message().await.expect("read").expect("third");
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources.len(), 2);
}

#[tokio::test]
async fn a_stream_without_a_node_is_refused() {
    let (_snap_tx, snap_rx) = watch::channel(mk_snapshot(1, 1));
    let (url, _shutdown) = start(snap_rx).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await.expect("connect");
    let (req_tx, req_rx) = mpsc::channel(8);
    req_tx.send(DiscoveryRequest { type_url: type_url::CLUSTER.into(), ..Default::default() }).await.expect("send");
    let err = client.stream_aggregated_resources(ReceiverStream::new(req_rx)).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// Spar with a secure port distrusts proxies that prove no identity: one that NACKs on
/// the plaintext port, with text of its choosing, is shown as unverified and moves no
/// reject counter (and no status: `spar wait` and the status writer skip it).
#[tokio::test]
async fn a_nack_from_a_proxy_that_proved_no_identity_is_not_believed() {
    for distrust in [false, true] {
        let (_snap_tx, snap_rx) = watch::channel(mk_snapshot(1, 1));
        let (url, shutdown_tx, ads) =
            start_configured(snap_rx, |ads| if distrust { ads.distrusting_unverified() } else { ads }).await;
        let mut client = AggregatedDiscoveryServiceClient::connect(url).await.expect("connect");
        let (req_tx, _responses, first) = cds_stream(&mut client, mk_node()).await;
        req_tx
            .send(DiscoveryRequest {
                type_url: type_url::CLUSTER.into(),
                response_nonce: first.nonce.clone(),
                error_detail: Some(envoy_types::pb::google::rpc::Status {
                    code: 3,
                    message: "spar is broken, call 555-0100".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("nack");
        let rejects = || ads.metrics().rejects.load(std::sync::atomic::Ordering::Relaxed);
        let nacked =
            || ads.sync_registry().snapshot().iter().any(|p| p.types.get("cds").is_some_and(|t| t.nack.is_some()));
        for _ in 0..100 {
            if nacked() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(nacked(), "the NACK is shown");
        let entry = ads.sync_registry().snapshot().pop().expect("one proxy");
        assert_eq!(entry.unverified, distrust, "distrust={distrust}");
        assert_eq!(rejects(), u64::from(!distrust), "distrust={distrust}: counted only when believed");
        let _ = shutdown_tx.send(true);
    }
}
