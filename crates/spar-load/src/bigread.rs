//! The client's TCP connections, read in large pieces.
//!
//! HTTP/2 (h2) reads a connection into a buffer sized for the frame it decodes: at most
//! 16 KiB and often less, one `recvfrom` each. In a full-mesh reconnect storm that was
//! 750,000 system calls, and receiving was 29% of the client's CPU, on the cores it
//! shares with the server it measures. [`BigReads`] reads up to [`READ`] bytes at a time
//! into a buffer of its own and hands h2 what it asks for from there; the buffer goes
//! back to a per-thread spare once emptied, so idle connections hold none.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read per system call at most.
pub const READ: usize = 128 * 1024;

/// A TCP connection whose reads are `READ` bytes at most instead of what the caller's
/// buffer holds.
#[derive(Debug)]
pub struct BigReads {
    tcp: TcpStream,
    /// `READ` bytes while some are buffered (written once when allocated, never zeroed
    /// per read), empty otherwise.
    buf: Vec<u8>,
    /// Read and not yet handed on: `buf[at..end]`.
    at: usize,
    end: usize,
}

thread_local! {
    /// Emptied buffers, for the next connection read on this thread.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl BigReads {
    /// Wraps a connected stream.
    pub fn new(tcp: TcpStream) -> Self {
        Self { tcp, buf: Vec::new(), at: 0, end: 0 }
    }

    /// Hands on what is buffered, as much as `out` holds; the emptied buffer is spared.
    fn hand_on(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.end - self.at);
        out.put_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        if self.at == self.end {
            spare(std::mem::take(&mut self.buf));
            (self.at, self.end) = (0, 0);
        }
    }
}

/// Keeps an emptied buffer for the next read on this thread (a few at most).
fn spare(buf: Vec<u8>) {
    SPARE.with_borrow_mut(|s| {
        if s.len() < 4 {
            s.push(buf);
        }
    });
}

impl AsyncRead for BigReads {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.end {
            this.hand_on(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ {
            return Pin::new(&mut this.tcp).poll_read(cx, out);
        }
        let mut buf = SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| vec![0; READ]);
        let mut read = ReadBuf::new(&mut buf);
        let polled = Pin::new(&mut this.tcp).poll_read(cx, &mut read);
        let n = read.filled().len();
        if n == 0 {
            // Nothing yet (or an error, or the end): the buffer goes back.
            spare(buf);
        } else {
            (this.buf, this.at, this.end) = (buf, 0, n);
        }
        ready!(polled)?;
        // n == 0 is the end of the stream: nothing is put in `out`, which says so.
        if n > 0 {
            this.hand_on(out);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BigReads {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Connects to `server` (from `local` when given), with `TCP_NODELAY` as Envoy sets it.
pub async fn connect(server: SocketAddr, local: Option<SocketAddr>) -> io::Result<BigReads> {
    let socket = if server.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(local) = local {
        socket.bind(local)?;
    }
    let tcp = socket.connect(server).await?;
    tcp.set_nodelay(true)?;
    Ok(BigReads::new(tcp))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Whatever the reader's buffer size, the bytes arrive whole and in order, and the
    /// end of the stream is seen.
    #[tokio::test]
    async fn reads_of_any_size_see_every_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(&sent).await.expect("write");
        });
        let mut client = connect(addr, None).await.expect("connect");
        let mut got = Vec::new();
        let mut sizes = [1usize, 7, 5000, READ, READ + 1, 16_384].into_iter().cycle();
        loop {
            let mut chunk = vec![0u8; sizes.next().unwrap_or(1)];
            let n = client.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        server.await.expect("server");
        assert_eq!(got, data);
    }
}
