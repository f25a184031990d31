//! A tiny HTTP/1.1 echo backend: answers every request with its own name (header
//! `x-echo-name` and JSON body) and what it received (method, path, headers).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(handle(stream, Arc::clone(&name)));
    }
}

async fn handle(stream: TcpStream, name: Arc<str>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = BTreeMap::new();
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                headers.insert(k, v.trim().to_string());
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length];
            if tokio::io::AsyncReadExt::read_exact(&mut r, &mut body).await.is_err() {
                return;
            }
        }
        let close = headers.get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = serde_json::json!({"name": &*name, "method": method, "path": path, "headers": headers}).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo-name: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}
