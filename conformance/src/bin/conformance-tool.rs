//! Helpers that run inside a pod's network namespace in capture-mode tests:
//! `echo NAME ADDR` serves the echo backend; `get URL HOST [HEADER=VALUE...]` sends one
//! request and prints the answering backend and status as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => {
            let name = args.get(1).cloned().unwrap_or_else(|| "echo".into());
            let addr: SocketAddr = args.get(2).map_or("0.0.0.0:8080", String::as_str).parse()?;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            spar_conformance::echo::serve(
                listener,
                Arc::from(name.as_str()),
                spar_conformance::echo::state(Default::default()),
            )
            .await;
            Ok(())
        }
        Some("get") => {
            let addr: SocketAddr = args.get(1).map_or("", String::as_str).parse()?;
            let host = args.get(2).cloned().unwrap_or_default();
            let headers: Vec<(String, String)> = args
                .iter()
                .skip(3)
                .filter_map(|h| h.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let r = spar_conformance::http_request(addr, "GET", &host, "/", &hs).await?;
            println!("{}", serde_json::json!({"status": r.status, "backend": r.backend(), "body": r.body}));
            Ok(())
        }
        _ => anyhow::bail!("usage: conformance-tool echo NAME ADDR | get ADDR HOST [HEADER=VALUE...]"),
    }
}
