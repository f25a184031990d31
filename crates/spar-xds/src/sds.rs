//! Workload certificates over SDS on the proxy's own ADS stream.
//!
//! A proxy that proved an identity (its xDS client certificate) gets two secrets:
//! `default` (its SVID and key, issued for the proven identity, never the claimed one)
//! and `ROOTCA` (the trust bundle). Each stream keeps its certificate and replaces it
//! after 80% of its lifetime; the push is an ordinary SDS update, so Envoy swaps it
//! without dropping connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
use spar_ca::{Ca, CaError, Identity, Issued};

use crate::resources::{ProxyResources, ResourceType};

pub use spar_generate::secret_names::{DEFAULT_SECRET, ROOT_SECRET};

/// What the ADS server needs to issue workload certificates.
#[derive(Debug)]
pub struct Security {
    ca: RwLock<Arc<Ca>>,
    /// Bumped on every CA change; streams watch it and re-issue at once.
    generation: tokio::sync::watch::Sender<u64>,
    /// Workload certificate lifetime.
    pub workload_ttl: Duration,
    /// What the CA did (istiod's `citadel_server_*` counters).
    pub metrics: CaMetrics,
}

/// Counters of certificate requests, under istiod's `citadel_server_*` names. Both ways
/// Spar issues workload certificates count: a CSR on Istio's CSR API, and a certificate
/// Spar issues over SDS with a key it makes (what istio-agent would have sent as a CSR).
/// The control plane's own serving certificates do not count.
#[derive(Debug, Default)]
pub struct CaMetrics {
    /// Certificate requests received (`citadel_server_csr_count`).
    pub csr: AtomicU64,
    /// Certificates issued (`citadel_server_success_cert_issuance_count`).
    pub success: AtomicU64,
    /// CSR API calls whose caller proved no identity (`citadel_server_authentication_failure_count`).
    pub authn_failures: AtomicU64,
    /// CSRs that do not parse (`citadel_server_csr_parsing_err_count`; also counted as a
    /// signing error of type `CSR_ERROR`, as istiod does).
    pub csr_parsing_errors: AtomicU64,
    /// Signing failures per [`SignError`] (`citadel_server_csr_sign_err_count{error}`).
    pub sign_errors: [AtomicU64; 2],
}

/// istiod's error types for `citadel_server_csr_sign_err_count{error}` that Spar can
/// produce (it never reports `CA_NOT_READY`, having a CA from the start, nor `TTL_ERROR`,
/// capping a requested lifetime instead of refusing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignError {
    /// The CSR does not parse (`CSR_ERROR`).
    Csr = 0,
    /// Making or signing the certificate failed (`CERT_GEN_ERROR`).
    CertGen = 1,
}

impl SignError {
    /// Every type, in the order of [`CaMetrics::sign_errors`].
    pub const ALL: [SignError; 2] = [SignError::Csr, SignError::CertGen];

    /// istiod's label value.
    pub fn label(self) -> &'static str {
        match self {
            SignError::Csr => "CSR_ERROR",
            SignError::CertGen => "CERT_GEN_ERROR",
        }
    }

    /// The type of a CA failure.
    pub fn of(e: &CaError) -> Self {
        match e {
            CaError::Csr(_) => SignError::Csr,
            CaError::Io { .. } | CaError::Cert(_) => SignError::CertGen,
        }
    }
}

