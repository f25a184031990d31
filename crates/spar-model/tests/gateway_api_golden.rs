//! Gateway API translation against istiod's own goldens (testdata/istio/gatewayapi-golden,
//! from `pilot/pkg/config/kube/gateway/conversion_test.go`): each input `X.yaml`, with the
//! environment istiod's test gives every input (`gatewayapi-environment.yaml`, and one
//! Namespace per namespace of the input's objects, made here as `readConfig` makes them),
//! is translated with the domain `domain.suffix`, and every Istio Gateway and
//! VirtualService of `X.yaml.golden` must come out with the same spec, and nothing else.
//!
//! "The same spec" is compared as JSON after both sides went through Spar's own types (the
//! golden's spec is read into `GatewaySpec` / `VirtualServiceSpec`), so field order and
//! formatting do not count. A field istiod leaves out because it holds its proto's zero
//! value (a server's `tls.mode: PASSTHROUGH`) does count when the translation writes it.
//! A golden document Spar's type cannot read (`destination: {}`, for a backend that cannot
//! be used) is compared as written, and listed. The goldens' DestinationRules (from
//! BackendTLSPolicy and BackendLBPolicy) are counted as not translated until the
//! translation makes them.
//!
//! The test prints a table of every input and fails when an input of [`PASSING`] no longer
//! passes; it also names the inputs that pass and are not yet in [`PASSING`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;
use spar_api::document::DocOutcome;
use spar_api::{Kind, Object, Origin, Parsed, Resource, parse_document, parse_file, split_documents};
use spar_model::gateway_api::{Translation, translate};

/// Istio's goldens, under `testdata/istio/`.
const GOLDEN_DIR: &str = "gatewayapi-golden";
/// The environment of every input, under `testdata/istio/`.
const ENVIRONMENT: &str = "gatewayapi-environment.yaml";
/// The cluster domain istiod's test runs with.
const DOMAIN: &str = "domain.suffix";
/// How many inputs have a golden: all 54 `X.yaml` but `benchmark-httproute.yaml`.
const INPUTS_WITH_GOLDENS: usize = 53;
/// The label `readConfig` gives each Namespace: the namespace's name up to its first `-`.
const TEST_NAME_PART: &str = "istio.io/test-name-part";

/// Inputs that translate exactly as istiod does: every golden Gateway and VirtualService
/// with an equal spec, nothing extra. The test fails when one of them stops passing; add
/// the inputs the test prints as passing and not listed here.
const PASSING: &[&str] = &[
    "tls",
    "reference-policy-tls",
    "backend-tls-client-cert",
    "delegated",
    "eastwest",
    "eastwest-labelport",
    "eastwest-remote",
    "eastwest-tlsoption",
    "empty-backend-refs",
    "foreign-waypoint",
    "frontend-tls-invalid",
    "frontend-tls-refgrant",
    "gateway-invalid-parameters-ref",
    "grpc",
    "http-grpc-same-host",
    "invalid",
    "isolation",
    "listenerset-https-missing-tls",
    "mcs",
    "mesh",
    "mismatch",
    "multi-gateway",
    "redirect-only",
    "reference-grant-multiple-to",
    "reference-policy-inferencepool",
    "reference-policy-service",
    "reference-policy-tcp",
    "route-binding",
    "route-precedence",
    "serviceentry",
    "status",
    "tcp",
    "tls-terminate",
    "valid-invalid-parent-ref",
    "waypoint",
    "weighted",
    "zero",
];

/// What one input's translation did against its golden.
#[derive(Debug, Default)]
struct Outcome {
    /// The input's name, `X` of `X.yaml`.
    input: String,
    /// Objects in the golden, of every kind.
    golden: usize,
    /// Golden Gateways and VirtualServices produced with an equal spec.
    matched: usize,
    /// Golden Gateways and VirtualServices not produced (`Kind ns/name`).
    missing: Vec<String>,
    /// Produced with another spec: the first difference of each.
    differing: Vec<String>,
    /// Produced and not in the golden (`Kind ns/name`).
    extra: Vec<String>,
    /// Golden objects of kinds the translation does not make yet (`Kind ns/name`).
    not_translated: Vec<String>,
    /// Golden documents Spar's types cannot read (`Kind ns/name: why`); they are compared
    /// as written instead.
    golden_unreadable: Vec<String>,
    /// Input documents Spar did not read: kinds it does not know (by kind, with their
    /// count) and documents that failed.
    unread: Vec<String>,
}

