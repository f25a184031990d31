use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse};
use prost::Message;

use std::convert::Infallible;
use std::time::Duration;

use super::requests::RequestStream;
use super::*;
use crate::request::SotwRequest;

fn chunks(m: &impl WireMessage) -> VecDeque<Bytes> {
    let wire = Wire::default();
    let mut w = m.writer(&wire);
    let mut out = VecDeque::new();
    while let Some(c) = w.next_chunk(&wire) {
        out.push_back(c);
    }
    out
}

fn encoded(n: usize) -> Resources {
    let list: Arc<[Arc<Encoded>]> = (0..n)
        .map(|i| {
            Arc::new(Encoded::new(
                format!("outbound|9080||svc-{i}.default.svc.cluster.local"),
                &Cluster { name: format!("c{i}"), alt_stat_name: "x".repeat(i % 300), ..Default::default() },
            ))
        })
        .collect();
    Resources::List(list)
}

#[test]
fn sotw_bytes_are_prosts() {
    for n in [0, 1, 3, 2000] {
        let r = SotwResponse {
            version_info: "v1".into(),
            resources: encoded(n),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            nonce: "7".into(),
        };
        let bytes = to_bytes(&r);
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!((bytes[0], len), (0, bytes.len() - 5), "gRPC prefix");
        assert_eq!(DiscoveryResponse::decode(&bytes[5..]).expect("decodes"), r.to_prost());
        assert!(chunks(&r).iter().all(|c| c.len() < CHUNK + 1024), "bounded chunks");
    }
}

