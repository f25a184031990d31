//! xDS responses on the wire without copies held per stream.
//!
//! A response is the list of shared, already-encoded resources ([`Encoded`]) plus a few
//! strings. It is serialized lazily into bounded chunks while HTTP/2 flow control lets
//! it go, so a stream holds at most one chunk in flight instead of a whole encoded
//! response (tonic's encoder keeps a buffer as large as the largest message for the life
//! of the stream: megabytes per proxy for a full mesh). The bytes on the wire are exactly
//! those of `DiscoveryResponse` / `DeltaDiscoveryResponse` (tested against prost).
//!
//! ```text
//!   Connection ─► SotwResponse / DeltaResponse (Arc<Encoded>...) ─► mpsc ─► XdsBody
//!        ─► 5-byte gRPC prefix + fields + resources, ≤ CHUNK bytes per frame ─► hyper/h2
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;

use crate::request::{DecodeError, SotwRequest};
use crate::resources::{Encoded, Resources};

/// Largest chunk handed to HTTP/2 at once (a resource larger than this goes alone).
const CHUNK: usize = 64 * 1024;

/// A state-of-the-world response.
#[derive(Clone, Debug, PartialEq)]
pub struct SotwResponse {
    /// `version_info`.
    pub version_info: String,
    /// The resources, shared with the generated config.
    pub resources: Resources,
    /// `type_url`.
    pub type_url: String,
    /// `nonce`.
    pub nonce: String,
}

/// An incremental response.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaResponse {
    /// `system_version_info`.
    pub system_version_info: String,
    /// Changed resources (name, version and the resource come from each [`Encoded`]).
    pub resources: Resources,
    /// `type_url`.
    pub type_url: String,
    /// `removed_resources`.
    pub removed_resources: Vec<String>,
    /// `nonce`.
    pub nonce: String,
}

