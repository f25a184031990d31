//! A small external authorizer for AuthorizationPolicy `action: CUSTOM`, speaking the
//! HTTP protocol of Envoy's `ext_authz` filter (as Istio's `samples/extauthz` server
//! does): a check whose request carries `x-ext-authz: allow` is allowed (200), any
//! other is denied (403); either answer carries `x-ext-authz-check-result`, which the
//! filter passes upstream on allow and to the client on deny when the provider says so.
//! Every check is counted, so tests can see which requests were sent for checking.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The authorizer's counters.
#[derive(Debug, Default)]
pub struct Checks {
    allowed: AtomicUsize,
    denied: AtomicUsize,
}

impl Checks {
    /// Checks answered so far: (allowed, denied).
    pub fn counts(&self) -> (usize, usize) {
        (self.allowed.load(Ordering::SeqCst), self.denied.load(Ordering::SeqCst))
    }
}

/// Serves checks on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, checks: Arc<Checks>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(handle(stream, Arc::clone(&checks)));
    }
}

async fn handle(stream: TcpStream, checks: Arc<Checks>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some((_, _, headers)) = crate::echo::read_request(&mut r).await else { return };
        let allow = headers.get("x-ext-authz").is_some_and(|v| v == "allow");
        let (status, result) = if allow { ("200 OK", "allowed") } else { ("403 Forbidden", "denied") };
        let counter = if allow { &checks.allowed } else { &checks.denied };
        counter.fetch_add(1, Ordering::SeqCst);
        let text = format!("ext-authz: {result}");
        let resp = format!(
            "HTTP/1.1 {status}\r\nx-ext-authz-check-result: {result}\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
