//! HTTP/1.1 as the tests speak it to Envoys and backends: one request per connection,
//! the response parsed (chunked bodies decoded), and a WebSocket upgrade.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-cased names.
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The echo backend that answered (from `x-echo-name`), if any.
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-echo-name").map(String::as_str)
    }
}

/// Sends one HTTP/1.1 request (Connection: close) and reads the whole response.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        parse_response(&buf)
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.context("HTTP request timed out")?
}

/// A WebSocket upgrade through `addr` for `host` `path`: the response to the upgrade
/// request and, when it is `101`, what came back after sending `message` on the
/// upgraded stream (the echo backend sends every byte back).
pub async fn websocket_exchange(
    addr: SocketAddr,
    host: &str,
    path: &str,
    message: &[u8],
) -> anyhow::Result<(HttpResponse, Vec<u8>)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        // The response head, byte by byte so nothing after it is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await? == 0 {
                break;
            }
            head.push(b[0]);
        }
        if !head.ends_with(b"\r\n\r\n") {
            // Refused and closed: the whole answer, body included.
            s.read_to_end(&mut head).await?;
            return Ok((parse_response(&head)?, Vec::new()));
        }
        let response = parse_response(&head)?;
        if response.status != 101 {
            let length = response.headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0usize);
            let mut body = vec![0u8; length];
            s.read_exact(&mut body).await?;
            let response = HttpResponse { body: String::from_utf8_lossy(&body).into_owned(), ..response };
            return Ok((response, Vec::new()));
        }
        s.write_all(message).await?;
        let mut echoed = vec![0u8; message.len()];
        s.read_exact(&mut echoed).await?;
        Ok((response, echoed))
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.context("WebSocket exchange timed out")?
}

pub(crate) fn parse_response(buf: &[u8]) -> anyhow::Result<HttpResponse> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers in response")?;
    let mut lines = head.lines();
    let status_line = lines.next().context("empty response")?;
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