impl SotwResponse {
    /// The same response as prost's message (tests, tools).
    pub fn to_prost(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.any.clone()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl DeltaResponse {
    /// The same response as prost's message (tests, tools).
    pub fn to_prost(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

fn put_varint(buf: &mut BytesMut, mut v: usize) {
    while v >= 0x80 {
        #[allow(clippy::cast_possible_truncation)] // masked to 7 bits
        buf.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)] // < 0x80
    buf.put_u8(v as u8);
}

/// Length of a length-delimited field (key, length, payload) with `len` payload bytes;
/// every field here has a number below 16, so its key is one byte.
fn field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

/// A string or bytes field, left out when empty (proto3).
fn opt_field_len(len: usize) -> usize {
    if len == 0 { 0 } else { field_len(len) }
}

fn put_field_header(buf: &mut BytesMut, field: u8, len: usize) {
    buf.put_u8((field << 3) | 2);
    put_varint(buf, len);
}

fn put_opt_bytes(buf: &mut BytesMut, field: u8, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_field_header(buf, field, bytes.len());
        buf.put_slice(bytes);
    }
}

fn any_len(e: &Encoded) -> usize {
    opt_field_len(e.any.type_url.len()) + opt_field_len(e.any.value.len())
}

fn put_any(buf: &mut BytesMut, e: &Encoded) {
    put_opt_bytes(buf, 1, e.any.type_url.as_bytes());
    put_opt_bytes(buf, 2, &e.any.value);
}

/// `envoy.service.discovery.v3.Resource`: version (1), resource (2), name (3).
fn delta_resource_len(e: &Encoded) -> usize {
    opt_field_len(e.version.len()) + field_len(any_len(e)) + opt_field_len(e.name.len())
}

/// One resource as an entry of `resources` in a response: `Any` (SotW) or `Resource`
/// (delta, with its name and version), field 2 either way.
fn resource_len(e: &Encoded, delta: bool) -> usize {
    if delta { field_len(delta_resource_len(e)) } else { field_len(any_len(e)) }
}

fn put_resource(buf: &mut BytesMut, e: &Encoded, delta: bool) {
    if delta {
        put_field_header(buf, 2, delta_resource_len(e));
        put_opt_bytes(buf, 1, e.version.as_bytes());
        put_field_header(buf, 2, any_len(e));
        put_any(buf, e);
        put_opt_bytes(buf, 3, e.name.as_bytes());
    } else {
        put_field_header(buf, 2, any_len(e));
        put_any(buf, e);
    }
}

/// A shared layer's resources of one type serialized back to back in one wire form, in
/// name order. Every response of the whole type from that layer hands HTTP/2 slices of
/// it (which go to the socket as they are) instead of copying each resource per stream.
#[derive(Debug)]
pub(crate) struct WireBlock {
    bytes: Bytes,
    /// The resources, and where each one's bytes end.
    ends: Vec<(Arc<Encoded>, usize)>,
}

/// Responses written as slices of a shared layer's block (`spar_xds_block_responses`).
pub static BLOCK_RESPONSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Blocks serialized (`spar_xds_block_builds`): one per layer, type and form while
/// responses from it are being written.
pub static BLOCK_BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Smallest shared type written from a block. Below it each response copies its
/// resources as a list does: a block pays when many streams write the same large type
/// at once (a full mesh connecting), while rebuilding small ones for responses that go
/// out one at a time left freed pages behind (about 5 MB at 2k scoped proxies).
const BLOCK_MIN: usize = 256 * 1024;

impl WireBlock {
    /// The block of `resources`, when they are at least [`BLOCK_MIN`] bytes.
    fn build(resources: &crate::resources::TypeResources, delta: bool) -> Option<Self> {
        let len: usize = resources.values().map(|e| resource_len(e, delta)).sum();
        if len < BLOCK_MIN {
            return None;
        }
        BLOCK_BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut buf = BytesMut::with_capacity(len);
        let mut ends = Vec::with_capacity(resources.len());
        for e in resources.values() {
            put_resource(&mut buf, e, delta);
            ends.push((Arc::clone(e), buf.len()));
        }
        Some(Self { bytes: buf.freeze(), ends })
    }

    fn start(&self, i: usize) -> usize {
        i.checked_sub(1).map_or(0, |p| self.ends[p].1)
    }
}

/// Every resource of `type_url` in `from`, as pieces to write in order: slices of the
/// shared layer's wire block around the proxy's own resources (which hide shared ones
/// of the same name). `None` when the shared layer has none, or too few bytes of them
/// for a block.
fn whole_pieces(from: &crate::ProxyResources, type_url: &'static str, delta: bool) -> Option<Pieces> {
    let block = from.wire_block(type_url, delta, |r| WireBlock::build(r, delta))?;
    let own = from.layers(type_url).1;
    let (mut pieces, mut len, mut pos) = (Vec::new(), 0, 0);
    let mut own_bytes = BytesMut::new();
    for e in own.into_iter().flat_map(|o| o.values()) {
        let i = block.ends.partition_point(|(r, _)| r.name < e.name);
        let start = block.start(i);
        if start > pos {
            if !own_bytes.is_empty() {
                pieces.push(own_bytes.split().freeze());
            }
            pieces.push(block.bytes.slice(pos..start));
            len += start - pos;
        }
        put_resource(&mut own_bytes, e, delta);
        len += resource_len(e, delta);
        pos = match block.ends.get(i) {
            Some((hidden, end)) if hidden.name == e.name => *end,
            _ => start,
        };
    }
    if !own_bytes.is_empty() {
        pieces.push(own_bytes.freeze());
    }
    if pos < block.bytes.len() {
        pieces.push(block.bytes.slice(pos..));
        len += block.bytes.len() - pos;
    }
    Some(Pieces { pieces, len, block })
}

/// How long a block is kept after the last response written from it. In a reconnect
/// storm a layer's proxies are answered one after another rather than all at once: held
/// only while a response was being written, a full mesh's blocks were serialized again
/// for 30% of the 6,000 whole-type responses (2.6 GB copied). Kept a second, each is
/// serialized once; a settled control plane holds none.
const BLOCK_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Blocks kept for [`BLOCK_LINGER`] after their last response, by when it was written;
/// a thread of their own lets them go (started with the first).
struct Lingering {
    blocks: std::sync::Mutex<Vec<(std::time::Instant, Arc<WireBlock>)>>,
    wake: std::sync::Condvar,
}

/// `None` when the thread cannot be started: then each block lives while it is written.
static LINGERING: std::sync::LazyLock<Option<Arc<Lingering>>> = std::sync::LazyLock::new(|| {
    let lingering = Arc::new(Lingering { blocks: std::sync::Mutex::new(Vec::new()), wake: std::sync::Condvar::new() });
    let l = Arc::clone(&lingering);
    match std::thread::Builder::new().name("spar-blocks".into()).spawn(move || l.expire_forever()) {
        Ok(_) => Some(lingering),
        Err(e) => {
            tracing::warn!("cannot start the thread that lets written blocks go: {e}");
            None
        }
    }
});

impl Lingering {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(std::time::Instant, Arc<WireBlock>)>> {
        self.blocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expire_forever(&self) {
        let mut blocks = self.lock();
        loop {
            let now = std::time::Instant::now();
            let expired: Vec<_> = blocks.extract_if(.., |(at, _)| now.duration_since(*at) >= BLOCK_LINGER).collect();
            let next = blocks.iter().map(|(at, _)| *at + BLOCK_LINGER).min();
            // Freed outside the lock: a full mesh's block is megabytes.
            drop(blocks);
            drop(expired);
            blocks = self.lock();
            blocks = match next {
                None if blocks.is_empty() => self.wake.wait(blocks).unwrap_or_else(std::sync::PoisonError::into_inner),
                None => blocks,
                Some(at) => {
                    let wait = at.saturating_duration_since(std::time::Instant::now());
                    self.wake.wait_timeout(blocks, wait).unwrap_or_else(std::sync::PoisonError::into_inner).0
                }
            };
        }
    }
}

/// Keeps `block` for [`BLOCK_LINGER`] from now.
fn linger(block: Arc<WireBlock>) {
    let Some(l) = LINGERING.as_deref() else { return };
    let now = std::time::Instant::now();
    let mut blocks = l.lock();
    if let Some(e) = blocks.iter_mut().find(|(_, b)| Arc::ptr_eq(b, &block)) {
        e.0 = now;
    } else {
        blocks.push((now, block));
        l.wake.notify_one();
    }
}

/// A whole type's pieces ([`whole_pieces`]).
#[derive(Debug)]
struct Pieces {
    pieces: Vec<Bytes>,
    len: usize,
    /// Held while the response is written, so that the layer hands the same block to
    /// the other streams writing it meanwhile.
    block: Arc<WireBlock>,
}

/// A response being written out: the gRPC message prefix and scalar fields first, then
/// one resource after another, then (delta) the removed names.
#[derive(Debug)]
pub struct Writer {
    /// Pieces ready to go, in order (a whole type: the head, slices of the shared
    /// layer's block and the own resources, the tail).
    ready: VecDeque<Bytes>,
    /// The head, before a list.
    head: Option<BytesMut>,
    /// A list still to serialize (copied chunk by chunk), from `next` on.
    list: Option<Arc<[Arc<Encoded>]>>,
    next: usize,
    delta: bool,
    /// Written after a list.
    tail: Option<BytesMut>,
    /// The shared layer's block that `ready` slices, held until handed out.
    block: Option<Arc<WireBlock>>,
}

impl Writer {
    /// `fields_len` bytes of fields before the resources, written by `put_fields`, and
    /// `tail` after them.
    fn new(
        resources: &Resources,
        delta: bool,
        fields_len: usize,
        put_fields: impl FnOnce(&mut BytesMut),
        tail: BytesMut,
    ) -> Self {
        let whole = match resources {
            Resources::Whole(from, t) => whole_pieces(from, t, delta),
            Resources::List(_) => None,
        };
        let head = |resources_len: usize| {
            let mut head = grpc_prefix(fields_len + resources_len + tail.len());
            put_fields(&mut head);
            head
        };
        if let Some(Pieces { pieces, len, block }) = whole {
            BLOCK_RESPONSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut ready = VecDeque::with_capacity(pieces.len() + 2);
            ready.push_back(head(len).freeze());
            ready.extend(pieces);
            if !tail.is_empty() {
                ready.push_back(tail.freeze());
            }
            return Self { ready, head: None, list: None, next: 0, delta, tail: None, block: Some(block) };
        }
        let list: Arc<[Arc<Encoded>]> = match resources {
            Resources::List(l) => Arc::clone(l),
            Resources::Whole(..) => resources.iter().cloned().collect(),
        };
        let head = head(list.iter().map(|e| resource_len(e, delta)).sum());
        let tail = (!tail.is_empty()).then_some(tail);
        Self { ready: VecDeque::new(), head: Some(head), list: Some(list), next: 0, delta, tail, block: None }
    }

    fn sotw(r: &SotwResponse) -> Self {
        let fields_len =
            opt_field_len(r.version_info.len()) + opt_field_len(r.type_url.len()) + opt_field_len(r.nonce.len());
        let put_fields = |head: &mut BytesMut| {
            put_opt_bytes(head, 1, r.version_info.as_bytes());
            put_opt_bytes(head, 4, r.type_url.as_bytes());
            put_opt_bytes(head, 5, r.nonce.as_bytes());
        };
        Self::new(&r.resources, false, fields_len, put_fields, BytesMut::new())
    }

    fn delta(r: &DeltaResponse) -> Self {
        let fields_len =
            opt_field_len(r.system_version_info.len()) + opt_field_len(r.type_url.len()) + opt_field_len(r.nonce.len());
        let put_fields = |head: &mut BytesMut| {
            put_opt_bytes(head, 1, r.system_version_info.as_bytes());
            put_opt_bytes(head, 4, r.type_url.as_bytes());
            put_opt_bytes(head, 5, r.nonce.as_bytes());
        };
        let mut tail = BytesMut::with_capacity(r.removed_resources.iter().map(|n| field_len(n.len())).sum());
        for n in &r.removed_resources {
            put_field_header(&mut tail, 6, n.len());
            tail.put_slice(n.as_bytes());
        }
        Self::new(&r.resources, true, fields_len, put_fields, tail)
    }

    /// The next chunk, or `None` when the message is written.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(mut piece) = self.ready.pop_front() {
            if piece.len() > CHUNK {
                self.ready.push_front(piece.split_off(CHUNK));
            }
            if self.ready.is_empty()
                && let Some(block) = self.block.take()
            {
                // The slices handed out keep their bytes; the block stays a moment for
                // the next proxy of the layer, then the layer lets it go.
                linger(block);
            }
            return Some(piece);
        }
        let mut buf = self.head.take().unwrap_or_default();
        if let Some(list) = &self.list {
            while self.next < list.len() && buf.len() < CHUNK {
                put_resource(&mut buf, &list[self.next], self.delta);
                self.next += 1;
            }
            if self.next >= list.len() {
                self.list = None;
            }
        }
        if self.list.is_none()
            && let Some(t) = self.tail.take()
        {
            buf.extend_from_slice(&t);
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

/// The 5-byte gRPC message prefix (not compressed, big-endian length), with room for
/// the first fields.
fn grpc_prefix(body_len: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(5 + 256);
    b.put_u8(0);
    b.put_u32(u32::try_from(body_len).unwrap_or(u32::MAX));
    b
}

/// A response that can be written as one gRPC message.
pub trait WireMessage: Send + 'static {
    /// Its writer.
    fn writer(&self) -> Writer;
}

impl WireMessage for SotwResponse {
    fn writer(&self) -> Writer {
        Writer::sotw(self)
    }
}

impl WireMessage for DeltaResponse {
    fn writer(&self) -> Writer {
        Writer::delta(self)
    }
}

/// Response bytes handed to HTTP/2 and not yet written to a socket, over all streams, in
/// chunks: 512 chunks of 64 KiB, 32 MiB (a 2k-proxy full-mesh storm, 4.4 GB, was no
/// slower than with 128 MiB: the readers set the pace). When thousands of proxies connect at once
/// (a reconnect storm), responses wait for room instead of piling up in HTTP/2 send
/// buffers (up to 400 KiB per stream each). A proxy that stops reading holds at most its
/// HTTP/2 send buffer's worth (about 7 chunks) until its connection is closed.
const IN_FLIGHT_CHUNKS: usize = 512;

static IN_FLIGHT: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_CHUNKS)));

