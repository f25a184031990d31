//! A bidirectional gRPC stream over a tonic [`Channel`] that reads replies without
//! copying them.
//!
//! tonic's decoder copies every message into a buffer of the stream's own, grown by
//! doubling to the largest message and kept for the life of the stream: in a full-mesh
//! reconnect storm that was 2,000 buffers of 2 MB or more (4-6 GB of client RSS), and the
//! copies and the page faults of growing them were a sixth of the client's CPU, on the
//! cores it shares with the server it measures. Here a reply is decoded straight from
//! HTTP/2's frames: prost reads across them, and a `bytes` field (a resource) inside one
//! frame is a slice of it.

use std::collections::VecDeque;

use http_body_util::BodyExt as _;
use prost::Message;
use prost::bytes::{Buf, BufMut as _, Bytes, BytesMut};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// A request as gRPC data: the 5-byte prefix and the message ([`prefixed`]).
pub trait Wire: Send + 'static {
    /// The bytes of one message.
    fn wire(&self) -> Bytes;
}

/// One gRPC message: the 5-byte prefix (not compressed), `m` encoded, then `rest`
/// (fields encoded ahead of time), in one buffer.
///
/// One buffer, as Envoy writes a message, and not `rest` as a frame of its own (which
/// saved copying the 220 KB of names every SotW ACK repeats): HTTP/2 then frames the
/// message as Envoy's does, and the server is measured with the framing it will see.
/// With a small first frame and the names after it, Spar held 6-8 MB more at 2k proxies
/// (delta: 148-149 MB against 142-143 MB; docs/performance.md).
pub fn prefixed(m: &impl Message, rest: &[u8]) -> Bytes {
    let len = m.encoded_len() + rest.len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    m.encode_raw(&mut buf);
    buf.put_slice(rest);
    buf.freeze()
}

/// Opens a stream of `method` (a full path) that sends what `rx` yields.
pub async fn open<Request: Wire>(
    mut channel: Channel,
    method: &'static str,
    rx: mpsc::Receiver<Request>,
) -> anyhow::Result<Replies> {
    use tower::{Service as _, ServiceExt as _};
    let body = tonic::body::Body::new(RequestBody { rx });
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(http::Uri::from_static(method))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)?;
    let response = channel.ready().await.map_err(|e| anyhow::anyhow!("ADS connection: {e}"))?.call(request).await?;
    if response.status() != http::StatusCode::OK {
        anyhow::bail!("ADS stream: HTTP {}", response.status());
    }
    grpc_status(response.headers())?;
    Ok(Replies { body: response.into_body(), frames: VecDeque::new(), buffered: 0, ended: false })
}

/// The requests, in order, one data frame each; the body ends when the sender is
/// dropped.
struct RequestBody<R> {
    rx: mpsc::Receiver<R>,
}

impl<R: Wire> http_body::Body for RequestBody<R> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|m| Ok(http_body::Frame::data(m.wire()))))
    }
}

/// A non-OK `grpc-status` in `headers` as an error.
fn grpc_status(headers: &http::HeaderMap) -> anyhow::Result<()> {
    match headers.get("grpc-status").map(http::HeaderValue::as_bytes) {
        None | Some(b"0") => Ok(()),
        Some(code) => {
            let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
            anyhow::bail!("grpc-status {}: {message}", String::from_utf8_lossy(code))
        }
    }
}

/// The replies of a stream.
pub struct Replies {
    body: tonic::body::Body,
    /// Data received and not yet decoded, as HTTP/2 framed it.
    frames: VecDeque<Bytes>,
    buffered: usize,
    ended: bool,
}

impl Replies {
    /// The next reply's bytes, as they came; `None` when the server ended the stream
    /// with OK.
    pub async fn body(&mut self) -> anyhow::Result<Option<Chunks>> {
        loop {
            if let Some(len) = self.next_len()?
                && self.buffered >= 5 + len
            {
                let mut message = self.take(5 + len);
                message.advance(5);
                return Ok(Some(message));
            }
            if self.ended {
                anyhow::ensure!(self.buffered == 0, "ADS stream ended inside a message");
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buffered += data.len();
                        if !data.is_empty() {
                            self.frames.push_back(data);
                        }
                    }
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            grpc_status(trailers)?;
                        }
                    }
                },
                Some(Err(e)) => anyhow::bail!("ADS stream: {e}"),
                None => self.ended = true,
            }
        }
    }

    /// The length of the message whose prefix has arrived.
    fn next_len(&self) -> anyhow::Result<Option<usize>> {
        if self.buffered < 5 {
            return Ok(None);
        }
        let mut prefix = [0u8; 5];
        let mut at = 0;
        for f in &self.frames {
            let n = (5 - at).min(f.len());
            prefix[at..at + n].copy_from_slice(&f[..n]);
            at += n;
            if at == 5 {
                break;
            }
        }
        anyhow::ensure!(prefix[0] == 0, "compressed replies are not supported");
        Ok(Some(u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize))
    }

    /// The next `n` buffered bytes, as the frames (or parts of them) that hold them.
    fn take(&mut self, mut n: usize) -> Chunks {
        self.buffered -= n;
        let mut out = VecDeque::new();
        while n > 0 {
            let Some(mut f) = self.frames.pop_front() else { break };
            if f.len() > n {
                self.frames.push_front(f.split_off(n));
            }
            n -= f.len();
            out.push_back(f);
        }
        let remaining = out.iter().map(Bytes::len).sum();
        Chunks { chunks: out, remaining }
    }
}

