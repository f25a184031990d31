//! Telemetry conformance: tracing from Istio's Telemetry resource and a MeshConfig
//! `opentelemetry` provider, proven with stock Envoy's OpenTelemetry tracer exporting
//! OTLP over gRPC to a fake collector.
//!
//! ```text
//!   test ──HTTP──► client Envoy ──► backend Envoy ──► echo
//!                      │ CLIENT span      │ SERVER span
//!                      └──── OTLP/gRPC ───┴──► fake collector (records Export calls)
//! ```

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spar_conformance::echo::EchoState;
use spar_conformance::{Envoy, Harness, both_variants_mod, http_request, wait_for};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};

const CONVERGE: Duration = Duration::from_secs(20);
/// Envoy's OpenTelemetry tracer flushes every 5 s (`tracing.opentelemetry.flush_interval_ms`),
/// or as soon as 5 spans are buffered; waiting longer than that shows nothing was sent.
const SILENCE: Duration = Duration::from_secs(7);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The parts of OTLP's trace messages the assertions read (field numbers from
/// opentelemetry-proto `collector/trace/v1` and `trace/v1`); the rest is skipped.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    /// `AnyValue`, string case only.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2 SERVER, 3 CLIENT.
        #[prost(int32, tag = "6")]
        pub kind: i32,
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// One span as the collector got it, with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Seen {
    service: String,
    trace_id: Vec<u8>,
    kind: i32,
    name: String,
}

/// A fake OTLP/gRPC trace collector: HTTP/2 cleartext, answers every Export with an
/// empty ExportTraceServiceResponse (gRPC status 0) and records what it got.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<otlp::ExportTraceServiceRequest>>>);

impl Collector {
    fn spans(&self) -> Vec<Seen> {
        let got = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for rs in got.iter().flat_map(|r| &r.resource_spans) {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| v.string_value.clone())
                .unwrap_or_default();
            for s in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                out.push(Seen {
                    service: service.clone(),
                    trace_id: s.trace_id.clone(),
                    kind: s.kind,
                    name: s.name.clone(),
                });
            }
        }
        out
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Serves on `addr` until the returned task is aborted.
    async fn start(addr: SocketAddr) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let c = Collector::default();
        let svc = c.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(svc).serve(addr).await;
        });
        wait_for(Duration::from_secs(10), "the fake collector", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await?;
        Ok((c, task))
    }
}

impl tonic::server::NamedService for Collector {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl Service<http::Request<tonic::body::Body>> for Collector {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(tonic::Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Export(me), req).await)
        })
    }
}

struct Export(Collector);

impl tonic::server::UnaryService<otlp::ExportTraceServiceRequest> for Export {
    type Response = otlp::ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<otlp::ExportTraceServiceRequest>) -> Self::Future {
        self.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(req.into_inner());
        Box::pin(async { Ok(tonic::Response::new(otlp::ExportTraceServiceResponse {})) })
    }
}

/// A client and a backend with sidecars, the collector in `observability` (port named
/// `grpc-otlp`), and both Sidecars importing it.
const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: backend}
spec: {selector: {app: backend}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend}
spec: {address: "${ip:backend}", labels: {app: backend}, serviceAccount: backend}
---
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: observability}
spec: {selector: {app: otel-collector}, ports: [{name: grpc-otlp, port: 4317}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: otel-collector, namespace: observability}
spec: {address: "${ip:collector}", labels: {app: otel-collector}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client}
spec:
  workloadSelector: {labels: {app: client}}
  egress: [{bind: "${ip:client}", hosts: ["./*", "observability/*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: backend}
spec:
  workloadSelector: {labels: {app: backend}}
  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: "0.0.0.0:8080"}]
  egress: [{bind: "${ip:backend}", hosts: ["observability/*"]}]
"#;

const MESH_CONFIG: &str = r#"
extensionProviders:
- name: otel
  opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
"#;

fn telemetry(tracing: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  tracing: [{tracing}]\n"
    )
}

struct Mesh {
    h: Harness,
    client: Envoy,
    backend: Arc<EchoState>,
    collector: Collector,
    collector_task: tokio::task::JoinHandle<()>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.collector_task.abort();
    }
}

impl Mesh {
    async fn start(name: &str, delta: bool, tracing: &str) -> anyhow::Result<Self> {
        let mut h = Harness::new(name, delta)?;
        let mesh = h.render(MESH);
        h.write_config("mesh.yaml", &mesh)?;
        h.write_config("telemetry.yaml", &telemetry(tracing))?;
        let mesh_config = h.dir.join("mesh-config.yaml");
        std::fs::write(&mesh_config, MESH_CONFIG)?;
        h.spar_args = vec!["--mesh-config".into(), mesh_config.display().to_string()];
        h.start_spar(&[]).await?;
        let collector_ip = h.ip("collector");
        let (collector, collector_task) = Collector::start(SocketAddr::new(collector_ip, 4317)).await?;
        let backend_pod = h.pod("backend", &[("app", "backend")]);
        let backend = h.start_echo("backend", SocketAddr::new(backend_pod.ip, 8080)).await?;
        h.start_sidecar(&backend_pod).await?;
        let client = h.pod("client", &[("app", "client")]);
        let client = h.start_sidecar(&client).await?;
        let m = Self { h, client, backend, collector, collector_task };
        wait_for(CONVERGE, "the backend through the client's sidecar", || async {
            m.get("/ready-check").await.is_ok_and(|s| s == 200)
        })
        .await?;
        Ok(m)
    }

