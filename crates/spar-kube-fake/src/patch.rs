//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` removes a field, anything
/// else (including arrays) replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(target) = target.as_object_mut() {
        for (k, v) in fields {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `test`; not `move`/`copy`).
/// On error `doc` may be partly patched; callers patch a copy.
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let field = |name: &str| op.get(name).and_then(Value::as_str);
        let path = field("path").ok_or("JSON patch operation without \"path\"")?;
        let value = || op.get("value").cloned().ok_or("JSON patch operation without \"value\"");
        match field("op").unwrap_or("") {
            "add" => add(doc, path, value()?)?,
            "remove" => remove(doc, path)?,
            "replace" => {
                let slot = doc.pointer_mut(path).ok_or_else(|| format!("replace: path {path:?} does not exist"))?;
                *slot = value()?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unsupported JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and its unescaped last token.
fn split(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
        }
        Some(Value::Array(items)) if last == "-" => items.push(value),
        Some(Value::Array(items)) => {
            let i: usize = last.parse().map_err(|_| format!("invalid array index {last:?}"))?;
            if i > items.len() {
                return Err(format!("add: index {i} out of bounds at {path:?}"));
            }
            items.insert(i, value);
        }
        _ => return Err(format!("add: parent of {path:?} does not exist")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<(), String> {
    let (parent, last) = split(path)?;
    let removed = match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => Some(items.remove(i)),
            _ => None,
        },
        _ => None,
    };
    removed.map(drop).ok_or_else(|| format!("remove: path {path:?} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "s": "x"});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3], "n": {"m": 1}}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3], "s": "x", "n": {"m": 1}}));
    }

    #[test]
    fn json_patch_rfc6902() {
        let mut doc = json!({"a": {"b": 1}, "l": [1, 2], "x~/y": 0});
        let ops = json!([
            {"op": "test", "path": "/a/b", "value": 1},
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "add", "path": "/l/0", "value": 0},
            {"op": "replace", "path": "/a/b", "value": 5},
            {"op": "remove", "path": "/x~0~1y"},
            {"op": "add", "path": "/d", "value": 5},
        ]);
        json_patch(&mut doc, &ops).expect("patch applies");
        assert_eq!(doc, json!({"a": {"b": 5}, "l": [0, 1, 2, 3], "d": 5}));
        assert!(json_patch(&mut doc, &json!([{"op": "move", "from": "/d", "path": "/e"}])).is_err());
        assert!(json_patch(&mut doc, &json!([{"op": "test", "path": "/d", "value": 6}])).is_err());
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut doc, &json!([{"op": "replace", "path": "/nope", "value": 1}])).is_err());
        assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
    }
}
