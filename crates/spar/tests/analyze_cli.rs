//! `spar analyze` as CI runs it: the real binary, exit codes, parseable standard output.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_spar");

/// A VirtualService bound to a Gateway that does not exist (IST0101, an Error) at line 9.
const BROKEN: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews.example.com]
  gateways:
  - missing-gateway
  http:
  - route:
    - destination:
        host: reviews.example.com
";

/// Nothing wrong: a ServiceEntry with an address.
const CLEAN: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
  namespace: default
spec:
  hosts: [api.example.com]
  addresses: [240.0.0.1]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - number: 443
    name: https
    protocol: HTTPS
";

fn write(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("analyze_cli");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write fixture");
    p
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("analyze")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spar runs");
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin piped").write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("spar finishes")
}

fn json(args: &[&str], stdin: Option<&str>) -> (i32, Vec<Value>) {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let out = run(&a, stdin);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"));
    (out.status.code().expect("exit code"), v.as_array().expect("an array").clone())
}

fn codes(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(|m| m["code"].as_str().unwrap_or_default()).collect()
}

#[test]
fn exit_codes_are_the_same_for_every_format() {
    let broken = write("broken.yaml", BROKEN);
    let clean = write("clean.yaml", CLEAN);
    for format in ["log", "json", "yaml", "sarif"] {
        let bad = run(&["-o", format, broken.to_str().expect("utf-8 path")], None);
        assert_eq!(bad.status.code(), Some(79), "{format}: findings at Error exit 79");
        let good = run(&["-o", format, clean.to_str().expect("utf-8 path")], None);
        assert_eq!(
            good.status.code(),
            Some(0),
            "{format}: no findings exit 0: {}",
            String::from_utf8_lossy(&good.stdout)
        );
        let below = run(
            &[
                "-o",
                format,
                "--failure-threshold",
                "Error",
                "--analyzer",
                "spar.DuplicateResourceAnalyzer",
                broken.to_str().expect("utf-8 path"),
            ],
            None,
        );
        assert_eq!(below.status.code(), Some(0), "{format}: analyzers that find nothing exit 0");
        let usage = run(&["-o", format, "--analyzer", "no.SuchAnalyzer", clean.to_str().expect("utf-8 path")], None);
        assert_eq!(usage.status.code(), Some(2), "{format}: usage errors exit 2");
        assert!(usage.stdout.is_empty(), "{format}: nothing on stdout for usage errors");
        let missing = run(&["-o", format, "/nonexistent/file.yaml"], None);
        assert_eq!(missing.status.code(), Some(2), "{format}: unreadable input exits 2");
    }
    // A lower failure threshold turns Info findings into failures; a higher one ignores Errors.
    let warn = run(&["--failure-threshold", "Info", clean.to_str().expect("utf-8 path")], None);
    assert_eq!(warn.status.code(), Some(0));
    let info_file = write("info.yaml", &CLEAN.replace("  addresses: [240.0.0.1]\n", "").replace("HTTPS", "TCP"));
    let info = run(&["--failure-threshold", "Warning", info_file.to_str().expect("utf-8 path")], None);
    assert_eq!(info.status.code(), Some(79), "IST0134 is a Warning");
}