impl CaMetrics {
    /// Counts the outcome of one signing attempt (the request itself is counted by the
    /// caller, before authentication, as istiod does).
    pub fn record_signing<T>(&self, result: &Result<T, CaError>) {
        match result {
            Ok(_) => {
                self.success.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let kind = SignError::of(e);
                if kind == SignError::Csr {
                    self.csr_parsing_errors.fetch_add(1, Ordering::Relaxed);
                }
                self.sign_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Security {
    /// Security with `ca` issuing certificates valid for `workload_ttl`.
    pub fn new(ca: Ca, workload_ttl: Duration) -> Self {
        Self {
            ca: RwLock::new(Arc::new(ca)),
            generation: tokio::sync::watch::Sender::new(0),
            workload_ttl,
            metrics: CaMetrics::default(),
        }
    }

    /// The current CA.
    pub fn ca(&self) -> Arc<Ca> {
        Arc::clone(&self.ca.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Replaces the CA (a reloaded or rotated root); every stream re-issues its
    /// certificate and pushes the new trust bundle right away.
    pub fn replace_ca(&self, ca: Ca) {
        *self.ca.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ca);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever the CA does.
    pub fn ca_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

fn inline(s: &str) -> Option<xds_core::DataSource> {
    Some(xds_core::DataSource {
        specifier: Some(xds_core::data_source::Specifier::InlineString(s.to_string())),
        ..Default::default()
    })
}

/// A stream's certificate: issued on demand, replaced when due or when the CA changed.
#[derive(Debug, Default)]
pub struct CertState {
    issued: Option<(Issued, String)>,
}

impl CertState {
    /// Makes sure a valid certificate for `id` is held; returns when to refresh it.
    pub fn ensure(&mut self, security: &Security, id: &Identity) -> Result<SystemTime, spar_ca::CaError> {
        self.ensure_at(security, id, SystemTime::now())
    }

    /// [`Self::ensure`] as of `now` (certificates live on the wall clock, so tests move
    /// `now` instead of waiting): a new certificate when none is held, when the held one
    /// reached its refresh time (80% of its life), or when the trust bundle changed.
    fn ensure_at(
        &mut self,
        security: &Security,
        id: &Identity,
        now: SystemTime,
    ) -> Result<SystemTime, spar_ca::CaError> {
        let ca = security.ca();
        let bundle = ca.trust_bundle_pem().to_string();
        let due = match &self.issued {
            Some((i, b)) => now >= i.refresh_at() || *b != bundle,
            None => true,
        };
        if due {
            security.metrics.csr.fetch_add(1, Ordering::Relaxed);
            let issued = ca.issue(id, security.workload_ttl);
            security.metrics.record_signing(&issued);
            self.issued = Some((issued?, bundle));
        }
        Ok(self.issued.as_ref().map_or(now, |(i, _)| i.refresh_at()))
    }

    /// Adds `default` and `ROOTCA` to `out`.
    pub fn add_secrets(&self, out: &mut ProxyResources) {
        let Some((issued, bundle)) = &self.issued else { return };
        let default = xds_tls::Secret {
            name: DEFAULT_SECRET.into(),
            r#type: Some(xds_tls::secret::Type::TlsCertificate(xds_tls::TlsCertificate {
                certificate_chain: inline(&issued.chain_pem),
                private_key: inline(&issued.key_pem),
                ..Default::default()
            })),
        };
        out.insert(ResourceType::Secret, DEFAULT_SECRET, &default);
        let root = xds_tls::Secret {
            name: ROOT_SECRET.into(),
            r#type: Some(xds_tls::secret::Type::ValidationContext(xds_tls::CertificateValidationContext {
                trusted_ca: inline(bundle),
                ..Default::default()
            })),
        };
        out.insert(ResourceType::Secret, ROOT_SECRET, &root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_security() -> Security {
        let (cert, key) = Ca::new_root_pem("cluster.local").expect("root");
        let ca = Ca::from_pem("cluster.local", &cert, &key, &cert, &cert).expect("ca");
        Security::new(ca, Duration::from_secs(3600))
    }

    fn load(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    #[test]
    fn each_sds_issuance_is_a_request_and_a_success() {
        let security = mk_security();
        let id = Identity::new("cluster.local", "default", "client");
        let mut certs = CertState::default();
        certs.ensure(&security, &id).expect("issued");
        // Still valid: nothing is issued, nothing counted.
        certs.ensure(&security, &id).expect("kept");
        assert_eq!((load(&security.metrics.csr), load(&security.metrics.success)), (1, 1));
        // A new CA: re-issued, counted again.
        let (cert, key) = Ca::new_root_pem("cluster.local").expect("root");
        security.replace_ca(Ca::from_pem("cluster.local", &cert, &key, &cert, &cert).expect("ca"));
        certs.ensure(&security, &id).expect("re-issued");
        assert_eq!((load(&security.metrics.csr), load(&security.metrics.success)), (2, 2));
        assert!(security.metrics.sign_errors.iter().all(|e| load(e) == 0));
    }

    /// Rotation on a moved clock: the certificate is kept until 80% of its life, replaced
    /// from then on, and the next refresh time moves with the new certificate.
    #[test]
    fn a_certificate_is_replaced_at_eighty_percent_of_its_life_and_not_before() {
        let security = mk_security();
        let id = Identity::new("cluster.local", "default", "client");
        let mut certs = CertState::default();
        let issued_at = SystemTime::now();
        let refresh = certs.ensure_at(&security, &id, issued_at).expect("issued");
        let life = Duration::from_secs(3600);
        let after_issue = refresh.duration_since(issued_at).expect("refresh is later");
        // 80% of 3600 s from issuance (the not_before is backdated for skew, not counted).
        assert!(after_issue.abs_diff(life.mul_f64(0.8)) < Duration::from_secs(2), "{after_issue:?}");
        let just_before = refresh - Duration::from_secs(1);
        assert_eq!(certs.ensure_at(&security, &id, just_before).expect("kept"), refresh, "the same certificate");
        assert_eq!(load(&security.metrics.csr), 1);
        let next = certs.ensure_at(&security, &id, refresh).expect("replaced");
        assert_eq!(load(&security.metrics.csr), 2, "replaced at the refresh time");
        assert!(next >= refresh, "the new certificate's own refresh time");
    }

    #[test]
    fn signing_failures_are_counted_by_istiods_type() {
        let m = CaMetrics::default();
        m.record_signing::<()>(&Err(CaError::Csr("garbage".into())));
        m.record_signing::<()>(&Err(CaError::Cert("no key".into())));
        m.record_signing(&Ok(()));
        assert_eq!(load(&m.success), 1);
        assert_eq!(load(&m.csr_parsing_errors), 1);
        let by_label: Vec<(&str, u64)> =
            SignError::ALL.iter().map(|e| (e.label(), load(&m.sign_errors[*e as usize]))).collect();
        assert_eq!(by_label, [("CSR_ERROR", 1), ("CERT_GEN_ERROR", 1)]);
    }
}
