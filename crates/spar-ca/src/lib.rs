//! Spar's certificate authority.
//!
//! ```text
//!   CA dir ──load_or_create──► Ca { signer (root or plugged-in intermediate), chain, trust bundle }
//!                                 │ issue(identity, ttl)       → leaf + chain, fresh key (SDS `default`)
//!                                 │ sign_csr(csr, identity)    → leaf + chain (Istio CSR API)
//!                                 └ trust_bundle_pem()          → every trusted root (SDS `ROOTCA`)
//! ```
//!
//! Two layouts are read from the CA directory:
//! - Istio's `cacerts` (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`):
//!   an operator-provided intermediate; Spar signs with it and serves its chain;
//! - Spar's own self-signed root (`root-cert.pem`, `root-key.pem`), created on first start
//!   and reused afterwards, so a restart keeps the same root.
//!
//! `trust-bundle.pem`, when present, adds roots that are trusted besides the signing root:
//! that is the overlap window of a root rotation (trust old and new, then switch signing).
//! The identity in a certificate is always the one the caller proved; nothing in a CSR
//! chooses it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A workload identity: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Trust domain, `cluster.local` by default.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl Identity {
    /// An identity in `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self { trust_domain: trust_domain.into(), namespace: namespace.into(), service_account: service_account.into() }
    }

    /// Parses a SPIFFE URI of Istio's form.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !td.is_empty() && !ns.is_empty() && !sa.is_empty() =>
            {
                Some(Self::new(td, ns, sa))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// CA failures.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the CA directory failed.
    #[error("CA directory {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be parsed or produced.
    #[error("{0}")]
    Cert(String),
    /// A certificate signing request does not parse (the caller's fault, not the CA's).
    #[error("invalid CSR: {0}")]
    Csr(String),
}

fn cert_err(e: impl fmt::Display) -> CaError {
    CaError::Cert(e.to_string())
}

/// A certificate chain (leaf first) with its private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Leaf first, then intermediates, up to (and including) the root.
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8 PEM); empty for CSR-signed certificates.
    pub key_pem: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// When it was issued (its `not_before`, backdated a minute for clock skew).
    pub not_before: SystemTime,
}

impl Issued {
    /// When to replace it: after 80% of its lifetime (counted from issuance, not from the
    /// backdated `not_before`), as Istio's agent does by default.
    pub fn refresh_at(&self) -> SystemTime {
        let issued = self.not_before + SKEW;
        let life = self.not_after.duration_since(issued).unwrap_or_default();
        issued + life.mul_f64(0.8)
    }
}

/// The certificate authority.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and the chain above it (PEM, signing cert first).
    chain_pem: String,
    /// Every trusted root (PEM, concatenated).
    bundle_pem: String,
    /// Expiry of the first trusted root (`root-cert.pem`), Unix seconds.
    root_not_after: Option<i64>,
    /// Expiry of the signing certificate when it is not a trusted root itself (a
    /// plugged-in intermediate), Unix seconds.
    intermediate_not_after: Option<i64>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Option<String>, CaError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io { path: path.to_path_buf(), source }),
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    let io = |source| CaError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// Default root lifetime: ten years, as istiod's self-signed root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are backdated this much so that small clock differences do not matter.
const SKEW: Duration = Duration::from_secs(60);