/// A chunk that gives its in-flight permit back when HTTP/2 has written and dropped it.
struct Charged {
    data: Bytes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

type Acquire =
    Pin<Box<dyn Future<Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send + Sync>>;

/// The body of a streaming gRPC response: messages from the stream task, serialized
/// What a stream task hands its response body: boxed, because tokio's channel allocates
/// its slots in blocks of 32 whatever the capacity, and an unboxed response and `Status`
/// made that block about 3 KB per stream.
pub type Outbound<M> = Box<Result<M, Status>>;

/// lazily within the in-flight budget, then the `grpc-status` trailers.
pub struct XdsBody<M> {
    rx: mpsc::Receiver<Outbound<M>>,
    current: Option<Writer>,
    permit: Option<Acquire>,
    done: bool,
}

impl<M> std::fmt::Debug for XdsBody<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsBody").field("writing", &self.current.is_some()).field("done", &self.done).finish()
    }
}

impl<M> XdsBody<M> {
    /// A body fed by `rx`; it ends when the sender is dropped (OK) or sends an error.
    pub fn new(rx: mpsc::Receiver<Outbound<M>>) -> Self {
        Self { rx, current: None, permit: None, done: false }
    }
}

fn trailers(status: Option<&Status>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    match status {
        None => {
            h.insert("grpc-status", http::HeaderValue::from_static("0"));
        }
        Some(s) => {
            if s.add_header(&mut h).is_err() {
                h.insert("grpc-status", http::HeaderValue::from_static("13"));
            }
        }
    }
    h
}

