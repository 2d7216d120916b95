#!/usr/bin/env bash
# Installs the Debian packages relay-server needs (build, run, and with --test the test suite's).
# Idempotent: only missing packages are installed, and apt-get update runs only when needed.
set -euo pipefail

BUILD_PKGS=(build-essential cmake pkg-config libcurl4-openssl-dev libpq-dev libhiredis-dev libjansson-dev
  libjwt-dev libcrypt-dev libyaml-dev libcivetweb-dev libsqlite3-dev libssl-dev)
TEST_PKGS=(clang-format libcmocka-dev postgresql redis-server python3 curl prometheus
  chromium chromium-driver python3-selenium python3-yaml python3-jsonschema clang libclang-rt-14-dev)
# --valgrind: scripts/valgrind-e2e.sh (not part of CI: too slow).
VALGRIND_PKGS=(valgrind)

# --bench: what bench/bench_relay.py needs too (nginx is its baseline).
BENCH_PKGS=(nginx)

want=("${BUILD_PKGS[@]}")
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" || "${1:-}" == "--valgrind" ]]; then
  want+=("${TEST_PKGS[@]}")
fi
if [[ "${1:-}" == "--bench" ]]; then
  want+=("${BENCH_PKGS[@]}")
fi
if [[ "${1:-}" == "--valgrind" ]]; then
  want+=("${VALGRIND_PKGS[@]}")
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "Installing: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
