//! `spar bootstrap --token-file`: trade the pod's service-account token for the proxy's
//! xDS credential, before Envoy starts (the injected `spar-bootstrap` init container).
//!
//! ```text
//!   token file ──► CreateCertificate on 15012 (TLS, Spar verified by root + DNS name;
//!                  `authorization: Bearer <token>`) ──► TokenReview in Spar
//!              ◄── certificate for the reviewed ns/sa, naming the pod, long-lived
//!   Envoy ──► 15012 with that client certificate; refused once the pod is gone
//! ```
//!
//! Stock Envoy cannot re-read a token for each xDS stream, so the token is spent once, at
//! pod start, on a credential that is as good as the pod's existence: token rotation does
//! not matter afterwards, reconnects present the same certificate, and a deleted pod's
//! credential is refused by every Spar replica (they watch Pods).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spar_ca::Identity;
use spar_xds::csr::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The credential a token bought: the chain (leaf first) and its key, PEM.
#[derive(Debug)]
pub struct Credential {
    /// Leaf, intermediates, root.
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

/// What to ask for and where.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// Spar's secure xDS address, `host:port`.
    pub address: &'a str,
    /// The DNS name Spar's serving certificate must carry.
    pub server_name: &'a str,
    /// Trusted roots (the `istio-ca-root-cert` ConfigMap's `root-cert.pem`).
    pub root_pem: &'a str,
    /// The identity the proxy will claim (the token must prove the same).
    pub identity: &'a Identity,
    /// Lifetime asked for (Spar caps it).
    pub ttl: Duration,
    /// Keep trying this long (Spar may be starting too).
    pub wait: Duration,
}

/// Asks Spar for a credential with `token_file`'s token, retrying until `ex.wait` ends.
pub async fn fetch(ex: &Exchange<'_>, token_file: &Path) -> anyhow::Result<Credential> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        // Re-read each attempt: the kubelet may have rotated the token meanwhile.
        let result = match std::fs::read_to_string(token_file) {
            Ok(token) => once(ex, token.trim()).await,
            Err(e) => Err(anyhow::anyhow!("reading the token {}: {e}", token_file.display())),
        };
        match result {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() + delay < ex.wait => {
                eprintln!("spar bootstrap: no xDS credential yet from {}: {e:#}; retrying", ex.address);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context(format!("no xDS credential from {} within {:?}", ex.address, ex.wait))),
        }
    }
}

async fn once(ex: &Exchange<'_>, token: &str) -> anyhow::Result<Credential> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ex.root_pem))
        .domain_name(ex.server_name.to_string());
    let channel = Endpoint::from_shared(format!("https://{}", ex.address))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting")?;
    let (key_pem, csr) = spar_ca::new_csr(ex.identity)?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(ex.ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().context("the token")?);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("connecting")?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(spar_xds::csr::METHOD);
    let resp: tonic::Response<IstioCertificateResponse> = grpc
        .unary(req, path, tonic_prost::ProstCodec::default())
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
    let chain_pem: String = resp.into_inner().cert_chain.concat();
    let leaf = spar_ca::pem_to_der(&chain_pem).into_iter().next().context("Spar answered with no certificate")?;
    let got = spar_ca::identities_in(&leaf);
    if got.first() != Some(ex.identity) {
        bail!(
            "the token proves {} but the proxy is configured as {} (check --namespace and --service-account)",
            got.first().map_or_else(|| "no identity".to_string(), ToString::to_string),
            ex.identity
        );
    }
    Ok(Credential { chain_pem, key_pem })
}

/// Writes `xds-cert.pem`, `xds-key.pem` (mode 0600) and `root-cert.pem` into `dir`;
/// returns their paths in that order.
pub fn write_credential(
    dir: &Path,
    chain_pem: &str,
    key_pem: &str,
    root_pem: &str,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display())).map(|()| p)
    };
    let cert = write("xds-cert.pem", chain_pem)?;
    let key = write("xds-key.pem", key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    let root = write("root-cert.pem", root_pem)?;
    Ok((cert, key, root))
}
