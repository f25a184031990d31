//! Test PKI (rcgen) and TLS plumbing for conformance: a CA, server certificates, an echo
//! backend behind TLS, and a TLS client that sends one HTTP/1.1 request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::HttpResponse;
use crate::echo::{self, EchoState};

/// A throwaway certificate authority.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// A certificate and its key, PEM, and where they were written.
#[derive(Clone, Debug)]
pub struct Cert {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl Pki {
    /// A new CA.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_pem = cert.pem();
        Ok(Self { issuer: Issuer::new(params, key), ca_pem })
    }

    /// A server certificate for `names` (DNS SANs).
    pub fn server_cert(&self, names: &[&str]) -> anyhow::Result<Cert> {
        let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Cert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate for `name` (a DNS SAN), for mutual TLS.
    pub fn client_cert(&self, name: &str) -> anyhow::Result<Cert> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Cert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, &self.ca_pem)?;
        Ok(p)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves the echo backend over TLS with `cert` until the task is aborted.
pub async fn serve_echo_tls(
    listener: TcpListener,
    name: Arc<str>,
    state: Arc<EchoState>,
    cert: Cert,
) -> anyhow::Result<()> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let acceptor = acceptor.clone();
        let (name, state) = (Arc::clone(&name), Arc::clone(&state));
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                echo::handle_stream(tls, name, state).await;
            }
        });
    }
}

/// One HTTP/1.1 GET over TLS to `addr`, with SNI `sni`, trusting `ca_pem`.
pub async fn tls_request(addr: SocketAddr, sni: &str, ca_pem: &str, path: &str) -> anyhow::Result<HttpResponse> {
    tls_request_as(addr, sni, ca_pem, None, path).await
}

/// A TLS client trusting `ca_pem`, presenting `client` when given.
pub fn client_config(ca_pem: &str, client: Option<&Cert>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// [`tls_request`] presenting a client certificate (`client`: chain and key, PEM).
pub async fn tls_request_as(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    client: Option<&Cert>,
    path: &str,
) -> anyhow::Result<HttpResponse> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, client)?);
    let fut = async {
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let mut tls = connector.connect(ServerName::try_from(sni.to_string())?, tcp).await.context("TLS handshake")?;
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        // A peer that closes without close_notify still delivered the response.
        let _ = tls.read_to_end(&mut buf).await;
        crate::parse_response(&buf)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), fut).await.context("TLS request timed out")?
}

/// A TLS handshake to `addr` trusting `ca_pem`, presenting `client` (certificate chain
/// and key, PEM) if given; `Ok` when the server accepted it.
pub async fn handshake(addr: SocketAddr, sni: &str, ca_pem: &str, client: Option<(&str, &str)>) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(ServerName::try_from(sni.to_string())?, tcp).await.context("TLS handshake")?;
    // TLS 1.3 reports a rejected client certificate after the handshake: read to see it.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => anyhow::bail!("closed by the server"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(()),
    }
}

/// A Kubernetes TLS Secret (YAML) holding `cert`, and `ca_pem` as `ca.crt` when given.
pub fn secret_yaml(namespace: &str, name: &str, cert: Option<&Cert>, ca_pem: Option<&str>) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut data = Vec::new();
    if let Some(c) = cert {
        data.push(format!("tls.crt: {}", b(&c.cert_pem)));
        data.push(format!("tls.key: {}", b(&c.key_pem)));
    }
    if let Some(ca) = ca_pem {
        data.push(format!("ca.crt: {}", b(ca)));
    }
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\ndata: {{{}}}\n",
        data.join(", ")
    )
}

/// A PEM CSR with a fresh key, asking for `uri` as its SAN.
pub fn csr_pem(uri: &str) -> anyhow::Result<String> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into()?));
    let key = KeyPair::generate()?;
    Ok(params.serialize_request(&key)?.pem()?)
}

/// The URI SANs of a PEM certificate.
pub fn uri_sans(pem: &str) -> anyhow::Result<Vec<String>> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    Ok(spar_ca::identities_in(der.as_ref()).iter().map(ToString::to_string).collect())
}

/// The serial number of a PEM certificate as Envoy's /certs prints it (lower-case hex).
pub fn serial_hex(pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    let (_, cert) = x509_parser_lite(der.as_ref())?;
    Ok(cert)
}

fn x509_parser_lite(der: &[u8]) -> anyhow::Result<((), String)> {
    // TBSCertificate: SEQUENCE { [0] version, INTEGER serial, ... }: read the serial.
    fn read_len(d: &[u8], i: &mut usize) -> anyhow::Result<usize> {
        let b = *d.get(*i).ok_or_else(|| anyhow::anyhow!("short"))?;
        *i += 1;
        if b < 0x80 {
            return Ok(usize::from(b));
        }
        let n = usize::from(b & 0x7f);
        let mut len = 0usize;
        for _ in 0..n {
            len = (len << 8) | usize::from(*d.get(*i).ok_or_else(|| anyhow::anyhow!("short"))?);
            *i += 1;
        }
        Ok(len)
    }
    let mut i = 1; // outer SEQUENCE
    read_len(der, &mut i)?;
    i += 1; // tbs SEQUENCE
    read_len(der, &mut i)?;
    if der.get(i) == Some(&0xa0) {
        i += 1;
        let l = read_len(der, &mut i)?;
        i += l;
    }
    anyhow::ensure!(der.get(i) == Some(&0x02), "no serial");
    i += 1;
    let l = read_len(der, &mut i)?;
    let mut serial = &der[i..i + l];
    while serial.len() > 1 && serial[0] == 0 {
        serial = &serial[1..];
    }
    Ok(((), serial.iter().map(|b| format!("{b:02x}")).collect()))
}
