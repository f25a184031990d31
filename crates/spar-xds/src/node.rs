//! Envoy's `Node` (id and metadata) to the model's [`Proxy`].

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use spar_model::{Proxy, ProxyError};

/// Reads the proxy's identity and metadata from its node.
pub fn to_proxy(node: &Node) -> Result<Proxy, ProxyError> {
    let meta = node.metadata.as_ref().map(struct_to_json).unwrap_or(serde_json::Value::Null);
    let mut p = Proxy::from_node(&node.id, &meta)?;
    if let Some(l) = &node.locality
        && !l.region.is_empty()
    {
        p.locality =
            [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()].join("/").trim_end_matches('/').to_string();
    }
    Ok(p)
}

/// A protobuf `Struct` as JSON.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}