#[test]
fn stdout_is_only_the_document() {
    let broken = write("broken2.yaml", BROKEN);
    let path = broken.to_str().expect("utf-8 path");
    let (_, msgs) = json(&[path], None);
    assert!(codes(&msgs).contains(&"IST0101"), "{msgs:?}");
    for m in &msgs {
        for k in ["code", "level", "message", "origin", "reference", "documentationUrl", "file", "line"] {
            assert!(m.get(k).is_some(), "{k} missing from {m}");
        }
    }

    let yaml = run(&["-o", "yaml", path], None);
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&yaml.stdout).expect("stdout is YAML");
    assert_eq!(y.as_sequence().map(Vec::len), Some(msgs.len()));

    let sarif = run(&["-o", "sarif", path], None);
    let s: Value = serde_json::from_slice(&sarif.stdout).expect("stdout is SARIF JSON");
    assert_eq!(s["version"], "2.1.0");
    let results = s["runs"][0]["results"].as_array().expect("results");
    assert_eq!(results.len(), msgs.len());
    let rules = s["runs"][0]["tool"]["driver"]["rules"].as_array().expect("rules");
    for r in results {
        let idx = usize::try_from(r["ruleIndex"].as_u64().expect("ruleIndex")).expect("index fits");
        assert_eq!(rules[idx]["id"], r["ruleId"]);
        assert!(r["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64().is_some());
    }

    // No findings: still a complete document, and the friendly line goes to stderr.
    let clean = write("clean2.yaml", CLEAN);
    let (code, msgs) = json(&[clean.to_str().expect("utf-8 path")], None);
    assert_eq!((code, msgs.len()), (0, 0));
    let log = run(&[clean.to_str().expect("utf-8 path")], None);
    assert!(log.stdout.is_empty(), "log output without findings is empty");
    assert!(String::from_utf8_lossy(&log.stderr).contains("No validation issues"));
}

#[test]
fn every_document_on_stdin_is_analyzed_with_its_line() {
    let text = format!("{CLEAN}---\n{BROKEN}---\n{}", BROKEN.replace("name: reviews", "name: ratings"));
    let (code, msgs) = json(&["--analyzer", "virtualservice.GatewayAnalyzer", "-"], Some(&text));
    assert_eq!(code, 79);
    let not_found: Vec<&Value> = msgs.iter().filter(|m| m["code"] == "IST0101").collect();
    let origins: Vec<&str> = not_found.iter().map(|m| m["origin"].as_str().unwrap_or_default()).collect();
    assert_eq!(origins, ["VirtualService default/reviews", "VirtualService default/ratings"]);
    // CLEAN is 14 lines, then `---`; the gateway reference is the 9th line of BROKEN.
    assert_eq!(not_found[0]["file"], "<stdin>");
    assert_eq!(not_found[0]["line"], 15 + 9);
    assert_eq!(not_found[1]["line"], 15 + 13 + 1 + 9);
    assert_eq!(not_found[0]["reference"], format!("<stdin>:{}", 15 + 9));
}

#[test]
fn file_and_line_in_log_output() {
    let broken = write("broken3.yaml", BROKEN);
    let path = broken.to_str().expect("utf-8 path");
    let out = run(&["--analyzer", "virtualservice.GatewayAnalyzer", path], None);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        stdout.contains(&format!(
            "Error [IST0101] (VirtualService default/reviews {path}:9) Referenced gateway not found"
        )),
        "{stdout}"
    );
}

#[test]
fn unreadable_documents_are_messages_not_crashes() {
    let text = format!("{CLEAN}---\nkind: [unterminated\n---\n{BROKEN}");
    let (code, msgs) = json(&["--analyzer", "virtualservice.GatewayAnalyzer", "-"], Some(&text));
    assert_eq!(code, 79);
    let bad = msgs.iter().find(|m| m["code"] == "IST0106").expect("the broken document is reported");
    // The document starts at line 16; the parser fails at its end, line 17.
    let line = bad["line"].as_u64().unwrap_or_default();
    assert!((16..=17).contains(&line), "{bad}");
    assert!(codes(&msgs).contains(&"IST0101"), "documents after the broken one are still analyzed");
}

#[test]
fn suppression_by_flag_and_annotation() {
    let broken = write("broken4.yaml", BROKEN);
    let path = broken.to_str().expect("utf-8 path");
    let only = ["--analyzer", "virtualservice.GatewayAnalyzer", "--analyzer", "spar.DroppedConfigAnalyzer"];
    let (code, msgs) = json(&[&only[..], &[path]].concat(), None);
    assert_eq!(code, 79);
    assert!(codes(&msgs).contains(&"IST0101"));

    for rule in ["IST0101=VirtualService reviews.default", "IST0101=VirtualService *.default", "*=VirtualService rev*"]
    {
        let (_, msgs) = json(&[&only[..], &["--suppress", rule, path]].concat(), None);
        assert!(!codes(&msgs).contains(&"IST0101"), "{rule} suppresses IST0101");
    }
    let (_, msgs) = json(&[&only[..], &["--suppress", "IST0101=VirtualService other.default", path]].concat(), None);
    assert!(codes(&msgs).contains(&"IST0101"), "a rule for another resource does not");

    let annotated = BROKEN.replace(
        "  namespace: default\n",
        "  namespace: default\n  annotations:\n    galley.istio.io/analyze-suppress: IST0101,IST0132\n",
    );
    let annotated = write("annotated.yaml", &annotated);
    let (_, msgs) = json(&[&only[..], &[annotated.to_str().expect("utf-8 path")]].concat(), None);
    assert!(!codes(&msgs).contains(&"IST0101"), "{msgs:?}");
    assert!(codes(&msgs).contains(&"SPAR0002"), "other codes still reported: {msgs:?}");

    let bad = run(&["--suppress", "IST0101", path], None);
    assert_eq!(bad.status.code(), Some(2), "a malformed rule is a usage error");
}

#[test]
fn spar_reports_dropped_and_duplicate_configuration() {
    let text = format!("{BROKEN}---\n{BROKEN}");
    let (_, msgs) = json(&["-"], Some(&text));
    let dup = msgs.iter().find(|m| m["code"] == "SPAR0003").expect("duplicate reported");
    assert_eq!(dup["line"], 15);
    let dropped = msgs.iter().find(|m| m["code"] == "SPAR0002").expect("dropped VirtualService reported");
    assert!(dropped["message"].as_str().unwrap_or_default().contains("missing-gateway"));
}