impl<M: WireMessage + Unpin> http_body::Body for XdsBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(w) = this.current.as_mut() {
                let acquire = this.permit.get_or_insert_with(|| Box::pin(Arc::clone(&IN_FLIGHT).acquire_owned()));
                let permit = match acquire.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(p) => p,
                };
                this.permit = None;
                if let Some(chunk) = w.next_chunk() {
                    let data = match permit {
                        Ok(p) => Bytes::from_owner(Charged { data: chunk, _permit: p }),
                        // The semaphore is never closed; if it were, send uncharged.
                        Err(_) => chunk,
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                this.current = None;
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx).map(|m| m.map(|m| *m)) {
                Poll::Ready(Some(Ok(m))) => this.current = Some(m.writer()),
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(Some(&status))))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(None)))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.current.is_none()
    }
}

/// The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService`, written by
/// hand so that responses go out through [`XdsBody`]; requests are decoded by tonic.
#[derive(Clone, Debug)]
pub struct AdsServer {
    inner: crate::server::AdsService,
    /// This server's budget for large requests, in KiB: each listening port has its
    /// own, so that strangers on the plaintext port cannot starve proxies on the secure
    /// one.
    budget: Arc<tokio::sync::Semaphore>,
}

impl AdsServer {
    pub(crate) fn new(inner: crate::server::AdsService) -> Self {
        Self { inner, budget: Arc::new(tokio::sync::Semaphore::new(LARGE_REQUEST_BUDGET_KIB as usize)) }
    }
}

