//! Label and field selectors, as accepted by `labelSelector` and `fieldSelector`.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector` plus `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Selector {
    labels: Vec<LabelReq>,
    /// `(dotted path, equal?, value)`.
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    /// Parses both selectors; an error message for a 400 BadRequest otherwise.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        let mut out = Self::default();
        for term in split_terms(labels.unwrap_or("")) {
            out.labels.push(parse_label(term)?);
        }
        for term in fields.unwrap_or("").split(',').map(str::trim) {
            if term.is_empty() {
                continue;
            }
            let (path, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            out.fields.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(out)
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        });
        labels_ok && self.fields.iter().all(|(path, eq, value)| (field(obj, path) == *value) == *eq)
    }
}

/// Splits a label selector at the commas outside `( )`.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.retain(|t| !t.is_empty());
    out
}

fn parse_label(term: &str) -> Result<LabelReq, String> {
    let key = |k: &str| {
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) {
            Err(format!("invalid label selector term {term:?}"))
        } else {
            Ok(k.to_string())
        }
    };
    if let Some(open) = term.find('(') {
        let Some(values) = term[open + 1..].trim_end().strip_suffix(')') else {
            return Err(format!("unterminated set in label selector term {term:?}"));
        };
        let values = values.split(',').map(|v| v.trim().to_string()).collect();
        let head: Vec<&str> = term[..open].split_whitespace().collect();
        return match head.as_slice() {
            [k, "in"] => Ok(LabelReq::In(key(k)?, values)),
            [k, "notin"] => Ok(LabelReq::NotIn(key(k)?, values)),
            _ => Err(format!("invalid label selector term {term:?}")),
        };
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::Ne(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(key(k)?, v.trim().to_string()));
    }
    Ok(LabelReq::Exists(key(term)?))
}

/// The value at a dotted path (`metadata.name`, `spec.nodeName`) as a string; `""` when missing.
fn field(obj: &Value, path: &str) -> String {
    let value = path.split('.').try_fold(obj, |v, k| v.get(k));
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(labels: &str) -> Selector {
        Selector::parse(Some(labels), None).expect("selector parses")
    }

    #[test]
    fn label_operators() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}});
        assert!(sel("app=web").matches(&obj));
        assert!(sel("app==web,tier").matches(&obj));
        assert!(!sel("app!=web").matches(&obj));
        assert!(sel("missing!=x,!missing").matches(&obj));
        assert!(!sel("!app").matches(&obj));
        assert!(sel("app in (db, web),tier notin (be)").matches(&obj));
        assert!(!sel("app notin (web)").matches(&obj));
        assert!(sel("").matches(&obj));
        assert!(Selector::parse(Some("a in (x"), None).is_err());
        assert!(Selector::parse(Some("a b"), None).is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let f = |s: &str| Selector::parse(None, Some(s)).expect("selector parses");
        assert!(f("metadata.name=a,metadata.namespace==ns").matches(&obj));
        assert!(f("spec.nodeName!=n2").matches(&obj));
        assert!(!f("metadata.name=b").matches(&obj));
        assert!(Selector::parse(None, Some("metadata.name")).is_err());
    }
}