/// A response of every resource of a type, written from the layers without a list,
/// is byte for byte the response of the same resources as a list, in bounded chunks.
#[test]
fn a_whole_type_is_written_as_its_list_would_be() {
    use crate::resources::{ProxyResources, type_url};
    // One service's wire: its blocks linger for the next response.
    let wire = Wire::default();
    let mut base = ProxyResources::new(1);
    for i in 0..3000 {
        let c = Cluster { name: format!("c{i}"), alt_stat_name: "x".repeat(i % 200), ..Default::default() };
        base.insert(ResourceType::Cluster, format!("outbound|80||svc-{i:04}"), &c);
    }
    let mut layered = ProxyResources::layered(Arc::new(base));
    // Own resources in between, and one that hides a shared one.
    for name in ["inbound|80||", "outbound|80||svc-0100", "a-first", "zz-last"] {
        layered.insert(ResourceType::Cluster, name, &Cluster { name: name.into(), ..Default::default() });
    }
    let layered = Arc::new(layered);
    let all: Vec<Arc<Encoded>> = layered.of(ResourceType::Cluster).expect("clusters").values().cloned().collect();
    assert_eq!(all.len(), 3003);
    let view = layered.of(ResourceType::Cluster).expect("clusters");
    assert_eq!(view.len(), 3003, "counted without the walk, the hidden one once");
    let whole = Resources::of(all.clone(), &layered, type_url::CLUSTER);
    assert!(matches!(whole, Resources::Whole(..)));
    let list = Resources::List(all.into());
    let sotw = |resources: Resources| SotwResponse {
        version_info: "v".into(),
        resources,
        type_url: type_url::CLUSTER.into(),
        nonce: "1".into(),
    };
    let delta = |resources: Resources| DeltaResponse {
        system_version_info: "v".into(),
        resources,
        type_url: type_url::CLUSTER.into(),
        removed_resources: vec!["gone".into()],
        nonce: "1".into(),
    };
    assert_eq!(to_bytes_with(&sotw(whole.clone()), &wire), to_bytes_with(&sotw(list.clone()), &wire));
    assert_eq!(to_bytes_with(&delta(whole.clone()), &wire), to_bytes_with(&delta(list.clone()), &wire));
    assert!(chunks(&sotw(whole.clone())).iter().all(|c| c.len() < CHUNK + 1024), "bounded chunks");
    assert_eq!(whole, list);
    // Proxies of the same shared layer are written slices of one block while any of
    // them is being written (no copy per stream), and a moment after; then the layer
    // lets it go.
    assert_eq!(layered.wire_blocks_alive(), 2, "the SotW and the delta block, just written");
    let other = Arc::new(layered.own_layer_over(Arc::clone(layered.base().expect("a layered set"))));
    let counted = wire.block_responses.load(std::sync::atomic::Ordering::Relaxed);
    let (mut a, mut b) =
        (sotw(whole.clone()).writer(&wire), sotw(Resources::whole(&other, type_url::CLUSTER)).writer(&wire));
    assert_eq!(layered.wire_blocks_alive(), 2);
    assert!(wire.block_responses.load(std::sync::atomic::Ordering::Relaxed) >= counted + 2, "counted for the metric");
    let (a, b): (Vec<Bytes>, Vec<Bytes>) =
        (std::iter::from_fn(|| a.next_chunk(&wire)).collect(), std::iter::from_fn(|| b.next_chunk(&wire)).collect());
    let shared = |c: &Bytes| b.iter().any(|d| d.as_ptr() == c.as_ptr() && d.len() == c.len() && c.len() > 1024);
    assert!(a.iter().filter(|c| shared(c)).count() >= 3, "the same bytes, not copies");
    // Written, the block stays a moment for the layer's next proxy, then goes.
    assert_eq!(layered.wire_blocks_alive(), 2, "kept a moment once written");
    let later: Vec<Bytes> = {
        let mut w = sotw(Resources::whole(&other, type_url::CLUSTER)).writer(&wire);
        std::iter::from_fn(|| w.next_chunk(&wire)).collect()
    };
    assert!(later.iter().filter(|c| shared(c)).count() >= 3, "the next proxy writes the same bytes");
    drop((a, b, later));
    let gone = std::time::Instant::now() + BLOCK_LINGER * 5;
    while layered.wire_blocks_alive() > 0 && std::time::Instant::now() < gone {
        std::thread::sleep(BLOCK_LINGER / 10);
    }
    assert_eq!(layered.wire_blocks_alive(), 0, "no block kept for long once written");
    // A small type is copied per response: no block is made for it.
    let mut small = ProxyResources::new(1);
    for i in 0..10 {
        small.insert(ResourceType::Cluster, format!("c{i}"), &Cluster::default());
    }
    let small = Arc::new(ProxyResources::layered(Arc::new(small)));
    let small_list: Vec<Arc<Encoded>> = small.of(ResourceType::Cluster).expect("c").values().cloned().collect();
    let w = sotw(Resources::whole(&small, type_url::CLUSTER)).writer(&wire);
    assert_eq!(small.wire_blocks_alive(), 0);
    drop(w);
    assert_eq!(
        to_bytes_with(&sotw(Resources::whole(&small, type_url::CLUSTER)), &wire),
        to_bytes_with(&sotw(Resources::List(small_list.into())), &wire)
    );
    // A set without a shared layer, and a type only the own layer has.
    let flat = Arc::new(layered.flattened());
    assert_eq!(
        to_bytes_with(&delta(Resources::whole(&flat, type_url::CLUSTER)), &wire),
        to_bytes_with(&delta(list.clone()), &wire)
    );
    let mut own_only = ProxyResources::layered(Arc::new(ProxyResources::new(1)));
    own_only.insert(ResourceType::Cluster, "x", &Cluster::default());
    let own_only = Arc::new(own_only);
    let one: Vec<Arc<Encoded>> = own_only.of(ResourceType::Cluster).expect("x").values().cloned().collect();
    assert_eq!(
        to_bytes_with(&sotw(Resources::whole(&own_only, type_url::CLUSTER)), &wire),
        to_bytes_with(&sotw(Resources::List(one.into())), &wire)
    );
    // A part of the type stays a list.
    let some: Vec<Arc<Encoded>> = whole.iter().take(5).cloned().collect();
    assert!(matches!(Resources::of(some, &layered, type_url::CLUSTER), Resources::List(_)));
}

/// A request body delivered in the given pieces.
struct Pieces(VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// An EDS request naming 5,000 clusters (about 250 KB, as Envoy's in a large mesh).
fn big_request() -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: "eds".into(),
        resource_names: (0..5000).map(|i| format!("outbound|9080||svc-{i}.default.svc.cluster.local")).collect(),
        ..Default::default()
    }
}

/// `msgs` as gRPC messages on the wire, delivered in pieces of 7,000 bytes.
fn framed(msgs: &[&DiscoveryRequest]) -> VecDeque<Bytes> {
    let mut wire = Vec::new();
    for m in msgs {
        let b = m.encode_to_vec();
        wire.push(0u8);
        wire.extend_from_slice(&u32::try_from(b.len()).expect("fits").to_be_bytes());
        wire.extend_from_slice(&b);
    }
    wire.chunks(7000).map(Bytes::copy_from_slice).collect()
}