impl Outcome {
    fn passes(&self) -> bool {
        self.missing.is_empty() && self.differing.is_empty() && self.extra.is_empty() && self.not_translated.is_empty()
    }

    /// The first reason it does not pass.
    fn first_difference(&self) -> Option<String> {
        if let Some(d) = self.differing.first() {
            return Some(d.clone());
        }
        if let Some(m) = self.missing.first() {
            return Some(format!("missing {m}"));
        }
        if let Some(x) = self.extra.first() {
            return Some(format!("extra {x}"));
        }
        self.not_translated.first().map(|x| format!("not translated {x}"))
    }
}

/// The inputs that have a golden, by name (`X` of `X.yaml`), sorted.
fn inputs() -> Vec<String> {
    let dir = spar_testdata::istio(GOLDEN_DIR);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".yaml").map(str::to_string))
        .filter(|name| dir.join(format!("{name}.yaml.golden")).is_file())
        .collect();
    names.sort();
    names
}

/// Parses a file of Istio's test data, named by its path under `testdata/istio/`.
fn parse(rel: &str) -> Parsed {
    parse_file(rel, &spar_testdata::read_istio(rel))
}

/// The namespaces of the input's objects, read from every document (kinds Spar does not
/// know included, as `readConfig` sees them all); cluster-scoped objects have none.
fn namespaces_of(text: &str) -> BTreeSet<String> {
    split_documents(text)
        .iter()
        .filter_map(|doc| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(doc.text).ok())
        .filter_map(|v| v.get("metadata")?.get("namespace")?.as_str().map(str::to_string))
        .filter(|ns| !ns.is_empty())
        .collect()
}

/// A Namespace per namespace, labelled as istiod's test labels them.
fn namespace_objects(input: &str, namespaces: &BTreeSet<String>) -> Vec<Object> {
    let text: Vec<String> = namespaces
        .iter()
        .map(|ns| {
            let part = ns.split('-').next().unwrap_or_default();
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    {TEST_NAME_PART}: \"{part}\"\n")
        })
        .collect();
    let parsed = parse_file(&format!("<namespaces of {input}>"), &text.join("---\n"));
    assert!(parsed.errors.is_empty(), "synthesized Namespaces of {input}: {:?}", parsed.errors);
    parsed.objects
}

/// `Kind ns/name`.
fn label(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// A JSON value in at most `MAX` characters.
fn short(v: Option<&Value>) -> String {
    const MAX: usize = 100;
    let Some(v) = v else { return "(absent)".into() };
    let s = v.to_string();
    if s.chars().count() <= MAX { s } else { format!("{}…", s.chars().take(MAX).collect::<String>()) }
}

/// Where `golden` and `got` first differ (keys in order, then array items), as
/// `path: golden X got Y`; `None` when they are equal.
fn first_difference(path: &str, golden: &Value, got: &Value) -> Option<String> {
    if golden == got {
        return None;
    }
    match (golden, got) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let at = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => first_difference(&at, x, y),
                    (x, y) => Some(format!("{at}: golden {} got {}", short(x), short(y))),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            let first = (0..a.len().max(b.len())).find_map(|i| {
                let at = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => first_difference(&at, x, y),
                    (x, y) => Some(format!("{at}: golden {} got {}", short(x), short(y))),
                }
            })?;
            if a.len() == b.len() {
                Some(first)
            } else {
                Some(format!("{first} ({path}: golden {} items, got {})", a.len(), b.len()))
            }
        }
        _ => Some(format!("{path}: golden {} got {}", short(Some(golden)), short(Some(got)))),
    }
}

/// One object of a golden.
struct GoldenObject {
    kind: String,
    namespace: String,
    name: String,
    /// The spec as Spar's type for the kind reads and writes it; as written when the type
    /// cannot read it, or when Spar does not read the kind.
    spec: Value,
    /// Why Spar's type cannot read the document, when it cannot.
    unreadable: Option<String>,
}

