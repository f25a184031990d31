//! Which fields of a document are set, as paths, so that Spar can say which ones it
//! parsed but does not act on.

use serde_json::Value;

/// Every set leaf path of `value`, like `spec.http[].route[].destination.host`.
/// Arrays are written `[]`; empty objects and arrays count as set.
pub fn set_paths(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out.sort();
    out.dedup();
    out
}

fn walk(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(v, p, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for v in a {
                walk(v, format!("{path}[]"), out);
            }
        }
        Value::Null => {}
        _ => out.push(path),
    }
}

/// The paths of `value` under `spec` not covered by `acted_on` (each entry a path or a
/// path prefix; a prefix covers everything below it). Paths are reported at the
/// shortest uncovered prefix, so `spec.http[].fault` stands for all of its leaves.
pub fn unacted(value: &Value, acted_on: &[&str]) -> Vec<String> {
    let covered = |p: &str| {
        acted_on
            .iter()
            .any(|a| p == *a || p.strip_prefix(a).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('[')))
    };
    let mut out: Vec<String> = Vec::new();
    for p in set_paths(value) {
        if !p.starts_with("spec") || covered(&p) {
            continue;
        }
        // Shorten to the first uncovered prefix.
        let mut cut = p.len();
        for (i, c) in p.char_indices() {
            if (c == '.' || c == '[') && i > 0 && !covered(&p[..i]) && !acted_on.iter().any(|a| a.starts_with(&p[..i]))
            {
                cut = i;
                break;
            }
        }
        let short = p[..cut].to_string();
        if !out.contains(&short) {
            out.push(short);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_shortest_uncovered_prefix() {
        let v = serde_json::json!({"spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}], "fault": {"abort": {"httpStatus": 500}}}]}});
        let got = unacted(&v, &["spec.hosts", "spec.http[].route"]);
        assert_eq!(got, ["spec.http[].fault"]);
    }
}
