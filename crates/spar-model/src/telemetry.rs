//! Tracing as istiod computes it for a workload: Telemetry `tracing` from the root
//! namespace, then the workload's namespace, then the (oldest) Telemetry selecting it,
//! each later entry overriding the fields it sets (provider, sampling, custom tags,
//! span reporting), separately for the client (outbound, gateway) and server (inbound)
//! side; MeshConfig `defaultProviders.tracing` as the provider nobody names, and
//! `defaultConfig.tracing.sampling` as the sampling nobody sets.
//!
//! ```text
//!  defaultProviders.tracing ─► root ns Telemetry ─► namespace Telemetry ─► selecting Telemetry
//!        (provider)             (field by field, per match.mode: CLIENT / SERVER / both)
//!                                                                          │
//!                            provider looked up in extensionProviders ◄────┘
//!                            (OpenTelemetry only; anything else: no tracing, a warning)
//! ```

use std::collections::BTreeMap;

use spar_api::istio::telemetry::{TelemetrySpec, TelemetryTracingCustomTags, TelemetryTracingMatchMode};

use crate::mesh::{OtelProvider, TracingProvider};
use crate::selector::selects;
use crate::snapshot::{Config, Diagnostic, Snapshot};

/// The tracing of one side (client or server) of a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingSpec {
    /// The provider's name, as MeshConfig spells it.
    pub provider_name: String,
    /// The provider.
    pub provider: OtelProvider,
    /// Percent of requests without a sampling decision that are traced.
    pub sampling: f64,
    /// `customTags`, by tag name.
    pub custom_tags: BTreeMap<String, TelemetryTracingCustomTags>,
    /// `useRequestIdForTraceSampling` (Istio's default: true).
    pub use_request_id_for_trace_sampling: bool,
    /// `enableIstioTags` (Istio's default: true): `istio.canonical_service` and friends.
    pub istio_tags: bool,
}

/// A workload's tracing: each side either traced or not, and why not when the
/// configuration asked for something Spar cannot do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tracing {
    /// Outbound (and gateway) spans.
    pub client: Option<TracingSpec>,
    /// Inbound spans.
    pub server: Option<TracingSpec>,
    /// One line each, naming the resource (or MeshConfig field) at fault.
    pub warnings: Vec<String>,
}

/// One side being merged, as istiod's `TracingSpec`.
#[derive(Clone)]
struct Side<'a> {
    /// Provider name and who named it (for warnings).
    provider: Option<(&'a str, String)>,
    disabled: bool,
    sampling: Option<f64>,
    custom_tags: Option<&'a BTreeMap<String, TelemetryTracingCustomTags>>,
    use_request_id: bool,
    istio_tags: bool,
}

fn has_selector(t: &TelemetrySpec) -> bool {
    t.selector.as_ref().and_then(|s| s.match_labels.as_ref()).is_some_and(|l| !l.is_empty())
}

fn has_target_refs(t: &TelemetrySpec) -> bool {
    t.target_ref.is_some() || t.target_refs.as_ref().is_some_and(|r| !r.is_empty())
}

impl Snapshot {
    /// Whether any Telemetry or MeshConfig default asks for tracing (so that generated
    /// config may depend on the workload's tracing service name).
    pub fn tracing_configured(&self) -> bool {
        !self.mesh.default_tracing_providers.is_empty()
            || self.telemetries.iter().any(|t| t.spec.tracing.as_ref().is_some_and(|l| !l.is_empty()))
    }