impl Ca {
    /// Loads the CA from `dir` (Istio `cacerts` layout, or Spar's own root), creating and
    /// persisting a self-signed root when the directory holds neither.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io { path: dir.to_path_buf(), source })?;
        let extra = read(&dir.join("trust-bundle.pem"))?.unwrap_or_default();
        if let (Some(cert), Some(key)) = (read(&dir.join("ca-cert.pem"))?, read(&dir.join("ca-key.pem"))?) {
            let chain = read(&dir.join("cert-chain.pem"))?.unwrap_or_else(|| cert.clone());
            let root = read(&dir.join("root-cert.pem"))?.unwrap_or_else(|| cert.clone());
            return Self::from_pem(trust_domain, &cert, &key, &chain, &format!("{root}{extra}"));
        }
        let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        let (cert, key) = match (read(&cert_path)?, read(&key_path)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let (c, k) = Self::new_root_pem(trust_domain)?;
                write_private(&key_path, &k)?;
                write_private(&cert_path, &c)?;
                (c, k)
            }
        };
        Self::from_pem(trust_domain, &cert, &key, &cert, &format!("{cert}{extra}"))
    }

    /// A new self-signed root (certificate and key, PEM).
    pub fn new_root_pem(trust_domain: &str) -> Result<(String, String), CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::OrganizationName, trust_domain);
        // A distinct name per root, so that old and new roots trusted side by side during
        // a rotation are never confused when chains are built.
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        params.distinguished_name.push(DnType::CommonName, format!("Spar root CA {stamp:x}"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = offset(now - SKEW);
        params.not_after = offset(now + ROOT_TTL);
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CA from PEM material: the signing certificate and key, the chain from the signing
    /// certificate up (signing certificate first), and the trusted roots.
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
        bundle_pem: &str,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        // The key must be the certificate's (a half-written rotation must not sign).
        let der = pem_to_der(cert_pem)
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Cert("no certificate in the CA certificate file".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(cert_err)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Cert("the CA key does not belong to the CA certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_err)?;
        let roots = pem_to_der(bundle_pem);
        let intermediate_not_after = if roots.contains(&der) { None } else { not_after_unix(&der) };
        Ok(Self {
            trust_domain: trust_domain.into(),
            issuer,
            chain_pem: ensure_newline(chain_pem),
            bundle_pem: ensure_newline(bundle_pem),
            root_not_after: roots.first().and_then(|d| not_after_unix(d)),
            intermediate_not_after,
        })
    }

    /// Trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Every trusted root, PEM (the `ROOTCA` secret and the xDS server's client roots).
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// When the first trusted root (`root-cert.pem`) expires, Unix seconds (istiod's
    /// `citadel_server_root_cert_expiry_timestamp`); `None` if it does not parse.
    pub fn root_expiry_unix(&self) -> Option<i64> {
        self.root_not_after
    }

    /// When the signing certificate expires, Unix seconds, if Spar signs with a plugged-in
    /// intermediate (istiod's `citadel_server_cert_chain_expiry_timestamp`); `None` when
    /// it signs with a trusted root itself.
    pub fn intermediate_expiry_unix(&self) -> Option<i64> {
        self.intermediate_not_after
    }

    fn leaf_params(
        &self,
        id: &Identity,
        ttl: Duration,
    ) -> Result<(CertificateParams, SystemTime, SystemTime), CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let uri = id.to_string();
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().map_err(cert_err)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let (nb, na) = (now - SKEW, now + ttl);
        params.not_before = offset(nb);
        params.not_after = offset(na);
        Ok((params, nb, na))
    }

    /// Issues a certificate with a fresh key for `id`, valid for `ttl`.
    pub fn issue(&self, id: &Identity, ttl: Duration) -> Result<Issued, CaError> {
        self.issue_with_dns(id, &[], ttl)
    }

    /// Like [`Ca::issue`], with DNS names beside the SPIFFE identity (serving certificates).
    pub fn issue_with_dns(&self, id: &Identity, dns: &[&str], ttl: Duration) -> Result<Issued, CaError> {
        let (mut params, not_before, not_after) = self.leaf_params(id, ttl)?;
        for d in dns {
            params.subject_alt_names.push(SanType::DnsName((*d).try_into().map_err(cert_err)?));
        }
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            not_after,
            not_before,
        })
    }

    /// Signs a CSR for `id` (the proven identity; whatever the CSR asks for is ignored
    /// apart from its public key), valid for `ttl`.
    pub fn sign_csr(&self, csr_pem: &str, id: &Identity, ttl: Duration) -> Result<Issued, CaError> {
        self.sign_csr_for_pod(csr_pem, id, None, ttl, None)
    }

    /// Like [`Ca::sign_csr`], and when `pod` is given the certificate names the pod whose
    /// token was the proof ([`pod_binding_in`] reads it back), so that whoever accepts it
    /// can refuse it once that pod is gone. `chain_start` (seconds since the epoch) is
    /// when the chain of renewals this one continues began ([`chain_start_in`] reads it
    /// back): a certificate renewed with a certificate carries its predecessor's.
    pub fn sign_csr_for_pod(
        &self,
        csr_pem: &str,
        id: &Identity,
        pod: Option<&PodBinding>,
        ttl: Duration,
        chain_start: Option<u64>,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::Csr(e.to_string()))?;
        let (mut params, not_before, not_after) = self.leaf_params(id, ttl)?;
        if let Some(pod) = pod {
            params.distinguished_name.push(DnType::OrganizationalUnitName, pod.to_string());
        }
        if let Some(start) = chain_start {
            params
                .distinguished_name
                .push(DnType::CustomDnType(DN_QUALIFIER.to_vec()), format!("{CHAIN_PREFIX}{start}"));
        }
        let csr = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = csr.signed_by(&self.issuer).map_err(cert_err)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: String::new(),
            not_after,
            not_before,
        })
    }
}

fn ensure_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') { s.to_string() } else { format!("{s}\n") }
}

/// The SPIFFE identities in a DER certificate's URI SANs.
pub fn identities_in(cert_der: &[u8]) -> Vec<Identity> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Identity::parse(u),
            _ => None,
        })
        .collect()
}

/// What a table shows of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, RFC 2822.
    pub not_after: String,
    /// The SPIFFE identity (first URI SAN), else the subject.
    pub identity: String,
}