    async fn get(&self, path: &str) -> anyhow::Result<u16> {
        Ok(http_request(SocketAddr::new(self.client.ip, 9080), "GET", "backend", path, &[]).await?.status)
    }

    /// `n` requests, all answered by the backend.
    async fn traffic(&self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            let status = self.get(&format!("/traced/{i}")).await?;
            anyhow::ensure!(status == 200, "request {i}: status {status}");
        }
        Ok(())
    }

    /// Whether the client's active listeners (not the draining ones an update leaves
    /// behind) configure the OpenTelemetry tracer.
    async fn client_has_tracer(&self) -> bool {
        let Ok((_, body)) = self.client.admin_get("/config_dump?resource=dynamic_listeners").await else {
            return false;
        };
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("active_state"))
            .any(|a| a.to_string().contains("envoy.tracers.opentelemetry"))
    }

    /// Traces with both a client span from `client.default` and a server span from
    /// `backend.default`.
    fn shared_traces(&self) -> BTreeSet<Vec<u8>> {
        let spans = self.collector.spans();
        let of = |service: &str, kind: i32| -> BTreeSet<Vec<u8>> {
            spans.iter().filter(|s| s.service == service && s.kind == kind).map(|s| s.trace_id.clone()).collect()
        };
        of("client.default", CLIENT).intersection(&of("backend.default", SERVER)).cloned().collect()
    }
}

/// At 100%, every request is traced on both sides: a CLIENT span from the client's
/// sidecar and a SERVER span from the backend's, in one trace, with Istio's service
/// names; the backend sees the W3C trace context.
async fn full_sampling_traces_both_sides(delta: bool) -> anyhow::Result<()> {
    let mut m =
        Mesh::start("tracing-full", delta, "{providers: [{name: otel}], randomSamplingPercentage: 100}").await?;
    m.traffic(10).await?;
    // The trace context the backend received: sampled (flag 01), one trace per request.
    let traced = m.backend.received().into_iter().filter(|r| r.path.starts_with("/traced/")).collect::<Vec<_>>();
    assert_eq!(traced.len(), 10);
    let mut ids = BTreeSet::new();
    for r in &traced {
        let tp = r.headers.get("traceparent").unwrap_or_else(|| panic!("no traceparent: {:?}", r.headers));
        assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
        ids.insert(tp.split('-').nth(1).unwrap_or_default().to_string());
    }
    assert_eq!(ids.len(), 10, "{ids:?}");
    // Each of those traces reaches the collector from both sides.
    wait_for(CONVERGE, "client and server spans of every request's trace", || async {
        let shared: BTreeSet<String> = m.shared_traces().iter().map(|t| hex(t)).collect();
        ids.is_subset(&shared)
    })
    .await?;
    let spans = m.collector.spans();
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["backend.default", "client.default"]), "{spans:?}");
    assert!(spans.iter().all(|s| s.trace_id.len() == 16 && !s.name.is_empty()), "{spans:?}");
    m.h.check_alive()
}

both_variants_mod!(full_sampling, full_sampling_traces_both_sides);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// At 0% the tracer is configured but no span leaves the proxies; raising the
/// Telemetry to 100% makes them arrive (so the silence was the sampling); then
/// `disableSpanReporting: true` takes the tracer away and silence returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_sampling_and_disabled_reporting_send_nothing() -> anyhow::Result<()> {
    let mut m = Mesh::start("tracing-off", false, "{providers: [{name: otel}], randomSamplingPercentage: 0}").await?;
    assert!(m.client_has_tracer().await, "at 0% the tracer is there, sampling nothing");
    m.traffic(10).await?;
    tokio::time::sleep(SILENCE).await;
    assert!(m.collector.spans().is_empty(), "0%: {:?}", m.collector.spans());

    m.h.write_config("telemetry.yaml", &telemetry("{providers: [{name: otel}], randomSamplingPercentage: 100}"))?;
    // Wait until the new sampling is in place: a request's spans reach the collector.
    wait_for(CONVERGE, "spans at 100%", || async {
        let _ = m.traffic(5).await;
        !m.shared_traces().is_empty()
    })
    .await?;

    m.h.write_config(
        "telemetry.yaml",
        &telemetry("{providers: [{name: otel}], randomSamplingPercentage: 100, disableSpanReporting: true}"),
    )?;
    wait_for(CONVERGE, "the tracer to be removed", || async { !m.client_has_tracer().await }).await?;
    // Spans of requests made before the change may still be in flight.
    tokio::time::sleep(SILENCE).await;
    m.collector.clear();
    m.traffic(10).await?;
    tokio::time::sleep(SILENCE).await;
    assert!(m.collector.spans().is_empty(), "disableSpanReporting: {:?}", m.collector.spans());
    m.h.check_alive()
}
