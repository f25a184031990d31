#!/usr/bin/env bash
# Regenerates crates/spar-generate/envoy-api.desc: Envoy's API (and the protos it imports) as
# one protobuf FileDescriptorSet, compiled from the .proto files of the envoy-types crate
# in Cargo.lock, so EnvoyFilter patch values (proto JSON) are read with the very schema
# Spar's generated types come from. The protos are Envoy's, Apache-2.0
# (github.com/envoyproxy/data-plane-api and its dependencies, as envoy-types vendors
# them). Run after changing the envoy-types version:
#
#   scripts/envoy-descriptors.sh
#
# It builds a throwaway compiler (protox, pure Rust) in a temporary directory: the
# project itself does not depend on it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
proto=$(cd "$root" && cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "envoy-types"][0]
print(os.path.join(os.path.dirname(p["manifest_path"]), "proto"))')
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
cd "$tool"
cargo init -q --name envoy-descriptors
cargo add -q protox@0.9 prost@0.14 prost-types@0.14
cat > src/main.rs <<'RS'
use prost::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(d).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).expect("proto dir"));
    let out = std::env::args().nth(2).expect("output");
    let dirs = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis", "cel-spec", "client_model", "opentelemetry-proto", "ratelimit"];
    let includes: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
    let mut files = Vec::new();
    walk(&root.join("data-plane-api"), &mut files);
    files.sort();
    // Each file on its own, with only its imports in scope: protoc resolves a relative
    // name against what the file imports, and so does a compiler that sees nothing else.
    let mut all: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
    let mut order = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root.join("data-plane-api")).expect("relative");
        let mut c = protox::Compiler::new(&includes).expect("compiler");
        c.include_source_info(false).include_imports(true);
        if let Err(e) = c.open_file(rel) {
            eprintln!("left out {}: {e}", rel.display());
            continue;
        }
        for fd in c.file_descriptor_set().file {
            let name = fd.name.clone().unwrap_or_default();
            if !all.contains_key(&name) {
                order.push(name.clone());
                all.insert(name, fd);
            }
        }
    }
    let set = prost_types::FileDescriptorSet { file: order.iter().map(|n| all[n].clone()).collect() };
    std::fs::write(&out, set.encode_to_vec()).expect("write");
    eprintln!("{} files in {out}", set.file.len());
}
RS
cargo run -q --release -- "$proto" "$root/crates/spar-generate/envoy-api.desc"