/// Bytes held as a list of frames: a [`Buf`] whose `copy_to_bytes` is a slice when the
/// bytes lie in one frame.
#[derive(Clone, Debug, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    /// A hash of the bytes that does not depend on where frames split them: equal bytes,
    /// however framed, hash alike. The bytes are hashed in blocks of 4 KiB; only a
    /// block that spans two frames is copied.
    pub fn content_hash(&self) -> u64 {
        use std::hash::{BuildHasher as _, Hasher as _};
        const BLOCK: usize = 4096;
        let mut h = foldhash::quality::FixedState::with_seed(0x5ba7).build_hasher();
        h.write_usize(self.remaining);
        let mut pending = [0u8; BLOCK];
        let mut held = 0;
        for mut c in self.chunks.iter().map(|c| &c[..]) {
            if held > 0 {
                let n = c.len().min(BLOCK - held);
                pending[held..held + n].copy_from_slice(&c[..n]);
                (held, c) = (held + n, &c[n..]);
                if held < BLOCK {
                    continue;
                }
                h.write(&pending);
            }
            let whole = c.len() / BLOCK * BLOCK;
            for block in c[..whole].chunks_exact(BLOCK) {
                h.write(block);
            }
            pending[..c.len() - whole].copy_from_slice(&c[whole..]);
            held = c.len() - whole;
        }
        h.write(&pending[..held]);
        h.finish()
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else { return };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self.chunks.front_mut() {
            Some(front) if len <= front.len() => {
                let out = front.split_to(len);
                self.remaining -= len;
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                out
            }
            _ => {
                assert!(len <= self.remaining, "copy_to_bytes past the end");
                let mut out = BytesMut::with_capacity(len);
                out.put(Buf::take(&mut *self, len));
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` as frames of the given sizes in turn (the last one takes the rest).
    fn split(bytes: &[u8], sizes: &[usize]) -> Chunks {
        let (mut chunks, mut rest) = (VecDeque::new(), bytes);
        for &n in sizes.iter().cycle() {
            let (frame, more) = rest.split_at(n.min(rest.len()));
            chunks.push_back(Bytes::copy_from_slice(frame));
            rest = more;
            if rest.is_empty() {
                break;
            }
        }
        Chunks { chunks, remaining: bytes.len() }
    }

    /// Equal bytes hash alike however they are framed; other bytes, otherwise.
    #[test]
    fn content_hashes_do_not_depend_on_framing() {
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let whole = split(&bytes, &[bytes.len()]).content_hash();
        for sizes in [&[1][..], &[7, 4096], &[4095, 1, 4097], &[16_384], &[3, 12_000, 5000]] {
            assert_eq!(split(&bytes[..200], sizes).content_hash(), split(&bytes[..200], &[200]).content_hash());
            assert_eq!(split(&bytes, sizes).content_hash(), whole, "{sizes:?}");
        }
        let mut other = bytes.clone();
        other[30_000] ^= 1;
        assert_ne!(split(&other, &[4096]).content_hash(), whole);
        assert_ne!(split(&bytes[..49_999], &[4096]).content_hash(), whole, "a shorter run");
        assert_eq!(Chunks::default().content_hash(), split(&[], &[1]).content_hash());
    }

    /// A message split across frames at every size decodes as prost's, and a `bytes`
    /// field within one frame is a slice of it.
    #[test]
    fn replies_decode_across_frames_and_slice_within_one() {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
        use envoy_types::pb::google::protobuf::Any;
        let msg = DiscoveryResponse {
            version_info: "v1".into(),
            resources: (0..50).map(|i| Any { type_url: "t".into(), value: vec![i; 300] }).collect(),
            type_url: "t".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let wire = prefixed(&msg, &[]);
        for size in [1, 7, 300, 4096, wire.len()] {
            let mut r = Replies {
                body: tonic::body::Body::empty(),
                frames: wire.chunks(size).map(Bytes::copy_from_slice).collect(),
                buffered: wire.len(),
                ended: true,
            };
            assert_eq!(r.next_len().expect("a prefix"), Some(wire.len() - 5));
            let mut m = r.take(wire.len());
            m.advance(5);
            assert_eq!(m.remaining(), wire.len() - 5);
            assert_eq!(DiscoveryResponse::decode(m).expect("decodes"), msg, "frames of {size}");
        }
        let frame = Bytes::copy_from_slice(&wire[5..]);
        let mut one = Chunks { chunks: VecDeque::from([frame.clone()]), remaining: frame.len() };
        assert_eq!(one.content_hash(), split(&frame, &[1, 4095, 4096, 4097, 9000]).content_hash());
        one.advance(10);
        let slice = one.copy_to_bytes(100);
        assert_eq!(slice.as_ptr(), frame[10..].as_ptr(), "a slice, not a copy");
    }
}
