# Spar's commands, in one place.
#   make demo   set up, build, and run the quickstart (real Envoys, real traffic)
#   make demo-gateways   the same for examples/gateways (ingress and egress gateways)
#   make test   set up, build, and run every test (unit, Istio fixtures, conformance)
#   make lint   rustfmt and clippy (-D warnings)
#   make bench  benchmarks (release build)
#   make fuzz   each cargo-fuzz target for FUZZ_SECONDS (default 60; nightly toolchain)

CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: setup build demo demo-gateways test lint fmt check-crates bench fuzz clean

setup:
	@scripts/setup.sh

build:
	$(CARGO) build --bin spar --bin quickstart --bin gateways

demo: setup build
	target/debug/quickstart

demo-gateways: setup build
	target/debug/gateways

# The conformance suite runs the spar binary, so build it first.
test: setup
	$(CARGO) build --bin spar --bin conformance-tool
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/vendor-h2.sh --check

# Each crate builds on its own (the dependency graph keeps the layers apart).
check-crates:
	for c in spar-api spar-model spar-ca spar-generate spar-xds spar-analyze spar spar-conformance spar-load spar-testdata spar-fuzz; do $(CARGO) check -p $$c || exit 1; done

bench:
	$(CARGO) bench -p spar --bench generate

fuzz:
	@scripts/fuzz.sh

clean:
	rm -rf target/conformance
