//! Spar's configuration API: the Istio and Kubernetes kinds it reads, parsed from YAML
//! with their origin (file:line), and validated.
//!
//! ```text
//!   YAML stream ──split_documents──► RawDoc(text, line) ──parse_document──► Object
//!                                                                   │   (Meta, Origin, Resource, raw)
//!                                                                   └─► DocError (file:line, reason)
//! ```
//!
//! Istio types are generated from Istio's CRD schemas by `api/generate.sh` (kopium), so
//! every field of every served version is parsed and kept, whether or not Spar acts on
//! it yet. Kubernetes types come from `k8s-openapi`.

pub mod document;
pub mod fields;
pub mod gateway_api;
pub mod istio;
pub mod object;
pub mod origin;
pub mod validate;

pub use document::{DocError, Parsed, parse_document, parse_file, split_documents};
pub use object::{Kind, Meta, Object, ObjectKey, Resource};
pub use origin::Origin;
pub use validate::{validate, validate_parsed};

/// Kubernetes types, re-exported so that other crates use the same versions.
pub use k8s_openapi;