impl tonic::server::NamedService for AdsServer {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// Largest request accepted (Envoy's requests are small; 16 MiB as before).
const MAX_REQUEST: usize = 16 << 20;

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl<B> tonic::codegen::Service<http::Request<B>> for AdsServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.inner.clone();
        let budget = Arc::clone(&self.budget);
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let (parts, body) = req.into_parts();
            let response = match method.as_str() {
                "StreamAggregatedResources" => {
                    let mut request = tonic::Request::new(requests::<B, SotwRequest>(body, budget));
                    *request.extensions_mut() = parts.extensions;
                    grpc_response(svc.serve::<SotwRequest, SotwResponse>(crate::conn::Variant::Sotw, request).await)
                }
                "DeltaAggregatedResources" => {
                    let mut request = tonic::Request::new(requests::<B, crate::request::DeltaRequest>(body, budget));
                    *request.extensions_mut() = parts.extensions;
                    grpc_response(
                        svc.serve::<crate::request::DeltaRequest, DeltaResponse>(crate::conn::Variant::Delta, request)
                            .await,
                    )
                }
                other => Status::unimplemented(format!("no method {other:?}")).into_http(),
            };
            Ok(response)
        })
    }
}

/// Decodes the gRPC messages of a request body. The buffer only grows for a large
/// request (Envoy's EDS requests name every cluster: hundreds of kilobytes in a large
/// mesh) and is let go once that request is decoded, instead of being kept for the
/// life of the stream as tonic's decoder keeps it.
struct RequestStream<B, T> {
    body: Pin<Box<B>>,
    buf: BytesMut,
    /// Data received and not yet in `buf`: the frames as HTTP/2 read them, not copied
    /// while a large request waits for its turn.
    received: std::collections::VecDeque<Bytes>,
    /// The body has ended.
    ended: bool,
    done: bool,
    /// The budget for large requests (the server's, shared by its streams), in KiB, and
    /// its size.
    budget: Arc<tokio::sync::Semaphore>,
    budget_kib: u32,
    /// Held while a large request is read and decoded: its size of the budget.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    acquiring: Option<Acquire>,
    /// When a held permit must have been used: a sender that stalls mid-request must not
    /// keep its turn (and the other streams' large requests) forever.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _message: std::marker::PhantomData<fn() -> T>,
}

