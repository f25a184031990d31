//! Who is calling on the secure port (15012): the identity an ADS stream or a CSR call
//! has proven.
//!
//! ```text
//!   TLS client certificate (Spar's CA) ─► its SPIFFE identity
//!        └ names a pod (pod-bound credential) ─► refused once that pod is gone
//!   no certificate, `authorization: Bearer <token>` ─► TokenReview ─► system:serviceaccount:<ns>:<sa>
//!   neither, on TLS ─► UNAUTHENTICATED
//!   plaintext port ─► no identity (configuration only, never certificates)
//! ```
//!
//! Tokens count on TLS only: over plaintext they could be replayed by anyone on the path,
//! and certificates are never sent there anyway. The identity comes from the reviewer's
//! verdict, never from the token's unverified claims or the node's metadata.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use spar_ca::{Identity, PodBinding};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

/// What a token reviewer vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// The pod the token is bound to (projected tokens are).
    pub pod: Option<PodBinding>,
}

/// Checks bearer tokens (Kubernetes: a TokenReview for Spar's audience).
pub trait TokenReviewer: Send + Sync + fmt::Debug {
    /// The identity `token` proves, or why it proves none.
    fn review(&self, token: String) -> BoxFuture<'static, Result<Reviewed, String>>;
}

/// Which pods exist (Kubernetes: Spar's Pod cache).
pub trait PodRegistry: Send + Sync + fmt::Debug {
    /// The UID of pod `namespace/name`, if it exists.
    fn uid(&self, namespace: &str, name: &str) -> Option<String>;
}

/// Token authentication for the secure port.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// Checks tokens.
    pub reviewer: Arc<dyn TokenReviewer>,
    /// Checks that the pod of a pod-bound credential still exists.
    pub pods: Option<Arc<dyn PodRegistry>>,
    /// Longest lifetime of a pod-bound xDS credential issued by the CSR API (it stays
    /// valid only as long as its pod exists).
    pub pod_credential_ttl: Duration,
}

/// A proven caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The identity.
    pub identity: Identity,
    /// The pod the proof is tied to, if any.
    pub pod: Option<PodBinding>,
    /// The proof was a token (not a certificate).
    pub by_token: bool,
    /// For a certificate, when the chain of renewals it continues began (seconds since
    /// the epoch; `spar_ca::chain_start_in`).
    pub chain_start: Option<u64>,
}

/// What a caller presented, taken off its request (so that no borrow of the request is
/// held while a token is reviewed).
#[derive(Debug)]
pub struct Presented {
    on_tls: bool,
    cert: Option<Vec<u8>>,
    token: Option<String>,
}

impl Presented {
    /// The TLS facts and the bearer token of `req`.
    pub fn of<T>(req: &Request<T>) -> Self {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Self {
            on_tls: req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().is_some(),
            cert: req.peer_certs().and_then(|c| c.first().map(|c| c.as_ref().to_vec())),
            token,
        }
    }
}

/// The identity the caller proves: `Ok(None)` on the plaintext port, an error when the
/// secure port's caller proves nothing or its proof no longer holds.
pub async fn authenticate(
    presented: Presented,
    auth: Option<&TokenAuth>,
    trust_domain: &str,
) -> Result<Option<Caller>, Status> {
    if let Some(cert) = &presented.cert {
        let identity = spar_ca::identities_in(cert)
            .into_iter()
            .next()
            .ok_or_else(|| Status::unauthenticated("client certificate carries no SPIFFE identity"))?;
        let pod = spar_ca::pod_binding_in(cert);
        if let (Some(pod), Some(pods)) = (&pod, auth.and_then(|a| a.pods.as_ref())) {
            let uid = pods.uid(&identity.namespace, &pod.name);
            if uid.as_deref() != Some(pod.uid.as_str()) {
                return Err(Status::permission_denied(format!(
                    "the credential was issued to pod {}/{} (uid {}), which no longer exists",
                    identity.namespace, pod.name, pod.uid
                )));
            }
        }
        let chain_start = spar_ca::chain_start_in(cert);
        return Ok(Some(Caller { identity, pod, by_token: false, chain_start }));
    }
    if !presented.on_tls {
        return Ok(None);
    }
    let Some(auth) = auth else {
        return Err(Status::unauthenticated("a client certificate from Spar's CA is required"));
    };
    let token = presented
        .token
        .ok_or_else(|| Status::unauthenticated("a client certificate or a service-account token is required"))?;
    let reviewed =
        auth.reviewer.review(token).await.map_err(|e| Status::unauthenticated(format!("token refused: {e}")))?;
    Ok(Some(Caller {
        identity: Identity::new(trust_domain, &reviewed.namespace, &reviewed.service_account),
        pod: reviewed.pod,
        by_token: true,
        chain_start: None,
    }))
}
