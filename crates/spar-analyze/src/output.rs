//! Output formats. Each writes only the findings: the caller prints summaries and
//! diagnostics to standard error, so that standard output is always parseable.

use serde::Serialize;
use serde_json::{Value, json};

use crate::message::{Level, Message, MessageType};

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// istioctl's lines: `Error [IST0101] (VirtualService ns/name file:line) text`.
    Log,
    /// A JSON array of istioctl-shaped objects, plus `file`, `line` and `analyzer`.
    Json,
    /// The same array as YAML.
    Yaml,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log" => Ok(Format::Log),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            "sarif" => Ok(Format::Sarif),
            _ => Err(format!("{s:?} is not an output format: use log, json, yaml or sarif")),
        }
    }
}

/// One message as istioctl prints it in `-o json` / `-o yaml`, plus where it is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonMessage {
    /// `IST0101`.
    pub code: &'static str,
    /// `Error`, `Warning` or `Info`.
    pub level: &'static str,
    /// The rendered text.
    pub message: String,
    /// `Kind ns/name` (empty for unreadable documents).
    pub origin: String,
    /// `file:line` (istioctl's `reference`).
    pub reference: String,
    /// The code's documentation page.
    pub documentation_url: String,
    /// File (`-` for standard input).
    pub file: String,
    /// Line (1-based; 0 when unknown).
    pub line: u32,
    /// Which analyzer found it.
    pub analyzer: &'static str,
}

impl From<&Message> for JsonMessage {
    fn from(m: &Message) -> Self {
        Self {
            code: m.code(),
            level: m.level().as_str(),
            message: m.text.clone(),
            origin: m.origin(),
            reference: m.reference(),
            documentation_url: m.kind.documentation_url(),
            file: m.file.clone(),
            line: m.line,
            analyzer: m.analyzer,
        }
    }
}

/// Why messages could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// JSON or SARIF serialization failed.
    #[error("rendering JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// YAML serialization failed.
    #[error("rendering YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// Renders `messages` in `format`. Log output is one line per message (empty when
/// there are none); the structured formats always produce a complete document.
pub fn render(format: Format, messages: &[Message]) -> Result<String, RenderError> {
    Ok(match format {
        Format::Log => messages.iter().map(|m| format!("{m}\n")).collect(),
        Format::Json => {
            let v: Vec<JsonMessage> = messages.iter().map(JsonMessage::from).collect();
            serde_json::to_string_pretty(&v)? + "\n"
        }
        Format::Yaml => {
            let v: Vec<JsonMessage> = messages.iter().map(JsonMessage::from).collect();
            serde_yaml_ng::to_string(&v)?
        }
        Format::Sarif => serde_json::to_string_pretty(&sarif(messages))? + "\n",
    })
}

fn sarif_level(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Info => "note",
    }
}

/// A SARIF 2.1.0 log: one run, one rule per code that occurs, one result per message.
pub fn sarif(messages: &[Message]) -> Value {
    let mut rules: Vec<&'static MessageType> = Vec::new();
    for m in messages {
        if !rules.iter().any(|r| r.code == m.code()) {
            rules.push(m.kind);
        }
    }
    let rule_json: Vec<Value> = rules
        .iter()
        .map(|r| {
            json!({
                "id": r.code,
                "name": r.name,
                "shortDescription": { "text": r.name },
                "fullDescription": { "text": r.description },
                "helpUri": r.documentation_url(),
                "defaultConfiguration": { "level": sarif_level(r.level) },
            })
        })
        .collect();
    let results: Vec<Value> = messages
        .iter()
        .map(|m| {
            let index = rules.iter().position(|r| r.code == m.code()).unwrap_or_default();
            let mut result = json!({
                "ruleId": m.code(),
                "ruleIndex": index,
                "level": sarif_level(m.level()),
                "message": { "text": m.text },
            });
            let mut location = serde_json::Map::new();
            if !m.file.is_empty() {
                let uri = if m.file == "-" { "stdin".to_string() } else { m.file.clone() };
                let mut physical = json!({ "artifactLocation": { "uri": uri } });
                if m.line > 0 {
                    physical["region"] = json!({ "startLine": m.line });
                }
                location.insert("physicalLocation".into(), physical);
            }
            if let Some(s) = &m.subject {
                location.insert(
                    "logicalLocations".into(),
                    json!([{ "fullyQualifiedName": s.label(), "kind": "resource" }]),
                );
            }
            if !location.is_empty() {
                result["locations"] = json!([Value::Object(location)]);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "spar-analyze",
                "informationUri": "https://istio.io/latest/docs/reference/config/analysis/",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rule_json,
            }},
            "results": results,
        }],
    })
}