#[tokio::test]
async fn requests_split_across_frames_decode_and_the_buffer_is_let_go() {
    use futures::StreamExt;
    let big = big_request();
    let small = DiscoveryRequest { type_url: "cds".into(), ..Default::default() };
    let pieces = framed(&[&small, &big, &small]);
    let turns = Arc::new(tokio::sync::Semaphore::new(1));
    let mut stream = RequestStream::<Pieces, SotwRequest>::new(Pieces(pieces), turns, 1);
    let mut got = Vec::new();
    while let Some(m) = stream.next().await {
        got.push(m.expect("decodes"));
        if got.len() == 2 {
            assert!(stream.buf.capacity() < 7000, "large buffer let go: {}", stream.buf.capacity());
        }
    }
    let read = |r: &SotwRequest| (r.type_url.clone(), r.names.iter().map(str::to_string).collect::<Vec<_>>());
    let sent = |r: &DiscoveryRequest| (r.type_url.clone(), r.resource_names.clone());
    assert_eq!(got.iter().map(read).collect::<Vec<_>>(), [sent(&small), sent(&big), sent(&small)]);
}

/// A stream whose large request waits for its turn holds no buffer sized for it: in
/// a reconnect storm thousands wait at once.
#[tokio::test]
async fn a_large_request_waiting_for_its_turn_holds_no_buffer_for_it() {
    use futures::{FutureExt, StreamExt};
    let big = big_request();
    let pieces = framed(&[&big]);
    let turns = Arc::new(tokio::sync::Semaphore::new(1));
    let taken = Arc::clone(&turns).acquire_owned().await.expect("a turn");
    let mut stream = RequestStream::<Pieces, SotwRequest>::new(Pieces(pieces), Arc::clone(&turns), 1);
    assert!(stream.next().now_or_never().is_none(), "no turn, no request");
    assert!(stream.buf.capacity() <= 64, "buffer while waiting: {}", stream.buf.capacity());
    drop(taken);
    let got = stream.next().await.expect("a request").expect("decodes");
    assert_eq!(got.names.count, 5000);
    assert_eq!(turns.available_permits(), 1, "the turn is given back once the request is read");
}

/// A body that sends `first` and then nothing, ever (a stalled or hostile sender).
struct Stalls(Option<Bytes>);

impl http_body::Body for Stalls {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

/// A client that announces a 16 MiB request and sends nothing more holds none of the
/// budget: another stream's large request is read at once.
#[tokio::test]
async fn a_large_request_announced_and_never_sent_holds_no_budget() {
    use futures::{FutureExt, StreamExt};
    let budget = Arc::new(tokio::sync::Semaphore::new(300));
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(16u32 << 20).to_be_bytes());
    let mut hostile: Vec<_> = (0..12)
        .map(|_| {
            RequestStream::<Stalls, SotwRequest>::new(
                Stalls(Some(Bytes::from(prefix.clone()))),
                Arc::clone(&budget),
                300,
            )
        })
        .collect();
    for h in &mut hostile {
        assert!(h.next().now_or_never().is_none(), "waits for the bytes");
    }
    assert_eq!(budget.available_permits(), 300, "nothing claimed");
    let mut honest =
        RequestStream::<Pieces, SotwRequest>::new(Pieces(framed(&[&big_request()])), Arc::clone(&budget), 300);
    let got = honest.next().now_or_never().expect("not held up").expect("a request").expect("decodes");
    assert_eq!(got.names.count, 5000);
}

