//! The Gateway API types generated from the upstream CRDs (`crates/spar-api/src/gateway_api`)
//! read every Gateway API object of Istio's Gateway API goldens
//! (`testdata/istio/gatewayapi-golden`, the inputs of istiod's conversion tests), field
//! for field: what a document holds comes back when the typed value is written again.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use spar_api::gateway_api::{
    backend_tls_policy::BackendTlsPolicySpec, gateway::GatewaySpec, gateway_class::GatewayClassSpec,
    grpc_route::GrpcRouteSpec, http_route::HttpRouteSpec, reference_grant::ReferenceGrantSpec, tcp_route::TcpRouteSpec,
    tls_route::TlsRouteSpec,
};

/// `spec` read as `T` and written back: the same JSON, or why not.
fn round_trip<T: DeserializeOwned + Serialize>(spec: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    let again = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &again == spec { Ok(()) } else { Err(format!("written back as {again}")) }
}

#[test]
fn every_gateway_api_object_of_istios_goldens_reads_into_the_generated_types() {
    let dir = spar_testdata::istio("gatewayapi-golden");
    let mut read: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("the goldens").flatten().map(|e| e.path()).collect();
    files.sort();
    let inputs: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    assert_eq!(inputs.len(), 54, "Istio's 54 inputs");
    for path in inputs {
        let text = std::fs::read_to_string(path).expect("readable");
        for doc in spar_api::split_documents(&text) {
            let Ok(v) = serde_yaml_ng::from_str::<Value>(doc.text) else { continue };
            let api = v["apiVersion"].as_str().unwrap_or_default();
            if !api.starts_with("gateway.networking.k8s.io/") {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let spec = v.get("spec").cloned().unwrap_or(Value::Object(Default::default()));
            let checked = match kind.as_str() {
                "GatewayClass" => round_trip::<GatewayClassSpec>(&spec),
                "Gateway" => round_trip::<GatewaySpec>(&spec),
                "HTTPRoute" => round_trip::<HttpRouteSpec>(&spec),
                "GRPCRoute" => round_trip::<GrpcRouteSpec>(&spec),
                "TCPRoute" => round_trip::<TcpRouteSpec>(&spec),
                "TLSRoute" => round_trip::<TlsRouteSpec>(&spec),
                "ReferenceGrant" => round_trip::<ReferenceGrantSpec>(&spec),
                "BackendTLSPolicy" => round_trip::<BackendTlsPolicySpec>(&spec),
                // Kinds not generated (ListenerSet, the x-k8s.io ones).
                _ => continue,
            };
            match checked {
                Ok(()) => *read.entry(kind).or_default() += 1,
                Err(e) => failures.push(format!("{}:{} {kind}: {e}", path.display(), doc.line)),
            }
        }
    }
    assert!(failures.is_empty(), "{} objects do not read:\n{}", failures.len(), failures.join("\n"));
    eprintln!("read: {read:?}");
    for kind in ["GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "ReferenceGrant"] {
        assert!(read.get(kind).is_some_and(|n| *n > 0), "no {kind} in the goldens: {read:?}");
    }
}
