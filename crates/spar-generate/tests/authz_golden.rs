//! AuthorizationPolicy against istiod's own golden RBAC output
//! (testdata/istio/authz-golden): for each input, the RBAC Spar generates (enforced
//! rules, dry-run shadow rules, CUSTOM rules for ext_authz or denied when the provider
//! cannot be used) must mean the same as istiod's. "The same" is compared on a normal form:
//! every policy by name, its permission and principal trees with the children of AND/OR
//! sorted (both are commutative), so only order, not meaning, may differ.

#![allow(deprecated)] // the RBAC metadata principal, as istiod generates it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::rbac::v3 as xds_rbac;
use envoy_types::pb::envoy::config::route::v3 as xds_route;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use serde_json::{Value, json};
use spar_api::Resource;
use spar_generate::generator::authz;
use spar_model::Config;

fn fixtures() -> PathBuf {
    spar_testdata::istio("authz-golden")
}

fn sm(m: &xds_matcher::StringMatcher) -> Value {
    use xds_matcher::string_matcher::MatchPattern;
    let mut v = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => json!({"exact": s}),
        Some(MatchPattern::Prefix(s)) => json!({"prefix": s}),
        Some(MatchPattern::Suffix(s)) => json!({"suffix": s}),
        Some(MatchPattern::Contains(s)) => json!({"contains": s}),
        Some(MatchPattern::SafeRegex(r)) => json!({"safeRegex": {"regex": r.regex}}),
        _ => json!({}),
    };
    if m.ignore_case {
        v["ignoreCase"] = json!(true);
    }
    v
}

fn header(h: &xds_route::HeaderMatcher) -> Value {
    use xds_route::header_matcher::HeaderMatchSpecifier;
    let mut v = json!({"name": h.name});
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => v["stringMatch"] = sm(m),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => v["presentMatch"] = json!(p),
        _ => {}
    }
    if h.invert_match {
        v["invertMatch"] = json!(true);
    }
    v
}

fn cidr(c: &envoy_types::pb::envoy::config::core::v3::CidrRange) -> Value {
    json!({"addressPrefix": c.address_prefix, "prefixLen": c.prefix_len.as_ref().map_or(0, |p| p.value)})
}

fn metadata(m: &xds_matcher::MetadataMatcher) -> Value {
    use xds_matcher::metadata_matcher::path_segment::Segment;
    use xds_matcher::value_matcher::MatchPattern;
    let path: Vec<Value> =
        m.path.iter().filter_map(|p| p.segment.as_ref().map(|Segment::Key(k)| json!({"key": k}))).collect();
    fn value(v: Option<&MatchPattern>) -> Value {
        match v {
            Some(MatchPattern::StringMatch(s)) => json!({"stringMatch": sm(s)}),
            Some(MatchPattern::PresentMatch(p)) => json!({"presentMatch": p}),
            Some(MatchPattern::OrMatch(o)) => {
                json!({"orMatch": {"valueMatchers": o.value_matchers.iter().map(|m| value(m.match_pattern.as_ref())).collect::<Vec<_>>()}})
            }
            _ => json!({}),
        }
    }
    let value = value(m.value.as_ref().and_then(|v| v.match_pattern.as_ref()));
    json!({"filter": m.filter, "path": path, "value": value})
}

