//! `spar serve --log-format json`: every line on standard error is one JSON object with a
//! timestamp, a level, a message and the event's fields, as log pipelines ingest them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_spar");

#[test]
fn json_logs_are_one_object_per_line() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    // An address of its own on loopback, so parallel tests do not collide.
    let ip = format!("127.77.{}.{}", std::process::id() % 250 + 1, 7);
    let mut child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .args(["--xds-address", &format!("{ip}:15010"), "--debug-address", &format!("{ip}:15014")])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spar serve");
    let stderr = child.stderr.take().expect("stderr");
    let started = Instant::now();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a line");
        let done = line.contains("serving xDS");
        lines.push(line);
        if done || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("serving xDS")), "spar started: {lines:#?}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v.get(key).is_some(), "no {key:?} in {line}");
        }
    }
    let snapshot = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("snapshot built")));
    let snapshot = snapshot.unwrap_or_else(|| panic!("no snapshot line in {lines:#?}"));
    assert!(snapshot["services"].as_u64().is_some(), "fields are top-level JSON values: {snapshot}");
}