/// The objects of a golden, named by its path under `testdata/istio/`.
fn golden_objects(rel: &str) -> Vec<GoldenObject> {
    let text = spar_testdata::read_istio(rel);
    let mut out = Vec::new();
    for doc in split_documents(&text) {
        // istiod writes a backend it cannot use as an empty destination; Spar's type
        // requires `host` (Istio's CRD does), so the translation writes `host: ""`, and the
        // golden is read the same way.
        let normalized = doc.text.replace("destination: {}", "destination: {host: \"\"}");
        let doc = spar_api::document::RawDoc { text: &normalized, line: doc.line };
        let raw: Value =
            serde_yaml_ng::from_str(doc.text).unwrap_or_else(|e| panic!("{rel}:{}: not YAML: {e}", doc.line));
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let meta = raw.get("metadata").cloned().unwrap_or_default();
        let mut g = GoldenObject {
            kind: field(&raw, "kind"),
            namespace: field(&meta, "namespace"),
            name: field(&meta, "name"),
            spec: raw.get("spec").cloned().unwrap_or_default(),
            unreadable: None,
        };
        match parse_document(&Origin::new(rel, doc.line), doc.text) {
            Ok(Some(obj)) => match &obj.resource {
                Resource::Gateway(s) => g.spec = serde_json::to_value(&**s).expect("a GatewaySpec serializes"),
                Resource::VirtualService(s) => {
                    g.spec = serde_json::to_value(&**s).expect("a VirtualServiceSpec serializes");
                }
                _ => {}
            },
            Ok(None) => continue,
            Err(DocOutcome::Error(e)) => g.unreadable = Some(format!("{}: {}", e.origin, e.reason)),
            Err(DocOutcome::Ignored(_)) => {}
        }
        out.push(g);
    }
    out
}

/// The translation's objects by `(kind, namespace, name)`, their specs as JSON; a second
/// object of the same key goes to `duplicates`.
fn translated(t: &Translation, duplicates: &mut Vec<String>) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    let mut put = |kind: &str, namespace: &str, name: &str, spec: Value| {
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        if out.insert(key, spec).is_some() {
            duplicates.push(format!("{} (a second time)", label(kind, namespace, name)));
        }
    };
    for g in &t.gateways {
        put("Gateway", &g.namespace, &g.name, serde_json::to_value(&*g.spec).expect("a GatewaySpec serializes"));
    }
    for vs in &t.virtual_services {
        put(
            "VirtualService",
            &vs.namespace,
            &vs.name,
            serde_json::to_value(&*vs.spec).expect("a VirtualServiceSpec serializes"),
        );
    }
    // When the translation makes DestinationRules (BackendTLSPolicy, BackendLBPolicy),
    // put them here as "DestinationRule" and compare them in `run` like the others.
    out
}

/// Translates one input with the environment and compares with its golden.
fn run(input: &str, environment: &[Object]) -> Outcome {
    let rel = format!("{GOLDEN_DIR}/{input}.yaml");
    let text = spar_testdata::read_istio(&rel);
    let parsed = parse_file(&rel, &text);
    let namespaces = namespace_objects(input, &namespaces_of(&text));
    let refs: Vec<&Object> = parsed.objects.iter().chain(environment).chain(&namespaces).collect();
    let translation = translate(&refs, DOMAIN);

    let mut out = Outcome { input: input.to_string(), ..Outcome::default() };
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    for (_, what) in &parsed.ignored {
        // `apiVersion Kind ns/name`: counted by apiVersion and kind.
        let kind: Vec<&str> = what.split_whitespace().take(2).collect();
        *ignored.entry(kind.join(" ")).or_default() += 1;
    }
    out.unread.extend(ignored.iter().map(|(kind, n)| format!("{kind} ×{n}")));
    out.unread.extend(parsed.errors.iter().map(|e| format!("error {e}")));

    let mut got = translated(&translation, &mut out.extra);
    let golden = golden_objects(&format!("{rel}.golden"));
    out.golden = golden.len();
    for g in golden {
        let at = label(&g.kind, &g.namespace, &g.name);
        if !matches!(g.kind.as_str(), "Gateway" | "VirtualService") {
            out.not_translated.push(at);
            continue;
        }
        if let Some(why) = &g.unreadable {
            out.golden_unreadable.push(format!("{at}: {why}"));
        }
        match got.remove(&(g.kind.clone(), g.namespace.clone(), g.name.clone())) {
            None => out.missing.push(at),
            Some(made) => match first_difference("spec", &g.spec, &made) {
                None => out.matched += 1,
                Some(d) if g.unreadable.is_some() => out.differing.push(format!("{at}: {d} [golden as written]")),
                Some(d) => out.differing.push(format!("{at}: {d}")),
            },
        }
    }
    out.extra.extend(got.into_keys().map(|(kind, namespace, name)| label(&kind, &namespace, &name)));
    out
}