fn perm(p: &xds_rbac::Permission) -> Value {
    use xds_rbac::permission::Rule;
    match &p.rule {
        Some(Rule::AndRules(s)) => json!({"andRules": {"rules": s.rules.iter().map(perm).collect::<Vec<_>>()}}),
        Some(Rule::OrRules(s)) => json!({"orRules": {"rules": s.rules.iter().map(perm).collect::<Vec<_>>()}}),
        Some(Rule::Any(b)) => json!({"any": b}),
        Some(Rule::Header(h)) => json!({"header": header(h)}),
        Some(Rule::UrlPath(u)) => match &u.rule {
            Some(xds_matcher::path_matcher::Rule::Path(s)) => json!({"urlPath": {"path": sm(s)}}),
            None => json!({"urlPath": {}}),
        },
        Some(Rule::DestinationIp(c)) => json!({"destinationIp": cidr(c)}),
        Some(Rule::DestinationPort(n)) => json!({"destinationPort": n}),
        Some(Rule::NotRule(n)) => json!({"notRule": perm(n)}),
        Some(Rule::RequestedServerName(s)) => json!({"requestedServerName": sm(s)}),
        Some(Rule::Metadata(m)) => json!({"metadata": metadata(m)}),
        Some(Rule::UriTemplate(t)) => {
            use prost::Message;
            let tpl = t
                .typed_config
                .as_ref()
                .and_then(|a| {
                    envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig::decode(
                        a.value.as_slice(),
                    )
                    .ok()
                })
                .map(|c| c.path_template)
                .unwrap_or_default();
            json!({"uriTemplate": {"name": t.name, "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "pathTemplate": tpl}}})
        }
        other => json!({"unsupported": format!("{other:?}")}),
    }
}

fn princ(p: &xds_rbac::Principal) -> Value {
    use xds_rbac::principal::Identifier as Id;
    match &p.identifier {
        Some(Id::AndIds(s)) => json!({"andIds": {"ids": s.ids.iter().map(princ).collect::<Vec<_>>()}}),
        Some(Id::OrIds(s)) => json!({"orIds": {"ids": s.ids.iter().map(princ).collect::<Vec<_>>()}}),
        Some(Id::Any(b)) => json!({"any": b}),
        Some(Id::Authenticated(a)) => {
            json!({"authenticated": {"principalName": a.principal_name.as_ref().map(sm).unwrap_or_default()}})
        }
        Some(Id::DirectRemoteIp(c)) => json!({"directRemoteIp": cidr(c)}),
        Some(Id::RemoteIp(c)) => json!({"remoteIp": cidr(c)}),
        Some(Id::SourceIp(c)) => json!({"sourceIp": cidr(c)}),
        Some(Id::Header(h)) => json!({"header": header(h)}),
        Some(Id::Metadata(m)) => json!({"metadata": metadata(m)}),
        Some(Id::NotId(n)) => json!({"notId": princ(n)}),
        other => json!({"unsupported": format!("{other:?}")}),
    }
}

/// Sorts the children of AND/OR nodes, recursively, and drops `ignoreCase: false`.
fn normal(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                if k == "ignoreCase" && v == &json!(false) {
                    continue;
                }
                let mut nv = normal(v);
                if matches!(k.as_str(), "rules" | "ids")
                    && let Value::Array(a) = &mut nv
                {
                    a.sort_by_key(|x| x.to_string());
                }
                out.insert(k.clone(), nv);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
        other => other.clone(),
    }
}

fn generated(rbac: &xds_rbac::Rbac) -> BTreeMap<String, Value> {
    rbac.policies
        .iter()
        .map(|(name, p)| {
            let mut perms: Vec<Value> = p.permissions.iter().map(|x| normal(&perm(x))).collect();
            let mut princs: Vec<Value> = p.principals.iter().map(|x| normal(&princ(x))).collect();
            perms.sort_by_key(|x| x.to_string());
            princs.sort_by_key(|x| x.to_string());
            (name.clone(), json!({"permissions": perms, "principals": princs}))
        })
        .collect()
}

/// The policies of one rule set of an istiod output (`rules` or `shadowRules`).
fn expected_set(rules: &Value) -> BTreeMap<String, Value> {
    rules["policies"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, p)| {
                    let mut perms: Vec<Value> = p["permissions"].as_array().into_iter().flatten().map(normal).collect();
                    let mut princs: Vec<Value> = p["principals"].as_array().into_iter().flatten().map(normal).collect();
                    perms.sort_by_key(|x| x.to_string());
                    princs.sort_by_key(|x| x.to_string());
                    (name.clone(), json!({"permissions": perms, "principals": princs}))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A rule set as compared: (`rules` or `shadowRules`, action, policies by name).
type RuleSet = (String, String, BTreeMap<String, Value>);

/// The rule sets of one istiod output file (none for an ext_authz filter).
fn expected(out: &Value) -> Vec<RuleSet> {
    let mut sets = Vec::new();
    for field in ["rules", "shadowRules"] {
        let rules = &out["typedConfig"][field];
        if !rules.is_null() {
            let action = rules["action"].as_str().unwrap_or("ALLOW").to_string();
            sets.push((field.to_string(), action, expected_set(rules)));
        }
    }
    sets
}

fn action_name(a: i32) -> String {
    match a {
        1 => "DENY",
        2 => "LOG",
        _ => "ALLOW",
    }
    .to_string()
}

/// The rule sets Spar generates, in the same shape.
fn generated_sets(built: &authz::WorkloadRbac) -> Vec<RuleSet> {
    let mut got = Vec::new();
    for c in &built.custom {
        match c {
            authz::Custom::ExtAuthz { rules, .. } => {
                got.push(("shadowRules".into(), action_name(rules.action), generated(rules)))
            }
            authz::Custom::Deny { rules, .. } => {
                got.push(("rules".into(), action_name(rules.action), generated(rules)))
            }
        }
    }
    for r in &built.configs {
        if let Some(rules) = &r.rules {
            got.push(("rules".into(), action_name(rules.action), generated(rules)));
        }
        if let Some(rules) = &r.shadow {
            got.push(("shadowRules".into(), action_name(rules.action), generated(rules)));
        }
    }
    got
}

/// The CUSTOM provider the goldens' mesh configs define (`builder_test.go`): `default`,
/// an HTTP or gRPC ext_authz service, or none usable (`Err`).
#[derive(Clone, Copy, Debug)]
enum Provider {
    Http,
    Grpc,
    Unusable,
}

fn resolver(kind: Provider) -> impl Fn(&str) -> Result<authz::ResolvedProvider, String> {
    move |name: &str| {
        let api = match kind {
            Provider::Http => spar_model::ExtAuthzApi::Http(Default::default()),
            Provider::Grpc => spar_model::ExtAuthzApi::Grpc,
            Provider::Unusable => return Err(format!("provider {name} is invalid")),
        };
        if name != "default" {
            return Err(format!("provider {name} is not defined"));
        }
        let host = "my-custom-ext-authz.foo.svc.cluster.local".to_string();
        Ok(authz::ResolvedProvider {
            cluster: format!("outbound|9000||{host}"),
            host,
            provider: spar_model::ExtAuthzProvider {
                service: "foo/my-custom-ext-authz.foo.svc.cluster.local".into(),
                port: 9000,
                timeout: std::time::Duration::from_secs(10),
                fail_open: false,
                status_on_error: None,
                body: None,
                api,
            },
        })
    }
}

/// Runs `input` and compares with `outs` (by default, the outputs named after it).
fn run_case(dir: &str, input: &Path, tcp: bool, provider: Provider, outs: Option<&[&str]>) -> Result<(), String> {
    let text = std::fs::read_to_string(input).map_err(|e| e.to_string())?;
    let parsed = spar_api::parse_file(&input.to_string_lossy(), &text);
    let policies: Vec<Config<_>> = parsed
        .objects
        .iter()
        .filter_map(|o| match &o.resource {
            Resource::AuthorizationPolicy(s) => Some(Config {
                name: o.meta.name.clone(),
                namespace: o.meta.namespace.clone(),
                origin: o.origin.clone(),
                created: None,
                dry_run: o
                    .meta
                    .annotations
                    .get("istio.io/dry-run")
                    .is_some_and(|v| spar_model::go_bool(v) == Some(true)),
                generated: None,
                spec: s.clone(),
            }),
            _ => None,
        })
        .collect();
    let refs: Vec<&Config<_>> = policies.iter().collect();
    let built = authz::build(&refs, "cluster.local", tcp, &resolver(provider));
    let stem = input.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches("-in.yaml").to_string();
    let outs: Vec<PathBuf> = match outs {
        Some(names) => names.iter().map(|n| fixtures().join(dir).join(n)).collect(),
        None => ["-out.yaml", "-out1.yaml", "-out2.yaml"]
            .iter()
            .map(|suffix| fixtures().join(dir).join(format!("{stem}{suffix}")))
            .filter(|p| p.exists())
            .collect(),
    };
    let mut want = Vec::new();
    for o in &outs {
        let v: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(o).map_err(|e| format!("{}: {e}", o.display()))?)
                .map_err(|e| e.to_string())?;
        want.extend(expected(&v));
    }
    let mut got = generated_sets(&built);
    // Istio orders its outputs AUDIT, DENY, ALLOW; compare as sets.
    want.sort_by_key(|s| format!("{s:?}"));
    got.sort_by_key(|s| format!("{s:?}"));
    if want == got {
        Ok(())
    } else {
        let show = |v: &Vec<RuleSet>| serde_json::to_string(v).unwrap_or_default();
        Err(format!("want {}\n got {}", show(&want), show(&got)))
    }
}

#[test]
fn generated_rbac_means_what_istiod_generates() {
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for (dir, tcp) in [("http", false), ("tcp", true)] {
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
            .expect("authz fixtures")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-in.yaml"))
            .collect();
        inputs.sort();
        for input in inputs {
            let name = format!("{dir}/{}", input.file_name().and_then(|n| n.to_str()).unwrap_or_default());
            // Trust-domain aliases need mesh settings these goldens assume; not supported
            // yet (multiple-td is an alias case too). allow-host-before-111 is the format
            // for Envoy older than 1.11.
            // custom-simple-http has no outputs of its own: it is run below, once per
            // provider, against the outputs istiod's test names for it.
            if ["td-aliases", "multiple-td", "before-111", "custom-simple-http"].iter().any(|k| name.contains(k)) {
                skipped.push(name);
                continue;
            }
            // istiod's test serves an HTTP provider to custom-only-http, gRPC elsewhere.
            let provider = if name.contains("only-http") { Provider::Http } else { Provider::Grpc };
            match run_case(dir, &input, tcp, provider, None) {
                Ok(()) => passed.push(name),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
    }
    // One input, three mesh configs (istiod's `custom-http-provider`, `custom-grpc-provider`
    // and `custom-bad-invalid-config` cases).
    let simple = fixtures().join("http/custom-simple-http-in.yaml");
    for (provider, out) in [
        (Provider::Http, "custom-http-provider-out1.yaml"),
        (Provider::Grpc, "custom-grpc-provider-out1.yaml"),
        (Provider::Unusable, "custom-bad-out.yaml"),
    ] {
        let name = format!("http/custom-simple-http-in.yaml ({provider:?}) -> {out}");
        match run_case("http", &simple, false, provider, Some(&[out])) {
            Ok(()) => passed.push(name),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    eprintln!(
        "authz golden: {} passed, {} failed, {} skipped ({})",
        passed.len(),
        failed.len(),
        skipped.len(),
        skipped.join(", ")
    );
    for f in &failed {
        eprintln!("FAIL {f}\n");
    }
    // Known differences, each a feature not built yet or a deliberate one; the list must
    // stay exact, so a fix (or a new difference) shows up here.
    const KNOWN: &[&str] = &[
        // request.auth.claims / audiences: istiod matches list-valued claims (listMatch).
        "http/allow-full-rule-in.yaml",
        // Trust-domain aliases from mesh config add an extra principal per alias.
        "http/simple-policy-principal-with-wildcard-in.yaml",
        // A CUSTOM policy whose provider checks HTTP, on a TCP port: istiod leaves the
        // check out (the port is open); Spar denies what the policy matches (fail closed).
        "tcp/custom-only-http-in.yaml",
    ];
    let mut failed_names: Vec<&str> = failed.iter().filter_map(|f| f.split(':').next()).collect();
    failed_names.sort_unstable();
    assert_eq!(failed_names, KNOWN, "golden cases that differ from istiod");
    assert!(passed.len() >= 12, "only {} cases compared", passed.len());
}
