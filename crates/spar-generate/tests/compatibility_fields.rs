//! docs/compatibility-fields.md is generated from two sources and checked here against
//! both: every field of Istio's CRD schemas (api/istio/crd-all.gen.yaml) and the fields
//! Spar acts on (`spar_generate::support::acted_on`, the same list that makes Spar warn about
//! the rest). A field the code starts or stops acting on changes the table, and this
//! test fails until the doc is regenerated:
//!
//! ```sh
//! SPAR_BLESS=1 cargo test -p spar-generate --test compatibility_fields
//! ```

use std::fmt::Write as _;

use serde_yaml_ng::Value;
use spar_api::Kind;

/// The kinds the table covers, in the order of docs/compatibility.md.
const KINDS: &[Kind] = &[
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::ServiceEntry,
    Kind::WorkloadEntry,
    Kind::Sidecar,
    Kind::Gateway,
    Kind::PeerAuthentication,
    Kind::AuthorizationPolicy,
    Kind::RequestAuthentication,
    Kind::Telemetry,
    Kind::EnvoyFilter,
    Kind::WasmPlugin,
];

/// The `spec` schema of `kind` in Istio's CRDs (its first served version).
fn spec_schema(crds: &[Value], kind: Kind) -> &Value {
    crds.iter()
        .find(|c| c["spec"]["names"]["kind"].as_str() == Some(kind.name()))
        .and_then(|c| c["spec"]["versions"].as_sequence()?.first())
        .map(|v| &v["schema"]["openAPIV3Schema"]["properties"]["spec"])
        .unwrap_or_else(|| panic!("{} is not in api/istio/crd-all.gen.yaml", kind.name()))
}

/// Child fields of a schema node: object properties, or an array's items' properties
/// (paths `a[].b`). Maps and scalars have none.
fn children(schema: &Value, path: &str) -> Vec<(String, Value)> {
    let (node, sep) = match schema["type"].as_str() {
        Some("array") => (&schema["items"], "[]."),
        _ => (schema, "."),
    };
    let Some(props) = node["properties"].as_mapping() else { return Vec::new() };
    let mut out: Vec<(String, Value)> =
        props.iter().filter_map(|(k, v)| Some((format!("{path}{sep}{}", k.as_str()?), v.clone()))).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn covered(acted: &[&str], p: &str) -> bool {
    acted
        .iter()
        .any(|a| p == *a || p.strip_prefix(a).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('[')))
}

/// Rows for `path` and, when only part of it is acted on, its children.
fn rows(acted: &[&str], path: &str, schema: &Value, out: &mut Vec<(String, &'static str)>) {
    let shown = path.to_string();
    let acted_path = |p: &str| {
        let arr = if schema["type"].as_str() == Some("array") { format!("{p}[]") } else { p.to_string() };
        covered(acted, p) || covered(acted, &arr)
    };
    if acted_path(path) {
        out.push((shown, "✅"));
        return;
    }
    let below = acted.iter().any(|a| a.starts_with(&format!("{path}.")) || a.starts_with(&format!("{path}[]")));
    let kids = children(schema, path);
    if !below {
        out.push((shown, "✗"));
    } else if kids.is_empty() {
        out.push((shown, "◐"));
    } else {
        for (p, s) in kids {
            rows(acted, &p, &s, out);
        }
    }
}

fn table() -> String {
    let text = std::fs::read_to_string(spar_testdata::repo_root().join("api/istio/crd-all.gen.yaml")).expect("CRDs");
    let crds: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&text).filter_map(|d| serde::Deserialize::deserialize(d).ok()).collect();
    let mut md = String::from(
        "# Istio fields, one row each: acted on or not\n\n\
         Generated from Istio's CRD schemas (`api/istio/crd-all.gen.yaml`) and the fields Spar's\n\
         generators act on (`crates/spar-generate/src/support.rs`); `crates/spar-generate/tests/compatibility_fields.rs`\n\
         fails when the two disagree with this page. [compatibility.md](compatibility.md) says how each\n\
         field is translated and where Spar differs from istiod.\n\n\
         ✅ acted on (with everything below it) · ◐ partly: see compatibility.md · ✗ parsed and kept, not acted\n\
         on. What a user sees for a ✗ field that is set: a WARN naming it with the resource's file:line when\n\
         the resource is loaded, `SPAR0001` (an Error) from `spar analyze`, and in Kubernetes the resource's\n\
         status says so. A security kind Spar cannot enforce denies rather than opens (security.md).\n",
    );
    for kind in KINDS {
        let acted = spar_generate::support::acted_on(*kind);
        let mut out = Vec::new();
        for (p, s) in children(spec_schema(&crds, *kind), "spec") {
            rows(acted, &p, &s, &mut out);
        }
        let (yes, no) = (out.iter().filter(|(_, s)| *s == "✅").count(), out.iter().filter(|(_, s)| *s == "✗").count());
        let _ = write!(md, "\n## {}\n\n{yes} acted on, {no} not.\n\n| field | |\n|---|---|\n", kind.name());
        for (p, s) in out {
            let _ = writeln!(md, "| `{p}` | {s} |");
        }
    }
    md
}

#[test]
fn the_field_table_is_what_the_code_acts_on() {
    let path = spar_testdata::repo_root().join("docs/compatibility-fields.md");
    let want = table();
    if std::env::var_os("SPAR_BLESS").is_some() {
        std::fs::write(&path, &want).expect("writing docs/compatibility-fields.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/compatibility-fields.md is out of date with support::acted_on or the CRDs; regenerate it with \
         SPAR_BLESS=1 cargo test -p spar-generate --test compatibility_fields"
    );
}

#[test]
fn every_acted_on_field_is_a_field_of_istios_schema() {
    // A typo in support::acted_on would silently report a set field as acted on.
    let md = table();
    for kind in KINDS {
        for a in spar_generate::support::acted_on(*kind) {
            let a = a.trim_end_matches("[]");
            assert!(
                md.contains(&format!("`{a}`")) || md.contains(&format!("`{a}[]")) || md.contains(&format!("`{a}.")),
                "{}: {a} is no field of Istio's schema (or is hidden under a ✅ parent)",
                kind.name()
            );
        }
    }
}
