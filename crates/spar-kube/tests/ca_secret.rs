//! The CA kept in Secrets, against the in-process fake API server: replicas agree on one
//! root, `cacerts` wins, rotations rewrite the CA directory, malformed Secrets are reported
//! and change nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spar_kube::ca_secret::{self, CaSecretConfig, CaSecretStatus, CaSource};
use spar_kube_fake::FakeApiServer;
use tokio::sync::watch;

const NS: &str = "istio-system";
const WAIT: Duration = Duration::from_secs(20);

async fn client(server: &FakeApiServer, tag: &str) -> kube::Client {
    let path = tmp(&format!("kubeconfig-{tag}"));
    std::fs::write(&path, server.kubeconfig()).expect("kubeconfig");
    spar_kube::client(Some(&path)).await.expect("client")
}

/// A fresh path under the system temp directory, unique to this test process.
fn tmp(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("spar-kube-ca-secret-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("temp dir");
    let p = base.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// One replica's CA Secret follower, writing into its own directory.
struct Replica {
    dir: PathBuf,
    status: watch::Receiver<CaSecretStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(server: &FakeApiServer, name: &str) -> Self {
        let dir = tmp(name);
        let mut cfg = CaSecretConfig::new(NS, &dir, "cluster.local");
        cfg.retry = Duration::from_millis(200);
        let (tx, status) = watch::channel(CaSecretStatus::default());
        let task = tokio::spawn(ca_secret::run(client(server, name).await, cfg, tx));
        Self { dir, status, task }
    }

    async fn wait(&mut self, what: &str, f: impl Fn(&CaSecretStatus) -> bool) {
        let waited = tokio::time::timeout(WAIT, self.status.wait_for(|s| f(s))).await.map(|r| r.is_ok());
        assert_eq!(waited, Ok(true), "timed out waiting for: {what}; status {:?}", *self.status.borrow());
    }

    async fn wait_in_use(&mut self, source: CaSource) {
        self.wait(&format!("{source:?} in use"), |s| s.in_use == Some(source)).await;
    }

    fn file(&self, name: &str) -> String {
        read(&self.dir, name)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
        // It holds a CA key.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

use common::eventually;

fn secret(name: &str, data: &[(&str, &str)]) -> serde_json::Value {
    let s = Secret {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NS.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    serde_json::to_value(&s).expect("JSON")
}

/// Secret `cacerts` holding a new self-signed root (as `spar install --generate-ca` makes
/// one); returns its certificate.
fn plug_in(server: &FakeApiServer) -> String {
    let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
    let data =
        [("ca-cert.pem", cert.as_str()), ("ca-key.pem", &key), ("cert-chain.pem", &cert), ("root-cert.pem", &cert)];
    server.apply(secret(ca_secret::PLUGGED_IN, &data)).expect("cacerts");
    cert
}

/// A Secret's key, decoded.
fn secret_key(server: &FakeApiServer, name: &str, key: &str) -> Option<String> {
    let v = server.get("v1", "Secret", NS, name)?;
    let s: Secret = serde_json::from_value(v).expect("a Secret");
    s.data?.get(key).map(|b| String::from_utf8(b.0.clone()).expect("UTF-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_replica_creates_istio_ca_secret_and_the_next_one_reads_it() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let mut first = Replica::start(&server, "first").await;
    first.wait_in_use(CaSource::SelfSigned).await;

    // Istio's layout: the root as ca-cert.pem, its key as ca-key.pem, the rest empty.
    let stored = server.get("v1", "Secret", NS, ca_secret::SELF_SIGNED).expect("istio-ca-secret created");
    assert_eq!(stored["type"], ca_secret::SELF_SIGNED_TYPE);
    let root = secret_key(&server, ca_secret::SELF_SIGNED, "ca-cert.pem").expect("ca-cert.pem");
    assert_eq!(secret_key(&server, ca_secret::SELF_SIGNED, "root-cert.pem").as_deref(), Some(""));
    assert_eq!(first.file("root-cert.pem"), root);
    assert_eq!(first.file("ca-cert.pem"), root);
    assert_eq!(first.file("ca-key.pem"), secret_key(&server, ca_secret::SELF_SIGNED, "ca-key.pem").expect("key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(first.dir.join("ca-key.pem")).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    // Spar's CA loads the directory as it is (the `cacerts` layout, no root of its own).
    let ca = spar_ca::Ca::load_or_create(&first.dir, "cluster.local").expect("loads");
    assert_eq!(ca.trust_bundle_pem(), root);
    assert!(!first.dir.join("root-key.pem").exists());

    // A restart (or a second replica) reads the same root; nothing is created again.
    drop(first);
    let mut second = Replica::start(&server, "second").await;
    second.wait_in_use(CaSource::SelfSigned).await;
    assert_eq!(second.file("root-cert.pem"), root);
    let creates = server.requests().iter().filter(|r| r.starts_with("POST ") && r.contains("/secrets")).count();
    assert_eq!(creates, 1, "{:?}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_agree_on_one_root() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(&server, &format!("racer-{i}")).await);
    }
    for r in &mut replicas {
        r.wait_in_use(CaSource::SelfSigned).await;
    }
    let root = secret_key(&server, ca_secret::SELF_SIGNED, "ca-cert.pem").expect("one istio-ca-secret");
    for r in &replicas {
        assert_eq!(r.file("root-cert.pem"), root, "{}", r.dir.display());
        assert_eq!(r.status.borrow().problem, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_wins_and_is_never_written() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let (self_signed, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
    server
        .apply(secret(ca_secret::SELF_SIGNED, &[("ca-cert.pem", &self_signed), ("ca-key.pem", &key)]))
        .expect("istio-ca-secret");
    let plugged = plug_in(&server);
    let before = server.get("v1", "Secret", NS, ca_secret::PLUGGED_IN).expect("cacerts");

    let mut replica = Replica::start(&server, "plugged").await;
    replica.wait_in_use(CaSource::PluggedIn).await;
    assert_eq!(replica.file("ca-cert.pem"), plugged);
    assert_eq!(replica.file("root-cert.pem"), plugged);
    let after = server.get("v1", "Secret", NS, ca_secret::PLUGGED_IN).expect("cacerts");
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"], "cacerts is read only");
    let writes: Vec<String> =
        server.requests().into_iter().filter(|r| !r.starts_with("GET ") && r.contains("/secrets")).collect();
    assert!(writes.is_empty(), "no Secret is written while one exists: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_changes_rewrite_the_ca_directory() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let mut replica = Replica::start(&server, "rotating").await;
    replica.wait_in_use(CaSource::SelfSigned).await;
    let self_signed = replica.file("root-cert.pem");

    // The operator plugs in a CA: it replaces the self-signed root.
    let plugged = plug_in(&server);
    replica.wait_in_use(CaSource::PluggedIn).await;
    assert_eq!(replica.file("root-cert.pem"), plugged);
    assert_eq!(replica.file("ca-cert.pem"), plugged);

    // The operator rotates it.
    let rotated = plug_in(&server);
    eventually("the rotated cacerts written", || read(&replica.dir, "ca-cert.pem") == rotated).await;
    assert_eq!(replica.file("root-cert.pem"), rotated);
    spar_ca::Ca::load_or_create(&replica.dir, "cluster.local").expect("the rewritten directory loads");

    // The plug-in CA removed: back to istio-ca-secret, which was kept.
    server.delete("v1", "Secret", NS, ca_secret::PLUGGED_IN);
    replica.wait_in_use(CaSource::SelfSigned).await;
    assert_eq!(replica.file("root-cert.pem"), self_signed);

    // istio-ca-secret itself changes (another tool rotated it).
    let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
    server.apply(secret(ca_secret::SELF_SIGNED, &[("ca-cert.pem", &cert), ("ca-key.pem", &key)])).expect("rotate");
    eventually("the rotated istio-ca-secret written", || read(&replica.dir, "root-cert.pem") == cert).await;
    assert_eq!(replica.file("ca-key.pem"), key);

    // Both gone: the directory keeps what it has (a new root is only made at start).
    server.delete("v1", "Secret", NS, ca_secret::SELF_SIGNED);
    replica.wait("both gone reported", |s| s.problem.as_deref().is_some_and(|p| p.contains("exists any more"))).await;
    assert_eq!(replica.file("root-cert.pem"), cert);
    assert!(server.get("v1", "Secret", NS, ca_secret::SELF_SIGNED).is_none(), "not re-created while running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_secrets_are_reported_by_name_and_change_nothing() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let mut replica = Replica::start(&server, "malformed").await;
    replica.wait_in_use(CaSource::SelfSigned).await;
    let good = replica.file("root-cert.pem");

    // A cacerts whose key is not its certificate's.
    let (cert, _) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
    let (_, other_key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
    server
        .apply(secret(ca_secret::PLUGGED_IN, &[("ca-cert.pem", &cert), ("ca-key.pem", &other_key)]))
        .expect("bad cacerts");
    replica.wait("the bad cacerts reported", |s| s.problem.is_some()).await;
    let problem = replica.status.borrow().problem.clone().unwrap_or_default();
    assert!(problem.contains("Secret istio-system/cacerts is not a usable CA"), "{problem}");
    assert!(problem.contains("does not belong"), "{problem}");
    assert_eq!(replica.status.borrow().in_use, Some(CaSource::SelfSigned));
    assert_eq!(replica.file("root-cert.pem"), good, "files untouched");
    assert_eq!(replica.file("ca-cert.pem"), good, "files untouched");

    // Fixed: followed, and the problem cleared.
    let fixed = plug_in(&server);
    replica.wait("the fixed cacerts in use", |s| s.in_use == Some(CaSource::PluggedIn) && s.problem.is_none()).await;
    assert_eq!(replica.file("ca-cert.pem"), fixed);
    assert!(!replica.task.is_finished(), "the follower keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_cacerts_at_start_blocks_without_making_a_root() {
    let server = FakeApiServer::start().await.expect("fake API server");
    server.apply(secret(ca_secret::PLUGGED_IN, &[("ca-cert.pem", "not a certificate")])).expect("bad cacerts");
    let mut replica = Replica::start(&server, "blocked").await;
    replica.wait("the bad cacerts reported", |s| s.problem.is_some()).await;
    let status = replica.status.borrow().clone();
    assert_eq!(status.in_use, None);
    assert!(status.problem.as_deref().is_some_and(|p| p.contains("istio-system/cacerts")), "{status:?}");
    assert!(server.get("v1", "Secret", NS, ca_secret::SELF_SIGNED).is_none(), "cacerts' intent is respected");
    assert!(!replica.dir.join("ca-key.pem").exists());

    let fixed = plug_in(&server);
    replica.wait_in_use(CaSource::PluggedIn).await;
    assert_eq!(replica.file("ca-cert.pem"), fixed);
}