/// The table of every input, and the lists below it.
fn report(outcomes: &[Outcome]) -> String {
    let width = outcomes.iter().map(|o| o.input.len()).max().unwrap_or(0).max("input".len());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:width$}  {:>6}  {:>7}  {:>7}  {:>9}  {:>5}  {:>14}  first difference",
        "input", "golden", "matched", "missing", "differing", "extra", "not translated"
    );
    for o in outcomes {
        let _ = writeln!(
            s,
            "{:width$}  {:>6}  {:>7}  {:>7}  {:>9}  {:>5}  {:>14}  {}",
            o.input,
            o.golden,
            o.matched,
            o.missing.len(),
            o.differing.len(),
            o.extra.len(),
            o.not_translated.len(),
            o.first_difference().unwrap_or_else(|| "passes".into()),
        );
    }
    let passing = outcomes.iter().filter(|o| o.passes()).count();
    let _ = writeln!(s, "\n{passing} of {} inputs pass.", outcomes.len());

    let not_translated: Vec<&Outcome> = outcomes.iter().filter(|o| !o.not_translated.is_empty()).collect();
    if !not_translated.is_empty() {
        let _ = writeln!(s, "\nGolden objects not translated (no such output yet):");
        for o in not_translated {
            let _ = writeln!(s, "  {}: {}", o.input, o.not_translated.join(", "));
        }
    }
    let unreadable: Vec<&Outcome> = outcomes.iter().filter(|o| !o.golden_unreadable.is_empty()).collect();
    if !unreadable.is_empty() {
        let _ = writeln!(s, "\nGolden objects Spar's types cannot read, compared as written:");
        for o in unreadable {
            for u in &o.golden_unreadable {
                let _ = writeln!(s, "  {}: {u}", o.input);
            }
        }
    }
    let unread: Vec<&Outcome> = outcomes.iter().filter(|o| !o.unread.is_empty()).collect();
    if !unread.is_empty() {
        let _ = writeln!(s, "\nInput documents Spar does not read (kinds it does not know, or errors):");
        for o in unread {
            let _ = writeln!(s, "  {}: {}", o.input, o.unread.join(", "));
        }
    }
    s
}

#[test]
fn istio_gateway_api_goldens_translate_the_same() {
    let inputs = inputs();
    assert_eq!(inputs.len(), INPUTS_WITH_GOLDENS, "inputs with a golden in {GOLDEN_DIR}: {inputs:?}");
    for name in PASSING {
        assert!(inputs.iter().any(|i| i == name), "PASSING names {name}, which is not an input of {GOLDEN_DIR}");
    }

    let environment = parse(ENVIRONMENT);
    assert!(environment.errors.is_empty(), "{ENVIRONMENT}: {:?}", environment.errors);
    let outcomes: Vec<Outcome> = inputs.iter().map(|input| run(input, &environment.objects)).collect();
    println!("{}", report(&outcomes));

    let newly_passing: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.passes() && !PASSING.contains(&o.input.as_str()))
        .map(|o| o.input.as_str())
        .collect();
    if !newly_passing.is_empty() {
        let list: Vec<String> = newly_passing.iter().map(|i| format!("{i:?}")).collect();
        println!("Passing and not in PASSING ({}): {}", newly_passing.len(), list.join(", "));
    }

    let regressed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passes() && PASSING.contains(&o.input.as_str()))
        .map(|o| format!("{}: {}", o.input, o.first_difference().unwrap_or_default()))
        .collect();
    assert!(regressed.is_empty(), "inputs in PASSING no longer pass:\n  {}", regressed.join("\n  "));
}

#[test]
fn the_gateway_api_environment_parses_without_errors() {
    let env = parse(ENVIRONMENT);
    assert!(env.errors.is_empty(), "{ENVIRONMENT}: {:?}", env.errors);
    let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    for obj in &env.objects {
        *kinds.entry(obj.meta.kind).or_default() += 1;
    }
    // conversion_test.go's 44 registry services: 38 in domain.suffix, 6 elsewhere; its 10
    // Secrets and 5 ConfigMaps (CA bundles).
    let expected =
        BTreeMap::from([(Kind::Service, 38), (Kind::ServiceEntry, 6), (Kind::Secret, 10), (Kind::ConfigMap, 5)]);
    assert_eq!(kinds, expected, "{ENVIRONMENT}: objects by kind");
    assert!(env.ignored.is_empty(), "{ENVIRONMENT}: every document is read: {:?}", env.ignored);
}

