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
        let issued = self.security.ca().sign_csr_for_pod(&req.csr, id, pod, ttl);
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
