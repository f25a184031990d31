//! Message types (Istio's table plus Spar's own) and the messages analyzers emit.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How serious a message is. Ordered: `Info < Warning < Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    /// Worth knowing; nothing is broken.
    Info,
    /// Probably not what was meant.
    Warning,
    /// Broken: traffic will not flow as written.
    Error,
}

impl Level {
    /// The name istioctl prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Level::Info),
            "warning" | "warn" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            _ => Err(format!("{s:?} is not a level: use Info, Warning or Error")),
        }
    }
}

/// A kind of message: its code, name, level and template (Go `fmt` verbs, as in Istio's
/// `messages.yaml`).
#[derive(Debug, PartialEq, Eq)]
pub struct MessageType {
    /// `IST0101`, `SPAR0001`, ...
    pub code: &'static str,
    /// `ReferencedResourceNotFound`, ...
    pub name: &'static str,
    /// Default level.
    pub level: Level,
    /// One sentence on what it means.
    pub description: &'static str,
    /// Text with `%s`, `%v`, `%d`, `%q` verbs, one per argument.
    pub template: &'static str,
    /// Argument names, in order.
    pub args: &'static [&'static str],
}

/// Spar's own message types, for what istioctl does not check.
pub static SPAR_MESSAGE_TYPES: &[MessageType] = &[
    MessageType {
        code: "SPAR0001",
        name: "FieldNotActedOn",
        level: Level::Error,
        description: "A field is parsed and kept, but Spar does not act on it; Istio would, so traffic does not do what the resource says.",
        template: "Field %s is accepted but not acted on by Spar: traffic does not do what it says.",
        args: &["field"],
    },
    MessageType {
        code: "SPAR0002",
        name: "ConfigurationDropped",
        level: Level::Warning,
        description: "Configuration that is accepted but has no effect: nothing selects, binds or uses it.",
        template: "This configuration has no effect: %s.",
        args: &["reason"],
    },
    MessageType {
        code: "SPAR0003",
        name: "DuplicateResource",
        level: Level::Error,
        description: "The same resource (kind, namespace, name) is defined more than once; only the first definition is used.",
        template: "%s is defined more than once; the definition at %s is used and this one is ignored.",
        args: &["resource", "kept"],
    },
    MessageType {
        code: "SPAR0004",
        name: "CustomProviderUnusable",
        level: Level::Error,
        description: "An AuthorizationPolicy with action CUSTOM names no usable ext_authz provider; every request it matches is denied.",
        template: "CUSTOM authorization cannot be checked: %s; every request this policy matches is denied.",
        args: &["reason"],
    },
    MessageType {
        code: "SPAR0005",
        name: "EnvoyFilterPatchNotApplied",
        level: Level::Error,
        description: "An EnvoyFilter configPatch that Spar cannot apply: its value is not valid for Envoy's schema, or it uses a field or operation Spar does not support; it is left out of every proxy.",
        template: "EnvoyFilter patch %s is not applied: %s.",
        args: &["patch", "reason"],
    },
    MessageType {
        code: "SPAR0006",
        name: "GatewayAPINotServed",
        level: Level::Error,
        description: "A Gateway API resource, or part of one, that Spar (as istiod) does not serve: a parent that refuses a route, a backend that is missing or not granted, a listener that cannot be programmed, a filter or kind Spar does not implement.",
        template: "%s.",
        args: &["reason"],
    },
];

impl MessageType {
    /// Fills the template with `args` (already formatted; `%q` quotes its argument).
    pub fn render(&self, args: &[String]) -> String {
        let mut out = String::with_capacity(self.template.len() + 32);
        let mut args = args.iter();
        let mut chars = self.template.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('q') => out.push_str(&format!("{:?}", args.next().map_or("", String::as_str))),
                Some(_) => out.push_str(args.next().map_or("", String::as_str)),
                None => out.push('%'),
            }
        }
        out
    }

    /// Istio's documentation page for this code, or Spar's for its own codes.
    pub fn documentation_url(&self) -> String {
        if self.code.starts_with("IST") {
            format!("{ISTIO_DOCS}/{}/", self.code.to_ascii_lowercase())
        } else {
            format!("{SPAR_DOCS}#{}", self.code.to_ascii_lowercase())
        }
    }
}

/// Where Istio documents its analysis messages (the version Spar's table comes from).
pub const ISTIO_DOCS: &str = "https://istio.io/v1.31/docs/reference/config/analysis";
/// Where Spar documents its own codes.
pub const SPAR_DOCS: &str = "docs/analyze.md";

/// Formats a list the way Go's `%v` prints a `[]string`: `[a b c]`.
pub fn go_list<S: AsRef<str>>(items: &[S]) -> String {
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", inner.join(" "))
}

/// The resource a message is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    /// Kind as written (`VirtualService`, `Pod`, ...).
    pub kind: String,
    /// Namespace; empty when cluster-scoped or not given.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Subject {
    /// `Kind ns/name`, or `Kind name` without a namespace (istioctl's `origin`).
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// `ns/name` or `name`, as in Istio's test tables.
    pub fn full_name(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its type (code, level, template).
    pub kind: &'static MessageType,
    /// The rendered text.
    pub text: String,
    /// The resource it is about; `None` for documents that could not be read.
    pub subject: Option<Subject>,
    /// The file it was read from (`-` for standard input); empty when unknown.
    pub file: String,
    /// The most precise line known (the field when found, else the document's first line); 0 when unknown.
    pub line: u32,
    /// Which analyzer emitted it (`loader` for unreadable documents).
    pub analyzer: &'static str,
}

impl Message {
    /// The code (`IST0101`).
    pub fn code(&self) -> &'static str {
        self.kind.code
    }

    /// The level.
    pub fn level(&self) -> Level {
        self.kind.level
    }

    /// `Kind ns/name`, or empty.
    pub fn origin(&self) -> String {
        self.subject.as_ref().map(Subject::label).unwrap_or_default()
    }

    /// `file:line`, `file`, or empty.
    pub fn reference(&self) -> String {
        match (self.file.as_str(), self.line) {
            ("", _) => String::new(),
            (f, 0) => f.to_string(),
            (f, l) => format!("{f}:{l}"),
        }
    }
}

impl fmt::Display for Message {
    /// istioctl's log line: `Error [IST0101] (VirtualService ns/name file:line) text`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.level(), self.code())?;
        let origin = self.origin();
        let reference = self.reference();
        match (origin.is_empty(), reference.is_empty()) {
            (false, false) => write!(f, " ({origin} {reference})")?,
            (false, true) => write!(f, " ({origin})")?,
            (true, false) => write!(f, " ({reference})")?,
            (true, true) => {}
        }
        write!(f, " {}", self.text)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_go_verbs() {
        let m = crate::catalog::message_type("IST0101").expect("IST0101 is in the table");
        assert_eq!(m.render(&["gateway".into(), "bogus".into()]), "Referenced gateway not found: \"bogus\"");
        assert_eq!(m.documentation_url(), "https://istio.io/v1.31/docs/reference/config/analysis/ist0101/");
    }
}
