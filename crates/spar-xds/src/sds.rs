//! Workload certificates over SDS on the proxy's own ADS stream.
//!
//! A proxy that proved an identity (its xDS client certificate) gets two secrets:
//! `default` (its SVID and key, issued for the proven identity, never the claimed one)
//! and `ROOTCA` (the trust bundle). Each stream keeps its certificate and replaces it
//! after 80% of its lifetime; the push is an ordinary SDS update, so Envoy swaps it
//! without dropping connections.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
use spar_ca::{Ca, Identity, Issued};

use crate::resources::{ProxyResources, type_url};

/// Name of the workload certificate secret.
pub const DEFAULT_SECRET: &str = "default";
/// Name of the trust bundle secret.
pub const ROOT_SECRET: &str = "ROOTCA";

/// What the ADS server needs to issue workload certificates.
#[derive(Debug)]
pub struct Security {
    ca: RwLock<Arc<Ca>>,
    /// Bumped on every CA change; streams watch it and re-issue at once.
    generation: tokio::sync::watch::Sender<u64>,
    /// Workload certificate lifetime.
    pub workload_ttl: Duration,
}

impl Security {
    /// Security with `ca` issuing certificates valid for `workload_ttl`.
    pub fn new(ca: Ca, workload_ttl: Duration) -> Self {
        Self { ca: RwLock::new(Arc::new(ca)), generation: tokio::sync::watch::Sender::new(0), workload_ttl }
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
        let ca = security.ca();
        let bundle = ca.trust_bundle_pem().to_string();
        let due = match &self.issued {
            Some((i, b)) => SystemTime::now() >= i.refresh_at() || *b != bundle,
            None => true,
        };
        if due {
            self.issued = Some((ca.issue(id, security.workload_ttl)?, bundle));
        }
        Ok(self.issued.as_ref().map_or_else(SystemTime::now, |(i, _)| i.refresh_at()))
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
        out.insert(type_url::SECRET, DEFAULT_SECRET, &default);
        let root = xds_tls::Secret {
            name: ROOT_SECRET.into(),
            r#type: Some(xds_tls::secret::Type::ValidationContext(xds_tls::CertificateValidationContext {
                trusted_ca: inline(bundle),
                ..Default::default()
            })),
        };
        out.insert(type_url::SECRET, ROOT_SECRET, &root);
    }
}
