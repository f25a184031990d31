//! The accept loops of Spar's listening ports, with what every port needs against
//! clients that connect and say nothing, and against running out of file descriptors.
//!
//! ```text
//!   accept ──► task per connection: handshake within HANDSHAKE_TIMEOUT ──► the server
//!     │            (TLS, or the HTTP/2 preface on the plaintext port)
//!     └ error (EMFILE, ...) ──► one warning per second, a pause, try again
//! ```
//!
//! A connection that has not completed its handshake in time is closed: on the
//! plaintext port, 250 idle connections held open forever used to lock every proxy out
//! under a low descriptor limit. An accept error pauses the loop instead of spinning it
//! (the webhook's loop wrote a million warnings in five seconds).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a new connection has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop pauses after an accept error (descriptors or memory exhausted):
/// long enough for connections to close, short enough not to be noticed otherwise.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The HTTP/2 connection preface every gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections handed to the server but not yet taken by it.
const QUEUED: usize = 64;

/// Accepts an error from `accept`, logging at most once a second, and pauses.
pub struct AcceptErrors {
    port: &'static str,
    last_warned: Option<Instant>,
    since: u64,
}

impl AcceptErrors {
    /// For the port named `port` in messages.
    pub fn new(port: &'static str) -> Self {
        Self { port, last_warned: None, since: 0 }
    }

    /// Logs `e` (or counts it, when a warning went out less than a second ago) and
    /// pauses the accept loop.
    pub async fn pause(&mut self, e: &std::io::Error) {
        self.since += 1;
        if self.last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            warn!(port = self.port, error = %e, errors = self.since, "accept failed; pausing before the next accept");
            self.last_warned = Some(Instant::now());
            self.since = 0;
        }
        tokio::time::sleep(ACCEPT_PAUSE).await;
    }
}

/// Accepts connections on `listener` and runs `handshake` on each off the accept loop,
/// within `timeout` ([`HANDSHAKE_TIMEOUT`]); yields the connections whose handshake gave
/// a stream.
pub fn incoming<S, F, Fut>(
    listener: TcpListener,
    port: &'static str,
    timeout: Duration,
    handshake: F,
) -> mpsc::Receiver<std::io::Result<S>>
where
    S: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<S>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUED);
    tokio::spawn(async move {
        let mut errors = AcceptErrors::new(port);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    errors.pause(&e).await;
                    continue;
                }
            };
            let conn_tx = tx.clone();
            let shake = handshake(tcp, peer);
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, shake).await {
                    Ok(Some(s)) => {
                        let _ = conn_tx.send(Ok(s)).await;
                    }
                    Ok(None) => {}
                    Err(_) => debug!(port, %peer, "handshake timed out; connection closed"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// The plaintext port's handshake: the client's first bytes are the HTTP/2 preface
/// (read with `peek`, so the server still reads them).
pub async fn h2_preface(tcp: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            debug!(%peer, "not HTTP/2 on the plaintext xDS port; connection closed");
            return None;
        }
        if n == H2_PREFACE.len() {
            return Some(tcp);
        }
        // Part of the preface: wait for the rest (peek returns what is there).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn listen() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    const SHORT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_connection_that_says_nothing_is_closed_after_the_handshake_timeout() {
        let (l, a) = listen().await;
        let mut rx = incoming(l, "test", SHORT, h2_preface);
        let mut silent = TcpStream::connect(a).await.expect("connect");
        let mut b = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut silent, &mut b).await.expect("read");
        assert_eq!(n, 0, "closed by the server");
        assert!(rx.try_recv().is_err(), "never handed to the server");
    }

    #[tokio::test]
    async fn a_client_that_speaks_http2_is_handed_over_with_its_bytes_unread() {
        let (l, a) = listen().await;
        let mut rx = incoming(l, "test", SHORT, h2_preface);
        let mut c = TcpStream::connect(a).await.expect("connect");
        c.write_all(&H2_PREFACE[..10]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(&H2_PREFACE[10..]).await.expect("write");
        let s = rx.recv().await.expect("handed over").expect("a stream");
        let mut buf = [0u8; 24];
        s.peek(&mut buf).await.expect("peek");
        assert_eq!(&buf, H2_PREFACE);
    }

    #[tokio::test]
    async fn a_client_that_speaks_something_else_is_closed_at_once() {
        let (l, a) = listen().await;
        let mut rx = incoming(l, "test", HANDSHAKE_TIMEOUT, h2_preface);
        let mut c = TcpStream::connect(a).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut b = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut c, &mut b).await.unwrap_or(0);
        assert_eq!(n, 0, "closed");
        assert!(rx.try_recv().is_err());
    }
}
