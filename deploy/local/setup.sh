#!/usr/bin/env bash
# Installs what Ferry's tests, quickstart and CI need on a Debian 12 machine, and only what is
# missing: idempotent, safe to run on every test run. Shared by the README's test command,
# deploy/local/demo.sh and .ci/run.
#
#   docker-registry  real registries in tests and demos (CNCF distribution 2.8)
#   skopeo           pushes fixtures and checks results independently of Ferry
#   redis-server     the queue (Redis 7, bookworm)
#   valkey-server    the queue conformance suite also runs on Valkey 8 (bookworm-backports)
#   openssl          throwaway CAs and certificates for the TLS/mTLS tests
#   iproute2 (ip)    the network namespaces multi-region tests put each region in
#   curl             the demos wait for registries with it
#   promtool         checks and unit-tests the shipped alert rules (package prometheus; the
#                    observability test also runs a real prometheus server)
#   kubectl          renders the kustomize overlays offline (package kubernetes-client)
#   buildah          builds the Containerfile without a daemon or a base image pull
#   systemd-analyze  verifies the shipped systemd units and rates their hardening (package systemd)
#   faketime         the chaos oracle runs one region's agent and workers with a skewed clock
#                    (its preload library, libfaketime)
#   cargo-nextest    the test runner (built from crates.io when missing)
#
# Needs root or sudo for apt. Never stops or kills a process by name: after installing
# docker-registry it stops only the packaged service that install started (on :5000).
# Usage: bash deploy/local/setup.sh [--no-nextest]
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for tool in docker-registry skopeo redis-server valkey-server openssl ip curl promtool kubectl buildah systemd-analyze faketime; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "==> setup: installing what is missing: ${missing[*]}"
  # Valkey 8 lives in bookworm-backports: add that suite to the machine's existing Debian entry.
  SOURCES=/etc/apt/sources.list.d/debian.sources
  if [ -f "$SOURCES" ] && ! grep -q 'bookworm-backports' "$SOURCES"; then
    $SUDO sed -i '0,/^Suites:.*bookworm-updates/ s/^\(Suites:.*bookworm-updates.*\)$/\1 bookworm-backports/' "$SOURCES"
  fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends docker-registry skopeo redis-server openssl iproute2 curl prometheus buildah systemd faketime
  # A kubectl from another source (a cloud SDK's) owns /usr/bin/kubectl: keep it, it renders too.
  command -v kubectl >/dev/null || $SUDO apt-get install -y -q --no-install-recommends kubernetes-client
  $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports valkey-server
  case " ${missing[*]} " in
    *" docker-registry "*)
      # The install just started the packaged registry service; tests start their own on free
      # ports. Stop that one service through its unit or pidfile, never by process name.
      $SUDO service docker-registry stop >/dev/null 2>&1 || true ;;
  esac
  case " ${missing[*]} " in
    *" promtool "*)
      # Likewise the packaged prometheus server (on :9090): the observability test starts its own.
      $SUDO service prometheus stop >/dev/null 2>&1 || true ;;
  esac
fi

if [ "${1:-}" != "--no-nextest" ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> setup: installing cargo-nextest (from crates.io, a few minutes)"
  cargo install --locked cargo-nextest
fi

echo "==> setup: ready ($(docker-registry --version 2>&1 | head -1); $(skopeo --version); $(redis-server --version | cut -d' ' -f1-3); $(valkey-server --version | cut -d' ' -f1-3))"
