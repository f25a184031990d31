#!/usr/bin/env bash
# Rebuilds vendor/h2 from the published h2 release plus vendor/h2-idle-buffers.patch,
# or with --check says whether vendor/h2 is exactly that (CI runs the check in
# `make lint`). The release is the one vendor/h2/Cargo.toml names, fetched by cargo into
# its registry cache like any dependency; only its CHANGELOG, LICENSE, README, sources
# and a Cargo.toml without examples, benches and dev-dependencies are kept, as the
# workspace builds nothing else of it. See vendor/README.md.
#
#   scripts/vendor-h2.sh           rebuild vendor/h2
#   scripts/vendor-h2.sh --check   exit 1 (with the diff) when vendor/h2 differs
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/vendor/h2/Cargo.toml" | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The published crate, through cargo (a throwaway project outside the workspace).
(cd "$work" && cargo init -q --name h2-fetch && cargo add -q "h2@=$version" && cargo fetch -q)
src=$(cd "$work" && cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(os.path.dirname([p for p in m["packages"] if p["name"] == "h2"][0]["manifest_path"]))')

out="$work/vendor/h2"
mkdir -p "$out"
cp -r "$src/src" "$src/CHANGELOG.md" "$src/LICENSE" "$src/README.md" "$out/"
# Cargo.toml without the tables the workspace does not build.
python3 - "$src/Cargo.toml" "$out/Cargo.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r"\n(?=\[)", text)
keep = [b for b in blocks if not re.match(r"\[\[(example|bench)\]\]|\[dev-dependencies", b)]
open(sys.argv[2], "w").write("\n".join(keep))
PY
(cd "$work" && patch -s -p1 < "$root/vendor/h2-idle-buffers.patch")

if [[ "${1:-}" == "--check" ]]; then
    if diff -r "$out" "$root/vendor/h2" > "$work/diff"; then
        echo "vendor/h2 is h2 $version plus vendor/h2-idle-buffers.patch"
    else
        cat "$work/diff"
        echo "vendor/h2 differs from h2 $version plus vendor/h2-idle-buffers.patch: run scripts/vendor-h2.sh" >&2
        exit 1
    fi
else
    rm -rf "$root/vendor/h2"
    cp -r "$out" "$root/vendor/h2"
    echo "vendor/h2 rebuilt from h2 $version plus vendor/h2-idle-buffers.patch"
fi
