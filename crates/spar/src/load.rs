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

/// Logs what a file produced: rejected documents as warnings (file:line, resource,
/// reason), ignored kinds and fields Spar does not act on as information.
pub fn report(parsed: &Parsed) {
    for e in &parsed.errors {
        warn!(origin = %e.origin, resource = e.resource.as_deref().unwrap_or("-"), reason = %e.reason, "rejected document (skipped; everything else is still served)");
    }
    for (origin, what) in &parsed.ignored {
        info!(%origin, resource = %what, "kind not served by spar; ignored");
    }
    for obj in &parsed.objects {
        let unacted = spar_xds::support::unacted_fields(obj);
        if !unacted.is_empty() {
            info!(origin = %obj.origin, resource = %obj.key(), fields = %unacted.join(", "), "fields parsed and kept but not acted on yet");
        }
    }
}
