//! The server side of the wire: the ADS service behind tonic's router, and the request
//! stream with its limits (request size, the large-request budget shared per port).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tonic::Status;

use crate::request::{DecodeError, SotwRequest};

use super::*;

/// The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService`, written by
/// hand so that responses go out through [`XdsBody`]; requests are decoded by tonic.
#[derive(Clone, Debug)]
pub struct AdsServer {
    inner: crate::server::AdsService,
    /// The wire's budget of bytes in flight, lingering blocks and block counters: one
    /// for all of a process's ports.
    wire: Arc<Wire>,
    /// This server's budget for large requests, in KiB: each listening port has its
    /// own, so that strangers on the plaintext port cannot starve proxies on the secure
    /// one.
    budget: Arc<tokio::sync::Semaphore>,
}

impl AdsServer {
    /// The tonic service for `inner` on one port, writing through `wire` (shared by the
    /// ports of one process).
    pub fn new(inner: crate::server::AdsService, wire: Arc<Wire>) -> Self {
        Self { inner, wire, budget: Arc::new(tokio::sync::Semaphore::new(LARGE_REQUEST_BUDGET_KIB as usize)) }
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
        let wire = Arc::clone(&self.wire);
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let (parts, body) = req.into_parts();
            let response = match method.as_str() {
                "StreamAggregatedResources" => {
                    let mut request = tonic::Request::new(requests::<B, SotwRequest>(body, budget));
                    *request.extensions_mut() = parts.extensions;
                    grpc_response(
                        svc.serve::<SotwRequest, SotwResponse>(crate::conn::Variant::Sotw, request).await,
                        wire,
                    )
                }
                "DeltaAggregatedResources" => {
                    let mut request = tonic::Request::new(requests::<B, crate::request::DeltaRequest>(body, budget));
                    *request.extensions_mut() = parts.extensions;
                    grpc_response(
                        svc.serve::<crate::request::DeltaRequest, DeltaResponse>(crate::conn::Variant::Delta, request)
                            .await,
                        wire,
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
pub(super) struct RequestStream<B, T> {
    body: Pin<Box<B>>,
    pub(super) buf: BytesMut,
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
    /// keep its turn (and the other streams' large requests) for long. Moved on while
    /// the request makes progress ([`LARGE_REQUEST_STALL`]).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the permit was taken, and the bytes received since the body last had
    /// nothing more to give.
    claimed: Option<(tokio::time::Instant, usize)>,
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

/// How long a stream may take to send a large request once its turn has come, at most.
const LARGE_REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a large request that holds its share of the budget may make no progress:
/// from the moment its share is taken, and again each time the body, read to its end
/// for now, had brought at least [`LARGE_REQUEST_PROGRESS`] since the last time. A sender
/// that stalls after its first 32 KiB loses its stream 2 s later instead of holding its
/// share for [`LARGE_REQUEST_TIME`]. Measured between reads, not on the clock alone: a
/// stream that Spar itself reads late (its task busy in a reconnect storm) finds the
/// bytes that waited for it, and is not failed for them.
const LARGE_REQUEST_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// The least a large request must bring between two stalls to count as progress (a
/// trickle of a few bytes does not keep its turn).
const LARGE_REQUEST_PROGRESS: usize = 8 * 1024;

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
    pub(super) fn new(body: B, budget: Arc<tokio::sync::Semaphore>, budget_kib: u32) -> Self {
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
            claimed: None,
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
        self.claimed = None;
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
                            let now = tokio::time::Instant::now();
                            this.claimed = Some((now, 0));
                            this.deadline = Some(Box::pin(tokio::time::sleep_until(now + LARGE_REQUEST_STALL)));
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
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        use bytes::Buf;
                        // HTTP/2 data is `Bytes` already: taking it copies nothing.
                        let data = data.copy_to_bytes(data.remaining());
                        if let Some((_, bytes)) = this.claimed.as_mut() {
                            *bytes += data.len();
                        }
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
                Poll::Pending => {
                    // Everything that has arrived is read: progress since the last time
                    // moves the deadline on (at most to LARGE_REQUEST_TIME after the
                    // claim), else the deadline stands.
                    if let (Some((at, bytes)), Some(d)) = (this.claimed.as_mut(), this.deadline.as_mut())
                        && *bytes >= LARGE_REQUEST_PROGRESS
                    {
                        *bytes = 0;
                        let next = tokio::time::Instant::now() + LARGE_REQUEST_STALL;
                        d.as_mut().reset(next.min(*at + LARGE_REQUEST_TIME));
                    }
                    if let Some(d) = this.deadline.as_mut()
                        && d.as_mut().poll(cx).is_ready()
                    {
                        this.done = true;
                        this.permit = None;
                        let late = "a large request did not arrive fast enough once its turn came";
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(late))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
