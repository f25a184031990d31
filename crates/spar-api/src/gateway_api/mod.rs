//! Gateway API's types (gateway.networking.k8s.io, v1), generated from its CRD schemas by kopium
//! (api/generate.sh).
#![allow(missing_docs, clippy::all, rustdoc::all)]
pub mod backend_tls_policy;
pub mod gateway;
pub mod gateway_class;
pub mod grpc_route;
pub mod http_route;
pub mod reference_grant;
pub mod tcp_route;
pub mod tls_route;
