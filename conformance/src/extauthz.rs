//! A small external authorizer for AuthorizationPolicy `action: CUSTOM`, speaking both
//! protocols of Envoy's `ext_authz` filter (as Istio's `samples/extauthz` server does):
//! HTTP ([`serve`]) and gRPC `envoy.service.auth.v3.Authorization/Check`
//! ([`serve_grpc`]). A check whose request carries `x-ext-authz: allow` is allowed, any
//! other is denied (403); either answer carries `x-ext-authz-check-result`, which the
//! filter passes upstream on allow and to the client on deny (over HTTP when the
//! provider's `headersTo*` say so; over gRPC the authorizer's answer says so itself).
//! Every check is counted, so tests can see which requests were sent for checking.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The authorizer's counters.
#[derive(Debug, Default)]
pub struct Checks {
    allowed: AtomicUsize,
    denied: AtomicUsize,
}

impl Checks {
    /// Checks answered so far: (allowed, denied).
    pub fn counts(&self) -> (usize, usize) {
        (self.allowed.load(Ordering::SeqCst), self.denied.load(Ordering::SeqCst))
    }
}

/// Serves checks on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, checks: Arc<Checks>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(handle(stream, Arc::clone(&checks)));
    }
}

async fn handle(stream: TcpStream, checks: Arc<Checks>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some((_, _, headers)) = crate::echo::read_request(&mut r).await else { return };
        let allow = headers.get("x-ext-authz").is_some_and(|v| v == "allow");
        let (status, result) = if allow { ("200 OK", "allowed") } else { ("403 Forbidden", "denied") };
        let counter = if allow { &checks.allowed } else { &checks.denied };
        counter.fetch_add(1, Ordering::SeqCst);
        let text = format!("ext-authz: {result}");
        let resp = format!(
            "HTTP/1.1 {status}\r\nx-ext-authz-check-result: {result}\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Serves gRPC checks on `listener` until the task is aborted.
pub async fn serve_grpc(listener: TcpListener, checks: Arc<Checks>) {
    use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let _ = tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(GrpcAuthorizer(checks)))
        .serve_with_incoming(incoming)
        .await;
}

struct GrpcAuthorizer(Arc<Checks>);

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization for GrpcAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<envoy_types::pb::envoy::service::auth::v3::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>, tonic::Status> {
        use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
        use envoy_types::pb::envoy::service::auth::v3::{
            CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
        };
        use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
        use envoy_types::pb::google::rpc::Status;
        let headers = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| &h.headers);
        let allow = headers.and_then(|h| h.get("x-ext-authz")).is_some_and(|v| v == "allow");
        let result = if allow { "allowed" } else { "denied" };
        let counter = if allow { &self.0.allowed } else { &self.0.denied };
        counter.fetch_add(1, Ordering::SeqCst);
        let header = vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-ext-authz-check-result".into(),
                value: result.into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let response = if allow {
            CheckResponse {
                status: Some(Status { code: 0, ..Default::default() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse { headers: header, ..Default::default() })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(Status { code: tonic::Code::PermissionDenied as i32, ..Default::default() }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: StatusCode::Forbidden as i32 }),
                    headers: header,
                    body: format!("ext-authz: {result}"),
                })),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}