/// Inputs whose every Gateway API status (GatewayClass, Gateway and routes) is the one
/// istiod writes, conditions compared by type, status, reason and message (without the
/// times and generations the writer adds). The test fails when one stops passing.
const STATUS_PASSING: &[&str] = &[
    "frontend-tls-invalid",
    "frontend-tls-refgrant",
    "reference-policy-tls",
    "tls",
    "tls-terminate",
    "backend-lb-policy",
    "backend-tls-policy",
    "backend-tls-policy-ignored",
    "backend-traffic-policy-ignored",
    "delegated",
    "eastwest",
    "eastwest-labelport",
    "eastwest-tlsoption",
    "empty-backend-refs",
    "grpc",
    "http-grpc-same-host",
    "isolation",
    "listenerset-https-missing-tls",
    "mcs",
    "mesh",
    "mismatch",
    "mix-backend-policy",
    "multi-gateway",
    "redirect-only",
    "reference-grant-multiple-to",
    "reference-policy-service",
    "reference-policy-tcp",
    "route-binding",
    "route-precedence",
    "serviceentry",
    "tcp",
    "valid-invalid-parent-ref",
    "weighted",
    "zero",
];

/// Removes what the status writer adds to each condition, and empty lists.
fn without_times(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("lastTransitionTime");
            m.remove("observedGeneration");
            m.values_mut().for_each(without_times);
        }
        Value::Array(a) => a.iter_mut().for_each(without_times),
        _ => {}
    }
}

/// The status differences of one input: `(compared, differences)`.
fn run_status(input: &str, environment: &[Object]) -> (usize, Vec<String>) {
    let rel = format!("{GOLDEN_DIR}/{input}.yaml");
    let text = spar_testdata::read_istio(&rel);
    let parsed = parse_file(&rel, &text);
    let namespaces = namespace_objects(input, &namespaces_of(&text));
    let refs: Vec<&Object> = parsed.objects.iter().chain(environment).chain(&namespaces).collect();
    let translation = translate(&refs, DOMAIN);
    let got: BTreeMap<(String, String, String), Value> = translation
        .statuses
        .iter()
        .map(|s| ((s.kind.name().to_string(), s.namespace.clone(), s.name.clone()), s.status.clone()))
        .collect();
    let golden_text = spar_testdata::read_istio(&format!("{GOLDEN_DIR}/{input}.status.yaml.golden"));
    let (mut compared, mut differences) = (0, Vec::new());
    for doc in split_documents(&golden_text) {
        let raw: Value = serde_yaml_ng::from_str(doc.text).unwrap_or(Value::Null);
        let api = raw.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = raw.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !api.starts_with("gateway.networking.k8s.io/")
            || !matches!(kind, "GatewayClass" | "Gateway" | "HTTPRoute" | "GRPCRoute" | "TCPRoute" | "TLSRoute")
        {
            continue;
        }
        let meta = raw.get("metadata").cloned().unwrap_or_default();
        let field = |k: &str| meta.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let mut want = raw.get("status").cloned().unwrap_or_default();
        without_times(&mut want);
        compared += 1;
        let key = (kind.to_string(), field("namespace"), field("name"));
        let who = label(kind, &key.1, &key.2);
        match got.get(&key) {
            None => differences.push(format!("{who}: no status")),
            Some(have) => {
                if let Some(d) = first_difference("status", &want, have) {
                    differences.push(format!("{who}: {d}"));
                }
            }
        }
    }
    (compared, differences)
}

#[test]
fn istio_gateway_api_status_goldens_are_written_the_same() {
    let environment = parse(ENVIRONMENT);
    let mut passing = Vec::new();
    let mut table = String::from("input                               statuses  differing  first difference\n");
    for input in inputs() {
        let (compared, differences) = run_status(&input, &environment.objects);
        let _ = writeln!(
            table,
            "{input:<36}{compared:>8}{:>11}  {}",
            differences.len(),
            differences.first().map_or("passes", String::as_str)
        );
        if differences.is_empty() {
            passing.push(input);
        }
    }
    println!("{table}\n{} inputs' statuses are istiod's.", passing.len());
    let newly: Vec<String> =
        passing.iter().filter(|i| !STATUS_PASSING.contains(&i.as_str())).map(|i| format!("{i:?}")).collect();
    if !newly.is_empty() {
        println!("Passing and not in STATUS_PASSING ({}): {}", newly.len(), newly.join(", "));
    }
    let regressed: Vec<&&str> = STATUS_PASSING.iter().filter(|i| !passing.iter().any(|p| p == **i)).collect();
    assert!(regressed.is_empty(), "inputs in STATUS_PASSING no longer pass: {regressed:?}");
}
