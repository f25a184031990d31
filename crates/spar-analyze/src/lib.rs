//! `spar analyze`: configuration analysis fit for CI.
//!
//! ```text
//!   files / stdin / (later) a live cluster
//!        │  Loaded::add_text (every document, any kind, file:line, field lines)
//!        ▼
//!   Context (read-only: resources by kind and key, MeshConfig)
//!        │  analyzers (Istio's names and codes, plus spar.*), each fn(&Context, &mut Reporter)
//!        ▼
//!   Vec<Message> ──suppress (--suppress, annotation), thresholds──► output (log | json | yaml | sarif)
//! ```
//!
//! Analyzers never see files: they read a [`Context`], so the same checks can run on
//! objects from a Kubernetes watch. Message codes, names, levels and templates are
//! Istio's (`IST0101`...), generated once from Istio's `messages.yaml` into
//! `messages_gen.rs`; Spar's own codes are `SPAR0001`... .

pub mod analyzers;
mod catalog;
#[rustfmt::skip]
mod annotations_gen;
pub mod context;
pub mod fieldmap;
pub mod load;
pub mod message;
#[rustfmt::skip]
mod messages_gen;
pub mod output;
pub mod suppress;

pub use analyzers::{Analyzer, Reporter};
pub use catalog::{all_message_types, message_type};
pub use context::{Context, Resource, Typed};
pub use load::{LoadOptions, Loaded};
pub use message::{Level, Message, MessageType, Subject};
pub use messages_gen::code;
pub use suppress::Suppression;

/// Picks analyzers by name (Istio's or Spar's); no names means the default set.
pub fn select_analyzers(names: &[String]) -> Result<Vec<&'static Analyzer>, String> {
    if names.is_empty() {
        return Ok(analyzers::all().into_iter().filter(|a| a.default).collect());
    }
    names
        .iter()
        .map(|n| {
            analyzers::by_name(n).ok_or_else(|| format!("unknown analyzer {n:?}; see `spar analyze --list-analyzers`"))
        })
        .collect()
}

/// Runs `selected` over `ctx`. Messages come back in a stable order (file, line, code, text).
pub fn run(ctx: &Context, selected: &[&Analyzer]) -> Vec<Message> {
    let mut out = Vec::new();
    for a in selected {
        let mut r = Reporter::new(a.name, &mut out);
        (a.run)(ctx, &mut r);
    }
    // The same finding reported twice (from two fields, or twice by one analyzer) is
    // one message, kept at its first line; Istio dedups the same way when it cannot
    // place a field.
    out.sort_by(|a, b| {
        (a.code(), &a.subject, &a.text, &a.file, a.line).cmp(&(b.code(), &b.subject, &b.text, &b.file, b.line))
    });
    out.dedup_by(|a, b| a.code() == b.code() && a.subject == b.subject && a.text == b.text && a.file == b.file);
    sort(&mut out);
    out
}

/// Sorts messages by file, line, code, resource and text.
pub fn sort(messages: &mut [Message]) {
    messages.sort_by(|a, b| {
        (&a.file, a.line, a.code(), &a.subject, &a.text).cmp(&(&b.file, b.line, b.code(), &b.subject, &b.text))
    });
}
