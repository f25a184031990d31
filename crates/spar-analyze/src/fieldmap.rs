//! Lines of fields in a YAML document, so that messages can point at the field that is
//! wrong rather than the document's first line.
//!
//! This reads block-style YAML (what people and kustomize write) line by line, tracking
//! indentation; flow collections (`[a, b]`, `{a: b}`) are recorded at their key only.
//! Paths look like `spec.http[0].route[1].destination.host`.

use std::collections::BTreeMap;

/// Field path to 1-based line in the file.
pub type FieldLines = BTreeMap<String, u32>;

#[derive(Debug)]
struct Frame {
    indent: usize,
    path: String,
    /// A `- ` item (else a `key:`).
    item: bool,
    /// A key whose value is on the following lines (may own a `- ` list at its indent).
    open: bool,
}

/// Indexes `text`, whose first line is line `first_line` of its file.
pub fn index(text: &str, first_line: u32) -> FieldLines {
    let mut out = FieldLines::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut counters: BTreeMap<String, usize> = BTreeMap::new();
    // Inside a block scalar (`|`, `>`): lines indented deeper than this are text.
    let mut scalar_indent: Option<usize> = None;
    for (n, line) in (first_line..).zip(text.lines()) {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(si) = scalar_indent {
            if indent > si {
                continue;
            }
            scalar_indent = None;
        }
        let mut indent = indent;
        let mut body = body;
        // A `- ` item, possibly followed by a key on the same line.
        if body == "-" || body.starts_with("- ") {
            while let Some(top) = stack.last() {
                let keep = top.indent < indent || (top.indent == indent && !top.item && top.open);
                if keep {
                    break;
                }
                stack.pop();
            }
            let parent = stack.last().map(|f| f.path.clone()).unwrap_or_default();
            let counter = counters.entry(parent.clone()).or_insert(0);
            let path = format!("{parent}[{counter}]");
            *counter += 1;
            out.entry(path.clone()).or_insert(n);
            stack.push(Frame { indent, path, item: true, open: false });
            let rest = body.strip_prefix('-').unwrap_or_default();
            let rest_trim = rest.trim_start_matches(' ');
            if rest_trim.is_empty() || rest_trim.starts_with('#') {
                continue;
            }
            indent += 1 + (rest.len() - rest_trim.len());
            body = rest_trim;
            if body.starts_with("- ") {
                // Nested inline lists are rare in config; record the outer item only.
                continue;
            }
        }
        let Some((key, value)) = split_key(body) else { continue };
        while let Some(top) = stack.last() {
            if top.indent < indent {
                break;
            }
            stack.pop();
        }
        let parent = stack.last().map(|f| f.path.as_str()).unwrap_or_default();
        let path = if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") };
        out.entry(path.clone()).or_insert(n);
        let value = value.trim();
        let value = if value.starts_with('#') { "" } else { value };
        if value.starts_with('|') || value.starts_with('>') {
            scalar_indent = Some(indent);
        }
        stack.push(Frame { indent, path, item: false, open: value.is_empty() });
    }
    out
}

/// `key: value` → `(key, value)`, with quotes around the key removed.
fn split_key(body: &str) -> Option<(&str, &str)> {
    let (key, value) = if let Some(q) = body.strip_prefix('"') {
        let end = q.find('"')?;
        let rest = q[end + 1..].strip_prefix(':')?;
        (&q[..end], rest)
    } else if let Some(q) = body.strip_prefix('\'') {
        let end = q.find('\'')?;
        let rest = q[end + 1..].strip_prefix(':')?;
        (&q[..end], rest)
    } else {
        let i = body.find(": ").or_else(|| body.strip_suffix(':').map(str::len))?;
        let key = &body[..i];
        if key.starts_with(['{', '[', '&', '*', '!']) {
            return None;
        }
        (key, &body[(i + 1).min(body.len())..])
    };
    if !value.is_empty() && !value.starts_with(' ') {
        return None;
    }
    Some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_lines() {
        let text = "\
apiVersion: v1
metadata:
  name: x
  annotations:
    \"a.b/c\": d
spec:
  hosts:
  - a
  - b
  http:
    - match:
        - uri:
            prefix: /
      route:
      - destination:
          host: r
  script: |
    foo: bar
  after: 1
";
        let m = index(text, 10);
        assert_eq!(m["metadata.name"], 12);
        assert_eq!(m["metadata.annotations.a.b/c"], 14);
        assert_eq!(m["spec.hosts[1]"], 18);
        assert_eq!(m["spec.http[0].match[0].uri.prefix"], 22);
        assert_eq!(m["spec.http[0].route[0].destination.host"], 25);
        assert!(!m.contains_key("spec.script.foo"));
        assert_eq!(m["spec.after"], 28);
    }
}
