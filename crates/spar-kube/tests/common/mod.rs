//! What the tests against the fake API server share: a client for it, and waiting.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use spar_kube_fake::FakeApiServer;

/// A kube client of `server`, through a kubeconfig written under the system temp
/// directory (`tag` keeps the tests of one process apart).
pub async fn client(server: &FakeApiServer, tag: &str) -> kube::Client {
    let dir = std::env::temp_dir().join(format!("spar-kube-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("kubeconfig-{}", server.url().rsplit(':').next().unwrap_or("0")));
    std::fs::write(&path, server.kubeconfig()).expect("kubeconfig");
    spar_kube::client(Some(&path)).await.expect("client")
}

/// Waits up to 20 s for `check` to hold, polling every 50 ms.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
