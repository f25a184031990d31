//! Multi-document YAML to typed objects, each with its origin (file:line).
//!
//! A document that fails to parse is returned as a [`DocError`] naming its file, line
//! and reason; the other documents of the same file are unaffected.

use std::fmt;

use serde_yaml_ng::Value;

use crate::object::{Kind, Meta, Object, Resource};
use crate::origin::Origin;

/// A document that could not be turned into an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocError {
    /// Where the problem is (the offending line when the parser knows it).
    pub origin: Origin,
    /// `Kind ns/name` when it could be read, for messages.
    pub resource: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Some(r) => write!(f, "{}: {r}: {}", self.origin, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

/// What parsing one file produced.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Objects of kinds Spar knows.
    pub objects: Vec<Object>,
    /// Documents that failed.
    pub errors: Vec<DocError>,
    /// Documents of kinds Spar does not serve (Deployment, ServiceAccount, ...): kept out
    /// of the store and reported once, as `(origin, "apiVersion/kind ns/name")`.
    pub ignored: Vec<(Origin, String)>,
    /// For a unit holding one Kubernetes object: its `metadata.generation`, known even
    /// when the object was rejected, so that its status can say which spec it is about.
    pub generation: Option<i64>,
}

/// One document of a multi-document stream: its text and its first line (1-based).
#[derive(Debug, PartialEq, Eq)]
pub struct RawDoc<'a> {
    /// The document's text.
    pub text: &'a str,
    /// Line in the file where the text starts.
    pub line: u32,
}

/// Splits a YAML stream on `---` document markers, keeping line numbers.
pub fn split_documents(text: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u32;
    let mut offset = 0usize;
    for (line_no, line) in (1u32..).zip(text.split_inclusive('\n')) {
        let l = line.trim_end();
        let is_marker = l == "---" || l.starts_with("--- ") || l == "..." || l.starts_with("---\t");
        if is_marker {
            docs.push(RawDoc { text: &text[start..offset], line: start_line });
            start = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    docs.push(RawDoc { text: &text[start..], line: start_line });
    docs.retain(|d| d.text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

/// Parses every document of `text`, read from `file`.
pub fn parse_file(file: &str, text: &str) -> Parsed {
    let mut out = Parsed::default();
    for doc in split_documents(text) {
        let origin = Origin::new(file, doc.line);
        match parse_document(&origin, doc.text) {
            Ok(Some(obj)) => out.objects.push(obj),
            Ok(None) => {}
            Err(DocOutcome::Ignored(what)) => out.ignored.push((origin, what)),
            Err(DocOutcome::Error(e)) => out.errors.push(e),
        }
    }
    out
}

/// Why a document produced no object.
#[derive(Debug)]
pub enum DocOutcome {
    /// A kind Spar does not serve.
    Ignored(String),
    /// A failure.
    Error(DocError),
}

fn yaml_error(origin: &Origin, resource: Option<String>, e: &serde_yaml_ng::Error) -> DocOutcome {
    let (origin, reason) = match e.location() {
        Some(loc) => {
            let at = origin.at_relative_line(u32::try_from(loc.line()).unwrap_or(1));
            // The parser appends " at line L column C" relative to the document; the
            // origin already says where, in file terms.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            (at, msg)
        }
        None => (origin.clone(), e.to_string()),
    };
    DocOutcome::Error(DocError { origin, resource, reason })
}

/// Parses one document. `Ok(None)` for a `List` with no items or an empty document.
pub fn parse_document(origin: &Origin, text: &str) -> Result<Option<Object>, DocOutcome> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(origin, None, &e))?;
    let (api_version, kind) = match (&value.get("apiVersion"), &value.get("kind")) {
        (Some(Value::String(a)), Some(Value::String(k))) => (a.clone(), k.clone()),
        _ if value.is_null() => return Ok(None),
        _ => {
            return Err(DocOutcome::Error(DocError {
                origin: origin.clone(),
                resource: None,
                reason: "not a Kubernetes object: apiVersion and kind are required strings".into(),
            }));
        }
    };
    let name =
        value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
    let namespace = value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
    let cluster_scoped = matches!(kind.as_str(), "Namespace" | "Node");
    let label = || match (&namespace, cluster_scoped) {
        (_, true) => format!("{kind} {name}"),
        (Some(ns), false) => format!("{kind} {ns}/{name}"),
        // Objects without a namespace land in `default`, as with `kubectl apply`.
        (None, false) => format!("{kind} default/{name}"),
    };
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let version = api_version.rsplit_once('/').map_or(api_version.as_str(), |(_, v)| v);
    let Some(k) = Kind::lookup(group, &kind) else {
        return Err(DocOutcome::Ignored(format!("{api_version} {}", label())));
    };
    if !k.versions().contains(&version) {
        return Err(DocOutcome::Error(DocError {
            origin: origin.clone(),
            resource: Some(label()),
            reason: format!(
                "apiVersion {api_version} is not served for {kind}; served versions: {}",
                k.versions().join(", ")
            ),
        }));
    }
    if name.is_empty() {
        return Err(DocOutcome::Error(DocError {
            origin: origin.clone(),
            resource: Some(label()),
            reason: "metadata.name is required".into(),
        }));
    }
    let resource = Resource::parse(k, text).map_err(|e| yaml_error(origin, Some(label()), &e))?;
    let meta = Meta::from_value(k, api_version, &value);
    Ok(Some(Object { meta, origin: origin.clone(), resource, raw: serde_json::to_value(&value).unwrap_or_default() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_line_numbers() {
        let text = "# c\na: 1\n---\nb: 2\n\n--- \n# only a comment\n---\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), [1, 4, 9]);
        assert!(docs[1].text.starts_with("b: 2"));
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;

    /// A "billion laughs" document: each alias doubles the one before. Refused as an
    /// error naming the file, in bounded time and memory; the next document is kept.
    #[test]
    fn an_alias_bomb_is_an_error_and_the_next_document_is_kept() {
        let mut bomb =
            String::from("apiVersion: v1\nkind: Service\nmetadata:\n  name: bomb\n  labels:\n    a0: &a0 [x, x]\n");
        for i in 1..40 {
            bomb.push_str(&format!("    a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
        }
        bomb.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {ports: [{port: 80}]}\n");
        let parsed = parse_file("bomb.yaml", &bomb);
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert!(parsed.errors[0].to_string().contains("bomb.yaml"), "{}", parsed.errors[0]);
        assert_eq!(parsed.objects.len(), 1, "the good document is kept");
    }

    /// 10,000 levels of nesting: an error (the parser's recursion limit), not a stack
    /// overflow.
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec: {{ports: {}{}}}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let parsed = parse_file("deep.yaml", &deep);
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert!(parsed.objects.is_empty());
    }
}
