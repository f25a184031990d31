//! The load client against a real `spar` (the debug build `make test` makes): a small
//! mesh through every phase of the benchmark, over SotW and delta. Checks that the
//! simulated proxies subscribe, decode and ACK well enough to reach full config, see
//! both changes and come back after the storm; the numbers themselves are not judged.

use std::time::Duration;

use spar_load::bench::{BenchOptions, run};
use spar_load::client::ClientOptions;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

async fn small_bench(delta: bool) -> String {
    let spar = spar_conformance::spar_bin().expect("the spar binary (cargo build --bin spar)");
    let workdir = std::env::temp_dir().join(format!("spar-load-bench-{}-{delta}", std::process::id()));
    let (port, debug_port) = (free_port(), free_port());
    let opts = BenchOptions {
        spar,
        workdir: workdir.clone(),
        services: 20,
        proxies: vec![6],
        big_services: 0,
        big_proxies: 0,
        namespaces: 2,
        replicas: 2,
        sidecar_scope: false,
        debounce: "50ms".into(),
        port,
        debug_port,
        timeout: Duration::from_secs(60),
        rss_limit_mb: 2000,
        client: ClientOptions {
            server: format!("http://127.0.0.1:{port}"),
            delta,
            source_addresses: 0,
            ..ClientOptions::default()
        },
    };
    let table = run(&opts).await.expect("the bench runs");
    let _ = std::fs::remove_dir_all(workdir);
    table
}

fn check(table: &str) {
    for row in [
        "proxies 1..6 to full config",
        "one endpoint change → ACKed by all 6 proxies",
        "one VirtualService change → ACKed by all 6 proxies",
        "reconnect storm: 6 proxies at once → all hold full config",
    ] {
        let line = table.lines().find(|l| l.contains(row)).unwrap_or_else(|| panic!("no row {row:?} in\n{table}"));
        assert!(!line.contains("not reached") && !line.contains(" of 6 ACKed)"), "{line}");
    }
    assert!(table.contains("6 of 6 proxies ACKed"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_proxies_reach_full_config_and_follow_changes() {
    check(&small_bench(false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_proxies_reach_full_config_and_follow_changes() {
    check(&small_bench(true).await);
}

/// Real Envoys (issue 7 e) on a small mesh: both timings of the endpoint changes are
/// taken, every Envoy applies and ACKs each change. The numbers are not judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_envoys_apply_and_ack_endpoint_changes() {
    let opts = spar_load::envoys::EnvoysOptions { services: 20, namespaces: 2, envoys: 2, delta: true, changes: 2 };
    let table = spar_load::envoys::run(&opts).await.expect("the Envoys apply and ACK every change");
    println!("{table}");
    for row in [
        "2 real Envoys (delta) × 20 services: all ready",
        "one endpoint change → applied by every Envoy",
        "one endpoint change → ACKed by every Envoy",
    ] {
        let line = table.lines().find(|l| l.contains(row)).unwrap_or_else(|| panic!("no row {row:?} in\n{table}"));
        assert!(line.contains(" ms |") || line.contains(" s |"), "{line}");
    }
}
