//! Istio's own analyzer test grid (`analyzers_test.go`), from
//! `testdata/istio/analyzer`: for each case, run the named analyzer over its
//! files and compare the multiset of (code, kind, resource) with Istio's expectations.
//! Prints the pass count per analyzer (cases grouped by the analyzer they run, names
//! checked against analyzers.tsv) and requires every case of every implemented analyzer
//! to pass.

use std::collections::BTreeMap;
use std::path::PathBuf;

use spar_analyze::{Context, LoadOptions, Loaded, analyzers};
use spar_model::MeshConfig;

/// Cases that must pass; raise it as analyzers are added.
const PASSING_FLOOR: usize = 105;
/// Expected messages that must be found.
const MATCHED_FLOOR: usize = 221;

fn fixtures() -> PathBuf {
    spar_testdata::istio("analyzer")
}

#[derive(Debug, Default)]
struct Case {
    name: String,
    files: String,
    mesh_config: String,
    mesh_networks: String,
    analyzer: String,
    expected: Vec<(String, String, String)>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("analyzer-cases.tsv")).expect("analyzer-cases.tsv is readable");
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect("column present");
    let (c_test, c_files, c_mesh, c_net, c_an, c_code, c_kind, c_res) = (
        col("test"),
        col("files"),
        col("mesh_config"),
        col("mesh_networks"),
        col("analyzer"),
        col("code"),
        col("kind"),
        col("resource"),
    );
    let mut out: Vec<Case> = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
        let same =
            out.last().is_some_and(|c| c.name == get(c_test) && c.files == get(c_files) && c.analyzer == get(c_an));
        if !same {
            out.push(Case {
                name: get(c_test),
                files: get(c_files),
                mesh_config: get(c_mesh),
                mesh_networks: get(c_net),
                analyzer: get(c_an),
                expected: Vec::new(),
            });
        }
        if !get(c_code).is_empty() {
            out.last_mut().expect("pushed above").expected.push((get(c_code), get(c_kind), get(c_res)));
        }
    }
    out
}

/// Runs one case; `None` when the analyzer is not implemented.
fn run(case: &Case) -> Option<Vec<(String, String, String)>> {
    let analyzer = analyzers::by_name(&case.analyzer)?;
    let dir = fixtures();
    let mesh = if case.mesh_config.is_empty() {
        MeshConfig::default()
    } else {
        let text = std::fs::read_to_string(dir.join(&case.mesh_config)).expect("mesh config readable");
        MeshConfig::from_yaml(&text).expect("mesh config parses")
    };
    let networks = (!case.mesh_networks.is_empty()).then(|| {
        let text = std::fs::read_to_string(dir.join(&case.mesh_networks)).expect("mesh networks readable");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("mesh networks parse");
        serde_json::to_value(v).expect("mesh networks as JSON")
    });
    let mut loaded = Loaded::default();
    for spec in case.files.split(';').filter(|s| !s.is_empty()) {
        let (cluster, file) = match spec.split_once(':') {
            Some((c, f)) => (c.to_string(), f),
            None => (String::new(), spec),
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        loaded.add_text(file, &text, &LoadOptions { default_namespace: String::new(), cluster });
    }
    loaded.add_default_resources(&mesh);
    let ctx = Context::new(loaded.resources, mesh, networks).with_strict_selectors(true);
    let msgs = spar_analyze::run(&ctx, &[analyzer]);
    Some(
        msgs.iter()
            .map(|m| {
                let s = m.subject.clone().unwrap_or_default();
                (m.code().to_string(), s.kind.clone(), s.full_name())
            })
            .collect(),
    )
}

fn multiset(v: &[(String, String, String)]) -> BTreeMap<&(String, String, String), i32> {
    let mut m = BTreeMap::new();
    for x in v {
        *m.entry(x).or_insert(0) += 1;
    }
    m
}

/// Istio's analyzer names, from analyzers.tsv.
fn istio_analyzer_names() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("analyzers.tsv")).expect("analyzers.tsv is readable");
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = header.iter().position(|h| *h == "name").expect("name column");
    lines.filter_map(|l| l.split('\t').nth(col).map(str::to_string)).collect()
}

/// Pass count of one analyzer's cases.
#[derive(Default)]
struct Tally {
    cases: usize,
    passed: usize,
}

