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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;

use crate::layer_cache::{Delivery as _, WireBlock};
use crate::resources::{Encoded, ResourceType};
use crate::response::{DeltaResponse, Outbound, Resources, SotwResponse};

/// Largest chunk handed to HTTP/2 at once (a resource larger than this goes alone).
const CHUNK: usize = 64 * 1024;

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

/// Smallest shared type written from a block. Below it each response copies its
/// resources as a list does: a block pays when many streams write the same large type
/// at once (a full mesh connecting), while rebuilding small ones for responses that go
/// out one at a time left freed pages behind (about 5 MB at 2k scoped proxies).
const BLOCK_MIN: usize = 256 * 1024;

impl WireBlock {
    /// The block of `resources`, when they are at least [`BLOCK_MIN`] bytes.
    fn build(resources: &crate::resources::TypeResources, delta: bool, wire: &Wire) -> Option<Self> {
        let len: usize = resources.values().map(|e| resource_len(e, delta)).sum();
        if len < BLOCK_MIN {
            return None;
        }
        wire.block_builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
fn whole_pieces(from: &crate::ProxyResources, t: ResourceType, delta: bool, wire: &Wire) -> Option<Pieces> {
    let block = from.wire_block(t, delta, |r| WireBlock::build(r, delta, wire))?;
    let own = from.layers(t).1;
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

/// What the wire of one ADS service shares across its streams and ports: the budget of
/// bytes in flight, the blocks kept a moment after their last response, and the block
/// counters. One per process, made by `spar serve` and handed to each port's
/// [`AdsServer`]; two in one process (tests) share nothing.
#[derive(Debug)]
pub struct Wire {
    /// Chunks handed to HTTP/2 and not yet written ([`IN_FLIGHT_CHUNKS`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Started with the first block; `None` inside when its thread cannot be started.
    lingering: std::sync::OnceLock<Option<Arc<Lingering>>>,
    /// Responses written as slices of a shared layer's block (`spar_xds_block_responses`).
    pub block_responses: std::sync::atomic::AtomicU64,
    /// Blocks serialized (`spar_xds_block_builds`): one per layer, type and form while
    /// responses from it are being written.
    pub block_builds: std::sync::atomic::AtomicU64,
}

impl Default for Wire {
    fn default() -> Self {
        Self {
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_CHUNKS)),
            lingering: std::sync::OnceLock::new(),
            block_responses: std::sync::atomic::AtomicU64::new(0),
            block_builds: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Wire {
    /// Keeps `block` for [`BLOCK_LINGER`] from now.
    fn linger(&self, block: Arc<WireBlock>) {
        let Some(l) = self.lingering.get_or_init(Lingering::start).as_deref() else { return };
        let now = std::time::Instant::now();
        let mut blocks = l.lock();
        if let Some(e) = blocks.iter_mut().find(|(_, b)| Arc::ptr_eq(b, &block)) {
            e.0 = now;
        } else {
            blocks.push((now, block));
            l.wake.notify_one();
        }
    }
}

/// Blocks kept for [`BLOCK_LINGER`] after their last response, by when it was written;
/// a thread of their own lets them go.
struct Lingering {
    blocks: std::sync::Mutex<Vec<(std::time::Instant, Arc<WireBlock>)>>,
    wake: std::sync::Condvar,
}

impl std::fmt::Debug for Lingering {
    /// How many blocks, not their megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lingering").field("blocks", &self.lock().len()).finish()
    }
}

impl Lingering {
    /// `None` when the thread cannot be started: then each block lives while it is written.
    fn start() -> Option<Arc<Self>> {
        let lingering = Arc::new(Self { blocks: std::sync::Mutex::new(Vec::new()), wake: std::sync::Condvar::new() });
        let weak = Arc::downgrade(&lingering);
        match std::thread::Builder::new().name("spar-blocks".into()).spawn(move || Self::expire(&weak)) {
            Ok(_) => Some(lingering),
            Err(e) => {
                tracing::warn!("cannot start the thread that lets written blocks go: {e}");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(std::time::Instant, Arc<WireBlock>)>> {
        self.blocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets blocks go as they expire, until the service that owns them is gone: the
    /// thread holds them only while it looks, and looks at least once per linger period.
    fn expire(weak: &std::sync::Weak<Self>) {
        while let Some(l) = weak.upgrade() {
            let mut blocks = l.lock();
            let now = std::time::Instant::now();
            let expired: Vec<_> = blocks.extract_if(.., |(at, _)| now.duration_since(*at) >= BLOCK_LINGER).collect();
            let next = blocks.iter().map(|(at, _)| *at + BLOCK_LINGER).min();
            // Freed outside the lock: a full mesh's block is megabytes.
            drop(blocks);
            drop(expired);
            let blocks = l.lock();
            let wait = next.map_or(BLOCK_LINGER, |at| at.saturating_duration_since(std::time::Instant::now()));
            drop(
                l.wake.wait_timeout(blocks, wait.min(BLOCK_LINGER)).unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
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
        wire: &Wire,
        resources: &Resources,
        delta: bool,
        fields_len: usize,
        put_fields: impl FnOnce(&mut BytesMut),
        tail: BytesMut,
    ) -> Self {
        let whole = match resources {
            Resources::Whole(from, t) => whole_pieces(from, *t, delta, wire),
            Resources::List(_) => None,
        };
        let head = |resources_len: usize| {
            let mut head = grpc_prefix(fields_len + resources_len + tail.len());
            put_fields(&mut head);
            head
        };
        if let Some(Pieces { pieces, len, block }) = whole {
            wire.block_responses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    fn sotw(r: &SotwResponse, wire: &Wire) -> Self {
        let fields_len =
            opt_field_len(r.version_info.len()) + opt_field_len(r.type_url.len()) + opt_field_len(r.nonce.len());
        let put_fields = |head: &mut BytesMut| {
            put_opt_bytes(head, 1, r.version_info.as_bytes());
            put_opt_bytes(head, 4, r.type_url.as_bytes());
            put_opt_bytes(head, 5, r.nonce.as_bytes());
        };
        Self::new(wire, &r.resources, false, fields_len, put_fields, BytesMut::new())
    }

    fn delta(r: &DeltaResponse, wire: &Wire) -> Self {
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
        Self::new(wire, &r.resources, true, fields_len, put_fields, tail)
    }

    /// The next chunk, or `None` when the message is written.
    fn next_chunk(&mut self, wire: &Wire) -> Option<Bytes> {
        if let Some(mut piece) = self.ready.pop_front() {
            if piece.len() > CHUNK {
                self.ready.push_front(piece.split_off(CHUNK));
            }
            if self.ready.is_empty()
                && let Some(block) = self.block.take()
            {
                // The slices handed out keep their bytes; the block stays a moment for
                // the next proxy of the layer, then the layer lets it go.
                wire.linger(block);
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
    fn writer(&self, wire: &Wire) -> Writer;
}

impl WireMessage for SotwResponse {
    fn writer(&self, wire: &Wire) -> Writer {
        Writer::sotw(self, wire)
    }
}

impl WireMessage for DeltaResponse {
    fn writer(&self, wire: &Wire) -> Writer {
        Writer::delta(self, wire)
    }
}

/// Response bytes handed to HTTP/2 and not yet written to a socket, over all streams, in
/// chunks: 512 chunks of 64 KiB, 32 MiB (a 2k-proxy full-mesh storm, 4.4 GB, was no
/// slower than with 128 MiB: the readers set the pace). When thousands of proxies connect at once
/// (a reconnect storm), responses wait for room instead of piling up in HTTP/2 send
/// buffers (up to 400 KiB per stream each). A proxy that stops reading holds at most its
/// HTTP/2 send buffer's worth (about 7 chunks) until its connection is closed.
const IN_FLIGHT_CHUNKS: usize = 512;

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
/// lazily within the in-flight budget, then the `grpc-status` trailers.
pub struct XdsBody<M> {
    rx: mpsc::Receiver<Outbound<M>>,
    wire: Arc<Wire>,
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
    pub fn new(rx: mpsc::Receiver<Outbound<M>>, wire: Arc<Wire>) -> Self {
        Self { rx, wire, current: None, permit: None, done: false }
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
                let acquire =
                    this.permit.get_or_insert_with(|| Box::pin(Arc::clone(&this.wire.in_flight).acquire_owned()));
                let permit = match acquire.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(p) => p,
                };
                this.permit = None;
                if let Some(chunk) = w.next_chunk(&this.wire) {
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
                Poll::Ready(Some(Ok(m))) => this.current = Some(m.writer(&this.wire)),
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

fn grpc_response<M: WireMessage + Unpin>(
    r: Result<mpsc::Receiver<Outbound<M>>, Status>,
    wire: Arc<Wire>,
) -> http::Response<tonic::body::Body> {
    match r {
        Ok(rx) => {
            let mut resp = http::Response::new(tonic::body::Body::new(XdsBody::new(rx, wire)));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            resp
        }
        Err(status) => status.into_http(),
    }
}

/// Writes a whole message (tests).
pub fn to_bytes(m: &impl WireMessage) -> Vec<u8> {
    to_bytes_with(m, &Wire::default())
}

/// Writes a whole message with `wire`'s blocks and counters (tests).
pub fn to_bytes_with(m: &impl WireMessage, wire: &Wire) -> Vec<u8> {
    let mut w = m.writer(wire);
    let mut out = Vec::new();
    while let Some(c) = w.next_chunk(wire) {
        out.extend_from_slice(&c);
    }
    out
}

mod requests;
pub use requests::AdsServer;

#[cfg(test)]
mod tests;
