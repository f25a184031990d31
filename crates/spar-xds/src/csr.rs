//! Istio's certificate-signing API, `istio.v1.auth.IstioCertificateService/CreateCertificate`,
//! so that agents that speak it can get workload certificates from Spar.
//!
//! Served on the secure port only: the caller's identity is the one its client
//! certificate proves or, in Kubernetes, the one a TokenReview of its service-account
//! token vouches for (`authorization: Bearer`, as istio-agent sends it). That is the only
//! identity the signed certificate carries; the CSR contributes its public key and
//! nothing else. A caller proven by a pod-bound token gets a certificate naming that pod,
//! which may live longer than a workload certificate (`TokenAuth::pod_credential_ttl`,
//! for the proxy's own xDS credential) because the secure port refuses it once the pod
//! is gone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Struct;
use tonic::codegen::{Body, BoxFuture, Context, Poll, StdError, http};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::TokenAuth;
use crate::sds::{Security, SignError};

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional metadata (ignored for identity).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: leaf first, root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// How long a chain of renewals may go on, each authenticated by the certificate before
/// it, before the caller must prove its identity afresh (a new credential, or in
/// Kubernetes a service-account token, which the pod's existence backs). Without it a
/// stolen certificate would renew itself forever.
pub const MAX_CHAIN_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// gRPC service name.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// The method's path.
pub const METHOD: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// The service.
#[derive(Clone, Debug)]
pub struct CertificateService {
    security: Arc<Security>,
    token_auth: Option<TokenAuth>,
}

impl CertificateService {
    /// A service signing with `security`'s CA.
    pub fn new(security: Arc<Security>) -> Self {
        Self { security, token_auth: None }
    }

    /// Also accepts service-account tokens as proof (Kubernetes).
    #[must_use]
    pub fn with_token_auth(mut self, auth: TokenAuth) -> Self {
        self.token_auth = Some(auth);
        self
    }

    /// Handles one request.
    pub async fn create(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let metrics = &self.security.metrics;
        // Counted before authentication, as istiod does: every request received.
        metrics.csr.fetch_add(1, Ordering::Relaxed);
        let trust_domain = self.security.ca().trust_domain().to_string();
        let caller =
            crate::auth::authenticate(crate::auth::Presented::of(&req), self.token_auth.as_ref(), &trust_domain)
                .await
                .and_then(|c| {
                    c.ok_or_else(|| {
                        Status::unauthenticated("a client certificate or a service-account token is required")
                    })
                })
                .inspect_err(|_| {
                    metrics.authn_failures.fetch_add(1, Ordering::Relaxed);
                })?;
        let req = req.into_inner();
        // Istio caps the lifetime at its maximum; Spar caps it at the workload TTL, or for
        // a pod-bound credential at the (longer) pod credential TTL.
        let workload = self.security.workload_ttl;
        let max = match (&caller.pod, &self.token_auth) {
            (Some(_), Some(auth)) => auth.pod_credential_ttl.max(workload),
            _ => workload,
        };
        let ttl = u64::try_from(req.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map_or(workload, |s| Duration::from_secs(s).min(max));
        let pod = caller.pod.as_ref().filter(|_| self.token_auth.is_some());
        let id = &caller.identity;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (chain_start, ttl) = renewal_chain(&caller, now, ttl).inspect_err(|_| {
            metrics.authn_failures.fetch_add(1, Ordering::Relaxed);
        })?;
        let issued = self.security.ca().sign_csr_for_pod(&req.csr, id, pod, ttl, Some(chain_start));
        metrics.record_signing(&issued);
        let issued = issued.map_err(|e| match SignError::of(&e) {
            SignError::Csr => Status::invalid_argument(e.to_string()),
            SignError::CertGen => Status::internal(e.to_string()),
        })?;
        info!(identity = %id, pod = ?pod.map(|p| &p.name), by_token = caller.by_token, ttl_secs = ttl.as_secs(), "signed a CSR");
        let cert_chain = spar_ca::pem_to_der(&issued.chain_pem).iter().map(|der| to_pem(der)).collect();
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// The chain a new certificate belongs to and its lifetime: a certificate renewed with a
/// certificate continues that one's chain, which ends [`MAX_CHAIN_AGE`] after it began
/// (the lifetime is cut to fit; past the end the caller is refused); a token is a fresh
/// proof and starts a new chain.
fn renewal_chain(caller: &crate::auth::Caller, now: u64, ttl: Duration) -> Result<(u64, Duration), Status> {
    let start = if caller.by_token { now } else { caller.chain_start.unwrap_or(now) };
    let age = now.saturating_sub(start);
    let left = MAX_CHAIN_AGE.saturating_sub(Duration::from_secs(age));
    if left.is_zero() {
        return Err(Status::permission_denied(format!(
            "the client certificate continues a chain of renewals begun {age}s ago, over the {}s limit: prove the \
             identity afresh (a new credential, or a service-account token)",
            MAX_CHAIN_AGE.as_secs()
        )));
    }
    Ok((start, ttl.min(left)))
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl tonic::server::NamedService for CertificateService {
    const NAME: &'static str = SERVICE_NAME;
}

struct Unary(CertificateService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;
    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.create(request).await })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for CertificateService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            if req.uri().path() != METHOD {
                return Ok(Status::unimplemented(format!("no method {}", req.uri().path())).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Unary(svc), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_caller(by_token: bool, chain_start: Option<u64>) -> crate::auth::Caller {
        crate::auth::Caller {
            identity: spar_ca::Identity::new("cluster.local", "ns1", "sa-a"),
            pod: None,
            by_token,
            chain_start,
        }
    }

    const DAY: u64 = 24 * 3600;

    #[test]
    fn a_certificate_renews_within_its_chain_and_no_further() {
        let now = 100 * DAY;
        let ttl = Duration::from_secs(DAY);
        // Early in the chain: the full lifetime, the chain carried on.
        assert_eq!(renewal_chain(&mk_caller(false, Some(now - DAY)), now, ttl).expect("ok"), (now - DAY, ttl));
        // Near its end: cut to what is left.
        let start = now - MAX_CHAIN_AGE.as_secs() + 3600;
        assert_eq!(
            renewal_chain(&mk_caller(false, Some(start)), now, ttl).expect("ok"),
            (start, Duration::from_secs(3600))
        );
        // Past its end: refused, however often it was renewed.
        let old = now - MAX_CHAIN_AGE.as_secs();
        let e = renewal_chain(&mk_caller(false, Some(old)), now, ttl).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_token_starts_a_new_chain() {
        let now = 100 * DAY;
        let ttl = Duration::from_secs(DAY);
        assert_eq!(renewal_chain(&mk_caller(true, Some(0)), now, ttl).expect("ok"), (now, ttl));
    }

    #[test]
    fn pem_round_trip() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = to_pem(&der);
        let back = x509_der(&pem);
        assert_eq!(back, der);
    }

    fn x509_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default()
    }
}
