//! A tiny HTTP/1.1 echo backend: answers every request with its own name (header
//! `x-echo-name` and a JSON body) and what it received (method, path, headers), and keeps
//! a log of what it received so tests can assert on it.
//!
//! Request headers steer it, so tests can make a backend misbehave on demand:
//! - `x-echo-status: NNN` answers with that status;
//! - `x-echo-delay-ms: N` waits N ms before answering;
//! - `x-echo-fail: N` with `x-echo-key: K` answers 503 to the first N requests with key K.
//!
//! A WebSocket upgrade (`Upgrade: websocket`) is accepted with `101 Switching Protocols`
//! (and the `Sec-WebSocket-Accept` RFC 6455 asks for); from then on the connection
//! echoes every byte it receives, so a test sees data cross the upgraded stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, lower-cased names.
    pub headers: BTreeMap<String, String>,
}

/// How a backend behaves whatever the request says.
#[derive(Clone, Debug, Default)]
pub struct EchoOptions {
    /// Answer every request with this status.
    pub status: Option<u16>,
}

/// A running echo backend's shared state.
#[derive(Debug, Default)]
pub struct EchoState {
    /// Everything received, in order.
    pub received: Mutex<Vec<Received>>,
    failures: Mutex<BTreeMap<String, u32>>,
    options: EchoOptions,
}

impl EchoState {
    /// A copy of the log.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, name: Arc<str>, state: Arc<EchoState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(handle(stream, Arc::clone(&name), Arc::clone(&state)));
    }
}

/// State for a backend with `options`.
pub fn state(options: EchoOptions) -> Arc<EchoState> {
    Arc::new(EchoState { options, ..Default::default() })
}

async fn handle(stream: TcpStream, name: Arc<str>, state: Arc<EchoState>) {
    handle_stream(stream, name, state).await;
}

/// One HTTP/1.1 request read off a connection: method, path, headers (lower-cased
/// names); the body is read and dropped. `None` once the connection ends.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Option<(String, String, BTreeMap<String, String>)> {
    let mut line = String::new();
    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0usize);
    if length > 0 {
        let mut body = vec![0u8; length];
        tokio::io::AsyncReadExt::read_exact(r, &mut body).await.ok()?;
    }
    Some((method, path, headers))
}

/// Serves HTTP/1.1 requests on one connection (plain or TLS).
pub async fn handle_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: S, name: Arc<str>, state: Arc<EchoState>) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    loop {
        let Some((method, path, headers)) = read_request(&mut r).await else { return };
        if let Ok(mut log) = state.received.lock() {
            log.push(Received { method: method.clone(), path: path.clone(), headers: headers.clone() });
        }
        if let Some(ms) = headers.get("x-echo-delay-ms").and_then(|v| v.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut status = state.options.status.unwrap_or(200);
        if let Some(s) = headers.get("x-echo-status").and_then(|v| v.parse().ok()) {
            status = s;
        }
        if let (Some(n), Some(key)) =
            (headers.get("x-echo-fail").and_then(|v| v.parse::<u32>().ok()), headers.get("x-echo-key"))
            && let Ok(mut f) = state.failures.lock()
        {
            let seen = f.entry(key.clone()).or_insert(0);
            *seen += 1;
            if *seen <= n {
                status = 503;
            }
        }
        if headers.get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            let accept = websocket_accept(headers.get("sec-websocket-key").map_or("", String::as_str));
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-accept: {accept}\r\nx-echo-name: {name}\r\n\r\n"
            );
            if w.write_all(head.as_bytes()).await.is_ok() {
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
            return;
        }
        let close = headers.get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = serde_json::json!({"name": &*name, "method": method, "path": path, "headers": headers}).to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nx-echo-name: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).await.is_err() || w.flush().await.is_err() {
            return;
        }
        if close {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}
