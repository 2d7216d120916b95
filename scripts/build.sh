#!/usr/bin/env bash
# Builds relay-server the one way the quick start, deploy.sh and the Dockerfile all do: a Release
# build without the test suite. Usage: scripts/build.sh [BUILD_DIR] (default ./build); prints the
# binary's path on stdout, the build's output on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build}"
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DRELAY_BUILD_TESTS=OFF >&2
cmake --build "$dir" -j"$(nproc)" --target relay-server >&2
echo "$dir/relay-server/relay-server"