/// Buffers larger than this are dropped once empty.
const KEEP_BUFFER: usize = 16 * 1024;

/// Bytes of large requests (over [`KEEP_BUFFER`]) read and decoded at once, over all
/// streams of one listening port, in KiB: 64 MiB. Envoy's EDS request names every cluster (220 KB at 1k
/// services); should thousands come at once beyond this, the rest wait, their bytes held
/// back by HTTP/2 flow control (one receive window each) instead of buffered here.
///
/// A budget of bytes, not a count of requests: with 32 requests at a time a full mesh's
/// reconnect storm kept 2,000 EDS requests waiting with a 64 KiB window of each received
/// (128 MB), every turn stretched by the round trips of a sender busy with 2,000 streams.
/// The receive window now holds a whole such request (`spar serve`), which is read and
/// decoded as it arrives: the storm's peak RSS halved.
const LARGE_REQUEST_BUDGET_KIB: u32 = 64 * 1024;

/// How long a stream may take to send a large request once its turn has come.
const LARGE_REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes of a large request that must have arrived before it takes its share of the
/// budget (or all of it, if smaller): a client that announces a large request and sends
/// nothing holds no budget. Below the smallest HTTP/2 stream window (64 KiB), so that a
/// sender is never held back by flow control while Spar waits for these bytes.
const CLAIM_AFTER: usize = 32 * 1024;

/// A request message as read from the wire.
pub(crate) trait WireRequest: Sized {
    /// Decodes one message (without the gRPC prefix).
    fn decode_wire(msg: Bytes) -> Result<Self, DecodeError>;
}

impl WireRequest for crate::request::DeltaRequest {
    fn decode_wire(msg: Bytes) -> Result<Self, DecodeError> {
        Self::decode(msg)
    }
}

impl WireRequest for SotwRequest {
    fn decode_wire(msg: Bytes) -> Result<Self, DecodeError> {
        SotwRequest::decode(msg)
    }
}

fn requests<B, T>(body: B, budget: Arc<tokio::sync::Semaphore>) -> crate::server::Requests<T>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T: WireRequest + Send + 'static,
{
    Box::pin(RequestStream::<B, T>::new(body, budget, LARGE_REQUEST_BUDGET_KIB))
}

