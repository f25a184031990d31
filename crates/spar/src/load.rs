//! Parsing plus validation of one config file, and the log lines operators read.

use spar_api::Parsed;
use tracing::{info, warn};

/// Parses `text` (the content of `file`) and moves objects that fail validation to the
/// errors, so that they are reported and skipped.
pub fn parse_and_validate(file: &str, text: &str) -> Parsed {
    let mut parsed = spar_api::parse_file(file, text);
    spar_api::validate_parsed(&mut parsed);
    parsed
}

/// Logs what a file produced, each with its `file:line`: rejected documents, fields Spar
/// parses but does not act on, and mesh kinds it does not serve are warnings (traffic
/// does not do what they say); other kinds it has no use for (Deployment,
/// ServiceAccount, ...) are information.
pub fn report(parsed: &Parsed) {
    for e in &parsed.errors {
        warn!(origin = %e.origin, resource = e.resource.as_deref().unwrap_or("-"), reason = %e.reason, "rejected document (skipped; everything else is still served)");
    }
    for (origin, what) in &parsed.ignored {
        if is_mesh_kind(what) {
            warn!(%origin, resource = %what, "kind not served by spar: ignored, and traffic does not follow it");
        } else {
            info!(%origin, resource = %what, "kind not served by spar; ignored");
        }
    }
    for obj in &parsed.objects {
        let unacted = spar_generate::support::unacted_fields(obj);
        if !unacted.is_empty() {
            warn!(origin = %obj.origin, resource = %obj.key(), fields = %unacted.join(", "), "fields parsed and kept but not acted on: traffic does not do what they say");
        }
    }
}

/// An ignored document (`"apiVersion/kind ns/name"`) of Istio's or Gateway API's groups:
/// configuration an operator wrote for the mesh, not a workload's manifest.
fn is_mesh_kind(what: &str) -> bool {
    let group = what.split('/').next().unwrap_or_default();
    group.ends_with(".istio.io")
        || group.starts_with("gateway.networking.")
        || group.starts_with("inference.networking.")
}
