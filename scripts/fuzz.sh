#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS (default 60) and prints
# executions and crashes per target. Installs cargo-fuzz (pinned) when it is missing;
# needs the nightly toolchain (rustup toolchain install nightly).
#
#   make fuzz                     # every target, 60 s each
#   FUZZ_SECONDS=600 FUZZ_TARGETS="config" make fuzz
#
# Corpora live in fuzz/corpus/<target> (not committed): seeded from Istio's test data
# (testdata/istio, for config) and fuzz/seeds/<target>, and kept between runs. A crash
# leaves its input in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run --no-cfg-fuzzing <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"config ads_request csr"}

rustup toolchain list | grep -q '^nightly' || { echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# `--no-cfg-fuzzing`: the vendored h2 has its own fuzzing hooks behind `cfg(fuzzing)`,
# which do not build under the workspace's lints; our targets need no cfg.
cargo +nightly fuzz build --no-cfg-fuzzing >/dev/null

mkdir -p fuzz/corpus
results=()
for t in $targets; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus"
  if [ "$t" = config ]; then
    find testdata/istio -name '*.yaml' | while read -r f; do cp "$f" "$corpus/seed-$(printf %s "$f" | md5sum | cut -c1-16)"; done
  fi
  [ -d "fuzz/seeds/$t" ] && cp fuzz/seeds/"$t"/* "$corpus"/
  log=fuzz/corpus/$t.log
  set +e
  cargo +nightly fuzz run --no-cfg-fuzzing "$t" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=4096 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | awk '{print $2}' | tail -1)
  crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  results+=("$(printf '| %-12s | %10s | %7s | %s |' "$t" "${runs:-?}" "$crashes" "$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc, see $log)")")")
done
echo "| target       | executions | crashes | result |"
echo "|---|---|---|---|"
printf '%s\n' "${results[@]}"
for r in "${results[@]}"; do case "$r" in *FAILED*) exit 1;; esac; done