    /// The MeshConfig provider called `name` (case-insensitively, as istiod looks it up).
    pub fn tracing_provider(&self, name: &str) -> Option<(&str, &TracingProvider)> {
        self.mesh.tracing_providers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(n, p)| (n.as_str(), p))
    }

    /// The Telemetries whose `tracing` apply to a workload in `namespace` with `labels`,
    /// least specific first: the root namespace's namespace-wide one, the namespace's,
    /// then the oldest one in the namespace whose selector matches.
    fn tracing_telemetries<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Vec<&'a Config<TelemetrySpec>> {
        let ns_wide = |ns: &str| {
            self.telemetries.iter().find(|t| t.namespace == ns && !has_selector(&t.spec) && !has_target_refs(&t.spec))
        };
        let mut out: Vec<&Config<TelemetrySpec>> = Vec::new();
        out.extend(ns_wide(&self.mesh.root_namespace));
        if namespace != self.mesh.root_namespace {
            out.extend(ns_wide(namespace));
        }
        // One selecting Telemetry per workload, as istiod applies it (Istio allows only
        // one): the oldest, then by name.
        out.extend(
            self.telemetries
                .iter()
                .filter(|t| {
                    t.namespace == namespace
                        && t.spec
                            .selector
                            .as_ref()
                            .and_then(|s| s.match_labels.as_ref())
                            .is_some_and(|l| !l.is_empty() && selects(l, labels))
                })
                .min_by(|a, b| {
                    (a.created.is_none(), &a.created, &a.name).cmp(&(b.created.is_none(), &b.created, &b.name))
                }),
        );
        out
    }

    /// The tracing of a workload in `namespace` with `labels`, as istiod merges it.
    pub fn tracing(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Tracing {
        let telemetries = self.tracing_telemetries(namespace, labels);
        let defaults = &self.mesh.default_tracing_providers;
        let entries: Vec<_> =
            telemetries.iter().flat_map(|t| t.spec.tracing.iter().flatten().map(move |e| (*t, e))).collect();
        if entries.is_empty() && defaults.is_empty() {
            return Tracing::default();
        }
        let start = Side {
            // Only the first default provider counts, as in istiod.
            provider: defaults.first().map(|n| (n.as_str(), "MeshConfig defaultProviders.tracing".to_string())),
            disabled: false,
            sampling: None,
            custom_tags: None,
            use_request_id: true,
            istio_tags: true,
        };
        let (mut client, mut server) = (start.clone(), start);
        for (t, e) in entries {
            let sides: Vec<&mut Side<'_>> = match e.r#match.as_ref().and_then(|m| m.mode.as_ref()) {
                Some(TelemetryTracingMatchMode::Client) => vec![&mut client],
                Some(TelemetryTracingMatchMode::Server) => vec![&mut server],
                Some(TelemetryTracingMatchMode::ClientAndServer) | None => vec![&mut client, &mut server],
            };
            for s in sides {
                // Only the first named provider counts, as in istiod.
                if let Some(p) = e.providers.iter().flatten().next() {
                    s.provider = Some((p.name.as_str(), t.label("Telemetry")));
                }
                if let Some(d) = e.disable_span_reporting {
                    s.disabled = d;
                }
                if let Some(tags) = &e.custom_tags {
                    s.custom_tags = Some(tags);
                }
                if let Some(r) = e.random_sampling_percentage {
                    s.sampling = Some(r);
                }
                if let Some(u) = e.use_request_id_for_trace_sampling {
                    s.use_request_id = u;
                }
                if let Some(i) = e.enable_istio_tags {
                    s.istio_tags = i;
                }
            }
        }
        let mut out = Tracing::default();
        out.client = self.resolve_side(&client, "client (outbound)", &mut out.warnings);
        out.server = self.resolve_side(&server, "server (inbound)", &mut out.warnings);
        out
    }

    fn resolve_side(&self, side: &Side<'_>, which: &str, warnings: &mut Vec<String>) -> Option<TracingSpec> {
        if side.disabled {
            return None;
        }
        let (name, who) = side.provider.as_ref()?;
        let provider = match self.tracing_provider(name) {
            Some((real, TracingProvider::OpenTelemetry(p))) => (real.to_string(), p.clone()),
            found => {
                let w = match found {
                    Some((_, TracingProvider::Unsupported(kind))) => format!(
                        "{who}: tracing provider {name:?} is a {kind} provider; Spar serves only opentelemetry \
                         tracing providers, so {which} tracing is off"
                    ),
                    _ => format!(
                        "{who}: tracing provider {name:?} is not among MeshConfig extensionProviders; \
                         {which} tracing is off"
                    ),
                };
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
                return None;
            }
        };
        let sampling = side.sampling.unwrap_or(self.mesh.trace_sampling);
        Some(TracingSpec {
            provider_name: provider.0,
            provider: provider.1,
            sampling,
            custom_tags: side.custom_tags.cloned().unwrap_or_default(),
            use_request_id_for_trace_sampling: side.use_request_id,
            istio_tags: side.istio_tags,
        })
    }

    /// One diagnostic per Telemetry `tracing` provider that MeshConfig does not define or
    /// that is not an OpenTelemetry provider, on the Telemetry.
    pub(crate) fn tracing_diagnostics(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for t in &self.telemetries {
            for p in t.spec.tracing.iter().flatten().flat_map(|e| e.providers.iter().flatten()) {
                let message = match self.tracing_provider(&p.name) {
                    Some((_, TracingProvider::OpenTelemetry(_))) => continue,
                    Some((_, TracingProvider::Unsupported(kind))) => format!(
                        "tracing provider {:?} is a {kind} provider; Spar serves only opentelemetry tracing \
                         providers, so the workloads this Telemetry selects get no tracing from it",
                        p.name
                    ),
                    None => format!(
                        "tracing provider {:?} is not among MeshConfig extensionProviders; the workloads this \
                         Telemetry selects get no tracing from it",
                        p.name
                    ),
                };
                out.push(Diagnostic { origin: t.origin.clone(), resource: t.label("Telemetry"), message });
            }
        }
        out
    }
}