impl<B, T> RequestStream<B, T>
where
    T: WireRequest,
{
    fn new(body: B, budget: Arc<tokio::sync::Semaphore>, budget_kib: u32) -> Self {
        Self {
            body: Box::pin(body),
            buf: BytesMut::new(),
            received: std::collections::VecDeque::new(),
            ended: false,
            done: false,
            budget,
            budget_kib,
            permit: None,
            acquiring: None,
            deadline: None,
            _message: std::marker::PhantomData,
        }
    }

    /// Moves received data into the buffer, up to the end of the next message: its
    /// 5-byte prefix, then its bytes unless it is large and waiting for its turn.
    fn fill(&mut self) {
        while !self.received.is_empty() {
            let want = match self.message_len() {
                None => 5 - self.buf.len(),
                Some(len) if self.permit.is_none() && len > KEEP_BUFFER => return,
                Some(len) => (5 + len).saturating_sub(self.buf.len()),
            };
            let Some(chunk) = self.received.front_mut().filter(|_| want > 0) else { return };
            let n = want.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..n]);
            if n == chunk.len() {
                self.received.pop_front();
            } else {
                bytes::Buf::advance(chunk, n);
            }
        }
    }

    /// The length of the message whose prefix starts the buffer.
    fn message_len(&self) -> Option<usize> {
        let b = self.buf.get(..5)?;
        Some(u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize)
    }

    /// A whole message from the buffer, if one is there.
    fn take_message(&mut self) -> Option<Result<T, Status>> {
        if self.buf.len() < 5 {
            return None;
        }
        if self.buf[0] != 0 {
            return Some(Err(Status::unimplemented("compressed requests are not supported")));
        }
        let len = self.message_len()?;
        if len > MAX_REQUEST {
            return Some(Err(Status::resource_exhausted(format!("request of {len} bytes is over {MAX_REQUEST}"))));
        }
        if self.buf.len() < 5 + len {
            // A large request's buffer is sized once its turn has come (`poll_next`):
            // thousands of streams waiting for a turn must not each hold one.
            if len <= KEEP_BUFFER {
                self.buf.reserve(5 + len - self.buf.len());
            }
            return None;
        }
        let msg = self.buf.split_to(5 + len);
        self.permit = None;
        self.deadline = None;
        if len > KEEP_BUFFER {
            // The buffer is filled up to the end of one message (`fill`): the large
            // allocation goes with it.
            self.buf = BytesMut::new();
        }
        Some(
            T::decode_wire(msg.freeze().slice(5..))
                .map_err(|e| Status::invalid_argument(format!("cannot decode request: {e}"))),
        )
    }
}

