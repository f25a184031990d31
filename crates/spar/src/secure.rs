//! The secure xDS port (15012): TLS with a client certificate issued by Spar's CA. The
//! certificate's SPIFFE identity is what the ADS server trusts; a client with a forged or
//! expired one, or with one from another CA, fails the handshake. Without Kubernetes a
//! client certificate is required; with it, a client may instead present its
//! service-account token (`spar_xds::auth`), and one with neither is refused per call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spar_ca::{Ca, Identity};
use spar_xds::sds::Security;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

/// Handshakes that take longer than this are dropped.
/// Lifetime of the control plane's own serving certificate (re-issued well before).
const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the CA directory is checked for a new root, intermediate or trust bundle.
const CA_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The control plane's own identity, which proxies verify on 15012.
pub fn control_plane_identity(trust_domain: &str, root_namespace: &str) -> Identity {
    Identity::new(trust_domain, root_namespace, "spar")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The DNS names of Spar's Services (`spar`, and `istiod` for Istio's clients) in
/// `namespace`, as clients that check the host name reach them.
pub fn service_dns_names(namespace: &str) -> Vec<String> {
    ["spar", "istiod"]
        .iter()
        .flat_map(|svc| [format!("{svc}.{namespace}.svc"), format!("{svc}.{namespace}.svc.cluster.local")])
        .collect()
}

/// Whether a client must present a certificate in the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Always (file mode: the certificate is the only proof).
    Required,
    /// Verified when presented; otherwise a token must prove the caller (Kubernetes).
    Optional,
}

/// rustls server config: our serving certificate, and client certificates verified
/// against every root of the trust bundle.
pub fn server_config(
    ca: &Ca,
    me: &Identity,
    client_certs: ClientCerts,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, SystemTime)> {
    // The SPIFFE identity is what proxies verify; the DNS names serve host-checking
    // clients (the `spar bootstrap` token exchange, istio-agent).
    let mut names = vec!["spar".to_string()];
    names.extend(service_dns_names(&me.namespace));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let issued = ca.issue_with_dns(me, &names, SERVER_CERT_TTL)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.trust_bundle_pem().as_bytes()) {
        roots.add(c?)?;
    }
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if client_certs == ClientCerts::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().context("client certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(cfg), issued.refresh_at()))
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop
/// (`crate::accept`); yields only connections whose client certificate verified.
pub fn incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<rustls::ServerConfig>>,
) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
    crate::accept::incoming(listener, "secure-xds", crate::accept::HANDSHAKE_TIMEOUT, move |tcp, peer| {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
        async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => Some(tls),
                Err(e) => {
                    info!(%peer, error = %e, "refused on the secure xDS port: TLS handshake failed");
                    None
                }
            }
        }
    })
}

fn stamp(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    ["root-cert.pem", "root-key.pem", "ca-cert.pem", "ca-key.pem", "cert-chain.pem", "trust-bundle.pem"]
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

/// Keeps the CA and the serving certificate current (and `bundle`, the trust bundle the
/// cluster is given): reloads the CA directory when its files change (root rotation: add
/// the new root to `trust-bundle.pem`, then swap the signing material, then drop the old
/// root), and re-issues the serving certificate before it expires.
pub async fn maintain(
    dir: PathBuf,
    trust_domain: String,
    (me, client_certs): (Identity, ClientCerts),
    security: Arc<Security>,
    bundle: watch::Sender<String>,
    config_tx: watch::Sender<Arc<rustls::ServerConfig>>,
    mut refresh_at: SystemTime,
) {
    let mut last = stamp(&dir);
    loop {
        tokio::time::sleep(CA_RELOAD_EVERY).await;
        let now = stamp(&dir);
        let ca_changed = now != last;
        if ca_changed {
            // Let a rotation that writes several files finish before reading them.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stamp(&dir) != now {
                continue;
            }
            last = now;
            match Ca::load_or_create(&dir, &trust_domain) {
                Ok(ca) => {
                    info!(dir = %dir.display(), "CA directory changed: reloaded; proxies get the new trust bundle and certificates");
                    let new_bundle = ca.trust_bundle_pem().to_string();
                    security.replace_ca(ca);
                    // Then the published istio-ca-root-cert ConfigMaps, the webhooks' caBundle
                    // and the webhook's serving certificate follow.
                    bundle.send_if_modified(|b| {
                        let changed = *b != new_bundle;
                        if changed {
                            *b = new_bundle;
                        }
                        changed
                    });
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "CA directory changed but cannot be loaded; keeping the previous CA");
                    continue;
                }
            }
        }
        if ca_changed || SystemTime::now() >= refresh_at {
            match server_config(&security.ca(), &me, client_certs) {
                Ok((cfg, at)) => {
                    refresh_at = at;
                    let _ = config_tx.send(cfg);
                }
                Err(e) => warn!(error = %e, "cannot renew the secure xDS serving certificate"),
            }
        }
    }
}