#[test]
fn istio_analyzer_cases() {
    let cases = cases();
    assert!(cases.len() > 90, "the case table has {} cases", cases.len());
    let names = istio_analyzer_names();
    let (mut passed, mut matched, mut expected_total, mut extra_total) = (0, 0, 0, 0);
    let mut failing = Vec::new();
    let mut false_positives = Vec::new();
    // Every case names the one analyzer it runs (Istio's testGrid runs one per case).
    let mut per_analyzer: BTreeMap<&str, Tally> = names.iter().map(|n| (n.as_str(), Tally::default())).collect();
    for case in &cases {
        // analyzers.tsv lists the per-kind schema analyzers once, as `schema.ValidationAnalyzer.<Kind>`.
        let template = names.iter().find(|n| {
            n.strip_suffix("<Kind>").is_some_and(|prefix| case.analyzer.starts_with(prefix) && *n != &case.analyzer)
        });
        assert!(
            names.contains(&case.analyzer) || template.is_some(),
            "case {:?} names {:?}, not in analyzers.tsv",
            case.name,
            case.analyzer
        );
        if let Some(t) = template {
            per_analyzer.remove(t.as_str());
        }
        expected_total += case.expected.len();
        let tally = per_analyzer.entry(case.analyzer.as_str()).or_default();
        tally.cases += 1;
        let Some(got) = run(case) else {
            println!("SKIP {:<60} {} not implemented", case.name, case.analyzer);
            failing.push(format!("{} ({} not implemented)", case.name, case.analyzer));
            continue;
        };
        let (want, have) = (multiset(&case.expected), multiset(&got));
        let hit: i32 = want.iter().map(|(k, n)| (*n).min(have.get(k).copied().unwrap_or(0))).sum();
        let extra: i32 = have.iter().map(|(k, n)| (n - want.get(k).copied().unwrap_or(0)).max(0)).sum();
        matched += usize::try_from(hit).unwrap_or(0);
        extra_total += usize::try_from(extra).unwrap_or(0);
        if want == have {
            passed += 1;
            tally.passed += 1;
            println!("PASS {:<60} {}", case.name, case.analyzer);
        } else {
            println!("FAIL {:<60} {}", case.name, case.analyzer);
            for (k, n) in &want {
                let h = have.get(k).copied().unwrap_or(0);
                if h < *n {
                    println!("       missing {}x {} {} {}", n - h, k.0, k.1, k.2);
                }
            }
            for (k, n) in &have {
                let w = want.get(k).copied().unwrap_or(0);
                if *n > w {
                    println!("       extra   {}x {} {} {}", n - w, k.0, k.1, k.2);
                }
            }
            failing.push(format!("{} ({})", case.name, case.analyzer));
            if case.expected.is_empty() {
                false_positives.push(case.name.clone());
            }
        }
    }

    println!("\n{:<52} {:>5} {:>6}  status", "analyzer", "cases", "passed");
    let mut incomplete = Vec::new();
    for (name, t) in &per_analyzer {
        let implemented = analyzers::by_name(name).is_some();
        let status = match (implemented, t.cases) {
            (false, _) => "not implemented",
            (true, 0) => "implemented; no Istio case",
            (true, n) if t.passed == n => "ok",
            (true, _) => "FAILING",
        };
        println!("{name:<52} {:>5} {:>6}  {status}", t.cases, t.passed);
        if implemented && t.passed != t.cases {
            incomplete.push(format!("{name}: {}/{}", t.passed, t.cases));
        }
    }
    println!("{:<52} {:>5} {:>6}", "total", cases.len(), passed);
    println!(
        "\nIstio analyzer cases: {passed}/{} passing; messages matched {matched}/{expected_total}; unexpected messages {extra_total}",
        cases.len()
    );
    println!("failing cases ({}):", failing.len());
    for f in &failing {
        println!("  - {f}");
    }
    assert!(false_positives.is_empty(), "cases expecting no messages produced some: {false_positives:?}");
    assert_eq!(extra_total, 0, "messages Istio does not expect (false positives); see the FAIL lines above");
    assert!(incomplete.is_empty(), "implemented analyzers with failing cases: {incomplete:?}");
    assert!(passed >= PASSING_FLOOR, "{passed} cases pass, the floor is {PASSING_FLOOR}");
    assert!(matched >= MATCHED_FLOOR, "{matched} expected messages found, the floor is {MATCHED_FLOOR}");
}