#[test]
fn directories_thresholds_and_listing() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("analyze_cli_dir");
    std::fs::create_dir_all(dir.join("nested")).expect("dirs");
    std::fs::write(dir.join("nested/a.yml"), BROKEN).expect("write");
    std::fs::write(dir.join("b.yaml"), CLEAN).expect("write");
    std::fs::write(dir.join("notes.txt"), "not yaml").expect("write");
    let (code, msgs) = json(&[dir.to_str().expect("utf-8 path")], None);
    assert_eq!(code, 79);
    assert!(msgs.iter().any(|m| m["file"].as_str().unwrap_or_default().ends_with("nested/a.yml")));

    let (_, errors_only) = json(&["--output-threshold", "Error", dir.to_str().expect("utf-8 path")], None);
    assert!(errors_only.iter().all(|m| m["level"] == "Error"));

    let list = run(&["--list-analyzers"], None);
    assert_eq!(list.status.code(), Some(0));
    let text = String::from_utf8(list.stdout).expect("utf-8");
    for name in
        ["virtualservice.GatewayAnalyzer", "destinationrule.CaCertificateAnalyzer", "spar.DroppedConfigAnalyzer"]
    {
        assert!(text.contains(name), "{name} listed");
    }
}

#[test]
fn mesh_config_file_is_read() {
    // ServiceEntries without addresses need none when the mesh allocates them.
    let se = write("se.yaml", &CLEAN.replace("  addresses: [240.0.0.1]\n", "").replace("HTTPS", "TCP"));
    let se = se.to_str().expect("utf-8 path");
    let (_, msgs) = json(&["--analyzer", "serviceentry.Analyzer", se], None);
    assert_eq!(codes(&msgs), ["IST0134"]);
    let mesh = write(
        "mesh.yaml",
        "rootNamespace: istio-config\ndefaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n    ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
    );
    let (_, msgs) = json(
        &["--analyzer", "serviceentry.Analyzer", "--meshConfigFile", mesh.to_str().expect("utf-8 path"), se],
        None,
    );
    assert!(msgs.is_empty(), "{msgs:?}");
    let bad = run(&["--meshConfigFile", "/nonexistent/mesh.yaml", se], None);
    assert_eq!(bad.status.code(), Some(2));
}

/// The codes of `out` read back from the format it was written in.
fn codes_in(format: &str, out: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut codes: Vec<String> = match format {
        // `Error [IST0101] (VirtualService default/reviews <stdin>:9) ...`
        "log" => stdout.lines().filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string())).collect(),
        "json" => serde_json::from_str::<Vec<Value>>(&stdout)
            .expect("JSON array")
            .iter()
            .map(|m| m["code"].as_str().unwrap_or_default().to_string())
            .collect(),
        "yaml" => serde_yaml_ng::from_str::<Vec<serde_yaml_ng::Value>>(&stdout)
            .expect("YAML sequence")
            .iter()
            .map(|m| m["code"].as_str().unwrap_or_default().to_string())
            .collect(),
        "sarif" => serde_json::from_str::<Value>(&stdout).expect("SARIF")["runs"][0]["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["ruleId"].as_str().unwrap_or_default().to_string())
            .collect(),
        _ => unreachable!("a format the test does not know"),
    };
    codes.sort();
    codes
}

#[test]
fn every_format_from_stdin_with_suppression_and_both_exit_codes() {
    // IST0101 (Error) and IST0132 on the VirtualService, IST0108 (Warning) on the Service.
    let text = format!(
        "{BROKEN}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: httpbin\n  namespace: default\n  \
         annotations:\n    networking.istio.io/exportThree: bar\nspec:\n  ports:\n  - name: http\n    port: 8000\n"
    );
    let only = ["--analyzer", "virtualservice.GatewayAnalyzer", "--analyzer", "annotations.K8sAnalyzer"];
    let suppress = ["--suppress", "*=VirtualService reviews.default"];
    for format in ["log", "json", "yaml", "sarif"] {
        let all = run(&[&only[..], &["-o", format, "-"]].concat(), Some(&text));
        assert_eq!(codes_in(format, &all), ["IST0101", "IST0108", "IST0132"], "{format}: every finding");
        assert_eq!(all.status.code(), Some(79), "{format}: an Error exits 79");

        let warning_only = run(&[&only[..], &suppress[..], &["-o", format, "-"]].concat(), Some(&text));
        assert_eq!(codes_in(format, &warning_only), ["IST0108"], "{format}: the suppressed ones are gone");
        assert_eq!(warning_only.status.code(), Some(0), "{format}: a Warning under the Error threshold exits 0");

        let strict = run(
            &[&only[..], &suppress[..], &["--failure-threshold", "Warning", "-o", format, "-"]].concat(),
            Some(&text),
        );
        assert_eq!(codes_in(format, &strict), ["IST0108"], "{format}");
        assert_eq!(strict.status.code(), Some(79), "{format}: a Warning at the Warning threshold exits 79");
    }
}