/// The summary of a DER certificate (`None` if it does not parse).
pub fn describe_der(cert_der: &[u8]) -> Option<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let identity =
        identities_in(cert_der).first().map_or_else(|| cert.subject().to_string(), std::string::ToString::to_string);
    Some(CertSummary {
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_after: cert.validity().not_after.to_rfc2822().unwrap_or_else(|_| cert.validity().not_after.to_string()),
        identity,
    })
}

/// A DER certificate's `notAfter`, Unix seconds (`None` if it does not parse).
pub fn not_after_unix(cert_der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The pod a certificate was issued to (a pod-bound service-account token was the proof).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodBinding {
    /// Pod name.
    pub name: String,
    /// Pod UID: a pod recreated under the same name is another pod.
    pub uid: String,
}

/// How a binding is written in the subject's OU.
const POD_OU_PREFIX: &str = "spar-pod/";
/// How the start of a renewal chain is written: the subject's `dnQualifier` (2.5.4.46),
/// an attribute of its own (a name holds one value per attribute type, and the OU is the
/// pod binding's).
const CHAIN_PREFIX: &str = "spar-chain-start/";
const DN_QUALIFIER: [u64; 4] = [2, 5, 4, 46];

/// When the chain of renewals that led to this certificate began, in seconds since the
/// epoch: what the CA wrote when it renewed a certificate with a certificate, else the
/// certificate's own `notBefore` (a fresh proof began it).
pub fn chain_start_in(cert_der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let oid = x509_parser::der_parser::Oid::from(&DN_QUALIFIER).ok()?;
    let written =
        cert.subject().iter_by_oid(&oid).find_map(|a| a.as_str().ok()?.strip_prefix(CHAIN_PREFIX)?.parse::<u64>().ok());
    written.or_else(|| u64::try_from(cert.validity().not_before.timestamp()).ok())
}

impl fmt::Display for PodBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{POD_OU_PREFIX}{}/{}", self.name, self.uid)
    }
}

/// The pod binding in a DER certificate's subject, if it carries one.
pub fn pod_binding_in(cert_der: &[u8]) -> Option<PodBinding> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    cert.subject().iter_organizational_unit().find_map(|ou| {
        let (name, uid) = ou.as_str().ok()?.strip_prefix(POD_OU_PREFIX)?.split_once('/')?;
        (!name.is_empty() && !uid.is_empty()).then(|| PodBinding { name: name.into(), uid: uid.into() })
    })
}

/// A fresh key and a PEM certificate request for `id` (what a client sends to Istio's
/// CSR API). Returns `(key_pem, csr_pem)`.
pub fn new_csr(id: &Identity) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.subject_alt_names = vec![SanType::URI(id.to_string().as_str().try_into().map_err(cert_err)?)];
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_err)?))
}

/// The DER certificates in a PEM bundle.
pub fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// What is wrong with a credential a Secret holds, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// `tls.crt` holds no PEM certificate.
    #[error("no PEM certificate in tls.crt")]
    NoCertificate,
    /// `tls.crt` does not parse.
    #[error("tls.crt does not parse: {0}")]
    CertificateUnparsable(String),
    /// `tls.key` holds no PEM private key.
    #[error("no PEM private key in tls.key")]
    NoKey,
    /// `tls.key` is not the certificate's key.
    #[error("tls.key does not belong to the certificate in tls.crt")]
    KeyMismatch,
    /// `ca.crt` holds no PEM certificate.
    #[error("no PEM certificate in the CA bundle")]
    EmptyBundle,
    /// A certificate of `ca.crt` does not parse.
    #[error("a CA certificate does not parse: {0}")]
    BundleUnparsable(String),
}

/// Checks a serving credential (a Secret's `tls.crt` and `tls.key`) before it is handed
/// to a proxy: the certificate must parse, a private key must be there, and when the key
/// is one Spar can read (PKCS#8: ECDSA, Ed25519, RSA) it must belong to the certificate.
pub fn check_serving_pair(cert_pem: &str, key_pem: &str) -> Result<(), CredentialError> {
    let der = pem_to_der(cert_pem).into_iter().next().ok_or(CredentialError::NoCertificate)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CredentialError::CertificateUnparsable(e.to_string()))?;
    let has_key = x509_parser::pem::Pem::iter_from_buffer(key_pem.as_bytes())
        .filter_map(Result::ok)
        .any(|p| p.label.ends_with("PRIVATE KEY"));
    if !has_key {
        return Err(CredentialError::NoKey);
    }
    if let Ok(key) = KeyPair::from_pem(key_pem)
        && cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw()
    {
        return Err(CredentialError::KeyMismatch);
    }
    Ok(())
}

/// Checks a CA bundle (`ca.crt`): at least one PEM certificate, all of them parsing.
pub fn check_ca_bundle(pem: &str) -> Result<(), CredentialError> {
    let ders = pem_to_der(pem);
    if ders.is_empty() {
        return Err(CredentialError::EmptyBundle);
    }
    for d in &ders {
        x509_parser::parse_x509_certificate(d).map_err(|e| CredentialError::BundleUnparsable(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