impl<B, T> futures::Stream for RequestStream<B, T>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: WireRequest,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            this.fill();
            if let Some(m) = this.take_message() {
                if m.is_err() {
                    this.done = true;
                }
                return Poll::Ready(Some(m));
            }
            // A large request waits for its turn before more of it is read.
            if this.permit.is_none() {
                // (`take_message` has refused one over `MAX_REQUEST` already.)
                let len = this.message_len().unwrap_or(0);
                let arrived = this.buf.len() + this.received.iter().map(Bytes::len).sum::<usize>();
                if len > KEEP_BUFFER && arrived >= (5 + len).min(CLAIM_AFTER) {
                    // Its size of the budget, at most all of it (`MAX_REQUEST` is less).
                    let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX).min(this.budget_kib);
                    let acquire = this
                        .acquiring
                        .get_or_insert_with(|| Box::pin(Arc::clone(&this.budget).acquire_many_owned(kib)));
                    match acquire.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(p) => {
                            this.acquiring = None;
                            this.permit = p.ok();
                            this.deadline = Some(Box::pin(tokio::time::sleep(LARGE_REQUEST_TIME)));
                            this.buf.reserve(5 + len - this.buf.len());
                            continue;
                        }
                    }
                }
            }
            if this.ended {
                this.done = true;
                if this.buf.is_empty() && this.received.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Status::internal("request stream ended inside a message"))));
            }
            if let Some(d) = this.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                this.done = true;
                this.permit = None;
                return Poll::Ready(Some(Err(Status::deadline_exceeded("a large request was not received in time"))));
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        use bytes::Buf;
                        // HTTP/2 data is `Bytes` already: taking it copies nothing.
                        let data = data.copy_to_bytes(data.remaining());
                        if !data.is_empty() {
                            this.received.push_back(data);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn grpc_response<M: WireMessage + Unpin>(
    r: Result<mpsc::Receiver<Outbound<M>>, Status>,
) -> http::Response<tonic::body::Body> {
    match r {
        Ok(rx) => {
            let mut resp = http::Response::new(tonic::body::Body::new(XdsBody::new(rx)));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            resp
        }
        Err(status) => status.into_http(),
    }
}

/// Writes a whole message (tests).
pub fn to_bytes(m: &impl WireMessage) -> Vec<u8> {
    let mut w = m.writer();
    let mut out = Vec::new();
    while let Some(c) = w.next_chunk() {
        out.extend_from_slice(&c);
    }
    out
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use prost::Message;

    use super::*;

    fn chunks(m: &impl WireMessage) -> VecDeque<Bytes> {
        let mut w = m.writer();
        let mut out = VecDeque::new();
        while let Some(c) = w.next_chunk() {
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
        let mut base = ProxyResources::new(1);
        for i in 0..3000 {
            let c = Cluster { name: format!("c{i}"), alt_stat_name: "x".repeat(i % 200), ..Default::default() };
            base.insert(type_url::CLUSTER, format!("outbound|80||svc-{i:04}"), &c);
        }
        let mut layered = ProxyResources::layered(Arc::new(base));
        // Own resources in between, and one that hides a shared one.
        for name in ["inbound|80||", "outbound|80||svc-0100", "a-first", "zz-last"] {
            layered.insert(type_url::CLUSTER, name, &Cluster { name: name.into(), ..Default::default() });
        }
        let layered = Arc::new(layered);
        let all: Vec<Arc<Encoded>> = layered.of(type_url::CLUSTER).expect("clusters").values().cloned().collect();
        assert_eq!(all.len(), 3003);
        let view = layered.of(type_url::CLUSTER).expect("clusters");
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
        assert_eq!(to_bytes(&sotw(whole.clone())), to_bytes(&sotw(list.clone())));
        assert_eq!(to_bytes(&delta(whole.clone())), to_bytes(&delta(list.clone())));
        assert!(chunks(&sotw(whole.clone())).iter().all(|c| c.len() < CHUNK + 1024), "bounded chunks");
        assert_eq!(whole, list);
        // Proxies of the same shared layer are written slices of one block while any of
        // them is being written (no copy per stream), and a moment after; then the layer
        // lets it go.
        assert_eq!(layered.wire_blocks_alive(), 2, "the SotW and the delta block, just written");
        let other = Arc::new(layered.own_layer_over(Arc::clone(layered.layers_base())));
        let counted = BLOCK_RESPONSES.load(std::sync::atomic::Ordering::Relaxed);
        let (mut a, mut b) = (sotw(whole.clone()).writer(), sotw(Resources::whole(&other, type_url::CLUSTER)).writer());
        assert_eq!(layered.wire_blocks_alive(), 2);
        assert!(BLOCK_RESPONSES.load(std::sync::atomic::Ordering::Relaxed) >= counted + 2, "counted for the metric");
        let (a, b): (Vec<Bytes>, Vec<Bytes>) =
            (std::iter::from_fn(|| a.next_chunk()).collect(), std::iter::from_fn(|| b.next_chunk()).collect());
        let shared = |c: &Bytes| b.iter().any(|d| d.as_ptr() == c.as_ptr() && d.len() == c.len() && c.len() > 1024);
        assert!(a.iter().filter(|c| shared(c)).count() >= 3, "the same bytes, not copies");
        // Written, the block stays a moment for the layer's next proxy, then goes.
        assert_eq!(layered.wire_blocks_alive(), 2, "kept a moment once written");
        let later: Vec<Bytes> = {
            let mut w = sotw(Resources::whole(&other, type_url::CLUSTER)).writer();
            std::iter::from_fn(|| w.next_chunk()).collect()
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
            small.insert(type_url::CLUSTER, format!("c{i}"), &Cluster::default());
        }
        let small = Arc::new(ProxyResources::layered(Arc::new(small)));
        let small_list: Vec<Arc<Encoded>> = small.of(type_url::CLUSTER).expect("c").values().cloned().collect();
        let w = sotw(Resources::whole(&small, type_url::CLUSTER)).writer();
        assert_eq!(small.wire_blocks_alive(), 0);
        drop(w);
        assert_eq!(
            to_bytes(&sotw(Resources::whole(&small, type_url::CLUSTER))),
            to_bytes(&sotw(Resources::List(small_list.into())))
        );
        // A set without a shared layer, and a type only the own layer has.
        let flat = Arc::new(layered.flattened());
        assert_eq!(to_bytes(&delta(Resources::whole(&flat, type_url::CLUSTER))), to_bytes(&delta(list.clone())));
        let mut own_only = ProxyResources::layered(Arc::new(ProxyResources::new(1)));
        own_only.insert(type_url::CLUSTER, "x", &Cluster::default());
        let own_only = Arc::new(own_only);
        let one: Vec<Arc<Encoded>> = own_only.of(type_url::CLUSTER).expect("x").values().cloned().collect();
        assert_eq!(
            to_bytes(&sotw(Resources::whole(&own_only, type_url::CLUSTER))),
            to_bytes(&sotw(Resources::List(one.into())))
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
}