/// Messages that share a frame are taken one by one; a large one behind a small one
/// in the same frame is not copied while it waits for its turn; a body that ends
/// while a whole large request waits still yields it; one that ends inside a
/// message is an error.
#[tokio::test]
async fn messages_sharing_frames_and_bodies_ending() {
    use futures::{FutureExt, StreamExt};
    let (big, small) = (big_request(), DiscoveryRequest { type_url: "cds".into(), ..Default::default() });
    let whole: Vec<u8> = framed(&[&small, &big]).into_iter().flatten().collect();
    let turns = Arc::new(tokio::sync::Semaphore::new(1));
    let taken = Arc::clone(&turns).acquire_owned().await.expect("a turn");
    let one_frame = VecDeque::from([Bytes::from(whole.clone())]);
    let mut stream = RequestStream::<Pieces, SotwRequest>::new(Pieces(one_frame), Arc::clone(&turns), 1);
    assert_eq!(stream.next().await.expect("the small one").expect("decodes").type_url, "cds");
    assert!(stream.next().now_or_never().is_none(), "the large one waits");
    assert!(stream.buf.len() <= 5, "only its prefix is copied: {}", stream.buf.len());
    drop(taken);
    assert_eq!(stream.next().await.expect("the large one").expect("decodes").names.count, 5000);
    assert!(stream.next().await.is_none(), "then the end");

    let cut = VecDeque::from([Bytes::copy_from_slice(&whole[..whole.len() - 10])]);
    let mut stream = RequestStream::<Pieces, SotwRequest>::new(Pieces(cut), Arc::clone(&turns), 1);
    assert!(stream.next().await.expect("the small one").is_ok());
    let err = stream.next().await.expect("an error").expect_err("cut short");
    assert!(err.message().contains("ended inside a message"), "{err:?}");
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[test]
fn delta_bytes_are_prosts() {
    let r = DeltaResponse {
        system_version_info: "abc".into(),
        resources: encoded(500),
        type_url: "t".into(),
        removed_resources: vec!["gone".into(), "also-gone".into()],
        nonce: "9".into(),
    };
    let bytes = to_bytes(&r);
    assert_eq!(DeltaDiscoveryResponse::decode(&bytes[5..]).expect("decodes"), r.to_prost());
    let empty = DeltaResponse {
        system_version_info: String::new(),
        resources: encoded(0),
        type_url: "t".into(),
        removed_resources: vec!["x".into()],
        nonce: "1".into(),
    };
    assert_eq!(DeltaDiscoveryResponse::decode(&to_bytes(&empty)[5..]).expect("decodes"), empty.to_prost());
}

/// A body that hands out its pieces when the test says so (`tx`), then stalls.
struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// On tokio's paused clock: a sender that takes its share of the large-request budget and
/// stalls loses its stream (and the share) 2 s later, not after 10 s; one that keeps
/// sending keeps its turn and its request is read; and one whose bytes all waited for a
/// reader that came late (a busy server) is not failed for it.
#[tokio::test(start_paused = true)]
async fn a_large_request_that_stalls_loses_its_turn_within_seconds() {
    use futures::StreamExt;
    let budget = Arc::new(tokio::sync::Semaphore::new(1024));
    let wire: Vec<u8> = framed(&[&big_request()]).into_iter().flatten().collect();
    // Stalls after 40 KiB (past the 32 KiB that take the share).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Bytes::copy_from_slice(&wire[..40 * 1024])).expect("open");
    let mut stalled = RequestStream::<Fed, SotwRequest>::new(Fed(rx), Arc::clone(&budget), 1024);
    let started = tokio::time::Instant::now();
    let failed = stalled.next().await.expect("an answer").expect_err("refused");
    assert_eq!(failed.code(), tonic::Code::DeadlineExceeded);
    let held = started.elapsed();
    assert!(held >= Duration::from_secs(2) && held < Duration::from_millis(2100), "{held:?}");
    assert_eq!(budget.available_permits(), 1024, "the share is given back");
    drop(tx);
    // The same request sent 8 KiB at a time every 100 ms: read.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut steady = RequestStream::<Fed, SotwRequest>::new(Fed(rx), Arc::clone(&budget), 1024);
    let feeder = tokio::spawn(async move {
        for chunk in wire.chunks(8 * 1024) {
            if tx.send(Bytes::copy_from_slice(chunk)).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    });
    let got = steady.next().await.expect("an answer").expect("read");
    assert_eq!(got.names.count, 5000);
    feeder.abort();
    // Its share taken, the rest of the request arrives while nobody reads for 5 s.
    let wire: Vec<u8> = framed(&[&big_request()]).into_iter().flatten().collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Bytes::copy_from_slice(&wire[..40 * 1024])).expect("open");
    let mut late = RequestStream::<Fed, SotwRequest>::new(Fed(rx), Arc::clone(&budget), 1024);
    assert!(futures::FutureExt::now_or_never(late.next()).is_none(), "waits for the rest, its share taken");
    let last = wire.len() - 1024;
    tx.send(Bytes::copy_from_slice(&wire[40 * 1024..last])).expect("open");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(futures::FutureExt::now_or_never(late.next()).is_none(), "read late, and still waiting for 1 KiB");
    // 1.5 s after that read, 6.5 s after its share was taken: still its turn.
    tokio::time::advance(Duration::from_millis(1500)).await;
    tx.send(Bytes::copy_from_slice(&wire[last..])).expect("open");
    let got = late.next().await.expect("an answer").expect("read, though read late");
    assert_eq!(got.names.count, 5000);
}
