//! Identity and mutual TLS with real Envoys and real TLS: Spar's CA, authenticated xDS on
//! the secure port, SDS certificates, auto mTLS and PeerAuthentication.

use std::net::SocketAddr;
use std::time::Duration;

use spar_conformance::{Envoy, Harness, Pod, both_variants_mod, http_request, tally, wait_for};

#[path = "security/authz.rs"]
mod authz;
use authz::*;

const CONVERGE: Duration = Duration::from_secs(20);

const SUBSETS: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend}\nspec:\n  host: backend\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

struct Mesh {
    h: Harness,
    client: Envoy,
    backends: Vec<Pod>,
}

async fn start(name: &str, delta: bool, ttl: &str) -> anyhow::Result<Mesh> {
    let mut h = Harness::new(name, delta)?.with_security(ttl);
    h.load_case("traffic")?;
    h.write_config("destination-rule.yaml", SUBSETS)?;
    h.start_spar(&[]).await?;
    let mut backends = Vec::new();
    for v in ["v1", "v2"] {
        let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        h.start_sidecar(&pod).await?;
        backends.push(pod);
    }
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let to = SocketAddr::new(client.ip, 9080);
    wait_for(CONVERGE, "mesh routes", || async {
        http_request(to, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    Ok(Mesh { h, client, backends })
}

fn body(r: &spar_conformance::HttpResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_default()
}

/// Sidecars talk mTLS by default; the server side sees the client's SPIFFE identity.
async fn mtls_by_default(delta: bool) -> anyhow::Result<()> {
    let mut m = start("mtls", delta, "24h").await?;
    let r = http_request(SocketAddr::new(m.client.ip, 9080), "GET", "backend", "/", &[]).await?;
    let xfcc = body(&r)["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"), "XFCC names the client: {xfcc:?}");
    let handshakes = m.client.stat("cluster.outbound|9080||backend.default.svc.cluster.local.ssl.handshake").await?;
    assert!(handshakes > 0, "the client's sidecar originated TLS");
    // The certificates came over SDS, issued for the proven identity.
    let (_, certs) = m.client.admin_get("/certs").await?;
    assert!(certs.contains("spiffe://cluster.local/ns/default/sa/client"), "{certs}");
    // `spar proxy-config client secrets` shows the same certificates as Envoy holds:
    // the workload certificate (serial, identity) and the trust bundle, no key material.
    let out = tokio::process::Command::new(spar_conformance::spar_bin()?)
        .args(["proxy-config", "client", "secrets", "--debug-address", &m.h.debug_address().to_string()])
        .args(["--envoy-admin", &m.client.admin.to_string(), "-o", "json"])
        .output()
        .await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(out.status.success(), "spar and Envoy differ: {json}");
    let secrets = json["envoy"]["secrets"].as_array().cloned().unwrap_or_default();
    assert_eq!(json["spar"]["secrets"], json["envoy"]["secrets"], "{json}");
    let kinds: Vec<(&str, &str)> =
        secrets.iter().map(|r| (r["kind"].as_str().unwrap_or(""), r["identity"].as_str().unwrap_or(""))).collect();
    assert!(kinds.contains(&("certificate", "spiffe://cluster.local/ns/default/sa/client")), "{json}");
    assert!(kinds.iter().any(|(k, _)| *k == "trust bundle"), "{json}");
    assert!(!json.to_string().contains("PRIVATE KEY"), "no key material: {json}");
    // istiod's CA metrics: every sidecar's SDS certificate was a request and an issuance,
    // nothing failed, and the root's expiry is the one in the CA directory.
    let metrics = spar_conformance::spar_metrics(m.h.debug_address()).await?;
    let value = |series: &str| spar_conformance::metric_value(&metrics, series);
    let sidecars = 1.0 + m.backends.len() as f64;
    let issued = value("citadel_server_success_cert_issuance_count").unwrap_or(0.0);
    assert!(issued >= sidecars, "{issued} certificates for {sidecars} sidecars:\n{metrics}");
    assert!(value("citadel_server_csr_count").unwrap_or(0.0) >= issued, "{metrics}");
    for zero in [
        "citadel_server_csr_sign_err_count{error=\"CSR_ERROR\"}",
        "citadel_server_csr_sign_err_count{error=\"CERT_GEN_ERROR\"}",
        "citadel_server_csr_parsing_err_count",
        "citadel_server_authentication_failure_count",
    ] {
        assert_eq!(value(zero), Some(0.0), "{zero}:\n{metrics}");
    }
    let root = root_expiry(&m.h)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as f64;
    assert!(root > now, "the root expires in the future: {root}");
    assert_eq!(value("citadel_server_root_cert_expiry_timestamp"), Some(root), "{metrics}");
    let left = value("citadel_server_root_cert_expiry_seconds").unwrap_or(0.0);
    assert!((left - (root - now)).abs() < 60.0, "{left} s left:\n{metrics}");
    assert!(!metrics.contains("citadel_server_cert_chain_expiry"), "Spar's own root signs: no chain:\n{metrics}");
    // The CA panels of the Grafana dashboard query series Spar exports when it runs its CA.
    let queried = spar_conformance::dashboard_series()?;
    let ca_series: Vec<&String> = queried.iter().filter(|n| n.starts_with("citadel_")).collect();
    assert!(!ca_series.is_empty(), "the dashboard has CA panels: {queried:?}");
    for name in ca_series {
        assert!(spar_conformance::exports(&metrics, name), "the dashboard queries {name}:\n{metrics}");
    }
    m.h.check_alive()
}

/// The notAfter, Unix seconds, of the root certificate in the harness's CA directory.
fn root_expiry(h: &Harness) -> anyhow::Result<f64> {
    let pem = std::fs::read_to_string(h.ca_dir().join("root-cert.pem"))?;
    let der = spar_ca::pem_to_der(&pem).into_iter().next().ok_or_else(|| anyhow::anyhow!("no root certificate"))?;
    let at = spar_ca::not_after_unix(&der).ok_or_else(|| anyhow::anyhow!("the root does not parse"))?;
    Ok(at as f64)
}

fn peer_auth(name: &str, selector: Option<&str>, mode: &str, port_level: Option<(u16, &str)>) -> String {
    let mut s =
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\nspec:\n");
    if let Some(app) = selector {
        s.push_str(&format!("  selector: {{matchLabels: {{app: {app}}}}}\n"));
    }
    s.push_str(&format!("  mtls: {{mode: {mode}}}\n"));
    if let Some((port, m)) = port_level {
        s.push_str(&format!("  portLevelMtls:\n    {port}: {{mode: {m}}}\n"));
    }
    s
}

/// STRICT refuses plain text, PERMISSIVE takes both, a port-level override wins.
async fn strict_and_permissive(delta: bool) -> anyhow::Result<()> {
    let mut m = start("peerauth", delta, "24h").await?;
    let backend = SocketAddr::new(m.backends[0].ip, 9080);
    let through_mesh = SocketAddr::new(m.client.ip, 9080);
    // Default PERMISSIVE: a plain-text client (this test) reaches the backend directly.
    assert_eq!(http_request(backend, "GET", "backend", "/", &[]).await?.status, 200);
    m.h.write_config("peer-authentication.yaml", &peer_auth("default", None, "STRICT", None))?;
    wait_for(CONVERGE, "STRICT to refuse plain text", || async {
        http_request(backend, "GET", "backend", "/", &[]).await.is_err()
    })
    .await?;
    let counts = tally(through_mesh, "backend", "/", &[], 10).await?;
    assert_eq!(counts.values().sum::<usize>(), 10, "mTLS from the client's sidecar still works: {counts:?}");
    assert!(counts.keys().all(|k| k.starts_with("backend-")), "{counts:?}");
    // A workload policy with a port-level PERMISSIVE override for 9080.
    m.h.write_config(
        "peer-authentication-backend.yaml",
        &peer_auth("backend", Some("backend"), "STRICT", Some((9080, "PERMISSIVE"))),
    )?;
    wait_for(CONVERGE, "the port-level override", || async {
        http_request(backend, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    m.h.check_alive()
}

/// A proxy whose credential proves one identity but whose metadata claims another gets
/// nothing; clients without a credential, with a forged one or an expired one are refused.
async fn refused_identities(delta: bool) -> anyhow::Result<()> {
    use spar_conformance::tls::{Pki, handshake};
    let mut m = start("identity", delta, "24h").await?;
    let h = &mut m.h;
    // Mint a credential for sa "backend", then claim sa "client" with it.
    let honest = h.pod("impostor", &[("app", "impostor")]);
    let mut as_backend = honest.clone();
    as_backend.service_account = "backend".into();
    let _ = h.bootstrap(&as_backend).await?; // mints impostor-credential for sa backend
    let mut claim = honest.clone();
    claim.service_account = "client".into();
    let cred = h.dir.join("impostor-credential");
    let mut b = h.bootstrap(&Pod { name: "impostor-claim".into(), ..claim.clone() }).await?;
    let tls = &mut b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"]
        [0];
    tls["certificate_chain"]["filename"] = serde_json::json!(cred.join("xds-cert.pem").display().to_string());
    tls["private_key"]["filename"] = serde_json::json!(cred.join("xds-key.pem").display().to_string());
    let impostor = h.start_envoy_with(&claim, &b).await?;
    wait_for(CONVERGE, "spar to refuse the impostor", || async {
        h.spar_log().contains("refused: node metadata claims another identity")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(impostor.stat("cluster_manager.active_clusters").await?, 1, "only the static xds-grpc cluster");
    let (_, certs) = impostor.admin_get("/certs").await?;
    assert!(
        !certs.contains("spiffe://cluster.local/ns/default/sa/client"),
        "no certificate for the claimed identity: {certs}"
    );

    let secure = h.secure_xds();
    let ca = std::fs::read_to_string(h.ca_dir().join("root-cert.pem"))?;
    // No client certificate.
    assert!(handshake(secure, "spar", &ca, None).await.is_err(), "unauthenticated client refused");
    // A certificate from another CA claiming a mesh identity.
    let forger = Pki::new("forger")?;
    let fake = forger.server_cert(&["client"])?;
    assert!(
        handshake(secure, "spar", &ca, Some((&fake.cert_pem, &fake.key_pem))).await.is_err(),
        "forged credential refused"
    );
    // A genuine but expired credential.
    let expired = h.dir.join("expired-credential");
    let out = tokio::process::Command::new(spar_conformance::spar_bin()?)
        .args([
            "bootstrap",
            "--name",
            "x",
            "--ip",
            "127.0.0.1",
            "--service-account",
            "client",
            "--credential-ttl",
            "1s",
            "--ca-dir",
        ])
        .arg(h.ca_dir())
        .arg("--credential-dir")
        .arg(&expired)
        .output()
        .await?;
    assert!(out.status.success());
    let valid =
        (std::fs::read_to_string(expired.join("xds-cert.pem"))?, std::fs::read_to_string(expired.join("xds-key.pem"))?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(handshake(secure, "spar", &ca, Some((&valid.0, &valid.1))).await.is_err(), "expired credential refused");
    // And a valid one is accepted (the checks above are not vacuous).
    let good = h.dir.join("client-credential");
    let chain = std::fs::read_to_string(good.join("xds-cert.pem"))?;
    let key = std::fs::read_to_string(good.join("xds-key.pem"))?;
    handshake(secure, "spar", &ca, Some((&chain, &key))).await?;
    m.h.check_alive()
}

/// Certificates rotate under a short TTL while requests keep flowing, with no failure.
async fn rotation_without_failures(delta: bool) -> anyhow::Result<()> {
    let mut m = start("rotation", delta, "8s").await?;
    // Every serial number Envoy holds (the static xDS credential and the SDS certificate).
    let serial = |certs: &str| {
        certs
            .lines()
            .filter(|l| l.contains("serial_number"))
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (_, first) = m.client.admin_get("/certs").await?;
    let to = SocketAddr::new(m.client.ip, 9080);
    let started = std::time::Instant::now();
    let (mut ok, mut failed) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(20) {
        match http_request(to, "GET", "backend", "/", &[]).await {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(format!("status {}", r.status)),
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, last) = m.client.admin_get("/certs").await?;
    assert_ne!(serial(&first), serial(&last), "the workload certificate was replaced");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across rotations: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100);
    m.h.check_alive()
}

both_variants_mod!(mtls, mtls_by_default);
both_variants_mod!(peer_authentication, strict_and_permissive);
both_variants_mod!(identity, refused_identities);
both_variants_mod!(rotation, rotation_without_failures);

/// Istio's CSR API on the secure port: an authenticated caller gets a chain for its own
/// identity (leaf first, root last), whatever its CSR asks for.
async fn csr_api(_delta: bool) -> anyhow::Result<()> {
    use spar_xds::csr::{IstioCertificateRequest, IstioCertificateResponse};
    let mut h = Harness::new("csr", false)?.with_security("1h");
    h.load_case("traffic")?;
    h.start_spar(&[]).await?;
    let pod = h.pod("client", &[("app", "client")]);
    let _ = h.bootstrap(&pod).await?; // mints client-credential for sa "client"
    let cred = h.dir.join("client-credential");
    let ca = std::fs::read_to_string(h.ca_dir().join("root-cert.pem"))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(cred.join("xds-cert.pem"))?,
            std::fs::read(cred.join("xds-key.pem"))?,
        ))
        .domain_name("spar");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", h.secure_xds()))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    // A CSR asking for someone else's identity.
    let csr = spar_conformance::tls::csr_pem("spiffe://cluster.local/ns/kube-system/sa/admin")?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/istio.v1.auth.IstioCertificateService/CreateCertificate",
    );
    let resp: tonic::Response<IstioCertificateResponse> = grpc
        .unary(
            tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 600, metadata: None }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    let chain = resp.into_inner().cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain.last().map(|c| c.trim()), Some(ca.trim()), "root last");
    let leaf = spar_conformance::tls::uri_sans(&chain[0])?;
    assert_eq!(leaf, ["spiffe://cluster.local/ns/default/sa/client"], "the caller's identity, not the CSR's");
    // Without a client certificate there is no way in.
    let anon = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("spar");
    let refused = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", h.secure_xds()))?
            .tls_config(anon)?
            .connect()
            .await?;
        let mut g = tonic::client::Grpc::new(ch);
        g.ready().await?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/istio.v1.auth.IstioCertificateService/CreateCertificate",
        );
        let r: Result<tonic::Response<IstioCertificateResponse>, tonic::Status> = g
            .unary(tonic::Request::new(IstioCertificateRequest::default()), path, tonic_prost::ProstCodec::default())
            .await;
        anyhow::Ok(r.is_ok())
    };
    assert!(!refused.await.unwrap_or(false), "an unauthenticated caller gets no certificate");
    // A CSR that does not parse: refused as the caller's error, and counted as istiod does.
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/istio.v1.auth.IstioCertificateService/CreateCertificate",
    );
    let garbage = IstioCertificateRequest { csr: "not a CSR".into(), validity_duration: 600, metadata: None };
    grpc.ready().await?;
    let r: Result<tonic::Response<IstioCertificateResponse>, tonic::Status> =
        grpc.unary(tonic::Request::new(garbage), path, tonic_prost::ProstCodec::default()).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    let metrics = spar_conformance::spar_metrics(h.debug_address()).await?;
    let value = |series: &str| spar_conformance::metric_value(&metrics, series);
    assert_eq!(value("citadel_server_csr_count"), Some(2.0), "{metrics}");
    assert_eq!(value("citadel_server_success_cert_issuance_count"), Some(1.0), "{metrics}");
    assert_eq!(value("citadel_server_csr_parsing_err_count"), Some(1.0), "{metrics}");
    assert_eq!(value("citadel_server_csr_sign_err_count{error=\"CSR_ERROR\"}"), Some(1.0), "{metrics}");
    assert_eq!(value("citadel_server_csr_sign_err_count{error=\"CERT_GEN_ERROR\"}"), Some(0.0), "{metrics}");
    h.check_alive()
}

mod csr {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_certificate() -> anyhow::Result<()> {
        super::csr_api(false).await
    }
}

both_variants_mod!(authorization_policy, authorization);
both_variants_mod!(dry_run_authorization_policy, dry_run_authorization);
both_variants_mod!(custom_authorization_policy, custom_authorization);
both_variants_mod!(request_authentication, jwt_policies);

/// Root rotation with an overlap window: add the new root to the trust bundle, then sign
/// with it while the old one is still trusted. Requests flow throughout with no failure
/// and the workload certificates end up signed by the new root.
async fn root_rotation(delta: bool) -> anyhow::Result<()> {
    let mut m = start("root-rotation", delta, "1h").await?;
    let ca_dir = m.h.ca_dir();
    let old_root = std::fs::read_to_string(ca_dir.join("root-cert.pem"))?;
    // Roots made in the same second expire in the same second, and the expiry metric
    // check below could not tell them apart: make the new one at least a second later.
    let old_expiry = spar_ca::not_after_unix(&spar_ca::pem_to_der(&old_root)[0]).unwrap_or_default();
    let (new_root, new_key) = loop {
        let (root, key) = spar_ca::Ca::new_root_pem("cluster.local")?;
        if spar_ca::not_after_unix(&spar_ca::pem_to_der(&root)[0]).unwrap_or_default() != old_expiry {
            break (root, key);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let to = SocketAddr::new(m.client.ip, 9080);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0usize, Vec::new());
        while !*stop_rx.borrow() {
            match http_request(to, "GET", "backend", "/", &[]).await {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("status {}", r.status)),
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    });
    let write = |name: &str, text: &str| std::fs::write(ca_dir.join(name), text);
    // 1. Trust both.
    write("trust-bundle.pem", &new_root)?;
    let client = m.client.clone();
    let new_serial = spar_conformance::tls::serial_hex(&new_root)?;
    wait_for(CONVERGE, "both roots in the client's trust bundle", || async {
        client
            .admin_get("/certs")
            .await
            .is_ok_and(|(_, c)| c.matches("serial_number").count() >= 3 && c.contains(&new_serial))
    })
    .await?;
    // Spar only ever signs with its current CA, so a workload certificate re-issued after
    // this point is signed by the new root: wait for the SDS certificate (the 1 h one,
    // not the month-long xDS credential) to change.
    let sds_leaf = |certs: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(certs).ok()?;
        v["certificates"].as_array()?.iter().flat_map(|c| c["cert_chain"].as_array().into_iter().flatten()).find_map(
            |e| {
                let days = e["days_until_expiration"]
                    .as_str()
                    .and_then(|d| d.parse::<u64>().ok())
                    .or(e["days_until_expiration"].as_u64())?;
                (days < 2).then(|| e["serial_number"].as_str().unwrap_or_default().to_string())
            },
        )
    };
    let before = sds_leaf(&client.admin_get("/certs").await?.1);
    anyhow::ensure!(before.is_some(), "no workload certificate found in /certs");
    // 2. Sign with the new root; the old one stays trusted.
    write("trust-bundle.pem", &old_root)?;
    write("root-key.pem", &new_key)?;
    write("root-cert.pem", &new_root)?;
    wait_for(CONVERGE, "a certificate signed by the new root", || async {
        client.admin_get("/certs").await.is_ok_and(|(_, c)| sds_leaf(&c).is_some_and(|s| Some(&s) != before.as_ref()))
    })
    .await?;
    // The root expiry metric follows the reload: the new root's notAfter.
    let new_expiry = root_expiry(&m.h)?;
    anyhow::ensure!(
        new_expiry != old_expiry as f64,
        "the two roots expire in the same second: the check would prove nothing"
    );
    let debug = m.h.debug_address();
    wait_for(CONVERGE, "citadel_server_root_cert_expiry_timestamp of the new root", || async {
        spar_conformance::spar_metrics(debug).await.is_ok_and(|t| {
            spar_conformance::metric_value(&t, "citadel_server_root_cert_expiry_timestamp") == Some(new_expiry)
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let (ok, failed) = load.await?;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "{ok} requests");
    m.h.check_alive()
}

both_variants_mod!(root_rotation_overlap, root_rotation);

/// TLS origination with `credentialName`: the CA comes from a Secret, over SDS, to a
/// proxy that proved it lives in the Secret's namespace.
async fn credential_name_origination(delta: bool) -> anyhow::Result<()> {
    use spar_conformance::tls::Pki;
    let pki = Pki::new("external CA")?;
    let mut h = Harness::new("credential-name", delta)?.with_security("24h");
    h.load_case("tls")?;
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    h.write_config(
        "origination.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: ext-ca}}\nstringData:\n  ca.crt: |\n{}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.example.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE, credentialName: ext-ca, sni: secure.example.com}}\n",
            indent(&pki.ca_pem)
        ),
    )?;
    h.start_spar(&[]).await?;
    let a = h.ip("tls-a");
    h.start_echo_tls("tls-a", SocketAddr::new(a, 8443), pki.server_cert(&["secure.example.com"])?).await?;
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let to = SocketAddr::new(client.ip, 9081);
    wait_for(CONVERGE, "origination with the Secret's CA", || async {
        http_request(to, "GET", "secure.example.com", "/", &[])
            .await
            .is_ok_and(|r| r.status == 200 && r.backend() == Some("tls-a"))
    })
    .await?;
    // The Secret is what Envoy verifies with: replace its CA and Envoy trusts the new one.
    let other = Pki::new("another CA")?;
    h.write_config(
        "origination.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: ext-ca}}\nstringData:\n  ca.crt: |\n{}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure}}\nspec:\n  host: secure.example.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE, credentialName: ext-ca, sni: secure.example.com}}\n",
            indent(&other.ca_pem)
        ),
    )?;
    // Open upstream connections keep their verified session (Envoy re-verifies on new
    // connections), so check what Envoy now trusts: the new CA, from the Secret.
    let other_serial = spar_conformance::tls::serial_hex(&other.ca_pem)?;
    let first_serial = spar_conformance::tls::serial_hex(&pki.ca_pem)?;
    wait_for(CONVERGE, "the Secret's new CA in Envoy", || async {
        client.admin_get("/certs").await.is_ok_and(|(_, c)| c.contains(&other_serial) && !c.contains(&first_serial))
    })
    .await?;
    h.check_alive()
}

both_variants_mod!(credential_name, credential_name_origination);
